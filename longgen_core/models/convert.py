"""Convert a Hugging Face Llama-family causal LM into the LongGen hybrid; save and load it.

LongGen keeps full attention in the middle third of the decoder layers and gives the others a
sparse pattern (attention sink + sliding window, or blockwise strided), then finetunes during
context extension with the RoPE base raised. Conversion changes no weight: it records the layer
map and pattern in ``config.longgen`` (:mod:`longgen_core.models.settings`), optionally raises the RoPE
base / position limit, and switches the model to the ``"longgen"`` attention implementation
(:mod:`longgen_core.models.attention`) through transformers' public ``set_attn_implementation``,
and gives model and config the hybrid's classes (:mod:`longgen_core.models.hybrid`), so that a saved
hybrid's ``config.json`` names its own ``model_type``.

Example::

    >>> from longgen_core.models.base import tiny_llama
    >>> from longgen_core.patterns import sink_window
    >>> model = to_longgen(tiny_llama(), pattern=sink_window(4, 32))
    >>> model.config.longgen["full_layers"], layer_map(model.config)
    ([2, 3], 'ssFFss')

Round trip: :func:`save_longgen` (``save_pretrained`` with a manifest of digests, renamed into
place) then :func:`load_longgen` -- which verifies the files, registers the attention functions and
restores the same model; ``AutoModelForCausalLM.from_pretrained`` of the folder does the same where
``longgen_core.models`` is imported (:mod:`longgen_core.models.hybrid`).

Supported: ``model_type`` in :data:`SUPPORTED_MODEL_TYPES` (Llama-2/3, SmolLM2, Mistral-style GQA,
Qwen2) with full attention in every layer before conversion.
"""

from __future__ import annotations

import math
import os
import shutil
import warnings
from pathlib import Path

import torch

from ..manifest import MANIFEST_FILE, WRITE_ERRORS, verify_if_present, write_manifest
from ..patterns import Pattern, default_full_layers, sink_window
from .attention import check_backend
from .hybrid import attach_patterns, load_checked, use_backend
from .rope import rebuild_rotary
from .settings import (SETTINGS_KEY, SUPPORTED_MODEL_TYPES, base_model_type, check_architecture, get_settings,
                       layer_patterns, make_settings)

# use_backend and attach_patterns live in models/hybrid.py; named here too, where they were first
__all__ = ["SUPPORTED_MODEL_TYPES", "convert_config", "to_longgen", "to_posthoc_streaming", "save_longgen",
           "load_longgen", "use_backend", "attach_patterns", "layer_map", "looks_local"]


def convert_config(config, full_layers: list[int] | None = None, pattern: Pattern | dict | None = None,
                   mode: str = "hybrid", positions: str = "original", rope_theta: float | None = None,
                   max_position_embeddings: int | None = None):
    """Write validated LongGen settings (and an optional new RoPE base / position limit) into
    ``config`` in place and return it. Needs no weights, e.g. for KV-cache arithmetic at 7B.

    Args:
        full_layers: layers that keep full attention; default the middle third
            (:func:`~longgen_core.patterns.default_full_layers`).
        pattern: the sparse layers' :class:`Pattern` (or its dict); default ``sink_window(64, 4096)``.
        mode, positions: see :mod:`longgen_core.models.settings`.
        rope_theta: new RoPE base (the paper raises it, e.g. to 5e6 for 128K); ``None`` keeps it.
        max_position_embeddings: new position limit; ``None`` keeps it.
    """
    check_architecture(config)
    if rope_theta is not None:
        if isinstance(rope_theta, bool) or not isinstance(rope_theta, (int, float)) \
                or not math.isfinite(rope_theta) or rope_theta <= 1:
            raise ValueError(f"rope_theta must be a finite number > 1 (the RoPE base), got {rope_theta!r}")
        params = dict(getattr(config, "rope_parameters", None) or {"rope_type": "default"})
        params["rope_theta"] = float(rope_theta)
        config.rope_parameters = params
    if max_position_embeddings is not None:
        if isinstance(max_position_embeddings, bool) or not isinstance(max_position_embeddings, int) \
                or max_position_embeddings < 1:
            raise ValueError(f"max_position_embeddings must be an int >= 1, got {max_position_embeddings!r}")
        config.max_position_embeddings = max_position_embeddings
    if full_layers is None:
        full_layers = default_full_layers(config.num_hidden_layers)
    if pattern is None:
        pattern = sink_window(64, 4096)
    elif isinstance(pattern, dict):
        pattern = Pattern.from_dict(pattern)
    settings = make_settings(config, full_layers, pattern, mode=mode, positions=positions)
    setattr(config, SETTINGS_KEY, settings)
    return config


