"""The evaluation suite (RULER/BABILong-style) and its training twin: same tasks, disjoint wording.

Six tasks, each a generator ``(tokenizer, n_tokens, depth, seed, split="heldout", ...) -> Sample``
(:class:`~longgen_core.data.tasks.Sample`: ``prompt_ids`` of exactly ``n_tokens`` tokens, the first
needle's token span ``needle_start:needle_end``, ``answers`` to be found in a generation):

- ``niah_single``: one natural-sentence needle "The hidden code belonging to Kyoto is 48213."
- ``niah_multikey``: several needles of one phrasing with different keys; one key is asked.
- ``niah_multivalue``: several values of one key spread out; every value is asked.
- ``variable_tracking``: ``VAR ABCDE = 48213``, then copies ``VAR FGHIJ = VAR ABCDE`` ...;
  name every variable holding the value (plus a distracting chain with another value).
- ``babilong_qa1``: "Where is Mary?" -- her last move (earlier moves of hers and other people's
  moves distract).
- ``babilong_qa2``: "Where is the milk?" -- who picked it up, then where that person went last.

:data:`SUITE_TASKS` maps the names to the generators, :func:`score` scores a generation the way
RULER does (:func:`string_match_all`), :func:`training_sample` draws a training variant (counts
varied per seed, ``split="train"``) for :class:`~longgen_core.data.TrainingStream`.

The split rule (what makes "training data that is not the test"):

1. Every phrasing (instruction, needle + question + answer prefix, variable statements, moves,
   questions) and every word vocabulary (keys, word values, names, places, objects) is written
   twice, as two separate hand-made lists in :data:`POOLS`: ``POOLS[pool]["train"]`` and
   ``POOLS[pool]["heldout"]``. No item is in both (tested), and no held-out needle fits any
   training phrasing (tested by matching rendered needles against every training template).
   The held-out lists hold RULER's and bAbI's own wording (so the scores read like theirs); the
   training lists hold other wordings written for this project.
2. Generated items -- numbers of 4 to 9 digits, UUID-like and letter-digit codes, variable names,
   numbered keys -- belong to the split :func:`split_of` gives: ``"heldout"`` when
   ``zlib.crc32(item) % 4 == 0`` (a quarter), else ``"train"``. A generator draws until it has
   an item of its split, so a held-out value never appears as a training value.
3. Haystack text (:data:`HAYSTACKS`): ``train`` samples sit in the training books of the King
   James Bible plus the training half of pydoc's topics; ``heldout`` samples sit in Shakespeare's
   plays (:mod:`longgen_core.data.corpora` corpus ``"shakespeare"``, never trained on): another source,
   another style. ``haystack="kjv"`` (or any corpus name) swaps the source and keeps the split's
   part of it (KJV's held-out books for ``heldout``); ``"repeat"`` is the pass-key filler.

Value formats (drawn per seed unless ``value_format`` is given): ``number`` (4-9 digits),
``uuid`` (8-4-4-4-12 hex, as RULER), ``code`` (``QXT-4829``), ``word``; key formats: ``city``,
``compound`` (adjective-noun, as RULER), ``numbered`` (``locker 3817``).

Example::

    >>> s = SUITE_TASKS["niah_single"](tok, n_tokens=1024, depth=0.5, seed=0)   # doctest: +SKIP
    >>> len(s.prompt_ids), s.answers, score(s, "It is " + s.answer + ".")     # doctest: +SKIP
    (1024, ['7301'], 1.0)
"""

from __future__ import annotations

import random
import re
import string
import zlib
from functools import lru_cache

from .corpora import documents
from .tasks import Sample, assemble, check_request, token_ids

SPLITS = ("train", "heldout")

