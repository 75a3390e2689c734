"""Checkpoints: byte-reproducible safetensors, a card that records the sha256, and atomic outputs with normal modes."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from agn_cli.runtime.checkpoint import ModelCard, load_checkpoint, save_checkpoint
from agn_cli.errors import AgnError
from agn_cli.runtime.atomic import atomic_path, write_text_atomic
from agn_cli.models import create_model


def _card() -> ModelCard:
    return ModelCard(
        architecture="unet3d",
        model_kwargs={"in_channels": 1, "num_classes": 3, "base_filters": 4},
        task="segmentation",
        labels={0: "background", 1: "spleen", 2: "liver"},
        spacing=[3.0, 3.0, 3.0],
    )


def test_same_weights_give_identical_files_and_load_back(tmp_path):
    torch.manual_seed(0)
    model = create_model("unet3d", in_channels=1, num_classes=3, base_filters=4)
    a = save_checkpoint(tmp_path / "a.safetensors", model, _card())
    b = save_checkpoint(tmp_path / "b.safetensors", model, _card())
    assert a.read_bytes() == b.read_bytes()
    loaded, card = load_checkpoint(a)
    assert card.labels[2] == "liver" and card.weights_file == "a.safetensors"
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_checkpoint_refuses_to_overwrite(tmp_path):
    model = create_model("unet3d", in_channels=1, num_classes=3, base_filters=4)
    save_checkpoint(tmp_path / "a.safetensors", model, _card())
    with pytest.raises(AgnError, match="--overwrite"):
        save_checkpoint(tmp_path / "a.safetensors", model, _card())


def test_atomic_outputs_get_umask_permissions_and_leave_nothing_on_failure(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_text_atomic(tmp_path / "report.json", "{}\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "mask.nii.gz") as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("crash while writing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
