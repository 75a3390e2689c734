"""agn: Attention Gated Networks for medical images (Schlemper, Oktay et al., MedIA 2019)."""

__version__ = "0.1.0"
