"""Synthetic long-context retrieval samples, generated in-project from explicit seeds.

A sample is a prompt of exactly ``n_tokens`` tokens -- instruction, haystack with a needle at a
chosen depth, question -- and the answer that should follow. Pieces are tokenised separately
and concatenated as ids, so the prompt length is exact and the needle's position is known.

- :func:`passkey`: the classic pass-key test (a 5-digit number hidden in filler text).
- :func:`kv_retrieval`: a needle "The value of key <k> is <v>." among distractor pairs.

Haystacks: ``"repeat"`` (the pass-key paper's repeated filler sentences) or ``"kjv"`` (held-out
King James Bible text, natural prose the model never trained on; see :mod:`longgen_core.data`).

Example::

    >>> from transformers import AutoTokenizer        # doctest: +SKIP
    >>> s = passkey(tok, n_tokens=1024, depth=0.5, seed=0)  # doctest: +SKIP
    >>> len(s.prompt_ids), s.answer                    # doctest: +SKIP
    (1024, '71432')
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

import torch

REPEAT_FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. "
                 "There and back again. ")


@dataclass
class Sample:
    """One retrieval sample. ``prompt_ids`` has exactly the requested length."""

    prompt_ids: list[int]
    answer: str
    answer_ids: list[int]
    needle_start: int  # token index of the needle's first token in the prompt
    depth: float
    task: str

    def training_example(self, eos_id: int | None = None) -> dict:
        """``input_ids`` = prompt + answer (+ EOS); ``labels`` = -100 except on the answer."""
        tail = self.answer_ids + ([eos_id] if eos_id is not None else [])
        input_ids = torch.tensor(self.prompt_ids + tail, dtype=torch.long)
        labels = torch.full_like(input_ids, -100)
        labels[len(self.prompt_ids):] = input_ids[len(self.prompt_ids):]
        return {"input_ids": input_ids, "labels": labels}


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@lru_cache(maxsize=8)
def _haystack_ids(tokenizer, haystack: str, min_tokens: int) -> tuple[int, ...]:
    """At least ``min_tokens`` filler token ids (cached per tokenizer and haystack kind)."""
    if haystack == "repeat":
        unit = _ids(tokenizer, REPEAT_FILLER)
        reps = min_tokens // max(1, len(unit)) + 1
        return tuple(unit * reps)
    if haystack == "kjv":
        from .data import documents

        ids: list[int] = []
        for doc in documents("kjv", split="heldout"):
            ids.extend(_ids(tokenizer, doc + "\n"))
            if len(ids) >= min_tokens:
                return tuple(ids)
        raise ValueError(f"the kjv held-out text has {len(ids)} tokens, fewer than {min_tokens} needed")
    raise ValueError(f"haystack must be 'repeat' or 'kjv', got {haystack!r}")


def _check(n_tokens: int, depth: float) -> None:
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    if n_tokens < 64:
        raise ValueError(f"n_tokens must be >= 64 to hold instruction, needle and question, got {n_tokens}")


def _assemble(tokenizer, n_tokens: int, depth: float, seed: int, haystack: str,
              intro: str, needle: str, question: str, answer: str, task: str,
              distractors: list[str] = ()) -> Sample:
    """Instruction + haystack (needle at ``depth``, distractors at random places) + question."""
    intro_ids, needle_ids, question_ids = _ids(tokenizer, intro), _ids(tokenizer, needle), _ids(tokenizer, question)
    distractor_ids = [_ids(tokenizer, d) for d in distractors]
    fill = n_tokens - len(intro_ids) - len(needle_ids) - len(question_ids) - sum(map(len, distractor_ids))
    if fill < 0:
        raise ValueError(f"n_tokens={n_tokens} is too short for this task (needs {n_tokens - fill})")
    rng = random.Random(seed)
    hay = _haystack_ids(tokenizer, haystack, fill + 4096)
    start = rng.randrange(0, len(hay) - fill + 1)  # a different stretch of filler per seed
    hay = list(hay[start:start + fill])
    # insert distractors first (at random offsets), then the needle at its depth
    for ids in distractor_ids:
        at = rng.randrange(0, len(hay) + 1)
        hay[at:at] = ids
    needle_at = round(depth * len(hay))
    body = hay[:needle_at] + needle_ids + hay[needle_at:]
    prompt = intro_ids + body + question_ids
    assert len(prompt) == n_tokens
    return Sample(prompt_ids=prompt, answer=answer, answer_ids=_ids(tokenizer, " " + answer),
                  needle_start=len(intro_ids) + needle_at, depth=depth, task=task)


def passkey(tokenizer, n_tokens: int, depth: float, seed: int, haystack: str = "repeat") -> Sample:
    """Pass-key retrieval: a random 5-digit key hidden at ``depth`` (0 = start, 1 = end)."""
    _check(n_tokens, depth)
    key = str(random.Random(f"passkey-{seed}").randrange(10000, 100000))
    return _assemble(
        tokenizer, n_tokens, depth, seed, haystack,
        intro="There is an important piece of information hidden inside a lot of irrelevant text. "
              "Find it and memorize it.\n",
        needle=f" The pass key is {key}. Remember it. {key} is the pass key. ",
        question="\nWhat is the pass key? The pass key is",
        answer=key, task="passkey")


def kv_retrieval(tokenizer, n_tokens: int, depth: float, seed: int, num_distractors: int = 4,
                 haystack: str = "repeat") -> Sample:
    """Key-value retrieval: the needle's key must be told apart from ``num_distractors`` others."""
    _check(n_tokens, depth)
    rng = random.Random(f"kv-{seed}")
    words = ["apple", "river", "stone", "cloud", "maple", "tiger", "lemon", "piano", "comet", "ocean",
             "amber", "cedar", "delta", "ember", "falcon", "garnet", "harbor", "island", "jasper", "kettle"]
    keys = rng.sample(words, num_distractors + 1)
    values = [str(rng.randrange(1000, 10000)) for _ in keys]
    target_key, target_value = keys[0], values[0]
    return _assemble(
        tokenizer, n_tokens, depth, seed, haystack,
        intro="Some special keys and their values are hidden in the text below. Remember them.\n",
        needle=f" The value of key {target_key} is {target_value}. ",
        question=f"\nWhat is the value of key {target_key}? The value of key {target_key} is",
        answer=target_value, task="kv_retrieval",
        distractors=[f" The value of key {k} is {v}. " for k, v in zip(keys[1:], values[1:])])
