"""`agn train seg|cls`: train the paper's networks; the same command runs alone, with `--gpus N`, or under torchrun."""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from agn_cli.cli.console import note, print_json
from agn_cli.cli.options import limit_threads, threads_option
from agn_cli.errors import AgnError
from agn_cli.runtime.parsing import parse_axes, parse_size

app = typer.Typer(no_args_is_help=True)
DEFAULT_FRAME_SIZE = "160x240"  # 2D --size: the default head model's input (HC18 frames are 540x800)


# options both commands take, declared once
OUTPUT = typer.Option(..., "-o", "--output", help="Run folder: best/latest checkpoints, metrics.csv, config.json.")
EPOCHS = typer.Option(300, "--epochs")
ACCUMULATE = typer.Option(1, "--accumulate", help="Split each rank's share into K micro-batches (less memory, same batch).")
WEIGHT_DECAY = typer.Option(0.0, "--weight-decay")
GAMMA = typer.Option(0.1, "--gamma", help="Learning-rate factor every --step-size epochs.")
NO_AUGMENT = typer.Option(False, "--no-augment", help="Switch all augmentation off.")
PRECISION = typer.Option("auto", "--precision", help="auto (bf16 on CUDA, fp32 on CPU), bf16, fp16 or fp32.")
SESSION_OPTIONS = (  # (name, type, option): appended to every train command by `session_options`
    ("val_every", int, typer.Option(1, "--val-every", help="Validate every N epochs (and after the last).")),
    ("seed", int, typer.Option(0, "--seed")),
    ("workers", int, typer.Option(0, "--workers", help="Data-loader worker processes per rank.")),
    ("device", str, typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N.")),
    ("threads", Optional[int], threads_option()),
    ("gpus", int, typer.Option(1, "--gpus", help="Start N processes on this node with torchrun (one per GPU).")),
    ("cache", Optional[Path], typer.Option(None, "--cache", help="Preprocessed-array cache folder (default RUN/cache).")),
    ("resume", bool, typer.Option(False, "--resume", help="Continue the run in -o from latest_state.pt.")),
    ("overwrite", bool, typer.Option(False, "--overwrite", help="Start over in an existing run folder.")),
    ("stop_after", Optional[int], typer.Option(None, "--stop-after", help="Stop after N epochs in this session (continue later with --resume).")),
    ("no_progress", bool, typer.Option(False, "--no-progress", help="No progress bar (epoch lines only).")),
    ("as_json", bool, typer.Option(False, "--json", help="Print the final summary as JSON on stdout.")),
)


def session_options(command):
    """Append SESSION_OPTIONS (devices, caching, resume, output format) to a train command's signature; their values
    arrive in the command's `**run` and, with all other options, in `ctx.params`."""
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)
             for name, annotation, option in SESSION_OPTIONS]
    command.__signature__ = signature.replace(parameters=own + extra)
    return command


@app.callback()
def callback() -> None:
    """Train a segmentation network (CT volumes or 2D frames) or a plane classifier (ultrasound)."""


def _relaunch(gpus: int) -> bool:
    """With --gpus N > 1 outside torchrun: re-run this command under torch.distributed.run; True when done."""
    from agn_cli.train import distributed as D

    if gpus <= 1 or D.under_torchrun():
        return False
    argv = sys.argv[1:]
    if "train" not in argv:
        raise AgnError("--gpus N needs the command line of 'agn train ...'; run it from a shell, or use torchrun")
    argv = D.strip_gpus_option(argv[argv.index("train") :])
    code = D.launch_local(gpus, argv)
    if code:
        raise typer.Exit(code)
    return True


