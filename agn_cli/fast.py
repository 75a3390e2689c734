"""Fast inference path (placeholder until issue 6 lands): returns the model in eval mode on its device."""

from __future__ import annotations

import torch
from torch import nn


def prepare_model(model: nn.Module, device: torch.device | str = "cpu", fast: bool = True) -> nn.Module:
    """Move to `device`, eval mode; with `fast`, apply the fast-inference transforms (issue 6)."""
    return model.to(device).eval()
