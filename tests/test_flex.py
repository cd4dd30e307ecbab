"""FlexAttention for a pattern (longgen_core.kernels.flex) and the models' backend "flex", on the
CPU through FlexAttention's eager implementation, against the dense reference. (Compiled, on
CUDA, it is what `bench kernels` times as "flex" and checks against the fp32 run there.)"""

from __future__ import annotations

import pytest
import torch

from longgen_core.kernels import reference_attention
from longgen_core.kernels.flex import block_mask, flex_attention, quiet_fa4_compiles
from longgen_core.models.base import tiny_llama
from longgen_core.models.convert import to_longgen, use_backend
from longgen_core.patterns import full_causal, sink_window, sliding_window, strided

PATTERNS = [sink_window(4, 24), sliding_window(20), full_causal(),
            strided(block_size=16, local_blocks=2, vert_stride=3, homo_head=False, num_heads=4)]


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p.name)
@pytest.mark.parametrize("n_q", [150, 7])  # prefill; queries at the end of a longer prefix
def test_equals_the_reference(pattern, n_q):
    torch.manual_seed(0)
    q = torch.randn(2, 4, n_q, 16)
    k, v = (torch.randn(2, 2, 150, 16) for _ in range(2))  # GQA 2
    o, lse = flex_attention(q, k, v, pattern, scale=0.3, return_lse=True)
    full_q = torch.cat([torch.zeros(2, 4, 150 - n_q, 16), q], dim=2)
    ref, ref_lse = reference_attention(full_q, k, v, pattern, scale=0.3, return_lse=True)
    torch.testing.assert_close(o, ref[:, :, -n_q:], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(lse, ref_lse[:, :, -n_q:].to(lse.dtype), atol=2e-5, rtol=1e-4)


def test_the_block_mask_is_built_once_per_shape():
    p = sink_window(4, 24)
    assert block_mask(p, 128, 128, 4, "cpu") is block_mask(p, 128, 128, 4, "cpu")
    assert block_mask(p, 128, 128, 4, "cpu") is not block_mask(p, 256, 256, 4, "cpu")


def test_a_block_mask_first_built_under_inference_mode_can_serve_a_backward_later():
    # A prefill under inference_mode builds the cached mask; a training step then reuses it, and
    # autograd refuses to save inference tensors (seen on an H200 in bench model --backend flex).
    with torch.inference_mode():
        mask = block_mask(sink_window(4, 40), 96, 96, 2, "cpu")
    assert not mask.kv_num_blocks.is_inference() and not mask.kv_indices.is_inference()


@pytest.mark.parametrize("call, message", [
    (lambda q: flex_attention(q, q, q, full_causal(), backend="CUTE"), "backend must be one of"),
    (lambda q: flex_attention(q, q, q, full_causal(), backend="FLASH"), "CUDA only"),
    (lambda q: flex_attention(q, q[:, :, :5], q[:, :, :5], full_causal()), "Nk >= Nq"),
    (lambda q: flex_attention(q.requires_grad_(), q, q, full_causal()), "no backward on the CPU"),
])
def test_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call(torch.randn(1, 2, 16, 8))


def test_a_model_on_backend_flex_equals_the_reference_and_generates_the_same_tokens():
    torch.manual_seed(0)
    model = to_longgen(tiny_llama(), pattern=sink_window(4, 32), backend="flex").eval()
    ids = torch.randint(3, 500, (1, 90), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        flex_logits = model(ids).logits
        flex_tokens = model.generate(ids, max_new_tokens=40, do_sample=False)
        use_backend(model, "reference")
        ref_logits = model(ids).logits
        use_backend(model, "sdpa")
        sdpa_tokens = model.generate(ids, max_new_tokens=40, do_sample=False)
    torch.testing.assert_close(flex_logits, ref_logits, atol=1e-4, rtol=1e-4)
    assert torch.equal(flex_tokens, sdpa_tokens)  # 40 steps past the window, evicting cache


def test_the_flash_backend_refuses_the_cpu_inside_a_model():
    model = to_longgen(tiny_llama(), pattern=sink_window(4, 32), backend="flex_flash").eval()
    with torch.no_grad(), pytest.raises(ValueError, match="FLASH backend runs on CUDA only"):
        model(torch.randint(3, 500, (1, 40)))


def test_fa4s_compile_warning_is_silenced_and_no_other():
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_fa4_compiles()
        warnings.warn("Argument aux_data (position 17) cannot be converted to a JitArgument for function "
                      "'cutlass___call___flash_attncuteflash_fwd_sm90'", UserWarning)
        warnings.warn("Argument q cannot be converted", UserWarning)
    assert [str(w.message) for w in seen] == ["Argument q cannot be converted"]
