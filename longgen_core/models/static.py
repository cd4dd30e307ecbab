"""Greedy decoding with preallocated KV buffers, one CUDA graph replay per token.

A 135M-parameter model decoding one token launches about a thousand small kernels; launched one
by one from Python (transformers' ``generate``) that host work, not the GPU, sets the speed, for
full attention and for the hybrid alike. Here every decode step does the same work on tensors
that never move, so on CUDA it is captured once as a graph and replayed:

- :class:`StaticLongGenCache`: per layer, keys/values ``(B, H_kv, C, D)`` allocated once.
  Sink + window (and sliding-window) layers hold ``C = sink + window`` slots, position ``p`` in
  slot ``p`` while ``p < sink``, else ``sink + (p - sink) % window`` (a ring: the token leaving the
  window is the one overwritten); every other layer holds ``C = capacity`` slots, position ``p``
  in slot ``p``. Slot positions ``(C,)`` live on the device (-1 = empty), like
  :class:`~longgen_core.models.cache.EvictingLayer`'s, so the attention functions read both alike.
- :class:`StaticDecoder`: prefill (eager, one call), then decode steps that read the position
  and the last token from device tensors, compute the slot on the device and write the next
  token back: no host synchronisation, no shape that changes, no Python branch that depends on
  the step. With ``graphs=True`` (CUDA only) the step is captured once and replayed.
  The step itself is :class:`~longgen_core.models.decode_step.DecodeStep` (the same math as
  transformers' modules in ~17 kernels per layer instead of ~43) for the Llama-family models it
  supports, else the model's own forward; ``fused_step=False`` picks the latter.
- :func:`static_generate`: ``model.generate``-compatible greedy output ``(B, n + T)`` (stopping
  at ``eos_token_id``, ``min_new_tokens``, padding finished rows), for a model converted with
  :func:`~longgen_core.models.convert.to_longgen` (use ``full_layers=range(L)`` for a full-attention
  model on the same path). A converted model's ``generate()`` calls it on CUDA by itself
  (:func:`~longgen_core.models.cache.evict_by_default`).

Example (CPU, eager steps)::

    >>> import torch
    >>> from longgen_core.models.base import tiny_llama
    >>> from longgen_core.models.convert import to_longgen
    >>> from longgen_core.patterns import sink_window
    >>> model = to_longgen(tiny_llama(), pattern=sink_window(4, 16)).eval()
    >>> ids = torch.randint(0, 100, (2, 40))
    >>> static_generate(model, ids, max_new_tokens=8, graphs=False).shape
    torch.Size([2, 48])
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

from ..patterns import Pattern
from .decode_step import DecodeStep, unsupported
from .settings import layer_patterns

__all__ = ["CAPACITY_STEP", "StaticLayer", "StaticLongGenCache", "StaticDecoder", "static_generate",
           "static_call", "current_decoder", "release_decoder", "round_capacity"]

CAPACITY_STEP = 256  # capacities round up to this, so nearby lengths reuse one buffer set and graph


def round_capacity(tokens: int) -> int:
    """``tokens`` rounded up to a multiple of :data:`CAPACITY_STEP`."""
    return -(-tokens // CAPACITY_STEP) * CAPACITY_STEP


def _ring(pattern: Pattern) -> tuple[int, int] | None:
    """``(sink, window)`` for patterns whose keys a ring buffer holds, else ``None``."""
    if pattern.kind in ("sink_window", "sliding_window"):
        return pattern.sink_tokens or 0, pattern.window_tokens
    return None


class StaticLayer(DynamicLayer):
    """One layer's preallocated slots; ``clock`` (shared by all layers) says where the step is.

    Attributes, as :class:`~longgen_core.models.cache.EvictingLayer` has them for the attention
    functions: ``positions`` ``(C,)``, ``query_positions`` ``(m,)``, ``returned_positions`` and
    ``contiguous``.
    """

    is_croppable = False
    holds_slots = True  # the attention functions read the slot positions (attention.SLOT_LAYER_ATTR)

    def __init__(self, pattern: Pattern, clock: "StaticLongGenCache"):
        super().__init__()
        self.pattern, self.clock, self.ring = pattern, clock, _ring(pattern)
        self.positions = self.query_positions = self.returned_positions = None
        self.contiguous = True

    @property
    def seen(self) -> int:
        return self.clock.seen

    def allocate(self, batch: int, kv_heads: int, head_dim: int, capacity: int, dtype, device) -> None:
        slots = sum(self.ring) if self.ring is not None else capacity
        self.keys = torch.zeros(batch, kv_heads, slots, head_dim, dtype=dtype, device=device)
        self.values = torch.zeros_like(self.keys)
        self.positions = torch.full((slots,), -1, dtype=torch.int64, device=device)
        self.is_initialized = True

    def slot_of(self, positions: torch.Tensor) -> torch.Tensor:
        """The slot each position goes to (device arithmetic, no host sync)."""
        if self.ring is None:
            return positions
        sink, window = self.ring
        return torch.where(positions < sink, positions, sink + (positions - sink) % window)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Prefill (``m > 1`` new states, the first call): store what later queries can still see
        and return the new states themselves. Decode (``m == 1``): write the token at
        ``clock.position`` into its slot; return every slot."""
        m, rows = key_states.shape[-2], self.keys.shape[0]
        if key_states.shape[0] != rows and not (m > 1 and key_states.shape[0] == 1):
            raise ValueError(f"the static cache was allocated for batch {rows}, got {key_states.shape[0]} rows")
        if m > 1:  # a batch-1 prefill fills every row (one prompt shared by the whole batch)
            if self.clock.seen != m:  # the decoder counts the prompt in before its prefill
                raise ValueError(f"a static cache takes one prefill (through StaticDecoder), then one token per "
                                 f"step; got {m} tokens with {self.clock.seen} counted")
            every = torch.arange(m, device=key_states.device)
            if self.ring is None:  # position p in slot p: one copy, no gathered intermediate
                self.keys[:, :, :m].copy_(key_states)
                self.values[:, :, :m].copy_(value_states)
                self.positions[:m].copy_(every)
            else:  # the sinks and the last `window` tokens, into their ring slots
                sink, window = self.ring
                keep = torch.cat([every[:min(sink, m)], every[max(sink, m - window):]])
                slots, shape = self.slot_of(keep), (rows, key_states.shape[1], keep.numel(), key_states.shape[3])
                self.keys.index_copy_(2, slots, key_states.index_select(2, keep).expand(shape))
                self.values.index_copy_(2, slots, value_states.index_select(2, keep).expand(shape))
                self.positions.index_copy_(0, slots, keep)
            self.query_positions = self.returned_positions = every
            self.contiguous = True
            return key_states, value_states
        position = self.clock.position
        slot = self.slot_of(position)
        self.keys.index_copy_(2, slot, key_states)
        self.values.index_copy_(2, slot, value_states)
        self.positions.index_copy_(0, slot, position)
        self.query_positions, self.returned_positions, self.contiguous = position, self.positions, False
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.clock.seen

    def get_mask_sizes(self, query_length: int, *args) -> tuple[int, int]:
        return self.clock.seen + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove != 0:
            raise ValueError("a static LongGen cache cannot be cropped (ring slots are overwritten)")


