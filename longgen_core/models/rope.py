"""The RoPE base change of length extension: the rule, and applying it to an unconverted model.

Rotary embeddings turn position ``p`` into angles ``p * base**(-2i/d)`` (``i = 0 .. d/2 - 1``).
Trained at ``L_orig`` tokens, a model has only met the slow dimensions through a fraction of a
turn; at ``L_new > L_orig`` they would reach angles it never saw. Raising the base slows every
dimension down, so that the new range spans about the angles the old one did, and a short
finetune adapts the rest (Fu et al. 2024; LongGen finetunes its hybrid this way).

**Our rule** (:func:`extended_rope_theta`): a power law in the extension ratio,

    base_new = base_orig * (L_new / L_orig) ** ROPE_EXPONENT,  ROPE_EXPONENT = log(500) / log(32)

with the exponent (~1.793) fitted to the one point the paper publishes: Llama-2, base 1e4,
4K -> 128K, base 5M (a 32x extension, a 500x base). The result is rounded to two significant
digits. It gives 1.2M for SmolLM2 8K -> 32K (base 1e5, 4x). Cross-check: Xu et al. 2024 ("Base
of RoPE bounds context length") fit the smallest base that still lets a model use ``L`` tokens as
``0.0424 * L ** 1.628``, i.e. ~0.95M for 32K and ~9M for 128K: our rule is of the same order and
grows about as fast. Every preset can override the result (``rope_theta=``).

Example::

    >>> extended_rope_theta(1e4, 4096, 131072)     # the paper: Llama-2 4K -> 128K
    5000000.0
    >>> extended_rope_theta(1e5, 8192, 32768)      # gpu-small: SmolLM2 8K -> 32K
    1200000.0
    >>> extended_rope_theta(1e5, 8192, 8192)       # no extension, no change
    100000.0

:func:`set_rope` applies a new base and position limit to a full-attention model *without*
converting it (the full-attention baseline of notebook 04); for the hybrid,
:func:`longgen_core.models.convert.to_longgen` takes the same ``rope_theta=`` and
``max_position_embeddings=`` arguments.
"""

from __future__ import annotations

import math

__all__ = ["ROPE_EXPONENT", "extended_rope_theta", "wavelengths", "slow_pairs", "rope_theta_of", "set_rope",
           "rebuild_rotary"]

ROPE_EXPONENT = math.log(5e6 / 1e4) / math.log(131072 / 4096)  # ~1.7932: the paper's 4K->128K, 1e4->5e6


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def _check_base(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value <= 1:
        raise ValueError(f"{name} must be a finite number > 1 (a RoPE base), got {value!r}")


def extended_rope_theta(base: float, original_len: int, target_len: int,
                        exponent: float = ROPE_EXPONENT, digits: int = 2) -> float:
    """RoPE base for extending a model trained at ``original_len`` tokens to ``target_len``.

    ``base * (target_len / original_len) ** exponent``, rounded to ``digits`` significant digits
    (see the module docstring for why this exponent). ``target_len == original_len`` returns
    ``base`` unchanged; a shorter target is an error.
    """
    _check_base("base", base)
    _check_positive_int("original_len", original_len)
    _check_positive_int("target_len", target_len)
    if target_len < original_len:
        raise ValueError(f"target_len ({target_len}) must be >= original_len ({original_len}): "
                         f"length extension never shortens the context")
    if not math.isfinite(exponent) or exponent <= 0:
        raise ValueError(f"exponent must be a finite number > 0, got {exponent!r}")
    if target_len == original_len:
        return float(base)
    theta = base * (target_len / original_len) ** exponent
    return float(f"{theta:.{digits}g}")


def wavelengths(base: float, head_dim: int) -> list[float]:
    """Tokens per full turn of each of the ``head_dim / 2`` rotary pairs: ``2 pi base**(2i/d)``."""
    _check_base("base", base)
    _check_positive_int("head_dim", head_dim)
    return [2 * math.pi * base ** (2 * i / head_dim) for i in range(head_dim // 2)]


def slow_pairs(base: float, head_dim: int, length: int) -> int:
    """How many rotary pairs never complete a turn within ``length`` tokens.

    Those pairs only ever met part of their circle in training; positions past ``length`` push
    them to angles never seen. Raising the base for a longer context keeps this count about
    where pretraining left it. Example: SmolLM2 (base 1e5, head_dim 64) has 12 such pairs at its
    8K. At 32K with base 1e5 only 8 are left: pairs 20-23 would turn past angles they never met;
    with base 1.2e6 the count is 12 again (Llama-2: 18 at 4K with 1e4, 22 at 128K with 5e6).

        >>> slow_pairs(1e5, 64, 8192), slow_pairs(1e5, 64, 32768), slow_pairs(1.2e6, 64, 32768)
        (12, 8, 12)
    """
    return sum(w > length for w in wavelengths(base, head_dim))


def rope_theta_of(config) -> float:
    """The RoPE base of a Hugging Face config (``rope_parameters["rope_theta"]``)."""
    params = getattr(config, "rope_parameters", None) or {}
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        raise ValueError(f"{type(config).__name__} has no RoPE base (rope_parameters['rope_theta'])")
    return float(theta)


def set_rope(model, rope_theta: float | None = None, max_position_embeddings: int | None = None):
    """Give a Hugging Face RoPE model a new base and/or position limit, in place; return it.

    Updates ``config.rope_parameters["rope_theta"]`` and ``config.max_position_embeddings`` and
    rebuilds every rotary-embedding module from the updated config (their constructors compute
    the inverse frequencies), so the model computes exactly what a model built with that config
    computes. Only the ``"default"`` RoPE type is supported (Llama-2, SmolLM2): scaled variants
    (llama3, yarn, ...) would need their own extension rule.

    Example: ``set_rope(model, rope_theta=1.2e6, max_position_embeddings=32768)``.
    """
    config = model.config
    params = dict(getattr(config, "rope_parameters", None) or {"rope_type": "default"})
    if params.get("rope_type", "default") != "default":
        raise ValueError(f"set_rope supports rope_type 'default' only, the model has {params['rope_type']!r}")
    if rope_theta is not None:
        _check_base("rope_theta", rope_theta)
        params["rope_theta"] = float(rope_theta)
    if max_position_embeddings is not None:
        _check_positive_int("max_position_embeddings", max_position_embeddings)
    config.rope_parameters = params
    if max_position_embeddings is not None:
        config.max_position_embeddings = max_position_embeddings
    if rebuild_rotary(model) == 0:
        raise ValueError(f"{type(model).__name__} has no rotary-embedding module to rebuild")
    return model


def rebuild_rotary(model) -> int:
    """Rebuild every rotary-embedding module of ``model`` from its (updated) config; return how many.

    Their constructors read ``rope_parameters`` and ``max_position_embeddings``, so after a config
    change the model computes exactly what a model built with that config computes.
    """
    rebuilt = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child).__name__.endswith("RotaryEmbedding") and hasattr(child, "inv_freq"):
                setattr(parent, name, type(child)(child.config).to(child.inv_freq.device))
                rebuilt += 1
    return rebuilt
