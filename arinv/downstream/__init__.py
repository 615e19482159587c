"""Downstream applications of trained encoders and generators: anomaly detection
(``anomaly``), scale-robust inversion (``scale``), style transfer (``style``) and denoising
(``denoise``)."""

from .denoise import add_noise, denoise
from .style import stylize, wct

__all__ = ["add_noise", "denoise", "stylize", "wct"]
