"""`agn measure hc`: fetal head circumference from ultrasound frames (2D Attention U-Net + ellipse fit).

Exit codes: 0 when at least one frame was processed (frames without a head or a pixel size are reported in the
results with a reason, unreadable inputs as warnings and under `failed`); 2 on a usage error or when no frame could
be read. Every output path is checked before the network runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from agn_cli.cli.console import out, print_json, warn
from agn_cli.cli.options import DEVICE, EVERY, FAST, OVERWRITE, input_option, merge_inputs, threads_option

app = typer.Typer(no_args_is_help=True)


@app.callback()
def callback() -> None:
    """Biometry from segmentations: head circumference (HC) in mm."""


@app.command("hc")
def hc(
    inputs: Optional[List[Path]] = typer.Argument(None, help="Frames: images, DICOM, videos, or folders (searched recursively).", show_default=False),
    more_inputs: Optional[List[Path]] = input_option(),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write the results to this .json file."),
    pixel_size: Optional[float] = typer.Option(None, "--pixel-size", help="Pixel size in mm for every frame (square pixels)."),
    pixel_sizes: Optional[Path] = typer.Option(None, "--pixel-sizes", help="CSV with HC18's header: filename,pixel size(mm)[,...]."),
    masks: Optional[Path] = typer.Option(None, "--masks", help="Folder for <stem>_mask.png (uint8 0/255, the frame's size)."),
    overlays: Optional[Path] = typer.Option(None, "--overlays", help="Folder for PNGs: ellipse, HC and attention map on each frame."),
    challenge_csv: Optional[Path] = typer.Option(None, "--challenge-csv", help="HC18 submission CSV: centre, semi-axes (mm), angle (rad)."),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help="2D head-segmentation checkpoint; default: the shipped HC18 model."),
    device: str = DEVICE,
    threads: Optional[int] = threads_option(),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Frames per forward pass."),
    every: int = EVERY,
    fast: bool = FAST,
    json_out: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Head circumference in mm: segment the fetal head, fit an ellipse to the outer skull, report its perimeter."""
    from agn_cli.runtime.device import configure_cpu_threads, resolve_device
    from agn_cli.us.biometry import read_hc18_table
    from agn_cli.us.measure import HeadMeasurer, MeasureOutputs, measure_hc, pixel_size_lookup

    inputs = merge_inputs(inputs, more_inputs, "frames")
    outputs = MeasureOutputs(output, masks, overlays, challenge_csv, overwrite)
    outputs.check((*inputs, weights, pixel_sizes))
    table = {k: v.pixel_size_mm for k, v in read_hc18_table(pixel_sizes).items()} if pixel_sizes else None
    lookup = pixel_size_lookup(pixel_size, table)
    torch_device = resolve_device(device)
    configure_cpu_threads(threads)
    measurer = HeadMeasurer(weights, torch_device, fast=fast)
    payload = measure_hc(measurer, inputs, lookup, outputs, every, batch_size,
                         on_error=lambda path, message: warn(f"skipped {message}"))
    missing = payload["summary"]["no_pixel_size"]
    if missing:
        warn(f"{missing} frame(s) have no pixel size: their ellipses are in pixels and hc_mm is null "
             "(give --pixel-size or --pixel-sizes)")
    if json_out:
        print_json(payload)
        return
    out.print(_table(payload))


def _table(payload: dict[str, Any], limit: int = 40):
    from rich.table import Table

    table = Table(title="head circumference", title_justify="left")
    for name, justify in (("file", "left"), ("frame", "right"), ("HC mm", "right"), ("pixel mm", "right"),
                          ("a, b px", "right"), ("ellipse IoU", "right"), ("note", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in payload["frames"][:limit]:
        e = row["ellipse"]
        table.add_row(
            Path(row["path"]).name, str(row["frame"]), "-" if row["hc_mm"] is None else f"{row['hc_mm']:.1f}",
            "-" if row["pixel_size_mm"] is None else f"{row['pixel_size_mm']:.4g}",
            "-" if e is None else f"{e['semi_axis_a']:.0f}, {e['semi_axis_b']:.0f}",
            "-" if "ellipse_iou" not in row["quality"] else f"{row['quality']['ellipse_iou']:.3f}", row.get("reason", ""),
        )
    s = payload["summary"]
    table.caption = (f"{s['measured']}/{s['frames']} measured, {s['frames_per_second']} frames/s on {s['device']}; "
                     f"weights {s['weights']}")
    return table
