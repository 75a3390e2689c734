"""DistributedDataParallel plumbing: the same training command runs alone or under `torchrun`.

Under torchrun (RANK/WORLD_SIZE/LOCAL_RANK in the environment) each process takes the device of its LOCAL_RANK,
joins the process group (nccl on CUDA, gloo on CPU), and gets a deterministic shard of every global batch. Only
rank 0 logs and writes checkpoints. `launch_local` re-executes the current command under `torch.distributed.run`
for `--gpus N` on one node.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist

from agn_cli.errors import AgnError
from agn_cli.runtime.device import resolve_device


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialised: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.initialised:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum across ranks (in place on a float64 CPU/CUDA copy); identity when alone."""
        if not self.initialised:
            return tensor
        t = tensor.to(self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.to(tensor.device)

    def shutdown(self) -> None:
        if self.initialised and dist.is_initialized():
            dist.destroy_process_group()
            self.initialised = False


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def elastic_restart_count() -> int:
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def setup(device_spec: str = "auto") -> DistContext:
    """Join the process group when launched by torchrun, else a single-process context on `device_spec`."""
    if not under_torchrun() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistContext(device=resolve_device(device_spec))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    base = resolve_device(device_spec)
    if base.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise AgnError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) here; "
                "lower --nproc_per_node to the number of GPUs"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif base.type == "cpu":
        device, backend = torch.device("cpu"), "gloo"
    else:
        raise AgnError(f"distributed training supports CUDA and CPU, not {base.type}; use --device cuda or cpu")
    if not dist.is_initialized():
        kwargs = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world, **kwargs)
    return DistContext(rank, world, local_rank, device, True)


def shard(indices: Sequence[int], rank: int, world_size: int) -> list[int]:
    """Rank r's contiguous share of a global batch; sizes differ by at most one."""
    n = len(indices)
    start = (n * rank) // world_size
    stop = (n * (rank + 1)) // world_size
    return list(indices[start:stop])


def launch_local(nproc: int, argv: Sequence[str]) -> int:
    """Run `python -m agn_cli <argv>` under torch.distributed.run with `nproc` processes on this node."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "agn_cli",
        *argv,
    ]
    return subprocess.call(cmd)


def strip_gpus_option(argv: Sequence[str]) -> list[str]:
    """The command line without `--gpus N` / `--gpus=N`, for the re-launched processes."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--gpus":
            skip = True
            continue
        if arg.startswith("--gpus="):
            continue
        out.append(arg)
    return out
