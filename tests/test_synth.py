"""Synthetic data engine: CT phantoms (geometry, anatomy side, volumes, HU, reproducibility) and ultrasound frames."""

from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from agn_cli.cli.app import main
from agn_cli.synth import (
    LABELS,
    generate_ct_case,
    generate_ct_case_with_info,
    label_volumes_ml,
    phantom_scan,
    write_ct_dataset,
)
from agn_cli.synth.us_frames import US_CLASSES, generate_us_frame, write_us_dataset


class _Result:
    def __init__(self, exit_code: int, stdout: str, stderr: str):
        self.exit_code, self.stdout, self.output = exit_code, stdout, stdout + stderr


class _Runner:
    """Runs `agn` in-process through its real entry point (errors mapped to exit codes), capturing the output."""

    def __init__(self, capsys):
        self.capsys = capsys

    def invoke(self, argv: list[str]) -> _Result:
        self.capsys.readouterr()
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        cap = self.capsys.readouterr()
        return _Result(code, cap.out, cap.err)


RES = 64  # tiny in-plane matrix (~5-8 mm pixels) keeps every case well under a second


def _world_centroid(label: sitk.Image, value: int) -> np.ndarray:
    idx = np.argwhere(sitk.GetArrayViewFromImage(label) == value)[:, ::-1].mean(axis=0)  # (i, j, k)
    return np.array(label.TransformContinuousIndexToPhysicalPoint([float(v) for v in idx]))


@pytest.fixture(scope="module")
def whole_cases():
    """Uncropped phantoms, one per array orientation and contrast phase."""
    cases = {}
    for direction, contrast, seed in (("lps", "none", 3), ("ras", "portal", 4), ("oblique", "none", 5)):
        cases[direction] = generate_ct_case_with_info(
            np.random.default_rng(seed), resolution=RES, direction=direction, contrast=contrast, crop=False
        )
    return cases


@pytest.mark.slow
def test_geometry_identical_and_types(whole_cases):
    for image, label, info in whole_cases.values():
        assert image.GetPixelID() == sitk.sitkInt16 and label.GetPixelID() == sitk.sitkUInt8
        assert image.GetSize() == label.GetSize() == tuple(info.size)
        assert np.allclose(image.GetSpacing(), label.GetSpacing())
        assert np.allclose(image.GetOrigin(), label.GetOrigin())
        assert np.allclose(image.GetDirection(), label.GetDirection())
        assert np.allclose(image.GetDirection(), info.direction_matrix, atol=1e-5)
        assert set(np.unique(sitk.GetArrayViewFromImage(label))) == set(LABELS.values())
    assert np.allclose(whole_cases["ras"][0].GetDirection(), (-1, 0, 0, 0, -1, 0, 0, 0, 1))
    assert np.allclose(whole_cases["lps"][0].GetDirection(), np.eye(3).ravel())


