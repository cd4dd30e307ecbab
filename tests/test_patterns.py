"""Patterns: predicates vs brute force, CSR vs CSC vs token mask, budgets vs counts, errors."""

import math

import pytest
import torch

from longgen_core.patterns import (
    TILE_EMPTY,
    TILE_FULL,
    TILE_PARTIAL,
    attention_flops,
    full_causal,
    sink_window,
    sliding_window,
    strided,
)

PATTERNS = [
    full_causal(),
    sliding_window(5),
    sliding_window(40),
    sink_window(3, 7),
    sink_window(0, 9),
    sink_window(20, 17),
    strided(16, 2, 3, homo_head=True),
    strided(16, 1, 2, homo_head=False, num_heads=3),
    strided(32, 3, 4, homo_head=False, num_heads=2),
]


def brute_force_keep(p, h, q, k):
    """The definitions in the module docstring, one (query, key) pair at a time, in plain Python."""
    if k > q:
        return False
    if p.kind == "full":
        return True
    if p.kind == "sliding_window":
        return q - k < p.window_tokens
    if p.kind == "sink_window":
        return k < p.sink_tokens or q - k < p.window_tokens
    i, j = q // p.block_size, k // p.block_size
    offset = 0 if p.homo_head else h * p.head_sliding_step
    return i - j < p.local_blocks or (j + offset) % p.vert_stride == 0


def heads_of(p):
    return 3 if p.per_head else 1


@pytest.mark.parametrize("p", PATTERNS, ids=lambda p: p.name)
def test_predicate_matches_brute_force(p):
    n = 75  # ragged for every block size used here
    mask = p.dense_mask(n, num_heads=heads_of(p))
    for h in range(mask.shape[0]):
        expected = torch.tensor([[brute_force_keep(p, h, q, k) for k in range(n)] for q in range(n)])
        assert torch.equal(mask[h], expected), f"head {h}"


@pytest.mark.parametrize("p", PATTERNS, ids=lambda p: p.name)
def test_dense_mask_last_rows_are_decode_rows(p):
    full = p.dense_mask(50, num_heads=heads_of(p))
    last = p.dense_mask(50, num_heads=heads_of(p), n_queries=3)
    assert torch.equal(full[:, -3:], last)


@pytest.mark.parametrize("p", PATTERNS, ids=lambda p: p.name)
@pytest.mark.parametrize("n,block", [(75, 16), (64, 16), (130, 32), (33, 64)])
def test_layout_agrees_with_token_mask(p, n, block):
    heads = heads_of(p)
    layout = p.block_layout(n, block_size=block, num_heads=heads)
    mask = p.dense_mask(n, num_heads=heads)
    nb = math.ceil(n / block)
    padded = torch.zeros(mask.shape[0], nb * block, nb * block, dtype=torch.bool)
    padded[:, :n, :n] = mask
    tiles = padded.view(-1, nb, block, nb, block)
    valid = torch.zeros(nb * block, dtype=torch.bool)
    valid[:n] = True
    tile_valid = (valid.view(nb, block, 1, 1) & valid.view(1, 1, nb, block)).permute(0, 2, 1, 3)
    for h in range(layout.num_layouts):
        t = tiles[h].permute(0, 2, 1, 3)  # (nb, nb, block, block)
        expected = torch.full((nb, nb), TILE_EMPTY, dtype=torch.int8)
        expected[t.any(-1).any(-1)] = TILE_PARTIAL
        expected[(t | ~tile_valid).all(-1).all(-1) & tile_valid.all(-1).all(-1)] = TILE_FULL
        assert torch.equal(layout.to_dense(h), expected), f"head {h}"


@pytest.mark.parametrize("p", PATTERNS, ids=lambda p: p.name)
def test_csc_is_the_transpose_of_csr(p):
    layout = p.block_layout(150, block_size=16, num_heads=heads_of(p))
    nb = layout.num_blocks
    for h in range(layout.num_layouts):
        from_csr = layout.to_dense(h)
        from_csc = torch.zeros(nb, nb, dtype=torch.int8)
        ptr, idx, msk = layout.col_ptr[h], layout.row_idx[h], layout.col_mask[h]
        for col in range(nb):
            for e in range(int(ptr[col]), int(ptr[col + 1])):
                from_csc[int(idx[e]), col] = TILE_PARTIAL if msk[e] else TILE_FULL
        assert torch.equal(from_csr, from_csc)
        # CSR rows list ascending key tiles; padding is -1
        count = int(layout.nnz[h])
        assert (layout.col_idx[h, count:] == -1).all()
        for row in range(nb):
            cols = layout.col_idx[h, int(layout.row_ptr[h, row]):int(layout.row_ptr[h, row + 1])]
            assert torch.all(cols[1:] > cols[:-1])


