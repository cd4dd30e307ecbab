"""The one rule every command line of the package reads a VALUE by (``train --set FIELD VALUE``,
``experiments --set``, ``runner -p NAME VALUE``).

:func:`parse_value` tries, in order:

1. JSON: ``true``, ``null``, ``1e-4``, ``[1, 2]``, ``{"kind": "sink_window"}``;
2. a Python literal: ``True``, ``None``, ``(1, 2)``, ``'text'``;
3. else the text itself: ``kjv``, ``gpu-small``, ``runs/x``.

Numbers read the same either way (``8`` -> 8, ``1e6`` -> 1000000.0), so the two notations can be
mixed freely. Standard library only: the notebook runner uses it without importing torch.

Example::

    >>> [parse_value(t) for t in ("8", "1e-4", "true", "True", "null", "[1, 2]", "(1, 2)", "kjv")]
    [8, 0.0001, True, True, None, [1, 2], (1, 2), 'kjv']
"""

from __future__ import annotations

import ast
import json

__all__ = ["parse_value"]


def parse_value(text: str):
    """``text`` as JSON, else as a Python literal, else the string itself (see the module doc)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text
