"""Benchmark results on disk: JSON written atomically, read back, and the software versions they record."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["software_versions", "write_results", "load_results"]


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

def write_results(path, results: dict) -> None:
    """Write the results dict as indented JSON, atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(tmp, path)


def load_results(path) -> dict:
    """Read a results JSON written by :func:`write_results`."""
    return json.loads(Path(path).read_text())


