"""The evaluation suite: disjoint train/held-out splits, answers recovered by brute force from the
decoded prompt, exact lengths and needle spans, seeds; the training mixture built on it."""

import re

import pytest
import torch
from transformers import AutoTokenizer

from longgen_core.data import corpora as data
from longgen_core.data.stream import TrainingStream
from longgen_core.data import suite as suite_tasks
from longgen_core.data import tasks
from longgen_core.models.base import setup_smollm2
from longgen_core.data.suite import POOLS, SPLITS, SUITE_TASKS, score, split_of

SEEDS, DEPTHS = (0, 1, 2), (0.0, 0.5, 1.0)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(setup_smollm2(verbose=False))


def _templates(split):
    """Every phrasing of ``split`` (templates with slots first, then fixed sentences), tuples flattened."""
    out = []
    for pool in POOLS.values():
        for item in pool[split]:
            out += list(item) if isinstance(item, tuple) else [item]
    return [t for t in out if "{" in t] + [t for t in out if "{" not in t and " " in t]


def _fact_templates(split):
    """The bAbI fact sentences of ``split`` as templates ("{person} went to the {place}.")."""
    return ([f"{{person}} {m} {{place}}." for m in POOLS["babi_move"][split]]
            + [f"{{person}} {p} {{object}}." for p in POOLS["babi_pickup"][split]])


def _regex(template: str) -> re.Pattern:
    """A template as a regex: each ``{slot}`` matches any non-empty text."""
    parts = re.split(r"\{\w+\}", template.strip())
    return re.compile("(.+?)".join(re.escape(p) for p in parts))


# ---------------------------------------------------------------------- the splits
def test_every_pool_is_split_into_disjoint_lists():
    for name, pool in POOLS.items():
        assert set(pool) == set(SPLITS), name
        assert pool["train"] and pool["heldout"], name
        assert not set(pool["train"]) & set(pool["heldout"]), name
    # nor do the pieces of templates overlap (a question reused under another needle counts)
    assert not set(_templates("train")) & set(_templates("heldout"))
    # vocabulary words are not shared between the splits of different pools either
    vocab = {s: {w.lower() for n in ("city", "adjective", "noun", "numbered", "word", "person", "place", "object")
                 for w in POOLS[n][s]} for s in SPLITS}
    assert not vocab["train"] & vocab["heldout"]


def test_the_hash_rule_splits_generated_items_and_generators_obey_it():
    items = [str(n) for n in range(1000, 3000)]
    held = [i for i in items if split_of(i) == "heldout"]
    assert 0.2 < len(held) / len(items) < 0.3  # a quarter, fixed by crc32
    import random

    for split in SPLITS:
        rng = random.Random(0)
        for fmt in ("number", "uuid", "code"):
            assert all(split_of(suite_tasks._value(rng, split, fmt)) == split for _ in range(50))
        assert all(split_of(suite_tasks._variable_name(rng, split)) == split for _ in range(50))


def test_haystack_sources_and_documents_are_disjoint():
    assert not set(suite_tasks.HAYSTACKS["train"]) & set(suite_tasks.HAYSTACKS["heldout"])
    train = {d for s in suite_tasks.HAYSTACKS["train"] for d in data.documents(s, "train")}
    heldout = {d for s in suite_tasks.HAYSTACKS["heldout"] for d in data.documents(s, "heldout")}
    assert train and heldout and not train & heldout
    assert list(data.documents("shakespeare", "train")) == []  # evaluation-only text
    kjv_train, kjv_heldout = set(data.documents("kjv", "train")), set(data.documents("kjv", "heldout"))
    assert not kjv_train & kjv_heldout  # haystack="kjv" keeps the split's own books


@pytest.mark.parametrize("make,kwargs", [(suite_tasks.niah_single, {}),
                                         (suite_tasks.variable_tracking, {"num_chains": 1}),
                                         (suite_tasks.babilong_qa1, {"num_distractors": 0, "earlier_moves": 0})])
def test_a_samples_haystack_comes_from_its_splits_text(tokenizer, make, kwargs):
    texts = {s: "".join(d + "\n" for src in suite_tasks.HAYSTACKS[s] for d in data.documents(src, s))
             for s in SPLITS}
    kjv = {s: "".join(d + "\n" for d in data.documents("kjv", s)) for s in SPLITS}
    for split, other in (("train", "heldout"), ("heldout", "train")):
        for haystack, corpus in ((None, texts), ("kjv", kjv)):
            # depth 1.0 and no distractors: everything between the instruction and the needle is haystack
            sample = make(tokenizer, 700, 1.0, seed=5, split=split, haystack=haystack, **kwargs)
            text = tokenizer.decode(sample.prompt_ids[:sample.needle_start], clean_up_tokenization_spaces=False)
            stretch = text.split("\n", 1)[1][5:205]
            assert len(stretch) == 200
            assert stretch in corpus[split] and stretch not in corpus[other], (split, haystack, stretch)


