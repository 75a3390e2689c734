"""`agn classify`: standard-plane labels (and boxes from attention) for ultrasound frames, files, clips and folders.

Exit codes: 0 when at least one frame was classified (unreadable inputs are reported as warnings and listed in the
JSON summary under `failed`); 2 when no frame could be read at all, or on any usage error (missing weights, bad
option, existing output without --overwrite). Nothing is written unless the run produced results.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer

from agn_cli.cli.console import err, out, print_json, warn
from agn_cli.cli.options import input_option, merge_inputs, threads_option
from agn_cli.errors import AgnError


def check_output(output: Optional[Path], overwrite: bool, allowed: tuple[str, ...] = (".json", ".csv"),
                 inputs: tuple = ()) -> None:
    """Before any compute: a results file of a known type, new (or --overwrite), not an input or a model card."""
    from agn_cli.runtime.atomic import check_outputs

    if output is None:
        return
    if output.suffix.lower() not in allowed:
        raise AgnError(f"-o {output}: use a {' or '.join(allowed)} file")
    check_outputs([output], overwrite, inputs)


def coco_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}.coco.json")


def check_overlays(overlays: Optional[Path], overwrite: bool) -> None:
    if overlays is None:
        return
    if overlays.exists() and not overlays.is_dir():
        raise AgnError(f"--overlays {overlays} is a file; give a folder")
    if overlays.is_dir() and any(overlays.iterdir()) and not overwrite:
        raise AgnError(f"--overlays folder {overlays} is not empty; pass --overwrite or choose a new folder")


def overlay_writer(overlays: Optional[Path]) -> Optional[Callable[[Any], None]]:
    """A callback that writes one overlay PNG per result (atomically), or None."""
    if overlays is None:
        return None
    import cv2

    from agn_cli.us.classifier import OverlayNamer, overlay_image
    from agn_cli.runtime.atomic import atomic_path

    overlays.mkdir(parents=True, exist_ok=True)
    namer = OverlayNamer()

    def write(result: Any) -> None:
        picture = overlay_image(result)
        with atomic_path(overlays / namer(result), overwrite=True) as tmp:
            if not cv2.imwrite(str(tmp), picture):
                raise AgnError(f"cannot write overlay into {overlays}")
        result.image = None  # free the frame once drawn
        result.attention = None

    return write


def write_results(output: Path, payload: dict[str, Any], overwrite: bool) -> None:
    from agn_cli.us.classifier import results_to_csv
    from agn_cli.runtime.atomic import write_text_atomic

    if output.suffix.lower() == ".csv":
        write_text_atomic(output, results_to_csv(payload["frames"]), overwrite)
    else:
        write_text_atomic(output, json.dumps(payload, indent=2) + "\n", overwrite)


def progress_printer(enabled: bool):
    """A Rich progress counter on stderr (frames done, frames/s); a no-op context when disabled."""
    import contextlib

    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    if not enabled:
        return contextlib.nullcontext(None)
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("{task.completed} frames"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )


def summary_table(summary: Any, title: str, extra: Optional[dict[str, str]] = None):
    from rich.table import Table

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


def frames_table(results: list[Any], limit: int = 40, title: str = "predictions"):
    from rich.table import Table

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


def run_classifier(classifier: Any, inputs: List[Path], every: int, batch_size: int, show_progress: bool,
                   on_result: Optional[Callable[[Any], None]] = None):
    """Classify all inputs with a progress counter; warn per failed input; exit 2 when nothing was read."""
    from agn_cli.us.classifier import classify_inputs

    def on_error(path: Path, message: str) -> None:
        warn(f"skipped {message}")

    with progress_printer(show_progress) as progress:
        task = progress.add_task("classifying", total=None) if progress is not None else None

        def step(result: Any) -> None:
            if on_result is not None:
                on_result(result)
            if progress is not None:
                progress.advance(task)

        results, summary = classify_inputs(classifier, inputs, every, batch_size, on_error=on_error, on_result=step)
    if not results:
        if summary.failed:
            raise AgnError(f"no frame could be read from the {len(summary.failed)} input(s); see the warnings above")
        raise AgnError("no frames found in the inputs (folders are searched for PNG, JPEG, TIFF, BMP, DICOM and video)")
    return results, summary


def command(
    inputs: Optional[List[Path]] = typer.Argument(None, help="Frames: images, DICOM, videos, or folders (searched recursively).", show_default=False),
    more_inputs: Optional[List[Path]] = input_option(),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help="Checkpoint (.safetensors + card); default: the shipped SonoNet-16."),
    boxes: bool = typer.Option(False, "--boxes", help="Also a box per frame from the network's attention."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write results to .json or .csv (and <stem>.coco.json with --boxes)."),
    overlays: Optional[Path] = typer.Option(None, "--overlays", help="Folder for PNGs: attention heat map and box on each frame."),
    top_k: int = typer.Option(3, "--top-k", min=1, help="How many ranked labels per frame."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    threads: Optional[int] = threads_option(),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Frames per forward pass."),
    crop: str = typer.Option("auto", "--crop", help="auto (model card's crop for screen captures), none, or Y0:Y1,X0:X1."),
    every: int = typer.Option(1, "--every", min=1, help="Use every N-th frame of videos and multi-frame DICOM."),
    blur_sigma: float = typer.Option(12.0, "--blur-sigma", min=0.0, help="Box: Gaussian blur of the attention map (network-input pixels)."),
    threshold: float = typer.Option(0.25, "--threshold", min=0.0, max=1.0, help="Box: keep attention >= this fraction of its maximum."),
    select: str = typer.Option("overlap", "--select", help="Box: overlap (component shared across scales), strongest or largest."),
    fast: bool = typer.Option(True, "--fast/--no-fast", help="Fast inference path (folded BN, channels-last, bf16 where it pays)."),
    json_out: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
) -> None:
    """Classify fetal ultrasound frames into SonoNet's standard planes, optionally with boxes from attention."""
    from agn_cli.us.classifier import Classifier, results_to_coco
    from agn_cli.runtime.device import configure_cpu_threads, resolve_device
    from agn_cli.us.preprocess import parse_crop
    from agn_cli.runtime.atomic import write_text_atomic

    inputs = merge_inputs(inputs, more_inputs, "frames")
    check_output(output, overwrite, inputs=(*inputs, weights))
    if output is not None and boxes:
        check_output(coco_path(output), overwrite, inputs=(*inputs, weights))
    check_overlays(overlays, overwrite)
    params = localisation_params(blur_sigma, threshold, select)
    torch_device = resolve_device(device)
    configure_cpu_threads(threads)
    classifier = Classifier(
        weights, torch_device, fast=fast, crop=parse_crop(crop), top_k=top_k, boxes=boxes,
        keep_attention=overlays is not None, keep_images=overlays is not None, localisation=params,
    )
    results, summary = run_classifier(classifier, inputs, every, batch_size, not json_out, overlay_writer(overlays))
    payload = {"frames": [r.to_dict() for r in results], "summary": summary.to_dict()}
    if output is not None:
        write_results(output, payload, overwrite)
        if boxes:
            coco = results_to_coco(payload["frames"], classifier.labels, [r.shape for r in results])
            write_text_atomic(coco_path(output), json.dumps(coco, indent=2) + "\n", overwrite)
    if json_out:
        print_json(payload)
        return
    out.print(frames_table(results))
    extra = {"boxes": str(summary.boxes)} if boxes else {}
    if output is not None:
        extra["written"] = str(output) + (f", {coco_path(output)}" if boxes else "")
    if overlays is not None:
        extra["overlays"] = str(overlays)
    out.print(summary_table(summary, "summary", extra))


def localisation_params(blur_sigma: float, threshold: float, select: str, normalise: str = "max", min_area: float = 0.0,
                        step: int = 4):
    from agn_cli.us.localisation import LocalisationParams

    if select not in ("overlap", "strongest", "largest"):
        raise AgnError(f"--select {select}: use overlap, strongest or largest")
    if normalise not in ("max", "minmax"):
        raise AgnError(f"--normalise {normalise}: use max or minmax")
    return LocalisationParams(blur_sigma=blur_sigma, threshold=threshold, select=select, normalise=normalise,  # type: ignore[arg-type]
                              min_area=min_area, step=step)
