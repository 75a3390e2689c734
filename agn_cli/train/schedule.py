"""Learning-rate schedules as LambdaLR multipliers, stepped once per epoch.

poly: (1 - epoch/epochs)^0.9 (nnU-Net style); step: x gamma every `step_size` epochs (the paper's classifier recipe:
x0.1 every 100 epochs); both with an optional warm start at a fixed lower lr for the first epochs (paper: 0.01 for 5
epochs with base lr 0.1).
"""

from __future__ import annotations

from typing import Callable

import torch

SCHEDULES: tuple[str, ...] = ("poly", "step", "constant")


def lr_multiplier(
    kind: str,
    epochs: int,
    step_size: int = 100,
    gamma: float = 0.1,
    power: float = 0.9,
    warmup_epochs: int = 0,
    warmup_factor: float = 0.1,
) -> Callable[[int], float]:
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule '{kind}'; choose one of {', '.join(SCHEDULES)}")

    def factor(epoch: int) -> float:
        if epoch < warmup_epochs:
            return warmup_factor
        if kind == "poly":
            return max(0.0, 1.0 - epoch / max(1, epochs)) ** power
        if kind == "step":
            return gamma ** (epoch // max(1, step_size))
        return 1.0

    return factor


def make_scheduler(optimizer: torch.optim.Optimizer, kind: str, epochs: int, **kw) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(kind, epochs, **kw))


def make_optimizer(
    params, name: str, lr: float, weight_decay: float = 0.0, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """Adam (the paper's segmentation optimiser) or SGD with Nesterov momentum (its classifier optimiser)."""
    name = name.lower()
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name in ("sgd", "sgd-nesterov"):
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)
    raise ValueError(f"unknown optimiser '{name}'; use adam or sgd")