@app.command("seg")
@session_options
def seg(
    ctx: typer.Context,
    dataset: Path = typer.Argument(..., help="nnU-Net v2 or MSD dataset folder (dataset.json, imagesTr/, labelsTr/); PNG files: 2D."),
    output: Path = OUTPUT,
    model: str = typer.Option("attention-unet3d", "--model", help="attention-unet3d, unet3d (CT volumes); attention-unet2d, unet2d (2D frames)."),
    base_filters: int = typer.Option(16, "--base-filters", help="Filters of the first level (paper: 16)."),
    norm: str = typer.Option("batch", "--norm", help="batch (paper) or instance (per-patch statistics, as nnU-Net)."),
    epochs: int = EPOCHS,
    steps_per_epoch: int = typer.Option(250, "--steps-per-epoch", help="Optimiser steps per epoch."),
    batch_size: int = typer.Option(2, "--batch-size", help="Global batch per optimiser step, split across ranks."),
    accumulate: int = ACCUMULATE,
    patch: Optional[str] = typer.Option(None, "--patch", help="Patch size XxYxZ in voxels (default 160x160x96); 2D: ROWSxCOLS within --size (default: the whole frame)."),
    spacing: str = typer.Option("2.0", "--spacing", help="Target spacing in mm: one number or XxYxZ (3D)."),
    size: str = typer.Option(DEFAULT_FRAME_SIZE, "--size", help="2D: ROWSxCOLS every frame is resized to (the network input)."),
    val_dataset: Optional[Path] = typer.Option(None, "--val-dataset", help="Validate on this dataset (same labels) and train on all of DATASET."),
    optimizer: str = typer.Option("adam", "--optimizer", help="adam (paper) or sgd (Nesterov, momentum 0.9)."),
    lr: float = typer.Option(1e-4, "--lr", help="Learning rate (paper: 1e-4 with Adam)."),
    weight_decay: float = WEIGHT_DECAY,
    schedule: str = typer.Option("poly", "--schedule", help="poly, step or constant."),
    step_size: int = typer.Option(100, "--step-size", help="Epochs between x --gamma decays (step schedule)."),
    gamma: float = GAMMA,
    loss: str = typer.Option("dice+ce", "--loss", help="dice or dice+ce."),
    include_background: bool = typer.Option(False, "--include-background", help="Count background in the Dice loss."),
    deep_supervision: str = typer.Option("aux", "--deep-supervision", help="aux (side losses, weights 1/2^i), fused (paper) or none."),
    fg_oversample: float = typer.Option(0.33, "--fg-oversample", help="Fraction of patches centred on foreground."),
    rotation: float = typer.Option(15.0, "--rotation", help="Max rotation in degrees per axis (0: off)."),
    scale: float = typer.Option(0.1, "--scale", help="Max relative zoom (0: off)."),
    translation: float = typer.Option(0.05, "--translation", help="Max shift as a fraction of the patch (0: off)."),
    p_affine: float = typer.Option(0.5, "--p-affine", help="Probability of the random affine."),
    flip: str = typer.Option("none", "--flip", help="Axes to flip at random: none or e.g. 'x,y' (x swaps left/right organs!; 2D: x = left-right)."),
    intensity: float = typer.Option(0.1, "--intensity", help="Intensity jitter: gain and shift range (0: off)."),
    noise: float = typer.Option(0.05, "--noise", help="Max std of added Gaussian noise (0: off)."),
    p_blur: float = typer.Option(0.0, "--p-blur", help="Probability of a Gaussian blur, sigma 0.5-1 voxel (nnU-Net: 0.2)."),
    p_lowres: float = typer.Option(0.0, "--p-lowres", help="Probability of simulated low resolution, zoom 0.5-1 (nnU-Net: 0.25)."),
    p_gamma: float = typer.Option(0.0, "--p-gamma", help="Probability of a gamma transform, gamma 0.7-1.5 (nnU-Net: 0.3)."),
    no_augment: bool = NO_AUGMENT,
    precision: str = PRECISION,
    grad_clip: float = typer.Option(12.0, "--grad-clip", help="Max gradient norm (0: off)."),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="Fraction of cases held out (seeded)."),
    fold: Optional[int] = typer.Option(None, "--fold", help="Use fold K of --folds as validation instead."),
    folds: int = typer.Option(5, "--folds"),
    **run: Any,
) -> None:
    """Train Attention U-Net / U-Net 3D on CT or 2D on frames (PNG); `agn segment` / `agn measure hc --weights RUN` use it."""
    if _relaunch(run["gpus"]):
        return
    limit_threads(run["threads"])
    from agn_cli.train.augment import AugmentConfig
    from agn_cli.train.seg_trainer import SegTrainConfig, seg_model_dims, train_seg

    if loss not in ("dice", "dice+ce"):
        raise AgnError(f"--loss '{loss}' must be dice or dice+ce")
    for name, value in (("--p-blur", p_blur), ("--p-lowres", p_lowres), ("--p-gamma", p_gamma)):
        if not 0.0 <= value <= 1.0:
            raise AgnError(f"{name} {value:g} is a probability: give a value from 0 to 1")
    dims = seg_model_dims(model)
    frame_size = parse_size(size, 2, what="--size") if dims == 2 else None
    if patch is None:
        patch_size = frame_size if dims == 2 else (160, 160, 96)
    else:
        patch_size = parse_size(patch, dims, what="--patch")
    same = ("p_affine", "rotation", "scale", "translation", "p_blur", "p_lowres", "p_gamma")
    aug = AugmentConfig.off() if no_augment else AugmentConfig(
        **{k: ctx.params[k] for k in same}, flip_axes=parse_axes(flip, frames=dims == 2), intensity_scale=intensity,
        intensity_shift=intensity, noise_std=noise,
    )
    val = str(Path(val_dataset).expanduser().resolve()) if val_dataset else None
    _train(ctx, SegTrainConfig, train_seg, "segment", aug, patch=patch_size, size=frame_size, val_dataset=val,
           spacing=parse_size(spacing, 3, what="--spacing", cast=float, example="2x2x2"),
           ce_weight=1.0 if loss == "dice+ce" else 0.0, p_foreground=fg_oversample)


