"""Create networks by name, as timm does: `create_model("attention-unet3d", num_classes=6)`.

Each entry records the paper configuration its parameter count refers to (CT: 1 channel, 4 classes, F1 = 16;
classifiers: 1 channel, 14 classes), so `agn info` and the tests report the same numbers as the paper.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    name: str
    constructor: Callable[..., nn.Module]
    task: str  # "segmentation" | "classification"
    dims: int  # 2 or 3
    paper_config: dict[str, Any] = field(default_factory=dict)
    description: str = ""


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, *, task: str, dims: int, paper_config: dict[str, Any], description: str = ""):
    """Decorator: register a constructor under `name`."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' registered twice")
        _REGISTRY[name] = ModelEntry(name, fn, task, dims, dict(paper_config), description or (fn.__doc__ or "").strip())
        return fn

    return wrap


def list_models(task: str | None = None) -> list[str]:
    return [name for name, entry in _REGISTRY.items() if task is None or entry.task == task]


def get_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(_REGISTRY)
        raise KeyError(f"unknown model '{name}'; known models: {known}") from None


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered network; keyword arguments override the paper configuration."""
    entry = get_entry(name)
    config = {**entry.paper_config, **kwargs}
    model = entry.constructor(**config)
    model.agn_name = name  # type: ignore[attr-defined]
    model.agn_config = config  # type: ignore[attr-defined]
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
