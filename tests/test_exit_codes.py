"""Every failure reaches the process exit code through the real entry point (issue 15, item 1): 2 for bad input,
usage or environment, 1 for a batch with failed cases (tests/test_segment.py) or an unexpected error, 130 when
interrupted. Under `standalone_mode=False` click returns a `typer.Exit` code instead of exiting, so these run `agn`
in a subprocess: an in-process CliRunner never sees what `main()` does with it."""

from __future__ import annotations

import json

import pytest

from tests.conftest import one_error_line, run_agn


def _failing_data_check(raise_statement: str) -> str:
    """Setup code: `agn data check` (a command that does not import torch, so the test is quick) raises."""
    return f"import errno, agn_cli.train.datasets as D\ndef check(*a, **k): {raise_statement}\nD.check_dataset = check\n"


def test_data_check_on_a_bad_dataset_exits_2(tmp_path):
    dataset = tmp_path / "Dataset001_Bad"
    (dataset / "imagesTr").mkdir(parents=True)
    (dataset / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "spleen": 1}}))
    code, _, stderr = run_agn("data", "check", dataset)
    assert code == 2, stderr
    assert "error" in stderr
    code, stdout, _ = run_agn("data", "check", dataset, "--json")
    assert code == 2 and json.loads(stdout)["ok"] is False


@pytest.mark.slow
def test_failing_training_ranks_make_the_launcher_fail(tmp_path):
    # the ranks started by `--gpus 2` exit with 3: the launcher must not report success
    launcher = (
        "import agn_cli.train.distributed as D\n"
        "D.under_torchrun = lambda: False\n"
        "D.launch_local = lambda gpus, argv: 3\n"
    )
    code, _, stderr = run_agn("train", "seg", tmp_path / "ds", "-o", tmp_path / "run", "--gpus", "2", setup=launcher)
    assert code == 3, stderr


def test_interrupt_exits_130(tmp_path):
    code, _, stderr = run_agn("data", "check", tmp_path, setup=_failing_data_check("raise KeyboardInterrupt"))
    assert code == 130 and "interrupted" in stderr and "Traceback" not in stderr


def test_device_out_of_memory_is_one_line_exit_2(tmp_path):
    # the handler goes by the class name (torch.OutOfMemoryError and the CUDA one); no torch import keeps this quick
    oom = _failing_data_check("raise type('OutOfMemoryError', (RuntimeError,), {})('CUDA out of memory. Tried to allocate 80 GiB')")
    code, _, stderr = run_agn("data", "check", tmp_path, setup=oom)
    assert code == 2 and "ran out of memory" in one_error_line(stderr)


def test_full_disk_escaping_a_command_is_one_line_exit_2(tmp_path):
    full = _failing_data_check("raise OSError(errno.ENOSPC, 'No space left on device', '/data/out.json')")
    code, _, stderr = run_agn("data", "check", tmp_path, setup=full)
    assert code == 2 and "No space left on device: /data/out.json" in one_error_line(stderr)


def test_an_unexpected_error_is_not_a_success(tmp_path):
    code, _, stderr = run_agn("data", "check", tmp_path, setup=_failing_data_check("raise ZeroDivisionError('a bug')"))
    assert code == 1 and "ZeroDivisionError: a bug" in stderr  # a bug keeps its traceback


def test_usage_errors_exit_2():
    code, _, stderr = run_agn("segment", "-o", "mask.nii.gz")
    assert code == 2 and "no input" in one_error_line(stderr)
    code, _, stderr = run_agn("segment", "x.nii.gz", "-o", "m.nii.gz", "--threads", "0")
    assert code == 2 and "--threads" in stderr
