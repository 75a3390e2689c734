"""Device selection and CPU threading, shared by every command that runs a network."""

from __future__ import annotations

import os

import torch

from agn_cli.errors import AgnError


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn 'auto' | 'cpu' | 'cuda' | 'cuda:N' | 'mps' into a device that exists, or fail clearly."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise AgnError(f"unknown device '{spec}'; use auto, cpu, cuda, cuda:N or mps") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise AgnError(f"device '{spec}' requested but CUDA is not available; use --device cpu")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise AgnError(f"device '{spec}' does not exist ({torch.cuda.device_count()} CUDA device(s)); pick another index")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise AgnError("device 'mps' requested but Metal is not available; use --device cpu")
    elif device.type != "cpu":
        raise AgnError(f"unsupported device '{spec}'; use auto, cpu, cuda, cuda:N or mps")
    return device


def configure_cpu_threads(threads: int | None = None) -> int:
    """Set the CPU threads of torch (and OpenCV): `threads` (--threads) if given, else OMP_NUM_THREADS if set, else
    every core the process may run on (affinity-aware). On a shared machine one thread can be several times faster
    than a contended default, so both the option and the environment variable are honoured."""
    if threads is not None and threads < 1:
        raise AgnError(f"--threads must be at least 1, got {threads}")
    if threads is None:
        threads = threads_from_environment()
    if threads is None:
        try:
            threads = len(os.sched_getaffinity(0))
        except AttributeError:  # macOS / Windows
            threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    try:
        import cv2

        cv2.setNumThreads(threads)
    except ImportError:  # pragma: no cover - a dependency, but frame code is optional for CT-only uses
        pass
    return threads


def threads_from_environment() -> int | None:
    """OMP_NUM_THREADS as a positive int, or None when unset; a malformed value is an error, not ignored."""
    text = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not text:
        return None
    try:
        value = int(text.split(",")[0])  # OpenMP allows a per-level list: the first level is what torch uses
    except ValueError:
        raise AgnError(f"OMP_NUM_THREADS={text!r} is not a number of threads") from None
    if value < 1:
        raise AgnError(f"OMP_NUM_THREADS={text!r} must be at least 1")
    return value


def available_memory(device: torch.device) -> int | None:
    """Bytes a new allocation can get on `device` now (free GPU memory, MemAvailable on Linux), None if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        try:
            with open("/proc/meminfo", encoding="utf-8") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return None


# Spatial axes are clipped to this for the probe forward (real, on the CPU, batch 1): small enough to take
# milliseconds, large enough for any network's poolings; activations then scale with the voxel count.
PROBE_AXIS = 16


def _activation_bytes(model: torch.nn.Module, shape: tuple[int, ...], device: str) -> tuple[int, int]:
    """(sum, largest) bytes of the leaf modules' outputs for one forward of a copy of `model` on `shape`."""
    import copy

    probe = copy.deepcopy(model).to(device).eval()  # the same shapes as training, without batch-statistics checks
    total = largest = 0

    def count(module, inputs, output) -> None:
        nonlocal total, largest
        for tensor in output if isinstance(output, (tuple, list)) else [output]:
            if isinstance(tensor, torch.Tensor):
                size = tensor.numel() * tensor.element_size()
                total += size
                largest = max(largest, size)

    hooks = [m.register_forward_hook(count) for m in probe.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            probe(torch.zeros(shape, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return total, largest


def check_input_fits(model: torch.nn.Module, shape: tuple[int, ...], device: torch.device, train: bool = False,
                     what: str = "--size", name: str | None = None) -> int:
    """Before the real run: an input the network cannot take fails in one line, and a lower bound on the memory a
    pass needs is checked against what `device` has free. Returns that bound in bytes.

    A copy of the network runs once on the CPU with batch 1 and axes clipped to PROBE_AXIS (milliseconds); its
    activations scale with the voxel count. Only when the clipped probe fails is the full shape tried on meta
    tensors (no memory, about a second of Python), so a network that needs large inputs is not refused wrongly."""
    import math

    spatial = tuple(int(v) for v in shape[2:])
    clipped = tuple(min(v, PROBE_AXIS) for v in spatial)
    size_text = "x".join(map(str, spatial))
    try:
        try:
            total, largest = _activation_bytes(model, (1, shape[1], *clipped), "cpu")
            scale = shape[0] * math.prod(spatial) / math.prod(clipped)
        except RuntimeError:
            if clipped == spatial:
                raise
            total, largest = _activation_bytes(model, (1, shape[1], *spatial), "meta")
            scale = shape[0]
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AgnError(f"{what} {size_text} does not fit {name or type(model).__name__}: {reason}") from None
    # training keeps every activation for the backward pass; inference holds at least a layer's input and output
    needed = int((total if train else 2 * largest) * scale)
    free = available_memory(device)
    if free is not None and needed > free:
        raise AgnError(
            f"{what} {size_text} (batch {shape[0]}) needs at least {needed / 2**30:.1f} GiB on {device} "
            f"but {free / 2**30:.1f} GiB are free; use a smaller size or batch"
        )
    return needed


def device_name(device: torch.device) -> str:
    """A human-readable name for benchmark records."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        import platform

        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as fh:
                for line in fh:
                    if line.startswith("model name"):
                        name = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        return f"{name} ({os.cpu_count()} logical cores)"
    return device.type
