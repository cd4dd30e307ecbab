"""Command line of the GPU benchmarks: ``python -m longgen_core.bench kernels|model|generate``."""

from __future__ import annotations

import argparse
import sys

from ..devices import refuse_without_cuda
from ..models.attention import ATTN_IMPLEMENTATIONS
from .baselines import IMPLS
from .generate import run_cli as run_generate
from .kernels import run_kernels
from .model import METRICS
from .model import run_cli as run_model

__all__ = ["main"]


def _run_model(args) -> int:
    """The ``model`` subcommand (:mod:`longgen_core.bench.model`); on a CPU only with ``--device cpu``."""
    refused = refuse_without_cuda("bench model", f"time a Llama-2-7B-shaped model at N = {args.lengths}",
                                  args.device)
    return refused or run_model(args)


def _run_kernels(args) -> int:
    """The ``kernels`` subcommand (:mod:`longgen_core.bench.kernels`): CUDA only."""
    unknown = sorted(set(args.impls.split(",")) - set(IMPLS))
    if unknown:
        print(f"bench kernels: unknown --impls {','.join(unknown)}; choose from {','.join(IMPLS)}", file=sys.stderr)
        return 2
    refused = refuse_without_cuda("bench kernels", f"time the Triton kernels at N = {args.n}", override=None)
    return refused or run_kernels(args)


def _run_generate(args) -> int:
    """The ``generate`` subcommand (:mod:`longgen_core.bench.generate`); on a CPU only with ``--device cpu``."""
    refused = refuse_without_cuda("bench generate", f"run SmolLM2 generate() from {args.prompts}-token prompts",
                                  args.device)
    return refused or run_generate(args)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m longgen_core.bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    k = sub.add_parser("kernels", help="sparse attention kernels vs FlexAttention and full SDPA (GPU)")
    k.add_argument("--out", default="figures/bench_kernels.json",
                   help="results JSON (the PNG goes beside it)")
    k.add_argument("--png", default=None, help="figure path (default: --out with .png)")
    k.add_argument("--n", default="16384,32768,65536,131072", help="comma-separated sequence lengths")
    k.add_argument("--patterns", default="sink_window,strided", help="from: sink_window,strided")
    k.add_argument("--passes", default="fwd,fwdbwd,decode", help="from: fwd,fwdbwd,decode")
    k.add_argument("--impls", default=",".join(IMPLS),
                   help=f"from: {','.join(IMPLS)} (flex_flash and fa4 need flash-attn-4; "
                   "rows of what cannot run say why)")
    k.add_argument("--heads", type=int, default=32)
    k.add_argument("--kv-heads", type=int, default=32)
    k.add_argument("--head-dim", type=int, default=128)
    k.add_argument("--decode-batch", type=int, default=8)
    k.add_argument("--skip-check", action="store_true", help="skip the correctness check (not advised)")
    k.add_argument("--tune", action="store_true", help="sweep launch settings first (adds minutes)")
    k.add_argument("--tune-n", type=int, default=32768)
    k.add_argument("--tune-head-dims", default="", help="tune these head_dims too (at N <= 32K)")
    k.add_argument("--profile", default="", help="comma-separated N: per-kernel times (torch.profiler)")
    k.add_argument("--time-budget", type=float, default=None, help="seconds; later rows are skipped")
    k.set_defaults(func=_run_kernels)
    m = sub.add_parser("model", help="Llama-2-7B-shaped model: full attention vs LongGen hybrid (GPU)")
    m.add_argument("--out", default="figures/bench_model.json", help="results JSON (the PNG goes beside it)")
    m.add_argument("--png", default=None, help="figure path (default: --out with .png)")
    m.add_argument("--lengths", default="32768,65536,131072", help="comma-separated N, run in this order")
    m.add_argument("--layers", type=int, default=6, help="decoder layers (the middle third full)")
    m.add_argument("--reps", type=int, default=3, help="timed repeats per cell (after one warm-up)")
    m.add_argument("--decode-steps", type=int, default=16, help="single-token steps per timed decode loop")
    m.add_argument("--decode-batch", type=int, default=8)
    m.add_argument("--loss-chunk", type=int, default=4096)
    m.add_argument("--metrics", default=",".join(METRICS), help="comma-separated; default: every metric")
    m.add_argument("--device", default=None, help="default: cuda; without a CUDA GPU the command "
                   "refuses to start unless given --device cpu")
    m.add_argument("--time-budget", type=float, default=None, help="seconds; later cells are skipped")
    m.add_argument("--backend", default="auto", choices=list(ATTN_IMPLEMENTATIONS),
                   help="the hybrid's attention backend: auto (our Triton kernels), flex / flex_flash "
                   "(FlexAttention, Triton / FA4 backend), sdpa (masked SDPA) or reference")
    m.add_argument("--unfused-norms", action="store_true", help="keep transformers' RMSNorm (7 kernels a "
                   "call) in both models instead of one F.rms_norm")
    m.set_defaults(func=_run_model)
    g = sub.add_parser("generate", help="SmolLM2 model.generate() from long prompts: full vs hybrid tokens/s")
    g.add_argument("--out", default="figures/bench_generate.json", help="results JSON")
    g.add_argument("--prompts", default="32768,131072", help="comma-separated prompt lengths")
    g.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    g.add_argument("--new-tokens", type=int, default=256)
    g.add_argument("--sink", type=int, default=64, help="the hybrid's sink tokens")
    g.add_argument("--window", type=int, default=4096, help="the hybrid's window tokens")
    g.add_argument("--device", default=None, help="default: cuda; without a CUDA GPU the command "
                   "refuses to start unless given --device cpu")
    g.set_defaults(func=_run_generate)
    args = parser.parse_args(argv)
    return args.func(args)


