"""What a user sees: ``model.generate()`` of SmolLM2-135M (real weights), full attention vs the
LongGen hybrid, from a long prompt.

``python -m longgen_core.bench generate --out figures/bench_generate.json``

Three models, the same weights with the same extended RoPE (``--prompts``' longest length plus
the new tokens), each called exactly as a user would, ``model.generate(ids, max_new_tokens=T,
do_sample=False)`` with no cache argument:

- ``full`` served by ``transformers``: the unconverted model (its default cache and loop);
- ``full`` served by ``longgen``: :func:`~longgen_core.models.convert.to_longgen` with every layer
  full, so it decodes on the same path as the hybrid (on CUDA: preallocated buffers and one CUDA
  graph per token, :mod:`longgen_core.models.static`; elsewhere transformers' loop with the
  evicting cache) -- the fair comparison;
- ``hybrid`` served by ``longgen``: the hybrid (middle third full, sink + window elsewhere).

Prompts are random token ids (the speed does not depend on the text); generation never stops
early (``min_new_tokens = T``).

Per row: one untimed warm-up generate at the same shape with 2 new tokens (Triton compiles, the
CUDA graph is captured, the allocator warms), a prefill-only generate (1 new token) and the timed
generate of ``T`` tokens. Decode time is the difference of the two, per new token after the first.

JSON layout::

    {"device", "versions", "date", "model", "pattern", "layer_map", "new_tokens",
     "rows": [{"attention": "full" | "hybrid", "serving": "transformers" | "longgen",
               "cuda_graphs" (bool: the call took the graphed path), "prompt_tokens", "batch",
               "tokens_per_s" (decode: batch * (T - 1) / decode seconds), "ms_per_token" (per decode
               step), "prefill_s", "total_s", "peak_gib"}]}

A cell that runs out of memory gets ``tokens_per_s: null`` and a ``note``.
"""

from __future__ import annotations

import copy
import datetime
import time

import torch

from ..formatting import format_tokens
from ..jsonio import write_json_atomic
from ..models.base import load_smollm2
from ..models.convert import layer_map, to_longgen
from .model import as_static_full
from ..models.rope import extended_rope_theta, rope_theta_of, set_rope
from ..models.static import current_decoder, release_decoder
from ..patterns import sink_window
from .results import software_versions

__all__ = ["generate_seconds", "generate_row", "run_generate_bench", "results_table"]

SMOLLM2_CONTEXT = 8192  # SmolLM2-135M's pretraining context: the RoPE base is extended from it


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def generate_seconds(model, ids: torch.Tensor, new_tokens: int) -> float:
    """Wall seconds of one greedy ``model.generate`` of exactly ``new_tokens`` tokens (no cache argument).

    Example: ``generate_seconds(model, torch.randint(0, 100, (1, 64)), 8)``.
    """
    _sync(ids.device)
    start = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, do_sample=False)
    _sync(ids.device)
    seconds = time.perf_counter() - start
    if out.shape[1] != ids.shape[1] + new_tokens:
        raise RuntimeError(f"generate returned {out.shape[1] - ids.shape[1]} new tokens, not {new_tokens}")
    return seconds


def generate_row(model, attention: str, prompt_tokens: int, batch: int, new_tokens: int, seed: int = 0,
                 serving: str = "transformers") -> dict:
    """One row of the JSON layout above for ``model`` (already on its device)."""
    if new_tokens < 2:
        raise ValueError(f"new_tokens must be >= 2 (decode time is measured past the first), got {new_tokens}")
    device = model.device
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt_tokens), generator=gen).to(device)
    row = {"attention": attention, "serving": serving, "prompt_tokens": prompt_tokens, "batch": batch}
    cuda = device.type == "cuda"
    try:
        generate_seconds(model, ids, 2)  # warm-up at this shape
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        prefill = generate_seconds(model, ids, 1)
        total = generate_seconds(model, ids, new_tokens)
    except torch.OutOfMemoryError:
        row.update(tokens_per_s=None, ms_per_token=None, note="out of memory")
        return row
    finally:
        del ids
        decoder = current_decoder(model)  # what generate() ran on: kept by the graphed path only
        row["cuda_graphs"] = decoder is not None and decoder.graphs
        release_decoder(model)  # the static buffers of this shape (see models.static)
        if cuda:
            torch.cuda.empty_cache()
    decode = max(total - prefill, 1e-9)
    row.update(tokens_per_s=round(batch * (new_tokens - 1) / decode, 1),
               ms_per_token=round(1000 * decode / (new_tokens - 1), 3),
               prefill_s=round(prefill, 3), total_s=round(total, 3),
               peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None)
    return row


