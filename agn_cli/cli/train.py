"""`agn train seg|cls`: train the paper's networks; the same command runs alone, with `--gpus N`, or under torchrun."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from agn_cli.cli.console import note, print_json
from agn_cli.errors import AgnError

app = typer.Typer(no_args_is_help=True)
DEFAULT_FRAME_SIZE = "160x240"  # 2D --size: the default head model's input (HC18 frames are 540x800)


@app.callback()
def callback() -> None:
    """Train a segmentation network (CT volumes or 2D frames) or a plane classifier (ultrasound)."""


def parse_triple(text: str, what: str, kind=float) -> tuple:
    """'160x160x96' -> (160, 160, 96); a single number is used on every axis."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = tuple(kind(p) for p in parts)
    except ValueError:
        raise AgnError(f"{what} '{text}' is not N or NxNxN (e.g. 160x160x96)") from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or min(values) <= 0:
        raise AgnError(f"{what} '{text}' must be one or three positive numbers (x, y, z)")
    return values


def parse_axes(text: str, dims: int = 3) -> tuple[int, ...]:
    """--flip names -> array axes: volumes are (x, y, z); frames are (rows, cols), so x (left-right) is axis 1."""
    text = text.strip().lower()
    if text in ("", "none"):
        return ()
    names = {"x": 0, "y": 1, "z": 2, "0": 0, "1": 1, "2": 2} if dims == 3 else {"x": 1, "y": 0}
    try:
        return tuple(sorted({names[t.strip()] for t in text.split(",")}))
    except KeyError:
        allowed = "x, y, z" if dims == 3 else "x (left-right) and y (up-down) for 2D frames"
        raise AgnError(f"--flip '{text}' must be none or a comma list of {allowed}") from None


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
def seg(
    dataset: Path = typer.Argument(..., help="nnU-Net v2 or MSD dataset folder (dataset.json, imagesTr/, labelsTr/); PNG files: 2D."),
    output: Path = typer.Option(..., "-o", "--output", help="Run folder: best/latest checkpoints, metrics.csv, config.json."),
    model: str = typer.Option("attention-unet3d", "--model", help="attention-unet3d, unet3d (CT volumes); attention-unet2d, unet2d (2D frames)."),
    base_filters: int = typer.Option(16, "--base-filters", help="Filters of the first level (paper: 16)."),
    norm: str = typer.Option("batch", "--norm", help="batch (paper) or instance (per-patch statistics, as nnU-Net)."),
    epochs: int = typer.Option(300, "--epochs"),
    steps_per_epoch: int = typer.Option(250, "--steps-per-epoch", help="Optimiser steps per epoch."),
    batch_size: int = typer.Option(2, "--batch-size", help="Global batch per optimiser step, split across ranks."),
    accumulate: int = typer.Option(1, "--accumulate", help="Split each rank's share into K micro-batches (less memory, same batch)."),
    patch: Optional[str] = typer.Option(None, "--patch", help="Patch size XxYxZ in voxels (default 160x160x96); 2D: ROWSxCOLS within --size (default: the whole frame)."),
    spacing: str = typer.Option("2.0", "--spacing", help="Target spacing in mm: one number or XxYxZ (3D)."),
    size: str = typer.Option(DEFAULT_FRAME_SIZE, "--size", help="2D: ROWSxCOLS every frame is resized to (the network input)."),
    val_dataset: Optional[Path] = typer.Option(None, "--val-dataset", help="Validate on this dataset (same labels) and train on all of DATASET."),
    optimizer: str = typer.Option("adam", "--optimizer", help="adam (paper) or sgd (Nesterov, momentum 0.9)."),
    lr: float = typer.Option(1e-4, "--lr", help="Learning rate (paper: 1e-4 with Adam)."),
    weight_decay: float = typer.Option(0.0, "--weight-decay"),
    schedule: str = typer.Option("poly", "--schedule", help="poly, step or constant."),
    step_size: int = typer.Option(100, "--step-size", help="Epochs between x --gamma decays (step schedule)."),
    gamma: float = typer.Option(0.1, "--gamma"),
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
    no_augment: bool = typer.Option(False, "--no-augment", help="Switch all augmentation off."),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 on CUDA, fp32 on CPU), bf16, fp16 or fp32."),
    grad_clip: float = typer.Option(12.0, "--grad-clip", help="Max gradient norm (0: off)."),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="Fraction of cases held out (seeded)."),
    fold: Optional[int] = typer.Option(None, "--fold", help="Use fold K of --folds as validation instead."),
    folds: int = typer.Option(5, "--folds"),
    val_every: int = typer.Option(1, "--val-every", help="Validate every N epochs (and after the last)."),
    seed: int = typer.Option(0, "--seed"),
    workers: int = typer.Option(0, "--workers", help="Data-loader worker processes per rank."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    gpus: int = typer.Option(1, "--gpus", help="Start N processes on this node with torchrun (one per GPU)."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Preprocessed-array cache folder (default RUN/cache)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in -o from latest_state.pt."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over in an existing run folder."),
    stop_after: Optional[int] = typer.Option(None, "--stop-after", help="Stop after N epochs in this session (continue later with --resume)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar (epoch lines only)."),
    as_json: bool = typer.Option(False, "--json", help="Print the final summary as JSON on stdout."),
) -> None:
    """Train Attention U-Net / U-Net 3D on CT or 2D on frames (PNG); `agn segment` / `agn measure --weights RUN` use it."""
    if _relaunch(gpus):
        return
    from agn_cli.train.augment import AugmentConfig
    from agn_cli.train.seg_trainer import SegTrainConfig, seg_model_dims, train_seg

    dims = seg_model_dims(model)
    frame_size = parse_pair(size, "--size") if dims == 2 else None
    if patch is None:
        patch_size = frame_size if dims == 2 else (160, 160, 96)
    else:
        patch_size = parse_pair(patch, "--patch") if dims == 2 else parse_triple(patch, "--patch", int)

    if loss not in ("dice", "dice+ce"):
        raise AgnError(f"--loss '{loss}' must be dice or dice+ce")
    if gpus > 1 and device == "auto":
        device = "cuda"
    aug = AugmentConfig.off() if no_augment else AugmentConfig(
        p_affine=p_affine,
        rotation=rotation,
        scale=scale,
        translation=translation,
        flip_axes=parse_axes(flip, dims),
        intensity_scale=intensity,
        intensity_shift=intensity,
        noise_std=noise,
        p_blur=p_blur,
        p_lowres=p_lowres,
        p_gamma=p_gamma,
    )
    for name, value in (("--p-blur", p_blur), ("--p-lowres", p_lowres), ("--p-gamma", p_gamma)):
        if not 0.0 <= value <= 1.0:
            raise AgnError(f"{name} {value:g} is a probability: give a value from 0 to 1")
    cfg = SegTrainConfig(
        dataset=str(Path(dataset).expanduser().resolve()),
        output=str(output),
        model=model,
        base_filters=base_filters,
        norm=norm,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        batch_size=batch_size,
        accumulate=accumulate,
        patch=patch_size,
        spacing=parse_triple(spacing, "--spacing", float),
        size=frame_size,
        val_dataset=str(Path(val_dataset).expanduser().resolve()) if val_dataset else None,
        optimizer=optimizer,
        lr=lr,
        weight_decay=weight_decay,
        schedule=schedule,
        step_size=step_size,
        gamma=gamma,
        ce_weight=1.0 if loss == "dice+ce" else 0.0,
        include_background=include_background,
        deep_supervision=deep_supervision,
        p_foreground=fg_oversample,
        augment=aug.to_dict(),
        precision=precision,
        grad_clip=grad_clip,
        val_fraction=val_fraction,
        fold=fold,
        folds=folds,
        val_every=max(1, val_every),
        seed=seed,
        workers=workers,
        device=device,
        cache_dir=str(cache) if cache else None,
    )
    if optimizer not in ("adam", "sgd"):
        raise AgnError(f"--optimizer '{optimizer}' must be adam or sgd")
    if schedule not in ("poly", "step", "constant"):
        raise AgnError(f"--schedule '{schedule}' must be poly, step or constant")
    summary = train_seg(
        cfg, resume=resume, overwrite=overwrite, progress=not no_progress and not as_json, log=note, stop_after=stop_after
    )
    _finish(summary, as_json, "segment")