# ---------------------------------------------------------------------- the pools
# Templates use str.format slots: {key} {value} {kind} (the value's noun) {kinds} (its plural).
POOLS: dict[str, dict[str, list]] = {
    "niah_intro": {
        "train": [
            "Some facts are hidden inside the text below. Read carefully and remember them.",
            "The following document contains a few important details among unrelated text. Memorise them.",
            "Read the passage below; somewhere inside it there is information you will be asked about.",
            "Below is a long text. A few sentences in it matter; the rest is filler.",
            "Pay attention while reading: a detail in this text will be needed at the end.",
        ],
        "heldout": [
            "A special magic {kind} is hidden within the following text. Make sure to memorize it. "
            "I will quiz you about the {kind} afterwards.",
            "Read the text below closely: it hides details that the question at the end will ask about.",
        ],
    },
    # (needle, question, answer prefix)
    "niah_needle": {
        "train": [
            ("Remember this: the secret {kind} of {key} is {value}.",
             "What is the secret {kind} of {key}?", "The secret {kind} of {key} is"),
            ("Note that {key} has the {kind} {value} assigned to it.",
             "Which {kind} is assigned to {key}?", "The {kind} assigned to {key} is"),
            ("The hidden {kind} belonging to {key} is {value}.",
             "What is the hidden {kind} belonging to {key}?", "The hidden {kind} belonging to {key} is"),
            ("For the record, {key} uses the {kind} {value}.",
             "What {kind} does {key} use?", "{key} uses the {kind}"),
            ("Keep in mind that the {kind} for {key} reads {value}.",
             "What does the {kind} for {key} read?", "The {kind} for {key} reads"),
            ("A memo says the {kind} linked to {key} is {value}.",
             "What is the {kind} linked to {key}?", "The {kind} linked to {key} is"),
            ("The registered {kind} of {key} is {value}, as written in the ledger.",
             "What is the registered {kind} of {key}?", "The registered {kind} of {key} is"),
            ("Here is a fact worth remembering: {key} goes with the {kind} {value}.",
             "Which {kind} goes with {key}?", "The {kind} that goes with {key} is"),
            ("Someone wrote down that the {kind} of {key} equals {value}.",
             "What does the {kind} of {key} equal?", "The {kind} of {key} equals"),
            ("Important: the {kind} you need for {key} is {value}.",
             "What {kind} do you need for {key}?", "The {kind} you need for {key} is"),
            ("{key} was given the {kind} {value} yesterday.",
             "What {kind} was {key} given?", "{key} was given the {kind}"),
            ("The official {kind} on file for {key} is {value}.",
             "What is the official {kind} on file for {key}?", "The official {kind} on file for {key} is"),
        ],
        "heldout": [
            ("One of the special magic {kinds} for {key} is: {value}.",
             "What is the special magic {kind} for {key} mentioned in the provided text?",
             "The special magic {kind} for {key} mentioned in the provided text is"),
            ("The key to {key} is the {kind} {value}, so do not forget it.",
             "What is the {kind} that is the key to {key}?", "The key to {key} is the {kind}"),
            ("Whoever asks about {key} should be told the {kind} {value}.",
             "What {kind} should someone asking about {key} be told?", "They should be told the {kind}"),
            ("In the archive, {key} is listed under the {kind} {value}.",
             "Under which {kind} is {key} listed in the archive?", "{key} is listed under the {kind}"),
            ("The password-like {kind} guarding {key} is {value}.",
             "What {kind} guards {key}?", "The {kind} guarding {key} is"),
            ("It was announced that {key} will carry the {kind} {value} from now on.",
             "Which {kind} will {key} carry?", "{key} will carry the {kind}"),
        ],
    },
    "multivalue_needle": {
        "train": [
            ("One secret {kind} of {key} is {value}.",
             "What are all the secret {kinds} of {key}?", "The secret {kinds} of {key} are"),
            ("Among the {kinds} held by {key} is {value}.",
             "Which {kinds} are held by {key}?", "The {kinds} held by {key} are"),
            ("{key} also owns the {kind} {value}.",
             "List every {kind} that {key} owns.", "The {kinds} that {key} owns are"),
            ("Add {value} to the list of {kinds} for {key}.",
             "What is on the list of {kinds} for {key}?", "The list of {kinds} for {key} is"),
            ("Another hidden {kind} belonging to {key} is {value}.",
             "What are the hidden {kinds} belonging to {key}?", "The hidden {kinds} belonging to {key} are"),
        ],
        "heldout": [
            ("One of the special magic {kinds} for {key} is: {value}.",
             "What are all the special magic {kinds} for {key} mentioned in the provided text?",
             "The special magic {kinds} for {key} mentioned in the provided text are"),
            ("The archive lists {value} as one of the {kinds} of {key}.",
             "Which {kinds} of {key} does the archive list?", "The archive lists these {kinds} of {key}:"),
            ("Yet another {kind} reserved for {key} is {value}.",
             "Name every {kind} reserved for {key}.", "The {kinds} reserved for {key} are"),
        ],
    },
    "vt_intro": {
        "train": [
            "The text below hides a few assignments to variables. Keep track of them.",
            "Follow the variables defined inside the following text; each may copy another.",
            "Some statements about variables are scattered through this text. Track their values.",
        ],
        "heldout": [
            "Memorize and track the chain(s) of variable assignment hidden in the following text.",
            "Variables are assigned inside the text below. Work out which ones end up with which value.",
        ],
    },
    # (assignment of a value, copy of a variable)
    "vt_statement": {
        "train": [
            ("let {a} = {value};", "let {b} = {a};"),
            ("Set {a} to {value}.", "Set {b} to {a}."),
            ("{a} := {value}.", "{b} := {a}."),
            ("The variable {a} holds {value}.", "The variable {b} holds the value of {a}."),
            ("Store {value} in {a}.", "Copy {a} into {b}."),
        ],
        "heldout": [
            ("VAR {a} = {value}.", "VAR {b} = VAR {a}."),
            ("{a} is initialised to {value}.", "{b} is initialised to {a}."),
            ("Put {value} into box {a}.", "Put the contents of box {a} into box {b}."),
        ],
    },
    # (question, answer prefix); {n} is the number of variables
    "vt_question": {
        "train": [
            ("Which variables end up holding the value {value}?", "The variables holding {value} are:"),
            ("List every variable whose value is {value}.", "The {n} variables whose value is {value} are:"),
            ("Name all the variables equal to {value}.", "Variables equal to {value}:"),
        ],
        "heldout": [
            ("Find all variables that are assigned the value {value} in the text above.",
             "According to the chain(s) of variable assignment in the text above, {n} variables are "
             "assigned the value {value}, they are:"),
            ("Which variables have the value {value} at the end?", "At the end, the value {value} is held by:"),
        ],
    },
    "babi_intro": {
        "train": [
            "Short facts about people moving around are hidden in the text below. Answer the question.",
            "The following text mentions where some people went. Read it and answer at the end.",
            "People and things move around in the story hidden in this text. Keep track of them.",
        ],
        "heldout": [
            "I will give you context with the facts about positions of different persons hidden in some "
            "random text and a question. You need to answer the question based only on the information "
            "from the facts.",
            "Somewhere in the text below there are facts about people and objects. Use them to answer.",
        ],
    },
    "babi_move": {  # "{person} {move} {place}."
        "train": ["walked to the", "ran to the", "headed to the", "hurried to the", "wandered into the",
                  "strolled to the", "drove to the", "returned to the"],
        "heldout": ["moved to the", "went to the", "travelled to the", "journeyed to the", "went back to the"],
    },
    "babi_pickup": {  # "{person} {pickup} {object}."
        "train": ["grabbed the", "took the", "collected the", "lifted the"],
        "heldout": ["picked up the", "got the"],
    },
    "qa1_question": {  # (question, answer prefix)
        "train": [("Which place did {person} reach last?", "{person} last reached the"),
                  ("In which room is {person}?", "{person} is located in the"),
                  ("Where can {person} be found?", "{person} can be found in the")],
        "heldout": [("Where is {person}?", "{person} is in the")],
    },
    "qa2_question": {
        "train": [("Where did the {object} end up?", "The {object} ended up in the"),
                  ("In which room is the {object}?", "The {object} is located in the"),
                  ("Where can the {object} be found?", "The {object} can be found in the")],
        "heldout": [("Where is the {object}?", "The {object} is in the")],
    },
    # ---- vocabularies
    "city": {
        "train": ["Ankara", "Bogota", "Cairo", "Denver", "Edinburgh", "Florence", "Geneva", "Havana",
                  "Istanbul", "Jakarta", "Kyoto", "Lagos", "Madrid", "Oslo", "Prague", "Quebec",
                  "Reykjavik", "Santiago", "Toronto", "Utrecht", "Valencia", "Warsaw", "Zurich", "Mumbai"],
        "heldout": ["Athens", "Berlin", "Chicago", "Dublin", "Helsinki", "Lima", "Manila", "Munich",
                    "Paris", "Seoul", "Sydney", "Vienna"],
    },
    "adjective": {
        "train": ["amber", "brisk", "calm", "dusty", "eager", "fuzzy", "gentle", "hollow", "icy", "jolly",
                  "keen", "lucky", "misty", "noble", "odd", "plain", "quiet", "rusty", "shiny", "tidy"],
        "heldout": ["abortive", "bashful", "cynical", "dapper", "erratic", "frail", "grumpy", "hesitant"],
    },
    "noun": {
        "train": ["anchor", "badger", "canyon", "dolphin", "engine", "feather", "glacier", "harbor",
                  "island", "jacket", "kitten", "ladder", "meadow", "needle", "orchard", "pebble",
                  "quartz", "rocket", "saddle", "tunnel"],
        "heldout": ["bondsman", "crocus", "dugout", "ferret", "gazebo", "hamster", "igloo", "juniper"],
    },
    "numbered": {  # "{prefix} {number}"
        "train": ["locker", "ticket", "room", "order", "account", "cabin"],
        "heldout": ["badge", "vault", "parcel"],
    },
    "word": {  # word values
        "train": ["lantern", "velvet", "thunder", "compass", "marble", "cinnamon", "horizon", "walnut",
                  "saffron", "granite", "blossom", "falcon", "copper", "meadowlark", "tangerine", "whistle"],
        "heldout": ["oxygen", "pumpkin", "quiver", "sapphire", "trellis", "umber", "zephyr", "wicker"],
    },
    "person": {
        "train": ["Brandon", "Chloe", "Dmitri", "Fatima", "Gregory", "Heidi", "Ivan", "Kenji", "Laura",
                  "Martin", "Nadia", "Oscar", "Priya", "Rafael", "Sofia", "Tomas", "Vera", "Wesley", "Yusuf"],
        "heldout": ["Mary", "John", "Daniel", "Sandra", "Bill", "Fred", "Jeff", "Julie"],
    },
    "place": {
        "train": ["attic", "balcony", "basement", "cellar", "classroom", "garage", "greenhouse",
                  "laboratory", "library", "lobby", "pantry", "porch", "studio", "workshop", "corridor"],
        "heldout": ["bathroom", "bedroom", "garden", "hallway", "kitchen", "office"],
    },
    "object": {
        "train": ["umbrella", "notebook", "guitar", "lantern", "backpack", "camera", "kettle", "scarf",
                  "wallet", "hammer"],
        "heldout": ["football", "apple", "milk"],
    },
}
VALUE_FORMATS = ("number", "uuid", "code", "word")
KIND = {"number": ("number", "numbers"), "uuid": ("code", "codes"), "code": ("code", "codes"),
        "word": ("word", "words")}