def run_generate_bench(prompts=(32768, 131072), batches=(1, 8), new_tokens: int = 256, sink: int = 64,
                       window: int = 4096, device: str | None = None, out=None, log=print) -> dict:
    """The three models at every (prompt length, batch); the result dict of the JSON layout above,
    also written to ``out`` (if given) after every row, so a job killed midway keeps its rows."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    full, _ = load_smollm2(dtype=dtype, device=device)
    longest = max(prompts) + new_tokens
    if longest > SMOLLM2_CONTEXT:
        set_rope(full, rope_theta=extended_rope_theta(rope_theta_of(full.config), SMOLLM2_CONTEXT, longest),
                 max_position_embeddings=longest)
    pattern = sink_window(sink, window)
    hybrid = to_longgen(copy.deepcopy(full), pattern=pattern)
    full_longgen = as_static_full(full)
    models = (("full", "transformers", full), ("full", "longgen", full_longgen), ("hybrid", "longgen", hybrid))
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "versions": software_versions(),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "model": "SmolLM2-135M-Instruct", "dtype": str(dtype).removeprefix("torch."), "pattern": pattern.name,
              "layer_map": layer_map(hybrid.config), "rope_theta": rope_theta_of(full.config),
              "new_tokens": new_tokens, "rows": []}
    for prompt_tokens in prompts:
        for batch in batches:
            for attention, serving, model in models:
                row = generate_row(model, attention, prompt_tokens, batch, new_tokens, serving=serving)
                result["rows"].append(row)
                if out is not None:
                    write_json_atomic(out, result)
                log(f"{attention:6s} {serving:12s} prompt {prompt_tokens:7d} batch {batch}: "
                    + (f"{row['tokens_per_s']:9.1f} tok/s  {row['ms_per_token']:8.2f} ms/token  prefill "
                       f"{row['prefill_s']:.2f} s" if row["tokens_per_s"] is not None else row["note"]))
    return result


def results_table(result: dict) -> str:
    """Markdown: one line per (prompt, batch): decode tokens/s of each model, the hybrid's speedup
    over full attention on the same serving path and over transformers' own, and prefill seconds."""
    cells = {(r["attention"], r.get("serving", "transformers"), r["prompt_tokens"], r["batch"]): r
             for r in result["rows"]}
    lines = ["| prompt | batch | full, transformers tok/s | full, longgen tok/s | hybrid, longgen tok/s | "
             "hybrid / full (same path) | hybrid / transformers | prefill s (full, hybrid) |",
             "|---|---|---|---|---|---|---|---|"]
    for n, b in dict.fromkeys((key[2], key[3]) for key in cells):
        rows = [cells.get(key, {}) for key in (("full", "transformers", n, b), ("full", "longgen", n, b),
                                               ("hybrid", "longgen", n, b))]
        speed = [r.get("tokens_per_s") for r in rows]
        ratio = [f"{speed[2] / base:.2f}x" if speed[2] and base else "-" for base in (speed[1], speed[0])]
        lines.append(f"| {format_tokens(n)} | {b} | " + " | ".join(str(x) if x else "-" for x in speed)
                     + f" | {ratio[0]} | {ratio[1]} | {rows[1].get('prefill_s', '-')}, "
                     f"{rows[2].get('prefill_s', '-')} |")
    return "\n".join(lines)


def run_cli(args) -> int:
    """The ``generate`` subcommand of :mod:`longgen_core.bench.cli`."""
    result = run_generate_bench(args.prompts, args.batches, args.new_tokens, args.sink, args.window, args.device,
                                out=args.out)
    print(results_table(result))
    print(f"wrote {args.out}")
    return 0
