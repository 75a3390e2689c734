"""Read 2D ultrasound frames from images, DICOM, video files and folders, one frame at a time.

Why one reader for everything: a sonographer's export is a mix of screen captures (PNG/JPEG/TIFF/BMP), DICOM
objects (single- or multi-frame, RGB, YBR or palette colour) and cine clips (AVI/MP4). Every reader yields the same
`Frame(path, index, image)` with `image` an (H, W) grey or (H, W, 3) RGB array, uint8, or float32 in [0, 255] when
the source had more than 8 bits (16-bit PNG/TIFF, 12/16-bit DICOM), so nothing is truncated or wrapped.

A file that cannot be read raises `FrameReadError` from `read_frames`; `iter_frames` reports it through `on_error`
and goes on with the next input, so one corrupt file never stops a batch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

import cv2
import numpy as np

from agn_cli.errors import AgnError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
VIDEO_SUFFIXES = (".avi", ".mp4", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm")
FRAME_SUFFIXES = IMAGE_SUFFIXES + DICOM_SUFFIXES + VIDEO_SUFFIXES


class Frame(NamedTuple):
    path: Path
    index: int  # frame number inside the file (0 for still images)
    image: np.ndarray  # (H, W) or (H, W, 3) RGB; uint8, or float32 in [0, 255]


class FrameReadError(AgnError):
    """One input could not be read; batch readers report and skip it."""


def is_dicom(path: Path) -> bool:
    """DICOM Part 10 files carry 'DICM' at byte 128, whatever their name (PACS exports often have no suffix)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def kind_of(path: Path) -> str:
    """'image' | 'dicom' | 'video' | '' (unknown) by suffix, then by DICOM magic."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in DICOM_SUFFIXES:
        return "dicom"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    return "dicom" if is_dicom(path) else ""


def expand_inputs(inputs: Iterable[Path | str], on_error: Callable[[Path, str], None] | None = None) -> list[Path]:
    """Files as given, folders searched recursively (sorted; hidden entries and unknown types skipped)."""
    files: list[Path] = []
    for raw in inputs:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = []
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in names:
                    if name.startswith("."):
                        continue
                    candidate = Path(root) / name
                    if candidate.suffix.lower() in FRAME_SUFFIXES or (not candidate.suffix and is_dicom(candidate)):
                        found.append(candidate)
            files.extend(sorted(found))
        elif path.is_file():
            files.append(path)
        elif on_error is not None:
            on_error(path, f"{path}: no such file or folder")
        else:
            raise FrameReadError(f"{path}: no such file or folder")
    return files


def to_display_range(image: np.ndarray, max_value: float | None = None) -> np.ndarray:
    """uint8 stays; wider integers become float32 in [0, 255] (scaled by `max_value` or the dtype's maximum)."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.bool_:
        return image.astype(np.uint8) * 255
    if np.issubdtype(image.dtype, np.integer):
        if max_value is None:
            max_value = float(np.iinfo(image.dtype).max)
        lo = min(0.0, float(image.min()))  # signed data: shift so nothing is negative
        return ((image.astype(np.float32) - lo) * (255.0 / max(max_value - lo, 1.0))).clip(0, 255).astype(np.float32)
    arr = image.astype(np.float32)
    finite = np.isfinite(arr)
    if not finite.all():
        arr = np.where(finite, arr, 0.0).astype(np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    if lo >= 0.0 and hi <= 1.0:  # float images in [0, 1]
        return arr * 255.0
    if lo >= 0.0 and hi <= 255.0:
        return arr
    return ((arr - lo) * (255.0 / max(hi - lo, 1e-6))).astype(np.float32)


def _from_cv2(image: np.ndarray) -> np.ndarray:
    """OpenCV's BGR/BGRA -> RGB (alpha dropped), (H, W, 1) -> (H, W)."""
    if image.ndim == 3:
        if image.shape[2] == 1:
            image = image[..., 0]
        elif image.shape[2] == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        elif image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
        else:
            raise ValueError(f"{image.shape[2]} channels")
    return to_display_range(image)


def _read_image(path: Path) -> Iterator[np.ndarray]:
    data = np.fromfile(path, dtype=np.uint8)
    if path.suffix.lower() in (".tif", ".tiff"):
        ok, pages = cv2.imdecodemulti(data, cv2.IMREAD_UNCHANGED)
        if ok and pages:
            for page in pages:
                yield _from_cv2(page)
            return
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise FrameReadError(f"{path}: not a readable image (corrupt or unsupported {path.suffix or 'format'})")
    yield _from_cv2(image)


def _dicom_frame(ds, array: np.ndarray) -> np.ndarray:
    """Colour handling for one decoded frame: palette -> RGB, MONOCHROME1 inverted, >8 bits scaled.

    YBR_* frames arrive as RGB already: pydicom's decoders (as_rgb=True, the default) apply convert_color_space to
    native and compressed data alike, so converting here again would be wrong."""
    from pydicom.pixels import apply_color_lut

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(array, ds)
        return (rgb >> 8).astype(np.uint8) if rgb.dtype == np.uint16 else to_display_range(rgb)
    bits = int(ds.get("BitsStored", 8) or 8)
    if photometric == "MONOCHROME1":  # 0 is white
        top = (1 << bits) - 1 if np.issubdtype(array.dtype, np.integer) else float(array.max())
        array = (top - array.astype(np.int64)).clip(0, top) if np.issubdtype(array.dtype, np.integer) else top - array
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.integer) and array.min() >= 0:
        return to_display_range(array, float((1 << bits) - 1))
    return to_display_range(array)


def _read_dicom(path: Path, every: int) -> Iterator[tuple[int, np.ndarray]]:
    import pydicom
    from pydicom.pixels import pixel_array

    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise FrameReadError(f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise FrameReadError(f"{path}: DICOM object has no pixel data (a report or structured document?)")
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    for index in range(0, n_frames, every):
        try:
            # as_rgb (default) converts YBR_* to RGB during decoding, compressed or not
            array = pixel_array(ds, index=index) if n_frames > 1 else pixel_array(ds)
        except Exception as exc:
            raise FrameReadError(
                f"{path}: cannot decode DICOM frame {index} ({ds.file_meta.get('TransferSyntaxUID', '?')}: {exc}); "
                "install pylibjpeg / python-gdcm for this compression"
            ) from exc
        yield index, _dicom_frame(ds, array)


def _read_video(path: Path, every: int) -> Iterator[tuple[int, np.ndarray]]:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise FrameReadError(f"{path}: not a readable video (corrupt, or a codec OpenCV lacks)")
    try:
        index, produced = 0, 0
        while True:
            if index % every == 0:
                ok, frame = capture.read()
                if not ok:
                    break
                produced += 1
                yield index, _from_cv2(frame)
            elif not capture.grab():  # skip without decoding to RGB
                break
            index += 1
        if produced == 0:
            raise FrameReadError(f"{path}: video holds no decodable frames")
    finally:
        capture.release()


def read_frames(path: Path | str, every: int = 1) -> Iterator[Frame]:
    """Every frame of one file (every `every`-th for videos and multi-frame DICOM); raises FrameReadError."""
    path = Path(path)
    if every < 1:
        raise AgnError("--every must be 1 or more")
    if not path.is_file():
        raise FrameReadError(f"{path}: no such file")
    kind = kind_of(path)
    try:
        if kind == "dicom":
            for index, image in _read_dicom(path, every):
                yield Frame(path, index, image)
        elif kind == "video":
            for index, image in _read_video(path, every):
                yield Frame(path, index, image)
        elif kind == "image":
            for index, image in enumerate(_read_image(path)):
                if index % every == 0:
                    yield Frame(path, index, image)
        else:
            raise FrameReadError(
                f"{path}: unsupported file type '{path.suffix}'; use PNG, JPEG, TIFF, BMP, DICOM or a video file"
            )
    except FrameReadError:
        raise
    except (OSError, ValueError, cv2.error) as exc:
        raise FrameReadError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from exc


def iter_frames(
    inputs: Sequence[Path | str],
    every: int = 1,
    on_error: Callable[[Path, str], None] | None = None,
) -> Iterator[Frame]:
    """Frames of all inputs in order; unreadable inputs go to `on_error(path, message)` and are skipped."""

    def report(path: Path, message: str) -> None:
        if on_error is None:
            raise FrameReadError(message)
        on_error(path, message)

    for path in expand_inputs(inputs, on_error=report):
        try:
            yield from read_frames(path, every)
        except FrameReadError as exc:
            report(path, str(exc))
