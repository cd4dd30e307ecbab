"""The checkers of notebook 03 (hybrid conversion): a layer map that fits a KV budget, what the
evicting cache holds, and the per-layer KV bytes of a moved layer map, measured.

The models are imported inside the checkers, so that importing :mod:`longgen_core.exercises` stays
cheap for the notebooks that do not need transformers.
"""

from __future__ import annotations

import torch

from ..patterns import sink_window

GiB = 2**30
LONG = 131072  # 128K
BUDGET_GIB = 16


def _llama_hybrid_kv(full_layers: list[int]) -> list[int]:
    """Per-layer KV bytes of Llama-2-7B at 128K in bf16, ``full_layers`` full, sink 64 + window 4096 elsewhere."""
    from ..models.base import llama2_7b_config
    from ..models.cache import kv_bytes_formula
    from ..models.convert import convert_config

    config = convert_config(llama2_7b_config(LONG), full_layers=full_layers, pattern=sink_window(64, 4096))
    return kv_bytes_formula(config, LONG, torch.bfloat16)


def kv_budget_map(full_layers) -> tuple[bool, str]:
    """03.1: the most full layers, one block in the middle of Llama-2-7B's 32, whose KV cache at
    128K (bf16, sink 64 + window 4096 elsewhere) fits 16 GiB."""
    try:
        layers = sorted(int(i) for i in full_layers)
    except (TypeError, ValueError):
        return False, "answer with a list of layer indices 0-31"
    if layers and (layers != list(range(layers[0], layers[-1] + 1)) or abs(layers[0] + layers[-1] - 31) > 1):
        return False, f"keep the full layers one block in the middle of the 32 (as LongGen does), not {layers}"
    try:
        per_layer = _llama_hybrid_kv(layers)
    except ValueError as e:
        return False, f"convert_config refuses these layers: {e}"
    used, budget = sum(per_layer), BUDGET_GIB * GiB
    if used > budget:
        return False, f"{len(layers)} full layers hold {used / GiB:.2f} GiB at 128K: over the {BUDGET_GIB} GiB budget"
    full = per_layer[layers[0]] if layers else max(_llama_hybrid_kv([0]))  # at most one more call of the formula
    sparse = min(per_layer) if len(layers) < 32 else min(_llama_hybrid_kv([]))
    if used + (full - sparse) <= budget:
        return False, f"{len(layers)} full layers ({used / GiB:.2f} GiB) fit, but more would too"
    return True, (f"{len(layers)} full layers, {used / GiB:.2f} GiB: at 128K a full layer holds {full / GiB:.0f} GiB "
                  f"and a sparse one {sparse / 2**20:.0f} MiB, so the budget is spent on full layers, one by one")


def cache_positions(positions) -> tuple[bool, str]:
    """03.2: the positions a sparse layer (sink 4 + window 64) holds after a 100-token prompt and
    30 tokens decoded one at a time (positions 0..129), measured on a converted tiny Llama."""
    from ..models.base import tiny_llama
    from ..models.cache import LongGenCache
    from ..models.convert import to_longgen

    try:
        got = sorted(int(p) for p in positions)
    except (TypeError, ValueError):
        return False, "answer with a list of positions (ints)"
    model = to_longgen(tiny_llama(), pattern=sink_window(4, 64))  # layers ssFFss
    cache = LongGenCache(model.config)
    ids = torch.randint(0, model.config.vocab_size, (1, 130), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(ids[:, :100], past_key_values=cache, use_cache=True, logits_to_keep=1)
        for t in range(100, 130):
            model(ids[:, t:t + 1], past_key_values=cache, use_cache=True, logits_to_keep=1)
    held = sorted(p for p in cache.layers[0].positions_cpu.tolist() if p >= 0)
    if got == held:
        return True, (f"sinks 0-3 + the last 64 positions {held[4]}-{held[-1]} ({len(held)} slots): the window "
                      f"counts the newest token itself; the full layer beside it holds all "
                      f"{int((cache.layers[2].positions_cpu >= 0).sum())}")
    missing, extra = sorted(set(held) - set(got)), sorted(set(got) - set(held))
    return False, (f"{len(got)} positions; the layer holds {len(held)}. Missing: {missing[:6]}"
                   f"{' ...' if len(missing) > 6 else ''}; not held: {extra[:6]}{' ...' if len(extra) > 6 else ''}")


def per_layer_bytes(predicted) -> tuple[bool, str]:
    """03.3: the KV bytes each layer of ``tiny_llama()`` holds after a 64-token prefill in fp32, full
    layers moved to both ends (``full_layers=[0, 5]``), sink 4 + window 16 elsewhere: measured."""
    from ..models.base import tiny_llama
    from ..models.cache import measure_kv_bytes
    from ..models.convert import to_longgen

    model = to_longgen(tiny_llama(), full_layers=[0, 5], pattern=sink_window(4, 16))
    measured = measure_kv_bytes(model, 64)
    try:
        got = [int(b) for b in predicted]
    except (TypeError, ValueError):
        return False, "answer with a list of 6 byte counts, bottom layer first"
    if len(got) != len(measured):
        return False, f"{len(got)} numbers for {len(measured)} layers"
    wrong = [i for i, (a, b) in enumerate(zip(got, measured)) if a != b]
    if wrong:
        i = wrong[0]
        fewer = "fewer" if measured[i] < got[i] else "more"
        return False, f"{len(wrong)} of 6 layers differ; layer {i} holds {fewer} than {got[i]:,} bytes"
    return True, (f"measured {measured}: 2 (K and V) x 2 KV heads x head_dim 16 x 4 B = 256 B per slot, 64 slots "
                  "in a full layer and 20 in a sparse one, wherever the full layers sit")
