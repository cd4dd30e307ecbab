"""Attention implementations: the dense reference (the oracle) and the Triton kernels.

``sparse_attention`` / ``sparse_decode`` run the Triton kernels (``backend="triton"``) or the dense
reference (``backend="reference"``); see :mod:`.ops`.
"""

from .ops import reference_decode, sparse_attention, sparse_decode
from .reference import reference_attention

__all__ = ["reference_attention", "sparse_attention", "sparse_decode", "reference_decode"]
