"""The paper's networks: exact sizes, any input size, explicit attention maps, gradients, determinism."""

from __future__ import annotations

import pytest
import torch

from agn_cli.models import AGSonoNet, UNet, count_parameters, create_model, list_models

# Exact counts of the authors' released implementation (paper Tables 1 and 5 round them).
PAPER_COUNTS = {
    "unet3d": 5_888_004,
    "attention-unet3d": 6_473_322,
    "sononet-8": 162_954,
    "sononet-16": 647_914,
    "sononet-32": 2_583_978,
    "ag-sononet-8": 177_068,
    "ag-sononet-16": 700_716,
    "ag-sononet-32": 2_787_884,
}


@pytest.mark.parametrize("name,expected", sorted(PAPER_COUNTS.items()))
def test_exact_parameter_counts_in_paper_configuration(name, expected):
    with torch.device("meta"):
        model = create_model(name)
    assert count_parameters(model) == expected


def test_sononet16_original_layout_matches_published_weights():
    # 2,2,3,3,3 convolutions without bias, each followed by BN (4 params/channel incl. running stats in the npz);
    # learnable: conv weights + BN gamma/beta.
    model = create_model("sononet16-original")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 16, 32, 32, 64, 64, 64, 128, 128, 128, 128, 128, 128, 64, 14]
    assert all(c.bias is None for c in convs)
    expected = sum(c.weight.numel() + 2 * c.out_channels for c in convs)
    assert count_parameters(model) == expected
    # 15 conv + BN pairs = the 75 arrays (W, beta, gamma, mean, inv_std) of SonoNet16.npz
    assert len(convs) * 5 == 75


def test_registry_lists_every_family_and_rejects_unknown_names():
    assert set(PAPER_COUNTS) | {"sononet16-original", "unet2d", "attention-unet2d"} == set(list_models())
    with pytest.raises(KeyError, match="unknown model"):
        create_model("resnet50")


def test_create_model_overrides_paper_configuration():
    model = create_model("attention-unet3d", num_classes=6, base_filters=8, in_channels=2)
    assert isinstance(model, UNet)
    assert model.side_heads[0].out_channels == 6 and model.encoder[0][0].in_channels == 2
    assert model.encoder[0][0].out_channels == 8 and model.encoder[4][0].out_channels == 128


@pytest.mark.parametrize("name", ["unet3d", "attention-unet3d"])
def test_3d_output_shape_for_sizes_not_multiple_of_16(name):
    model = create_model(name, base_filters=4).eval()
    x = torch.randn(1, 1, 70, 90, 45)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (1, 4, 70, 90, 45)


def test_attention_unet_returns_alpha_per_gate_on_the_skip_grid():
    model = create_model("attention-unet3d", base_filters=4).eval()
    x = torch.randn(2, 1, 70, 90, 45)
    with torch.no_grad():
        logits, attention = model(x, return_attention=True)
    assert set(attention) == {"level2", "level3", "level4"}
    # level k lives at 1/2^(k-1) of the input (rounded up), two heads each
    assert attention["level2"].shape == (2, 2, 35, 45, 23)
    assert attention["level3"].shape == (2, 2, 18, 23, 12)
    assert attention["level4"].shape == (2, 2, 9, 12, 6)
    for alpha in attention.values():
        assert alpha.min() >= 0 and alpha.max() <= 1
    plain = create_model("unet3d", base_filters=4).eval()
    with torch.no_grad():
        assert plain(x, return_attention=True)[1] == {}


def test_attention_unet_gates_are_open_at_initialisation():
    model = create_model("attention-unet3d", base_filters=4).eval()
    with torch.no_grad():
        _, attention = model(torch.randn(1, 1, 32, 32, 32), return_attention=True)
    for alpha in attention.values():
        assert alpha.min() > 0.9  # sigmoid(3) = 0.953: features pass everywhere (paper §3.2)


@pytest.mark.parametrize("name", ["sononet-8", "ag-sononet-8", "sononet16-original"])
@pytest.mark.parametrize("size", [(200, 250), (208, 272), (37, 51)])
def test_2d_output_shapes_for_any_frame_size(name, size):
    model = create_model(name).eval()
    with torch.no_grad():
        logits, maps = model(torch.randn(2, 1, *size), return_attention=True)
    assert logits.shape == (2, 14)
    assert maps, "attention maps (gates or CAM) are returned explicitly"


def test_ag_sononet_attention_is_range_normalised_on_stage_grids():
    model = create_model("ag-sononet-8").eval()
    with torch.no_grad():
        _, attention = model(torch.randn(3, 1, 208, 272), return_attention=True)
    assert attention["stage3"].shape == (3, 1, 52, 68)
    assert attention["stage4"].shape == (3, 1, 26, 34)
    for alpha in attention.values():
        assert alpha.min() >= 0
        torch.testing.assert_close(alpha.flatten(1).sum(1), torch.ones(3))


