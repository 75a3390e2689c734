"""Head-circumference biometry: the perimeter formula and the ellipse fit on drawn and real head masks."""

from __future__ import annotations

import csv
import math

import cv2
import numpy as np
import pytest

from agn_cli.us.biometry import Ellipse, ellipse_perimeter, fit_head_ellipse, head_circumference_mm


def _drawn(shape=(540, 800), centre=(400.0, 270.0), axes=(180.0, 130.0), angle=25.0) -> np.ndarray:
    """A filled ellipse drawn with sub-pixel precision (OpenCV shift=4: 1/16 pixel)."""
    mask = np.zeros(shape, np.uint8)
    scale = 16
    cv2.ellipse(
        mask,
        (round(centre[0] * scale), round(centre[1] * scale)),
        (round(axes[0] * scale), round(axes[1] * scale)),
        angle, 0, 360, 255, thickness=-1, lineType=cv2.LINE_8, shift=4,
    )
    return mask


def test_perimeter_of_a_circle_and_a_known_ellipse():
    assert ellipse_perimeter(10.0, 10.0) == pytest.approx(2 * math.pi * 10.0, rel=1e-12)
    # a=2, b=1: the exact perimeter (complete elliptic integral) is 9.688448220547675.
    assert ellipse_perimeter(2.0, 1.0) == pytest.approx(9.688448220547675, rel=1e-6)
    assert ellipse_perimeter(0.0, 0.0) == 0.0
    with pytest.raises(ValueError):
        ellipse_perimeter(-1.0, 1.0)


@pytest.mark.parametrize("axes,angle", [((180.0, 130.0), 25.0), ((90.0, 70.0), -60.0), ((250.0, 200.0), 90.0)])
def test_fit_recovers_a_drawn_ellipse_within_half_a_percent(axes, angle):
    fitted = fit_head_ellipse(_drawn(axes=axes, angle=angle))
    truth = ellipse_perimeter(*axes)
    assert fitted.perimeter() == pytest.approx(truth, rel=0.005)
    assert (fitted.center_x, fitted.center_y) == pytest.approx((400.0, 270.0), abs=1.0)
    assert fitted.semi_axis_a >= fitted.semi_axis_b
    # Angles are equal modulo 180 degrees.
    assert math.isclose(math.cos(math.radians(2 * (fitted.angle_deg - angle))), 1.0, abs_tol=1e-3)


def test_fit_ignores_the_image_border_where_the_head_is_cut():
    """A head cut by the field of view: the visible arc still gives the whole ellipse."""
    mask = _drawn(centre=(400.0, 120.0), axes=(200.0, 150.0), angle=0.0)
    assert mask[0].any(), "the drawn head must be cut by the top border for this test"
    fitted = fit_head_ellipse(mask)
    assert fitted.perimeter() == pytest.approx(ellipse_perimeter(200.0, 150.0), rel=0.01)


def test_fit_uses_the_largest_component_and_returns_none_without_a_head():
    mask = _drawn()
    mask[5:15, 5:15] = 255  # a speck elsewhere
    assert fit_head_ellipse(mask).perimeter() == pytest.approx(ellipse_perimeter(180.0, 130.0), rel=0.005)
    assert fit_head_ellipse(np.zeros((540, 800), np.uint8)) is None
    assert fit_head_ellipse(_drawn(axes=(2.0, 2.0))) is None  # too few boundary points for five parameters


def test_head_circumference_scales_by_pixel_size():
    ellipse = Ellipse(0.0, 0.0, 100.0, 80.0, 0.0)
    assert head_circumference_mm(ellipse, 0.1) == pytest.approx(ellipse.perimeter() * 0.1)
    with pytest.raises(ValueError):
        head_circumference_mm(ellipse, 0.0)


def test_real_hc18_masks_reproduce_the_official_circumference(shared_dir):
    """SOURCE.txt of hc18-train: a fit to the filled masks is 0.78 mm above the official HC on average (max 2.21)."""
    root = shared_dir / "data/us/hc18-dev"
    with open(root / "pixel_size_and_HC.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[:20]
    differences = []
    for row in rows:
        mask = cv2.imread(str(root / "masks" / row["filename"].replace(".png", "_Mask.png")), cv2.IMREAD_GRAYSCALE)
        hc = head_circumference_mm(fit_head_ellipse(mask), float(row["pixel size(mm)"]))
        differences.append(hc - float(row["head circumference (mm)"]))
    assert 0.0 < np.mean(differences) < 1.5
    assert np.max(np.abs(differences)) < 3.0
