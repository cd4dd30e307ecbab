"""The attention function transformers calls for every layer of a LongGen model.

Registered under ``"longgen"`` with transformers' public ``AttentionInterface`` (no edits to its
files, no patched modules). transformers calls it as ``fn(module, query, key, value,
attention_mask, scaling=..., **kwargs)`` with RoPE already applied and the cache already updated;
it reads the layer's pattern from the module (``module.longgen_pattern``, resolved once from
``config.longgen`` by the conversion, :func:`~longgen_core.models.hybrid.attach_patterns`) and
attends over the key *slots* with their original positions.

Where the key positions come from:

- no cache, or a cache that keeps every token (``DynamicCache``): keys are positions ``0..Nk-1``
  (or the queries themselves, with their ``position_ids``, when ``Nq == Nk``);
- a :class:`~longgen_core.models.cache.LongGenCache`: its layer records the position of every slot it
  returned. The attention function cannot see the cache (transformers passes it to the attention
  module, not to the attention function), so :func:`install_cache_hooks` adds a forward pre-hook
  (public ``nn.Module`` API) to each attention module that forwards ``past_key_values`` as the
  keyword ``longgen_cache``, which transformers hands on to this function.

Checking ``position_ids`` synchronises with the GPU, so it runs once per model forward: a
pre-hook on the model hands every forward a fresh :class:`ForwardPositions` (keyword
``longgen_positions``), whose first layer checks and remembers the start for the others.

Backends (attention implementations):

- ``"longgen"``: on CUDA with ``longgen_core.kernels.api`` importable and a half-precision
  input, the Triton kernels (``sparse_attention`` for prefill, ``sparse_decode`` over slots);
  otherwise PyTorch SDPA with the pattern's boolean mask over the slots (CPU, float32, training).
- ``"longgen_sdpa"``: always the masked SDPA path.
- ``"longgen_reference"``: :func:`~longgen_core.kernels.reference.reference_attention`, the
  dense oracle; only for a full prefix (no eviction), e.g. to recompute generation from scratch.
- ``"longgen_flex"``: PyTorch's FlexAttention with the pattern's block mask
  (:func:`~longgen_core.kernels.flex.flex_attention`) for prefill and training over a full
  prefix (compiled on CUDA; the CPU has its forward only); decoding steps and evicting caches
  take the masked SDPA path, as full layers take plain SDPA. ``"longgen_flex_fa4"``: the same
  with FlexAttention's FLASH backend (FA4's kernels; CUDA, Hopper or newer, flash-attn-4).

Positions ``"reindex"`` (post-hoc baseline only): StreamingLLM gives each cached key its index in
the cache. Within the window the distances are unchanged; a sink key ``j`` seen from query ``q``
sits at distance ``min(q, sink + window - 1) - j`` instead of ``q - j``. Because RoPE rotations
compose (``R(a) R(b) = R(a + b)``), the sink scores use the query rotated back by
``q - min(q, sink + window - 1)``; the keys are never touched.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from ..kernels.flex import flex_attention
from ..kernels.reference import reference_attention
from ..patterns import Pattern

__all__ = ["ATTN_IMPLEMENTATIONS", "CACHE_KWARG", "POSITIONS_KWARG", "PATTERN_ATTR", "REINDEX_ATTR",
           "register", "install_cache_hooks", "attention_modules", "slot_attention", "rotate",
           "rope_inv_freq", "check_position_ids", "ForwardPositions", "longgen_attention_forward", "kernel_ops",
           "SLOT_LAYER_ATTR", "padding_guard", "check_backend", "backend_of"]

# (no "flash" in a name: transformers reads such a name as a FlashAttention kernel from the hub)
ATTN_IMPLEMENTATIONS = {"auto": "longgen", "sdpa": "longgen_sdpa", "reference": "longgen_reference",
                        "flex": "longgen_flex", "flex_flash": "longgen_flex_fa4"}
CACHE_KWARG = "longgen_cache"
POSITIONS_KWARG = "longgen_positions"
PATTERN_ATTR = "longgen_pattern"  # on each attention module: its layer's Pattern
REINDEX_ATTR = "longgen_reindex"  # on each attention module: StreamingLLM re-indexing of its sinks
_HOOKED: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()
# Cache layers that say which positions their slots hold (cache.EvictingLayer, static.StaticLayer)
# carry this class attribute; read by name so that this module imports neither of theirs.
SLOT_LAYER_ATTR = "holds_slots"


def _holds_slots(layer) -> bool:
    return getattr(layer, SLOT_LAYER_ATTR, False)


# ---------------------------------------------------------------------- positions
def check_position_ids(pos_ids: torch.Tensor, n_q: int) -> int:
    """First position of ``position_ids`` ``(B, Nq)`` after checking that every row is the same run
    of consecutive positions. One GPU synchronisation: :class:`ForwardPositions` calls it once."""
    row = pos_ids[0]
    same_rows = (pos_ids == row).all()
    consecutive = (row[1:] - row[:-1] == 1).all()
    same, step, start = torch.stack([same_rows.long(), consecutive.long(), row[0].long()]).tolist()
    if not same:
        raise ValueError("position_ids must be the consecutive positions of the new tokens, the same for "
                         "every row: padded, packed or shifted batches are not supported by LongGen "
                         "attention")
    if not step:
        raise ValueError("position_ids must increase by 1 along the sequence (no packed sequences)")
    return start


class ForwardPositions:
    """The checked start of one model forward's ``position_ids``, shared by all its layers.

    The model's pre-hook makes a fresh one per forward, so a tensor changed in place between
    forwards is checked again; every layer of the forward (and its checkpointed recomputation)
    gets the same ``position_ids`` tensor and reads the start the first layer checked.
    """

    def __init__(self):
        self.position_ids = None
        self.start = None

    def start_of(self, pos_ids: torch.Tensor, n_q: int) -> int:
        if pos_ids.shape[-1] != n_q:
            raise ValueError(f"position_ids has {pos_ids.shape[-1]} positions for {n_q} new tokens")
        if pos_ids is not self.position_ids:
            self.start = check_position_ids(pos_ids, n_q)
            self.position_ids = pos_ids
        return self.start


def _positions(module, query, key, kwargs):
    """``(q_pos (Nq,), k_pos (Nk,), contiguous)`` as int64 tensors on the query's device."""
    n_q, n_k, device = query.shape[2], key.shape[2], query.device
    cache = kwargs[CACHE_KWARG]
    layer = cache.layers[module.layer_idx] if cache is not None and hasattr(cache, "layers") else None
    pos_ids = kwargs.get("position_ids")
    if layer is not None and not _holds_slots(layer) and layer.get_seq_length() != n_k:
        raise ValueError(f"LongGen attention works with LongGenCache or a cache that keeps every token "
                         f"(DynamicCache); {type(layer).__name__} holds {n_k} keys after "
                         f"{layer.get_seq_length()} tokens")
    if _holds_slots(layer):
        q_pos, k_pos, contiguous = layer.query_positions, layer.returned_positions, layer.contiguous
    elif n_q == n_k:
        q_pos = pos_ids[0].to(device) if pos_ids is not None else torch.arange(n_k, device=device)
        k_pos, contiguous = q_pos, None  # decided below
    else:
        k_pos = torch.arange(n_k, device=device)
        q_pos, contiguous = k_pos[n_k - n_q:], True
    if n_q > 1 and pos_ids is not None:
        # Reject what would silently go wrong -- padded or packed batches, offsets that do not match
        # the cache. The check synchronises with the GPU, so it runs once per model forward; called
        # without the model's hook (a submodule run on its own), every layer checks.
        start = (kwargs.get(POSITIONS_KWARG) or ForwardPositions()).start_of(pos_ids, n_q)
        expected = (layer.seen - n_q if _holds_slots(layer) else
                    n_k - n_q if n_q != n_k else None)
        if expected is not None and start != expected:
            raise ValueError(f"position_ids start at {start} but the cache holds {expected} earlier tokens: "
                             f"shifted batches are not supported by LongGen attention")
        if contiguous is None:  # keys are the queries themselves: a full prefix iff it starts at 0
            contiguous = start == 0
    if contiguous is None:
        contiguous = True  # no position_ids (keys 0..Nk-1), or a single query that is its own only key
    return q_pos, k_pos, contiguous


