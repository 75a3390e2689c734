"""`agn train cls`: SonoNet / AG-Sononet plane classifiers with the paper's recipe (§4.2).

SGD with Nesterov momentum 0.9, lr 0.1 with a warm start at 0.01 for 5 epochs, x0.1 every 100 epochs; each class
sampled with probability 1/n_c per image (background weighted separately); random 208x272 crops of the 224x288
preprocessed frame. `--aggregation ft` with `--init RUN` is the paper's FT procedure: per-scale heads from a
deep-sup (or mean) run, then the concatenated head fine-tuned. Validation on the full 224x288 frame.
Sample k draws from `default_rng([seed, k])`, as in segmentation, so resume and DDP see the same stream.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from agn_cli.runtime.checkpoint import ModelCard, load_checkpoint
from agn_cli.errors import AgnError
from agn_cli.train import distributed as D
from agn_cli.train.augment import AugmentConfig, augment_sample
from agn_cli.train.cls_data import cache_frames, find_background, load_cls_dataset, sampling_weights, split_items
from agn_cli.train.engine import make_progress, make_scaler, optimiser_step, resolve_precision, split_micro, wrap_ddp
from agn_cli.train.run_state import (
    RunConfig,
    STATE_FILE,
    load_state,
    prepare_run_dir,
    read_config,
    read_metrics_csv,
    seed_everything,
    set_rng_state,
    write_config,
    write_metrics_csv,
)
from agn_cli.train.schedule import make_optimizer, make_scheduler


def _default_cls_augment() -> dict[str, Any]:
    return AugmentConfig(rotation=10.0, scale=0.1, translation=0.0, flip_axes=(1,), noise_std=0.0).to_dict()


@dataclass
class ClsTrainConfig(RunConfig):
    model: str = "ag-sononet-16"
    base_filters: int | None = None
    aggregation: str = "deep-sup"
    init: str | None = None
    freeze_backbone: bool = True
    steps_per_epoch: int | None = None  # default: one pass over the training images
    batch_size: int = 64
    size: tuple[int, int] = (224, 288)
    crop_size: tuple[int, int] = (208, 272)
    crop: str = "none"  # "none" | "sononet" (the screen-capture crop of SonoNet's frames)
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    warmup_epochs: int = 5
    warmup_lr: float = 0.01
    step_size: int = 100
    gamma: float = 0.1
    background: str | None = None
    background_weight: float | None = None
    augment: dict[str, Any] = field(default_factory=_default_cls_augment)

    TUPLE_FIELDS: ClassVar[tuple[str, ...]] = ("size", "crop_size")


def preprocessing_for(cfg: ClsTrainConfig) -> dict[str, Any]:
    from agn_cli.us.preprocess import SONONET_PREPROCESSING

    pre: dict[str, Any] = {"grey": "mean", "size": list(cfg.size), "interpolation": "area", "zscore": True, "scale": 1.0}
    if cfg.crop == "sononet":
        pre["crop_auto"] = dict(SONONET_PREPROCESSING["crop_auto"])
    elif cfg.crop != "none":
        raise AgnError(f"--crop '{cfg.crop}' must be none or sononet")
    return pre


class FrameSampler(Dataset):
    def __init__(self, frames_path: Path, indices, labels, weights, crop_size, seed: int, augment: AugmentConfig):
        self.frames_path, self.indices, self.labels = frames_path, np.asarray(indices), np.asarray(labels)
        self.cdf = np.cumsum(weights)
        self.crop, self.seed, self.augment = tuple(crop_size), seed, augment
        self._frames = None

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, k: int):
        if self._frames is None:
            self._frames = np.load(self.frames_path, mmap_mode="r")
        rng = np.random.default_rng([self.seed, int(k)])
        j = min(int(np.searchsorted(self.cdf, rng.random() * self.cdf[-1], side="right")), len(self.indices) - 1)
        frame = np.asarray(self._frames[self.indices[j]], dtype=np.float32)
        rows, cols = frame.shape
        ch, cw = min(self.crop[0], rows), min(self.crop[1], cols)
        y0, x0 = int(rng.integers(0, rows - ch + 1)), int(rng.integers(0, cols - cw + 1))
        patch = torch.from_numpy(np.ascontiguousarray(frame[y0 : y0 + ch, x0 : x0 + cw]))[None]
        image, _ = augment_sample(patch, None, rng, self.augment)
        return image, int(self.labels[j])


def classification_metrics(confusion: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Accuracy, macro precision/recall/F1 (over classes present in truth or prediction) and per-class values."""
    tp = np.diag(confusion).astype(float)
    pred = confusion.sum(0).astype(float)
    true = confusion.sum(1).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(pred > 0, tp / pred, 0.0)
        recall = np.where(true > 0, tp / true, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = (true + pred) > 0
    out: dict[str, Any] = {
        "accuracy": float(tp.sum() / max(1.0, confusion.sum())),
        "macro_precision": float(precision[present].mean()) if present.any() else 0.0,
        "macro_recall": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
    }
    for i, name in enumerate(names):
        out[f"f1_{name}"] = float(f1[i])
        out[f"recall_{name}"] = float(recall[i])
    return out


def _build_model(cfg: ClsTrainConfig, num_classes: int, log) -> tuple[torch.nn.Module, dict[str, Any]]:
    from agn_cli.models import create_model, get_entry

    try:
        entry = get_entry(cfg.model)
    except KeyError as exc:
        raise AgnError(str(exc.args[0])) from None
    if entry.task != "classification":
        raise AgnError(f"'{cfg.model}' is a {entry.task} model; use sononet-8/16/32 or ag-sononet-8/16/32")
    kwargs: dict[str, Any] = {"in_channels": 1, "num_classes": num_classes}
    if cfg.base_filters:
        kwargs["base_filters"] = cfg.base_filters
    attention = cfg.model.startswith("ag-")
    if attention:
        kwargs["aggregation"] = cfg.aggregation
    elif cfg.aggregation not in ("mean", "deep-sup") or cfg.init:
        raise AgnError(f"--aggregation/--init apply to ag-sononet models, not {cfg.model}")
    if cfg.aggregation == "ft" and not cfg.init:
        raise AgnError("--aggregation ft fine-tunes a trained run: pass --init RUN (a deep-sup or mean run)")
    net = create_model(cfg.model, **kwargs)
    kwargs = dict(net.agn_config)
    if cfg.init:
        source, card = load_checkpoint(cfg.init)
        if card.architecture != cfg.model or card.num_classes != num_classes:
            raise AgnError(f"--init {cfg.init} is {card.architecture} with {card.num_classes} classes; "
                           f"need {cfg.model} with {num_classes}")
        state = {k: v for k, v in source.state_dict().items() if not k.startswith("classifier.")}
        missing = net.load_state_dict(state, strict=False).missing_keys
        if cfg.aggregation == "ft":
            if any(k.startswith("scale_heads.") for k in missing):
                raise AgnError(f"--init {cfg.init} has no per-scale heads (aggregation concat); train with deep-sup first")
            with torch.no_grad():  # start from the mean of the per-scale logits
                eye = torch.eye(num_classes) / 3
                net.classifier.weight.copy_(torch.cat([eye, eye, eye], dim=1))
                net.classifier.bias.zero_()
            if cfg.freeze_backbone:
                for name, p in net.named_parameters():
                    p.requires_grad = name.startswith("classifier.")
        log(f"initialised from {cfg.init} ({card.architecture}, aggregation {card.model_kwargs.get('aggregation')})")
    return net, kwargs


def train_cls(
    cfg: ClsTrainConfig, resume: bool = False, overwrite: bool = False, progress: bool = True,
    log: Callable[[str], None] | None = None, stop_after: int | None = None,
) -> dict[str, Any]:
    ctx = D.setup(cfg.device)
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        return _train_cls(cfg, ctx, resume, overwrite, progress, log or (lambda m: None), stop_after)
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        ctx.shutdown()


def _train_cls(cfg: ClsTrainConfig, ctx: D.DistContext, resume, overwrite, progress, log, stop_after) -> dict[str, Any]:
    run = Path(cfg.output).expanduser().resolve()
    if not resume and D.elastic_restart_count() > 0 and (run / STATE_FILE).is_file():
        resume, overwrite = True, False
    if resume and (run / "config.json").is_file():
        saved = read_config(run / "config.json")
        for key in ("epochs", "device", "workers", "val_every"):
            saved[key] = getattr(cfg, key)
        cfg = ClsTrainConfig.from_dict(saved)
    if cfg.batch_size % (ctx.world_size * cfg.accumulate):
        raise AgnError(f"--batch-size {cfg.batch_size} must be divisible by ranks x --accumulate = "
                       f"{ctx.world_size} x {cfg.accumulate}")
    prepare_run_dir(run, resume, overwrite, ctx.is_main)
    ctx.barrier()
    device = ctx.device
    precision = resolve_precision(cfg.precision, device)
    seed_everything(cfg.seed, cfg.deterministic and device.type == "cpu", device)

    ds = load_cls_dataset(cfg.dataset)
    classes = ds.classes
    if len(classes) < 2:
        raise AgnError(f"{ds.source} has a single class ({classes[0]}); a classifier needs at least two")
    label_ids = [classes.index(label) for label in ds.labels]
    train_idx, val_idx = split_items(ds, cfg.val_fraction, cfg.seed)
    pre = preprocessing_for(cfg)
    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else run / "cache"
    if ctx.is_main:
        frames_path = cache_frames(ds.paths, pre, cache_dir, lambda n: log(f"preprocessing {n} frames (cached in {cache_dir})"))
    ctx.barrier()
    frames_path = cache_frames(ds.paths, pre, cache_dir)  # present now: returns the path
    background = find_background(classes, cfg.background)
    weights = sampling_weights([label_ids[i] for i in train_idx], len(classes), background, cfg.background_weight)

    torch.manual_seed(cfg.seed)
    net, model_kwargs = _build_model(cfg, len(classes), log)
    net.to(device)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
    scheduler = make_scheduler(
        optimizer, "step", cfg.epochs, step_size=cfg.step_size, gamma=cfg.gamma,
        warmup_epochs=cfg.warmup_epochs, warmup_factor=cfg.warmup_lr / cfg.lr,
    )
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
    elif ctx.is_main:
        write_config(run / "config.json", dataclasses.asdict(cfg))
    wrapper = wrap_ddp(net, device, ctx.distributed)
    aug = AugmentConfig.from_dict(cfg.augment)
    sampler = FrameSampler(frames_path, train_idx, [label_ids[i] for i in train_idx], weights, cfg.crop_size, cfg.seed, aug)
    steps = cfg.steps_per_epoch or max(1, math.ceil(len(train_idx) / cfg.batch_size))
    side_loss = cfg.aggregation == "deep-sup"

    def loss_fn(batch):
        x, y = batch
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits, sides = wrapper(x)
        loss = F.cross_entropy(logits.float(), y)
        if side_loss and sides:
            loss = loss + sum(F.cross_entropy(s.float(), y) for s in sides) / len(sides)
        return loss

    card = ModelCard(
        architecture=cfg.model,
        model_kwargs=model_kwargs,
        task="classification",
        labels=dict(enumerate(classes)),
        patch_size=list(cfg.size),
        preprocessing=pre,
        training_data=f"{ds.kind} {ds.source}: {len(train_idx)} training / {len(val_idx)} validation images"
        + (" (official Train flag)" if ds.train_flags is not None else f", val fraction {cfg.val_fraction}, seed {cfg.seed}"),
        source=f"agn train cls ({cfg.epochs} epochs, batch {cfg.batch_size}, aggregation {cfg.aggregation})",
    )
    from agn_cli.train.seg_trainer import _save_run

    end_epoch = cfg.epochs if not stop_after else min(cfg.epochs, start_epoch + stop_after)
    frozen = bool(cfg.init and cfg.aggregation == "ft" and cfg.freeze_backbone)
    last: dict[str, Any] = {}
    with make_progress(progress and ctx.is_main) as bar:
        for epoch in range(start_epoch, end_epoch):
            _train_mode(net, frozen)
            lr = optimizer.param_groups[0]["lr"]
            task = bar.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=steps, loss="-", lr=f"{lr:.2e}", speed="")
            batches = []
            for step in range(steps):
                base = (epoch * steps + step) * cfg.batch_size
                batches.extend(split_micro(D.shard(list(range(base, base + cfg.batch_size)), ctx.rank, ctx.world_size), cfg.accumulate))
            loader = DataLoader(sampler, batch_sampler=batches, num_workers=cfg.workers, pin_memory=device.type == "cuda")
            it, t0, losses = iter(loader), time.perf_counter(), []
            for step in range(steps):
                micro = [next(it) for _ in range(cfg.accumulate)]
                losses.append(optimiser_step(wrapper, optimizer, scaler, micro, loss_fn, device, precision, cfg.grad_clip))
                bar.update(task, advance=1, loss=f"{losses[-1]:.4f}", speed=f"{(step + 1) / (time.perf_counter() - t0):.2f} it/s")
            scheduler.step()
            seconds = time.perf_counter() - t0
            s = ctx.all_reduce_sum(torch.tensor([sum(losses), len(losses)], dtype=torch.float64))
            row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": float(s[0] / s[1]), "lr": lr, "seconds": seconds}
            validated = val_idx and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == end_epoch)
            if validated:
                confusion = _evaluate(net, frames_path, val_idx, label_ids, len(classes), ctx, precision)
                row.update({f"val_{k}": v for k, v in classification_metrics(confusion, classes).items()})
                score = row["val_macro_f1"]
            else:
                score = -row["train_loss"] if not val_idx else -math.inf
            improved = score > best_score
            best_score = max(best_score, score)
            rows.append(row)
            if ctx.is_main:
                _save_run(run, net, card, optimizer, scheduler, scaler, epoch + 1, best_score,
                          {k: v for k, v in row.items() if k != "seconds"}, improved)
                write_metrics_csv(run / "metrics.csv", rows)
                msg = f"epoch {epoch + 1}/{cfg.epochs}: loss {row['train_loss']:.4f}"
                if validated:
                    msg += f", val accuracy {row['val_accuracy']:.3f}, macro F1 {row['val_macro_f1']:.3f}"
                log(msg + (" (best)" if improved else ""))
            ctx.barrier()
            bar.remove_task(task)
            last = row
    return {"run": str(run), "epochs": cfg.epochs, "started_at_epoch": start_epoch, "finished_epoch": end_epoch,
            "classes": classes, "best_score": best_score, "last": last, "world_size": ctx.world_size}


