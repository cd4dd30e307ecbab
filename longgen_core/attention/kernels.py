"""Triton block-sparse attention: forward, backward and decode kernels.

What you learn reading this file (top to bottom):

1. **Forward** (:func:`_fwd_kernel`): FlashAttention-2's online softmax, in the exp2 domain, over
   only the key tiles that a query tile's CSR row lists. Tiles the layout marks "fully kept" skip
   the token mask; only edge and diagonal tiles evaluate it. It writes the output and the
   natural-log log-sum-exp (LSE) that the backward and context-parallel merging need.
2. **Backward**: :func:`_bwd_dq_kernel` walks CSR *rows* (and computes the per-row term
   ``delta = rowsum(O * dO)`` on the way, for its own rows); then :func:`_bwd_dkdv_kernel` walks
   CSC *columns* (one program owns a block of keys and visits every query tile that sees it).
   Each output has one owner, so no atomics and a deterministic result, at the price of
   recomputing the scores twice (7 matmuls where an atomic dQ needs 5). The two walks may use
   different tile sizes: dK/dV walks a finer CSC (64-token tiles) so that it never visits the
   fully masked 64 x 64 corners of the 128-token tiles that the forward and dQ walk.
3. **Decode** (:func:`_decode_kernel` + :func:`_decode_combine`): a few new queries against a
   cache whose slots can be in any order (sink slots then a ring buffer), each slot tagged with
   its original position. Work is split along the cache (flash-decoding) and merged by LSE.

Conventions shared by every kernel:

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

Shapes in comments: ``(BLOCK_M, HEAD_DIM)`` etc. Entry points live in :mod:`.ops`.
"""

from __future__ import annotations

import triton
import triton.language as tl

_LOG2E = tl.constexpr(1.4426950408889634)
_LN2 = tl.constexpr(0.6931471805599453)
_NEG_BIG = tl.constexpr(-1.0e30)  # start of the running max: finite, so exp2(m_old - m_new) is never NaN

# Pattern kinds, as the kernels see them (the KIND argument).
KIND_FULL, KIND_SLIDING, KIND_SINK_WINDOW, KIND_STRIDED = 0, 1, 2, 3


# ----------------------------------------------------------------------------------- helpers
@triton.jit
def _keep(q, k, h, KIND: tl.constexpr, SINK, WINDOW, PBLOCK, LOCAL, VSTRIDE, HSTEP):
    """Token mask of the pattern: may the query at position ``q`` see the key at ``k``?

    ``q``, ``k`` (and ``h``, the query head) are integer tensors that broadcast, e.g.
    ``q_pos[:, None]`` and ``k_pos[None, :]``. The same predicate as ``Pattern.mask_mod``,
    plus ``k >= 0`` (an empty cache slot has position -1).
    """
    keep = (q >= k) & (k >= 0)
    if KIND == 1:  # sliding window: q - w < k <= q
        keep = keep & (q - k < WINDOW)
    if KIND == 2:  # sink + sliding window
        keep = keep & ((k < SINK) | (q - k < WINDOW))
    if KIND == 3:  # blockwise strided: local band of blocks, or a vertical stripe
        qb = q // PBLOCK
        kb = k // PBLOCK
        keep = keep & ((qb - kb < LOCAL) | ((kb + h * HSTEP) % VSTRIDE == 0))
    return keep


@triton.jit
def _mm(a, b, DOT_F32: tl.constexpr):
    """``a @ b`` accumulated in float32."""
    if DOT_F32:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        out = tl.dot(a, b)
    return out


@triton.jit
def _mma(a, b, acc, DOT_F32: tl.constexpr):
    """``acc + a @ b`` (float32 ``acc``), fused on the tensor cores."""
    if DOT_F32:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _schedule(pid, BH, NUM_TILES, PARTS: tl.constexpr, HEAVY):
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


