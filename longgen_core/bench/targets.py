"""The paper's numbers and our targets, in one place: every table, figure and check reads them here.

The paper: LongGen (Ge et al., "A Little Goes a Long Way: Efficient Long Context Training and
Inference with Partial Contexts", arXiv 2410.01485). Its efficiency numbers, quoted in its text,
are for Llama-2-7B extended to 128K tokens (:data:`PAPER_N`), the middle third of the layers full
and sink 64 + window 4096 elsewhere.

Conventions: speed-ups are full / hybrid (``1.55`` = the hybrid is 1.55x faster); ``kv_saving`` is
``1 - hybrid bytes / full bytes`` (``0.62`` = 62% less KV cache).

- :data:`PAPER`: the paper's whole-model numbers at 128K (training, KV cache, prefill, decode).
- :data:`TARGETS`: what we aim for on the same Llama-2-7B shape at 128K (``bench model``).
- :data:`TRAIN_TARGET_SPEEDUP`: hybrid / full training tokens/s on SmolLM2-135M at 32K
  (``train measure``, :mod:`longgen_core.bench.training`).
- :data:`MINIATURE_TARGETS`, :data:`MINIATURE_PAPER`: pass-key retrieval at the longest length of
  the miniature experiment (:mod:`longgen_core.experiments.miniature`), and the paper's finding it
  is read against.

Example::

    >>> f"{PAPER['train_speedup']}x training, -{PAPER['kv_saving']:.0%} KV at {PAPER_N // 1024}K"
    '1.55x training, -62% KV at 128K'
"""

from __future__ import annotations

__all__ = ["PAPER", "PAPER_N", "TARGETS", "TRAIN_TARGET_SPEEDUP", "MINIATURE_TARGETS", "MINIATURE_PAPER",
           "GENERATE_TARGET_SPEEDUP"]

PAPER_N = 131072  # the context length of the paper's numbers and of TARGETS
PAPER = {"train_speedup": 1.55, "kv_saving": 0.62, "prefill_speedup": 1.67, "decode_speedup": 1.41}
TARGETS = {"train_speedup": 1.7, "kv_saving": 0.62, "prefill_speedup": 1.75, "decode_speedup": 1.8}

TRAIN_TARGET_SPEEDUP = 1.3

# SmolLM2-135M model.generate() from 32K and 128K prompts: hybrid tokens/s over full, what a user sees
GENERATE_TARGET_SPEEDUP = 1.5

# At the longest length: the hybrid >= 0.9 and within 0.05 of full attention; the evicting
# (StreamingLLM-style) baseline <= 0.3 on needles outside its window.
MINIATURE_TARGETS = {"hybrid_min": 0.9, "hybrid_gap_max": 0.05, "streaming_outside_max": 0.3}
MINIATURE_PAPER = ("LongGen (Llama-2-7B, 128K): needle retrieval of the hybrid close to full attention at "
                   "every length; AttnSink / StreamingLLM post hoc fails on needles outside its window.")
