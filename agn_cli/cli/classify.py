"""`agn classify`: standard-plane labels (and boxes from attention) for ultrasound frames, files, clips and folders.

Exit codes: 0 when at least one frame was classified (unreadable inputs are reported as warnings and listed in the
JSON summary under `failed`); 2 when no frame could be read at all, or on any usage error (missing weights, bad
option, existing output without --overwrite). Nothing is written unless the run produced results.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from agn_cli.cli.console import out, print_json
from agn_cli.cli.frames_view import classify_with_progress, frames_table, summary_table
from agn_cli.cli.options import (
    CLASSIFIER_WEIGHTS,
    CROP,
    DEVICE,
    EVERY,
    FAST,
    FRAME_BATCH,
    OVERWRITE,
    input_option,
    merge_inputs,
    threads_option,
)
from agn_cli.runtime.jsonio import dumps


def command(
    inputs: Optional[List[Path]] = typer.Argument(None, help="Frames: images, DICOM, videos, or folders (searched recursively).", show_default=False),
    more_inputs: Optional[List[Path]] = input_option(),
    weights: Optional[Path] = CLASSIFIER_WEIGHTS,
    boxes: bool = typer.Option(False, "--boxes", help="Also a box per frame from the network's attention."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write results to .json or .csv (and <stem>.coco.json with --boxes)."),
    overlays: Optional[Path] = typer.Option(None, "--overlays", help="Folder for PNGs: attention heat map and box on each frame."),
    top_k: int = typer.Option(3, "--top-k", min=1, help="How many ranked labels per frame."),
    device: str = DEVICE,
    threads: Optional[int] = threads_option(),
    batch_size: int = FRAME_BATCH,
    crop: str = CROP,
    every: int = EVERY,
    blur_sigma: float = typer.Option(12.0, "--blur-sigma", min=0.0, help="Box: Gaussian blur of the attention map (network-input pixels)."),
    threshold: float = typer.Option(0.25, "--threshold", min=0.0, max=1.0, help="Box: keep attention >= this fraction of its maximum."),
    select: str = typer.Option("overlap", "--select", help="Box: overlap (component shared across scales), strongest or largest."),
    fast: bool = FAST,
    json_out: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Classify fetal ultrasound frames into SonoNet's standard planes, optionally with boxes from attention."""
    from agn_cli.runtime.atomic import write_text_atomic
    from agn_cli.runtime.device import configure_cpu_threads, resolve_device
    from agn_cli.us.classifier import Classifier
    from agn_cli.us.localisation import LocalisationParams
    from agn_cli.us.outputs import (
        check_overlay_folder,
        check_result_file,
        coco_path,
        overlay_writer,
        results_to_coco,
        write_results,
    )
    from agn_cli.us.preprocess import parse_crop

    inputs = merge_inputs(inputs, more_inputs, "frames")
    check_result_file(output, overwrite, inputs=(*inputs, weights))
    if output is not None and boxes:
        check_result_file(coco_path(output), overwrite, inputs=(*inputs, weights), allowed=(".json",))
    check_overlay_folder(overlays, overwrite)
    params = LocalisationParams(blur_sigma=blur_sigma, threshold=threshold, select=select)  # type: ignore[arg-type]
    torch_device = resolve_device(device)
    configure_cpu_threads(threads)
    classifier = Classifier(
        weights, torch_device, fast=fast, crop=parse_crop(crop), top_k=top_k, boxes=boxes,
        keep_attention=overlays is not None, keep_images=overlays is not None, localisation=params,
    )
    results, summary = classify_with_progress(classifier, inputs, every, batch_size, not json_out, overlay_writer(overlays))
    payload = {"frames": [r.to_dict() for r in results], "summary": summary.to_dict()}
    if output is not None:
        write_results(output, payload, overwrite)
        if boxes:
            coco = results_to_coco(payload["frames"], classifier.labels, [r.shape for r in results])
            write_text_atomic(coco_path(output), dumps(coco), overwrite)
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
