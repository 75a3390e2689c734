"""3D U-Net and Attention U-Net for abdominal CT (Oktay et al. 2018; Schlemper, Oktay et al. MedIA 2019, §4.1).

Five levels of two 3x3x3 conv + BN + ReLU (F1, 2F1, ... 16F1 filters), max-pooling, a trilinear-upsampling
decoder, and a deep-supervision head per decoder level whose (upsampled) logits are fused by a 1x1x1 conv. The
attention variant gates the skips of levels 2-4 with two-head grid attention gates; the gating signal of the
deepest gate is a 1x1x1 conv + BN + ReLU of the bottleneck, the others use the decoder feature one level coarser.

Any input size works: pooling rounds up and every upsampling targets the skip's exact size, so no padding to a
multiple of 16 is needed and outputs always have the input's spatial size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from agn_cli.models.attention_gate import MultiHeadAttentionGate, Norm, Normalisation, norm_layer
from agn_cli.models.network import Network
from agn_cli.models.registry import register_model

LEVELS = 5


class ConvBlock3d(nn.Sequential):
    """Two 3x3x3 conv + norm (BN, or InstanceNorm with `norm='instance'`) + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, norm: Norm = "batch") -> None:
        layers: list[nn.Module] = []
        for c_in in (in_channels, out_channels):
            layers += [nn.Conv3d(c_in, out_channels, 3, padding=1), norm_layer(norm, 3, out_channels), nn.ReLU(inplace=True)]
        super().__init__(*layers)


def _upsample_to(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="trilinear", align_corners=False)


class UNet3D(Network):
    """U-Net 3D with deep-supervision heads; `attention=True` gives the Attention U-Net."""

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
    ) -> None:
        super().__init__()
        f = [base_filters * 2**i for i in range(LEVELS)]
        self.in_channels, self.num_classes, self.attention = in_channels, num_classes, attention
        self.encoder = nn.ModuleList(ConvBlock3d(c_in, c_out, norm) for c_in, c_out in zip([in_channels] + f[:-1], f))
        self.pool = nn.MaxPool3d(2, ceil_mode=True)
        # decoder[i] merges level i+1's skip with the upsampled level i+2 feature (i = 0..3, coarse to fine: 3..0)
        self.decoder = nn.ModuleList(ConvBlock3d(f[i] + f[i + 1], f[i], norm) for i in range(LEVELS - 1))
        if attention:
            self.gating = nn.Sequential(nn.Conv3d(f[4], f[4], 1), norm_layer(norm, 3, f[4]), nn.ReLU(inplace=True))
            # gates on the skips of levels 2-4 (indices 1-3), gated by the feature one level coarser
            self.gates = nn.ModuleDict(
                {
                    f"level{i + 1}": MultiHeadAttentionGate(
                        f[i],
                        f[i + 1],
                        f[i],
                        heads=attention_heads,
                        dim=3,
                        sub_sample=attention_sub_sample,
                        normalisation=attention_normalisation,
                        norm=norm,
                    )
                    for i in (1, 2, 3)
                }
            )
        # one deep-supervision head per decoder level (levels 1-4), fused by a 1x1x1 conv
        self.side_heads = nn.ModuleList(nn.Conv3d(f[i], num_classes, 1) for i in range(LEVELS - 1))
        self.fuse = nn.Conv3d(num_classes * (LEVELS - 1), num_classes, 1)

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


@register_model("unet3d", task="segmentation", dims=3, paper_config=_CT_PAPER)
def unet3d(**kwargs) -> UNet3D:
    """3D U-Net baseline with deep supervision (paper Table 1)."""
    return UNet3D(attention=False, **kwargs)


@register_model("attention-unet3d", task="segmentation", dims=3, paper_config=_CT_PAPER)
def attention_unet3d(**kwargs) -> UNet3D:
    """Attention U-Net 3D: two-head grid attention gates on the skips of levels 2-4 (paper Table 1)."""
    return UNet3D(attention=True, **kwargs)
