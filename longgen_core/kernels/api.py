"""Public entry points of the sparse attention kernels: checks, layouts, launches, autograd.

- :func:`sparse_attention` -- prefill and training, SDPA's layout ``(B, H, N, D)``, GQA,
  differentiable (an ``autograd.Function`` over the Triton forward and backward).
- :func:`sparse_decode` -- a few new queries against a KV cache of slots in any order (sink slots
  then a ring buffer, or a full cache), reading only the visible chunks.
- :func:`reference_decode` -- the dense oracle for :func:`sparse_decode` (also the CPU path of the
  evicting cache).

``backend="triton"`` runs the kernels of :mod:`.forward`, :mod:`.backward` and :mod:`.decode`:
on a CUDA GPU (fp16/bf16/fp32), or on the CPU when ``TRITON_INTERPRET=1`` was set before
longgen_core was imported (slow; for tests and teaching). ``backend="reference"`` runs the dense
PyTorch reference. Nothing falls back silently: asking for the kernels where they cannot run
raises.

Example::

    >>> import torch
    >>> from longgen_core.patterns import sink_window
    >>> q, k, v = (torch.randn(1, 4, 100, 64) for _ in range(3))
    >>> out = sparse_attention(q, k, v, sink_window(4, 32), backend="reference")
    >>> out.shape
    torch.Size([1, 4, 100, 64])
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import triton

from ..patterns import Pattern
from .backward import dkdv_kernel, dq_kernel
from .common import KIND_FULL, KIND_SINK_WINDOW, KIND_SLIDING, KIND_STRIDED, is_interpreted
from .decode import decode_combine_kernel, decode_kernel
from .forward import forward_kernel
from .reference import check_qkv, reference_attention

__all__ = ["sparse_attention", "sparse_decode", "reference_decode", "KernelConfig", "DecodePlan",
           "default_config", "default_tile", "pattern_args", "visible_chunks", "launch_forward",
           "launch_backward", "TUNED", "SUPPORTED_HEAD_DIMS", "SUPPORTED_DTYPES"]

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
SUPPORTED_BLOCK_SIZES = (16, 32, 64, 128)
BACKENDS = ("triton", "reference")


# ----------------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class KernelConfig:
    """Block sizes and launch settings. Each ``(rows, cols)`` pair divides ``tile``.

    fwd_m/fwd_n: query rows per program / keys per step; dkdv_n/dkdv_m: keys per program /
    queries per step; dq_m/dq_n: like fwd; decode_n: cache slots per step; *_warps and
    *_stages: Triton's num_warps and num_stages. fwd_split / dq_split: the forward / dQ walks each
    CSR row in two loops, its fully kept tiles and then its partial ones (:func:`_split_rows`), so
    that the main loop has no branch. fwd_desc: the forward reads K and V through on-device tensor
    descriptors (TMA loads on Hopper and later); fwd_warp_spec: Triton warp-specialises the split
    walk's mask-free loop (producer warps load, consumers compute). dq_desc / dkdv_desc: as
    fwd_desc, for the loads of each backward step: K and V in the dQ walk, Q and dO in the dK/dV
    walk. dkdv_tile/dq_tile: the tile of the layout that the dK/dV (CSC) and dQ (CSR) walks use,
    0 for ``tile``; a finer layout skips the empty corners of the coarse tiles (dkdv_tile =
    dkdv_n: a 64-key program never visits a 64-query step that sees none of its keys).
    ``dkdv_n, dkdv_m`` divide dkdv_tile, ``dq_m, dq_n`` dq_tile.
    """

    tile: int
    fwd_m: int
    fwd_n: int
    fwd_warps: int = 4
    fwd_stages: int = 2
    dkdv_n: int = 64
    dkdv_m: int = 64
    dkdv_warps: int = 4
    dkdv_stages: int = 2
    dq_m: int = 64
    dq_n: int = 64
    dq_warps: int = 4
    dq_stages: int = 2
    decode_n: int = 64
    decode_warps: int = 4
    decode_stages: int = 2
    decode_per_sm: int = 2  # split the cache until about this many decode programs per SM
    dkdv_tile: int = 0  # 0: tile
    dq_tile: int = 0  # 0: tile
    fwd_split: bool = False  # forward in two loops: fully kept tiles first (no mask code), then partial
    dq_split: bool = False  # the same for the dQ walk
    fwd_desc: bool = False  # forward loads K/V through tensor descriptors (TMA on Hopper)
    fwd_warp_spec: bool = False  # fwd_split's first loop warp-specialised (needs fwd_split and fwd_desc)
    dq_desc: bool = False  # the dQ walk loads K/V through tensor descriptors
    dkdv_desc: bool = False  # the dK/dV walk loads Q/dO through tensor descriptors

    def walk_tiles(self) -> tuple[int, int]:
        """The layout tiles of the dK/dV and dQ walks."""
        return self.dkdv_tile or self.tile, self.dq_tile or self.tile


# Measured with `python -m longgen_core.bench kernels --tune` (kernels/NOTES.md), which prints the
# configs it finds; key: (tile, head_dim, element size in bytes). The head_dim-128 entries: tuned on
# an H200 at 128K and timed against the settings before them (figures/kernels_versus_61e5d48.json;
# the strided decode kept its old setting, which that file shows faster); the head_dim-64 ones: an
# H100 at 32K. Other shapes use the heuristic below.
# Read only: pass another KernelConfig as `config=` instead of editing it at run time.
TUNED: dict[tuple[int, int, int], KernelConfig] = {
    (128, 128, 2): KernelConfig(128, fwd_m=128, fwd_n=128, fwd_warps=8, fwd_stages=3,
                                dkdv_n=64, dkdv_m=64, dkdv_warps=4, dkdv_stages=2,
                                dq_m=128, dq_n=64, dq_warps=8, dq_stages=3,
                                decode_n=32, decode_warps=4, decode_stages=3, decode_per_sm=8,
                                dkdv_tile=64, fwd_desc=True, dkdv_desc=True),
    (64, 128, 2): KernelConfig(64, fwd_m=64, fwd_n=64, fwd_warps=4, fwd_stages=3,
                               dkdv_n=64, dkdv_m=32, dkdv_warps=4, dkdv_stages=3,
                               dq_m=64, dq_n=64, dq_warps=4, dq_stages=2,
                               decode_n=64, decode_warps=4, decode_stages=4, decode_per_sm=4),
    (128, 64, 2): KernelConfig(128, fwd_m=128, fwd_n=64, fwd_warps=4, fwd_stages=3,
                               dkdv_n=64, dkdv_m=64, dkdv_warps=4, dkdv_stages=2,
                               dq_m=128, dq_n=64, dq_warps=4, dq_stages=2,
                               decode_n=64, decode_warps=4, decode_stages=3, decode_per_sm=8,
                               dkdv_tile=64),
    (64, 64, 2): KernelConfig(64, fwd_m=64, fwd_n=64, fwd_warps=4, fwd_stages=3,
                              dkdv_n=64, dkdv_m=64, dkdv_warps=4, dkdv_stages=2,
                              dq_m=64, dq_n=64, dq_warps=4, dq_stages=2,
                              decode_n=32, decode_warps=4, decode_stages=4, decode_per_sm=4),
}


def default_config(tile: int, head_dim: int, dtype: torch.dtype, interpret: bool) -> KernelConfig:
    """The launch settings for one tile size, head_dim and dtype.

    Under the interpreter the sub-blocks are half a tile (from 32 up) and the dK/dV walk uses a
    layout of half the tile (from 16 up), with sub-blocks of half that, so tests exercise the
    sub-tiling paths and two layouts in one backward. On a GPU: :data:`TUNED` if it holds an
    entry, else a safe heuristic.
    """
    if interpret:
        sub = max(16, tile // 2)
        dkdv_tile = max(16, tile // 2)
        dkdv_sub = max(16, dkdv_tile // 2)
        return KernelConfig(tile, sub, sub, dkdv_n=dkdv_sub, dkdv_m=dkdv_sub, dq_m=sub, dq_n=sub,
                            decode_n=16, dkdv_tile=dkdv_tile)
    key = (tile, head_dim, torch.finfo(dtype).bits // 8)
    if key in TUNED:
        return TUNED[key]
    small = torch.finfo(dtype).bits == 32 or head_dim > 64  # fp32 or hd128: smaller steps
    m = min(tile, 128)
    n = min(tile, 64 if not (torch.finfo(dtype).bits == 32) else 32)
    bw = min(tile, 64)
    return KernelConfig(
        tile, fwd_m=m, fwd_n=n, fwd_warps=8 if m == 128 else 4, fwd_stages=3 if not small else 2,
        dkdv_n=bw, dkdv_m=min(tile, 32 if small else 64), dkdv_warps=8 if small else 4, dkdv_stages=2,
        dq_m=bw, dq_n=min(tile, 32 if small else 64), dq_warps=8 if small else 4, dq_stages=2,
        decode_n=64, decode_warps=4, decode_stages=3, dkdv_tile=bw)


def default_tile(pattern: Pattern, interpret: bool) -> int:
    """The layout tile of a pattern: 32 under the interpreter, else 128 (strided: its block, >= 64)."""
    if interpret:
        return 32
    if pattern.kind == "strided":  # match the pattern's blocks: no half-empty stripe tiles
        return min(128, max(64, pattern.block_size))
    return 128


# ----------------------------------------------------------------------------------- layouts
def pattern_args(pattern: Pattern) -> dict:
    """The pattern's parameters as the kernels take them (see ``kernels.common.pattern_keep``);
    ``KIND`` a plain int."""
    kind = {"full": KIND_FULL, "sliding_window": KIND_SLIDING,
            "sink_window": KIND_SINK_WINDOW, "strided": KIND_STRIDED}[pattern.kind].value
    return dict(SINK=pattern.sink_tokens, WINDOW=max(pattern.window_tokens, 1),
                PBLOCK=max(pattern.block_size, 1), LOCAL=pattern.local_blocks,
                VSTRIDE=max(pattern.vert_stride, 1),
                HSTEP=0 if pattern.homo_head else pattern.head_sliding_step, KIND=kind)


def _order(ptr: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Tiles by descending work (stable), and how many are 'heavy' (> 4x the median work)."""
    counts = (ptr[:, 1:] - ptr[:, :-1]).long()  # (H_l, nb)
    order = torch.sort(-counts, dim=1, stable=True).indices.to(torch.int32)
    median = counts.float().median(dim=1).values.clamp(min=1.0)
    heavy = int((counts > 4 * median[:, None]).sum(1).min())
    return order, min(heavy, counts.shape[1] - 1)


