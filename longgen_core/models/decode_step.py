"""One greedy decode step of a converted Llama-family model in few GPU kernels.

Why: profiled on an H200 (SmolLM2-135M, 30 layers, CUDA graph replay), transformers' modules
launch ~43 kernels per layer for one token (~1,300 per step), nearly all of them a microsecond or
two long: RoPE alone is ten (multiply, negate, concatenate, multiply, add, for the query and the
key), the ring-slot arithmetic five, each RMSNorm four to eight. At 32K tokens the step took
3.05 ms for the hybrid and for full attention alike, so the launches, not the KV cache, set the
speed, and the hybrid's smaller cache bought nothing. :class:`DecodeStep` does the same math on
the same weights and the same :class:`~longgen_core.models.static.StaticLongGenCache` in about
seventeen kernels per layer (measured: 502 per step for 30 layers):

- RMSNorm: one Triton kernel (:func:`rms_norm`), Llama's precision rule (normalise in float32,
  round to the input dtype, scale by the weight);
- q, k, v, gate, up: one matmul each; o and down add the residual in the matmul (``addmm``);
- RoPE for the query and the key, the key and value written into their slot, and the slot's
  position recorded: one Triton kernel (:func:`rope_store`), the slot computed on the device
  (``sink + (p - sink) % window`` for a ring, ``p`` otherwise);
- attention: :func:`~longgen_core.kernels.api.sparse_decode` over the slots (two kernels).

On the CPU (and for any input the Triton kernels do not take) the same functions run as PyTorch
ops with transformers' own arithmetic, so greedy outputs equal ``model.generate`` token for token
(tests); on CUDA, rounding differs from transformers' bf16 ops only where these keep float32.

Example (CPU)::

    >>> import torch
    >>> from longgen_core.models.base import tiny_llama
    >>> from longgen_core.models.convert import to_longgen
    >>> from longgen_core.models.static import StaticLongGenCache
    >>> from longgen_core.patterns import sink_window
    >>> model = to_longgen(tiny_llama(), pattern=sink_window(4, 16)).eval()
    >>> cache = StaticLongGenCache(model.config, batch=2, capacity=64, dtype=torch.float32, device="cpu")
    >>> step = DecodeStep(model, cache)   # after a prefill into `cache`: step(ids, position) -> logits
    >>> unsupported(model) is None
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .attention import PATTERN_ATTR, REINDEX_ATTR, kernel_ops, rotate, slot_attention
from .settings import SUPPORTED_MODEL_TYPES, base_model_type

__all__ = ["DecodeStep", "unsupported", "rms_norm", "rope_store"]


def unsupported(model) -> str | None:
    """Why :class:`DecodeStep` cannot run ``model`` (then transformers' modules decode), or ``None``."""
    config = model.config
    if base_model_type(config) not in SUPPORTED_MODEL_TYPES:
        return f"model_type {base_model_type(config)!r} is not one of {SUPPORTED_MODEL_TYPES}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"hidden_act {config.hidden_act!r} (the step computes SiLU)"
    rotary = getattr(model.model, "rotary_emb", None)
    if rotary is None or not hasattr(rotary, "inv_freq"):
        return "no rotary_emb.inv_freq on the model"
    if "dynamic" in str(getattr(rotary, "rope_type", "default")):  # inv_freq would change with length
        return f"rope_type {rotary.rope_type!r} recomputes its frequencies per length"
    for layer in model.model.layers:
        attention = layer.self_attn
        if not hasattr(attention, PATTERN_ATTR) or getattr(attention, REINDEX_ATTR, False):
            return "a layer without its LongGen pattern, or with StreamingLLM re-indexing"
    return None


# ---------------------------------------------------------------------- RMSNorm
@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, n_cols, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    inside = offs < n_cols
    x = tl.load(x_ptr + row * n_cols + offs, mask=inside, other=0.0).to(tl.float32)
    normed = x * (1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + eps))
    normed = normed.to(out_ptr.dtype.element_ty).to(tl.float32)  # Llama rounds before the weight
    w = tl.load(w_ptr + offs, mask=inside, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * n_cols + offs, (w * normed).to(out_ptr.dtype.element_ty), mask=inside)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, triton_kernel: bool | None = None) -> torch.Tensor:
    """``weight * (x / rms(x))`` over the last dimension as Llama computes it; ``x`` ``(R, hidden)``.

    ``triton_kernel``: ``None`` runs the one-launch kernel on CUDA for a contiguous ``x`` whose
    dtype is the weight's, PyTorch ops otherwise; ``True`` forces the kernel (the Triton interpreter
    runs it on CPU tensors in tests).

    Example: ``rms_norm(torch.ones(2, 8), torch.ones(8), 1e-6)`` -> ones.
    """
    use = (x.is_cuda if triton_kernel is None else triton_kernel) and x.is_contiguous() and x.dtype == weight.dtype
    if not use:
        x32 = x.float()
        return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    rows, cols = x.shape
    out = torch.empty_like(x)
    _rms_norm_kernel[(rows,)](x, weight, out, cols, eps, BLOCK=triton.next_power_of_2(cols))
    return out


