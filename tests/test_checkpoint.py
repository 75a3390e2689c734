"""Checkpoints: byte-reproducible safetensors, a card that records the sha256, and atomic outputs with normal modes."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from agn_cli.errors import AgnError
from agn_cli.models import create_model
from agn_cli.runtime.atomic import atomic_path, write_text_atomic
from agn_cli.runtime.checkpoint import ModelCard, load_checkpoint, save_checkpoint


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


def _edited_card(tmp_path, **changes):
    """A saved checkpoint whose card is then edited (as a hand-made or mismatched card would be)."""
    import json

    weights = save_checkpoint(tmp_path / "w.safetensors", create_model("unet3d", in_channels=1, num_classes=3, base_filters=4), _card())
    card = json.loads(weights.with_suffix(".json").read_text())
    for key, value in changes.items():
        card[key] = value
    weights.with_suffix(".json").write_text(json.dumps(card))
    return weights


def test_weights_that_do_not_fit_their_card_are_refused(tmp_path):
    weights = _edited_card(tmp_path, model_kwargs={"in_channels": 1, "num_classes": 3, "base_filters": 8})
    with pytest.raises(AgnError, match=r"\d+ tensor\(s\) of another shape \(e\.g\. decoder\.0\.0\.bias: \(4,\) in the file, \(8,\) for the card's"):
        load_checkpoint(weights)


@pytest.mark.slow
def test_weights_that_do_not_fit_their_card_are_one_line_exit_2(tmp_path):
    from agn_cli.ct.volume import write_volume
    from tests.conftest import run_agn
    from tests.test_segment import synthetic_ct

    weights = _edited_card(tmp_path, model_kwargs={"in_channels": 1, "num_classes": 3, "base_filters": 8})
    code, _, stderr = run_agn("weights", "verify", weights)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "another shape" in lines[0] and "base_filters" not in lines[0]
    scan = write_volume(synthetic_ct(), tmp_path / "scan.nii.gz")
    code, _, stderr = run_agn("segment", scan, "-o", tmp_path / "m.nii.gz", "--weights", weights)
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "another shape" in stderr
    assert not (tmp_path / "m.nii.gz").exists()


@pytest.mark.slow
def test_a_card_without_sha256_does_not_disable_the_integrity_check(tmp_path):
    from tests.conftest import run_agn

    weights = _edited_card(tmp_path, weights_sha256="")
    with pytest.raises(AgnError, match="records no weights_sha256"):
        load_checkpoint(weights)
    load_checkpoint(weights, verify=False)  # an explicit opt-out still loads
    code, _, stderr = run_agn("weights", "verify", weights)
    assert code == 2 and "none recorded" in stderr and "Traceback" not in stderr
