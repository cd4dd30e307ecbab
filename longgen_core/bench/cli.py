"""Command line of the GPU benchmarks: ``python -m longgen_core.bench kernels|model|generate``
(also ``longgen bench``). Each writes one results JSON, ``--out FILE``, and its figure beside it.

Example: ``python -m longgen_core.bench model --out figures/bench_model.json`` (a GPU; ``--device
cpu`` to run it on a CPU anyway); ``--out figures/`` is refused: it names the file, not a folder.
"""

from __future__ import annotations

from ..cli_parser import Parser
from ..cli_values import int_list, names_from, output_file
from ..devices import refuse_without_cuda
from ..models.attention import ATTN_IMPLEMENTATIONS
from .baselines import IMPLS
from .generate import run_cli as run_generate
from .kernels import PASSES, PATTERN_NAMES, run_kernels
from .model import METRICS
from .model import run_cli as run_model

__all__ = ["main"]

JSON_FILE = output_file(".json")
PNG_FILE = output_file(".png")


def _joined(values) -> str:
    """``(16384, 32768)`` -> ``"16384,32768"``: a list option as the user wrote it."""
    return ",".join(map(str, values))


def _run_model(args) -> int:
    """The ``model`` subcommand (:mod:`longgen_core.bench.model`); on a CPU only with ``--device cpu``."""
    refused = refuse_without_cuda("bench model", f"time a Llama-2-7B-shaped model at N = {_joined(args.lengths)}",
                                  args.device)
    return refused or run_model(args)


def _run_kernels(args) -> int:
    """The ``kernels`` subcommand (:mod:`longgen_core.bench.kernels`): CUDA only."""
    refused = refuse_without_cuda("bench kernels", f"time the Triton kernels at N = {_joined(args.n)}",
                                  override=None)
    return refused or run_kernels(args)


def _run_generate(args) -> int:
    """The ``generate`` subcommand (:mod:`longgen_core.bench.generate`); on a CPU only with ``--device cpu``."""
    refused = refuse_without_cuda("bench generate",
                                  f"run SmolLM2 generate() from {_joined(args.prompts)}-token prompts", args.device)
    return refused or run_generate(args)


def _outputs(command, default: str, png: bool = True) -> None:
    """``--out FILE`` (and ``--png FILE``) of a subcommand: the results file, never a folder."""
    command.add_argument("--out", type=JSON_FILE, default=default, metavar="FILE",
                         help="the results JSON file to write (a .json path, not a folder"
                              + ("; the PNG goes beside it)" if png else ")"))
    if png:
        command.add_argument("--png", type=PNG_FILE, default=None, metavar="FILE",
                             help="the figure file (default: --out with .png)")


def _device_option(command) -> None:
    command.add_argument("--device", default=None, help="default: cuda; without a CUDA GPU the command "
                         "refuses to start unless given --device cpu")


def main(argv: list[str] | None = None, prog: str = "python -m longgen_core.bench") -> int:
    """Run ``bench kernels|model|generate`` with ``argv``; bad arguments exit 2 with one line."""
    parser = Parser(prog=prog, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    k = sub.add_parser("kernels", help="sparse attention kernels vs FlexAttention and full SDPA (GPU)")
    _outputs(k, "figures/bench_kernels.json")
    k.add_argument("--n", type=int_list, default="16384,32768,65536,131072", help="comma-separated sequence lengths")
    k.add_argument("--patterns", type=names_from(PATTERN_NAMES), default=_joined(PATTERN_NAMES),
                   help=f"from: {_joined(PATTERN_NAMES)}")
    k.add_argument("--passes", type=names_from(PASSES), default=_joined(PASSES), help=f"from: {_joined(PASSES)}")
    k.add_argument("--impls", type=names_from(IMPLS), default=_joined(IMPLS),
                   help=f"from: {_joined(IMPLS)} (flex_flash and fa4 need flash-attn-4; "
                   "rows of what cannot run say why)")
    k.add_argument("--heads", type=int, default=32)
    k.add_argument("--kv-heads", type=int, default=32)
    k.add_argument("--head-dim", type=int, default=128)
    k.add_argument("--decode-batch", type=int, default=8)
    k.add_argument("--skip-check", action="store_true", help="skip the correctness check (not advised)")
    k.add_argument("--cuda-graphs", action="store_true", help="time the decode rows as CUDA graph replays: "
                   "the GPU time of a call without the host's work to issue it (every implementation alike)")
    k.add_argument("--tune", action="store_true", help="sweep launch settings first (adds minutes)")
    k.add_argument("--tune-n", type=int, default=32768)
    k.add_argument("--tune-head-dims", type=int_list, default=(), help="comma-separated: tune these head_dims "
                   "too (at N <= 32K)")
    k.add_argument("--profile", type=int_list, default=(), help="comma-separated N: per-kernel times "
                   "(torch.profiler)")
    k.add_argument("--time-budget", type=float, default=None, help="seconds for the timed rows (counted "
                   "after any --tune and check); later rows are skipped")
    k.set_defaults(func=_run_kernels)
    m = sub.add_parser("model", help="Llama-2-7B-shaped model: full attention vs LongGen hybrid (GPU)")
    _outputs(m, "figures/bench_model.json")
    m.add_argument("--lengths", type=int_list, default="32768,65536,131072",
                   help="comma-separated N, run in this order")
    m.add_argument("--layers", type=int, default=6, help="decoder layers (the middle third full)")
    m.add_argument("--reps", type=int, default=3, help="timed repeats per cell (after one warm-up)")
    m.add_argument("--decode-steps", type=int, default=16, help="single-token steps per timed decode loop")
    m.add_argument("--decode-batch", type=int, default=8)
    m.add_argument("--loss-chunk", type=int, default=4096)
    m.add_argument("--metrics", type=names_from(METRICS), default=_joined(METRICS),
                   help=f"comma-separated, from: {_joined(METRICS)} (default: every metric)")
    _device_option(m)
    m.add_argument("--time-budget", type=float, default=None, help="seconds; later cells are skipped")
    m.add_argument("--backend", default="auto", choices=list(ATTN_IMPLEMENTATIONS),
                   help="the hybrid's attention backend: auto (our Triton kernels), flex / flex_flash "
                   "(FlexAttention, Triton / FA4 backend), sdpa (masked SDPA) or reference")
    m.add_argument("--unfused-norms", action="store_true", help="keep transformers' RMSNorm (7 kernels a "
                   "call) in both models instead of one F.rms_norm")
    m.set_defaults(func=_run_model)
    g = sub.add_parser("generate", help="SmolLM2 model.generate() from long prompts: full vs hybrid tokens/s")
    _outputs(g, "figures/bench_generate.json", png=False)
    g.add_argument("--prompts", type=int_list, default="32768,131072", help="comma-separated prompt lengths")
    g.add_argument("--batches", type=int_list, default="1,8", help="comma-separated batch sizes")
    g.add_argument("--new-tokens", type=int, default=256)
    g.add_argument("--sink", type=int, default=64, help="the hybrid's sink tokens")
    g.add_argument("--window", type=int, default=4096, help="the hybrid's window tokens")
    _device_option(g)
    g.set_defaults(func=_run_generate)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:  # a bad parameter found deep inside (the project's convention): one line, exit 2
        sub.choices[args.command].error(str(err))
