"""`agn bench --mode train` times the step `agn train` runs: the first step's loss is the training loss of the batch."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from agn_cli.apps import bench
from agn_cli.models import create_model
from agn_cli.train.losses import DiceCELoss, deep_supervision_loss


def _first_step_loss(model, task, x, target):
    step, described = bench._train_step_fn(copy.deepcopy(model), task, x, target, torch.device("cpu"), "fp32",
                                           fast=False, compile=False)
    return step(), described


def test_unet_step_is_dice_ce_with_deep_supervision():
    torch.manual_seed(0)
    model = create_model("attention-unet3d", base_filters=2, num_classes=3)
    x = torch.randn(2, 1, 16, 16, 16)
    target = torch.randint(0, 3, (2, 16, 16, 16))
    loss, described = _first_step_loss(model, "segmentation", x, target)
    reference = copy.deepcopy(model).train()
    fused, sides = reference.forward_train(x)
    expected = deep_supervision_loss(DiceCELoss(1.0, 1.0, False), fused, sides, target, "aux")
    assert loss == pytest.approx(float(expected.detach()), rel=1e-5)  # plain cross-entropy + Adam (the old bench) differs
    assert described == {"loss": "Dice+CE, deep supervision aux", "optimizer": "adam", "lr": 1e-4, "grad_clip": 12.0}


def test_sononet_step_is_the_classification_loss():
    torch.manual_seed(0)
    model = create_model("ag-sononet-8", base_filters=4, num_classes=3, aggregation="deep-sup")
    x = torch.randn(2, 1, 48, 64)
    target = torch.tensor([0, 2])
    loss, described = _first_step_loss(model, "classification", x, target)
    logits, sides = copy.deepcopy(model).train().forward_train(x)
    assert len(sides) == 3
    expected = F.cross_entropy(logits, target) + sum(F.cross_entropy(s, target) for s in sides) / len(sides)
    assert loss == pytest.approx(float(expected.detach()), rel=1e-5)
    assert described["loss"] == "CE, aggregation deep-sup" and described["optimizer"] == "sgd" and described["lr"] == pytest.approx(0.01)  # warm start, as agn train cls