def _train_mode(net: torch.nn.Module, frozen_backbone: bool) -> None:
    """Training mode; a frozen backbone keeps its batch-norm statistics (eval mode) so it stays exactly as loaded."""
    net.train()
    if frozen_backbone:
        for module in net.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


def _evaluate(net, frames_path: Path, val_idx, label_ids, num_classes: int, ctx: D.DistContext, precision: str) -> np.ndarray:
    """Confusion matrix (true x predicted) on whole preprocessed frames, shared across ranks and summed."""
    from agn_cli.train.engine import autocast

    net.eval()
    frames = np.load(frames_path, mmap_mode="r")
    confusion = torch.zeros((num_classes, num_classes), dtype=torch.float64)
    mine = val_idx[ctx.rank :: ctx.world_size]
    with torch.no_grad():
        for start in range(0, len(mine), 32):
            chunk = mine[start : start + 32]
            x = torch.from_numpy(np.asarray(frames[chunk], dtype=np.float32))[:, None].to(ctx.device)
            with autocast(ctx.device, precision):
                pred = net(x).float().argmax(1).cpu().numpy()
            for i, p in zip(chunk, pred):
                confusion[label_ids[i], int(p)] += 1
    net.train()
    return ctx.all_reduce_sum(confusion).numpy().astype(np.int64)