LEGACY_TRAINING_NEEDLES = [" The pass key is {value}. Remember it. {value} is the pass key. ",
                           " The value of key {key} is {value}. "]


@pytest.mark.parametrize("name", sorted(SUITE_TASKS))
def test_heldout_needles_fit_no_training_phrasing(tokenizer, name):
    """Render held-out samples; their needle sentence must not be an instance of any training
    template (of any task, and of the pass-key/kv tasks TrainingStream also trains on)."""
    train_patterns = [_regex(t) for t in _templates("train") + _fact_templates("train") + LEGACY_TRAINING_NEEDLES]
    for seed in range(6):
        sample = SUITE_TASKS[name](tokenizer, 500, 0.5, seed=seed, split="heldout")
        needle = tokenizer.decode(sample.prompt_ids[sample.needle_start:sample.needle_end]).strip()
        assert not any(p.fullmatch(needle) for p in train_patterns), needle
        # and the same check does catch a training needle
        train = SUITE_TASKS[name](tokenizer, 500, 0.5, seed=seed, split="train")
        needle = tokenizer.decode(train.prompt_ids[train.needle_start:train.needle_end]).strip()
        assert any(p.fullmatch(needle) for p in train_patterns), needle


# ---------------------------------------------------------------------- brute-force answers
def _alternatives(pool, split):
    return "|".join(re.escape(w) for w in POOLS[pool][split])


def _moves(text, split):
    """(person, place) for every move sentence of the split's wording, in text order."""
    pattern = (rf"\b({_alternatives('person', split)}) (?:{_alternatives('babi_move', split)}) "
               rf"({_alternatives('place', split)})\.")
    return [(m.group(1), m.group(2), m.start()) for m in re.finditer(pattern, text)]


def _last_place(text, person, split):
    places = [place for who, place, _ in _moves(text, split) if who == person]
    return places[-1]


def _named(template: str, **slots: str) -> str:
    """A template as a regex with one named group per slot, each matching ``slots[name]``."""
    parts = re.split(r"(\{\w+\})", template.strip())
    return "".join(f"(?P<{p[1:-1]}>{slots[p[1:-1]]})" if p.startswith("{") else re.escape(p) for p in parts)


def _brute_force(name, split, text):
    """The answers of a decoded prompt, recovered from its text alone (the split's wording known)."""
    body, question = text.rsplit("\n", 1)
    if name == "babilong_qa1":
        person = re.search(r"\b(" + _alternatives("person", split) + r")\b", question).group(1)
        return [_last_place(body, person, split)]
    if name == "babilong_qa2":
        obj = re.search(r"\b(" + _alternatives("object", split) + r")\b", question).group(1)
        holder = re.search(rf"\b({_alternatives('person', split)}) (?:{_alternatives('babi_pickup', split)}) "
                           rf"{obj}\.", body).group(1)
        return [_last_place(body, holder, split)]
    if name == "variable_tracking":
        var = r"\b[A-Z]{5}"
        value = re.findall(r"\d+", question)[-1]
        holders = set()
        for assign, _ in POOLS["vt_statement"][split]:
            holders |= {m["a"] for m in re.finditer(_named(assign, a=var, value=r"\d+"), body) if m["value"] == value}
        copies = [(m["a"], m["b"]) for _, copy in POOLS["vt_statement"][split]
                  for m in re.finditer(_named(copy, a=var, b=var), body)]
        while True:  # follow the copies until nothing new holds the value
            new = {b for a, b in copies if a in holders} - holders
            if not new:
                return sorted(holders, key=body.index)
            holders |= new
    # NIAH: every needle of the split's phrasings gives a (key, value); the question names one key
    keys = (f"{_alternatives('city', split)}|(?:{_alternatives('adjective', split)})-(?:{_alternatives('noun', split)})"
            f"|(?:{_alternatives('numbered', split)}) \\d+")
    pool = "multivalue_needle" if name == "niah_multivalue" else "niah_needle"
    found = [(m["key"], m["value"]) for needle, _, _ in POOLS[pool][split]
             for m in re.finditer(_named(needle, key=keys, value=r"[\w-]+", kind=r"number|code|word",
                                         kinds=r"numbers|codes|words"), body)]
    asked = [(k, v) for k, v in found if re.search(rf"(?<![\w-]){re.escape(k)}(?![\w-])", question)]
    assert asked, text[-300:]
    if name == "niah_multivalue":
        return [v for _, v in asked]
    assert len(asked) == 1, asked  # multikey: the other keys are not asked
    return [asked[0][1]]


