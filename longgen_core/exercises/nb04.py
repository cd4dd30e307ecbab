"""The checkers of notebook 04 (long-context finetuning): the RoPE base of a 16x extension, the
memory the chunked loss saves, and resuming the training stream at a checkpoint's data position.

The library's training stack is imported inside the checkers (see :mod:`longgen_core.exercises.nb03`).
"""

from __future__ import annotations

GiB = 2**30


def rope_base_16x(base) -> tuple[bool, str]:
    """04.1: the RoPE base for Llama-2 (base 1e4, head_dim 128) extended 4K -> 64K by the rule."""
    from ..models.rope import ROPE_EXPONENT, extended_rope_theta, slow_pairs

    try:
        base = float(base)
    except (TypeError, ValueError):
        return False, "answer with a number, the new RoPE base"
    want = extended_rope_theta(1e4, 4096, 65536)
    pretrained = slow_pairs(1e4, 128, 4096)
    if abs(base - want) <= 1e-6 * want:
        return True, (f"base {want:.2g}: {slow_pairs(want, 128, 65536)} of 64 rotary pairs stay below one turn at "
                      f"64K, as {pretrained} did at 4K; 16x the length is {16 ** ROPE_EXPONENT:.0f}x the base, not 16x")
    if base <= 1:
        return False, f"a RoPE base is a number > 1, got {base:g}"
    return False, (f"base {base:.3g} leaves {slow_pairs(base, 128, 65536)} pairs below one turn at 64K "
                   f"(pretraining left {pretrained} at 4K); use the notebook's rule, extended_rope_theta")


def logits_memory(answer) -> tuple[bool, str]:
    """04.2: ``(whole, chunked)``: GiB of the logits of one 131,072-token SmolLM2 sequence, all at once
    and in chunks of ``PRESETS["gpu-small"].loss_chunk`` positions (the loss computes them in fp32)."""
    from ..train.presets import PRESETS, smollm2_config

    try:
        whole, chunked = (float(x) for x in answer)
    except (TypeError, ValueError):
        return False, "answer with a pair: (GiB without chunks, GiB of one chunk)"
    vocab, chunk = smollm2_config().vocab_size, PRESETS["gpu-small"].loss_chunk
    want_whole = [n * vocab * 4 / GiB for n in (131072, 131071)]  # every position, or those with a target
    want_chunk = chunk * vocab * 4 / GiB
    if not any(abs(whole - w) <= 1e-3 * w for w in want_whole):
        half = any(abs(whole - w / 2) <= 1e-3 * w for w in want_whole)
        return False, (f"{whole:.2f} GiB for the whole sequence: " +
                       ("that is bf16; the loss upcasts its logits to fp32 (4 bytes)" if half else
                        f"count positions x vocabulary ({vocab:,}) x 4 bytes"))
    if abs(chunked - want_chunk) > 1e-3 * want_chunk:
        return False, f"{chunked:.3f} GiB per chunk: a chunk is {chunk:,} positions x {vocab:,} x 4 bytes"
    return True, (f"{want_whole[0]:.0f} GiB at once (and as much again for its gradient) against {want_chunk:.2f} GiB "
                  f"per chunk of {chunk:,}: {131072 // chunk}x less, and it no longer grows with the sequence")


def resumed_item(item) -> tuple[bool, str]:
    """04.3: the first item a run resumed from the stream's state after 7 items reads: item 7 of
    the uninterrupted stream (KJV, 256 tokens, seed 0, a quarter of synthetic samples)."""
    import torch

    from ..data.stream import TrainingStream
    from ..train.loop import load_tokenizer
    from ..train.presets import get_preset

    ids = item.get("input_ids") if isinstance(item, dict) else None
    if not isinstance(ids, torch.Tensor):
        return False, "answer with an item of the stream: the dict next(stream) returns"
    stream = TrainingStream("kjv", load_tokenizer(get_preset("cpu-tiny")), seq_len=256, seed=0, synthetic_ratio=0.25)
    items = [next(stream) for _ in range(12)]
    found = [i for i, it in enumerate(items) if it["input_ids"].shape == ids.shape
             and torch.equal(it["input_ids"], ids)]
    if found == [7]:
        corpus = sum(it["kind"] == "corpus" for it in items[:7])
        return True, (f"item 7 ({items[7]['kind']}), the tensor the uninterrupted run read: the state carries the "
                      f"corpus to its next token after the {corpus} corpus sequences among the first 7 items, and the "
                      f"per-item generators depend only on (seed, 7)")
    if found:
        return False, f"this is item {found[0]} of the stream ({items[found[0]]['kind']}); the run resumes at item 7"
    return False, "not one of the first 12 items of this stream: KJV, seq_len 256, seed 0, synthetic_ratio 0.25"
