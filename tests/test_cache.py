"""The evicting KV cache: what it keeps, its memory, and generation that equals full recomputation
(for the hybrid and for the post-hoc StreamingLLM-style baseline)."""

import doctest

import pytest
import torch
from transformers import DynamicCache

import longgen_core.models.cache
import longgen_core.models.convert
import longgen_core.models.base
import longgen_core.models.settings
from longgen_core.models.cache import (EvictingLayer, LongGenCache, generate_with_cache, greedy_recompute,
                                kv_bytes_formula, kv_cache_bytes, kv_slots_formula)
from longgen_core.models.convert import convert_config, to_longgen, to_posthoc_streaming, use_backend
from longgen_core.models.base import llama2_7b_config, load_smollm2, tiny_llama
from longgen_core.models.settings import layer_patterns
from longgen_core.patterns import sink_window, sliding_window, strided

SINK, WINDOW = 4, 32
PATTERNS = [
    sink_window(SINK, WINDOW),
    sliding_window(24),
    strided(block_size=16, local_blocks=2, vert_stride=3, homo_head=True),
    strided(block_size=16, local_blocks=1, vert_stride=4, homo_head=False, num_heads=2),
]


def random_ids(n, vocab=500, seed=0):
    return torch.randint(3, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("module", [longgen_core.models.cache, longgen_core.models.settings,
                                    longgen_core.models.convert, longgen_core.models.base],
                         ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------------- one layer
@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p.name)
@pytest.mark.parametrize("prefill", [1, 20, 70])
def test_layer_keeps_what_queries_need_and_matches_the_slot_formula(pattern, prefill):
    heads = 2
    layer = EvictingLayer(pattern, num_heads=heads)
    gen = torch.Generator().manual_seed(0)
    states = torch.randn(1, 1, 130, 8, generator=gen)
    layer.update(states[:, :, :prefill], states[:, :, :prefill])
    for n in range(prefill, 130):
        held = layer.positions_cpu
        # Every key some head of the next query (position n) attends is still held, with its data.
        needed = pattern.dense_mask(n + 1, num_heads=heads, n_queries=1).any(0)[0, :n].nonzero().flatten()
        assert set(needed.tolist()) <= set(held[held >= 0].tolist())
        slots = {int(p): s for s, p in enumerate(held.tolist()) if p >= 0}
        assert all(torch.equal(layer.keys[0, 0, slots[int(p)]], states[0, 0, p]) for p in needed)
        assert layer.num_slots() == kv_slots_formula(pattern, n, heads, prefill_tokens=prefill)
        k, _ = layer.update(states[:, :, n:n + 1], states[:, :, n:n + 1])
        # what the query at n was handed: its own key among the slots, with its position
        assert int(layer.returned_positions[(k[0, 0] == states[0, 0, n]).all(-1)][0]) == n
    assert layer.get_seq_length() == 130


def test_full_layer_appends_into_a_buffer_instead_of_concatenating():
    layer = EvictingLayer()
    layer.grow = 8
    states = torch.randn(1, 2, 40, 4, generator=torch.Generator().manual_seed(1))
    k, _ = layer.update(states[:, :, :10], states[:, :, :10])
    assert k.data_ptr() == states.data_ptr()  # the prefill is kept as it is, not copied
    capacities = set()
    for n in range(10, 40):
        k, v = layer.update(states[:, :, n:n + 1], states[:, :, n:n + 1] * 2)
        assert torch.equal(k, states[:, :, :n + 1]) and torch.equal(v[:, :, n], states[:, :, n] * 2)
        assert torch.equal(layer.returned_positions, torch.arange(n + 1))
        capacities.add(layer._buffer[0].shape[-2])
    assert capacities == {19, 28, 37, 46}  # room for 8 more at each growth: 4 buffers for 30 tokens


def test_sparse_layer_attends_a_first_prefill_without_copying_it():
    """The prefill's keys go to the kernel as they are (a copy moves 2 N D bytes per KV head);
    only the sink + window slots the last query saw are kept."""
    layer = EvictingLayer(sink_window(SINK, WINDOW))
    states = torch.randn(1, 2, 50, 8, generator=torch.Generator().manual_seed(3))
    k, v = layer.update(states, states * 2)
    assert k.data_ptr() == states.data_ptr() and torch.equal(v, states * 2)
    assert torch.equal(layer.returned_positions, torch.arange(50)) and layer.contiguous
    assert sorted(layer.positions_cpu.tolist()) == list(range(SINK)) + list(range(50 - WINDOW, 50))


def test_sink_window_layer_reuses_its_slots_in_place():
    layer = EvictingLayer(sink_window(SINK, WINDOW))
    states = torch.randn(1, 2, 200, 8, generator=torch.Generator().manual_seed(0))
    layer.update(states[:, :, :50], states[:, :, :50])
    layer.update(states[:, :, 50:51], states[:, :, 50:51])
    pointer = layer.keys.data_ptr()
    for n in range(51, 200):
        layer.update(states[:, :, n:n + 1], states[:, :, n:n + 1])
        assert layer.keys.data_ptr() == pointer and layer.num_slots() == SINK + WINDOW
    assert sorted(layer.positions_cpu.tolist()) == list(range(SINK)) + list(range(200 - WINDOW, 200))


@pytest.mark.parametrize("prefill", [3, 6, 40])  # shorter than, equal to and past sink + window
def test_ring_arithmetic_picks_the_slot_the_visibility_rule_picks(prefill, monkeypatch):
    ring, general = EvictingLayer(sink_window(2, 4)), EvictingLayer(sink_window(2, 4))
    monkeypatch.setattr(general, "_ring_slot", lambda first: None)  # the general rule alone
    x = torch.randn(1, 1, prefill + 30, 8)
    for layer in (ring, general):
        layer.update(x[:, :, :prefill], x[:, :, :prefill])
    used = 0
    for t in range(prefill, prefill + 30):
        used += ring._ring_slot(t) is not None
        k_ring, _ = ring.update(x[:, :, t:t + 1], x[:, :, t:t + 1])
        k_general, _ = general.update(x[:, :, t:t + 1], x[:, :, t:t + 1])
        assert ring.positions_cpu.tolist() == general.positions_cpu.tolist()
        assert torch.equal(k_ring, k_general) and torch.equal(ring.query_positions, general.query_positions)
    assert used >= 30 - 6  # every step once sink + window slots are full


def test_full_layer_keeps_everything_in_order():
    layer = EvictingLayer()  # full_causal
    states = torch.randn(1, 2, 40, 8, generator=torch.Generator().manual_seed(0))
    layer.update(states[:, :, :25], states[:, :, :25])
    for n in range(25, 40):
        k, _ = layer.update(states[:, :, n:n + 1], states[:, :, n:n + 1])
    assert torch.equal(k, states) and layer.contiguous
    assert layer.positions_cpu.tolist() == list(range(40))


def test_cache_cannot_be_cropped_and_resets():
    cache = LongGenCache(convert_config(tiny_llama().config, pattern=sink_window(SINK, WINDOW)))
    x = torch.randn(1, 2, 50, 16)
    cache.update(x, x, 0)
    with pytest.raises(ValueError, match="cropped"):
        cache.crop(-3)
    cache.reset()
    assert cache.get_seq_length() == 0 and cache.layers[0].positions_cpu.numel() == 0


# ---------------------------------------------------------------------- generation
@pytest.mark.parametrize("pattern", [sink_window(SINK, WINDOW), PATTERNS[3]], ids=lambda p: p.name)
def test_tiny_greedy_generation_with_evicting_cache_equals_recompute(pattern):
    hybrid = to_longgen(tiny_llama(num_heads=2, num_kv_heads=1), pattern=pattern)
    prompt = random_ids(40)
    out, cache = generate_with_cache(hybrid, prompt, max_new_tokens=50, eos_token_id=None)
    assert out.shape[1] == 90 > 40 + SINK + WINDOW
    use_backend(hybrid, "reference")  # the dense oracle, whole prefix, no cache
    assert torch.equal(out, greedy_recompute(hybrid, prompt, 50))
    # and the evicting layers did evict
    slots = [layer.num_slots() for layer in cache.layers]
    assert max(slots) == 89 > min(slots)


def test_hybrid_with_a_plain_dynamic_cache_gives_the_same_tokens():
    hybrid = to_longgen(tiny_llama(), pattern=sink_window(SINK, WINDOW))
    prompt = random_ids(30, seed=3)
    out, _ = generate_with_cache(hybrid, prompt, max_new_tokens=40, eos_token_id=None)
    plain = hybrid.generate(prompt, attention_mask=torch.ones_like(prompt), past_key_values=DynamicCache(),
                            max_new_tokens=40, do_sample=False, eos_token_id=None)
    assert torch.equal(out, plain)


def test_plain_generate_of_a_converted_model_evicts_and_gives_the_same_tokens():
    hybrid = to_longgen(tiny_llama(), pattern=sink_window(SINK, WINDOW))
    prompt = random_ids(30, seed=3)
    expected, _ = generate_with_cache(hybrid, prompt, max_new_tokens=40, eos_token_id=None)
    out = hybrid.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=40, do_sample=False,
                          eos_token_id=None, return_dict_in_generate=True)
    assert torch.equal(out.sequences, expected)
    cache = out.past_key_values
    assert isinstance(cache, LongGenCache)
    sparse = [p.kind != "full" for p in layer_patterns(hybrid.config)]
    slots = [layer.num_slots() for layer in cache.layers]
    assert [s for s, sp in zip(slots, sparse) if sp] == [SINK + WINDOW] * sum(sparse)
    assert [s for s, sp in zip(slots, sparse) if not sp] == [69] * (len(sparse) - sum(sparse))