def _convert(model, mode, full_layers, pattern, positions, rope_theta, max_position_embeddings, backend):
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "generate"):
        raise TypeError(f"model must be a Hugging Face causal LM (PreTrainedModel with .config and "
                        f".generate), got {type(model).__name__}")
    check_backend(backend)
    old_rope = dict(getattr(config, "rope_parameters", None) or {})
    old_max = config.max_position_embeddings
    try:
        convert_config(config, full_layers, pattern, mode, positions, rope_theta, max_position_embeddings)
    except (ValueError, TypeError):
        config.rope_parameters, config.max_position_embeddings = old_rope, old_max  # leave it untouched
        raise
    if rope_theta is not None or max_position_embeddings is not None:
        rebuild_rotary(model)  # recompute RoPE frequencies from the changed config
    try:
        return use_backend(model, backend)
    except ValueError:
        delattr(config, SETTINGS_KEY)
        raise


def to_longgen(model, full_layers: list[int] | None = None, pattern: Pattern | dict | None = None,
               rope_theta: float | None = None, max_position_embeddings: int | None = None,
               backend: str = "auto"):
    """Turn ``model`` into the LongGen hybrid, in place; return it.

    Args:
        model: a transformers Llama-family causal LM (see :data:`SUPPORTED_MODEL_TYPES`).
        full_layers: layers that keep full attention; default the middle third.
        pattern: sparse pattern of the other layers; default ``sink_window(64, 4096)``.
        rope_theta, max_position_embeddings: raise them for context extension (``None``: keep).
        backend: ``"auto"`` (Triton on CUDA when available, else SDPA), ``"sdpa"`` or ``"reference"``.

    At lengths within the window the hybrid computes exactly what the original model computes;
    beyond it the sparse layers drop the keys outside sink + window.
    """
    return _convert(model, "hybrid", full_layers, pattern, "original", rope_theta, max_position_embeddings,
                    backend)


def to_posthoc_streaming(model, full_layers: list[int] | None = None, pattern: Pattern | dict | None = None,
                         positions: str = "original", backend: str = "auto"):
    """The post-hoc baseline: an unconverted full-attention model whose sparse layers get the
    evicting cache and masks at inference, without any finetuning (StreamingLLM-style).

    ``full_layers`` defaults to the same middle third as the hybrid, so that the comparison with
    LongGen isolates the training; ``full_layers=[]`` is StreamingLLM on every layer. Prompts are
    processed with the same masks (each token sees sink + window), which is what feeding the
    prompt token by token through the evicting cache would give.

    ``positions``: ``"original"`` (default; every key keeps the RoPE of its true position, queries
    far past the sinks see them at distances never met in pretraining) or ``"reindex"``
    (StreamingLLM: positions are indices within the cache, so no distance exceeds sink + window).
    """
    return _convert(model, "posthoc", full_layers, pattern, positions, None, None, backend)


def looks_local(path) -> bool:
    """Whether ``path`` names a local directory rather than a Hugging Face hub id.

    Local: a ``pathlib.Path`` (any ``os.PathLike``), a string that starts with ``/``, ``.`` or
    ``~``, holds the platform's own separator when it is not ``/``, exists, has more than one
    ``/`` (a hub id is ``name`` or ``org/name``), or whose part before its one ``/`` is an existing
    directory (``runs/hybrid`` when ``runs/`` exists). Anything else is left to the hub.

    Example: ``looks_local("./runs/hybrid")`` and ``looks_local(Path("hybrid"))`` are True;
    ``looks_local("HuggingFaceTB/SmolLM2-135M")`` is False (no ``HuggingFaceTB/`` folder here).
    """
    name = os.fspath(path)
    if not isinstance(path, str) or name.startswith(("/", ".", "~")) or Path(name).exists():
        return True
    if os.sep != "/" and os.sep in name:
        return True
    parts = name.split("/")
    return len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).is_dir())


def _model_dir(path):
    """``path`` as a local directory holding ``config.json`` (``~`` expanded: transformers does not
    expand it), or unchanged when it is a hub id. FileNotFoundError naming a local path that is
    no such directory (transformers would report it as a malformed hub id)."""
    if not looks_local(path):
        return path
    folder = Path(os.fspath(path)).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"no model directory at {os.fspath(path)!r} ({folder.resolve()}): save the "
                                f"model there with save_pretrained first, or check the path")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{os.fspath(path)!r} has no config.json: it is not a directory written by "
                                f"save_pretrained")
    return folder


