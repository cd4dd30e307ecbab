"""PyTorch's FlexAttention for a :class:`~longgen_core.patterns.Pattern`: the pattern's
``mask_mod`` turned into a block mask (cached per shape), then ``flex_attention``.

The third way to run a pattern, beside our Triton kernels and the dense reference: what many
users reach for first, and on Hopper / Blackwell with flash-attn-4 installed its FLASH backend
runs FA4's kernels under the same block mask (``backend="FLASH"``). On CUDA the call is compiled
(one ``torch.compile`` per process; a static one for FLASH, which cannot take the symbolic sizes
of a dynamic compile); elsewhere it runs FlexAttention's eager implementation, which materialises
the scores (fine for tests at small N) and has no backward on the CPU.

Example::

    >>> import torch
    >>> from longgen_core.patterns import sink_window
    >>> from longgen_core.kernels import reference_attention
    >>> q, k, v = (torch.randn(1, 2, 96, 16) for _ in range(3))
    >>> o = flex_attention(q, k, v, sink_window(4, 16))
    >>> bool(torch.allclose(o, reference_attention(q, k, v, sink_window(4, 16)), atol=1e-5))
    True
"""

from __future__ import annotations

import functools
import warnings

import torch

from ..patterns import Pattern

__all__ = ["BACKENDS", "block_mask", "flex_attention"]

BACKENDS = ("TRITON", "FLASH")


@functools.lru_cache(maxsize=32)
def block_mask(pattern: Pattern, n_kv: int, n_q: int, heads: int, device: str):
    """FlexAttention's ``BlockMask`` of ``pattern`` for ``n_q`` queries at the end of ``n_kv``
    keys (per head only for a per-head pattern); built once per shape and device."""
    from torch.nn.attention.flex_attention import create_block_mask

    offset = n_kv - n_q
    keep = pattern.mask_mod  # taken once: tracing the property (it names the function) would fail

    def mask_mod(b, h, q_idx, kv_idx):
        return keep(b, h, q_idx + offset, kv_idx)

    # Built outside inference mode even when first asked for under it (a prefill): the cached mask
    # is later saved for a backward (a training step), which inference tensors cannot be.
    with torch.inference_mode(False):
        return create_block_mask(mask_mod, B=None, H=heads if pattern.per_head else None, Q_LEN=n_q,
                                 KV_LEN=n_kv, device=device, _compile=torch.device(device).type == "cuda")


def flex_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern, *,
                   scale: float | None = None, backend: str = "TRITON", return_lse: bool = False):
    """Attention of ``pattern`` through FlexAttention.

    Args:
        q: ``(B, H, Nq, D)``; the queries are the last ``Nq`` positions of the keys.
        k, v: ``(B, Hk, Nk, D)``, ``H`` a multiple of ``Hk`` (GQA).
        scale: softmax scale (default ``1 / sqrt(D)``).
        backend: ``"TRITON"`` (FlexAttention's own kernels) or ``"FLASH"`` (FA4's, CUDA only).
        return_lse: also return the log-sum-exp ``(B, H, Nq)``.

    Returns ``o`` ``(B, H, Nq, D)`` (and the lse).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    if q.dim() != 4 or k.shape != v.shape or q.shape[1] % k.shape[1] or k.shape[2] < q.shape[2]:
        raise ValueError(f"expected q (B, H, Nq, D) and k, v (B, Hk, Nk, D) with Hk dividing H and Nk >= Nq, "
                         f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.device.type != "cuda":
        if backend == "FLASH":
            raise ValueError("FlexAttention's FLASH backend runs on CUDA only")
        if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
            raise ValueError("FlexAttention has no backward on the CPU: train with backend 'sdpa' or 'auto' there")
    mask = block_mask(pattern, k.shape[2], q.shape[2], q.shape[1], str(q.device))
    kwargs = {"block_mask": mask, "scale": scale, "enable_gqa": q.shape[1] != k.shape[1], **_lse_request(return_lse)}
    if q.device.type != "cuda":
        from torch.nn.attention.flex_attention import flex_attention as eager

        with warnings.catch_warnings():  # the eager path is the point on the CPU: no advice needed
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            out = eager(q, k, v, **kwargs)
    else:
        compiled = _compiled(static=backend == "FLASH")
        out = compiled(q, k, v, kernel_options={"BACKEND": "FLASH"} if backend == "FLASH" else None, **kwargs)
    if return_lse and "return_aux" in kwargs:
        return out[0], out[1].lse
    return out


def _lse_request(return_lse: bool) -> dict:
    """How this torch asks for the lse: ``return_aux=AuxRequest(lse=True)`` where it exists
    (``return_lse`` is deprecated there), else ``return_lse=True``."""
    if not return_lse:
        return {}
    try:
        from torch.nn.attention.flex_attention import AuxRequest
    except ImportError:
        return {"return_lse": True}
    return {"return_aux": AuxRequest(lse=True)}


def quiet_fa4_compiles() -> None:
    """Silence the one warning FA4's CuTe DSL prints at every kernel compile (flash-attn-4 4.0.0b36:
    "Argument aux_data ... cannot be converted to a JitArgument"): it is about FA4's own argument
    types, nothing a caller can act on, and it would fill a notebook's stored output. A process-wide
    filter on that message alone, installed where FA4 gets called (FLASH here, ``bench.baselines.fa4``)."""
    warnings.filterwarnings("ignore", message=r"Argument aux_data .*cannot be converted to a JitArgument",
                            category=UserWarning)


@functools.cache
def _compiled(static: bool):
    """``torch.compile`` of ``flex_attention``, once per process; ``static``: ``dynamic=False``
    on a wrapper of its own (its cache entries apart from the dynamic compile's)."""
    from torch.nn.attention.flex_attention import flex_attention as flex

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 256)
    if not static:
        return torch.compile(flex)
    quiet_fa4_compiles()  # the static compile is the FLASH backend's

    def flex_attention_static(*args, **kwargs):
        return flex(*args, **kwargs)

    return torch.compile(flex_attention_static, dynamic=False)
