"""Dense-mask attention for any :class:`~longgen_core.patterns.Pattern`: the oracle.

Every kernel in this project is tested against :func:`reference_attention`. It builds the full
token mask, so use it at small sizes (or float64 for exactness), never at 128K.

Example::

    >>> import torch
    >>> from longgen_core.patterns import sink_window
    >>> q, k, v = (torch.randn(1, 4, 10, 16, dtype=torch.float64) for _ in range(3))
    >>> out, lse = reference_attention(q, k, v, sink_window(2, 4), return_lse=True)
    >>> out.shape, lse.shape
    (torch.Size([1, 4, 10, 16]), torch.Size([1, 4, 10]))
"""

from __future__ import annotations

import math

import torch

from ..patterns import Pattern


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Raise a ValueError naming the problem unless q, k, v follow SDPA's layout with GQA.

    q: ``(B, H, Nq, D)``; k, v: ``(B, H_kv, Nk, D)`` with ``H % H_kv == 0`` and ``Nq <= Nk``.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor (batch, heads, seq, head_dim), "
                             f"got {getattr(t, 'shape', type(t))}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must share batch and head_dim")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"q heads ({q.shape[1]}) must be a multiple of kv heads ({k.shape[1]})")
    if q.shape[2] > k.shape[2]:
        raise ValueError(f"q has more positions ({q.shape[2]}) than k ({k.shape[2]})")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern,
                        scale: float | None = None, return_lse: bool = False):
    """Softmax attention restricted to ``pattern``, computed densely in the inputs' dtype.

    Args:
        q: ``(B, H, Nq, D)``. When ``Nq < Nk`` the queries are the *last* ``Nq`` positions
           (a decode step or a chunk at the end of the sequence).
        k, v: ``(B, H_kv, Nk, D)``; ``H_kv`` divides ``H`` (GQA: query head ``h`` reads kv head
           ``h // (H // H_kv)``, as in Hugging Face's ``repeat_kv``).
        pattern: which keys each query may see.
        scale: softmax scale; default ``1 / sqrt(D)``.
        return_lse: also return the natural-log log-sum-exp of the scaled scores, ``(B, H, Nq)``.

    Returns:
        ``out`` of q's shape (and ``lse`` when asked).
    """
    check_qkv(q, k, v)
    batch, heads, n_q, dim = q.shape
    n_k = k.shape[2]
    group = heads // k.shape[1]
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    k = k.repeat_interleave(group, dim=1)  # (B, H, Nk, D)
    v = v.repeat_interleave(group, dim=1)
    mask = pattern.dense_mask(n_k, num_heads=heads, n_queries=n_q).to(q.device)  # (H or 1, Nq, Nk)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, H, Nq, Nk)
    scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # (B, H, Nq); every query sees itself, so finite
    out = torch.matmul(torch.exp(scores - lse.unsqueeze(-1)), v)
    return (out, lse) if return_lse else out
