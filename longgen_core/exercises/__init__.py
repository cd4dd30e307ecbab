"""The notebooks' exercises: one checker per exercise, so a reader learns at once whether an
answer is right, and a test can run every solution (``tests/test_exercises.py``).

Each notebook ends with exercises. An exercise is a markdown cell headed ``### Exercise <id>``, a
code cell that defines the answer (a first guess to change) and calls :func:`check`, and a
markdown cell holding the solution in a collapsed ``<details>`` block. :data:`EXERCISES` maps
each id to the answer's name in the notebook and its checker, which returns ``(ok, message)``.
The checkers of notebook 01 are below; those of later notebooks are in modules of this package,
one per notebook (``nb03`` ...).

Example::

    >>> from longgen_core import patterns as P
    >>> check("01.1", P.sink_window(64, 4096))
    not yet: the pattern keeps 4,160 slots per sparse layer at 128K; the budget is 2,048
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .. import patterns as P
from . import nb03, nb04, nb05, nb06

__all__ = ["EXERCISES", "Exercise", "check"]


@dataclass(frozen=True)
class Exercise:
    """``answer``: the name the notebook's code cell binds; ``checker(answer) -> (ok, message)``."""

    answer: str
    checker: Callable


def _budget_pattern(pattern) -> tuple[bool, str]:
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


def _dilated_mask(mask_mod) -> tuple[bool, str]:
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


def _full_layers_at_top(answer) -> tuple[bool, str]:
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


EXERCISES = {
    "01.1": Exercise("my_pattern", _budget_pattern),
    "01.2": Exercise("dilated_mask", _dilated_mask),
    "01.3": Exercise("answer", _full_layers_at_top),
}
EXERCISES.update({  # notebooks 03-06, from their modules
    "03.1": Exercise("full_layers", nb03.kv_budget_map),
    "03.2": Exercise("held", nb03.cache_positions),
    "03.3": Exercise("layer_bytes", nb03.per_layer_bytes),
    "04.1": Exercise("new_base", nb04.rope_base_16x),
    "04.2": Exercise("logits_gib", nb04.logits_memory),
    "04.3": Exercise("item", nb04.resumed_item),
    "05.1": Exercise("continuations", nb05.scored_continuations),
    "05.2": Exercise("in_cache", nb05.visible_depths),
    "06.1": Exercise("speedup", nb06.prefill_speedup),
    "06.2": Exercise("kv_gib", nb06.gqa_kv_cache),
    "06.3": Exercise("n_tokens", nb06.train_target_length),
})


def check(exercise: str, answer) -> None:
    """Check ``answer`` to ``exercise`` (an id of :data:`EXERCISES`) and print whether it is
    right and why. Never raises on a wrong answer: the notebook runs top to bottom either way
    (``EXERCISES[exercise].checker(answer)`` gives ``(ok, message)`` to code)."""
    if exercise not in EXERCISES:
        raise ValueError(f"no exercise {exercise!r}; there are {', '.join(EXERCISES)}")
    ok, message = EXERCISES[exercise].checker(answer)
    print(("right: " if ok else "not yet: ") + message)
