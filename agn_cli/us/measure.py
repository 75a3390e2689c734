"""Head circumference from ultrasound frames: segment the head with a 2D Attention U-Net, fit the skull ellipse.

The network runs at the card's input size (the frame resized as `agn classify` does, through the card's
`preprocessing`); its head probability is resized back to the frame's own pixels before thresholding, so the mask,
the ellipse and the circumference are all in input pixels and the pixel size applies directly.

A frame with no pixel size gets its ellipse in pixels and `hc_mm = None` (never an invented scale); a frame where no
head is found gets `hc_mm = None` and a reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import cv2
import numpy as np
import torch

from agn_cli.errors import AgnError
from agn_cli.runtime.checkpoint import ModelCard, find_default_weights, load_checkpoint
from agn_cli.us.biometry import Ellipse, fit_head_ellipse, head_circumference_mm, largest_component
from agn_cli.us.frame_segmentation import network_probabilities, to_frame
from agn_cli.us.frames import Frame, kind_of
from agn_cli.viz.frames import draw_ellipse, overlay_frame

# Heads smaller than this share of the frame are not measured: a speck is not a fetal head.
MIN_HEAD_FRACTION = 0.005


@dataclass
class HeadMeasurement:
    """One frame's result; the ellipse is in input pixels (x right, y down), HC in mm when the pixel size is known."""

    path: str
    frame: int
    hc_mm: float | None
    pixel_size_mm: float | None
    ellipse: Ellipse | None
    quality: dict[str, float] = field(default_factory=dict)
    reason: str | None = None
    mask_path: str | None = None
    mask: np.ndarray | None = field(default=None, repr=False)  # (rows, cols) bool, input pixels
    attention: np.ndarray | None = field(default=None, repr=False)  # (rows, cols) float in [0, 1], input pixels
    image: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "frame": self.frame,
            "hc_mm": None if self.hc_mm is None else round(self.hc_mm, 3),
            "pixel_size_mm": self.pixel_size_mm,
            "ellipse": None if self.ellipse is None else {k: round(v, 4) for k, v in self.ellipse.as_dict().items()},
            "mask": self.mask_path,
            "quality": {k: round(v, 4) for k, v in self.quality.items()},
            **({"reason": self.reason} if self.reason else {}),
        }


def dicom_pixel_size_mm(path: Path) -> float | None:
    """Pixel size of an ultrasound DICOM: its first calibrated region (cm -> mm), else PixelSpacing; None if absent.

    Ultrasound objects store calibration per region (SequenceOfUltrasoundRegions, units code 3 = cm); only square
    pixels are accepted, since an HC in mm needs the same scale along both axes.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - an unreadable header means no calibration, the frame reader reports the file
        return None
    for region in getattr(ds, "SequenceOfUltrasoundRegions", []) or []:
        if getattr(region, "PhysicalUnitsXDirection", None) == 3 and getattr(region, "PhysicalUnitsYDirection", None) == 3:
            dx, dy = abs(float(region.PhysicalDeltaX)) * 10.0, abs(float(region.PhysicalDeltaY)) * 10.0
            if dx > 0 and math.isclose(dx, dy, rel_tol=0.01):
                return dx
    spacing = getattr(ds, "PixelSpacing", None)
    if spacing is not None and len(spacing) == 2 and math.isclose(float(spacing[0]), float(spacing[1]), rel_tol=0.01):
        return float(spacing[0]) if float(spacing[0]) > 0 else None
    return None


def pixel_size_lookup(
    fixed: float | None = None, table: dict[str, float] | None = None
) -> Callable[[Frame], float | None]:
    """Where a frame's pixel size comes from, first match wins: --pixel-size, the CSV by file name, the DICOM header."""
    if fixed is not None and not fixed > 0:
        raise AgnError(f"--pixel-size must be positive, got {fixed}")

    def lookup(frame: Frame) -> float | None:
        if fixed is not None:
            return fixed
        if table and frame.path.name in table:
            return table[frame.path.name]
        if kind_of(frame.path) == "dicom":
            return dicom_pixel_size_mm(frame.path)
        return None

    return lookup


