"""A KV cache whose sparse layers keep only what their pattern can still attend: O(sink + window).

Built on transformers' public Cache API (``Cache`` holding one ``CacheLayerMixin`` per decoder
layer), so ``model.generate(ids, past_key_values=LongGenCache(model.config))`` uses it; a converted
model's plain ``model.generate(ids)`` does so by itself (:func:`evict_by_default`).

Each layer holds *slots*, not a sequence::

    keys, values: (B, H_kv, C, D)   C slots, in any order
    positions:    (C,) int64        each slot's original token position, -1 = empty

Keys are cached already rotated with their original RoPE position (the model applies RoPE before
``update``) and are never re-rotated: the hybrid is trained that way. A query at position ``p``
sees slot ``s`` iff ``positions[s] >= 0`` and ``pattern.mask_mod(0, h, p, positions[s])`` -- the
contract of ``sparse_decode`` in ``longgen_core.kernels.api``, which gets exactly these tensors.

Eviction rule (one for every pattern): before new tokens are written, a slot is kept iff the first
new query can still see it (for any head). Patterns are monotone -- a key the query at ``p`` cannot
see, no later query sees either -- so nothing needed is ever dropped. Freed slots are reused in
place, so a sink + window layer allocates ``sink + window`` slots once and then never copies.
Full layers keep everything (append-only, like ``DynamicCache``).

Example::

    >>> import torch
    >>> from longgen_core.patterns import sink_window
    >>> layer = EvictingLayer(sink_window(2, 4))
    >>> k = torch.randn(1, 1, 10, 8)
    >>> _ = layer.update(k, k)               # prefill 10 tokens: keeps the sinks 0, 1 and 6..9
    >>> layer.positions_cpu.tolist()
    [0, 1, 6, 7, 8, 9]
    >>> _ = layer.update(k[:, :, :1], k[:, :, :1])   # token 10 overwrites the slot of token 6
    >>> layer.positions_cpu.tolist(), layer.get_seq_length()
    ([0, 1, 10, 7, 8, 9], 11)
"""

from __future__ import annotations

import types

import torch
from transformers.cache_utils import Cache, DynamicLayer

from ..patterns import Pattern, full_causal
from .settings import layer_patterns
from .static import static_call, static_generate

__all__ = ["EvictingLayer", "LongGenCache", "evict_by_default", "kv_cache_bytes", "kv_slots_formula",
           "kv_bytes_formula", "measure_kv_bytes", "generate_with_cache", "greedy_recompute"]


