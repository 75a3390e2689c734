"""`agn train seg`: Attention U-Net / U-Net 3D on CT from an nnU-Net v2 or MSD dataset (paper §4.1 recipe), and the
2D networks on frames from an nnU-Net v2 2D (PNG) dataset.

The segmentation task of the shared loop (`agn_cli.train.loop`): random patches with foreground oversampling,
Dice + cross-entropy with deep supervision, and validation through the inference code users run, scored with
`agn_cli.metrics.segmentation`'s Dice: `predict_volume` (Gaussian-blended windows, as `agn segment`) for volumes;
for frames `agn_cli.us.frame_segmentation` (as `agn measure`: the card's preprocessing, softmax at network size,
probabilities resized back to the frame), so a 2D run's validation Dice is measured at each frame's own size.

2D runs differ only in their data: each frame is prepared once with the card's `preprocessing` (`preprocess_frame`:
grey, resize to `size` = the network input, per-frame z-score) and its label resized by nearest neighbour; training
takes the whole resized frame (or random `patch`es of it), with the same 2D augmentation, loss, loop, resume and DDP.
The registry's `dims` of `--model` says which kind of run it is, and the dataset's file ending must agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from agn_cli.errors import AgnError
from agn_cli.models.attention_gate import NORMS
from agn_cli.models.registry import get_entry, list_models
from agn_cli.models.unet import LEVELS
from agn_cli.runtime.checkpoint import ModelCard
from agn_cli.train import distributed as D
from agn_cli.train.augment import AugmentConfig, augment_sample
from agn_cli.train.cache import CachedCase, cache_cases, foreground_normalisation, load_cached
from agn_cli.train.datasets import SegDataset, check_case, load_dataset, split_cases
from agn_cli.train.loop import TrainTask, run_training
from agn_cli.train.losses import DEEP_SUPERVISION_MODES, DiceCELoss, deep_supervision_loss
from agn_cli.train.patches import choose_patch_origin, extract_patch
from agn_cli.train.run_state import RunConfig
from agn_cli.train.schedule import SCHEDULES, make_scheduler

SEG_MODELS = tuple(list_models("segmentation"))  # attention-unet3d, unet3d, unet2d, attention-unet2d
# How 2D frames become network inputs (the card's `preprocessing` with `size` added): grey as agn classify does, area
# interpolation (frames are mostly shrunk, and area averaging does not alias the speckle), per-frame z-score.
FRAME_PREPROCESSING: dict[str, Any] = {"grey": "mean", "interpolation": "area", "zscore": True}


@dataclass
class SegTrainConfig(RunConfig):
    model: str = "attention-unet3d"
    base_filters: int = 16
    norm: str = "batch"
    steps_per_epoch: int = 250
    patch: tuple[int, ...] = (160, 160, 96)  # (x, y, z) voxels; 2D models: (rows, cols) within `size`
    spacing: tuple[float, float, float] = (2.0, 2.0, 2.0)
    size: tuple[int, int] | None = None  # 2D models: (rows, cols) every frame is resized to (the network input)
    val_dataset: str | None = None  # validate on this dataset (same layout and labels); the training one is used whole
    schedule: str = "poly"
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

    TUPLE_FIELDS: ClassVar[tuple[str, ...]] = ("patch", "spacing", "size")


class PatchSampler(Dataset):
    """Map-style dataset over global sample indices; item k is fully determined by (seed, k).

    `normalisation`: the CT window applied to each HU patch; None for frames, which are cached normalised."""

    def __init__(
        self,
        cases: Sequence[CachedCase],
        patch: Sequence[int],
        normalisation: dict[str, Any] | None,
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
        if self.norm is None:  # a frame: patches lie inside it (the check keeps patch <= size); a copy, not the mmap
            image = np.array(extract_patch(case.image(), origin, self.patch))
        else:
            image = normalise_ct(extract_patch(case.image(), origin, self.patch, fill=AIR_HU), self.norm)
        label = extract_patch(case.label(), origin, self.patch)
        img_t, lab_t = augment_sample(torch.from_numpy(image)[None], torch.from_numpy(label.astype(np.int64)), rng, self.augment)
        return img_t, lab_t


def case_probabilities(
    net: torch.nn.Module, image_hu: np.ndarray, normalisation: dict[str, Any], patch: Sequence[int], device: torch.device
) -> torch.Tensor:
    """Softmax probabilities (C, *shape) of a model-resolution HU volume exactly as `agn segment` computes them:
    normalised, padded with air to the patch, Gaussian-blended windows (`predict_volume`), cropped back."""
    from agn_cli.ct.preprocess import normalise_ct, pad_to_patch
    from agn_cli.ct.segmenter import SegmentOptions
    from agn_cli.ct.sliding_window import predict_volume

    array, _ = pad_to_patch(normalise_ct(np.asarray(image_hu), normalisation), patch, normalisation)
    probs = predict_volume(net, array, patch, device=device, overlap=SegmentOptions().overlap).probabilities
    return probs[(slice(None), *(slice(0, s) for s in image_hu.shape))]


def seg_model_dims(model: str) -> int:
    """2 or 3: the registry's dimensionality of a segmentation network; AgnError for other names."""
    if model not in SEG_MODELS:
        raise AgnError(f"unknown segmentation model '{model}'; use {', '.join(SEG_MODELS[:-1])} or {SEG_MODELS[-1]}")
    return get_entry(model).dims


