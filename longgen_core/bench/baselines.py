"""The attention implementations ours are timed against, in one place (GPU).

Each builder returns a callable ``f(q, k, v, return_lse=False)`` on ``(B, H, N, D)`` tensors (the
layout of :func:`longgen_core.kernels.sparse_attention`), queries at the end of the keys:

- :func:`flex`: PyTorch's FlexAttention, compiled, with the block mask of the pattern's
  ``mask_mod`` (:mod:`longgen_core.kernels.flex`); ``backend="FLASH"`` runs FlashAttention-4's
  CuTe kernels under it (Hopper and Blackwell, flash-attn-4 installed), ``"TRITON"`` its own
  Triton kernels.
- :func:`fa4`: FlashAttention-4's ``flash_attn_func`` itself, for the patterns its arguments can
  say: full causal and a causal sliding window (``window_size=(W - 1, 0)``). It has no attention
  sink (its ``learnable_sink`` is a per-head logit, not sink tokens) and no strided blocks:
  :func:`fa4_counterpart` names the nearest pattern it can run, and why.
- :func:`fa4_attention`: FA4 as a transformers attention function (full causal), registered by
  :func:`register_fa4_attention`: the full-attention model of ``bench model`` on FA4.

:func:`unavailable` says why an implementation cannot run here (``None`` when it can), so that a
benchmark row can say so instead of failing.

Example (on a Hopper GPU with flash-attn-4)::

    from longgen_core.patterns import sliding_window
    f = fa4(sliding_window(4096))
    o = f(q, k, v)                  # (B, H, N, D), the same as sparse_attention(q, k, v, pattern)
"""

from __future__ import annotations

import functools

__all__ = ["IMPLS", "FA4_ATTENTION", "fa4", "fa4_counterpart", "fa4_attention", "flex", "register_fa4_attention",
           "unavailable"]

# the name under which :func:`register_fa4_attention` registers FA4 with transformers (no "flash"
# in it: transformers reads such a name as a kernel to fetch from the hub)
FA4_ATTENTION = "fa4_causal"

IMPLS = ("longgen", "flex", "flex_flash", "fa4", "sdpa_full")


@functools.cache
def _fa4_missing() -> str | None:
    """Why FA4 cannot be imported here, or ``None``: importing it is the only sure test (a
    package that is present may still lack its CuTe DSL libraries)."""
    try:
        import flash_attn.cute  # noqa: F401
    except ModuleNotFoundError as e:
        if e.name in ("flash_attn", "flash_attn.cute"):
            return "flash-attn-4 (flash_attn.cute) is not installed"
        return f"flash-attn-4 cannot be imported: {type(e).__name__}: {e}"
    except Exception as e:  # noqa: BLE001 -- e.g. a CUDA library it needs fails to load
        return f"flash-attn-4 cannot be imported: {type(e).__name__}: {e}"
    return None


def unavailable(impl: str, device="cuda") -> str | None:
    """Why ``impl`` (one of :data:`IMPLS`) cannot run on ``device``, or ``None`` when it can.

    Example::

        >>> unavailable("nonsense")
        Traceback (most recent call last):
        ...
        ValueError: unknown implementation 'nonsense'; choose from longgen, flex, flex_flash, fa4, sdpa_full
    """
    import torch

    if impl not in IMPLS:
        raise ValueError(f"unknown implementation {impl!r}; choose from {', '.join(IMPLS)}")
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return "needs a CUDA GPU"
    if impl in ("flex_flash", "fa4"):
        missing = _fa4_missing()
        if missing:
            return missing
        major, minor = torch.cuda.get_device_capability(device)
        if major < 9:
            return f"FlashAttention-4 needs compute capability 9.0 or newer, this GPU has {major}.{minor}"
    return None


def fa4_counterpart(pattern):
    """``(pattern FA4 can run, note)``: ``pattern`` itself for full and sliding-window patterns;
    for sink + window, the same window without the sink (fewer kept pairs: FA4 has no sink
    tokens); ``(None, why)`` for the strided pattern.

    Example::

        >>> from longgen_core.patterns import sink_window
        >>> p, note = fa4_counterpart(sink_window(64, 4096))
        >>> p.name, note
        ('sliding_window_4096', 'window only: FA4 has no sink tokens')
    """
    from ..patterns import sliding_window

    if pattern.kind in ("full", "sliding_window"):
        return pattern, ""
    if pattern.kind == "sink_window":
        return sliding_window(pattern.window_tokens), "window only: FA4 has no sink tokens"
    return None, f"FA4's arguments cannot express the {pattern.kind} pattern"


