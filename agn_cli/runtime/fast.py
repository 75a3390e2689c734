"""Fast inference path: same answers as the plain fp32 eager model, in less time.

`prepare_model(model, device, fast=True)` returns a *new* inference-only module (the caller's training model is
never touched) whose forward takes the same arguments as the original (`x`, `return_attention=...`) and returns
float32 outputs in the default memory format, so every caller can switch between the fast and the plain path
without other changes. What the fast path does, and why:

* BatchNorm folded into the preceding convolution (eval statistics): one op instead of two full passes over
  every feature map; exact up to float rounding.
* channels-last memory format (`channels_last` / `channels_last_3d`): oneDNN (CPU) and cuDNN (GPU) run their
  fastest convolution kernels in NHWC / NDHWC and skip layout reorders around every convolution.
* `torch.inference_mode()`: no autograd bookkeeping.
* bf16: on CUDA, 3D networks run with bf16 weights and activations (`bf16_weights`) in the default NCDHW layout,
  2D networks under autocast in channels-last; on CPU autocast, only where the processor has native bf16 dot
  products (AVX512-BF16 or AMX) (see `cpu_bf16_supported` and `FastOptions`). Why not autocast for 3D on CUDA:
  autocast runs trilinear upsampling in fp32, so every skip concatenation is promoted to fp32 and cast back, and
  that cost 31 % of the Attention U-Net's GPU time on an H100 (channels-last upsampling kernels were 3x slower
  than NCDHW ones); measured there, 160x160x96 forward with CUDA graphs: autocast + channels-last 10.8 ms,
  bf16 weights + NCDHW 8.0 ms (fp32 eager 19.9 ms).
* `torch.compile` where it pays (opt-in on CPU, where compiling takes minutes; see `FastOptions.compile`), with a
  clean fallback to the eager fast path when it is unavailable or fails.
* CUDA graphs for repeated fixed shapes (CUDA only, guarded; falls back to the plain call on any failure).

`prepare_model(model, device, fast=False)` is the reference: the model moved to `device`, fp32, eval mode.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


# --------------------------------------------------------------------------------------------- capability probes


def cpu_flags() -> set[str]:
    """The processor's feature flags from /proc/cpuinfo (empty where that file does not exist)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_bf16_supported() -> bool:
    """True where the CPU computes bf16 dot products natively (AVX512-BF16 or AMX-BF16) and oneDNN can use them.

    Without native support bf16 is emulated and slower than fp32, so the fast path keeps fp32 there.
    """
    flags = cpu_flags()
    native = bool({"avx512_bf16", "amx_bf16"} & flags)
    try:
        mkldnn_ok = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - probe only
        mkldnn_ok = False
    return native and mkldnn_ok


def compile_available() -> bool:
    """torch.compile exists and is not disabled by the environment (AGN_NO_COMPILE=1)."""
    return hasattr(torch, "compile") and os.environ.get("AGN_NO_COMPILE", "") not in ("1", "true", "yes")


# ------------------------------------------------------------------------------------------------ BN folding


@torch.no_grad()
def _fused_conv(conv: nn.Module, bn: nn.Module) -> nn.Module:
    """A copy of `conv` whose weights absorb the eval-mode BatchNorm `bn` (computed in float64, then cast back)."""
    fused = copy.deepcopy(conv)
    w = conv.weight.double()
    b = conv.bias.double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64, device=w.device)
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma * torch.rsqrt(var + bn.eps)
    fused.weight = nn.Parameter((w * scale.reshape(-1, *([1] * (w.dim() - 1)))).to(conv.weight.dtype), requires_grad=False)
    fused.bias = nn.Parameter(((b - mean) * scale + beta).to(conv.weight.dtype), requires_grad=False)
    return fused


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (
        isinstance(conv, _CONV)
        and isinstance(bn, _BN)
        and bn.track_running_stats
        and bn.running_mean is not None
        and bn.running_var is not None
        and conv.out_channels == bn.num_features
        and conv.groups >= 1
    )


