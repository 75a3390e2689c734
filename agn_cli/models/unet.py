"""U-Net and Attention U-Net, 3D for abdominal CT and 2D for ultrasound (Oktay et al. 2018; Schlemper, Oktay et
al. MedIA 2019, §4.1).

Five levels of two 3x3(x3) conv + BN + ReLU (F1, 2F1, ... 16F1 filters), max-pooling, a (bi/tri)linear-upsampling
decoder, and a deep-supervision head per decoder level whose (upsampled) logits are fused by a 1x1(x1) conv. The
attention variant gates the skips of levels 2-4 with two-head grid attention gates; the gating signal of the
deepest gate is a 1x1(x1) conv + BN + ReLU of the bottleneck, the others use the decoder feature one level coarser.
The 2D network is the same code with `dims=2`: same gates, same heads, same deep supervision.

Any input size works: pooling rounds up and every upsampling targets the skip's exact size, so no padding to a
multiple of 16 is needed and outputs always have the input's spatial size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from agn_cli.models.attention_gate import (
    MultiHeadAttentionGate,
    Norm,
    Normalisation,
    conv_class,
    interp_mode,
    norm_layer,
)
from agn_cli.models.network import Network
from agn_cli.models.registry import register_model

LEVELS = 5


class ConvBlock(nn.Sequential):
    """Two 3x3(x3) conv + norm (BN, or InstanceNorm with `norm='instance'`) + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, norm: Norm = "batch", dims: int = 3) -> None:
        layers: list[nn.Module] = []
        for c_in in (in_channels, out_channels):
            conv = conv_class(dims)(c_in, out_channels, 3, padding=1)
            layers += [conv, norm_layer(norm, dims, out_channels), nn.ReLU(inplace=True)]
        super().__init__(*layers)


def _upsample_to(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode=interp_mode(x.dim() - 2), align_corners=False)


class UNet(Network):
    """U-Net with deep-supervision heads, 2D or 3D (`dims`); `attention=True` gives the Attention U-Net."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 4,
        base_filters: int = 16,
        attention: bool = False,
        attention_heads: int = 2,
        attention_normalisation: Normalisation = "sigmoid",
        attention_sub_sample: int = 2,
        norm: Norm = "batch",
        dims: int = 3,
    ) -> None:
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, not {dims}")
        f = [base_filters * 2**i for i in range(LEVELS)]
        conv = conv_class(dims)
        self.in_channels, self.num_classes, self.attention, self.dims = in_channels, num_classes, attention, dims
        pairs = zip([in_channels] + f[:-1], f)
        self.encoder = nn.ModuleList(ConvBlock(c_in, c_out, norm, dims) for c_in, c_out in pairs)
        self.pool = {2: nn.MaxPool2d, 3: nn.MaxPool3d}[dims](2, ceil_mode=True)
        # decoder[i] merges level i+1's skip with the upsampled level i+2 feature (i = 0..3, coarse to fine: 3..0)
        self.decoder = nn.ModuleList(ConvBlock(f[i] + f[i + 1], f[i], norm, dims) for i in range(LEVELS - 1))
        if attention:
            self.gating = nn.Sequential(conv(f[4], f[4], 1), norm_layer(norm, dims, f[4]), nn.ReLU(inplace=True))
            # gates on the skips of levels 2-4 (indices 1-3), gated by the feature one level coarser
            self.gates = nn.ModuleDict(
                {
                    f"level{i + 1}": MultiHeadAttentionGate(
                        f[i],
                        f[i + 1],
                        f[i],
                        heads=attention_heads,
                        dim=dims,
                        sub_sample=attention_sub_sample,
                        normalisation=attention_normalisation,
                        norm=norm,
                    )
                    for i in (1, 2, 3)
                }
            )
        # one deep-supervision head per decoder level (levels 1-4), fused by a 1x1(x1) conv
        self.side_heads = nn.ModuleList(conv(f[i], num_classes, 1) for i in range(LEVELS - 1))
        self.fuse = conv(num_classes * (LEVELS - 1), num_classes, 1)

    def forward_features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Decoder features of levels 1-4 (fine to coarse) and the attention coefficients per gate."""
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        bottleneck = skips[-1]
        gate_signal = self.gating(bottleneck) if self.attention else None
        attention: dict[str, torch.Tensor] = {}
        decoded: list[torch.Tensor] = [torch.empty(0)] * (LEVELS - 1)
        below = bottleneck
        for i in range(LEVELS - 2, -1, -1):
            skip = skips[i]
            if self.attention and i >= 1:
                g = gate_signal if i == LEVELS - 2 else below
                skip, attention[f"level{i + 1}"] = self.gates[f"level{i + 1}"](skip, g)
            below = self.decoder[i](torch.cat([skip, _upsample_to(below, skip.shape[2:])], dim=1))
            decoded[i] = below
        return decoded, attention

    def forward_head(self, decoded: list[torch.Tensor], size: torch.Size) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Fused logits and the per-level side logits, all at the input resolution."""
        sides = [decoded[0].new_empty(0)] * len(decoded)
        for i, (head, feature) in enumerate(zip(self.side_heads, decoded)):
            logits = head(feature)
            sides[i] = logits if logits.shape[2:] == size else _upsample_to(logits, size)
        return self.fuse(torch.cat(sides, dim=1)), sides

    def run(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], dict[str, torch.Tensor]]:
        """Fused logits (N, classes, *x.spatial), side logits (level 1 first) and {gate name: alpha (N, heads, *grid)}."""
        decoded, attention = self.forward_features(x)
        logits, sides = self.forward_head(decoded, x.shape[2:])
        return logits, sides, attention


_CT_PAPER = {"in_channels": 1, "num_classes": 4, "base_filters": 16}
PAPER_CT_LABELS = {0: "background", 1: "pancreas", 2: "spleen", 3: "kidney"}  # the paper's CT-150 classes
# The 2D configuration agn documents and tests: one grey-level channel, background + one structure (fetal head).
_US_2D = {"in_channels": 1, "num_classes": 2, "base_filters": 16}


def _variant(attention: bool, dims: int, doc: str):
    """A registry constructor for one U-Net variant (the registry shows `doc` as its description)."""

    def build(**kwargs) -> UNet:
        return UNet(attention=attention, dims=dims, **kwargs)

    build.__doc__ = doc
    return build


# name, dims, attention gates, the configuration its parameter count refers to, description
_VARIANTS = (
    ("unet3d", 3, False, _CT_PAPER, "3D U-Net baseline with deep supervision (paper Table 1)."),
    ("attention-unet3d", 3, True, _CT_PAPER,
     "Attention U-Net 3D: two-head grid attention gates on the skips of levels 2-4 (paper Table 1)."),
    ("unet2d", 2, False, _US_2D, "2D U-Net baseline with deep supervision, the CT design in 2D (ultrasound structures)."),
    ("attention-unet2d", 2, True, _US_2D,
     "Attention U-Net 2D: the 3D network's gates, heads and deep supervision in 2D (fetal head)."),
)
for _name, _dims, _attention, _config, _doc in _VARIANTS:
    register_model(_name, task="segmentation", dims=_dims, paper_config=_config)(_variant(_attention, _dims, _doc))
