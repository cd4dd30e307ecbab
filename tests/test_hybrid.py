"""Hybrid conversion: equality with the base model within the window, with the dense reference
beyond it, config round trip, RoPE changes, and the errors for bad input."""

import pytest
import torch
from transformers import (GPT2Config, GPT2LMHeadModel, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM)
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from longgen_core.models.attention import rope_inv_freq, slot_attention
from longgen_core.models.convert import (convert_config, layer_map, load_longgen, to_longgen, to_posthoc_streaming,
                                 use_backend)
from longgen_core.models.base import load_smollm2, tiny_llama
from longgen_core.patterns import full_causal, sink_window, sliding_window, strided

SINK, WINDOW = 4, 32


def random_ids(n, vocab=500, batch=1, seed=0):
    return torch.randint(3, vocab, (batch, n), generator=torch.Generator().manual_seed(seed))


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="module")
def smollm2_pair():
    """SmolLM2 logits on random tokens before conversion, then the converted model."""
    model, _ = load_smollm2()
    ids = random_ids(80, vocab=49152, seed=1)
    base = logits(model, ids)
    to_longgen(model, pattern=sink_window(SINK, WINDOW))
    return model, ids, base


# ---------------------------------------------------------------------- layer map
def test_default_layer_map_is_the_middle_third():
    assert layer_map(to_longgen(tiny_llama(), pattern=sink_window(SINK, WINDOW)).config) == "ssFFss"
    model = to_longgen(tiny_llama(num_layers=9), full_layers=[0, 8], pattern=sliding_window(16))
    assert layer_map(model.config) == "FsssssssF"
    assert model.config.longgen["pattern"] == {"kind": "sliding_window", "window_tokens": 16}


def test_smollm2_layer_map(smollm2_pair):
    model, _, _ = smollm2_pair
    assert model.config.longgen["full_layers"] == list(range(10, 20))
    assert layer_map(model.config) == "s" * 10 + "F" * 10 + "s" * 10


# ---------------------------------------------------------------------- equality
@pytest.mark.parametrize("pattern", [sink_window(SINK, WINDOW), sliding_window(WINDOW),
                                     strided(block_size=16, local_blocks=2, vert_stride=2, homo_head=False,
                                             num_heads=4)], ids=lambda p: p.name)
def test_tiny_hybrid_within_window_equals_base_and_beyond_equals_reference(pattern):
    base = tiny_llama().double()
    ids = random_ids(100)
    reach = 32  # every pattern above sees the whole prefix for the first 32 positions
    expected_short, expected_long = logits(base, ids[:, :reach]), logits(base, ids)
    hybrid = to_longgen(base, pattern=pattern)
    got = logits(hybrid, ids)
    torch.testing.assert_close(got[:, :reach], expected_short, rtol=0, atol=1e-10)
    assert (got[:, reach:] - expected_long[:, reach:]).abs().max() > 1e-2  # the pattern really acts
    use_backend(hybrid, "reference")  # the dense oracle, reference_attention, in every layer
    torch.testing.assert_close(got, logits(hybrid, ids), rtol=0, atol=1e-10)


def test_smollm2_within_window_equals_base(smollm2_pair):
    model, ids, base = smollm2_pair
    got = logits(model, ids[:, :SINK + WINDOW])
    torch.testing.assert_close(got, base[:, :SINK + WINDOW], rtol=0, atol=1e-4)


def test_smollm2_beyond_window_equals_dense_reference(smollm2_pair):
    model, ids, base = smollm2_pair
    got = logits(model, ids)
    assert (got[:, SINK + WINDOW:] - base[:, SINK + WINDOW:]).abs().max() > 0.1
    use_backend(model, "reference")
    try:
        torch.testing.assert_close(got, logits(model, ids), rtol=0, atol=2e-3)
    finally:
        use_backend(model, "auto")


@pytest.mark.parametrize("cls, config", [
    (MistralForCausalLM, MistralConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                                       num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                       sliding_window=None)),
    (Qwen2ForCausalLM, Qwen2Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2)),
], ids=["mistral", "qwen2"])
def test_other_llama_family_architectures(cls, config):
    torch.manual_seed(0)
    config.initializer_range = 0.1
    base = cls(config).eval().double()
    ids = random_ids(60, vocab=256)
    expected = logits(base, ids)
    hybrid = to_longgen(base, pattern=sink_window(2, 16))
    assert layer_map(hybrid.config) == "sFs"
    got = logits(hybrid, ids)
    torch.testing.assert_close(got[:, :18], expected[:, :18], rtol=0, atol=1e-10)
    use_backend(hybrid, "reference")
    torch.testing.assert_close(got, logits(hybrid, ids), rtol=0, atol=1e-10)


