"""Shared fixtures: real public data through AGN_SHARED (skipped when absent), seeded synthetic data otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple, Optional

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


class AgnRun(NamedTuple):
    """What a user sees from one `agn` process: unpacks as (returncode, stdout, stderr)."""

    returncode: int
    stdout: str
    stderr: str


def run_agn(
    *args: Any,
    env: Optional[dict[str, str]] = None,
    input: Optional[str] = None,
    setup: Optional[str] = None,
    cwd: Optional[Path] = None,
    timeout: float = 600,
) -> AgnRun:
    """`agn ARGS` through the real entry point (`main()`) in a fresh interpreter: exit code and streams exactly as a
    user or a script gets them. `env` adds to (does not replace) the environment; `setup` is Python run in that
    interpreter before `main()` (to simulate faults, e.g. a failing launcher); this worktree's `agn_cli` is imported."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), full_env.get("PYTHONPATH", "")) if p)
    full_env.setdefault("COLUMNS", "200")  # tables are not folded into unreadable columns in captured output
    if setup is None:
        command = [sys.executable, "-m", "agn_cli"]
    else:
        command = [sys.executable, "-c", f"{setup}\nfrom agn_cli.cli.app import main\nmain()"]
    proc = subprocess.run(  # agn writes UTF-8 (tables); decode it so whatever locale this test process ended up in
        [*command, *map(str, args)], capture_output=True, encoding="utf-8", errors="replace", env=full_env, input=input,
        cwd=cwd or REPO_ROOT, timeout=timeout,
    )
    return AgnRun(proc.returncode, proc.stdout, proc.stderr)


def one_error_line(stderr: str) -> str:
    """The single `error: ...` line a user error prints (no traceback, nothing else); returned for further checks."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in stderr, stderr
    return lines[0]


def run_agn_here(capsys: pytest.CaptureFixture, *args: str) -> AgnRun:
    """Deprecated in-process run (bypasses the interpreter start); new tests use `run_agn`."""
    from agn_cli.cli.app import main

    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return AgnRun(code, captured.out, captured.err)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """F1 = 4 attention U-Net at 6 mm with a 64^3 patch: the real `agn segment` pipeline in seconds per scan."""
    from agn_cli.apps.weights_init import init_checkpoint

    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    init_checkpoint("attention-unet3d", "spleen,pancreas,kidney", path, base_filters=4, spacing="6", patch="64x64x64")
    return path


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
