"""Benchmarks (GPU), one subcommand each; results go to ``figures/`` as JSON plus a PNG.

``python -m longgen_core.bench model --out figures/bench_model.json``
    A Llama-2-7B-shaped model (few layers, random weights): full attention vs the LongGen hybrid,
    KV bytes, prefill, decode (batch 1 and 8) and a training step; see :mod:`longgen_core.bench.model`.

``python -m longgen_core.bench kernels --out figures/bench_kernels.json``
    The sparse attention kernels of :mod:`longgen_core.kernels` against, in the same run, the
    baselines of :mod:`.baselines`: FlexAttention with a compiled ``create_block_mask`` of the same
    pattern on its Triton backend (``flex``) and its FLASH backend (``flex_flash``: FA4's kernels),
    FlashAttention-4 itself (``fa4``: the window without the sink, the nearest pattern it can run,
    beside ours on that same window; and full causal), and full causal SDPA (flash backend). The
    shape of one Llama-2-7B layer: batch 1, 32 heads, head_dim 128, bf16, N in 16K..128K; decode at
    batch 8. Correctness is checked on the device against FlexAttention (and the float64
    reference at a small size) before anything is timed, the baselines included; rows of a
    baseline that cannot run here (flash-attn-4 missing, a pattern FA4 cannot express) carry
    ``unavailable`` with the reason.

JSON layout (``figures/bench_kernels.json``)::

    {"device", "torch", "triton", "date", "copy_gbps", "matmul_tflops", "check": {...},
     "versions": {...}, "rows": [{"impl": "longgen" | "flex" | "flex_flash" | "fa4" | "sdpa_full",
               "pattern", "n", "pass": "fwd" | "fwdbwd" | "decode", "ms", "tflops", "gbps", ...}]}

FA4 rows on the window it runs in place of sink + window carry ``instead_of`` (the pattern they
stand in for).

``tflops`` counts the useful FLOPs of the kept (query, key) pairs
(:func:`longgen_core.patterns.attention_flops`); decode rows add ``batch``, ``cache``
(``"full"``: all N positions in the cache, the kernel skips dropped chunks; ``"evicted"``: only
sink + window slots, the hybrid's cache) and ``gbps``, the K/V bytes the implementation must read
(the visible slots; all N for full SDPA) over the time.

The helpers :func:`load_results`, :func:`results_table` and :func:`plot_results` work on the JSON
alone (no GPU): notebook 02 uses them.
"""

from __future__ import annotations

import datetime
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..jsonio import read_json as load_results  # noqa: F401 -- the names notebooks 02 and 06 import
from ..jsonio import write_json_atomic as write_results
from .baselines import fa4, fa4_counterpart, flex, unavailable
from .results import command_line, copy_gbps, software_versions

# torch and triton are imported inside the functions that time things: the table and figure
# helpers need only the JSON (notebook 02 on a laptop).

__all__ = ["results_table", "plot_results", "save_plot",
           "kernel_patterns", "median_ms", "PASSES", "PATTERN_NAMES"]

PASSES = ("fwd", "fwdbwd", "decode")
PATTERN_NAMES = ("sink_window", "strided")  # the keys of kernel_patterns, what --patterns chooses from


def _row_key(row):
    return (row["pattern"], row["pass"], row["impl"], row.get("cache", ""), row["n"])


def results_table(results: dict, digits: int = 1) -> str:
    """Plain-text table: one line per (pattern, pass, impl[, cache]), one column per N (ms),
    then the speed-up of longgen at the largest N over each baseline: FlexAttention (both
    backends) on the same pattern, FA4 on the same pattern or on the window it runs instead of
    sink + window (named), full SDPA. Deterministic for a given JSON (the notebook's text twin
    of the figure); rows that could not run are listed with the reason.

    Example line: ``sink_window_64_4096  fwd     longgen         1.2    2.3    4.6    9.2``
    """
    rows = [r for r in results["rows"] if r.get("ms") is not None]
    ns = sorted({r["n"] for r in rows})
    lines = [f"{'pattern':24s} {'pass':7s} {'impl':16s}" + "".join(f"{n // 1024:>8d}K" for n in ns)]
    groups: dict = {}
    stand_ins: dict = {}  # (pattern FA4 cannot run, pass) -> (the pattern it ran, {n: ms})
    for r in rows:
        name = r["impl"] + (f"/{r['cache']}" if r.get("cache") and r["impl"] == "longgen" else "")
        groups.setdefault((r["pattern"], r["pass"], name), {})[r["n"]] = r["ms"]
        if r.get("instead_of"):
            stand_ins.setdefault((r["instead_of"], r["pass"]), (r["pattern"], {}))[1][r["n"]] = r["ms"]
    for (pattern, pass_, name), by_n in sorted(groups.items()):
        cells = "".join(f"{by_n[n]:9.{digits}f}" if n in by_n else f"{'-':>9s}" for n in ns)
        lines.append(f"{pattern:24s} {pass_:7s} {name:16s}{cells}")
    if ns:
        n = ns[-1]
        lines.append(f"speed-up of longgen at N={n // 1024}K:")
        for (pattern, pass_, name), by_n in sorted(groups.items()):
            if not name.startswith("longgen") or n not in by_n or name.endswith("evicted"):
                continue
            for other in ("flex", "flex_flash", "fa4", "sdpa_full"):
                label, ref = other, groups.get((pattern, pass_, other), {})
                if other == "sdpa_full":
                    ref = groups.get(("full_causal", pass_, other), {})
                elif other == "fa4" and not ref and (pattern, pass_) in stand_ins:
                    ran, ref = stand_ins[(pattern, pass_)]
                    label = f"fa4 on {ran}"
                if n in ref:
                    lines.append(f"  {pattern:24s} {pass_:7s} vs {label:9s} {ref[n] / by_n[n]:6.2f}x")
    missing = sorted({(r["impl"], r["pattern"], r["unavailable"]) for r in results["rows"] if r.get("unavailable")})
    if missing:
        lines.append("not run:")
        lines += [f"  {impl} {pattern}: {why}" for impl, pattern, why in missing]
    return "\n".join(lines)


