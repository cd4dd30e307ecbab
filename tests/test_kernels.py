"""Triton block-sparse kernels against the dense float64 reference.

On a machine without CUDA the kernels run under Triton's interpreter (conftest.py sets
TRITON_INTERPRET=1 before anything imports longgen_core), so the shapes here stay small. Every
output buffer the kernels allocate starts as NaN (``poison=True``), so an element that a
kernel forgets to write fails the comparison.
"""

from __future__ import annotations

import functools
import json
import os
import random
import subprocess
import sys

import pytest
import torch
import triton
import triton.language as tl

from longgen_core.kernels import api as ops
from longgen_core.kernels.common import pattern_keep
from longgen_core.kernels import reference_attention, reference_decode, sparse_attention, sparse_decode
from longgen_core.patterns import full_causal, sink_window, sliding_window, strided

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FP32_TOL = 1e-5  # float32 arithmetic lands near 1e-7 here; the issue asks for far under 1e-3
BF16_TOL = 1e-2


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    """The tests of this file call the kernels with every output buffer starting as NaN."""
    monkeypatch.setitem(globals(), "sparse_attention", functools.partial(ops.sparse_attention, poison=True))
    monkeypatch.setitem(globals(), "sparse_decode", functools.partial(ops.sparse_decode, poison=True))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64; NaN anywhere gives NaN (and fails every ``<`` test)."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def make_pattern(kind: str, rng: random.Random, heads: int):
    if kind == "sink_window":
        return sink_window(rng.randint(1, 20), rng.randint(8, 60))
    if kind == "strided":
        return strided(block_size=rng.choice([16, 32]), local_blocks=rng.randint(1, 3),
                       vert_stride=rng.randint(2, 4), homo_head=rng.random() < 0.5, num_heads=heads)
    if kind == "sliding_window":
        return sliding_window(rng.randint(8, 50))
    return full_causal()


