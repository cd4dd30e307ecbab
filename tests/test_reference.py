"""The dense reference: equals SDPA for full causal and a brute-force loop for sparse patterns."""

import math

import pytest
import torch
import torch.nn.functional as F

from longgen_core.kernels.reference import reference_attention
from longgen_core.patterns import full_causal, sink_window, sliding_window, strided


def brute_force_attention(q, k, v, pattern):
    """Loop over (batch, head, query): softmax over the kept keys only, in float64."""
    batch, heads, n_q, dim = q.shape
    n_k, group = k.shape[2], heads // k.shape[1]
    out = torch.empty_like(q)
    lse = torch.empty(batch, heads, n_q, dtype=q.dtype)
    for b in range(batch):
        for h in range(heads):
            for i in range(n_q):
                pos = n_k - n_q + i
                keys = [j for j in range(n_k) if bool(pattern.mask_mod(0, h, pos, j))]
                s = torch.stack([q[b, h, i] @ k[b, h // group, j] for j in keys]) / math.sqrt(dim)
                lse[b, h, i] = torch.logsumexp(s, 0)
                w = torch.softmax(s, 0)
                out[b, h, i] = sum(w[t] * v[b, h // group, j] for t, j in enumerate(keys))
    return out, lse


def rand(*shape, gen):
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 2), (4, 1)])
def test_full_pattern_equals_sdpa_causal(heads, kv_heads):
    gen = torch.Generator().manual_seed(0)
    q, k, v = rand(2, heads, 37, 16, gen=gen), rand(2, kv_heads, 37, 16, gen=gen), rand(2, kv_heads, 37, 16, gen=gen)
    ours = reference_attention(q, k, v, full_causal())
    group = heads // kv_heads
    expected = F.scaled_dot_product_attention(q, k.repeat_interleave(group, 1),
                                              v.repeat_interleave(group, 1), is_causal=True)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("pattern", [sliding_window(5), sink_window(2, 6),
                                     strided(16, 1, 2, homo_head=False, num_heads=3)],
                         ids=lambda p: p.name)
@pytest.mark.parametrize("n_q", [35, 3])
def test_sparse_patterns_equal_brute_force(pattern, n_q):
    gen = torch.Generator().manual_seed(1)
    q, k, v = rand(1, 3, n_q, 8, gen=gen), rand(1, 3, 35, 8, gen=gen), rand(1, 3, 35, 8, gen=gen)
    out, lse = reference_attention(q, k, v, pattern, return_lse=True)
    expected_out, expected_lse = brute_force_attention(q, k, v, pattern)
    torch.testing.assert_close(out, expected_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lse, expected_lse, rtol=1e-10, atol=1e-10)


def test_gqa_reads_kv_head_h_over_group():
    gen = torch.Generator().manual_seed(2)
    q, k, v = rand(1, 6, 20, 8, gen=gen), rand(1, 2, 20, 8, gen=gen), rand(1, 2, 20, 8, gen=gen)
    out = reference_attention(q, k, v, sink_window(1, 4))
    expected, _ = brute_force_attention(q, k, v, sink_window(1, 4))
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "shapes,match",
    [
        (((1, 4, 8, 16), (1, 4, 8, 16), (1, 4, 8)), "v must be a 4-D"),
        (((1, 4, 8, 16), (1, 3, 8, 16), (1, 3, 8, 16)), "multiple of kv heads"),
        (((1, 4, 9, 16), (1, 4, 8, 16), (1, 4, 8, 16)), "more positions"),
        (((1, 4, 8, 16), (1, 4, 8, 32), (1, 4, 8, 32)), "head_dim"),
        (((1, 4, 8, 16), (1, 4, 8, 16), (1, 4, 7, 16)), "same shape"),
    ],
)
def test_bad_shapes_raise(shapes, match):
    q, k, v = (torch.randn(*s) for s in shapes)
    with pytest.raises(ValueError, match=match):
        reference_attention(q, k, v, full_causal())


def test_mixed_dtypes_raise():
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="dtype"):
        reference_attention(q, q.double(), q, full_causal())
