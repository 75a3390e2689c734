"""`agn weights init | list | verify`: random checkpoints with valid cards, sha256 checks."""

from __future__ import annotations

import json

import pytest

from agn_cli.runtime.checkpoint import load_checkpoint, read_card
from tests.conftest import run_agn


@pytest.mark.slow
def test_init_writes_a_loadable_checkpoint_with_a_valid_card(tmp_path):
    path = tmp_path / "w.safetensors"
    code, stdout, stderr = run_agn("weights", "init", "--model", "attention-unet3d", "--labels", "spleen,pancreas,kidney", "-o", path,
        "--base-filters", "4", "--spacing", "2.0", "--patch", "160x160x96", "--seed", "3", "--json",
    )
    assert code == 0, stderr
    info = json.loads(stdout)
    card = read_card(tmp_path / "w.json")
    assert card.labels == {0: "background", 1: "spleen", 2: "pancreas", 3: "kidney"}
    assert card.num_classes == 4 and card.model_kwargs["base_filters"] == 4
    assert card.spacing == [2.0, 2.0, 2.0] and card.patch_size == [160, 160, 96]
    assert card.normalisation["type"] == "ct" and card.normalisation["clip"] == [-160.0, 240.0]
    assert card.task == "segmentation" and "random" in card.training_data
    assert info["sha256"] == card.weights_sha256 and len(card.weights_sha256) == 64
    model, loaded = load_checkpoint(path)
    assert loaded.architecture == "attention-unet3d" and model.num_classes == 4

    # same seed, same weights; refuses to overwrite without --overwrite
    code, _, stderr = run_agn("weights", "init", "--model", "attention-unet3d", "--labels", "a", "-o", path)
    assert code == 2 and "--overwrite" in stderr


@pytest.mark.slow
def test_seed_makes_init_reproducible(tmp_path):
    import torch
    from safetensors.torch import load_file

    states = []
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        code, _, stderr = run_agn("weights", "init", "-m", "unet3d", "--labels", "liver", "-o", tmp_path / f"{name}.safetensors",
            "--base-filters", "2", "--seed", seed,
        )
        assert code == 0, stderr
        states.append(load_file(str(tmp_path / f"{name}.safetensors")))
    # compare tensors, not file sha256: safetensors writes its metadata map in no fixed order
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


@pytest.mark.slow
def test_verify_ok_and_mismatch(tmp_path):
    path = tmp_path / "w.safetensors"
    assert run_agn("weights", "init", "-m", "unet3d", "--labels", "liver", "-o", path, "--base-filters", "2")[0] == 0
    code, stdout, stderr = run_agn("weights", "verify", path)
    assert code == 0 and "ok" in stdout, stderr
    code, stdout, _ = run_agn("weights", "verify", tmp_path / "w.json", "--json")
    assert code == 0 and json.loads(stdout)["ok"] is True
    with open(path, "ab") as fh:
        fh.write(b"\0")
    code, stdout, stderr = run_agn("weights", "verify", path)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "does not match" in lines[0]
    code, _, stderr = run_agn("weights", "verify", tmp_path / "missing.safetensors")
    assert code == 2 and "not found" in stderr


@pytest.mark.slow
def test_list_reads_agn_weights_folders(tmp_path, monkeypatch):
    folder = tmp_path / "weights"
    assert run_agn("weights", "init", "-m", "unet3d", "--labels", "liver", "-o", folder / "ct.safetensors", "--base-filters", "2", "--default")[0] == 0
    monkeypatch.setenv("AGN_WEIGHTS", str(folder))  # for the subprocess and the in-process lookup below
    code, stdout, stderr = run_agn("weights", "list", "--json")
    assert code == 0, stderr
    entries = {entry["weights"]: entry for entry in json.loads(stdout)}
    entry = entries[str(folder / "ct.safetensors")]
    assert entry["task"] == "segmentation" and entry["default"] is True
    code, stdout, _ = run_agn("weights", "list")
    assert code == 0 and "unet3d" in stdout
    from agn_cli.runtime.checkpoint import find_default_weights

    assert find_default_weights("segmentation") == folder / "ct.safetensors"


@pytest.mark.slow
def test_unknown_model_is_one_line(tmp_path):
    code, _, stderr = run_agn("weights", "init", "-m", "nope", "--labels", "a", "-o", tmp_path / "w.safetensors")
    assert code == 2 and "unknown model" in stderr and len(stderr.strip().splitlines()) == 1
