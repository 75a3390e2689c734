"""What every agn network is: `run(x)` gives logits, deep-supervision side logits and attention maps in one pass,
and the two entry points the rest of agn calls are built on it, so no network repeats them."""

from __future__ import annotations

import torch
from torch import nn


class Network(nn.Module):
    """Base of UNet, SonoNet and AGSonoNet."""

    def run(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], dict[str, torch.Tensor]]:
        """(logits, side logits for deep supervision (may be empty), {name: attention map or CAM})."""
        raise NotImplementedError

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and side logits, for the training losses."""
        logits, sides, _ = self.run(x)
        return logits, sides

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """Logits; with `return_attention`, also the attention maps (gates' alpha, or the class activation maps)."""
        logits, _, attention = self.run(x)
        return (logits, attention) if return_attention else logits
