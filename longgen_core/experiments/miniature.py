"""The paper's central experiment in miniature: extend a model twice -- full attention and the
LongGen hybrid -- with the same data and steps, then test long-context retrieval on both, on the
original model, and on post-hoc KV-cache eviction applied to the full one.

One command::

    python -m longgen_core.experiments miniature --preset gpu-small --out figures/   # ~6 min, one H100
    python -m longgen_core.experiments miniature                                     # cpu-tiny, ~1-3 min

writes ``miniature.json`` (plan, device, versions, training curves and speed of both arms, every
retrieval cell and sample, perplexity, the targets and whether they were met) plus
``miniature_grids.png`` and ``miniature_training.png`` into ``--out``.

The variants evaluated (:data:`VARIANTS`):

- ``original``: the base model as published (RoPE base and position limit untouched);
- ``full``: extended with full attention everywhere (RoPE base raised, finetuned);
- ``hybrid``: extended as the LongGen hybrid (middle third full, sink + window elsewhere, finetuned);
- ``streaming``: StreamingLLM-style eviction (sink + window in *every* layer) put on ``full``
  after its finetuning, without training -- the post-hoc KV reduction the paper argues against;
- ``posthoc_hybrid``: ``full`` with the hybrid's layer mix applied after finetuning (middle third
  full, no training of the sparse layers): isolates what training the sparse layers in buys.

Post-hoc variants keep the original RoPE positions (``to_posthoc_streaming``'s default): the
re-indexed form needs dense score matrices, which do not fit at 32K.

Plans (:data:`PLANS`), one per preset:

``gpu-small`` -- SmolLM2-135M, RoPE base 1e5 -> 1.2e6 (set for 32K), both arms 300 AdamW steps of
    one 16K sequence (3/4 pass-key samples scored on the answer, 1/4 KJV text), lr 1e-4; passkey
    at 8K/16K/32K x 5 depths x 4 samples per variant. Training at half the target length keeps
    the command inside 10 minutes; 32K is then within the RoPE-extended range but longer than any
    training sequence (0.95 at 32K after 16K training in our first H100 trials).
``cpu-tiny`` -- the CI scale: SmolLM2 cut to 6 layers, 256 tokens, 20 steps per arm, window 32.
    Only the mechanics and the evicting baseline's blindness are meaningful here.

Example::

    >>> result = run_miniature("cpu-tiny", out=None, progress=False)   # doctest: +SKIP
    >>> result["summary"]["passkey_at_longest"]                        # doctest: +SKIP
    {'original': 0.0, 'full': 0.0, 'hybrid': 0.0, 'streaming': 0.0, 'posthoc_hybrid': 0.0}
"""

from __future__ import annotations

import copy
import datetime
import gc
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..bench.results import software_versions
from ..bench.targets import MINIATURE_PAPER, MINIATURE_TARGETS
from ..cli_values import output_folder
from ..formatting import format_table, format_tokens
from ..evaluate.retrieval import outside_window_score, perplexity_by_length, plot_grid, retrieval_grid
from ..jsonio import read_json as load_results  # noqa: F401 -- notebook 05 imports it from here
from ..jsonio import write_json_atomic
from ..models.convert import layer_map, to_posthoc_streaming
from ..models.rope import rope_theta_of
from ..train.loop import RUNS_DIR, base_model, load_tokenizer, train
from ..train.presets import get_preset

VARIANTS = ("original", "full", "hybrid", "streaming", "posthoc_hybrid")
DESCRIPTIONS = {
    "original": "base model, no extension",
    "full": "extended, full attention in every layer",
    "hybrid": "extended as the LongGen hybrid (finetuned with its sparse layers)",
    "streaming": "post hoc on 'full': sink + window in every layer (StreamingLLM-style)",
    "posthoc_hybrid": "post hoc on 'full': the hybrid's layer mix, sparse layers not trained",
}
# The targets at the longest length and the paper's finding (notebook 05 imports TARGETS from here).
TARGETS, PAPER = MINIATURE_TARGETS, MINIATURE_PAPER


