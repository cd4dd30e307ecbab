"""Sparse attention patterns of LongGen: token predicates, block layouts, budgets.

A pattern answers three questions, at any sequence length and without building an N x N mask:

1. *May query ``q`` attend key ``k``?* -- :meth:`Pattern.mask_mod`, with FlexAttention's
   ``mask_mod(b, h, q_idx, kv_idx)`` signature (tensor ops only, so it also vmaps).
2. *Which tiles of the attention matrix must a kernel visit?* -- :meth:`Pattern.block_layout`:
   per head, CSR rows (query tile -> kept key tiles, forward and dQ) and CSC columns (key tile ->
   query tiles, dK/dV), each tile flagged "fully kept" or "needs the mask inside".
3. *What does it cost?* -- :meth:`Pattern.row_counts`, :meth:`Pattern.density`,
   :meth:`Pattern.kv_budget`, :func:`attention_flops`.

Conventions (all patterns are causal: key ``k`` is never after query ``q``):

- ``sliding_window(w)``: ``q - w < k <= q`` -- the window counts the query itself, so a query sees
  exactly ``w`` keys once ``q >= w - 1``.
- ``sink_window(s, w)``: the window above, plus the first ``s`` tokens (the attention sink).
- ``strided(block_size, local_blocks, vert_stride, homo_head)``: decided per block of
  ``block_size`` tokens, as in the authors' kernel (linxihui/dkernel, used in LongGen and
  Phi-3-small). Query block ``i`` keeps key block ``j <= i`` when ``i - j < local_blocks`` (the
  local band) or ``(j + h * head_sliding_step) % vert_stride == 0`` (a vertical stripe). Block
  ``0`` is vertical for head 0, so it doubles as an attention sink (vLLM's Phi-3 code instead
  tests ``j + 1``; we follow dkernel). With ``homo_head=False`` each head shifts its stripes by
  ``h * head_sliding_step`` with ``head_sliding_step = max(1, vert_stride // num_heads)``, so
  the heads together cover every block. Inside the diagonal block the token-level causal mask
  applies.
- Every size is an int of at most :data:`MAX_PATTERN_SIZE` (``2**31 - 1``, the kernels' int32),
  and a stored ``head_sliding_step`` at most ``vert_stride``; the factories raise ValueError
  naming the argument otherwise.

Example::

    >>> p = sink_window(sink_tokens=2, window_tokens=3)
    >>> p.name
    'sink_window_2_3'
    >>> p.dense_mask(6)[0].int().tolist()[5]   # query 5 sees the sink {0, 1} and {3, 4, 5}
    [1, 1, 0, 1, 1, 1]
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from .layout import TILE_EMPTY, TILE_FULL, TILE_PARTIAL, BlockLayout


# Largest pattern size (sink, window, block size, band, stride, head shift). The kernels take the
# sizes as int32 arguments and compare them with int32 token offsets; the reference subtracts them
# from int64 positions. Below 2**31 both stay exact.
MAX_PATTERN_SIZE = 2**31 - 1


def check_int(name: str, value, minimum: int, maximum: int | None = None) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is an int (not a bool) in
    ``[minimum, maximum]`` (no upper bound when ``maximum`` is None).

    Example: ``check_int("num_heads", 0, 1)`` raises ``num_heads must be an int >= 1, got 0``.
    """
    allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int {allowed}, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be an int {allowed}, got {value}")


def _check_size(name: str, value, minimum: int) -> None:
    """A pattern size: an int in ``[minimum, MAX_PATTERN_SIZE]``."""
    check_int(name, value, minimum)
    if value > MAX_PATTERN_SIZE:
        raise ValueError(f"{name} must be an int in [{minimum}, 2**31 - 1]: the kernels take pattern sizes "
                         f"as int32, got {value}")


def _check_block_size(name: str, value) -> None:
    _check_size(name, value, 16)
    if value & (value - 1):
        raise ValueError(f"{name} must be a power of 2 >= 16 (16, 32, 64, 128, ...), got {value}")


