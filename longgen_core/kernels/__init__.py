"""Attention for a pattern: the dense reference (the oracle) and the Triton kernels (stage 2).

- :mod:`.reference`: dense-mask PyTorch attention, float64-capable, every kernel's oracle.
- :mod:`.common`, :mod:`.forward`, :mod:`.backward`, :mod:`.decode`: the ``@triton.jit`` kernels.
- :mod:`.api`: checks, layouts, launches and autograd: :func:`sparse_attention` (prefill and
  training) and :func:`sparse_decode` (new tokens against a KV cache), ``backend="triton"`` or
  ``"reference"``.
- :mod:`.flex`: PyTorch's FlexAttention for a pattern (the models' ``backend="flex"``).
- :mod:`.tutorial`: launchers and references for the teaching kernels notebook 02 writes in its
  cells, and what each step to the library's kernels measured.
"""

from .api import reference_decode, sparse_attention, sparse_decode
from .reference import reference_attention

__all__ = ["reference_attention", "sparse_attention", "sparse_decode", "reference_decode"]
