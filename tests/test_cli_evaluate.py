"""`agn evaluate seg|cls`: exit codes, one-line errors, --json on stdout only, --csv written atomically."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk


class _Result:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def _agn(capsys):
    """Run the real entry point in-process (fast); exit code from SystemExit, streams from capsys."""
    from agn_cli.cli.app import main

    def run(*args):
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return _Result(code, captured.out, captured.err)

    return run


def _subprocess_agn(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "agn_cli", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


@pytest.fixture(scope="module")
def seg_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    gt = np.zeros((10, 10, 10), np.uint8)
    gt[2:6, 2:6, 2:6] = 1
    gt[6:9, 6:9, 6:9] = 2
    pred = gt.copy()
    pred[2, 2:6, 2:6] = 0  # lose one slab of label 1
    for name, arr in (("pred", pred), ("gt", gt)):
        (root / name).mkdir()
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((1.0, 1.0, 2.0))
        sitk.WriteImage(img, str(root / name / "case1.nii.gz"))
    (root / "pred" / "case1.json").write_text(json.dumps({"labels": {"1": "spleen", "2": "liver"}}))
    return root


def test_seg_table_and_names(seg_pair, _agn):
    r = _agn("evaluate", "seg", seg_pair / "pred/case1.nii.gz", seg_pair / "gt/case1.nii.gz")
    assert r.returncode == 0, r.stderr
    assert "spleen" in r.stdout and "liver" in r.stdout and "0.857" in r.stdout  # 2*48/(48+64)


def test_seg_json_and_csv(seg_pair, tmp_path, _agn):
    out_csv = tmp_path / "m.csv"
    args = ["evaluate", "seg", seg_pair / "pred/case1.nii.gz", seg_pair / "gt/case1.nii.gz", "--json", "--csv", out_csv,
            "--labels", "1,2,3"]
    r = _agn(*args)
    assert r.returncode == 0, r.stderr
    payload = json.loads(r.stdout)  # strict JSON: NaN is written as null
    rows = {c["label"]: c for c in payload["classes"]}
    assert rows[1]["dice"] == pytest.approx(2 * 48 / 112)
    assert rows[2]["dice"] == 1.0 and rows[3]["dice"] is None and rows[3]["note"] == "absent in both"
    assert rows[1]["vol_gt_ml"] == pytest.approx(64 * 2 / 1000)
    with out_csv.open() as f:
        table = list(csv.DictReader(f))
    assert [t["label"] for t in table] == ["1", "2", "3"] and table[0]["case"] == "case1"
    # A second run refuses to overwrite, then --overwrite replaces the file.
    r2 = _agn(*args)
    assert r2.returncode == 2 and "--overwrite" in r2.stderr and r2.stdout == ""
    assert _agn(*args, "--overwrite").returncode == 0


def test_seg_folder_mode(seg_pair, _agn):
    r = _agn("evaluate", "seg", seg_pair / "pred", seg_pair / "gt", "--json")
    assert r.returncode == 0, r.stderr
    payload = json.loads(r.stdout)
    assert payload["cases"] == ["case1"] and len(payload["summary"]) == 2


@pytest.mark.parametrize(
    "args",
    [
        ["evaluate", "seg", "missing_pred.nii.gz", "missing_gt.nii.gz"],
        ["evaluate", "cls", "missing.json", "missing.csv"],
    ],
)
def test_missing_file_exits_2_with_one_line(args, tmp_path):
    r = _subprocess_agn(*args, cwd=tmp_path)  # the real process: exit status and stderr exactly as a user sees them
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error:") and "does not exist" in r.stderr
    assert "Traceback" not in r.stderr


def test_seg_bad_labels_and_mixed_inputs(seg_pair, _agn):
    r = _agn("evaluate", "seg", seg_pair / "pred/case1.nii.gz", seg_pair / "gt/case1.nii.gz", "--labels", "a,b")
    assert r.returncode == 2 and "--labels" in r.stderr
    r = _agn("evaluate", "seg", seg_pair / "pred", seg_pair / "gt/case1.nii.gz")
    assert r.returncode == 2 and "two folders" in r.stderr


def test_cls_json_and_table(tmp_path, _agn):
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps({"frames": [
        {"path": "x/FEMUR.tiff", "frame": 0, "label": "Femur"},
        {"path": "x/4CH.tiff", "frame": 0, "label": "3VV"},
        {"path": "x/LIPS.tiff", "frame": 0, "label": "Lips"},
    ]}))
    gt = tmp_path / "gt.csv"
    gt.write_text("path,label\nfemur.png,Fetal femur\n4ch.png,Fetal thorax\nlips.png,Other\n")
    r = _agn("evaluate", "cls", pred, gt, "--map", "fetal-planes-db", "--json")
    assert r.returncode == 0, r.stderr
    payload = json.loads(r.stdout)
    assert payload["accuracy"] == 1.0 and payload["matched"] == 3
    r = _agn("evaluate", "cls", pred, gt)
    assert r.returncode == 0 and "confusion matrix" in r.stdout and "accuracy 0.000" in r.stdout
