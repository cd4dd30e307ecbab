"""LongGen settings stored in a Hugging Face config: which layers are full, which pattern the rest use.

A converted model carries one JSON-able dict under ``config.longgen``, so ``save_pretrained`` writes
it into ``config.json`` and loading restores it::

    "longgen": {"version": 1, "mode": "hybrid", "full_layers": [10, ..., 19],
                "pattern": {"kind": "sink_window", "sink_tokens": 64, "window_tokens": 4096},
                "positions": "original"}

- ``mode``: ``"hybrid"`` (converted for LongGen finetuning) or ``"posthoc"`` (an unconverted
  full-attention model with the evicting cache applied at inference, the StreamingLLM-style
  baseline).
- ``positions``: ``"original"`` (keys keep the RoPE of their true position, as LongGen trains) or
  ``"reindex"`` (StreamingLLM: positions are indices within the cache; post-hoc only).

Every decoder layer not in ``full_layers`` uses ``pattern``; the layers in it use
:func:`~longgen_core.patterns.full_causal`. This module only reads and validates; it never
touches model weights. :func:`check_settings` is the one validation of the whole dict: the
conversion (through :func:`make_settings`) and ``load_longgen`` (on a saved, maybe hand-edited
``config.json``) both run it, and :func:`layer_patterns` runs it before resolving.

Which configs can be converted (:data:`SUPPORTED_MODEL_TYPES`, :func:`check_architecture`) and the
``model_type`` a converted one carries (:data:`HYBRID_MODEL_TYPES`, what
:mod:`longgen_core.models.hybrid` registers; :func:`base_model_type` reads it back) live here too.

The pattern is stored as :meth:`Pattern.to_dict` and read back with :meth:`Pattern.from_dict`.
:func:`layer_patterns` resolves the settings into one pattern per layer; the conversion
(:mod:`longgen_core.models.convert`) calls it once and stores each layer's pattern on its
attention module.

Example::

    >>> from longgen_core.models.base import tiny_llama
    >>> from longgen_core.patterns import sink_window
    >>> config = tiny_llama().config
    >>> config.longgen = make_settings(config, [2, 3], sink_window(4, 32))
    >>> [p.name for p in layer_patterns(config)][1:3]
    ['sink_window_4_32', 'full_causal']
"""

from __future__ import annotations

from ..patterns import Pattern, full_causal

__all__ = [
    "SETTINGS_KEY",
    "MODES",
    "POSITION_MODES",
    "get_settings",
    "make_settings",
    "layer_patterns",
    "check_full_layers",
    "check_settings",
    "SETTINGS_KEYS",
    "SUPPORTED_MODEL_TYPES",
    "HYBRID_MODEL_TYPES",
    "base_model_type",
    "check_architecture",
]

SETTINGS_KEY = "longgen"
MODES = ("hybrid", "posthoc")
POSITION_MODES = ("original", "reindex")
SETTINGS_KEYS = ("version", "mode", "full_layers", "pattern", "positions")  # exactly these, no others
_VERSION = 1
# Llama-family decoders with RoPE: what the conversion accepts (convert) and the fused decode step runs (decode_step)
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
# The model_type a converted model has and is saved under (models/hybrid.py), per base type. Where longgen_core is
# not imported, transformers refuses a model_type it does not know with a message that quotes it -- and nothing
# else of config.json -- so the name itself says how to load the folder.
HYBRID_MODEL_TYPES = {base: f"longgen_{base} (load with longgen_core.load_longgen)" for base in SUPPORTED_MODEL_TYPES}


def base_model_type(config) -> str | None:
    """The ``model_type`` of the model ``config`` was converted from: its own for a base model
    (or an unsupported one), the base type for a hybrid's (:data:`HYBRID_MODEL_TYPES`).

    Example::

        >>> from transformers import LlamaConfig
        >>> base_model_type(LlamaConfig()), HYBRID_MODEL_TYPES["llama"]
        ('llama', 'longgen_llama (load with longgen_core.load_longgen)')
    """
    model_type = getattr(config, "model_type", None)
    return next((base for base, hybrid in HYBRID_MODEL_TYPES.items() if hybrid == model_type), model_type)