def save_longgen(model, path, tokenizer=None, state_dict: dict | None = None) -> Path:
    """``save_pretrained`` of ``model`` (and ``tokenizer``) into ``path`` with a manifest of every
    file's size and SHA-256 (:mod:`longgen_core.manifest`), which :func:`load_longgen` verifies;
    returns the folder. Training writes its ``final/`` with it.

    The files go into ``<path>.tmp`` -- ``manifest.json`` last -- which is then renamed to ``path``:
    a crash or a full disk (OSError or SafetensorError, the partial folder removed) never leaves a half-written model
    there. An existing ``path`` is replaced only when it is empty or holds a manifest (a model saved
    here before); a folder holding anything else raises ValueError and is left as it was.

    ``state_dict``: the weights to write instead of ``model``'s own (what accelerate gathers from
    FSDP shards).

    Example: ``save_longgen(to_longgen(tiny_llama()), "runs/hybrid"); load_longgen("runs/hybrid")``.
    """
    target = Path(os.fspath(path)).expanduser()
    foreign = target.is_dir() and any(target.iterdir()) and not (target / MANIFEST_FILE).is_file()
    if foreign or target.is_file():
        raise ValueError(f"{target} exists and is not an empty folder or a model saved by save_longgen (no "
                         f"{MANIFEST_FILE}): pick a new or empty folder; nothing in it was changed")
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # what an earlier crash left
    try:
        model.save_pretrained(tmp, state_dict=state_dict)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_manifest(tmp)  # last: marks the folder complete
        shutil.rmtree(target, ignore_errors=True)  # a directory cannot be renamed over a non-empty one
        tmp.replace(target)
    except WRITE_ERRORS:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk stays full until the partial folder goes
        raise
    return target


def load_longgen(path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                 backend: str = "auto"):
    """Load a model saved with :func:`save_longgen` (or ``save_pretrained``) after :func:`to_longgen`
    (or the post-hoc conversion): attention functions, cache hooks and hybrid classes included.
    ``AutoModelForCausalLM.from_pretrained(path)`` gives the same model for a folder saved by this
    version (:mod:`longgen_core.models.hybrid`); only this call reads one saved before.

    ``path``: a local directory, or a hub id (see :func:`looks_local` for which is which). A local
    path with no directory or no ``config.json`` raises FileNotFoundError naming it. A local folder
    with a ``manifest.json`` (what :func:`save_longgen` and training's ``final/`` write) is verified
    before anything in it is read: a file missing, added, or differing in size or SHA-256 raises
    :class:`~longgen_core.manifest.IntegrityError` naming it. A folder without one (a hub id, a
    folder written by plain ``save_pretrained`` or another tool) loads unverified. The saved
    ``config.longgen`` goes through :func:`~longgen_core.models.settings.check_settings`, the same
    validation as the conversion, before any weight is read: an edited file with a bad field
    raises ValueError naming that field.

    A folder saved before the hybrid had a ``model_type`` of its own (``"llama"`` with
    ``config.longgen``) loads right, with a warning: ``AutoModelForCausalLM`` would read it as the
    base model, full attention in every layer; saving it again with :func:`save_longgen` records the type.

    Example: ``save_longgen(model, "runs/hybrid"); model = load_longgen("runs/hybrid")``.
    """
    from transformers import AutoConfig

    check_backend(backend)
    path = _model_dir(path)
    verify_if_present(path)  # config.json included: it is read next
    config = AutoConfig.from_pretrained(path)
    if get_settings(config) is None:
        raise ValueError(f"{path} holds no LongGen settings (config.longgen); it is not a converted model. "
                         f"Load it with longgen_core.models.base.load_model instead")
    if config.model_type == base_model_type(config):
        warnings.warn(f"{path} was saved before LongGen hybrids had a model_type of its own (it says "
                      f"{config.model_type!r}): load_longgen reads it right, but AutoModelForCausalLM.from_pretrained "
                      f"would run full attention in every layer. Save it again with save_longgen to record the type.",
                      stacklevel=2)
    return load_checked(path, config, backend, dtype=dtype).to(device).eval()


def layer_map(config) -> str:
    """One character per decoder layer, bottom first: ``F`` full attention, ``s`` sparse.

    Example: SmolLM2 (30 layers) with the default map -> ``'ssssssssssFFFFFFFFFFssssssssss'``.
    """
    return "".join("F" if p.kind == "full" else "s" for p in layer_patterns(config))