@pytest.mark.parametrize("name", sorted(SUITE_TASKS))
@pytest.mark.parametrize("split", SPLITS)
def test_answers_match_a_brute_force_reading_of_the_prompt(tokenizer, name, split):
    for seed in SEEDS:
        for depth in DEPTHS:
            sample = SUITE_TASKS[name](tokenizer, 800, depth, seed=seed, split=split)
            text = tokenizer.decode(sample.prompt_ids)
            got = _brute_force(name, split, text)
            if name == "niah_multivalue":
                assert sorted(got) == sorted(sample.answers), (seed, depth)
            else:
                assert got == sample.answers, (seed, depth, text[-300:])


def test_variable_tracking_copies_follow_the_assignment(tokenizer):
    for seed in SEEDS:
        s = suite_tasks.variable_tracking(tokenizer, 900, 0.2, seed=seed, num_hops=3, num_chains=2)
        text = tokenizer.decode(s.prompt_ids)
        first = [text.index(n) for n in s.answers]
        assert first == sorted(first) and len(s.answers) == 4
        assert s.answer == " ".join(s.answers)


# ---------------------------------------------------------------------- lengths, spans, seeds
@pytest.mark.parametrize("name", sorted(SUITE_TASKS))
def test_exact_length_needle_span_and_seeds(tokenizer, name):
    make = SUITE_TASKS[name]
    for split in SPLITS:
        for n in (300, 1500):
            for depth in (0.0, 0.6, 1.0):
                s = make(tokenizer, n, depth, seed=4, split=split)
                assert len(s.prompt_ids) == n and s.task == name
                needle = tokenizer.decode(s.prompt_ids[s.needle_start:s.needle_end])
                assert needle.startswith(" ") and needle.strip().endswith((".", ";"))
                assert needle.count(".") + needle.count(";") >= 1
                # the needle carries the fact asked about: the (first) answer / the chain's first
                # name, or for qa2 the picking up of the object the question asks about
                if name == "babilong_qa2":
                    obj = re.search(rf"({_alternatives('babi_pickup', split)}) (\w+)\.", needle).group(2)
                    assert f" the {obj}" in tokenizer.decode(s.prompt_ids[-30:]).rsplit("\n", 1)[1]
                else:
                    assert s.answers[0] in needle
                if n == 1500:  # where the needle is (the instruction, question and facts aside)
                    assert abs(s.needle_start / n - depth) < 0.15
        a, b = make(tokenizer, 600, 0.5, seed=9), make(tokenizer, 600, 0.5, seed=9)
        assert a.prompt_ids == b.prompt_ids and a.answers == b.answers
        others = [make(tokenizer, 600, 0.5, seed=s) for s in (10, 11, 12)]
        assert all(o.prompt_ids != a.prompt_ids for o in others)
        assert len({tuple(o.answers) for o in others + [a]}) > 1


def test_bad_arguments_are_clear_errors(tokenizer):
    with pytest.raises(ValueError, match="split"):
        suite_tasks.niah_single(tokenizer, 300, 0.5, 0, split="test")
    with pytest.raises(ValueError, match="value_format"):
        suite_tasks.niah_single(tokenizer, 300, 0.5, 0, value_format="roman")
    with pytest.raises(ValueError, match="too short"):
        suite_tasks.niah_multikey(tokenizer, 80, 0.5, 0, num_keys=6, value_format="uuid")
    with pytest.raises(ValueError, match="evaluation-only"):
        suite_tasks.niah_single(tokenizer, 300, 0.5, 0, split="train", haystack="shakespeare")


# ---------------------------------------------------------------------- scoring
def test_scoring_follows_ruler_and_babilong(tokenizer):
    mv = suite_tasks.niah_multivalue(tokenizer, 600, 0.5, seed=1, num_values=4, value_format="code")
    assert score(mv, mv.answer) == 1.0 and score(mv, mv.answer.lower()) == 1.0  # case-insensitive
    assert score(mv, ", ".join(mv.answers[:3])) == 0.75 and score(mv, "none") == 0.0
    assert suite_tasks.string_match_part("x " + mv.answers[2], mv.answers) == 1.0
    vt = suite_tasks.variable_tracking(tokenizer, 600, 0.5, seed=1)
    assert score(vt, vt.answer) == 1.0 and score(vt, vt.answers[0]) == 1 / len(vt.answers)
    qa = suite_tasks.babilong_qa1(tokenizer, 600, 0.5, seed=1)
    other = next(p for p in POOLS["place"]["heldout"] if p != qa.answer)
    assert score(qa, f" {qa.answer}.") == 1.0 and score(qa, qa.answer.upper()) == 1.0
    assert score(qa, f"{qa.answer} or the {other}") == 0.0  # listing places does not score
    assert score(qa, f"{qa.answer}er") == 0.0 and score(qa, "somewhere") == 0.0
    legacy = tasks.passkey(tokenizer, 300, 0.5, 0)
    with pytest.raises(ValueError, match="not a suite sample"):
        score(legacy, legacy.answer)


