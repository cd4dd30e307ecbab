"""The README's results section, written from the committed figures/*.json.

Each benchmark writes its JSON under ``figures/``; :func:`render` turns whatever is there into
Markdown tables beside the paper's numbers, and ``python -m longgen_core.report`` rewrites the
block between the README's ``<!-- results:start -->`` and ``<!-- results:end -->`` markers. A
test checks that the README matches the JSON, so a table can never drift from its data.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- results:start -->", "<!-- results:end -->"

# Llama-2-7B at 128K, LongGen paper (arXiv 2410.01485), Table/figure numbers quoted in its text.
PAPER = {"train_speedup": 1.55, "kv_saving": 0.62, "prefill_speedup": 1.67, "decode_speedup": 1.41}


def _load(name: str, figures: Path) -> dict | None:
    path = figures / name
    return json.loads(path.read_text()) if path.exists() else None


def _kernel_table(bench: dict) -> list[str]:
    rows = bench["rows"]
    # decode rows may come twice (full-length and evicted cache): keep the evicted one, the
    # layout the hybrid model serves with
    rows = sorted(rows, key=lambda r: r.get("cache") == "evicted")
    by_key = {(r["impl"], r["pattern"], r["n"], r["pass"]): r for r in rows}
    patterns = sorted({r["pattern"] for r in rows if r["impl"] == "longgen"})
    lines = [f"**Attention kernels** ({bench['device']}, torch {bench['torch']}, triton {bench['triton']}, "
             f"{bench['date']}; B={bench.get('batch', 1)}, {bench.get('heads', '?')} heads, head_dim "
             f"{bench.get('head_dim', '?')}, {bench.get('dtype', '')}; decode at batch {bench.get('decode_batch', '?')} "
             "with the evicted cache; `python -m longgen_core.bench kernels`; median ms)", "",
             "| pattern | N | pass | LongGen ms | FlexAttention ms | full SDPA ms | vs Flex | vs SDPA | LongGen TFLOP/s or GB/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for pattern in patterns:
        for n in sorted({r["n"] for r in rows if r["pattern"] == pattern}):
            for pass_ in ("fwd", "fwdbwd", "decode"):
                ours = by_key.get(("longgen", pattern, n, pass_))
                if ours is None:
                    continue
                flex = by_key.get(("flex", pattern, n, pass_))
                sdpa = by_key.get(("sdpa_full", "full_causal", n, pass_))
                cells = [pattern, f"{n // 1024}K", pass_, f"{ours['ms']:.2f}",
                         f"{flex['ms']:.2f}" if flex else "–", f"{sdpa['ms']:.2f}" if sdpa else "–",
                         f"{flex['ms'] / ours['ms']:.2f}x" if flex else "–",
                         f"{sdpa['ms'] / ours['ms']:.1f}x" if sdpa else "–",
                         f"{ours['gbps']:.0f} GB/s" if pass_ == "decode" and ours.get("gbps")
                         else f"{ours['tflops']:.0f}" if ours.get("tflops") else "–"]
                lines.append("| " + " | ".join(cells) + " |")
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


def render(figures: Path | None = None) -> str:
    """Markdown for every result JSON present under ``figures/`` (a note where none is yet)."""
    figures = figures or ROOT / "figures"
    parts = [f"Paper (Llama-2-7B, 128K): training {PAPER['train_speedup']}x, KV cache "
             f"−{PAPER['kv_saving']:.0%}, prefill {PAPER['prefill_speedup']}x, decode "
             f"{PAPER['decode_speedup']}x. Our measurements, regenerated from `figures/*.json` by "
             "`python -m longgen_core.report`:", ""]
    found = False
    kernels = _load("bench_kernels.json", figures)
    if kernels:
        parts += _kernel_table(kernels) + [""]
        found = True
    train = _load("train_gpu_small.json", figures)
    if train:
        parts += _train_table(train) + [""]
        found = True
    if not found:
        parts.append("*No GPU results committed yet.*")
    return "\n".join(parts).rstrip() + "\n"


def update_readme(readme: Path | None = None, figures: Path | None = None) -> bool:
    """Rewrite the results block of the README; return True if it changed."""
    readme = readme or ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{readme} has no {START} ... {END} block")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{render(figures)}{END}{tail}"
    readme.write_text(new)
    return new != text


def readme_block(readme: Path | None = None) -> str:
    """The README's current results block (between the markers)."""
    text = (readme or ROOT / "README.md").read_text()
    return text.split(START, 1)[1].split(END, 1)[0].lstrip("\n")


if __name__ == "__main__":
    changed = update_readme()
    print("README results updated" if changed else "README results already current")
    sys.exit(0)
