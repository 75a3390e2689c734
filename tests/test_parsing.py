"""The one parser for sizes, axes and labels (agn_cli.runtime.parsing): exact outputs and one-line errors."""

from __future__ import annotations

import pytest

from agn_cli.errors import AgnError
from agn_cli.runtime.parsing import parse_axes, parse_label_ids, parse_labels, parse_size


@pytest.mark.parametrize(
    ("text", "ndim", "kwargs", "expected"),
    [
        ("160x160x96", 3, {}, (160, 160, 96)),
        ("208x272", 2, {}, (208, 272)),
        ("160,160,96", 3, {}, (160, 160, 96)),
        (" 48 x 40 x 20 ", 3, {}, (48, 40, 20)),
        ("32×32×16", 3, {}, (32, 32, 16)),
        ("64 80", 2, {}, (64, 80)),
        ("96", 3, {}, (96, 96, 96)),
        ("2", 3, {"cast": float}, (2.0, 2.0, 2.0)),
        ("0.8x0.8x1.5", 3, {"cast": float}, (0.8, 0.8, 1.5)),
        ("400X400X250", 3, {"cast": float}, (400.0, 400.0, 250.0)),
        ("224x288", 2, {"low": 32, "high": 2048}, (224, 288)),
    ],
)
def test_parse_size_good(text, ndim, kwargs, expected):
    values = parse_size(text, ndim, **kwargs)
    assert values == expected
    assert type(values) is tuple and all(type(v) is (kwargs.get("cast", int)) for v in values)


@pytest.mark.parametrize(
    ("text", "ndim", "kwargs", "message"),
    [
        ("160x160", 3, {}, "--size must be 3 positive whole numbers like 160x160x96 (or one for every axis), got '160x160'"),
        ("160xx", 3, {}, "like 160x160x96"),
        ("axb", 2, {}, "--size must be 2 positive whole numbers like 224x288"),
        ("0x10", 2, {}, "got '0x10'"),
        ("-4x10", 2, {}, "positive"),
        ("", 2, {}, "got ''"),
        ("1.5x2x2", 3, {"what": "--patch"}, "--patch must be 3 positive whole numbers"),
        ("nanx1x1", 3, {"cast": float, "what": "--spacing"}, "--spacing must be 3 positive numbers"),
        ("infx1x1", 3, {"cast": float}, "positive numbers"),
        ("400x400", 3, {"cast": float, "what": "--size-mm", "example": "400x400x250"}, "like 400x400x250"),
        ("16x288", 2, {"low": 32, "high": 2048}, "--size must be between 32 and 2048 on each axis, got '16x288'"),
        ("224x4096", 2, {"low": 32, "high": 2048}, "between 32 and 2048"),
    ],
)
def test_parse_size_bad(text, ndim, kwargs, message):
    with pytest.raises(AgnError) as exc:
        parse_size(text, ndim, **kwargs)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_parse_axes():
    assert parse_axes("x,z") == (0, 2)
    assert parse_axes("Z, x, x") == (0, 2)
    assert parse_axes("0,1,2") == (0, 1, 2)
    assert parse_axes("none") == () and parse_axes("") == ()
    with pytest.raises(AgnError, match="--flip 'w' must be none or a comma list of x, y, z"):
        parse_axes("w")


def test_parse_labels():
    assert parse_labels("spleen, liver", background=True) == {0: "background", 1: "spleen", 2: "liver"}
    assert parse_labels("1:liver,2:spleen", background=True) == {0: "background", 1: "liver", 2: "spleen"}
    assert parse_labels("1:spleen,5:liver,pancreas", background=True) == {0: "background", 1: "spleen", 5: "liver", 6: "pancreas"}
    assert parse_labels("a,b", background=False) == {0: "a", 1: "b"}
    for bad, message in (("", "needs at least one name"), ("1:a,1:b", "label id 1 given twice (a, b)"),
                         ("300:x", "does not fit the uint8"), ("x:y", "must be NAME or ID:NAME"), ("3:", "has no name"),
                         ("0:liver", "label id 0 given twice (background, liver)")):
        with pytest.raises(AgnError) as exc:
            parse_labels(bad, background=True)
        assert message in str(exc.value)


def test_parse_label_ids():
    assert parse_label_ids("5,1,2,2") == [1, 2, 5]
    assert parse_label_ids(" 3 , 4 ") == [3, 4]
    for bad, message in (("a,b", "comma-separated integer ids"), ("0,1", "positive ids"), (",", "positive ids")):
        with pytest.raises(AgnError) as exc:
            parse_label_ids(bad)
        assert message in str(exc.value)
