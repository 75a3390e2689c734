"""SonoNet and AG-Sononet for fetal ultrasound standard-plane detection.

SonoNet (Baumgartner et al., IEEE TMI 2017): a VGG-like fully convolutional network whose adaptation layers give
one activation map per class; global average pooling turns them into logits, and the maps are class activation
maps (CAMs). AG-Sononet (Schlemper, Oktay et al., MedIA 2019, §4.2): the same feature extractor with attention
gates on the stage-3 and stage-4 features, gated by stage 5; range-normalised coefficients pool each gated feature
map into a vector, and the per-scale vectors are aggregated (`mean`, `concat`, `deep-sup` or `ft`).

Pooling rounds up, so any frame size works without padding and global pooling never sees padded pixels.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import torch
from torch import nn

from agn_cli.models.attention_gate import GridAttentionGate, Normalisation
from agn_cli.models.network import Network
from agn_cli.models.registry import register_model

Aggregation = Literal["mean", "concat", "deep-sup", "ft"]
AGGREGATIONS: tuple[str, ...] = ("mean", "concat", "deep-sup", "ft")

PAPER_N_CONVS = (3, 3, 3, 2, 2)  # the attention paper's SonoNet variant
ORIGINAL_N_CONVS = (2, 2, 3, 3, 3)  # Baumgartner et al.'s published SonoNet


def _conv_bn_relu(c_in: int, c_out: int, kernel: int, bias: bool, eps: float, relu: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=bias), nn.BatchNorm2d(c_out, eps=eps)]
    return layers + [nn.ReLU(inplace=True)] if relu else layers


class SonoNetFeatures(nn.Module):
    """Five VGG stages of 3x3 conv + BN + ReLU with 2x2 max-pooling between them; returns every stage's output."""

    def __init__(self, in_channels: int, widths: Sequence[int], n_convs: Sequence[int], conv_bias: bool, bn_eps: float):
        super().__init__()
        stages = []
        c_in = in_channels
        for width, n in zip(widths, n_convs):
            layers: list[nn.Module] = []
            for j in range(n):
                layers += _conv_bn_relu(c_in if j == 0 else width, width, 3, conv_bias, bn_eps)
            stages.append(nn.Sequential(*layers))
            c_in = width
        self.stages = nn.ModuleList(stages)
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.widths = tuple(widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for i, stage in enumerate(self.stages):
            x = stage(x if i == 0 else self.pool(x))
            outputs.append(x)
        return outputs


def _widths(base_filters: int) -> list[int]:
    return [base_filters, 2 * base_filters, 4 * base_filters, 8 * base_filters, 8 * base_filters]


class _SonoNetBase(Network):
    """The five-stage feature extractor SonoNet and AG-Sononet share.

    in_channels, num_classes; base_filters: width of stage 1 (stages: F, 2F, 4F, 8F, 8F); n_convs: convolutions per
    stage; conv_bias, bn_eps: as in the weights being matched (the published SonoNet: no bias, eps 1e-4).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 14, base_filters: int = 16,
                 n_convs: Sequence[int] = PAPER_N_CONVS, conv_bias: bool = True, bn_eps: float = 1e-5) -> None:
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes
        self.features = SonoNetFeatures(in_channels, _widths(base_filters), n_convs, conv_bias, bn_eps)
        self.conv_bias, self.bn_eps = conv_bias, bn_eps


class SonoNet(_SonoNetBase):
    """SonoNet: features, adaptation layers (1x1 conv + BN + ReLU, 1x1 conv + BN), global average pooling.
    Arguments: see `_SonoNetBase`."""

    def __init__(self, **backbone: Any) -> None:
        super().__init__(**backbone)
        widths, bias, eps = self.features.widths, self.conv_bias, self.bn_eps
        self.adaptation = nn.Sequential(
            *_conv_bn_relu(widths[4], widths[2], 1, bias, eps),
            *_conv_bn_relu(widths[2], self.num_classes, 1, bias, eps, relu=False),
        )

    def run(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], dict[str, torch.Tensor]]:
        """Logits (the spatial mean of the class activation maps), no side logits, and {'cam': (N, classes, H/16, W/16)}."""
        cams = self.adaptation(self.features(x)[-1])
        return cams.mean(dim=(2, 3)), [], {"cam": cams}


class AGSonoNet(_SonoNetBase):
    """AG-Sononet: attention-gated pooling of stage-3 and stage-4 features, gated by stage 5.

    aggregation of the per-scale vectors: 'mean', 'concat', 'deep-sup' or 'ft'; attention_normalisation: sigma2 of
    the gates ('range' in the paper); other arguments: see `_SonoNetBase`.
    """

    def __init__(self, aggregation: Aggregation = "mean", attention_normalisation: Normalisation = "range",
                 **backbone: Any) -> None:
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation '{aggregation}'; choose one of {', '.join(AGGREGATIONS)}")
        super().__init__(**backbone)
        widths, num_classes = self.features.widths, self.num_classes
        self.aggregation = aggregation
        gate = dict(dim=2, sub_sample=1, normalisation=attention_normalisation, output_transform=False, phi_bias=False)
        self.gates = nn.ModuleDict(
            {
                "stage3": GridAttentionGate(widths[2], widths[4], widths[4], **gate),
                "stage4": GridAttentionGate(widths[3], widths[4], widths[4], **gate),
            }
        )
        scale_dims = (widths[2], widths[3], widths[4])  # gated stage 3, gated stage 4, pooled stage 5
        if aggregation != "concat":
            self.scale_heads = nn.ModuleList(nn.Linear(d, num_classes) for d in scale_dims)
        if aggregation in ("concat", "deep-sup"):
            self.classifier = nn.Linear(sum(scale_dims), num_classes)
        elif aggregation == "ft":
            self.classifier = nn.Linear(num_classes * len(scale_dims), num_classes)

    def forward_features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Per-scale descriptors (attention-pooled stage 3 and 4, average-pooled stage 5) and alpha per gate."""
        stages = self.features(x)
        gating = stages[4]
        descriptors, attention = [], {}
        for name, feature in (("stage3", stages[2]), ("stage4", stages[3])):
            gated, attention[name] = self.gates[name](feature, gating)
            pooled = gated.flatten(2).sum(-1)
            if self.gates[name].normalisation == "sigmoid":  # unnormalised alpha: average instead of weighted sum
                pooled = pooled / feature.shape[2:].numel()
            descriptors.append(pooled)
        descriptors.append(gating.mean(dim=(2, 3)))
        return descriptors, attention

    def forward_head(self, descriptors: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Aggregated logits and the per-scale logits (empty for `concat`)."""
        if self.aggregation == "concat":
            return self.classifier(torch.cat(descriptors, dim=1)), []
        sides = [head(d) for head, d in zip(self.scale_heads, descriptors)]
        if self.aggregation == "mean":
            return torch.stack(sides).mean(0), sides
        if self.aggregation == "deep-sup":
            return self.classifier(torch.cat(descriptors, dim=1)), sides
        return self.classifier(torch.cat(sides, dim=1)), sides  # ft

    def run(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], dict[str, torch.Tensor]]:
        """Aggregated logits, per-scale logits and {'stage3': alpha, 'stage4': alpha}."""
        descriptors, attention = self.forward_features(x)
        logits, sides = self.forward_head(descriptors)
        return logits, sides, attention


_CLS_PAPER = {"in_channels": 1, "num_classes": 14}

_FAMILIES = (
    ("sononet", SonoNet, "SonoNet-{w} baseline, (3,3,3,2,2) convolutions (paper Table 5)."),
    ("ag-sononet", AGSonoNet, "AG-Sononet-{w}: gates on stages 3 and 4, range normalisation (paper Table 5)."),
)
for _width in (8, 16, 32):
    for _family, _network, _description in _FAMILIES:
        register_model(f"{_family}-{_width}", task="classification", dims=2,
                       paper_config={**_CLS_PAPER, "base_filters": _width},
                       description=_description.format(w=_width))(_network)


@register_model(
    "sononet16-original",
    task="classification",
    dims=2,
    paper_config={**_CLS_PAPER, "base_filters": 16, "n_convs": ORIGINAL_N_CONVS, "conv_bias": False, "bn_eps": 1e-4},
    description="The published SonoNet-16 layout (2,2,3,3,3 convolutions, no conv bias), for the released weights.",
)
def sononet16_original(**kwargs) -> SonoNet:
    return SonoNet(**kwargs)
