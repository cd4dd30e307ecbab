"""The README's results section, written from the committed figures/*.json.

Each benchmark writes its JSON under ``figures/``; :func:`render` turns whatever is there into
Markdown tables beside the paper's numbers, for the block between the README's
``<!-- results:start -->`` and ``<!-- results:end -->`` markers. The command (also ``longgen report``)::

    python -m longgen_core.report            # print the block as figures/*.json render it (writes nothing)
    python -m longgen_core.report --check    # exit 1, naming each stale part, if README.md differs
    python -m longgen_core.report --write    # rewrite the block in README.md

A test checks that the README matches the JSON, so a table can never drift from its data.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .bench.cost_model import MISSING
from .bench.targets import GENERATE_TARGET_SPEEDUP, PAPER, PAPER_N, TARGETS  # noqa: F401 -- notebook 06 imports PAPER, TARGETS from here
from .cli_parser import Parser
from .formatting import format_tokens
from .jsonio import read_json

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- results:start -->", "<!-- results:end -->"
TARGET_WORDS = {True: "met", False: "missed", None: "n/a"}  # a target's entry in summary["met"]



def _load(name: str, figures: Path) -> dict | None:
    path = figures / name
    return read_json(path) if path.exists() else None


def _kernel_table(bench: dict) -> list[str]:
    """One line per (pattern, N, pass) that LongGen ran: its time beside each baseline of the
    same run (FlexAttention on both backends, FA4 on the same pattern or on the window it runs
    instead of sink + window, full-attention SDPA and FA4), and the speed-up over the fastest
    sparse baseline."""
    rows = [r for r in bench["rows"] if r.get("ms") is not None]
    # decode rows may come twice (full-length and evicted cache): keep the evicted one, the
    # layout the hybrid model serves with
    rows = sorted(rows, key=lambda r: r.get("cache") == "evicted")
    by_key = {(r["impl"], r["pattern"], r["n"], r["pass"]): r for r in rows}
    stand_in = {(r["instead_of"], r["n"], r["pass"]): r for r in rows if r.get("instead_of")}
    patterns = sorted({r["pattern"] for r in rows if r["impl"] == "longgen"})
    lines = [f"**Attention kernels** ({bench['device']}, torch {bench['torch']}, triton {bench['triton']}"
             + (f", flash-attn-4 {bench['versions']['flash-attn-4']}" if "flash-attn-4" in bench.get("versions", {})
                else "")
             + f", {bench['date']}; B={bench.get('batch', 1)}, {bench.get('heads', '?')} heads, head_dim "
             f"{bench.get('head_dim', '?')}, {bench.get('dtype', '')}; decode at batch "
             f"{bench.get('decode_batch', '?')} with the evicted cache"
             + (", timed as CUDA graph replays" if bench.get("decode_timing") == "cuda_graph" else "") + "; "
             f"`{bench.get('command', 'python -m longgen_core.bench kernels')}`; median ms; "
             "† FA4 on the window without the sink, the nearest pattern it can run)", "",
             "| pattern | N | pass | LongGen | Flex (Triton) | Flex (FLASH) | FA4 | full SDPA | full FA4 "
             "| vs fastest sparse | LongGen TFLOP/s or GB/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for pattern in patterns:
        for n in sorted({r["n"] for r in rows if r["pattern"] == pattern}):
            for pass_ in ("fwd", "fwdbwd", "decode"):
                ours = by_key.get(("longgen", pattern, n, pass_))
                if ours is None:
                    continue
                fa4 = by_key.get(("fa4", pattern, n, pass_))
                fa4_mark = ""
                if fa4 is None and (pattern, n, pass_) in stand_in:
                    fa4, fa4_mark = stand_in[(pattern, n, pass_)], " †"
                sparse = [by_key.get(("flex", pattern, n, pass_)), by_key.get(("flex_flash", pattern, n, pass_)), fa4]
                full = [by_key.get((impl, "full_causal", n, pass_)) for impl in ("sdpa_full", "fa4")]
                times = [f"{r['ms']:.2f}" if r else "–" for r in sparse + full]
                times[2] += fa4_mark if fa4 else ""
                fastest = min((r["ms"] for r in sparse if r), default=None)
                cells = [pattern, f"{n // 1024}K", pass_, f"{ours['ms']:.2f}", *times,
                         f"{fastest / ours['ms']:.2f}x" if fastest else "–",
                         f"{ours['gbps']:.0f} GB/s" if pass_ == "decode" and ours.get("gbps")
                         else f"{ours['tflops']:.0f}" if ours.get("tflops") else "–"]
                lines.append("| " + " | ".join(cells) + " |")
    return lines


def _model_metrics(bench: dict) -> list[tuple[str, str, str]]:
    """(metric key in the JSON, label, key in PAPER/TARGETS) in table order."""
    b = bench.get("decode_batch", 8)
    return [("kv_bytes", "KV cache", "kv_saving"), ("prefill_ms", "prefill ms", "prefill_speedup"),
            ("decode_ms_b1", "decode ms/token, batch 1", "decode_speedup"),
            (f"decode_ms_b{b}", f"decode ms/token, batch {b}", "decode_speedup"),
            ("decode_graph_ms_b1", "decode ms/token, batch 1, CUDA graphs", "decode_speedup"),
            (f"decode_graph_ms_b{b}", f"decode ms/token, batch {b}, CUDA graphs", "decode_speedup"),
            ("train_step_ms", "train step ms", "train_speedup")]


def _vs(key: str, value: float | None, number: float, target: bool = False) -> str:
    """The paper's number, or the target and whether ``value`` reaches it."""
    text = f"−{number:.0%}" if key == "kv_saving" else f"{'≥' if target else ''}{number}x"
    if value is None or not target:
        return text
    return f"{text} ({'met' if value >= number else 'not met'})"


