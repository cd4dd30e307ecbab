"""FusedRMSNorm computes what transformers' LlamaRMSNorm computes (values and gradients)."""

import copy

import pytest
import torch

from longgen_core.models.fused import FusedRMSNorm, fuse_rms_norms
from longgen_core.models.base import tiny_llama


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_norm_matches_the_llama_norm(dtype):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    ref = LlamaRMSNorm(48, eps=1e-5)
    with torch.no_grad():
        ref.weight.copy_(torch.randn(48))
    fused = FusedRMSNorm(torch.nn.Parameter(ref.weight.detach().clone()), ref.variance_epsilon)
    x = (3 * torch.randn(2, 7, 48)).to(dtype).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    out_ref, out = ref(x), fused(x2)
    assert out.dtype == out_ref.dtype == torch.float32  # fp32 weight: fp32 output, as transformers does
    torch.testing.assert_close(out, out_ref, rtol=1e-6, atol=1e-6)
    grad = torch.randn_like(out)
    out_ref.backward(grad)
    out.backward(grad)
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-5)


def test_fuse_rms_norms_keeps_weights_state_dict_and_logits():
    model = tiny_llama(num_layers=2, seed=3)
    before = copy.deepcopy(model)
    assert fuse_rms_norms(model) == 5  # input + post-attention norm per layer, and the final norm
    assert fuse_rms_norms(model) == 0  # idempotent
    assert model.state_dict().keys() == before.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), before.state_dict().values()))
    ids = torch.randint(0, model.config.vocab_size, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, before(ids).logits, rtol=1e-5, atol=1e-5)
