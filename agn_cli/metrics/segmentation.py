"""Segmentation metrics: Dice, precision, recall, volumes and surface distances in millimetres.

Conventions (they matter when comparing numbers between papers and tools):

* Surface of a mask = its voxels with at least one 6-connected background neighbour; voxels on the image border count
  as surface (outside the image is background).
* Surface distances use the image spacing (anisotropic voxels are handled by `distance_transform_edt(sampling=...)`)
  and measure voxel centre to nearest surface voxel centre of the other mask.
* S2S (the paper's mean surface-to-surface distance) = mean over the *pooled* distances of both surfaces: every
  prediction-surface voxel to the reference surface and every reference-surface voxel to the prediction surface.
* HD95 = 95th percentile of the same pooled symmetric distances (not the max of the two directed 95th percentiles that
  some tools report; the pooled value is never larger). HD (max) is also returned.
* A class absent in both prediction and reference: Dice, precision, recall, S2S and HD95 are NaN with the note
  "absent in both" (never a silent 0 or 1). Absent in the prediction only: Dice 0, recall 0, precision NaN, distances
  NaN, note "empty in prediction". Absent in the reference only: Dice 0, precision 0, recall NaN, distances NaN, note
  "empty in reference".
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from agn_cli.ct.labels import label_array, present_labels, read_label_map
from agn_cli.ct.volume import LABEL_SUFFIXES
from agn_cli.errors import AgnError

METRICS = ("dice", "precision", "recall", "s2s_mm", "hd95_mm", "hd_mm", "vol_pred_ml", "vol_gt_ml")
_GEOMETRY_TOL = 1e-4


# --------------------------------------------------------------------------------------------------------- reading
def case_id(path: Path | str) -> str:
    """File name without its (possibly compound) image suffix: 'case_01.nii.gz' -> 'case_01'."""
    name = Path(path).name
    low = name.lower()
    for suffix in LABEL_SUFFIXES:
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


# -------------------------------------------------------------------------------------------------------- geometry
def same_geometry(a: Any, b: Any, tol: float = _GEOMETRY_TOL) -> bool:
    """True when size, spacing, origin and direction agree within `tol`."""
    return (
        tuple(a.GetSize()) == tuple(b.GetSize())
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol, rtol=0)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol, rtol=0)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol, rtol=0)
    )


def _world_box(image: Any) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned world bounding box of the image's voxel extent (voxel edges, not centres)."""
    size = image.GetSize()
    corners = []
    for ix in (-0.5, size[0] - 0.5):
        for iy in (-0.5, size[1] - 0.5):
            for iz in (-0.5, size[2] - 0.5):
                corners.append(image.TransformContinuousIndexToPhysicalPoint((ix, iy, iz)))
    pts = np.asarray(corners)
    return pts.min(axis=0), pts.max(axis=0)


def _geometry_text(image: Any) -> str:
    size = "x".join(str(s) for s in image.GetSize())
    spacing = "x".join(f"{s:g}" for s in image.GetSpacing())
    origin = ",".join(f"{o:.1f}" for o in image.GetOrigin())
    return f"{size} @ {spacing} mm, origin ({origin})"


def align_to_reference(pred: Any, gt: Any) -> tuple[Any, list[str]]:
    """Resample `pred` onto `gt`'s grid (nearest neighbour) when geometries differ; AgnError if they do not overlap."""
    import SimpleITK as sitk

    if same_geometry(pred, gt):
        return pred, []
    lo_p, hi_p = _world_box(pred)
    lo_g, hi_g = _world_box(gt)
    if np.any(np.minimum(hi_p, hi_g) <= np.maximum(lo_p, lo_g)):
        raise AgnError(
            "prediction and reference do not overlap in world space "
            f"(prediction {_geometry_text(pred)}; reference {_geometry_text(gt)}); "
            "check that they belong to the same scan"
        )
    resampled = sitk.Resample(pred, gt, sitk.Transform(), sitk.sitkNearestNeighbor, 0, pred.GetPixelID())
    warning = (
        f"prediction geometry ({_geometry_text(pred)}) differs from the reference ({_geometry_text(gt)}); "
        "resampled the prediction onto the reference grid (nearest neighbour)"
    )
    return resampled, [warning]