def check_architecture(config) -> None:
    """ValueError unless ``config`` is one the conversion takes: a base (or hybrid) type of
    :data:`SUPPORTED_MODEL_TYPES` with full attention in every layer."""
    model_type = base_model_type(config)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"unsupported architecture model_type={model_type!r}: LongGen conversion supports "
                         f"{list(SUPPORTED_MODEL_TYPES)} (Llama-family decoders with RoPE)")
    layer_types = getattr(config, "layer_types", None)
    if layer_types and any(t != "full_attention" for t in layer_types):
        raise ValueError(f"the base model must use full attention in every layer; config.layer_types has "
                         f"{sorted(set(layer_types))}")
    if model_type == "mistral" and getattr(config, "sliding_window", None) is not None:
        raise ValueError(f"the base model already uses a sliding window (config.sliding_window="
                         f"{config.sliding_window}); convert a full-attention checkpoint")


def get_settings(config) -> dict | None:
    """``config.longgen`` if the model was converted, else ``None`` (as stored: not validated,
    see :func:`check_settings`)."""
    return getattr(config, SETTINGS_KEY, None)


def check_full_layers(full_layers, num_layers: int) -> list[int]:
    """Validate an explicit list of full-attention layer indices; return it sorted."""
    if isinstance(full_layers, (str, bytes)) or not hasattr(full_layers, "__iter__"):
        raise TypeError(f"full_layers must be a list of layer indices in [0, {num_layers - 1}], "
                        f"got {full_layers!r}")
    layers = list(full_layers)
    for i in layers:
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"full_layers must hold ints (layer indices in [0, {num_layers - 1}]), got {i!r}")
        if not 0 <= i < num_layers:
            raise ValueError(f"full_layers entry {i} is out of range: the model has {num_layers} layers, "
                             f"indices 0..{num_layers - 1}")
    duplicated = sorted({i for i in layers if layers.count(i) > 1})
    if duplicated:
        raise ValueError(f"full_layers has duplicated entries {duplicated}; list each layer once")
    return sorted(layers)


def make_settings(config, full_layers: list[int], pattern: Pattern, mode: str = "hybrid",
                  positions: str = "original") -> dict:
    """Validated settings dict for ``config`` (not yet attached to it).

    Raises TypeError for arguments of the wrong type (``full_layers`` not a list of ints,
    ``pattern`` not a :class:`Pattern`); every other check is :func:`check_settings`, the one that
    :func:`~longgen_core.models.convert.load_longgen` runs on a saved ``config.json`` too.
    """
    full = check_full_layers(full_layers, config.num_hidden_layers)
    if not isinstance(pattern, Pattern):
        raise TypeError(f"pattern must be a longgen_core.patterns.Pattern (from sink_window(), strided(), "
                        f"...), got {type(pattern).__name__}")
    return check_settings(config, {"version": _VERSION, "mode": mode, "full_layers": full,
                                   "pattern": pattern.to_dict(), "positions": positions})


def check_settings(config, settings) -> dict:
    """Validate a whole ``config.longgen`` dict against ``config``, field by field; return it
    with ``full_layers`` sorted.

    The one validation of the settings: :func:`make_settings` (so ``to_longgen``) and
    ``load_longgen`` (a ``config.json`` that may have been edited) both end here. Raises ValueError
    naming the field and what it allows: not a dict, a missing or unknown key, another
    ``version``, ``mode`` not in :data:`MODES`, ``positions`` not in :data:`POSITION_MODES`,
    ``full_layers`` out of range, duplicated or not ints, a ``pattern`` that does not rebuild or
    is full attention, a window as long as the model's positions, ``positions="reindex"`` where
    it is not defined (see the module docstring).

    Example::

        >>> from longgen_core.models.base import tiny_llama
        >>> check_settings(tiny_llama().config, {"version": 1, "mode": "bogus", "full_layers": [2],
        ...     "pattern": {"kind": "sliding_window", "window_tokens": 8}, "positions": "original"})
        Traceback (most recent call last):
        ...
        ValueError: config.longgen['mode'] must be one of ('hybrid', 'posthoc'), got 'bogus'
    """
    _check_keys(settings)
    if settings["version"] != _VERSION:
        raise ValueError(f"config.longgen['version'] is {settings['version']!r}; this code reads version "
                         f"{_VERSION}")
    for key, allowed in (("mode", MODES), ("positions", POSITION_MODES)):
        if settings[key] not in allowed:
            raise ValueError(f"config.longgen[{key!r}] must be one of {allowed}, got {settings[key]!r}")
    full = _as_value_error("full_layers", check_full_layers, settings["full_layers"], config.num_hidden_layers)
    pattern = _as_value_error("pattern", Pattern.from_dict, settings["pattern"])
    _check_sparse(pattern, config)
    if settings["positions"] == "reindex":
        _check_reindex(pattern, settings["mode"], config)
    return {**settings, "full_layers": full}


