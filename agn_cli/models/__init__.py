"""Networks of the paper, created by name: `create_model("attention-unet3d")`."""

from agn_cli.models import sononet as _sononet  # noqa: F401  (registers models)
from agn_cli.models import unet as _unet  # noqa: F401
from agn_cli.models.attention_gate import GridAttentionGate, MultiHeadAttentionGate, normalise_attention
from agn_cli.models.registry import count_parameters, create_model, get_entry, list_models
from agn_cli.models.sononet import AGSonoNet, SonoNet
from agn_cli.models.unet import UNet

__all__ = [
    "AGSonoNet",
    "GridAttentionGate",
    "MultiHeadAttentionGate",
    "SonoNet",
    "UNet",
    "count_parameters",
    "create_model",
    "get_entry",
    "list_models",
    "normalise_attention",
]