def _model_table(bench: dict) -> list[str]:
    rows = bench["rows"]
    by = {(r["attention"], r["n"], r["metric"]): r for r in rows}
    ns = sorted({r["n"] for r in rows})
    v = {k: bench.get(k, "?") for k in ("device", "torch", "transformers", "date", "layers", "layer_map",
                                         "pattern", "dtype", "reps", "decode_steps")}
    backend = bench.get("backend", "auto")  # the hybrid's attention (models.attention); auto: our kernels
    title = "Whole model" if backend == "auto" else f"Whole model, the hybrid on `backend=\"{backend}\"`"
    command = "python -m longgen_core.bench model" + ("" if backend == "auto" else f" --backend {backend}")
    lines = [f"**{title}** ({v['device']}, torch {v['torch']}, transformers {v['transformers']}, {v['date']}; "
             f"{v['layers']} decoder layers of Llama-2-7B shape, random weights, layer map `{v['layer_map']}`, "
             f"{v['pattern']}, {v['dtype']}; decode per token over {v['decode_steps']} steps; median of "
             f"{v['reps']}; `{command}`)", "",
             "| metric | N | full | hybrid | full / hybrid | paper (7B, 128K) | target (128K) |",
             "|---|---|---|---|---|---|---|"]
    on_fa4 = any(r["attention"] == "full_fa4" for r in rows)  # the full model on FlashAttention-4 too
    if on_fa4:
        lines[-2] += " full on FA4 | full on FA4 / hybrid |"
        lines[-1] += "---|---|"
    notes, above = [], {}
    # Amdahl: the full layers cost the same in both models, so full / hybrid <= layers / full layers
    layer_map = bench.get("layer_map") or ""
    limit = len(layer_map) / layer_map.count("F") if "F" in layer_map else float("inf")
    for metric, label, key in _model_metrics(bench):
        if not any(r["metric"] == metric for r in rows):
            continue
        for n in ns:
            cells = {}
            for att in ("full", "hybrid"):
                r = by.get((att, n, metric))
                cells[att] = None if r is None else r["value"]
                if cells[att] is None:
                    why = "not in the JSON" if r is None else r.get("skipped", "no value")
                    notes.append(f"{att} {format_tokens(n)} {label}: {why}")
            f, h = cells["full"], cells["hybrid"]
            if metric == "kv_bytes":
                shown = [MISSING if x is None else f"{x / 2**30:.2f} GiB" for x in (f, h)]
                score = None if f is None or h is None else 1 - h / f
                ratio = MISSING if score is None else f"−{score:.1%}"
            else:
                shown = [MISSING if x is None else f"{x:.2f}" for x in (f, h)]
                score = None if f is None or not h else f / h
                ratio = MISSING if score is None else f"{score:.2f}x"
                if score is not None and score > limit:
                    ratio += " †"
                    above.setdefault(label, []).append(format_tokens(n))
            at_top = n == PAPER_N
            line = (f"| {label} | {format_tokens(n)} | {shown[0]} | {shown[1]} | {ratio} | "
                    f"{_vs(key, None, PAPER[key]) if at_top else ''} | "
                    f"{_vs(key, score, TARGETS[key], target=True) if at_top else ''} |")
            if on_fa4:  # no graphed decode path for it: those cells stay empty, without a note
                r = by.get(("full_fa4", n, metric))
                x = None if r is None else r["value"]
                if metric == "kv_bytes":
                    line += f" {MISSING if x is None else f'{x / 2**30:.2f} GiB'} | |"
                else:
                    line += (f" {MISSING if x is None else f'{x:.2f}'} | "
                             f"{MISSING if x is None or not h else f'{x / h:.2f}x'} |")
            lines.append(line)
    paragraphs = []
    if notes:
        paragraphs.append(f"{MISSING} = no value: " + "; ".join(notes) + ".")
    if above:
        paragraphs.append(f"† above {limit:.2f}x = layers / full layers, the most this layer map can gain if a full "
                          "layer costs the same in both models (Amdahl's law; notebook 06): "
                          + "; ".join(f"{label} at {', '.join(at)}" for label, at in above.items()) + ".")
    kv = [r for r in rows if r["metric"] == "kv_bytes" and r["attention"] == "hybrid" and "kv_bytes_formula" in r]
    if kv:
        off = [format_tokens(r["n"]) for r in kv if r["value"] != r["kv_bytes_formula"]]
        paragraphs.append("Hybrid KV bytes measured = `kv_bytes_formula` at every N." if not off
                          else f"Hybrid KV bytes measured ≠ `kv_bytes_formula` at {', '.join(off)}.")
    for text in paragraphs:
        lines += ["", text]
    return lines


