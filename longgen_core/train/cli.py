"""Command line of the training loop: ``python -m longgen_core.train [measure] ...`` (also
``longgen train``).

Without a subcommand it finetunes one preset (``--preset gpu-small --attention hybrid``);
``measure`` (:mod:`longgen_core.bench.training`) trains it with full attention and with the hybrid
and records their speed. A subcommand takes its options after its name: ``train measure --preset
cpu-tiny``.

Exit codes: 0 done; 1 the run failed -- a checkpoint or ``final/`` the disk refused, a saved file
that no longer matches its manifest -- said in one line on stderr (:func:`~.options.run_failed`);
2 a bad command line, said in one line on stderr (:class:`~longgen_core.cli_parser.Parser`).
"""

from __future__ import annotations

import json

from ..bench import training as measure
from ..cli_parser import Parser
from ..cli_values import output_folder
from .loop import ATTENTIONS, loss_summary, train
from .options import RUN_FAILURES, checked_overrides, common_arguments, refuse_cpu_for_gpu_preset, run_failed

__all__ = ["main"]


def main(argv: list[str] | None = None, prog: str = "python -m longgen_core.train") -> int:
    """Train (no subcommand) or ``measure`` with ``argv`` (default: the process's arguments)."""
    parser = Parser(prog=prog, description="Long-context finetuning on accelerate (LongGen hybrid or full "
                                           "attention); `measure`: the full-vs-hybrid speed measurement")
    common_arguments(parser)
    parser.add_argument("--attention", choices=ATTENTIONS, default="hybrid")
    parser.add_argument("--run-dir", type=output_folder, metavar="DIR",
                        help="output folder (default runs/<preset>-<attention>)")
    parser.add_argument("--no-resume", action="store_true", help="start over instead of resuming run-dir")
    parser.add_argument("--no-checkpoints", action="store_true",
                        help="write no checkpoints (only final/; nothing to resume): what FSDP and DeepSpeed "
                             "need, whose sharded optimizer state the checkpoints cannot hold")
    parser.add_argument("--no-progress", action="store_true")
    # Optional, so that `train --preset ...` trains as it always has; `measure` has its own options
    # and defaults (preset gpu-small), which argparse puts over the training ones.
    sub = parser.add_subparsers(dest="command", metavar="{measure}", title="subcommand (optional)")
    measuring = sub.add_parser("measure", help="train full and hybrid on the same data and steps; record "
                                               "tokens/s, memory, losses (`measure --help`)",
                               description="Train a preset with full attention and with the hybrid (same data "
                                           "and steps) and record tokens/s, memory, losses.")
    measure.add_arguments(measuring)
    args = parser.parse_args(argv)
    if args.command == "measure":
        return measure.run_cli(measuring, args)
    return _train(parser, args)


def _train(parser: Parser, args) -> int:
    """Training without a subcommand: checked, refused on a CPU for a GPU-scale preset, then run."""
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
