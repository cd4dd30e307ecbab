"""The fused decode step, models/decode_step.py: its two Triton kernels (through the interpreter on
the CPU) against PyTorch's arithmetic, and whole steps against the model's own forward on the same
static cache, for every kind of layer pattern."""

from __future__ import annotations

import pytest
import torch

from longgen_core.models.base import tiny_llama
from longgen_core.models.convert import to_longgen, to_posthoc_streaming
from longgen_core.models.decode_step import DecodeStep, rms_norm, rope_store, unsupported
from longgen_core.models.static import StaticDecoder, StaticLongGenCache, StaticLayer
from longgen_core.patterns import full_causal, sink_window, sliding_window, strided

# The kernels run on the GPU where there is one, else through Triton's interpreter (conftest).
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_rms_norm_kernel_equals_llamas_arithmetic(dtype, tol):
    gen = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(5, 96, generator=gen)).to(DEVICE, dtype)
    weight = (1 + torch.randn(96, generator=gen)).to(DEVICE, dtype)
    expected = rms_norm(x, weight, 1e-5, triton_kernel=False)
    torch.testing.assert_close(rms_norm(x, weight, 1e-5, triton_kernel=True), expected, atol=tol, rtol=tol)
    x32 = x.float()  # and the PyTorch path is Llama's own formula
    llama = weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)).to(dtype)
    assert torch.equal(expected, llama)


def _layer(pattern, batch=2, kv_heads=2, dim=16, capacity=64):
    clock = StaticLongGenCache.__new__(StaticLongGenCache)  # only the layer's buffers are used
    layer = StaticLayer(pattern, clock)
    layer.allocate(batch, kv_heads, dim, capacity, torch.float32, DEVICE)
    return layer


@pytest.mark.parametrize("pattern", [sink_window(4, 8), sliding_window(8), full_causal()],
                         ids=["ring", "window", "full"])
@pytest.mark.parametrize("position", [2, 4, 29])  # inside the sinks, the first ring slot, a wrapped ring
def test_rope_store_kernel_equals_pytorch(pattern, position):
    gen = torch.Generator().manual_seed(position)
    batch, heads, kv_heads, dim = 2, 4, 2, 16
    q, k, v = (torch.randn(batch, h * dim, generator=gen).to(DEVICE) for h in (heads, kv_heads, kv_heads))
    inv_freq = (1.0 / 500.0 ** (torch.arange(0, dim, 2).float() / dim)).to(DEVICE)
    pos = torch.tensor([position], device=DEVICE)
    layers = [_layer(pattern) for _ in range(2)]
    outs = [rope_store(q, k, v, pos, layer, inv_freq, 0.9, triton_kernel=use)
            for layer, use in zip(layers, (False, True))]
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)
    slot = int(layers[0].slot_of(pos))
    assert layers[0].positions.tolist() == layers[1].positions.tolist()
    assert layers[0].positions[slot] == position and (layers[0].positions >= 0).sum() == 1
    torch.testing.assert_close(layers[1].keys, layers[0].keys, atol=1e-5, rtol=1e-5)
    assert torch.equal(layers[1].values, layers[0].values)
    assert torch.equal(layers[0].values[:, :, slot], v.view(batch, kv_heads, dim))
    # the rotation is RoPE's: position 0 of the same vectors would leave them unchanged
    assert not torch.allclose(outs[0].reshape(batch, -1), q)


@pytest.mark.parametrize("pattern, full_layers", [
    (sink_window(4, 16), None), (sliding_window(12), None), (strided(16, 2, 2), None),
    (sink_window(4, 16), list(range(6))),
], ids=["sink_window", "sliding_window", "strided", "all_full"])
def test_fused_steps_equal_the_models_own_forward(pattern, full_layers):
    """40 steps after a 50-token prompt (the rings wrap): the same logits each step, the same tokens."""
    torch.manual_seed(0)
    model = to_longgen(tiny_llama(), pattern=pattern, full_layers=full_layers).eval().to(DEVICE)
    ids = torch.randint(0, model.config.vocab_size, (2, 50), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    fused, plain = StaticDecoder(model, 2, 128), StaticDecoder(model, 2, 128, fused_step=False)
    assert fused.fused is not None and plain.fused is None
    with torch.no_grad():
        for decoder in (fused, plain):
            decoder.prefill(ids)
        for _ in range(40):
            logits = [decoder.fused(decoder.ids, decoder.cache.position) if decoder.fused else
                      model(input_ids=decoder.ids, position_ids=decoder.cache.position.view(1, 1),
                            past_key_values=decoder.cache, use_cache=True).logits[:, -1].float()
                      for decoder in (fused, plain)]
            # each decoder's own logits came from its own cache; both caches advance alike
            torch.testing.assert_close(logits[0], logits[1], atol=1e-4, rtol=1e-4)
            for decoder, row in zip((fused, plain), logits):
                decoder._choose(row, decoder.cache.position + 1)
                decoder.cache.position.add_(1)
                decoder.cache.seen += 1
            assert torch.equal(fused.ids, plain.ids)
    for a, b in zip(fused.cache.layers, plain.cache.layers):
        assert torch.equal(a.positions, b.positions)
        torch.testing.assert_close(a.keys, b.keys, atol=1e-5, rtol=1e-5)


def test_models_the_step_cannot_run_are_named_and_keep_their_own_forward():
    model = to_posthoc_streaming(tiny_llama(), pattern=sink_window(4, 16), positions="reindex").eval()
    assert "re-indexing" in unsupported(model)
    cache = StaticLongGenCache(model.config, 1, 64, torch.float32, "cpu")
    with pytest.raises(ValueError, match="DecodeStep cannot run this model: .*re-indexing"):
        DecodeStep(model, cache)
    assert StaticDecoder(model, 1, 64).fused is None