KEY_FORMATS = ("city", "compound", "numbered")
HAYSTACKS = {"train": ("kjv", "pydoc"), "heldout": ("shakespeare",)}


def split_of(item: str) -> str:
    """The split a generated item belongs to: ``"heldout"`` iff ``crc32(item) % 4 == 0``.

    Example: ``split_of("48213")`` is fixed forever (a pure function of the text).
    """
    return "heldout" if zlib.crc32(item.encode()) % 4 == 0 else "train"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _pick(rng: random.Random, pool: str, split: str):
    return rng.choice(POOLS[pool][split])


def _generated(rng: random.Random, split: str, make) -> str:
    """Draw ``make(rng)`` until the item belongs to ``split`` (rule 2 of the module docstring)."""
    while True:
        item = make(rng)
        if split_of(item) == split:
            return item


def _value(rng: random.Random, split: str, fmt: str) -> str:
    if fmt == "number":
        digits = rng.randint(4, 9)
        return _generated(rng, split, lambda r: str(r.randrange(10 ** (digits - 1), 10 ** digits)))
    if fmt == "uuid":
        return _generated(rng, split, lambda r: "-".join("".join(r.choice("0123456789abcdef") for _ in range(n))
                                                           for n in (8, 4, 4, 4, 12)))
    if fmt == "code":
        return _generated(rng, split, lambda r: "".join(r.choice(string.ascii_uppercase) for _ in range(3))
                          + "-" + str(r.randrange(1000, 10000)))
    if fmt == "word":
        return _pick(rng, "word", split)
    raise ValueError(f"value_format must be one of {VALUE_FORMATS}, got {fmt!r}")


