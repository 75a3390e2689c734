"""Boxes from attention (weakly supervised localisation, attention paper appendix): no backpropagation.

Why from attention: a plane classifier trained with image labels only already knows *where* the structure is; its
attention (AG-Sononet's gate coefficients at stages 3 and 4) or, for networks without gates, the class activation
map of the predicted class (the paper's AG3 case; SonoNet's adaptation maps) gives a box for free at inference time.

Per map: keep positive evidence, normalise to max 1, resize to the network input, Gaussian blur, threshold at a
fraction of the maximum, connected components. Across maps: keep the component that overlaps a component of every
other scale (else of the most scales), ties and single maps broken by attention mass; its bounding box is mapped back
through the resize and crop into the input frame's pixels. The score is the share of the map's attention mass that
lies inside the kept component (1 = all attention in one blob).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping

import cv2
import numpy as np

from agn_cli.errors import AgnError
from agn_cli.us.preprocess import FrameGeometry

Selection = Literal["overlap", "strongest", "largest"]
Normalise = Literal["max", "minmax"]


@dataclass(frozen=True)
class LocalisationParams:
    """Every knob of the box extraction (CLI: --blur-sigma, --threshold, --select, --normalise, --min-area)."""

    blur_sigma: float = 12.0  # Gaussian sigma in network-input pixels (SonoNet CAM cells are 16 px)
    threshold: float = 0.25  # keep pixels >= threshold x max of the blurred map (tuned on HC18, see tests)
    select: Selection = "overlap"
    normalise: Normalise = "max"  # "max": negatives -> 0, divide by max; "minmax": (m - min) / (max - min)
    min_area: float = 0.0  # drop components smaller than this fraction of the network input
    step: int = 4  # work on a grid of step x step network-input pixels (box edges snap to it; 1 = full resolution)

    def __post_init__(self) -> None:
        if self.select not in ("overlap", "strongest", "largest"):
            raise AgnError(f"--select {self.select}: use overlap, strongest or largest")
        if self.normalise not in ("max", "minmax"):
            raise AgnError(f"--normalise {self.normalise}: use max or minmax")


@dataclass
class Localisation:
    box: list[float] | None  # (x0, y0, x1, y1) input-frame pixels (edges), None when attention is empty
    score: float | None
    attention: np.ndarray  # (rows, cols) combined map in network-input pixels, max 1 (0 everywhere when empty)
    box_input: tuple[int, int, int, int] | None = None  # the same box in network-input pixels


def attention_maps_for(maps: Mapping[str, np.ndarray], index: int, class_index: int) -> dict[str, np.ndarray]:
    """2D maps for frame `index`: the class's CAM ('cam', (N, classes, h, w)), or each gate's alpha averaged over
    heads ((N, heads, h, w) or (N, h, w))."""
    out: dict[str, np.ndarray] = {}
    for name, value in maps.items():
        arr = np.asarray(value[index], dtype=np.float32)
        if name == "cam":
            out[name] = arr[class_index]
        elif arr.ndim == 3:
            out[name] = arr.mean(axis=0)
        elif arr.ndim == 2:
            out[name] = arr
    return out


def _normalise(m: np.ndarray, how: Normalise) -> np.ndarray | None:
    m = np.nan_to_num(m.astype(np.float32, copy=False))
    if how == "minmax":
        lo, hi = float(m.min()), float(m.max())
        return (m - lo) / (hi - lo) if hi > lo else None
    m = np.maximum(m, 0.0)
    hi = float(m.max())
    return m / hi if hi > 0 else None


@dataclass
class _Component:
    scale: int
    mask: np.ndarray
    mass: float
    area: int
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (edges) in network-input pixels


def _components(smooth: np.ndarray, scale: int, params: LocalisationParams) -> list[_Component]:
    """Connected components (8-connected) of the thresholded map, in working-grid pixels."""
    binary = (smooth >= params.threshold * float(smooth.max())).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    min_area = params.min_area * smooth.size
    found = []
    for k in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[k])
        if area < max(min_area, 1):
            continue
        mask = labels[y : y + h, x : x + w] == k
        full = np.zeros(smooth.shape, dtype=bool)
        full[y : y + h, x : x + w] = mask
        mass = float(smooth[y : y + h, x : x + w][mask].sum())
        found.append(_Component(scale, full, mass, area, (x, y, x + w, y + h)))
    return found


def localise(maps: Mapping[str, np.ndarray], geometry: FrameGeometry, params: LocalisationParams | None = None) -> Localisation:
    """One box (input-frame pixels) from one frame's attention maps (each 2D, any resolution)."""
    params = params or LocalisationParams()
    rows, cols = geometry.out_rows, geometry.out_cols
    step = max(1, int(params.step))
    work_rows, work_cols = -(-rows // step), -(-cols // step)  # ceil: the grid covers the whole input
    sigma = params.blur_sigma / step
    smooth_maps: list[np.ndarray] = []
    for value in maps.values():
        m = _normalise(np.asarray(value), params.normalise)
        if m is None:
            continue
        up = cv2.resize(m, (work_cols, work_rows), interpolation=cv2.INTER_LINEAR) if m.shape != (work_rows, work_cols) else m
        if sigma > 0:
            up = cv2.GaussianBlur(up, (0, 0), sigmaX=sigma, sigmaY=sigma)
        top = float(up.max())
        if top > 0:
            smooth_maps.append(up / top)
    if not smooth_maps:
        return Localisation(None, None, np.zeros((rows, cols), np.float32))
    combined = np.mean(smooth_maps, axis=0)
    combined = (combined / max(float(combined.max()), 1e-12)).astype(np.float32)
    if combined.shape != (rows, cols):
        combined = cv2.resize(combined, (cols, rows), interpolation=cv2.INTER_LINEAR)

    candidates = [c for s, m in enumerate(smooth_maps) for c in _components(m, s, params)]
    if not candidates:
        return Localisation(None, None, combined)

    def overlaps(c: _Component) -> int:
        """How many other scales have a component that shares pixels with c."""
        return len({o.scale for o in candidates if o.scale != c.scale and np.any(o.mask & c.mask)})

    if params.select == "overlap" and len(smooth_maps) > 1:
        key = lambda c: (overlaps(c), c.mass)  # noqa: E731
    elif params.select == "largest":
        key = lambda c: (c.area, c.mass)  # noqa: E731
    else:
        key = lambda c: (c.mass, c.area)  # noqa: E731
    best = max(candidates, key=key)
    total = float(smooth_maps[best.scale].sum())
    score = best.mass / total if total > 0 else 0.0
    fy, fx = rows / work_rows, cols / work_cols
    bx0, by0, bx1, by1 = best.box
    net_box = (round(bx0 * fx), round(by0 * fy), round(bx1 * fx), round(by1 * fy))
    x0, y0, x1, y1 = geometry.to_input(net_box)
    box = [round(x0, 2), round(y0, 2), round(x1, 2), round(y1, 2)]
    return Localisation(box, float(score), combined, net_box)


# -- evaluation against ground truth ------------------------------------------------------------------------------


def box_iou(a: "list[float] | tuple[float, ...]", b: "list[float] | tuple[float, ...]") -> float:
    """IoU of two (x0, y0, x1, y1) boxes with edge coordinates."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def mask_box(mask: np.ndarray) -> list[float] | None:
    """Bounding box (x0, y0, x1, y1, edges) of the non-zero pixels, None for an empty mask."""
    arr = np.asarray(mask)
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    ys, xs = np.nonzero(arr)
    if ys.size == 0:
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def localisation_table(records: list[tuple[str, float]]) -> dict[str, dict[str, float]]:
    """Per class (and 'all'): n, IoU mean and std, Correctness (IoU > 0.5) and Relative Correctness
    (IoU > 0.5 x the class's max IoU), as in the attention paper's Table 7. `records` = (class, iou)."""
    by_class: dict[str, list[float]] = {}
    for label, iou in records:
        by_class.setdefault(label, []).append(float(iou))
    table: dict[str, dict[str, float]] = {}
    everything: list[float] = []
    relative_hits = 0
    for label in sorted(by_class):
        ious = np.asarray(by_class[label])
        everything.extend(ious.tolist())
        best = float(ious.max())
        rel = int(np.sum(ious > 0.5 * best)) if best > 0 else 0
        relative_hits += rel
        table[label] = {
            "n": int(ious.size),
            "iou_mean": float(ious.mean()),
            "iou_std": float(ious.std()),
            "correctness": float(np.mean(ious > 0.5)),
            "relative_correctness": rel / ious.size,
        }
    if everything:
        ious = np.asarray(everything)
        table["all"] = {
            "n": int(ious.size),
            "iou_mean": float(ious.mean()),
            "iou_std": float(ious.std()),
            "correctness": float(np.mean(ious > 0.5)),
            "relative_correctness": relative_hits / ious.size,
        }
    return table
