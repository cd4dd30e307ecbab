"""Named training scales: ``cpu-tiny`` (default), ``gpu-small``, ``paper-7b-128k``.

A :class:`Preset` is a small frozen record of everything a finetuning run needs: model source,
original / target / training lengths, RoPE base, sparse pattern and full layers, optimisation,
data mix, checkpointing and precision. :func:`get_preset` returns one by name, with overrides
validated (``get_preset("gpu-small", steps=20)``).

``cpu-tiny`` -- the CI / Binder / laptop scale: ~0.5 s per step, ~20 s for 40 steps on 2 idle CPU cores
    (measured; several times that on a busy shared machine).
    SmolLM2-135M-Instruct *truncated to its first 6 of 30 decoder layers* (real tokenizer,
    embeddings and attention weights; the full model runs ~5 s per 256-token step on 2 busy
    cores, too slow for a demo), trained at 256 tokens with the same RoPE change as gpu-small
    (8K -> 32K, base 1e5 -> 1.2e6) and a window of 1/8 of the training length (sink 4 +
    window 32, as 4096 is 1/8 of 32K). The token embeddings (tied to the output head) stay
    frozen, so the 6 layers learn to speak to the pretrained head. The truncated model starts
    far from good (the head expects the 30th layer's features), so the loss falls fast: this
    scale checks the mechanics -- conversion, RoPE change, chunked loss, checkpoints, resume --
    not long-context quality. No synthetic samples: at 256 tokens their answer-only loss would
    only add noise to a 40-step curve. One checkpoint is kept (each is ~370 MB, mostly the
    frozen 49K x 576 embedding and the AdamW state of the layers).
``gpu-small`` -- one H100, a few minutes: SmolLM2-135M, 8K -> 32K, base 1e5 -> 1.2e6, sink 64 +
    window 4096 in 20 of 30 layers (10-19 full), 100 steps of one 32K sequence, bf16, gradient
    checkpointing, 1/4 synthetic retrieval samples (pass key / key-value).
``paper-7b-128k`` -- the paper's recipe as far as it is published (documented, not run here):
    Llama-2-7B, 4K -> 128K, RoPE base 5M, middle third full, sink 64 + window 4096 elsewhere,
    ~5B tokens. *Assumed* (not stated in what we could read of the paper): the optimiser
    settings, which follow Fu et al. 2024 ("Data Engineering for Scaling Language Models to 128K
    Context", the length-upsampled SlimPajama recipe LongGen builds on): lr 2e-5, 4M-token
    batches (32 x 128K: micro-batch 1, 4 accumulation steps on 8 GPUs), 1200 steps = 5.0B tokens.
    The corpus path is a placeholder for that data as local jsonl/parquet (or a hub id
    ``"hf:owner/name"`` where the node has network).

Example::

    >>> p = get_preset("gpu-small")
    >>> p.seq_len, p.resolved_rope_theta(1e5)
    (32768, 1200000.0)
    >>> get_preset("cpu-tiny", steps=2).steps
    2
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..models.rope import extended_rope_theta

__all__ = ["Preset", "PRESETS", "DEFAULT_PRESET", "TRAINABLE", "DTYPES", "GPU_SCALE_PREFIXES", "get_preset",
           "is_gpu_scale", "smollm2_config", "base_config"]

TRAINABLE = ("all", "layers", "attention")  # see Preset.trainable
DTYPES = ("fp32", "bf16")
GPU_SCALE_PREFIXES = ("gpu-", "paper-")  # see is_gpu_scale
# What each annotation of a Preset field accepts: JSON and Python literals give lists for tuples
# and ints for whole floats (``--set rope_theta 5000000``), so those pass; bools never pass for
# numbers (see _is_a).
_ACCEPTS = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "dict": (dict,),
            "tuple": (tuple, list), "None": (type(None),)}
_SAY = {"str": "a string", "int": "an int", "float": "a number", "bool": "true or false", "dict": "a dict",
        "tuple": "a list", "None": "None"}


def _is_a(value, type_name: str) -> bool:
    """Whether ``value`` fits one name of a field annotation (``"int"``, ``"None"``...)."""
    if isinstance(value, bool) and type_name in ("int", "float"):
        return False  # True is an int to Python, never a step count or a rate to a user
    return isinstance(value, _ACCEPTS[type_name])


@dataclass(frozen=True)
class Preset:
    """One training scale. Lengths are in tokens; ``steps`` counts optimizer steps.

    Model: ``model`` is a :func:`~longgen_core.models.base.load_model` source (``"smollm2"``, a local
    directory or a hub id); ``random_init`` builds its architecture with random weights instead
    (speed measurements on machines without the weights); ``num_layers`` keeps only the first
    decoder layers; ``model_overrides`` changes config fields of a random-init model (tests);
    ``tokenizer`` defaults to the model's own.

    Length extension: the model was trained at ``original_len``; after the RoPE change it
    supports ``target_len`` positions; it is finetuned on sequences of ``seq_len`` (default
    ``target_len``) tokens. ``rope_theta=None`` applies :func:`longgen_core.models.rope.extended_rope_theta`.

    Hybrid: ``pattern`` (a :func:`~longgen_core.models.settings.pattern_from_dict` dict) in every layer
    but ``full_layers`` (``None``: the middle third).

    Optimisation: AdamW (``lr``, ``weight_decay``, betas 0.9/0.95), linear warm-up over
    ``warmup_steps`` (at most ``steps``) then cosine decay to ``min_lr_ratio * lr``; gradients clipped to
    ``max_grad_norm``; ``batch_size`` sequences per device per micro-step, ``grad_accum``
    micro-steps per optimizer step. ``trainable``: ``"all"``, ``"layers"`` (decoder layers and
    final norm; embeddings and head frozen) or ``"attention"`` (the q/k/v/o projections only).

    Data: ``corpus`` (:func:`~longgen_core.data.corpora.documents` source: a shipped corpus, a local
    file or folder, a hub id ``"hf:owner/name"``; or ``"random"`` tokens for speed runs) and a
    ``synthetic_ratio`` share of ``synthetic_tasks`` retrieval samples.

    Run: a checkpoint every ``checkpoint_every`` steps (0: only at the end), the last
    ``keep_checkpoints`` kept; ``dtype`` ``"bf16"`` = bf16 autocast on GPU (fp32 on CPU);
    ``loss_chunk`` positions per chunk of the cross-entropy; ``fused_norms`` swaps the RMSNorm
    modules for :class:`~longgen_core.models.fused.FusedRMSNorm` (same math, fewer kernels).
    """

    name: str
    description: str
    model: str = "smollm2"
    tokenizer: str | None = None
    random_init: bool = False
    num_layers: int | None = None
    model_overrides: tuple = ()
    original_len: int = 8192
    target_len: int = 32768
    seq_len: int | None = None
    rope_theta: float | None = None
    pattern: dict = field(default_factory=lambda: {"kind": "sink_window", "sink_tokens": 64,
                                                   "window_tokens": 4096})
    full_layers: tuple | None = None
    steps: int = 100
    batch_size: int = 1
    grad_accum: int = 1
    lr: float = 5e-5
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    trainable: str = "all"
    corpus: str = "kjv"
    split: str = "train"
    synthetic_ratio: float = 0.0
    synthetic_tasks: tuple = ("passkey", "kv_retrieval")
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    dtype: str = "bf16"
    gradient_checkpointing: bool = True
    fused_norms: bool = True
    loss_chunk: int = 4096
    seed: int = 0

    def __post_init__(self):
        # Types first: the normalising below would itself crash on e.g. full_layers=5.
        wrong = self.type_errors()
        if wrong:
            raise ValueError("\n".join(wrong))
        # Frozen: normalise through object.__setattr__ (lists from JSON/CLI become tuples).
        if self.seq_len is None:
            object.__setattr__(self, "seq_len", self.target_len)
        if self.full_layers is not None:
            object.__setattr__(self, "full_layers", tuple(self.full_layers))
        object.__setattr__(self, "synthetic_tasks", tuple(self.synthetic_tasks))
        object.__setattr__(self, "model_overrides", tuple(tuple(kv) for kv in self.model_overrides))
        self._validate()

    def type_errors(self) -> list[str]:
        """One line per field whose value is not of its annotated type (``--set seed 1.5``).

        Example::

            >>> PRESETS["cpu-tiny"].type_errors()
            []
        """
        wrong = []
        for f in dataclasses.fields(self):
            names = [t.strip() for t in f.type.split("|")]
            value = getattr(self, f.name)
            if not any(_is_a(value, name) for name in names):
                wrong.append(f"{f.name} must be {' or '.join(_SAY[n] for n in names)}, "
                             f"got {value!r} ({type(value).__name__})")
        return wrong

    def _validate(self) -> None:
        def positive_int(name, minimum=1):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")

        for name in ("original_len", "target_len", "seq_len", "steps", "batch_size", "grad_accum",
                     "keep_checkpoints", "loss_chunk"):
            positive_int(name)
        positive_int("warmup_steps", 0)
        positive_int("checkpoint_every", 0)
        if self.num_layers is not None:
            positive_int("num_layers")
        if self.seq_len < 2:
            raise ValueError(f"seq_len must be >= 2 (a next-token target), got {self.seq_len}")
        if self.target_len < self.original_len:
            raise ValueError(f"target_len ({self.target_len}) must be >= original_len ({self.original_len})")
        if self.seq_len > self.target_len:
            raise ValueError(f"seq_len {self.seq_len} is beyond the RoPE-extended range of the model "
                             f"(target_len = {self.target_len} positions): raise target_len (the RoPE base "
                             f"follows) or train on shorter sequences")
        if not 0.0 <= self.synthetic_ratio <= 1.0:
            raise ValueError(f"synthetic_ratio must be in [0, 1], got {self.synthetic_ratio}")
        from ..data.suite import SUITE_TASKS

        allowed = ("passkey", "kv_retrieval", *SUITE_TASKS)
        unknown = set(self.synthetic_tasks) - set(allowed)
        if unknown or not self.synthetic_tasks:
            raise ValueError(f"synthetic_tasks must be a non-empty subset of {allowed}, got {self.synthetic_tasks}")
        if self.trainable not in TRAINABLE:
            raise ValueError(f"trainable must be one of {TRAINABLE}, got {self.trainable!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if not (self.lr > 0 and 0 <= self.min_lr_ratio <= 1 and self.weight_decay >= 0
                and self.max_grad_norm > 0):
            raise ValueError(f"need lr > 0, 0 <= min_lr_ratio <= 1, weight_decay >= 0, max_grad_norm > 0; "
                             f"got lr={self.lr}, min_lr_ratio={self.min_lr_ratio}, "
                             f"weight_decay={self.weight_decay}, max_grad_norm={self.max_grad_norm}")
        if self.rope_theta is not None and not self.rope_theta > 1:
            raise ValueError(f"rope_theta must be > 1 or None (the rule), got {self.rope_theta}")
        if self.corpus == "random" and self.synthetic_ratio > 0:
            raise ValueError("corpus 'random' has no text to build retrieval samples from: "
                             "set synthetic_ratio=0")

    # ------------------------------------------------------------------ derived values
    def resolved_rope_theta(self, base: float) -> float:
        """The RoPE base to train with, given the model's original ``base``."""
        if self.rope_theta is not None:
            return float(self.rope_theta)
        return extended_rope_theta(base, self.original_len, self.target_len)

    def tokens_per_step(self, num_processes: int = 1) -> int:
        """Tokens in one optimizer step over all processes."""
        return self.seq_len * self.batch_size * self.grad_accum * num_processes

    def replace(self, **overrides) -> "Preset":
        """A copy with ``overrides`` applied and validated; unknown names are an error."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown preset field(s) {unknown}; fields are {sorted(names)}")
        changed = dict(overrides)
        if "target_len" in changed and "seq_len" not in changed and self.seq_len == self.target_len:
            changed["seq_len"] = None  # keep "train at the target length" when only the target moves
        return dataclasses.replace(self, **changed)

    def to_dict(self) -> dict:
        """JSON-able dict of every field (tuples become lists)."""
        return {k: (list(map(list, v)) if k == "model_overrides" else list(v) if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(self).items()}


PRESETS = {
    "cpu-tiny": Preset(
        name="cpu-tiny",
        description="SmolLM2-135M cut to its first 6 layers, 256-token sequences, 40 steps on the CPU "
                    "(~20 s of training on 2 idle cores): the mechanics, not long-context quality",
        num_layers=6, original_len=8192, target_len=32768, seq_len=256,
        pattern={"kind": "sink_window", "sink_tokens": 4, "window_tokens": 32},
        steps=40, lr=1e-3, warmup_steps=4, trainable="layers", synthetic_ratio=0.0,
        checkpoint_every=20, keep_checkpoints=1, dtype="fp32", gradient_checkpointing=False, loss_chunk=128),
    "gpu-small": Preset(
        name="gpu-small",
        description="SmolLM2-135M, 8K -> 32K, 100 steps of one 32K sequence on one H100 (a few minutes)",
        original_len=8192, target_len=32768, steps=100, lr=5e-5, warmup_steps=10, synthetic_ratio=0.25,
        checkpoint_every=50, dtype="bf16", gradient_checkpointing=True, loss_chunk=4096),
    "paper-7b-128k": Preset(
        name="paper-7b-128k",
        description="Llama-2-7B, 4K -> 128K, RoPE base 5M, ~5B tokens (the paper's recipe; GPU cluster)",
        model="meta-llama/Llama-2-7b-hf", original_len=4096, target_len=131072, rope_theta=5e6,
        steps=1200, batch_size=1, grad_accum=4, lr=2e-5, warmup_steps=20, min_lr_ratio=0.1,
        corpus="data/slimpajama-128k.jsonl", synthetic_ratio=0.0,
        checkpoint_every=100, keep_checkpoints=2, dtype="bf16", gradient_checkpointing=True, loss_chunk=8192),
}
DEFAULT_PRESET = "cpu-tiny"


def get_preset(name: str | Preset = DEFAULT_PRESET, **overrides) -> Preset:
    """The preset called ``name`` (or ``name`` itself if it is a Preset) with ``overrides``."""
    if isinstance(name, Preset):
        preset = name
    elif name in PRESETS:
        preset = PRESETS[name]
    else:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return preset.replace(**overrides) if overrides else preset


def is_gpu_scale(name: str) -> bool:
    """Whether preset ``name`` is sized for a GPU (``gpu-*``, ``paper-*``): the command lines refuse
    to start it without CUDA unless told ``--device cpu``.

    Example::

        >>> is_gpu_scale("gpu-small"), is_gpu_scale("paper-7b-128k"), is_gpu_scale("cpu-tiny")
        (True, True, False)
    """
    return name.startswith(GPU_SCALE_PREFIXES)


def smollm2_config():
    """SmolLM2-135M's architecture (no weights): for ``random_init`` where the checkpoint is absent.

    30 layers, hidden 576, 9 heads / 3 KV heads (head_dim 64), MLP 1536, vocab 49152, tied
    embeddings, RoPE base 1e5, 8K positions -- the values of the cached checkpoint's config.json.
    """
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                       max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True,
                       bos_token_id=1, eos_token_id=2, pad_token_id=2,
                       rope_parameters={"rope_type": "default", "rope_theta": 100000.0})


def base_config(model: str):
    """The config of a model source without loading weights (for ``random_init``).

    ``"smollm2"``: the cached checkpoint's config when present, else :func:`smollm2_config`;
    ``"meta-llama/Llama-2-7b-hf"``: :func:`~longgen_core.models.base.llama2_7b_config` when the hub is
    unreachable; otherwise ``AutoConfig.from_pretrained(model)``.
    """
    from transformers import AutoConfig

    from ..models.base import llama2_7b_config, smollm2_dir

    if model == "smollm2":
        path = smollm2_dir()
        return AutoConfig.from_pretrained(path) if (path / "config.json").exists() else smollm2_config()
    try:
        return AutoConfig.from_pretrained(model)
    except OSError:
        if model == "meta-llama/Llama-2-7b-hf":
            return llama2_7b_config()
        raise
