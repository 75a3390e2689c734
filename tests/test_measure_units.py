"""Head measurement without a trained network: from a head probability map to HC, and its evaluation."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from agn_cli.errors import AgnError
from agn_cli.metrics.biometry import evaluate_hc, read_measurements
from agn_cli.us.biometry import Ellipse, ellipse_perimeter, read_hc18_table
from agn_cli.us.frames import Frame
from agn_cli.us.measure import HeadMeasurer, challenge_rows, ellipse_mask, pixel_size_lookup


def _measurer() -> HeadMeasurer:
    """The post-network half of HeadMeasurer (no checkpoint needed for it)."""
    measurer = HeadMeasurer.__new__(HeadMeasurer)
    measurer.hc_offset_mm = 0.0
    return measurer


def _frame(name="a.png", shape=(540, 800)) -> Frame:
    from pathlib import Path

    return Frame(Path(name), 0, np.zeros(shape, np.uint8))


def test_probability_map_to_hc_in_mm():
    truth = Ellipse(400.0, 270.0, 200.0, 150.0, 30.0)
    prob = ellipse_mask(truth, (540, 800)).astype(np.float32) * 0.9
    prob[10:20, 10:20] = 0.95  # a speck: the largest component is the head
    result = _measurer()._from_probability(_frame(), prob, 0.1, None)
    assert result.reason is None
    assert result.hc_mm == pytest.approx(truth.perimeter() * 0.1, rel=0.005)
    assert result.quality["ellipse_iou"] > 0.98
    assert result.quality["mean_probability"] == pytest.approx(0.9)
    assert result.mask[15, 15] == 0 and result.mask[270, 400]


def test_no_pixel_size_gives_pixels_and_no_invented_scale():
    prob = ellipse_mask(Ellipse(400.0, 270.0, 200.0, 150.0, 0.0), (540, 800)).astype(np.float32)
    result = _measurer()._from_probability(_frame(), prob, None, None)
    assert result.hc_mm is None and result.ellipse is not None
    assert "pixel size" in result.reason
    assert result.to_dict()["hc_mm"] is None


def test_no_head_found_has_a_reason():
    result = _measurer()._from_probability(_frame(), np.zeros((540, 800), np.float32), 0.1, None)
    assert result.hc_mm is None and result.ellipse is None
    assert result.reason.startswith("no head found")


def test_hc_offset_from_the_card_is_added():
    measurer = _measurer()
    measurer.hc_offset_mm = -0.75
    prob = ellipse_mask(Ellipse(400.0, 270.0, 200.0, 150.0, 0.0), (540, 800)).astype(np.float32)
    plain = _measurer()._from_probability(_frame(), prob, 0.1, None).hc_mm
    assert measurer._from_probability(_frame(), prob, 0.1, None).hc_mm == pytest.approx(plain - 0.75)


def test_pixel_size_sources(tmp_path):
    table = tmp_path / "sizes.csv"
    table.write_text("filename,pixel size(mm),head circumference (mm)\na.png,0.125,150.0\n")
    rows = read_hc18_table(table)
    assert rows["a.png"].pixel_size_mm == 0.125 and rows["a.png"].hc_mm == 150.0
    lookup = pixel_size_lookup(table={k: v.pixel_size_mm for k, v in rows.items()})
    assert lookup(_frame("dir/a.png")) == 0.125 and lookup(_frame("b.png")) is None
    assert pixel_size_lookup(fixed=0.2)(_frame("a.png")) == 0.2
    with pytest.raises(AgnError, match="positive"):
        pixel_size_lookup(fixed=0.0)
    bad = tmp_path / "bad.csv"
    bad.write_text("filename,pixel size(mm)\na.png,-1\n")
    with pytest.raises(AgnError, match="bad.csv:2: pixel size must be a positive number"):
        read_hc18_table(bad)
    (tmp_path / "other.csv").write_text("name,size\na.png,1\n")
    with pytest.raises(AgnError, match="HC18's header"):
        read_hc18_table(tmp_path / "other.csv")


def test_challenge_rows_are_in_mm_and_radians():
    m = _measurer()._from_probability(
        _frame(), ellipse_mask(Ellipse(400.0, 270.0, 200.0, 150.0, 90.0), (540, 800)).astype(np.float32), 0.5, None
    )
    header, row = challenge_rows([m])
    assert header[0] == "filename" and row[0] == "a.png"
    cx, cy, a, b, angle = (float(v) for v in row[1:])
    assert (cx, cy) == pytest.approx((200.0, 135.0), abs=0.5)
    assert (a, b) == pytest.approx((100.0, 75.0), rel=0.01)
    assert abs(math.cos(angle)) < 0.02  # the long axis is vertical


def _write_case(tmp_path, name, ellipse, pixel_size=0.1):
    masks = tmp_path / "pred"
    masks.mkdir(exist_ok=True)
    path = masks / f"{name}_mask.png"
    cv2.imwrite(str(path), ellipse_mask(ellipse, (540, 800)).astype(np.uint8) * 255)
    hc = ellipse_perimeter(ellipse.semi_axis_a, ellipse.semi_axis_b) * pixel_size
    return {"path": f"/x/{name}.png", "frame": 0, "hc_mm": hc, "mask": str(path)}


def test_evaluate_hc_summary_counts_missing_frames_as_misses(tmp_path):
    e = Ellipse(400.0, 270.0, 200.0, 150.0, 0.0)
    hc = ellipse_perimeter(200.0, 150.0) * 0.1
    frames = [_write_case(tmp_path, "a", e), _write_case(tmp_path, "b", e)]
    frames[1]["hc_mm"] += 2.5
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"frames": frames, "summary": {}}))
    ref = tmp_path / "ref.csv"
    ref.write_text(
        "filename,pixel size(mm),head circumference (mm)\n"
        f"a.png,0.1,{hc + 1.0}\nb.png,0.1,{hc}\nc.png,0.1,{hc}\n"
    )
    refmasks = tmp_path / "ref"
    refmasks.mkdir()
    for name in "abc":
        cv2.imwrite(str(refmasks / f"{name}_Mask.png"), ellipse_mask(e, (540, 800)).astype(np.uint8) * 255)
    report = evaluate_hc(read_measurements(results), ref, refmasks)
    s = report["summary"]
    assert (s["frames"], s["measured"]) == (3, 2)
    assert s["mean_abs_difference_mm"] == pytest.approx((1.0 + 2.5) / 2)
    assert s["mean_difference_mm"] == pytest.approx((-1.0 + 2.5) / 2)
    assert s["within_2mm"] == pytest.approx(1 / 3) and s["within_3mm"] == pytest.approx(2 / 3)
    assert s["mean_dice"] == pytest.approx(1.0) and s["mean_hd95_mm"] == pytest.approx(0.0)
    assert report["frames"][2]["reason"] == "not in the results"


def test_evaluate_hc_refuses_a_table_without_reference_hc(tmp_path):
    sizes = tmp_path / "sizes.csv"
    sizes.write_text("filename,pixel size(mm)\na.png,0.1\n")
    with pytest.raises(AgnError, match="not a reference table"):
        evaluate_hc([], sizes)
    (tmp_path / "r.json").write_text("[1, 2]")
    with pytest.raises(AgnError, match="no 'frames' list"):
        read_measurements(tmp_path / "r.json")
