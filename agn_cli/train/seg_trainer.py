"""`agn train seg`: Attention U-Net / U-Net 3D on CT from an nnU-Net v2 or MSD dataset (paper §4.1 recipe).

One epoch is `steps_per_epoch` optimiser steps of a global batch of patches. Sample k of the run (a global index)
draws its case, patch position and augmentation from `default_rng([seed, k])`, so the data stream does not depend
on the number of ranks, data-loader workers or interruptions: a resumed run, or 2 ranks with half the batch each,
see exactly the patches a single uninterrupted process sees.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, ClassVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from agn_cli.runtime.checkpoint import ModelCard, save_checkpoint
from agn_cli.errors import AgnError
from agn_cli.models.attention_gate import NORMS
from agn_cli.models.unet import LEVELS
from agn_cli.train import distributed as D
from agn_cli.train.augment import AugmentConfig, augment_sample
from agn_cli.train.cache import CachedCase, cache_cases, foreground_normalisation, load_cached
from agn_cli.train.datasets import load_dataset, split_cases
from agn_cli.train.engine import (
    make_progress,
    make_scaler,
    optimiser_step,
    resolve_precision,
    split_micro,
    wrap_ddp,
)
from agn_cli.train.losses import DEEP_SUPERVISION_MODES, DiceCELoss, deep_supervision_loss
from agn_cli.train.patches import choose_patch_origin, extract_patch
from agn_cli.train.run_state import (
    RunConfig,
    STATE_FILE,
    load_state,
    prepare_run_dir,
    read_config,
    read_metrics_csv,
    rng_state,
    save_state,
    seed_everything,
    set_rng_state,
    write_config,
    write_metrics_csv,
)
from agn_cli.train.schedule import make_optimizer, make_scheduler

SEG_MODELS = ("attention-unet3d", "unet3d")


@dataclass
class SegTrainConfig(RunConfig):
    model: str = "attention-unet3d"
    base_filters: int = 16
    norm: str = "batch"
    steps_per_epoch: int = 250
    patch: tuple[int, int, int] = (160, 160, 96)
    spacing: tuple[float, float, float] = (2.0, 2.0, 2.0)
    optimizer: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "poly"
    step_size: int = 100
    gamma: float = 0.1
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    include_background: bool = False
    deep_supervision: str = "aux"
    p_foreground: float = 0.33
    augment: dict[str, Any] = field(default_factory=lambda: AugmentConfig().to_dict())
    grad_clip: float = 12.0
    fold: int | None = None
    folds: int = 5
    max_train_cases: int | None = None

    TUPLE_FIELDS: ClassVar[tuple[str, ...]] = ("patch", "spacing")


def _validate(cfg: SegTrainConfig, world: int) -> None:
    if cfg.model not in SEG_MODELS:
        raise AgnError(f"unknown segmentation model '{cfg.model}'; use {' or '.join(SEG_MODELS)}")
    if cfg.norm not in NORMS:
        raise AgnError(f"--norm '{cfg.norm}' must be one of {', '.join(NORMS)}")
    pooling = 2 ** (LEVELS - 1)  # input voxels per bottleneck voxel along an axis
    if cfg.norm == "instance" and all(math.ceil(p / pooling) == 1 for p in cfg.patch):
        raise AgnError(
            f"--norm instance needs a bottleneck of more than one voxel, but --patch {'x'.join(map(str, cfg.patch))} "
            f"pools to 1x1x1: use a patch above {pooling} on at least one axis"
        )
    if cfg.deep_supervision not in DEEP_SUPERVISION_MODES:
        raise AgnError(f"--deep-supervision must be one of {', '.join(DEEP_SUPERVISION_MODES)}")
    if cfg.epochs < 1 or cfg.steps_per_epoch < 1 or cfg.batch_size < 1 or cfg.accumulate < 1:
        raise AgnError("--epochs, --steps-per-epoch, --batch-size and --accumulate must be at least 1")
    if cfg.batch_size % (world * cfg.accumulate):
        raise AgnError(
            f"--batch-size {cfg.batch_size} must be divisible by ranks x --accumulate = {world} x {cfg.accumulate}; "
            "change one of them"
        )
    if cfg.optimizer not in ("adam", "sgd"):
        raise AgnError(f"--optimizer '{cfg.optimizer}' must be adam or sgd")
    if cfg.schedule not in ("poly", "step", "constant"):
        raise AgnError(f"--schedule '{cfg.schedule}' must be poly, step or constant")
    if cfg.dice_weight <= 0 and cfg.ce_weight <= 0:
        raise AgnError("at least one of the Dice and cross-entropy weights must be positive")
    if min(cfg.patch) < 1 or min(cfg.spacing) <= 0:
        raise AgnError("--patch and --spacing must be positive")


class PatchSampler(Dataset):
    """Map-style dataset over global sample indices; item k is fully determined by (seed, k)."""

    def __init__(
        self,
        cases: Sequence[CachedCase],
        patch: Sequence[int],
        normalisation: dict[str, Any],
        seed: int,
        p_foreground: float,
        augment: AugmentConfig,
    ) -> None:
        self.cases, self.patch, self.norm = list(cases), tuple(patch), normalisation
        self.seed, self.p_fg, self.augment = seed, p_foreground, augment
        self._locations: dict[int, dict[int, np.ndarray]] = {}

    def __len__(self) -> int:  # indices are unbounded; DataLoader only needs the batch sampler
        return 2**62

    def _locs(self, i: int) -> dict[int, np.ndarray]:
        if i not in self._locations:
            self._locations[i] = self.cases[i].locations()
        return self._locations[i]

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        from agn_cli.ct.preprocess import AIR_HU, normalise_ct

        rng = np.random.default_rng([self.seed, int(k)])
        ci = int(rng.integers(0, len(self.cases)))
        case = self.cases[ci]
        origin = choose_patch_origin(case.shape, self.patch, rng, self._locs(ci), self.p_fg)
        image = normalise_ct(extract_patch(case.image(), origin, self.patch, fill=AIR_HU), self.norm)
        label = extract_patch(case.label(), origin, self.patch)
        img_t, lab_t = augment_sample(torch.from_numpy(image)[None], torch.from_numpy(label.astype(np.int64)), rng, self.augment)
        return img_t, lab_t


def _worker_init(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    base = info.seed if info is not None else worker_id
    np.random.seed(base % 2**32)


def sliding_window_probs(
    net: torch.nn.Module,
    volume: np.ndarray,
    patch: Sequence[int],
    device: torch.device,
    precision: str,
    overlap: float = 0.5,
    pad_value: float | None = None,
) -> torch.Tensor:
    """Softmax probabilities (C, *shape) of a whole volume from overlapping patches (mean where they overlap).

    A volume shorter than the patch on an axis is padded with `pad_value` (callers with a card pass its normalised
    air, `normalised_background`; default: the volume's lowest value) and the result cropped back, as training
    patches and `agn segment` pad: the network always sees whole patches.
    """
    from agn_cli.train.engine import autocast

    if any(s < p for s, p in zip(volume.shape, patch)):
        pad = [(0, max(int(p) - s, 0)) for s, p in zip(volume.shape, patch)]
        fill = float(np.min(volume)) if pad_value is None else float(pad_value)
        padded = np.pad(volume, pad, constant_values=fill)
        probs = sliding_window_probs(net, padded, patch, device, precision, overlap, fill)
        return probs[(slice(None), *(slice(0, s) for s in volume.shape))].contiguous()
    shape = volume.shape
    starts = []
    for s, p in zip(shape, patch):
        step = max(1, int(p * (1 - overlap)))
        pos = list(range(0, s - p + 1, step))
        if pos[-1] != s - p:
            pos.append(s - p)
        starts.append(pos)
    probs = None
    counts = torch.zeros(shape, dtype=torch.float32)
    vol = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))
    for x0 in starts[0]:
        for y0 in starts[1]:
            for z0 in starts[2]:
                sl = (slice(x0, x0 + patch[0]), slice(y0, y0 + patch[1]), slice(z0, z0 + patch[2]))
                with torch.no_grad(), autocast(device, precision):
                    logits = net(vol[sl][None, None].to(device))
                p = torch.softmax(logits.float(), dim=1)[0].cpu()
                if probs is None:
                    probs = torch.zeros((p.shape[0], *shape), dtype=torch.float32)
                probs[(slice(None), *sl)] += p
                counts[sl] += 1
    return probs / counts.clamp_min(1)


def dice_per_class(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> list[float]:
    """Hard Dice per foreground class; NaN where the class is absent from both."""
    out = []
    for c in range(1, num_classes):
        p, g = pred == c, gt == c
        denom = int(p.sum()) + int(g.sum())
        out.append(float("nan") if denom == 0 else 2.0 * int(np.logical_and(p, g).sum()) / denom)
    return out


def _loss_fn(net_wrapper, criterion, mode: str, device: torch.device) -> Callable:
    def fn(batch):
        x, y = batch
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        fused, sides = net_wrapper(x)
        return deep_supervision_loss(criterion, fused, sides, y, mode)

    return fn


def train_seg(
    cfg: SegTrainConfig,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train; returns a summary (run folder, epochs, best metric). Safe to call under torchrun.

    `stop_after`: leave after that many epochs in this session (time-limited jobs; continue with resume=True).
    """
    ctx = D.setup(cfg.device)
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        return _train_seg(cfg, ctx, resume, overwrite, progress, log or (lambda m: None), stop_after)
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        ctx.shutdown()


def _train_seg(cfg, ctx: D.DistContext, resume, overwrite, progress, log, stop_after=None) -> dict[str, Any]:
    run = Path(cfg.output).expanduser().resolve()
    if not resume and D.elastic_restart_count() > 0 and (run / STATE_FILE).is_file():
        resume = True  # an elastic restart continues the run it belongs to
        overwrite = False
    if resume and (run / "config.json").is_file():
        saved = read_config(run / "config.json")
        # the run's recipe wins; only these may change between sessions
        for key in ("epochs", "device", "workers", "val_every"):
            saved[key] = getattr(cfg, key)
        cfg = SegTrainConfig.from_dict(saved)
    _validate(cfg, ctx.world_size)
    prepare_run_dir(run, resume, overwrite, ctx.is_main)
    ctx.barrier()
    device = ctx.device
    precision = resolve_precision(cfg.precision, device)
    seed_everything(cfg.seed, cfg.deterministic and device.type == "cpu", device)

    ds = load_dataset(cfg.dataset)
    if ds.problems:
        raise AgnError(f"{ds.problems[0]} (run 'agn data check {cfg.dataset}' for all problems)")
    if len(ds.channels) != 1:
        raise AgnError(f"{ds.root} has {len(ds.channels)} channels; agn train seg supports single-channel CT")
    by_id = {c.case_id: c for c in ds.cases}
    train_ids, val_ids = split_cases(list(by_id), cfg.val_fraction, cfg.fold, cfg.folds, cfg.seed)
    if cfg.max_train_cases:
        train_ids = train_ids[: cfg.max_train_cases]
    num_classes = len(ds.labels)

    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else run / "cache"
    wanted = [by_id[i] for i in train_ids + val_ids]
    if ctx.is_main:
        log(f"preparing {len(wanted)} cases at {cfg.spacing} mm (cached in {cache_dir})")
    cache_cases(wanted, cache_dir, cfg.spacing, num_classes, ctx.rank, ctx.world_size)
    ctx.barrier()
    cached = {c.case_id: load_cached(c, cache_dir, cfg.spacing) for c in wanted}
    train_cases = [cached[i] for i in train_ids]
    val_cases = [cached[i] for i in val_ids]
    normalisation = foreground_normalisation(train_cases)
    patch = tuple(int(p) for p in cfg.patch)
    small = sum(any(s < p for s, p in zip(c.shape, patch)) for c in train_cases)
    micro = cfg.batch_size // (ctx.world_size * cfg.accumulate)
    if micro == 1 and math.prod(math.ceil(p / 16) for p in patch) == 1:
        raise AgnError(
            f"patch {'x'.join(map(str, patch))} leaves 1 bottleneck voxel, which batch norm cannot train on with one "
            "sample per micro-batch; use a patch over 16 voxels on some axis or more samples per rank"
        )
    if small and ctx.is_main:
        log(f"{small} of {len(train_cases)} training volumes are smaller than the patch {'x'.join(map(str, patch))} "
            "on some axis: their patches are padded (air, background label)")

    from agn_cli.models import create_model

    torch.manual_seed(cfg.seed)
    model_kwargs = {"in_channels": 1, "num_classes": num_classes, "base_filters": cfg.base_filters, "norm": cfg.norm}
    net = create_model(cfg.model, **model_kwargs).to(device)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
    scheduler = make_scheduler(optimizer, cfg.schedule, cfg.epochs, step_size=cfg.step_size, gamma=cfg.gamma)
    scaler = make_scaler(device, precision)
    start_epoch, best_score, rows = 0, -math.inf, []
    if resume:
        state = load_state(run / STATE_FILE)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        start_epoch, best_score = int(state["epoch"]), float(state["best_score"])
        rows = [r for r in read_metrics_csv(run / "metrics.csv") if int(r.get("epoch", 0)) <= start_epoch]
        if ctx.is_main:
            log(f"resuming {run} at epoch {start_epoch + 1}")
    elif ctx.is_main:
        write_config(run / "config.json", dataclasses.asdict(cfg))
    wrapper = wrap_ddp(net, device, ctx.distributed)

    criterion = DiceCELoss(cfg.dice_weight, cfg.ce_weight, cfg.include_background)
    aug = AugmentConfig.from_dict(cfg.augment)
    sampler = PatchSampler(train_cases, patch, normalisation, cfg.seed, cfg.p_foreground, aug)
    local_batch = cfg.batch_size // ctx.world_size
    loss_fn = _loss_fn(wrapper, criterion, cfg.deep_supervision, device)

    card = ModelCard(
        architecture=cfg.model,
        model_kwargs=model_kwargs,
        task="segmentation",
        labels=dict(ds.labels),
        spacing=[float(s) for s in cfg.spacing],
        normalisation=normalisation,
        patch_size=list(patch),
        mirror_axes=list(aug.flip_axes) if aug.p_flip > 0 else [],
        preprocessing={"orientation": "LPS", "resampling": "linear image, nearest label"},
        training_data=(
            f"{ds.name} ({ds.layout} layout, {ds.root}): {len(train_cases)} training / {len(val_cases)} validation cases"
            + (f", fold {cfg.fold} of {cfg.folds}" if cfg.fold is not None else f", val fraction {cfg.val_fraction}")
            + f", seed {cfg.seed}"
        ),
        source=f"agn train seg ({cfg.epochs} epochs x {cfg.steps_per_epoch} steps, batch {cfg.batch_size})",
    )
    names = [ds.labels[c] for c in range(1, num_classes)]
    last_summary: dict[str, Any] = {}
    with make_progress(progress and ctx.is_main) as bar:
        end_epoch = cfg.epochs if not stop_after else min(cfg.epochs, start_epoch + stop_after)
        for epoch in range(start_epoch, end_epoch):
            net.train()
            lr = optimizer.param_groups[0]["lr"]
            task = bar.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=cfg.steps_per_epoch, loss="-", lr=f"{lr:.2e}", speed="")
            batches = []
            for step in range(cfg.steps_per_epoch):
                base = (epoch * cfg.steps_per_epoch + step) * cfg.batch_size
                mine = D.shard(list(range(base, base + cfg.batch_size)), ctx.rank, ctx.world_size)
                batches.extend(split_micro(mine, cfg.accumulate))
            loader = DataLoader(
                sampler,
                batch_sampler=batches,
                num_workers=cfg.workers,
                worker_init_fn=_worker_init if cfg.workers else None,
                pin_memory=device.type == "cuda",
                persistent_workers=False,
            )
            t0, losses = time.perf_counter(), []
            it = iter(loader)
            for step in range(cfg.steps_per_epoch):
                micro = [next(it) for _ in range(cfg.accumulate)]
                loss = optimiser_step(wrapper, optimizer, scaler, micro, loss_fn, device, precision, cfg.grad_clip)
                losses.append(loss)
                elapsed = time.perf_counter() - t0
                bar.update(task, advance=1, loss=f"{loss:.4f}", speed=f"{(step + 1) / elapsed:.2f} it/s")
            scheduler.step()
            seconds = time.perf_counter() - t0
            loss_sum = ctx.all_reduce_sum(torch.tensor([sum(losses), len(losses)], dtype=torch.float64))
            train_loss = float(loss_sum[0] / loss_sum[1])
            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "lr": lr,
                "seconds": seconds,
                "samples_per_s": cfg.steps_per_epoch * cfg.batch_size / max(seconds, 1e-9),
            }
            validated = val_cases and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs)
            if validated:
                dice = _validate_cases(net, val_cases, normalisation, patch, num_classes, ctx, precision)
                row["val_dice_mean"] = float(np.nanmean(dice)) if not np.all(np.isnan(dice)) else float("nan")
                for name, value in zip(names, dice):
                    row[f"val_dice_{name}"] = value
                score = row["val_dice_mean"] if not math.isnan(row["val_dice_mean"]) else -math.inf
            else:
                score = -train_loss if not val_cases else -math.inf
            improved = score > best_score
            if improved:
                best_score = score
            rows.append(row)
            if ctx.is_main:
                metrics = {k: v for k, v in row.items() if k != "seconds"}
                _save_run(run, net, card, optimizer, scheduler, scaler, epoch + 1, best_score, metrics, improved)
                write_metrics_csv(run / "metrics.csv", rows)
                msg = f"epoch {epoch + 1}/{cfg.epochs}: loss {train_loss:.4f}"
                if validated:
                    msg += f", val Dice {row['val_dice_mean']:.4f}"
                log(msg + (" (best)" if improved else ""))
            ctx.barrier()
            bar.remove_task(task)
            last_summary = row
    return {
        "run": str(run),
        "epochs": cfg.epochs,
        "started_at_epoch": start_epoch,
        "finished_epoch": end_epoch,
        "best_score": best_score,
        "last": last_summary,
        "patch": list(patch),
        "normalisation": normalisation,
        "world_size": ctx.world_size,
    }