@functools.lru_cache(maxsize=8)  # a per-head layout at 128K is ~150 MB on the device
def _kernel_layout(pattern: Pattern, n: int, tile: int, num_heads: int, device: str) -> SimpleNamespace:
    """The block layout as the kernels read it (int32/int8 on ``device``), cached per shape.

    A per-head strided pattern with a shift of 1 repeats every ``vert_stride`` heads: build those
    layouts once and index them by ``h % vert_stride`` (8x less host work at 32 heads).
    """
    distinct = num_heads
    if pattern.per_head and pattern.head_sliding_step == 1 and num_heads > pattern.vert_stride:
        distinct = pattern.vert_stride
    lay = pattern.block_layout(n, tile, distinct)
    if lay.num_layouts > 1 and distinct < num_heads:
        pick = torch.arange(num_heads) % distinct
        for name in ("row_ptr", "col_idx", "row_mask", "col_ptr", "row_idx", "col_mask", "nnz"):
            setattr(lay, name, getattr(lay, name)[pick])
    row_order, row_heavy = _order(lay.row_ptr)
    col_order, col_heavy = _order(lay.col_ptr)
    dev = torch.device(device)
    shared = lay.num_layouts == 1

    def put(t, dtype=torch.int32):
        return t.to(dtype).contiguous().to(dev)

    return SimpleNamespace(
        nb=lay.num_blocks, shared=shared,
        row_ptr=put(lay.row_ptr), col_idx=put(lay.col_idx), row_mask=put(lay.row_mask, torch.int8),
        col_ptr=put(lay.col_ptr), row_idx=put(lay.row_idx), col_mask=put(lay.col_mask, torch.int8),
        row_order=put(row_order), col_order=put(col_order), row_heavy=row_heavy, col_heavy=col_heavy)


