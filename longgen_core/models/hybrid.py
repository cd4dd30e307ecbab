"""The LongGen hybrid as transformers classes, so that a saved hybrid says what it is.

A converted model and its config become instances of subclasses of their base classes --
``LongGenLlamaForCausalLM(LlamaForCausalLM)`` with ``LongGenLlamaConfig(LlamaConfig)``, likewise for
Mistral and Qwen2: the same fields, modules and weights, only the class is new. ``save_pretrained``
therefore writes the hybrid's own ``model_type``
(:data:`~longgen_core.models.settings.HYBRID_MODEL_TYPES`) and ``"architectures":
["LongGenLlamaForCausalLM"]`` into ``config.json``, beside every field of the base config and
``config.longgen``. Importing ``longgen_core.models`` registers the classes with transformers'
public ``AutoConfig.register`` and ``AutoModelForCausalLM.register`` (no remote code), so that:

- ``AutoModelForCausalLM.from_pretrained(folder)`` returns the hybrid, the model
  :func:`~longgen_core.models.convert.load_longgen` returns: the folder's manifest verified, its
  settings checked before any weight is read, LongGen attention with its hooks and patterns;
  ``attn_implementation`` may name a LongGen backend (``"longgen_reference"``), no other;
- where longgen_core is not imported, transformers refuses the unknown ``model_type`` with a
  message that quotes it, so the message names ``load_longgen``: no silent full attention;
- folders saved before the hybrid had a type of its own (``"model_type": "llama"``) load with
  ``load_longgen`` as before (``AutoModelForCausalLM`` reads those as the base model).

:func:`use_backend` switches a converted model to LongGen attention -- implementation, hooks, layer
patterns, the evicting ``generate`` -- and gives it the hybrid classes; every conversion and
every load ends in it.

Example::

    >>> import tempfile
    >>> from transformers import AutoModelForCausalLM
    >>> from longgen_core.models.base import tiny_llama
    >>> from longgen_core.models.convert import save_longgen, to_longgen
    >>> from longgen_core.patterns import sink_window
    >>> model = to_longgen(tiny_llama(), pattern=sink_window(4, 32))
    >>> type(model).__name__, model.config.model_type
    ('LongGenLlamaForCausalLM', 'longgen_llama (load with longgen_core.load_longgen)')
    >>> folder = save_longgen(model, tempfile.mkdtemp() + "/hybrid")
    >>> reloaded = AutoModelForCausalLM.from_pretrained(folder)
    >>> type(reloaded).__name__, reloaded.config.longgen == model.config.longgen
    ('LongGenLlamaForCausalLM', True)
"""

from __future__ import annotations

from transformers import (AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

from . import attention as hf_attention
from ..manifest import verify_if_present
from .cache import evict_by_default
from .settings import (HYBRID_MODEL_TYPES, base_model_type, check_architecture, check_settings, get_settings,
                       layer_patterns)

__all__ = ["LongGenLlamaConfig", "LongGenLlamaForCausalLM", "LongGenMistralConfig", "LongGenMistralForCausalLM",
           "LongGenQwen2Config", "LongGenQwen2ForCausalLM", "HYBRID_CLASSES", "register", "load_checked",
           "use_backend", "attach_patterns"]


# from_pretrained's arguments that say where config.json is (the rest are about the weights)
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "subfolder", "token")


class _Hybrid:
    """What the hybrid model classes add to their base class: loading gives the hybrid."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, attn_implementation=None,
                        **kwargs):
        """The saved hybrid, as :func:`~longgen_core.models.convert.load_longgen` loads it (what
        ``AutoModelForCausalLM.from_pretrained`` of its folder calls).

        ``attn_implementation``: ``None`` or a name of
        :data:`~longgen_core.models.attention.ATTN_IMPLEMENTATIONS` (``"longgen_reference"`` ...);
        any other raises ValueError. A local folder's manifest is verified before its weights are
        read (``AutoModelForCausalLM`` has parsed ``config.json`` by then, to find this class).
        """
        requested = attn_implementation
        if requested is None and config is not None:
            # AutoModelForCausalLM hands attn_implementation to AutoConfig, which keeps it in the config
            requested = config._attn_implementation
        backend = hf_attention.backend_of(requested)
        verify_if_present(pretrained_model_name_or_path)
        if config is None:  # called on the class itself, not through AutoModelForCausalLM
            config = AutoConfig.from_pretrained(pretrained_model_name_or_path,
                                                **{k: kwargs[k] for k in _HUB_KWARGS if k in kwargs})
        return load_checked(pretrained_model_name_or_path, config, backend, *model_args, **kwargs)


class LongGenLlamaConfig(LlamaConfig):
    """A converted Llama's config: ``LlamaConfig`` with ``config.longgen``, under its own model_type."""

    model_type = HYBRID_MODEL_TYPES["llama"]


class LongGenLlamaForCausalLM(_Hybrid, LlamaForCausalLM):
    """A Llama converted into the LongGen hybrid (:func:`~longgen_core.models.convert.to_longgen`)."""

    config_class = LongGenLlamaConfig


