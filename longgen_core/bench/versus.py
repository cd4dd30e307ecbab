"""Same-run timing of this checkout's kernels against another copy of them (GPU).

A refactor of the kernels must not make them slower; the only fair check times both versions in
one process, on the same inputs, on the same device. The other version is a copy of an older
commit's package, extracted beside the checkout under another name::

    mkdir -p runs/old && git archive a910ee6 longgen_core | tar -x -C runs/old
    mv runs/old/longgen_core runs/old/longgen_old
    python -m longgen_core.bench.versus --root runs/old --package longgen_old \\
        --kernels attention.ops --patterns patterns --out figures/kernels_versus_a910ee6.json

Both versions run their own default launch settings, and each is timed twice, interleaved.
Before anything is timed, each pass's outputs (and gradients) of the two versions are compared;
the JSON records the largest difference next to the times.

JSON layout::

    {"device", "versions", "date", "other": {"package", "label"}, "shapes": {...},
     "rows": [{"pattern", "n", "pass": "fwd" | "fwdbwd" | "decode" | "decode_plan", "ms_this",
               "ms_other", "ratio" (ms_this / ms_other: below 1 is faster now), "max_abs_diff"}]}

Decode runs batch 8 over a full-length cache (positions ``0..N-1``). ``decode`` calls both
versions plainly; ``decode_plan`` hands this version one reused
:class:`~longgen_core.kernels.api.DecodePlan` (the visible-chunk list built once), which is what the
older version's memo (keyed by the position tensor's identity) did on its own.
"""

from __future__ import annotations

import datetime
import importlib
import sys
from pathlib import Path

from ..cli_parser import Parser
from ..cli_values import int_list, output_file
from ..jsonio import write_json_atomic
from .kernels import kernel_patterns, median_ms
from .results import software_versions

__all__ = ["load_other", "compare", "main"]


def load_other(root: str | Path, package: str, kernels: str, patterns: str):
    """The other version's kernel and pattern modules, imported from ``root/package``.

    Example: ``ops, pats = load_other("runs/old", "longgen_old", "attention.ops", "patterns")``.
    """
    root = Path(root).resolve()
    if not (root / package / "__init__.py").exists():
        raise FileNotFoundError(f"no package {package!r} under {root} (see this module's docstring)")
    if package == "longgen_core":
        raise ValueError("give the other copy another package name than longgen_core")
    sys.path.insert(0, str(root))
    return (importlib.import_module(f"{package}.{kernels}"),
            importlib.import_module(f"{package}.{patterns}"))


def _fwdbwd(attention, q, k, v, pattern, do):
    def run():
        for t in (q, k, v):
            t.grad = None
        attention(q, k, v, pattern).backward(do)
    return run


def _grads(attention, q, k, v, pattern, do):
    _fwdbwd(attention, q, k, v, pattern, do)()
    return [t.grad.clone() for t in (q, k, v)]


