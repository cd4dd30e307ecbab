"""The library's progress bar: ``tqdm.auto``'s -- one widget bar in JupyterLab, a text bar elsewhere.

Without ipywidgets a notebook falls back to text bars (the package's ``__init__`` silences tqdm's
"IProgress not found" warning about it). A headless run (:mod:`longgen_core.runner`) sets
``TQDM_MININTERVAL`` so that a text bar writes a line every so often instead of one per step.

Example::

    >>> from longgen_core.progress import tqdm
    >>> sum(tqdm(range(3), disable=True))
    3
"""

from tqdm.auto import tqdm

__all__ = ["tqdm"]