def _fa4_window(pattern) -> tuple:
    if pattern.kind == "full":
        return (None, None)
    if pattern.kind == "sliding_window":  # keys q - W + 1 .. q
        return (pattern.window_tokens - 1, 0)
    raise ValueError(f"FA4 runs full and sliding-window patterns, not {pattern.kind} "
                     "(see fa4_counterpart)")


def fa4(pattern, num_splits: int = 1):
    """FlashAttention-4 on ``(B, H, N, D)`` tensors for a full or sliding-window ``pattern``.

    FA4 works in ``(B, N, H, D)``: the callable hands it transposed views, so inputs laid out as
    ``x.transpose(1, 2).contiguous().transpose(1, 2)`` (what the benchmark builds) reach it
    contiguous, with no copy. Fewer queries than keys align at the end (FA4's bottom-right
    causal convention, the same as ours). ``num_splits=0``: FA4's own split heuristic over the
    keys (decode, one query per sequence). The callable takes ``scale`` (default ``1 / sqrt(D)``)
    and returns ``o`` (and the log-sum-exp ``(B, H, N)`` with ``return_lse=True``).
    """
    import torch
    from flash_attn.cute import flash_attn_func

    from ..kernels.flex import quiet_fa4_compiles

    quiet_fa4_compiles()
    window = _fa4_window(pattern)
    if num_splits != 1 and torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9:
        num_splits = 1  # flash-attn-4 4.0.0b36 on Hopper: "SplitKV not supported on SM 9.0"

    def run(q, k, v, return_lse=False, scale=None):
        o, lse = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True,
                                 softmax_scale=scale, window_size=window, num_splits=num_splits, return_lse=True)
        o = o.transpose(1, 2)
        return (o, lse) if return_lse else o

    return run


def flex(pattern, backend: str = "TRITON"):
    """FlexAttention with the block mask of ``pattern``:
    :func:`longgen_core.kernels.flex.flex_attention`, the function the models' ``backend="flex"``
    runs; ``backend``: ``"TRITON"`` or ``"FLASH"`` (FA4's kernels). The block mask of each shape
    is built by its first call and cached, so a warm-up call keeps it out of the timing."""
    from ..kernels.flex import BACKENDS, flex_attention

    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'TRITON' or 'FLASH', not {backend!r}")

    def run(q, k, v, return_lse=False):
        return flex_attention(q, k, v, pattern, backend=backend, return_lse=return_lse)

    return run


def fa4_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Full causal attention through FA4 as transformers calls an attention function:
    ``query`` ``(B, H, Nq, D)``, ``key``/``value`` ``(B, Hk, Nk, D)`` (RoPE applied, the cache
    updated; fewer queries than keys: the last ones, as in decoding); returns ``(B, Nq, H, D)``
    and no weights. The projections transformers transposes are ``(B, N, H, D)`` in memory,
    FA4's layout, so nothing is copied."""
    if attention_mask is not None:
        raise ValueError("fa4_attention is causal over the whole prefix: no custom attention mask")
    if dropout and module.training:
        raise ValueError(f"fa4_attention has no dropout, got {dropout}")
    return _fa4_causal()(query, key, value, scale=scaling).transpose(1, 2), None


@functools.cache
def _fa4_causal():
    """:func:`fa4` on full causal attention, built once: :func:`fa4_attention` runs per layer
    and per decoding step."""
    from ..patterns import full_causal

    return fa4(full_causal())


def register_fa4_attention() -> str:
    """Register :func:`fa4_attention` with transformers' ``AttentionInterface`` under
    :data:`FA4_ATTENTION` (with a mask function that builds none and refuses padded batches);
    returns the name, for ``model.set_attn_implementation(name)``. Idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    from ..models.attention import padding_guard

    AttentionInterface.register(FA4_ATTENTION, fa4_attention)
    AttentionMaskInterface.register(FA4_ATTENTION, padding_guard)
    return FA4_ATTENTION
