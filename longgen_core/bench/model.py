"""Whole-model benchmark: full attention vs the LongGen hybrid on a Llama-2-7B-shaped model.

``python -m longgen_core.bench model --out figures/bench_model.json``

A Llama-2-7B-shaped decoder (hidden 4096, 32 heads = 32 KV heads, head_dim 128, MLP 11008,
vocab 32000, random weights, bf16) with ``--layers`` decoder layers (default 6: 2 full + 4 sparse,
LongGen's middle-third mix; the full 32 layers do not fit the training step at 128K on one GPU).
The full-attention model (transformers' SDPA attention), a deep copy converted with
:func:`longgen_core.models.convert.to_longgen` (sink 64 + window 4096) and, where FlashAttention-4
runs, a third copy of the full model with FA4 as its attention (``full_fa4``,
:func:`~longgen_core.bench.baselines.fa4_attention`: the best full-attention kernel on Hopper) are
timed in the same run, all with :class:`~longgen_core.models.cache.LongGenCache` (all full layers for
the full models), per N:

- ``kv_bytes``: :func:`longgen_core.models.cache.kv_cache_bytes` summed over layers after a prefill of N
  tokens (hybrid rows also carry ``kv_bytes_formula``);
- ``prefill_ms``: one forward of N tokens, ``logits_to_keep=1``, cache on;
- ``decode_ms_b1`` / ``decode_ms_b8``: per token, a loop of ``--decode-steps`` single-token
  forwards on the prefilled cache; batch 8 reuses the batch-1 prefill, its cache tensors repeated
  8 times along the batch (same bytes as a batch-8 prefill, without paying 8 prefills);
- ``decode_graph_ms_b1`` / ``decode_graph_ms_b8``: the serving path of a converted model's
  ``generate()`` on CUDA (:class:`~longgen_core.models.static.StaticDecoder`: preallocated slots,
  one CUDA graph replay per token; the full side is the model converted with every layer full), per
  token over ``--decode-steps`` steps after a prefill of N tokens shared by every row. Each row also
  carries ``host_ms`` (host time to issue one step), ``floor_ms`` (bytes one step must read --
  weights without the embedding table, plus the KV slots it attends -- at the copy bandwidth
  measured in the same run, ``copy_gbps`` in the header) and ``bytes_read``;
- ``train_step_ms``: forward + backward, gradient checkpointing, chunked loss
  (:class:`longgen_core.train.loss.CausalLMLoss`), no optimizer step.

Times are medians of ``--reps`` repeats after one warm-up (``torch.cuda.Event``; on CPU
``time.perf_counter``, for the tests only). A cell that runs out of memory gets ``value: null``
and a note; cells after ``--time-budget`` are skipped the same way.

One function per metric -- :func:`prefill_ms`, :func:`kv_bytes`, :func:`decode_ms`, :func:`decode_graph_ms`,
:func:`train_step_ms` -- and :func:`run_model_bench`, which runs them for both models at every N.
"""

from __future__ import annotations

import copy
import datetime
import math
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import LlamaForCausalLM

from ..jsonio import write_json_atomic
from ..models.base import llama2_7b_config
from ..models.cache import LongGenCache, kv_bytes_formula, kv_cache_bytes
from ..models.convert import layer_map, to_longgen
from ..models.fused import fuse_rms_norms
from ..models.static import StaticDecoder, round_capacity
from ..patterns import sink_window
from ..train.loss import CausalLMLoss
from .results import command_line, copy_gbps, software_versions

METRICS = ("kv_bytes", "prefill_ms", "decode_ms_b1", "decode_ms_b8", "decode_graph_ms_b1", "decode_graph_ms_b8",
           "train_step_ms")
ATTENTIONS = ("full", "hybrid", "full_fa4")  # full_fa4: only where FlashAttention-4 runs


def llama7b_shaped(layers: int, max_positions: int):
    config = llama2_7b_config(max_positions)
    config.num_hidden_layers = layers
    return config