def _to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``host`` (a CPU tensor of positions or slots) on ``device`` without waiting for the GPU.

    A copy from pageable memory first synchronises the stream (CUDA's rule for such copies), so
    each one made the host wait for every queued kernel and left the GPU idle while the host
    caught up: four per sparse layer in a prefill. From pinned memory the copy is queued like a
    kernel (PyTorch keeps the pinned block until the copy is done).
    """
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def visible(pattern: Pattern, query_pos: int, positions: torch.Tensor, num_heads: int = 1) -> torch.Tensor:
    """Bool ``(C,)``: which slot positions the query at ``query_pos`` sees, for at least one head."""
    return pattern.slot_mask(query_pos, positions, num_heads).any(0)[0]


class EvictingLayer(DynamicLayer):
    """One decoder layer's slots under ``pattern`` (``full_causal()``: keep everything).

    Bookkeeping (positions, the number of tokens seen) lives on the host: it depends only on
    counts, never on data, so no GPU synchronisation is needed to decide what to evict.

    Attributes:
        positions_cpu: ``(C,)`` int64 slot positions (-1 empty). ``positions``: the same on device.
        query_positions: ``(Nq,)`` positions of the tokens of the last ``update`` (device).
        returned_positions: ``(Nk,)`` positions of the keys the last ``update`` returned (device).
        contiguous: True when the last returned keys were exactly positions ``0..Nk-1`` in order.
    """

    is_croppable = False
    holds_slots = True  # the attention functions read the slot positions (attention.SLOT_LAYER_ATTR)
    grow = 1024  # tokens of room a full layer's buffer gains when it must grow while decoding

    def __init__(self, pattern: Pattern | None = None, num_heads: int = 1):
        super().__init__()
        self.pattern = pattern if pattern is not None else full_causal()
        self.num_heads = num_heads
        self.seen = 0
        self.positions_cpu = torch.empty(0, dtype=torch.int64)
        self.positions = self.query_positions = self.returned_positions = None
        self.contiguous = True
        self._buffer = None  # full layers: (keys, values) storage with room to grow
        self._arange = None  # full layers: (host, device) 0..room-1, sliced as positions

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        # (B, H_kv, 0, D) rather than DynamicLayer's 1-D empty tensor: slots are indexed on dim 2.
        shape = (*key_states.shape[:2], 0, key_states.shape[3])
        self.keys, self.values = key_states.new_empty(shape), value_states.new_empty(shape)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Store new ``(B, H_kv, m, D)`` states; return the keys/values the new queries attend."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        m, first = key_states.shape[-2], self.seen
        new_pos = torch.arange(first, first + m, dtype=torch.int64)
        self.seen += m
        if self.pattern.kind == "full":
            return self._append(key_states, value_states, first)
        slot = self._ring_slot(first) if m == 1 else None
        if slot is None:
            keep = visible(self.pattern, first, self.positions_cpu, self.num_heads)
            free = (~keep).nonzero().flatten()
            if m == 1 and free.numel() == 1 and self.positions is not None:
                slot = int(free[0])
        if slot is not None:
            # Steady decoding: one token replaces the one slot that fell out of the window. Index
            # with a Python int and update the device positions in place: no host-to-device copy,
            # so no synchronisation with the GPU per layer and token.
            self.keys[:, :, slot:slot + 1].copy_(key_states)
            self.values[:, :, slot:slot + 1].copy_(value_states)
            self.positions_cpu[slot] = first
            self.positions[slot] = first
            self.contiguous = False
            self.returned_positions = self.positions
            self.query_positions = self.positions[slot:slot + 1]
            return self.keys, self.values
        if 0 < m <= free.numel():
            # Decode: overwrite dead slots in place (no allocation, no copy of the kept slots).
            slots = free[:m]
            dev_slots = _to_device(slots, self.keys.device)
            self.keys.index_copy_(2, dev_slots, key_states)
            self.values.index_copy_(2, dev_slots, value_states)
            self.positions_cpu[free] = -1
            self.positions_cpu[slots] = new_pos
            out_pos = self.positions_cpu
            out_k, out_v = self.keys, self.values
        else:
            # Prefill or no free slot: return kept + new, then store only what the last new
            # query still sees (a prefill attends all its tokens but keeps O(window) of them).
            if self.keys.shape[-2] == 0:
                # A first prefill: attend the projected states as they are; copying them into a
                # new tensor would move 2 x N x D bytes per KV head for nothing (cf. _append).
                out_k, out_v, out_pos = key_states, value_states, new_pos
            elif bool(keep.all()):
                out_k = torch.cat([self.keys, key_states], dim=-2)
                out_v = torch.cat([self.values, value_states], dim=-2)
                out_pos = torch.cat([self.positions_cpu, new_pos])
            else:
                idx = _to_device(keep.nonzero().flatten(), self.keys.device)
                out_k = torch.cat([self.keys.index_select(2, idx), key_states], dim=-2)
                out_v = torch.cat([self.values.index_select(2, idx), value_states], dim=-2)
                out_pos = torch.cat([self.positions_cpu[keep], new_pos])
            still = visible(self.pattern, self.seen - 1, out_pos, self.num_heads)
            if bool(still.all()):
                self.keys, self.values, self.positions_cpu = out_k, out_v, out_pos
            else:
                idx = _to_device(still.nonzero().flatten(), out_k.device)
                self.keys, self.values = out_k.index_select(2, idx), out_v.index_select(2, idx)
                self.positions_cpu = out_pos[still]
        device = key_states.device
        self.contiguous = bool(torch.equal(out_pos, torch.arange(out_pos.numel())))
        self.returned_positions = _to_device(out_pos, device)
        self.positions = _to_device(self.positions_cpu, device)
        self.query_positions = _to_device(new_pos, device)
        return out_k, out_v

    def _ring_slot(self, first: int) -> int | None:
        """Sink + window, every slot filled: the slot of the token that left the window (position
        ``first - window``), found by arithmetic instead of a visibility pass over all slots.

        Slots ``sink..sink+window-1`` form a ring written in position order, so position ``q``
        sits at ``sink + (q - positions[sink]) % window`` (every position slot ``sink`` ever holds
        is the same modulo ``window``). ``None`` (the general rule decides) when the layer is not
        in that steady state or the slot holds another position."""
        pattern = self.pattern
        if pattern.kind != "sink_window":
            return None
        sink, window = pattern.sink_tokens, pattern.window_tokens
        if self.positions_cpu.numel() != sink + window:
            return None
        leaving = first - window
        slot = sink + (leaving - int(self.positions_cpu[sink])) % window
        return slot if int(self.positions_cpu[slot]) == leaving else None

    def _append(self, key_states, value_states, first):
        # Full layers keep every token. A prefill keeps the projected states as they are (no copy);
        # later tokens go into a buffer with room for `grow` more, so a decode step writes one
        # token instead of concatenating (copying) the whole history as DynamicCache does.
        held = self.keys.shape[-2]
        if held == 0:
            self.keys, self.values = key_states, value_states
        else:
            if self._buffer is None or self._buffer[0].shape[-2] < self.seen \
                    or self._buffer[0].data_ptr() != self.keys.data_ptr():
                shape = (*self.keys.shape[:2], self.seen + self.grow, self.keys.shape[3])
                self._buffer = (self.keys.new_empty(shape), self.values.new_empty(shape))
                self._buffer[0][:, :, :held].copy_(self.keys)
                self._buffer[1][:, :, :held].copy_(self.values)
            buf_k, buf_v = self._buffer
            buf_k[:, :, held:self.seen].copy_(key_states)
            buf_v[:, :, held:self.seen].copy_(value_states)
            self.keys, self.values = buf_k[:, :, :self.seen], buf_v[:, :, :self.seen]
        # Positions are always 0..seen-1 in order: views of arange buffers made when the room
        # grows, instead of building (or copying from the host) O(n) bookkeeping every step.
        if self._arange is None or self._arange[0].numel() < self.seen:
            room = self.seen + self.grow
            self._arange = (torch.arange(room), torch.arange(room, device=key_states.device))
        self.positions_cpu = self._arange[0][:self.seen]
        self.returned_positions = self.positions = self._arange[1][:self.seen]
        self.query_positions = self.positions[first:]
        self.contiguous = True
        return self.keys, self.values

    def get_seq_length(self) -> int:
        """Tokens seen so far (generation and RoPE count these), not slots held."""
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def num_slots(self) -> int:
        return 0 if self.keys is None else self.keys.shape[-2]

    def reset(self) -> None:
        super().reset()
        self.seen = 0
        self.positions_cpu = torch.empty(0, dtype=torch.int64)
        self.positions = self.query_positions = self.returned_positions = None
        self._buffer = self._arange = None

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat the held slots ``repeats`` times along the batch (transformers' cache API). A full
        layer's growth buffer is dropped: it would keep the batch-1 storage alive; the next
        append makes a new one at the new batch size."""
        self._buffer = None
        super().batch_repeat_interleave(repeats)

    def crop(self, tokens_to_remove: int) -> None:
        # Evicted tokens cannot be restored, so rolling back (assisted decoding) is not possible.
        if tokens_to_remove != 0:
            raise ValueError("LongGenCache cannot be cropped (evicted tokens are gone); assisted or "
                             "speculative decoding is not supported with it")


class LongGenCache(Cache):
    """The cache for a LongGen hybrid (or a post-hoc model): one :class:`EvictingLayer` per layer.

    Args:
        config: the model's config. Layer patterns come from ``config.longgen``
            (:mod:`longgen_core.models.settings`); an unconverted config gives full layers only.

    Example: ``model.generate(ids, past_key_values=LongGenCache(model.config), max_new_tokens=20)``.
    """

    def __init__(self, config):
        heads = config.num_attention_heads
        layers = [EvictingLayer(p, heads) for p in layer_patterns(config)]
        super().__init__(layers=layers)

    def slot_positions(self, layer_idx: int) -> torch.Tensor:
        """``(C,)`` original positions of layer ``layer_idx``'s slots (-1 = empty)."""
        return self.layers[layer_idx].positions


def kv_cache_bytes(cache: Cache) -> list[int]:
    """Bytes of the key and value tensors each layer holds, measured (``numel * element_size``).

    Works for any transformers Cache whose layers have ``keys``/``values`` (e.g. ``DynamicCache``).
    The int64 slot positions (8 bytes per slot, not per head) are bookkeeping and not counted.
    """
    out = []
    for layer in cache.layers:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        out.append(sum(t.numel() * t.element_size() for t in (keys, values) if t is not None))
    return out


def kv_slots_formula(pattern: Pattern, n_tokens: int, num_heads: int = 1,
                     prefill_tokens: int | None = None) -> int:
    """Slots an :class:`EvictingLayer` holds after a prefill of ``prefill_tokens`` then decoding
    one token at a time up to ``n_tokens`` (default: one prefill of ``n_tokens``).

    Each step keeps what its query sees and reuses freed slots, so the layer holds the largest
    visible set of any query it processed: ``max(visible(q) for q in [prefill - 1, n - 1])``.
    Sink + window: ``min(n, sink + window)``; full: ``n``; strided: a sawtooth over its blocks.

    Example: ``kv_slots_formula(sink_window(64, 4096), 131072)`` -> 4160.
    """
    if n_tokens < 1:
        return 0
    prefill = n_tokens if prefill_tokens is None else prefill_tokens
    if not 1 <= prefill <= n_tokens:
        raise ValueError(f"prefill_tokens must be in [1, n_tokens={n_tokens}], got {prefill}")
    if pattern.kind == "full":
        return n_tokens
    return int(pattern.row_counts_any_head(n_tokens, num_heads)[prefill - 1:].max())


def kv_bytes_formula(config, n_tokens: int, dtype: torch.dtype = torch.bfloat16, batch: int = 1,
                     prefill_tokens: int | None = None) -> list[int]:
    """Per-layer KV bytes a :class:`LongGenCache` holds for ``config`` after ``n_tokens`` tokens.

    ``2 (K and V) * batch * kv_heads * head_dim * bytes(dtype) * slots(layer)``, slots from
    :func:`kv_slots_formula`. An unconverted config gives the full-attention cache.

    Example (Llama-2-7B, bf16, 128K, full): 32 layers * 2 * 32 * 128 * 2 B * 131072 = 64 GiB.
    """
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_slot = 2 * batch * config.num_key_value_heads * head_dim * torch.empty(0, dtype=dtype).element_size()
    heads = config.num_attention_heads
    return [per_slot * kv_slots_formula(p, n_tokens, heads, prefill_tokens) for p in layer_patterns(config)]


@torch.no_grad()
def measure_kv_bytes(model, n_tokens: int, cache: Cache | None = None, seed: int = 0) -> list[int]:
    """Prefill ``n_tokens`` random tokens into ``cache`` and return :func:`kv_cache_bytes` of it.

    ``cache`` defaults to ``LongGenCache(model.config)``; pass ``DynamicCache()`` for the stock
    full cache. Only the last position's logits are computed (a 49K vocabulary at 1K tokens
    would otherwise cost 200 MB).
    """
    cache = LongGenCache(model.config) if cache is None else cache
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (1, n_tokens), generator=gen).to(model.device)
    model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return kv_cache_bytes(cache)