@functools.lru_cache(maxsize=8)
def _split_rows(pattern: Pattern, n: int, tile: int, num_heads: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The CSR of :func:`_kernel_layout` with each row's fully kept tiles first (then its partial
    ones, each group in ascending order), and the number of fully kept tiles per row:
    ``(col_idx (H_l, nnz_max), row_full (H_l, nb))`` int32 on ``device``.

    Example: a row keeping tiles 0 (partial: the sink), 5, 6 (full) and 7 (partial: the diagonal)
    becomes ``5, 6, 0, 7`` with ``row_full = 2``.
    """
    lay = _kernel_layout(pattern, n, tile, num_heads, device)
    ptr, idx, partial = lay.row_ptr.long().cpu(), lay.col_idx.cpu(), lay.row_mask.cpu().bool()
    split, full = idx.clone(), torch.zeros(ptr.shape[0], lay.nb, dtype=torch.int32)
    for h in range(ptr.shape[0]):
        count = int(ptr[h, -1])
        rows = torch.repeat_interleave(torch.arange(lay.nb), ptr[h, 1:] - ptr[h, :-1])
        order = torch.sort(rows * 2 + partial[h, :count].long(), stable=True).indices
        split[h, :count] = idx[h, order]
        full[h] = torch.bincount(rows[~partial[h, :count]], minlength=lay.nb).to(torch.int32)
    return split.contiguous().to(device), full.contiguous().to(device)


def _csr_walk(lay, split: bool, pattern: Pattern, n: int, tile: int, num_heads: int, device: str):
    """``(col_idx, row_full)`` for a CSR walk of ``lay``: its own column order when not ``split``
    (``row_full`` is then a placeholder the kernel does not read), else :func:`_split_rows`'s."""
    if split:
        return _split_rows(pattern, n, tile, num_heads, device)
    return lay.col_idx, lay.row_order


def _layout_strides(lay, which: str) -> dict:
    """Per-head strides of one side (``"row"``: CSR, ``"col"``: CSC) of a layout; 0 if shared."""
    ptr, idx, order = ((lay.row_ptr, lay.col_idx, lay.row_order) if which == "row"
                       else (lay.col_ptr, lay.row_idx, lay.col_order))
    z = lay.shared
    return dict(lay_stride_ptr=0 if z else ptr.stride(0), lay_stride_idx=0 if z else idx.stride(0),
                lay_stride_order=0 if z else order.stride(0))


# ----------------------------------------------------------------------------------- checks
def _check_common(q, pattern, scale, backend, tensors: dict) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not isinstance(pattern, Pattern):
        raise TypeError(f"pattern must be a longgen_core.patterns.Pattern, got {type(pattern).__name__}")
    devices = {name: t.device for name, t in tensors.items() if isinstance(t, torch.Tensor)}
    if len(set(devices.values())) > 1:
        raise ValueError(f"all inputs must be on one device, got {devices}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not math.isfinite(scale) or scale <= 0):
        raise ValueError(f"scale must be a positive finite float or None, got {scale!r}")


def _check_triton(q: torch.Tensor, tensors: dict) -> None:
    """The kernels' own limits: dtype, head_dim, device, contiguous head_dim."""
    if q.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"q.dtype must be one of {SUPPORTED_DTYPES} for backend='triton', got "
                        f"{q.dtype} (backend='reference' takes any float dtype)")
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head_dim must be one of {SUPPORTED_HEAD_DIMS} for backend='triton', got "
                         f"{q.shape[-1]}")
    if q.device.type not in ("cuda", "cpu"):
        raise ValueError(f"q.device must be cuda (or cpu under TRITON_INTERPRET=1), got {q.device}")
    if q.device.type == "cpu" and not is_interpreted():
        raise ValueError("backend='triton' got CPU tensors but the Triton kernels were not defined under "
                         "the interpreter: set TRITON_INTERPRET=1 in the environment before importing "
                         "longgen_core, or pass backend='reference'")
    for name, t in tensors.items():
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last dimension (stride(-1) == 1), got "
                             f"strides {tuple(t.stride())}; call .contiguous() first")