def build_models(config, device, dtype, pattern=None, backend: str = "auto", seed: int = 0,
                 fused_norms: bool = True):
    """(full, hybrid): the same random weights, the hybrid converted in place on a deep copy.

    ``fused_norms``: both models' RMSNorms run as one ``F.rms_norm`` each
    (:func:`~longgen_core.models.fused.fuse_rms_norms`, what the training loop uses): the work both
    models share, the same either way, costs less, so the time left is more the attention's.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            full = LlamaForCausalLM(config)
    full = full.to(dtype).eval()
    full.set_attn_implementation("sdpa")
    if fused_norms:
        fuse_rms_norms(full)  # before the copy: the hybrid (and as_static_full) inherit them
    hybrid = to_longgen(copy.deepcopy(full), pattern=pattern, backend=backend).eval()
    return full, hybrid


def as_static_full(full, backend: str = "auto"):
    """The full model on the hybrid's serving path: a copy converted with every layer full."""
    return to_longgen(copy.deepcopy(full), full_layers=list(range(full.config.num_hidden_layers)),
                      backend=backend).eval()


def decode_bytes_read(model, n: int, batch: int, dtype) -> int:
    """Bytes one decode step reads at context ``n``: every weight but the embedding table (one row
    per token; read whole when the head shares it), plus the KV slots of each layer
    (:func:`kv_bytes_formula`)."""
    embed = model.get_input_embeddings().weight
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if model.get_output_embeddings().weight is not embed:
        weights -= embed.numel() * embed.element_size()
    return weights + sum(kv_bytes_formula(model.config, n, dtype, batch=batch))


def decode_graph_ms(model, ids: torch.Tensor, batch: int, steps: int, timer, reps: int) -> tuple[float, float]:
    """``(GPU ms, host ms)`` per token of :class:`StaticDecoder` steps after a prefill of ``ids``
    ``(1, n)`` shared by ``batch`` rows (CUDA graphs on CUDA, eager steps elsewhere). Host ms: the
    time to issue ``steps`` steps, measured without waiting for the GPU."""
    n, cuda = ids.shape[1], ids.device.type == "cuda"
    decoder = StaticDecoder(model, batch, round_capacity(n + steps * (reps + 2) + 1), graphs=cuda)
    decoder.prefill(ids)
    decoder.step()  # captures the graph

    def loop():
        for _ in range(steps):
            decoder.step()
    gpu = _median_ms(loop, reps, timer) / steps  # the timer leaves the GPU idle
    start = time.perf_counter()
    loop()
    host = (time.perf_counter() - start) * 1e3 / steps
    if cuda:
        torch.cuda.synchronize()
    return gpu, host


def _timer(device):
    cuda = torch.device(device).type == "cuda"

    def run(fn):
        if cuda:
            torch.cuda.synchronize()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            return a.elapsed_time(b)
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    return run


def _median_ms(fn, reps, timer):
    timer(fn)  # warm-up (compiles, autotunes, allocator)
    return statistics.median(timer(fn) for _ in range(reps))


def _decode_attention_backends():
    """SDPA backends for decoding: flash / memory-efficient. cuDNN attention (SDPA's first choice on
    Hopper) builds an execution plan for every new key length, ~6 ms of host time per layer and
    token measured on an H100, which would make decoding measure plan building."""
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def _is_oom(err):
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


# ---------------------------------------------------------------------- one function per metric
def prefill(model, ids: torch.Tensor) -> LongGenCache:
    """One forward of ``ids`` ``(B, N)`` into a new cache (``logits_to_keep=1``); returns the cache.

    Both models get :class:`LongGenCache`: full layers keep every token in a buffer that grows in
    steps (one token written per decode step; ``DynamicCache`` copies the whole history with
    ``torch.cat`` every step), sparse layers keep sink + window slots.
    """
    cache = LongGenCache(model.config)
    with torch.inference_mode():
        model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return cache


def prefill_ms(model, ids: torch.Tensor, timer, reps: int) -> tuple[float, LongGenCache]:
    """Median ms of :func:`prefill` over ``reps`` runs after a warm-up, and the last run's cache."""
    last = {}

    def run():
        last["cache"] = prefill(model, ids)
    return _median_ms(run, reps, timer), last["cache"]


def kv_bytes(cache: LongGenCache) -> int:
    """Bytes of K and V the cache holds, summed over layers."""
    return sum(kv_cache_bytes(cache))


