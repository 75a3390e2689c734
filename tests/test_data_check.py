"""`agn data check`: both layouts pass; each kind of problem exits 2 with the file and the fix named."""

from __future__ import annotations

import json
import shutil

import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from agn_cli.cli.app import app
from agn_cli.train.datasets import check_dataset, load_dataset, split_cases
from agn_cli.train.toy import write_msd_dataset, write_nnunet_dataset


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return write_msd_dataset(root / "msd", n_cases=3, size=(12, 12, 12)), write_nnunet_dataset(root / "nn", n_cases=3, size=(12, 12, 12))


class _Result:
    def __init__(self, exit_code: int, output: str):
        self.exit_code, self.output = exit_code, output


@pytest.fixture
def _check(capsys):
    """`agn data check PATH` through the real entry point (`main`), in process; output is stdout + stderr."""
    from agn_cli.cli.app import main

    def run(path):
        capsys.readouterr()
        try:
            main(["data", "check", str(path)])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return _Result(code, captured.out + captured.err)

    return run


def test_valid_layouts_pass(datasets, _check):
    msd, nn = datasets
    for path, layout in ((msd, "msd"), (nn, "nnunet")):
        result = _check(path)
        assert result.exit_code == 0, result.output
        assert "ok: 3 cases checked" in result.output and layout in result.output
    ds = load_dataset(msd)
    assert [c.case_id for c in ds.cases] == ["toy_000", "toy_001", "toy_002"]  # ._ files ignored
    assert ds.labels == {0: "background", 1: "bright", 2: "dark"} == load_dataset(nn).labels


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_image_names_file(datasets, tmp_path, _check):
    nn = _copy(datasets[1], tmp_path / "nn")
    (nn / "imagesTr" / "toy_001_0000.nii.gz").unlink()
    result = _check(nn)
    assert result.exit_code == 2
    assert "toy_001_0000.nii.gz is missing" in result.output and "add the image" in result.output


def test_label_values_outside_dataset_json(datasets, tmp_path):
    msd = _copy(datasets[0], tmp_path / "msd")
    path = msd / "labelsTr" / "toy_002.nii.gz"
    img = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(img)
    arr[0, 0, 0] = 7
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    sitk.WriteImage(out, str(path))
    report = check_dataset(msd)
    assert not report.ok and len(report.errors) == 1
    assert "toy_002.nii.gz has values [7]" in report.errors[0] and "add them to 'labels'" in report.errors[0]


def test_geometry_mismatch(datasets, tmp_path, _check):
    msd = _copy(datasets[0], tmp_path / "msd")
    path = msd / "labelsTr" / "toy_000.nii.gz"
    img = sitk.ReadImage(str(path))
    img.SetSpacing((3.0, 2.0, 2.0))
    sitk.WriteImage(img, str(path))
    result = _check(msd)
    assert result.exit_code == 2
    assert "toy_000.nii.gz spacing" in result.output and "copy the image geometry" in result.output


def test_bad_dataset_json(tmp_path, _check):
    (tmp_path / "d").mkdir()
    result = _check(tmp_path / "d")
    assert result.exit_code == 2 and "dataset.json is missing" in result.output
    (tmp_path / "d" / "dataset.json").write_text("{not json")
    result = _check(tmp_path / "d")
    assert result.exit_code == 2 and "cannot read dataset file" in result.output
    (tmp_path / "d" / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"liver": 1}, "file_ending": ".nii.gz"}))
    (tmp_path / "d" / "labelsTr").mkdir()
    result = _check(tmp_path / "d")
    assert result.exit_code == 2 and "background with id 0" in result.output


def test_train_seg_refuses_bad_dataset(datasets, tmp_path):
    nn = _copy(datasets[1], tmp_path / "nn")
    (nn / "imagesTr" / "toy_001_0000.nii.gz").unlink()
    result = CliRunner().invoke(app, ["train", "seg", str(nn), "-o", str(tmp_path / "run"), "--device", "cpu"])
    assert result.exit_code != 0
    assert "agn data check" in str(result.exception)
    assert not (tmp_path / "run" / "best.safetensors").exists()


def test_train_seg_refuses_a_probability_above_one(datasets, tmp_path):
    args = ["train", "seg", str(datasets[1]), "-o", str(tmp_path / "run"), "--device", "cpu", "--p-gamma", "1.5"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0 and "--p-gamma 1.5 is a probability" in str(result.exception)
    assert not (tmp_path / "run").exists()


def test_split_is_seeded_and_folds_partition():
    ids = [f"c{i}" for i in range(10)]
    assert split_cases(ids, 0.2, seed=1) == split_cases(list(reversed(ids)), 0.2, seed=1)
    assert split_cases(ids, 0.2, seed=1) != split_cases(ids, 0.2, seed=2)
    vals = [split_cases(ids, fold=k, folds=5, seed=0)[1] for k in range(5)]
    assert sorted(sum(vals, [])) == sorted(ids) and all(len(v) == 2 for v in vals)


def test_train_seg_refuses_an_unknown_norm(datasets, tmp_path):
    args = ["train", "seg", str(datasets[1]), "-o", str(tmp_path / "run"), "--device", "cpu", "--norm", "group"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0 and "--norm 'group' must be one of batch, instance" in str(result.exception)
    assert not (tmp_path / "run").exists()
