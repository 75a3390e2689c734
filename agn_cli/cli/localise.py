"""`agn localise`: boxes from attention, and with --gt the paper's Table 7 metrics (IoU, Correctness, Relative Corr.).

Ground truth (`--gt`): a CSV with columns path,x0,y0,x1,y1 (optional frame, label), matched to inputs by path, file
name or stem; or a folder of masks whose bounding box is the target, matched by stem with an optional mask suffix
(`004_HC.png` <-> `004_HC_Mask.png`). Per-class rows use the ground-truth label (CSV `label` column or --gt-label),
else the predicted label. Exit codes as for `agn classify`; plus 2 when --gt matches no input.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, List, Optional

import typer

from agn_cli.cli.console import out, print_json, warn
from agn_cli.cli.options import input_option, merge_inputs, threads_option
from agn_cli.errors import AgnError

MASK_SUFFIXES = ("_mask", "-mask", "_seg", "_gt", "_label", "_annotation", "_segmentation")


def _mask_key(stem: str) -> str:
    key = stem.lower()
    for suffix in MASK_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return key


class GroundTruth:
    """Target boxes (x0, y0, x1, y1) for inputs, from a CSV of boxes or a folder of masks."""

    def __init__(self, source: Path, label: Optional[str] = None) -> None:
        self.source = source
        self.label = label
        self.boxes: dict[str, list[tuple[list[float], Optional[str], Optional[int]]]] = {}
        self.masks: dict[str, Path] = {}
        if source.is_dir():
            from agn_cli.us.frames import IMAGE_SUFFIXES

            for mask in sorted(source.rglob("*")):
                if mask.is_file() and mask.suffix.lower() in IMAGE_SUFFIXES:
                    self.masks.setdefault(_mask_key(mask.stem), mask)
            if not self.masks:
                raise AgnError(f"--gt folder {source} holds no mask images (PNG, TIFF, ...)")
        elif source.is_file():
            self._read_csv(source)
        else:
            raise AgnError(f"--gt {source} not found; give a CSV of boxes (path,x0,y0,x1,y1) or a folder of masks")

    def _read_csv(self, source: Path) -> None:
        try:
            with open(source, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                columns = {c.strip().lower() for c in (reader.fieldnames or [])}
                if not {"path", "x0", "y0", "x1", "y1"} <= columns:
                    raise AgnError(f"--gt {source} needs a header with path,x0,y0,x1,y1 (optional frame,label)")
                for n, row in enumerate(reader, start=2):
                    row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
                    try:
                        box = [float(row[k]) for k in ("x0", "y0", "x1", "y1")]
                        frame = int(row["frame"]) if row.get("frame") else None
                    except ValueError:
                        raise AgnError(f"--gt {source} line {n}: box coordinates must be numbers") from None
                    if box[2] <= box[0] or box[3] <= box[1]:
                        raise AgnError(f"--gt {source} line {n}: need x1 > x0 and y1 > y0")
                    entry = (box, row.get("label") or None, frame)
                    for key in {row["path"], Path(row["path"]).name, Path(row["path"]).stem}:
                        self.boxes.setdefault(key.lower(), []).append(entry)
        except (OSError, UnicodeDecodeError) as exc:
            raise AgnError(f"cannot read --gt {source}: {exc}") from exc

    def lookup(self, path: str, frame: int, shape: tuple[int, ...] = ()) -> tuple[Optional[list[list[float]]], Optional[str], str]:
        """(boxes or None, label, status) where status is 'ok', 'unmatched' or 'empty' (mask without foreground).

        A mask must have its frame's size (rows, cols): boxes are compared in frame pixels, so a mask of another
        size would score IoU 0 in silence."""
        p = Path(path)
        if self.masks:
            mask = self.masks.get(p.stem.lower())
            if mask is None:
                return None, None, "unmatched"
            import cv2

            from agn_cli.us.localisation import mask_box

            image = cv2.imread(str(mask), cv2.IMREAD_UNCHANGED)
            if image is None:
                raise AgnError(f"cannot read mask {mask}")
            if shape and tuple(image.shape[:2]) != tuple(shape[:2]):
                raise AgnError(
                    f"--gt mask {mask} is {image.shape[1]}x{image.shape[0]} pixels but frame {p.name} is "
                    f"{shape[1]}x{shape[0]}; masks must match their frames pixel for pixel"
                )
            box = mask_box(image)
            return ([box] if box else None), self.label, "ok" if box else "empty"
        for key in (path, p.name, p.stem):
            entries = self.boxes.get(key.lower())
            if entries:
                chosen = [e for e in entries if e[2] is None or e[2] == frame]
                if not chosen:
                    return None, None, "unmatched"
                return [e[0] for e in chosen], chosen[0][1] or self.label, "ok"
        return None, None, "unmatched"


def metrics_table(table: dict[str, dict[str, float]]):
    from rich.table import Table

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


def command(
    inputs: Optional[List[Path]] = typer.Argument(None, help="Frames: images, DICOM, videos, or folders (searched recursively).", show_default=False),
    more_inputs: Optional[List[Path]] = input_option(),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write boxes (and IoU with --gt) to .json or .csv."),
    overlays: Optional[Path] = typer.Option(None, "--overlays", help="Folder for PNGs: attention heat map and box on each frame."),
    gt: Optional[Path] = typer.Option(None, "--gt", help="Ground truth: CSV path,x0,y0,x1,y1[,frame,label] or a folder of masks."),
    gt_label: Optional[str] = typer.Option(None, "--gt-label", help="Class of every ground-truth box (for the per-class table)."),
    target_class: Optional[str] = typer.Option(None, "--class", help="Localise this class's attention instead of the predicted one."),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help="Checkpoint (.safetensors + card); default: the shipped SonoNet-16."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    threads: Optional[int] = threads_option(),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Frames per forward pass."),
    crop: str = typer.Option("auto", "--crop", help="auto (model card's crop for screen captures), none, or Y0:Y1,X0:X1."),
    every: int = typer.Option(1, "--every", min=1, help="Use every N-th frame of videos and multi-frame DICOM."),
    blur_sigma: float = typer.Option(12.0, "--blur-sigma", min=0.0, help="Gaussian blur of each attention map (network-input pixels)."),
    threshold: float = typer.Option(0.25, "--threshold", min=0.0, max=1.0, help="Keep attention >= this fraction of its maximum."),
    select: str = typer.Option("overlap", "--select", help="overlap (component shared across scales, else strongest), strongest or largest."),
    normalise: str = typer.Option("max", "--normalise", help="max (negatives to 0, divide by max) or minmax."),
    min_area: float = typer.Option(0.0, "--min-area", min=0.0, max=1.0, help="Ignore components below this fraction of the input."),
    step: int = typer.Option(4, "--step", min=1, help="Work on a grid of STEP network-input pixels (1 = full resolution, slower)."),
    fast: bool = typer.Option(True, "--fast/--no-fast", help="Fast inference path (folded BN, channels-last, bf16 where it pays)."),
    json_out: bool = typer.Option(False, "--json", help="Print boxes and metrics as JSON on stdout."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
) -> None:
    """Weakly supervised localisation: one box per frame from the classifier's attention (no backpropagation)."""
    from agn_cli.us.classifier import Classifier
    from agn_cli.cli.classify import (
        check_output,
        check_overlays,
        frames_table,
        localisation_params,
        overlay_writer,
        run_classifier,
        summary_table,
    )
    from agn_cli.runtime.device import configure_cpu_threads, resolve_device
    from agn_cli.us.preprocess import parse_crop
    from agn_cli.us.localisation import box_iou, localisation_table

    inputs = merge_inputs(inputs, more_inputs, "frames")
    check_output(output, overwrite, inputs=(*inputs, weights, gt))
    check_overlays(overlays, overwrite)
    params = localisation_params(blur_sigma, threshold, select, normalise, min_area, step)
    truth = GroundTruth(gt, gt_label) if gt is not None else None
    torch_device = resolve_device(device)
    configure_cpu_threads(threads)
    classifier = Classifier(
        weights, torch_device, fast=fast, crop=parse_crop(crop), top_k=3, boxes=True,
        keep_attention=overlays is not None, keep_images=overlays is not None, localisation=params,
        target_label=target_class,
    )
    results, summary = run_classifier(classifier, inputs, every, batch_size, not json_out, overlay_writer(overlays))
    frames = [r.to_dict() for r in results]
    payload: dict[str, Any] = {"frames": frames, "summary": summary.to_dict(), "parameters": vars(params).copy()}
    if truth is not None:
        records, status_count = [], {"ok": 0, "unmatched": 0, "empty": 0}
        for row, result in zip(frames, results):
            boxes, label, status = truth.lookup(row["path"], row["frame"], result.shape)
            status_count[status] += 1
            row["gt_box"], row["iou"] = None, None
            if boxes is None:
                continue
            best = max(boxes, key=lambda b: box_iou(row["box"], b) if row["box"] else 0.0)
            row["gt_box"] = best
            row["iou"] = round(box_iou(row["box"], best), 4) if row["box"] else 0.0
            records.append((label or row["label"], row["iou"]))
        if not records:
            raise AgnError(f"--gt {gt} matched none of the {len(frames)} frames; check the file names (or CSV paths)")
        if status_count["unmatched"]:
            warn(f"{status_count['unmatched']} frame(s) have no ground truth in {gt}; left out of the metrics")
        if status_count["empty"]:
            warn(f"{status_count['empty']} mask(s) are empty (no object); left out of the metrics")
        payload["metrics"] = localisation_table(records)
        payload["summary"]["gt_matched"] = status_count["ok"]
    if output is not None:
        _write(output, payload, overwrite)
    if json_out:
        print_json(payload)
        return
    out.print(frames_table(results, title="boxes"))
    if "metrics" in payload:
        out.print(metrics_table(payload["metrics"]))
    extra = {"written": str(output)} if output is not None else {}
    out.print(summary_table(summary, "summary", extra))


def _write(output: Path, payload: dict[str, Any], overwrite: bool) -> None:
    """JSON as is; CSV gets the per-frame rows plus gt_box/iou columns."""
    from agn_cli.runtime.atomic import write_text_atomic

    if output.suffix.lower() != ".csv":
        write_text_atomic(output, json.dumps(payload, indent=2) + "\n", overwrite)
        return
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "frame", "label", "confidence", "x0", "y0", "x1", "y1", "box_score",
                     "gt_x0", "gt_y0", "gt_x1", "gt_y1", "iou"])
    for r in payload["frames"]:
        box = r.get("box") or [""] * 4
        gt_box = r.get("gt_box") or [""] * 4
        writer.writerow([r["path"], r["frame"], r["label"], r["confidence"], *box,
                         "" if r.get("box_score") is None else r["box_score"], *gt_box,
                         "" if r.get("iou") is None else r["iou"]])
    write_text_atomic(output, buffer.getvalue(), overwrite)
