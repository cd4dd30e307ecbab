"""Command-line options that set preset fields, shared by every command that trains
(``train``, ``train measure``, ``experiments``): one parser for ``--set FIELD VALUE``, its VALUE
read by :func:`longgen_core.cli_values.parse_value` (JSON, else a Python literal, else the text);
the checks ``train`` and ``train measure`` make before any work (:func:`checked_overrides`,
:func:`refuse_cpu_for_gpu_preset`); and how they all report a run that failed on the way
(:data:`RUN_FAILURES`, :func:`run_failed`: one line, exit code 1).

Example::

    >>> parse_value("1e-4"), parse_value("true"), parse_value("kjv")
    (0.0001, True, 'kjv')
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli_values import parse_value
from ..devices import refuse_without_cuda
from ..manifest import IntegrityError
from .checkpoint import CheckpointWriteError
from .presets import DEFAULT_PRESET, PRESETS, get_preset, is_gpu_scale

__all__ = ["parse_value", "common_arguments", "preset_overrides", "missing_sources", "checked_overrides",
           "refuse_cpu_for_gpu_preset", "RUN_FAILED", "RUN_FAILURES", "run_failed"]

RUN_FAILED = 1  # the run, not the command line, went wrong (argparse's 2 is for bad input)
# A disk that refused a checkpoint or the final model, a saved file that no longer matches its
# manifest. Caught before ValueError: IntegrityError is one, but no usage text helps with it.
RUN_FAILURES = (CheckpointWriteError, IntegrityError)


def common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default=DEFAULT_PRESET, help=f"one of {sorted(PRESETS)}")
    parser.add_argument("--random-init", action="store_true",
                        help="the preset's architecture with random weights")
    parser.add_argument("--model", help="model source (load_model): 'smollm2', a directory or a hub id")
    parser.add_argument("--tokenizer", help="tokenizer directory or hub id (default: the model's)")
    parser.add_argument("--corpus", help="'kjv', 'pydoc', a local .txt/.jsonl/.parquet, a hub dataset 'hf:owner/name', "
                                              "or 'random'")
    parser.add_argument("--steps", type=int, help="optimizer steps")
    parser.add_argument("--seq-len", type=int, help="training sequence length (<= target length)")
    parser.add_argument("--set", nargs=2, action="append", default=[], metavar=("FIELD", "VALUE"),
                        help="any other preset field, VALUE as JSON or a Python literal (e.g. --set lr 1e-4)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None,
                        help="cuda: refuse to start without a CUDA GPU; cpu: let a GPU-scale preset "
                             "(gpu-*, paper-*) start without one (slow; a visible GPU is still used). "
                             "Default: GPU-scale presets need CUDA, others run anywhere")


def preset_overrides(args) -> dict:
    out = {k: v for k, v in (("model", args.model), ("tokenizer", args.tokenizer), ("corpus", args.corpus),
                             ("steps", args.steps), ("seq_len", args.seq_len)) if v is not None}
    if args.random_init:
        out["random_init"] = True
    out.update({name: parse_value(value) for name, value in args.set})
    if out.get("corpus") == "random":
        out.setdefault("synthetic_ratio", 0.0)
    return out


def missing_sources(overrides: dict) -> list[str]:
    """One line per ``model`` / ``tokenizer`` that names a local path with no folder there.

    A name that starts like a path (``/``, ``.``, ``~``) is never a hub id, so it can be checked
    here instead of failing in the loader with a hub error after the run has started.

    Example::

        >>> missing_sources({"model": "/nonexistent", "tokenizer": "smollm2"})  # doctest: +ELLIPSIS
        ["model '/nonexistent': no such directory; give 'smollm2', 'tiny', a folder written by ..."]
    """
    lines = []
    for field in ("model", "tokenizer"):
        source = overrides.get(field)
        if isinstance(source, str) and not Path(source).is_dir() and (
                source.startswith(("/", ".", "~")) or Path(source).exists()):
            lines.append(f"{field} {source!r}: no such directory; give 'smollm2', 'tiny', a folder written by "
                         f"save_pretrained, or a hub id such as meta-llama/Llama-2-7b-hf")
    return lines


def checked_overrides(parser: argparse.ArgumentParser, args) -> dict:
    """:func:`preset_overrides` once the preset they make is valid (types, ranges, names) and
    their model and tokenizer exist; else ``parser.error`` with one line per problem (exit 2).

    Example: ``train(args.preset, **checked_overrides(parser, args))`` fails on ``--set seed 1.5``
    before it loads anything: "seed must be an int, got 1.5 (float)".
    """
    overrides = preset_overrides(args)
    problems = missing_sources(overrides)
    try:
        get_preset(args.preset, **overrides)
    except ValueError as err:
        problems.append(str(err))
    if problems:
        parser.error("\n".join(problems))
    return overrides


def refuse_cpu_for_gpu_preset(command: str, work: str, preset: str, overrides: dict, device: str | None,
                              each: str = "") -> int:
    """Exit code 2 (with one line on stderr) when ``preset`` is GPU-scale, or ``device`` is
    ``"cuda"``, and no CUDA GPU is visible; ``0`` to go on. ``--device cpu`` lets it start.

    ``work`` completes "refusing to ..."; the preset's sequence length and steps (``each``: e.g.
    ``" an arm"``) follow it. Every command that trains calls it before any work: ``train``,
    ``train measure`` and both ``experiments``.

    Example: ``refuse_cpu_for_gpu_preset("train", "train preset gpu-small", "gpu-small", {}, None)`` on
    a laptop prints "train: no CUDA GPU is visible; refusing to train preset gpu-small (32,768-token
    sequences, 100 steps) on the CPU (hours at this scale); pass --device cpu to run it there anyway"
    and returns 2.
    """
    if not (is_gpu_scale(preset) or device == "cuda"):
        return 0
    chosen = get_preset(preset, **overrides)
    return refuse_without_cuda(command, f"{work} ({chosen.seq_len:,}-token sequences, {chosen.steps} steps{each})",
                               device)


def run_failed(prog: str, err: Exception) -> int:
    """Print one of :data:`RUN_FAILURES` as one line on stderr (no traceback); return :data:`RUN_FAILED`.

    Example: ``except RUN_FAILURES as err: return run_failed(parser.prog, err)`` prints
    "python -m longgen_core.train: error: checkpoint step-0000020 could not be written to
    runs/x/checkpoints: No space left on device; the last good checkpoint is step-0000010" (exit 1).
    """
    print(f"{prog}: error: {' '.join(str(err).splitlines())}", file=sys.stderr)
    return RUN_FAILED