def test_batch_rows_are_independent():
    hybrid = to_longgen(tiny_llama().double(), pattern=sink_window(SINK, WINDOW))
    ids = random_ids(70, batch=2)
    both = logits(hybrid, ids)
    torch.testing.assert_close(both[1:], logits(hybrid, ids[1:]), rtol=0, atol=1e-10)


def test_gradients_flow_through_sparse_layers():
    hybrid = to_longgen(tiny_llama(), pattern=sink_window(SINK, WINDOW)).train()
    ids = random_ids(64)
    hybrid(ids, labels=ids).loss.backward()
    for i in (0, 2, 5):  # sparse, full, sparse
        grad = hybrid.model.layers[i].self_attn.q_proj.weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


# ---------------------------------------------------------------------- RoPE and round trip
def test_rope_theta_change_equals_a_model_built_with_it():
    ids = random_ids(30)
    hybrid = to_longgen(tiny_llama(seed=5), pattern=sink_window(SINK, WINDOW), rope_theta=1e6,
                        max_position_embeddings=65536)
    assert hybrid.config.rope_parameters["rope_theta"] == 1e6
    assert hybrid.config.max_position_embeddings == 65536
    rebuilt = tiny_llama(seed=5, rope_theta=1e6)
    torch.testing.assert_close(logits(hybrid, ids), logits(rebuilt, ids), rtol=0, atol=1e-5)
    assert (logits(hybrid, ids) - logits(tiny_llama(seed=5), ids)).abs().max() > 1e-3


@pytest.mark.parametrize("pattern", [sink_window(SINK, WINDOW),
                                     strided(block_size=16, local_blocks=1, vert_stride=3, homo_head=False,
                                             num_heads=4)], ids=lambda p: p.name)
def test_save_pretrained_and_load_longgen_round_trip(tmp_path, pattern):
    hybrid = to_longgen(tiny_llama(seed=2), full_layers=[1, 4], pattern=pattern, rope_theta=5e4)
    ids = random_ids(90)
    expected = logits(hybrid, ids)
    hybrid.save_pretrained(tmp_path)
    loaded = load_longgen(tmp_path)
    assert loaded.config.longgen == hybrid.config.longgen
    assert loaded.config._attn_implementation == "longgen"
    assert loaded.config.rope_parameters["rope_theta"] == 5e4
    assert layer_map(loaded.config) == "sFssFs"
    torch.testing.assert_close(logits(loaded, ids), expected, rtol=0, atol=1e-6)
    loaded_ref = load_longgen(tmp_path, backend="reference")
    assert loaded_ref.config._attn_implementation == "longgen_reference"
    torch.testing.assert_close(logits(loaded_ref, ids), expected, rtol=0, atol=1e-5)


def test_load_longgen_refuses_an_unconverted_checkpoint(tmp_path):
    tiny_llama().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not a converted model"):
        load_longgen(tmp_path)


def test_convert_config_without_weights():
    from transformers import LlamaConfig

    config = convert_config(LlamaConfig(num_hidden_layers=32, max_position_embeddings=4096),
                            rope_theta=5e6, max_position_embeddings=131072)
    assert config.longgen["full_layers"] == list(range(10, 21))
    assert config.longgen["pattern"] == {"kind": "sink_window", "sink_tokens": 64, "window_tokens": 4096}


# ---------------------------------------------------------------------- StreamingLLM re-indexing
def test_reindexed_sink_scores_match_an_explicit_streamingllm_oracle():
    """Rotate raw q/k at StreamingLLM's in-cache positions with transformers' own RoPE and compare."""
    config = tiny_llama().config
    gen = torch.Generator().manual_seed(0)
    n, d, s, w = 40, 16, 3, 8
    pattern = sink_window(s, w)
    q_raw = torch.randn(1, 4, n, d, generator=gen, dtype=torch.float64)
    k_raw = torch.randn(1, 2, n, d, generator=gen, dtype=torch.float64)
    v = torch.randn(1, 2, n, d, generator=gen, dtype=torch.float64)
    rope = LlamaRotaryEmbedding(config)

    def rope_at(x, positions):
        cos, sin = rope(x, positions.view(1, -1))
        return apply_rotary_pos_emb(x, x, cos, sin)[0]

    pos = torch.arange(n)
    got = slot_attention(rope_at(q_raw, pos), rope_at(k_raw, pos), v, pos, pos, pattern,
                         reindex_inv_freq=rope_inv_freq(config, d))
    for p in (5, 10, 11, 25, 39):
        keys = pattern.dense_mask(n)[0, p].nonzero().flatten()  # visible keys, ascending
        in_cache = torch.arange(keys.numel())  # StreamingLLM: position = index in the cache
        q = rope_at(q_raw[:, :, p:p + 1], in_cache[-1:])
        k = rope_at(k_raw[:, :, keys], in_cache).repeat_interleave(2, dim=1)
        probs = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, dim=-1)
        expected = probs @ v[:, :, keys].repeat_interleave(2, dim=1)
        # transformers computes RoPE angles in float32, hence 1e-6 and not 1e-12
        torch.testing.assert_close(got[:, :, p:p + 1], expected, rtol=0, atol=1e-6)
    # Far from the sinks the re-indexed and original answers differ; inside the window they agree.
    original = slot_attention(rope_at(q_raw, pos), rope_at(k_raw, pos), v, pos, pos, pattern)
    torch.testing.assert_close(got[:, :, :s + w], original[:, :, :s + w], rtol=0, atol=1e-6)
    assert (got[:, :, s + w:] - original[:, :, s + w:]).abs().max() > 1e-3


