"""Where the time goes: a first-order cost model of the hybrid, and Amdahl's bound on its speed-up.

The hybrid changes one thing: the attention of the sparse layers. Everything else -- the Q/K/V/O
projections and the MLP of every layer, the full layers' attention, the output head -- costs the
same in both models. Amdahl's law then says how much the whole model can gain:

    speedup = 1 / ((1 - f) + f / s)        bound (s -> infinity) = 1 / (1 - f)

``f`` is the share of the full model's cost spent in the attention of the layers that become
sparse, ``s`` how much cheaper that attention gets (full causal vs sink + window). As ``N`` grows,
attention dominates and the bound tends to ``layers / full_layers`` (3x for the middle third).

Costs per phase (``batch`` sequences of ``n`` tokens, every matmul at the same throughput):

- ``prefill``: forward FLOPs. Linear layers ``2 * params * n``, attention from
  :func:`~longgen_core.patterns.attention_flops` (kept query-key pairs only), the head for one
  position (``logits_to_keep=1``).
- ``train``: forward + backward with gradient checkpointing (each layer's forward runs twice):
  linear and head ``8 * params * n``, attention 2 forwards + a backward (2.5 forwards).
- ``decode``: bytes read per generated token (memory-bound): every weight once, plus the K/V
  each layer holds after ``n`` tokens for every sequence (:func:`~longgen_core.models.cache.kv_bytes_formula`).

Example (Llama-2-7B, middle 11 of 32 layers full, sink 64 + window 4096, prefill at 128K)::

    >>> from longgen_core.models.convert import convert_config
    >>> from longgen_core.models.base import llama2_7b_config
    >>> m = amdahl(convert_config(llama2_7b_config(131072)), 131072, "prefill")
    >>> f"f={m['f']:.3f} s={m['s']:.1f} speedup={m['speedup']:.2f}x bound={m['bound']:.2f}x"
    'f=0.477 s=16.0 speedup=1.81x bound=1.91x'
"""

from __future__ import annotations

import torch

from ..formatting import format_table, format_tokens
from ..patterns import Pattern, attention_flops, full_causal
from .targets import PAPER_N

# longgen_core.models (which loads transformers) and plots (matplotlib) are imported inside the
# functions that use them: report.py imports this module for MISSING without either.

__all__ = ["PHASES", "PARTS", "layer_params", "layer_costs", "model_cost", "amdahl", "pattern_from_name",
           "bench_config", "decode_floor_ms", "measured_vs_model", "comparison_text", "decode_rows",
           "plot_cost_breakdown", "plot_measured", "plot_decode"]

PHASES = ("prefill", "train", "decode")
MISSING = "—"  # a value the results JSON does not have (out of memory, skipped, not measured)
UNITS = {"prefill": "FLOP", "train": "FLOP", "decode": "byte"}



def _dims(config) -> tuple[int, int, int, int, int, int]:
    hidden, heads = config.hidden_size, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return hidden, heads, config.num_key_value_heads, head_dim, config.intermediate_size, config.vocab_size


def layer_params(config) -> int:
    """Weights of the matmuls of one decoder layer: Q, K, V, O projections and the gated MLP.

    Example: Llama-2-7B -> 4 * 4096^2 + 3 * 4096 * 11008 = 202,375,168.
    """
    hidden, heads, kv_heads, head_dim, mlp, _ = _dims(config)
    return hidden * head_dim * (2 * heads + 2 * kv_heads) + 3 * hidden * mlp


