"""Reading and writing CT volumes: real NIfTI and DICOM, synthetic geometry, and every bad input."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from agn_cli.ct.volume import (
    Geometry,
    array_xyz,
    dicom_series,
    image_from_xyz,
    list_volume_inputs,
    read_volume,
    volume_stem,
    write_volume,
)
from agn_cli.errors import AgnError
from tests.conftest import require

CT_DIR = "data/ct/totalseg-example"
OBLIQUE = (0.0, 0.8, 0.6, -1.0, 0.0, 0.0, 0.0, -0.6, 0.8)  # rotated + permuted, det = +1


def synthetic(size=(12, 10, 8), spacing=(0.8, 0.9, 2.5), direction=OBLIQUE, dtype=np.int16, seed=0) -> sitk.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(-1000, 1000, size=size).astype(dtype)
    image = image_from_xyz(arr, Geometry(tuple(size), spacing, (10.0, -20.5, 33.25), direction))
    return image


def test_read_real_nifti(shared_dir):
    path = require(shared_dir / CT_DIR / "example_ct.nii.gz")
    image = read_volume(path)
    assert image.GetSize() == (122, 101, 112)
    assert image.GetSpacing() == pytest.approx((3.0, 3.0, 3.0))
    arr = array_xyz(image)
    assert arr.shape == (122, 101, 112)
    assert arr.min() < -900 and arr.max() > 1000  # HU


def test_read_real_dicom_series(shared_dir):
    folder = require(shared_dir / CT_DIR / "example_ct_dicom")
    notes: list[str] = []
    image = read_volume(folder, notify=notes.append)
    assert image.GetSize() == (512, 512, 20)
    assert image.GetSpacing() == pytest.approx((0.9765625, 0.9765625, 2.0))
    assert notes == []  # a single series: nothing to say
    arr = array_xyz(image)
    assert arr.min() <= -1000 and arr.max() > 500  # rescale slope/intercept applied: HU


def test_array_xyz_round_trip_keeps_geometry_and_order():
    image = synthetic()
    arr = array_xyz(image)
    assert arr.shape == image.GetSize()
    # (x, y, z) indexing agrees with SimpleITK's GetPixel(x, y, z)
    assert arr[3, 7, 5] == image.GetPixel(3, 7, 5)
    back = image_from_xyz(arr, image)
    assert Geometry.of(back) == Geometry.of(image)
    assert np.array_equal(array_xyz(back), arr)
    with pytest.raises(ValueError):
        image_from_xyz(arr[:-1], image)


def test_write_volume_is_atomic_and_refuses_to_overwrite(tmp_path):
    image = synthetic()
    path = write_volume(image, tmp_path / "a.nii.gz")
    again = read_volume(path)
    assert Geometry.of(again).max_difference(Geometry.of(image)) < 1e-5
    assert np.array_equal(array_xyz(again), array_xyz(image))
    with pytest.raises(AgnError, match="--overwrite"):
        write_volume(image, path)
    write_volume(image, path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz"]  # no temp files left


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_other_formats(tmp_path, suffix):
    image = synthetic()
    path = write_volume(image, tmp_path / f"a{suffix}")
    again = read_volume(path)
    assert Geometry.of(again).max_difference(Geometry.of(image)) < 1e-9  # double precision in these headers


def test_missing_and_empty_inputs(tmp_path):
    with pytest.raises(AgnError, match="not found"):
        read_volume(tmp_path / "nope.nii.gz")
    (tmp_path / "zero.nii.gz").write_bytes(b"")
    with pytest.raises(AgnError, match="empty"):
        read_volume(tmp_path / "zero.nii.gz")
    (tmp_path / "dicoms").mkdir()
    with pytest.raises(AgnError, match="no DICOM series"):
        read_volume(tmp_path / "dicoms")


def test_truncated_nifti(tmp_path):
    full = write_volume(synthetic(size=(40, 40, 20)), tmp_path / "full.nii.gz")
    data = full.read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(AgnError, match="unreadable or truncated"):
        read_volume(tmp_path / "cut.nii.gz")
    raw = gzip.decompress(data)
    (tmp_path / "cut.nii").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(AgnError):
        read_volume(tmp_path / "cut.nii")


def test_gzip_trailer_shortcut_and_its_fallback(tmp_path, monkeypatch):
    """A complete .nii.gz is accepted from its gzip trailer without decompressing the stream; a multi-member file
    (trailer = last member only) is checked the slow way and accepted; a truncated one is still refused."""
    from agn_cli.ct import volume as volume_module

    image = synthetic(size=(40, 40, 20))
    full = write_volume(image, tmp_path / "full.nii.gz")
    raw = gzip.decompress(full.read_bytes())
    (tmp_path / "multi.nii.gz").write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    (tmp_path / "cut.nii.gz").write_bytes(full.read_bytes()[:-9])  # only the trailer and a byte missing

    opened: list[str] = []
    stream_size = volume_module._gzip_stream_size
    monkeypatch.setattr(volume_module, "_gzip_stream_size", lambda p: opened.append(Path(p).name) or stream_size(p))
    volume_module._check_nifti_payload(full)
    assert opened == []
    volume_module._check_nifti_payload(tmp_path / "multi.nii.gz")
    assert opened == ["multi.nii.gz"]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_volume(tmp_path / "multi.nii.gz")), sitk.GetArrayFromImage(image))
    with pytest.raises(AgnError, match="unreadable or truncated"):
        read_volume(tmp_path / "cut.nii.gz")


def test_2d_4d_vector_and_single_slice_are_rejected(tmp_path):
    sitk.WriteImage(sitk.Image(32, 24, sitk.sitkUInt8), str(tmp_path / "frame.png"))
    with pytest.raises(AgnError, match="2D"):
        read_volume(tmp_path / "frame.png")
    sitk.WriteImage(sitk.Image([6, 5, 4, 3], sitk.sitkInt16), str(tmp_path / "series.nii.gz"))
    with pytest.raises(AgnError, match="4D"):
        read_volume(tmp_path / "series.nii.gz")
    sitk.WriteImage(sitk.Image([6, 5, 4], sitk.sitkVectorFloat32, 3), str(tmp_path / "vec.nrrd"))
    with pytest.raises(AgnError, match="components"):
        read_volume(tmp_path / "vec.nrrd")
    sitk.WriteImage(sitk.Image([6, 5, 1], sitk.sitkInt16), str(tmp_path / "one.nii.gz"))
    with pytest.raises(AgnError, match="single slice"):
        read_volume(tmp_path / "one.nii.gz")


def test_4d_with_one_volume_is_accepted(tmp_path):
    sitk.WriteImage(sitk.Image([6, 5, 4, 1], sitk.sitkInt16), str(tmp_path / "v.nii.gz"))
    assert read_volume(tmp_path / "v.nii.gz").GetSize() == (6, 5, 4)


def test_nan_and_inf_voxels(tmp_path):
    arr = np.zeros((8, 8, 8), np.float32)
    arr[1, 2, 3] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "nan.nii.gz"))
    with pytest.raises(AgnError, match="NaN/inf"):
        read_volume(tmp_path / "nan.nii.gz")
    arr[1, 2, 3] = np.inf
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "inf.nrrd"))
    with pytest.raises(AgnError, match="NaN/inf"):
        read_volume(tmp_path / "inf.nrrd")


def _write_dicom_series(folder: Path, uid: str, slices: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(slices):
        sl = sitk.GetImageFromArray(rng.integers(-1000, 1000, size=(1, 16, 16)).astype(np.int16))
        sl.SetSpacing((0.7, 0.7, 2.0))
        tags = {
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.3680043.8.498.1",
            "0020|000e": uid,
            "0008|0018": f"{uid}.{k + 1}",
            "0020|0013": str(k + 1),
            "0020|0032": f"-5\\-5\\{2.0 * k}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": "0.7\\0.7",
            "0018|0050": "2.0",
        }
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{uid}_{k:03d}.dcm"))
        writer.Execute(sl)


def test_several_dicom_series_pick_most_slices_or_the_one_asked(tmp_path):
    folder = tmp_path / "study"
    _write_dicom_series(folder, "1.2.826.0.1.3680043.8.498.10", 3, 0)
    _write_dicom_series(folder, "1.2.826.0.1.3680043.8.498.20", 5, 1)
    assert [len(files) for _, files in dicom_series(folder)] == [5, 3]
    notes: list[str] = []
    image = read_volume(folder, notify=notes.append)
    assert image.GetSize() == (16, 16, 5)
    assert len(notes) == 1 and "2 DICOM series" in notes[0] and "--series" in notes[0]
    chosen = read_volume(folder, series_uid="1.2.826.0.1.3680043.8.498.10", notify=notes.append)
    assert chosen.GetSize() == (16, 16, 3)
    with pytest.raises(AgnError, match="not in"):
        read_volume(folder, series_uid="9.9.9")


def test_list_volume_inputs_expands_folders(tmp_path):
    write_volume(synthetic(), tmp_path / "scans" / "a.nii.gz")
    write_volume(synthetic(), tmp_path / "scans" / "b.mha")
    (tmp_path / "scans" / "notes.txt").write_text("x")
    _write_dicom_series(tmp_path / "dicom" / "p1", "1.2.826.0.1.3680043.8.498.30", 3, 2)
    cases = list_volume_inputs([tmp_path / "scans", tmp_path / "dicom", tmp_path / "x.nii.gz"])
    assert [volume_stem(c) for c in cases] == ["a", "b", "p1", "x"]


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd"])
def test_a_short_write_is_caught_and_leaves_nothing(tmp_path, monkeypatch, suffix):
    """SimpleITK's writers do not raise on a full disk; the written file is checked instead."""
    import os

    write = sitk.WriteImage

    def short(image, name, *args, **kwargs):
        write(image, name, *args, **kwargs)
        os.truncate(name, os.path.getsize(name) * 2 // 3)

    monkeypatch.setattr(sitk, "WriteImage", short)
    with pytest.raises(AgnError, match="incomplete .*disk full"):
        write_volume(synthetic(size=(40, 40, 20)), tmp_path / f"m{suffix}")
    assert list(tmp_path.iterdir()) == []


def test_hidden_temporary_files_are_not_cases(tmp_path):
    write_volume(synthetic(), tmp_path / "a.nii.gz")
    (tmp_path / ".a.nii.gz.k3j.tmp.nii.gz").write_bytes(b"left by a killed run")
    assert [p.name for p in list_volume_inputs([tmp_path])] == ["a.nii.gz"]
