"""Outputs never lie and never lose data (issue 15, items 2, 5, 7, 9, 11, 15): exclusive creation, no run removes
another run's file, no output replaces an input or a model card, format and writability are checked before any
compute, write failures are one line, the sidecar marks a case complete, nnU-Net names pair up."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from agn_cli.ct.volume import write_volume
from agn_cli.errors import AgnError
from agn_cli.runtime.atomic import Transaction, atomic_dir, atomic_path, check_outputs, write_text_atomic
from tests.conftest import one_error_line, run_agn
from tests.test_segment import synthetic_ct


@pytest.fixture
def scan(tmp_path) -> Path:
    return write_volume(synthetic_ct(), tmp_path / "scan.nii.gz")


# ------------------------------------------------------------------------------------ library: one writer


def test_exclusive_creation_fails_instead_of_replacing_a_file_written_meanwhile(tmp_path):
    target = tmp_path / "report.json"
    with pytest.raises(AgnError, match="already exists"):
        with atomic_path(target) as tmp:
            tmp.write_text("run B")
            target.write_text("run A")  # another run finished first, after B's check
    assert target.read_text() == "run A"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # B's temporary file is gone too


def test_rollback_removes_only_files_the_transaction_placed(tmp_path):
    mask, sidecar = tmp_path / "m.nii.gz", tmp_path / "m.json"
    transaction = Transaction()
    transaction.stage(mask).write_bytes(b"B mask")
    transaction.stage(sidecar).write_text("B sidecar")
    sidecar.write_text("A sidecar")  # A completes between B's mask and B's sidecar
    with pytest.raises(AgnError, match="already exists"):
        transaction.commit()
    assert not mask.exists() and sidecar.read_text() == "A sidecar"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_write_failures_of_the_environment_are_one_line(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(AgnError, match="is a file, not a folder"):
        write_text_atomic(blocker / "sub" / "r.json", "{}")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(AgnError, match="no space left on the device"):
        write_text_atomic(tmp_path / "r.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_check_outputs_protects_inputs_cards_and_duplicates(tmp_path):
    source = tmp_path / "scan.nii.gz"
    source.write_bytes(b"ct")
    (tmp_path / "w.safetensors").write_bytes(b"w")
    (tmp_path / "w.json").write_text("{}")
    with pytest.raises(AgnError, match="input of this run"):
        check_outputs([tmp_path / "." / "scan.nii.gz"], overwrite=True, inputs=[source])
    with pytest.raises(AgnError, match="model card of"):
        check_outputs([tmp_path / "w.json"], overwrite=True)
    with pytest.raises(AgnError, match="checkpoint"):
        check_outputs([tmp_path / "w.safetensors"], overwrite=True)
    with pytest.raises(AgnError, match="two outputs"):
        check_outputs([tmp_path / "a.nii.gz", tmp_path / "a.nii.gz"], overwrite=False)


def test_atomic_dir_takes_a_new_folder_and_replaces_only_when_allowed(tmp_path):
    target = tmp_path / "data"
    with atomic_dir(target) as work:
        (work / "a.txt").write_text("1")
    assert (target / "a.txt").read_text() == "1"
    with pytest.raises(AgnError, match="already exists"):
        with atomic_dir(target) as work:
            (work / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]

    def refuse(folder: Path) -> None:
        raise AgnError("not ours")

    with pytest.raises(AgnError, match="not ours"):
        with atomic_dir(target, may_replace=refuse) as work:
            (work / "b.txt").write_text("2")
    with atomic_dir(target, may_replace=lambda folder: None) as work:
        (work / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temporary or old folders left


# --------------------------------------------------------------------- agn segment, before any compute


@pytest.mark.parametrize("output, message", [
    ("mask.png", "3D label map"),
    ("out", "3D label map"),  # no suffix and no folder: ambiguous, refused
    ("scan.nii.gz", "input of this run"),
])
def test_bad_output_names_are_refused_before_compute(tmp_path, scan, output, message):
    before = scan.read_bytes()
    code, _, stderr = run_agn("segment", scan, "-o", tmp_path / output, "--weights", tmp_path / "absent.safetensors",
                              "--overwrite")
    assert code == 2 and message in one_error_line(stderr)  # before the (absent) weights are even looked at
    assert scan.read_bytes() == before and not (tmp_path / "mask.png").exists()


def test_sidecar_named_like_a_model_card_is_refused(tmp_path, scan, tiny_weights):
    import shutil

    for name in ("w.safetensors", "w.json"):
        shutil.copy(tiny_weights.with_name(tiny_weights.stem + Path(name).suffix), tmp_path / name)
    card = (tmp_path / "w.json").read_bytes()
    code, _, stderr = run_agn("segment", scan, "-o", tmp_path / "w.nii.gz", "--weights", tiny_weights, "--overwrite")
    assert code == 2 and "model card" in one_error_line(stderr)
    assert (tmp_path / "w.json").read_bytes() == card and not (tmp_path / "w.nii.gz").exists()


@pytest.mark.slow
def test_unwritable_output_folder_fails_in_one_line_before_compute(tmp_path, scan):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    code, _, stderr = run_agn("segment", scan, "-o", blocker / "sub" / "m.nii.gz", "--weights", tmp_path / "absent.safetensors")
    assert code == 2 and "is a file, not a folder" in one_error_line(stderr)
    read_only = "import errno, tempfile\ndef ro(*a, **k): raise OSError(errno.EROFS, 'Read-only file system')\ntempfile.mkstemp = ro\n"
    code, _, stderr = run_agn("segment", scan, "-o", tmp_path / "m.nii.gz", "--weights", tmp_path / "absent.safetensors",
                              setup=read_only)
    assert code == 2 and "read-only" in one_error_line(stderr)


@pytest.mark.slow
def test_full_disk_short_write_is_detected_and_nothing_is_left(tmp_path, scan, tiny_weights):
    # SimpleITK's writers do not raise on a full disk: they leave a short file; agn must check and say so
    short_write = (
        "import os, SimpleITK as sitk\n_write = sitk.WriteImage\n"
        "def short(image, name, *a, **k):\n"
        "    _write(image, name, *a, **k)\n"
        "    os.truncate(name, os.path.getsize(name) // 2)\n"
        "sitk.WriteImage = short\n"
    )
    out = tmp_path / "out"
    code, _, stderr = run_agn("segment", scan, "-o", out / "m.nii.gz", "--weights", tiny_weights, setup=short_write)
    assert code == 2 and "incomplete" in stderr and "Traceback" not in stderr
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.slow
def test_two_runs_to_the_same_output_never_lose_the_first_mask(tmp_path, scan, tiny_weights):
    # run A finishes between run B's checks and B's write (simulated inside B, deterministically)
    mask, sidecar = tmp_path / "m.nii.gz", tmp_path / "m.json"
    a_finishes = (
        "import pathlib, SimpleITK as sitk\n_write = sitk.WriteImage\n"
        "def write(image, name, *a, **k):\n"
        "    _write(image, name, *a, **k)\n"
        f"    mask, sidecar = pathlib.Path({str(mask)!r}), pathlib.Path({str(sidecar)!r})\n"
        "    if not mask.exists():\n"
        "        mask.write_bytes(b'mask of run A')\n"
        "        sidecar.write_text('sidecar of run A')\n"
        "sitk.WriteImage = write\n"
    )
    code, _, stderr = run_agn("segment", scan, "-o", mask, "--weights", tiny_weights, setup=a_finishes)
    assert code == 2 and "already exists" in stderr
    assert mask.read_bytes() == b"mask of run A" and sidecar.read_text() == "sidecar of run A"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.nii.gz", "scan.nii.gz"]


# ------------------------------------------------------------------------------------------ batches


@pytest.mark.slow
def test_batch_trusts_only_a_matching_sidecar_and_strips_nnunet_channel_suffixes(tmp_path, tiny_weights):
    images = tmp_path / "imagesTr"
    for i in range(2):
        write_volume(synthetic_ct(seed=i), images / f"case_{i:03d}_0000.nii.gz")
    preds = tmp_path / "preds"  # a new folder, no trailing slash: a batch writes into it
    code, stdout, stderr = run_agn("segment", images, "-o", preds, "--weights", tiny_weights, "--json")
    assert code == 0, stderr
    assert sorted(p.name for p in preds.iterdir()) == ["case_000.json", "case_000.nii.gz", "case_001.json", "case_001.nii.gz"]
    sidecar = json.loads((preds / "case_000.json").read_text())
    assert sidecar["output_bytes"] == (preds / "case_000.nii.gz").stat().st_size and len(sidecar["output_sha256"]) == 64

    # a run killed between mask and sidecar: that case is not done, and its mask is not silently replaced
    (preds / "case_001.json").unlink()
    code, stdout, stderr = run_agn("segment", "-i", images, "-o", preds, "--weights", tiny_weights, "--json")
    status = {Path(r["input"]).name: r["status"] for r in json.loads(stdout)}
    assert code == 1 and status == {"case_000_0000.nii.gz": "skipped", "case_001_0000.nii.gz": "failed"}
    assert "--overwrite" in stderr and not (preds / "case_001.json").exists()
    # a mask that does not match its sidecar (truncated, replaced) is not done either
    (preds / "case_000.nii.gz").write_bytes(b"truncated")
    code, stdout, _ = run_agn("segment", images, "-o", preds, "--weights", tiny_weights, "--json", "--overwrite")
    assert code == 0 and [r["status"] for r in json.loads(stdout)] == ["ok", "ok"]
    from agn_cli.runtime.atomic import sha256_file

    for case in ("case_000", "case_001"):
        assert json.loads((preds / f"{case}.json").read_text())["output_sha256"] == sha256_file(preds / f"{case}.nii.gz")


@pytest.mark.slow
def test_batch_output_folder_checks(tmp_path):
    images = tmp_path / "imagesTr"
    write_volume(synthetic_ct(seed=1), images / "a_0000.nii.gz")
    write_volume(synthetic_ct(seed=2), images / "a.nii.gz")
    absent = tmp_path / "absent.safetensors"
    code, _, stderr = run_agn("segment", images, "-o", tmp_path / "masks.nii.gz", "--weights", absent)
    assert code == 2 and "folder" in one_error_line(stderr)
    code, _, stderr = run_agn("segment", images, "-o", images, "--weights", absent)
    assert code == 2 and "input folder" in one_error_line(stderr)
    code, _, stderr = run_agn("segment", images, "-o", tmp_path / "out", "--weights", absent)
    assert code == 2 and "both be written to" in one_error_line(stderr)  # a_0000 and a: same mask name


@pytest.mark.slow
def test_single_scan_into_a_new_folder(tmp_path, scan, tiny_weights):
    code, _, stderr = run_agn("segment", "-i", scan, "-o", f"{tmp_path / 'new'}/", "--weights", tiny_weights)
    assert code == 0, stderr
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["scan.json", "scan.nii.gz"]


def test_plan_names_batch_outputs_without_the_nnunet_channel_suffix(tmp_path):
    from agn_cli.ct.outputs import case_name, plan_segmentation

    images = tmp_path / "imagesTr"
    for name in ("liver_001_0000.nii.gz", "liver_002_0000.nii.gz", "plain.mha"):
        write_volume(synthetic_ct(size=(8, 8, 4)), images / name)
    (images / ".liver_003_0000.nii.gz.x.tmp.nii.gz").write_bytes(b"a temporary file of a killed run")
    plan = plan_segmentation([images], str(tmp_path / "preds"), preview=tmp_path / "previews")
    assert plan.batch
    assert [o.mask.name for _, o in plan.cases] == ["liver_001.nii.gz", "liver_002.nii.gz", "plain.nii.gz"]
    assert [o.preview.name for _, o in plan.cases] == ["liver_001_preview.png", "liver_002_preview.png", "plain_preview.png"]
    assert case_name(Path("_0000.nii.gz")) == "_0000" and case_name(Path("a_0001.nii.gz")) == "a_0001"
