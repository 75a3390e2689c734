"""Classification metrics and the readers that pair `agn classify` output with a ground-truth table.

Conventions:

* Confusion matrix rows are reference classes, columns predicted classes.
* Precision of a class that has reference frames but was never predicted is 0 (note "never predicted"), as is its F1.
* A class with no support (predicted but absent from the reference) has recall and F1 NaN, precision 0 (every
  prediction of it is wrong), and is excluded from the macro averages, with a note. Macro averages run over the
  classes with support only; macro recall is the balanced accuracy.
"""

from __future__ import annotations

import csv
import io
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from agn_cli.ct.volume import LABEL_SUFFIXES
from agn_cli.errors import AgnError
from agn_cli.us.frames import FRAME_SUFFIXES

BUILTIN_MAPS = {"fetal-planes-db": "sononet_to_fetal_planes_db.json"}
_IMAGE_SUFFIXES = FRAME_SUFFIXES + LABEL_SUFFIXES + (".gif", ".npy", ".npz")  # stripped from names to match files
_NAME_COLUMNS = ("path", "filename", "file", "file_name", "image_name", "image", "name")
_LABEL_COLUMNS = ("label", "sononet_label", "plane", "class", "prediction", "predicted")


# --------------------------------------------------------------------------------------------------------- metrics
def classification_metrics(
    y_true: Sequence[str], y_pred: Sequence[str], classes: Sequence[str] | None = None
) -> dict[str, Any]:
    """Accuracy, macro and per-class precision/recall/F1/support and the confusion matrix (rows = reference)."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} reference labels but {len(y_pred)} predictions")
    if classes is None:
        classes = sorted(set(y_true) | set(y_pred))
    else:
        extra = sorted((set(y_true) | set(y_pred)) - set(classes))
        classes = list(classes) + extra
    index = {c: i for i, c in enumerate(classes)}
    cm = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for t, p in zip(y_true, y_pred):
        cm[index[t], index[p]] += 1
    return confusion_metrics(cm, classes)


def confusion_metrics(cm: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """`classification_metrics` from a confusion matrix (rows = reference); what training's validation logs."""
    cm = np.asarray(cm, dtype=np.int64)
    if cm.sum() == 0:
        raise AgnError("nothing to evaluate: no frame has both a prediction and a reference label")
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    per_class = []
    notes = []
    for i, name in enumerate(classes):
        s, n_pred, hit = int(support[i]), int(predicted[i]), int(tp[i])
        precision = hit / n_pred if n_pred else 0.0
        recall = hit / s if s else math.nan
        note = ""
        if s == 0:
            f1 = math.nan
            note = "no support: not in the reference; excluded from macro averages"
            notes.append(f"{name}: {note}")
        else:
            f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
            if n_pred == 0:
                note = "never predicted (precision taken as 0)"
        per_class.append(
            {"class": name, "precision": precision, "recall": recall, "f1": f1, "support": s, "predicted": n_pred,
             "correct": hit, "note": note}
        )
    supported = [r for r in per_class if r["support"] > 0]
    macro = {
        key: float(np.mean([r[key] for r in supported])) if supported else math.nan
        for key in ("precision", "recall", "f1")
    }
    return {
        "n": int(cm.sum()),
        "correct": int(tp.sum()),
        "accuracy": float(tp.sum() / cm.sum()),
        "macro_precision": macro["precision"],
        "macro_recall": macro["recall"],
        "macro_f1": macro["f1"],
        "macro_classes": len(supported),
        "classes": list(classes),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "notes": notes,
    }


# ----------------------------------------------------------------------------------------------------- name keys
def name_key(name: str) -> str:
    """Match key of a file: base name, image extension removed, lower case ('a/B.PNG' -> 'b')."""
    base = str(name).replace("\\", "/").rsplit("/", 1)[-1].strip()
    low = base.lower()
    for suffix in _IMAGE_SUFFIXES:
        if low.endswith(suffix) and len(low) > len(suffix):
            return low[: -len(suffix)]
    return low


def _frame(value: Any, where: str) -> int:
    if value is None or (isinstance(value, str) and not value.strip()):
        return 0
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise AgnError(f"{where}: frame '{value}' is not a whole number") from None
    if not f.is_integer() or f < 0:
        raise AgnError(f"{where}: frame '{value}' is not a non-negative whole number")
    return int(f)


