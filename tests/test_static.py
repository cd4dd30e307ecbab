"""Preallocated (static) decoding, models/static.py: same tokens as the recompute oracle and as
transformers' loop, the slots it holds, reuse across prompts, its errors, and which
``generate()`` calls take it. CUDA graphs themselves run on the GPU only (bench generate)."""

from __future__ import annotations

import types

import pytest
import torch
from transformers import GenerationConfig

from longgen_core.models.base import load_smollm2, tiny_llama
from longgen_core.models.cache import generate_with_cache, greedy_recompute, kv_cache_bytes
from longgen_core.models.convert import to_longgen
from longgen_core.models.static import (CAPACITY_STEP, StaticDecoder, StaticLongGenCache, current_decoder,
                                        release_decoder, round_capacity, static_call, static_generate)
from longgen_core.patterns import sink_window, sliding_window, strided


def _tiny(pattern, full_layers=None, seed=0):
    torch.manual_seed(seed)
    return to_longgen(tiny_llama(), pattern=pattern, full_layers=full_layers).eval()


@pytest.mark.parametrize("pattern, full_layers", [
    (sink_window(4, 16), None), (sliding_window(12), None), (strided(16, 2, 2), None),
    (sink_window(4, 16), list(range(6))),
], ids=["sink_window", "sliding_window", "strided", "all_full"])
def test_static_decoding_equals_recompute_past_the_window(pattern, full_layers):
    """30 new tokens after a 90-token prompt: the ring wraps several times."""
    model = _tiny(pattern, full_layers)
    ids = torch.randint(0, model.config.vocab_size, (2, 90), generator=torch.Generator().manual_seed(1))
    out = static_generate(model, ids, 30, graphs=False)
    assert torch.equal(out, greedy_recompute(model, ids, 30))


def test_static_decoding_equals_transformers_loop_on_smollm2():
    model = to_longgen(load_smollm2()[0], pattern=sink_window(4, 32)).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 80), generator=torch.Generator().manual_seed(2))
    expected, _ = generate_with_cache(model, ids, 16, min_new_tokens=16)
    assert torch.equal(static_generate(model, ids, 16, graphs=False), expected)


@pytest.mark.parametrize("min_new_tokens", [0, 9])
def test_end_of_sequence_and_min_new_tokens_as_transformers_does(min_new_tokens):
    model = _tiny(sink_window(4, 16))
    ids = torch.randint(0, model.config.vocab_size, (3, 40), generator=torch.Generator().manual_seed(3))
    free = greedy_recompute(model, ids, 30)[:, 40:]
    for eos in (int(free[0, 5]), int(free[1, 2])):  # a token some row emits early
        kwargs = dict(eos_token_id=eos, pad_token_id=0, min_new_tokens=min_new_tokens)
        expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=30, do_sample=False,
                                  **kwargs)
        assert torch.equal(static_generate(model, ids, 30, graphs=False, check_every=4, **kwargs), expected)


def test_generation_stops_when_every_row_has_ended():
    model = _tiny(sink_window(4, 16))
    ids = torch.randint(0, model.config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(4))
    free = greedy_recompute(model, ids, 30)[0, 40:]
    eos = int(free[6])
    stop = int((free == eos).nonzero()[0]) + 1  # transformers keeps the EOS token itself
    out = static_generate(model, ids, 30, graphs=False, eos_token_id=eos, check_every=4)
    assert out.shape[1] == 40 + stop and int(out[0, -1]) == eos
    assert torch.equal(out[0, 40:], free[:stop])


