"""Synthetic long-context retrieval samples, generated in-project from explicit seeds.

A sample is a prompt of exactly ``n_tokens`` tokens -- instruction, haystack with a needle at a
chosen depth, question -- and the answer that should follow. Pieces are tokenised separately
and concatenated as ids, so the prompt length is exact and the needle's position is known.

- :func:`passkey`: the classic pass-key test (a 5-digit number hidden in filler text).
- :func:`kv_retrieval`: a needle "The value of key <k> is <v>." among distractor pairs.
- :func:`niah`: Needle-in-a-Haystack ("The special magic number for <city> is: <n>.").
- RULER-style: :func:`multikey_niah` (one of several keyed needles), :func:`multivalue_niah`
  (every value of one key), :func:`variable_tracking` (follow a chain of assignments).
- BABILong-style: :func:`babi_single_fact` (qa1: where is a person) and
  :func:`babi_two_facts` (qa2: where is an object a person carried), facts scattered through the
  haystack with distracting moves of other people.

Every sample lists its ``answers``; :func:`score` is the fraction of them found in a generation.

Haystacks: ``"repeat"`` (the pass-key paper's repeated filler sentences) or ``"kjv"`` (held-out
King James Bible text, natural prose the model never trained on; see :mod:`longgen_core.data.corpora`).

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

from .corpora import documents

REPEAT_FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. "
                 "There and back again. ")


@dataclass
class Sample:
    """One retrieval sample. ``prompt_ids`` has exactly the requested length."""

    prompt_ids: list[int]
    answer: str
    answer_ids: list[int]
    needle_start: int  # token index of the (first) needle's first token in the prompt
    depth: float
    task: str
    answers: list[str] | None = None  # every item the answer must contain (default: [answer])
    needle_end: int | None = None  # token index just after the (first) needle

    def __post_init__(self):
        if self.answers is None:
            self.answers = [self.answer]

    def training_example(self, eos_id: int | None = None) -> dict:
        """``input_ids`` = prompt + answer (+ EOS); ``labels`` = -100 except on the answer."""
        tail = self.answer_ids + ([eos_id] if eos_id is not None else [])
        input_ids = torch.tensor(self.prompt_ids + tail, dtype=torch.long)
        labels = torch.full_like(input_ids, -100)
        labels[len(self.prompt_ids):] = input_ids[len(self.prompt_ids):]
        return {"input_ids": input_ids, "labels": labels}


def token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@lru_cache(maxsize=8)
def _haystack_ids(tokenizer, haystack: str, min_tokens: int) -> tuple[int, ...]:
    """At least ``min_tokens`` filler token ids (cached per tokenizer and haystack kind)."""
    if haystack == "repeat":
        unit = token_ids(tokenizer, REPEAT_FILLER)
        reps = min_tokens // max(1, len(unit)) + 1
        return tuple(unit * reps)
    if haystack == "kjv":
        ids: list[int] = []
        for doc in documents("kjv", split="heldout"):
            ids.extend(token_ids(tokenizer, doc + "\n"))
            if len(ids) >= min_tokens:
                return tuple(ids)
        raise ValueError(f"the kjv held-out text has {len(ids)} tokens, fewer than {min_tokens} needed")
    raise ValueError(f"haystack must be 'repeat' or 'kjv', got {haystack!r}")


def check_request(n_tokens: int, depth: float) -> None:
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    if n_tokens < 64:
        raise ValueError(f"n_tokens must be >= 64 to hold instruction, needle and question, got {n_tokens}")


def assemble(tokenizer, n_tokens: int, depth: float, seed: int, haystack: str | tuple,
              intro: str, needle: str, question: str, answer: str, task: str,
              distractors: list[str] = (), answers: list[str] | None = None,
              after: list[str] = (), before: list[str] = ()) -> Sample:
    """Instruction + haystack + question. The needle sits at ``depth``, distractors at random
    places, the ``after`` sentences at random places after the needle and the ``before``
    sentences before it, each group in its order. ``haystack`` is a kind (``"repeat"``,
    ``"kjv"``) or a tuple of filler token ids; a random stretch of it is used."""
    intro_ids, needle_ids, question_ids = (token_ids(tokenizer, intro), token_ids(tokenizer, needle),
                                           token_ids(tokenizer, question))
    distractor_ids = [token_ids(tokenizer, d) for d in distractors]
    after_ids = [token_ids(tokenizer, a) for a in after]
    before_ids = [token_ids(tokenizer, b) for b in before]
    fill = (n_tokens - len(intro_ids) - len(needle_ids) - len(question_ids) - sum(map(len, distractor_ids))
            - sum(map(len, after_ids)) - sum(map(len, before_ids)))
    if fill < 0:
        raise ValueError(f"n_tokens={n_tokens} is too short for this task (needs {n_tokens - fill})")
    rng = random.Random(seed)
    if isinstance(haystack, str):
        hay = _haystack_ids(tokenizer, haystack, fill + 4096)
    elif len(haystack) < fill:
        raise ValueError(f"the haystack holds {len(haystack)} tokens, fewer than the {fill} needed")
    else:
        hay = haystack
    start = rng.randrange(0, len(hay) - fill + 1)  # a different stretch of filler per seed
    hay = list(hay[start:start + fill])
    # insert only between sentences (after a token holding a full stop), so facts read as text
    ends = [0] + [i + 1 for i, t in enumerate(tokenizer.convert_ids_to_tokens(hay)) if "." in t]
    ends = ends if len(ends) > 1 else [0, len(hay)]  # no full stop at all: start or end
    needle_at = min(ends, key=lambda e: abs(e - depth * len(hay)))
    inserts = [(needle_at, 1, needle_ids)]  # (position in hay, order among equals, ids)
    inserts += [(rng.choice(ends), 0, ids) for ids in distractor_ids]
    later = [e for e in ends if e >= needle_at]
    inserts += [(pos, 2 + k, ids) for k, (pos, ids) in enumerate(zip(sorted(rng.choice(later) for _ in after_ids),
                                                                      after_ids))]
    earlier = [e for e in ends if e <= needle_at]  # at needle_at itself: ordered before the needle
    inserts += [(pos, k / (len(before_ids) + 1), ids)
                for k, (pos, ids) in enumerate(zip(sorted(rng.choice(earlier) for _ in before_ids), before_ids))]
    body, cursor, needle_start = [], 0, 0
    for pos, _, ids in sorted(inserts, key=lambda x: (x[0], x[1])):
        body += hay[cursor:pos]
        cursor = pos
        if ids is needle_ids:
            needle_start = len(body)
        body += ids
    body += hay[cursor:]
    prompt = intro_ids + body + question_ids
    assert len(prompt) == n_tokens
    return Sample(prompt_ids=prompt, answer=answer, answer_ids=token_ids(tokenizer, " " + answer),
                  needle_start=len(intro_ids) + needle_start, depth=depth, task=task, answers=answers,
                  needle_end=len(intro_ids) + needle_start + len(needle_ids))


def passkey(tokenizer, n_tokens: int, depth: float, seed: int, haystack: str = "repeat") -> Sample:
    """Pass-key retrieval: a random 5-digit key hidden at ``depth`` (0 = start, 1 = end)."""
    check_request(n_tokens, depth)
    key = str(random.Random(f"passkey-{seed}").randrange(10000, 100000))
    return assemble(
        tokenizer, n_tokens, depth, seed, haystack,
        intro="There is an important piece of information hidden inside a lot of irrelevant text. "
              "Find it and memorize it.\n",
        needle=f" The pass key is {key}. Remember it. {key} is the pass key. ",
        question="\nWhat is the pass key? The pass key is",
        answer=key, task="passkey")


def kv_retrieval(tokenizer, n_tokens: int, depth: float, seed: int, num_distractors: int = 4,
                 haystack: str = "repeat") -> Sample:
    """Key-value retrieval: the needle's key must be told apart from ``num_distractors`` others."""
    check_request(n_tokens, depth)
    rng = random.Random(f"kv-{seed}")
    words = ["apple", "river", "stone", "cloud", "maple", "tiger", "lemon", "piano", "comet", "ocean",
             "amber", "cedar", "delta", "ember", "falcon", "garnet", "harbor", "island", "jasper", "kettle"]
    keys = rng.sample(words, num_distractors + 1)
    values = [str(rng.randrange(1000, 10000)) for _ in keys]
    target_key, target_value = keys[0], values[0]
    return assemble(
        tokenizer, n_tokens, depth, seed, haystack,
        intro="Some special keys and their values are hidden in the text below. Remember them.\n",
        needle=f" The value of key {target_key} is {target_value}. ",
        question=f"\nWhat is the value of key {target_key}? The value of key {target_key} is",
        answer=target_value, task="kv_retrieval",
        distractors=[f" The value of key {k} is {v}. " for k, v in zip(keys[1:], values[1:])])