# --------------------------------------------------------------------------------------------------------- metrics
def _surface(mask: np.ndarray) -> np.ndarray:
    """Object voxels with a 6-connected background neighbour (outside the array counts as background)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm: (pred surface -> gt surface, gt surface -> pred surface).

    `spacing` is per array axis. Both masks must be non-empty. Works on a crop of the union with a 1-voxel zero margin,
    so the cost scales with the object, not the image.
    """
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    if not pred.any() or not gt.any():
        raise ValueError("surface distances need two non-empty masks")
    union = pred | gt
    box = ndimage.find_objects(union.astype(np.uint8))[0]
    p = np.pad(pred[box], 1)
    g = np.pad(gt[box], 1)
    sp = tuple(float(s) for s in spacing)
    surf_p, surf_g = _surface(p), _surface(g)
    dist_to_g = ndimage.distance_transform_edt(~surf_g, sampling=sp)
    dist_to_p = ndimage.distance_transform_edt(~surf_p, sampling=sp)
    return dist_to_g[surf_p], dist_to_p[surf_g]


def dice(tp: int, n_pred: int, n_ref: int) -> float:
    """2 |P & R| / (|P| + |R|); NaN when the class is absent from both (never a silent 0 or 1)."""
    return 2.0 * tp / (n_pred + n_ref) if n_pred + n_ref else math.nan


def dice_per_class(pred: np.ndarray, gt: np.ndarray, labels: Iterable[int]) -> list[float]:
    """Hard Dice of each label id (the `dice` column of `evaluate_arrays`, without the surface distances)."""
    out = []
    for lab in labels:
        p, g = pred == lab, gt == lab
        out.append(dice(int(np.logical_and(p, g).sum()), int(p.sum()), int(g.sum())))
    return out


def _empty_row() -> dict[str, Any]:
    return {m: math.nan for m in METRICS}


def binary_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> dict[str, Any]:
    """All metrics of one class from two boolean masks (already cropped or not); see the module docstring."""
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    n_p, n_g = int(pred.sum()), int(gt.sum())
    tp = int(np.logical_and(pred, gt).sum())
    row = _empty_row()
    row.update(vol_pred_ml=n_p * voxel_ml, vol_gt_ml=n_g * voxel_ml, tp=tp, fp=n_p - tp, fn=n_g - tp, note="")
    if n_p == 0 and n_g == 0:
        row["note"] = "absent in both"
        return row
    row["dice"] = dice(tp, n_p, n_g)
    row["precision"] = tp / n_p if n_p else math.nan
    row["recall"] = tp / n_g if n_g else math.nan
    if n_p == 0:
        row["note"] = "empty in prediction"
        return row
    if n_g == 0:
        row["note"] = "empty in reference"
        return row
    d_pg, d_gp = surface_distances(pred, gt, spacing)
    pooled = np.concatenate([d_pg, d_gp])
    row["s2s_mm"] = float(pooled.mean())
    row["hd95_mm"] = float(np.percentile(pooled, 95))
    row["hd_mm"] = float(pooled.max())
    return row


def _boxes(arr: np.ndarray, max_label: int) -> list[tuple[slice, ...] | None]:
    return ndimage.find_objects(arr, max_label=max_label) if max_label > 0 else []