def plot_results(results: dict):
    """Figure: time (ms, log) against N (log), one panel per pass. Colour = pattern, line style =
    implementation (longgen solid, flex dashed, full SDPA dotted; longgen on the evicted cache
    dash-dot), one legend for all panels."""
    import matplotlib.pyplot as plt

    passes = [p for p in PASSES if any(r["pass"] == p for r in results["rows"])]
    fig, axes = plt.subplots(1, len(passes), figsize=(4.2 * len(passes), 3.9), squeeze=False)
    patterns = sorted({r["pattern"] for r in results["rows"]})
    colour = {name: f"C{i}" for i, name in enumerate(patterns)}
    style = {"longgen": "-o", "flex": "--s", "flex_flash": "--v", "fa4": ":x", "sdpa_full": ":^",
             "longgen evicted": "-.D"}
    handles = {}
    for ax, pass_ in zip(axes[0], passes):
        lines: dict = {}
        for r in results["rows"]:
            if r["pass"] == pass_ and r.get("ms") is not None:
                impl = r["impl"] + (" evicted" if r.get("cache") == "evicted" else "")
                lines.setdefault((impl, r["pattern"]), []).append((r["n"], r["ms"]))
        for (impl, pattern), pts in sorted(lines.items()):
            pts.sort()
            label = f"{impl} {pattern}" + (" cache" if impl.endswith("evicted") else "")
            (h,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], style.get(impl, "-"),
                           color=colour[pattern], ms=4, label=label)
            handles.setdefault(h.get_label(), h)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length N")
        ax.set_title(pass_ + (f" (batch {results.get('decode_batch', 8)})" if pass_ == "decode" else ""))
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("time (ms, median)")
    fig.legend(list(handles.values()), list(handles.keys()), loc="lower center", ncol=4, fontsize=7)
    fig.suptitle(f"{results.get('device', '?')}: sparse attention kernels", fontsize=9)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig


