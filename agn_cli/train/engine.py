"""Pieces both trainers share: the DDP-friendly training forward, mixed precision, one optimiser step with
gradient accumulation and clipping (`TrainStep`, also what `agn bench --mode train` times), and the Rich progress
bar (stderr, rank 0 only)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from agn_cli.errors import AgnError
from agn_cli.train.schedule import make_optimizer

PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp16", "fp32")


class TrainForward(nn.Module):
    """Makes `forward` call the network's `forward_train`, so DistributedDataParallel hooks the real training graph."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor):
        return self.net.forward_train(x)


def resolve_precision(precision: str, device: torch.device) -> str:
    precision = precision.lower()
    if precision not in PRECISIONS:
        raise AgnError(f"unknown --precision '{precision}'; use {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise AgnError("--precision fp16 needs CUDA; use bf16 or fp32 on this device")
    return precision


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    return torch.amp.GradScaler(device.type if device.type == "cuda" else "cpu", enabled=precision == "fp16")


def wrap_ddp(net: nn.Module, device: torch.device, distributed: bool) -> nn.Module:
    """TrainForward wrapper, SyncBatchNorm on CUDA, and DistributedDataParallel when more than one rank."""
    wrapper: nn.Module = TrainForward(net)
    if not distributed:
        return wrapper
    if device.type == "cuda":
        wrapper = nn.SyncBatchNorm.convert_sync_batchnorm(wrapper)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(wrapper, device_ids=[device.index] if device.type == "cuda" else None)


def optimiser_step(
    wrapper: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    micro_batches: Sequence,
    loss_fn: Callable[[object], torch.Tensor],
    device: torch.device,
    precision: str,
    grad_clip: float,
) -> float:
    """Forward/backward every micro-batch (gradients averaged, DDP sync only on the last), clip, step.

    Returns the mean loss of this rank's micro-batches.
    """
    optimizer.zero_grad(set_to_none=True)
    n = len(micro_batches)
    total = 0.0
    for i, batch in enumerate(micro_batches):
        sync = i == n - 1 or not hasattr(wrapper, "no_sync")
        ctx = contextlib.nullcontext() if sync else wrapper.no_sync()
        with ctx:
            with autocast(device, precision):
                loss = loss_fn(batch)
            if not torch.isfinite(loss):
                raise AgnError("the loss became NaN or infinite; lower --lr, use --precision fp32 or check the labels")
            scaler.scale(loss / n).backward()
        total += float(loss.detach())
    if grad_clip and grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return total / n


@dataclass
class TrainStep:
    """One optimiser step of a task's network, loss and recipe exactly as `agn train` runs it.

    `task` supplies `scheduler(cfg, optimizer)` and `batch_loss(cfg, forward, device)`; `cfg` the optimiser settings.
    Calling the step with a list of micro-batches runs `optimiser_step` and returns the mean loss.
    """

    wrapper: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    loss_fn: Callable[[Any], torch.Tensor]
    device: torch.device
    precision: str
    grad_clip: float

    @classmethod
    def build(cls, task: Any, cfg: Any, net: nn.Module, device: torch.device, precision: str,
              distributed: bool = False, compile: bool = False) -> "TrainStep":
        try:
            optimizer = make_optimizer(trainable(net.parameters()), cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
        except ValueError as exc:
            raise AgnError(f"--optimizer: {exc}") from None
        wrapper = wrap_ddp(net, device, distributed)
        if compile:
            wrapper = torch.compile(wrapper, dynamic=False)
        return cls(wrapper, optimizer, task.scheduler(cfg, optimizer), make_scaler(device, precision),
                   task.batch_loss(cfg, wrapper, device), device, precision, cfg.grad_clip)

    def __call__(self, micro_batches: Sequence) -> float:
        return optimiser_step(self.wrapper, self.optimizer, self.scaler, micro_batches, self.loss_fn, self.device,
                              self.precision, self.grad_clip)


def make_progress(enabled: bool):
    """A Rich progress bar on stderr: loss, lr, speed, ETA; a no-op object when disabled."""
    if not enabled:
        return _NullProgress()
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("lr {task.fields[lr]}"),
        TextColumn("{task.fields[speed]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True, soft_wrap=True),
        transient=False,
    )


class _NullProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def add_task(self, *args, **kwargs) -> int:
        return 0

    def update(self, *args, **kwargs) -> None:
        return None

    def remove_task(self, *args, **kwargs) -> None:
        return None


def split_micro(indices: Sequence[int], parts: int) -> list[list[int]]:
    n = len(indices)
    return [list(indices[(n * i) // parts : (n * (i + 1)) // parts]) for i in range(parts)]


def trainable(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    return [p for p in params if p.requires_grad]