class HeadMeasurer:
    """A loaded 2D head-segmentation model: `measure(frame, pixel_size)` -> HeadMeasurement."""

    def __init__(self, weights: Path | str | None = None, device: str | torch.device = "cpu", fast: bool = True):
        from agn_cli.runtime.fast import prepare_model

        if weights is None:
            weights = find_default_weights("segmentation", dims=2)
            if weights is None:
                raise AgnError("no default 2D head-segmentation weights installed; pass --weights W.safetensors")
        self.weights = Path(weights)
        model, card = load_checkpoint(self.weights, device="cpu")
        if card.task not in ("head-segmentation", "segmentation") or getattr(model, "dims", 2) != 2:
            raise AgnError(f"{self.weights} is a {card.task} model; agn measure hc needs a 2D head-segmentation checkpoint")
        self.card: ModelCard = card
        self.device = torch.device(device)
        self.model = prepare_model(model, self.device, fast=fast)
        self.preprocessing = dict(card.preprocessing)
        if not self.preprocessing.get("size") and card.patch_size:
            self.preprocessing["size"] = list(card.patch_size)
        self.head_class = next((k for k, v in card.labels.items() if v.lower() in ("head", "fetal_head")), 1)
        self.hc_offset_mm = float(card.postprocessing.get("hc_offset_mm", 0.0))

    @torch.no_grad()
    def probabilities(self, images: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Head probability (N, rows, cols) at network size, and the mean attention map of the finest gate."""
        probs, attention = network_probabilities(self.model, images, self.preprocessing, self.device)
        probs = probs[:, self.head_class]
        maps = []
        if attention:
            finest = attention[min(attention)]  # "level2": the finest gated skip
            maps = list(finest.float().mean(dim=1).cpu().numpy())
        return probs, maps

    def measure_batch(self, frames: list[Frame], pixel_sizes: list[float | None]) -> list[HeadMeasurement]:
        probs, maps = self.probabilities([frame.image for frame in frames])
        results = []
        for i, (frame, pixel_size) in enumerate(zip(frames, pixel_sizes)):
            rows, cols = frame.image.shape[:2]
            prob = to_frame(probs[i], (rows, cols))
            attention = to_frame(maps[i], (rows, cols)) if maps else None
            results.append(self._from_probability(frame, prob, pixel_size, attention))
        return results

    def _from_probability(
        self, frame: Frame, prob: np.ndarray, pixel_size: float | None, attention: np.ndarray | None
    ) -> HeadMeasurement:
        head = largest_component(prob > 0.5)
        result = HeadMeasurement(str(frame.path), frame.index, None, pixel_size, None, mask=head, attention=attention)
        fraction = float(head.mean())
        result.quality["head_fraction"] = fraction
        if fraction < MIN_HEAD_FRACTION:
            result.reason = "no head found (the segmented head covers under 0.5 % of the frame)"
            return result
        result.quality["mean_probability"] = float(prob[head].mean())
        ellipse = fit_head_ellipse(head, largest_only=False)
        if ellipse is None:
            result.reason = "no ellipse could be fitted to the head boundary"
            return result
        result.ellipse = ellipse
        result.quality["ellipse_iou"] = _ellipse_iou(ellipse, head)
        if pixel_size is None:
            result.reason = "no pixel size (give --pixel-size or --pixel-sizes): ellipse in pixels only"
        else:
            result.hc_mm = head_circumference_mm(ellipse, pixel_size) + self.hc_offset_mm
        return result


def ellipse_mask(ellipse: Ellipse, shape: tuple[int, int]) -> np.ndarray:
    """The filled ellipse rasterised on a frame of `shape` (sub-pixel centre and axes)."""
    mask = np.zeros(shape, np.uint8)
    draw_ellipse(mask, (ellipse.center_x, ellipse.center_y), (ellipse.semi_axis_a, ellipse.semi_axis_b),
                 ellipse.angle_deg, colour=1, thickness=-1, line_type=cv2.LINE_8)
    return mask.astype(bool)


def _ellipse_iou(ellipse: Ellipse, head: np.ndarray) -> float:
    """How well the ellipse explains the segmented head (1 = the mask is the ellipse)."""
    drawn = ellipse_mask(ellipse, head.shape)
    union = np.logical_or(drawn, head).sum()
    return float(np.logical_and(drawn, head).sum() / union) if union else 0.0


def challenge_rows(results: Iterable[HeadMeasurement]) -> list[list[str]]:
    """HC18 submission rows: filename, centre x/y (mm), semi-axes a/b (mm), angle (radians); measured frames only."""
    rows = [["filename", "center_x_mm", "center_y_mm", "semi_axes_a_mm", "semi_axes_b_mm", "angle_rad"]]
    for r in results:
        if r.ellipse is None or r.pixel_size_mm is None:
            continue
        e, s = r.ellipse, r.pixel_size_mm
        rows.append([Path(r.path).name, *(f"{v:.6f}" for v in (e.center_x * s, e.center_y * s, e.semi_axis_a * s,
                                                                 e.semi_axis_b * s, math.radians(e.angle_deg)))])
    return rows


# ---------------------------------------------------------------------------------------------- `agn measure hc`


@dataclass
class MeasureOutputs:
    """What `agn measure hc` writes; every path is checked before the network runs."""

    results: Path | None = None  # .json: {"frames": [...], "summary": {...}}
    masks: Path | None = None  # folder: <stem>_mask.png, uint8 0/255, the frame's size
    overlays: Path | None = None  # folder: <stem>.png, ellipse + HC + attention on the frame
    challenge_csv: Path | None = None  # HC18 submission rows
    overwrite: bool = False

    def check(self, inputs: Iterable[Path | None]) -> None:
        from agn_cli.runtime.atomic import check_outputs, ensure_folder
        from agn_cli.us.outputs import check_overlay_folder

        if self.results is not None and self.results.suffix.lower() != ".json":
            raise AgnError(f"-o {self.results}: use a .json file (the challenge CSV goes to --challenge-csv)")
        if self.challenge_csv is not None and self.challenge_csv.suffix.lower() != ".csv":
            raise AgnError(f"--challenge-csv {self.challenge_csv}: use a .csv file")
        check_outputs([self.results, self.challenge_csv], self.overwrite, inputs)
        for flag, folder in (("--masks", self.masks), ("--overlays", self.overlays)):
            if folder is not None:
                check_overlay_folder(folder, self.overwrite, flag)
                ensure_folder(folder)


def _frame_stem(frame: Frame) -> str:
    multi = frame.index > 0 or kind_of(frame.path) in ("dicom", "video")
    return f"{frame.path.stem}_f{frame.index:05d}" if multi else frame.path.stem


def overlay_picture(result: HeadMeasurement) -> np.ndarray:
    """The frame with the attention map of the finest gate, the fitted ellipse and the HC (or why there is none)."""
    rows, cols = result.image.shape[:2]
    caption = f"HC {result.hc_mm:.1f} mm" if result.hc_mm is not None else (result.reason or "no HC")
    picture = overlay_frame(result.image, caption, result.attention, window=(0, 0, cols, rows))
    if result.ellipse is not None:
        e = result.ellipse
        draw_ellipse(picture, (e.center_x, e.center_y), (e.semi_axis_a, e.semi_axis_b), e.angle_deg,
                     thickness=max(2, round(max(rows, cols) / 400)))
    return picture


def measure_hc(
    measurer: HeadMeasurer,
    inputs: list[Path],
    pixel_size: Callable[[Frame], float | None],
    outputs: MeasureOutputs,
    every: int = 1,
    batch_size: int = 8,
    on_error: Callable[[Path, str], None] | None = None,
    on_result: Callable[[HeadMeasurement], None] | None = None,
) -> dict[str, Any]:
    """Measure every frame of `inputs`, write the requested outputs, return the JSON payload (frames + summary).

    Masks and overlays are written as each frame is done (exclusively unless --overwrite); the results JSON and the
    challenge CSV last, so their presence means the run completed. No frame read at all is an error (exit 2)."""
    import time

    from agn_cli.runtime.atomic import write_text_atomic
    from agn_cli.runtime.jsonio import dumps
    from agn_cli.us.frames import iter_frames
    from agn_cli.viz.draw import write_png

    failed: list[dict[str, str]] = []

    def report(path: Path, message: str) -> None:
        failed.append({"path": str(path), "error": message})
        if on_error is not None:
            on_error(path, message)

    keep = outputs.overlays is not None
    results: list[HeadMeasurement] = []
    names: set[str] = set()
    start = time.perf_counter()
    for frame, result in measure_frames(measurer, iter_frames(inputs, every, on_error=report), pixel_size, batch_size):
        stem = _frame_stem(frame)
        while stem.lower() in names:  # two inputs with one name in different folders
            stem += "-2"
        names.add(stem.lower())
        if outputs.masks is not None:
            mask_path = outputs.masks / f"{stem}_mask.png"
            write_png(mask_path, result.mask.astype(np.uint8) * 255, overwrite=outputs.overwrite)
            result.mask_path = str(mask_path)
        if keep:
            result.image = frame.image
            write_png(outputs.overlays / f"{stem}.png", overlay_picture(result), overwrite=outputs.overwrite)
        result.image = result.attention = result.mask = None  # keep memory flat over long runs
        results.append(result)
        if on_result is not None:
            on_result(result)
    seconds = time.perf_counter() - start
    if not results:
        what = f"none of the {len(failed)} input(s) could be read" if failed else "no frames found in the inputs"
        raise AgnError(f"{what}; give PNG, JPEG, TIFF, BMP, DICOM or video files, or folders of them")
    hcs = [r.hc_mm for r in results if r.hc_mm is not None]
    summary = {
        "frames": len(results),
        "measured": len(hcs),
        "no_head": sum(1 for r in results if r.ellipse is None),
        "no_pixel_size": sum(1 for r in results if r.ellipse is not None and r.pixel_size_mm is None),
        "failed": failed,
        "seconds": round(seconds, 3),
        "frames_per_second": round(len(results) / seconds, 2) if seconds > 0 else None,
        "device": str(measurer.device),
        "weights": str(measurer.weights),
        "hc_offset_mm": measurer.hc_offset_mm,
        "perimeter": "Ramanujan II, ellipse fitted to the outer boundary of the largest segmented component",
    }
    payload = {"frames": [r.to_dict() for r in results], "summary": summary}
    if outputs.challenge_csv is not None:
        text = "\n".join(",".join(row) for row in challenge_rows(results)) + "\n"
        write_text_atomic(outputs.challenge_csv, text, outputs.overwrite)
    if outputs.results is not None:
        write_text_atomic(outputs.results, dumps(payload), outputs.overwrite)
    return payload


def measure_frames(
    measurer: HeadMeasurer, frames: Iterable[Frame], pixel_size: Callable[[Frame], float | None], batch_size: int
) -> Iterator[tuple[Frame, HeadMeasurement]]:
    """(frame, result) pairs in input order; frames of one size share a forward pass. Results keep their mask and
    attention map (the caller drops them when done)."""
    chunk: list[Frame] = []
    for frame in frames:
        if chunk and (len(chunk) >= batch_size or frame.image.shape[:2] != chunk[0].image.shape[:2]):
            yield from zip(chunk, measurer.measure_batch(chunk, [pixel_size(f) for f in chunk]))
            chunk = []
        chunk.append(frame)
    if chunk:
        yield from zip(chunk, measurer.measure_batch(chunk, [pixel_size(f) for f in chunk]))
