"""Classification metrics against hand-computed examples; readers for agn classify output and reference tables."""

from __future__ import annotations

import json
import math

import pytest

from agn_cli.errors import AgnError
from agn_cli.metrics import classification as C


def test_hand_computed_example():
    y_true = ["a", "a", "a", "b", "b", "c"]
    y_pred = ["a", "a", "b", "b", "c", "c"]
    m = C.classification_metrics(y_true, y_pred)
    assert m["classes"] == ["a", "b", "c"]
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    per = {r["class"]: r for r in m["per_class"]}
    # a: P 2/2, R 2/3; b: P 1/2, R 1/2; c: P 1/2, R 1/1
    assert per["a"]["precision"] == 1.0 and per["a"]["recall"] == pytest.approx(2 / 3)
    assert per["a"]["f1"] == pytest.approx(0.8)
    assert per["b"]["f1"] == pytest.approx(0.5)
    assert per["c"]["f1"] == pytest.approx(2 / 3)
    assert [per[c]["support"] for c in "abc"] == [3, 2, 1]
    assert m["macro_precision"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert m["macro_recall"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def test_class_without_support_is_nan_and_excluded_from_macro():
    m = C.classification_metrics(["a", "a", "b"], ["a", "z", "b"], classes=["a", "b"])
    per = {r["class"]: r for r in m["per_class"]}
    assert m["classes"] == ["a", "b", "z"]
    assert per["z"]["support"] == 0 and math.isnan(per["z"]["recall"]) and math.isnan(per["z"]["f1"])
    assert "excluded" in per["z"]["note"] and m["notes"]
    assert m["macro_classes"] == 2
    assert m["macro_recall"] == pytest.approx((0.5 + 1.0) / 2)


def test_never_predicted_class_has_zero_precision():
    m = C.classification_metrics(["a", "b"], ["a", "a"])
    per = {r["class"]: r for r in m["per_class"]}
    assert per["b"]["precision"] == 0.0 and per["b"]["f1"] == 0.0 and "never predicted" in per["b"]["note"]


def test_name_key():
    assert C.name_key("/data/x/BRAIN-CB.tiff") == "brain-cb"
    assert C.name_key("Patient00001_Plane1_1_of_15") == "patient00001_plane1_1_of_15"
    assert C.name_key("C:\\scans\\Img.1.PNG") == "img.1"


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_readers_and_matching(tmp_path):
    pred = _write(tmp_path / "pred.json", json.dumps({"frames": [
        {"path": "/a/FEMUR.tiff", "frame": 0, "label": "Femur", "score": 0.9},
        {"path": "/a/BRAIN-CB.tiff", "frame": 0, "label": "Brain (Tv.)"},
        {"path": "/a/LIPS.tiff", "frame": 0, "label": "Lips"},
        {"path": "/a/clip.avi", "frame": 3, "label": "4CH"},
        {"path": "/a/unknown.png", "frame": 0, "label": "Femur"},
    ]}))
    gt = _write(tmp_path / "fpdb.csv",
                "Image_name;Patient_num;Plane;Brain_plane;Operator;US_Machine;Train \n"
                "femur;1;Fetal femur;Not A Brain;Op1;Voluson E6;1\n"
                "brain-cb;1;Fetal brain;Trans-cerebellum;Op1;Voluson E6;1\n"
                "LIPS;2;Other;Not A Brain;Op1;Voluson E6;0\n"
                "missing;2;Maternal cervix;Not A Brain;Op1;Voluson E6;0\n")
    r = C.evaluate_classification(pred, gt, "fetal-planes-db")
    assert r["matched"] == 3 and r["accuracy"] == 1.0
    assert sorted(r["unmatched_pred"]) == ["/a/clip.avi frame 3", "/a/unknown.png frame 0"]
    assert r["unmatched_gt"] == ["missing frame 0"]
    # Without the map the labels disagree with the reference taxonomy.
    assert C.evaluate_classification(pred, gt)["accuracy"] == 0.0


def test_csv_predictions_and_sononet_labels(tmp_path):
    pred = _write(tmp_path / "pred.csv", "path,frame,label,score\nx/3VV.tiff,0,3VV,0.9\nx/4CH.tiff,0,3VV,0.5\n")
    gt = _write(tmp_path / "labels.csv", "filename,sononet_label,plane_group\n3VV.tiff,3VV,h\n4CH.tiff,4CH,h\n")
    r = C.evaluate_classification(pred, gt)
    assert r["matched"] == 2 and r["accuracy"] == 0.5
    assert r["confusion_matrix"] == [[1, 0], [1, 0]]


def test_unmapped_predictions_become_other(tmp_path):
    mapping = _write(tmp_path / "map.json", json.dumps({"Femur": "Fetal femur"}))
    pred = _write(tmp_path / "p.csv", "path,label\na.png,Femur\nb.png,Lips\n")
    gt = _write(tmp_path / "g.csv", "path,label\na.png,Fetal femur\nb.png,Other\n")
    r = C.evaluate_classification(pred, gt, mapping)
    assert r["accuracy"] == 1.0 and r["unmapped_labels"] == ["Lips"]
    gt2 = _write(tmp_path / "g2.csv", "path,label\na.png,Fetal femur\nb.png,Fetal brain\n")
    r2 = C.evaluate_classification(pred, gt2, mapping)
    assert [f["mapped"] for f in r2["frames"]] == ["Fetal femur", "Lips"]


def test_builtin_map_covers_all_sononet_classes():
    mapping = C.load_label_map("fetal-planes-db")
    sononet = ["3VV", "4CH", "Abdominal", "Background", "Brain (Cb.)", "Brain (Tv.)", "Femur", "Kidneys", "Lips",
               "LVOT", "Profile", "RVOT", "Spine (cor.)", "Spine (sag.)"]
    assert set(mapping) == set(sononet)
    assert set(mapping.values()) <= {"Fetal abdomen", "Fetal brain", "Fetal femur", "Fetal thorax", "Maternal cervix",
                                     "Other"}


def test_errors(tmp_path):
    with pytest.raises(AgnError, match="does not exist"):
        C.read_predictions(tmp_path / "none.json")
    bad = _write(tmp_path / "bad.csv", "foo,bar\n1,2\n")
    with pytest.raises(AgnError, match="label column"):
        C.read_ground_truth(bad)
    with pytest.raises(AgnError, match="frames"):
        C.read_predictions(_write(tmp_path / "p.json", '{"x": 1}'))
    pred = _write(tmp_path / "p.csv", "path,label\na.png,A\n")
    gt = _write(tmp_path / "g.csv", "path,label\nb.png,A\n")
    with pytest.raises(AgnError, match="matches"):
        C.evaluate_classification(pred, gt)


def test_real_sononet_label_table(shared_dir):
    labels = shared_dir / "data/us/sononet-examples/labels.csv"
    if not labels.exists():
        pytest.skip(f"{labels} is absent")
    entries, dups = C.read_ground_truth(labels)
    assert len(entries) == 13 and not dups
    assert entries[("brain-cb", 0)]["label"] == "Brain (Cb.)"
