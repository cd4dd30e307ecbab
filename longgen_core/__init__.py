"""longgen_core: the small tested library behind the LongGen notebooks.

The data flows through its subpackages in order (see ARCHITECTURE.md):
``patterns`` -> ``kernels`` -> ``models`` -> ``data`` -> ``train`` -> ``evaluate`` ->
``experiments``; ``bench`` measures, ``plots`` draws, ``runner`` and ``report`` run the notebooks
and write the README's results.

The public API is importable from here (loaded on first use, so ``import longgen_core`` is cheap)::

    >>> from longgen_core import sink_window
    >>> sink_window(64, 4096).name
    'sink_window_64_4096'
"""

import importlib
import warnings

# tqdm.auto warns "IProgress not found" at import where ipywidgets is missing, whether we import it
# (longgen_core.progress) or transformers' hub client does first; filtered here, before either can,
# so that it never lands in a notebook's stored output. Text bars are the right fallback there.
warnings.filterwarnings("ignore", message="IProgress not found")

__version__ = "0.1.0"

# public name -> the module that defines it
_PUBLIC = {
    **dict.fromkeys(["Pattern", "BlockLayout", "full_causal", "sliding_window", "sink_window", "strided",
                     "attention_flops", "default_full_layers"], "patterns"),
    **dict.fromkeys(["reference_attention", "sparse_attention", "sparse_decode", "reference_decode"], "kernels"),
    **dict.fromkeys(["load_model", "load_smollm2", "setup_smollm2", "tiny_llama", "LongGenCache", "layer_map",
                     "load_longgen", "save_longgen", "to_longgen", "to_posthoc_streaming"], "models"),
    **dict.fromkeys(["TrainingStream", "documents", "packed_sequences", "Sample"], "data"),
    **dict.fromkeys(["build_model", "get_preset", "PRESETS"], "train"),
    **dict.fromkeys(["retrieval_grid", "perplexity", "perplexity_by_length"], "evaluate"),
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'longgen_core' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