@dataclass(frozen=True)
class MiniaturePlan:
    """What the experiment trains and measures. ``train`` overrides the preset for both arms."""

    preset: str
    train: dict = field(default_factory=dict)
    lengths: tuple = (8192, 16384, 32768)
    depths: tuple = (0.0, 0.25, 0.5, 0.75, 1.0)
    samples: int = 4
    task: str = "passkey"
    batch_size: int = 4
    perplexity_sequences: int = 1
    heldout_corpus: str | None = None  # perplexity text; None: the training corpus's held-out split


PLANS = {
    "gpu-small": MiniaturePlan(
        preset="gpu-small",
        train=dict(seq_len=16384, steps=300, synthetic_ratio=0.75, synthetic_tasks=("passkey",), lr=1e-4,
                   warmup_steps=20, checkpoint_every=0)),
    "cpu-tiny": MiniaturePlan(
        preset="cpu-tiny", train=dict(steps=20, synthetic_ratio=0.5, synthetic_tasks=("passkey",),
                                      checkpoint_every=0),
        lengths=(128, 256), depths=(0.0, 0.5, 1.0), samples=2, batch_size=2),
}


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _for_eval(model, device):
    """The model in eval mode on ``device``: bf16 on CUDA (the Triton kernels' dtype), fp32 on CPU."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = model.to(device=device, dtype=dtype).eval()
    model.config.use_cache = True
    return model


def _evaluate(name, model, tokenizer, plan, preset, device, progress) -> dict:
    model = _for_eval(model, device)
    grid = retrieval_grid(model, tokenizer, plan.task, lengths=plan.lengths, depths=plan.depths,
                          samples=plan.samples, batch_size=plan.batch_size, progress=progress)
    grid["variant"] = name
    ppl = perplexity_by_length(model, tokenizer, plan.lengths, source=plan.heldout_corpus or preset.corpus,
                               num_sequences=plan.perplexity_sequences, progress=progress)
    return {"description": DESCRIPTIONS[name],
            "layer_map": layer_map(model.config),  # all "F" for an unconverted model
            "rope_theta": rope_theta_of(model.config),
            "grid": grid, "perplexity": ppl}


def _training_record(result) -> dict:
    log = result.log
    timed = [r["step_s"] for r in log[1:]] or [r["step_s"] for r in log]  # step 1 holds compile/warm-up
    step_s = sorted(timed)[len(timed) // 2]
    return {"info": {k: v for k, v in result.info.items() if k != "versions"},
            "steps": len(log), "median_step_s": step_s, "tokens_per_s": result.preset.tokens_per_step() / step_s,
            "wall_s": sum(r["step_s"] for r in log),
            "log": [{k: r[k] for k in ("step", "loss", "lm_loss", "task_loss", "lr")} for r in log]}


def summarize(result: dict) -> dict:
    """Scores at the longest length, the evicting baseline on evicted needles, targets met.

    Derived from the per-sample ``details`` alone, so a stored result can be summarised again."""
    variants = result["variants"]
    longest = str(max(result["plan"]["lengths"]))
    at_longest = {name: v["grid"]["mean_by_length"][longest] for name, v in variants.items()}
    window = result["preset"]["pattern"].get("window_tokens")
    sink = result["preset"]["pattern"].get("sink_tokens", 0)
    outside = {name: outside_window_score(variants[name]["grid"], window, sink)
               for name in ("streaming", "posthoc_hybrid") if name in variants and window}
    summary = {"longest": int(longest), "passkey_at_longest": at_longest, "outside_window": outside}
    if "hybrid" in at_longest and "full" in at_longest:
        hybrid, full = at_longest["hybrid"], at_longest["full"]
        streaming = outside.get("streaming")
        summary["targets"] = TARGETS
        summary["met"] = {"hybrid_min": hybrid >= TARGETS["hybrid_min"],
                          "hybrid_gap": full - hybrid <= TARGETS["hybrid_gap_max"],
                          "streaming_outside": None if streaming is None
                          else streaming <= TARGETS["streaming_outside_max"]}
    return summary


def checked_plan(preset: str = "cpu-tiny", plan: MiniaturePlan | None = None, heldout: str | None = None,
                 **train_overrides) -> MiniaturePlan:
    """The plan :func:`run_miniature` runs: ``plan`` (default ``PLANS[preset]``) with
    ``train_overrides`` and ``heldout`` applied, checked before any work: a ValueError names a
    bad field (:func:`~longgen_core.train.presets.get_preset`) or an evaluation length beyond the
    extended range.

    Example: ``checked_plan("cpu-tiny", steps=50).train["steps"] == 50``; ``checked_plan("cpu-tiny",
    steps="x")`` raises "steps must be an int, got 'x' (str)".
    """
    if plan is None:
        if preset not in PLANS:
            raise ValueError(f"no miniature plan for preset {preset!r}; plans exist for {sorted(PLANS)}")
        plan = PLANS[preset]
    if train_overrides or heldout:
        plan = MiniaturePlan(**{**asdict(plan), "train": {**plan.train, **train_overrides},
                                "heldout_corpus": heldout or plan.heldout_corpus})
    settings = get_preset(plan.preset, **plan.train)
    if max(plan.lengths) > settings.target_len:
        raise ValueError(f"evaluation length {max(plan.lengths)} is beyond the extended range "
                         f"({settings.target_len} positions)")
    return plan


def run_miniature(preset: str = "cpu-tiny", out: str | Path | None = None, runs_dir: str | Path | None = None,
                  progress: bool = True, plan: MiniaturePlan | None = None, heldout: str | None = None,
                  **train_overrides) -> dict:
    """Run the experiment for ``preset`` (a key of :data:`PLANS`, or pass ``plan``); return the
    result dict and, with ``out``, write ``miniature.json`` and the two figures there.

    ``train_overrides`` change the plan's training settings for both arms (e.g. ``steps=50``,
    ``corpus="path/to/txt_folder"``); ``heldout`` is the perplexity text when the corpus is a local
    folder (whose documents have no held-out split).
    """
    plan = checked_plan(preset, plan, heldout, **train_overrides)
    settings = get_preset(plan.preset, **plan.train)
    device = _device()
    runs = Path(runs_dir) if runs_dir is not None else RUNS_DIR / f"miniature-{plan.preset}"
    tokenizer = load_tokenizer(settings)
    started, stages = time.perf_counter(), {}
    result = {"experiment": "miniature", "plan": {**asdict(plan), "train": dict(plan.train)},
              "preset": settings.to_dict(), "device": torch.cuda.get_device_name() if device.type == "cuda"
              else "cpu", "versions": software_versions(),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "paper": PAPER, "training": {}, "variants": {}}

    def stage(name, fn):
        t0 = time.perf_counter()
        value = fn()
        stages[name] = round(time.perf_counter() - t0, 1)
        print(f"[miniature] {name}: {stages[name]} s", flush=True)
        return value

    result["variants"]["original"] = stage("eval original", lambda: _evaluate(
        "original", base_model(settings), tokenizer, plan, settings, device, progress))
    _free(device)
    trained = {}
    for arm in ("full", "hybrid"):
        run = stage(f"train {arm}", lambda arm=arm: train(settings, arm, run_dir=runs / arm, resume=False,
                                                           checkpoints=False, save_final=False,
                                                           progress=progress))
        result["training"][arm] = _training_record(run)
        trained[arm] = run.model
        del run
        _free(device)
    full_state = copy.deepcopy(trained["full"]).cpu()  # the post-hoc variants start from it
    for name in ("full", "hybrid"):
        result["variants"][name] = stage(f"eval {name}", lambda name=name: _evaluate(
            name, trained.pop(name), tokenizer, plan, settings, device, progress))
        _free(device)
    pattern = dict(settings.pattern)
    for name, full_layers in (("streaming", []), ("posthoc_hybrid", None)):
        model = to_posthoc_streaming(copy.deepcopy(full_state), full_layers=full_layers, pattern=pattern)
        result["variants"][name] = stage(f"eval {name}", lambda name=name, model=model: _evaluate(
            name, model, tokenizer, plan, settings, device, progress))
        del model
        _free(device)
    result["stage_seconds"] = stages
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    result["summary"] = summarize(result)
    if out is not None:
        write_results(result, out)
    return result


# ---------------------------------------------------------------------- outputs
def write_results(result: dict, out: str | Path) -> Path:
    """``out/miniature.json`` (+ the two PNGs when matplotlib is present); returns the JSON path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "miniature.json"
    write_json_atomic(path, result)
    try:
        import matplotlib.pyplot as plt
    except ImportError:  # a GPU node without matplotlib: the JSON has everything
        return path
    for name, plot in (("miniature_grids.png", plot_grids), ("miniature_training.png", plot_training)):
        fig = plot(result)
        fig.savefig(out / name, dpi=120, bbox_inches="tight")
        plt.close(fig)
    return path