def test_a_cache_the_caller_names_or_no_cache_still_wins_and_copies_generate_with_themselves():
    import copy

    hybrid = to_longgen(tiny_llama(), pattern=sink_window(SINK, WINDOW))
    prompt = random_ids(30, seed=3)
    kw = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=5, do_sample=False, eos_token_id=None,
              return_dict_in_generate=True)
    dynamic = DynamicCache()
    assert hybrid.generate(prompt, past_key_values=dynamic, **kw).past_key_values is dynamic
    assert hybrid.generate(prompt, use_cache=False, **kw).past_key_values is None
    twin = copy.deepcopy(hybrid)
    assert twin.generate.__self__ is twin
    assert torch.equal(twin.generate(prompt, **kw).sequences, hybrid.generate(prompt, **kw).sequences)


@pytest.fixture(scope="module")
def smollm2_hybrid():
    model, tokenizer = load_smollm2()
    return to_longgen(model, pattern=sink_window(SINK, WINDOW)), tokenizer


def test_smollm2_greedy_generation_past_the_window_equals_recompute(smollm2_hybrid):
    model, tokenizer = smollm2_hybrid
    prompt = tokenizer("The Roman Empire was one of the largest empires in history. At its height it "
                       "covered", return_tensors="pt").input_ids
    out, _ = generate_with_cache(model, prompt, max_new_tokens=40)
    assert out.shape[1] > SINK + WINDOW + 20  # generated well past the window
    use_backend(model, "reference")
    try:
        expected = greedy_recompute(model, prompt, out.shape[1] - prompt.shape[1])
    finally:
        use_backend(model, "auto")
    assert torch.equal(out, expected)
    plain = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=40, do_sample=False,
                           return_dict_in_generate=True)  # no cache named: the evicting one by default
    assert torch.equal(plain.sequences, out) and isinstance(plain.past_key_values, LongGenCache)