def _train_table(train: dict) -> list[str]:
    v = train["versions"]
    lines = [f"**Training step** ({train['device']}, torch {v['torch']}, transformers {v['transformers']}, "
             f"{train['date'][:10]}; {train['preset']['name']}: {train['seq_len'] // 1024}K tokens per step, "
             f"{train['steps']} steps ({train['untimed_steps']} untimed)"
             f"{', random-init weights (speed only)' if train['preset'].get('random_init') else ''}; "
             "`python -m longgen_core.train measure`)", "",
             "| attention | layer map | tokens/s | ms/step | peak GiB | last loss |", "|---|---|---|---|---|---|"]
    for name, run in train["runs"].items():
        lines.append(f"| {name} | `{run['layer_map']}` | {run['tokens_per_s']:,.0f} | {run['ms_per_step']:.1f} | "
                     f"{run['peak_memory_gib']:.1f} | {run['loss'][-1]:.2f} |")
    lines += ["", f"Hybrid / full: **{train['speedup']:.2f}x** tokens/s (target {train['target_speedup']}x; "
              f"paper {PAPER['train_speedup']}x at 128K on 7B)."]
    return lines


def _generate_table(gen: dict) -> list[str]:
    from .bench.generate import results_table  # torch only, no GPU

    v = gen["versions"]
    return [f"**Generation** ({gen['device']}, torch {v['torch']}, transformers {v['transformers']}, "
            f"{gen['date'][:10]}; {gen['model']} {gen['dtype']}, real weights, layer map `{gen['layer_map']}`, "
            f"{gen['pattern']}; plain `model.generate()`, {gen['new_tokens']} new tokens, decode tokens/s; "
            "`python -m longgen_core.bench generate`)", "", results_table(gen), "",
            "*transformers*: the unconverted model, transformers' own loop and cache. *longgen*: the converted "
            "model (full: every layer full), whose `generate()` on CUDA decodes through preallocated buffers and "
            "one CUDA graph per token (`longgen_core.models.static`).", "",
            f"Target: hybrid ≥ {GENERATE_TARGET_SPEEDUP}x full (same path) at every prompt and batch."]