# generate() arguments that roll the cache back (assisted / speculative decoding): an evicting cache
# cannot, so with these the caller's choice (or transformers' default cache) stands
_ROLLBACK_ARGS = ("assistant_model", "prompt_lookup_num_tokens", "assistant_early_exit")


def _generate_evicting(self, *args, cuda_graphs: bool = True, **kwargs):
    """``generate`` of a converted model. On CUDA, plain greedy decoding of an unpadded batch runs
    through preallocated buffers replayed as one CUDA graph per token
    (:func:`~longgen_core.models.static.static_generate`); ``cuda_graphs=False`` or any other call
    gets transformers' loop with a fresh :class:`LongGenCache`, unless the call names a cache,
    turns caching off or needs a cache that rolls back."""
    if cuda_graphs:
        call = static_call(self, args, kwargs)
        if call is not None:
            return static_generate(self, call.pop("input_ids"), graphs=True, **call)
    config = kwargs.get("generation_config") or self.generation_config
    use_cache = kwargs.get("use_cache", getattr(config, "use_cache", True))
    if (kwargs.get("past_key_values") is None and use_cache is not False
            and getattr(config, "cache_implementation", None) is None
            and not any(kwargs.get(name) is not None for name in _ROLLBACK_ARGS)):
        kwargs["past_key_values"] = LongGenCache(self.config)
    return type(self).generate(self, *args, **kwargs)


