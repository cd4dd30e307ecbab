"""The checkers of notebook 06 (efficiency): the cost model's prefill speed-up of another layer map,
the KV cache of a GQA model at 128K, and the shortest context at which the training target is in reach.

The cost model and the configs are imported inside the checkers (see :mod:`longgen_core.exercises.nb03`).
"""

from __future__ import annotations

from ..patterns import sink_window

GiB = 2**30
LONG = 131072  # 128K


def _hybrid(config, full_layers=None):
    from ..models.convert import convert_config

    return convert_config(config, full_layers=full_layers, pattern=sink_window(64, 4096))


def _llama(kv_heads: int = 32):
    from ..models.base import llama2_7b_config

    config = llama2_7b_config(LONG)
    config.num_key_value_heads = kv_heads
    return config


def prefill_speedup(speedup) -> tuple[bool, str]:
    """06.1: the cost model's prefill speed-up at 128K of Llama-2-7B with 8 full layers (12-19),
    sink 64 + window 4096 elsewhere."""
    from ..bench.cost_model import amdahl

    try:
        speedup = float(speedup)
    except (TypeError, ValueError):
        return False, "answer with a number, the speed-up (full time / hybrid time)"
    a = amdahl(_hybrid(_llama(), list(range(12, 20))), LONG, "prefill")
    paper_map = amdahl(_hybrid(_llama()), LONG, "prefill")
    if abs(speedup - a["speedup"]) <= 0.01:
        return True, (f"{a['speedup']:.2f}x (bound {a['bound']:.2f}x, limit {a['limit']:.2f}x); the paper's 11 full "
                      f"layers give {paper_map['speedup']:.2f}x: three fewer full layers buy "
                      f"{a['speedup'] - paper_map['speedup']:+.2f}x")
    if abs(speedup - a["limit"]) <= 0.01:
        return False, ("that is the limit as N grows (layers / full layers); at 128K every layer's projections and "
                       "MLP still cost the same in both models")
    if abs(speedup - a["bound"]) <= 0.01:
        return False, "that is Amdahl's bound, with the sparse layers' attention free; it still costs something"
    return False, f"{speedup:.2f}x; the cost model (efficiency.amdahl) predicts otherwise for this layer map"


def gqa_kv_cache(answer) -> tuple[bool, str]:
    """06.2: ``(full_gib, hybrid_gib)``: the KV cache at 128K (bf16, batch 1) of Llama-2-7B's shape with
    8 KV heads (the GQA of Llama-3-8B), every layer full and as the hybrid of the paper's layer map."""
    from ..models.cache import kv_bytes_formula

    try:
        full, hybrid = (float(x) for x in answer)
    except (TypeError, ValueError):
        return False, "answer with a pair: (GiB of the full model, GiB of the hybrid)"
    want_full = sum(kv_bytes_formula(_llama(8), LONG)) / GiB
    want_hybrid = sum(kv_bytes_formula(_hybrid(_llama(8)), LONG)) / GiB
    mha_full = sum(kv_bytes_formula(_llama(), LONG)) / GiB
    if abs(full - mha_full) <= 1e-3 * mha_full:
        return False, "those are Llama-2-7B's 32 KV heads; this model keeps 8 (config.num_key_value_heads = 8)"
    if abs(full - want_full) > 1e-3 * want_full:
        return False, f"full: {full:.2f} GiB; count 2 (K and V) x KV heads x head_dim x 2 bytes x tokens x layers"
    if abs(hybrid - want_hybrid) > 1e-3 * want_hybrid:
        return False, (f"hybrid: {hybrid:.2f} GiB; the sparse layers keep {sink_window(64, 4096).kv_budget(LONG):,} "
                       "slots, the full ones every token")
    return True, (f"{want_full:.0f} GiB full, {want_hybrid:.2f} GiB hybrid: GQA divides every layer by 4 and the "
                  f"hybrid the sum by {want_full / want_hybrid:.2f} again; together {mha_full / want_hybrid:.0f}x "
                  "below Llama-2-7B's full cache")


def train_target_length(n) -> tuple[bool, str]:
    """06.3: the shortest context, a multiple of 4,096 tokens, at which the cost model's training
    speed-up of the paper's Llama-2-7B hybrid reaches the target ``TARGETS["train_speedup"]``."""
    from ..bench.cost_model import amdahl
    from ..bench.targets import TARGETS

    if isinstance(n, bool) or not isinstance(n, int) or n < 4096 or n % 4096:
        return False, f"answer with a context length in tokens, a multiple of 4,096, got {n!r}"
    target, config = TARGETS["train_speedup"], _hybrid(_llama())
    speed = {m: amdahl(config, m, "train")["speedup"] for m in range(4096, max(n, LONG) + 1, 4096)}
    reached = [m for m, s in speed.items() if s >= target]
    if not reached:
        return False, f"the cost model does not reach {target}x up to {max(speed):,} tokens"
    want = reached[0]
    if n < want:
        return False, f"at {n:,} tokens the model predicts {speed[n]:.2f}x, below the target {target}x"
    if n > want:
        return False, f"{n:,} tokens reach {speed[n]:.2f}x, but a shorter multiple of 4,096 reaches {target}x too"
    return True, (f"{want:,} tokens ({want // 1024}K): {speed[want]:.2f}x, against {speed[want - 4096]:.2f}x at "
                  f"{(want - 4096) // 1024}K; below that the linear work dominates and the target is out of reach")