def _miniature_table(mini: dict) -> list[str]:
    v, plan, summary = mini["versions"], mini["plan"], mini["summary"]
    lengths = plan["lengths"]
    train = plan["train"]
    lines = [f"**Miniature experiment** ({mini['device']}, torch {v['torch']}, transformers {v['transformers']}, "
             f"{mini['date'][:10]}; {mini['preset']['name']}: {train.get('steps')} steps of "
             f"{format_tokens(mini['preset']['seq_len'])} tokens per arm, {plan['task']} at "
             f"{len(plan['depths'])} depths x {plan['samples']} samples per length; {mini['total_seconds']:.0f} s; "
             "`python -m longgen_core.experiments miniature`)", "",
             "| variant | layers | " + " | ".join(f"{plan['task']} @{format_tokens(n)}" for n in lengths)
             + f" | ppl @{format_tokens(lengths[-1])} | evicted needles |",
             "|---|---|" + "---|" * (len(lengths) + 2)]
    for name, var in mini["variants"].items():
        means = var["grid"]["mean_by_length"]
        outside = summary["outside_window"].get(name)
        lines.append(f"| {name} | {_layer_counts(var['layer_map'])} | "
                     + " | ".join(f"{means[str(n)]:.2f}" for n in lengths)
                     + f" | {var['perplexity'][str(lengths[-1])]:.1f} | "
                     + (MISSING if outside is None else f"{outside:.2f}") + " |")
    met = summary.get("met", {})
    lines += ["", f"Targets at {format_tokens(summary['longest'])}: hybrid ≥ {summary['targets']['hybrid_min']} — "
              f"{TARGET_WORDS[met.get('hybrid_min')]}; within {summary['targets']['hybrid_gap_max']} of full — "
              f"{TARGET_WORDS[met.get('hybrid_gap')]}; StreamingLLM ≤ "
              f"{summary['targets']['streaming_outside_max']} on needles outside its window — "
              f"{TARGET_WORDS[met.get('streaming_outside')]}. Paper: the hybrid keeps NIAH close to full attention "
              "at 128K; post-hoc eviction fails outside its window."]
    return lines


def _extension_table(ext: dict) -> list[str]:
    """Exact match per variant and task at the longest length, needles outside the window, speed."""
    summary, plan, tasks = ext["summary"], ext["plan"], list(ext["plan"]["tasks"])
    longest = summary["longest"]
    unit = next(iter(ext["units"].values()))
    train = plan["train"]
    lines = [f"**Extension to {format_tokens(longest)}** ({unit['device']}, torch {unit['versions']['torch']}, "
             f"{max(u['date'] for u in ext['units'].values())[:10]}; {ext['preset']['model']}, "
             f"{train['steps']} steps of {format_tokens(train['seq_len'])} tokens per arm; held-out templates and "
             f"text, {len(plan['depths'])} depths x {plan['samples']} samples; exact match at "
             f"{format_tokens(longest)}, and on needles outside sink + window at every length in brackets; "
             "`python -m longgen_core.experiments extension --plan gpu-128k`)", "",
             "| variant | " + " | ".join(tasks) + f" | mean | ppl @{format_tokens(longest)} | train tokens/s |",
             "|---|" + "---|" * (len(tasks) + 3)]
    for variant, scores in summary["at_longest"].items():
        outside = summary["outside_window"][variant]
        cells = [f"{scores[t]:.2f}" + ("" if outside[t] is None else f" ({outside[t]:.2f})") for t in tasks]
        ppl = ext["variants"][variant]["perplexity"].get(str(longest))
        tps = summary["tokens_per_s"].get(variant)
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {summary['mean_at_longest'][variant]:.2f} | "
                     + (MISSING if ppl is None else f"{ppl:.1f}") + " | "
                     + (MISSING if tps is None else f"{tps:,.0f}") + " |")
    met = [f"{key.replace('_', ' ')} — {TARGET_WORDS[ok]}" for key, ok in summary["met"].items()]
    lines += ["", "Targets: " + ("; ".join(met) if met else "none computable yet") + "."]
    if ext.get("missing_units"):
        lines.append(f"Not run yet: {', '.join(ext['missing_units'])} (its variants and the targets that need them "
                     "are absent).")
    return lines


def _layer_counts(layer_map: str) -> str:
    """``'ssFFss'`` -> ``'2 full / 4 sparse'``."""
    full = layer_map.count("F")
    return f"{full} full / {len(layer_map) - full} sparse" if full < len(layer_map) else f"{full} full"


# The JSON each table is rendered from, in the block's order.
TABLES = (("bench_kernels.json", _kernel_table), ("bench_kernels_fa4.json", _kernel_table),
          ("bench_kernels_fa4_32k_64k.json", _kernel_table), ("bench_kernels_decode_b1.json", _kernel_table),
          ("bench_kernels_decode_b1_graphed.json", _kernel_table),
          ("bench_model.json", _model_table), ("bench_model_flex.json", _model_table),
          ("bench_model_flex_flash.json", _model_table),
          ("bench_generate.json", _generate_table), ("train_gpu_small.json", _train_table),
          ("miniature.json", _miniature_table), ("experiment_128k.json", _extension_table))
WRITE_COMMAND = "python -m longgen_core.report --write"


