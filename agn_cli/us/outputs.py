"""What `agn classify` and `agn localise` write: result files (JSON or CSV), COCO boxes and overlay PNGs.

Every check runs before the network does, so a bad -o or --overlays fails in a second, and nothing is written
unless the run produced results.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import cv2

from agn_cli.errors import AgnError
from agn_cli.runtime.atomic import atomic_path, check_outputs, write_text_atomic
from agn_cli.runtime.jsonio import dumps
from agn_cli.us.classifier import FrameResult
from agn_cli.us.frames import DICOM_SUFFIXES, VIDEO_SUFFIXES

RESULT_SUFFIXES = (".json", ".csv")
_MULTI_FRAME_SUFFIXES = VIDEO_SUFFIXES + DICOM_SUFFIXES


def check_result_file(
    output: Optional[Path], overwrite: bool, inputs: Sequence[Path | None] = (), allowed: Sequence[str] = RESULT_SUFFIXES
) -> None:
    """Before any compute: -o is a .json or .csv file, new (or --overwrite), and neither an input nor a model card."""
    if output is None:
        return
    if output.suffix.lower() not in allowed:
        raise AgnError(f"-o {output}: use a {' or '.join(allowed)} file")
    check_outputs([output], overwrite, inputs)


def coco_path(output: Path) -> Path:
    """Where the COCO boxes go beside -o: <stem>.coco.json."""
    return output.with_name(f"{output.stem}.coco.json")


def check_overlay_folder(overlays: Optional[Path], overwrite: bool, flag: str = "--overlays") -> None:
    """A folder of per-frame PNGs (`flag` names the option): not a file, and new or empty unless --overwrite."""
    if overlays is None:
        return
    if overlays.exists() and not overlays.is_dir():
        raise AgnError(f"{flag} {overlays} is a file; give a folder")
    if overlays.is_dir() and any(overlays.iterdir()) and not overwrite:
        raise AgnError(f"{flag} folder {overlays} is not empty; pass --overwrite or choose a new folder")


class OverlayNamer:
    """Unique, readable PNG names: <file stem>.png for stills, <stem>_f<frame>.png for clips; collisions get -2, -3."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, result: FrameResult) -> str:
        stem = Path(result.path).stem
        multi = result.frame > 0 or Path(result.path).suffix.lower() in _MULTI_FRAME_SUFFIXES
        base = f"{stem}_f{result.frame:05d}" if multi else stem
        name, n = f"{base}.png", 1
        while name.lower() in self.used:
            n += 1
            name = f"{base}-{n}.png"
        self.used.add(name.lower())
        return name


def overlay_writer(overlays: Optional[Path]) -> Optional[Callable[[FrameResult], None]]:
    """A callback that writes one overlay PNG per result (atomically) and then frees its image, or None."""
    if overlays is None:
        return None
    overlays.mkdir(parents=True, exist_ok=True)
    namer = OverlayNamer()

    def write(result: FrameResult) -> None:
        picture = result.overlay()
        with atomic_path(overlays / namer(result), overwrite=True) as tmp:
            if not cv2.imwrite(str(tmp), picture):
                raise AgnError(f"cannot write overlay into {overlays}")
        result.image = None  # free the frame once drawn
        result.attention = None

    return write


def results_to_csv(results: Sequence[dict[str, Any]]) -> str:
    """CSV with the JSON's columns: top-k as 'label:p;label:p', box as x0,y0,x1,y1; with ground truth (rows that
    carry gt_box, from `agn localise --gt`) also gt_x0..gt_y1 and iou."""
    with_truth = any("gt_box" in r for r in results)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["path", "frame", "label", "confidence", "topk", "x0", "y0", "x1", "y1", "box_score"]
    writer.writerow(header + (["gt_x0", "gt_y0", "gt_x1", "gt_y1", "iou"] if with_truth else []))
    for r in results:
        topk = ";".join(f"{name}:{p:.6f}" for name, p in r["topk"])
        row = [r["path"], r["frame"], r["label"], f"{r['confidence']:.6f}", topk, *_cells(r.get("box")),
               _cell(r.get("box_score"))]
        if with_truth:
            row += [*_cells(r.get("gt_box")), _cell(r.get("iou"))]
        writer.writerow(row)
    return buffer.getvalue()


def _cell(value: Any) -> Any:
    return "" if value is None else value


def _cells(box: Optional[Sequence[float]]) -> list[Any]:
    return [_cell(v) for v in (box or [None] * 4)]


def results_to_coco(results: Sequence[dict[str, Any]], labels: Sequence[str], shapes: Sequence[tuple[int, ...]]) -> dict[str, Any]:
    """COCO detection JSON: one image per frame, one box annotation per frame that has a box (bbox = x, y, w, h)."""
    images, annotations = [], []
    for image_id, (r, shape) in enumerate(zip(results, shapes), start=1):
        images.append(
            {"id": image_id, "file_name": r["path"], "frame": r["frame"], "height": int(shape[0]), "width": int(shape[1])}
        )
        if r.get("box"):
            x0, y0, x1, y1 = r["box"]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": labels.index(r["label"]) + 1,
                    "bbox": [x0, y0, round(x1 - x0, 1), round(y1 - y0, 1)],
                    "area": round((x1 - x0) * (y1 - y0), 1),
                    "iscrowd": 0,
                    "score": r["box_score"] if r.get("box_score") is not None else r["confidence"],
                }
            )
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(labels)]
    return {"images": images, "annotations": annotations, "categories": categories}


def write_results(output: Path, payload: dict[str, Any], overwrite: bool) -> Path:
    """The payload as JSON, or its frames as CSV, by -o's suffix."""
    if output.suffix.lower() == ".csv":
        return write_text_atomic(output, results_to_csv(payload["frames"]), overwrite)
    return write_text_atomic(output, dumps(payload), overwrite)