def plot_grids(result: dict):
    """One paper-style heatmap per variant (depth x length), then mean score vs length."""
    import matplotlib.pyplot as plt

    names = list(result["variants"])
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(3.0 * (len(names) + 1), 3.0),
                             gridspec_kw={"width_ratios": [1] * len(names) + [1.3]})
    for ax, name in zip(axes, names):
        plot_grid(result["variants"][name]["grid"], title=name, ax=ax)
        if ax is not axes[0]:
            ax.set_ylabel("")
    ax = axes[-1]
    lengths = result["plan"]["lengths"]
    for name in names:
        means = result["variants"][name]["grid"]["mean_by_length"]
        ax.plot(range(len(lengths)), [means[str(n)] for n in lengths], marker="o", label=name)
    ax.set_xticks(range(len(lengths)), [format_tokens(n) for n in lengths])
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("context length")
    ax.set_ylabel(f"{result['plan']['task']} accuracy")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.suptitle(f"Miniature LongGen experiment ({result['preset']['name']}, {result['device']})", fontsize=10)
    fig.tight_layout()
    return fig


def plot_training(result: dict, task_label: str = "pass-key answers"):
    """Loss per step of every arm in ``result["training"]``: corpus text (LM) and retrieval answers
    (task, titled ``task_label``), where present. The extension experiment draws its arms with it too."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, key, label in zip(axes, ("lm_loss", "task_loss"), ("corpus text", task_label)):
        for arm, record in result["training"].items():
            points = [(r["step"], r[key]) for r in record["log"] if r[key] is not None]
            if points:
                ax.plot(*zip(*points), marker=".", lw=1, label=f"{arm} ({record['tokens_per_s']:,.0f} tok/s)")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def summary_text(result: dict) -> str:
    """Text twin of the figures: mean score per length and perplexity per variant, then the targets."""
    lengths = result["plan"]["lengths"]
    rows = []
    for name, v in result["variants"].items():
        means, ppl = v["grid"]["mean_by_length"], v["perplexity"]
        rows.append({"variant": name, "layers": v["layer_map"],
                     **{f"acc@{n}": f"{means[str(n)]:.2f}" for n in lengths},
                     **{f"ppl@{n}": f"{ppl[str(n)]:.1f}" for n in lengths}})
    lines = [format_table(rows)]
    summary = result["summary"]
    for name, score in summary.get("outside_window", {}).items():
        lines.append(f"{name}: {'n/a' if score is None else f'{score:.2f}'} on needles outside its window")
    for key, ok in summary.get("met", {}).items():
        lines.append(f"target {key}: {'met' if ok else 'n/a' if ok is None else 'missed'}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- command line
def main_miniature(args, plan: MiniaturePlan) -> int:
    """The ``miniature`` subcommand, given the :func:`checked_plan` of its arguments."""
    out = args.out or RUNS_DIR / f"miniature-{args.preset}"
    result = run_miniature(args.preset, out=out, progress=not args.no_progress, plan=plan)
    print(summary_text(result))
    print(f"wrote {out / 'miniature.json'} in {result['total_seconds']} s")
    return 0


def add_arguments(sub) -> None:
    """The ``miniature`` subcommand's options on an argparse subparsers object."""
    mini = sub.add_parser("miniature", help="full vs hybrid extension, then retrieval on every variant")
    mini.add_argument("--preset", default="cpu-tiny", choices=sorted(PLANS))
    mini.add_argument("--out", type=output_folder, default=None, metavar="DIR",
                      help="the folder to write miniature.json and the PNGs into (default runs/miniature-<preset>/)")
    mini.add_argument("--heldout", default=None, help="perplexity text (a .txt folder) when --set corpus is a "
                                                      "local folder")
    mini.add_argument("--no-progress", action="store_true")
    mini.set_defaults(func=main_miniature)

