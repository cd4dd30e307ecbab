"""The ``longgen`` command (``[project.scripts]`` in pyproject.toml): one entry point for every
command line of the package, each run by the same ``main(argv)`` as its ``python -m`` form.

    longgen bench ...          = python -m longgen_core.bench ...
    longgen train ...          = python -m longgen_core.train ...
    longgen experiments ...    = python -m longgen_core.experiments ...
    longgen models ...         = python -m longgen_core.models ...
    longgen report ...         = python -m longgen_core.report ...
    longgen notebooks ...      = python -m longgen_core.runner ...

A command's module is imported only when it runs, so ``longgen --help`` and ``longgen notebooks``
do not load torch. Example: ``longgen models setup``; ``longgen train measure --help``.
"""

from __future__ import annotations

import importlib
import sys

from .cli_parser import Parser

__all__ = ["COMMANDS", "main"]

# subcommand -> (the module whose main(argv, prog) runs it, what it does)
COMMANDS = {
    "bench": ("longgen_core.bench.cli", "GPU benchmarks: kernels, whole model, generate()"),
    "train": ("longgen_core.train.cli", "finetune a preset; `train measure`: full vs hybrid training speed"),
    "experiments": ("longgen_core.experiments.cli", "the paper's experiments: miniature, extension"),
    "models": ("longgen_core.models.cli", "put SmolLM2-135M-Instruct in place (`models setup`)"),
    "report": ("longgen_core.report", "the README's results block from figures/*.json (--check, --write)"),
    "notebooks": ("longgen_core.runner", "execute the numbered notebooks headlessly (papermill)"),
}


def _parser() -> Parser:
    """The top level: it lists the commands and reports a missing or unknown one. It never parses a
    command's own arguments (those go untouched to the command's main)."""
    parser = Parser(prog="longgen", description="The LongGen command lines; `longgen COMMAND --help` for each.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    for name, (module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``longgen COMMAND ARGS...``; ``--help`` lists the commands; an unknown one exits 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:
        command = importlib.import_module(COMMANDS[argv[0]][0])
        return command.main(argv[1:], prog=f"longgen {argv[0]}")
    parser = _parser()
    parser.parse_args(argv)  # exits: the help (0), or a missing or unknown command (2)
    parser.error("the command comes first: longgen COMMAND [ARGS ...]")  # e.g. `longgen -- bench`
