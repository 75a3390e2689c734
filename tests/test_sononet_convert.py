"""SonoNet-16 conversion (Lasagne .npz -> safetensors + card) and the shipped default classifier's card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from agn_cli.errors import AgnError
from agn_cli.runtime.checkpoint import load_checkpoint, load_state_dict
from agn_cli.us.sononet_convert import LASAGNE_BN_EPS, SONONET_LABELS, sononet16_from_npz
from tests.conftest import REPO_ROOT, require, run_agn, run_agn_here

SHIPPED = REPO_ROOT / "weights" / "sononet16.safetensors"
# (out, in, k) of the 15 convolutions of the published SonoNet-16
LAYERS = [(16, 1, 3), (16, 16, 3), (32, 16, 3), (32, 32, 3), (64, 32, 3), (64, 64, 3), (64, 64, 3), (128, 64, 3),
          (128, 128, 3), (128, 128, 3), (128, 128, 3), (128, 128, 3), (128, 128, 3), (64, 128, 1), (14, 64, 1)]


def _fake_npz(path: Path, n_layers: int = len(LAYERS)) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = []
    for out, inp, k in LAYERS[:n_layers]:
        arrays += [rng.normal(0, 0.1, (out, inp, k, k)).astype(np.float32), rng.normal(0, 1, out).astype(np.float32),
                   rng.uniform(0.5, 1.5, out).astype(np.float32), rng.normal(0, 1, out).astype(np.float32),
                   rng.uniform(0.1, 2.0, out).astype(np.float32)]
    np.savez(path, *arrays)
    return arrays


def test_conversion_maps_lasagne_arrays(tmp_path: Path) -> None:
    arrays = _fake_npz(tmp_path / "fake.npz")
    model = sononet16_from_npz(tmp_path / "fake.npz")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(convs) == len(bns) == 15 and all(c.bias is None for c in convs)
    for i in (0, 7, 14):
        w, beta, gamma, mean, inv_std = arrays[5 * i : 5 * i + 5]
        assert np.array_equal(convs[i].weight.detach().numpy(), w)
        assert np.array_equal(bns[i].bias.detach().numpy(), beta)
        assert np.array_equal(bns[i].weight.detach().numpy(), gamma)
        assert np.array_equal(bns[i].running_mean.numpy(), mean)
        # Lasagne: inv_std = 1/sqrt(var + eps)  =>  BN(eps) reproduces inv_std exactly
        var = bns[i].running_var.numpy().astype(np.float64)
        assert np.allclose(1.0 / np.sqrt(var + LASAGNE_BN_EPS), inv_std, rtol=1e-5)
        assert bns[i].eps == LASAGNE_BN_EPS


def test_conversion_rejects_wrong_files(tmp_path: Path) -> None:
    _fake_npz(tmp_path / "short.npz", n_layers=14)
    with pytest.raises(AgnError, match="75"):
        sononet16_from_npz(tmp_path / "short.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(AgnError, match="not a valid"):
        sononet16_from_npz(tmp_path / "junk.npz")
    with pytest.raises(AgnError, match="not found"):
        sononet16_from_npz(tmp_path / "absent.npz")


_agn = run_agn
_agn_here = run_agn_here


def test_cli_convert_writes_card_and_refuses_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _fake_npz(tmp_path / "fake.npz")
    out = tmp_path / "out" / "s16.safetensors"
    result = _agn_here(capsys, "weights", "convert-sononet", str(tmp_path / "fake.npz"), "-o", str(out), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    card = json.loads(out.with_suffix(".json").read_text())
    assert info["sha256"] == card["weights_sha256"] and card["architecture"] == "sononet16-original"
    assert [card["labels"][str(i)] for i in range(14)] == list(SONONET_LABELS)
    again = _agn_here(capsys, "weights", "convert-sononet", str(tmp_path / "fake.npz"), "-o", str(out))
    assert again.returncode == 2 and "--overwrite" in again.stderr and "Traceback" not in again.stderr
    assert _agn_here(capsys, "weights", "convert-sononet", str(tmp_path / "fake.npz"), "-o", str(out), "--overwrite").returncode == 0
    missing = _agn_here(capsys, "weights", "convert-sononet", str(tmp_path / "nope.npz"), "-o", str(tmp_path / "x.safetensors"))
    assert missing.returncode == 2 and not (tmp_path / "x.safetensors").exists()


def test_shipped_card_attribution() -> None:
    model, card = load_checkpoint(SHIPPED)
    assert card.task == "classification" and card.default and card.licence == "Apache-2.0"
    assert [card.labels[i] for i in range(14)] == list(SONONET_LABELS)
    assert "Baumgartner" in card.citation and "Attention gated networks" in card.citation
    assert "baumgach/SonoNet-weights" in card.source and card.training_data
    assert card.preprocessing["crop_auto"] == {"source_size": [735, 975], "rows": [115, 734], "cols": [81, 874]}
    assert card.preprocessing["size"] == [224, 288] and card.preprocessing["scale"] == 255.0
    assert (REPO_ROOT / "weights" / "SONONET16-LICENSE.txt").is_file()


def test_reconversion_matches_shipped_weights(shared_dir: Path) -> None:
    npz = require(shared_dir / "weights-src" / "sononet16" / "SonoNet16.npz")
    converted = sononet16_from_npz(npz).state_dict()
    shipped = load_state_dict(SHIPPED)
    assert set(converted) == set(shipped)
    for key, value in converted.items():
        assert torch.equal(value, shipped[key]), key