def test_smollm2_cache_memory_constant_past_the_window_and_equal_to_formula(smollm2_hybrid):
    model, _ = smollm2_hybrid
    ids = random_ids(60, vocab=49152, seed=4)
    cache = LongGenCache(model.config)
    sparse = [i for i, c in enumerate(longgen_core.models.convert.layer_map(model.config)) if c == "s"]
    full = [i for i in range(30) if i not in sparse]
    with torch.no_grad():
        out = model(ids[:, :20], past_key_values=cache, use_cache=True)
        history = []
        for _ in range(30):
            next_id = out.logits[:, -1:].argmax(-1)
            out = model(next_id, past_key_values=cache, use_cache=True)
            measured = kv_cache_bytes(cache)
            assert measured == kv_bytes_formula(model.config, cache.get_seq_length(), torch.float32,
                                                prefill_tokens=20)
            history.append(measured)
    per_token = 2 * 3 * 64 * 4  # K and V, 3 KV heads, head_dim 64, float32
    assert cache.get_seq_length() == 50
    for i in sparse:  # constant once sink + window tokens are held
        assert {h[i] for h in history[SINK + WINDOW - 20:]} == {(SINK + WINDOW) * per_token}
    for i in full:
        assert history[-1][i] == 50 * per_token


def test_llama2_7b_kv_bytes_at_128k():
    config = llama2_7b_config()
    n = 128 * 1024
    full = kv_bytes_formula(config, n, torch.bfloat16)
    per_token_layer = 2 * 32 * 128 * 2  # K+V, 32 KV heads, head_dim 128, bf16
    assert full == [per_token_layer * n] * 32 and sum(full) == 64 * 2 ** 30
    convert_config(config, pattern=sink_window(64, 4096), max_position_embeddings=n)
    hybrid = kv_bytes_formula(config, n, torch.bfloat16)
    n_full = len(config.longgen["full_layers"])
    assert sum(hybrid) == per_token_layer * (n_full * n + (32 - n_full) * 4160)
    assert 0.55 < 1 - sum(hybrid) / sum(full) < 0.70  # the paper reports -62% at 128K