# ---------------------------------------------------------------------- training mixture
def test_training_mixture_draws_suite_tasks_from_the_training_split_only(tokenizer):
    names = tuple(sorted(SUITE_TASKS))
    stream = TrainingStream("pydoc", tokenizer, seq_len=512, seed=1, synthetic_ratio=0.75, tasks=names)
    items = [next(stream) for _ in range(36)]
    kinds = [it["kind"] for it in items]
    assert set(kinds) - {"corpus"} == set(names)  # every task drawn
    assert 14 <= sum(k != "corpus" for k in kinds) <= 34
    # held-out needles with tight slots (a word or two, or the held-out vocabulary), so that
    # ordinary haystack text cannot match them by chance
    loose = r"\S+(?: \S+)?"
    needles = ([n for pool in ("niah_needle", "multivalue_needle") for n, _, _ in POOLS[pool]["heldout"]]
               + [t for pair in POOLS["vt_statement"]["heldout"] for t in pair])
    heldout_needles = [re.compile(_named(t, key=loose, value=loose, kind=loose, kinds=loose, a=loose, b=loose))
                       for t in needles]
    people, places, objects = (_alternatives(pool, "heldout") for pool in ("person", "place", "object"))
    heldout_facts = [re.compile(_named(t, person=people, place=places, object=objects))
                     for t in _fact_templates("heldout")]
    heldout_questions = [_regex(t) for pool in ("niah_needle", "multivalue_needle", "vt_question", "qa1_question",
                                                "qa2_question")
                         for item in POOLS[pool]["heldout"] for t in item[1 if "needle" in pool else 0:]]
    train_intros = [t.format(kind=k) for pool in ("niah_intro", "vt_intro", "babi_intro")
                    for t in POOLS[pool]["train"] for k in ("number", "code", "word")]
    for it in items:
        assert it["input_ids"].shape == it["labels"].shape == (512,)
        if it["kind"] == "corpus":
            assert torch.equal(it["labels"], it["input_ids"])
            continue
        scored = (it["labels"] != -100).nonzero().flatten().tolist()
        assert scored == list(range(512 - len(scored), 512)) and it["input_ids"][-1] == tokenizer.eos_token_id
        answer = tokenizer.decode(it["labels"][scored[0]:-1]).strip()
        text = tokenizer.decode(it["input_ids"][:scored[0]])
        intro, question = text.split("\n", 1)[0], text.rsplit("\n", 1)[1]
        assert intro in train_intros
        assert not any(p.search(question) for p in heldout_questions), question
        assert not any(p.search(text) for p in heldout_needles + heldout_facts)
        if it["kind"].startswith("babilong"):
            assert answer in POOLS["place"]["train"]
        elif it["kind"] == "variable_tracking":
            assert all(split_of(v) == "train" for v in answer.split())
        else:
            for value in answer.split(", "):
                assert split_of(value) == "train" or value in POOLS["word"]["train"], value
                assert value not in POOLS["word"]["heldout"]
    again = TrainingStream("pydoc", tokenizer, seq_len=512, seed=1, synthetic_ratio=0.75, tasks=names).seek(20)
    for it in items[20:]:
        nxt = next(again)
        assert nxt["kind"] == it["kind"] and torch.equal(nxt["input_ids"], it["input_ids"])
        assert torch.equal(nxt["labels"], it["labels"])


def test_training_answers_are_what_evaluation_expects(tokenizer):
    for name in ("niah_multivalue", "variable_tracking", "niah_multikey"):
        s = suite_tasks.training_sample(name, tokenizer, 1024, 0.5, seed=3)
        assert score(s, s.answer) == 1.0  # the training target scores full marks
        again = suite_tasks.training_sample(name, tokenizer, 700, 0.5, seed=3)
        assert again.answer_ids == s.answer_ids  # the answer does not depend on the length


def test_training_stream_refuses_unknown_tasks_and_short_suite_sequences(tokenizer):
    with pytest.raises(ValueError, match="tasks must be"):
        TrainingStream("pydoc", tokenizer, seq_len=512, synthetic_ratio=0.5, tasks=("niah_single", "nope"))
    with pytest.raises(ValueError, match=">= 512"):
        TrainingStream("pydoc", tokenizer, seq_len=256, synthetic_ratio=0.5, tasks=("babilong_qa1",))


def test_presets_accept_the_suites_task_names():
    from longgen_core.train.presets import get_preset

    preset = get_preset("gpu-small", synthetic_tasks=("passkey", "niah_single", "babilong_qa2"))
    assert preset.synthetic_tasks == ("passkey", "niah_single", "babilong_qa2")
    with pytest.raises(ValueError, match="synthetic_tasks"):
        get_preset("gpu-small", synthetic_tasks=("niah_sngle",))
