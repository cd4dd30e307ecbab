"""Command line of the training loop: ``python -m longgen_core.train [measure] ...``.

Exit codes: 0 done; 1 the run failed -- a checkpoint or ``final/`` the disk refused, a saved file
that no longer matches its manifest -- said in one line on stderr (:func:`~.options.run_failed`);
2 a bad command line (argparse's usage and message).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..bench.training import main as measure_main
from .loop import ATTENTIONS, loss_summary, train
from .options import RUN_FAILURES, checked_overrides, common_arguments, refuse_cpu_for_gpu_preset, run_failed

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["measure"]:
        return measure_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m longgen_core.train",
        description="Long-context finetuning on accelerate (LongGen hybrid or full attention)",
        epilog="`python -m longgen_core.train measure --help`: the full-vs-hybrid speed measurement")
    common_arguments(parser)
    parser.add_argument("--attention", choices=ATTENTIONS, default="hybrid")
    parser.add_argument("--run-dir", type=Path, help="output folder (default runs/<preset>-<attention>)")
    parser.add_argument("--no-resume", action="store_true", help="start over instead of resuming run-dir")
    parser.add_argument("--no-checkpoints", action="store_true",
                        help="write no checkpoints (only final/; nothing to resume): what FSDP and DeepSpeed "
                             "need, whose sharded optimizer state the checkpoints cannot hold")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    overrides = checked_overrides(parser, args)  # a bad --set or --model stops here, not mid-run
    refused = refuse_cpu_for_gpu_preset("train", f"train preset {args.preset}", args.preset, overrides, args.device)
    if refused:
        return refused
    try:
        result = train(args.preset, args.attention, args.run_dir, resume=not args.no_resume,
                       checkpoints=not args.no_checkpoints, progress=not args.no_progress, **overrides)
    except RUN_FAILURES as err:
        return run_failed(parser.prog, err)
    except ValueError as err:
        parser.error(str(err))
    summary = loss_summary(result.log) if result.log else {}
    print(json.dumps({"run_dir": str(result.run_dir), "resumed_from": result.resumed_from, **summary}))
    return 0