def _key(rng: random.Random, split: str, fmt: str) -> str:
    if fmt == "city":
        return _pick(rng, "city", split)
    if fmt == "compound":
        return f"{_pick(rng, 'adjective', split)}-{_pick(rng, 'noun', split)}"
    if fmt == "numbered":
        return f"{_pick(rng, 'numbered', split)} " + _generated(rng, split, lambda r: str(r.randrange(100, 10000)))
    raise ValueError(f"key_format must be one of {KEY_FORMATS}, got {fmt!r}")


def _distinct(rng: random.Random, count: int, draw) -> list[str]:
    """``count`` different items of ``draw(rng)`` (a pool may be small: fails after many tries)."""
    out: list[str] = []
    for _ in range(100 * count):
        item = draw(rng)
        if item not in out:
            out.append(item)
        if len(out) == count:
            return out
    raise ValueError(f"cannot draw {count} different items from this pool")


@lru_cache(maxsize=8)
def haystack_ids(tokenizer, split: str, haystack: str | None = None) -> tuple[int, ...]:
    """All token ids of the split's haystack text: the documents of :data:`HAYSTACKS` ``[split]``
    (or of the corpus ``haystack``), each followed by a newline. Cached; KJV's training books and
    Shakespeare take a few seconds each to tokenise."""
    _check_split(split)
    ids: list[int] = []
    for source in (haystack,) if haystack else HAYSTACKS[split]:
        for doc in documents(source, split=split):
            ids.extend(token_ids(tokenizer, doc + "\n"))
    if not ids:
        raise ValueError(f"corpus {haystack!r} has no {split!r} text (shakespeare is evaluation-only)")
    return tuple(ids)


