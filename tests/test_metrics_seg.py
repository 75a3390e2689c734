"""Segmentation metrics: agreement with independent numpy / brute-force computations, NaN conventions, geometry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial.distance import cdist

from agn_cli.ct.labels import read_label_map
from agn_cli.errors import AgnError
from agn_cli.metrics import segmentation as S


def require(path):
    if not path.exists():
        pytest.skip(f"{path} is absent")
    return path


def _image(arr: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> sitk.Image:
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    return img


def _blob(rng: np.random.Generator, shape, n_seeds: int = 4, radius: float = 3.0) -> np.ndarray:
    """A few random overlapping balls; irregular enough that surfaces differ in every direction."""
    zz, yy, xx = np.indices(shape)
    mask = np.zeros(shape, bool)
    for _ in range(n_seeds):
        c = rng.uniform(2, np.array(shape) - 3)
        r = rng.uniform(radius * 0.6, radius)
        mask |= (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r
    return mask


def _brute_surface_points(mask: np.ndarray, spacing) -> np.ndarray:
    """Surface voxels found by an explicit neighbour loop (outside the array = background), in mm."""
    padded = np.pad(mask, 1)
    pts = []
    for idx in np.argwhere(mask):
        p = idx + 1
        neighbours = [padded[tuple(p + d)] for d in np.vstack([np.eye(3, dtype=int), -np.eye(3, dtype=int)])]
        if not all(neighbours):
            pts.append(idx)
    return np.asarray(pts, float) * np.asarray(spacing)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_surface_distances_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    shape = (14, 16, 12)
    spacing = (2.5, 0.7, 1.3)  # strongly anisotropic, per array axis
    pred, gt = _blob(rng, shape), _blob(rng, shape)
    pred[0, 5:9, 5:9] = True  # touches the image border: border voxels count as surface
    row = S.binary_metrics(pred, gt, spacing)

    sp, sg = _brute_surface_points(pred, spacing), _brute_surface_points(gt, spacing)
    d = cdist(sp, sg)
    pooled = np.concatenate([d.min(axis=1), d.min(axis=0)])
    assert row["s2s_mm"] == pytest.approx(pooled.mean(), rel=1e-9)
    assert row["hd95_mm"] == pytest.approx(np.percentile(pooled, 95), rel=1e-9)
    assert row["hd_mm"] == pytest.approx(pooled.max(), rel=1e-9)


def test_identical_masks_have_zero_distance_and_unit_dice():
    mask = _blob(np.random.default_rng(3), (10, 10, 10))
    row = S.binary_metrics(mask, mask, (1.0, 2.0, 3.0))
    assert row["dice"] == row["precision"] == row["recall"] == 1.0
    assert row["s2s_mm"] == row["hd95_mm"] == 0.0
    assert row["vol_pred_ml"] == pytest.approx(mask.sum() * 6 / 1000)


def test_shifted_cube_distances_in_mm():
    a = np.zeros((20, 20, 20), bool)
    a[5:10, 5:10, 5:10] = True
    b = np.roll(a, 2, axis=0)  # shift along the axis with 3 mm spacing
    row = S.binary_metrics(a, b, (3.0, 1.0, 1.0))
    assert row["hd_mm"] == pytest.approx(6.0)
    assert row["dice"] == pytest.approx(2 * 75 / 250)


def test_empty_class_conventions():
    shape = (8, 8, 8)
    full = np.zeros(shape, np.uint8)
    full[2:5, 2:5, 2:5] = 1
    empty = np.zeros(shape, np.uint8)
    rows = S.evaluate_arrays(full, empty, (1, 1, 1), labels=[1, 2])
    one, two = rows
    assert one["note"] == "empty in reference"
    assert one["dice"] == 0 and one["precision"] == 0 and math.isnan(one["recall"])
    assert math.isnan(one["s2s_mm"]) and math.isnan(one["hd95_mm"])
    assert two["note"] == "absent in both"
    for key in ("dice", "precision", "recall", "s2s_mm", "hd95_mm"):
        assert math.isnan(two[key])
    assert two["vol_pred_ml"] == 0 and two["vol_gt_ml"] == 0

    (row,) = S.evaluate_arrays(empty, full, (1, 1, 1), labels=[1])
    assert row["note"] == "empty in prediction"
    assert row["dice"] == 0 and row["recall"] == 0 and math.isnan(row["precision"])
    assert math.isnan(row["s2s_mm"])


def test_labels_default_to_union_and_names():
    pred = np.zeros((6, 6, 6), np.uint8)
    gt = np.zeros((6, 6, 6), np.uint8)
    pred[1:3, 1:3, 1:3] = 4
    gt[3:5, 3:5, 3:5] = 2
    rows = S.evaluate_arrays(pred, gt, (1, 1, 1), label_names={2: "kidney"})
    assert [r["label"] for r in rows] == [2, 4]
    assert rows[0]["name"] == "kidney" and rows[1]["name"] == "4"


def test_matches_numpy_on_real_label_maps(shared_dir):
    folder = shared_dir / "data/ct/totalseg-example"
    pred_path = require(folder / "example_seg_fast.nii.gz")
    gt_path = require(folder / "example_seg.nii.gz")
    result = S.evaluate_files(pred_path, gt_path, labels=[1, 2, 3, 5, 7])
    assert result["warnings"] == []
    p = sitk.GetArrayFromImage(sitk.ReadImage(str(pred_path)))
    g = sitk.GetArrayFromImage(sitk.ReadImage(str(gt_path)))
    voxel_ml = np.prod(sitk.ReadImage(str(gt_path)).GetSpacing()) / 1000
    for row in result["classes"]:
        a, b = p == row["label"], g == row["label"]
        inter = np.logical_and(a, b).sum()
        assert row["dice"] == pytest.approx(2 * inter / (a.sum() + b.sum()))
        assert row["precision"] == pytest.approx(inter / a.sum())
        assert row["recall"] == pytest.approx(inter / b.sum())
        assert row["vol_gt_ml"] == pytest.approx(b.sum() * voxel_ml)
        assert row["vol_pred_ml"] == pytest.approx(a.sum() * voxel_ml)
    dice = {r["label"]: r["dice"] for r in result["classes"]}
    assert dice[5] > 0.95 and dice[1] > 0.95  # two TotalSegmentator models agree on liver and spleen


def test_real_label_map_distances_match_full_volume_edt(shared_dir):
    """The cropped computation equals a distance transform over the whole (uncropped, unpadded) volume."""
    folder = shared_dir / "data/ct/totalseg-example"
    p = sitk.GetArrayFromImage(sitk.ReadImage(str(require(folder / "example_seg_fast.nii.gz")))) == 7
    g = sitk.GetArrayFromImage(sitk.ReadImage(str(require(folder / "example_seg.nii.gz")))) == 7
    spacing = (3.0, 3.0, 3.0)
    st = ndimage.generate_binary_structure(3, 1)
    sp = p & ~ndimage.binary_erosion(p, st, border_value=0)
    sg = g & ~ndimage.binary_erosion(g, st, border_value=0)
    pooled = np.concatenate([
        ndimage.distance_transform_edt(~sg, sampling=spacing)[sp],
        ndimage.distance_transform_edt(~sp, sampling=spacing)[sg],
    ])
    row = S.binary_metrics(p, g, spacing)
    assert row["s2s_mm"] == pytest.approx(pooled.mean())
    assert row["hd95_mm"] == pytest.approx(np.percentile(pooled, 95))


def test_different_geometry_is_resampled_with_warning():
    gt_arr = np.zeros((10, 12, 14), np.uint8)
    gt_arr[3:7, 4:8, 4:8] = 1
    gt = _image(gt_arr, spacing=(1.0, 1.0, 1.0))
    # Same object on a 2x coarser grid in x (array axis 2): resampling must bring it back onto gt's grid.
    pred_arr = np.zeros((10, 12, 7), np.uint8)
    pred_arr[3:7, 4:8, 2:4] = 1  # centres x = 4.5, 6.5 (2 mm wide) cover gt voxels x = 4..7
    pred = _image(pred_arr, spacing=(2.0, 1.0, 1.0), origin=(0.5, 0.0, 0.0))
    result = S.evaluate_segmentation(pred, gt)
    assert len(result["warnings"]) == 1 and "resampled" in result["warnings"][0]
    assert result["classes"][0]["dice"] == pytest.approx(1.0)
    assert S.evaluate_segmentation(gt, gt)["warnings"] == []


def test_no_world_overlap_is_an_error():
    arr = np.ones((4, 4, 4), np.uint8)
    with pytest.raises(AgnError, match="do not overlap"):
        S.evaluate_segmentation(_image(arr, origin=(500.0, 0, 0)), _image(arr))


def test_reader_errors(tmp_path):
    with pytest.raises(AgnError, match="does not exist"):
        read_label_map(tmp_path / "missing.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not an image")
    with pytest.raises(AgnError, match="cannot read"):
        read_label_map(bad)
    flat = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 5), np.uint8)), str(flat))
    with pytest.raises(AgnError, match="2D"):
        read_label_map(flat)


def test_float_probabilities_are_rejected():
    arr = np.zeros((4, 4, 4), np.float32)
    arr[1, 1, 1] = 0.5
    img = sitk.GetImageFromArray(arr)
    with pytest.raises(AgnError, match="non-integer"):
        S.evaluate_segmentation(img, img)


def test_folder_mode_mean_std_and_unmatched(tmp_path):
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    gt_arr = np.zeros((8, 8, 8), np.uint8)
    gt_arr[2:6, 2:6, 2:6] = 1  # 64 voxels
    dices = []
    for i, stop in enumerate((6, 5, 4)):
        p = np.zeros_like(gt_arr)
        p[2:stop, 2:6, 2:6] = 1
        inter = p.astype(bool) & gt_arr.astype(bool)
        dices.append(2 * inter.sum() / (p.astype(bool).sum() + 64))
        sitk.WriteImage(_image(p), str(pred_dir / f"case{i}.nii.gz"))
        sitk.WriteImage(_image(gt_arr), str(gt_dir / f"case{i}.nii.gz"))
    sitk.WriteImage(_image(gt_arr), str(gt_dir / "only_gt.nii.gz"))
    sitk.WriteImage(_image(gt_arr), str(pred_dir / "only_pred.nrrd"))
    (gt_dir.parent / "dataset.json").write_text('{"labels": {"background": 0, "tumour": 1}}')

    result = S.evaluate_folders(pred_dir, gt_dir)
    assert result["cases"] == ["case0", "case1", "case2"]
    assert result["unmatched_gt"] == ["only_gt"] and result["unmatched_pred"] == ["only_pred"]
    (entry,) = result["summary"]
    assert entry["name"] == "tumour"
    assert entry["dice_mean"] == pytest.approx(np.mean(dices))
    assert entry["dice_std"] == pytest.approx(np.std(dices))
    assert entry["dice_n"] == 3
    assert len(result["rows"]) == 3


def test_summary_is_nan_aware():
    rows = [
        {"label": 1, "name": "a", **{m: v for m in S.METRICS}} for v in (0.5, 1.0, math.nan)
    ]
    (entry,) = S.summarise(rows)
    assert entry["dice_mean"] == pytest.approx(0.75) and entry["dice_n"] == 2 and entry["cases"] == 3


def test_label_name_formats():
    assert S.parse_label_names({"labels": {"1": "spleen", "0": "background"}}) == {1: "spleen"}
    assert S.parse_label_names({"labels": {"background": 0, "liver": 5}}) == {5: "liver"}
    assert S.parse_label_names({"2": "kidney"}) == {2: "kidney"}
    sidecar = {"labels": {"1": {"name": "spleen", "voxels": 10, "volume_ml": 0.3}}}  # written by `agn segment`
    assert S.parse_label_names(sidecar) == {1: "spleen"}


def test_case_id():
    assert S.case_id("a/b/case_01.nii.gz") == "case_01"
    assert S.case_id("x.mha") == "x"
    assert S.case_id("y.seg.nrrd") == "y"
