"""Decode kernels: a few new queries against a cache of slots in any order.

Sink slots then a ring buffer, each slot tagged with its original position. :func:`decode_kernel`
splits the work along the cache (flash-decoding); :func:`decode_combine_kernel` merges the splits
by LSE. Conventions: :mod:`.common`; launched from :mod:`.api`.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import LN2, NEG_BIG, head_ptr, mm, mma, pattern_keep


# ----------------------------------------------------------------------------------- decode
@triton.jit
def decode_kernel(
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
    k_base = head_ptr(K, b, hk, stride_kb, stride_kh)
    v_base = head_ptr(V, b, hk, stride_vb, stride_vh)

    # this split's share of the visible chunks
    count = tl.load(COUNT + hk * stride_count)
    per_split = tl.cdiv(count, SPLITS)
    lo = split * per_split
    hi = tl.minimum(lo + per_split, count)
    offs_n = tl.arange(0, BLOCK_N)
    m_i = tl.full([BLOCK_R], NEG_BIG, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_R], dtype=tl.float32)
    acc = tl.zeros([BLOCK_R, HEAD_DIM], dtype=tl.float32)
    for it in range(lo, hi):
        chunk = tl.load(CHUNKS + hk * stride_chunks + it)
        slot = chunk * BLOCK_N + offs_n
        slot_ok = slot < L
        k_pos = tl.load(KPOS + slot, mask=slot_ok, other=-1)  # -1: empty or past the end
        k = tl.load(k_base + slot[:, None] * stride_kl + offs_d[None, :], mask=slot_ok[:, None], other=0.0)
        v = tl.load(v_base + slot[:, None] * stride_vl + offs_d[None, :], mask=slot_ok[:, None], other=0.0)
        s = mm(q, tl.trans(k), DOT_F32) * sm_scale_log2  # (BLOCK_R, BLOCK_N)
        keep = pattern_keep(q_pos[:, None], k_pos[None, :], h[:, None], KIND, SINK, WINDOW, PBLOCK, LOCAL,
                     VSTRIDE, HSTEP)
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = mma(p.to(v.dtype), v, acc * alpha[:, None], DOT_F32)
        m_i = m_new

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    lse = tl.where(l_i == 0.0, float("-inf"), (m_i + tl.log2(l_safe)) * LN2)  # empty split: -inf
    part_row = ((b * GROUP * H_KV + h).to(tl.int64) * M + j) * SPLITS + split  # (BLOCK_R,)
    tl.store(OP + part_row[:, None] * HEAD_DIM + offs_d[None, :], acc / l_safe[:, None],
             mask=row_ok[:, None])
    tl.store(LSEP + part_row, lse, mask=row_ok)


@triton.jit
def decode_combine_kernel(
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
