"""`agn synth ct` and `agn synth us`: synthetic CT phantoms and ultrasound frames."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agn_cli.cli.console import err, out, print_json
from agn_cli.cli.options import limit_threads, threads_option
from agn_cli.runtime.parsing import parse_size

app = typer.Typer(no_args_is_help=True)


@app.callback()
def callback() -> None:
    """Synthetic CT phantoms (nnU-Net layout) and ultrasound-like plane frames, for tests, demos and training."""


def _progress(json_output: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err, disable=json_output, transient=True,
    )


@app.command("ct")
def ct(
    output: Path = typer.Option(..., "-o", "--output", help="Output folder (nnU-Net v2 layout)."),
    cases: int = typer.Option(10, "--cases", "-n", help="Number of phantoms."),
    seed: int = typer.Option(0, "--seed", help="Random seed; case i uses (seed, i)."),
    resolution: int = typer.Option(128, "--resolution", help="In-plane matrix (128 ~ 2.4-4 mm pixels; 512 ~ 0.6-1 mm)."),
    size_mm: Optional[str] = typer.Option(
        None, "--size-mm", help="Fixed field of view XxYxZ in mm (default: random per case)."
    ),
    direction: Optional[str] = typer.Option(
        None, "--direction", help="Array orientation: lps, ras or oblique (default: random per case)."
    ),
    contrast: Optional[str] = typer.Option(
        None, "--contrast", help="Contrast phase: none or portal (default: random per case)."
    ),
    whole: bool = typer.Option(False, "--whole", help="Field of view covers every labelled organ whole (no random crop)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing phantom folder."),
    threads: Optional[int] = threads_option(),
    json_output: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """Synthetic abdominal CT phantoms with spleen, kidney, liver and pancreas labels (nnU-Net v2 layout)."""
    from agn_cli.synth.ct_phantom import write_ct_dataset

    limit_threads(threads)
    fov = parse_size(size_mm, 3, what="--size-mm", cast=float, example="400x400x250") if size_mm is not None else None
    t0 = time.perf_counter()
    with _progress(json_output) as bar:
        task = bar.add_task("phantoms", total=cases)
        infos = write_ct_dataset(
            output, cases, seed=seed, resolution=resolution, direction=direction, contrast=contrast,
            size_mm=fov, crop=not whole, overwrite=overwrite,
            progress=lambda i, info: bar.advance(task),
        )
    seconds = time.perf_counter() - t0
    result = {
        "output": str(output),
        "cases": len(infos),
        "seconds": round(seconds, 2),
        "seconds_per_case": round(seconds / max(1, len(infos)), 3),
        "sizes": [list(i.size) for i in infos],
        "spacings": [list(i.spacing) for i in infos],
        "contrast": [i.contrast for i in infos],
        "direction": [i.direction for i in infos],
    }
    if json_output:
        print_json(result)
        return
    out.print(
        f"wrote {len(infos)} phantoms to {output} (dataset.json, imagesTr/, labelsTr/, phantoms.json) "
        f"in {seconds:.1f} s ({result['seconds_per_case']:.2f} s per case)"
    )


@app.command("us")
def us(
    output: Path = typer.Option(..., "-o", "--output", help="Output folder."),
    frames: int = typer.Option(50, "--frames", "-n", help="Number of frames (classes in turn)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; frame i uses (seed, i)."),
    size: str = typer.Option("224x288", "--size", help="Frame size HEIGHTxWIDTH (SonoNet input is 224x288)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing frames folder."),
    threads: Optional[int] = threads_option(),
    json_output: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """Ultrasound-like plane frames (PNG) with labels.csv, boxes.csv and head masks."""
    from agn_cli.synth.us_frames import FRAME_SIDE_RANGE, write_us_dataset

    limit_threads(threads)
    hw = parse_size(size, 2, low=FRAME_SIDE_RANGE[0], high=FRAME_SIDE_RANGE[1])
    t0 = time.perf_counter()
    with _progress(json_output) as bar:
        task = bar.add_task("frames", total=frames)
        counts = write_us_dataset(output, frames, seed=seed, size=hw, overwrite=overwrite,
                                  progress=lambda i: bar.advance(task))
    seconds = time.perf_counter() - t0
    if json_output:
        print_json({"output": str(output), "frames": frames, "size": list(hw), "classes": counts,
                    "seconds": round(seconds, 2)})
        return
    per_class = ", ".join(f"{k}: {v}" for k, v in counts.items())
    out.print(f"wrote {frames} frames ({per_class}) to {output} with labels.csv, boxes.csv, masks/ in {seconds:.1f} s")