def test_sononet_logits_are_the_mean_of_the_class_activation_maps():
    model = create_model("sononet-8").eval()
    with torch.no_grad():
        logits, maps = model(torch.randn(2, 1, 64, 80), return_attention=True)
    torch.testing.assert_close(logits, maps["cam"].mean(dim=(2, 3)))


@pytest.mark.parametrize("aggregation", ["mean", "concat", "deep-sup", "ft"])
def test_ag_sononet_aggregations_run_and_expose_side_heads(aggregation):
    model = create_model("ag-sononet-8", aggregation=aggregation)
    logits, sides = model.forward_train(torch.randn(2, 1, 64, 80))
    assert logits.shape == (2, 14)
    assert len(sides) == (0 if aggregation == "concat" else 3)
    if aggregation == "mean":
        torch.testing.assert_close(logits, torch.stack(sides).mean(0))
    logits.sum().backward()  # concat used to crash in the reference code


def test_ag_sononet_aggregation_sizes():
    sizes = {a: count_parameters(create_model("ag-sononet-16", aggregation=a)) for a in ("mean", "concat", "deep-sup", "ft")}
    base = 700_716 - (64 + 128 + 128 + 3) * 14  # backbone + gates without the three scale heads
    assert sizes["concat"] == base + (64 + 128 + 128) * 14 + 14
    assert sizes["deep-sup"] == sizes["mean"] + (64 + 128 + 128) * 14 + 14
    assert sizes["ft"] == sizes["mean"] + 3 * 14 * 14 + 14
    with pytest.raises(ValueError, match="aggregation"):
        AGSonoNet(aggregation="max")


@pytest.mark.parametrize(
    "name,shape",
    [("attention-unet3d", (2, 1, 20, 18, 14)), ("unet3d", (2, 1, 20, 18, 14)), ("ag-sononet-8", (2, 1, 48, 64)),
     ("sononet-8", (2, 1, 48, 64))],
)
def test_every_parameter_gets_a_gradient(name, shape):
    kwargs = {"base_filters": 2} if "unet" in name else {}
    model = create_model(name, **kwargs).train()
    logits, sides = model.forward_train(torch.randn(*shape))
    loss = logits.square().mean() + sum(s.square().mean() for s in sides)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad
    zero = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0]
    assert not zero, f"parameters with an all-zero gradient: {zero[:5]}"


def test_deep_supervision_side_outputs_are_at_input_resolution():
    model = create_model("attention-unet3d", base_filters=2)
    logits, sides = model.forward_train(torch.randn(1, 1, 30, 22, 17))
    assert len(sides) == 4 and all(s.shape == logits.shape == (1, 4, 30, 22, 17) for s in sides)


@pytest.mark.parametrize("name", ["attention-unet3d", "ag-sononet-8"])
def test_seeded_construction_and_outputs_are_deterministic(name):
    kwargs = {"base_filters": 4} if "unet" in name else {}
    shape = (1, 1, 24, 24, 16) if "unet" in name else (1, 1, 64, 64)
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = create_model(name, **kwargs).eval()
        x = torch.randn(*shape)
        with torch.no_grad():
            outs.append(model(x))
    assert torch.equal(outs[0], outs[1])
    torch.manual_seed(124)
    other = create_model(name, **kwargs).eval()
    with torch.no_grad():
        assert not torch.equal(other(x), outs[0])


@pytest.mark.parametrize("name", ["unet3d", "attention-unet3d"])
def test_instance_norm_variant_has_the_same_parameters_and_no_running_statistics(name):
    with torch.device("meta"):
        batch, instance = create_model(name), create_model(name, norm="instance")
    assert count_parameters(instance) == count_parameters(batch) == PAPER_COUNTS[name]
    kinds = {type(m) for m in instance.modules()}
    assert torch.nn.InstanceNorm3d in kinds and not kinds & {torch.nn.BatchNorm3d, torch.nn.BatchNorm2d}
    assert not list(instance.buffers())  # per-patch statistics: nothing learnt from the training batches
    assert [n for n, _ in instance.named_parameters()] == [n for n, _ in batch.named_parameters()]


def test_instance_norm_network_behaves_the_same_in_train_and_eval_mode():
    # BN uses batch statistics in training and running averages in eval; InstanceNorm uses the patch's own in both,
    # so a model trained on two patches per step infers with exactly the normalisation it was trained with.
    torch.manual_seed(0)
    model = create_model("attention-unet3d", base_filters=4, norm="instance")
    x = torch.randn(2, 1, 24, 20, 16)
    with torch.no_grad():
        train_out = model.train()(x)
        eval_out = model.eval()(x)
        single = model(x[1:])
    torch.testing.assert_close(train_out, eval_out)
    torch.testing.assert_close(single, eval_out[1:], rtol=1e-4, atol=1e-5)  # no dependence on the batch


def test_unknown_norm_is_rejected():
    with pytest.raises(ValueError, match="instance"):
        create_model("unet3d", base_filters=2, norm="group")