class LongGenMistralConfig(MistralConfig):
    """A converted Mistral's config: ``MistralConfig`` with ``config.longgen``, under its own model_type."""

    model_type = HYBRID_MODEL_TYPES["mistral"]


class LongGenMistralForCausalLM(_Hybrid, MistralForCausalLM):
    """A Mistral converted into the LongGen hybrid."""

    config_class = LongGenMistralConfig


class LongGenQwen2Config(Qwen2Config):
    """A converted Qwen2's config: ``Qwen2Config`` with ``config.longgen``, under its own model_type."""

    model_type = HYBRID_MODEL_TYPES["qwen2"]


class LongGenQwen2ForCausalLM(_Hybrid, Qwen2ForCausalLM):
    """A Qwen2 converted into the LongGen hybrid."""

    config_class = LongGenQwen2Config


# base model_type -> the hybrid model class (its config class is its config_class); one per supported type
HYBRID_CLASSES = {"llama": LongGenLlamaForCausalLM, "mistral": LongGenMistralForCausalLM,
                  "qwen2": LongGenQwen2ForCausalLM}


def register() -> None:
    """Register every hybrid class with ``AutoConfig`` and ``AutoModelForCausalLM`` (idempotent);
    importing this module does it."""
    for model_class in HYBRID_CLASSES.values():
        AutoConfig.register(model_class.config_class.model_type, model_class.config_class, exist_ok=True)
        AutoModelForCausalLM.register(model_class.config_class, model_class, exist_ok=True)


def _retype(obj, hybrid: type) -> None:
    """Make ``obj`` an instance of ``hybrid`` in place, where its class is one ``hybrid`` derives
    from (an instance of someone else's subclass is left as it is). In place because the config is
    one object shared by every module: a new one would leave the modules with the old."""
    if type(obj) is not hybrid and issubclass(hybrid, type(obj)):
        obj.__class__ = hybrid


def attach_patterns(model) -> None:
    """Resolve ``config.longgen`` once: give each attention module its layer's pattern
    (``longgen_pattern``) and whether it re-indexes its sink positions (``longgen_reindex``), which
    the attention functions read every forward. :func:`use_backend` calls it."""
    patterns = layer_patterns(model.config)
    reindex = (get_settings(model.config) or {}).get("positions") == "reindex"
    for module in hf_attention.attention_modules(model):
        pattern = patterns[module.layer_idx]
        setattr(module, hf_attention.PATTERN_ATTR, pattern)
        setattr(module, hf_attention.REINDEX_ATTR, reindex and pattern.kind == "sink_window")


def use_backend(model, backend: str):
    """Switch a converted model to LongGen attention with ``backend`` (a key of
    :data:`~longgen_core.models.attention.ATTN_IMPLEMENTATIONS`: ``"auto"``, ``"sdpa"``,
    ``"reference"``, ``"flex"``, ``"flex_flash"``); return it. Every conversion and load ends
    here; call it again to switch.

    Registers the attention functions, sets the implementation, installs the cache hooks, attaches
    the layer patterns, makes ``generate`` evict, and gives the model its hybrid classes (so that
    ``save_pretrained`` records what it is).
    """
    if get_settings(model.config) is None:
        raise ValueError("model is not converted: call to_longgen or to_posthoc_streaming first")
    check_architecture(model.config)
    hf_attention.check_backend(backend)
    hf_attention.register()
    name = hf_attention.ATTN_IMPLEMENTATIONS[backend]
    model.set_attn_implementation(name)
    if model.config._attn_implementation != name or not hf_attention.attention_modules(model):
        raise ValueError(f"{type(model).__name__} does not dispatch attention through transformers' "
                         f"AttentionInterface, so it cannot be converted")
    hf_attention.install_cache_hooks(model)
    attach_patterns(model)
    evict_by_default(model)
    model_class = HYBRID_CLASSES[base_model_type(model.config)]
    _retype(model.config, model_class.config_class)
    _retype(model, model_class)
    return model


def load_checked(path, config, backend: str = "auto", *model_args, **kwargs):
    """The hybrid saved at ``path`` (a folder or hub id) whose manifest the caller has verified and
    whose ``config`` it has read: the settings are checked before any weight is read, the weights
    loaded under LongGen attention, the model switched on (:func:`use_backend`). ``kwargs`` go to
    transformers' ``from_pretrained`` (``dtype``, ``device_map``, ...). ``load_longgen`` and the
    classes' ``from_pretrained`` end here."""
    check_architecture(config)
    check_settings(config, get_settings(config))
    model_class = HYBRID_CLASSES[base_model_type(config)]
    _retype(config, model_class.config_class)  # a folder saved before the hybrid had a type of its own
    hf_attention.register()  # before from_pretrained checks the implementation's name
    # transformers' own loader of the base class: the override above ends here
    model = super(_Hybrid, model_class).from_pretrained(
        path, *model_args, config=config, attn_implementation=hf_attention.ATTN_IMPLEMENTATIONS[backend], **kwargs)
    return use_backend(model, backend)


register()
