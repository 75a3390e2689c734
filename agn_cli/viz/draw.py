"""OpenCV drawing shared by every picture agn makes: text, outlined text, colours, and writing a PNG safely.

Why OpenCV: it is already a dependency (frame I/O), so figures need no plotting library.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from agn_cli.errors import AgnError
from agn_cli.runtime.atomic import atomic_path

FONT = cv2.FONT_HERSHEY_SIMPLEX
INK = (40, 40, 40)
LIGHT = (225, 225, 225)
WHITE = (255, 255, 255)
# BGR colours of chart series
SERIES_COLOURS = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148)]


def text(img: np.ndarray, words: str, org: tuple[int, int], scale: float = 0.45, colour=INK, thickness: int = 1) -> None:
    cv2.putText(img, words, (int(org[0]), int(org[1])), FONT, scale, colour, thickness, cv2.LINE_AA)


def text_width(words: str, scale: float = 0.45, thickness: int = 1) -> int:
    return cv2.getTextSize(words, FONT, scale, thickness)[0][0]


def outlined(img: np.ndarray, words: str, org: tuple[int, int], scale: float = 0.45, outline: int = 3) -> None:
    """White text with a dark outline (`outline` px thick): readable on any image."""
    text(img, words, org, scale, (0, 0, 0), outline)
    text(img, words, org, scale, WHITE, 1)


def write_png(path: Path | str, image: np.ndarray, overwrite: bool = False) -> Path:
    """Encode `image` (BGR or grey uint8) and write it atomically (a failed write leaves no partial file)."""
    path = Path(path)
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise AgnError(f"cannot encode {path.name} as PNG")
    with atomic_path(path, overwrite) as tmp:
        tmp.write_bytes(encoded.tobytes())
    return path
