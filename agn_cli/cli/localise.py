"""`agn localise`: boxes from attention, and with --gt the paper's Table 7 metrics (IoU, Correctness, Relative Corr.).

Ground truth (`--gt`, read by agn_cli.us.ground_truth): a CSV with columns path,x0,y0,x1,y1 (optional frame, label)
or a folder of masks. Per-class rows use the ground-truth label (CSV `label` column or --gt-label), else the
predicted label. Exit codes as for `agn classify`; plus 2 when --gt matches no input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from agn_cli.cli.console import out, print_json, warn
from agn_cli.cli.frames_view import classify_with_progress, frames_table, metrics_table, summary_table
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


def command(
    inputs: Optional[List[Path]] = typer.Argument(None, help="Frames: images, DICOM, videos, or folders (searched recursively).", show_default=False),
    more_inputs: Optional[List[Path]] = input_option(),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write boxes (and IoU with --gt) to .json or .csv."),
    overlays: Optional[Path] = typer.Option(None, "--overlays", help="Folder for PNGs: attention heat map and box on each frame."),
    gt: Optional[Path] = typer.Option(None, "--gt", help="Ground truth: CSV path,x0,y0,x1,y1[,frame,label] or a folder of masks."),
    gt_label: Optional[str] = typer.Option(None, "--gt-label", help="Class of every ground-truth box (for the per-class table)."),
    target_class: Optional[str] = typer.Option(None, "--class", help="Localise this class's attention instead of the predicted one."),
    weights: Optional[Path] = CLASSIFIER_WEIGHTS,
    device: str = DEVICE,
    threads: Optional[int] = threads_option(),
    batch_size: int = FRAME_BATCH,
    crop: str = CROP,
    every: int = EVERY,
    blur_sigma: float = typer.Option(12.0, "--blur-sigma", min=0.0, help="Gaussian blur of each attention map (network-input pixels)."),
    threshold: float = typer.Option(0.25, "--threshold", min=0.0, max=1.0, help="Keep attention >= this fraction of its maximum."),
    select: str = typer.Option("overlap", "--select", help="overlap (component shared across scales, else strongest), strongest or largest."),
    normalise: str = typer.Option("max", "--normalise", help="max (negatives to 0, divide by max) or minmax."),
    min_area: float = typer.Option(0.0, "--min-area", min=0.0, max=1.0, help="Ignore components below this fraction of the input."),
    step: int = typer.Option(4, "--step", min=1, help="Work on a grid of STEP network-input pixels (1 = full resolution, slower)."),
    fast: bool = FAST,
    json_out: bool = typer.Option(False, "--json", help="Print boxes and metrics as JSON on stdout."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Weakly supervised localisation: one box per frame from the classifier's attention (no backpropagation)."""
    from agn_cli.runtime.device import configure_cpu_threads, resolve_device
    from agn_cli.us.classifier import Classifier
    from agn_cli.us.ground_truth import GroundTruth, score_frames
    from agn_cli.us.localisation import LocalisationParams
    from agn_cli.us.outputs import check_overlay_folder, check_result_file, overlay_writer, write_results
    from agn_cli.us.preprocess import parse_crop

    inputs = merge_inputs(inputs, more_inputs, "frames")
    check_result_file(output, overwrite, inputs=(*inputs, weights, gt))
    check_overlay_folder(overlays, overwrite)
    params = LocalisationParams(blur_sigma=blur_sigma, threshold=threshold, select=select, normalise=normalise,  # type: ignore[arg-type]
                                min_area=min_area, step=step)
    truth = GroundTruth(gt, gt_label) if gt is not None else None
    torch_device = resolve_device(device)
    configure_cpu_threads(threads)
    classifier = Classifier(
        weights, torch_device, fast=fast, crop=parse_crop(crop), top_k=3, boxes=True,
        keep_attention=overlays is not None, keep_images=overlays is not None, localisation=params,
        target_label=target_class,
    )
    results, summary = classify_with_progress(classifier, inputs, every, batch_size, not json_out, overlay_writer(overlays))
    frames = [r.to_dict() for r in results]
    payload: dict[str, Any] = {"frames": frames, "summary": summary.to_dict(), "parameters": vars(params).copy()}
    if truth is not None:
        scoring = score_frames(frames, truth, [r.shape for r in results])
        if scoring.counts["unmatched"]:
            warn(f"{scoring.counts['unmatched']} frame(s) have no ground truth in {gt}; left out of the metrics")
        if scoring.counts["empty"]:
            warn(f"{scoring.counts['empty']} frame(s) have no object in the ground truth (empty mask or box row); "
                 "left out of the metrics")
        payload["metrics"] = scoring.metrics
        payload["summary"]["gt_matched"] = scoring.counts["ok"]
    if output is not None:
        write_results(output, payload, overwrite)
    if json_out:
        print_json(payload)
        return
    out.print(frames_table(results, title="boxes"))
    if "metrics" in payload:
        out.print(metrics_table(payload["metrics"]))
    extra = {"written": str(output)} if output is not None else {}
    out.print(summary_table(summary, "summary", extra))