def _train(ctx: typer.Context, config_class, train, command: str, augment, **parsed) -> None:
    """Options named like the run config's fields go through as they are, `parsed` holds those the CLI converts;
    train, then report (rank 0)."""
    p = ctx.params
    cfg = config_class.from_dict({
        **p,
        "dataset": str(Path(p["dataset"]).expanduser().resolve()),
        "output": str(p["output"]),
        "device": "cuda" if p["gpus"] > 1 and p["device"] == "auto" else p["device"],
        "val_every": max(1, p["val_every"]),
        "cache_dir": str(p["cache"]) if p["cache"] else None,
        "augment": augment.to_dict(),
        **parsed,
    })
    summary = train(cfg, resume=p["resume"], overwrite=p["overwrite"], progress=not p["no_progress"] and not p["as_json"],
                    log=note, stop_after=p["stop_after"])
    _finish(summary, p["as_json"], command)


def _finish(summary: dict, as_json: bool, command: str) -> None:
    if os.environ.get("RANK", "0") != "0":  # only rank 0 reports under torchrun
        return
    if as_json:
        print_json(summary)
    else:
        note(f"done: {summary['run']} (best checkpoint: best.safetensors); use it with 'agn {command} --weights {summary['run']}'")


@app.command("cls")
@session_options
def cls(
    ctx: typer.Context,
    dataset: Path = typer.Argument(..., help="Folder per class, a CSV (path,label) or FETAL_PLANES_DB_data.csv (or its folder)."),
    output: Path = OUTPUT,
    model: str = typer.Option("ag-sononet-16", "--model", help="ag-sononet-8|16|32 or sononet-8|16|32."),
    base_filters: Optional[int] = typer.Option(None, "--base-filters", help="Override the model's first-stage width."),
    aggregation: str = typer.Option("deep-sup", "--aggregation", help="mean, concat, deep-sup or ft (AG-Sononet)."),
    init: Optional[Path] = typer.Option(None, "--init", help="Start from this run's best checkpoint (the FT procedure)."),
    freeze_backbone: bool = typer.Option(True, "--freeze-backbone/--train-backbone", help="With --aggregation ft: train only the new head."),
    epochs: int = EPOCHS,
    steps_per_epoch: Optional[int] = typer.Option(None, "--steps-per-epoch", help="Default: one pass over the training images."),
    batch_size: int = typer.Option(64, "--batch-size", help="Global batch, split across ranks."),
    accumulate: int = ACCUMULATE,
    size: str = typer.Option("224x288", "--size", help="Frames are resized to ROWSxCOLS."),
    crop_size: str = typer.Option("208x272", "--crop-size", help="Random training crop ROWSxCOLS."),
    crop: str = typer.Option("none", "--crop", help="Frame crop before resizing: none or sononet (SonoNet screen captures)."),
    optimizer: str = typer.Option("sgd", "--optimizer", help="sgd (Nesterov, paper) or adam."),
    lr: float = typer.Option(0.1, "--lr"),
    momentum: float = typer.Option(0.9, "--momentum"),
    weight_decay: float = WEIGHT_DECAY,
    warmup_epochs: int = typer.Option(5, "--warmup-epochs", help="Epochs at --warmup-lr first (paper: 5)."),
    warmup_lr: float = typer.Option(0.01, "--warmup-lr"),
    step_size: int = typer.Option(100, "--step-size", help="x --gamma every N epochs (paper: 100)."),
    gamma: float = GAMMA,
    background: Optional[str] = typer.Option(None, "--background", help="Background class name (default: 'Other'/'background' if present; 'none')."),
    background_weight: Optional[float] = typer.Option(None, "--background-weight", help="Sampling weight of the whole background class (default: number of other classes, as the paper's 13/n_bg)."),
    rotation: float = typer.Option(10.0, "--rotation"),
    scale: float = typer.Option(0.1, "--scale"),
    flip: bool = typer.Option(True, "--flip/--no-flip", help="Random horizontal flips."),
    intensity: float = typer.Option(0.1, "--intensity"),
    no_augment: bool = NO_AUGMENT,
    precision: str = PRECISION,
    grad_clip: float = typer.Option(0.0, "--grad-clip"),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="Ignored for FETAL_PLANES_DB (its Train flag is used)."),
    **run: Any,
) -> None:
    """Train a SonoNet / AG-Sononet plane classifier; `agn classify --weights RUN` then uses the best checkpoint."""
    if _relaunch(run["gpus"]):
        return
    limit_threads(run["threads"])
    from agn_cli.models.sononet import AGGREGATIONS
    from agn_cli.train.augment import AugmentConfig
    from agn_cli.train.cls_trainer import ClsTrainConfig, train_cls

    if aggregation not in AGGREGATIONS:
        raise AgnError(f"--aggregation '{aggregation}' must be one of {', '.join(AGGREGATIONS)}")
    aug = AugmentConfig.off() if no_augment else AugmentConfig(
        rotation=rotation, scale=scale, translation=0.0, flip_axes=(1,) if flip else (),
        intensity_scale=intensity, intensity_shift=intensity, noise_std=0.0,
    )
    _train(ctx, ClsTrainConfig, train_cls, "classify", aug, init=str(init) if init else None,
           size=parse_size(size, 2, what="--size"), crop_size=parse_size(crop_size, 2, what="--crop-size"))