def evict_by_default(model) -> None:
    """Make a converted model's plain ``model.generate(ids)`` use the evicting cache, so its sparse
    layers hold sink + window slots instead of every key (transformers would pick ``DynamicCache``).

    On CUDA, plain greedy calls decode through CUDA graphs (:mod:`longgen_core.models.static`;
    ``model.generate(ids, ..., cuda_graphs=False)`` turns that off). A cache given by the caller
    (``past_key_values=``), ``use_cache=False``, a ``cache_implementation`` and assisted decoding
    keep transformers' behaviour. Bound to the model
    as a method, so ``copy.deepcopy(model)`` generates with the copy. Every conversion and
    :func:`~longgen_core.models.convert.load_longgen` calls it.

    Example: ``out = to_longgen(model).generate(ids, max_new_tokens=20, return_dict_in_generate=True)``;
    ``out.past_key_values`` is a :class:`LongGenCache`.
    """
    model.generate = types.MethodType(_generate_evicting, model)


def generate_with_cache(model, input_ids: torch.Tensor, max_new_tokens: int, **generate_kwargs):
    """Greedy ``model.generate`` with a fresh :class:`LongGenCache`; returns ``(ids, cache)``.

    Generation stops early at the model's end-of-sequence token, as ``generate`` does.

    Example: ``ids, cache = generate_with_cache(hybrid, prompt, 50); kv_cache_bytes(cache)``.
    """
    cache = LongGenCache(model.config)
    generate_kwargs.setdefault("do_sample", False)
    out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), past_key_values=cache,
                         max_new_tokens=max_new_tokens, **generate_kwargs)
    return out, cache


@torch.no_grad()
def greedy_recompute(model, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """The cache's oracle: greedy decoding that re-runs the whole prefix every step, no cache.

    Each step sees every token with the layers' masks, so an evicting cache is correct iff
    ``generate_with_cache`` returns the same tokens. O(n^2): for short tests only.
    """
    ids = input_ids
    for _ in range(max_new_tokens):
        next_id = model(ids, use_cache=False, logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_id], dim=1)
    return ids
