"""How `agn classify` and `agn localise` show a run: a progress counter on stderr, warnings per unreadable input,
and the tables of frames, summary and localisation metrics on stdout."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from rich.table import Table

from agn_cli.cli.console import err, warn


def classify_with_progress(classifier: Any, inputs: Sequence[Path], every: int, batch_size: int, show_progress: bool,
                           on_result: Optional[Callable[[Any], None]] = None):
    """`classify_inputs` with a frame counter (frames done, elapsed) and a warning per skipped input; exit 2 when no
    frame could be read."""
    from agn_cli.us.classifier import classify_inputs

    with _progress(show_progress) as progress:
        task = progress.add_task("classifying", total=None) if progress is not None else None

        def step(result: Any) -> None:
            if on_result is not None:
                on_result(result)
            if progress is not None:
                progress.advance(task)

        return classify_inputs(classifier, inputs, every, batch_size, on_error=lambda path, message: warn(f"skipped {message}"),
                               on_result=step, require_frames=True)


def _progress(enabled: bool):
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    if not enabled:
        return contextlib.nullcontext(None)
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.completed} frames"),
                    TimeElapsedColumn(), console=err, transient=True)


def summary_table(summary: Any, title: str, extra: Optional[dict[str, str]] = None) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("frames", str(summary.frames))
    table.add_row("files", str(summary.files))
    if summary.failed:
        table.add_row("failed inputs", f"[red]{len(summary.failed)}[/red]")
    table.add_row("time", f"{summary.seconds:.2f} s")
    table.add_row("frames/s", f"{summary.frames_per_second:.1f}")
    for key, value in (extra or {}).items():
        table.add_row(key, value)
    table.add_row("device", summary.device)
    table.add_row("weights", summary.weights)
    return table


def frames_table(results: list[Any], limit: int = 40, title: str = "predictions") -> Table:
    table = Table(title=title, title_justify="left")
    for name, justify in (("file", "left"), ("frame", "right"), ("label", "left"), ("p", "right"), ("runner-up", "left"),
                          ("box x0,y0,x1,y1", "left")):
        table.add_column(name, justify=justify, no_wrap=name != "file")  # type: ignore[arg-type]
    for r in results[:limit]:
        box = "-" if r.box is None else ",".join(f"{v:.0f}" for v in r.box)
        runner = f"{r.topk[1][0]} {r.topk[1][1]:.2f}" if len(r.topk) > 1 else ""
        table.add_row(Path(r.path).name, str(r.frame), r.label, f"{r.confidence:.3f}", runner, box)
    if len(results) > limit:
        table.add_row(f"... {len(results) - limit} more", "", "", "", "", "")
    return table


def metrics_table(table: dict[str, dict[str, float]]) -> Table:
    view = Table(title="localisation (attention paper, Table 7)", title_justify="left")
    for name, justify in (("class", "left"), ("n", "right"), ("IoU mean (std)", "right"), ("Correctness", "right"),
                          ("Rel. Correctness", "right")):
        view.add_column(name, justify=justify)  # type: ignore[arg-type]
    for label, row in table.items():
        view.add_row(
            f"[bold]{label}[/bold]" if label == "all" else label,
            str(row["n"]),
            f"{row['iou_mean']:.3f} ({row['iou_std']:.3f})",
            f"{row['correctness']:.3f}",
            f"{row['relative_correctness']:.3f}",
        )
    return view
