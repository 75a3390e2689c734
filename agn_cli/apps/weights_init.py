"""Randomly initialised checkpoints with valid model cards: run every pipeline (segment, bench, demo, tests)
end to end without trained weights, with the same card a trained model would carry."""

from __future__ import annotations

from pathlib import Path

import torch

from agn_cli.errors import AgnError
from agn_cli.runtime.checkpoint import ModelCard, save_checkpoint
from agn_cli.runtime.parsing import parse_labels, parse_size

DEFAULT_FRAME_SEG_PATCH = [160, 240]  # rows, cols: a 540x800 HC18 frame at a third of its size
DEFAULT_CT_PATCH = [160, 160, 96]  # x, y, z at 2 mm (Oktay et al. 2018 train on 160x160x96 crops)
DEFAULT_FRAME_PATCH = [224, 288]  # rows, cols of SonoNet input frames


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
    from agn_cli.ct.preprocess import DEFAULT_CT_NORMALISATION
    from agn_cli.models import create_model, get_entry

    try:
        entry = get_entry(model)
    except KeyError as exc:
        raise AgnError(str(exc.args[0])) from None
    segmentation = entry.task == "segmentation"
    label_map = parse_labels(labels, background=segmentation)
    kwargs = {"in_channels": 1, "num_classes": len(label_map), "base_filters": base_filters}
    if entry.dims == 2 and not segmentation:
        kwargs.pop("base_filters")
        kwargs["in_channels"] = entry.paper_config.get("in_channels", 1)
    torch.manual_seed(seed)
    try:
        network = create_model(model, **kwargs)
    except TypeError as exc:
        raise AgnError(f"{model} does not take these arguments: {exc}") from None
    if segmentation and entry.dims == 2:  # ultrasound frames: resized to `patch` (rows, cols), z-scored per frame
        size = list(parse_size(patch, 2, what="--patch")) if patch else list(DEFAULT_FRAME_SEG_PATCH)
        card = ModelCard(
            architecture=model,
            model_kwargs=kwargs,
            task="segmentation",
            labels=label_map,
            patch_size=size,
            preprocessing={"grey": "mean", "size": size, "interpolation": "area", "zscore": True},
            notes=f"random initialisation, seed {seed}; for pipeline tests and benchmarks only",
            default=default,
        )
    elif segmentation:
        card = ModelCard(
            architecture=model,
            model_kwargs=kwargs,
            task="segmentation",
            labels=label_map,
            spacing=list(parse_size(str(spacing if spacing is not None else "2.0"), 3, what="--spacing", cast=float, example="2x2x2")),
            normalisation=dict(DEFAULT_CT_NORMALISATION),
            patch_size=list(parse_size(patch, 3, what="--patch")) if patch else list(DEFAULT_CT_PATCH),
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
            patch_size=list(parse_size(patch, 2, what="--patch")) if patch else list(DEFAULT_FRAME_PATCH),
            notes=f"random initialisation, seed {seed}; for pipeline tests and benchmarks only",
            default=default,
        )
    path = save_checkpoint(output, network, card, overwrite=overwrite)
    return path, card