# ----------------------------------------------------------------------------------- forward
@triton.jit
def _fwd_kernel(
    Q, K, V, O, LSE,  # *pointers*: q, o (B, H, N_Q, D); k, v (B, H_KV, N_K, D); lse (B, H, N_Q) fp32
    ROW_PTR, COL_IDX, ROW_MASK, ROW_ORDER,  # CSR layout (H_l, nb + 1), (H_l, nnz), (H_l, nnz), (H_l, nb)
    lay_stride_ptr, lay_stride_idx, lay_stride_order,  # per-head strides of the layout; 0: shared
    sm_scale_log2,  # softmax scale * log2(e)
    stride_qb, stride_qh, stride_qn,  # q strides (head_dim is contiguous)
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    BH, H, GROUP, N_K, N_Q, Q_OFF, NUM_TILES, HEAVY,  # sizes; Q_OFF = N_K - N_Q
    SINK, WINDOW, PBLOCK, LOCAL, VSTRIDE, HSTEP,  # pattern parameters (see _keep)
    KIND: tl.constexpr, HEAD_DIM: tl.constexpr, TILE: tl.constexpr,
    BLOCK_M: tl.constexpr,  # query rows per program (divides TILE)
    BLOCK_N: tl.constexpr,  # keys per inner step (divides TILE)
    EVEN: tl.constexpr,  # N_K % TILE == 0 and Q_OFF == 0: no bounds checks at all
    DOT_F32: tl.constexpr,
):
    bh, idx, part = _schedule(tl.program_id(0), BH, NUM_TILES, TILE // BLOCK_M, HEAVY)
    b = bh // H
    h = bh % H
    hk = h // GROUP
    row = tl.load(ROW_ORDER + h * lay_stride_order + idx)  # the query tile this program owns

    # --- this program's queries: (BLOCK_M, HEAD_DIM), resident in registers for the whole loop
    q_pos = row * TILE + part * BLOCK_M + tl.arange(0, BLOCK_M)  # absolute positions
    q_ok = (q_pos >= Q_OFF) & (q_pos < N_K)
    offs_d = tl.arange(0, HEAD_DIM)
    q_ptrs = (Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
              + (q_pos - Q_OFF)[:, None] * stride_qn + offs_d[None, :])
    if EVEN:
        q = tl.load(q_ptrs)
    else:
        q = tl.load(q_ptrs, mask=q_ok[:, None], other=0.0)
    k_base = K + b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh

    # --- the CSR row: key tiles col_idx[start:end], each split into TILE // BLOCK_N steps
    start = tl.load(ROW_PTR + h * lay_stride_ptr + row)
    end = tl.load(ROW_PTR + h * lay_stride_ptr + row + 1)
    offs_n = tl.arange(0, BLOCK_N)
    m_i = tl.full([BLOCK_M], _NEG_BIG, dtype=tl.float32)  # running max of s2
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running sum of exp2(s2 - m_i)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)  # running sum of p @ v
    for it in range(start * (TILE // BLOCK_N), end * (TILE // BLOCK_N)):
        t = it // (TILE // BLOCK_N)
        col = tl.load(COL_IDX + h * lay_stride_idx + t)
        k_pos = col * TILE + (it % (TILE // BLOCK_N)) * BLOCK_N + offs_n
        k_ptrs = k_base + k_pos[:, None] * stride_kn + offs_d[None, :]
        v_ptrs = v_base + k_pos[:, None] * stride_vn + offs_d[None, :]
        if EVEN:
            k = tl.load(k_ptrs)  # (BLOCK_N, HEAD_DIM)
            v = tl.load(v_ptrs)
        else:
            k = tl.load(k_ptrs, mask=(k_pos < N_K)[:, None], other=0.0)
            v = tl.load(v_ptrs, mask=(k_pos < N_K)[:, None], other=0.0)
        s = _mm(q, tl.trans(k), DOT_F32)  # (BLOCK_M, BLOCK_N) raw scores q.k
        if tl.load(ROW_MASK + h * lay_stride_idx + t) != 0:  # edge/diagonal tile: apply the mask
            keep = _keep(q_pos[:, None], k_pos[None, :], h, KIND, SINK, WINDOW, PBLOCK, LOCAL,
                         VSTRIDE, HSTEP) & (k_pos[None, :] < N_K)
            s = tl.where(keep, s, float("-inf"))
        # online softmax in base 2: rescale what we have by exp2(m_old - m_new), add this block.
        # The scale rides inside the exp2 argument: s * c - m is one FMA per element.
        m_new = tl.maximum(m_i, tl.max(s, 1) * sm_scale_log2)
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s * sm_scale_log2 - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = _mma(p.to(v.dtype), v, acc * alpha[:, None], DOT_F32)
        m_i = m_new

    # --- normalise, write O and the natural-log LSE
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # rows outside [Q_OFF, N_K) are never stored
    out = acc / l_safe[:, None]
    lse = (m_i + tl.log2(l_safe)) * _LN2
    o_ptrs = (O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
              + (q_pos - Q_OFF)[:, None] * stride_on + offs_d[None, :])
    lse_ptrs = LSE + bh.to(tl.int64) * N_Q + (q_pos - Q_OFF)
    if EVEN:
        tl.store(o_ptrs, out.to(O.dtype.element_ty))
        tl.store(lse_ptrs, lse)
    else:
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=q_ok[:, None])
        tl.store(lse_ptrs, lse, mask=q_ok)


# ----------------------------------------------------------------------------------- backward
@triton.jit
def _bwd_dq_kernel(
    Q, K, V, O, DO, LSE, DLSE, DELTA, DQ,  # o, dq like q; lse, dlse, delta (B, H, N_Q) fp32
    ROW_PTR, COL_IDX, ROW_MASK, ROW_ORDER,  # CSR layout, as in the forward
    lay_stride_ptr, lay_stride_idx, lay_stride_order,
    sm_scale, sm_scale_log2,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    stride_dob, stride_doh, stride_don,
    stride_dqb, stride_dqh, stride_dqn,
    BH, H, GROUP, N_K, N_Q, Q_OFF, NUM_TILES, HEAVY,
    SINK, WINDOW, PBLOCK, LOCAL, VSTRIDE, HSTEP,
    KIND: tl.constexpr, HEAD_DIM: tl.constexpr, TILE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, EVEN: tl.constexpr, DOT_F32: tl.constexpr,
    HAS_DLSE: tl.constexpr,  # the caller also differentiates the returned LSE
):
    """dQ for ``BLOCK_M`` queries: walk the CSR row like the forward, recompute P from the
    saved LSE, ``dS = P * (dO V^T - delta)``, ``dQ += dS K``.

    ``delta = rowsum(O * dO) - dLSE`` is the per-row term of the softmax backward: with
    ``P = softmax(S)`` and ``dP = dO V^T``, ``rowsum(P * dP) = rowsum(O * dO)``, and a gradient
    flowing into the LSE adds ``P * dLSE`` to ``dS``, the same as subtracting it from delta.
    This program owns its rows, so it computes their delta itself (one (BLOCK_M, HEAD_DIM) load
    of O) and stores it for :func:`_bwd_dkdv_kernel`, which runs next: no separate pass."""
    bh, idx, part = _schedule(tl.program_id(0), BH, NUM_TILES, TILE // BLOCK_M, HEAVY)
    b = bh // H
    h = bh % H
    hk = h // GROUP
    row = tl.load(ROW_ORDER + h * lay_stride_order + idx)

    q_pos = row * TILE + part * BLOCK_M + tl.arange(0, BLOCK_M)
    q_ok = (q_pos >= Q_OFF) & (q_pos < N_K)
    offs_d = tl.arange(0, HEAD_DIM)
    q_ptrs = (Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
              + (q_pos - Q_OFF)[:, None] * stride_qn + offs_d[None, :])
    do_ptrs = (DO + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh
               + (q_pos - Q_OFF)[:, None] * stride_don + offs_d[None, :])
    o_ptrs = (O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
              + (q_pos - Q_OFF)[:, None] * stride_on + offs_d[None, :])
    row_ptrs = bh.to(tl.int64) * N_Q + q_pos - Q_OFF
    if EVEN:
        q = tl.load(q_ptrs)
        do = tl.load(do_ptrs)
        o = tl.load(o_ptrs)
        lse = tl.load(LSE + row_ptrs)
    else:  # rows outside [Q_OFF, N_K): lse = +inf makes p = 0, dO = 0
        q = tl.load(q_ptrs, mask=q_ok[:, None], other=0.0)
        do = tl.load(do_ptrs, mask=q_ok[:, None], other=0.0)
        o = tl.load(o_ptrs, mask=q_ok[:, None], other=0.0)
        lse = tl.load(LSE + row_ptrs, mask=q_ok, other=float("inf"))
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)  # (BLOCK_M,)
    if HAS_DLSE:
        delta -= tl.load(DLSE + row_ptrs, mask=q_ok, other=0.0)
    tl.store(DELTA + row_ptrs, delta, mask=q_ok)  # for the dK/dV pass
    lse2 = lse * _LOG2E
    k_base = K + b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh

    start = tl.load(ROW_PTR + h * lay_stride_ptr + row)
    end = tl.load(ROW_PTR + h * lay_stride_ptr + row + 1)
    offs_n = tl.arange(0, BLOCK_N)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for it in range(start * (TILE // BLOCK_N), end * (TILE // BLOCK_N)):
        t = it // (TILE // BLOCK_N)
        col = tl.load(COL_IDX + h * lay_stride_idx + t)
        k_pos = col * TILE + (it % (TILE // BLOCK_N)) * BLOCK_N + offs_n
        k_ptrs = k_base + k_pos[:, None] * stride_kn + offs_d[None, :]
        v_ptrs = v_base + k_pos[:, None] * stride_vn + offs_d[None, :]
        if EVEN:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        else:
            k = tl.load(k_ptrs, mask=(k_pos < N_K)[:, None], other=0.0)
            v = tl.load(v_ptrs, mask=(k_pos < N_K)[:, None], other=0.0)
        s = _mm(q, tl.trans(k), DOT_F32)  # (BLOCK_M, BLOCK_N) raw scores
        if tl.load(ROW_MASK + h * lay_stride_idx + t) != 0:
            keep = _keep(q_pos[:, None], k_pos[None, :], h, KIND, SINK, WINDOW, PBLOCK, LOCAL,
                         VSTRIDE, HSTEP) & (k_pos[None, :] < N_K)
            s = tl.where(keep, s, float("-inf"))
        p = tl.exp2(s * sm_scale_log2 - lse2[:, None])
        dp = _mm(do, tl.trans(v), DOT_F32)
        ds = p * (dp - delta[:, None])
        dq = _mma(ds.to(k.dtype), k, dq, DOT_F32)

    dq *= sm_scale
    dq_ptrs = (DQ + b.to(tl.int64) * stride_dqb + h.to(tl.int64) * stride_dqh
               + (q_pos - Q_OFF)[:, None] * stride_dqn + offs_d[None, :])
    if EVEN:
        tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty))
    else:
        tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=q_ok[:, None])


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV,  # dk, dv like k, v; lse, delta (B, H, N_Q) fp32
    COL_PTR, ROW_IDX, COL_MASK, COL_ORDER,  # CSC layout: key tile -> query tiles
    lay_stride_ptr, lay_stride_idx, lay_stride_order,
    sm_scale, sm_scale_log2,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_don,
    stride_dkb, stride_dkh, stride_dkn,  # dk and dv share strides (allocated alike)
    BH_KV, H, H_KV, GROUP, N_K, N_Q, Q_OFF, NUM_TILES, HEAVY,
    SINK, WINDOW, PBLOCK, LOCAL, VSTRIDE, HSTEP,
    KIND: tl.constexpr, HEAD_DIM: tl.constexpr, TILE: tl.constexpr,
    BLOCK_N: tl.constexpr,  # keys per program (divides TILE)
    BLOCK_M: tl.constexpr,  # queries per inner step (divides TILE)
    EVEN: tl.constexpr, DOT_F32: tl.constexpr,
):
    """dK, dV for ``BLOCK_N`` keys of one kv head: walk the CSC column, for every query head of
    the GQA group. Transposed products keep the keys on the rows:
    ``sT = K Q^T``, ``dV += P^T dO``, ``dpT = V dO^T``, ``dK += dS^T Q``."""
    bhk, idx, part = _schedule(tl.program_id(0), BH_KV, NUM_TILES, TILE // BLOCK_N, HEAVY)
    b = bhk // H_KV
    hk = bhk % H_KV
    col = tl.load(COL_ORDER + (hk * GROUP) * lay_stride_order + idx)

    k_pos = col * TILE + part * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    k_ptrs = (K + b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh
              + k_pos[:, None] * stride_kn + offs_d[None, :])
    v_ptrs = (V + b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh
              + k_pos[:, None] * stride_vn + offs_d[None, :])
    if EVEN:
        k = tl.load(k_ptrs)  # (BLOCK_N, HEAD_DIM), resident for the whole walk
        v = tl.load(v_ptrs)
    else:
        k = tl.load(k_ptrs, mask=(k_pos < N_K)[:, None], other=0.0)
        v = tl.load(v_ptrs, mask=(k_pos < N_K)[:, None], other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    offs_m = tl.arange(0, BLOCK_M)

    for g in range(GROUP):  # every query head that reads this kv head
        h = hk * GROUP + g
        q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
        do_base = DO + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh
        row_base = (b * H + h).to(tl.int64) * N_Q  # into lse and delta
        start = tl.load(COL_PTR + h * lay_stride_ptr + col)
        end = tl.load(COL_PTR + h * lay_stride_ptr + col + 1)
        for it in range(start * (TILE // BLOCK_M), end * (TILE // BLOCK_M)):
            t = it // (TILE // BLOCK_M)
            row = tl.load(ROW_IDX + h * lay_stride_idx + t)
            q_pos = row * TILE + (it % (TILE // BLOCK_M)) * BLOCK_M + offs_m
            q_ptrs = q_base + (q_pos - Q_OFF)[:, None] * stride_qn + offs_d[None, :]
            do_ptrs = do_base + (q_pos - Q_OFF)[:, None] * stride_don + offs_d[None, :]
            if EVEN:
                q = tl.load(q_ptrs)  # (BLOCK_M, HEAD_DIM)
                do = tl.load(do_ptrs)
                lse = tl.load(LSE + row_base + q_pos)
                delta = tl.load(DELTA + row_base + q_pos)
            else:  # rows outside [Q_OFF, N_K): lse = +inf makes p = 0, dO = 0
                q_ok = (q_pos >= Q_OFF) & (q_pos < N_K)
                q = tl.load(q_ptrs, mask=q_ok[:, None], other=0.0)
                do = tl.load(do_ptrs, mask=q_ok[:, None], other=0.0)
                lse = tl.load(LSE + row_base + q_pos - Q_OFF, mask=q_ok, other=float("inf"))
                delta = tl.load(DELTA + row_base + q_pos - Q_OFF, mask=q_ok, other=0.0)
            sT = _mm(k, tl.trans(q), DOT_F32)  # (BLOCK_N, BLOCK_M) raw scores
            if tl.load(COL_MASK + h * lay_stride_idx + t) != 0:
                keep = _keep(q_pos[None, :], k_pos[:, None], h, KIND, SINK, WINDOW, PBLOCK,
                             LOCAL, VSTRIDE, HSTEP) & (k_pos[:, None] < N_K)
                sT = tl.where(keep, sT, float("-inf"))
            pT = tl.exp2(sT * sm_scale_log2 - (lse * _LOG2E)[None, :])  # P^T, exact probabilities
            dv = _mma(pT.to(do.dtype), do, dv, DOT_F32)
            dpT = _mm(v, tl.trans(do), DOT_F32)  # (BLOCK_N, BLOCK_M)
            dsT = pT * (dpT - delta[None, :])
            dk = _mma(dsT.to(q.dtype), q, dk, DOT_F32)

    dk *= sm_scale  # s = scale * q.k, so dK = scale * dS^T Q
    out_off = (b.to(tl.int64) * stride_dkb + hk.to(tl.int64) * stride_dkh
               + k_pos[:, None] * stride_dkn + offs_d[None, :])
    if EVEN:
        tl.store(DK + out_off, dk.to(DK.dtype.element_ty))
        tl.store(DV + out_off, dv.to(DV.dtype.element_ty))
    else:
        tl.store(DK + out_off, dk.to(DK.dtype.element_ty), mask=(k_pos < N_K)[:, None])
        tl.store(DV + out_off, dv.to(DV.dtype.element_ty), mask=(k_pos < N_K)[:, None])


# ----------------------------------------------------------------------------------- decode
@triton.jit
def _decode_kernel(
    Q, K, V, QPOS, KPOS, CHUNKS, COUNT, OP, LSEP,
    # q (B, H, M, D); k, v (B, H_KV, L, D) cache; qpos (M,) and kpos (L,) int64 positions;
    # chunks (H_c, C) int32: visible chunks of BLOCK_N slots first; count (H_c,) int32;
    # op (B, H, M, SPLITS, D) fp32 and lsep (B, H, M, SPLITS) fp32: one partial result per split
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    stride_chunks, stride_count,  # 0 when every kv head shares one chunk list
    sm_scale_log2,
    H_KV, GROUP, M, L, SPLITS,
    ROW0,  # first row of this launch (rows beyond BLOCK_R take several launches)
    SINK, WINDOW, PBLOCK, LOCAL, VSTRIDE, HSTEP,
    KIND: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_R: tl.constexpr,  # rows (head, query) per program, >= 16: the rows of one tl.dot
    BLOCK_N: tl.constexpr,  # cache slots per step
    DOT_F32: tl.constexpr,
):
    """One (batch, kv head, split): every query of the GQA group against one share of the
    visible chunks. K/V are read once for the whole group (rows r = g * M + j: head g of the
    group, query j), which is what makes GQA decode cheap."""
    bhk = tl.program_id(0)
    split = tl.program_id(1)
    b = bhk // H_KV
    hk = bhk % H_KV
    r = ROW0 + tl.arange(0, BLOCK_R)
    row_ok = r < GROUP * M
    g = tl.where(row_ok, r // M, 0)
    j = r % M
    h = hk * GROUP + g  # (BLOCK_R,) query head of each row
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + b.to(tl.int64) * stride_qb + h.to(tl.int64)[:, None] * stride_qh
                + j[:, None] * stride_qm + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    q_pos = tl.load(QPOS + j)  # (BLOCK_R,)
    k_base = K + b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh

    # this split's share of the visible chunks
    count = tl.load(COUNT + hk * stride_count)
    per_split = tl.cdiv(count, SPLITS)
    lo = split * per_split
    hi = tl.minimum(lo + per_split, count)
    offs_n = tl.arange(0, BLOCK_N)
    m_i = tl.full([BLOCK_R], _NEG_BIG, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_R], dtype=tl.float32)
    acc = tl.zeros([BLOCK_R, HEAD_DIM], dtype=tl.float32)
    for it in range(lo, hi):
        chunk = tl.load(CHUNKS + hk * stride_chunks + it)
        slot = chunk * BLOCK_N + offs_n
        slot_ok = slot < L
        k_pos = tl.load(KPOS + slot, mask=slot_ok, other=-1)  # -1: empty or past the end
        k = tl.load(k_base + slot[:, None] * stride_kl + offs_d[None, :], mask=slot_ok[:, None], other=0.0)
        v = tl.load(v_base + slot[:, None] * stride_vl + offs_d[None, :], mask=slot_ok[:, None], other=0.0)
        s = _mm(q, tl.trans(k), DOT_F32) * sm_scale_log2  # (BLOCK_R, BLOCK_N)
        keep = _keep(q_pos[:, None], k_pos[None, :], h[:, None], KIND, SINK, WINDOW, PBLOCK, LOCAL,
                     VSTRIDE, HSTEP)
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = _mma(p.to(v.dtype), v, acc * alpha[:, None], DOT_F32)
        m_i = m_new

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    lse = tl.where(l_i == 0.0, float("-inf"), (m_i + tl.log2(l_safe)) * _LN2)  # empty split: -inf
    part_row = ((b * GROUP * H_KV + h).to(tl.int64) * M + j) * SPLITS + split  # (BLOCK_R,)
    tl.store(OP + part_row[:, None] * HEAD_DIM + offs_d[None, :], acc / l_safe[:, None],
             mask=row_ok[:, None])
    tl.store(LSEP + part_row, lse, mask=row_ok)


@triton.jit
def _decode_combine(
    OP, LSEP, O, LSE,  # partials (B*H*M, SPLITS, D), (B*H*M, SPLITS); o (B, H, M, D); lse (B*H*M,)
    stride_ob, stride_oh, stride_om,
    H, M, SPLITS,
    HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr,  # BLOCK_S: SPLITS rounded up to a power of 2
):
    """Merge the splits of one query row: ``lse = logsumexp(lse_s)``,
    ``o = sum_s exp(lse_s - lse) * o_s`` (the same merge context parallelism uses)."""
    row = tl.program_id(0).to(tl.int64)  # = (b * H + h) * M + j
    b = row // (H * M)
    h = (row // M) % H
    j = row % M
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, HEAD_DIM)
    lse_s = tl.load(LSEP + row * SPLITS + offs_s, mask=offs_s < SPLITS, other=float("-inf"))
    lse_max = tl.max(lse_s, 0)
    w = tl.exp(lse_s - lse_max)  # (BLOCK_S,); empty splits weigh 0
    o_s = tl.load(OP + (row * SPLITS + offs_s)[:, None] * HEAD_DIM + offs_d[None, :],
                  mask=(offs_s < SPLITS)[:, None], other=0.0)
    total = tl.sum(w, 0)
    out = tl.sum(o_s * w[:, None], 0) / total
    tl.store(O + b * stride_ob + h * stride_oh + j * stride_om + offs_d, out.to(O.dtype.element_ty))
    tl.store(LSE + row, lse_max + tl.log(total))


def is_interpreted() -> bool:
    """True when these kernels were defined under ``TRITON_INTERPRET=1`` (they run on the CPU)."""
    return type(_fwd_kernel).__name__ == "InterpretedFunction"
