"""The one training loop of `agn train seg` and `agn train cls`: run folder, resume, epochs of optimiser steps over a
seeded sample stream, validation, checkpoints, metrics.csv, the best checkpoint and DDP. A task (`TrainTask`)
supplies only what differs: its data, network, loss and validation.

One epoch is `steps_per_epoch` optimiser steps of a global batch. Sample k of the run (a global index) is drawn by
the task's sampler from `default_rng([seed, k])`, so the data stream does not depend on the number of ranks,
data-loader workers or interruptions: a resumed run, or 2 ranks with half the batch each, see exactly the samples
a single uninterrupted process sees.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from agn_cli.errors import AgnError
from agn_cli.runtime.checkpoint import ModelCard
from agn_cli.train import distributed as D
from agn_cli.train.engine import TrainStep, make_progress, resolve_precision, split_micro
from agn_cli.train.run_state import (
    STATE_FILE,
    RunConfig,
    load_run,
    prepare_run_dir,
    read_config,
    save_run,
    seed_everything,
    write_config,
    write_metrics_csv,
)

RESUME_OVERRIDES = ("epochs", "device", "workers", "val_every")  # all else comes from the run's config.json


class TrainTask:
    """What a task adds to the loop. `prepare` loads its data (on every rank) and sets `sampler`, `steps` and
    `has_validation`; the other hooks are called in the order they are listed."""

    score: str = ""  # the validation metric (a metrics.csv column) that picks best.safetensors
    sampler: Dataset
    steps: int = 1
    has_validation: bool = False

    def check(self, cfg: Any, world_size: int) -> None:
        """Refuse a configuration before anything is written."""

    def prepare(self, cfg: Any, ctx: D.DistContext, run: Path, log: Callable[[str], None]) -> None:
        raise NotImplementedError

    def build(self, cfg: Any, log: Callable[[str], None]) -> nn.Module:
        raise NotImplementedError

    def scheduler(self, cfg: Any, optimizer: torch.optim.Optimizer) -> Any:
        raise NotImplementedError

    def batch_loss(self, cfg: Any, forward: nn.Module, device: torch.device) -> Callable[[Any], torch.Tensor]:
        """The loss of one (inputs, targets) micro-batch through `forward` (the network's training forward)."""
        raise NotImplementedError

    def card(self, cfg: Any, net: nn.Module) -> ModelCard:
        raise NotImplementedError

    def train_mode(self, cfg: Any, net: nn.Module) -> None:
        net.train()

    def validate(self, net: nn.Module, ctx: D.DistContext, precision: str) -> dict[str, float]:
        """metrics.csv columns (`score` among them), computed on all ranks together."""
        raise NotImplementedError

    def describe(self, row: dict[str, Any]) -> str:
        """The validation part of the epoch line."""
        return f"{self.score} {row[self.score]:.4f}"

    def summary(self) -> dict[str, Any]:
        return {}


def check_run_config(cfg: RunConfig, world_size: int) -> None:
    """The settings the loop itself uses."""
    steps = cfg.steps_per_epoch
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.accumulate < 1 or (steps is not None and steps < 1):
        raise AgnError("--epochs, --steps-per-epoch, --batch-size and --accumulate must be at least 1")
    if cfg.batch_size % (world_size * cfg.accumulate):
        raise AgnError(
            f"--batch-size {cfg.batch_size} must be divisible by ranks x --accumulate = {world_size} x {cfg.accumulate}; "
            "change one of them"
        )
    if cfg.optimizer not in ("adam", "sgd"):
        raise AgnError(f"--optimizer '{cfg.optimizer}' must be adam or sgd")


def run_training(
    task: TrainTask,
    cfg: RunConfig,
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
    fill = torch.utils.deterministic.fill_uninitialized_memory
    try:
        return _run(task, cfg, ctx, resume, overwrite, progress, log or (lambda m: None), stop_after)
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.utils.deterministic.fill_uninitialized_memory = fill
        ctx.shutdown()


def _worker_init(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    base = info.seed if info is not None else worker_id
    np.random.seed(base % 2**32)


def _epoch_loader(sampler: Dataset, cfg: RunConfig, epoch: int, steps: int, ctx: D.DistContext) -> DataLoader:
    """This rank's micro-batches of the epoch's global sample indices."""
    batches = []
    for step in range(steps):
        base = (epoch * steps + step) * cfg.batch_size
        mine = D.shard(list(range(base, base + cfg.batch_size)), ctx.rank, ctx.world_size)
        batches.extend(split_micro(mine, cfg.accumulate))
    return DataLoader(
        sampler,
        batch_sampler=batches,
        num_workers=cfg.workers,
        worker_init_fn=_worker_init if cfg.workers else None,
        pin_memory=ctx.device.type == "cuda",
        persistent_workers=False,
    )


def _run(task: TrainTask, cfg, ctx: D.DistContext, resume, overwrite, progress, log, stop_after) -> dict[str, Any]:
    run = Path(cfg.output).expanduser().resolve()
    if not resume and D.elastic_restart_count() > 0 and (run / STATE_FILE).is_file():
        resume, overwrite = True, False  # an elastic restart continues the run it belongs to
    if resume and (run / "config.json").is_file():
        saved = read_config(run / "config.json")
        for key in RESUME_OVERRIDES:
            saved[key] = getattr(cfg, key)
        cfg = type(cfg).from_dict(saved)
    check_run_config(cfg, ctx.world_size)
    task.check(cfg, ctx.world_size)
    prepare_run_dir(run, resume, overwrite, ctx.is_main)
    ctx.barrier()
    device = ctx.device
    precision = resolve_precision(cfg.precision, device)
    seed_everything(cfg.seed, cfg.deterministic and device.type == "cpu", device)
    task.prepare(cfg, ctx, run, log)

    torch.manual_seed(cfg.seed)
    net = task.build(cfg, log).to(device)
    step = TrainStep.build(task, cfg, net, device, precision, ctx.distributed)
    start_epoch, best_score, rows = 0, -math.inf, []
    if resume:
        start_epoch, best_score, rows = load_run(run, net, step)
        if ctx.is_main:
            log(f"resuming {run} at epoch {start_epoch + 1}")
    elif ctx.is_main:
        write_config(run / "config.json", dataclasses.asdict(cfg))
    card = task.card(cfg, net)

    end_epoch = cfg.epochs if not stop_after else min(cfg.epochs, start_epoch + stop_after)
    last: dict[str, Any] = {}
    with make_progress(progress and ctx.is_main) as bar:
        for epoch in range(start_epoch, end_epoch):
            task.train_mode(cfg, net)
            lr = step.optimizer.param_groups[0]["lr"]
            bar_task = bar.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=task.steps, loss="-", lr=f"{lr:.2e}", speed="")
            it = iter(_epoch_loader(task.sampler, cfg, epoch, task.steps, ctx))
            t0, losses = time.perf_counter(), []
            for i in range(task.steps):
                losses.append(step([next(it) for _ in range(cfg.accumulate)]))
                speed = f"{(i + 1) / (time.perf_counter() - t0):.2f} it/s"
                bar.update(bar_task, advance=1, loss=f"{losses[-1]:.4f}", speed=speed)
            step.scheduler.step()
            seconds = time.perf_counter() - t0
            loss_sum = ctx.all_reduce_sum(torch.tensor([sum(losses), len(losses)], dtype=torch.float64))
            train_loss = float(loss_sum[0] / loss_sum[1])
            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "lr": lr,
                "seconds": seconds,
                "samples_per_s": task.steps * cfg.batch_size / max(seconds, 1e-9),
            }
            # validation epochs depend on the run, not on the session, so a resumed run validates as an uninterrupted one
            validated = task.has_validation and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs)
            if validated:
                row.update(task.validate(net, ctx, precision))
                score = row[task.score] if not math.isnan(row[task.score]) else -math.inf
            else:
                score = -train_loss if not task.has_validation else -math.inf
            improved = score > best_score
            best_score = max(best_score, score)
            rows.append(row)
            if ctx.is_main:
                save_run(run, net, card, step, epoch + 1, best_score, {k: v for k, v in row.items() if k != "seconds"},
                         improved)
                write_metrics_csv(run / "metrics.csv", rows)
                message = f"epoch {epoch + 1}/{cfg.epochs}: loss {train_loss:.4f}"
                if validated:
                    message += f", {task.describe(row)}"
                log(message + (" (best)" if improved else ""))
            ctx.barrier()
            bar.remove_task(bar_task)
            last = row
    return {
        "run": str(run),
        "epochs": cfg.epochs,
        "started_at_epoch": start_epoch,
        "finished_epoch": end_epoch,
        "best_score": best_score,
        "last": last,
        "world_size": ctx.world_size,
        **task.summary(),
    }
