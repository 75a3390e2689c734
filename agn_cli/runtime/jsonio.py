"""The one JSON encoder for everything agn prints or writes (--json output, sidecars, reports, model cards).

Why: metrics are often NaN (an organ absent from both masks) and results carry numpy scalars, arrays and Paths;
Python's json writes NaN as a bare `NaN` that strict parsers reject, and fails on numpy types. Everything goes
through `jsonable` so all outputs follow the same rules: NaN and infinities become null, numpy values become
Python numbers and lists, Paths become strings.
"""

from __future__ import annotations

import json
import math
from pathlib import Path, PurePath
from typing import Any, Optional

import numpy as np

_PLAIN_KEYS = (str, int, float, bool, type(None))


def jsonable(obj: Any, digits: Optional[int] = None) -> Any:
    """A copy of `obj` that strict JSON can hold; floats are rounded to `digits` decimals when given."""
    if isinstance(obj, dict):
        return {_key(k): jsonable(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v, digits) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist(), digits)
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        if not math.isfinite(obj):
            return None
        return round(obj, digits) if digits is not None else obj
    if isinstance(obj, PurePath):
        return str(obj)
    return obj


def _key(key: Any) -> Any:
    if isinstance(key, np.generic):
        key = key.item()
    return key if isinstance(key, _PLAIN_KEYS) else str(key)


def dumps(obj: Any, digits: Optional[int] = None) -> str:
    """Indented strict JSON text ending in a newline; objects JSON has no type for are written as their str()."""
    return json.dumps(jsonable(obj, digits), indent=2, allow_nan=False, default=str) + "\n"


def read_json_object(path: Path | str, what: str) -> dict[str, Any]:
    """A JSON file that must hold an object (model card, dataset.json, ...); one-line AgnError naming `what` else."""
    from agn_cli.errors import AgnError

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AgnError(f"cannot read {what} {path}: {exc}; fix or regenerate it") from None
    if not isinstance(data, dict):
        raise AgnError(f"{what} {path} must hold a JSON object")
    return data