# ---------------------------------------------------------------------- RoPE helpers
def rope_inv_freq(config, head_dim: int, device=None) -> torch.Tensor:
    """``(head_dim / 2,)`` RoPE inverse frequencies of ``config`` (default, linear, llama3, yarn...)."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    rope_type = params.get("rope_type", "default")
    if rope_type == "default":
        base = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
        inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    else:
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        inv, _ = ROPE_INIT_FUNCTIONS[rope_type](config)
    return inv.to(device=device, dtype=torch.float32)


def rotate(x: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor, scaling: float = 1.0) -> torch.Tensor:
    """Rotate ``x`` ``(B, H, N, D)`` by ``delta`` ``(N,)`` positions (Hugging Face's half-split RoPE,
    its arithmetic too: cos and sin, times the rotary module's ``attention_scaling``, rounded to
    ``x``'s dtype)."""
    angles = delta.to(torch.float32).view(-1, 1) * inv_freq.view(1, -1)  # (N, D/2)
    emb = torch.cat([angles, angles], dim=-1)
    cos, sin = (emb.cos() * scaling).to(x.dtype), (emb.sin() * scaling).to(x.dtype)
    half = x.shape[-1] // 2
    rotated_half = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated_half * sin


# ---------------------------------------------------------------------- the math
def slot_attention(q, k, v, q_pos, k_pos, pattern: Pattern, scale: float | None = None,
                   reindex_inv_freq: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of queries at ``q_pos`` over key slots at ``k_pos`` under ``pattern``.

    Args:
        q: ``(B, H, Nq, D)``; k, v: ``(B, H_kv, Nk, D)`` slots in any order (GQA: ``H_kv | H``).
        q_pos: ``(Nq,)``, k_pos: ``(Nk,)`` int64 original positions (-1 = empty slot).
        reindex_inv_freq: RoPE inverse frequencies to apply StreamingLLM re-indexing of the sink
            keys (sink_window patterns); ``None`` keeps the original positions.

    Returns ``(B, H, Nq, D)``. Every query must see at least itself (or one slot).
    """
    heads, group = q.shape[1], q.shape[1] // k.shape[1]
    mask = pattern.slot_mask(q_pos, k_pos, heads).unsqueeze(0)  # (1, H or 1, Nq, Nk)
    k_rep, v_rep = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    if reindex_inv_freq is None or pattern.kind != "sink_window":
        return F.scaled_dot_product_attention(q, k_rep, v_rep, attn_mask=mask, scale=scale)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    cap = pattern.sink_tokens + pattern.window_tokens - 1  # the query's index in a full cache
    q_sink = rotate(q, torch.clamp(q_pos, max=cap) - q_pos, reindex_inv_freq)
    scores = torch.matmul(q, k_rep.transpose(-1, -2)) * scale  # (B, H, Nq, Nk)
    sink_scores = torch.matmul(q_sink, k_rep.transpose(-1, -2)) * scale
    is_sink = ((k_pos >= 0) & (k_pos < pattern.sink_tokens)).view(1, 1, 1, -1)
    scores = torch.where(is_sink, sink_scores, scores).masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return torch.matmul(probs, v_rep)


def _full_attention(query, key, value, scale):
    """SDPA over the whole prefix: causal when ``Nq == Nk``; with ``Nq == 1`` the query is the last
    position and sees every key.

    GQA without copies where it costs: with one query per row (decoding) SDPA's ``enable_gqa``
    reads the shared KV heads in place -- repeating them would copy the whole cache every step;
    for prefill and training the KV heads are repeated (cuDNN's fast path takes equal head counts),
    and never when the counts are already equal.
    """
    group = query.shape[1] // key.shape[1]
    if group > 1 and query.shape[2] > 1:
        key, value = key.repeat_interleave(group, 1), value.repeat_interleave(group, 1)
    return F.scaled_dot_product_attention(query, key, value, is_causal=query.shape[2] > 1, scale=scale,
                                          enable_gqa=group > 1 and query.shape[2] == 1)


def kernel_ops(backend: str, query: torch.Tensor, reindex: bool):
    """``longgen_core.kernels.api`` when its Triton kernels should run, else ``None``.

    Only for backend "auto", CUDA, original positions and a dtype / head_dim the kernels support;
    a missing or broken ops module falls back to the SDPA path, which is always correct.
    """
    if backend != "auto" or reindex or not query.is_cuda:
        return None
    try:
        from ..kernels import api as ops
    except Exception:
        return None
    if not (hasattr(ops, "sparse_attention") and hasattr(ops, "sparse_decode")):
        return None
    dtypes = getattr(ops, "SUPPORTED_DTYPES", (torch.float16, torch.bfloat16))
    head_dims = getattr(ops, "SUPPORTED_HEAD_DIMS", (64, 128))
    return ops if query.dtype in dtypes and query.shape[-1] in head_dims else None


# ---------------------------------------------------------------------- the registered functions
def _check_inputs(module, attention_mask, dropout):
    if attention_mask is not None:
        raise ValueError("LongGen attention builds its masks from the layer patterns; custom 4-D "
                         "attention masks are not supported")
    if dropout and module.training:
        raise ValueError(f"attention dropout is not supported by LongGen attention, got {dropout}")


def _forward(backend: str, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    _check_inputs(module, attention_mask, dropout)
    if not hasattr(module, PATTERN_ATTR) or CACHE_KWARG not in kwargs:
        # Without the hook an evicting cache would be read as a contiguous prefix: refuse.
        raise ValueError("LongGen attention needs its layer pattern and cache hook on every attention module: "
                         "load the model with longgen_core.models.convert.load_longgen (or convert it with "
                         "to_longgen), not with from_pretrained(attn_implementation='longgen') alone")
    config = module.config
    pattern, reindex = getattr(module, PATTERN_ATTR), getattr(module, REINDEX_ATTR)
    q_pos, k_pos, contiguous = _positions(module, query, key, kwargs)
    n_q, n_k = query.shape[2], key.shape[2]
    if backend == "reference":
        if not contiguous or reindex:
            raise ValueError("the reference backend needs the whole prefix with original positions (no "
                             "evicting cache, positions='original'); use backend 'sdpa' otherwise")
        out = reference_attention(query, key, value, pattern, scale=scaling)
    elif pattern.kind == "full" and contiguous and n_q in (1, n_k):
        # Plain causal attention over the whole prefix: let SDPA pick its fastest kernel.
        out = _full_attention(query, key, value, scaling)
    elif backend in ("flex", "flex_flash") and contiguous and not reindex and n_q > 1:
        # a block mask per (pattern, length): built once for a prefill or a training length,
        # so single-token steps (a new length each) take the slot path below instead
        out = flex_attention(query, key, value, pattern, scale=scaling,
                             backend="FLASH" if backend == "flex_flash" else "TRITON")
    else:
        ops = kernel_ops(backend, query, reindex)
        if ops is not None and pattern.kind != "full" and contiguous and n_q == n_k:
            out = ops.sparse_attention(query, key, value, pattern, scale=scaling)
        elif ops is not None and n_q == 1:  # slots in any order (full layers too: a static cache)
            out = ops.sparse_decode(query, key, value, k_pos, pattern, q_positions=q_pos, scale=scaling)
        else:
            inv_freq = rope_inv_freq(config, query.shape[-1], query.device) if reindex else None
            out = slot_attention(query, key, value, q_pos, k_pos, pattern, scaling, inv_freq)
    return out.transpose(1, 2).contiguous(), None  # transformers wants (B, Nq, H, D)


def longgen_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """``AttentionInterface`` function ``"longgen"`` (Triton on CUDA when available, else SDPA)."""
    return _forward("auto", module, query, key, value, attention_mask, scaling, dropout, **kwargs)


def _attention_function(backend: str):
    """The ``AttentionInterface`` function of ``backend``: :func:`longgen_attention_forward`'s
    signature, running ``_forward`` with that backend."""

    def forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        return _forward(backend, module, query, key, value, attention_mask, scaling, dropout, **kwargs)

    forward.__name__ = forward.__qualname__ = f"longgen_{backend}_attention_forward"
    return forward


# one function per backend of ATTN_IMPLEMENTATIONS, made once ("auto" is the public one above)
_FUNCTIONS = {backend: longgen_attention_forward if backend == "auto" else _attention_function(backend)
              for backend in ATTN_IMPLEMENTATIONS}


def padding_guard(*args, attention_mask=None, **kwargs):
    """Mask function for the LongGen implementations: masks come from the patterns, so return
    ``None``; but refuse padded batches instead of silently attending to padding."""
    if isinstance(attention_mask, torch.Tensor) and attention_mask.dtype == torch.bool \
            and not bool(attention_mask.all()):
        raise ValueError("padded batches (attention_mask with zeros) are not supported by LongGen "
                         "attention: run sequences one at a time or give them equal lengths")
    return None


def check_backend(backend: str) -> None:
    """ValueError unless ``backend`` is a key of :data:`ATTN_IMPLEMENTATIONS`."""
    if backend not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"backend must be one of {list(ATTN_IMPLEMENTATIONS)}, got {backend!r}")


def backend_of(attn_implementation) -> str:
    """The backend of a LongGen ``attn_implementation`` name (``None``: ``"auto"``), for
    ``from_pretrained(attn_implementation=...)`` of a saved hybrid; ValueError for any other name:
    a hybrid's sparse layers exist only under LongGen attention.

    Example: ``backend_of("longgen_reference")`` -> ``"reference"``; ``backend_of("sdpa")`` raises.
    """
    if attn_implementation is None:
        return "auto"
    for backend, name in ATTN_IMPLEMENTATIONS.items():
        if attn_implementation == name:
            return backend
    raise ValueError(f"a LongGen hybrid runs LongGen attention: attn_implementation must be None or one of "
                     f"{list(ATTN_IMPLEMENTATIONS.values())} (load_longgen's backends {list(ATTN_IMPLEMENTATIONS)}), "
                     f"got {attn_implementation!r}")


def register() -> None:
    """Register the LongGen attention implementations of :data:`ATTN_IMPLEMENTATIONS` (idempotent)."""
    for backend, name in ATTN_IMPLEMENTATIONS.items():
        AttentionInterface.register(name, _FUNCTIONS[backend])
        AttentionMaskInterface.register(name, padding_guard)


def _forward_cache(module, args, kwargs):
    kwargs[CACHE_KWARG] = kwargs.get("past_key_values")
    return args, kwargs


def _forward_positions(model, args, kwargs):
    kwargs[POSITIONS_KWARG] = ForwardPositions()
    return args, kwargs


def attention_modules(model) -> list[torch.nn.Module]:
    """The self-attention modules of a decoder (modules with ``layer_idx`` and q/k/v projections)."""
    return [m for m in model.modules()
            if hasattr(m, "layer_idx") and all(hasattr(m, p) for p in ("q_proj", "k_proj", "v_proj"))]


def install_cache_hooks(model) -> None:
    """Add the pre-hooks that forward ``past_key_values`` to the attention function and give each
    model forward its :class:`ForwardPositions` (idempotent)."""
    if model not in _HOOKED:
        model.register_forward_pre_hook(_forward_positions, with_kwargs=True)
        _HOOKED.add(model)
    for module in attention_modules(model):
        if module not in _HOOKED:
            module.register_forward_pre_hook(_forward_cache, with_kwargs=True)
            _HOOKED.add(module)
