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


# ----------------------------------------------------------------------------------- 02: kernels
# The answers are @triton.jit kernels written in notebook 02; each checker launches one at toy
# size through longgen_core.kernels.tutorial (imported here, so that 01's checks need no Triton)
# and compares it with the float64 reference: on the GPU when there is one (the notebook then
# compiles its kernels), where tl.dot rounds float32 inputs to tf32, hence the looser tolerance.
def _kernel_tol() -> float:
    return 1e-2 if torch.cuda.is_available() else 1e-4


def _toy_qkv(n: int, d: int = 32, seed: int = 2) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return [torch.randn(n, d, generator=gen).to(device) for _ in range(3)]


def _launch(run) -> tuple[object, str]:
    """``run()``, or the reason the reader's kernel did not run."""
    try:
        return run(), ""
    except Exception as e:  # noqa: BLE001 -- the reader's kernel: say what went wrong, do not raise
        return None, f"the kernel did not run: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _bad_tiles(out, ref, tile: int) -> list[int]:
    """Query tiles whose rows differ from the reference (relative error over the tolerance)."""
    from .kernels.tutorial import rel_err

    return [i for i in range(-(-ref.shape[0] // tile)) if rel_err(out[i * tile:(i + 1) * tile],
                                                                  ref[i * tile:(i + 1) * tile]) > _kernel_tol()]


def _online_rescale(kernel) -> tuple[bool, str]:
    """02.1: a dense causal online-softmax kernel (``tutorial.dense_forward``'s signature)."""
    from .kernels import tutorial as T

    q, k, v = _toy_qkv(70)
    got, why = _launch(lambda: T.dense_forward(kernel, q, k, v, tile=16))
    if why:
        return False, why
    (out, lse), (ref, ref_lse) = got, T.reference(q, k, v)
    bad = _bad_tiles(out, ref, 16)
    if bad == [1, 2, 3, 4]:
        return False, ("query tile 0 is right, tiles 1-4 are not: the error starts where a program adds a "
                       "second key tile under a new running max; rescale what it summed before")
    if bad:
        return False, f"the output differs from the reference in query tiles {bad}"
    if T.rel_err(lse, ref_lse) > _kernel_tol():
        return False, "the output is right but the LSE is not: store m_i + log(l_i)"
    return True, "every query tile agrees with the reference: out and LSE"


def _dilated_attention(q, k, v) -> torch.Tensor:
    """Attention over the keys at distances 0, 2, ..., 14 behind each query, in float64."""
    q, k, v = (t.double().cpu() for t in (q, k, v))
    dist = torch.arange(q.shape[0])[:, None] - torch.arange(q.shape[0])[None, :]
    keep = (dist >= 0) & (dist % 2 == 0) & (dist < 16)
    s = (q @ k.T / q.shape[1] ** 0.5).masked_fill(~keep, float("-inf"))
    return torch.softmax(s, -1) @ v


def _dilated_kernel(kernel) -> tuple[bool, str]:
    """02.2: the online-softmax kernel with the dilated-window mask of exercise 01.2."""
    from .kernels import tutorial as T

    q, k, v = _toy_qkv(70)
    got, why = _launch(lambda: T.dense_forward(kernel, q, k, v, tile=16))
    if why:
        return False, why
    ref = _dilated_attention(q, k, v)
    rows = [i for i in range(70) if T.rel_err(got[0][i], ref[i]) > _kernel_tol()]
    if rows:
        return False, f"{len(rows)} of 70 query rows differ from the dilated window, the first is row {rows[0]}"
    return True, "8 keys per query at distances 0, 2, ..., 14, as exercise 01.2's mask_mod"


def _sub_blocks(kernel) -> tuple[bool, str]:
    """02.3: a CSR kernel stepping through each kept key tile in sub-blocks of ``BLOCK_N`` keys."""
    from .kernels import tutorial as T
    from .patterns import sink_window

    q, k, v = _toy_qkv(100)
    pattern = sink_window(4, 24)
    ref = T.reference(q, k, v, pattern)[0]
    for block_n in (16, 32):
        got, why = _launch(lambda: T.csr_forward(kernel, q, k, v, pattern, tile=32, BLOCK_N=block_n))
        if why:
            return False, why
        bad = _bad_tiles(got[0], ref, 32)
        if bad:
            return False, (f"TILE = 32, BLOCK_N = {block_n}: query tiles {bad} differ from the reference; "
                           f"each kept tile takes {32 // block_n} steps of {block_n} keys")
    return True, "TILE = 32 with BLOCK_N = 16 and 32: the tile and the step are separate choices"


EXERCISES = {
    "01.1": Exercise("my_pattern", _budget_pattern),
    "01.2": Exercise("dilated_mask", _dilated_mask),
    "01.3": Exercise("answer", _full_layers_at_top),
    "02.1": Exercise("online_fixed", _online_rescale),
    "02.2": Exercise("dilated_kernel", _dilated_kernel),
    "02.3": Exercise("blocked_kernel", _sub_blocks),
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
