"""Fetal head biometry from a segmentation: fit an ellipse to the outer skull boundary, report its circumference.

Why an ellipse and not the mask's pixel perimeter: sonographers measure head circumference (HC) by placing an ellipse
on the outer skull edge (HC18, van den Heuvel et al., PLoS ONE 2018), and a pixel contour's length depends on the
staircase of the raster. The perimeter uses Ramanujan's second approximation, whose relative error is below 4e-5
for any ellipse with b/a >= 0.5 (every fetal head), far under one pixel.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from skimage.measure import label

from agn_cli.errors import AgnError

# Fewer boundary points than this cannot pin down five ellipse parameters robustly.
MIN_BOUNDARY_POINTS = 20


@dataclass(frozen=True)
class Ellipse:
    """An ellipse in image pixels: centre (x right, y down), semi-axes a >= b, angle of a from the x axis (degrees)."""

    center_x: float
    center_y: float
    semi_axis_a: float
    semi_axis_b: float
    angle_deg: float

    def perimeter(self) -> float:
        return ellipse_perimeter(self.semi_axis_a, self.semi_axis_b)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def ellipse_perimeter(a: float, b: float) -> float:
    """Ramanujan's second approximation of an ellipse's perimeter from its semi-axes."""
    if a < 0 or b < 0:
        raise ValueError("semi-axes must be non-negative")
    if a + b == 0:
        return 0.0
    h = ((a - b) / (a + b)) ** 2
    return math.pi * (a + b) * (1 + 3 * h / (10 + math.sqrt(4 - 3 * h)))


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected foreground component of a 2D mask (empty stays empty)."""
    components = label(np.asarray(mask) > 0, connectivity=2)
    if components.max() == 0:
        return np.zeros(components.shape, dtype=bool)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def fit_head_ellipse(mask: np.ndarray, largest_only: bool = True) -> Ellipse | None:
    """Least-squares ellipse through the outer boundary of the largest component; None if there is no usable head.

    Boundary points on the image border are left out: where the field of view cuts the skull, the border is not the
    skull, and fitting only the visible arc still recovers the ellipse. `largest_only=False` skips the component
    search for a mask that is already one component.
    """
    head = largest_component(mask) if largest_only else np.asarray(mask) > 0
    if not head.any():
        return None
    contours, _ = cv2.findContours(head.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    points = max(contours, key=len).reshape(-1, 2)
    height, width = head.shape
    inside = (points[:, 0] > 0) & (points[:, 0] < width - 1) & (points[:, 1] > 0) & (points[:, 1] < height - 1)
    points = points[inside]
    if len(points) < MIN_BOUNDARY_POINTS:
        return None
    (cx, cy), (d1, d2), angle = cv2.fitEllipse(points.astype(np.float32))
    # OpenCV gives full axis lengths; the first belongs to the axis at `angle` degrees from x.
    a, b = d1 / 2.0, d2 / 2.0
    if b > a:
        a, b, angle = b, a, angle + 90.0
    angle = (angle + 90.0) % 180.0 - 90.0
    if not all(math.isfinite(v) for v in (cx, cy, a, b, angle)) or b <= 0:
        return None
    return Ellipse(float(cx), float(cy), float(a), float(b), float(angle))


def head_circumference_mm(ellipse: Ellipse, pixel_size_mm: float) -> float:
    """HC in mm for isotropic pixels of `pixel_size_mm` (HC18 frames have square pixels)."""
    if not pixel_size_mm > 0:
        raise ValueError("pixel size must be positive")
    return ellipse.perimeter() * pixel_size_mm


@dataclass(frozen=True)
class HC18Row:
    """One row of an HC18-style table: pixel size (mm) and, in reference tables, the official HC (mm)."""

    pixel_size_mm: float
    hc_mm: float | None


def read_hc18_table(path: Path | str) -> dict[str, HC18Row]:
    """File name -> row, from a CSV with HC18's header (`filename,pixel size(mm)[,head circumference (mm)]`).

    One reader for both uses: `agn measure hc --pixel-sizes` (the pixel size) and `agn evaluate hc` (the HC).
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = {name.strip().lower(): name for name in reader.fieldnames or []}
            name_col = columns.get("filename")
            size_col = columns.get("pixel size(mm)") or columns.get("pixel_size_mm")
            hc_col = columns.get("head circumference (mm)") or columns.get("hc_mm")
            if name_col is None or size_col is None:
                raise AgnError(f"{path}: need the columns 'filename' and 'pixel size(mm)' (HC18's header)")
            table = {}
            for line, row in enumerate(reader, start=2):
                size = _positive(row[size_col], path, line, "pixel size")
                hc = _positive(row[hc_col], path, line, "head circumference") if hc_col and row[hc_col] else None
                table[Path(row[name_col].strip()).name] = HC18Row(size, hc)
    except OSError as exc:
        raise AgnError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise AgnError(f"{path} is not a text CSV file") from None
    if not table:
        raise AgnError(f"{path} has no rows")
    return table


def _positive(text: str | None, path: Path, line: int, what: str) -> float:
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise AgnError(f"{path}:{line}: {what} '{text}' is not a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise AgnError(f"{path}:{line}: {what} must be a positive number, got {text}")
    return value