# ---------------------------------------------------------------------- RoPE + cache write
@triton.jit
def _rope_store_kernel(q_ptr, k_ptr, v_ptr, q_out_ptr, keys_ptr, values_ptr, slot_positions_ptr, position_ptr,
                       inv_freq_ptr, scaling, sink, window, q_heads, kv_heads, keys_stride_b, keys_stride_h,
                       keys_stride_s, RING: tl.constexpr, HALF: tl.constexpr):
    # int64: b * keys_stride_b passes 2**31 at 7B, 128K tokens, batch 8
    b, head = tl.program_id(0).to(tl.int64), tl.program_id(1)  # heads 0..q_heads-1 are queries, then KV heads
    p = tl.load(position_ptr)
    offs = tl.arange(0, HALF)
    angle = p.to(tl.float32) * tl.load(inv_freq_ptr + offs)
    cos, sin = tl.cos(angle) * scaling, tl.sin(angle) * scaling
    if head < q_heads:  # (names differ between the branches: Triton types each name once)
        q_row = q_ptr + (b * q_heads + head) * 2 * HALF
        q1, q2 = tl.load(q_row + offs).to(tl.float32), tl.load(q_row + HALF + offs).to(tl.float32)
        q_dest = q_out_ptr + (b * q_heads + head) * 2 * HALF
        tl.store(q_dest + offs, (q1 * cos - q2 * sin).to(q_out_ptr.dtype.element_ty))
        tl.store(q_dest + HALF + offs, (q2 * cos + q1 * sin).to(q_out_ptr.dtype.element_ty))
    else:
        g = head - q_heads
        if RING:
            slot = tl.where(p < sink, p, sink + (p - sink) % window)
        else:
            slot = p
        kv_row = (b * kv_heads + g) * 2 * HALF
        k1, k2 = tl.load(k_ptr + kv_row + offs).to(tl.float32), tl.load(k_ptr + kv_row + HALF + offs).to(tl.float32)
        dest = b * keys_stride_b + g * keys_stride_h + slot * keys_stride_s
        tl.store(keys_ptr + dest + offs, (k1 * cos - k2 * sin).to(keys_ptr.dtype.element_ty))
        tl.store(keys_ptr + dest + HALF + offs, (k2 * cos + k1 * sin).to(keys_ptr.dtype.element_ty))
        tl.store(values_ptr + dest + offs, tl.load(v_ptr + kv_row + offs))
        tl.store(values_ptr + dest + HALF + offs, tl.load(v_ptr + kv_row + HALF + offs))
        if (b == 0) & (g == 0):
            tl.store(slot_positions_ptr + slot, p)


