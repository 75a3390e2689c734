"""A plain install works without a source checkout (issue 15, item 13): the wheel carries the default checkpoints and
their model cards as package data `agn_cli.weights`, found through importlib.resources, and every subpackage."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO_ROOT

SHIPPED = ("ct-attention-unet3d-synth", "sononet16")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    source = tmp_path_factory.mktemp("source")  # a copy: building in place would leave build/ and *.egg-info behind
    for name in ("pyproject.toml", "README.md", "LICENSE", "agn_cli", "weights"):
        path = REPO_ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif path.exists():
            shutil.copy(path, source / name)
    # without build isolation when setuptools is here (no index needed); a fresh venv builds in isolation
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", *isolation, "-w", str(out), "-q"],
        capture_output=True, text=True, cwd=source, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    (found,) = out.glob("agn-*.whl")
    return zipfile.ZipFile(found)


@pytest.mark.slow
def test_wheel_ships_the_default_checkpoints_with_their_cards(wheel):
    names = set(wheel.namelist())
    for stem in SHIPPED:
        card = json.loads(wheel.read(f"agn_cli/weights/{stem}.json"))
        weights = wheel.read(f"agn_cli/weights/{stem}.safetensors")
        assert card["default"] is True and card["weights_file"] == f"{stem}.safetensors"
        assert hashlib.sha256(weights).hexdigest() == card["weights_sha256"]
    assert {"agn_cli/weights/README.md", "agn_cli/weights/SONONET16-LICENSE.txt", "agn_cli/weights/SONONET16-NOTICE.md"} <= names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "agn = agn_cli.cli.app:main" in wheel.read(entry_points).decode()


@pytest.mark.slow
def test_wheel_holds_every_subpackage(wheel):
    # pyproject.toml lists the packages (discovery cannot map weights/); a new one must be added there
    packages = {str(p.parent.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "agn_cli").rglob("__init__.py")}
    names = set(wheel.namelist())
    missing = sorted(p for p in packages if f"{p}/__init__.py" not in names)
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml"


def test_shipped_weights_are_found_from_the_source_tree():
    from agn_cli.runtime.checkpoint import shipped_weights_dir

    assert shipped_weights_dir() == REPO_ROOT / "weights"
