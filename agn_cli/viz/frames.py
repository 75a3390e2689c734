"""Ultrasound frames as pictures: one frame with its attention heat map, box and label (`agn classify --overlays`,
`agn localise --overlays`), and a contact sheet of such frames with their true boxes (the demo report).

Takes plain arrays and numbers, not classifier results, so that viz stays below the ultrasound pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import cv2
import numpy as np

from agn_cli.viz.draw import WHITE, text

PREDICTED = (0, 255, 0)  # BGR green: the box from attention
TRUTH = (0, 215, 255)  # BGR yellow: the ground-truth box


def overlay_frame(
    image: np.ndarray,
    caption: str,
    attention: Optional[np.ndarray] = None,
    window: Optional[Sequence[int]] = None,
    box: Optional[Sequence[float]] = None,
    alpha: float = 0.4,
) -> np.ndarray:
    """BGR uint8 picture: the frame (grey or RGB), the attention map (0..1) blended on as a jet heat map inside
    `window` (x0, y0, x1, y1: the frame region the network saw), the box (x0, y0, x1, y1 edges) in green and the
    caption top left."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if attention is not None and window is not None:
        x0, y0, x1, y1 = (int(v) for v in window)
        heat = cv2.resize(attention.astype(np.float32), (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
        colour = cv2.applyColorMap(np.clip(heat * 255.0, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
        weight = (alpha * np.clip(heat, 0, 1))[..., None]
        bgr[y0:y1, x0:x1] = (bgr[y0:y1, x0:x1] * (1 - weight) + colour * weight).astype(np.uint8)
    if box is not None:
        draw_box(bgr, box, PREDICTED, max(2, round(max(bgr.shape[:2]) / 300)))
    scale = max(0.5, max(bgr.shape[:2]) / 1000)
    org = (8, int(24 * scale) + 4)
    text(bgr, caption, org, scale, (0, 0, 0), 4)
    text(bgr, caption, org, scale, WHITE, 1)
    return bgr


def draw_box(bgr: np.ndarray, box: Sequence[float], colour: tuple[int, int, int], thickness: int = 1,
             antialias: bool = False) -> None:
    """An (x0, y0, x1, y1) box with edge coordinates, drawn on the pixels just inside its edges."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    cv2.rectangle(bgr, (x0, y0), (x1 - 1, y1 - 1), colour, thickness, cv2.LINE_AA if antialias else cv2.LINE_8)


@dataclass
class SheetTile:
    """One frame of a contact sheet: its overlay picture, the true box (or None), a caption, right or wrong."""

    picture: np.ndarray
    truth_box: Optional[Sequence[float]]
    caption: str
    correct: bool


def frame_sheet(tiles: Sequence[SheetTile], columns: int = 5, tile: tuple[int, int] = (224, 288)) -> np.ndarray:
    """Tiles of (rows, cols) `tile` in rows of `columns`, each with its true box in yellow and a caption bar (dark
    green: plane right, dark red: wrong), and a legend underneath."""
    th, tw = tile
    pictures = []
    for item in tiles:
        bgr = item.picture.copy()
        if item.truth_box is not None:
            draw_box(bgr, item.truth_box, TRUTH, 1, antialias=True)
        bgr = cv2.resize(bgr, (tw, th), interpolation=cv2.INTER_AREA)
        bar = np.zeros((22, tw, 3), np.uint8)
        bar[:] = (40, 110, 40) if item.correct else (40, 40, 170)
        text(bar, item.caption, (6, 15), 0.42, WHITE, 1)
        pictures.append(np.vstack([bgr, bar]))
    if not pictures:
        return np.full((th, tw, 3), 255, np.uint8)
    while len(pictures) % columns:
        pictures.append(np.full(pictures[0].shape, 255, np.uint8))
    sheet = np.vstack([np.hstack(pictures[i : i + columns]) for i in range(0, len(pictures), columns)])
    legend = np.full((24, sheet.shape[1], 3), 255, np.uint8)
    text(legend, "green box: predicted from attention    yellow box: ground truth    heat map: attention gates    "
                 "caption: green = plane right, red = wrong", (8, 17), 0.42)
    return np.vstack([sheet, legend])



def draw_ellipse(
    bgr: np.ndarray, center: tuple[float, float], semi_axes: tuple[float, float], angle_deg: float,
    colour: tuple[int, int, int] | int = PREDICTED, thickness: int = 2, line_type: int = cv2.LINE_AA,
) -> np.ndarray:
    """An ellipse (centre and semi-axes in pixels, angle of the first axis from x in degrees), sub-pixel exact;
    `thickness=-1` fills it (with `line_type=cv2.LINE_8` for a binary mask)."""
    s = 16  # OpenCV shift=4: coordinates in 1/16 pixel
    cv2.ellipse(
        bgr, (round(center[0] * s), round(center[1] * s)), (round(semi_axes[0] * s), round(semi_axes[1] * s)),
        angle_deg, 0, 360, colour, thickness, line_type, shift=4,
    )
    return bgr
