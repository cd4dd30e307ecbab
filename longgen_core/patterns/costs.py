"""What a pattern costs: useful attention FLOPs per layer.

Row counts, density and the KV budget are methods of :class:`~longgen_core.patterns.Pattern`.
"""

from __future__ import annotations

from .masks import Pattern, check_int


def attention_flops(pattern: Pattern, n: int, num_heads: int, head_dim: int,
                    batch: int = 1, pass_: str = "fwd") -> float:
    """Useful FLOPs of one attention layer at length ``n`` (kept query-key pairs only).

    Forward: 2 matmuls (QK^T, PV) of 2 FLOPs per multiply-add -> ``4 * pairs * head_dim``.
    The backward does 2.5x the forward's matmul work (FlashAttention-2's count), so
    ``fwdbwd`` is 3.5x forward.

    ``n``, ``num_heads``, ``head_dim`` and ``batch`` must be ints >= 1 (ValueError naming them).

    Example: full causal, n=4096, 32 heads, d=128 -> 4 * 8,390,656 * 128 * 32 = 1.37e11.
    """
    if pass_ not in ("fwd", "bwd", "fwdbwd"):
        raise ValueError(f"pass_ must be 'fwd', 'bwd' or 'fwdbwd', got {pass_!r}")
    for name, value in (("n", n), ("num_heads", num_heads), ("head_dim", head_dim), ("batch", batch)):
        check_int(name, value, 1)  # a count of 0 or less would give 0 or negative FLOPs
    heads = num_heads if pattern.per_head else 1
    pairs = sum(int(pattern.row_counts(n, h).sum()) for h in range(heads)) / heads
    fwd = 4.0 * pairs * head_dim * num_heads * batch
    return {"fwd": fwd, "bwd": 2.5 * fwd, "fwdbwd": 3.5 * fwd}[pass_]
