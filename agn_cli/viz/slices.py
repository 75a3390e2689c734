"""CT slices as pictures: the one renderer behind `agn segment --preview` and the demo report's CT figure.

Rendered from the model-resolution canonical (LPS) grid, so the views are oriented the radiological way (patient
right on the image left, anterior and superior at the top) and cheap to make even for large scans. Arrays are
(x, y, z); every panel is resized to its physical aspect and centred on a black square.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import cv2
import numpy as np

from agn_cli.viz.draw import WHITE, outlined, text, text_width, write_png

# BGR colours for label ids 1.. (cycled)
PALETTE = np.array(
    [
        (60, 76, 231), (113, 204, 46), (219, 152, 52), (15, 196, 241), (182, 89, 155), (156, 188, 26),
        (34, 126, 230), (94, 73, 52), (133, 160, 22), (43, 57, 192), (0, 84, 211), (173, 68, 142),
    ],
    dtype=np.uint8,
)
PANEL = 256  # pixels of a panel's longer side
VIEW_NAMES = ("axial", "coronal", "sagittal")


def label_colour(label: int) -> tuple[int, int, int]:
    return tuple(int(c) for c in PALETTE[(int(label) - 1) % len(PALETTE)])  # type: ignore[return-value]


def grey_u8(ct: np.ndarray) -> np.ndarray:
    """Intensities windowed to their 0.5-99.5 percentiles, as uint8."""
    lo, hi = np.percentile(ct, [0.5, 99.5]) if ct.size else (0.0, 1.0)
    return (np.clip((ct - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def label_centre(labels: np.ndarray) -> tuple[int, int, int]:
    """Centre of the labelled voxels (the volume's centre when there are none): where the views cut."""
    foreground = np.argwhere(labels > 0)
    centre = foreground.mean(axis=0).round().astype(int) if len(foreground) else np.asarray(labels.shape) // 2
    return tuple(int(v) for v in centre)  # type: ignore[return-value]


def views(volume: np.ndarray, centre: Sequence[int]) -> list[np.ndarray]:
    """Axial (rows y, cols x), coronal (rows z top=superior, cols x), sagittal (rows z, cols y) of an LPS array."""
    cx, cy, cz = centre
    return [np.ascontiguousarray(v) for v in (volume[:, :, cz].T, volume[:, cy, :].T[::-1], volume[cx, :, :].T[::-1])]


def view_aspects(spacing: Sequence[float]) -> list[tuple[float, float]]:
    """(row mm, col mm) of each view."""
    sx, sy, sz = (float(s) for s in spacing)
    return [(sy, sx), (sz, sx), (sz, sy)]


def fit_panel(image: np.ndarray, row_mm: float, col_mm: float, size: int = PANEL) -> np.ndarray:
    """Resize to physical aspect (longer side `size` px) and centre on a black square."""
    height, width = image.shape[0] * row_mm, image.shape[1] * col_mm
    scale = size / max(height, width)
    out_w, out_h = max(1, round(width * scale)), max(1, round(height * scale))
    resized = cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    canvas = np.zeros((size, size, 3), np.uint8)
    top, left = (size - out_h) // 2, (size - out_w) // 2
    canvas[top : top + out_h, left : left + out_w] = resized
    return canvas


def overlay_labels(grey: np.ndarray, labels: np.ndarray, alpha: float = 0.45, outline: bool = False) -> np.ndarray:
    """Label colours blended onto a grey slice; with `outline`, each organ's contour in full colour so small organs
    stay visible."""
    bgr = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    present = labels > 0
    if present.any():
        colour = PALETTE[(labels[present].astype(int) - 1) % len(PALETTE)]
        bgr[present] = ((1 - alpha) * bgr[present] + alpha * colour).astype(np.uint8)
        if outline:
            for lab in np.unique(labels[present]):
                contours, _ = cv2.findContours((labels == lab).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
                cv2.drawContours(bgr, contours, -1, label_colour(lab), 1)
    return bgr


def overlay_heat(grey: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """A 0..1 map (attention) as a jet heat map, half blended onto a grey slice."""
    colour = cv2.applyColorMap((np.clip(heat, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), 0.5, colour, 0.5, 0)


def render_preview(
    ct: np.ndarray,
    labels: np.ndarray,
    attention: np.ndarray | None,
    spacing: Sequence[float],
    path: Path | str,
    overwrite: bool = False,
    title: str = "",
) -> Path:
    """Write the 2x3 (or 1x3 without attention) preview PNG atomically: axial, coronal and sagittal slices through
    the mask's centre, top row CT + label colours, bottom row CT + attention heat map."""
    centre = label_centre(labels)
    rows_mask, rows_att = [], []
    att_views = views(attention, centre) if attention is not None else [None] * 3
    for view_ct, view_lab, view_att, (row_mm, col_mm), name in zip(
        views(ct, centre), views(labels, centre), att_views, view_aspects(spacing), VIEW_NAMES
    ):
        grey = grey_u8(view_ct)
        panel = fit_panel(overlay_labels(grey, view_lab), row_mm, col_mm)
        text(panel, name, (6, 16), 0.45, WHITE)
        rows_mask.append(panel)
        if view_att is not None:
            panel = fit_panel(overlay_heat(grey, view_att), row_mm, col_mm)
            text(panel, f"{name} attention", (6, 16), 0.45, WHITE)
            rows_att.append(panel)
    sheet = np.hstack(rows_mask)
    if rows_att:
        sheet = np.vstack([sheet, np.hstack(rows_att)])
    if title:
        banner = np.zeros((22, sheet.shape[1], 3), dtype=np.uint8)
        text(banner, title, (6, 16), 0.5, WHITE)
        sheet = np.vstack([banner, sheet])
    return write_png(path, sheet, overwrite)


def ct_sheet(
    ct: np.ndarray,
    reference: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    attention: Optional[np.ndarray],
    spacing: Sequence[float],
    label_names: Mapping[int, str],
    panel: int = 220,
) -> np.ndarray:
    """Rows axial / coronal through the reference's centre; columns CT, reference, each prediction, attention; a
    legend of `label_names` underneath. Labels blend at 50 % with their outlines drawn."""
    centre = label_centre(reference)
    greys = [grey_u8(v) for v in views(ct, centre)[:2]]
    columns: list[tuple[str, list[np.ndarray]]] = [("CT", [cv2.cvtColor(g, cv2.COLOR_GRAY2BGR) for g in greys])]
    for name, labels in {"reference": reference, **predictions}.items():
        columns.append((name, [overlay_labels(g, v, 0.5, outline=True) for g, v in zip(greys, views(labels, centre))]))
    if attention is not None:
        columns.append(("attention", [overlay_heat(g, v) for g, v in zip(greys, views(attention, centre))]))
    rows = []
    for r, ((row_mm, col_mm), view_name) in enumerate(zip(view_aspects(spacing)[:2], VIEW_NAMES)):
        tiles = []
        for name, images in columns:
            tile = fit_panel(images[r], row_mm, col_mm, panel)
            outlined(tile, f"{view_name} {name}", (6, 16), 0.42)
            tiles.append(tile)
        rows.append(np.hstack(tiles))
    sheet = np.vstack(rows)
    legend = np.full((24, sheet.shape[1], 3), 255, np.uint8)
    x = 8
    for lab, name in label_names.items():
        cv2.rectangle(legend, (x, 6), (x + 12, 18), label_colour(lab), -1)
        text(legend, name, (x + 16, 17), 0.4)
        x += 30 + text_width(name, 0.4)
    return np.vstack([sheet, legend])