# ---------------------------------------------------------------------- errors
def test_error_unsupported_architecture():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100))
    with pytest.raises(ValueError, match="model_type='gpt2'"):
        to_longgen(gpt2, pattern=sink_window(SINK, WINDOW))
    with pytest.raises(TypeError, match="causal LM"):
        to_longgen(torch.nn.Linear(2, 2))
    mistral_swa = MistralForCausalLM(MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                                   num_hidden_layers=2, num_attention_heads=2,
                                                   num_key_value_heads=1, sliding_window=64))
    with pytest.raises(ValueError, match="sliding_window"):
        to_longgen(mistral_swa, pattern=sink_window(SINK, WINDOW))


@pytest.mark.parametrize("kwargs, error, message", [
    ({"full_layers": [2, 6]}, ValueError, "out of range"),
    ({"full_layers": [-1]}, ValueError, "out of range"),
    ({"full_layers": [2, 2]}, ValueError, "duplicated"),
    ({"full_layers": [2.0]}, TypeError, "full_layers"),
    ({"full_layers": "2,3"}, TypeError, "full_layers"),
    ({"pattern": full_causal()}, ValueError, "sparse"),
    ({"pattern": "sink_window"}, TypeError, "Pattern"),
    ({"pattern": {"kind": "diagonal"}}, ValueError, "kind"),
    ({"pattern": sink_window(64, 8192)}, ValueError, "max_position_embeddings"),
    ({"pattern": strided(block_size=1024, local_blocks=8)}, ValueError, "max_position_embeddings"),
    ({"rope_theta": -1.0}, ValueError, "rope_theta"),
    ({"max_position_embeddings": 0}, ValueError, "max_position_embeddings"),
    ({"backend": "cuda"}, ValueError, "backend"),
])
def test_error_bad_conversion_arguments(kwargs, error, message):
    model = tiny_llama()
    kwargs = {"pattern": sink_window(SINK, WINDOW), **kwargs}
    with pytest.raises(error, match=message):
        to_longgen(model, **kwargs)
    assert getattr(model.config, "longgen", None) is None  # nothing half-converted
    assert model.config.rope_parameters["rope_theta"] == 10000.0


def test_error_bad_posthoc_positions():
    with pytest.raises(ValueError, match="positions"):
        to_posthoc_streaming(tiny_llama(), pattern=sink_window(SINK, WINDOW), positions="shifted")
    with pytest.raises(ValueError, match="strided"):
        to_posthoc_streaming(tiny_llama(), pattern=strided(16, 2, 2), positions="reindex")


def test_error_padded_or_packed_batches():
    hybrid = to_longgen(tiny_llama(), pattern=sink_window(SINK, WINDOW))
    ids = random_ids(20, batch=2)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    with pytest.raises(ValueError, match="padded"):
        hybrid(ids, attention_mask=mask)
    packed = torch.cat([torch.arange(10), torch.arange(10)]).view(1, -1)
    with pytest.raises(ValueError, match="position_ids"):
        hybrid(ids[:1], position_ids=packed)


def test_position_check_runs_once_per_forward_and_sees_in_place_changes(monkeypatch):
    from longgen_core.models import attention as hf_attention

    hybrid = to_longgen(tiny_llama(), pattern=sink_window(SINK, WINDOW))
    checks = []  # each check is one GPU synchronisation
    check = hf_attention.check_position_ids

    def spy(pos_ids, n_q):
        checks.append(pos_ids)
        return check(pos_ids, n_q)

    monkeypatch.setattr(hf_attention, "check_position_ids", spy)
    pos = torch.arange(20).view(1, -1)
    with torch.no_grad():
        hybrid(random_ids(20), position_ids=pos)
    assert hybrid.config.num_hidden_layers > 1 and len(checks) == 1  # every layer asks, one computes
    assert checks[0] is pos
    pos[0, 10:] = torch.arange(10)  # packed now: the in-place change must be seen
    with pytest.raises(ValueError, match="position_ids"), torch.no_grad():
        hybrid(random_ids(20), position_ids=pos)
    assert len(checks) == 2


