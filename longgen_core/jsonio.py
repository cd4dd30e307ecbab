"""JSON files on disk: one atomic writer and one reader, for every stage that stores JSON
(checkpoint state and run config in ``train``, results in ``bench`` and ``experiments``, and
``report``, which reads them back).

It lives at the top of the package, like ``plots.py``, because no stage owns the format: the
checkpoints of ``train`` need it first, ``bench`` and ``experiments`` after them, and a module of
the standard library only can be imported by each without pulling in torch.

Example::

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "sub" / "x.json"
    >>> write_json_atomic(path, {"n": 1}).read_text()
    '{\\n "n": 1\\n}\\n'
    >>> read_json(path)
    {'n': 1}
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["write_json_atomic", "read_json"]


def write_json_atomic(path: str | Path, obj) -> Path:
    """Write ``obj`` as JSON indented by one space to ``path`` (parent folders made); return the path.

    Atomic: the text goes to ``<name>.tmp`` beside it, is flushed to disk (fsync) and renamed over
    ``path``, so a crash leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(obj, indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read_json(path: str | Path):
    """The object stored in the JSON file ``path`` (as :func:`write_json_atomic` wrote it); a file
    that is not JSON raises ``ValueError`` naming it."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err.msg}, line {err.lineno}): the file is damaged") from None