def score(sample: Sample, generated: str) -> float:
    """Fraction of ``sample.answers`` that appear in ``generated`` (1.0 or 0.0 for one answer)."""
    return sum(a in generated for a in sample.answers) / len(sample.answers)


CITIES = ["Lisbon", "Nairobi", "Oslo", "Lima", "Hanoi", "Quito", "Dakar", "Perth", "Riga", "Tunis",
          "Bergen", "Cusco", "Malmo", "Porto", "Sapporo", "Tbilisi"]
PEOPLE = ["Mary", "John", "Sandra", "Daniel"]
PLACES = ["bathroom", "hallway", "kitchen", "garden", "office", "bedroom"]
OBJECTS = ["football", "apple", "milk"]
MOVES = ["moved to the", "went to the", "travelled to the", "journeyed to the"]


def niah(tokenizer, n_tokens: int, depth: float, seed: int, haystack: str = "kjv") -> Sample:
    """Needle-in-a-Haystack: one magic number for one city, natural-prose haystack by default."""
    check_request(n_tokens, depth)
    rng = random.Random(f"niah-{seed}")
    city, number = rng.choice(CITIES), str(rng.randrange(1_000_000, 10_000_000))
    return assemble(tokenizer, n_tokens, depth, seed, haystack,
                     intro="A special magic number is hidden in the text below. Remember it.\n",
                     needle=f" The special magic number for {city} is: {number}. ",
                     question=f"\nWhat is the special magic number for {city}? The special magic number for "
                              f"{city} is:",
                     answer=number, task="niah")


