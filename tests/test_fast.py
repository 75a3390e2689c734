"""The fast inference path gives the plain fp32 eager answers: BN folding exact in fp32, argmax agreement >= 99.9 %
and attention maps within tolerance in bf16, the caller's model untouched, clean fallbacks."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from agn_cli.models import create_model
from agn_cli.runtime import fast as fastmod
from agn_cli.runtime.fast import FastModel, fold_batchnorm, prepare_model, resolve_options

# Stated tolerances (README): attention maps max |fast - eager| <= ATT_REL * max |eager| (bf16) and 1e-4 * that in fp32.
ATT_REL_BF16 = 0.02
FP32_TOL = 1e-4

CASES = {
    "attention-unet3d": (dict(base_filters=4), (1, 1, 40, 36, 28)),
    "ag-sononet-8": ({}, (6, 1, 64, 80)),
    "sononet16-original": ({}, (6, 1, 64, 80)),
    "attention-unet3d-instance": (dict(base_filters=4, norm="instance"), (1, 1, 40, 36, 28)),  # nothing to fold
}
BN_CASES = [name for name in CASES if not name.endswith("-instance")]
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


def trained_ish(name: str) -> tuple[nn.Module, torch.Tensor]:
    """A seeded model whose BatchNorm statistics and affine parameters are non-trivial, and an input for it."""
    kwargs, shape = CASES[name]
    torch.manual_seed(0)
    model = create_model(name.removesuffix("-instance"), **kwargs)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _NORMS):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.momentum = 0.5
        model.train()
        for _ in range(3):
            model(torch.randn(shape) * 1.5 + 0.3)
    model.eval()
    return model, torch.randn(shape) * 1.5 + 0.3


def eager(model: nn.Module, x: torch.Tensor):
    with torch.no_grad():
        return model(x, return_attention=True)


@pytest.mark.parametrize("name", BN_CASES)
def test_fold_batchnorm_is_exact_in_fp32(name):
    model, x = trained_ish(name)
    reference, ref_att = eager(model, x)
    batchnorms = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    folded = fold_batchnorm(model)
    assert folded.folded_batchnorm_count == batchnorms  # every BN follows a convolution it folds into
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    logits, att = eager(folded, x)
    torch.testing.assert_close(logits, reference, atol=FP32_TOL, rtol=FP32_TOL)
    for key in ref_att:
        torch.testing.assert_close(att[key], ref_att[key], atol=FP32_TOL, rtol=FP32_TOL)
    # the caller's model still has its BatchNorms
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_fold_counts_every_conv_bn_pair():
    model = create_model("attention-unet3d", base_filters=4)
    bns = sum(isinstance(m, nn.BatchNorm3d) for m in model.modules())
    folded = fold_batchnorm(model)
    # 18 conv + BN in the 9 blocks, the gating signal, 3 gates x (2 heads' W + 1 head fusion)
    assert folded.folded_batchnorm_count == bns == 28
    assert not any(isinstance(m, nn.BatchNorm3d) for m in folded.modules())


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "bf16-weights"])
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.slow
def test_fast_path_matches_eager(name, dtype):
    """bf16: autocast (CPU default, CUDA 2D); bf16-weights: network and activations in bf16 (CUDA 3D default)."""
    model, x = trained_ish(name)
    reference, ref_att = eager(model, x)
    before = copy.deepcopy(model.state_dict())
    pure = dtype == "bf16-weights"
    dtype = "bf16" if pure else dtype
    prepared = prepare_model(model, "cpu", fast=True, dtype=dtype, bf16_weights=pure, channels_last=not pure)
    assert isinstance(prepared, FastModel)
    assert prepared.describe()["bf16_weights"] == pure
    assert all(p.dtype == (torch.bfloat16 if pure else torch.float32) for p in prepared.parameters())
    logits = prepared(x)
    logits2, att = prepared(x, return_attention=True)
    assert logits.dtype == torch.float32 and logits.is_contiguous() and logits.shape == reference.shape
    torch.testing.assert_close(logits, logits2)
    agree = logits.argmax(1) == reference.argmax(1)
    if name.endswith("-instance"):
        # an untrained InstanceNorm network has 1.3 % of voxels whose top two logits lie within 0.01 (BN: 0.002 %),
        # and any rounding flips such ties: decided voxels must agree, and nearly all voxels overall
        top2 = reference.topk(2, dim=1).values
        decided = (top2[:, 0] - top2[:, 1]) >= 0.05
        assert agree[decided].float().mean().item() >= 0.999 and agree.float().mean().item() >= 0.99
    else:
        assert agree.float().mean().item() >= 0.999, agree.float().mean().item()
    assert set(att) == set(ref_att)
    for key, ref in ref_att.items():
        assert att[key].dtype == torch.float32 and att[key].shape == ref.shape
        scale = float(ref.abs().max())
        tol = (ATT_REL_BF16 if dtype == "bf16" else FP32_TOL) * max(scale, 1e-6)
        assert float((att[key] - ref).abs().max()) <= tol, key
    if dtype == "fp32":
        torch.testing.assert_close(logits, reference, atol=FP32_TOL, rtol=FP32_TOL)
    # never mutates the caller's model
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(m, _NORMS) for m in model.modules())


def test_prepare_keeps_training_flag_and_delegates_attributes():
    model = create_model("ag-sononet-8")
    model.train()
    batchnorms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    prepared = prepare_model(model, "cpu")
    assert model.training  # the caller keeps training
    assert not prepared.training and not prepared.train().training
    assert prepared.num_classes == 14 and prepared.agn_name == "ag-sononet-8"
    assert "stage3" in prepared.gates
    assert all(not p.requires_grad for p in prepared.parameters())
    assert prepared.describe()["folded_batchnorm"] == batchnorms == 13  # one per convolution of the stages (3, 3, 3, 2, 2)


def test_plain_path_is_the_model_in_eval_fp32():
    model = create_model("sononet-8").train()
    plain = prepare_model(model, "cpu", fast=False)
    assert plain is model and not plain.training
    assert all(p.dtype == torch.float32 for p in plain.parameters())


def test_fast_input_dtype_and_layout_do_not_matter():
    model, x = trained_ish("ag-sononet-8")
    prepared = prepare_model(model, "cpu", dtype="fp32")
    a = prepared(x)
    b = prepared(x.double())
    c = prepared(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)


def test_resolve_options_per_device(monkeypatch):
    monkeypatch.delenv("AGN_CPU_BF16", raising=False)
    monkeypatch.setattr(fastmod, "cpu_bf16_supported", lambda: False)
    assert resolve_options("cpu").dtype == "fp32"
    monkeypatch.setattr(fastmod, "cpu_bf16_supported", lambda: True)
    assert resolve_options("cpu").dtype == "bf16"
    monkeypatch.setenv("AGN_CPU_BF16", "0")
    assert resolve_options("cpu").dtype == "fp32"
    opts = resolve_options("cpu")
    assert opts.channels_last and not opts.compile and not opts.cuda_graphs
    assert resolve_options("cuda").dtype == "bf16" and resolve_options("cuda").cuda_graphs
    # CUDA: 3D networks in bf16 weights + NCDHW, 2D under autocast in channels-last (H100 measurements, README)
    volumetric, planar = resolve_options("cuda", dims=3), resolve_options("cuda", dims=2)
    assert volumetric.bf16_weights and not volumetric.channels_last
    assert planar.channels_last and not planar.bf16_weights
    assert not resolve_options("cuda", dims=3, dtype="fp32").bf16_weights  # bf16 weights only with bf16
    assert not resolve_options("cpu").bf16_weights
    assert not resolve_options("cpu", cuda_graphs=True).cuda_graphs  # graphs are CUDA-only
    with pytest.raises(ValueError):
        resolve_options("cpu", dtype="fp16")


def test_compile_failure_falls_back_cleanly(monkeypatch):
    model, x = trained_ish("ag-sononet-8")
    reference, _ = eager(model, x)

    def broken_compile(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken_compile)
    prepared = prepare_model(model, "cpu", dtype="fp32", compile=True)
    torch.testing.assert_close(prepared(x), reference, atol=FP32_TOL, rtol=FP32_TOL)

    def compile_that_fails_at_run_time(module, **kwargs):
        def run(*args, **kw):
            raise RuntimeError("backend crashed")

        return run

    monkeypatch.setattr(torch, "compile", compile_that_fails_at_run_time)
    prepared = prepare_model(model, "cpu", dtype="fp32", compile=True)
    torch.testing.assert_close(prepared(x), reference, atol=FP32_TOL, rtol=FP32_TOL)
    assert "backend crashed" in prepared.describe()["compile_error"]
    torch.testing.assert_close(prepared(x), reference, atol=FP32_TOL, rtol=FP32_TOL)


def test_compiled_output_that_disagrees_is_rejected(monkeypatch):
    model, x = trained_ish("ag-sononet-8")
    reference, _ = eager(model, x)

    def wrong_compile(module, **kwargs):
        return lambda inp, **kw: module(inp, **kw) + 1.0

    monkeypatch.setattr(torch, "compile", wrong_compile)
    prepared = prepare_model(model, "cpu", dtype="fp32", compile=True)
    torch.testing.assert_close(prepared(x), reference, atol=FP32_TOL, rtol=FP32_TOL)
    assert "differ" in prepared.describe()["compile_error"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_fast_path_matches_eager():
    model, x = trained_ish("attention-unet3d")
    reference, ref_att = eager(model, x)
    prepared = prepare_model(model, "cuda")
    for _ in range(3):  # eager, capture, replay
        logits, att = prepared(x, return_attention=True)
        agreement = (logits.cpu().argmax(1) == reference.argmax(1)).float().mean().item()
        assert agreement >= 0.999
        for key, ref in ref_att.items():
            assert float((att[key].cpu() - ref).abs().max()) <= ATT_REL_BF16 * float(ref.abs().max())
