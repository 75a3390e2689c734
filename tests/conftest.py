"""Shared fixtures: real public data through AGN_SHARED (skipped when absent), seeded synthetic data otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_path() -> Path:
    return Path(os.environ.get("AGN_SHARED", REPO_ROOT.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only folder of real data (../shared); tests that need it skip with a reason when it is absent."""
    path = shared_path()
    if not (path / "data").is_dir():
        pytest.skip(f"real data not found at {path} (set AGN_SHARED to the shared/ folder)")
    return path


def run_agn(*args: str) -> subprocess.CompletedProcess:
    """`agn ARGS` in a fresh interpreter, from the repository root."""
    return subprocess.run([sys.executable, "-m", "agn_cli", *args], capture_output=True, text=True, cwd=REPO_ROOT)


def run_agn_here(capsys: pytest.CaptureFixture, *args: str) -> subprocess.CompletedProcess:
    """In-process run of `agn` (saves the interpreter start); same exit codes and streams as the console script."""
    from agn_cli.cli.app import main

    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, captured.out, captured.err)


def require(path: Path) -> Path:
    """Skip (with the path in the reason) when one real data file is missing."""
    if not path.exists():
        pytest.skip(f"{path} is absent")
    return path


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


def assert_same_run(full: Path, parts: Path, epochs: int) -> None:
    """An uninterrupted run folder and a stopped-and-resumed one: the same losses per epoch and the same weights."""
    import numpy as np

    from agn_cli.train.run_state import read_metrics_csv

    a = [r["train_loss"] for r in read_metrics_csv(full / "metrics.csv")]
    b = [r["train_loss"] for r in read_metrics_csv(parts / "metrics.csv")]
    assert len(a) == len(b) == epochs
    np.testing.assert_allclose(b, a, rtol=1e-5)
    wa = torch.load(full / "latest_state.pt", weights_only=True)["model"]
    wb = torch.load(parts / "latest_state.pt", weights_only=True)["model"]
    assert set(wa) == set(wb)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)