def _finish(summary: dict, as_json: bool, command: str) -> None:
    if os.environ.get("RANK", "0") != "0":  # only rank 0 reports under torchrun
        return
    if as_json:
        print_json(summary)
    else:
        note(f"done: {summary['run']} (best checkpoint: best.safetensors); use it with 'agn {command} --weights {summary['run']}'")


def parse_pair(text: str, what: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise AgnError(f"{what} '{text}' is not ROWSxCOLS (e.g. 224x288)") from None
    if len(values) != 2 or min(values) <= 0:
        raise AgnError(f"{what} '{text}' must be two positive integers ROWSxCOLS")
    return values  # type: ignore[return-value]


@app.command("cls")
def cls(
    dataset: Path = typer.Argument(..., help="Folder per class, a CSV (path,label) or FETAL_PLANES_DB_data.csv (or its folder)."),
    output: Path = typer.Option(..., "-o", "--output", help="Run folder: best/latest checkpoints, metrics.csv, config.json."),
    model: str = typer.Option("ag-sononet-16", "--model", help="ag-sononet-8|16|32 or sononet-8|16|32."),
    base_filters: Optional[int] = typer.Option(None, "--base-filters", help="Override the model's first-stage width."),
    aggregation: str = typer.Option("deep-sup", "--aggregation", help="mean, concat, deep-sup or ft (AG-Sononet)."),
    init: Optional[Path] = typer.Option(None, "--init", help="Start from this run's best checkpoint (the FT procedure)."),
    freeze_backbone: bool = typer.Option(True, "--freeze-backbone/--train-backbone", help="With --aggregation ft: train only the new head."),
    epochs: int = typer.Option(300, "--epochs"),
    steps_per_epoch: Optional[int] = typer.Option(None, "--steps-per-epoch", help="Default: one pass over the training images."),
    batch_size: int = typer.Option(64, "--batch-size", help="Global batch, split across ranks."),
    accumulate: int = typer.Option(1, "--accumulate", help="Micro-batches per rank per step."),
    size: str = typer.Option("224x288", "--size", help="Frames are resized to ROWSxCOLS."),
    crop_size: str = typer.Option("208x272", "--crop-size", help="Random training crop ROWSxCOLS."),
    crop: str = typer.Option("none", "--crop", help="Frame crop before resizing: none or sononet (SonoNet screen captures)."),
    optimizer: str = typer.Option("sgd", "--optimizer", help="sgd (Nesterov, paper) or adam."),
    lr: float = typer.Option(0.1, "--lr"),
    momentum: float = typer.Option(0.9, "--momentum"),
    weight_decay: float = typer.Option(0.0, "--weight-decay"),
    warmup_epochs: int = typer.Option(5, "--warmup-epochs", help="Epochs at --warmup-lr first (paper: 5)."),
    warmup_lr: float = typer.Option(0.01, "--warmup-lr"),
    step_size: int = typer.Option(100, "--step-size", help="x --gamma every N epochs (paper: 100)."),
    gamma: float = typer.Option(0.1, "--gamma"),
    background: Optional[str] = typer.Option(None, "--background", help="Background class name (default: 'Other'/'background' if present; 'none')."),
    background_weight: Optional[float] = typer.Option(None, "--background-weight", help="Sampling weight of the whole background class (default: number of other classes, as the paper's 13/n_bg)."),
    rotation: float = typer.Option(10.0, "--rotation"),
    scale: float = typer.Option(0.1, "--scale"),
    flip: bool = typer.Option(True, "--flip/--no-flip", help="Random horizontal flips."),
    intensity: float = typer.Option(0.1, "--intensity"),
    no_augment: bool = typer.Option(False, "--no-augment"),
    precision: str = typer.Option("auto", "--precision"),
    grad_clip: float = typer.Option(0.0, "--grad-clip"),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="Ignored for FETAL_PLANES_DB (its Train flag is used)."),
    val_every: int = typer.Option(1, "--val-every"),
    seed: int = typer.Option(0, "--seed"),
    workers: int = typer.Option(0, "--workers"),
    device: str = typer.Option("auto", "--device"),
    gpus: int = typer.Option(1, "--gpus", help="Start N processes on this node with torchrun."),
    cache: Optional[Path] = typer.Option(None, "--cache"),
    resume: bool = typer.Option(False, "--resume"),
    overwrite: bool = typer.Option(False, "--overwrite"),
    stop_after: Optional[int] = typer.Option(None, "--stop-after", help="Stop after N epochs in this session."),
    no_progress: bool = typer.Option(False, "--no-progress"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Train a SonoNet / AG-Sononet plane classifier; `agn classify --weights RUN` then uses the best checkpoint."""
    if _relaunch(gpus):
        return
    from agn_cli.models.sononet import AGGREGATIONS
    from agn_cli.train.augment import AugmentConfig
    from agn_cli.train.cls_trainer import ClsTrainConfig, train_cls

    if aggregation not in AGGREGATIONS:
        raise AgnError(f"--aggregation '{aggregation}' must be one of {', '.join(AGGREGATIONS)}")
    if gpus > 1 and device == "auto":
        device = "cuda"
    aug = AugmentConfig.off() if no_augment else AugmentConfig(
        rotation=rotation, scale=scale, translation=0.0, flip_axes=(1,) if flip else (),
        intensity_scale=intensity, intensity_shift=intensity, noise_std=0.0,
    )
    cfg = ClsTrainConfig(
        dataset=str(Path(dataset).expanduser().resolve()), output=str(output), model=model, base_filters=base_filters,
        aggregation=aggregation, init=str(init) if init else None, freeze_backbone=freeze_backbone, epochs=epochs,
        steps_per_epoch=steps_per_epoch, batch_size=batch_size, accumulate=accumulate, size=parse_pair(size, "--size"),
        crop_size=parse_pair(crop_size, "--crop-size"), crop=crop, optimizer=optimizer, lr=lr, momentum=momentum,
        weight_decay=weight_decay, warmup_epochs=warmup_epochs, warmup_lr=warmup_lr, step_size=step_size, gamma=gamma,
        background=background, background_weight=background_weight, augment=aug.to_dict(), precision=precision,
        grad_clip=grad_clip, val_fraction=val_fraction, val_every=max(1, val_every), seed=seed, workers=workers,
        device=device, cache_dir=str(cache) if cache else None,
    )
    summary = train_cls(cfg, resume=resume, overwrite=overwrite, progress=not no_progress and not as_json, log=note,
                        stop_after=stop_after)
    _finish(summary, as_json, "classify")
