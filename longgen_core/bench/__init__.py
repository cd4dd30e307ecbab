"""Measurements (GPU), each with its baselines in the same run: ``python -m longgen_core.bench``.

- :mod:`.results`: software versions; :mod:`.targets`: the paper's numbers and our targets;
  :mod:`.baselines`: the implementations ours are timed against (FlexAttention on its Triton and
  FLASH backends, FlashAttention-4, SDPA); :mod:`.kernels`: attention kernels vs those baselines;
  :mod:`.model`: whole-model KV bytes, prefill, decode, training step; :mod:`.training`: full vs
  hybrid training speed
  (``train measure``); :mod:`.cost_model`: the Amdahl and bytes model the measurements are read
  against; :mod:`.cli`: the command line.
"""