def decode_ms(model, cache: LongGenCache, token: torch.Tensor, steps: int, timer, reps: int) -> float:
    """Median ms per token of ``steps`` single-token forwards of ``token`` ``(B, 1)`` on ``cache``
    (which grows by ``steps`` tokens per run, warm-up included)."""
    def loop():
        with torch.inference_mode(), _decode_attention_backends():
            for _ in range(steps):
                model(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return _median_ms(loop, reps, timer) / steps


def train_step_ms(model, ids: torch.Tensor, chunk: int, timer, reps: int) -> float:
    """Median ms of forward + backward on ``ids`` ``(B, N)`` (gradient checkpointing, chunked loss
    of ``chunk`` positions, no optimizer step); the model is left in eval mode without gradients."""
    loss_fn = CausalLMLoss(model, chunk=chunk)
    labels = ids.clone()

    def step():
        loss = loss_fn(ids, labels).sum()
        loss.backward()
        model.zero_grad(set_to_none=True)

    model.train()
    with warnings.catch_warnings():  # renamed activation_checkpointing_* in v5
        warnings.simplefilter("ignore", FutureWarning)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        return _median_ms(step, reps, timer)
    finally:
        model.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model.gradient_checkpointing_disable()
        model.eval()


# ---------------------------------------------------------------------- the driver
@dataclass
class _Plan:
    """The settings every cell shares (see :func:`run_model_bench`)."""

    timer: object
    reps: int
    decode_steps: int
    decode_batch: int
    chunk: int
    dtype: torch.dtype
    metrics: tuple  # the metric names asked for
    is_cuda: bool
    copy_gbps: float | None = None  # measured once per run, for the decode floor

    def wants(self, metric: str) -> bool:
        """``decode_ms_b8`` (``decode_graph_ms_b8``) in ``metrics`` asks for the decode at
        ``decode_batch``, whatever it is."""
        return metric in self.metrics or any(metric == f"{stem}_b{self.decode_batch}" and f"{stem}_b8" in self.metrics
                                             for stem in ("decode_ms", "decode_graph_ms"))

    def free(self) -> None:
        if self.is_cuda:
            torch.cuda.empty_cache()


class _Recorder:
    """Rows and notes of the results dict; runs each cell unless past the deadline, and records an
    out-of-memory cell as ``value: None`` instead of raising."""

    def __init__(self, results: dict, deadline: float, plan: _Plan, log):
        self.results, self.deadline, self.plan, self.log = results, deadline, plan, log

    def add(self, attention: str, n: int, metric: str, value, **extra) -> None:
        self.results["rows"].append({"attention": attention, "n": n, "metric": metric, "value": value, **extra})
        self.log(f"{attention:6s} N={n:7d} {metric:14s} {value}")

    def cell(self, attention: str, n: int, metric: str, measure) -> None:
        """Add the row of ``measure()``, which returns ``{"value": ..., **extra}``."""
        if not self.plan.wants(metric):
            return
        if time.time() > self.deadline:
            self.skip(attention, n, metric, "time budget", "skipped (time budget)")
            return
        try:
            self.add(attention, n, metric, **measure())
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not _is_oom(err):
                raise
            self.skip(attention, n, metric, "out of memory", "out of memory")
        finally:
            self.plan.free()

    def skip(self, attention: str, n: int, metric: str, why: str, note: str) -> None:
        self.add(attention, n, metric, None, skipped=why)
        self.results["notes"].append(f"{attention} N={n} {metric}: {note}")


class _Cells:
    """The cells of one model at one N, as ``{"value": ..., **extra}`` rows for :class:`_Recorder`.

    The KV and decode cells share the cache of a prefill: the one ``prefill_ms`` left, else one
    made on first use. ``ids``: ``(1, N)`` prompt tokens; ``token``: ``(1, 1)`` the decoded token.
    """

    def __init__(self, model, ids: torch.Tensor, token: torch.Tensor, plan: _Plan, formula: bool,
                 static_model=None):
        self.model, self.ids, self.token, self.plan, self.formula = model, ids, token, plan, formula
        self.static_model = static_model if static_model is not None else model  # the graphed path's model
        self.cache = None

    def prefilled(self) -> LongGenCache:
        if self.cache is None:
            self.cache = prefill(self.model, self.ids)
        return self.cache

    def prefill_ms(self) -> dict:
        ms, self.cache = prefill_ms(self.model, self.ids, self.plan.timer, self.plan.reps)
        return {"value": ms}

    def kv_bytes(self) -> dict:
        row = {"value": kv_bytes(self.prefilled())}
        if self.formula:
            row["kv_bytes_formula"] = sum(kv_bytes_formula(self.model.config, self.ids.shape[1], self.plan.dtype))
        return row

    def decode_ms_b1(self) -> dict:
        return {"value": self._decode(self.prefilled(), 1), "context": self.ids.shape[1]}

    def decode_ms_at_batch(self) -> dict:
        """Decode at ``decode_batch`` on the batch-1 prefill repeated along the batch: the bytes of
        a batch prefill without paying for it. ``context``: tokens in the cache before the loop."""
        cache, batch = self.prefilled(), self.plan.decode_batch
        context = cache.get_seq_length()
        cache.batch_repeat_interleave(batch)
        return {"value": self._decode(cache, batch), "context": context, "batch": batch}

    def decode_graph_ms(self, batch: int) -> dict:
        n = self.ids.shape[1]
        gpu, host = decode_graph_ms(self.static_model, self.ids, batch, self.plan.decode_steps, self.plan.timer,
                                    self.plan.reps)
        read = decode_bytes_read(self.static_model, n, batch, self.plan.dtype)
        floor = None if not self.plan.copy_gbps else read / (self.plan.copy_gbps * 1e9) * 1e3
        return {"value": gpu, "host_ms": host, "floor_ms": floor, "bytes_read": read, "context": n,
                "batch": batch}

    def train_step_ms(self) -> dict:
        return {"value": train_step_ms(self.model, self.ids, self.plan.chunk, self.plan.timer, self.plan.reps)}

    def _decode(self, cache: LongGenCache, batch: int) -> float:
        token = self.token.expand(batch, 1).contiguous()
        return decode_ms(self.model, cache, token, self.plan.decode_steps, self.plan.timer, self.plan.reps)


def _measure(rec: _Recorder, attention: str, model, ids: torch.Tensor, token: torch.Tensor,
             static_model=None) -> None:
    """Every wanted metric of ``model`` at ``N = ids.shape[1]``, in the order prefill, KV bytes,
    decode at batch 1 and ``decode_batch`` (transformers' loop, then the graphed path of
    ``static_model``), training step (the KV cache freed before it)."""
    n, plan = ids.shape[1], rec.plan
    cells = _Cells(model, ids, token, plan, formula=attention == "hybrid", static_model=static_model)
    rec.cell(attention, n, "prefill_ms", cells.prefill_ms)
    rec.cell(attention, n, "kv_bytes", cells.kv_bytes)
    rec.cell(attention, n, "decode_ms_b1", cells.decode_ms_b1)
    rec.cell(attention, n, f"decode_ms_b{plan.decode_batch}", cells.decode_ms_at_batch)
    cells.cache = None
    plan.free()
    if static_model is not None:  # the graphed serving path exists for converted models only
        for batch in dict.fromkeys((1, plan.decode_batch)):
            rec.cell(attention, n, f"decode_graph_ms_b{batch}", lambda: cells.decode_graph_ms(batch))
    rec.cell(attention, n, "train_step_ms", cells.train_step_ms)


def _header(config, hybrid, pattern, dtype, device: str, reps: int, decode_steps: int, decode_batch: int,
            chunk: int) -> dict:
    """The results dict before any row: device, date, model shape and settings, versions, notes."""
    layers = config.num_hidden_layers
    results = {
        "device": torch.cuda.get_device_name() if torch.device(device).type == "cuda" else "cpu",
        "date": datetime.date.today().isoformat(), "layers": layers,
        "layer_map": layer_map(hybrid.config), "full_layers": hybrid.config.longgen["full_layers"],
        "pattern": pattern.name if hasattr(pattern, "name") else repr(pattern),
        "shape": {"hidden": config.hidden_size, "heads": config.num_attention_heads,
                  "kv_heads": config.num_key_value_heads,
                  "head_dim": config.hidden_size // config.num_attention_heads,
                  "mlp": config.intermediate_size, "vocab": config.vocab_size},
        "dtype": str(dtype).replace("torch.", ""), "reps": reps, "decode_steps": decode_steps,
        "decode_batch": decode_batch, "loss_chunk": chunk, "rows": [], "notes": [],
    }
    results.update(software_versions())
    results["notes"].append(
        f"{layers} decoder layers of Llama-2-7B shape (random weights), layer map "
        f"{results['layer_map']} (F = full attention, s = sink+window); 32 layers do not fit one GPU "
        "for the 128K training step, and the 1/3 full mix is kept.")
    results["notes"].append(
        f"decode_ms_b{decode_batch}: the batch-1 prefill cache repeated {decode_batch}x along the batch "
        "(same bytes as a batch-8 prefill of N tokens), then the decode loop at that batch.")
    results["notes"].append("decode: both models use LongGenCache (full layers append into a growing buffer, "
                            "sparse layers overwrite their oldest window slot) and SDPA's flash / "
                            "memory-efficient backends (cuDNN re-plans for every new key length).")
    results["notes"].append("decode_graph_ms_*: the converted models' generate() path on CUDA (preallocated "
                            "slots, one CUDA graph replay per token; full = every layer full, the same Triton "
                            "decode kernel); host_ms = time to issue a step; floor_ms = bytes_read at copy_gbps "
                            "(bytes read + written by a copy).")
    results["notes"].append("times: median of reps after one warm-up; train_step_ms = forward + backward "
                            "(gradient checkpointing, chunked loss), no optimizer step.")
    return results


def run_model_bench(lengths, layers: int = 6, device: str = "cuda", dtype=torch.bfloat16, config=None,
                    pattern=None, backend: str = "auto", reps: int = 3, decode_steps: int = 16,
                    decode_batch: int = 8, chunk: int = 4096, metrics=METRICS, time_budget=None,
                    log=print, fused_norms: bool = True, with_fa4: bool = True) -> dict:
    """Measure every (attention, N, metric) cell; return the results dict (see the module doc).

    Example (CPU, a tiny model; times mean nothing there)::

        >>> res = run_model_bench([64], device="cpu", dtype=torch.float32, config=tiny_config,
        ...                       pattern=sink_window(4, 16), reps=1, decode_steps=2)   # doctest: +SKIP
        >>> sorted({r["metric"] for r in res["rows"]})                                 # doctest: +SKIP
        ['decode_ms_b1', 'decode_ms_b8', 'kv_bytes', 'prefill_ms', 'train_step_ms']
    """
    start = time.time()
    deadline = start + time_budget if time_budget else math.inf
    pattern = pattern if pattern is not None else sink_window(64, 4096)
    if config is None:
        config = llama7b_shaped(layers, max(lengths) + decode_steps * (reps + 4) + 16)
    full, hybrid = build_models(config, device, dtype, pattern, backend, fused_norms=fused_norms)
    results = _header(config, hybrid, pattern, dtype, device, reps, decode_steps, decode_batch, chunk)
    results["backend"] = backend  # the hybrid's attention backend (models.attention.ATTN_IMPLEMENTATIONS)
    results["fused_norms"] = fused_norms
    if fused_norms:
        results["notes"].append("both models: RMSNorm as one F.rms_norm call (fuse_rms_norms, as in training).")
    plan = _Plan(_timer(device), reps, decode_steps, decode_batch, chunk, dtype, metrics,
                 torch.device(device).type == "cuda")
    rec = _Recorder(results, deadline, plan, lambda s: log(f"[{time.time() - start:6.1f}s] {s}"))
    graphed = any(plan.wants(f"decode_graph_ms_b{b}") for b in (1, decode_batch))
    static_full = as_static_full(full, backend) if graphed else None
    if graphed and plan.is_cuda:
        plan.copy_gbps = results["copy_gbps"] = round(copy_gbps(device), 1)
    models = [("full", full, static_full), ("hybrid", hybrid, hybrid)]
    full_fa4 = _full_on_fa4(full, device, results["notes"]) if with_fa4 else None
    if full_fa4 is not None:
        models.append(("full_fa4", full_fa4, None))
    gen = torch.Generator().manual_seed(1)
    for n in lengths:
        ids = torch.randint(0, config.vocab_size, (1, n), generator=gen).to(device)
        token = torch.randint(0, config.vocab_size, (1, 1), generator=gen).to(device)
        for attention, model, static_model in models:
            _measure(rec, attention, model, ids, token, static_model)
            plan.free()
    results["ratios"] = ratios(results)
    if full_fa4 is not None:
        results["ratios_full_fa4"] = ratios(results, "full_fa4")
    results["wall_s"] = round(time.time() - start, 1)
    return results


def _full_on_fa4(full, device, notes: list):
    """A copy of the full model whose attention runs FlashAttention-4
    (:func:`~longgen_core.bench.baselines.fa4_attention`), or ``None`` with a note saying why
    it cannot run here."""
    from .baselines import register_fa4_attention, unavailable

    why = unavailable("fa4", device)
    if why:
        notes.append(f"full attention through FlashAttention-4 not measured: {why}")
        return None
    model = copy.deepcopy(full)
    model.set_attn_implementation(register_fa4_attention())
    notes.append("full_fa4: the full model with FlashAttention-4 (flash_attn.cute) as its attention, through "
                 "transformers' loop (no graphed decode path: that exists for converted models).")
    return model


def ratios(results: dict, baseline: str = "full") -> dict:
    """``{metric: {n: baseline / hybrid}}`` (speed-up for times, reduction factor for bytes);
    ``baseline``: ``"full"`` (SDPA) or ``"full_fa4"``."""
    by = {(r["attention"], r["n"], r["metric"]): r["value"] for r in results["rows"]}
    out: dict = {}
    for (att, n, metric), v in by.items():
        if att != "hybrid":
            continue
        f = by.get((baseline, n, metric))
        if f is not None and v:
            out.setdefault(metric, {})[str(n)] = f / v
    return out


def results_table(results: dict) -> str:
    rows = [r for r in results["rows"]]
    ns = sorted({r["n"] for r in rows})
    by = {(r["attention"], r["n"], r["metric"]): r["value"] for r in rows}
    metrics = [m for m in METRICS if any(r["metric"] == m for r in rows)]
    lines = [f"{'metric':15s} {'attn':7s}" + "".join(f"{n // 1024:>11d}K" for n in ns)]
    attentions = [a for a in ATTENTIONS if any(r["attention"] == a for r in rows)]
    for m in metrics:
        for att in attentions:
            cells = []
            for n in ns:
                v = by.get((att, n, m))
                cells.append(f"{'-':>12s}" if v is None else
                             (f"{v / 2**30:10.2f}Gi" if m == "kv_bytes" else f"{v:12.2f}"))
            lines.append(f"{m:15s} {att:7s}" + "".join(cells))
        cells = []
        for n in ns:
            f, h = by.get(("full", n, m)), by.get(("hybrid", n, m))
            if f is None or not h:
                cells.append(f"{'-':>12s}")
            elif m == "kv_bytes":
                cells.append(f"{100 * (h / f - 1):+11.1f}%")
            else:
                cells.append(f"{f / h:11.2f}x")
        lines.append(f"{m:15s} {'ratio':7s}" + "".join(cells))
    return "\n".join(lines)


def save_plot(results: dict, path) -> None:
    """PNG: full / hybrid per metric against N (speed-up for times, reduction factor for KV)."""
    import matplotlib  # optional on GPU nodes: imported where a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (metric, by_n) in enumerate(sorted(results.get("ratios", {}).items())):
        pts = sorted((int(n), v) for n, v in by_n.items())
        label = metric + (" (full/hybrid bytes)" if metric == "kv_bytes" else " (speed-up)")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", color=f"C{i}", ms=4, label=label)
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length N")
    ax.set_ylabel("full / hybrid")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"{results.get('device', '?')}: Llama-2-7B shape, {results.get('layers')} layers "
                 f"({results.get('layer_map', '')}), bf16", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_cli(args) -> int:
    """The ``model`` subcommand of :mod:`longgen_core.bench.cli`, which has already refused to start
    without CUDA unless given ``--device cpu`` (:func:`longgen_core.devices.refuse_without_cuda`)."""
    device = args.device or "cuda"
    results = run_model_bench(list(args.lengths), layers=args.layers, device=device, reps=args.reps,
                              decode_steps=args.decode_steps, decode_batch=args.decode_batch,
                              chunk=args.loss_chunk, metrics=args.metrics,
                              time_budget=args.time_budget, log=lambda s: print(s, flush=True),
                              fused_norms=not args.unfused_norms, backend=args.backend)
    results["command"] = command_line()
    write_json_atomic(args.out, results)
    png = args.png or str(Path(args.out).with_suffix(".png"))
    try:
        save_plot(results, png)
    except Exception as err:  # noqa: BLE001 -- the JSON is what matters; the PNG can be redrawn
        print(f"no figure: {err!r}", file=sys.stderr)
    print(results_table(results))
    print(f"wrote {args.out} and {png}")
    return 0
