"""The 2D U-Net family: the CT network's code in 2D, with its own documented parameter counts."""

from __future__ import annotations

import pytest
import torch

from agn_cli.models import UNet, count_parameters, create_model, get_entry

# agn's 2D configuration (1 channel, 2 classes, F1 = 16): the 3D design with 3x3 kernels.
COUNTS_2D = {"unet2d": 1_965_770, "attention-unet2d": 2_379_056}


@pytest.mark.parametrize("name,expected", sorted(COUNTS_2D.items()))
def test_parameter_counts_of_the_2d_configuration(name, expected):
    with torch.device("meta"):
        model = create_model(name)
    assert count_parameters(model) == expected
    assert get_entry(name).dims == 2 and get_entry(name).task == "segmentation"


def test_2d_layers_mirror_the_3d_network_with_3x3_kernels():
    """Same modules and channels as the 3D network; each 3D kernel of k^3 weights becomes k^2."""
    net2, net3 = create_model("attention-unet2d", num_classes=4), create_model("attention-unet3d")
    shapes2 = {k: v.shape for k, v in net2.state_dict().items()}
    shapes3 = {k: v.shape for k, v in net3.state_dict().items()}
    assert shapes2.keys() == shapes3.keys()
    for key, shape in shapes3.items():
        assert shapes2[key] == (shape[:-1] if len(shape) == 5 else shape), key


def test_any_input_size_and_attention_maps_on_the_skip_grids():
    model = create_model("attention-unet2d", base_filters=4).eval()
    x = torch.randn(2, 1, 75, 101)
    with torch.no_grad():
        logits, attention = model(x, return_attention=True)
        sides = model.forward_train(x)[1]
    assert logits.shape == (2, 2, 75, 101)
    assert {k: tuple(v.shape) for k, v in attention.items()} == {
        "level2": (2, 2, 38, 51), "level3": (2, 2, 19, 26), "level4": (2, 2, 10, 13),
    }
    assert len(sides) == 4 and all(s.shape == (2, 2, 75, 101) for s in sides)


def test_2d_gates_start_open():
    model = create_model("attention-unet2d", base_filters=4).eval()
    with torch.no_grad():
        _, attention = model(torch.randn(1, 1, 64, 64), return_attention=True)
    for alpha in attention.values():
        assert alpha.min() > 0.9


def test_dims_other_than_2_or_3_are_refused():
    with pytest.raises(ValueError, match="dims must be 2 or 3"):
        UNet(dims=1)