# -------------------------------------------------------------------------------------------------------- readers
def _read_text(path: Path) -> str:
    if not path.exists():
        raise AgnError(f"{path} does not exist")
    if path.is_dir():
        raise AgnError(f"{path} is a folder; give a JSON or CSV file")
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise AgnError(f"cannot read {path}: {exc}") from None


def _read_table(path: Path, text: str) -> tuple[list[str], list[dict[str, str]]]:
    """CSV or semicolon/tab separated table with a header row; columns normalised to lower case, stripped."""
    first = text.split("\n", 1)[0]
    delimiter = max((";", ",", "\t"), key=first.count)
    if first.count(delimiter) == 0:
        delimiter = ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise AgnError(f"{path} is empty") from None
    rows = []
    for values in reader:
        if not any(v.strip() for v in values):
            continue
        rows.append({h: (values[i].strip() if i < len(values) else "") for i, h in enumerate(header)})
    return header, rows


def _pick(header: Sequence[str], candidates: Sequence[str]) -> str | None:
    for cand in candidates:
        if cand in header:
            return cand
    return None


Entries = dict[tuple[str, int], dict[str, Any]]


def _add(entries: Entries, key: tuple[str, int], item: dict[str, Any], duplicates: list[str]) -> None:
    if key in entries:
        duplicates.append(f"{key[0]} frame {key[1]}")
        return
    entries[key] = item


def read_predictions(path: Path | str) -> tuple[Entries, list[str]]:
    """(name key, frame) -> {"name", "frame", "label", ...} from `agn classify` JSON or CSV; also duplicate keys."""
    path = Path(path)
    text = _read_text(path)
    entries: Entries = {}
    duplicates: list[str] = []
    if path.suffix.lower() == ".json" or text.lstrip().startswith(("{", "[")):
        try:
            payload = json.loads(text)
        except ValueError as exc:
            raise AgnError(f"{path} is not valid JSON ({exc})") from None
        frames = payload.get("frames") if isinstance(payload, dict) else payload
        if not isinstance(frames, list):
            raise AgnError(f"{path} has no 'frames' list; give the JSON written by 'agn classify --json'")
        for i, item in enumerate(frames):
            if not isinstance(item, dict):
                raise AgnError(f"{path}: frames[{i}] is not an object")
            name = item.get("path", item.get("file", item.get("filename")))
            label = item.get("label", item.get("prediction"))
            if name is None or label is None:
                raise AgnError(f"{path}: frames[{i}] lacks 'path' or 'label'")
            frame = _frame(item.get("frame"), f"{path} frames[{i}]")
            _add(entries, (name_key(name), frame), {"name": str(name), "frame": frame, "label": str(label)}, duplicates)
        return entries, duplicates
    header, rows = _read_table(path, text)
    name_col, label_col = _pick(header, _NAME_COLUMNS), _pick(header, _LABEL_COLUMNS)
    if name_col is None or label_col is None:
        raise AgnError(f"{path} needs columns path and label (found: {', '.join(header)})")
    for i, row in enumerate(rows):
        frame = _frame(row.get("frame"), f"{path} row {i + 2}")
        item = {"name": row[name_col], "frame": frame, "label": row[label_col]}
        _add(entries, (name_key(row[name_col]), frame), item, duplicates)
    return entries, duplicates


def read_ground_truth(path: Path | str) -> tuple[Entries, list[str]]:
    """(name key, frame) -> {"name", "frame", "label"} from a CSV 'path,label' (or 'filename,sononet_label', or the
    FETAL_PLANES_DB 'Image_name;...;Plane' table); frame column optional (default 0)."""
    path = Path(path)
    text = _read_text(path)
    header, rows = _read_table(path, text)
    name_col, label_col = _pick(header, _NAME_COLUMNS), _pick(header, _LABEL_COLUMNS)
    if name_col is None or label_col is None:
        raise AgnError(
            f"{path} needs a file-name column (path, filename or Image_name) and a label column "
            f"(label, sononet_label or Plane); found: {', '.join(header)}"
        )
    entries: Entries = {}
    duplicates: list[str] = []
    for i, row in enumerate(rows):
        if not row.get(name_col) or not row.get(label_col):
            continue
        frame = _frame(row.get("frame"), f"{path} row {i + 2}")
        item = {"name": row[name_col], "frame": frame, "label": row[label_col]}
        _add(entries, (name_key(row[name_col]), frame), item, duplicates)
    if not entries:
        raise AgnError(f"{path} has no labelled rows")
    return entries, duplicates


