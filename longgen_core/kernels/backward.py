"""Backward kernels: dQ over CSR rows, dK/dV over CSC columns, no atomics.

:func:`dq_kernel` walks CSR *rows* (and computes the per-row term ``delta = rowsum(O * dO)`` on the
way, for its own rows); then :func:`dkdv_kernel` walks CSC *columns* (one program owns a block of
keys and visits every query tile that sees it). Each output has one owner, so no atomics and a
deterministic result, at the price of recomputing the scores twice (7 matmuls where an atomic dQ
needs 5). The two walks may use different tile sizes: dK/dV walks a finer CSC (64-token tiles)
so that it never visits the fully masked 64 x 64 corners of the 128-token tiles that the forward
and dQ walk. Conventions: :mod:`.common`; launched from :mod:`.api`.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import LOG2E, csr_program, csr_row, csr_scores, head_ptr, load_rows, mm, mma, pattern_keep, schedule


# ----------------------------------------------------------------------------------- backward
@triton.jit
def dq_kernel(
    Q, K, V, O, DO, LSE, DLSE, DELTA, DQ,  # o, dq like q; lse, dlse, delta (B, H, N_Q) fp32
    ROW_PTR, COL_IDX, ROW_MASK, ROW_ORDER, ROW_FULL,  # CSR layout, as in the forward (ROW_FULL: SPLIT only)
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
    SPLIT: tl.constexpr = False,  # walk the row as the forward's SPLIT does: full tiles, then partial
    DESC: tl.constexpr = False,  # K and V through tensor descriptors (TMA on Hopper), as the forward's DESC
):
    """dQ for ``BLOCK_M`` queries: walk the CSR row like the forward, recompute P from the
    saved LSE, ``dS = P * (dO V^T - delta)``, ``dQ += dS K``.

    ``delta = rowsum(O * dO) - dLSE`` is the per-row term of the softmax backward: with
    ``P = softmax(S)`` and ``dP = dO V^T``, ``rowsum(P * dP) = rowsum(O * dO)``, and a gradient
    flowing into the LSE adds ``P * dLSE`` to ``dS``, the same as subtracting it from delta.
    This program owns its rows, so it computes their delta itself (one (BLOCK_M, HEAD_DIM) load
    of O) and stores it for :func:`dkdv_kernel`, which runs next: no separate pass."""
    bh, b, h, hk, row, q_pos, q_ok = csr_program(BH, H, GROUP, NUM_TILES, HEAVY, ROW_ORDER, lay_stride_order,
                                                 Q_OFF, N_K, TILE, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q_ptrs = head_ptr(Q, b, h, stride_qb, stride_qh) + (q_pos - Q_OFF)[:, None] * stride_qn + offs_d[None, :]
    do_ptrs = head_ptr(DO, b, h, stride_dob, stride_doh) + (q_pos - Q_OFF)[:, None] * stride_don + offs_d[None, :]
    o_ptrs = head_ptr(O, b, h, stride_ob, stride_oh) + (q_pos - Q_OFF)[:, None] * stride_on + offs_d[None, :]
    row_ptrs = bh.to(tl.int64) * N_Q + q_pos - Q_OFF
    # rows outside [Q_OFF, N_K): lse = +inf makes p = 0, dO = 0
    q = load_rows(q_ptrs, q_ok, EVEN)
    do = load_rows(do_ptrs, q_ok, EVEN)
    o = load_rows(o_ptrs, q_ok, EVEN)
    if EVEN:
        lse = tl.load(LSE + row_ptrs)
    else:
        lse = tl.load(LSE + row_ptrs, mask=q_ok, other=float("inf"))
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)  # (BLOCK_M,)
    if HAS_DLSE:
        delta -= tl.load(DLSE + row_ptrs, mask=q_ok, other=0.0)
    tl.store(DELTA + row_ptrs, delta, mask=q_ok)  # for the dK/dV pass
    lse2 = lse * LOG2E
    k_base = head_ptr(K, b, hk, stride_kb, stride_kh)
    v_base = head_ptr(V, b, hk, stride_vb, stride_vh)
    if DESC:  # the per-step loads; q, dO and O above are read once per program
        k_base = tl.make_tensor_descriptor(k_base, shape=[N_K, HEAD_DIM], strides=[stride_kn, 1],
                                           block_shape=[BLOCK_N, HEAD_DIM])
        v_base = tl.make_tensor_descriptor(v_base, shape=[N_K, HEAD_DIM], strides=[stride_vn, 1],
                                           block_shape=[BLOCK_N, HEAD_DIM])

    lo, hi = csr_row(ROW_PTR, h, lay_stride_ptr, row, TILE, BLOCK_N)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    mid = lo
    if SPLIT:  # the row's fully kept tiles, without a branch or mask code
        mid = lo + tl.load(ROW_FULL + h * lay_stride_order + row) * (TILE // BLOCK_N)
        for it in range(lo, mid):
            s, k, v = csr_scores(q, q_pos, it, h, k_base, v_base, stride_kn, stride_vn, COL_IDX, ROW_MASK,
                                 lay_stride_idx, N_K, SINK, WINDOW, PBLOCK, LOCAL, VSTRIDE, HSTEP, KIND,
                                 HEAD_DIM, TILE, BLOCK_N, EVEN, DOT_F32, MASKING=1, DESC=DESC)
            dq = _dq_step(s, k, v, do, lse2, delta, dq, sm_scale_log2, DOT_F32)
    for it in range(mid, hi):
        s, k, v = csr_scores(q, q_pos, it, h, k_base, v_base, stride_kn, stride_vn, COL_IDX, ROW_MASK,
                             lay_stride_idx, N_K, SINK, WINDOW, PBLOCK, LOCAL, VSTRIDE, HSTEP, KIND, HEAD_DIM,
                             TILE, BLOCK_N, EVEN, DOT_F32, MASKING=2 * SPLIT, DESC=DESC)
        dq = _dq_step(s, k, v, do, lse2, delta, dq, sm_scale_log2, DOT_F32)

    dq *= sm_scale
    dq_ptrs = head_ptr(DQ, b, h, stride_dqb, stride_dqh) + (q_pos - Q_OFF)[:, None] * stride_dqn + offs_d[None, :]
    if EVEN:
        tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty))
    else:
        tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=q_ok[:, None])


@triton.jit
def _dq_step(s, k, v, do, lse2, delta, dq, sm_scale_log2, DOT_F32: tl.constexpr):
    """``dq + dS K`` for one key block: P recomputed from the base-2 LSE, ``dS = P * (dO V^T - delta)``."""
    p = tl.exp2(s * sm_scale_log2 - lse2[:, None])
    dp = mm(do, tl.trans(v), DOT_F32)
    ds = p * (dp - delta[:, None])
    return mma(ds.to(k.dtype), k, dq, DOT_F32)


@triton.jit
def dkdv_kernel(
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
    DESC: tl.constexpr = False,  # Q and dO through tensor descriptors (TMA on Hopper) instead of pointers
):
    """dK, dV for ``BLOCK_N`` keys of one kv head: walk the CSC column, for every query head of
    the GQA group. Transposed products keep the keys on the rows:
    ``sT = K Q^T``, ``dV += P^T dO``, ``dpT = V dO^T``, ``dK += dS^T Q``.

    ``DESC``: each step's ``(BLOCK_M, HEAD_DIM)`` Q and dO tiles come through descriptors of the
    head's ``(N_Q, HEAD_DIM)`` rows, which read 0 outside them (a step starting before ``Q_OFF``
    has a negative row offset). LSE and delta stay pointer loads: a descriptor needs a 16-byte
    aligned start, which a head's row of ``N_Q`` floats has only when 4 divides ``N_Q``, and they
    are 1/32 of the step's bytes at head_dim 64 in bf16."""
    bhk, idx, part = schedule(tl.program_id(0), BH_KV, NUM_TILES, TILE // BLOCK_N, HEAVY)
    b = bhk // H_KV
    hk = bhk % H_KV
    col = tl.load(COL_ORDER + (hk * GROUP) * lay_stride_order + idx)

    k_pos = col * TILE + part * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    # (BLOCK_N, HEAD_DIM), resident for the whole walk
    k = load_rows(head_ptr(K, b, hk, stride_kb, stride_kh) + k_pos[:, None] * stride_kn + offs_d[None, :],
                  k_pos < N_K, EVEN)
    v = load_rows(head_ptr(V, b, hk, stride_vb, stride_vh) + k_pos[:, None] * stride_vn + offs_d[None, :],
                  k_pos < N_K, EVEN)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    offs_m = tl.arange(0, BLOCK_M)

    for g in range(GROUP):  # every query head that reads this kv head
        h = hk * GROUP + g
        q_base = head_ptr(Q, b, h, stride_qb, stride_qh)
        do_base = head_ptr(DO, b, h, stride_dob, stride_doh)
        if DESC:
            q_base = tl.make_tensor_descriptor(q_base, shape=[N_Q, HEAD_DIM], strides=[stride_qn, 1],
                                               block_shape=[BLOCK_M, HEAD_DIM])
            do_base = tl.make_tensor_descriptor(do_base, shape=[N_Q, HEAD_DIM], strides=[stride_don, 1],
                                                block_shape=[BLOCK_M, HEAD_DIM])
        row_base = (b * H + h).to(tl.int64) * N_Q  # into lse and delta
        start = tl.load(COL_PTR + h * lay_stride_ptr + col)
        end = tl.load(COL_PTR + h * lay_stride_ptr + col + 1)
        for it in range(start * (TILE // BLOCK_M), end * (TILE // BLOCK_M)):
            t = it // (TILE // BLOCK_M)
            row = tl.load(ROW_IDX + h * lay_stride_idx + t)
            q_start = row * TILE + (it % (TILE // BLOCK_M)) * BLOCK_M
            q_pos = q_start + offs_m
            if DESC:
                q = q_base.load([q_start - Q_OFF, 0])  # (BLOCK_M, HEAD_DIM)
                do = do_base.load([q_start - Q_OFF, 0])
            else:  # the pointer path as it was before DESC, so that its compiled kernel stays the same
                q_ptrs = q_base + (q_pos - Q_OFF)[:, None] * stride_qn + offs_d[None, :]
                do_ptrs = do_base + (q_pos - Q_OFF)[:, None] * stride_don + offs_d[None, :]
            if EVEN:
                if not DESC:
                    q = tl.load(q_ptrs)  # (BLOCK_M, HEAD_DIM)
                    do = tl.load(do_ptrs)
                lse = tl.load(LSE + row_base + q_pos)
                delta = tl.load(DELTA + row_base + q_pos)
            else:  # rows outside [Q_OFF, N_K): lse = +inf makes p = 0, dO = 0
                q_ok = (q_pos >= Q_OFF) & (q_pos < N_K)
                if not DESC:
                    q = tl.load(q_ptrs, mask=q_ok[:, None], other=0.0)
                    do = tl.load(do_ptrs, mask=q_ok[:, None], other=0.0)
                lse = tl.load(LSE + row_base + q_pos - Q_OFF, mask=q_ok, other=float("inf"))
                delta = tl.load(DELTA + row_base + q_pos - Q_OFF, mask=q_ok, other=0.0)
            sT = mm(k, tl.trans(q), DOT_F32)  # (BLOCK_N, BLOCK_M) raw scores
            if tl.load(COL_MASK + h * lay_stride_idx + t) != 0:
                keep = pattern_keep(q_pos[None, :], k_pos[:, None], h, KIND, SINK, WINDOW, PBLOCK,
                             LOCAL, VSTRIDE, HSTEP) & (k_pos[:, None] < N_K)
                sT = tl.where(keep, sT, float("-inf"))
            pT = tl.exp2(sT * sm_scale_log2 - (lse * LOG2E)[None, :])  # P^T, exact probabilities
            dv = mma(pT.to(do.dtype), do, dv, DOT_F32)
            dpT = mm(v, tl.trans(do), DOT_F32)  # (BLOCK_N, BLOCK_M)
            dsT = pT * (dpT - delta[None, :])
            dk = mma(dsT.to(q.dtype), q, dk, DOT_F32)

    dk *= sm_scale  # s = scale * q.k, so dK = scale * dS^T Q
    out_off = (b.to(tl.int64) * stride_dkb + hk.to(tl.int64) * stride_dkh
               + k_pos[:, None] * stride_dkn + offs_d[None, :])
    if EVEN:
        tl.store(DK + out_off, dk.to(DK.dtype.element_ty))
        tl.store(DV + out_off, dv.to(DV.dtype.element_ty))
    else:
        tl.store(DK + out_off, dk.to(DK.dtype.element_ty), mask=(k_pos < N_K)[:, None])
        tl.store(DV + out_off, dv.to(DV.dtype.element_ty), mask=(k_pos < N_K)[:, None])
