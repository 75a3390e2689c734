"""Threads can be limited (issue 15, item 12): `--threads N` on every command that computes, and OMP_NUM_THREADS
honoured when set (one helper: runtime.device.configure_cpu_threads)."""

from __future__ import annotations

import pytest
import torch

from agn_cli.errors import AgnError
from agn_cli.runtime.device import configure_cpu_threads
from tests.conftest import run_agn

COMPUTING = [("segment",), ("classify",), ("localise",), ("bench",), ("demo",), ("train", "seg"), ("train", "cls"),
             ("evaluate", "seg"), ("synth", "ct"), ("synth", "us")]


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_explicit_threads_then_environment_then_all_cores(monkeypatch, restore_threads):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert configure_cpu_threads() == 1 and torch.get_num_threads() == 1
    assert configure_cpu_threads(3) == 3 and torch.get_num_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    import os

    assert configure_cpu_threads() == len(os.sched_getaffinity(0))
    for bad in ("zero", "0"):
        monkeypatch.setenv("OMP_NUM_THREADS", bad)
        with pytest.raises(AgnError, match="OMP_NUM_THREADS"):
            configure_cpu_threads()
    with pytest.raises(AgnError, match="--threads"):
        configure_cpu_threads(0)


@pytest.mark.parametrize("path", COMPUTING, ids=lambda p: " ".join(p))
def test_every_computing_command_takes_threads(path):
    import typer

    from agn_cli.cli.app import app

    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    options = {opt for param in command.params for opt in getattr(param, "opts", [])}
    assert "--threads" in options


@pytest.mark.slow
def test_omp_num_threads_is_honoured_by_segment(tmp_path, tiny_weights):
    from agn_cli.ct.volume import write_volume
    from tests.test_segment import synthetic_ct

    scan = write_volume(synthetic_ct(), tmp_path / "scan.nii.gz")
    code, _, stderr = run_agn("segment", scan, "-o", tmp_path / "a.nii.gz", "--weights", tiny_weights, env={"OMP_NUM_THREADS": "1"})
    assert code == 0 and "(1 threads)" in stderr, stderr
    code, _, stderr = run_agn("segment", scan, "-o", tmp_path / "b.nii.gz", "--weights", tiny_weights, "--threads", "1",
                              env={"OMP_NUM_THREADS": "2"})
    assert code == 0 and "(1 threads)" in stderr, stderr
