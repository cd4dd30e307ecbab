"""Saved hybrids say what they are: ``config.json`` names the hybrid's own model_type,
``AutoModelForCausalLM.from_pretrained`` gives the hybrid (the model ``load_longgen`` gives),
transformers without longgen_core refuses the folder naming ``load_longgen``, and folders saved
before the hybrid had a type of its own still load with ``load_longgen``."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

from longgen_core.manifest import IntegrityError
from longgen_core.models.base import load_smollm2, tiny_llama
from longgen_core.models.convert import load_longgen, save_longgen, to_longgen, to_posthoc_streaming, use_backend
from longgen_core.models.decode_step import unsupported
from longgen_core.models.hybrid import HYBRID_CLASSES
from longgen_core.models.settings import HYBRID_MODEL_TYPES, SUPPORTED_MODEL_TYPES
from longgen_core.patterns import sink_window

N = 120  # tokens: far past sink + window (4 + 32), so the sparse layers drop keys full attention keeps
PATTERN = sink_window(4, 32)


def random_ids(vocab, n=N, seed=0):
    return torch.randint(3, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _small(model_class, config_class, **fields):
    def build():
        config = config_class(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                              num_attention_heads=4, num_key_value_heads=2, initializer_range=0.1, **fields)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return model_class(config).eval()
    return build


# a tiny random base model of every supported type (a type added to SUPPORTED_MODEL_TYPES fails here)
BASES = {"llama": lambda: tiny_llama(seed=3),
         "mistral": _small(MistralForCausalLM, MistralConfig, sliding_window=None),  # full attention
         "qwen2": _small(Qwen2ForCausalLM, Qwen2Config)}


@pytest.fixture
def saved(tmp_path):
    """``(hybrid, folder)``: a tiny converted Llama written by save_longgen."""
    hybrid = to_longgen(tiny_llama(seed=3), pattern=PATTERN)
    return hybrid, save_longgen(hybrid, tmp_path / "hybrid")


@pytest.mark.parametrize("model_type", SUPPORTED_MODEL_TYPES)
def test_auto_model_loads_the_saved_hybrid_of_every_supported_type(model_type, tmp_path):
    base = BASES[model_type]()
    base_class, base_config_class = type(base), type(base.config)
    ids = random_ids(base.config.vocab_size)
    full = logits(base, ids)
    hybrid = to_longgen(base, pattern=PATTERN)
    expected = logits(hybrid, ids)
    assert (expected - full).abs().max() > 1e-2  # what loading it as the base model would get wrong
    assert type(hybrid) is HYBRID_CLASSES[model_type] and isinstance(hybrid, base_class)
    folder = save_longgen(hybrid, tmp_path / "hybrid")

    written = json.loads((folder / "config.json").read_text())
    assert written["model_type"] == HYBRID_MODEL_TYPES[model_type]
    assert written["architectures"] == [HYBRID_CLASSES[model_type].__name__]
    # still the base config's fields, readable by the base config class
    assert base_config_class.from_dict(written).num_hidden_layers == base.config.num_hidden_layers

    auto = AutoModelForCausalLM.from_pretrained(folder)
    assert type(auto) is HYBRID_CLASSES[model_type]
    assert auto.config._attn_implementation == "longgen" and auto.config.longgen == hybrid.config.longgen
    assert torch.equal(logits(auto, ids), logits(load_longgen(folder), ids))
    torch.testing.assert_close(logits(auto, ids), expected, rtol=0, atol=1e-5)
    assert unsupported(auto) is None  # the fused CUDA decode step still takes it


def test_without_longgen_core_transformers_refuses_naming_load_longgen(saved, tmp_path):
    """A fresh interpreter that never imports longgen_core: no silent full attention."""
    _, folder = saved
    code = ("import sys\n"
            "from transformers import AutoModelForCausalLM\n"
            "try:\n"
            "    AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
            "except ValueError as err:\n"
            "    print(err)\n"
            "else:\n"
            "    print('loaded')\n"
            "assert 'longgen_core' not in sys.modules\n")
    run = subprocess.run([sys.executable, "-c", code, str(folder)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert "load_longgen" in run.stdout and "loaded" not in run.stdout


def test_a_folder_saved_before_loads_with_load_longgen_and_saves_with_its_type(tmp_path):
    hybrid = to_longgen(tiny_llama(seed=3), pattern=PATTERN)
    ids = random_ids(hybrid.config.vocab_size)
    expected = logits(hybrid, ids)
    # what save_longgen wrote before: the base classes, so "model_type": "llama" beside config.longgen
    hybrid.config.__class__, hybrid.__class__ = LlamaConfig, LlamaForCausalLM
    old = save_longgen(hybrid, tmp_path / "old")
    assert json.loads((old / "config.json").read_text())["model_type"] == "llama"

    with pytest.warns(UserWarning, match="full attention.*save_longgen"):
        reloaded = load_longgen(old)
    assert type(reloaded) is HYBRID_CLASSES["llama"]
    torch.testing.assert_close(logits(reloaded, ids), expected, rtol=0, atol=1e-6)
    again = save_longgen(reloaded, tmp_path / "again")
    assert type(AutoModelForCausalLM.from_pretrained(again)) is HYBRID_CLASSES["llama"]


def test_auto_model_takes_longgen_backends_only(saved):
    hybrid, folder = saved
    ids = random_ids(hybrid.config.vocab_size)
    reference = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="longgen_reference")
    assert reference.config._attn_implementation == "longgen_reference"
    torch.testing.assert_close(logits(reference, ids), logits(hybrid, ids), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"attn_implementation must be None or one of .*load_longgen.*'sdpa'"):
        AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa")
    direct = HYBRID_CLASSES["llama"].from_pretrained(folder)  # the class by name, config read by it
    assert torch.equal(logits(direct, ids), logits(hybrid, ids))


def test_auto_model_verifies_the_manifest_and_the_settings(saved, tmp_path):
    _, folder = saved
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"model\.safetensors in .* \(SHA-256 differs\)"):
        AutoModelForCausalLM.from_pretrained(folder)

    plain = tmp_path / "plain"  # save_pretrained: no manifest, so the edit below is read
    to_longgen(tiny_llama(), pattern=PATTERN).save_pretrained(plain)
    config = json.loads((plain / "config.json").read_text())
    config["longgen"]["mode"] = "bogus"
    (plain / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config\.longgen\['mode'\] must be one of"):
        AutoModelForCausalLM.from_pretrained(plain)


def test_every_conversion_gives_the_hybrid_classes():
    posthoc = to_posthoc_streaming(tiny_llama(), pattern=PATTERN)
    assert type(posthoc) is HYBRID_CLASSES["llama"]
    assert type(use_backend(posthoc, "reference")) is HYBRID_CLASSES["llama"]
    assert posthoc.config.model_type == HYBRID_MODEL_TYPES["llama"]
    assert type(to_longgen(posthoc, pattern=PATTERN)) is HYBRID_CLASSES["llama"]  # converting again


def test_smollm2_with_its_tokenizer_round_trips_through_the_auto_classes(tmp_path):
    model, tokenizer = load_smollm2()
    hybrid = to_longgen(model, pattern=PATTERN)
    folder = save_longgen(hybrid, tmp_path / "smollm2-hybrid", tokenizer)
    ids = random_ids(hybrid.config.vocab_size, seed=1)
    auto = AutoModelForCausalLM.from_pretrained(folder)  # (equal to load_longgen's: the tiny models above)
    assert type(auto) is HYBRID_CLASSES["llama"] and auto.config.tie_word_embeddings
    torch.testing.assert_close(logits(auto, ids), logits(hybrid, ids), rtol=0, atol=1e-4)
    assert AutoTokenizer.from_pretrained(folder)("pass key").input_ids == tokenizer("pass key").input_ids