def _hay(tokenizer, split: str, haystack: str | None):
    return "repeat" if haystack == "repeat" else haystack_ids(tokenizer, split, haystack)


def _start(n_tokens: int, depth: float, split: str, rng_name: str, seed: int) -> random.Random:
    check_request(n_tokens, depth)
    _check_split(split)
    return random.Random(f"{rng_name}-{split}-{seed}")


def _formats(rng: random.Random, value_format: str | None, key_format: str | None) -> tuple[str, str]:
    if value_format not in (None, *VALUE_FORMATS):
        raise ValueError(f"value_format must be None (drawn) or one of {VALUE_FORMATS}, got {value_format!r}")
    if key_format not in (None, *KEY_FORMATS):
        raise ValueError(f"key_format must be None (drawn) or one of {KEY_FORMATS}, got {key_format!r}")
    return value_format or rng.choice(VALUE_FORMATS), key_format or rng.choice(KEY_FORMATS)


def _sentence(text: str) -> str:
    return f" {text} "


# ---------------------------------------------------------------------- the six tasks
def niah_single(tokenizer, n_tokens: int, depth: float, seed: int, split: str = "heldout",
                value_format: str | None = None, key_format: str | None = None,
                haystack: str | None = None) -> Sample:
    """RULER ``niah_single``: one needle sentence at ``depth``; ``answers == [value]``.

    Formats are drawn from the seed unless given (``value_format`` in :data:`VALUE_FORMATS`,
    ``key_format`` in :data:`KEY_FORMATS`).
    """
    rng = _start(n_tokens, depth, split, "niah_single", seed)
    vfmt, kfmt = _formats(rng, value_format, key_format)
    kind, kinds = KIND[vfmt]
    key, value = _key(rng, split, kfmt), _value(rng, split, vfmt)
    needle, question, prefix = _pick(rng, "niah_needle", split)
    slots = dict(key=key, value=value, kind=kind, kinds=kinds)
    return assemble(tokenizer, n_tokens, depth, seed, _hay(tokenizer, split, haystack),
                     intro=_pick(rng, "niah_intro", split).format(**slots) + "\n",
                     needle=_sentence(needle.format(**slots)),
                     question=f"\n{question.format(**slots)} {prefix.format(**slots)}",
                     answer=value, task="niah_single")


def niah_multikey(tokenizer, n_tokens: int, depth: float, seed: int, split: str = "heldout",
                  num_keys: int = 4, value_format: str | None = None, key_format: str | None = None,
                  haystack: str | None = None) -> Sample:
    """RULER ``niah_multikey``: ``num_keys`` needles of one phrasing, different keys and values;
    the asked one sits at ``depth``, the others at random places."""
    rng = _start(n_tokens, depth, split, "niah_multikey", seed)
    vfmt, kfmt = _formats(rng, value_format, key_format)
    kind, kinds = KIND[vfmt]
    keys = _distinct(rng, num_keys, lambda r: _key(r, split, kfmt))
    values = _distinct(rng, num_keys, lambda r: _value(r, split, vfmt))
    needle, question, prefix = _pick(rng, "niah_needle", split)
    slots = [dict(key=k, value=v, kind=kind, kinds=kinds) for k, v in zip(keys, values)]
    return assemble(tokenizer, n_tokens, depth, seed, _hay(tokenizer, split, haystack),
                     intro=_pick(rng, "niah_intro", split).format(**slots[0]) + "\n",
                     needle=_sentence(needle.format(**slots[0])),
                     distractors=[_sentence(needle.format(**s)) for s in slots[1:]],
                     question=f"\n{question.format(**slots[0])} {prefix.format(**slots[0])}",
                     answer=values[0], task="niah_multikey")


def niah_multivalue(tokenizer, n_tokens: int, depth: float, seed: int, split: str = "heldout",
                    num_values: int = 4, value_format: str | None = None, key_format: str | None = None,
                    haystack: str | None = None) -> Sample:
    """RULER ``niah_multivalue``: ``num_values`` needles of one key; the first at ``depth``.
    ``answers`` lists every value; ``answer`` (the training target) is them joined by ``", "``."""
    rng = _start(n_tokens, depth, split, "niah_multivalue", seed)
    vfmt, kfmt = _formats(rng, value_format, key_format)
    kind, kinds = KIND[vfmt]
    key = _key(rng, split, kfmt)
    values = _distinct(rng, num_values, lambda r: _value(r, split, vfmt))
    needle, question, prefix = _pick(rng, "multivalue_needle", split)
    slots = [dict(key=key, value=v, kind=kind, kinds=kinds) for v in values]
    return assemble(tokenizer, n_tokens, depth, seed, _hay(tokenizer, split, haystack),
                     intro=_pick(rng, "niah_intro", split).format(**slots[0]) + "\n",
                     needle=_sentence(needle.format(**slots[0])),
                     distractors=[_sentence(needle.format(**s)) for s in slots[1:]],
                     question=f"\n{question.format(**slots[0])} {prefix.format(**slots[0])}",
                     answer=", ".join(values), answers=values, task="niah_multivalue")


def _variable_name(rng: random.Random, split: str) -> str:
    return _generated(rng, split, lambda r: "".join(r.choice(string.ascii_uppercase) for _ in range(5)))


def variable_tracking(tokenizer, n_tokens: int, depth: float, seed: int, split: str = "heldout",
                      num_hops: int = 4, num_chains: int = 2, haystack: str | None = None) -> Sample:
    """RULER ``vt``: a value assigned to one variable (at ``depth``), then ``num_hops`` copies
    along a chain, after it and in order; ``num_chains - 1`` other chains (other values) at
    random places. ``answers`` are the ``num_hops + 1`` names of the asked chain, ``answer``
    them joined by spaces."""
    rng = _start(n_tokens, depth, split, "variable_tracking", seed)
    names = _distinct(rng, (num_hops + 1) * num_chains, lambda r: _variable_name(r, split))
    chains = [names[c * (num_hops + 1):(c + 1) * (num_hops + 1)] for c in range(num_chains)]
    values = _distinct(rng, num_chains, lambda r: _value(r, split, "number"))
    assign, copy = _pick(rng, "vt_statement", split)
    question, prefix = _pick(rng, "vt_question", split)

    def statements(chain, value):
        return ([_sentence(assign.format(a=chain[0], value=value))]
                + [_sentence(copy.format(a=a, b=b)) for a, b in zip(chain, chain[1:])])

    first, *copies = statements(chains[0], values[0])
    others = [s for chain, value in zip(chains[1:], values[1:]) for s in statements(chain, value)]
    slots = dict(value=values[0], n=num_hops + 1)
    return assemble(tokenizer, n_tokens, depth, seed, _hay(tokenizer, split, haystack),
                     intro=_pick(rng, "vt_intro", split) + "\n", needle=first, after=copies,
                     distractors=others,
                     question=f"\nQuestion: {question.format(**slots)} Answer: {prefix.format(**slots)}",
                     answer=" ".join(chains[0]), answers=chains[0], task="variable_tracking")


def _moves(rng: random.Random, split: str, people: list[str], count: int) -> list[str]:
    return [_sentence(f"{rng.choice(people)} {_pick(rng, 'babi_move', split)} {_pick(rng, 'place', split)}.")
            for _ in range(count)]


def babilong_qa1(tokenizer, n_tokens: int, depth: float, seed: int, split: str = "heldout",
                 num_distractors: int = 4, earlier_moves: int = 2, haystack: str | None = None) -> Sample:
    """BABILong ``qa1`` (single supporting fact): the person's last move sits at ``depth``,
    ``earlier_moves`` moves of theirs (to other places) before it, ``num_distractors`` moves of
    other people anywhere. "Where is Mary?" -> ``answers == [place]``."""
    rng = _start(n_tokens, depth, split, "babilong_qa1", seed)
    person, *others = _distinct(rng, 4, lambda r: _pick(r, "person", split))
    place, *before = _distinct(rng, earlier_moves + 1, lambda r: _pick(r, "place", split))
    question, prefix = _pick(rng, "qa1_question", split)
    move = lambda p: _sentence(f"{person} {_pick(rng, 'babi_move', split)} {p}.")  # noqa: E731
    return assemble(tokenizer, n_tokens, depth, seed, _hay(tokenizer, split, haystack),
                     intro=_pick(rng, "babi_intro", split) + "\n", needle=move(place),
                     before=[move(p) for p in before], distractors=_moves(rng, split, others, num_distractors),
                     question=f"\nQuestion: {question.format(person=person)} Answer: {prefix.format(person=person)}",
                     answer=place, task="babilong_qa1")


def babilong_qa2(tokenizer, n_tokens: int, depth: float, seed: int, split: str = "heldout",
                 num_distractors: int = 4, later_moves: int = 2, haystack: str | None = None) -> Sample:
    """BABILong ``qa2`` (two supporting facts): "John picked up the milk." at ``depth``, then
    ``later_moves`` moves of John (the last one answers), after it and in order; a move of John
    before it, other people's moves and another object picked up by someone else as distractors.
    "Where is the milk?" -> ``answers == [John's last place]``."""
    rng = _start(n_tokens, depth, split, "babilong_qa2", seed)
    person, *others = _distinct(rng, 4, lambda r: _pick(r, "person", split))
    obj, other_obj = _distinct(rng, 2, lambda r: _pick(r, "object", split))
    first, *places = _distinct(rng, later_moves + 1, lambda r: _pick(r, "place", split))
    question, prefix = _pick(rng, "qa2_question", split)
    move = lambda p: _sentence(f"{person} {_pick(rng, 'babi_move', split)} {p}.")  # noqa: E731
    pick_up = _sentence(f"{person} {_pick(rng, 'babi_pickup', split)} {obj}.")
    distractors = (_moves(rng, split, others, num_distractors)
                   + [_sentence(f"{others[0]} {_pick(rng, 'babi_pickup', split)} {other_obj}.")])
    return assemble(tokenizer, n_tokens, depth, seed, _hay(tokenizer, split, haystack),
                     intro=_pick(rng, "babi_intro", split) + "\n", needle=pick_up,
                     before=[move(first)], after=[move(p) for p in places], distractors=distractors,
                     question=f"\nQuestion: {question.format(object=obj)} Answer: {prefix.format(object=obj)}",
                     answer=places[-1], task="babilong_qa2")


SUITE_TASKS = {"niah_single": niah_single, "niah_multikey": niah_multikey, "niah_multivalue": niah_multivalue,
               "variable_tracking": variable_tracking, "babilong_qa1": babilong_qa1, "babilong_qa2": babilong_qa2}


def training_sample(task: str, tokenizer, n_tokens: int, depth: float, seed: int) -> Sample:
    """A ``split="train"`` sample of a suite task with its counts drawn from ``seed`` (more
    variety than the evaluation defaults): 2-6 keys, 2-5 values, 2-5 hops and 1-2 chains,
    2-8 distracting moves, 0-3 earlier / 1-3 later moves. Needs ``n_tokens`` >= 512 or so.
    The answer depends on ``seed`` alone, never on ``n_tokens``."""
    if task not in SUITE_TASKS:
        raise ValueError(f"task must be one of {sorted(SUITE_TASKS)}, got {task!r}")
    rng = random.Random(f"train-counts-{task}-{seed}")
    kwargs = {"niah_single": {},
              "niah_multikey": {"num_keys": rng.randint(2, 6)},
              "niah_multivalue": {"num_values": rng.randint(2, 5)},
              "variable_tracking": {"num_hops": rng.randint(2, 5), "num_chains": rng.randint(1, 2)},
              "babilong_qa1": {"num_distractors": rng.randint(2, 8), "earlier_moves": rng.randint(0, 3)},
              "babilong_qa2": {"num_distractors": rng.randint(2, 8), "later_moves": rng.randint(1, 3)}}[task]
    return SUITE_TASKS[task](tokenizer, n_tokens, depth, seed, split="train", **kwargs)


# ---------------------------------------------------------------------- scoring
def string_match_all(prediction: str, references: list[str]) -> float:
    """RULER's ``string_match_all``: the fraction of ``references`` found in ``prediction``,
    case-insensitively. Example: ``string_match_all("A and b", ["a", "B", "c"]) == 2 / 3``."""
    pred = prediction.lower()
    return sum(ref.lower() in pred for ref in references) / len(references)


def string_match_part(prediction: str, references: list[str]) -> float:
    """RULER's ``string_match_part`` (its QA tasks): 1.0 if any reference is found, else 0.0."""
    pred = prediction.lower()
    return float(any(ref.lower() in pred for ref in references))


ALL_PLACES = frozenset(p for split in SPLITS for p in POOLS["place"][split])


def score(sample: Sample, prediction: str) -> float:
    """Score a generation as the suite's references do.

    - NIAH tasks and variable tracking: :func:`string_match_all` over ``sample.answers``, as
      RULER scores them (a fraction for multi-value and variable tracking).
    - BABILong: 1.0 iff the answer place appears as a word (case-insensitively) and no *other*
      place of the task's vocabulary does. BABILong's own check counts an answer right when the
      target label is in the output and other labels are not; a bare substring test would let
      "kitchen, garden, office, ..." score, and would count "garden" inside "gardener".

    Example: ``score(qa1_sample_with_answer_kitchen, "In the kitchen.") == 1.0``, and
    ``"kitchen or garden"`` scores 0.0.
    """
    if sample.task.startswith("babilong"):
        words = set(re.findall(r"[a-z]+", prediction.lower()))
        target = sample.answer.lower()
        return float(target in words and not (words & (ALL_PLACES - {target})))
    if sample.task not in SUITE_TASKS:
        raise ValueError(f"not a suite sample: task {sample.task!r}")
    return string_match_all(prediction, sample.answers)
