"""Ground-truth boxes for frames, and scoring predicted boxes against them (the attention paper's Table 7).

Two sources: a CSV with columns path,x0,y0,x1,y1 (optional frame, label; a row with all four coordinates empty
means "no object in this frame", as `agn synth us` writes for background frames), matched to inputs by path, file
name or stem; or a folder of masks whose bounding box is the target, matched by stem with an optional mask suffix
(`004_HC.png` <-> `004_HC_Mask.png`). Used by `agn localise --gt` and the demo.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from agn_cli.errors import AgnError
from agn_cli.us.frames import IMAGE_SUFFIXES
from agn_cli.us.localisation import box_iou, localisation_table, mask_box

MASK_SUFFIXES = ("_mask", "-mask", "_seg", "_gt", "_label", "_annotation", "_segmentation")
_COORDS = ("x0", "y0", "x1", "y1")

Box = list[float]


def mask_key(stem: str) -> str:
    """Match key of a mask file: its stem, lower case, without a mask suffix."""
    key = stem.lower()
    for suffix in MASK_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return key


class GroundTruth:
    """Target boxes (x0, y0, x1, y1, edges) for inputs, from a CSV of boxes or a folder of masks."""

    def __init__(self, source: Path | str, label: Optional[str] = None) -> None:
        self.source = Path(source)
        self.label = label
        self.boxes: dict[str, list[tuple[Optional[Box], Optional[str], Optional[int]]]] = {}
        self.masks: dict[str, Path] = {}
        if self.source.is_dir():
            for mask in sorted(self.source.rglob("*")):
                if mask.is_file() and mask.suffix.lower() in IMAGE_SUFFIXES:
                    self.masks.setdefault(mask_key(mask.stem), mask)
            if not self.masks:
                raise AgnError(f"--gt folder {self.source} holds no mask images (PNG, TIFF, ...)")
        elif self.source.is_file():
            self._read_csv(self.source)
        else:
            raise AgnError(f"--gt {self.source} not found; give a CSV of boxes (path,x0,y0,x1,y1) or a folder of masks")

    def _read_csv(self, source: Path) -> None:
        try:
            with open(source, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                columns = {c.strip().lower() for c in (reader.fieldnames or [])}
                if not {"path", *_COORDS} <= columns:
                    raise AgnError(f"--gt {source} needs a header with path,x0,y0,x1,y1 (optional frame,label)")
                for n, row in enumerate(reader, start=2):
                    row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
                    entry = (_row_box(row, source, n), row.get("label") or None, _row_frame(row, source, n))
                    for key in {row["path"], Path(row["path"]).name, Path(row["path"]).stem}:
                        self.boxes.setdefault(key.lower(), []).append(entry)
        except (OSError, UnicodeDecodeError) as exc:
            raise AgnError(f"cannot read --gt {source}: {exc}") from exc

    def lookup(self, path: str, frame: int, shape: Sequence[int] = ()) -> tuple[Optional[list[Box]], Optional[str], str]:
        """(boxes or None, label, status) where status is 'ok', 'unmatched' or 'empty' (no object in the frame).

        A mask must have its frame's size (`shape`, rows and cols): boxes are compared in frame pixels, so a mask of
        another size would score IoU 0 in silence."""
        p = Path(path)
        if self.masks:
            mask = self.masks.get(p.stem.lower())
            if mask is None:
                return None, None, "unmatched"
            import cv2

            image = cv2.imread(str(mask), cv2.IMREAD_UNCHANGED)
            if image is None:
                raise AgnError(f"cannot read mask {mask}")
            if len(shape) >= 2 and tuple(image.shape[:2]) != tuple(shape[:2]):
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
                boxes = [e[0] for e in chosen if e[0] is not None]
                return boxes or None, chosen[0][1] or self.label, "ok" if boxes else "empty"
        return None, None, "unmatched"


def _row_box(row: dict[str, str], source: Path, n: int) -> Optional[Box]:
    if not any(row.get(k) for k in _COORDS):
        return None  # no object in this frame
    try:
        box = [float(row[k]) for k in _COORDS]
    except ValueError:
        raise AgnError(f"--gt {source} line {n}: box coordinates must be numbers (or all four empty)") from None
    if box[2] <= box[0] or box[3] <= box[1]:
        raise AgnError(f"--gt {source} line {n}: need x1 > x0 and y1 > y0")
    return box


def _row_frame(row: dict[str, str], source: Path, n: int) -> Optional[int]:
    try:
        return int(row["frame"]) if row.get("frame") else None
    except ValueError:
        raise AgnError(f"--gt {source} line {n}: frame must be a whole number") from None


def best_match(box: Optional[Sequence[float]], targets: Sequence[Box]) -> tuple[Box, float]:
    """The target box the predicted `box` overlaps most, and that IoU (0 when there is no predicted box)."""
    if not box:
        return targets[0], 0.0
    best = max(targets, key=lambda t: box_iou(box, t))
    return best, box_iou(box, best)


@dataclass
class Scoring:
    """How the frames met the ground truth, and the Table 7 metrics of those that had a box."""

    metrics: dict[str, dict[str, float]]
    counts: dict[str, int] = field(default_factory=dict)  # 'ok', 'unmatched', 'empty'


def score_frames(
    frames: list[dict[str, Any]], truth: GroundTruth, shapes: Optional[Sequence[Sequence[int]]] = None
) -> Scoring:
    """Add gt_box and iou (4 decimals; None without a target) to each frame row (`FrameResult.to_dict()`), and
    return the metrics per class: the ground-truth label where known, else the predicted one. `shapes` (each
    frame's rows, cols) lets mask ground truth refuse masks of another size."""
    records: list[tuple[str, float]] = []
    counts = {"ok": 0, "unmatched": 0, "empty": 0}
    for i, row in enumerate(frames):
        boxes, label, status = truth.lookup(row["path"], row["frame"], shapes[i] if shapes else ())
        counts[status] += 1
        row["gt_box"], row["iou"] = None, None
        if boxes is None:
            continue
        row["gt_box"], iou = best_match(row["box"], boxes)
        row["iou"] = round(iou, 4)
        records.append((label or row["label"], row["iou"]))
    if not records:
        raise AgnError(f"--gt {truth.source} matched none of the {len(frames)} frames; check the file names (or CSV paths)")
    return Scoring(localisation_table(records), counts)