@dataclass(frozen=True)
class Pattern:
    """One attention pattern. Build it with a factory (:func:`sink_window`, ...), not directly.

    Attributes:
        kind: ``"full"``, ``"sliding_window"``, ``"sink_window"`` or ``"strided"``.
        sink_tokens, window_tokens: token-level parameters (``sink_window``/``sliding_window``).
        block_size, local_blocks, vert_stride, homo_head, head_sliding_step: ``strided`` only.
    """

    kind: str
    sink_tokens: int = 0
    window_tokens: int = 0
    block_size: int = 0
    local_blocks: int = 0
    vert_stride: int = 0
    homo_head: bool = True
    head_sliding_step: int = 1

    # ------------------------------------------------------------------ serialisation
    @property
    def name(self) -> str:
        """The factory call, flattened: ``sink_window_64_4096``, ``strided_64_16_8_hetero``, ...

        The strided head shift is not spelled: :meth:`from_name` derives it from ``num_heads``.
        """
        if self.kind == "full":
            return "full_causal"
        return "_".join([self.kind, *(_spell(getattr(self, f)) for f in _NAME_FIELDS[self.kind])])

    def to_dict(self) -> dict:
        """The factory arguments as a JSON-able dict (inverse of :meth:`from_dict`).

        Example: ``sink_window(4, 32).to_dict()`` -> ``{'kind': 'sink_window', 'sink_tokens': 4,
        'window_tokens': 32}``.
        """
        return {"kind": self.kind, **{f: getattr(self, f) for f in _DICT_FIELDS[self.kind]}}

    @staticmethod
    def from_dict(d: dict) -> "Pattern":
        """Rebuild a pattern from :meth:`to_dict` through its factory (parameters validated again)."""
        if not isinstance(d, dict) or d.get("kind") not in _DICT_FIELDS:
            raise ValueError(f"pattern must be a dict with 'kind' in {sorted(_DICT_FIELDS)}, got {d!r}")
        kind, fields = d["kind"], _DICT_FIELDS[d["kind"]]
        if set(d) != {"kind", *fields}:
            raise ValueError(f"pattern of kind {kind!r} takes exactly the keys {list(fields)}, got {sorted(d)}")
        if kind != "strided":
            return _FACTORIES[kind](*(d[f] for f in fields))
        base = strided(*(d[f] for f in _NAME_FIELDS[kind]))
        # A shift of vert_stride + s draws the stripes of s, so larger steps add no pattern; the
        # bound also keeps the kernels' int32 product head * step in range (kernels.api checks it).
        check_int("head_sliding_step", d["head_sliding_step"], 1, base.vert_stride)
        # strided() derives the per-head shift from num_heads; the dict stores the shift itself.
        return dataclasses.replace(base, head_sliding_step=d["head_sliding_step"])

    @staticmethod
    def from_name(name: str, num_heads: int | None = None) -> "Pattern":
        """The pattern whose :attr:`name` is ``name``; ``num_heads`` sets a strided head shift.

        Example: ``Pattern.from_name("sink_window_64_4096") == sink_window(64, 4096)``.
        """
        for kind, fields in _NAME_FIELDS.items():
            prefix = "full_causal" if kind == "full" else kind
            words = str(name).split("_")[prefix.count("_") + 1:]
            if "_".join([prefix, *words]) != str(name) or len(words) != len(fields):
                continue
            values = [_unspell(f, w) for f, w in zip(fields, words)]
            if None in values:
                continue
            if kind == "strided":
                return strided(*values, num_heads=num_heads)
            return _FACTORIES[kind](*values)
        raise ValueError(f"unknown pattern name {name!r}: expected sink_window_S_W, sliding_window_W, "
                         "strided_B_L_V_homo|hetero or full_causal")

    # ------------------------------------------------------------------ token level
    @property
    def per_head(self) -> bool:
        """True when heads see different keys (strided with ``homo_head=False``)."""
        return self.kind == "strided" and not self.homo_head

    @property
    def mask_mod(self):
        """FlexAttention predicate ``mask_mod(b, h, q_idx, kv_idx)``: True where the query may
        attend the key. A plain 4-argument function named after the pattern, so it can be passed
        to ``create_block_mask``; args are integer tensors (or ints) that broadcast; ``b`` unused.
        """

        def mask_mod(b, h, q_idx, kv_idx):
            return self.keep(h, q_idx, kv_idx)

        mask_mod.__name__ = self.name
        return mask_mod

    def keep(self, h, q_idx, kv_idx):
        """The token predicate: may query ``q_idx`` of head ``h`` attend key ``kv_idx``?

        Integer tensors (or ints) that broadcast. Every other Python check of this package calls
        it (or :meth:`block_keep`); ``kernels.common.pattern_keep`` is its Triton twin.
        """
        causal = q_idx >= kv_idx
        if self.kind == "full":
            return causal
        if self.kind == "sliding_window":
            return causal & (q_idx - kv_idx < self.window_tokens)
        if self.kind == "sink_window":
            return causal & ((kv_idx < self.sink_tokens) | (q_idx - kv_idx < self.window_tokens))
        # strided: decided per block of block_size tokens, causal inside the diagonal block
        return causal & self.block_keep(h, q_idx // self.block_size, kv_idx // self.block_size)

    def block_keep(self, h, q_blk, kv_blk):
        """The strided block predicate, causality aside: may query block ``q_blk`` of head ``h``
        attend key block ``kv_blk`` (``kv_blk <= q_blk``)? The local band or a vertical stripe."""
        offset = 0 if self.homo_head else h * self.head_sliding_step
        return (q_blk - kv_blk < self.local_blocks) | ((kv_blk + offset) % self.vert_stride == 0)

    def slot_mask(self, q_pos, k_pos: torch.Tensor, num_heads: int = 1) -> torch.Tensor:
        """Bool ``(H or 1, Nq, Nk)``: query ``q_pos[i]`` sees the key at ``k_pos[j]`` (``-1``: an
        empty cache slot, never seen). ``q_pos``: ``(Nq,)`` int64 tensor or an int; ``k_pos``:
        ``(Nk,)`` int64. ``H`` heads when the pattern differs per head, else 1 (broadcasts)."""
        heads = num_heads if self.per_head else 1
        h = torch.arange(heads, device=k_pos.device).view(-1, 1, 1)
        q = torch.as_tensor(q_pos, device=k_pos.device).view(1, -1, 1)
        return self.keep(h, q, k_pos.view(1, 1, -1)) & (k_pos >= 0).view(1, 1, -1)

    def dense_mask(self, n: int, num_heads: int = 1, n_queries: int | None = None) -> torch.Tensor:
        """Token mask as a bool tensor ``(heads, n_queries, n)``; for small ``n`` only.

        ``heads`` is ``num_heads`` when the pattern differs per head, else 1 (broadcasts).
        ``n_queries`` < ``n`` gives the last rows (queries at positions ``n - n_queries .. n-1``),
        the shape a decode step needs.

        Example: ``full_causal().dense_mask(3)[0]`` is the lower-triangular 3 x 3 matrix.
        """
        check_int("n", n, 1)
        n_queries = n if n_queries is None else n_queries
        check_int("n_queries", n_queries, 1)
        if n_queries > n:
            raise ValueError(f"n_queries must be <= n ({n}), got {n_queries}")
        heads = num_heads if self.per_head else 1
        mask = self.slot_mask(torch.arange(n - n_queries, n), torch.arange(n), num_heads)
        return mask.expand(heads, n_queries, n).contiguous()

    # ------------------------------------------------------------------ counts and budgets
    def row_counts(self, n: int, head: int = 0) -> torch.Tensor:
        """Number of keys each query attends, shape ``(n,)`` int64, in O(n) (no N x N mask).

        Example: ``sliding_window(2).row_counts(4)`` -> ``tensor([1, 2, 2, 2])``.
        """
        check_int("n", n, 1)
        q = torch.arange(n, dtype=torch.int64)
        if self.kind == "full":
            return q + 1
        if self.kind == "sliding_window":
            return torch.clamp(q + 1, max=self.window_tokens)
        if self.kind == "sink_window":
            window_start = torch.clamp(q - self.window_tokens + 1, min=0)
            sinks_outside_window = torch.clamp(torch.clamp(window_start, max=self.sink_tokens), min=0)
            return q - window_start + 1 + sinks_outside_window
        return self._strided_counts(n, [head])

    def row_counts_any_head(self, n: int, num_heads: int = 1) -> torch.Tensor:
        """``(n,)`` int64: keys each query attends for at least one of ``num_heads`` heads (the
        slots an evicting cache must keep for it); :meth:`row_counts` unless strided per head."""
        check_int("n", n, 1)
        if not self.per_head:
            return self.row_counts(n)
        return self._strided_counts(n, range(num_heads))

    def _strided_counts(self, n: int, heads) -> torch.Tensor:
        """Strided: kept whole blocks before the diagonal block (for any of ``heads``), plus the
        causal part of the diagonal block. Shape ``(n,)``."""
        b = self.block_size
        i, j = torch.arange(math.ceil(n / b)).view(-1, 1), torch.arange(math.ceil(n / b)).view(1, -1)
        kept = torch.zeros(i.shape[0], j.shape[1], dtype=torch.bool)
        for h in heads:
            kept |= self.block_keep(h, i, j)
        kept_before = ((j < i) & kept).sum(1)
        q = torch.arange(n, dtype=torch.int64)
        return kept_before[q // b] * b + (q % b) + 1

    def density(self, n: int, num_heads: int = 1) -> float:
        """Kept (query, key) pairs over those of full causal attention, averaged over heads."""
        heads = num_heads if self.per_head else 1
        kept = sum(int(self.row_counts(n, h).sum()) for h in range(heads)) / heads
        return kept / (n * (n + 1) / 2)

    def kv_budget(self, n: int, num_heads: int = 1) -> int:
        """KV tokens a layer holds per head when the context is ``n`` tokens long.

        That is what the latest query (position ``n - 1``) reads. Sink + window:
        ``min(n, sink + window)``, constant once ``n`` passes it; strided: the local blocks plus
        every vertical block so far (grows as n / (block_size * vert_stride)), maxed over heads;
        full: ``n``.
        """
        check_int("n", n, 1)
        if self.kind == "full":
            return n
        if self.kind == "sliding_window":
            return min(n, self.window_tokens)
        if self.kind == "sink_window":
            return min(n, self.sink_tokens + self.window_tokens)
        heads = num_heads if self.per_head else 1
        return max(int(self.row_counts(n, h)[-1]) for h in range(heads))

    # ------------------------------------------------------------------ tiles
    def block_layout(self, n: int, block_size: int = 64, num_heads: int = 1) -> "BlockLayout":
        """Tiles of ``block_size`` x ``block_size`` that a kernel must visit at length ``n``.

        Computed tile by tile from closed forms, never from a token-level N x N mask, so it is
        cheap at 128K. See :class:`BlockLayout`.
        """
        check_int("n", n, 1)
        _check_block_size("block_size", block_size)
        check_int("num_heads", num_heads, 1)
        heads = num_heads if self.per_head else 1
        classes = torch.stack([self._tile_classes(n, block_size, h) for h in range(heads)])
        return BlockLayout.from_classes(classes, n=n, block_size=block_size)

    def _tile_classes(self, n: int, t: int, head: int) -> torch.Tensor:
        """``(nb, nb)`` int8 of TILE_EMPTY / TILE_PARTIAL / TILE_FULL for one head."""
        nb = math.ceil(n / t)
        starts = torch.arange(nb, dtype=torch.int64) * t
        ends = torch.clamp(starts + t, max=n) - 1  # last valid token of each tile
        q0, q1 = starts.view(-1, 1), ends.view(-1, 1)
        k0, k1 = starts.view(1, -1), ends.view(1, -1)
        ragged = (q1 - q0 + 1 < t) | (k1 - k0 + 1 < t)
        any_causal, all_causal = k0 <= q1, k1 <= q0
        if self.kind == "full":
            any_kept, all_kept = any_causal, all_causal
        elif self.kind in ("sliding_window", "sink_window"):
            w, s = self.window_tokens, self.sink_tokens if self.kind == "sink_window" else 0
            # q - k takes every integer in [q0 - k1, q1 - k0]; the window needs one in [0, w - 1]
            any_window = any_causal & (q0 - k1 <= w - 1)
            any_sink = any_causal & (k0 < s)
            # all kept: every key is a sink or within the window of the *last* query q1
            outside_sink_start = torch.clamp(k0, min=s)
            all_kept = all_causal & ((k1 < s) | (q1 - outside_sink_start < w))
            any_kept = any_window | any_sink
        else:
            any_kept, all_kept = self._strided_tiles(n, nb, t, head, any_causal, all_causal)
        classes = torch.full((nb, nb), TILE_EMPTY, dtype=torch.int8)
        classes[any_kept] = TILE_PARTIAL
        classes[all_kept & ~ragged] = TILE_FULL
        return classes

    def _strided_tiles(self, n, nb, t, head, any_causal, all_causal):
        """Tile any/all for the strided pattern from its block mask (tile and block: powers of 2)."""
        b = self.block_size
        if t <= b:  # each tile lies inside one pattern block pair
            blk = torch.arange(nb) * t // b
            i, j = blk.view(-1, 1), blk.view(1, -1)
            keep = (j <= i) & self.block_keep(head, i, j)
            return keep & any_causal, keep & all_causal
        r = t // b  # each tile holds r x r pattern blocks
        nbp, valid = nb * r, math.ceil(n / b)  # pattern blocks past n hold no token
        i, j = torch.arange(nbp).view(-1, 1), torch.arange(nbp).view(1, -1)
        keep = (j <= i) & self.block_keep(head, i, j) & (i < valid) & (j < valid)
        keep_tiles = keep.view(nb, r, nb, r)
        # j <= i already encodes block-level causality; the token-level part is any/all_causal
        return keep_tiles.any(3).any(1) & any_causal, keep_tiles.all(3).all(1) & all_causal


# ---------------------------------------------------------------------- factories
def full_causal() -> Pattern:
    """Dense causal attention: every query sees every earlier key (the full layers)."""
    return Pattern(kind="full")


def sliding_window(window_tokens: int) -> Pattern:
    """Causal sliding window of ``window_tokens`` keys, the query included."""
    _check_size("window_tokens", window_tokens, 1)
    return Pattern(kind="sliding_window", window_tokens=window_tokens)


def sink_window(sink_tokens: int = 64, window_tokens: int = 4096) -> Pattern:
    """Attention sink (the first ``sink_tokens``) plus a sliding window of ``window_tokens``.

    LongGen's default sparse layer: sink 64 + window 4096 at 128K.
    """
    _check_size("sink_tokens", sink_tokens, 0)
    _check_size("window_tokens", window_tokens, 1)
    return Pattern(kind="sink_window", sink_tokens=sink_tokens, window_tokens=window_tokens)


def strided(block_size: int = 64, local_blocks: int = 16, vert_stride: int = 8,
            homo_head: bool = False, num_heads: int | None = None) -> Pattern:
    """Blockwise strided pattern (LongGen's second sparse layer; dkernel conventions).

    Args:
        block_size: tokens per pattern block; a power of 2 >= 16.
        local_blocks: the diagonal band of blocks every query block keeps (>= 1).
        vert_stride: every ``vert_stride``-th key block is kept as a vertical stripe (>= 1).
        homo_head: True: all heads share the stripes; False: head ``h`` shifts them.
        num_heads: sets the per-head shift ``max(1, vert_stride // num_heads)`` (default 1).
    """
    _check_block_size("block_size", block_size)
    _check_size("local_blocks", local_blocks, 1)
    _check_size("vert_stride", vert_stride, 1)
    if not isinstance(homo_head, bool):
        raise ValueError(f"homo_head must be True or False, got {homo_head!r}")
    if num_heads is not None:
        check_int("num_heads", num_heads, 1)
    step = max(1, vert_stride // num_heads) if num_heads else 1
    return Pattern(kind="strided", block_size=block_size, local_blocks=local_blocks,
                   vert_stride=vert_stride, homo_head=homo_head, head_sliding_step=step)


# kind -> the factory arguments its name spells, in order; its dict adds the strided head shift.
_NAME_FIELDS = {
    "full": (),
    "sliding_window": ("window_tokens",),
    "sink_window": ("sink_tokens", "window_tokens"),
    "strided": ("block_size", "local_blocks", "vert_stride", "homo_head"),
}
_DICT_FIELDS = {**_NAME_FIELDS, "strided": (*_NAME_FIELDS["strided"], "head_sliding_step")}
_FACTORIES = {"full": full_causal, "sliding_window": sliding_window, "sink_window": sink_window}


def _spell(value) -> str:
    """One word of a pattern's name: an int, or ``homo``/``hetero`` for ``homo_head``."""
    if isinstance(value, bool):
        return "homo" if value else "hetero"
    return str(value)


def _unspell(field_name: str, word: str):
    """The value :func:`_spell` wrote for ``field_name``, or ``None`` if ``word`` cannot be one."""
    if field_name == "homo_head":
        return {"homo": True, "hetero": False}.get(word)
    return int(word) if word.isdigit() and word.isascii() else None


def default_full_layers(num_layers: int) -> list[int]:
    """LongGen's default: the middle third of the decoder layers keep full attention.

    ``round(num_layers / 3)`` layers, centred (the lower middle when it cannot be exact).

    Example: 32 layers -> [10, ..., 20] (11 layers); 30 layers (SmolLM2) -> [10, ..., 19].
    """
    check_int("num_layers", num_layers, 1)
    count = max(1, round(num_layers / 3))
    start = (num_layers - count) // 2
    return list(range(start, start + count))
