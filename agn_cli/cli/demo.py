"""`agn demo`: synthetic data -> short trainings -> segmentation, evaluation, plane labels, boxes -> bench -> report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from agn_cli.cli.console import err, out, print_json
from agn_cli.errors import AgnError


def command(
    output: Path = typer.Option(Path("agn-demo"), "-o", "--output", help="Folder for the report, figures, data and weights."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the output folder of an earlier demo."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same data, weights and metrics."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    quick: bool = typer.Option(False, "--quick", help="Much smaller sizes (seconds): a smoke test, the numbers mean little."),
    threads: Optional[int] = typer.Option(
        None, "--threads", help="CPU threads (default 1: results independent of the core count, and fast on a busy CPU; "
        "other thread counts change the last digits of the results)."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print summary.json to stdout only."),
) -> None:
    """Run the whole tool end to end on synthetic data (about 3 minutes on 2 CPU cores) and write a report.

    Steps: synthetic CT phantoms, a short Attention U-Net 3D training, segmentation of a held-out phantom with
    attention maps, Dice / HD95 / ASSD per organ, synthetic ultrasound frames, a short AG-Sononet training, plane
    labels and boxes from attention with IoU, eager-vs-fast benchmark. Writes report.md, report.html (self-contained),
    summary.json, figures/*.png, and the data and weights it made.
    """
    from agn_cli.apps.demo import DemoConfig, check_output, run_demo

    check_output(output, overwrite)  # fail before any work
    if threads is not None and threads < 1:
        raise AgnError("--threads must be at least 1")
    cfg = DemoConfig.quick_config(seed, device) if quick else DemoConfig.default(seed, device)
    if threads is not None:
        cfg.threads = threads
    listener = None if json_output else _ProgressLines()
    try:
        summary = run_demo(output, cfg, overwrite=overwrite, listener=listener)
    finally:
        if listener is not None:
            listener.close()
    if json_output:
        print_json(summary)
        return
    _print_results(summary)


class _ProgressLines:
    """One Rich status line per running step on stderr, replaced by a done line with its seconds."""

    def __init__(self) -> None:
        import time

        self._time = time.perf_counter
        self._t0 = self._time()
        self._status = None

    def __call__(self, event: str, record) -> None:
        if event == "start":
            self._status = err.status(f"{record.title} ... (started at {self._time() - self._t0:.0f} s)")
            self._status.start()
            return
        self.close()
        note = f"  [dim]{record.note}[/dim]" if record.note else ""
        err.print(f"[green]done[/green] {record.title:<34} {record.seconds:6.1f} s{note}", highlight=False)

    def close(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


def _print_results(summary: dict) -> None:
    from rich.table import Table

    def f(value, digits: int = 3) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    ct = summary["ct"]["demo_model"]
    us = summary["ultrasound"]
    table = Table(title="agn demo", show_header=True, header_style="bold")
    table.add_column("result")
    table.add_column("value", justify="right")
    table.add_row("CT mean Dice (held-out phantom)", f(ct["mean_dice"]))
    for name, m in ct["organs"].items():
        table.add_row(f"  {name}: Dice / HD95 / ASSD", f"{f(m['dice'])} / {f(m['hd95_mm'], 1)} mm / {f(m['assd_mm'], 1)} mm")
    default = summary["ct"].get("default_model")
    if default:
        table.add_row("CT mean Dice, installed default model", f(default["mean_dice"]))
    table.add_row("US plane accuracy (held-out frames)", f(us["accuracy"], 2))
    table.add_row("US box IoU from attention (mean)", f(us["iou_mean"], 2))
    for r in summary["bench"]["rows"]:
        table.add_row(f"bench {r['model']} {r['size']}", f"{r['fast_ms']:.1f} ms fast / {r['eager_ms']:.1f} ms eager")
    table.add_row("total time", f"{summary['total_seconds']:.1f} s")
    out.print(table)
    out.print(f"report: {summary['report']}  (HTML: {summary['report_html']})", highlight=False)
