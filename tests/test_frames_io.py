"""Frame reading: images (8/16-bit, grey/RGB/RGBA), DICOM (real US objects, synthetic multi-frame/YBR), video,
folders, and bad inputs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from agn_cli.errors import AgnError
from agn_cli.us.frames import FrameReadError, expand_inputs, iter_frames, read_frames
from tests.conftest import require


def _one(path: Path, **kw) -> np.ndarray:
    frames = list(read_frames(path, **kw))
    assert len(frames) == 1 and frames[0].index == 0
    return frames[0].image


def test_png_grey_rgb_rgba_8bit(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    cv2.imwrite(str(tmp_path / "c.png"), rgb[..., ::-1])  # OpenCV writes BGR
    rgba = np.dstack([rgb[..., ::-1], np.full((30, 40), 7, np.uint8)])
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    assert np.array_equal(_one(tmp_path / "g.png"), grey)
    got = _one(tmp_path / "c.png")
    assert got.dtype == np.uint8 and np.array_equal(got, rgb)  # RGB order, not BGR
    got = _one(tmp_path / "a.png")
    assert got.shape == (30, 40, 3) and np.array_equal(got, rgb)  # alpha dropped


def test_jpeg_and_bmp(tmp_path: Path) -> None:
    image = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (48, 1))
    cv2.imwrite(str(tmp_path / "f.jpg"), image)
    cv2.imwrite(str(tmp_path / "f.bmp"), np.dstack([image] * 3))
    jpg = _one(tmp_path / "f.jpg")
    assert jpg.shape == (48, 64) and np.abs(jpg.astype(int) - image).max() <= 8
    assert np.array_equal(_one(tmp_path / "f.bmp"), np.dstack([image] * 3))


def test_16bit_png_and_tiff_scaled_not_wrapped(tmp_path: Path) -> None:
    grey16 = np.array([[0, 257, 32896, 65535]], dtype=np.uint16).repeat(4, axis=0)
    cv2.imwrite(str(tmp_path / "g16.png"), grey16)
    got = _one(tmp_path / "g16.png")
    assert got.dtype == np.float32 and got.shape == (4, 4)
    assert np.allclose(got[0], [0.0, 1.0, 128.0, 255.0], atol=1e-3)
    rgb16 = np.zeros((5, 6, 3), np.uint16)
    rgb16[..., 0] = 65535  # pure red
    cv2.imwrite(str(tmp_path / "c16.tiff"), rgb16[..., ::-1])
    got = _one(tmp_path / "c16.tiff")
    assert got.shape == (5, 6, 3) and np.allclose(got[0, 0], [255.0, 0.0, 0.0])


def test_multipage_tiff_every(tmp_path: Path) -> None:
    pages = [np.full((8, 9), 10 * i, np.uint8) for i in range(5)]
    assert cv2.imwritemulti(str(tmp_path / "stack.tif"), pages)
    frames = list(read_frames(tmp_path / "stack.tif"))
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    assert [int(f.image[0, 0]) for f in frames] == [0, 10, 20, 30, 40]
    assert [f.index for f in read_frames(tmp_path / "stack.tif", every=2)] == [0, 2, 4]


def test_real_dicom_ultrasound(shared_dir: Path) -> None:
    folder = require(shared_dir / "data" / "us" / "dicom")
    expected = {"OBXXXX1A.dcm": (600, 800, 3), "US1_UNCR.dcm": (480, 640, 3), "gdcm-US-ALOKA-16.dcm": (480, 640, 3)}
    frames = {f.path.name: f for f in iter_frames([folder])}
    assert set(frames) == set(expected)
    for name, shape in expected.items():
        image = frames[name].image
        assert image.shape == shape and image.dtype == np.uint8, name
    # RGB colour Doppler: red/orange flow pixels exist (R clearly above B)
    doppler = frames["US1_UNCR.dcm"].image.astype(int)
    assert np.sum(doppler[..., 0] - doppler[..., 2] > 100) > 500
    # 16-bit palette colour: LUT applied (Aloka's palette tints the background blue), full 8-bit range used
    palette = frames["gdcm-US-ALOKA-16.dcm"].image.astype(int)
    assert palette.max() >= 200 and np.sum(palette[..., 2] - palette[..., 0] >= 20) > 10_000


def _write_dicom(path: Path, array: np.ndarray, photometric: str, bits_stored: int) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"  # US multi-frame
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "US"
    ds.set_pixel_data(array, photometric_interpretation=photometric, bits_stored=bits_stored)
    ds.save_as(path, enforce_file_format=True)


def test_synthetic_multiframe_dicom_12bit_every(tmp_path: Path) -> None:
    frames = np.stack([np.full((16, 20), 1000 * i, np.uint16) for i in range(4)])
    frames[:, 0, 0] = 4095
    _write_dicom(tmp_path / "cine", frames, "MONOCHROME2", 12)  # no suffix: found by the DICM magic
    assert expand_inputs([tmp_path]) == [tmp_path / "cine"]
    got = list(read_frames(tmp_path / "cine"))
    assert [f.index for f in got] == [0, 1, 2, 3]
    assert got[2].image.shape == (16, 20)
    assert got[2].image[5, 5] == pytest.approx(2000 * 255 / 4095, abs=1e-3)  # 12-bit range, not 16-bit
    assert got[0].image[0, 0] == pytest.approx(255.0)
    assert [f.index for f in read_frames(tmp_path / "cine", every=3)] == [0, 3]


def test_synthetic_ybr_dicom_becomes_rgb(tmp_path: Path) -> None:
    rgb = np.zeros((8, 10, 3), np.uint8)
    rgb[..., 0] = 200  # red
    from pydicom.pixels import convert_color_space

    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    _write_dicom(tmp_path / "ybr.dcm", ybr, "YBR_FULL", 8)
    image = _one(tmp_path / "ybr.dcm")
    assert image.shape == (8, 10, 3)
    assert abs(int(image[0, 0, 0]) - 200) <= 2 and image[0, 0, 1] <= 2 and image[0, 0, 2] <= 2


def test_video_every_frame_and_every_n(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (48, 32))
    assert writer.isOpened()
    for i in range(10):
        writer.write(np.full((32, 48, 3), 20 * i, np.uint8))
    writer.release()
    frames = list(read_frames(path))
    assert len(frames) == 10 and frames[0].image.shape == (32, 48, 3)
    assert [round(float(f.image.mean()) / 20) for f in frames] == list(range(10))
    every = list(read_frames(path, every=4))
    assert [f.index for f in every] == [0, 4, 8]
    assert round(float(every[1].image.mean()) / 20) == 4


def test_folder_recursive_sorted_and_bad_inputs_skipped(tmp_path: Path) -> None:
    (tmp_path / "b" / "c").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    for rel in ("b/c/z.png", "a.png", "b/y.png", ".hidden/x.png"):
        cv2.imwrite(str(tmp_path / rel), np.zeros((4, 4), np.uint8))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "notes.txt").write_text("ignored")
    errors: list[tuple[Path, str]] = []
    frames = list(iter_frames([tmp_path, tmp_path / "missing.png"], on_error=lambda p, m: errors.append((p, m))))
    assert [f.path.relative_to(tmp_path).as_posix() for f in frames] == ["a.png", "b/c/z.png", "b/y.png"]
    assert sorted(p.name for p, _ in errors) == ["broken.png", "missing.png"]
    assert all(str(p) in m for p, m in errors)  # each message names its file
    with pytest.raises(FrameReadError):
        list(read_frames(tmp_path / "broken.png"))
    with pytest.raises(FrameReadError, match="unsupported"):
        list(read_frames(tmp_path / "notes.txt"))
    with pytest.raises(AgnError):
        list(read_frames(tmp_path / "a.png", every=0))
