"""Sparse attention patterns: what each layer may attend (stage 1 of the data flow).

- :mod:`.masks`: :class:`Pattern` (token predicate ``mask_mod``, row counts, KV budget) and its
  factories :func:`full_causal`, :func:`sliding_window`, :func:`sink_window`, :func:`strided`.
- :mod:`.layout`: :class:`BlockLayout`, the CSR/CSC tiles a kernel visits.
- :mod:`.costs`: :func:`attention_flops`.
"""

from .costs import attention_flops
from .layout import TILE_EMPTY, TILE_FULL, TILE_PARTIAL, BlockLayout
from .masks import Pattern, default_full_layers, full_causal, sink_window, sliding_window, strided

__all__ = ["Pattern", "BlockLayout", "full_causal", "sliding_window", "sink_window", "strided",
           "attention_flops", "default_full_layers", "TILE_EMPTY", "TILE_PARTIAL", "TILE_FULL"]
