"""How every command line of the package reads its values: one rule per kind of value.

- :func:`parse_value`: a free VALUE (``train --set FIELD VALUE``, ``experiments --set``, ``runner
  -p NAME VALUE``), tried, in order, as

  1. JSON: ``true``, ``null``, ``1e-4``, ``[1, 2]``, ``{"kind": "sink_window"}``;
  2. a Python literal: ``True``, ``None``, ``(1, 2)``, ``'text'``;
  3. else the text itself: ``kjv``, ``gpu-small``, ``runs/x``.

  Numbers read the same either way (``8`` -> 8, ``1e6`` -> 1000000.0), so the two notations can
  be mixed freely.
- argparse ``type=`` functions, so that argparse reports a bad one in one line (exit 2) before any
  work: :func:`int_list` (``--n 16384,32768``), :func:`names_from` (``--impls longgen,flex``),
  :func:`output_file` and :func:`output_folder` (what ``--out`` names).

``--out`` is a FILE for the commands that write one result JSON (``bench kernels|model|generate``,
``bench.versus``, ``train measure``) and a folder (DIR) for those that write several files
(``experiments miniature|extension``, the notebook runner); each help says which, and the wrong
kind -- a folder or a name without ``.json`` for a FILE, an existing file or a ``.json`` name for
a DIR -- is refused before the command starts. Standard library only: the notebook runner uses
this module without importing torch.

Example::

    >>> [parse_value(t) for t in ("8", "1e-4", "true", "True", "null", "[1, 2]", "(1, 2)", "kjv")]
    [8, 0.0001, True, True, None, [1, 2], (1, 2), 'kjv']
    >>> int_list("16384,32768"), names_from(("fwd", "decode"))("decode,fwd")
    ((16384, 32768), ('decode', 'fwd'))
    >>> output_file(".json")("figures/")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: 'figures/' is a folder; this option names the .json file to write
"""

from __future__ import annotations

import ast
import json
import os
from argparse import ArgumentTypeError
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["parse_value", "int_list", "names_from", "output_file", "output_folder"]

# What the commands write as files: a folder option given such a name was most likely meant as a file.
FILE_SUFFIXES = (".json", ".png")


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


def int_list(text: str) -> tuple[int, ...]:
    """Comma-separated whole numbers: ``"16384,32768"`` -> ``(16384, 32768)``; anything else
    (``"32K"``, ``""``, ``"1.5"``) raises :class:`argparse.ArgumentTypeError` saying so."""
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ArgumentTypeError(f"expected comma-separated whole numbers such as 16384,32768, got {text!r}") from None


def names_from(choices: Iterable[str]) -> Callable[[str], tuple[str, ...]]:
    """A ``type=`` for comma-separated names, each one of ``choices``: the names as a tuple.

    Example: ``names_from(("fwd", "decode"))("fwd,bwd")`` raises "unknown bwd; choose from fwd,decode".
    """
    choices = tuple(choices)

    def names(text: str) -> tuple[str, ...]:
        given = tuple(text.split(","))
        unknown = [name for name in given if name not in choices]
        if unknown:
            raise ArgumentTypeError(f"unknown {','.join(unknown)}; choose from {','.join(choices)}")
        return given

    return names


def output_file(suffix: str) -> Callable[[str], Path]:
    """A ``type=`` for an option that names one FILE to write, ending in ``suffix`` (``".json"``):
    refuses a folder (one that exists, or a name ending in ``/``) and another suffix."""

    def file_path(text: str) -> Path:
        path = Path(text)
        if text.endswith(("/", os.sep)) or path.is_dir():
            raise ArgumentTypeError(f"{text!r} is a folder; this option names the {suffix} file to write")
        if path.suffix != suffix:
            raise ArgumentTypeError(f"{text!r} does not end in {suffix}; this option names the {suffix} file "
                                    "to write")
        return path

    return file_path


def output_folder(text: str) -> Path:
    """A ``type=`` for an option that names a FOLDER to write into (created if missing): refuses
    an existing file and a name ending like one of the files the commands write (``.json``, ``.png``).

    Example: ``output_folder("figures/miniature.json")`` raises "'figures/miniature.json' names a
    file; this option names the folder to write into (created if missing)".
    """
    path = Path(text)
    if (path.exists() and not path.is_dir()) or path.suffix in FILE_SUFFIXES:
        raise ArgumentTypeError(f"{text!r} names a file; this option names the folder to write into (created "
                                "if missing)")
    return path
