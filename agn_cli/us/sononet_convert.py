"""Convert the published SonoNet-16 weights (Theano/Lasagne `.npz`) into agn's `sononet16-original` checkpoint.

Why a converter rather than a shipped file only: anyone can check how the default classifier came to be, and redo it
from the original release. Layout facts (from the release, see weights-src/sononet16/README.md):

- `arr_0 ... arr_74` in layer order; every convolution has no bias and is followed by batch norm, so each conv gives
  5 arrays: W (out, in, kh, kw), BN beta, gamma, mean, inv_std.
- Lasagne stores inv_std = 1 / sqrt(var + eps) with eps = 1e-4, hence running_var = 1 / inv_std**2 - eps (the
  `sononet16-original` model uses BN eps = 1e-4 so the arithmetic is identical).
- 13 feature convolutions (2, 2, 3, 3, 3 per stage), then the 1x1 adaptation convolutions 128->64 and 64->14.
- Kernels are stored for cross-correlation, so no flip is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from agn_cli.errors import AgnError
from agn_cli.runtime.checkpoint import PAPER_CITATION, ModelCard, save_checkpoint
from agn_cli.us.preprocess import SONONET_PREPROCESSING

LASAGNE_BN_EPS = 1e-4
SONONET_LABELS = (
    "3VV",
    "4CH",
    "Abdominal",
    "Background",
    "Brain (Cb.)",
    "Brain (Tv.)",
    "Femur",
    "Kidneys",
    "Lips",
    "LVOT",
    "Profile",
    "RVOT",
    "Spine (cor.)",
    "Spine (sag.)",
)
SONONET_CITATION = (
    "Baumgartner CF, Kamnitsas K, Matthew J, Fletcher TP, Smith S, Koch LM, Kainz B, Rueckert D. SonoNet: Real-Time "
    "Detection and Localisation of Fetal Standard Scan Planes in Freehand Ultrasound. IEEE Transactions on Medical "
    "Imaging 36(11):2204-2215, 2017. doi:10.1109/TMI.2017.2712367 (arXiv:1612.05601). Boxes from attention: "
    + PAPER_CITATION
)
SONONET_SOURCE = (
    "SonoNet16.npz from github.com/baumgach/SonoNet-weights (Apache-2.0), converted by "
    "'agn weights convert-sononet' (Lasagne BN inv_std -> running_var = 1/inv_std^2 - 1e-4)"
)
SONONET_TRAINING_DATA = (
    "Real 2D freehand fetal ultrasound screening videos (iFIND project, King's College London / Guy's and St Thomas'; "
    "GE Voluson E8), 13 standard planes + background, trained by Baumgartner et al. 2017 with Theano/Lasagne"
)


def _conv_bn_pairs(model: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    modules = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    pairs = []
    for conv, bn in zip(modules[0::2], modules[1::2]):
        if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
            raise RuntimeError("sononet16-original is expected to alternate conv and batch norm")
        pairs.append((conv, bn))
    return pairs


def load_lasagne_npz(path: Path | str) -> list[np.ndarray]:
    """The arrays `arr_0 ... arr_N` of a Lasagne `np.savez` dump, in order (no pickles allowed)."""
    path = Path(path)
    if not path.is_file():
        raise AgnError(f"SonoNet weights not found: {path} (expected SonoNet16.npz from baumgach/SonoNet-weights)")
    try:
        with np.load(path, allow_pickle=False) as data:
            names = sorted(data.files, key=lambda n: int(n.split("_")[1]) if n.startswith("arr_") else -1)
            if not names or not all(n.startswith("arr_") for n in names):
                raise AgnError(f"{path} is not a Lasagne parameter dump (expected arrays arr_0, arr_1, ...)")
            return [np.asarray(data[n]) for n in names]
    except AgnError:
        raise
    except Exception as exc:
        raise AgnError(f"cannot read {path} ({type(exc).__name__}); it is not a valid .npz file") from exc


def sononet16_from_npz(path: Path | str) -> nn.Module:
    """Build `sononet16-original` and fill it with the published weights, in eval mode."""
    from agn_cli.models import create_model

    arrays = load_lasagne_npz(path)
    model = create_model("sononet16-original")
    pairs = _conv_bn_pairs(model)
    if len(arrays) != 5 * len(pairs):
        raise AgnError(
            f"{path} holds {len(arrays)} arrays; SonoNet-16 needs {5 * len(pairs)} (5 per conv: W, beta, gamma, mean, "
            "inv_std). Is this SonoNet16.npz?"
        )
    with torch.no_grad():
        for i, (conv, bn) in enumerate(pairs):
            w, beta, gamma, mean, inv_std = arrays[5 * i : 5 * i + 5]
            if tuple(w.shape) != tuple(conv.weight.shape) or beta.shape != (conv.out_channels,):
                raise AgnError(
                    f"layer {i}: weight shape {tuple(w.shape)} does not fit {tuple(conv.weight.shape)}; "
                    "not the SonoNet-16 release"
                )
            if np.any(inv_std <= 0):
                raise AgnError(f"layer {i}: non-positive inv_std in {path}; the file is corrupt")
            conv.weight.copy_(torch.from_numpy(w.astype(np.float32)))
            bn.bias.copy_(torch.from_numpy(beta.astype(np.float32)))
            bn.weight.copy_(torch.from_numpy(gamma.astype(np.float32)))
            bn.running_mean.copy_(torch.from_numpy(mean.astype(np.float32)))
            var = 1.0 / inv_std.astype(np.float64) ** 2 - LASAGNE_BN_EPS
            bn.running_var.copy_(torch.from_numpy(np.maximum(var, 0.0).astype(np.float32)))
            bn.eps = LASAGNE_BN_EPS
    return model.eval()


def sononet16_card(default: bool = True, extra_notes: str = "") -> ModelCard:
    """The model card of the converted SonoNet-16 (labels in SonoNet's order, preprocessing, attribution)."""
    from agn_cli.models.registry import get_entry

    config: dict[str, Any] = dict(get_entry("sononet16-original").paper_config)
    config["n_convs"] = list(config["n_convs"])
    return ModelCard(
        architecture="sononet16-original",
        model_kwargs=config,
        task="classification",
        labels=dict(enumerate(SONONET_LABELS)),
        patch_size=list(SONONET_PREPROCESSING["size"]),
        normalisation={"type": "zscore-per-image", "scale": SONONET_PREPROCESSING["scale"]},
        preprocessing=dict(SONONET_PREPROCESSING),
        training_data=SONONET_TRAINING_DATA,
        licence="Apache-2.0",
        citation=SONONET_CITATION,
        source=SONONET_SOURCE,
        notes=(
            "Original SonoNet-16 layout (2,2,3,3,3 convs, no conv bias, BN eps 1e-4), not the attention paper's "
            "(3,3,3,2,2) variant. Attention for boxes: class activation maps of the predicted class (the paper's AG3)."
            + (" " + extra_notes if extra_notes else "")
        ),
        default=default,
    )


def convert_sononet16(npz: Path | str, out: Path | str, overwrite: bool = False, default: bool = True) -> Path:
    """Convert and save `out` (.safetensors) with its model card beside it."""
    model = sononet16_from_npz(npz)
    return save_checkpoint(out, model, sononet16_card(default=default), overwrite=overwrite)
