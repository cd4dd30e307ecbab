"""Teaching kernels for notebook 02: the production kernels (:mod:`.forward`, :mod:`.backward`,
:mod:`.decode`), built up in steps.

Each step is one small Triton kernel on a single head, ``q, k, v: (N, D)``:

1. :func:`tiled_scores` -- tiles and ``tl.dot``: one program per (query tile, key tile) writes
   its block of ``S = q @ k.T``.
2. :func:`online_softmax_attention` -- one program per query tile walks *every* key tile up to
   the diagonal with FlashAttention's online softmax; :func:`online_softmax_trace` shows the
   recurrence on a plain vector.
3. :func:`csr_attention` -- the same loop over only the key tiles listed in the tile's CSR row
   of a :class:`~longgen_core.patterns.BlockLayout`, the token mask applied inside each.

The production forward adds sub-blocks, a mask only on edge tiles, GQA, the LSE output and a
schedule; the backward (CSC walk) is shown in the notebook with the production kernels.

Example (CPU, with ``TRITON_INTERPRET=1`` set before import)::

    >>> q, k, v = (torch.randn(40, 16) for _ in range(3))
    >>> out = csr_attention(q, k, v, sink_window(2, 8), tile=16)   # (40, 16)
"""

from __future__ import annotations

import inspect
import math

import torch
import triton
import triton.language as tl

from ..patterns import Pattern
from .common import is_interpreted, mm, pattern_keep
from .api import pattern_args

__all__ = ["tiled_scores", "online_softmax_trace", "online_softmax_attention", "csr_attention",
           "kernel_source"]


def kernel_source(kernel, max_lines: int | None = None) -> str:
    """The Python source of a ``@triton.jit`` kernel (compiled or interpreted), to read it."""
    lines = inspect.getsource(kernel.fn).splitlines()
    if max_lines is not None and len(lines) > max_lines:
        lines = lines[:max_lines] + [f"    ... ({len(lines) - max_lines} more lines)"]
    return "\n".join(lines)


def _dot_f32(x: torch.Tensor) -> bool:
    return is_interpreted() or x.dtype == torch.float32


# ----------------------------------------------------------------------------------- step 1
@triton.jit
def _scores_kernel(Q, K, S, N, HEAD_DIM: tl.constexpr, TILE: tl.constexpr, DOT_F32: tl.constexpr):
    i = tl.program_id(0)  # query tile
    j = tl.program_id(1)  # key tile
    rows = i * TILE + tl.arange(0, TILE)  # (TILE,) query positions
    cols = j * TILE + tl.arange(0, TILE)  # (TILE,) key positions
    d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + rows[:, None] * HEAD_DIM + d[None, :], mask=rows[:, None] < N, other=0.0)  # (TILE, D)
    k = tl.load(K + cols[:, None] * HEAD_DIM + d[None, :], mask=cols[:, None] < N, other=0.0)  # (TILE, D)
    s = mm(q, tl.trans(k), DOT_F32)  # (TILE, TILE) on the tensor cores
    tl.store(S + rows[:, None] * N + cols[None, :], s, mask=(rows[:, None] < N) & (cols[None, :] < N))


def tiled_scores(q: torch.Tensor, k: torch.Tensor, tile: int = 16) -> torch.Tensor:
    """``q @ k.T`` computed tile by tile: ``(N, D), (N, D) -> (N, N)`` float32."""
    n, d = q.shape
    s = torch.empty(n, n, dtype=torch.float32, device=q.device)
    _scores_kernel[(triton.cdiv(n, tile), triton.cdiv(n, tile))](
        q.contiguous(), k.contiguous(), s, n, HEAD_DIM=d, TILE=tile, DOT_F32=_dot_f32(q))
    return s


# ----------------------------------------------------------------------------------- step 2
def online_softmax_trace(x: torch.Tensor, chunk: int) -> list[tuple[float, float]]:
    """The online softmax on a vector read ``chunk`` entries at a time (pure PyTorch).

    Keeps the running max ``m`` and the running sum ``l = sum exp(x_i - m)``; when a chunk raises
    the max, the old sum is rescaled by ``exp(m_old - m_new)``. Returns ``(m, l)`` after each
    chunk; at the end ``m + log(l) == logsumexp(x)``.

    Example: ``online_softmax_trace(torch.tensor([1., 3., 2., 5.]), 2)`` ->
    ``[(3.0, 1.135...), (5.0, 1.203...)]``.
    """
    m, l, trace = float("-inf"), 0.0, []
    for start in range(0, x.numel(), chunk):
        block = x[start:start + chunk]
        m_new = max(m, float(block.max()))
        l = l * math.exp(m - m_new) + float(torch.exp(block - m_new).sum())
        m = m_new
        trace.append((m, l))
    return trace


