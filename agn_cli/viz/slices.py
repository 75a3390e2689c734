"""A PNG to check a segmentation at a glance: axial, coronal and sagittal slices through the mask's centre,
top row CT + label colours, bottom row CT + attention heat map.

Rendered from the model-resolution canonical (LPS) grid, so the views are oriented the radiological way (patient
right on the image left, anterior and superior at the top) and cheap to make even for large scans.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from agn_cli.runtime.atomic import atomic_path

# BGR colours for label ids 1.. (cycled)
PALETTE = np.array(
    [
        (60, 76, 231), (113, 204, 46), (219, 152, 52), (15, 196, 241), (182, 89, 155), (156, 188, 26),
        (34, 126, 230), (94, 73, 52), (133, 160, 22), (43, 57, 192), (0, 84, 211), (173, 68, 142),
    ],
    dtype=np.uint8,
)
PANEL = 256  # pixels of a panel's longer side


def _grey(ct: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(ct, [0.5, 99.5]) if ct.size else (0.0, 1.0)
    scaled = np.clip((ct - lo) / max(hi - lo, 1e-6), 0, 1)
    return cv2.cvtColor((scaled * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)


def _views(volume: np.ndarray, centre: Sequence[int]) -> list[np.ndarray]:
    """Axial (rows y, cols x), coronal (rows z top=superior, cols x), sagittal (rows z, cols y) of an LPS (x,y,z) array."""
    cx, cy, cz = centre
    return [volume[:, :, cz].T, volume[:, cy, :].T[::-1], volume[cx, :, :].T[::-1]]


def _aspects(spacing: Sequence[float]) -> list[tuple[float, float]]:
    sx, sy, sz = spacing
    return [(sy, sx), (sz, sx), (sz, sy)]  # (row mm, col mm) per view


def _resize(img: np.ndarray, row_mm: float, col_mm: float, nearest: bool) -> np.ndarray:
    height, width = img.shape[0] * row_mm, img.shape[1] * col_mm
    scale = PANEL / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(img, size, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)


def _pad(img: np.ndarray) -> np.ndarray:
    out = np.zeros((PANEL, PANEL, 3), dtype=np.uint8)
    h, w = img.shape[:2]
    top, left = (PANEL - h) // 2, (PANEL - w) // 2
    out[top : top + h, left : left + w] = img
    return out


def render_preview(
    ct: np.ndarray,
    labels: np.ndarray,
    attention: np.ndarray | None,
    spacing: Sequence[float],
    path: Path | str,
    overwrite: bool = False,
    title: str = "",
) -> Path:
    """Write the 2x3 (or 1x3 without attention) preview PNG atomically; `ct`, `labels`, `attention` are (x, y, z)."""
    foreground = np.argwhere(labels > 0)
    centre = foreground.mean(axis=0).round().astype(int) if len(foreground) else np.asarray(labels.shape) // 2
    names = ("axial", "coronal", "sagittal")
    rows_mask, rows_att = [], []
    for view_ct, view_lab, (row_mm, col_mm), name, i in zip(
        _views(ct, centre), _views(labels, centre), _aspects(spacing), names, range(3)
    ):
        grey = _grey(np.ascontiguousarray(view_ct))
        lab = np.ascontiguousarray(view_lab)
        colour = np.zeros_like(grey)
        present = lab > 0
        colour[present] = PALETTE[(lab[present].astype(int) - 1) % len(PALETTE)]
        blended = grey.copy()
        blended[present] = (0.55 * grey[present] + 0.45 * colour[present]).astype(np.uint8)
        panel = _pad(_resize(blended, row_mm, col_mm, nearest=False))
        cv2.putText(panel, name, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        rows_mask.append(panel)
        if attention is not None:
            view_att = np.ascontiguousarray(_views(attention, centre)[i])
            heat = cv2.applyColorMap((np.clip(view_att, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
            mixed = cv2.addWeighted(grey, 0.5, heat, 0.5, 0)
            panel = _pad(_resize(mixed, row_mm, col_mm, nearest=False))
            cv2.putText(panel, f"{name} attention", (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
            rows_att.append(panel)
    sheet = np.hstack(rows_mask)
    if rows_att:
        sheet = np.vstack([sheet, np.hstack(rows_att)])
    if title:
        banner = np.zeros((22, sheet.shape[1], 3), dtype=np.uint8)
        cv2.putText(banner, title, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        sheet = np.vstack([banner, sheet])
    ok, encoded = cv2.imencode(".png", sheet)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    path = Path(path)
    with atomic_path(path, overwrite) as tmp:
        tmp.write_bytes(encoded.tobytes())
    return path