class StaticLongGenCache(Cache):
    """Preallocated slots for ``batch`` rows and up to ``capacity`` tokens (prompt + new).

    ``seen`` (host int) counts the tokens stored; ``position`` ``(1,)`` int64 on ``device`` is the
    position of the token the next decode step writes. The decoder advances both.

    Example: ``StaticLongGenCache(model.config, batch=1, capacity=4096, dtype=torch.float32, device="cpu")``.
    """

    def __init__(self, config, batch: int, capacity: int, dtype, device):
        if capacity < 2:
            raise ValueError(f"capacity must be at least 2 tokens, got {capacity}")
        super().__init__(layers=[StaticLayer(p, self) for p in layer_patterns(config)])
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        for layer in self.layers:
            layer.allocate(batch, config.num_key_value_heads, head_dim, capacity, dtype, device)
        self.batch, self.capacity, self.device = batch, capacity, torch.device(device)
        self.seen = 0
        self.position = torch.zeros(1, dtype=torch.int64, device=device)

    def reset(self) -> None:
        """Empty every slot (the buffers stay), so the cache serves another prompt."""
        for layer in self.layers:
            layer.positions.fill_(-1)
        self.seen = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen


class StaticDecoder:
    """Prefill + greedy decode steps over one :class:`StaticLongGenCache` (reused across prompts).

    Args:
        model: a converted model (its layers' patterns come from ``config.longgen``).
        batch, capacity: the cache's rows and token capacity (prompt + new tokens).
        graphs: replay the step as a CUDA graph (captured at the first step). Needs CUDA.
        fused_step: decode through :class:`~longgen_core.models.decode_step.DecodeStep` when it
            supports the model (``fused`` says whether it does); ``False``: the model's forward.

    Example: ``dec = StaticDecoder(model, 1, 33024, graphs=True); out = dec.generate(ids, 256)``.
    """

    def __init__(self, model, batch: int, capacity: int, graphs: bool = False, fused_step: bool = True):
        device = model.device
        if graphs and device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA model, this one is on {device}: pass graphs=False")
        self.model, self.graphs, self.graph = model, graphs, None
        self.cache = StaticLongGenCache(model.config, batch, capacity, model.dtype, device)
        self.fused = DecodeStep(model, self.cache) if fused_step and unsupported(model) is None else None
        self.ids = torch.zeros(batch, 1, dtype=torch.int64, device=device)  # the last token, per row
        self.finished = torch.zeros(batch, dtype=torch.bool, device=device)
        self.generated = torch.zeros(batch, capacity, dtype=torch.int64, device=device)
        # Per call, as device tensors (a captured graph keeps tensors, not Python numbers):
        self.start = torch.zeros(1, dtype=torch.int64, device=device)  # prompt length
        self.min_end = torch.zeros(1, dtype=torch.int64, device=device)  # first position EOS may end
        self.eos = torch.full((1,), -1, dtype=torch.int64, device=device)
        self.pad = torch.zeros(1, dtype=torch.int64, device=device)

    def _choose(self, logits: torch.Tensor, produced_at: torch.Tensor) -> None:
        """Greedy pick from ``logits`` ``(B, V)`` for the token at ``produced_at``; EOS is
        suppressed before ``min_end``, finished rows get ``pad``. Writes ``ids`` and ``generated``."""
        eos = self.eos.clamp(min=0)
        blocked = (produced_at < self.min_end) & (self.eos >= 0)
        eos_logit = logits.gather(1, eos.expand(logits.shape[0], 1))
        logits = logits.scatter(1, eos.expand(logits.shape[0], 1),
                                torch.where(blocked, torch.full_like(eos_logit, float("-inf")), eos_logit))
        token = torch.where(self.finished, self.pad, logits.argmax(-1))
        self.finished |= token == self.eos
        self.ids.copy_(token.view(-1, 1))
        self.generated.index_copy_(1, produced_at - self.start, self.ids)

    def _step(self) -> None:
        position = self.cache.position
        if self.fused is not None:
            logits = self.fused(self.ids, position)
        else:
            logits = self.model(input_ids=self.ids, position_ids=position.view(1, 1), past_key_values=self.cache,
                                use_cache=True, logits_to_keep=1).logits[:, -1].float()
        self._choose(logits, position + 1)
        position.add_(1)

    def _capture(self) -> None:
        # One eager run compiles the Triton kernels and sets up cuBLAS; it writes the same keys into
        # the same slots as the real first step will (same token, same position), so only the
        # step's own outputs need putting back before the graph replays it.
        outputs = (self.ids, self.finished, self.generated, self.cache.position)
        saved = [t.clone() for t in outputs]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self._step()
        torch.cuda.current_stream().wait_stream(stream)
        for target, value in zip(outputs, saved):
            target.copy_(value)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._step()

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, eos_token_id: int | None = None, pad_token_id: int | None = None,
                min_new_tokens: int = 0) -> None:
        """Empty the cache, run the prompt ``(B, n)`` (or ``(1, n)``: one prompt for every row) and
        pick the first new token."""
        batch, n = input_ids.shape
        cache = self.cache
        if batch not in (1, cache.batch):
            raise ValueError(f"this decoder holds {cache.batch} rows, got a batch of {batch}")
        if n < 2:
            raise ValueError(f"the prompt needs at least 2 tokens, got {n}")
        if n >= cache.capacity:
            raise ValueError(f"the prompt ({n} tokens) leaves no room in the cache ({cache.capacity} tokens)")
        cache.reset()
        self.start.fill_(n)
        self.min_end.fill_(n + min_new_tokens)
        self.eos.fill_(-1 if eos_token_id is None else eos_token_id)
        self.pad.fill_(pad_token_id if pad_token_id is not None else max(eos_token_id or 0, 0))
        self.finished.zero_()
        cache.seen = n
        ids = input_ids.to(cache.device)
        out = self.model(input_ids=ids, position_ids=torch.arange(n, device=ids.device).view(1, -1),
                         past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache.position.fill_(n)
        self._choose(out.logits[:, -1].float(), cache.position)

    @torch.no_grad()
    def step(self) -> None:
        """One decode step: the last token in, the next one into ``ids`` and ``generated``."""
        cache = self.cache
        if cache.seen + 1 > cache.capacity:  # checked on the host: an index past the buffers never launches
            raise ValueError(f"the cache is full ({cache.capacity} tokens): make a decoder with a larger capacity")
        if self.graphs:
            if self.graph is None:
                self._capture()
            self.graph.replay()
        else:
            self._step()
        cache.seen += 1

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, eos_token_id: int | None = None,
                 pad_token_id: int | None = None, min_new_tokens: int = 0, check_every: int = 32) -> torch.Tensor:
        """Greedy continuation ``(B, n + T')`` of ``input_ids`` ``(B, n)``, ``T' <= max_new_tokens``
        (shorter only when every row has ended with ``eos_token_id``; ended rows continue with
        ``pad_token_id``). Checks for the end every ``check_every`` steps (one host sync each)."""
        batch, n = input_ids.shape
        if batch != self.cache.batch:
            raise ValueError(f"this decoder holds {self.cache.batch} rows, got a batch of {batch}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if n + max_new_tokens > self.cache.capacity:
            raise ValueError(f"prompt ({n}) + max_new_tokens ({max_new_tokens}) exceeds the cache capacity "
                             f"({self.cache.capacity} tokens): make a decoder with a larger capacity")
        self.prefill(input_ids, eos_token_id, pad_token_id, min_new_tokens)
        done = 1
        while done < max_new_tokens:
            self.step()
            done += 1
            if eos_token_id is not None and done % check_every == 0 and bool(self.finished.all()):
                break
        new = self.generated[:, :done]
        if eos_token_id is not None:  # stop where transformers stops: the step every row had ended by
            ended = (new == eos_token_id).cumsum(1) > 0
            all_ended = ended.all(0).nonzero()
            if all_ended.numel():
                new = new[:, :int(all_ended[0]) + 1]
        return torch.cat([input_ids.to(new.device), new], dim=1)


class _DecoderSlot:
    """Where a model keeps its one :class:`StaticDecoder`. A copy of the model gets an empty slot: a
    captured graph belongs to the buffers of the model it was captured on."""

    def __init__(self):
        self.key = self.decoder = None

    def __deepcopy__(self, memo):
        return _DecoderSlot()


_SLOT_ATTR = "_longgen_decoder"


def current_decoder(model) -> StaticDecoder | None:
    """The decoder :func:`static_generate` keeps on ``model`` (``None`` before the first call)."""
    slot = getattr(model, _SLOT_ATTR, None)
    return None if slot is None else slot.decoder


def release_decoder(model) -> None:
    """Drop the decoder kept on ``model`` and its buffers (the KV slots of the last shape)."""
    slot = getattr(model, _SLOT_ATTR, None)
    if slot is not None:
        slot.key = slot.decoder = None


def static_generate(model, input_ids: torch.Tensor, max_new_tokens: int, graphs: bool | None = None,
                    fused_step: bool = True, **kwargs) -> torch.Tensor:
    """Greedy ``(B, n + T)`` through a :class:`StaticDecoder` kept on the model and reused while the
    batch, rounded capacity, dtype and graph setting stay the same (one buffer set at a time; the
    buffers stay allocated until another shape comes or :func:`release_decoder`).

    ``graphs``: ``None`` replays CUDA graphs on CUDA and runs eager steps elsewhere; ``fused_step``
    as in :class:`StaticDecoder`. Other keyword arguments go to :meth:`StaticDecoder.generate`.

    Example: ``static_generate(model, ids, 256)`` equals ``model.generate(ids, max_new_tokens=256,
    do_sample=False)`` with a :class:`~longgen_core.models.cache.LongGenCache`, token for token.
    """
    graphs = model.device.type == "cuda" if graphs is None else graphs
    key = (input_ids.shape[0], round_capacity(input_ids.shape[1] + max_new_tokens), model.dtype, graphs, fused_step)
    slot = getattr(model, _SLOT_ATTR, None)
    if slot is None:
        slot = _DecoderSlot()
        setattr(model, _SLOT_ATTR, slot)
    if slot.key != key:
        release_decoder(model)  # free the old buffers before allocating new ones
        slot.decoder, slot.key = StaticDecoder(model, key[0], key[1], graphs, fused_step), key
    return slot.decoder.generate(input_ids, max_new_tokens, **kwargs)


# generate() keywords the static path honours; any other keyword (sampling, beams, processors,
# streamers, returned scores...) leaves the call to transformers' own loop
_STATIC_KWARGS = {"input_ids", "attention_mask", "max_new_tokens", "min_new_tokens", "do_sample",
                  "eos_token_id", "pad_token_id", "use_cache"}
# generation-config fields whose defaults mean plain greedy decoding
_GREEDY_DEFAULTS = {"do_sample": (False, None), "num_beams": (1, None), "repetition_penalty": (1.0, None),
                    "no_repeat_ngram_size": (0, None), "bad_words_ids": (None,), "suppress_tokens": (None,),
                    "begin_suppress_tokens": (None,), "forced_bos_token_id": (None,),
                    "forced_eos_token_id": (None,), "sequence_bias": (None,), "stop_strings": (None,)}


def _single_token(value):
    if isinstance(value, (list, tuple)):
        return value[0] if len(value) == 1 else "many"
    return value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value


def static_call(model, args: tuple, kwargs: dict) -> dict | None:
    """The :func:`static_generate` arguments for a ``model.generate(*args, **kwargs)`` call that is
    plain greedy decoding of an unpadded CUDA batch, else ``None`` (transformers' loop runs it).

    Example: ``static_call(model, (ids,), {"max_new_tokens": 8})`` -> ``{"input_ids": ids, ...}``
    on CUDA; ``None`` with ``do_sample=True`` or on the CPU.
    """
    call = dict(kwargs)
    if args:
        if len(args) > 1 or "input_ids" in call:
            return None
        call["input_ids"] = args[0]
    ids = call.get("input_ids")
    if model.device.type != "cuda" or not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[1] < 2 \
            or not set(call) <= _STATIC_KWARGS or call.get("use_cache", True) is False:
        return None
    config = model.generation_config
    for name, greedy in _GREEDY_DEFAULTS.items():
        if call.get(name, getattr(config, name, None)) not in greedy:
            return None
    new_tokens = call.get("max_new_tokens", config.max_new_tokens)
    eos = _single_token(call.get("eos_token_id", config.eos_token_id))
    pad = _single_token(call.get("pad_token_id", config.pad_token_id))
    if new_tokens is None or eos == "many" or pad == "many":
        return None
    mask = call.get("attention_mask")
    if mask is not None and (mask.shape != ids.shape or not bool(mask.all())):
        return None  # padding: transformers' loop, whose LongGen attention refuses it with a clear error
    return {"input_ids": ids, "max_new_tokens": int(new_tokens), "eos_token_id": eos,
            "pad_token_id": eos if pad is None else pad,
            "min_new_tokens": int(call.get("min_new_tokens", config.min_new_tokens or 0) or 0)}