def _check_block_size(block_size) -> None:
    if block_size is not None and (isinstance(block_size, bool) or block_size not in SUPPORTED_BLOCK_SIZES):
        raise ValueError(f"block_size must be None or one of {SUPPORTED_BLOCK_SIZES}, got {block_size!r}")


def _check_head_shift(pattern: Pattern, heads: int, key_blocks: int) -> None:
    """The kernels add ``head * head_sliding_step`` to a key block index in int32 (a per-head
    strided pattern only); ``key_blocks``: the largest int32 block index, 0 where it is int64."""
    if pattern.per_head and (heads - 1) * pattern.head_sliding_step + key_blocks > 2**31 - 1:
        raise ValueError(f"{pattern.name} with head_sliding_step={pattern.head_sliding_step} over {heads} heads "
                         f"shifts its stripes past the kernels' int32 range; use fewer heads or a smaller "
                         f"vert_stride")


def _empty(shape, dtype, device, poison: bool) -> torch.Tensor:
    """An output buffer; ``poison``: filled with NaN, so an element a kernel forgets to write
    fails a comparison instead of passing by luck (tests)."""
    if poison:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


# ----------------------------------------------------------------------------------- launches
def _common_args(q, k, pattern, scale, tile):
    batch, heads, n_q, dim = q.shape
    n_k = k.shape[2]
    scale = 1.0 / math.sqrt(dim) if scale is None else float(scale)
    lay = _kernel_layout(pattern, n_k, tile, heads, str(q.device))
    args = dict(H=heads, GROUP=heads // k.shape[1], N_K=n_k, N_Q=n_q, Q_OFF=n_k - n_q,
                HEAD_DIM=dim, TILE=tile, EVEN=(n_k == n_q and n_k % tile == 0),
                DOT_F32=is_interpreted() or q.dtype == torch.float32, **pattern_args(pattern))
    return scale, lay, args


def launch_forward(q, k, v, pattern, scale, cfg: KernelConfig, poison: bool = False):
    """Launch the forward. Returns ``o`` ``(B, H, N_Q, D)`` like q, stored ``(B, N_Q, H, D)`` in
    memory (a transposed view: the layout transformers wants back, so its ``transpose(1, 2)
    .contiguous()`` copies nothing), and ``lse`` ``(B, H, N_Q)`` fp32."""
    scale, lay, a = _common_args(q, k, pattern, scale, cfg.tile)
    if cfg.fwd_desc:
        k, v = _for_descriptors(k), _for_descriptors(v)
    batch, heads, n_q, dim = q.shape
    o = _empty((batch, n_q, heads, dim), q.dtype, q.device, poison).transpose(1, 2)
    lse = _empty((batch, heads, n_q), torch.float32, q.device, poison)
    parts = cfg.tile // cfg.fwd_m
    grid = (batch * heads * lay.nb * parts,)
    col_idx, row_full = _csr_walk(lay, cfg.fwd_split, pattern, k.shape[2], cfg.tile, heads, str(q.device))
    if cfg.fwd_desc:
        _descriptor_scratch(q.device)
    forward_kernel[grid](
        q, k, v, o, lse, lay.row_ptr, col_idx, lay.row_mask, lay.row_order, row_full,
        **_layout_strides(lay, "row"), sm_scale_log2=scale * math.log2(math.e),
        stride_qb=q.stride(0), stride_qh=q.stride(1), stride_qn=q.stride(2),
        stride_kb=k.stride(0), stride_kh=k.stride(1), stride_kn=k.stride(2),
        stride_vb=v.stride(0), stride_vh=v.stride(1), stride_vn=v.stride(2),
        stride_ob=o.stride(0), stride_oh=o.stride(1), stride_on=o.stride(2),
        BH=batch * heads, NUM_TILES=lay.nb, HEAVY=lay.row_heavy, BLOCK_M=cfg.fwd_m, BLOCK_N=cfg.fwd_n,
        SPLIT=cfg.fwd_split, DESC=cfg.fwd_desc, WARP_SPEC=cfg.fwd_warp_spec, num_warps=cfg.fwd_warps,
        num_stages=cfg.fwd_stages, **a)
    return o, lse


def _descriptor_scratch(device: torch.device) -> None:
    """On-device tensor descriptors need a scratch allocator for the descriptors themselves. Set
    it before every such launch: Triton keeps it in a ``ContextVar``, so a value set on one thread
    is unset on another, and autograd runs a CUDA backward on its own thread."""
    triton.set_allocator(_scratch_allocator(str(device)))


@functools.lru_cache(maxsize=None)
def _scratch_allocator(device: str):
    """One allocator per device (``_descriptor_scratch`` sets it): int8 scratch from torch's pool."""
    return lambda size, alignment, stream: torch.empty(size, dtype=torch.int8, device=device)


def _for_descriptors(t: torch.Tensor) -> torch.Tensor:
    """``t`` ``(B, H, N, D)`` if tensor descriptors can read it (TMA: a 16-byte aligned start and
    strides, rows not repeated), else a contiguous copy: a view may start anywhere in its storage,
    and a dO passed to :func:`launch_backward` may be a broadcast (``stride(2) == 0``). Used by
    every launch with a ``*_desc`` option on."""
    size = t.element_size()
    if t.data_ptr() % 16 == 0 and t.stride(2) > 0 and all(s * size % 16 == 0 for s in t.stride()[:-1]):
        return t
    return t.clone(memory_format=torch.contiguous_format)


