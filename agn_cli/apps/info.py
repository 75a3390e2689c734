"""What `agn info` reports: versions, devices, models with their paper-configuration sizes, installed weights."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from agn_cli import __version__
from agn_cli.models import count_parameters, create_model, get_entry, list_models
from agn_cli.runtime.checkpoint import list_weights


def devices() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    from agn_cli.runtime.device import device_name

    found.append({"id": "cpu", "name": device_name(torch.device("cpu")), "threads": torch.get_num_threads()})
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            found.append(
                {
                    "id": f"cuda:{i}",
                    "name": props.name,
                    "memory_gib": round(props.total_memory / 2**30, 1),
                    "capability": f"{props.major}.{props.minor}",
                }
            )
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append({"id": "mps", "name": "Apple Metal"})
    return found


def model_table() -> dict[str, dict[str, Any]]:
    """Every registered model built in its paper configuration on the meta device (no memory, no time)."""
    table = {}
    for name in list_models():
        entry = get_entry(name)
        with torch.device("meta"):
            model = create_model(name)
        table[name] = {
            "params": count_parameters(model),
            "task": entry.task,
            "dims": entry.dims,
            "paper_config": entry.paper_config,
            "description": entry.description,
        }
    return table


def system_info() -> dict[str, Any]:
    return {
        "version": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "devices": devices(),
        "models": model_table(),
        "weights": [
            {
                "path": str(path),
                "architecture": card.architecture,
                "task": card.task,
                "labels": len(card.labels),
                "default": card.default,
                "sha256": card.weights_sha256,
            }
            for path, card in list_weights()
        ],
    }
