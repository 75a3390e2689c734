"""`agn train cls`: SonoNet / AG-Sononet plane classifiers with the paper's recipe (§4.2).

SGD with Nesterov momentum 0.9, lr 0.1 with a warm start at 0.01 for 5 epochs, x0.1 every 100 epochs; each class
sampled with probability 1/n_c per image (background weighted separately); random 208x272 crops of the 224x288
preprocessed frame. `--aggregation ft` with `--init RUN` is the paper's FT procedure: per-scale heads from a
deep-sup (or mean) run, then the concatenated head fine-tuned. Validation on the full 224x288 frame, scored with
`agn_cli.metrics.classification` (what `agn evaluate cls` reports). The classification task of the shared loop
(`agn_cli.train.loop`): sample k draws from `default_rng([seed, k])`, so resume and DDP see the same stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from agn_cli.errors import AgnError
from agn_cli.runtime.checkpoint import ModelCard, load_checkpoint
from agn_cli.train import distributed as D
from agn_cli.train.augment import AugmentConfig, augment_sample
from agn_cli.train.cls_data import cache_frames, find_background, load_cls_dataset, sampling_weights, split_items
from agn_cli.train.loop import TrainTask, run_training
from agn_cli.train.run_state import RunConfig
from agn_cli.train.schedule import make_scheduler


def _default_cls_augment() -> dict[str, Any]:
    return AugmentConfig(rotation=10.0, scale=0.1, translation=0.0, flip_axes=(1,), noise_std=0.0).to_dict()


@dataclass
class ClsTrainConfig(RunConfig):
    model: str = "ag-sononet-16"
    base_filters: int | None = None
    aggregation: str = "deep-sup"
    init: str | None = None
    freeze_backbone: bool = True
    batch_size: int = 64
    size: tuple[int, int] = (224, 288)
    crop_size: tuple[int, int] = (208, 272)
    crop: str = "none"  # "none" | "sononet" (the screen-capture crop of SonoNet's frames)
    optimizer: str = "sgd"
    lr: float = 0.1
    warmup_epochs: int = 5
    warmup_lr: float = 0.01
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


def validation_metrics(confusion: np.ndarray, classes: list[str]) -> dict[str, float]:
    """metrics.csv columns of a validation confusion matrix, from `confusion_metrics`: the numbers (and macro
    convention) `agn evaluate cls` reports."""
    from agn_cli.metrics.classification import confusion_metrics

    metrics = confusion_metrics(confusion, classes)
    row = {f"val_{k}": metrics[k] for k in ("accuracy", "macro_precision", "macro_recall", "macro_f1")}
    for entry in metrics["per_class"]:
        row[f"val_f1_{entry['class']}"] = entry["f1"]
        row[f"val_recall_{entry['class']}"] = entry["recall"]
    return row


class ClsTask(TrainTask):
    """Plane classification: data, network, loss and validation of `agn train cls`."""

    score = "val_macro_f1"

    def check(self, cfg: ClsTrainConfig, world_size: int) -> None:
        preprocessing_for(cfg)  # refuses an unknown --crop

    def prepare(self, cfg: ClsTrainConfig, ctx: D.DistContext, run: Path, log: Callable[[str], None]) -> None:
        ds = load_cls_dataset(cfg.dataset)
        classes = ds.classes
        if len(classes) < 2:
            raise AgnError(f"{ds.source} has a single class ({classes[0]}); a classifier needs at least two")
        self.classes, self.dataset = classes, ds
        self.label_ids = [classes.index(label) for label in ds.labels]
        self.train_idx, self.val_idx = split_items(ds, cfg.val_fraction, cfg.seed)
        self.preprocessing = preprocessing_for(cfg)
        cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else run / "cache"
        if ctx.is_main:
            cache_frames(ds.paths, self.preprocessing, cache_dir, lambda n: log(f"preprocessing {n} frames (cached in {cache_dir})"))
        ctx.barrier()
        self.frames_path = cache_frames(ds.paths, self.preprocessing, cache_dir)  # present now: returns the path
        background = find_background(classes, cfg.background)
        train_labels = [self.label_ids[i] for i in self.train_idx]
        weights = sampling_weights(train_labels, len(classes), background, cfg.background_weight)
        self.sampler = FrameSampler(self.frames_path, self.train_idx, train_labels, weights, cfg.crop_size, cfg.seed,
                                    AugmentConfig.from_dict(cfg.augment))
        self.steps = cfg.steps_per_epoch or max(1, math.ceil(len(self.train_idx) / cfg.batch_size))
        self.has_validation = bool(self.val_idx)

    def build(self, cfg: ClsTrainConfig, log: Callable[[str], None]) -> torch.nn.Module:
        net, self.model_kwargs = _build_model(cfg, len(self.classes), log)
        return net

    def scheduler(self, cfg: ClsTrainConfig, optimizer: torch.optim.Optimizer) -> Any:
        return make_scheduler(optimizer, "step", cfg.epochs, step_size=cfg.step_size, gamma=cfg.gamma,
                              warmup_epochs=cfg.warmup_epochs, warmup_factor=cfg.warmup_lr / cfg.lr)

    def batch_loss(self, cfg: ClsTrainConfig, forward: torch.nn.Module, device: torch.device) -> Callable:
        """Cross-entropy of the aggregated logits, plus the mean of the per-scale heads' with `deep-sup`."""
        side_loss = cfg.aggregation == "deep-sup"

        def loss(batch) -> torch.Tensor:
            x, y = batch
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits, sides = forward(x)
            value = F.cross_entropy(logits.float(), y)
            if side_loss and sides:
                value = value + sum(F.cross_entropy(s.float(), y) for s in sides) / len(sides)
            return value

        return loss

    def card(self, cfg: ClsTrainConfig, net: torch.nn.Module) -> ModelCard:
        ds = self.dataset
        split = " (official Train flag)" if ds.train_flags is not None else f", val fraction {cfg.val_fraction}, seed {cfg.seed}"
        return ModelCard(
            architecture=cfg.model,
            model_kwargs=self.model_kwargs,
            task="classification",
            labels=dict(enumerate(self.classes)),
            patch_size=list(cfg.size),
            preprocessing=self.preprocessing,
            training_data=f"{ds.kind} {ds.source}: {len(self.train_idx)} training / {len(self.val_idx)} validation images{split}",
            source=f"agn train cls ({cfg.epochs} epochs, batch {cfg.batch_size}, aggregation {cfg.aggregation})",
        )

    def train_mode(self, cfg: ClsTrainConfig, net: torch.nn.Module) -> None:
        _train_mode(net, bool(cfg.init and cfg.aggregation == "ft" and cfg.freeze_backbone))

    def validate(self, net: torch.nn.Module, ctx: D.DistContext, precision: str) -> dict[str, float]:
        confusion = _evaluate(net, self.frames_path, self.val_idx, self.label_ids, len(self.classes), ctx, precision)
        return validation_metrics(confusion, self.classes)

    def describe(self, row: dict[str, Any]) -> str:
        return f"val accuracy {row['val_accuracy']:.3f}, macro F1 {row['val_macro_f1']:.3f}"

    def summary(self) -> dict[str, Any]:
        return {"classes": self.classes}


def train_cls(cfg: ClsTrainConfig, **options: Any) -> dict[str, Any]:
    """Train a plane classifier with the shared loop; `options` are `run_training`'s (resume, overwrite, ...)."""
    return run_training(ClsTask(), cfg, **options)