def _validate_cases(net, cases, normalisation, patch, num_classes, ctx: D.DistContext, precision) -> np.ndarray:
    """Per-class mean Dice over the validation cases, each rank taking a share, reduced across ranks."""
    from agn_cli.ct.preprocess import normalise_ct, normalised_background

    net.eval()
    air = normalised_background(normalisation)  # what training patches and agn segment pad with
    sums = torch.zeros(num_classes - 1, dtype=torch.float64)
    counts = torch.zeros(num_classes - 1, dtype=torch.float64)
    for i, case in enumerate(cases):
        if i % ctx.world_size != ctx.rank:
            continue
        volume = normalise_ct(case.image(), normalisation)
        probs = sliding_window_probs(net, volume, patch, ctx.device, precision, pad_value=air)
        pred = probs.argmax(0).numpy()
        for c, d in enumerate(dice_per_class(pred, np.asarray(case.label()), num_classes)):
            if not math.isnan(d):
                sums[c] += d
                counts[c] += 1
    sums, counts = ctx.all_reduce_sum(sums), ctx.all_reduce_sum(counts)
    net.train()
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums / counts).numpy()


def _save_run(run: Path, net, card: ModelCard, optimizer, scheduler, scaler, epoch: int, best_score: float,
              metrics: dict[str, Any], improved: bool) -> None:
    """State first, then latest weights, then best: a kill at any point leaves a resumable, consistent run."""
    inner = getattr(net, "module", net)
    save_state(
        run / STATE_FILE,
        {
            "model": {k: v.detach().cpu() for k, v in inner.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng_state(),
            "epoch": epoch,
            "best_score": best_score,
        },
    )
    card.metrics = {"epoch": epoch, **{k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))}}
    card.created = ""
    save_checkpoint(run / "latest.safetensors", net, dataclasses.replace(card), overwrite=True)
    if improved:
        save_checkpoint(run / "best.safetensors", net, dataclasses.replace(card), overwrite=True)