def random_cases(seed: int, count: int) -> list[dict]:
    """A seeded list of small shapes that together cover both sparse patterns, GQA ratios 1/3/4,
    head_dim 64 and 128 and block sizes 16/32/64; N is random and mostly not a tile multiple."""
    rng = random.Random(seed)
    kinds = ["sink_window", "strided", "sink_window", "strided", "sliding_window", "full"]
    cases = []
    for i in range(count):
        group = (1, 3, 4)[i % 3]
        kv_heads = 2 if group == 1 else 1
        heads = group * kv_heads
        cases.append(dict(kind=kinds[i % len(kinds)], pattern=make_pattern(kinds[i % len(kinds)], rng, heads),
                          batch=rng.choice([1, 2]) if group == 1 else 1, heads=heads, kv_heads=kv_heads,
                          n=rng.randint(33, 150), head_dim=(64, 128)[(i // 3) % 2],
                          tile=(16, 32, 64)[(i + i // 3) % 3]))
    return cases


CASES = random_cases(seed=2410, count=16)


def case_id(c: dict) -> str:
    return (f"{c['pattern'].name}-B{c['batch']}H{c['heads']}kv{c['kv_heads']}"
            f"-N{c['n']}-D{c['head_dim']}-T{c['tile']}")


def run_fwd_bwd(q, k, v, pattern, tile, dtype):
    """Kernel outputs and gradients (of a random loss on out and lse) next to the float64 reference."""
    gen = torch.Generator().manual_seed(7)
    do = torch.randn(q.shape, generator=gen, dtype=torch.float64)
    dlse = torch.randn(q.shape[:3], generator=gen, dtype=torch.float64)
    leaves = [t.to(DEVICE, dtype).requires_grad_() for t in (q, k, v)]
    out, lse = sparse_attention(*leaves, pattern, block_size=tile, return_lse=True)
    ((out.double() * do.to(DEVICE)).sum() + (lse.double() * dlse.to(DEVICE)).sum()).backward()
    ref_leaves = [t.to(dtype).double().requires_grad_() for t in (q, k, v)]  # same rounded inputs
    ref_out, ref_lse = reference_attention(*ref_leaves, pattern, return_lse=True)
    ((ref_out * do).sum() + (ref_lse * dlse).sum()).backward()
    got = [out, lse] + [t.grad for t in leaves]
    want = [ref_out, ref_lse] + [t.grad for t in ref_leaves]
    return {name: rel_err(g.cpu(), w) for name, g, w in zip(["out", "lse", "dq", "dk", "dv"], got, want)}


def random_qkv(batch, heads, kv_heads, n, head_dim, n_q=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, n_q or n, head_dim, generator=gen, dtype=torch.float64)
    k = torch.randn(batch, kv_heads, n, head_dim, generator=gen, dtype=torch.float64)
    v = torch.randn(batch, kv_heads, n, head_dim, generator=gen, dtype=torch.float64)
    return q, k, v


# ----------------------------------------------------------------------------------- forward/backward
def test_random_cases_cover_the_issue():
    assert {c["kind"] for c in CASES} >= {"sink_window", "strided"}
    assert {c["heads"] // c["kv_heads"] for c in CASES} == {1, 3, 4}
    assert {c["head_dim"] for c in CASES} == {64, 128}
    assert {c["tile"] for c in CASES} == {16, 32, 64}
    assert any(c["n"] % c["tile"] for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_forward_backward_fp32(case):
    q, k, v = random_qkv(case["batch"], case["heads"], case["kv_heads"], case["n"], case["head_dim"])
    errs = run_fwd_bwd(q, k, v, case["pattern"], case["tile"], torch.float32)
    assert all(e < FP32_TOL for e in errs.values()), errs


@pytest.mark.parametrize("pattern", [sink_window(4, 40), strided(16, 2, 3, homo_head=False, num_heads=3)],
                         ids=lambda p: p.name)
def test_forward_backward_bf16(pattern):
    q, k, v = random_qkv(1, 3, 1, 77, 64, seed=3)
    errs = run_fwd_bwd(q, k, v, pattern, 32, torch.bfloat16)
    assert all(e < BF16_TOL for e in errs.values()), errs


@pytest.mark.parametrize("pattern,n,n_q", [(sink_window(3, 30), 100, 45), (strided(16, 2, 3), 96, 32)],
                         ids=["sink_window", "strided"])
def test_queries_at_the_end(pattern, n, n_q):
    """N_Q < N_K: the queries are the last positions (a chunk at the end of the sequence)."""
    q, k, v = random_qkv(1, 2, 1, n, 64, n_q=n_q, seed=5)
    errs = run_fwd_bwd(q, k, v, pattern, 32, torch.float32)
    assert all(e < FP32_TOL for e in errs.values()), errs


# The dQ (CSR) and dK/dV (CSC) walks may read the layout at tiles other than the forward's; dQ
# also computes delta = rowsum(O * dO) for its rows (no separate pass) before dK/dV reads it.
WALK_CASES = [
    # (pattern, batch, heads, kv_heads, n, n_q, head_dim, config)
    (sink_window(5, 37), 1, 3, 1, 101, None, 64,  # the old GPU layout: dK/dV on the coarse tile
     ops.KernelConfig(32, 32, 16, dkdv_n=16, dkdv_m=16, dq_m=16, dq_n=16, dkdv_tile=32, dq_tile=16)),
    (strided(16, 2, 3, homo_head=False, num_heads=2), 2, 2, 2, 90, None, 128,
     ops.KernelConfig(32, 16, 32, dkdv_n=16, dkdv_m=16, dq_m=16, dq_n=16, dkdv_tile=16, dq_tile=32)),
    (sink_window(3, 30), 1, 4, 1, 100, 45, 64,  # queries at the end, GQA 4
     ops.KernelConfig(64, 32, 32, dkdv_n=16, dkdv_m=16, dq_m=16, dq_n=16, dkdv_tile=16, dq_tile=16)),
]


# The forward and dQ walks split into two loops (fully kept tiles without mask code, then the partial ones)
_SPLIT = dict(fwd_split=True, dq_split=True, dkdv_n=16, dkdv_m=16, dq_m=16, dq_n=16, decode_n=16)
SPLIT_CASES = [
    (sink_window(5, 37), 1, 3, 1, 101, None, 64, ops.KernelConfig(32, 16, 16, **_SPLIT)),
    (strided(16, 2, 3, homo_head=False, num_heads=2), 2, 2, 2, 90, None, 128,
     ops.KernelConfig(32, 32, 16, **_SPLIT)),
    (sink_window(3, 30), 1, 4, 1, 100, 45, 64,  # queries at the end, GQA 4
     ops.KernelConfig(32, 16, 32, **_SPLIT)),
    (full_causal(), 1, 2, 2, 64, None, 64, ops.KernelConfig(16, 16, 16, **_SPLIT)),  # EVEN
    # layouts with many fully kept tiles: per-head (4 layouts, 19-22 full tiles each), and a query
    # tail with GQA 2 whose dQ walk reads a finer layout (dq_tile 16) than the forward (tile 32)
    (strided(16, 3, 2, homo_head=False, num_heads=4), 1, 4, 4, 128, None, 64, ops.KernelConfig(16, 16, 16, **_SPLIT)),
    (sink_window(4, 70), 1, 4, 2, 130, 50, 64, ops.KernelConfig(32, 16, 16, dq_tile=16, **_SPLIT)),
    # K and V through tensor descriptors (rows past N_K read 0), with and without the split walk
    (sink_window(4, 70), 1, 3, 1, 130, None, 64,
     ops.KernelConfig(32, 16, 16, fwd_desc=True, fwd_warp_spec=True, **_SPLIT)),
    (strided(16, 2, 3, homo_head=False, num_heads=2), 2, 2, 2, 90, None, 128,
     ops.KernelConfig(32, 32, 16, fwd_desc=True, dkdv_n=16, dkdv_m=16, dq_m=16, dq_n=16, decode_n=16)),
]

# The backward's per-step loads through tensor descriptors: K and V in the dQ walk (dq_desc), Q and
# dO in the dK/dV walk (dkdv_desc). Rows outside the tensor read 0 from a descriptor, as the pointer
# loads' masks give: keys past N_K, and in the query tail queries before Q_OFF (a negative offset).
_BWD_DESC = dict(dq_desc=True, dkdv_desc=True, dkdv_n=16, dkdv_m=16, dq_m=16, dq_n=16, decode_n=16)
BWD_DESC_CASES = [
    (sink_window(4, 70), 1, 3, 1, 130, None, 64,  # GQA 3, the dQ split walk, dK/dV on 16-tiles
     ops.KernelConfig(32, 16, 16, dq_split=True, dkdv_tile=16, **_BWD_DESC)),
    (strided(16, 2, 3, homo_head=False, num_heads=2), 2, 2, 2, 90, None, 128,  # per head, dQ on 16-tiles
     ops.KernelConfig(32, 32, 16, dq_tile=16, **_BWD_DESC)),
    (full_causal(), 1, 2, 2, 64, None, 64, ops.KernelConfig(16, 16, 16, fwd_desc=True, **_BWD_DESC)),  # EVEN
    (sink_window(3, 30), 1, 4, 1, 100, 45, 64,  # queries at the end, GQA 4
     ops.KernelConfig(64, 32, 32, dkdv_tile=32, **_BWD_DESC)),
]


@pytest.mark.parametrize("case", WALK_CASES + SPLIT_CASES + BWD_DESC_CASES,
                         ids=["sink-dkdv32-dq16", "strided-dkdv16-dq32", "sink-tail-dkdv16", "split-sink-gqa3",
                              "split-strided-per-head", "split-sink-tail-gqa4", "split-full-even",
                              "split-strided-full-tiles", "split-sink-tail-dq-tile-16",
                              "desc-split-sink-gqa3", "desc-strided-per-head", "bwd-desc-sink-gqa3",
                              "bwd-desc-strided-per-head", "bwd-desc-full-even", "bwd-desc-sink-tail-gqa4"])
def test_launch_configs_equal_the_reference(case, monkeypatch):
    pattern, batch, heads, kv_heads, n, n_q, head_dim, cfg = case
    monkeypatch.setattr(ops, "default_config", lambda *args: cfg)
    q, k, v = random_qkv(batch, heads, kv_heads, n, head_dim, n_q=n_q, seed=21)
    errs = run_fwd_bwd(q, k, v, pattern, cfg.tile, torch.float32)
    assert all(e < FP32_TOL for e in errs.values()), errs


def test_descriptors_take_any_view():
    """q, k, v that start 4 bytes into their storage: a descriptor cannot read them (TMA wants
    16-byte aligned starts and strides; the interpreter checks it too), so the forward and the
    backward copy them first."""
    cfg = ops.KernelConfig(32, 16, 16, fwd_desc=True, **_BWD_DESC)
    q, k, v = random_qkv(1, 2, 1, 70, 64, seed=23)
    do = torch.randn(q.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    views = [torch.cat([torch.zeros(1), t.float().flatten()])[1:].view(t.shape).to(DEVICE).requires_grad_()
             for t in (q, k, v)]
    assert all(t.data_ptr() % 16 for t in views)
    sparse_attention(*views, sink_window(3, 20), config=cfg).backward(do.float().to(DEVICE))
    ref_leaves = [t.float().double().requires_grad_() for t in (q, k, v)]
    reference_attention(*ref_leaves, sink_window(3, 20)).backward(do)
    errs = [rel_err(a.grad.cpu(), b.grad) for a, b in zip(views, ref_leaves)]
    assert max(errs) < FP32_TOL, errs


def test_descriptor_allocator_is_set_on_the_launching_thread():
    """Triton keeps its allocator in a ContextVar, so one set on the main thread is unset on the
    thread autograd runs a CUDA backward on (on the H200 that failed: 'no allocator was set').
    Every descriptor launch sets it on its own thread."""
    import threading
    from triton.runtime import _allocation

    ops._descriptor_scratch(torch.device("cpu"))  # main thread first, as the forward does
    seen = []
    worker = threading.Thread(target=lambda: (ops._descriptor_scratch(torch.device("cpu")),
                                              seen.append(_allocation._allocator.get())))
    worker.start()
    worker.join()
    assert seen and seen[0] is not _allocation._NULL_ALLOCATOR
    assert seen[0](64, 16, None).numel() == 64


def test_most_split_cases_walk_fully_kept_tiles():
    # A split case without a fully kept tile never runs the mask-free loop it exists for.
    walking = [case for case in SPLIT_CASES if int(ops._split_rows(case[0], case[4], case[7].tile, case[2],
                                                                   "cpu")[1].sum()) > 0]
    assert len(walking) >= 3


def test_split_rows_put_each_rows_full_tiles_first():
    pattern, n, tile = sink_window(4, 40), 160, 16
    split, full = ops._split_rows(pattern, n, tile, 1, "cpu")
    lay = ops._kernel_layout(pattern, n, tile, 1, "cpu")
    ptr, idx, partial = lay.row_ptr[0].long(), lay.col_idx[0], lay.row_mask[0].bool()
    for row in range(lay.nb):
        a, b = int(ptr[row]), int(ptr[row + 1])
        want_full = idx[a:b][~partial[a:b]].tolist()
        assert split[0, a:b].tolist() == want_full + idx[a:b][partial[a:b]].tolist()
        assert int(full[0, row]) == len(want_full)
    assert int(full.sum()) > 0 and int(full.sum()) < int(ptr[-1])  # both kinds occur


def test_backward_is_deterministic():
    """No atomics: the same inputs give bit-identical gradients."""
    q, k, v = (t.float().to(DEVICE).requires_grad_() for t in random_qkv(1, 2, 1, 70, 64, seed=22))
    grads = []
    for _ in range(2):
        out, lse = sparse_attention(q, k, v, sink_window(4, 24), block_size=32, return_lse=True)
        grads.append(torch.autograd.grad(out.sum() + lse.sum(), (q, k, v)))
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_configs_divide_their_walk_tiles():
    """Every launch setting the kernels can get splits its layout tile into whole sub-blocks."""
    configs = list(ops.TUNED.values()) + [
        ops.default_config(tile, d, dtype, interpret)
        for tile in ops.SUPPORTED_BLOCK_SIZES for d in ops.SUPPORTED_HEAD_DIMS
        for dtype in ops.SUPPORTED_DTYPES for interpret in (False, True)]
    for c in configs:
        dkdv_tile, dq_tile = c.walk_tiles()
        assert dkdv_tile in ops.SUPPORTED_BLOCK_SIZES and dq_tile in ops.SUPPORTED_BLOCK_SIZES, c
        assert c.tile % c.fwd_m == 0 and c.tile % c.fwd_n == 0, c
        assert dkdv_tile % c.dkdv_n == 0 and dkdv_tile % c.dkdv_m == 0, c
        assert dq_tile % c.dq_m == 0 and dq_tile % c.dq_n == 0, c


def test_fine_dkdv_layout_visits_less():
    """Why dK/dV walks 64-token tiles at 128K (sink 64 + window 4096): the 128-token tiles hold
    fully masked 64 x 64 corners (the sink tile's non-sink half beyond the window, the window
    edge, the diagonal); the 64-token layout lists none of them: ~3% fewer steps."""
    pattern, n = sink_window(64, 4096), 131072
    area = {t: int(ops._kernel_layout(pattern, n, t, 1, "cpu").row_idx.ge(0).sum()) * t * t
            for t in (64, 128)}
    assert 0.955 < area[64] / area[128] < 0.975, area


def test_heavy_sink_column_is_scheduled():
    """A long sequence with a short window: the sink column is 'heavy' and launched first."""
    pattern = sink_window(4, 16)
    assert ops._kernel_layout(pattern, 150, 16, 2, "cpu").col_heavy >= 1
    q, k, v = random_qkv(1, 2, 2, 150, 64, seed=11)
    errs = run_fwd_bwd(q, k, v, pattern, 16, torch.float32)
    assert all(e < FP32_TOL for e in errs.values()), errs


def test_strided_inputs_without_copy():
    """(B, N, H, D) tensors transposed to (B, H, N, D) -- the Hugging Face layout -- need no copy."""
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 70, 2, 64, generator=gen).transpose(1, 2) for _ in range(3))
    assert not q.is_contiguous()
    out = sparse_attention(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), sink_window(2, 20), block_size=32)
    ref = reference_attention(q.double(), k.double(), v.double(), sink_window(2, 20))
    assert rel_err(out.cpu(), ref) < FP32_TOL


def test_forward_output_is_stored_in_the_layout_transformers_wants():
    """``o`` is (B, H, N, D) stored as (B, N, H, D): the attention wrapper's
    ``o.transpose(1, 2).contiguous()`` is then free (no 2 N H D-byte copy per layer)."""
    q, k, v = random_qkv(1, 3, 3, 50, 64, seed=5)
    out = sparse_attention(*(t.float().to(DEVICE) for t in (q, k, v)), sink_window(2, 20), block_size=32)
    assert out.shape == q.shape and out.transpose(1, 2).is_contiguous()
    assert rel_err(out.cpu(), reference_attention(q.double(), k.double(), v.double(), sink_window(2, 20))) < FP32_TOL


def test_reference_backend_is_the_reference():
    q, k, v = (t.float().requires_grad_() for t in random_qkv(1, 2, 1, 40, 16, seed=4))
    out, lse = sparse_attention(q, k, v, sink_window(2, 8), backend="reference", return_lse=True)
    ref, ref_lse = reference_attention(q, k, v, sink_window(2, 8), return_lse=True)
    assert torch.equal(out, ref) and torch.equal(lse, ref_lse)
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


# ----------------------------------------------------------------------------------- decode
@pytest.mark.parametrize("pattern,heads,kv_heads,m", [
    (sink_window(3, 24), 4, 1, 1),
    (sink_window(5, 30), 3, 3, 3),
    (strided(16, 2, 3, homo_head=False, num_heads=4), 4, 2, 2),
], ids=["sink_window-gqa4-m1", "sink_window-mha-m3", "strided_hetero-gqa2-m2"])
def test_decode_full_cache_matches_last_rows(pattern, heads, kv_heads, m):
    """With cache_positions = arange(N) decode equals the reference's last m rows."""
    n = 111
    q, k, v = random_qkv(2, heads, kv_heads, n, 64, seed=8)
    out, lse = sparse_decode(q[:, :, -m:].float().to(DEVICE), k.float().to(DEVICE), v.float().to(DEVICE),
                             torch.arange(n, device=DEVICE), pattern, return_lse=True)
    ref, ref_lse = reference_attention(q, k, v, pattern, return_lse=True)
    assert rel_err(out.cpu(), ref[:, :, -m:]) < FP32_TOL
    assert rel_err(lse.cpu(), ref_lse[:, :, -m:]) < FP32_TOL


def test_decode_full_cache_reads_only_visible_chunks():
    """The chunk list of a long full cache keeps only the sink and the window."""
    pattern, n = sink_window(4, 32), 400
    pos = torch.arange(n)
    order, count = ops.visible_chunks(pattern, pos, pos[-1:], 2, 2, 16)
    kept = sorted(order[0, : int(count[0])].tolist())
    assert kept == [0] + list(range((n - 32) // 16, n // 16))


def evicted_cache(positions: list[int], empty: int, k_full, v_full, seed: int):
    """A cache holding ``positions`` in a shuffled slot order plus ``empty`` slots (-1) of garbage."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(positions), generator=gen)
    slot_pos = torch.cat([torch.tensor(positions)[order], torch.full((empty,), -1)])
    b, hk, _, d = k_full.shape
    garbage = 100 * torch.randn(b, hk, empty, d, generator=gen, dtype=k_full.dtype)
    k = torch.cat([k_full[:, :, slot_pos[: len(positions)]], garbage], 2)
    v = torch.cat([v_full[:, :, slot_pos[: len(positions)]], garbage], 2)
    return k, v, slot_pos


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_decode_evicted_sink_window_cache(dtype):
    """Sink slots + a ring buffer (what the hybrid's cache keeps), slots shuffled, empty slots."""
    sink, window, n, m = 4, 40, 150, 2
    pattern = sink_window(sink, window)
    q, k, v = random_qkv(1, 4, 2, n, 128, seed=9)
    ring = list(range(n - window - m + 1, n))  # the window of the oldest new query, and newer
    k_c, v_c, pos = evicted_cache(list(range(sink)) + ring, 5, k, v, seed=1)
    out = sparse_decode(q[:, :, -m:].to(DEVICE, dtype), k_c.to(DEVICE, dtype), v_c.to(DEVICE, dtype),
                        pos.to(DEVICE), pattern)
    ref = reference_attention(q.to(dtype).double(), k.to(dtype).double(), v.to(dtype).double(), pattern)
    assert rel_err(out.cpu(), ref[:, :, -m:]) < (FP32_TOL if dtype == torch.float32 else BF16_TOL)


def test_decode_compact_ring_cache_masks_its_stale_slot(monkeypatch):
    """The compact-cache plan (all chunks, no visibility pass): sink + window slots plus one stale
    slot that fell out of the window -- the kernel must still mask it."""
    def no_visibility_pass(*args):
        raise AssertionError("a compact cache must skip the visibility pass")

    monkeypatch.setattr(ops, "visible_chunks", no_visibility_pass)
    sink, window, n = 4, 40, 150
    pattern = sink_window(sink, window)
    q, k, v = random_qkv(1, 4, 2, n, 64, n_q=1, seed=15)
    positions = list(range(sink)) + [n - window - 1] + list(range(n - window, n))  # 45 = sink+window+1
    k_c, v_c, pos = evicted_cache(positions, 0, k, v, seed=3)
    qpos = torch.tensor([n - 1])
    out = sparse_decode(q.float().to(DEVICE), k_c.float().to(DEVICE), v_c.float().to(DEVICE), pos.to(DEVICE),
                        pattern, q_positions=qpos.to(DEVICE))
    ref = reference_attention(q, k, v, pattern)[:, :, -1:]
    assert rel_err(out.cpu(), ref) < FP32_TOL


def test_decode_full_pattern_static_buffer_masks_empty_and_future_slots(monkeypatch):
    """A full layer's preallocated buffer (models.static): positions 0..p written, the rest empty
    (-1) or, from an earlier prompt, stale garbage; with query positions given the plan lists every
    chunk without a visibility pass, and the kernel must still mask what the query cannot see."""
    def no_visibility_pass(*args):
        raise AssertionError("a full pattern with query positions must skip the visibility pass")

    monkeypatch.setattr(ops, "visible_chunks", no_visibility_pass)
    n, capacity = 70, 128
    q, k, v = random_qkv(1, 4, 2, n, 64, n_q=1, seed=16)
    k_c, v_c, pos = evicted_cache(list(range(n)), capacity - n, k, v, seed=4)
    qpos = torch.tensor([n - 9])  # slots n-8 .. n-1 are in the query's future
    out = sparse_decode(q.float().to(DEVICE), k_c.float().to(DEVICE), v_c.float().to(DEVICE), pos.to(DEVICE),
                        full_causal(), q_positions=qpos.to(DEVICE))
    ref = reference_decode(q, k[:, :, :n - 8], v[:, :, :n - 8], torch.arange(n - 8), full_causal(), q_positions=qpos)
    assert rel_err(out.cpu(), ref) < FP32_TOL


def test_decode_evicted_strided_cache_with_distractors():
    """A strided layer's cache: every visible position plus positions it must ignore."""
    n, heads = 130, 2
    pattern = strided(16, 2, 3, homo_head=False, num_heads=heads)
    q, k, v = random_qkv(1, heads, heads, n, 64, seed=12)
    visible = pattern.dense_mask(n, heads, n_queries=1).any(0)[0]
    keep = visible | (torch.arange(n) % 7 == 0)  # some slots that no query may see
    k_c, v_c, pos = evicted_cache(torch.nonzero(keep)[:, 0].tolist(), 3, k, v, seed=2)
    out = sparse_decode(q[:, :, -1:].float().to(DEVICE), k_c.float().to(DEVICE), v_c.float().to(DEVICE),
                        pos.to(DEVICE), pattern)
    ref = reference_attention(q, k, v, pattern)
    assert rel_err(out.cpu(), ref[:, :, -1:]) < FP32_TOL


def test_decode_explicit_query_positions():
    n = 90
    pattern = sink_window(2, 20)
    q, k, v = random_qkv(1, 2, 1, n, 32, n_q=2, seed=13)
    pos, qpos = torch.arange(n), torch.tensor([50, 70])
    out = sparse_decode(q.float().to(DEVICE), k.float().to(DEVICE), v.float().to(DEVICE), pos.to(DEVICE),
                        pattern, q_positions=qpos.to(DEVICE))
    ref = reference_decode(q, k, v, pos, pattern, q_positions=qpos)
    assert rel_err(out.cpu(), ref) < FP32_TOL
    by_backend = sparse_decode(q, k, v, pos, pattern, q_positions=qpos, backend="reference")
    assert torch.equal(by_backend, ref)


def test_decode_plan_is_reused_by_its_owner_and_never_stale_without_one(monkeypatch):
    """A DecodePlan the caller passes is built on its first call and reused after (one visibility
    pass for many calls); without one, every call sees the cache as it is now, so an in-place
    write (a ring buffer evicting a slot) changes the answer."""
    passes = []
    visible_chunks = ops.visible_chunks

    def counted(*args):
        passes.append(1)
        return visible_chunks(*args)

    monkeypatch.setattr(ops, "visible_chunks", counted)
    n, pattern = 80, sink_window(2, 16)
    q, k, v = random_qkv(1, 2, 2, n, 32, n_q=1, seed=14)
    pos = torch.arange(n)
    plan = ops.DecodePlan()
    first = sparse_decode(q.float(), k.float(), v.float(), pos, pattern, plan=plan)
    again = sparse_decode(q.float(), k.float(), v.float(), pos, pattern, plan=plan)
    assert len(passes) == 1 and torch.equal(first, again)  # reused
    assert rel_err(first, reference_decode(q, k, v, pos, pattern)) < FP32_TOL
    pos[n - 5] = -1  # the slot is evicted in place
    second = sparse_decode(q.float(), k.float(), v.float(), pos, pattern)
    assert len(passes) == 2
    assert rel_err(second, reference_decode(q, k, v, pos, pattern)) < FP32_TOL
    assert rel_err(second, first) > 1e-3  # the eviction changed the answer


@triton.jit
def _keep_kernel(Q, K, H, OUT, SINK, WINDOW, PBLOCK, LOCAL, VSTRIDE, HSTEP, KIND: tl.constexpr,
                 BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    kept = pattern_keep(tl.load(Q + offs), tl.load(K + offs), tl.load(H + offs), KIND, SINK, WINDOW, PBLOCK,
                        LOCAL, VSTRIDE, HSTEP)
    tl.store(OUT + offs, kept.to(tl.int8))


@pytest.mark.parametrize("kind", ["full", "sliding_window", "sink_window", "strided"])
def test_triton_predicate_equals_the_python_one(kind):
    """kernels.common.pattern_keep (the kernel side) and Pattern.slot_mask agree position by
    position, empty slots (-1) included."""
    heads, block = 4, 512
    rng = random.Random(kind)
    pattern = make_pattern(kind, rng, heads)
    gen = torch.Generator().manual_seed(0)
    q = torch.randint(0, 300, (block,), generator=gen)
    k = torch.randint(-1, 300, (block,), generator=gen)
    h = torch.randint(0, heads, (block,), generator=gen)
    out = torch.empty(block, dtype=torch.int8, device=DEVICE)
    a = ops.pattern_args(pattern)
    _keep_kernel[(1,)](q.to(DEVICE), k.to(DEVICE), h.to(DEVICE), out, a["SINK"], a["WINDOW"], a["PBLOCK"],
                       a["LOCAL"], a["VSTRIDE"], a["HSTEP"], KIND=a["KIND"], BLOCK=block)
    expected = torch.stack([pattern.slot_mask(q[i:i + 1], k[i:i + 1], heads)[h[i] if pattern.per_head else 0, 0, 0]
                            for i in range(block)])
    assert torch.equal(out.cpu().bool(), expected)


# ----------------------------------------------------------------------------------- bad input
def _qkv(shape=(1, 2, 20, 64), kv_shape=None, dtype=torch.float32):
    kv_shape = kv_shape or shape
    return tuple(torch.randn(s, dtype=dtype) for s in (shape, kv_shape, kv_shape))


P = sink_window(2, 8)
BAD_ATTENTION = {
    "backend": (lambda: sparse_attention(*_qkv(), P, backend="cuda"), ValueError, "backend"),
    "pattern": (lambda: sparse_attention(*_qkv(), "sink_window"), TypeError, "pattern"),
    "q 3-D": (lambda: sparse_attention(torch.randn(2, 20, 64), *_qkv()[1:], P), ValueError, "4-D"),
    "q not a tensor": (lambda: sparse_attention([[1.0]], *_qkv()[1:], P), ValueError, "4-D"),
    "k vs v shape": (lambda: sparse_attention(*_qkv()[:2], torch.randn(1, 2, 21, 64), P), ValueError,
                     "same shape"),
    "heads": (lambda: sparse_attention(*_qkv((1, 3, 20, 64), (1, 2, 20, 64)), P), ValueError, "multiple"),
    "n_q > n_k": (lambda: sparse_attention(*_qkv((1, 2, 30, 64), (1, 2, 20, 64)), P), ValueError,
                  "positions"),
    "dtype mismatch": (lambda: sparse_attention(torch.randn(1, 2, 20, 64).half(), *_qkv()[1:], P), ValueError,
                       "dtype"),
    "dtype float64": (lambda: sparse_attention(*_qkv(dtype=torch.float64), P), TypeError, "q.dtype"),
    "head_dim": (lambda: sparse_attention(*_qkv((1, 2, 20, 80)), P), ValueError, "head_dim"),
    "block_size": (lambda: sparse_attention(*_qkv(), P, block_size=48), ValueError, "block_size"),
    "block_size big": (lambda: sparse_attention(*_qkv(), P, block_size=256), ValueError, "block_size"),
    "scale": (lambda: sparse_attention(*_qkv(), P, scale=-1.0), ValueError, "scale"),
    "scale nan": (lambda: sparse_attention(*_qkv(), P, scale=float("nan")), ValueError, "scale"),
    "non-contiguous": (lambda: sparse_attention(torch.randn(1, 2, 64, 20).transpose(2, 3), *_qkv()[1:], P),
                       ValueError, "contiguous"),
    "devices": (lambda: sparse_attention(_qkv()[0], *(t.to("meta") for t in _qkv()[1:]), P), ValueError,
                "device"),
}


def _cache(slots=30, m=1, dtype=torch.float32, head_dim=64):
    return (torch.randn(1, 2, m, head_dim, dtype=dtype), torch.randn(1, 1, slots, head_dim, dtype=dtype),
            torch.randn(1, 1, slots, head_dim, dtype=dtype), torch.arange(slots))


BAD_DECODE = {
    "positions dtype": (lambda: sparse_decode(*_cache()[:3], torch.arange(30, dtype=torch.int32), P),
                        ValueError, "cache_positions"),
    "positions length": (lambda: sparse_decode(*_cache()[:3], torch.arange(29), P), ValueError,
                         "cache_positions"),
    "positions list": (lambda: sparse_decode(*_cache()[:3], list(range(30)), P), ValueError,
                       "cache_positions"),
    "q_positions": (lambda: sparse_decode(*_cache(), P, q_positions=torch.tensor([3, 4])), ValueError,
                    "q_positions"),
    "too many queries": (lambda: sparse_decode(*_cache(slots=4, m=5), P), ValueError, "slots"),
    "cache shapes": (lambda: sparse_decode(_cache()[0], _cache()[1], torch.randn(1, 1, 31, 64),
                                           _cache()[3], P),
                     ValueError, "same shape"),
    "dtype float64": (lambda: sparse_decode(*_cache(dtype=torch.float64), P), TypeError, "q.dtype"),
    "head_dim": (lambda: sparse_decode(*_cache(head_dim=48), P), ValueError, "head_dim"),
    "backend": (lambda: sparse_decode(*_cache(), P, backend="flash"), ValueError, "backend"),
    "pattern": (lambda: sparse_decode(*_cache(), None), TypeError, "pattern"),
}


@pytest.mark.parametrize("name", list(BAD_ATTENTION) + [f"decode {n}" for n in BAD_DECODE])
def test_bad_input_raises_named_error(name):
    call, error, word = BAD_DECODE[name[7:]] if name.startswith("decode ") else BAD_ATTENTION[name]
    with pytest.raises(error, match=word):
        call()


def test_cpu_without_interpreter_raises():
    """Asking for the kernels on the CPU without TRITON_INTERPRET=1 names the two ways out."""
    code = (
        "import torch\n"
        "from longgen_core.kernels import sparse_attention, sparse_decode\n"
        "from longgen_core.patterns import sink_window\n"
        "q = torch.randn(1, 2, 20, 64)\n"
        "p = sink_window(2, 8)\n"
        "calls = (lambda: sparse_attention(q, q, q, p),\n"
        "         lambda: sparse_decode(q, q, q, torch.arange(20), p))\n"
        "for call in calls:\n"
        "    try:\n"
        "        call()\n"
        "        print('NO ERROR')\n"
        "    except ValueError as e:\n"
        "        print('ValueError:', e)\n"
        "print('reference ok', sparse_attention(q, q, q, p, backend='reference').shape)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 3 and all("TRITON_INTERPRET=1" in line and "reference" in line for line in lines[:2])
    assert lines[2] == "reference ok torch.Size([1, 2, 20, 64])"


# ----------------------------------------------------------------------------------- tutorial
def _notebook_kernels() -> dict:
    """The @triton.jit kernels notebook 02 writes in its cells (not the exercises' kernels, which
    tests/test_exercises.py runs), defined as the notebook defines them."""
    from test_exercises import run_cell

    from longgen_core.runner import numbered_notebooks

    path = next(p for p in numbered_notebooks() if p.name.startswith("02_"))
    namespace: dict = {}
    exec("import triton\nimport triton.language as tl\nfrom longgen_core.kernels.common import pattern_keep",
         namespace)
    for i, cell in enumerate(json.loads(path.read_text())["cells"]):
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and source.startswith("@triton.jit") and "check(" not in source:
            run_cell(source, namespace, f"<notebook 02 cell {i}>")
    return namespace


@pytest.mark.parametrize("n, tile", [(70, 16), (96, 32)])
def test_the_notebook_kernels_match_the_reference(n, tile):
    """Notebook 02's teaching kernels, through longgen_core.kernels.tutorial's launchers: values,
    LSE and gradients against the float64 reference, a ragged and an even length, two patterns."""
    from longgen_core.kernels import tutorial as T

    nk = _notebook_kernels()
    gen = torch.Generator().manual_seed(15)
    q, k, v, do = (torch.randn(n, 32, generator=gen).to(DEVICE) for _ in range(4))
    assert T.rel_err(T.scores(nk["scores_kernel"], q, k, tile), q.double() @ k.double().T) < FP32_TOL
    out, lse = T.dense_forward(nk["online_kernel"], q, k, v, tile)
    assert max(T.rel_err(a, b) for a, b in zip((out, lse), T.reference(q, k, v))) < FP32_TOL
    for pattern in (sink_window(3, 20), strided(16, 2, 3)):
        out, lse = T.csr_forward(nk["csr_kernel"], q, k, v, pattern, tile)
        assert max(T.rel_err(a, b) for a, b in zip((out, lse), T.reference(q, k, v, pattern))) < FP32_TOL
        delta = (out * do).sum(-1)
        grads = (T.csr_dq(nk["dq_kernel"], q, k, v, do, lse, delta, pattern, tile),
                 *T.csc_dkdv(nk["dkdv_kernel"], q, k, v, do, lse, delta, pattern, tile))
        errs = [T.rel_err(a, b) for a, b in zip(grads, T.reference_grads(q, k, v, do, pattern))]
        assert max(errs) < FP32_TOL, errs
    window = sink_window(3, 20)
    positions = torch.cat([torch.arange(3), torch.roll(torch.arange(n - 20, n), n % 20), torch.tensor([-1])])
    cache = [torch.cat([t[positions[:-1]], torch.zeros(1, 32, device=DEVICE)]) for t in (k, v)]
    got = T.decode(nk["decode_kernel"], q[-1], *cache, positions, n - 1, window, block=16)
    assert T.rel_err(got, T.reference(q, k, v, window)[0][-1]) < FP32_TOL


def test_online_softmax_trace_ends_at_the_logsumexp():
    from longgen_core.kernels import tutorial

    x = torch.tensor([1.0, 3.0, 2.0, 5.0, -1.0])
    m, l = tutorial.online_softmax_trace(x, 2)[-1]  # noqa: E741 -- the running max and sum: the tutorial's m, l
    assert abs(m + torch.log(torch.tensor(l)).item() - torch.logsumexp(x, 0).item()) < 1e-6


def test_library_steps_read_every_number_from_the_committed_measurements():
    """Notebook 02's table of changes: every row parsed from NOTES.md and the versus JSON."""
    from longgen_core.jsonio import read_json
    from longgen_core.kernels import tutorial
    from longgen_core.paths import figures_dir

    rows = tutorial.library_steps(read_json(figures_dir() / "kernels_versus_a910ee6.json"))
    assert len(rows) == 6 and all(r["before"] > 0 and r["after"] > 0 and r["where"] for r in rows)