def sections(figures: Path | None = None) -> list[tuple[str, str]]:
    """``(what it comes from, Markdown)`` for each part of the results block, in order: the
    paper's numbers, then a table per result JSON present under ``figures/`` (a note where none is)."""
    figures = figures or ROOT / "figures"
    parts = [("the paper's numbers", f"Paper (Llama-2-7B, 128K): training {PAPER['train_speedup']}x, KV cache "
              f"−{PAPER['kv_saving']:.0%}, prefill {PAPER['prefill_speedup']}x, decode "
              f"{PAPER['decode_speedup']}x. Our measurements, regenerated from `figures/*.json` by "
              f"`{WRITE_COMMAND}`:")]
    for name, table in TABLES:
        results = _load(name, figures)
        if results:
            parts.append((f"the table of figures/{name}", "\n".join(table(results))))
    if len(parts) == 1:
        parts.append(("the note that no results exist", "*No GPU results committed yet.*"))
    return parts


def render(figures: Path | None = None) -> str:
    """Markdown for every result JSON present under ``figures/`` (a note where none is yet)."""
    return "\n\n".join(text for _, text in sections(figures)).rstrip() + "\n"


def _split(text: str, readme: Path) -> tuple[str, str, str]:
    """``text`` as (before the block, the block, after it); ValueError when it has no block."""
    if START not in text or END not in text:
        raise ValueError(f"{readme} has no {START} ... {END} block")
    head, rest = text.split(START, 1)
    block, tail = rest.split(END, 1)
    return head, block, tail


def update_readme(readme: Path | None = None, figures: Path | None = None) -> bool:
    """Rewrite the results block of the README; return True if it changed."""
    readme = readme or ROOT / "README.md"
    text = readme.read_text()
    head, _, tail = _split(text, readme)
    new = f"{head}{START}\n{render(figures)}{END}{tail}"
    readme.write_text(new)
    return new != text


def readme_block(readme: Path | None = None) -> str:
    """The README's current results block (between the markers)."""
    readme = readme or ROOT / "README.md"
    return _split(readme.read_text(), readme)[1].lstrip("\n")


def stale_parts(readme: Path | None = None, figures: Path | None = None) -> list[str]:
    """What in the README's results block differs from :func:`render` (``[]``: it is current):
    each part (:func:`sections`) whose rendered text the block lacks, else -- every part is there,
    yet the block differs -- its text that no JSON renders (a table whose JSON is gone, or parts
    out of order).

    Example: after a new ``figures/bench_model.json``, ``stale_parts()`` is
    ``["the table of figures/bench_model.json"]``.
    """
    block = readme_block(readme)
    if block == render(figures):
        return []
    missing = [name for name, text in sections(figures) if text not in block]
    return missing or ["text that no figures/*.json renders (a table whose JSON is gone, or parts out of order)"]


def main(argv: list[str] | None = None, prog: str = "python -m longgen_core.report") -> int:
    """Print, ``--check`` or ``--write`` the results block (see the module doc); 1 when stale."""
    parser = Parser(prog=prog, description="The README's results block, rendered from figures/*.json. Without "
                                           "--check or --write it prints the block and writes nothing.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="exit 1, naming each stale part, when the README's block differs from what "
                           "figures/*.json render to; exit 0 when it matches")
    mode.add_argument("--write", action="store_true", help="rewrite the README's block from figures/*.json")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md", metavar="FILE",
                        help="the README file with the block (default: the repository's README.md)")
    parser.add_argument("--figures", type=Path, default=ROOT / "figures", metavar="DIR",
                        help="the folder of result JSONs (default: the repository's figures/)")
    args = parser.parse_args(argv)
    if not args.figures.is_dir():
        parser.error(f"--figures {args.figures}: no such folder")
    if not args.check and not args.write:
        print(render(args.figures), end="")
        return 0
    if not args.readme.is_file():
        parser.error(f"--readme {args.readme}: no such file")
    try:
        if args.write:
            changed = update_readme(args.readme, args.figures)
            print(f"{_shown(args.readme)}: results block {'updated' if changed else 'already current'}")
            return 0
        stale = stale_parts(args.readme, args.figures)
    except ValueError as err:  # a README without the block
        parser.error(str(err))
    readme, figures = _shown(args.readme), _shown(args.figures)
    if stale:
        print(f"{prog}: {readme}: the results block is stale, it differs from what {figures}/*.json render to "
              f"in {'; '.join(stale)}; run `{WRITE_COMMAND}`", file=sys.stderr)
        return 1
    print(f"{readme}: the results block matches {figures}/*.json")
    return 0


def _shown(path: Path) -> Path:
    """``path`` relative to the working folder when it lies inside it (shorter messages)."""
    try:
        return path.resolve().relative_to(Path.cwd())
    except ValueError:
        return path


if __name__ == "__main__":
    sys.exit(main())