@pytest.mark.parametrize("p", PATTERNS, ids=lambda p: p.name)
@pytest.mark.parametrize("n", [1, 17, 64, 97])
def test_row_counts_and_density_match_mask(p, n):
    heads = heads_of(p)
    mask = p.dense_mask(n, num_heads=heads)
    for h in range(mask.shape[0]):
        assert torch.equal(p.row_counts(n, head=h), mask[h].sum(-1))
    kept = mask.sum().item() / mask.shape[0]
    assert p.density(n, num_heads=heads) == pytest.approx(kept / (n * (n + 1) / 2))


@pytest.mark.parametrize("p", PATTERNS, ids=lambda p: p.name)
@pytest.mark.parametrize("n", [1, 10, 63, 200])
def test_kv_budget_is_what_the_latest_query_reads(p, n):
    heads = heads_of(p)
    last_row = p.dense_mask(n, num_heads=heads, n_queries=1)[:, 0]  # (heads, n)
    assert p.kv_budget(n, num_heads=heads) == int(last_row.sum(-1).max())


def test_sink_window_budget_is_constant_past_the_window():
    p = sink_window(64, 4096)
    assert p.kv_budget(100) == 100
    assert p.kv_budget(8192) == p.kv_budget(131072) == 64 + 4096


def test_block_layout_at_128k_is_cheap_and_sparse():
    layout = sink_window(64, 4096).block_layout(131072, block_size=128)
    nb = layout.num_blocks
    assert nb == 1024
    # per query tile: the sink tile, the 32 window tiles and one partial edge tile at most
    assert int((layout.row_ptr[0, 1:] - layout.row_ptr[0, :-1]).max()) <= 1 + 4096 // 128 + 1
    assert layout.tile_density() < 0.07


def test_flops_formula():
    full = attention_flops(full_causal(), 4096, num_heads=32, head_dim=128)
    assert full == 4 * (4096 * 4097 / 2) * 128 * 32
    assert attention_flops(full_causal(), 4096, 32, 128, pass_="fwdbwd") == 3.5 * full
    sparse = attention_flops(sink_window(64, 1024), 4096, 32, 128)
    assert sparse == pytest.approx(full * sink_window(64, 1024).density(4096))


@pytest.mark.parametrize(
    "factory,kwargs,argname",
    [
        (sliding_window, {"window_tokens": 0}, "window_tokens"),
        (sliding_window, {"window_tokens": 2.5}, "window_tokens"),
        (sink_window, {"sink_tokens": -1, "window_tokens": 4}, "sink_tokens"),
        (sink_window, {"sink_tokens": 4, "window_tokens": 0}, "window_tokens"),
        (sink_window, {"sink_tokens": True, "window_tokens": 4}, "sink_tokens"),
        (strided, {"block_size": 48}, "block_size"),
        (strided, {"block_size": 8}, "block_size"),
        (strided, {"block_size": -64}, "block_size"),
        (strided, {"local_blocks": 0}, "local_blocks"),
        (strided, {"vert_stride": 0}, "vert_stride"),
        (strided, {"homo_head": "yes"}, "homo_head"),
        (strided, {"num_heads": 0}, "num_heads"),
    ],
)
def test_bad_parameters_name_the_argument(factory, kwargs, argname):
    with pytest.raises(ValueError, match=argname):
        factory(**kwargs)


@pytest.mark.parametrize(
    "call,argname",
    [
        (lambda p: p.block_layout(100, block_size=24), "block_size"),
        (lambda p: p.block_layout(0), "n"),
        (lambda p: p.block_layout(100, num_heads=0), "num_heads"),
        (lambda p: p.dense_mask(10, n_queries=11), "n_queries"),
        (lambda p: p.row_counts(0), "n"),
        (lambda p: p.kv_budget(-3), "n"),
    ],
)
def test_bad_method_arguments_name_the_argument(call, argname):
    with pytest.raises(ValueError, match=argname):
        call(sink_window(4, 8))


def test_bad_flops_pass():
    with pytest.raises(ValueError, match="pass_"):
        attention_flops(full_causal(), 16, 1, 64, pass_="both")


def test_names_carry_the_parameters():
    assert sink_window(64, 4096).name == "sink_window_64_4096"
    assert strided(64, 16, 8, homo_head=False).name == "strided_64_16_8_hetero"
    assert sliding_window(7).name == "sliding_window_7"


def test_mask_mod_works_with_flex_attention_block_mask():
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    p = sink_window(16, 48)
    n = 256
    block_mask = flex.create_block_mask(p.mask_mod, B=None, H=None, Q_LEN=n, KV_LEN=n, device="cpu",
                                        BLOCK_SIZE=128)
    ours = p.block_layout(n, block_size=128)
    kept_flex = block_mask.to_dense()[0, 0].bool()
    assert torch.equal(kept_flex, ours.to_dense(0) != TILE_EMPTY)
