"""Presets (validation, the paper's numbers), the RoPE extension rule and its application."""

import doctest

import pytest
import torch

import longgen_core.train.loss
import longgen_core.train.presets
import longgen_core.models.rope
from longgen_core.models.convert import to_longgen
from longgen_core.models.base import tiny_llama
from longgen_core.patterns import sink_window
from longgen_core.train.presets import PRESETS, get_preset, smollm2_config
from longgen_core.models.rope import (ROPE_EXPONENT, extended_rope_theta, rope_theta_of, set_rope, slow_pairs,
                               wavelengths)


@pytest.mark.parametrize("module", [longgen_core.models.rope, longgen_core.train.presets, longgen_core.train.loss],
                         ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------------- the RoPE rule
def test_rope_rule_hits_the_paper_point_and_scales_as_a_power_law():
    assert extended_rope_theta(1e4, 4096, 131072) == 5e6  # Llama-2 4K -> 128K, the paper's base
    assert extended_rope_theta(1e5, 8192, 32768) == 1.2e6  # gpu-small
    assert extended_rope_theta(1e5, 8192, 8192) == 1e5
    # Doubling the ratio multiplies the base by 2**exponent (before rounding).
    exact = [extended_rope_theta(1e4, 4096, 4096 * 2**k, digits=12) for k in range(1, 6)]
    ratios = [b / a for a, b in zip(exact, exact[1:])]
    assert all(r == pytest.approx(2**ROPE_EXPONENT) for r in ratios)
    assert extended_rope_theta(1e4, 4096, 8192, exponent=1.0) == 2e4


@pytest.mark.parametrize("args,match", [((1e4, 8192, 4096), "never shortens"),
                                        ((1.0, 4096, 8192), "RoPE base"), ((1e4, 0, 8192), "original_len"),
                                        ((1e4, 4096, 8192.0), "target_len")])
def test_rope_rule_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        extended_rope_theta(*args)


def test_set_rope_equals_a_model_built_with_that_base():
    ids = torch.randint(0, 512, (1, 64), generator=torch.Generator().manual_seed(0))
    changed = set_rope(tiny_llama(seed=4), rope_theta=1.2e6, max_position_embeddings=32768)
    built = tiny_llama(seed=4, rope_theta=1.2e6, max_positions=32768)
    assert rope_theta_of(changed.config) == 1.2e6 and changed.config.max_position_embeddings == 32768
    with torch.no_grad():
        assert torch.allclose(changed(ids).logits, built(ids).logits, atol=1e-6)
        assert not torch.allclose(changed(ids).logits, tiny_llama(seed=4)(ids).logits, atol=1e-4)
    # The hybrid path (to_longgen's own rebuild) produces the same frequencies.
    hybrid = to_longgen(tiny_llama(seed=4), pattern=sink_window(4, 16), rope_theta=1.2e6,
                        max_position_embeddings=32768)
    assert torch.equal(hybrid.model.rotary_emb.inv_freq, changed.model.rotary_emb.inv_freq)
    with pytest.raises(ValueError, match="rope_theta"):
        set_rope(tiny_llama(), rope_theta=-3.0)


# ---------------------------------------------------------------------- presets
def test_presets_hold_their_documented_values():
    tiny, small, paper = PRESETS["cpu-tiny"], PRESETS["gpu-small"], PRESETS["paper-7b-128k"]
    assert get_preset() is tiny and tiny.dtype == "fp32" and tiny.seq_len <= 1024
    assert small.seq_len == small.target_len == 32768 and small.original_len == 8192 and small.dtype == "bf16"
    assert small.resolved_rope_theta(1e5) == tiny.resolved_rope_theta(1e5) == 1.2e6
    assert paper.original_len == 4096 and paper.target_len == 131072
    assert paper.resolved_rope_theta(1e4) == 5e6 == extended_rope_theta(1e4, 4096, 131072)
    assert paper.model == "meta-llama/Llama-2-7b-hf" and paper.full_layers is None  # the middle third
    tokens = paper.steps * paper.tokens_per_step(num_processes=8)
    assert 4.9e9 < tokens < 5.2e9  # the paper's ~5B tokens on 8 GPUs
    for preset in PRESETS.values():
        assert preset.to_dict()["name"] == preset.name


def test_get_preset_overrides_and_errors():
    assert get_preset("gpu-small", steps=7).steps == 7
    assert get_preset("gpu-small", target_len=65536).seq_len == 65536  # trains at the new target
    assert get_preset("gpu-small", target_len=65536, seq_len=16384).seq_len == 16384
    with pytest.raises(ValueError, match=r"unknown preset 'huge'; choose one of \['cpu-tiny', 'gpu-small'"):
        get_preset("huge")
    with pytest.raises(ValueError, match=r"unknown preset field\(s\) \['stepz'\]"):
        get_preset("cpu-tiny", stepz=3)
    with pytest.raises(ValueError, match="beyond the RoPE-extended range"):
        get_preset("gpu-small", seq_len=65536)
    with pytest.raises(ValueError, match="trainable"):
        get_preset("cpu-tiny", trainable="embeddings")
    with pytest.raises(ValueError, match="synthetic_ratio"):
        get_preset("cpu-tiny", synthetic_ratio=1.5)
    with pytest.raises(ValueError, match="corpus 'random'"):
        get_preset("gpu-small", corpus="random")
    with pytest.raises(ValueError, match="target_len"):
        get_preset("cpu-tiny", target_len=4096)


def test_builtin_smollm2_config_matches_the_checkpoint():
    from transformers import AutoConfig

    from longgen_core.models.base import setup_smollm2

    stored = AutoConfig.from_pretrained(setup_smollm2(verbose=False))
    builtin = smollm2_config()
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "max_position_embeddings", "tie_word_embeddings"):
        assert getattr(builtin, key) == getattr(stored, key), key
    assert rope_theta_of(builtin) == rope_theta_of(stored) == 1e5


def test_slow_pairs_explain_the_rule():
    # SmolLM2: the rule's base keeps the pairs that never complete a turn where 8K left them.
    assert slow_pairs(1e5, 64, 8192) == slow_pairs(extended_rope_theta(1e5, 8192, 32768), 64, 32768) == 12
    assert slow_pairs(1e5, 64, 32768) == 8
    waves = wavelengths(1e4, 128)
    assert len(waves) == 64 and waves[0] == pytest.approx(2 * 3.141592653589793) and waves == sorted(waves)
