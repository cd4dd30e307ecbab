"""The one check a command line makes before GPU-scale work: is there a CUDA GPU?

Without one, such work does not fail: it starts on the CPU and runs for hours while its memory
grows (``bench model`` reached 8 GB in 40 s with no output). So every GPU-scale command calls
:func:`refuse_without_cuda` first, which prints one line naming the command, what it would do and
how to run it anyway, and gives exit code 2. Standard library only at import (torch is imported
inside the function), like the other top-level modules.

Example::

    >>> refuse_without_cuda("bench model", "time a 7B-shaped model at 128K tokens", device="cpu")
    0
"""

from __future__ import annotations

import sys

__all__ = ["refuse_without_cuda"]

REFUSED = 2  # argparse's code for a bad command line: the input, not the run, was wrong


def refuse_without_cuda(command: str, work: str, device: str | None = None,
                        override: str | None = "--device cpu") -> int:
    """``0`` when ``command`` may go on; else print why on stderr and return ``2`` (its exit code).

    Args:
        command: how the user called it, e.g. ``"bench model"``.
        work: what it would do, completing "refusing to ...", e.g. ``"time a model at 128K tokens"``.
        device: the user's ``--device``: a non-CUDA device (``"cpu"``) passes, since the user
            chose it; ``None`` (automatic) or ``"cuda..."`` needs a visible CUDA GPU.
        override: the flag that runs the work on the CPU anyway, named in the message; ``None``
            when the command has no CPU mode (then ``device`` cannot let it pass).

    Example (a caller stops with the code, or goes on)::

        refused = refuse_without_cuda("bench model", f"time a 7B-shaped model at N = {lengths}", args.device)
        return refused or run_model(args)
        # no GPU, no --device: "bench model: no CUDA GPU is visible; refusing to time a 7B-shaped
        # model at N = 32768 on the CPU (hours at this scale); pass --device cpu to run it there
        # anyway", exit code 2
    """
    if override is not None and device is not None and not device.startswith("cuda"):
        return 0
    import torch

    if torch.cuda.is_available():
        return 0
    if override is None:
        print(f"{command}: no CUDA GPU is visible; it needs one to {work} (it has no CPU mode)", file=sys.stderr)
    else:
        print(f"{command}: no CUDA GPU is visible; refusing to {work} on the CPU (hours at this scale); "
              f"pass {override} to run it there anyway", file=sys.stderr)
    return REFUSED
