"""Pieces every Triton kernel of this package shares: constants, the pattern predicate, dots,
the tile schedule.

Conventions shared by every kernel (forward, backward, decode):

- Layout: square tiles of ``TILE`` tokens (:meth:`longgen_core.patterns.Pattern.block_layout`).
  A program owns ``BLOCK_M`` query rows (or ``BLOCK_N`` key rows) of one tile and walks the
  tiles of its CSR row (CSC column) in sub-blocks, so tile size and register blocking are
  independent choices.
- Queries are the last ``N_Q`` of ``N_K`` positions: query row ``i`` sits at ``i + Q_OFF``.
- GQA: query head ``h`` reads kv head ``h // GROUP``.
- Softmax runs in base 2: ``s2 = (q . k) * scale * log2(e)``, ``p = exp2(s2 - m)``;
  the stored LSE is natural (``(m + log2(l)) * ln(2)``).
- ``DOT_F32``: cast the operands of every ``tl.dot`` to float32 (the CPU interpreter computes
  bf16 dots wrongly; float32 inputs on a GPU use exact "ieee" products instead of tf32).

Shapes in comments: ``(BLOCK_M, HEAD_DIM)`` etc. Entry points live in :mod:`.api`.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
NEG_BIG = tl.constexpr(-1.0e30)  # start of the running max: finite, so exp2(m_old - m_new) is never NaN

# Pattern kinds, as the kernels see them: the KIND argument is the plain int ``KIND_*.value``.
# tl.constexpr, so that @triton.jit code may read these globals.
KIND_FULL = tl.constexpr(0)
KIND_SLIDING = tl.constexpr(1)
KIND_SINK_WINDOW = tl.constexpr(2)
KIND_STRIDED = tl.constexpr(3)


# ----------------------------------------------------------------------------------- helpers
@triton.jit
def pattern_keep(q, k, h, KIND: tl.constexpr, SINK, WINDOW, PBLOCK, LOCAL, VSTRIDE, HSTEP):
    """Token mask of the pattern: may the query at position ``q`` see the key at ``k``?

    ``q``, ``k`` (and ``h``, the query head) are integer tensors that broadcast, e.g.
    ``q_pos[:, None]`` and ``k_pos[None, :]``. The kernel-side twin of ``Pattern.keep`` (with
    ``Pattern.block_keep`` for strided), plus ``k >= 0`` (an empty cache slot has position -1),
    as ``Pattern.slot_mask``. It has to be a @triton.jit function, so it restates the rule;
    tests/test_kernels.py checks that both agree on random positions.
    """
    kept = (q >= k) & (k >= 0)
    if KIND == KIND_SLIDING:  # sliding window: q - w < k <= q
        kept = kept & (q - k < WINDOW)
    if KIND == KIND_SINK_WINDOW:  # sink + sliding window
        kept = kept & ((k < SINK) | (q - k < WINDOW))
    if KIND == KIND_STRIDED:  # blockwise strided: local band of blocks, or a vertical stripe
        qb = q // PBLOCK
        kb = k // PBLOCK
        kept = kept & ((qb - kb < LOCAL) | ((kb + h * HSTEP) % VSTRIDE == 0))
    return kept


@triton.jit
def mm(a, b, DOT_F32: tl.constexpr):
    """``a @ b`` accumulated in float32."""
    if DOT_F32:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        out = tl.dot(a, b)
    return out


@triton.jit
def mma(a, b, acc, DOT_F32: tl.constexpr):
    """``acc + a @ b`` (float32 ``acc``), fused on the tensor cores."""
    if DOT_F32:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def schedule(pid, BH, NUM_TILES, PARTS: tl.constexpr, HEAVY):
    """Map a 1-D program id to ``(bh, idx, part)``: head, position in the tile order, sub-block.

    Tiles come in the layout's order (longest CSR row / CSC column first). The first ``HEAVY``
    tiles of that order (e.g. the sink column, which every query tile visits) are launched for
    *all* heads before anything else, so no head's long program starts last and runs alone at
    the tail. The rest go head by head, tiles fastest, so neighbouring programs share K/V tiles
    in L2 (a sliding window's rows overlap almost entirely).
    """
    heavy_programs = HEAVY * BH * PARTS
    in_heavy = pid < heavy_programs
    rest = pid - heavy_programs
    per_head = tl.maximum((NUM_TILES - HEAVY) * PARTS, 1)
    bh = tl.where(in_heavy, (pid // PARTS) % BH, rest // per_head)
    idx = tl.where(in_heavy, pid // (BH * PARTS), HEAVY + (rest % per_head) // PARTS)
    part = pid % PARTS
    return bh, idx, part

# ----------------------------------------------------------------------------------- the CSR walk
# Forward and dQ have the same shape (cf. ``_attn_fwd_inner`` in triton's 06-fused-attention.py):
# a program owns BLOCK_M queries of one query tile (csr_program), and walks the key tiles of its
# CSR row in steps of BLOCK_N keys (csr_row, csr_scores); only what it does with the scores differs.
@triton.jit
def head_ptr(X, b, h, stride_b, stride_h):
    """Pointer to the ``(b, h)`` slice of a ``(B, H, N, D)`` tensor (int64 offsets)."""
    return X + b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h


@triton.jit
def load_rows(ptrs, ok, EVEN: tl.constexpr):
    """Load ``(rows, HEAD_DIM)`` at ``ptrs``; rows where ``ok`` is False read 0 (no mask if EVEN)."""
    if EVEN:
        x = tl.load(ptrs)
    else:
        x = tl.load(ptrs, mask=ok[:, None], other=0.0)
    return x


@triton.jit
def csr_program(BH, H, GROUP, NUM_TILES, HEAVY, ROW_ORDER, lay_stride_order, Q_OFF, N_K,
                TILE: tl.constexpr, BLOCK_M: tl.constexpr):
    """This program's head and queries: ``(bh, b, h, hk, row, q_pos (BLOCK_M,), q_ok (BLOCK_M,))``
    -- ``row`` the query tile it owns, ``q_pos`` absolute positions, ``q_ok`` the rows that exist."""
    bh, idx, part = schedule(tl.program_id(0), BH, NUM_TILES, TILE // BLOCK_M, HEAVY)
    b = bh // H
    h = bh % H
    hk = h // GROUP
    row = tl.load(ROW_ORDER + h * lay_stride_order + idx)  # the query tile this program owns
    q_pos = row * TILE + part * BLOCK_M + tl.arange(0, BLOCK_M)  # absolute positions
    q_ok = (q_pos >= Q_OFF) & (q_pos < N_K)
    return bh, b, h, hk, row, q_pos, q_ok


@triton.jit
def csr_row(ROW_PTR, h, lay_stride_ptr, row, TILE: tl.constexpr, BLOCK_N: tl.constexpr):
    """The steps ``[lo, hi)`` of a CSR row walk: key tiles ``col_idx[start:end]``, each split into
    ``TILE // BLOCK_N`` steps."""
    start = tl.load(ROW_PTR + h * lay_stride_ptr + row)
    end = tl.load(ROW_PTR + h * lay_stride_ptr + row + 1)
    return start * (TILE // BLOCK_N), end * (TILE // BLOCK_N)


@triton.jit
def csr_scores(q, q_pos, it, h, k_base, v_base, stride_kn, stride_vn, COL_IDX, ROW_MASK, lay_stride_idx,
               N_K, SINK, WINDOW, PBLOCK, LOCAL, VSTRIDE, HSTEP, KIND: tl.constexpr, HEAD_DIM: tl.constexpr,
               TILE: tl.constexpr, BLOCK_N: tl.constexpr, EVEN: tl.constexpr, DOT_F32: tl.constexpr,
               MASKING: tl.constexpr = 0, DESC: tl.constexpr = False):
    """Step ``it`` of a CSR row walk: the step's keys and values ``(BLOCK_N, HEAD_DIM)`` and the raw
    scores ``q . k`` ``(BLOCK_M, BLOCK_N)``, -inf where the pattern drops the pair.

    ``MASKING``: 0 -- the layout's flag decides per tile (a branch in the loop); 1 -- never mask
    (the caller walks fully kept tiles only); 2 -- always mask (partial tiles only). 1 and 2 serve
    a walk split into two loops, whose first loop has no branch and no mask code at all.
    ``DESC``: ``k_base`` and ``v_base`` are tensor descriptors of this head's ``(N_K, HEAD_DIM)``
    keys and values (TMA loads on Hopper; rows past ``N_K`` read 0), not pointers."""
    t = it // (TILE // BLOCK_N)
    col = tl.load(COL_IDX + h * lay_stride_idx + t)
    k_start = col * TILE + (it % (TILE // BLOCK_N)) * BLOCK_N
    k_pos = k_start + tl.arange(0, BLOCK_N)
    if DESC:
        k = k_base.load([k_start, 0])
        v = v_base.load([k_start, 0])
    else:
        offs_d = tl.arange(0, HEAD_DIM)
        k = load_rows(k_base + k_pos[:, None] * stride_kn + offs_d[None, :], k_pos < N_K, EVEN)
        v = load_rows(v_base + k_pos[:, None] * stride_vn + offs_d[None, :], k_pos < N_K, EVEN)
    s = mm(q, tl.trans(k), DOT_F32)  # (BLOCK_M, BLOCK_N) raw scores q.k
    if MASKING == 2:
        s = _apply_mask(s, q_pos, k_pos, h, N_K, SINK, WINDOW, PBLOCK, LOCAL, VSTRIDE, HSTEP, KIND)
    elif MASKING == 0:
        if tl.load(ROW_MASK + h * lay_stride_idx + t) != 0:  # edge/diagonal tile: apply the mask
            s = _apply_mask(s, q_pos, k_pos, h, N_K, SINK, WINDOW, PBLOCK, LOCAL, VSTRIDE, HSTEP, KIND)
    return s, k, v


@triton.jit
def _apply_mask(s, q_pos, k_pos, h, N_K, SINK, WINDOW, PBLOCK, LOCAL, VSTRIDE, HSTEP, KIND: tl.constexpr):
    """``s`` with -inf where the pattern (or the end of the keys) drops the pair."""
    keep = pattern_keep(q_pos[:, None], k_pos[None, :], h, KIND, SINK, WINDOW, PBLOCK, LOCAL,
                        VSTRIDE, HSTEP) & (k_pos[None, :] < N_K)
    return tl.where(keep, s, float("-inf"))


def is_interpreted() -> bool:
    """True when these kernels were defined under ``TRITON_INTERPRET=1`` (they run on the CPU)."""
    return type(pattern_keep).__name__ == "InterpretedFunction"
