"""Attention implementations: the dense reference (the oracle) and the Triton kernels."""

from .reference import reference_attention

__all__ = ["reference_attention"]
