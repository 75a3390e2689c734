"""The one JSON encoder (agn_cli.runtime.jsonio): strict JSON out of NaN, numpy values and Paths."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from agn_cli.runtime.jsonio import dumps, jsonable


def test_jsonable_exact():
    payload = {
        "nan": float("nan"), "inf": math.inf, "-inf": -math.inf, "ok": 0.5,
        "np_float": np.float32(0.25), "np_nan": np.float64("nan"), "np_int": np.int64(7), "np_bool": np.bool_(True),
        "array": np.array([[1, 2], [3, 4]], dtype=np.int16), "float_array": np.array([1.5, np.nan]),
        "path": Path("a/b.nii.gz"), "tuple": (1, (2, 3)), np.int32(5): "numpy key", 3: "int key",
    }
    assert jsonable(payload) == {
        "nan": None, "inf": None, "-inf": None, "ok": 0.5,
        "np_float": 0.25, "np_nan": None, "np_int": 7, "np_bool": True,
        "array": [[1, 2], [3, 4]], "float_array": [1.5, None],
        "path": "a/b.nii.gz", "tuple": [1, [2, 3]], 5: "numpy key", 3: "int key",
    }
    assert type(jsonable(np.int64(7))) is int and type(jsonable(np.float32(0.25))) is float


def test_jsonable_rounds_only_when_asked():
    assert jsonable({"x": [1 / 3]}) == {"x": [1 / 3]}
    assert jsonable({"x": [1 / 3, np.float32(2 / 3)]}, digits=6) == {"x": [0.333333, 0.666667]}


def test_dumps_is_strict_json():
    text = dumps({"dice": float("nan"), "labels": {1: "spleen"}, "where": Path("/tmp/x"), "obj": object})
    assert text.endswith("}\n") and "NaN" not in text
    assert json.loads(text) == {"dice": None, "labels": {"1": "spleen"}, "where": "/tmp/x", "obj": str(object)}
    # the same text as json.dumps(indent=2) for plain data, so model cards and sidecars keep their bytes
    plain = {"a": [1, 2.5, "x"], "b": {"c": None, "d": True}}
    assert dumps(plain) == json.dumps(plain, indent=2) + "\n"