def test_error_use_backend_on_unconverted_model():
    with pytest.raises(ValueError, match="not converted"):
        use_backend(tiny_llama(), "sdpa")


def test_error_without_the_cache_hook(tmp_path):
    """A model switched to "longgen" by hand (no hook) must refuse, not misread an evicting cache."""
    from longgen_core.models import attention as hf_attention

    hf_attention.register()
    model = tiny_llama()
    model.set_attn_implementation("longgen")
    with pytest.raises(ValueError, match="load_longgen"):
        model(random_ids(10))
    to_longgen(tiny_llama(), pattern=sink_window(SINK, WINDOW)).save_pretrained(tmp_path)
    from transformers import LlamaForCausalLM

    # The base class by name bypasses the hybrid's (AutoModelForCausalLM gives the hybrid: test_auto.py)
    bare = LlamaForCausalLM.from_pretrained(tmp_path, attn_implementation="longgen")
    with pytest.raises(ValueError, match="load_longgen"):
        bare(random_ids(10))


def test_error_with_a_foreign_evicting_cache():
    from transformers.cache_utils import Cache, DynamicSlidingWindowLayer

    hybrid = to_longgen(tiny_llama(), pattern=sink_window(SINK, WINDOW))
    cache = Cache(layers=[DynamicSlidingWindowLayer(sliding_window=8) for _ in range(6)])
    with torch.no_grad():
        hybrid(random_ids(12), past_key_values=cache, use_cache=True)
        with pytest.raises(ValueError, match="DynamicSlidingWindowLayer"):
            hybrid(random_ids(1), past_key_values=cache, use_cache=True)


def test_kernel_routing_hands_the_ops_contract_tensors(monkeypatch):
    """On CUDA the dispatcher calls ops.sparse_attention (prefill) and ops.sparse_decode (slots +
    original positions). A stand-in ops module checks the arguments and answers with the
    reference math; the generated tokens must not change."""
    from longgen_core.models import attention as hf_attention
    from longgen_core.kernels.reference import reference_attention
    from longgen_core.models.cache import generate_with_cache

    calls = {"prefill": 0, "decode": 0}

    class FakeOps:
        @staticmethod
        def sparse_attention(q, k, v, pattern, *, scale=None, return_lse=False):
            assert q.shape[2] == k.shape[2] and k.shape[1] * 2 == q.shape[1]  # GQA kept, no repeat
            calls["prefill"] += 1
            return reference_attention(q, k, v, pattern, scale=scale)

        @staticmethod
        def sparse_decode(q, k_cache, v_cache, cache_positions, pattern, *, q_positions=None, scale=None):
            assert q.shape[2] == 1 and cache_positions.dtype == torch.int64
            assert cache_positions.shape == (k_cache.shape[2],) and k_cache.shape == v_cache.shape
            assert int(q_positions[0]) == int(cache_positions.max())  # the new token is among the slots
            calls["decode"] += 1
            return slot_attention(q, k_cache, v_cache, q_positions, cache_positions, pattern, scale)

    hybrid = to_longgen(tiny_llama(), pattern=sink_window(SINK, WINDOW))
    prompt = random_ids(30, seed=9)
    expected, _ = generate_with_cache(hybrid, prompt, 30, eos_token_id=None)
    monkeypatch.setattr(hf_attention, "kernel_ops", lambda backend, query, reindex: FakeOps)
    got, _ = generate_with_cache(hybrid, prompt, 30, eos_token_id=None)
    assert torch.equal(got, expected)
    assert calls == {"prefill": 4, "decode": 4 * 29}  # 4 sparse layers, 1 prefill + 29 decode steps


def test_real_triton_kernels_generate_the_same_tokens(monkeypatch):
    """End to end through longgen_core.kernels.api (Triton; interpreted on the CPU)."""
    import os

    try:
        from longgen_core.kernels import api as ops
    except Exception as err:  # the kernels are optional for this module
        pytest.skip(f"longgen_core.kernels.api not importable: {err}")
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA or TRITON_INTERPRET=1 (set by tests/conftest.py)")
    from longgen_core.models import attention as hf_attention
    from longgen_core.models.cache import generate_with_cache

    hybrid = to_longgen(tiny_llama(), pattern=sink_window(2, 16))
    prompt = random_ids(24)
    expected, _ = generate_with_cache(hybrid, prompt, 12, eos_token_id=None)
    monkeypatch.setattr(hf_attention, "kernel_ops", lambda backend, query, reindex: ops)
    got, _ = generate_with_cache(hybrid, prompt, 12, eos_token_id=None)
    assert torch.equal(got, expected)