def fold_batchnorm(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold every conv -> BatchNorm pair that sits next to each other in an `nn.Sequential` (eval statistics).

    Works on a deep copy unless `inplace`; the folded model is meant for inference only (BN is gone, so training it
    would no longer normalise). Returns the folded model; `folded_batchnorm_count` on it says how many pairs.
    """
    target = model if inplace else copy.deepcopy(model)
    target.eval()
    count = 0
    for module in list(target.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules.keys())
        for first, second in zip(names, names[1:]):
            conv, bn = module._modules[first], module._modules[second]
            if conv is not None and bn is not None and _foldable(conv, bn):
                module._modules[first] = _fused_conv(conv, bn)
                module._modules[second] = nn.Identity()
                count += 1
    target.folded_batchnorm_count = count  # type: ignore[attr-defined]
    return target


# --------------------------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class FastOptions:
    """What the fast path applies; `resolve_options` fills the per-device defaults.

    dtype: "fp32" or "bf16" (bf16 = autocast: convolutions in bf16, numerically sensitive ops kept in fp32).
    channels_last: run in NHWC / NDHWC memory format.
    fold_bn: fold BatchNorm into the preceding convolutions.
    compile: wrap the network in torch.compile (falls back to eager when unavailable or failing).
    cuda_graphs: capture one CUDA graph per input shape and replay it (CUDA only; checked against eager once).
    bf16_weights: with dtype bf16, cast the network and its input to bf16 instead of using autocast (every op,
        upsampling included, runs in bf16; outputs are still returned as float32).
    """

    dtype: str = "fp32"
    channels_last: bool = True
    fold_bn: bool = True
    compile: bool = False
    compile_mode: str | None = None
    cuda_graphs: bool = False
    bf16_weights: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype,
            "bf16_weights": self.bf16_weights,
            "channels_last": self.channels_last,
            "fold_bn": self.fold_bn,
            "compile": self.compile,
            "compile_mode": self.compile_mode,
            "cuda_graphs": self.cuda_graphs,
        }


DTYPES = ("fp32", "bf16")


def _env_flag(name: str) -> bool | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    return value.strip().lower() not in ("0", "false", "no", "off")


def resolve_options(
    device: torch.device | str,
    dtype: str | None = None,
    compile: bool | None = None,
    cuda_graphs: bool | None = None,
    channels_last: bool | None = None,
    dims: int | None = None,
    bf16_weights: bool | None = None,
) -> FastOptions:
    """Per-device defaults of the fast path; explicit arguments win. `dims`: the network's spatial dimensions.

    CPU: fp32 -> bf16 only where the processor does bf16 natively (measured ~2x on an AVX512-BF16 EPYC);
    `AGN_CPU_BF16=0` keeps fp32. torch.compile is opt-in on CPU: compiling the 3D U-Net took ~150 s on 2 cores and
    was not faster there. CUDA: bf16 autocast, channels-last, CUDA graphs per shape; torch.compile is opt-in
    (compiling costs tens of seconds, which one `agn segment` call never earns back).
    """
    device = torch.device(device)
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}")
    if device.type == "cuda":
        volumetric = dims == 3  # 3D: bf16 weights in NCDHW (measured faster on an H100, see the module docstring)
        opts = FastOptions(dtype=dtype or "bf16", channels_last=not volumetric, compile=False, cuda_graphs=True,
                           bf16_weights=volumetric)
    elif device.type == "cpu":
        if dtype is None:
            wanted = _env_flag("AGN_CPU_BF16")
            dtype = "bf16" if (wanted if wanted is not None else True) and cpu_bf16_supported() else "fp32"
        opts = FastOptions(dtype=dtype, channels_last=True, compile=False, cuda_graphs=False)
    else:  # mps and others: only the transforms that are safe everywhere
        opts = FastOptions(dtype=dtype or "fp32", channels_last=False, compile=False, cuda_graphs=False)
    if compile is not None:
        opts = replace(opts, compile=bool(compile) and compile_available())
    if cuda_graphs is not None:
        opts = replace(opts, cuda_graphs=bool(cuda_graphs) and device.type == "cuda")
    if channels_last is not None:
        opts = replace(opts, channels_last=bool(channels_last))
    if bf16_weights is not None:
        opts = replace(opts, bf16_weights=bool(bf16_weights))
    if opts.dtype != "bf16":
        opts = replace(opts, bf16_weights=False)
    return opts


# --------------------------------------------------------------------------------------------------- running


def _memory_format(dim: int) -> torch.memory_format | None:
    return {4: torch.channels_last, 5: torch.channels_last_3d}.get(dim)


def _to_output(obj: Any) -> Any:
    """float32, default memory format, detached from any graph buffer: what the plain eager model returns."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and obj.dtype != torch.float32:
            obj = obj.float()
        return obj.contiguous()
    if isinstance(obj, dict):
        return {k: _to_output(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to_output(v) for v in obj)
    return obj


def _clone(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_clone(v) for v in obj)
    return obj


def _max_abs_diff(a: Any, b: Any) -> float:
    if isinstance(a, torch.Tensor):
        return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0
    if isinstance(a, dict):
        return max((_max_abs_diff(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, (tuple, list)):
        return max((_max_abs_diff(x, y) for x, y in zip(a, b)), default=0.0)
    return 0.0


class _CudaGraphs:
    """One captured CUDA graph per (shape, dtype, flags) key; replays copy the input into a static buffer.

    Capture happens on the second call of a shape (the first warms up cuDNN autotuning), and the first replay is
    checked against an eager call; any failure or mismatch disables graphs for that key (falls back to eager).
    """

    MAX_GRAPHS = 4

    def __init__(self) -> None:
        self.graphs: dict[tuple, tuple[Any, torch.Tensor, Any]] = {}
        self.seen: set[tuple] = set()
        self.disabled: set[tuple] = set()
        self.pool = None

    def __call__(self, fn, x: torch.Tensor, key: tuple, tolerance: float):
        if key in self.disabled or (key not in self.graphs and len(self.graphs) >= self.MAX_GRAPHS):
            return fn(x)
        if key in self.graphs:
            graph, static_in, static_out = self.graphs[key]
            static_in.copy_(x)
            graph.replay()
            return _clone(static_out)
        if key not in self.seen:
            self.seen.add(key)
            return fn(x)
        try:
            static_in = x.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    fn(static_in)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()
            with torch.cuda.graph(graph, pool=self.pool):
                static_out = fn(static_in)
            graph.replay()
            reference = fn(x)
            if _max_abs_diff(static_out, reference) > tolerance:
                raise RuntimeError("CUDA graph replay differs from eager")
        except Exception as exc:  # noqa: BLE001 - any capture problem: run eagerly from now on
            log.warning("CUDA graphs disabled for input %s: %s", tuple(key[0]), exc)
            self.disabled.add(key)
            return fn(x)
        self.graphs[key] = (graph, static_in, static_out)
        return reference


class FastModel(nn.Module):
    """An inference-only wrapper whose forward applies the fast-path contexts and returns fp32 outputs.

    Call it exactly like the wrapped network: `fast(x)` -> logits, `fast(x, return_attention=True)` ->
    (logits, {name: map}). Inputs may be on any device and in any float dtype; outputs are float32, contiguous,
    on `device`. Attributes the wrapper lacks (e.g. `num_classes`, `gates`) are read from the wrapped network.
    """

    def __init__(self, net: nn.Module, device: torch.device, options: FastOptions, compiled: nn.Module | None = None):
        super().__init__()
        self.net = net
        self.device = device
        self.options = options
        self._compiled = compiled
        self._compile_checked = False
        self._graphs = _CudaGraphs() if options.cuda_graphs and device.type == "cuda" else None
        self.compile_error: str | None = None
        self.eval()

    def train(self, mode: bool = True) -> "FastModel":
        """Inference only: BatchNorm is folded, so the wrapped network always stays in eval mode."""
        return super().train(False)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            net = self._modules.get("net")
            if net is None or name.startswith("__"):
                raise
            return getattr(net, name)

    def _autocast(self):
        if self.options.dtype == "bf16" and not self.options.bf16_weights and self.device.type in ("cuda", "cpu"):
            # no weight-cast cache: parameters need no grad (nothing to cache) and CUDA graph capture forbids it
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, cache_enabled=False)
        return contextlib.nullcontext()

    def _tolerance(self) -> float:
        return 5e-2 if self.options.dtype == "bf16" else 1e-3

    def _run(self, x: torch.Tensor, return_attention: bool, kwargs: dict[str, Any]):
        net = self.net
        if self._compiled is not None:
            try:
                out = self._compiled(x, return_attention=return_attention, **kwargs)
                if not self._compile_checked:  # first compiled call: check it once against eager
                    reference = net(x, return_attention=return_attention, **kwargs)
                    if _max_abs_diff(out, reference) > self._tolerance():
                        raise RuntimeError("compiled outputs differ from eager")
                    self._compile_checked = True
                return out
            except Exception as exc:  # noqa: BLE001 - clean fallback: run the eager fast path from now on
                self.compile_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                log.warning("torch.compile failed, using the eager fast path: %s", self.compile_error)
                self._compiled = None
        return net(x, return_attention=return_attention, **kwargs)

    def forward(self, x: torch.Tensor, return_attention: bool = False, **kwargs: Any):
        x = x.to(self.device, dtype=torch.bfloat16 if self.options.bf16_weights else torch.float32, non_blocking=True)
        fmt = _memory_format(x.dim()) if self.options.channels_last else None
        if fmt is not None:
            x = x.contiguous(memory_format=fmt)
        with torch.inference_mode(), self._autocast():
            if self._graphs is not None and not kwargs:
                key = (tuple(x.shape), bool(return_attention))
                out = self._graphs(lambda t: self._run(t, return_attention, {}), x, key, self._tolerance())
            else:
                out = self._run(x, return_attention, kwargs)
        return _to_output(out)

    def describe(self) -> dict[str, Any]:
        """What this fast path does, for benchmark records."""
        info = self.options.as_dict()
        info["folded_batchnorm"] = int(getattr(self.net, "folded_batchnorm_count", 0))
        info["compiled"] = self._compiled is not None
        if self.compile_error:
            info["compile_error"] = self.compile_error
        return info


def prepare_model(
    model: nn.Module,
    device: torch.device | str = "cpu",
    fast: bool = True,
    *,
    dtype: str | None = None,
    compile: bool | None = None,
    cuda_graphs: bool | None = None,
    channels_last: bool | None = None,
    bf16_weights: bool | None = None,
) -> nn.Module:
    """A model ready for inference on `device`.

    fast=False: the reference path - `model` itself moved to `device`, fp32, eval mode (plain eager PyTorch).
    fast=True: a `FastModel` around a folded, channels-last copy (the caller's `model` is not modified) that gives
    the same outputs within bf16/fp32 rounding; keyword arguments override the per-device defaults
    (`resolve_options`).
    """
    device = torch.device(device)
    if not fast:
        return model.to(device=device, dtype=torch.float32).eval()
    weight_dims = {m.weight.dim() for m in model.modules() if isinstance(m, _CONV)}  # {5}: 3D, {4}: 2D network
    spatial_dims = next(iter(weight_dims)) - 2 if len(weight_dims) == 1 else None
    options = resolve_options(device, dtype=dtype, compile=compile, cuda_graphs=cuda_graphs, channels_last=channels_last,
                              dims=spatial_dims, bf16_weights=bf16_weights)
    was_training = model.training
    net = copy.deepcopy(model).float().eval()
    model.train(was_training)
    net = fold_batchnorm(net, inplace=True) if options.fold_bn else net  # folded in fp32, then cast
    for p in net.parameters():
        p.requires_grad_(False)
    net = net.to(device, dtype=torch.bfloat16 if options.bf16_weights else torch.float32)
    if options.channels_last:
        if spatial_dims == 3:
            net = net.to(memory_format=torch.channels_last_3d)
        elif spatial_dims == 2:
            net = net.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels once
    compiled = None
    if options.compile:
        try:
            compiled = torch.compile(net, mode=options.compile_mode, dynamic=False)
        except Exception as exc:  # noqa: BLE001 - unavailable backend etc.
            log.warning("torch.compile unavailable, using the eager fast path: %s", exc)
            compiled = None
    return FastModel(net, device, options, compiled)