# ---------------------------------------------------------------------------------------------------- label maps
def load_label_map(spec: str | Path) -> dict[str, str]:
    """A predicted-label -> reference-label mapping from a JSON file or a built-in name ('fetal-planes-db')."""
    spec_s = str(spec)
    if spec_s in BUILTIN_MAPS:
        source = resources.files("agn_cli.metrics").joinpath("maps").joinpath(BUILTIN_MAPS[spec_s])
        text = source.read_text(encoding="utf-8")
        where = f"built-in map '{spec_s}'"
    else:
        path = Path(spec_s)
        if not path.exists():
            raise AgnError(f"{path} does not exist (built-in maps: {', '.join(BUILTIN_MAPS)})")
        text = _read_text(path)
        where = str(path)
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise AgnError(f"{where} is not valid JSON ({exc})") from None
    if isinstance(payload, dict) and isinstance(payload.get("map"), dict):
        payload = payload["map"]
    if not isinstance(payload, dict) or not all(isinstance(v, str) for v in payload.values()):
        raise AgnError(f"{where} must be a JSON object of predicted label -> reference label strings")
    return {str(k): v for k, v in payload.items()}


def apply_label_map(
    labels: Iterable[str], mapping: Mapping[str, str], reference_classes: Iterable[str]
) -> tuple[list[str], list[str]]:
    """Translate predicted labels; unmapped ones become 'Other' when the reference has that class, else stay.

    Returns (translated labels, sorted list of predicted labels that were not in the map).
    """
    ref = set(reference_classes)
    fallback = "Other" if "Other" in ref else None
    out, unmapped = [], set()
    for lab in labels:
        if lab in mapping:
            out.append(mapping[lab])
        else:
            unmapped.add(lab)
            out.append(fallback if fallback is not None else lab)
    return out, sorted(unmapped)


# ----------------------------------------------------------------------------------------------------- evaluation
def evaluate_classification(
    pred_path: Path | str, gt_path: Path | str, label_map: str | Path | None = None
) -> dict[str, Any]:
    """Match predictions to reference labels by file name stem and frame, then compute `classification_metrics`."""
    preds, dup_p = read_predictions(pred_path)
    gts, dup_g = read_ground_truth(gt_path)
    matched = [k for k in preds if k in gts]
    unmatched_pred = [f"{preds[k]['name']} frame {k[1]}" for k in preds if k not in gts]
    unmatched_gt = [f"{gts[k]['name']} frame {k[1]}" for k in gts if k not in preds]
    if not matched:
        raise AgnError(
            f"no prediction in {pred_path} matches a file name in {gt_path} "
            "(matching uses the file name without folder and extension, case-insensitive, and the frame index)"
        )
    y_true = [gts[k]["label"] for k in matched]
    raw_pred = [preds[k]["label"] for k in matched]
    warnings = [f"duplicate prediction for {d}; kept the first" for d in dup_p]
    warnings += [f"duplicate reference row for {d}; kept the first" for d in dup_g]
    mapping: dict[str, str] = {}
    unmapped: list[str] = []
    if label_map is not None:
        mapping = load_label_map(label_map)
        ref_classes = {g["label"] for g in gts.values()}
        y_pred, unmapped = apply_label_map(raw_pred, mapping, ref_classes)
        if unmapped:
            target = "'Other'" if "Other" in ref_classes else "themselves"
            warnings.append(f"predicted labels not in the map, mapped to {target}: {', '.join(unmapped)}")
    else:
        y_pred = raw_pred
    ref_order = sorted({g["label"] for g in gts.values()})
    metrics = classification_metrics(y_true, y_pred, ref_order)
    frames = [
        {"name": preds[k]["name"], "frame": k[1], "predicted": p_raw, "mapped": p, "reference": t, "correct": p == t}
        for k, p_raw, p, t in zip(matched, raw_pred, y_pred, y_true)
    ]
    return {
        **metrics,
        "matched": len(matched),
        "unmatched_pred": unmatched_pred,
        "unmatched_gt": unmatched_gt,
        "label_map": str(label_map) if label_map is not None else None,
        "unmapped_labels": unmapped,
        "warnings": warnings,
        "frames": frames,
    }