def _check_keys(settings) -> None:
    """``settings`` is a dict with exactly the keys of :data:`SETTINGS_KEYS`."""
    if not isinstance(settings, dict):
        raise ValueError(f"config.longgen must be a dict with the keys {list(SETTINGS_KEYS)}, got "
                         f"{type(settings).__name__} {settings!r}")
    missing = [k for k in SETTINGS_KEYS if k not in settings]
    unknown = sorted(set(settings) - set(SETTINGS_KEYS), key=str)
    if missing or unknown:
        raise ValueError(f"config.longgen must have exactly the keys {list(SETTINGS_KEYS)}; missing "
                         f"{missing}, unknown {unknown}")


def _as_value_error(key: str, check, *args):
    """``check(*args)``, its error re-raised as a ValueError naming ``config.longgen[key]``: in a
    loaded config.json a value of the wrong type is a wrong value like any other."""
    try:
        return check(*args)
    except (TypeError, ValueError) as err:
        raise ValueError(f"config.longgen[{key!r}] is not valid: {err}") from None


def _check_sparse(pattern: Pattern, config) -> None:
    """The sparse layers' pattern must be sparse at some length the model supports."""
    if pattern.kind == "full":
        raise ValueError("config.longgen['pattern'] must be sparse (sink_window, sliding_window or strided); "
                         "full attention is what the layers in full_layers get")
    max_pos = config.max_position_embeddings
    reach = {"sliding_window": pattern.window_tokens,
             "sink_window": pattern.sink_tokens + pattern.window_tokens,
             "strided": pattern.block_size * pattern.local_blocks}[pattern.kind]
    if reach >= max_pos:
        raise ValueError(f"config.longgen['pattern'] {pattern.name} spans {reach} tokens, not fewer than the "
                         f"model's max_position_embeddings ({max_pos}): its sparse layers would be full "
                         f"attention at every supported length. Use a smaller window or raise "
                         f"max_position_embeddings.")


def _check_reindex(pattern: Pattern, mode: str, config) -> None:
    """``positions="reindex"`` (StreamingLLM) is defined for the post-hoc sink/sliding window only."""
    if mode != "posthoc":
        raise ValueError("config.longgen['positions']='reindex' (StreamingLLM's re-indexing) is for the "
                         "post-hoc baseline (mode 'posthoc') only; the LongGen hybrid keeps the original "
                         "positions it was trained with")
    if pattern.kind == "strided":
        raise ValueError("config.longgen['positions']='reindex' is defined for sink_window and sliding_window "
                         "patterns, not strided")
    rope_type = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope_type in ("dynamic", "longrope"):
        raise ValueError(f"config.longgen['positions']='reindex' needs a RoPE whose frequencies do not depend "
                         f"on the length; rope_type {rope_type!r} does")


def layer_patterns(config) -> list[Pattern]:
    """One pattern per decoder layer: ``full_causal()`` for full layers (and unconverted models).

    Validates the stored settings; called once per conversion, load or cache, not per forward.
    """
    settings = get_settings(config)
    num_layers = config.num_hidden_layers
    if settings is None:
        return [full_causal()] * num_layers
    full = set(check_settings(config, settings)["full_layers"])
    sparse = Pattern.from_dict(settings["pattern"])
    return [full_causal() if i in full else sparse for i in range(num_layers)]
