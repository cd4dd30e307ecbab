"""Command line of the experiments: ``python -m longgen_core.experiments miniature|extension``
(also ``longgen experiments``).

Each writes several files, so ``--out DIR`` (and ``--work``, ``--parts``) name folders; a
``.json`` name or an existing file there is refused before any work. ``--set FIELD VALUE`` changes
a training field of every arm, checked with the whole plan before anything loads.

Exit codes: 0 done; 1 a run failure (one line); 2 a bad command line (one line), including a bad
value found later; 3 ``extension`` stopped for ``--time-budget`` (run it again to continue).
"""

from __future__ import annotations

from ..cli_parser import Parser
from ..cli_values import parse_value
from ..train.options import RUN_FAILURES, refuse_cpu_for_gpu_preset, run_failed
from . import extension, miniature

__all__ = ["main", "refuse_cpu_for_gpu_plan"]


def main(argv: list[str] | None = None, prog: str = "python -m longgen_core.experiments") -> int:
    """Run ``miniature`` or ``extension`` with ``argv``; bad arguments exit 2 with one line."""
    parser = Parser(prog=prog, description="The paper's experiments: extend, then score every variant")
    sub = parser.add_subparsers(dest="command", required=True)
    miniature.add_arguments(sub)
    extension.add_arguments(sub)
    for command in sub.choices.values():  # the same options on both, without a second copy of their text
        command.add_argument("--set", nargs=2, action="append", default=[], metavar=("FIELD", "VALUE"),
                             help="override a training field of every arm, VALUE as JSON or a Python literal "
                                  "(e.g. --set steps 50)")
        command.add_argument("--device", choices=("cuda", "cpu"), default=None,
                             help="cpu: let a GPU-scale plan (gpu-*) start without a CUDA GPU (hours; a "
                                  "visible GPU is still used); default: GPU-scale plans need CUDA")
    args = parser.parse_args(argv)
    command = sub.choices[args.command]
    overrides = {name: parse_value(value) for name, value in args.set}
    try:  # a bad --set stops here, before a unit starts or a model loads
        plan = (miniature.checked_plan(args.preset, heldout=args.heldout, **overrides) if args.command == "miniature"
                else extension.checked_plan(args.plan, **overrides))
    except ValueError as err:
        command.error(str(err))
    refused = refuse_cpu_for_gpu_plan(args, plan)
    if refused:
        return refused
    try:
        return args.func(args, plan)
    except RUN_FAILURES as err:  # before ValueError: IntegrityError is one, but no usage text helps with it
        return run_failed(command.prog, err)
    except (ValueError, FileNotFoundError) as err:  # bad input found on the way (e.g. no parts to merge)
        command.error(str(err))


def refuse_cpu_for_gpu_plan(args, plan) -> int:
    """Exit code 2 (one line on stderr) when ``plan`` (the command's, ``--set`` applied) trains a
    GPU-scale preset, or ``--device cuda`` was asked for, and no CUDA GPU is visible; ``0`` to go on.

    ``extension --merge-only`` only reads finished parts, so it runs anywhere.

    Example: ``experiments miniature --preset gpu-small`` on a laptop prints "experiments miniature:
    no CUDA GPU is visible; refusing to train and score the gpu-small plan (16,384-token
    sequences, 300 steps an arm) on the CPU ...; pass --device cpu to run it there anyway" (exit 2).
    """
    if args.command == "extension" and args.merge_only:
        return 0
    name = args.preset if args.command == "miniature" else args.plan
    return refuse_cpu_for_gpu_preset(f"experiments {args.command}", f"train and score the {name} plan", plan.preset,
                                     dict(plan.train), args.device, each=" an arm")
