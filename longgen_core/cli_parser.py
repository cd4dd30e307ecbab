"""The argument parser of every command line of the package: argparse's, its errors in one line.

argparse prints its usage block before an error message; :class:`Parser` prints only
``PROG: error: MESSAGE`` on stderr and exits 2, so that a bad argument reads like the refusals
beside it (:func:`longgen_core.devices.refuse_without_cuda`, exit 2) and the run failures
(:func:`longgen_core.train.options.run_failed`, exit 1); ``--help`` still shows the usage. A
message that lists several problems keeps one line per problem. Subcommands get the same parser
class (argparse makes subparsers of the type of their parent). Standard library only.

Example::

    >>> parser = Parser(prog="demo")
    >>> _ = parser.add_argument("--steps", type=int)
    >>> try:
    ...     parser.parse_args(["--steps", "many"])   # stderr: demo: error: argument --steps: invalid int value: 'many'
    ... except SystemExit as stop:
    ...     print("exit", stop.code)
    exit 2
"""

from __future__ import annotations

import argparse

__all__ = ["Parser", "USAGE_ERROR"]

USAGE_ERROR = 2  # argparse's exit code for a bad command line: the input, not the run, was wrong


class Parser(argparse.ArgumentParser):
    """:class:`argparse.ArgumentParser` whose :meth:`error` prints no usage block (see the module doc)."""

    def error(self, message: str):
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message}\n")
