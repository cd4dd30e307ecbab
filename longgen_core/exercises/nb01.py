"""The checkers of notebook 01 (attention patterns): a sink + window pattern that fits a KV
budget, a dilated-window ``mask_mod``, and the KV ratio of a layer map with the full layers on top."""

from __future__ import annotations

import torch

from .. import patterns as P


def budget_pattern(pattern) -> tuple[bool, str]:
    """01.1: sink 64 kept, the largest window whose KV budget at 128K is <= 2,048 slots."""
    if not isinstance(pattern, P.Pattern) or pattern.kind != "sink_window":
        return False, "make a sink + window pattern (P.sink_window)"
    if pattern.sink_tokens != 64:
        return False, f"keep the 64 sink tokens (this one has {pattern.sink_tokens})"
    slots = pattern.kv_budget(131072)
    if slots > 2048:
        return False, f"the pattern keeps {slots:,} slots per sparse layer at 128K; the budget is 2,048"
    if slots < 2048:
        return False, f"{slots:,} slots fit the budget, but a wider window would too (2,048 allowed)"
    return True, f"{pattern.name}: 64 sink + {pattern.window_tokens:,} window = 2,048 slots at any length"


def dilated_mask(mask_mod) -> tuple[bool, str]:
    """01.2: causal keys at even distances 0, 2, ..., 14 (8 keys spread over a span of 16)."""
    n = 40
    q, k = torch.arange(n)[:, None], torch.arange(n)[None, :]
    try:
        got = torch.as_tensor(mask_mod(0, 0, q, k)).bool().expand(n, n)
    except Exception as e:  # noqa: BLE001 -- the reader's code: say what went wrong, do not raise
        return False, f"calling it on index tensors failed: {type(e).__name__}: {e}"
    want = (q >= k) & ((q - k) % 2 == 0) & (q - k < 16)
    if bool((got & (q < k)).any()):
        return False, "it lets a query see a later key: keep it causal"
    wrong = int((got != want).sum())
    if wrong:
        i, j = [int(x) for x in (got != want).nonzero()[0]]
        return False, f"{wrong} of {n * n} (query, key) pairs differ, the first at query {i}, key {j}"
    return True, "8 keys per query at distances 0, 2, ..., 14: the same KV budget as a window of 8, twice the reach"


def full_layers_at_top(answer) -> tuple[bool, str]:
    """01.3: ``(layers, kv_ratio)``: the top third of 30 layers full, and the hybrid's KV bytes
    over the full model's at 128K (sink 64 + window 4096)."""
    try:
        layers, ratio = answer
        layers = sorted(int(x) for x in layers)
    except (TypeError, ValueError):
        return False, "answer with a pair: (list of full layers, KV ratio hybrid / full)"
    if layers != list(range(20, 30)):
        return False, f"the top third of 30 layers is layers 20-29, not {layers}"
    budget = P.sink_window(64, 4096).kv_budget(131072)
    want = (10 * 131072 + 20 * budget) / (30 * 131072)
    if abs(float(ratio) - want) > 1e-3:
        return False, f"KV ratio {float(ratio):.4f}; count full layers x 131,072 + sparse layers x {budget:,} slots"
    return True, (f"{want:.1%} of the full model's KV cache, the same as with the middle third full: the KV "
                  "cache depends on how many layers are full, not on where they sit")


# ----------------------------------------------------------------------------------- 02: kernels
