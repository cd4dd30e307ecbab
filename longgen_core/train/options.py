"""Command-line options that set preset fields, shared by every command that trains
(``train``, ``train measure``, ``experiments``): one parser for ``--set FIELD VALUE``, its VALUE
read by :func:`longgen_core.cli_values.parse_value` (JSON, else a Python literal, else the text).

Example::

    >>> parse_value("1e-4"), parse_value("true"), parse_value("kjv")
    (0.0001, True, 'kjv')
"""

from __future__ import annotations

import argparse

from ..cli_values import parse_value
from .presets import DEFAULT_PRESET, PRESETS

__all__ = ["parse_value", "common_arguments", "preset_overrides"]


def common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default=DEFAULT_PRESET, help=f"one of {sorted(PRESETS)}")
    parser.add_argument("--random-init", action="store_true",
                        help="the preset's architecture with random weights")
    parser.add_argument("--model", help="model source (load_model): 'smollm2', a directory or a hub id")
    parser.add_argument("--tokenizer", help="tokenizer directory or hub id (default: the model's)")
    parser.add_argument("--corpus", help="'kjv', 'pydoc', a local .txt/.jsonl/.parquet, or 'random'")
    parser.add_argument("--steps", type=int, help="optimizer steps")
    parser.add_argument("--seq-len", type=int, help="training sequence length (<= target length)")
    parser.add_argument("--set", nargs=2, action="append", default=[], metavar=("FIELD", "VALUE"),
                        help="any other preset field, VALUE as JSON or a Python literal (e.g. --set lr 1e-4)")


def preset_overrides(args) -> dict:
    out = {k: v for k, v in (("model", args.model), ("tokenizer", args.tokenizer), ("corpus", args.corpus),
                             ("steps", args.steps), ("seq_len", args.seq_len)) if v is not None}
    if args.random_init:
        out["random_init"] = True
    out.update({name: parse_value(value) for name, value in args.set})
    if out.get("corpus") == "random":
        out.setdefault("synthetic_ratio", 0.0)
    return out