def frame_labels(
    net: torch.nn.Module, image: np.ndarray, preprocessing: dict[str, Any], device: torch.device
) -> np.ndarray:
    """Label ids (rows, cols) of one frame at its own size, as `agn measure` computes them: the card's
    preprocessing, softmax at network size, probabilities resized back to the frame, argmax."""
    from agn_cli.us.frame_segmentation import network_probabilities, to_frame

    probs, _ = network_probabilities(net, [image], preprocessing, device)
    return to_frame(probs[0], image.shape[:2]).argmax(0)


class SegTask(TrainTask):
    """Segmentation: data, network, loss and validation of `agn train seg`."""

    score = "val_dice_mean"
    dims = 3  # of the network (and so the data); `check` reads it from the registry

    def check(self, cfg: SegTrainConfig, world_size: int) -> None:
        self.dims = seg_model_dims(cfg.model)
        if cfg.norm not in NORMS:
            raise AgnError(f"--norm '{cfg.norm}' must be one of {', '.join(NORMS)}")
        if len(cfg.patch) != self.dims:
            raise AgnError(f"{cfg.model} is a {self.dims}D network: give --patch as {'ROWSxCOLS' if self.dims == 2 else 'XxYxZ'}")
        if min(cfg.patch) < 1 or min(cfg.spacing) <= 0:
            raise AgnError("--patch and --spacing must be positive")
        if self.dims == 2:
            if cfg.size is None or len(cfg.size) != 2 or min(cfg.size) < 1:
                raise AgnError(f"{cfg.model} needs --size ROWSxCOLS, the network input every frame is resized to")
            if any(p > s for p, s in zip(cfg.patch, cfg.size)):
                raise AgnError(f"--patch {'x'.join(map(str, cfg.patch))} is larger than --size "
                               f"{'x'.join(map(str, cfg.size))}; patches are cut from the resized frame")
        if any(not 0 <= a < self.dims for a in AugmentConfig.from_dict(cfg.augment).flip_axes):
            raise AgnError(f"--flip names an axis a {self.dims}D patch does not have")
        pooling = 2 ** (LEVELS - 1)  # input voxels per bottleneck voxel along an axis
        one_voxel = all(math.ceil(p / pooling) == 1 for p in cfg.patch)
        patch = "x".join(map(str, cfg.patch))
        if cfg.norm == "instance" and one_voxel:
            raise AgnError(
                f"--norm instance needs a bottleneck of more than one voxel, but --patch {patch} "
                f"pools to {'x'.join('1' * self.dims)}: use a patch above {pooling} on at least one axis"
            )
        if one_voxel and cfg.batch_size // (world_size * cfg.accumulate) == 1:
            raise AgnError(
                f"patch {patch} leaves 1 bottleneck voxel, which batch norm cannot train on with one "
                f"sample per micro-batch; use a patch over {pooling} voxels on some axis or more samples per rank"
            )
        if cfg.deep_supervision not in DEEP_SUPERVISION_MODES:
            raise AgnError(f"--deep-supervision must be one of {', '.join(DEEP_SUPERVISION_MODES)}")
        if cfg.schedule not in SCHEDULES:
            raise AgnError(f"--schedule '{cfg.schedule}' must be {', '.join(SCHEDULES[:-1])} or {SCHEDULES[-1]}")
        if cfg.dice_weight <= 0 and cfg.ce_weight <= 0:
            raise AgnError("at least one of the Dice and cross-entropy weights must be positive")

    def _dataset(self, path: str, model: str) -> SegDataset:
        ds = load_dataset(path)
        if ds.problems:
            raise AgnError(f"{ds.problems[0]} (run 'agn data check {path}' for all problems)")
        if len(ds.channels) != 1:
            raise AgnError(f"{ds.root} has {len(ds.channels)} channels; agn train seg supports single-channel images")
        if ds.dims != self.dims:
            kind = f"2D frames ({ds.file_ending})" if ds.dims == 2 else f"3D volumes ({ds.file_ending})"
            fits = " or ".join(m for m in SEG_MODELS if get_entry(m).dims == ds.dims)
            raise AgnError(f"{ds.root} holds {kind} but {model} is a {self.dims}D network; use --model {fits}")
        return ds

    def prepare(self, cfg: SegTrainConfig, ctx: D.DistContext, run: Path, log: Callable[[str], None]) -> None:
        ds = self._dataset(cfg.dataset, cfg.model)
        by_id = {c.case_id: c for c in ds.cases}
        if cfg.val_dataset:
            val_ds = self._dataset(cfg.val_dataset, cfg.model)
            if val_ds.labels != ds.labels:
                raise AgnError(f"--val-dataset {val_ds.root} has labels {val_ds.labels}, the training dataset "
                               f"{ds.labels}; both need the same ids and names")
            train_ids, val = sorted(by_id), list(val_ds.cases)
        else:
            train_ids, val_ids = split_cases(list(by_id), cfg.val_fraction, cfg.fold, cfg.folds, cfg.seed)
            val = [by_id[i] for i in val_ids]
        if cfg.max_train_cases:
            train_ids = train_ids[: cfg.max_train_cases]
        train = [by_id[i] for i in train_ids]
        cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else run / "cache"
        if self.dims == 2:
            # frames are validated at their own size, read as users' frames are: only training frames are cached
            settings: Any = {**FRAME_PREPROCESSING, "size": [int(v) for v in cfg.size]}
            to_cache, where = train, f"frames resized to {'x'.join(map(str, cfg.size))}"
        else:
            settings, to_cache, where = cfg.spacing, train + val, f"cases at {cfg.spacing} mm"
        if ctx.is_main:
            log(f"checking and preparing {len(to_cache)} {where} (cached in {cache_dir})")
        failed: AgnError | None = None
        try:  # every case is checked (check_case) before it is cached: a pair data check rejects stops the run here
            cache_cases(to_cache, cache_dir, settings, ds.labels, ctx.rank, ctx.world_size)
            if self.dims == 2:
                for i, case in enumerate(val):
                    problems = check_case(case, ds.labels).problems if i % ctx.world_size == ctx.rank else []
                    if problems:
                        raise AgnError(f"{problems[0]} (run 'agn data check' on the dataset for all problems)")
        except AgnError as exc:
            failed = exc
        if ctx.all_reduce_sum(torch.tensor([float(failed is not None)]))[0] > 0:  # no rank is left waiting
            raise failed or AgnError("another rank found a problem in the dataset (its message is above)")
        ctx.barrier()
        self.train_cases = [load_cached(c, cache_dir, settings) for c in train]
        self.patch = tuple(int(p) for p in cfg.patch)
        self.dataset, self.labels = ds, dict(ds.labels)
        self.val_source = f"--val-dataset {val_ds.name} ({val_ds.root})" if cfg.val_dataset else ""
        if self.dims == 2:
            self.val_cases: list[Any] = val  # Case: read whole at validation time
            self.preprocessing = settings
            self.normalisation = None
        else:
            self.val_cases = [load_cached(c, cache_dir, settings) for c in val]
            self.normalisation = foreground_normalisation(self.train_cases)
        small = sum(any(s < p for s, p in zip(c.shape, self.patch)) for c in self.train_cases)
        if small and ctx.is_main:
            log(f"{small} of {len(self.train_cases)} training volumes are smaller than the patch "
                f"{'x'.join(map(str, self.patch))} on some axis: their patches are padded (air, background label)")
        self.augment = AugmentConfig.from_dict(cfg.augment)
        self.sampler = PatchSampler(self.train_cases, self.patch, self.normalisation, cfg.seed, cfg.p_foreground,
                                    self.augment)
        self.steps = int(cfg.steps_per_epoch)
        self.has_validation = bool(self.val_cases)

    def build(self, cfg: SegTrainConfig, log: Callable[[str], None]) -> torch.nn.Module:
        from agn_cli.models import create_model

        self.model_kwargs = {"in_channels": 1, "num_classes": len(self.labels), "base_filters": cfg.base_filters,
                             "norm": cfg.norm}
        return create_model(cfg.model, **self.model_kwargs)

    def scheduler(self, cfg: SegTrainConfig, optimizer: torch.optim.Optimizer) -> Any:
        return make_scheduler(optimizer, cfg.schedule, cfg.epochs, step_size=cfg.step_size, gamma=cfg.gamma)

    def batch_loss(self, cfg: SegTrainConfig, forward: torch.nn.Module, device: torch.device) -> Callable:
        """Dice + cross-entropy on the fused output, plus the side outputs' losses with `--deep-supervision aux`."""
        criterion = DiceCELoss(cfg.dice_weight, cfg.ce_weight, cfg.include_background)

        def loss(batch) -> torch.Tensor:
            x, y = batch
            fused, sides = forward(x.to(device, non_blocking=True))
            return deep_supervision_loss(criterion, fused, sides, y.to(device, non_blocking=True), cfg.deep_supervision)

        return loss

    def card(self, cfg: SegTrainConfig, net: torch.nn.Module) -> ModelCard:
        ds, aug = self.dataset, self.augment
        split = f", fold {cfg.fold} of {cfg.folds}" if cfg.fold is not None else f", val fraction {cfg.val_fraction}"
        if self.val_source:
            split = f", validation on {self.val_source}"
        if self.dims == 2:
            size = "x".join(map(str, cfg.size))
            patch = "whole frames" if list(self.patch) == list(cfg.size) else f"patches {'x'.join(map(str, self.patch))}"
            return ModelCard(
                architecture=cfg.model,
                model_kwargs=self.model_kwargs,
                task="segmentation",
                labels=dict(ds.labels),
                normalisation={"type": "zscore-per-image"},
                patch_size=[int(v) for v in cfg.size],  # (rows, cols): inference runs on the whole resized frame
                # (rows, cols) array axes flipped in training: 1 mirrors left-right, 0 up-down
                mirror_axes=list(aug.flip_axes) if aug.p_flip > 0 else [],
                preprocessing=dict(self.preprocessing),
                training_data=(
                    f"{ds.name} ({ds.layout} 2D layout, {ds.root}): {len(self.train_cases)} training / "
                    f"{len(self.val_cases)} validation frames{split}, seed {cfg.seed}; frames resized to {size}"
                ),
                source=(f"agn train seg ({cfg.epochs} epochs x {cfg.steps_per_epoch} steps, batch {cfg.batch_size}, "
                        f"{patch})"),
            )
        return ModelCard(
            architecture=cfg.model,
            model_kwargs=self.model_kwargs,
            task="segmentation",
            labels=dict(ds.labels),
            spacing=[float(s) for s in cfg.spacing],
            normalisation=self.normalisation,
            patch_size=list(self.patch),
            mirror_axes=list(aug.flip_axes) if aug.p_flip > 0 else [],
            preprocessing={"orientation": "LPS", "resampling": "linear image, nearest label"},
            training_data=(
                f"{ds.name} ({ds.layout} layout, {ds.root}): {len(self.train_cases)} training / "
                f"{len(self.val_cases)} validation cases{split}, seed {cfg.seed}"
            ),
            source=f"agn train seg ({cfg.epochs} epochs x {cfg.steps_per_epoch} steps, batch {cfg.batch_size})",
        )

    def _prediction(self, net: torch.nn.Module, case: Any, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
        """(predicted labels, reference labels) of one validation case, as users' inference would predict it."""
        if self.dims == 2:
            checked = check_case(case, self.labels)
            if checked.problems:
                raise AgnError(checked.problems[0])
            label = np.asarray(checked.label)
            return frame_labels(net, checked.image, self.preprocessing, device), label
        pred = case_probabilities(net, case.image(), self.normalisation, self.patch, device).argmax(0).numpy()
        return pred, np.asarray(case.label())

    def validate(self, net: torch.nn.Module, ctx: D.DistContext, precision: str) -> dict[str, float]:
        """Per-class Dice (`metrics.segmentation.dice_per_class`) averaged over the validation cases that hold the
        class, each rank taking a share of the cases."""
        from agn_cli.metrics.segmentation import dice_per_class

        classes = [c for c in sorted(self.labels) if c > 0]
        net.eval()
        sums = torch.zeros(len(classes), dtype=torch.float64)
        counts = torch.zeros(len(classes), dtype=torch.float64)
        for i, case in enumerate(self.val_cases):
            if i % ctx.world_size != ctx.rank:
                continue
            pred, label = self._prediction(net, case, ctx.device)
            for c, d in enumerate(dice_per_class(pred, label, classes)):
                if not math.isnan(d):
                    sums[c] += d
                    counts[c] += 1
        sums, counts = ctx.all_reduce_sum(sums), ctx.all_reduce_sum(counts)
        net.train()
        with np.errstate(invalid="ignore", divide="ignore"):
            dice = (sums / counts).numpy()
        row = {"val_dice_mean": float(np.nanmean(dice)) if not np.all(np.isnan(dice)) else float("nan")}
        row.update({f"val_dice_{self.labels[c]}": float(d) for c, d in zip(classes, dice)})
        return row

    def describe(self, row: dict[str, Any]) -> str:
        return f"val Dice {row['val_dice_mean']:.4f}"

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"patch": list(self.patch), "normalisation": self.normalisation}
        if self.dims == 2:
            out["preprocessing"] = self.preprocessing
        return out


def train_seg(cfg: SegTrainConfig, **options: Any) -> dict[str, Any]:
    """Train a segmentation network with the shared loop; `options` are `run_training`'s (resume, overwrite, ...)."""
    return run_training(SegTask(), cfg, **options)
