"""Where the package keeps its folders: ``data/`` (fetched models and caches), ``figures/``
(committed results), ``runs/`` (training runs, executed notebooks) and ``notebooks/``.

One rule for all of them, :func:`project_dir`:

- ``$LONGGEN_HOME`` when it is set;
- else the source checkout the package sits in (``pyproject.toml`` and ``notebooks/`` beside
  the package folder: a clone, an editable install, Binder), so the README commands work from
  anywhere in it;
- else (installed from a wheel into site-packages) the current directory: a user's runs and
  downloads land where they work, never next to site-packages.

``$LONGGEN_DATA_DIR`` and ``$LONGGEN_RUNS_DIR`` move one folder alone. (``$LONGGEN_FIGURE_DIR``
moves where :func:`longgen_core.plots.save_figure` writes new PNGs, not where results are read.)

Example::

    >>> import os
    >>> os.environ["LONGGEN_HOME"] = "/tmp/lg"
    >>> str(runs_dir()), str(data_dir())
    ('/tmp/lg/runs', '/tmp/lg/data')
    >>> del os.environ["LONGGEN_HOME"]
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["project_dir", "data_dir", "figures_dir", "runs_dir", "notebooks_dir", "in_checkout", "checkout_dir"]

_CHECKOUT = Path(__file__).resolve().parent.parent


def in_checkout() -> bool:
    """Is the package running from its source checkout (not from an installed wheel)?"""
    return checkout_dir() is not None


def checkout_dir() -> Path | None:
    """The source checkout the package runs from, whatever ``$LONGGEN_HOME`` says; ``None`` when
    it was installed from a wheel."""
    return _CHECKOUT if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "notebooks").is_dir() else None


def project_dir() -> Path:
    """``$LONGGEN_HOME``, else the source checkout, else the current directory (module doc)."""
    env = os.environ.get("LONGGEN_HOME")
    if env:
        return Path(env)
    return _CHECKOUT if in_checkout() else Path.cwd()


def data_dir() -> Path:
    """Fetched artefacts (models, caches): ``$LONGGEN_DATA_DIR``, else ``project_dir()/data``."""
    env = os.environ.get("LONGGEN_DATA_DIR")
    return Path(env) if env else project_dir() / "data"


def figures_dir() -> Path:
    """Committed results (``*.json``, ``*.png``): ``project_dir()/figures``."""
    return project_dir() / "figures"


def runs_dir() -> Path:
    """Training runs and executed notebooks (git-ignored): ``$LONGGEN_RUNS_DIR``, else
    ``project_dir()/runs``."""
    env = os.environ.get("LONGGEN_RUNS_DIR")
    return Path(env) if env else project_dir() / "runs"


def notebooks_dir() -> Path:
    """The numbered notebooks: ``project_dir()/notebooks``."""
    return project_dir() / "notebooks"
