"""What a benchmark result records about its machine: software versions and the copy bandwidth
(the JSON itself goes through :mod:`longgen_core.jsonio`)."""

from __future__ import annotations

__all__ = ["command_line", "copy_gbps", "software_versions"]


# Baselines a result may have been measured against, recorded where they are installed
OPTIONAL_PACKAGES = ("triton", "flash-attn-4", "nvidia-cutlass-dsl", "quack-kernels")


def software_versions() -> dict:
    """Versions of the packages a result depends on; those of :data:`OPTIONAL_PACKAGES` only
    where they are installed (CPU-only torch may come without triton).

    Example::

        >>> {"torch", "transformers", "accelerate"} <= set(software_versions())
        True
    """
    from importlib.metadata import PackageNotFoundError, version

    import accelerate
    import torch
    import transformers

    out = {"torch": torch.__version__, "transformers": transformers.__version__,
           "accelerate": accelerate.__version__}
    for name in OPTIONAL_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue  # not installed here: not recorded
    return out


def command_line() -> str:
    """The ``bench`` command line this process was started with, for the result JSON, so that a
    committed result says how to re-run it."""
    import os
    import sys

    line = "python -m longgen_core.bench " + " ".join(sys.argv[1:])
    out = os.environ.get("OUT")  # the device's output folder: written as `$OUT`, not this machine's path
    return line.replace(out.rstrip("/") + "/", "$OUT/") if out else line


def copy_gbps(device="cuda", gib: float = 1.0, reps: int = 5) -> float:
    """Device memory bandwidth in GB/s from a ``gib`` GiB copy, counting bytes read **and** written
    (the STREAM convention; a read-bound kernel can reach about this rate, not half of it).

    Example (any device; on a CPU the number is the host's)::

        >>> copy_gbps("cpu", gib=0.01, reps=1) > 0
        True
    """
    import statistics
    import time

    import torch

    src = torch.empty(int(gib * 2**30), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    cuda = torch.device(device).type == "cuda"

    def once() -> float:
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            dst.copy_(src)
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3
        t = time.perf_counter()
        dst.copy_(src)
        return time.perf_counter() - t

    once()  # warm-up
    seconds = statistics.median(once() for _ in range(reps))
    return 2 * src.numel() / seconds / 1e9
