"""DICOM series with a missing or truncated slice (issue 15, item 3): SimpleITK puts such slices on a uniform grid
up to a slice spacing off and only warns on a stderr agn silences, so agn checks ImagePositionPatient itself and
refuses (exit 2, one line), or accepts with --allow-nonuniform and says so on stderr and in the sidecar."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agn_cli.ct.volume import GEOMETRY_WARNING_KEY, read_volume
from agn_cli.errors import AgnError
from tests.conftest import require, run_agn

SERIES = "data/ct/totalseg-example/example_ct_dicom"


def _copy(shared_dir: Path, target: Path) -> list[Path]:
    shutil.copytree(require(shared_dir / SERIES), target)
    for path in target.iterdir():
        path.chmod(0o644)
    return sorted(target.iterdir())


@pytest.fixture
def gap(shared_dir, tmp_path) -> Path:
    files = _copy(shared_dir, tmp_path / "gap")
    files[len(files) // 2].unlink()  # a middle slice missing
    return tmp_path / "gap"


@pytest.fixture
def truncated(shared_dir, tmp_path) -> Path:
    files = _copy(shared_dir, tmp_path / "truncated")
    middle = files[len(files) // 2]
    middle.write_bytes(middle.read_bytes()[: middle.stat().st_size // 2])  # a slice cut short (copy interrupted)
    return tmp_path / "truncated"


def test_complete_series_reads_without_warning(shared_dir):
    image = read_volume(require(shared_dir / SERIES))
    assert image.GetSize() == (512, 512, 20) and not image.HasMetaDataKey(GEOMETRY_WARNING_KEY)


def test_a_missing_slice_is_refused_or_accepted_with_a_warning(gap):
    with pytest.raises(AgnError, match="not evenly spaced"):
        read_volume(gap)
    image = read_volume(gap, allow_nonuniform=True)
    assert image.GetSize() == (512, 512, 19) and "1.00 mm off" in image.GetMetaData(GEOMETRY_WARNING_KEY)


@pytest.mark.slow  # GDCM spends seconds on the damaged file
def test_a_truncated_slice_is_refused(truncated):
    with pytest.raises(AgnError, match="not readable DICOM slices"):
        read_volume(truncated)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["gap", "truncated"])
def test_segment_refuses_a_series_with_a_gap(request, tmp_path, tiny_weights, case):
    folder = request.getfixturevalue(case)
    code, _, stderr = run_agn("segment", folder, "-o", tmp_path / "m.nii.gz", "--weights", tiny_weights)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "--allow-nonuniform" in lines[0] and "Traceback" not in stderr
    assert not (tmp_path / "m.nii.gz").exists()


@pytest.mark.slow
def test_allow_nonuniform_warns_and_records(gap, tmp_path, tiny_weights):
    code, _, stderr = run_agn("segment", gap, "-o", tmp_path / "m.nii.gz", "--weights", tiny_weights, "--allow-nonuniform")
    assert code == 0, stderr
    assert "warning:" in stderr and "not evenly spaced" in stderr
    sidecar = json.loads((tmp_path / "m.json").read_text())
    assert any("not evenly spaced" in w and "--allow-nonuniform" in w for w in sidecar["warnings"])