def multikey_niah(tokenizer, n_tokens: int, depth: float, seed: int, num_keys: int = 4,
                  haystack: str = "kjv") -> Sample:
    """RULER multi-key NIAH: ``num_keys`` keyed needles; the question asks for one (at ``depth``)."""
    check_request(n_tokens, depth)
    rng = random.Random(f"mk-{seed}")
    cities = rng.sample(CITIES, num_keys)
    numbers = [str(rng.randrange(1_000_000, 10_000_000)) for _ in cities]
    return assemble(tokenizer, n_tokens, depth, seed, haystack,
                     intro="Special magic numbers are hidden in the text below. Remember them.\n",
                     needle=f" The special magic number for {cities[0]} is: {numbers[0]}. ",
                     question=f"\nWhat is the special magic number for {cities[0]}? The special magic number "
                              f"for {cities[0]} is:",
                     answer=numbers[0], task="multikey_niah",
                     distractors=[f" The special magic number for {c} is: {n}. "
                                  for c, n in zip(cities[1:], numbers[1:])])


def multivalue_niah(tokenizer, n_tokens: int, depth: float, seed: int, num_values: int = 3,
                    haystack: str = "kjv") -> Sample:
    """RULER multi-value NIAH: one key, ``num_values`` numbers spread out; all must be recalled."""
    check_request(n_tokens, depth)
    rng = random.Random(f"mv-{seed}")
    city = rng.choice(CITIES)
    numbers = [str(rng.randrange(1_000_000, 10_000_000)) for _ in range(num_values)]
    return assemble(tokenizer, n_tokens, depth, seed, haystack,
                     intro="Special magic numbers are hidden in the text below. Remember all of them.\n",
                     needle=f" One of the special magic numbers for {city} is: {numbers[0]}. ",
                     question=f"\nWhat are all the special magic numbers for {city}? They are:",
                     answer=", ".join(numbers), task="multivalue_niah", answers=numbers,
                     distractors=[f" One of the special magic numbers for {city} is: {n}. " for n in numbers[1:]])