def test_static_cache_holds_the_ring_on_sparse_layers_and_capacity_on_full_ones():
    model = _tiny(sink_window(4, 16))
    cache = StaticLongGenCache(model.config, batch=2, capacity=300, dtype=torch.float32, device="cpu")
    per_slot = (2 * 2 * model.config.num_key_value_heads
                * (model.config.hidden_size // model.config.num_attention_heads) * 4)
    expected = [per_slot * (300 if i in model.config.longgen["full_layers"] else 4 + 16) for i in range(6)]
    assert kv_cache_bytes(cache) == expected


def test_ring_slots_hold_the_sinks_and_the_window_after_decoding():
    model = _tiny(sink_window(4, 16))
    ids = torch.randint(0, model.config.vocab_size, (1, 50), generator=torch.Generator().manual_seed(5))
    decoder = StaticDecoder(model, 1, 128)
    decoder.generate(ids, 23)  # the last step writes position 71 (50 prompt + 22 decode steps - 1)
    sparse = decoder.cache.layers[0]
    assert sorted(sparse.positions.tolist()) == list(range(4)) + list(range(72 - 16, 72))
    full = decoder.cache.layers[model.config.longgen["full_layers"][0]]
    assert full.positions[:72].tolist() == list(range(72)) and set(full.positions[72:].tolist()) == {-1}


def test_decoder_is_reused_for_prompts_of_one_capacity_and_forgets_the_last_prompt():
    model = _tiny(sink_window(4, 16))
    gen = torch.Generator().manual_seed(6)
    long, short = (torch.randint(0, model.config.vocab_size, (1, n), generator=gen) for n in (120, 60))
    static_generate(model, long, 20, graphs=False)
    decoder = current_decoder(model)
    out = static_generate(model, short, 20, graphs=False)  # same rounded capacity: same buffers
    assert current_decoder(model) is decoder
    assert torch.equal(out, greedy_recompute(model, short, 20))  # nothing of the longer prompt leaks
    static_generate(model, short, CAPACITY_STEP, graphs=False)
    assert current_decoder(model) is not decoder


def test_capacity_and_batch_errors_are_clear():
    model = _tiny(sink_window(4, 16))
    decoder = StaticDecoder(model, 1, 64)
    ids = torch.randint(0, model.config.vocab_size, (1, 60))
    with pytest.raises(ValueError, match=r"prompt \(60\) \+ max_new_tokens \(8\) exceeds the cache capacity \(64"):
        decoder.generate(ids, 8)
    with pytest.raises(ValueError, match="holds 1 rows, got a batch of 2"):
        decoder.generate(ids[:, :10].repeat(2, 1), 8)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA model"):
        StaticDecoder(model, 1, 64, graphs=True)
    with pytest.raises(ValueError, match="one prefill"):  # the cache fed directly, not by the decoder
        model(ids, past_key_values=StaticLongGenCache(model.config, 1, 64, torch.float32, "cpu"))
    assert decoder.generate(ids[:, :50], 8).shape == (1, 58)  # the errors left it usable
    assert round_capacity(1) == CAPACITY_STEP and round_capacity(CAPACITY_STEP + 1) == 2 * CAPACITY_STEP


def _fake_cuda_model(**config):
    """What static_call reads of a model: its device and generation config."""
    return types.SimpleNamespace(device=torch.device("cuda"), generation_config=GenerationConfig(**config))


def test_generate_calls_that_take_the_static_path():
    ids = torch.ones(2, 16, dtype=torch.long)
    model = _fake_cuda_model(eos_token_id=2, pad_token_id=None)
    call = static_call(model, (ids,), {"max_new_tokens": 8, "attention_mask": torch.ones_like(ids)})
    assert call == {"input_ids": ids, "max_new_tokens": 8, "eos_token_id": 2, "pad_token_id": 2, "min_new_tokens": 0}
    assert static_call(model, (), {"input_ids": ids, "max_new_tokens": 8, "min_new_tokens": 8,
                                   "do_sample": False})["min_new_tokens"] == 8
    leave_to_transformers = [
        {"max_new_tokens": 8, "do_sample": True},
        {"max_new_tokens": 8, "num_beams": 2},
        {"max_new_tokens": 8, "repetition_penalty": 1.2},
        {"max_new_tokens": 8, "streamer": object()},
        {"max_new_tokens": 8, "past_key_values": object()},
        {"max_new_tokens": 8, "use_cache": False},
        {"max_new_tokens": 8, "eos_token_id": [2, 3]},
        {"max_new_tokens": 8, "attention_mask": torch.tensor([[0] + [1] * 15] * 2)},
        {},  # no max_new_tokens: transformers' max_length rule
    ]
    for kwargs in leave_to_transformers:
        assert static_call(model, (ids,), kwargs) is None, kwargs
    assert static_call(_fake_cuda_model(do_sample=True), (ids,), {"max_new_tokens": 8}) is None
    cpu = types.SimpleNamespace(device=torch.device("cpu"), generation_config=GenerationConfig())
    assert static_call(cpu, (ids,), {"max_new_tokens": 8}) is None


def test_plain_generate_on_the_cpu_keeps_transformers_loop():
    """On the CPU a converted model's generate() stays on transformers' loop (with the evicting
    cache); the static decoder is only made on CUDA."""
    model = _tiny(sink_window(4, 16))
    ids = torch.randint(0, model.config.vocab_size, (1, 40))
    model.generate(ids, max_new_tokens=4, do_sample=False)
    assert current_decoder(model) is None


def test_one_prompt_prefills_every_row_and_the_full_cache_is_refused():
    model = _tiny(sink_window(4, 16))
    ids = torch.randint(0, model.config.vocab_size, (1, 50), generator=torch.Generator().manual_seed(7))
    decoder = StaticDecoder(model, 3, 64)
    decoder.prefill(ids)
    for _ in range(13):  # positions 50..62: the buffers hold 64
        decoder.step()
    expected = greedy_recompute(model, ids, 14)[0, 50:]
    assert all(torch.equal(row, expected) for row in decoder.generated[:, :14])
    decoder.step()  # position 63, the last slot
    with pytest.raises(ValueError, match=r"the cache is full \(64 tokens\)"):
        decoder.step()


def test_copies_of_a_model_do_not_share_its_decoder_and_release_frees_it():
    import copy

    model = _tiny(sink_window(4, 16))
    ids = torch.randint(0, model.config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(8))
    expected = static_generate(model, ids, 6, graphs=False)
    twin = copy.deepcopy(model)
    assert current_decoder(model) is not None and current_decoder(twin) is None
    assert torch.equal(static_generate(twin, ids, 6, graphs=False), expected)
    release_decoder(model)
    assert current_decoder(model) is None