def evaluate_arrays(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float],
    labels: Iterable[int] | None = None,
    label_names: Mapping[int, str] | None = None,
) -> list[dict[str, Any]]:
    """Per-class metric rows for two label arrays on the same grid (`spacing` per array axis)."""
    if pred.shape != gt.shape:
        raise AgnError(f"prediction shape {pred.shape} differs from reference shape {gt.shape}")
    if labels is None:
        labels = sorted((present_labels(gt) | present_labels(pred)) - {0})
    labels = [int(v) for v in labels]
    max_label = max(labels, default=0)
    max_present = max(int(pred.max(initial=0)), int(gt.max(initial=0)))
    # find_objects needs every label up to max_label; clip the search to what can exist.
    search = min(max_label, max_present)
    boxes_p = _boxes(pred, search)
    boxes_g = _boxes(gt, search)
    names = label_names or {}
    rows = []
    for lab in labels:
        bp = boxes_p[lab - 1] if 0 < lab <= search else None
        bg = boxes_g[lab - 1] if 0 < lab <= search else None
        if bp is None and bg is None:
            row = binary_metrics(np.zeros((1, 1, 1), bool), np.zeros((1, 1, 1), bool), spacing)
        else:
            box = _union_box([b for b in (bp, bg) if b is not None])
            row = binary_metrics(pred[box] == lab, gt[box] == lab, spacing)
        rows.append({"label": lab, "name": names.get(lab, str(lab)), **row})
    return rows


def _union_box(boxes: list[tuple[slice, ...]]) -> tuple[slice, ...]:
    return tuple(slice(min(b[d].start for b in boxes), max(b[d].stop for b in boxes)) for d in range(len(boxes[0])))