def launch_backward(do, dlse, q, k, v, o, lse, pattern, scale, cfg: KernelConfig, poison: bool = False):
    """Launch dQ (CSR walk, also writes delta) then dK/dV (CSC walk). Returns dq, dk, dv.

    Each walk reads the layout at its own tile (``cfg.walk_tiles()``); both are cached."""
    dkdv_tile, dq_tile = cfg.walk_tiles()
    scale, lay_r, a_r = _common_args(q, k, pattern, scale, dq_tile)
    _, lay_c, a_c = _common_args(q, k, pattern, scale, dkdv_tile)
    batch, heads, n_q, dim = q.shape
    kv_heads = k.shape[1]
    if do.stride(-1) != 1:
        do = do.contiguous()
    if cfg.dq_desc:
        k, v = _for_descriptors(k), _for_descriptors(v)
    if cfg.dkdv_desc:
        q, do = _for_descriptors(q), _for_descriptors(do)
    delta = torch.empty((batch, heads, n_q), dtype=torch.float32, device=q.device)  # dQ writes it
    has_dlse = dlse is not None
    dlse = dlse.float().contiguous() if has_dlse else delta  # delta: an unread placeholder
    dq = _empty(q.shape, q.dtype, q.device, poison)
    dk = _empty(k.shape, k.dtype, k.device, poison)
    dv = _empty(v.shape, v.dtype, v.device, poison)
    strides = dict(stride_qb=q.stride(0), stride_qh=q.stride(1), stride_qn=q.stride(2),
                   stride_kb=k.stride(0), stride_kh=k.stride(1), stride_kn=k.stride(2),
                   stride_vb=v.stride(0), stride_vh=v.stride(1), stride_vn=v.stride(2),
                   stride_dob=do.stride(0), stride_doh=do.stride(1), stride_don=do.stride(2))
    scales = dict(sm_scale=scale, sm_scale_log2=scale * math.log2(math.e))
    col_idx, row_full = _csr_walk(lay_r, cfg.dq_split, pattern, k.shape[2], dq_tile, heads, str(q.device))
    if cfg.dq_desc or cfg.dkdv_desc:
        _descriptor_scratch(q.device)
    dq_kernel[(batch * heads * lay_r.nb * (dq_tile // cfg.dq_m),)](
        q, k, v, o, do, lse, dlse, delta, dq, lay_r.row_ptr, col_idx, lay_r.row_mask,
        lay_r.row_order, row_full, **_layout_strides(lay_r, "row"), **scales, **strides,
        stride_ob=o.stride(0), stride_oh=o.stride(1), stride_on=o.stride(2),
        stride_dqb=dq.stride(0), stride_dqh=dq.stride(1), stride_dqn=dq.stride(2),
        BH=batch * heads, NUM_TILES=lay_r.nb, HEAVY=lay_r.row_heavy, BLOCK_M=cfg.dq_m, BLOCK_N=cfg.dq_n,
        HAS_DLSE=has_dlse, SPLIT=cfg.dq_split, DESC=cfg.dq_desc, num_warps=cfg.dq_warps,
        num_stages=cfg.dq_stages, **a_r)
    dkdv_kernel[(batch * kv_heads * lay_c.nb * (dkdv_tile // cfg.dkdv_n),)](
        q, k, v, do, lse, delta, dk, dv, lay_c.col_ptr, lay_c.row_idx, lay_c.col_mask, lay_c.col_order,
        **_layout_strides(lay_c, "col"), **scales, **strides,
        stride_dkb=dk.stride(0), stride_dkh=dk.stride(1), stride_dkn=dk.stride(2),
        BH_KV=batch * kv_heads, H_KV=kv_heads, NUM_TILES=lay_c.nb, HEAVY=lay_c.col_heavy,
        BLOCK_N=cfg.dkdv_n, BLOCK_M=cfg.dkdv_m, DESC=cfg.dkdv_desc, num_warps=cfg.dkdv_warps,
        num_stages=cfg.dkdv_stages, **a_c)
    return dq, dk, dv


class _SparseAttention(torch.autograd.Function):
    """Triton forward and backward; the LSE output is differentiable too."""

    @staticmethod
    def forward(ctx, q, k, v, pattern, scale, cfg, poison):
        o, lse = launch_forward(q, k, v, pattern, scale, cfg, poison)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.pattern, ctx.scale, ctx.cfg, ctx.poison = pattern, scale, cfg, poison
        ctx.set_materialize_grads(False)
        return o, lse

    @staticmethod
    def backward(ctx, do, dlse):
        q, k, v, o, lse = ctx.saved_tensors
        if do is None:  # only the LSE was used
            do = torch.zeros_like(o)
        dq, dk, dv = launch_backward(do, dlse, q, k, v, o, lse, ctx.pattern, ctx.scale, ctx.cfg, ctx.poison)
        return dq, dk, dv, None, None, None, None


def sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern, *,
                     scale: float | None = None, backend: str = "triton", block_size: int | None = None,
                     return_lse: bool = False, config: KernelConfig | None = None, poison: bool = False):
    """Block-sparse causal attention restricted to ``pattern``; differentiable.

    Args:
        q: ``(B, H, N_Q, D)``; when ``N_Q < N_K`` the queries are the last positions.
        k, v: ``(B, H_KV, N_K, D)``, ``H_KV`` divides ``H`` (head ``h`` reads ``h // (H // H_KV)``).
        pattern: a :class:`~longgen_core.patterns.Pattern`.
        scale: softmax scale, default ``1 / sqrt(D)``.
        backend: ``"triton"`` (GPU; CPU under ``TRITON_INTERPRET=1``) or ``"reference"`` (dense).
        block_size: tile of the block layout (16, 32, 64 or 128); default 128 on a GPU
            (strided: the pattern's block size, at least 64), 32 under the interpreter.
        return_lse: also return the natural-log LSE ``(B, H, N_Q)`` float32 (differentiable).
        config: launch settings (e.g. from a tuning sweep); default :func:`default_config` of the
            tile (``config.tile`` when given and ``block_size`` is not).
        poison: start every output buffer as NaN (tests: an unwritten element fails).

    Any N works (not only multiples of the tile). Triton: fp16/bf16/fp32, head_dim in
    ``SUPPORTED_HEAD_DIMS``, the last dimension contiguous (other strides are free, so
    ``x.transpose(1, 2)`` of a ``(B, N, H, D)`` tensor needs no copy).

    Example: ``sparse_attention(q, k, v, sink_window(64, 4096))`` on ``(1, 32, 131072, 128)`` bf16.
    """
    _check_common(q, pattern, scale, backend, {"q": q, "k": k, "v": v})
    check_qkv(q, k, v)
    _check_block_size(block_size)
    if backend == "reference":
        out = reference_attention(q, k, v, pattern, scale=scale, return_lse=return_lse)
        if return_lse:
            return out[0], out[1].float()
        return out
    _check_triton(q, {"q": q, "k": k, "v": v})
    _check_head_shift(pattern, q.shape[1], k.shape[2] // max(pattern.block_size, 1))
    interpret = is_interpreted()
    tile = block_size or (config.tile if config is not None else default_tile(pattern, interpret))
    cfg = config if config is not None else default_config(tile, q.shape[-1], q.dtype, interpret)
    if cfg.tile != tile:
        raise ValueError(f"config.tile ({cfg.tile}) must equal block_size ({tile})")
    o, lse = _SparseAttention.apply(q, k, v, pattern, scale, cfg, poison)
    return (o, lse) if return_lse else o


# ----------------------------------------------------------------------------------- decode
def _default_q_positions(cache_positions: torch.Tensor, m: int) -> torch.Tensor:
    """The ``m`` largest cache positions, ascending: the new tokens were just appended."""
    return torch.topk(cache_positions, m).values.flip(0)


def _check_decode(q, k_cache, v_cache, cache_positions, q_positions) -> None:
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor (batch, heads, seq, head_dim), "
                             f"got {getattr(t, 'shape', type(t))}")
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"k_cache and v_cache must have the same shape, got {tuple(k_cache.shape)} "
                         f"and {tuple(v_cache.shape)}")
    if q.shape[0] != k_cache.shape[0] or q.shape[3] != k_cache.shape[3]:
        raise ValueError(f"q {tuple(q.shape)} and k_cache {tuple(k_cache.shape)} must share batch "
                         f"and head_dim")
    if q.shape[1] % k_cache.shape[1]:
        raise ValueError(f"q heads ({q.shape[1]}) must be a multiple of kv heads ({k_cache.shape[1]})")
    if not (q.dtype == k_cache.dtype == v_cache.dtype):
        raise ValueError(f"q, k_cache, v_cache must share a dtype, got {q.dtype}, {k_cache.dtype}, "
                         f"{v_cache.dtype}")
    slots, m = k_cache.shape[2], q.shape[2]
    if m == 0:
        raise ValueError(f"q has no queries (shape {tuple(q.shape)}, m = q.shape[2] = 0): decode needs m >= 1")
    for name, t, length in (("cache_positions", cache_positions, slots), ("q_positions", q_positions, m)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or t.shape != (length,):
            raise ValueError(f"{name} must be an int64 tensor of shape ({length},), got "
                             f"{getattr(t, 'dtype', type(t))} {tuple(getattr(t, 'shape', ()))}")
    if m > slots:
        raise ValueError(f"q has more queries ({m}) than the cache has slots ({slots})")


def _wants_check(check: bool | None, device: torch.device) -> bool:
    """Whether to run :func:`_check_positions`: ``check`` if given, else on CPU tensors only
    (reading positions on the host syncs a CUDA device, and a CUDA graph capture forbids it)."""
    if check is None:
        return device.type == "cpu"
    if check and device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        raise ValueError("check=True reads the cache positions on the host, which a CUDA graph capture "
                         "cannot do; pass check=None (the default) or False while capturing")
    return bool(check)


def _check_positions(cache_positions: torch.Tensor, q_positions: torch.Tensor, pattern: Pattern,
                     heads: int) -> None:
    """Checks that read the positions: empty slots are -1, no position fills two slots, every
    query (``q_positions (m,)``) of every head sees at least one slot (else its softmax is NaN)."""
    if bool((cache_positions < -1).any()):
        raise ValueError(f"cache_positions must hold token positions >= 0, or -1 for an empty slot, got "
                         f"{int(cache_positions.min())}")
    filled = cache_positions[cache_positions >= 0].sort().values
    if filled.numel() == 0:
        raise ValueError("cache_positions has no filled slot (every entry is -1): no query can see a key, "
                         "so every softmax would be empty (NaN)")
    repeated = filled[1:][filled[1:] == filled[:-1]].unique()
    if repeated.numel():
        raise ValueError(f"cache_positions holds the position(s) {repeated[:8].tolist()} in more than one "
                         f"slot: each token fills one slot (a duplicate would count twice in the softmax)")
    blind = ~pattern.slot_mask(q_positions, cache_positions, heads).any(-1)  # (H or 1, m)
    if bool(blind.any()):
        h, j = blind.nonzero()[0].tolist()
        head = f" of head {h}" if pattern.per_head else ""
        raise ValueError(f"query {j} at q_positions[{j}] = {int(q_positions[j])}{head} sees no filled slot of "
                         f"cache_positions under {pattern.name}: its softmax would be empty (NaN)")


def reference_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     cache_positions: torch.Tensor, pattern: Pattern, *,
                     q_positions: torch.Tensor | None = None, scale: float | None = None,
                     return_lse: bool = False, check: bool | None = None):
    """Dense masked softmax over the cache slots: the oracle of :func:`sparse_decode`.

    Query ``j`` (at position ``q_positions[j]``) of head ``h`` sees slot ``s`` iff
    ``cache_positions[s] >= 0 and pattern.mask_mod(0, h, q_positions[j], cache_positions[s])``.
    Shapes, and ``check`` (every query sees a slot, no position in two slots), as in
    :func:`sparse_decode`.
    """
    _check_common(q, pattern, scale, "reference", {"q": q, "k_cache": k_cache, "v_cache": v_cache,
                                                   "cache_positions": cache_positions})
    _check_decode(q, k_cache, v_cache, cache_positions, q_positions)
    batch, heads, m, dim = q.shape
    if q_positions is None:
        q_positions = _default_q_positions(cache_positions, m)
    if _wants_check(check, q.device):
        _check_positions(cache_positions, q_positions, pattern, heads)
    group = heads // k_cache.shape[1]
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    k = k_cache.repeat_interleave(group, dim=1)  # (B, H, L, D)
    v = v_cache.repeat_interleave(group, dim=1)
    mask = pattern.slot_mask(q_positions, cache_positions, heads)  # (H or 1, m, L)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, H, m, L)
    scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.matmul(torch.exp(scores - lse.unsqueeze(-1)), v)
    return (out, lse) if return_lse else out


def visible_chunks(pattern, cache_positions, q_positions, heads, kv_heads, block_n):
    """Chunks of ``block_n`` slots that some query sees, listed first; computed on the device,
    without a host sync. Returns ``order (H_c, C)`` int32 and ``count (H_c,)`` int32, with
    ``H_c = kv_heads`` for per-head patterns (each kv head its own list), else 1."""
    slots = cache_positions.numel()
    n_chunks = triton.cdiv(slots, block_n)
    vis = pattern.slot_mask(q_positions, cache_positions, heads).any(1)  # (H_l, L)
    if pattern.per_head:
        vis = vis.view(kv_heads, heads // kv_heads, slots).any(1)
    pad = torch.zeros(vis.shape[0], n_chunks * block_n - slots, dtype=torch.bool, device=vis.device)
    kept = torch.cat([vis, pad], 1).view(vis.shape[0], n_chunks, block_n).any(-1)  # (H_c, C)
    order = torch.sort((~kept).to(torch.int32), dim=1, stable=True).indices.to(torch.int32)
    return order.contiguous(), kept.sum(1, dtype=torch.int32)


@functools.lru_cache(maxsize=16)
def _all_chunks(n_chunks: int, device: str):
    """The trivial decode plan: every chunk, in order (``order (1, C)``, ``count (1,)`` int32)."""
    order = torch.arange(n_chunks, dtype=torch.int32, device=device).view(1, -1)
    return order, torch.full((1,), n_chunks, dtype=torch.int32, device=device)


class DecodePlan:
    """Query positions and the visible-chunk list of one decode step, kept by its caller.

    Building the list is a dozen small launches (as long as the attention itself at batch 8).
    A caller that attends one unchanged cache several times (a benchmark timing a step) passes
    one ``DecodePlan()`` to every :func:`sparse_decode` call: the first call fills it, the others
    reuse it. The caller owns it, so it makes a new one when it
    changes the cache's positions (the evicting cache passes none: it writes them every step).
    """

    def __init__(self):
        self.key = None
        self.tensors = None

    def get(self, cache_positions, q_positions, m, pattern, heads, kv_heads, block_n):
        """``(q_positions (m,), order (H_c, C), count (H_c,))``, built on the first call."""
        key = (m, q_positions is None, pattern, heads, kv_heads, block_n)
        if self.key != key:
            self.tensors = _decode_plan(cache_positions, q_positions, m, pattern, heads, kv_heads, block_n)
            self.key = key
        return self.tensors


def _decode_plan(cache_positions, q_positions, m, pattern, heads, kv_heads, block_n):
    """Query positions and visible-chunk list for one decode step (see :class:`DecodePlan`)."""
    slots = cache_positions.numel()
    compact = pattern.kind in ("sink_window", "sliding_window") \
        and slots <= (pattern.sink_tokens or 0) + pattern.window_tokens + m
    if q_positions is not None and (compact or pattern.kind == "full"):
        # A compact evicting cache (sink + window slots), or full attention (every filled slot is
        # visible): list every chunk without looking (the kernel masks slot by slot anyway). Saves a
        # dozen small launches per layer and token, which is what batch-1 decoding is made of.
        return (q_positions, *_all_chunks(triton.cdiv(slots, block_n), str(cache_positions.device)))
    qpos = _default_q_positions(cache_positions, m) if q_positions is None else q_positions
    return (qpos, *visible_chunks(pattern, cache_positions, qpos, heads, kv_heads, block_n))


@functools.lru_cache(maxsize=8)
def _num_sms(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.get_device_properties(torch.device(device)).multi_processor_count
    return 1


def sparse_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  cache_positions: torch.Tensor, pattern: Pattern, *,
                  q_positions: torch.Tensor | None = None, scale: float | None = None,
                  backend: str = "triton", return_lse: bool = False, config: KernelConfig | None = None,
                  plan: DecodePlan | None = None, poison: bool = False, check: bool | None = None):
    """Attention of ``m`` new queries over a KV cache whose slots may be in any order.

    Args:
        q: ``(B, H, m, D)``, ``m >= 1``.
        k_cache, v_cache: ``(B, H_KV, L, D)``: ``L`` slots (e.g. sink slots then a ring buffer).
        cache_positions: ``(L,)`` int64, the original token position held by each slot, -1 if empty.
        pattern: the layer's pattern; query ``j`` of head ``h`` sees slot ``s`` iff
            ``cache_positions[s] >= 0 and pattern.mask_mod(0, h, q_positions[j], cache_positions[s])``.
        q_positions: ``(m,)`` int64; default: the ``m`` largest cache positions (the new tokens'
            K/V are already in the cache).
        backend: ``"triton"`` or ``"reference"`` (:func:`reference_decode`).
        return_lse: also return the natural-log LSE ``(B, H, m)``.
        config: launch settings; default :func:`default_config` of the pattern's tile.
        plan: a :class:`DecodePlan` the caller reuses while the cache positions stay unchanged.
        poison: start every output buffer as NaN (tests).
        check: also check the positions' values: no entry below -1, at least one filled slot, no
            position in two slots (it would count twice), every query of every head sees a slot
            (else its output is NaN); ValueError naming the input otherwise. These read the
            positions on the host, a sync on CUDA, so the default (``None``) runs them for CPU
            tensors only; the CUDA decode path (``models.attention``, captured as a CUDA graph by
            ``models.static``) skips them. ``True`` on CUDA syncs, and raises while a graph is being
            captured (``torch.cuda.is_current_stream_capturing()``). Shape checks (``m >= 1``,
            ``m <= L``, dtypes) always run: they cost nothing.

    Only chunks of slots that some query sees are read, so a full-length cache
    (``cache_positions = arange(N)``) costs what the pattern keeps, not N.

    Example: a cache of 64 sink slots + a 4096-slot ring buffer, positions
    ``[0..63, 8192..12287 rotated]``, one new query at 12287: reads 4160 slots per head.
    """
    _check_common(q, pattern, scale, backend, {"q": q, "k_cache": k_cache, "v_cache": v_cache,
                                               "cache_positions": cache_positions})
    _check_decode(q, k_cache, v_cache, cache_positions, q_positions)
    if q_positions is not None and q_positions.device != q.device:
        raise ValueError(f"q_positions must be on {q.device}, got {q_positions.device}")
    if backend == "reference":
        return reference_decode(q, k_cache, v_cache, cache_positions, pattern, q_positions=q_positions,
                                scale=scale, return_lse=return_lse, check=check)
    _check_triton(q, {"q": q, "k_cache": k_cache, "v_cache": v_cache})
    batch, heads, m, dim = q.shape
    _check_head_shift(pattern, heads, 0)  # decode's key blocks are int64 (from the positions)
    if _wants_check(check, q.device):
        qpos = _default_q_positions(cache_positions, m) if q_positions is None else q_positions
        _check_positions(cache_positions, qpos, pattern, heads)
    kv_heads, slots = k_cache.shape[1], k_cache.shape[2]
    group = heads // kv_heads
    interpret = is_interpreted()
    cfg = config if config is not None else default_config(default_tile(pattern, interpret), dim, q.dtype,
                                                           interpret)
    block_n = cfg.decode_n
    plan = plan if plan is not None else DecodePlan()
    q_positions, chunks, count = plan.get(cache_positions, q_positions, m, pattern, heads, kv_heads, block_n)
    block_r = min(64, max(16, triton.next_power_of_2(group * m)))
    row_blocks = triton.cdiv(group * m, block_r)
    programs = batch * kv_heads * row_blocks
    target = 3 if interpret else cfg.decode_per_sm * _num_sms(str(q.device))
    splits = max(1, min(chunks.shape[1], triton.cdiv(target, programs)))
    scale = 1.0 / math.sqrt(dim) if scale is None else float(scale)

    o_part = _empty((batch, heads, m, splits, dim), torch.float32, q.device, poison)
    lse_part = _empty((batch, heads, m, splits), torch.float32, q.device, poison)
    a = pattern_args(pattern)
    for rb in range(row_blocks):  # rows beyond one block: rare (large m * group)
        decode_kernel[(batch * kv_heads, splits)](
            q, k_cache, v_cache, q_positions, cache_positions, chunks, count, o_part, lse_part,
            q.stride(0), q.stride(1), q.stride(2), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
            0 if chunks.shape[0] == 1 else chunks.stride(0), 0 if chunks.shape[0] == 1 else 1,
            scale * math.log2(math.e), kv_heads, group, m, slots, splits, rb * block_r,
            a["SINK"], a["WINDOW"], a["PBLOCK"], a["LOCAL"], a["VSTRIDE"], a["HSTEP"],
            KIND=a["KIND"], HEAD_DIM=dim, BLOCK_R=block_r, BLOCK_N=block_n,
            DOT_F32=interpret or q.dtype == torch.float32,
            num_warps=cfg.decode_warps, num_stages=cfg.decode_stages)
    out = _empty(q.shape, q.dtype, q.device, poison)
    lse = _empty((batch, heads, m), torch.float32, q.device, poison)
    decode_combine_kernel[(batch * heads * m,)](
        o_part, lse_part, out, lse, out.stride(0), out.stride(1), out.stride(2), heads, m, splits,
        HEAD_DIM=dim, BLOCK_S=triton.next_power_of_2(splits))
    return (out, lse) if return_lse else out