def test_kv_cache_bytes_measures_a_dynamic_cache_too():
    model = tiny_llama()
    ids = random_ids(33)
    cache = DynamicCache()
    with torch.no_grad():
        model(ids, past_key_values=cache, use_cache=True)
    assert kv_cache_bytes(cache) == kv_bytes_formula(model.config, 33, torch.float32)


# ---------------------------------------------------------------------- post-hoc baseline
@pytest.mark.parametrize("positions", ["original", "reindex"])
def test_posthoc_streaming_generation_equals_recompute(positions):
    model = to_posthoc_streaming(tiny_llama(seed=7), full_layers=[], pattern=sink_window(SINK, WINDOW),
                                 positions=positions)
    assert model.config.longgen["mode"] == "posthoc"
    assert set(longgen_core.models.convert.layer_map(model.config)) == {"s"}
    prompt = random_ids(40, seed=5)
    out, cache = generate_with_cache(model, prompt, max_new_tokens=40, eos_token_id=None)
    assert all(layer.num_slots() == SINK + WINDOW for layer in cache.layers)
    # Recompute without a cache: "sdpa" (the reference backend has no re-indexing).
    use_backend(model, "sdpa" if positions == "reindex" else "reference")
    assert torch.equal(out, greedy_recompute(model, prompt, 40))


def test_posthoc_positions_matter_only_past_the_window():
    ids = random_ids(90, seed=6)
    with torch.no_grad():
        original = to_posthoc_streaming(tiny_llama(), pattern=sink_window(SINK, WINDOW))(ids).logits
        reindexed = to_posthoc_streaming(tiny_llama(), pattern=sink_window(SINK, WINDOW),
                                         positions="reindex")(ids).logits
    torch.testing.assert_close(original[:, :SINK + WINDOW], reindexed[:, :SINK + WINDOW], rtol=0, atol=1e-5)
    assert (original[:, SINK + WINDOW:] - reindexed[:, SINK + WINDOW:]).abs().max() > 1e-2


def test_measure_kv_bytes_after_a_prefill_matches_the_formula():
    hybrid = to_longgen(tiny_llama(), pattern=sink_window(SINK, WINDOW))
    for n in (10, 36, 100):
        measured = longgen_core.models.cache.measure_kv_bytes(hybrid, n)
        assert measured == kv_bytes_formula(hybrid.config, n, torch.float32)
    full = longgen_core.models.cache.measure_kv_bytes(hybrid, 100, cache=DynamicCache())
    assert sum(full) > sum(measured) and full[2] == measured[2]  # layer 2 is full in both