def variable_tracking(tokenizer, n_tokens: int, depth: float, seed: int, chain: int = 4,
                      haystack: str = "repeat") -> Sample:
    """RULER variable tracking: ``VAR A = 12345``, ``VAR B = VAR A``, ...; name every variable
    that holds the value. The first assignment sits at ``depth``, the copies later, in order."""
    check_request(n_tokens, depth)
    rng = random.Random(f"vt-{seed}")
    names = ["".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(5)) for _ in range(chain)]
    value = str(rng.randrange(10000, 100000))
    copies = [f" VAR {b} = VAR {a}. " for a, b in zip(names, names[1:])]
    return assemble(tokenizer, n_tokens, depth, seed, haystack,
                     intro="Memorize and track the chain of variable assignments hidden in the text.\n",
                     needle=f" VAR {names[0]} = {value}. ", after=copies,
                     question=f"\nQuestion: Find all variables that are assigned the value {value}. "
                              f"Answer: The variables are:",
                     answer=" ".join(names), task="variable_tracking", answers=names)


def _story(rng: random.Random, subject_facts: list[str], num_distractors: int) -> list[str]:
    """Distracting moves of other people, as sentences."""
    others = [p for p in PEOPLE if not any(f.startswith(f" {p} ") for f in subject_facts)]
    return [f" {rng.choice(others)} {rng.choice(MOVES)} {rng.choice(PLACES)}. " for _ in range(num_distractors)]


def babi_single_fact(tokenizer, n_tokens: int, depth: float, seed: int, num_distractors: int = 4,
                     haystack: str = "kjv") -> Sample:
    """BABILong qa1-style: "Mary moved to the kitchen." hidden at ``depth``; "Where is Mary?"."""
    check_request(n_tokens, depth)
    rng = random.Random(f"qa1-{seed}")
    person, place = rng.choice(PEOPLE), rng.choice(PLACES)
    fact = f" {person} {rng.choice(MOVES)} {place}. "
    return assemble(tokenizer, n_tokens, depth, seed, haystack,
                     intro="Facts about people are hidden in the text below. Answer the question about them.\n",
                     needle=fact, question=f"\nQuestion: Where is {person}? Answer: {person} is in the",
                     answer=place, task="babi_single_fact", distractors=_story(rng, [fact], num_distractors))


def babi_two_facts(tokenizer, n_tokens: int, depth: float, seed: int, num_distractors: int = 4,
                   haystack: str = "kjv") -> Sample:
    """BABILong qa2-style: "John picked up the milk." at ``depth``, somewhere later "John went to
    the office."; "Where is the milk?" needs both facts."""
    check_request(n_tokens, depth)
    rng = random.Random(f"qa2-{seed}")
    person, obj, place = rng.choice(PEOPLE), rng.choice(OBJECTS), rng.choice(PLACES)
    pick_up, move = f" {person} picked up the {obj}. ", f" {person} {rng.choice(MOVES)} {place}. "
    return assemble(tokenizer, n_tokens, depth, seed, haystack,
                     intro="Facts about people and objects are hidden in the text below. Answer the question.\n",
                     needle=pick_up, after=[move],
                     question=f"\nQuestion: Where is the {obj}? Answer: The {obj} is in the",
                     answer=place, task="babi_two_facts", distractors=_story(rng, [pick_up], num_distractors))


TASKS = {"passkey": passkey, "kv_retrieval": kv_retrieval, "niah": niah, "multikey_niah": multikey_niah,
         "multivalue_niah": multivalue_niah, "variable_tracking": variable_tracking,
         "babi_single_fact": babi_single_fact, "babi_two_facts": babi_two_facts}
