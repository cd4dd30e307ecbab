"""The software versions a benchmark result records (the JSON itself goes through :mod:`longgen_core.jsonio`)."""

from __future__ import annotations

__all__ = ["software_versions"]


def software_versions() -> dict:
    """Versions of the packages a result depends on (triton only where it is installed)."""
    import accelerate
    import torch
    import transformers

    out = {"torch": torch.__version__, "transformers": transformers.__version__,
           "accelerate": accelerate.__version__}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:  # CPU-only installs of some platforms ship torch without triton
        pass
    return out