def rope_store(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, position: torch.Tensor, layer,
               inv_freq: torch.Tensor, scaling: float, triton_kernel: bool | None = None) -> torch.Tensor:
    """Rotate the new query and key by RoPE at ``position``, write key and value into the token's
    slot of ``layer`` (a :class:`~longgen_core.models.static.StaticLayer`) and record the position
    there; return the rotated query ``(B, H, 1, D)``.

    ``q`` ``(B, H * D)``, ``k`` and ``v`` ``(B, H_kv * D)`` (the projections of one token per row);
    ``position`` ``(1,)`` int64 on the device; ``inv_freq`` ``(D / 2,)`` float32 and ``scaling``
    the rotary module's. ``triton_kernel`` as in :func:`rms_norm`.

    Example: ``q_rot = rope_store(q, k, v, cache.position, cache.layers[i], rotary.inv_freq, 1.0)``.
    """
    batch, kv_heads, slots, dim = layer.keys.shape
    heads = q.shape[1] // dim
    use = (q.is_cuda if triton_kernel is None else triton_kernel) and all(t.is_contiguous() for t in (q, k, v))
    if not use:  # transformers' arithmetic: cos and sin rounded to the dtype, then multiply-add
        q = rotate(q.view(batch, heads, 1, dim), position, inv_freq, scaling)
        slot = layer.slot_of(position)
        layer.keys.index_copy_(2, slot, rotate(k.view(batch, kv_heads, 1, dim), position, inv_freq, scaling))
        layer.values.index_copy_(2, slot, v.view(batch, kv_heads, 1, dim))
        layer.positions.index_copy_(0, slot, position)
        return q
    q_out = torch.empty(batch, heads, 1, dim, dtype=q.dtype, device=q.device)
    sink, window = layer.ring if layer.ring is not None else (0, 1)
    _rope_store_kernel[(batch, heads + kv_heads)](
        q, k, v, q_out, layer.keys, layer.values, layer.positions, position, inv_freq, float(scaling), sink, window,
        heads, kv_heads, layer.keys.stride(0), layer.keys.stride(1), layer.keys.stride(2),
        RING=layer.ring is not None, HALF=dim // 2)
    return q_out


# ---------------------------------------------------------------------- the step
class DecodeStep:
    """``step(ids, position) -> logits``: one token per row through every layer of ``model``,
    its keys and values written into ``cache`` (a
    :class:`~longgen_core.models.static.StaticLongGenCache` that a prefill has filled).

    ``ids`` ``(B, 1)`` int64 and ``position`` ``(1,)`` int64, both on the model's device;
    returns float32 logits ``(B, V)``. Every layer's weights, pattern and slot layout are
    resolved here, once, so a step runs no Python that depends on its values: it can be captured
    as a CUDA graph.
    """

    def __init__(self, model, cache):
        reason = unsupported(model)
        if reason is not None:
            raise ValueError(f"DecodeStep cannot run this model: {reason}")
        self.model = model
        decoder = model.model
        rotary = decoder.rotary_emb
        self.inv_freq = rotary.inv_freq.float()
        self.rope_scaling = float(getattr(rotary, "attention_scaling", 1.0))
        self.layers = [(layer, cache.layers[i], getattr(layer.self_attn, PATTERN_ATTR))
                       for i, layer in enumerate(decoder.layers)]
        # the attention function's own choice of kernels (CUDA, half precision, a supported head size),
        # asked with an empty query of the cache's dtype, device and head size
        self.ops = kernel_ops("auto", cache.layers[0].keys[:0, :0, :0], reindex=False)
        self.cuda = model.device.type == "cuda"

    def _residual(self, residual: torch.Tensor, x: torch.Tensor, linear: torch.nn.Linear) -> torch.Tensor:
        """``residual + linear(x)``; on CUDA in one matmul that adds the residual as it writes."""
        if self.cuda and linear.bias is None:
            return torch.addmm(residual, x, linear.weight.t())
        return residual + linear(x)

    def _attend(self, q: torch.Tensor, slots, pattern, scale: float, position: torch.Tensor) -> torch.Tensor:
        if self.ops is not None:
            out = self.ops.sparse_decode(q, slots.keys, slots.values, slots.positions, pattern, q_positions=position,
                                         scale=scale)
        else:
            out = slot_attention(q, slots.keys, slots.values, position, slots.positions, pattern, scale)
        return out.reshape(q.shape[0], -1)  # (B, H, 1, D) -> (B, H * D)

    def __call__(self, ids: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        decoder = self.model.model
        h = decoder.embed_tokens(ids.view(-1))  # (B, hidden)
        for layer, slots, pattern in self.layers:
            attention, mlp = layer.self_attn, layer.mlp
            norm = layer.input_layernorm
            x = rms_norm(h, norm.weight, norm.variance_epsilon)
            q = rope_store(attention.q_proj(x), attention.k_proj(x), attention.v_proj(x), position, slots,
                           self.inv_freq, self.rope_scaling)
            h = self._residual(h, self._attend(q, slots, pattern, attention.scaling, position), attention.o_proj)
            norm = layer.post_attention_layernorm
            x = rms_norm(h, norm.weight, norm.variance_epsilon)
            h = self._residual(h, F.silu(mlp.gate_proj(x)) * mlp.up_proj(x), mlp.down_proj)
        h = rms_norm(h, decoder.norm.weight, decoder.norm.variance_epsilon)
        return self.model.lm_head(h).float()
