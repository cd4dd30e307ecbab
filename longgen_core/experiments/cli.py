"""Command line of the experiments: ``python -m longgen_core.experiments miniature|extension``."""

from __future__ import annotations

import argparse

from . import extension, miniature

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m longgen_core.experiments",
                                     description="The paper's experiments: extend, then score every variant")
    sub = parser.add_subparsers(dest="command", required=True)
    miniature.add_arguments(sub)
    extension.add_arguments(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