@pytest.mark.parametrize("direction", ["lps", "ras", "oblique"])
@pytest.mark.slow
def test_left_right_in_world_coordinates(whole_cases, direction):
    image, label, info = whole_cases[direction]
    spine_x = info.spine_world[0]
    c = {name: _world_centroid(label, v) for name, v in LABELS.items() if v}
    # LPS: +x is the patient's left. Liver and right kidney on the right (x < spine), spleen and left kidney on the left.
    assert c["liver"][0] < spine_x - 20
    assert c["kidney_right"][0] < spine_x - 40
    assert c["spleen"][0] > spine_x + 40
    assert c["kidney_left"][0] > spine_x + 40
    # bone voxels (spine and roughly symmetric ribs) sit in the midline too
    arr = sitk.GetArrayViewFromImage(image)
    bone = np.argwhere(arr > 300)[:, ::-1]
    bone_x = [image.TransformIndexToPhysicalPoint([int(v) for v in p])[0] for p in bone[:: max(1, len(bone) // 400)]]
    assert abs(np.median(bone_x) - spine_x) < 25
    # superior-inferior and anterior-posterior: right kidney lower than the left, kidneys posterior to the pancreas
    assert c["kidney_right"][2] < c["kidney_left"][2]
    assert c["pancreas"][1] < min(c["kidney_left"][1], c["kidney_right"][1])
    assert c["liver"][2] > c["kidney_right"][2]


def test_volumes_plausible(whole_cases):
    for _, label, _ in whole_cases.values():
        vols = label_volumes_ml(label)
        assert 900 < vols["liver"] < 2100, vols
        assert 100 < vols["spleen"] < 360, vols
        assert 90 < vols["kidney_right"] < 220 and 90 < vols["kidney_left"] < 220, vols
        assert 35 < vols["pancreas"] < 130, vols


def test_hounsfield_units(whole_cases):
    expected = {  # eroded-organ means (HU) without contrast, and lower bounds with portal-venous contrast
        "none": {"liver": (38, 75), "spleen": (27, 58), "kidney_right": (8, 45), "pancreas": (0, 58)},
        "portal": {"liver": (80, 140), "spleen": (90, 140), "kidney_right": (110, 210), "pancreas": (70, 120)},
    }
    for image, label, info in whole_cases.values():
        arr = sitk.GetArrayFromImage(image).astype(float)
        lab = sitk.GetArrayFromImage(label)
        for organ, (lo, hi) in expected[info.contrast].items():
            m = ndimage.binary_erosion(lab == LABELS[organ])
            assert m.sum() > 5
            assert lo <= arr[m].mean() <= hi, (info.contrast, organ, arr[m].mean())
        assert arr.min() >= -1024 and np.percentile(arr, 2) < -900  # air around the body
        assert arr.max() > 300  # bone


def test_seeded_reproducibility():
    a_img, a_lab = generate_ct_case(np.random.default_rng(7), resolution=48)
    b_img, b_lab = generate_ct_case(np.random.default_rng(7), resolution=48)
    c_img, _ = generate_ct_case(np.random.default_rng(8), resolution=48)
    assert np.array_equal(sitk.GetArrayViewFromImage(a_img), sitk.GetArrayViewFromImage(b_img))
    assert np.array_equal(sitk.GetArrayViewFromImage(a_lab), sitk.GetArrayViewFromImage(b_lab))
    assert a_img.GetDirection() == b_img.GetDirection() and a_img.GetSpacing() == b_img.GetSpacing()
    same_shape = a_img.GetSize() == c_img.GetSize()
    assert not same_shape or not np.array_equal(sitk.GetArrayViewFromImage(a_img), sitk.GetArrayViewFromImage(c_img))


# sha256 of (image, labels, geometry) computed with the phantom code before `_phantom` was split into its pieces
# (commit ff206ca): the split must not change a single voxel. Covers the long abdomen-pelvis scan, both contrast
# phases, the table, crop=False and an oblique direction.
PHANTOM_SHA256 = [
    (0, {}, "49be1a59afc1f58a4d15efc7b0cf21ddd9a01c35393204cdc2a696267e98a444"),
    (1, {}, "0b609b6acb7c1674707a34d053212ee0c0c27f1d04086f9c307800dc31fcb9cb"),
    (0, {"contrast": "none", "crop": False}, "44f66221b825ca7b7db506aa8a5c138c46a2dcc75ddea2a019ef45922b839ac2"),
    (1, {"contrast": "portal", "direction": "oblique"}, "c3547238f2bbb8338cb74713c6be97b9644f868fe5377ade952ef86c55561b5d"),
]


@pytest.mark.parametrize(("seed", "kwargs", "expected"), PHANTOM_SHA256)
def test_phantom_bytes_unchanged(seed, kwargs, expected):
    image, label, _ = generate_ct_case_with_info(np.random.default_rng([seed, 0]), resolution=RES, **kwargs)
    digest = hashlib.sha256()
    for im in (image, label):
        digest.update(sitk.GetArrayViewFromImage(im).tobytes())
        digest.update(repr((im.GetSize(), im.GetSpacing(), im.GetOrigin(), im.GetDirection())).encode())
    assert digest.hexdigest() == expected


def test_phantom_scan_has_the_exact_grid():
    """The benchmark's scan: a phantom on exactly the asked size and spacing, LPS, int16, air outside the body."""
    image = phantom_scan((48, 40, 20), (2.5, 2.5, 3.0), seed=0)
    assert image.GetSize() == (48, 40, 20) and image.GetSpacing() == (2.5, 2.5, 3.0)
    assert image.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert image.GetPixelID() == sitk.sitkInt16
    arr = sitk.GetArrayViewFromImage(image)
    assert arr[:, 0, 0].max() <= -900  # a corner is air
    assert arr.max() > 300 and 0.3 < (arr > -500).mean() < 0.95  # bone, and a body that fills part of the view
    again = phantom_scan((48, 40, 20), (2.5, 2.5, 3.0), seed=0)
    assert np.array_equal(sitk.GetArrayViewFromImage(again), arr)


@pytest.mark.slow
def test_dataset_layout_and_cli(tmp_path, capsys):
    out = tmp_path / "ct"
    runner = _Runner(capsys)
    res = runner.invoke(["synth", "ct", "-o", str(out), "--cases", "2", "--seed", "1", "--resolution", "48",
                              "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["cases"] == 2
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"}
    assert meta["labels"] == {"background": 0, "spleen": 1, "kidney_right": 2, "kidney_left": 3, "liver": 4,
                              "pancreas": 5}
    assert meta["numTraining"] == 2 and meta["file_ending"] == ".nii.gz"
    assert {"name", "description", "licence"} <= set(meta)
    images = sorted((out / "imagesTr").iterdir())
    labels = sorted((out / "labelsTr").iterdir())
    assert [p.name for p in images] == ["case_0000_0000.nii.gz", "case_0001_0000.nii.gz"]
    assert [p.name for p in labels] == ["case_0000.nii.gz", "case_0001.nii.gz"]
    for ip, lp in zip(images, labels):
        im, lb = sitk.ReadImage(str(ip)), sitk.ReadImage(str(lp))
        assert im.GetPixelID() == sitk.sitkInt16 and lb.GetPixelID() == sitk.sitkUInt8
        assert im.GetSize() == lb.GetSize()
        assert np.allclose(im.GetOrigin(), lb.GetOrigin()) and np.allclose(im.GetDirection(), lb.GetDirection())
        assert set(np.unique(sitk.GetArrayViewFromImage(lb))) <= set(meta["labels"].values())
    # same seed, same files' content (written by the library call)
    again = write_ct_dataset(tmp_path / "again", 1, seed=1, resolution=48)
    assert again[0].size == tuple(sitk.ReadImage(str(images[0])).GetSize())
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(images[0])))
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "again" / "imagesTr" / "case_0000_0000.nii.gz")))
    assert np.array_equal(a, b)
    # existing output without --overwrite: exit 2, nothing touched
    before = sorted(p.name for p in out.rglob("*"))
    res = runner.invoke(["synth", "ct", "-o", str(out), "--cases", "1", "--resolution", "32"])
    assert res.exit_code == 2
    assert sorted(p.name for p in out.rglob("*")) == before
    res = runner.invoke(["synth", "ct", "-o", str(out), "--cases", "1", "--resolution", "32", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 1
    assert len(list((out / "imagesTr").iterdir())) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_cli_bad_options_exit_2(tmp_path, capsys):
    runner = _Runner(capsys)
    for args in (["--direction", "sideways"], ["--contrast", "arterial"], ["--size-mm", "400x400"], ["--cases", "0"]):
        res = runner.invoke(["synth", "ct", "-o", str(tmp_path / "x"), "--resolution", "32", *args])
        assert res.exit_code == 2, (args, res.output)
        assert not (tmp_path / "x").exists()


def test_us_frames(tmp_path, capsys):
    h, w = 112, 144
    for label in US_CLASSES:
        img, box, mask = generate_us_frame(np.random.default_rng(1), label, (h, w))
        assert img.dtype == np.uint8 and img.shape == (h, w)
        assert img[0, 0] == 0 and img.max() > 100  # black outside the fan, speckled tissue inside
        if label == "Background":
            assert box is None
        else:
            x0, y0, x1, y1 = box
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert (mask is not None) == label.startswith("Brain")
        if mask is not None:
            ys, xs = np.nonzero(mask)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == box
    out = tmp_path / "us"
    counts = write_us_dataset(out, 10, seed=2, size=(h, w))
    assert sum(counts.values()) == 10 and set(counts) == set(US_CLASSES)
    rows = list(csv.DictReader((out / "labels.csv").open()))
    assert len(rows) == 10 and all((out / r["path"]).is_file() for r in rows)
    assert {r["label"] for r in rows} == set(US_CLASSES)
    boxes = list(csv.DictReader((out / "boxes.csv").open()))
    for r in boxes:
        if r["x0"]:
            assert 0 <= int(r["x0"]) < int(r["x1"]) <= w and 0 <= int(r["y0"]) < int(r["y1"]) <= h
    assert len(list((out / "masks").iterdir())) == 4
    runner = _Runner(capsys)
    res = runner.invoke(["synth", "us", "-o", str(out), "--frames", "2"])
    assert res.exit_code == 2
    res = runner.invoke(["synth", "us", "-o", str(tmp_path / "us2"), "--frames", "3", "--size", "64x80"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(["synth", "us", "-o", str(tmp_path / "us3"), "--size", "big"])
    assert res.exit_code == 2
