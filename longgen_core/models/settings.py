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
touches model weights.

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
]

SETTINGS_KEY = "longgen"
MODES = ("hybrid", "posthoc")
POSITION_MODES = ("original", "reindex")
_VERSION = 1


def get_settings(config) -> dict | None:
    """``config.longgen`` if the model was converted, else ``None``."""
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

    Raises ValueError/TypeError naming the argument: ``full_layers`` out of range or duplicated,
    a non-sparse ``pattern``, a window as long as the model's positions, an unknown ``mode`` or
    ``positions``, or ``positions="reindex"`` where it is not defined (see module docstring).
    """
    num_layers = config.num_hidden_layers
    full = check_full_layers(full_layers, num_layers)
    if not isinstance(pattern, Pattern):
        raise TypeError(f"pattern must be a longgen_core.patterns.Pattern (from sink_window(), strided(), "
                        f"...), got {type(pattern).__name__}")
    if pattern.kind == "full":
        raise ValueError("pattern must be sparse (sink_window, sliding_window or strided); full attention "
                         "is what the layers in full_layers get")
    max_pos = config.max_position_embeddings
    reach = {"sliding_window": pattern.window_tokens,
             "sink_window": pattern.sink_tokens + pattern.window_tokens,
             "strided": pattern.block_size * pattern.local_blocks}[pattern.kind]
    if reach >= max_pos:
        raise ValueError(f"pattern {pattern.name} spans {reach} tokens, not fewer than the model's "
                         f"max_position_embeddings ({max_pos}): its sparse layers would be full attention at "
                         f"every supported length. Use a smaller window or raise max_position_embeddings.")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if positions not in POSITION_MODES:
        raise ValueError(f"positions must be one of {POSITION_MODES}, got {positions!r}")
    if positions == "reindex":
        if mode != "posthoc":
            raise ValueError("positions='reindex' (StreamingLLM's re-indexing) is for the post-hoc baseline "
                             "only; the LongGen hybrid keeps the original positions it was trained with")
        if pattern.kind == "strided":
            raise ValueError("positions='reindex' is defined for sink_window and sliding_window patterns, "
                             "not strided")
        rope_type = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
        if rope_type in ("dynamic", "longrope"):
            raise ValueError(f"positions='reindex' needs a RoPE whose frequencies do not depend on the "
                             f"length; rope_type {rope_type!r} does")
    return {"version": _VERSION, "mode": mode, "full_layers": full, "pattern": pattern.to_dict(),
            "positions": positions}


def layer_patterns(config) -> list[Pattern]:
    """One pattern per decoder layer: ``full_causal()`` for full layers (and unconverted models).

    Validates the stored settings; called once per conversion, load or cache, not per forward.
    """
    settings = get_settings(config)
    num_layers = config.num_hidden_layers
    if settings is None:
        return [full_causal()] * num_layers
    if settings.get("version") != _VERSION:
        raise ValueError(f"config.longgen has version {settings.get('version')!r}; this code reads "
                         f"version {_VERSION}")
    full = set(check_full_layers(settings["full_layers"], num_layers))
    sparse = Pattern.from_dict(settings["pattern"])
    return [full_causal() if i in full else sparse for i in range(num_layers)]