def compare(this_ops, other_ops, other_patterns, ns=(16384, 32768, 65536, 131072),
            names=("sink_window", "strided"), heads: int = 32, head_dim: int = 128, decode_batch: int = 8,
            log=print) -> list[dict]:
    """Rows of :data:`__doc__`'s layout: each pass of each pattern at each N, both versions."""
    import torch

    from ..kernels.api import DecodePlan

    ours, theirs = kernel_patterns(heads), kernel_patterns(heads, other_patterns)
    gen = torch.Generator(device="cuda").manual_seed(0)
    dt = torch.bfloat16
    rows = []

    def row(name, n, which, this_fn, other_fn, diff):
        # interleaved this, other, this, other; the faster median of each: the order (warm
        # caches, clocks) favours neither version
        times = [median_ms(fn) for fn in (this_fn, other_fn, this_fn, other_fn)]
        r = {"pattern": name, "n": n, "pass": which, "ms_this": round(min(times[0::2]), 4),
             "ms_other": round(min(times[1::2]), 4), "max_abs_diff": diff}
        r["ratio"] = round(r["ms_this"] / r["ms_other"], 4)
        rows.append(r)
        log(f"{name:12s} {n:7d} {which:7s} this {r['ms_this']:9.3f} ms  other {r['ms_other']:9.3f} ms  "
            f"ratio {r['ratio']:.3f}  max|diff| {diff:.2e}")

    def attention_rows(n):
        q, k, v = (torch.randn(1, heads, n, head_dim, device="cuda", dtype=dt, generator=gen) for _ in range(3))
        do = torch.randn_like(q)
        for name in names:
            p_this, p_other = ours[name], theirs[name]
            a, b = this_ops.sparse_attention(q, k, v, p_this), other_ops.sparse_attention(q, k, v, p_other)
            row(name, n, "fwd", lambda: this_ops.sparse_attention(q, k, v, p_this),
                lambda: other_ops.sparse_attention(q, k, v, p_other), float((a - b).abs().max()))
            del a, b
            qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
            ga = _grads(this_ops.sparse_attention, qg, kg, vg, p_this, do)
            gb = _grads(other_ops.sparse_attention, qg, kg, vg, p_other, do)
            row(name, n, "fwdbwd", _fwdbwd(this_ops.sparse_attention, qg, kg, vg, p_this, do),
                _fwdbwd(other_ops.sparse_attention, qg, kg, vg, p_other, do),
                max(float((x - y).abs().max()) for x, y in zip(ga, gb)))
            del qg, kg, vg, ga, gb

    def decode_rows(n):
        qd = torch.randn(decode_batch, heads, 1, head_dim, device="cuda", dtype=dt, generator=gen)
        kd, vd = (torch.randn(decode_batch, heads, n, head_dim, device="cuda", dtype=dt, generator=gen)
                  for _ in range(2))
        pos = torch.arange(n, device="cuda")
        for name in names:
            p_this, p_other = ours[name], theirs[name]
            a = this_ops.sparse_decode(qd, kd, vd, pos, p_this)
            b = other_ops.sparse_decode(qd, kd, vd, pos, p_other)
            row(name, n, "decode", lambda: this_ops.sparse_decode(qd, kd, vd, pos, p_this),
                lambda: other_ops.sparse_decode(qd, kd, vd, pos, p_other), float((a - b).abs().max()))
            plan = DecodePlan()  # this version's visible-chunk plan, reused as a cache reuses it
            row(name, n, "decode_plan", lambda: this_ops.sparse_decode(qd, kd, vd, pos, p_this, plan=plan),
                lambda: other_ops.sparse_decode(qd, kd, vd, pos, p_other), float((a - b).abs().max()))

    for n in ns:  # each draws its tensors and frees them on return: the attention ones before the decode ones
        attention_rows(n)
        decode_rows(n)
        torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None, prog: str = "python -m longgen_core.bench.versus") -> int:
    """Time this copy against the other one ``argv`` names; bad arguments exit 2 with one line."""
    parser = Parser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="folder holding the other copy of the package")
    parser.add_argument("--package", required=True, help="its package name (not longgen_core)")
    parser.add_argument("--kernels", default="kernels", help="its module with sparse_attention/sparse_decode")
    parser.add_argument("--patterns", default="patterns", help="its module with sink_window/strided")
    parser.add_argument("--label", default="", help="what the other copy is (e.g. a commit)")
    parser.add_argument("--n", type=int_list, default="16384,32768,65536,131072",
                        help="comma-separated sequence lengths")
    parser.add_argument("--out", type=output_file(".json"), required=True, metavar="FILE",
                        help="the results JSON file to write (a .json path, not a folder)")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        parser.error("needs a CUDA device (the timing is what this compares)")
    from .. import kernels as this_ops

    other_ops, other_patterns = load_other(args.root, args.package, args.kernels, args.patterns)
    rows = compare(this_ops, other_ops, other_patterns, ns=args.n)
    write_json_atomic(args.out, {
        "device": torch.cuda.get_device_name(), "versions": software_versions(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "other": {"package": args.package, "label": args.label},
        "shapes": {"batch": 1, "heads": 32, "head_dim": 128, "dtype": "bfloat16", "decode_batch": 8},
        "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
