"""Command line of the experiments: ``python -m longgen_core.experiments miniature|extension``."""

from __future__ import annotations

import argparse

from ..train.options import RUN_FAILURES, refuse_cpu_for_gpu_preset, run_failed
from . import extension, miniature

__all__ = ["main", "refuse_cpu_for_gpu_plan"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m longgen_core.experiments",
                                     description="The paper's experiments: extend, then score every variant")
    sub = parser.add_subparsers(dest="command", required=True)
    miniature.add_arguments(sub)
    extension.add_arguments(sub)
    for command in sub.choices.values():  # the same option on both, without a third copy of its text
        command.add_argument("--device", choices=("cuda", "cpu"), default=None,
                             help="cpu: let a GPU-scale plan (gpu-*) start without a CUDA GPU (hours; a "
                                  "visible GPU is still used); default: GPU-scale plans need CUDA")
    args = parser.parse_args(argv)
    refused = refuse_cpu_for_gpu_plan(args)
    if refused:
        return refused
    try:
        return args.func(args)
    except RUN_FAILURES as err:
        return run_failed(f"{parser.prog} {args.command}", err)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))


def refuse_cpu_for_gpu_plan(args) -> int:
    """Exit code 2 (one line on stderr) when the chosen plan trains a GPU-scale preset, or
    ``--device cuda`` was asked for, and no CUDA GPU is visible; ``0`` to go on.

    ``extension --merge-only`` only reads finished parts, so it runs anywhere.

    Example: ``experiments miniature --preset gpu-small`` on a laptop prints "experiments miniature:
    no CUDA GPU is visible; refusing to train and score the gpu-small plan (16,384-token
    sequences, 300 steps an arm) on the CPU ...; pass --device cpu to run it there anyway" (exit 2).
    """
    if args.command == "extension" and args.merge_only:
        return 0
    name = args.preset if args.command == "miniature" else args.plan
    plan = (miniature.PLANS if args.command == "miniature" else extension.PLANS)[name]
    return refuse_cpu_for_gpu_preset(f"experiments {args.command}", f"train and score the {name} plan", plan.preset,
                                     dict(plan.train), args.device, each=" an arm")