@triton.jit
def _online_kernel(Q, K, V, O, N, sm_scale_log2,
                   HEAD_DIM: tl.constexpr, TILE: tl.constexpr, DOT_F32: tl.constexpr):
    i = tl.program_id(0)
    rows = i * TILE + tl.arange(0, TILE)
    d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + rows[:, None] * HEAD_DIM + d[None, :], mask=rows[:, None] < N, other=0.0)
    m_i = tl.full([TILE], -1.0e30, dtype=tl.float32)  # running max (base-2 scores)
    l_i = tl.zeros([TILE], dtype=tl.float32)  # running sum of exp2(s - m_i)
    acc = tl.zeros([TILE, HEAD_DIM], dtype=tl.float32)  # running sum of p @ v
    for j in range(0, i + 1):  # causal: key tiles up to the diagonal
        cols = j * TILE + tl.arange(0, TILE)
        k = tl.load(K + cols[:, None] * HEAD_DIM + d[None, :], mask=cols[:, None] < N, other=0.0)
        v = tl.load(V + cols[:, None] * HEAD_DIM + d[None, :], mask=cols[:, None] < N, other=0.0)
        s = mm(q, tl.trans(k), DOT_F32) * sm_scale_log2
        s = tl.where((rows[:, None] >= cols[None, :]) & (cols[None, :] < N), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)  # rescales what was summed under the old max
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + mm(p, v, DOT_F32)
        m_i = m_new
    tl.store(O + rows[:, None] * HEAD_DIM + d[None, :], acc / l_i[:, None], mask=rows[:, None] < N)


def online_softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             tile: int = 16) -> torch.Tensor:
    """Dense causal attention, one program per query tile, never holding a full row of scores.

    ``(N, D) x 3 -> (N, D)`` float32.
    """
    n, d = q.shape
    out = torch.empty(n, d, dtype=torch.float32, device=q.device)
    _online_kernel[(triton.cdiv(n, tile),)](q.contiguous(), k.contiguous(), v.contiguous(), out, n,
                                            math.log2(math.e) / math.sqrt(d), HEAD_DIM=d, TILE=tile,
                                            DOT_F32=_dot_f32(q))
    return out


# ----------------------------------------------------------------------------------- step 3
@triton.jit
def _csr_kernel(Q, K, V, O, ROW_PTR, COL_IDX, N, sm_scale_log2,
                SINK, WINDOW, PBLOCK, LOCAL, VSTRIDE, HSTEP,
                KIND: tl.constexpr, HEAD_DIM: tl.constexpr, TILE: tl.constexpr, DOT_F32: tl.constexpr):
    i = tl.program_id(0)
    rows = i * TILE + tl.arange(0, TILE)
    d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + rows[:, None] * HEAD_DIM + d[None, :], mask=rows[:, None] < N, other=0.0)
    m_i = tl.full([TILE], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([TILE], dtype=tl.float32)
    acc = tl.zeros([TILE, HEAD_DIM], dtype=tl.float32)
    for t in range(tl.load(ROW_PTR + i), tl.load(ROW_PTR + i + 1)):  # only the kept key tiles
        j = tl.load(COL_IDX + t)
        cols = j * TILE + tl.arange(0, TILE)
        k = tl.load(K + cols[:, None] * HEAD_DIM + d[None, :], mask=cols[:, None] < N, other=0.0)
        v = tl.load(V + cols[:, None] * HEAD_DIM + d[None, :], mask=cols[:, None] < N, other=0.0)
        s = mm(q, tl.trans(k), DOT_F32) * sm_scale_log2
        keep = pattern_keep(rows[:, None], cols[None, :], 0, KIND, SINK, WINDOW, PBLOCK, LOCAL, VSTRIDE, HSTEP)
        s = tl.where(keep & (cols[None, :] < N), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + mm(p, v, DOT_F32)
        m_i = m_new
    tl.store(O + rows[:, None] * HEAD_DIM + d[None, :], acc / l_i[:, None], mask=rows[:, None] < N)


def csr_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern,
                  tile: int = 16) -> torch.Tensor:
    """Sparse attention of one head (head 0 of ``pattern``) through the CSR rows of its layout.

    ``(N, D) x 3 -> (N, D)`` float32.
    """
    n, d = q.shape
    layout = pattern.block_layout(n, tile)
    out = torch.empty(n, d, dtype=torch.float32, device=q.device)
    a = pattern_args(pattern)
    _csr_kernel[(layout.num_blocks,)](
        q.contiguous(), k.contiguous(), v.contiguous(), out, layout.row_ptr[0].to(q.device),
        layout.col_idx[0].to(q.device), n, math.log2(math.e) / math.sqrt(d), a["SINK"], a["WINDOW"],
        a["PBLOCK"], a["LOCAL"], a["VSTRIDE"], a["HSTEP"], KIND=a["KIND"], HEAD_DIM=d, TILE=tile,
        DOT_F32=_dot_f32(q))
    return out