def evaluate_segmentation(
    pred: Any,
    gt: Any,
    labels: list[int] | None = None,
    label_names: Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """Per-class metrics of a predicted label map against a reference (both SimpleITK images).

    Returns {"classes": [row, ...], "warnings": [...], "spacing_mm": [...], "size": [...]}; each row holds label, name,
    dice, precision, recall, s2s_mm, hd95_mm, hd_mm, vol_pred_ml, vol_gt_ml, tp, fp, fn and note.
    """
    if labels is not None and any(int(v) <= 0 for v in labels):
        raise AgnError("labels must be positive ids (0 is background)")
    pred, warnings = align_to_reference(pred, gt)
    p = label_array(pred, "the prediction")
    g = label_array(gt, "the reference")
    spacing_zyx = tuple(float(s) for s in reversed(gt.GetSpacing()))  # numpy arrays from SimpleITK are (z, y, x)
    rows = evaluate_arrays(p, g, spacing_zyx, labels, label_names)
    return {
        "classes": rows,
        "warnings": warnings,
        "spacing_mm": list(gt.GetSpacing()),
        "size": list(gt.GetSize()),
    }


def evaluate_files(
    pred_path: Path | str,
    gt_path: Path | str,
    labels: list[int] | None = None,
    label_names: Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """`evaluate_segmentation` on two files; names default to a sidecar or dataset.json (`find_label_names`)."""
    pred_img = read_label_map(pred_path)
    gt_img = read_label_map(gt_path)
    names = dict(label_names) if label_names else find_label_names(Path(pred_path), Path(gt_path))
    result = evaluate_segmentation(pred_img, gt_img, labels, names)
    result.update(case=case_id(gt_path), pred=str(pred_path), gt=str(gt_path))
    return result


# ------------------------------------------------------------------------------------------------------ label names
def parse_label_names(payload: Any) -> dict[int, str]:
    """Label names from {"labels": {...}} or a bare mapping: id->name, id->{"name": ...} or nnU-Net v2's name->id."""
    if isinstance(payload, dict) and isinstance(payload.get("labels"), dict):
        payload = payload["labels"]
    if not isinstance(payload, dict):
        return {}
    names: dict[int, str] = {}
    for key, value in payload.items():
        if _is_int(key) and isinstance(value, dict) and isinstance(value.get("name"), str):
            names[int(key)] = value["name"]  # the `agn segment` sidecar: {"1": {"name": "spleen", "voxels": ...}}
        elif _is_int(key) and isinstance(value, str):
            names[int(key)] = value
        elif isinstance(value, int) and not isinstance(value, bool) and isinstance(key, str):
            names[int(value)] = key
    names.pop(0, None)
    return names


def _is_int(text: Any) -> bool:
    try:
        int(str(text))
        return True
    except ValueError:
        return False


def load_label_names(path: Path | str) -> dict[int, str]:
    """Label names from a JSON file; AgnError when it cannot be read."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AgnError(f"{path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise AgnError(f"cannot read label names from {path}: {exc}") from None
    names = parse_label_names(payload)
    if not names:
        raise AgnError(f"{path} holds no label names; expected {{\"labels\": {{\"1\": \"spleen\", ...}}}}")
    return names


def _try_names(path: Path) -> dict[int, str]:
    if not path.is_file():
        return {}
    try:
        return parse_label_names(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return {}


def sidecar_candidates(pred: Path) -> list[Path]:
    """Where `agn segment` may have written the label names for a prediction: 'x.nii.gz.json' or 'x.json'."""
    return [pred.with_name(pred.name + ".json"), pred.with_name(case_id(pred) + ".json")]


def find_label_names(pred: Path, gt: Path) -> dict[int, str]:
    """Names from the prediction's sidecar, else a dataset.json in or next to the reference folder; else {}."""
    for cand in sidecar_candidates(pred):
        names = _try_names(cand)
        if names:
            return names
    folder = gt if gt.is_dir() else gt.parent
    for cand in (folder / "dataset.json", folder.parent / "dataset.json"):
        names = _try_names(cand)
        if names:
            return names
    return {}


# ----------------------------------------------------------------------------------------------------- folder mode
def list_label_maps(folder: Path) -> dict[str, Path]:
    """Case id -> file for every label map in `folder` (not recursive)."""
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name.lower().endswith(LABEL_SUFFIXES) and not path.name.startswith("."):
            files.setdefault(case_id(path), path)
    return files


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std (population, NaN-aware) of every metric per class over cases; n = cases with a finite value."""
    by_label: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row)
    summary = []
    for lab in sorted(by_label):
        group = by_label[lab]
        entry: dict[str, Any] = {"label": lab, "name": group[0]["name"], "cases": len(group)}
        for metric in METRICS:
            vals = np.asarray([r[metric] for r in group], dtype=float)
            finite = vals[np.isfinite(vals)]
            entry[f"{metric}_mean"] = float(finite.mean()) if finite.size else math.nan
            entry[f"{metric}_std"] = float(finite.std()) if finite.size else math.nan
            entry[f"{metric}_n"] = int(finite.size)
        summary.append(entry)
    return summary


def evaluate_folders(
    pred_dir: Path | str,
    gt_dir: Path | str,
    labels: list[int] | None = None,
    label_names: Mapping[int, str] | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Match label maps by case id, evaluate each pair, and summarise per class (mean ± std over cases).

    `progress`, if given, is called as progress(done, total, case) after each case.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for folder in (pred_dir, gt_dir):
        if not folder.is_dir():
            raise AgnError(f"{folder} is not a folder")
    preds = list_label_maps(pred_dir)
    gts = list_label_maps(gt_dir)
    matched = sorted(set(preds) & set(gts))
    if not matched:
        raise AgnError(
            f"no file names match between {pred_dir} ({len(preds)} label maps) and {gt_dir} ({len(gts)} label maps); "
            "predictions and references must share case names"
        )
    names_fixed = dict(label_names) if label_names else None
    rows: list[dict[str, Any]] = []
    warnings: list[str] = []
    for i, case in enumerate(matched):
        names = names_fixed if names_fixed is not None else find_label_names(preds[case], gts[case])
        result = evaluate_files(preds[case], gts[case], labels, names)
        warnings.extend(f"{case}: {w}" for w in result["warnings"])
        rows.extend({"case": case, **row} for row in result["classes"])
        if progress is not None:
            progress(i + 1, len(matched), case)
    # A label evaluated in some cases only: its rows elsewhere are missing, not zero; the summary counts per metric.
    return {
        "cases": matched,
        "rows": rows,
        "summary": summarise(rows),
        "unmatched_pred": sorted(set(preds) - set(gts)),
        "unmatched_gt": sorted(set(gts) - set(preds)),
        "warnings": warnings,
    }


# ------------------------------------------------------------------------------------------------------------ CSV
CSV_COLUMNS = ("case", "label", "name") + METRICS + ("tp", "fp", "fn", "note")


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    """Per-case, per-class rows as CSV text (NaN written as empty cells)."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([_csv_cell(row.get(col, "")) for col in CSV_COLUMNS])
    return buf.getvalue()


def _csv_cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.6g}"
    return value