def _check(phase: str, n: int, batch: int) -> None:
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {list(PHASES)}, got {phase!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")


def layer_costs(config, n: int, phase: str = "prefill", batch: int = 1,
                patterns: list[Pattern] | None = None, dtype: torch.dtype = torch.bfloat16) -> list[dict]:
    """One row per decoder layer: ``{"layer", "kind", "linear", "attention"}`` in the phase's unit.

    ``patterns`` defaults to the config's own layer patterns (all full for an unconverted config);
    pass ``[full_causal()] * layers`` to cost the full-attention model of a converted config.
    """
    from ..models.cache import kv_slots_formula
    from ..models.settings import layer_patterns

    _check(phase, n, batch)
    patterns = patterns if patterns is not None else layer_patterns(config)
    if len(patterns) != config.num_hidden_layers:
        raise ValueError(f"patterns must have one entry per layer ({config.num_hidden_layers}), got {len(patterns)}")
    _, heads, kv_heads, head_dim, _, _ = _dims(config)
    params = layer_params(config)
    elem = torch.empty(0, dtype=dtype).element_size()
    rows, seen = [], {}  # one attention cost per distinct pattern (the layers share two)
    for i, p in enumerate(patterns):
        key = (p.kind, p.name)
        if key not in seen:
            if phase == "decode":
                seen[key] = batch * 2 * kv_heads * head_dim * elem * kv_slots_formula(p, n, heads)
            else:
                seen[key] = attention_flops(p, n, heads, head_dim, batch=batch) * (4.5 if phase == "train" else 1)
        attention = seen[key]
        if phase == "decode":
            linear = params * elem
        else:
            linear = 2 * params * n * batch * (4 if phase == "train" else 1)
        rows.append({"layer": i, "kind": "full" if p.kind == "full" else "sparse",
                     "linear": float(linear), "attention": float(attention)})
    return rows


def _head_cost(config, n, phase, batch, dtype) -> float:
    hidden, *_, vocab = _dims(config)
    if phase == "decode":
        return float(hidden * vocab * torch.empty(0, dtype=dtype).element_size())
    if phase == "prefill":
        return float(2 * hidden * vocab * batch)  # logits of the last position only
    return float(8 * hidden * vocab * n * batch)  # chunked loss, checkpointed: 2 forwards + backward


PARTS = ("linear", "attention (full layers)", "attention (sparse layers)", "head")


def _parts(rows: list[dict], head: float, sparse_layers: set[int]) -> dict:
    out = {"linear": sum(r["linear"] for r in rows),
           "attention (full layers)": sum(r["attention"] for r in rows if r["layer"] not in sparse_layers),
           "attention (sparse layers)": sum(r["attention"] for r in rows if r["layer"] in sparse_layers),
           "head": head}
    out["total"] = sum(out.values())
    return out


def _sparse_layers(config) -> set[int]:
    from ..models.settings import layer_patterns

    return {i for i, p in enumerate(layer_patterns(config)) if p.kind != "full"}


def model_cost(config, n: int, phase: str = "prefill", batch: int = 1, full: bool = False,
               dtype: torch.dtype = torch.bfloat16) -> dict:
    """Whole-model cost split into :data:`PARTS` plus ``total`` (FLOPs, or bytes for decode).

    ``full=True`` costs the same model with every layer full; its "sparse layers" are still the
    layers the hybrid makes sparse (the part Amdahl's law is about).
    """
    patterns = [full_causal()] * config.num_hidden_layers if full else None
    rows = layer_costs(config, n, phase, batch, patterns, dtype)
    return _parts(rows, _head_cost(config, n, phase, batch, dtype), _sparse_layers(config))


def amdahl(config, n: int, phase: str = "prefill", batch: int = 1, dtype: torch.dtype = torch.bfloat16) -> dict:
    """Amdahl's law for a converted ``config`` against the same model with every layer full.

    Returns ``full`` and ``hybrid`` (total cost), ``f`` (share of the full model's cost in the
    attention of the layers the hybrid makes sparse), ``s`` (how much cheaper that part gets),
    ``speedup`` (= full / hybrid = ``1 / ((1 - f) + f / s)``), ``bound`` (``1 / (1 - f)``: those
    layers' attention free) and ``limit`` (``layers / full layers``: the bound as N grows).
    """
    full = model_cost(config, n, phase, batch, full=True, dtype=dtype)
    hybrid = model_cost(config, n, phase, batch, dtype=dtype)
    changed, after = full["attention (sparse layers)"], hybrid["attention (sparse layers)"]
    f = changed / full["total"]
    n_full = config.num_hidden_layers - len(_sparse_layers(config))
    return {"phase": phase, "n": n, "batch": batch, "unit": UNITS[phase], "full": full["total"],
            "hybrid": hybrid["total"], "f": f, "s": changed / after if after else float("inf"),
            "speedup": full["total"] / hybrid["total"], "bound": 1 / (1 - f),
            "limit": config.num_hidden_layers / n_full if n_full else float("inf")}


# The benchmark JSONs store a pattern by its name; a pattern's names and dicts are read in one place.
pattern_from_name = Pattern.from_name


def bench_config(results: dict):
    """The converted config of the model a ``bench model`` JSON measured (shape, layers, map, pattern)."""
    from ..models.convert import convert_config
    from ..models.base import llama2_7b_config

    shape = results["shape"]
    config = llama2_7b_config(max(r["n"] for r in results["rows"]) + 1024)
    config.hidden_size, config.num_attention_heads = shape["hidden"], shape["heads"]
    config.num_key_value_heads, config.head_dim = shape["kv_heads"], shape["head_dim"]
    config.intermediate_size, config.vocab_size = shape["mlp"], shape["vocab"]
    config.num_hidden_layers = results["layers"]
    spec = results["pattern"]
    pattern = Pattern.from_dict(spec) if isinstance(spec, dict) else Pattern.from_name(spec, shape["heads"])
    return convert_config(config, full_layers=list(results["full_layers"]), pattern=pattern)


def decode_floor_ms(config, n: int, batch: int, gbps: float, full: bool = False) -> float:
    """Milliseconds per decode step if it only read its bytes at ``gbps`` GB/s (a lower bound)."""
    return model_cost(config, n, "decode", batch, full=full)["total"] / (gbps * 1e9) * 1e3


# ---------------------------------------------------------------------- measured vs model

def _metrics(results: dict) -> list[tuple[str, str, str | None, int, str]]:
    """(JSON metric, label, phase, batch, key in the paper/target dicts) of a ``bench model`` JSON."""
    b = results.get("decode_batch", 8)
    return [("kv_bytes", "KV cache", None, 1, "kv_saving"),
            ("prefill_ms", "prefill", "prefill", 1, "prefill_speedup"),
            ("decode_ms_b1", "decode b1", "decode", 1, "decode_speedup"),
            (f"decode_ms_b{b}", f"decode b{b}", "decode", b, "decode_speedup"),
            ("train_step_ms", "train step", "train", 1, "train_speedup")]


def measured_vs_model(results: dict) -> list[dict]:
    """One row per (metric, N) of a ``bench model`` JSON, read as it is.

    Keys: ``metric``, ``label``, ``key`` (the paper/target key), ``n``, ``full``, ``hybrid`` (the
    stored values, ``None`` where missing), ``measured`` (full / hybrid), ``model`` (the cost model
    of the benchmarked model: :func:`amdahl`'s speed-up, or full / hybrid KV bytes), ``bound``
    (Amdahl's bound; for KV bytes ``layers / full layers``).
    """
    config = bench_config(results)
    layers = config.num_hidden_layers
    limit = layers / (layers - len(_sparse_layers(config)))
    by = {(r["attention"], r["n"], r["metric"]): r["value"] for r in results["rows"]}
    ns = sorted({r["n"] for r in results["rows"]})
    out = []
    for metric, label, phase, batch, key in _metrics(results):
        if not any(r["metric"] == metric for r in results["rows"]):
            continue
        for n in ns:
            f, h = by.get(("full", n, metric)), by.get(("hybrid", n, metric))
            if phase is None:
                kv = [sum(r["attention"] for r in layer_costs(config, n, "decode", patterns=pats))
                      for pats in ([full_causal()] * layers, None)]
                model, bound = kv[0] / kv[1], limit
            else:
                a = amdahl(config, n, phase, batch)
                model, bound = a["speedup"], a["bound"]
            out.append({"metric": metric, "label": label, "key": key, "n": n, "full": f, "hybrid": h,
                        "measured": f / h if f is not None and h else None, "model": model, "bound": bound})
    return out


def comparison_text(rows: list[dict], paper: dict, targets: dict, paper_n: int = PAPER_N) -> str:
    """Text table of :func:`measured_vs_model` rows beside the paper's numbers and the targets
    (on the ``paper_n`` rows). KV as a reduction (``1 - hybrid / full``), times as full / hybrid."""
    flagged = False

    def ratio(r, v):
        if v is None:
            return MISSING
        return f"-{1 - 1 / v:.1%}" if r["metric"] == "kv_bytes" else f"{v:.2f}x"

    def ref(r, d, prefix=""):
        if r["n"] != paper_n or d.get(r["key"]) is None:
            return ""
        return f"-{d[r['key']]:.0%}" if r["metric"] == "kv_bytes" else f"{prefix}{d[r['key']]}x"

    table = []
    for r in rows:
        unit = (lambda v: f"{v / 2**30:.2f} GiB") if r["metric"] == "kv_bytes" else (lambda v: f"{v:.2f} ms")
        above = r["measured"] is not None and r["measured"] > r["bound"] * (1 + 1e-9)
        flagged |= above
        table.append({"metric": r["label"], "N": format_tokens(r["n"]),
                      "full": MISSING if r["full"] is None else unit(r["full"]),
                      "hybrid": MISSING if r["hybrid"] is None else unit(r["hybrid"]),
                      "measured": ratio(r, r["measured"]) + (" !" if above else ""),
                      "cost model": ratio(r, r["model"]), "Amdahl bound": ratio(r, r["bound"]),
                      "paper": ref(r, paper), "target": ref(r, targets, ">=")})

    text = format_table(table)
    if flagged:
        text += "\n! measured above the cost model's Amdahl bound"
    if any(r["full"] is None or r["hybrid"] is None for r in rows):
        text += f"\n{MISSING} no value in the JSON (see its notes)"
    return text


def decode_rows(results: dict, gbps: float | None = None) -> list[dict]:
    """Decode time per token against N, per batch: the stored ms of both models, their change
    from the previous N, and (with ``gbps``) the time to read the step's bytes once at that rate."""
    config = bench_config(results)
    by = {(r["attention"], r["n"], r["metric"]): r["value"] for r in results["rows"]}
    ns = sorted({r["n"] for r in results["rows"]})
    out = []
    for metric, _, phase, batch, _ in _metrics(results):
        if phase != "decode":
            continue
        prev = {}
        for n in ns:
            row = {"batch": batch, "N": format_tokens(n)}
            for att in ("full", "hybrid"):
                v = by.get((att, n, metric))
                row[f"{att} ms"] = MISSING if v is None else f"{v:.2f}"
                row[f"{att} change"] = MISSING if v is None or prev.get(att) is None else f"{v - prev[att]:+.2f}"
                prev[att] = v
                if gbps:
                    row[f"{att} floor ms"] = f"{decode_floor_ms(config, n, batch, gbps, full=att == 'full'):.2f}"
            out.append(row)
    return out


# ---------------------------------------------------------------------- pictures

def plot_cost_breakdown(config, lengths, phase: str = "prefill", batch: int = 1, ax=None):
    """Stacked bars per N: the full model and the hybrid, split into :data:`PARTS`, scaled so the
    full model is 1 (the hybrid bar's height is ``1 / speedup``)."""
    import matplotlib.pyplot as plt

    fig, ax = (plt.subplots(figsize=(6.4, 3.6)) if ax is None else (ax.figure, ax))
    colors = dict(zip(PARTS, ("#9ecae1", "#08306b", "#f2a65a", "#bbbbbb")))
    ticks, labels = [], []
    for i, n in enumerate(lengths):
        costs = {"full": model_cost(config, n, phase, batch, full=True), "hybrid": model_cost(config, n, phase, batch)}
        for j, name in enumerate(("full", "hybrid")):
            x, bottom = 2.5 * i + j, 0.0
            for part in PARTS:
                h = costs[name][part] / costs["full"]["total"]
                ax.bar(x, h, bottom=bottom, color=colors[part], edgecolor="white", width=0.85,
                       label=part if x == 0 else None)
                bottom += h
            ticks.append(x)
            labels.append(f"{name}\n{format_tokens(n)}")
    ax.set_xticks(ticks, labels, fontsize=7)
    ax.set_ylabel(f"{UNITS[phase]}s (full model = 1)")
    ax.set_ylim(0, 1.3)
    ax.set_title(f"{phase}{f' (batch {batch})' if batch > 1 else ''}: where the cost goes "
                 f"({config.num_hidden_layers} layers)", fontsize=9)
    ax.legend(fontsize=6, loc="upper center", ncol=2)
    return fig


def plot_measured(rows: list[dict], paper: dict | None = None, targets: dict | None = None,
                  paper_n: int = PAPER_N):
    """One panel per metric of :func:`measured_vs_model`: measured full / hybrid against the cost
    model and Amdahl's bound over N; the paper and the target at ``paper_n`` when the rows reach it
    (KV as full / hybrid bytes, so a 62% saving is drawn at 1 / 0.38)."""
    import matplotlib.pyplot as plt

    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    cols = min(3, len(metrics))
    fig, axes = plt.subplots(-(-len(metrics) // cols), cols, figsize=(3.4 * cols, 2.9 * -(-len(metrics) // cols)),
                             squeeze=False)
    styles = {"measured": ("-o", "C0", "measured"), "model": ("--s", "C1", "cost model"),
              "bound": (":", "C3", "Amdahl bound")}
    for ax, metric in zip(axes.flat, metrics):
        mine = [r for r in rows if r["metric"] == metric]
        ns = [r["n"] for r in mine]
        for key, (style, color, label) in styles.items():
            pts = [(r["n"], r[key]) for r in mine if r[key] is not None]
            if pts:
                ax.plot(*zip(*pts), style, color=color, ms=4, label=label)
        for d, marker, color, label in ((paper, "*", "k", "paper (7B, 128K)"), (targets, "^", "C2", "target")):
            value = (d or {}).get(mine[0]["key"])
            if value is not None and paper_n in ns:
                y = 1 / (1 - value) if metric == "kv_bytes" else value
                ax.plot([paper_n], [y], marker, color=color, ms=9, ls="none", label=label)
        ax.axhline(1.0, color="grey", lw=0.6)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [format_tokens(n) for n in ns])
        ax.minorticks_off()
        ax.set_ylim(bottom=0)
        ax.set_title(mine[0]["label"] + (" (bytes)" if metric == "kv_bytes" else ""), fontsize=9)
        ax.grid(alpha=0.3)
    axes.flat[0].set_ylabel("full / hybrid")
    axes.flat[0].legend(fontsize=6)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def plot_decode(results: dict, gbps: float | None = None):
    """Decode time per step against N for both models and each stored batch (log scale); with
    ``gbps``, the floors of :func:`decode_floor_ms` as thin dotted lines of the same colour."""
    import matplotlib.pyplot as plt

    config = bench_config(results) if gbps else None
    by = {(r["attention"], r["n"], r["metric"]): r["value"] for r in results["rows"]}
    ns = sorted({r["n"] for r in results["rows"]})
    fig, ax = plt.subplots(figsize=(7.2, 3.6))
    for i, (metric, _, phase, batch, _) in enumerate(m for m in _metrics(results) if m[2] == "decode"):
        for att, style in (("full", "-o"), ("hybrid", "--s")):
            pts = [(n, by[(att, n, metric)]) for n in ns if by.get((att, n, metric)) is not None]
            if pts:
                ax.plot(*zip(*pts), style, color=f"C{i}", ms=4, label=f"{att}, batch {batch}")
            if config is not None:
                floor = [decode_floor_ms(config, n, batch, gbps, full=att == "full") for n in ns]
                ax.plot(ns, floor, ls=":" if att == "full" else (0, (1, 4)), color=f"C{i}", lw=1.0,
                        label=f"{att} floor, batch {batch}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [format_tokens(n) for n in ns])
    ax.minorticks_off()
    ax.set_yscale("log")
    ax.set_xlabel("context length N")
    ax.set_ylabel("ms per decode step")
    floor = f"; dotted: bytes at {gbps:.0f} GB/s" if gbps else ""
    ax.set_title(f"{results.get('device', '?')}: decode per step{floor}", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig
