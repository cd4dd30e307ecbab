"""Forward kernel: FlashAttention-2's online softmax over the key tiles of each query tile's CSR row.

In the exp2 domain; tiles the layout marks "fully kept" skip the token mask, only edge and diagonal
tiles evaluate it. Writes the output and the natural-log log-sum-exp (LSE) that the backward and
context-parallel merging need. Conventions: :mod:`.common`; launched from :mod:`.api`.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import LN2, NEG_BIG, csr_program, csr_row, csr_scores, head_ptr, load_rows, mma


# ----------------------------------------------------------------------------------- forward
@triton.jit
def online_softmax_step(s, v, m_i, l_i, acc, sm_scale_log2, DOT_F32: tl.constexpr):
    """One key block of the online softmax, in base 2: rescale what we have by
    ``exp2(m_old - m_new)``, add this block. The scale rides inside the exp2 argument:
    ``s * c - m`` is one FMA per element. ``s`` (BLOCK_M, BLOCK_N) raw scores, ``v``
    (BLOCK_N, HEAD_DIM); returns the new ``(m_i, l_i, acc)``."""
    m_new = tl.maximum(m_i, tl.max(s, 1) * sm_scale_log2)
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s * sm_scale_log2 - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = mma(p.to(v.dtype), v, acc * alpha[:, None], DOT_F32)
    return m_new, l_i, acc


@triton.jit
def forward_kernel(
    Q, K, V, O, LSE,  # *pointers*: q, o (B, H, N_Q, D); k, v (B, H_KV, N_K, D); lse (B, H, N_Q) fp32
    ROW_PTR, COL_IDX, ROW_MASK, ROW_ORDER,  # CSR layout (H_l, nb + 1), (H_l, nnz), (H_l, nnz), (H_l, nb)
    ROW_FULL,  # SPLIT only: (H_l, nb) fully kept tiles per row, which COL_IDX then lists first
    lay_stride_ptr, lay_stride_idx, lay_stride_order,  # per-head strides of the layout; 0: shared
    sm_scale_log2,  # softmax scale * log2(e)
    stride_qb, stride_qh, stride_qn,  # q strides (head_dim is contiguous)
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    BH, H, GROUP, N_K, N_Q, Q_OFF, NUM_TILES, HEAVY,  # sizes; Q_OFF = N_K - N_Q
    SINK, WINDOW, PBLOCK, LOCAL, VSTRIDE, HSTEP,  # pattern parameters (see pattern_keep)
    KIND: tl.constexpr, HEAD_DIM: tl.constexpr, TILE: tl.constexpr,
    BLOCK_M: tl.constexpr,  # query rows per program (divides TILE)
    BLOCK_N: tl.constexpr,  # keys per inner step (divides TILE)
    EVEN: tl.constexpr,  # N_K % TILE == 0 and Q_OFF == 0: no bounds checks at all
    DOT_F32: tl.constexpr,
    SPLIT: tl.constexpr = False,  # two loops: the row's fully kept tiles (no mask code), then the rest
    DESC: tl.constexpr = False,  # K and V through tensor descriptors (TMA on Hopper) instead of pointers
    WARP_SPEC: tl.constexpr = False,  # SPLIT's first loop warp-specialised (loads / MMAs / softmax)
):
    bh, b, h, hk, row, q_pos, q_ok = csr_program(BH, H, GROUP, NUM_TILES, HEAVY, ROW_ORDER, lay_stride_order,
                                                 Q_OFF, N_K, TILE, BLOCK_M)
    # --- this program's queries: (BLOCK_M, HEAD_DIM), resident in registers for the whole loop
    offs_d = tl.arange(0, HEAD_DIM)
    q = load_rows(head_ptr(Q, b, h, stride_qb, stride_qh) + (q_pos - Q_OFF)[:, None] * stride_qn + offs_d[None, :],
                  q_ok, EVEN)
    k_base = head_ptr(K, b, hk, stride_kb, stride_kh)
    v_base = head_ptr(V, b, hk, stride_vb, stride_vh)
    if DESC:
        k_base = tl.make_tensor_descriptor(k_base, shape=[N_K, HEAD_DIM], strides=[stride_kn, 1],
                                           block_shape=[BLOCK_N, HEAD_DIM])
        v_base = tl.make_tensor_descriptor(v_base, shape=[N_K, HEAD_DIM], strides=[stride_vn, 1],
                                           block_shape=[BLOCK_N, HEAD_DIM])

    # --- the CSR row
    lo, hi = csr_row(ROW_PTR, h, lay_stride_ptr, row, TILE, BLOCK_N)
    m_i = tl.full([BLOCK_M], NEG_BIG, dtype=tl.float32)  # running max of s2
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running sum of exp2(s2 - m_i)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)  # running sum of p @ v
    mid = lo
    if SPLIT:  # first a loop without a branch or mask code over the row's fully kept tiles
        mid = lo + tl.load(ROW_FULL + h * lay_stride_order + row) * (TILE // BLOCK_N)
        for it in tl.range(lo, mid, warp_specialize=WARP_SPEC):
            s, k, v = csr_scores(q, q_pos, it, h, k_base, v_base, stride_kn, stride_vn, COL_IDX, ROW_MASK,
                                 lay_stride_idx, N_K, SINK, WINDOW, PBLOCK, LOCAL, VSTRIDE, HSTEP, KIND,
                                 HEAD_DIM, TILE, BLOCK_N, EVEN, DOT_F32, MASKING=1, DESC=DESC)
            m_i, l_i, acc = online_softmax_step(s, v, m_i, l_i, acc, sm_scale_log2, DOT_F32)
    for it in range(mid, hi):  # SPLIT: the partial tiles, always masked; else the flag decides per tile
        s, k, v = csr_scores(q, q_pos, it, h, k_base, v_base, stride_kn, stride_vn, COL_IDX, ROW_MASK,
                             lay_stride_idx, N_K, SINK, WINDOW, PBLOCK, LOCAL, VSTRIDE, HSTEP, KIND,
                             HEAD_DIM, TILE, BLOCK_N, EVEN, DOT_F32, MASKING=2 * SPLIT, DESC=DESC)
        m_i, l_i, acc = online_softmax_step(s, v, m_i, l_i, acc, sm_scale_log2, DOT_F32)

    # --- normalise, write O and the natural-log LSE
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # rows outside [Q_OFF, N_K) are never stored
    out = acc / l_safe[:, None]
    lse = (m_i + tl.log2(l_safe)) * LN2
    o_ptrs = head_ptr(O, b, h, stride_ob, stride_oh) + (q_pos - Q_OFF)[:, None] * stride_on + offs_d[None, :]
    lse_ptrs = LSE + bh.to(tl.int64) * N_Q + (q_pos - Q_OFF)
    if EVEN:
        tl.store(o_ptrs, out.to(O.dtype.element_ty))
        tl.store(lse_ptrs, lse)
    else:
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=q_ok[:, None])
        tl.store(lse_ptrs, lse, mask=q_ok)
