"""Randomly initialised checkpoints with valid model cards: run every pipeline (segment, bench, demo, tests)
end to end without trained weights, with the same card a trained model would carry."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from agn_cli.runtime.checkpoint import ModelCard, save_checkpoint
from agn_cli.errors import AgnError

DEFAULT_CT_PATCH = [160, 160, 96]  # x, y, z at 2 mm (Oktay et al. 2018 train on 160x160x96 crops)
DEFAULT_FRAME_PATCH = [224, 288]  # rows, cols of SonoNet input frames


def parse_labels(text: str, background: bool) -> dict[int, str]:
    """'a,b,c' -> {0: background, 1: a, ...} (or {0: a, ...} without background); 'id:name' items keep their id."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise AgnError("--labels needs at least one name, e.g. --labels spleen,pancreas,kidney")
    labels: dict[int, str] = {0: "background"} if background else {}
    next_id = 1 if background else 0
    for item in items:
        if ":" in item:
            key, name = (part.strip() for part in item.split(":", 1))
            if not key.isdigit():
                raise AgnError(f"label '{item}' must be NAME or ID:NAME with a non-negative integer ID")
            label_id = int(key)
        else:
            label_id, name = next_id, item
        if not name:
            raise AgnError(f"label '{item}' has no name")
        if label_id in labels:
            raise AgnError(f"label id {label_id} given twice ({labels[label_id]}, {name})")
        if label_id > 255:
            raise AgnError(f"label id {label_id} does not fit the uint8 label maps agn writes (0..255)")
        labels[label_id] = name
        next_id = max(next_id, label_id + 1)
    return labels


def parse_size(text: str, dims: int, what: str, cast=int) -> list:
    """'160x160x96' -> [160, 160, 96]; one number is repeated `dims` times."""
    parts = [p for p in re.split(r"[x,\s]+", text.strip().lower()) if p]
    try:
        values = [cast(p) for p in parts]
    except ValueError:
        raise AgnError(f"{what} must look like {'x'.join(['N'] * dims)}, got '{text}'") from None
    if len(values) == 1:
        values = values * dims
    if len(values) != dims or min(values) <= 0:
        raise AgnError(f"{what} must be {dims} positive numbers like {'x'.join(['N'] * dims)}, got '{text}'")
    return values


def init_checkpoint(
    model: str,
    labels: str,
    output: Path | str,
    base_filters: int = 16,
    spacing: str | float | None = "2.0",
    patch: str | None = None,
    seed: int = 0,
    default: bool = False,
    overwrite: bool = False,
) -> tuple[Path, ModelCard]:
    """Build `model` with a fixed seed and save it with a card describing how it must be fed."""
    from agn_cli.models import create_model, get_entry
    from agn_cli.ct.preprocess import DEFAULT_CT_NORMALISATION

    try:
        entry = get_entry(model)
    except KeyError as exc:
        raise AgnError(str(exc.args[0])) from None
    segmentation = entry.task == "segmentation"
    label_map = parse_labels(labels, background=segmentation)
    kwargs = {"in_channels": 1, "num_classes": len(label_map), "base_filters": base_filters}
    if entry.dims == 2:
        kwargs.pop("base_filters")
        kwargs["in_channels"] = entry.paper_config.get("in_channels", 1)
    torch.manual_seed(seed)
    try:
        network = create_model(model, **kwargs)
    except TypeError as exc:
        raise AgnError(f"{model} does not take these arguments: {exc}") from None
    if segmentation:
        card = ModelCard(
            architecture=model,
            model_kwargs=kwargs,
            task="segmentation",
            labels=label_map,
            spacing=parse_size(str(spacing if spacing is not None else "2.0"), 3, "--spacing", float),
            normalisation=dict(DEFAULT_CT_NORMALISATION),
            patch_size=parse_size(patch, 3, "--patch") if patch else list(DEFAULT_CT_PATCH),
            notes=f"random initialisation, seed {seed}; for pipeline tests and benchmarks only",
            default=default,
        )
    else:
        card = ModelCard(
            architecture=model,
            model_kwargs=kwargs,
            task="classification",
            labels=label_map,
            normalisation={"type": "zscore"},
            patch_size=parse_size(patch, 2, "--patch") if patch else list(DEFAULT_FRAME_PATCH),
            notes=f"random initialisation, seed {seed}; for pipeline tests and benchmarks only",
            default=default,
        )
    path = save_checkpoint(output, network, card, overwrite=overwrite)
    return path, card
