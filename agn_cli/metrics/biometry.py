"""Head-circumference evaluation: `agn measure hc` results against reference HCs (and masks), HC18's conventions.

Differences are measured minus reference, in mm. A reference frame that has no measurement (not in the results, or
no head found) stays in the table with its reason and counts against the "within 2 mm / 3 mm" shares: a method that
skips hard frames must not look better for it. Mean differences are over the measured frames, and say how many.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agn_cli.errors import AgnError
from agn_cli.metrics.segmentation import binary_metrics
from agn_cli.us.biometry import read_hc18_table

TOLERANCES_MM = (2.0, 3.0)


def read_measurements(path: Path | str) -> list[dict[str, Any]]:
    """The `frames` of an `agn measure hc` JSON file (`-o results.json`)."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AgnError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise AgnError(f"{path} is not JSON; give the -o file written by 'agn measure hc'") from None
    frames = payload.get("frames") if isinstance(payload, dict) else None
    if not isinstance(frames, list) or not all(isinstance(f, dict) and "path" in f for f in frames):
        raise AgnError(f"{path} has no 'frames' list; give the -o file written by 'agn measure hc'")
    return frames


def _reference_mask(folder: Path, name: str) -> Path | None:
    stem = Path(name).stem
    for candidate in (f"{stem}_Mask.png", f"{stem}_mask.png", f"{stem}.png"):
        if (folder / candidate).is_file():
            return folder / candidate
    return None


def _read_mask(path: Path, what: str) -> np.ndarray:
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise AgnError(f"cannot read the {what} mask {path}; need a PNG with the head > 0")
    return mask > 0


def evaluate_hc(
    results: list[dict[str, Any]], reference_csv: Path | str, masks_ref: Path | str | None = None
) -> dict[str, Any]:
    """Per-frame rows and a summary: mean absolute / signed HC difference, shares within 2 and 3 mm, Dice, HD95."""
    reference = read_hc18_table(reference_csv)
    if any(row.hc_mm is None for row in reference.values()):
        raise AgnError(f"{reference_csv} lacks 'head circumference (mm)' values; it is not a reference table")
    by_name: dict[str, dict[str, Any]] = {}
    for frame in results:
        by_name.setdefault(Path(frame["path"]).name, frame)  # first frame of a file, as HC18 has one per image
    rows = []
    for name, ref in sorted(reference.items()):
        measured = by_name.get(name)
        hc = None if measured is None else measured.get("hc_mm")
        row: dict[str, Any] = {"filename": name, "reference_hc_mm": ref.hc_mm, "hc_mm": hc}
        if hc is None:
            row["reason"] = "not in the results" if measured is None else measured.get("reason") or "no HC measured"
        else:
            row["difference_mm"] = float(hc) - float(ref.hc_mm)  # type: ignore[arg-type]
        if masks_ref is not None and measured is not None:
            row.update(_mask_metrics(Path(masks_ref), name, measured, ref.pixel_size_mm))
        rows.append(row)
    return {"frames": rows, "summary": summarise_hc(rows, masks_ref is not None)}


def _mask_metrics(folder: Path, name: str, measured: dict[str, Any], pixel_size: float) -> dict[str, Any]:
    ref_path = _reference_mask(folder, name)
    if ref_path is None:
        raise AgnError(f"no reference mask for {name} in {folder} (looked for <stem>_Mask.png and <stem>.png)")
    if not measured.get("mask"):
        return {"dice": math.nan, "hd95_mm": math.nan}
    pred, ref = _read_mask(Path(measured["mask"]), "predicted"), _read_mask(ref_path, "reference")
    if pred.shape != ref.shape:
        raise AgnError(f"mask sizes differ for {name}: predicted {pred.shape}, reference {ref.shape}")
    metrics = binary_metrics(pred, ref, (pixel_size, pixel_size))
    return {"dice": metrics["dice"], "hd95_mm": metrics["hd95_mm"]}


def summarise_hc(rows: list[dict[str, Any]], with_masks: bool = False) -> dict[str, Any]:
    diffs = np.array([r["difference_mm"] for r in rows if "difference_mm" in r], dtype=float)
    summary: dict[str, Any] = {
        "frames": len(rows),
        "measured": int(diffs.size),
        "mean_abs_difference_mm": float(np.abs(diffs).mean()) if diffs.size else math.nan,
        "mean_difference_mm": float(diffs.mean()) if diffs.size else math.nan,
        "std_difference_mm": float(diffs.std(ddof=1)) if diffs.size > 1 else math.nan,
    }
    for tol in TOLERANCES_MM:
        summary[f"within_{tol:g}mm"] = float((np.abs(diffs) <= tol).sum() / len(rows)) if rows else math.nan
    if with_masks:
        for key in ("dice", "hd95_mm"):
            values = np.array([r[key] for r in rows if key in r], dtype=float)
            summary[f"mean_{key}"] = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
    return summary
