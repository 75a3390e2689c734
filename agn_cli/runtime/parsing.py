"""The one parser for what users type as sizes, axes and labels ('160x160x96', 'x,z', '1:liver,2:spleen').

Why one module: the commands used to carry six size parsers that disagreed on separators, on whether one number
means every axis, and on their error messages. Every failure here is a one-line AgnError that names the option and
shows an example of a good value.
"""

from __future__ import annotations

import math
import re
from typing import Callable, Optional

from agn_cli.errors import AgnError

SIZE_EXAMPLES = {1: "96", 2: "224x288", 3: "160x160x96"}
_SIZE_SEPARATOR = re.compile(r"\s*[x×,]\s*|\s+")
_FRAME_AXES = {"x": 1, "y": 0}
_AXES = {"x": 0, "y": 1, "z": 2, "0": 0, "1": 1, "2": 2}
MAX_LABEL_ID = 255  # agn writes uint8 label maps


def parse_size(
    text: str,
    ndim: int,
    *,
    what: str = "--size",
    cast: Callable[[str], int | float] = int,
    example: Optional[str] = None,
    low: Optional[float] = None,
    high: Optional[float] = None,
) -> tuple:
    """'160x160x96' -> (160, 160, 96). 'x', '×', ',' or spaces separate; one number is used on every axis.

    `cast` is int (voxels, pixels) or float (mm); values must be positive and, when given, within [low, high]."""
    example = example or SIZE_EXAMPLES.get(ndim, "x".join(["N"] * ndim))
    kind = "whole numbers" if cast is int else "numbers"
    shape = f"{what} must be {ndim} positive {kind} like {example} (or one for every axis), got '{text}'"
    parts = _SIZE_SEPARATOR.split((text or "").strip().lower())
    try:
        values = tuple(cast(p) for p in parts)
    except ValueError:
        raise AgnError(shape) from None
    if len(values) == 1:
        values = values * ndim
    if len(values) != ndim or not all(math.isfinite(v) and v > 0 for v in values):
        raise AgnError(shape)
    if (low is not None and min(values) < low) or (high is not None and max(values) > high):
        raise AgnError(f"{what} must be between {low:g} and {high:g} on each axis, got '{text}'")
    return values


def parse_axes(text: str, what: str = "--flip", frames: bool = False) -> tuple[int, ...]:
    """'x,z' -> (0, 2); 'none' or '' -> (); axes may also be given as 0, 1, 2. Sorted, each once.

    Volumes are indexed (x, y, z); 2D frames (`frames=True`) are (rows, cols) arrays, so x (left-right) is axis 1
    and y (up-down) axis 0."""
    text = (text or "").strip().lower()
    if text in ("", "none"):
        return ()
    names = _FRAME_AXES if frames else _AXES
    try:
        return tuple(sorted({names[t.strip()] for t in text.split(",")}))
    except KeyError:
        allowed = "x (left-right) and y (up-down) for 2D frames" if frames else "x, y, z"
        raise AgnError(f"{what} '{text}' must be none or a comma list of {allowed}") from None


def parse_labels(text: str, background: bool, what: str = "--labels") -> dict[int, str]:
    """'spleen,liver' -> {0: 'background', 1: 'spleen', 2: 'liver'} ({0: 'spleen', ...} without background);
    'ID:NAME' items keep their id and the following names count on from it ('1:spleen,5:liver,pancreas')."""
    items = [item.strip() for item in (text or "").split(",") if item.strip()]
    if not items:
        raise AgnError(f"{what} needs at least one name, e.g. {what} spleen,pancreas,kidney")
    labels: dict[int, str] = {0: "background"} if background else {}
    next_id = 1 if background else 0
    for item in items:
        if ":" in item:
            key, name = (part.strip() for part in item.split(":", 1))
            if not key.isdigit():
                raise AgnError(f"{what}: label '{item}' must be NAME or ID:NAME with a non-negative integer ID")
            label_id = int(key)
        else:
            label_id, name = next_id, item
        if not name:
            raise AgnError(f"{what}: label '{item}' has no name")
        if label_id in labels:
            raise AgnError(f"{what}: label id {label_id} given twice ({labels[label_id]}, {name})")
        if label_id > MAX_LABEL_ID:
            raise AgnError(f"{what}: label id {label_id} does not fit the uint8 label maps agn writes (0..{MAX_LABEL_ID})")
        labels[label_id] = name
        next_id = max(next_id, label_id + 1)
    return labels


def parse_label_ids(text: str, what: str = "--labels") -> list[int]:
    """'5,1,2,2' -> [1, 2, 5]: foreground label ids (0 is background), sorted, each once."""
    try:
        ids = [int(part) for part in (text or "").replace(" ", "").split(",") if part]
    except ValueError:
        raise AgnError(f"{what} must be comma-separated integer ids such as 1,2,5 (got '{text}')") from None
    if not ids or any(v <= 0 for v in ids):
        raise AgnError(f"{what} must list positive ids (0 is background); got '{text}'")
    return sorted(set(ids))