def save_plot(results: dict, path) -> None:
    """Save :func:`plot_results` as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    fig = plot_results(results)
    fig.savefig(path, dpi=110)


# ----------------------------------------------------------------------------------- GPU helpers
def kernel_patterns(num_heads: int = 32, factories=None) -> dict:
    """The two sparse settings benchmarked: LongGen's sink 64 + window 4096, and the strided
    pattern of the authors' kernel (block 64, 16 local blocks, vertical stride 8, per-head).

    ``factories``: a module with ``sink_window`` and ``strided`` (default :mod:`longgen_core.patterns`;
    :mod:`.versus` passes an older copy's)."""
    if factories is None:
        from .. import patterns as factories

    return {"sink_window": factories.sink_window(64, 4096),
            "strided": factories.strided(64, 16, 8, homo_head=False, num_heads=num_heads)}


def median_ms(fn, rep: int = 100, graph: bool = False) -> float:
    """Median milliseconds of ``fn`` on the GPU (``triton.testing.do_bench``, 25 warm-up runs).
    ``graph``: of ``fn`` captured in a CUDA graph and replayed (``do_bench_cudagraph``): the GPU
    time of the call without the host's work to issue it, which is what a graphed decode step pays."""
    from triton.testing import do_bench, do_bench_cudagraph

    if graph:
        return float(do_bench_cudagraph(fn, rep=rep, return_mode="median"))
    return float(do_bench(fn, warmup=25, rep=rep, return_mode="median"))


def _tuned(tuned: dict | None, pattern, head_dim: int, dtype):
    """The config a :func:`tune` sweep found for this call (key ``(tile, head_dim, element
    bytes)``), or ``None``: the kernels' own default."""
    import torch

    from ..kernels.api import default_tile

    return (tuned or {}).get((default_tile(pattern, False), head_dim, torch.finfo(dtype).bits // 8))


def _matmul_ms(n: int) -> float:
    """Median ms of one bf16 ``(n, n) @ (n, n)`` matmul; its operand is freed on return."""
    import torch

    a = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    return median_ms(lambda: a @ a)


def _device_ceilings() -> dict:
    """Measured copy bandwidth (bytes read + written, :func:`copy_gbps`) and a bf16 matmul rate."""
    mm_ms = _matmul_ms(8192)
    return {"copy_gbps": copy_gbps("cuda"), "matmul_tflops": 2 * 8192**3 / mm_ms / 1e9}


def _rel(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


def check_on_device(heads: int = 32, head_dim: int = 128, log=print, tuned: dict | None = None) -> dict:
    """Kernels vs FlexAttention (fp32 inputs as truth) at a ragged N with GQA, vs the float64
    reference at a small N for every dtype and head_dim 64/128, and decode (full and shuffled
    caches with empty slots) vs the dense decode reference. Returns ``{check: error}`` plus
    ``"passed"``; a failed check is recorded (and printed), not raised, so the run still says
    what it timed. ``tuned``: the configs of :func:`tune`, checked where they apply."""
    import torch

    from ..kernels import reference_attention, reference_decode, sparse_attention, sparse_decode

    out: dict = {"passed": True}

    def record(key, fn, bound):
        try:
            errs = fn()
        except Exception as e:  # noqa: BLE001
            errs = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        errs = errs if isinstance(errs, dict) else {"err": errs}
        out[key] = errs
        if "unavailable" in errs:  # a baseline this machine lacks: said, not failed
            log(f"check {key}: unavailable ({errs['unavailable']})")
            return
        ok = all(isinstance(e, float) and e < bound for e in errs.values())
        out["passed"] &= ok
        log(f"check {key}: {'ok' if ok else 'FAILED'} "
            + " ".join(f"{a}={b:.1e}" if isinstance(b, float) else f"{a}={b}" for a, b in errs.items()))

    def versus(truth, fn, q, k, v, do, dtype):
        """Relative errors of ``fn`` in ``dtype`` (output, lse, gradients) against ``truth``."""
        leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
        with torch.no_grad():  # the lse apart: FlexAttention's FLASH backward refuses a graph through it
            _, lse = fn(*leaves, return_lse=True)
        o = fn(*leaves)
        g = torch.autograd.grad(o, leaves, do.to(dtype))
        errs = {"out": _rel(o, truth["o"]), "lse": _rel(lse, truth["lse"])}
        errs.update({f"d{x}": _rel(a, b) for x, a, b in zip("qkv", g, truth["g"])})
        return errs

    def flex_truth(pattern, q, k, v, do, truth):
        """fp32 FlexAttention (Triton backend): output, lse and gradients into ``truth``."""
        leaves32 = [t.clone().requires_grad_() for t in (q, k, v)]
        truth["o"], truth["lse"] = flex(pattern)(*leaves32, return_lse=True)
        truth["g"] = torch.autograd.grad(truth["o"], leaves32, do)
        return {}

    def check_vs_flex(name, pattern):
        """Ours (bf16, fp16) and FlexAttention's FLASH backend against fp32 FlexAttention."""
        n, kv_heads = 4096 + 77, heads // 4  # ragged N, GQA 4
        q = torch.randn(1, heads, n, head_dim, device="cuda")
        k, v = (torch.randn(1, kv_heads, n, head_dim, device="cuda") for _ in range(2))
        do = torch.randn_like(q)
        truth = {}
        record(f"{name}_flex_fp32", lambda: flex_truth(pattern, q, k, v, do, truth), 1.0)

        def ours(dtype):
            return lambda q, k, v, return_lse=False: sparse_attention(
                q, k, v, pattern, return_lse=return_lse, config=_tuned(tuned, pattern, head_dim, dtype))

        def flex_flash_vs_flex():
            if why := unavailable("flex_flash"):
                return {"unavailable": why}
            errs = versus(truth, flex(pattern, backend="FLASH"), q, k, v, do, torch.bfloat16)
            # its log-sum-exp is on another scale (0.31 relative to FlexAttention's on an H200,
            # torch 2.11): nothing here uses it, so it is not compared
            errs.pop("lse")
            return errs

        if "o" in truth:
            for dtype in (torch.bfloat16, torch.float16):
                record(f"{name}_vs_flex_n{n}_kv{kv_heads}_{str(dtype)[6:]}",
                       lambda d=dtype: versus(truth, ours(d), q, k, v, do, d), 2e-2)
            record(f"{name}_flex_flash_vs_flex_n{n}_kv{kv_heads}_bfloat16", flex_flash_vs_flex, 2e-2)

    def check_fa4(counterpart):
        """FA4 itself, on the pattern it can run (past its window), against fp32 FlexAttention."""
        kv_heads = heads // 4
        n = 2 * counterpart.window_tokens + 77 if counterpart.kind == "sliding_window" else 4096 + 77
        q = torch.randn(1, heads, n, head_dim, device="cuda")
        k, v = (torch.randn(1, kv_heads, n, head_dim, device="cuda") for _ in range(2))
        do = torch.randn_like(q)
        truth = {}

        def fa4_vs_flex():
            if why := unavailable("fa4"):
                return {"unavailable": why}
            flex_truth(counterpart, q, k, v, do, truth)
            return versus(truth, fa4(counterpart), q, k, v, do, torch.bfloat16)

        record(f"fa4_{counterpart.name}_vs_flex_n{n}_kv{kv_heads}_bfloat16", fa4_vs_flex, 2e-2)

    def check_vs_reference(name, pattern):
        """Ours against the float64 reference at a small N, every dtype, head_dim 64 and 128."""

        def vs_reference(dtype, d, n=1000):
            q, k, v = (torch.randn(2, 4, n, d, device="cuda", dtype=torch.float64) for _ in range(3))
            o = sparse_attention(q.to(dtype), k.to(dtype), v.to(dtype), pattern,
                                 config=_tuned(tuned, pattern, d, dtype))
            return _rel(o, reference_attention(*(t.to(dtype).double() for t in (q, k, v)), pattern))

        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            for d in (64, 128):
                record(f"{name}_vs_ref64_{str(dtype)[6:]}_d{d}", lambda dt=dtype, d=d: vs_reference(dt, d),
                       1e-4 if dtype == torch.float32 else 1e-2)

    def check_decode(name, pattern, counterpart):
        """Decode against the dense decode reference; FA4's too, where it runs."""
        n = 20000  # decode, GQA 4, batch 8: a full cache and a shuffled one with empty slots
        q = torch.randn(8, heads, 2, head_dim, device="cuda")
        k, v = (torch.randn(8, heads // 4, n, head_dim, device="cuda") for _ in range(2))
        pos = torch.arange(n, device="cuda")
        perm = torch.randperm(n, device="cuda")
        pos_shuffled = pos[perm].clone()
        pos_shuffled[(pos_shuffled >= 10) & (pos_shuffled < 30)] = -1  # empty slots (sink area)
        caches = {"full": (k, v, pos), "shuffled": (k[:, :, perm], v[:, :, perm], pos_shuffled)}
        for cache, (kc, vc, p) in caches.items():
            for dtype in (torch.bfloat16, torch.float32):
                record(f"{name}_decode_{cache}_{str(dtype)[6:]}", lambda kc=kc, vc=vc, p=p, dt=dtype: _rel(
                    sparse_decode(q.to(dt), kc.to(dt), vc.to(dt), p, pattern,
                                  config=_tuned(tuned, pattern, head_dim, dt)),
                    reference_decode(q.double(), kc.double(), vc.double(), p, pattern)),
                    1e-4 if dtype == torch.float32 else 1e-2)
        if counterpart is not None:  # FA4's decode (its own split heuristic) on the full cache

            def fa4_decode():
                if why := unavailable("fa4"):
                    return {"unavailable": why}
                bf = [t.to(torch.bfloat16) for t in (q, k, v)]
                return _rel(fa4(counterpart, num_splits=0)(*bf),
                            reference_decode(*(t.double() for t in bf), pos, counterpart))

            record(f"fa4_{counterpart.name}_decode_full_bfloat16", fa4_decode, 1e-2)

    torch.manual_seed(0)
    for name, pattern in kernel_patterns(heads).items():
        # each check draws its own tensors, freed when it returns: before the next one allocates
        check_vs_flex(name, pattern)
        counterpart, _ = fa4_counterpart(pattern)
        if counterpart is not None:
            check_fa4(counterpart)
        check_vs_reference(name, pattern)
        check_decode(name, pattern, counterpart)
        torch.cuda.empty_cache()
    return out


# ----------------------------------------------------------------------------------- timing
def _decode_bytes(pattern, n, batch, kv_heads, head_dim, heads, elt=2):
    """Keys the last query sees (mean over heads), and the K/V bytes that makes for the batch."""
    per_head = heads if pattern.per_head else 1
    visible = sum(int(pattern.row_counts(n, h)[-1]) for h in range(per_head)) / per_head
    return visible, 2 * batch * kv_heads * visible * head_dim * elt


def _evicted_cache(k, v, pattern, n):
    """Sink slots then a ring buffer holding the window, rotated as a ring buffer leaves it."""
    import torch

    sink, window = pattern.sink_tokens, pattern.window_tokens
    start = n - window
    ring = torch.arange(start, n, device=k.device)
    ring = torch.roll(ring, shifts=int(n % window))  # slot i holds the position p with p % w == i
    pos = torch.cat([torch.arange(sink, device=k.device), ring])
    return k[:, :, pos].contiguous(), v[:, :, pos].contiguous(), pos


@dataclass
class _Sweep:
    """What :func:`time_rows` times, and the rows it has timed so far.

    ``patterns``: ``[(name, Pattern)]`` in the order asked for; ``passes`` and ``impls`` as
    :func:`time_rows` takes them; rows after ``deadline`` (``time.time()``) are skipped.
    """

    patterns: list
    passes: list
    impls: list
    heads: int
    kv_heads: int
    head_dim: int
    decode_batch: int
    deadline: float
    log: object = print
    tuned: dict | None = None  # the configs of :func:`tune`, used where they apply
    decode_graphs: bool = False  # decode rows timed as CUDA graph replays (median_ms's graph)
    rows: list = field(default_factory=list)

    def config(self, pattern):
        import torch

        return _tuned(self.tuned, pattern, self.head_dim, torch.bfloat16)

    def time(self, impl, pattern_name, n, pass_, fn, flops=None, nbytes=None, **extra) -> None:
        """Append the row of ``fn`` (median ms after a warm-up; TFLOP/s and GB/s from ``flops``
        and ``nbytes``); a failure or the deadline gives ``ms: None`` and a reason."""
        import torch

        row = {"impl": impl, "pattern": pattern_name, "n": n, "pass": pass_, "ms": None, "tflops": None,
               "gbps": None, **extra}
        self.rows.append(row)
        if time.time() > self.deadline:
            row["skipped"] = "time budget"
            return
        try:
            fn()  # compile / warm up
            torch.cuda.synchronize()
            row["ms"] = median_ms(fn, graph=self.decode_graphs and pass_ == "decode")
        except Exception as e:  # noqa: BLE001 -- record and go on: one failure must not lose the run
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            self.log(f"FAILED {impl} {pattern_name} {n} {pass_}: {row['error']}")
            torch.cuda.empty_cache()
            return
        if flops:
            row["tflops"] = flops / row["ms"] / 1e9
        if nbytes:
            row["gbps"] = nbytes / row["ms"] / 1e6
        self.log(f"{impl:9s} {pattern_name:26s} n={n:6d} {pass_:6s} {row['ms']:9.3f} ms"
                 + (f" {row['tflops']:6.1f} TFLOP/s" if row["tflops"] else "")
                 + (f" {row['gbps']:7.1f} GB/s" if row["gbps"] else ""))

    def skip(self, impl, pattern_name, n, pass_, why: str, **extra) -> None:
        """A row for what cannot run here (a missing package, a pattern it cannot express)."""
        self.rows.append({"impl": impl, "pattern": pattern_name, "n": n, "pass": pass_, "ms": None,
                          "tflops": None, "gbps": None, "unavailable": why, **extra})

    def _skip_all(self, impl, pattern_name, n, why: str, **extra) -> None:
        """:meth:`skip` rows for every pass of one call: decode (``extra`` holds its cache and
        batch) or the attention passes."""
        for pass_ in ["decode"] if extra else [x for x in self.passes if x != "decode"]:
            self.skip(impl, pattern_name, n, pass_, why, **extra)

    def wants(self, impl, pattern_name, n, **extra) -> bool:
        """Is ``impl`` asked for and able to run here? If asked for but not able, its rows say why."""
        if impl not in self.impls:
            return False
        why = unavailable(impl)
        if why:
            self._skip_all(impl, pattern_name, n, why, **extra)
        return not why

    def fa4_pattern(self, pattern, n, **extra):
        """The pattern FA4 runs in place of ``pattern`` (:func:`~.baselines.fa4_counterpart`) when
        FA4 is asked for and can run here, else ``None``, with rows that say why."""
        if "fa4" not in self.impls:
            return None
        counterpart, why = fa4_counterpart(pattern)
        if counterpart is None:
            self._skip_all("fa4", pattern.name, n, why, **extra)
            return None
        return counterpart if self.wants("fa4", counterpart.name, n, **extra) else None

    def flex(self, pattern, n_kv: int, n_q: int, impl: str = "flex"):
        """:func:`~.baselines.flex` for ``pattern`` (``impl`` ``"flex"``: its Triton backend,
        ``"flex_flash"``: FA4's kernels), or ``None`` when it is not asked for, cannot run here, or
        the deadline has passed (a failure to build its block mask shows in the timed row)."""
        if time.time() >= self.deadline:
            return None
        extra = {"cache": "full", "batch": self.decode_batch} if n_q == 1 else {}
        if not self.wants(impl, pattern.name, n_kv, **extra):
            return None
        return flex(pattern, backend="FLASH" if impl == "flex_flash" else "TRITON")


def _fa4_layout(t):
    """``t`` ``(B, H, N, D)`` as a view of ``(B, N, H, D)`` memory: FA4's own layout, no copy."""
    return t.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_(t.requires_grad)


def _time_attention(sweep: _Sweep, n: int, gen) -> None:
    """fwd and fwdbwd rows at length ``n``: per pattern longgen and FlexAttention (Triton and
    FLASH backends), FA4 on the window without the sink (and longgen on that same window), then
    full causal SDPA (flash) and FA4. Batch 1, bf16, ``q`` ``(1, heads, n, head_dim)``, ``k``/``v``
    with ``kv_heads``. Rows of what cannot run here say why (``unavailable``)."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ..kernels import sparse_attention  # triton: imported where a kernel runs
    from ..patterns import full_causal

    heads, kv_heads, head_dim, dt = sweep.heads, sweep.kv_heads, sweep.head_dim, torch.bfloat16
    q = torch.randn(1, heads, n, head_dim, device="cuda", dtype=dt, generator=gen).requires_grad_()
    k = torch.randn(1, kv_heads, n, head_dim, device="cuda", dtype=dt, generator=gen).requires_grad_()
    v = torch.randn(1, kv_heads, n, head_dim, device="cuda", dtype=dt, generator=gen).requires_grad_()
    do = torch.randn_like(q)
    for name, p in sweep.patterns:
        fns = {}
        if "longgen" in sweep.impls:
            fns["longgen"] = lambda q, k, v, p=p: sparse_attention(q, k, v, p, config=sweep.config(p))
        for impl in ("flex", "flex_flash"):
            f = sweep.flex(p, n, n, impl)
            if f is not None:
                fns[impl] = f
        _time_fwd_bwd(sweep, p, n, fns, (q, k, v, do))
        counterpart = sweep.fa4_pattern(p, n)
        if counterpart is not None:
            # FA4 runs the window without the sink; ours on that same pattern, for a like-for-like row
            fns = {"fa4": fa4(counterpart)}
            if "longgen" in sweep.impls:
                fns["longgen"] = lambda q, k, v: sparse_attention(q, k, v, counterpart,
                                                                  config=sweep.config(counterpart))
            _time_fwd_bwd(sweep, counterpart, n, fns, (q, k, v, do), instead_of=p.name)
    fc = full_causal()
    if "sdpa_full" in sweep.impls:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            sdpa = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
            _time_fwd_bwd(sweep, fc, n, {"sdpa_full": sdpa}, (q, k, v, do))
    if sweep.wants("fa4", fc.name, n):
        fns = {"fa4": fa4(fc)}
        if "longgen" in sweep.impls:  # our kernels on dense causal: how far Triton is from FA4 there
            fns["longgen"] = lambda q, k, v: sparse_attention(q, k, v, fc, config=sweep.config(fc))
        _time_fwd_bwd(sweep, fc, n, fns, (q, k, v, do))


def _time_fwd_bwd(sweep: _Sweep, pattern, n: int, fns: dict, tensors, instead_of: str = "") -> None:
    """fwd and fwdbwd rows of each ``{impl: f(q, k, v)}`` on ``pattern``; FA4 gets its own
    layout (:func:`_fa4_layout`) of the same values, so no transpose is timed. ``instead_of``:
    the pattern FA4's rows stand in for (sink + window), recorded in those rows."""
    import torch

    from ..patterns import attention_flops

    flops = {x: attention_flops(pattern, n, sweep.heads, sweep.head_dim, pass_=x) for x in ("fwd", "fwdbwd")}
    for impl, f in fns.items():
        q, k, v, do = [_fa4_layout(t) for t in tensors] if impl == "fa4" else tensors
        extra = {"instead_of": instead_of} if impl == "fa4" and instead_of else {}
        if "fwd" in sweep.passes:
            sweep.time(impl, pattern.name, n, "fwd", lambda f=f, q=q, k=k, v=v: f(q, k, v), flops["fwd"], **extra)
        if "fwdbwd" in sweep.passes:
            sweep.time(impl, pattern.name, n, "fwdbwd", lambda f=f, q=q, k=k, v=v, do=do:
                       torch.autograd.grad(f(q, k, v), (q, k, v), do), flops["fwdbwd"], **extra)


def _time_decode(sweep: _Sweep, n: int, gen) -> None:
    """decode rows at context ``n``: one query per sequence at batch ``decode_batch`` on a full
    cache of ``n`` positions (longgen skips the dropped chunks; FlexAttention on both backends;
    FA4 on the window without the sink; full SDPA and full FA4) and, for sink + window, longgen
    on the evicted cache the hybrid keeps."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ..kernels import sparse_decode  # triton: imported where a kernel runs
    from ..kernels.api import DecodePlan
    from ..patterns import full_causal

    heads, kv_heads, head_dim, b, dt = sweep.heads, sweep.kv_heads, sweep.head_dim, sweep.decode_batch, torch.bfloat16
    qd = torch.randn(b, heads, 1, head_dim, device="cuda", dtype=dt, generator=gen)
    kd = torch.randn(b, kv_heads, n, head_dim, device="cuda", dtype=dt, generator=gen)
    vd = torch.randn(b, kv_heads, n, head_dim, device="cuda", dtype=dt, generator=gen)
    pos = torch.arange(n, device="cuda")
    for name, p in sweep.patterns:
        visible, nbytes = _decode_bytes(p, n, b, kv_heads, head_dim, heads)
        flops = 4.0 * b * heads * visible * head_dim
        if "longgen" in sweep.impls:
            # the cache does not change between calls: its visible-chunk plan is built once
            sweep.time("longgen", p.name, n, "decode", lambda p=p, plan=DecodePlan(): sparse_decode(
                qd, kd, vd, pos, p, config=sweep.config(p), plan=plan), flops, nbytes, cache="full", batch=b)
            if p.kind == "sink_window":  # with the query's position, as the evicting cache calls it
                kc, vc, pc = _evicted_cache(kd, vd, p, n)
                qpos = torch.tensor([n - 1], device="cuda")
                sweep.time("longgen", p.name, n, "decode", lambda p=p, kc=kc, vc=vc, pc=pc:
                           sparse_decode(qd, kc, vc, pc, p, q_positions=qpos, config=sweep.config(p)), flops, nbytes,
                           cache="evicted", batch=b)
                del kc, vc
        for impl in ("flex", "flex_flash"):
            f = sweep.flex(p, n, 1, impl)
            if f is not None:
                sweep.time(impl, p.name, n, "decode", lambda f=f: f(qd, kd, vd), flops, nbytes, cache="full",
                           batch=b)
        counterpart = sweep.fa4_pattern(p, n, cache="full", batch=b)
        if counterpart is not None:
            _time_fa4_decode(sweep, counterpart, n, (qd, kd, vd), instead_of=p.name)
    full_bytes = 2 * b * kv_heads * n * head_dim * 2
    if "sdpa_full" in sweep.impls:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
            sweep.time("sdpa_full", "full_causal", n, "decode",
                       lambda: F.scaled_dot_product_attention(qd, kd, vd, enable_gqa=kv_heads != heads),
                       4.0 * b * heads * n * head_dim, full_bytes, cache="full", batch=b)
    fc = full_causal()
    if sweep.wants("fa4", fc.name, n, cache="full", batch=b):
        _time_fa4_decode(sweep, fc, n, (qd, kd, vd))


def _time_fa4_decode(sweep: _Sweep, pattern, n: int, tensors, instead_of: str = "") -> None:
    """A decode row of FA4 on ``pattern`` over the full cache (its own split heuristic over the
    keys, ``num_splits=0``; its own layout, see :func:`_fa4_layout`)."""
    qd, kd, vd = [_fa4_layout(t) for t in tensors]
    b = qd.shape[0]
    visible, nbytes = _decode_bytes(pattern, n, b, sweep.kv_heads, sweep.head_dim, sweep.heads)
    f = fa4(pattern, num_splits=0)
    sweep.time("fa4", pattern.name, n, "decode", lambda: f(qd, kd, vd),
               4.0 * b * sweep.heads * visible * sweep.head_dim, nbytes, cache="full", batch=b,
               **({"instead_of": instead_of} if instead_of else {}))


def time_rows(ns, names, passes, impls, heads, kv_heads, head_dim, decode_batch, deadline, log=print,
              tuned: dict | None = None, decode_graphs: bool = False):
    """Time every (N, pattern, pass, impl); returns the rows (skipped rows have ms=None).
    ``tuned``: the configs of :func:`tune`, used where they apply. ``decode_graphs``: the decode
    rows are CUDA graph replays (every implementation alike), not eager calls.

    Per N: :func:`_time_attention` (fwd, fwdbwd), then :func:`_time_decode` when ``"decode"`` is in
    ``passes``; both draw their tensors from one generator seeded with N. Their tensors are their
    locals, freed when they return; the allocator's cache is emptied after each.
    """
    import torch

    patterns = kernel_patterns(heads)
    sweep = _Sweep([(name, patterns[name]) for name in names], passes, impls, heads, kv_heads, head_dim,
                   decode_batch, deadline, log, tuned, decode_graphs)
    for n in ns:
        gen = torch.Generator(device="cuda").manual_seed(n)
        _time_attention(sweep, n, gen)
        torch.cuda.empty_cache()
        if "decode" in passes:
            _time_decode(sweep, n, gen)
            torch.cuda.empty_cache()
    return sweep.rows


def tune(n: int, heads: int, head_dim: int, log=print) -> dict:
    """Sweep launch settings for each kernel at length ``n`` (bf16, both benchmark patterns) and
    return the best as ``{tile: KernelConfig}`` (printed: paste it into ``api.TUNED`` to keep it;
    pass it to :func:`time_rows` to time with it). Each kernel is swept with the others fixed, in
    the order fwd, dK/dV, dQ, decode."""
    import dataclasses

    import torch

    from ..kernels import api as ops

    found = {}
    patterns = kernel_patterns(heads)

    def tune_attention(p, tile, timed):
        """fwd, then dK/dV, then dQ on ``(1, heads, n, head_dim)``: the config with the best of each."""
        gen = torch.Generator(device="cuda").manual_seed(1)
        q, k, v = (torch.randn(1, heads, n, head_dim, device="cuda", dtype=torch.bfloat16, generator=gen)
                   for _ in range(3))
        do = torch.randn_like(q)
        base = ops.default_config(tile, head_dim, torch.bfloat16, False)
        o, lse = ops.launch_forward(q, k, v, p, None, base)
        # (m, n, warps, stages, split, desc): split walks fully kept tiles in a loop of their own, desc
        # loads K/V through tensor descriptors (api.KernelConfig's fwd_split, fwd_desc). No 128 x 128
        # step with 4 stages: it needs ~295 KB of shared memory, over Hopper's 227 KB.
        fwd = [c for c in [(128, 128, 8, 3, False, False), (128, 64, 8, 3, False, False),
                           (128, 128, 8, 2, False, False), (128, 64, 4, 3, False, False),
                           (64, 64, 4, 3, False, False), (64, 32, 4, 3, False, False),
                           (128, 128, 8, 3, True, False), (128, 64, 8, 3, True, False),
                           (128, 64, 8, 4, True, False), (128, 128, 8, 3, False, True),
                           (128, 128, 8, 3, True, True), (128, 64, 8, 4, True, True)]
               if c[0] <= tile and c[1] <= tile]

        def fwd_config(c):
            return dataclasses.replace(base, fwd_m=c[0], fwd_n=c[1], fwd_warps=c[2], fwd_stages=c[3],
                                       fwd_split=c[4], fwd_desc=c[5])

        best = min(fwd, key=lambda c: timed(f"fwd {c}", lambda c=c: ops.launch_forward(q, k, v, p, None,
                                                                                      fwd_config(c))))
        cfg = fwd_config(best)
        # (keys, queries, warps, stages, desc): desc loads each step's Q and dO tiles through tensor
        # descriptors (dkdv_desc); a few settings only, the tuned ones and one more stage for TMA to fill
        dkdv = [c for c in [(64, 32, 4, 3, False), (64, 64, 4, 2, False), (64, 64, 4, 3, False),
                            (128, 64, 8, 2, False), (64, 32, 4, 2, False), (128, 64, 4, 2, False),
                            (64, 64, 4, 2, True), (64, 64, 4, 3, True), (128, 64, 8, 2, True)]
                if c[0] <= tile and c[1] <= c[0]]
        # the dK/dV walk reads the layout at its key block (dkdv_tile = dkdv_n): no empty steps
        best = min(dkdv, key=lambda c: timed(f"bwd dkdv {c}", lambda c=c: ops.launch_backward(
            do, None, q, k, v, o, lse, p, None,
            dataclasses.replace(cfg, dkdv_n=c[0], dkdv_m=c[1], dkdv_warps=c[2], dkdv_stages=c[3],
                                dkdv_tile=c[0], dkdv_desc=c[4]))))
        cfg = dataclasses.replace(cfg, dkdv_n=best[0], dkdv_m=best[1], dkdv_warps=best[2],
                                  dkdv_stages=best[3], dkdv_tile=best[0], dkdv_desc=best[4])
        # (m, n, warps, stages, split, desc): as the forward's, for the dQ walk (dq_split, dq_desc)
        dq = [c for c in [(128, 64, 8, 3, False, False), (64, 64, 4, 2, False, False),
                          (128, 64, 8, 2, False, False), (128, 128, 8, 2, False, False),
                          (128, 64, 4, 2, False, False), (128, 64, 8, 3, True, False),
                          (128, 128, 8, 2, True, False), (128, 64, 8, 2, True, False),
                          (128, 128, 8, 2, False, True), (128, 128, 8, 2, True, True), (128, 64, 8, 3, True, True)]
              if c[0] <= tile and c[1] <= tile]
        best = min(dq, key=lambda c: timed(f"bwd dq {c}", lambda c=c: ops.launch_backward(
            do, None, q, k, v, o, lse, p, None,
            dataclasses.replace(cfg, dq_m=c[0], dq_n=c[1], dq_warps=c[2], dq_stages=c[3], dq_split=c[4],
                                dq_desc=c[5]))))
        return dataclasses.replace(cfg, dq_m=best[0], dq_n=best[1], dq_warps=best[2], dq_stages=best[3],
                                   dq_split=best[4], dq_desc=best[5])

    def tune_decode(p, tile, cfg, timed):
        """decode at batch 8 on the evicted sink+window cache (the hybrid's decode): ``cfg`` with its best."""
        sw = patterns["sink_window"]
        kd, vd = (torch.randn(8, heads, sw.sink_tokens + sw.window_tokens, head_dim, device="cuda",
                              dtype=torch.bfloat16) for _ in range(2))
        qd = torch.randn(8, heads, 1, head_dim, device="cuda", dtype=torch.bfloat16)
        pos = torch.cat([torch.arange(sw.sink_tokens), torch.arange(n - sw.window_tokens, n)]).cuda()
        dec = [(64, 4, 4, 2), (64, 4, 4, 4), (32, 4, 4, 4), (64, 4, 3, 8), (128, 4, 3, 4), (64, 8, 3, 4),
               (32, 4, 3, 8)]

        def run_decode(c):
            trial = dataclasses.replace(cfg, decode_n=c[0], decode_warps=c[1], decode_stages=c[2],
                                        decode_per_sm=c[3])
            return ops.sparse_decode(qd, kd, vd, pos, sw if tile == 128 else p, config=trial)

        best = min(dec, key=lambda c: timed(f"decode {c}", lambda c=c: run_decode(c)))
        return dataclasses.replace(cfg, decode_n=best[0], decode_warps=best[1], decode_stages=best[2],
                                   decode_per_sm=best[3])

    for name, tile in (("sink_window", 128), ("strided", 64)):
        p = patterns[name]

        def timed(label, fn):
            try:
                fn()
                torch.cuda.synchronize()
                ms = median_ms(fn, rep=50)
            except Exception as e:  # noqa: BLE001
                log(f"tune {name} {label}: FAILED {type(e).__name__}: {str(e)[:120]}")
                return float("inf")
            log(f"tune {name} {label}: {ms:.3f} ms")
            return ms

        cfg = tune_attention(p, tile, timed)  # its tensors are freed on return, before the decode's
        cfg = tune_decode(p, tile, cfg, timed)
        found[tile] = cfg
        log(f"TUNED[({tile}, {head_dim}, 2)] = {cfg!r}")
        torch.cuda.empty_cache()
    return found


def profile_kernels(ns, heads: int, head_dim: int, decode_batch: int, log=print,
                    tuned: dict | None = None) -> dict:
    """Per-kernel CUDA time (ms per call, torch.profiler) of longgen's fwd+bwd on sink+window at
    each N, and of one decode step on the evicted cache: where the time goes. ``tuned``: the
    configs of :func:`tune`, used where they apply."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from ..kernels import sparse_attention, sparse_decode

    p = kernel_patterns(heads)["sink_window"]
    cfg = _tuned(tuned, p, head_dim, torch.bfloat16)
    out = {}

    def kernel_times(fn, reps=3):
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                fn()
            torch.cuda.synchronize()
        times = {}
        for evt in prof.key_averages():
            t = getattr(evt, "device_time_total", None) or getattr(evt, "cuda_time_total", 0)
            if t:
                times[evt.key[:60]] = t / reps / 1000
        return dict(sorted(times.items(), key=lambda kv: -kv[1])[:8])

    for n in ns:
        q, k, v = (torch.randn(1, heads, n, head_dim, device="cuda", dtype=torch.bfloat16).requires_grad_()
                   for _ in range(3))
        do = torch.randn_like(q)
        impls = {"longgen": lambda q, k, v: sparse_attention(q, k, v, p, config=cfg),
                 "flex": flex(p)}
        for impl, f in impls.items():
            key = f"{impl}_fwdbwd_{n}"
            out[key] = kernel_times(lambda f=f, q=q, k=k, v=v, do=do: torch.autograd.grad(f(q, k, v), (q, k, v), do))
            log(f"profile {key}: " + ", ".join(f"{a} {b:.2f} ms" for a, b in out[key].items()))
        del q, k, v, do
    kd, vd = (torch.randn(decode_batch, heads, p.sink_tokens + p.window_tokens, head_dim, device="cuda",
                          dtype=torch.bfloat16) for _ in range(2))
    qd = torch.randn(decode_batch, heads, 1, head_dim, device="cuda", dtype=torch.bfloat16)
    n = ns[-1]
    pos = torch.cat([torch.arange(p.sink_tokens), torch.arange(n - p.window_tokens, n)]).cuda()
    out["decode"] = kernel_times(lambda: sparse_decode(qd, kd, vd, pos, p, config=cfg), reps=10)
    log("profile decode: " + ", ".join(f"{a} {b:.3f} ms" for a, b in out["decode"].items()))
    torch.cuda.empty_cache()
    return out


def run_kernels(args) -> int:
    """The ``kernels`` subcommand."""
    import torch
    import triton

    if not torch.cuda.is_available():
        print("bench kernels needs a CUDA GPU (the CPU interpreter is far too slow to time)", file=sys.stderr)
        return 2
    start = time.time()
    log = lambda s: print(f"[{time.time() - start:6.1f}s] {s}", flush=True)  # noqa: E731
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "triton": triton.__version__, "versions": software_versions(),
               "date": datetime.date.today().isoformat(), "heads": args.heads, "kv_heads": args.kv_heads,
               "head_dim": args.head_dim, "dtype": "bfloat16", "batch": 1, "decode_batch": args.decode_batch,
               "decode_timing": "cuda_graph" if args.cuda_graphs else "eager", "command": command_line()}
    results.update(_device_ceilings())
    log(f"device {results['device']}: copy {results['copy_gbps']:.0f} GB/s, "
        f"bf16 matmul {results['matmul_tflops']:.0f} TFLOP/s")
    dims = ({args.head_dim} if args.tune else set()) | set(args.tune_head_dims)
    tuned = {}  # (tile, head_dim, 2) -> KernelConfig
    if dims:  # first, so that the check below covers the settings that get timed
        for d in sorted(dims, reverse=True):
            found = tune(args.tune_n if d == args.head_dim else min(args.tune_n, 32768), args.heads, d, log)
            tuned.update({(t, d, 2): c for t, c in found.items()})
        results["tuned"] = {str(key): repr(c) for key, c in tuned.items()}
    if not args.skip_check:
        results["check"] = check_on_device(args.heads, args.head_dim, log, tuned)
        log("CORRECTNESS CHECK " + ("passed" if results["check"]["passed"] else "FAILED: see 'check'"))
    if args.profile:
        results["profile"] = profile_kernels(list(args.profile), args.heads,
                                             args.head_dim, args.decode_batch, log, tuned)
    # the budget is the timed rows': a tune or check before them must not use it up
    deadline = time.time() + args.time_budget if args.time_budget else float("inf")
    results["rows"] = time_rows(args.n, args.patterns, args.passes, args.impls, args.heads,
                                args.kv_heads, args.head_dim, args.decode_batch, deadline, log, tuned,
                                args.cuda_graphs)
    write_results(args.out, results)
    png = args.png or str(Path(args.out).with_suffix(".png"))
    save_plot(results, png)
    print(results_table(results))
    log(f"wrote {args.out} and {png}")
    return 0
