"""`agn --help`, `--version`, `info` and the not-yet-built commands."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agn_cli import __version__


def run_agn(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agn_cli", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_every_command():
    result = run_agn("--help")
    assert result.returncode == 0
    for command in ("train", "segment", "classify", "localise", "bench", "evaluate", "info"):
        assert command in result.stdout


def test_version():
    result = run_agn("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"agn {__version__}"


@pytest.mark.slow
def test_info_json_reports_paper_counts_versions_and_devices():
    result = run_agn("info", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["version"] == __version__ and info["torch"]
    assert info["models"]["attention-unet3d"]["params"] == 6_473_322
    assert info["models"]["unet3d"]["params"] == 5_888_004
    assert info["models"]["ag-sononet-16"]["params"] == 700_716
    assert any(d["id"] == "cpu" for d in info["devices"])
    assert isinstance(info["weights"], list)


def test_unknown_command_is_a_usage_error():
    result = run_agn("frobnicate")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
