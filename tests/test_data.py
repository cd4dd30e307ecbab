"""Corpora, packing (nothing lost or duplicated), streaming local files, retrieval samples."""

import json

import pytest
import torch
from transformers import AutoTokenizer

from longgen_core.data import corpora as data
from longgen_core.data import tasks
from longgen_core.data.stream import Prefetcher, TrainingStream
from longgen_core.models.base import setup_smollm2


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(setup_smollm2(verbose=False))


def test_the_smollm2_tokenizer_decodes_text_back_unchanged(tokenizer):
    # BPE: a WordPiece space clean-up (on by default in some transformers versions) would turn
    # "Lord , and" into "Lord, and", and a haystack would not decode to the text it was built from
    text = "And the LORD said , Let there be light : and there was light ."
    assert tokenizer.decode(tokenizer(text).input_ids) == text


def test_pack_loses_and_duplicates_nothing():
    gen = torch.Generator().manual_seed(0)
    docs = [torch.randint(1, 100, (int(n),), generator=gen).tolist()
            for n in torch.randint(1, 40, (30,), generator=gen)]
    seqs = list(data.pack(iter(docs), seq_len=16, eos_id=0))
    stream = [t for d in docs for t in d + [0]]
    assert all(s.shape == (16,) for s in seqs)
    flat = torch.cat(seqs).tolist()
    assert flat == stream[: len(flat)]  # order kept, nothing lost or repeated
    assert len(stream) - len(flat) < 16  # only the trailing partial sequence is dropped


def test_documents_are_split_into_train_and_heldout():
    train, heldout = list(data.documents("kjv", "train")), list(data.documents("kjv", "heldout"))
    assert len(train) + len(heldout) == 66
    assert heldout[0].startswith("Exodus\n") and not any(d.startswith("Exodus\n") for d in train)
    assert "1:1" not in train[0][:300] and "In the beginning" in train[0][:300]  # verse numbers stripped
    assert sum(map(len, train)) > 3_000_000


def test_packed_sequences_from_kjv_with_skip(tokenizer):
    first = data.packed_sequences("kjv", tokenizer, seq_len=256, num_sequences=3)
    skipped = data.packed_sequences("kjv", tokenizer, seq_len=256, num_sequences=2, skip=1)
    assert first.shape == (3, 256) and first.dtype == torch.long
    assert torch.equal(first[1:], skipped)  # the data position of an exact resume
    text = tokenizer.decode(first[0][:8])
    assert text.startswith("Genesis")


def test_corpus_too_small_is_a_clear_error(tokenizer):
    with pytest.raises(ValueError, match="too small"):
        data.packed_sequences("pydoc", tokenizer, seq_len=100_000, num_sequences=10)


def test_local_jsonl_and_parquet_stream(tmp_path, tokenizer):
    records = [{"text": f"document number {i} " * (i + 3), "meta": i} for i in range(20)]
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in records))
    assert list(data.documents(jsonl)) == [r["text"] for r in records]
    import datasets

    datasets.Dataset.from_list(records).to_parquet(tmp_path / "corpus.parquet")
    assert list(data.documents(tmp_path / "corpus.parquet")) == [r["text"] for r in records]
    seqs = data.packed_sequences(jsonl, tokenizer, seq_len=32, num_sequences=4)
    assert seqs.shape == (4, 32)
    with pytest.raises(ValueError, match="no field 'body'"):
        list(data.documents(jsonl, text_field="body"))


@pytest.mark.parametrize("bad,match", [("missing.jsonl", "existing path"), ("kjv:x", "existing path")])
def test_bad_sources(bad, match):
    with pytest.raises(ValueError, match=match):
        data.documents(bad)


def test_bad_split_and_suffix(tmp_path):
    with pytest.raises(ValueError, match="split"):
        data.documents("kjv", split="test")
    csv = tmp_path / "x.csv"
    csv.write_text("a")
    with pytest.raises(ValueError, match=r"\.jsonl"):
        list(data.documents(csv))


@pytest.mark.parametrize("task", [tasks.passkey, tasks.kv_retrieval])
@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_samples_have_exact_length_and_the_needle_where_said(tokenizer, task, depth):
    sample = task(tokenizer, n_tokens=600, depth=depth, seed=3)
    assert len(sample.prompt_ids) == 600
    needle_text = tokenizer.decode(sample.prompt_ids[sample.needle_start:sample.needle_start + 30])
    assert sample.answer in needle_text
    needle = tokenizer.decode(sample.prompt_ids[sample.needle_start:sample.needle_end])
    assert sample.answer in needle and needle.strip().endswith(".")  # the whole needle, nothing after
    prompt_text = tokenizer.decode(sample.prompt_ids)
    assert prompt_text.count(sample.answer) >= 1
    relative = sample.needle_start / 600
    assert abs(relative - depth) < 0.15


def test_samples_are_seeded(tokenizer):
    a, b = tasks.passkey(tokenizer, 300, 0.3, seed=7), tasks.passkey(tokenizer, 300, 0.3, seed=7)
    c = tasks.passkey(tokenizer, 300, 0.3, seed=8)
    assert a.prompt_ids == b.prompt_ids and a.answer == b.answer
    assert a.answer != c.answer


def test_kv_retrieval_has_distractors(tokenizer):
    sample = tasks.kv_retrieval(tokenizer, 800, 0.5, seed=1, num_distractors=5, haystack="kjv")
    assert tokenizer.decode(sample.prompt_ids).count("The value of key") == 6 + 1  # 6 pairs + question


def test_training_example_labels_only_the_answer(tokenizer):
    sample = tasks.passkey(tokenizer, 200, 0.5, seed=0)
    ex = sample.training_example(eos_id=tokenizer.eos_token_id)
    n_answer = len(sample.answer_ids) + 1
    assert ex["input_ids"].shape == (200 + n_answer,)
    assert (ex["labels"][:200] == -100).all()
    assert tokenizer.decode(ex["labels"][200:-1]).strip() == sample.answer


@pytest.mark.parametrize("kwargs,match", [({"depth": 1.5}, "depth"), ({"n_tokens": 10}, "n_tokens"),
                                          ({"haystack": "web"}, "haystack")])
def test_bad_task_arguments(tokenizer, kwargs, match):
    args = {"n_tokens": 300, "depth": 0.5, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=match):
        tasks.passkey(tokenizer, **args)


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
@pytest.mark.parametrize("depth", [0.0, 0.7])
def test_every_task_builds_exact_prompts_with_its_answers_inside(tokenizer, name, depth):
    sample = tasks.TASKS[name](tokenizer, n_tokens=700, depth=depth, seed=11)
    assert len(sample.prompt_ids) == 700 and sample.task == name
    body = tokenizer.decode(sample.prompt_ids)
    for answer in sample.answers:
        assert answer in body
    assert tasks.score(sample, " ".join(sample.answers)) == 1.0
    assert tasks.score(sample, "nothing") == 0.0


def test_chained_facts_keep_their_order(tokenizer):
    for seed in range(5):
        s = tasks.babi_two_facts(tokenizer, 900, 0.2, seed=seed)
        text = tokenizer.decode(s.prompt_ids)
        person = text.split(" picked up the ")[0].split()[-1]
        assert text.index(" picked up the ") < text.rindex(f"{person} ", 0, text.index("Question"))
        v = tasks.variable_tracking(tokenizer, 900, 0.3, seed=seed)
        vt = tokenizer.decode(v.prompt_ids)
        positions = [vt.index(f"VAR {n} =") for n in v.answers]
        assert positions == sorted(positions)


def test_partial_scores_for_multi_answer_tasks(tokenizer):
    s = tasks.multivalue_niah(tokenizer, 700, 0.5, seed=2, num_values=4)
    assert tasks.score(s, " ".join(s.answers[:2])) == 0.5


# ---------------------------------------------------------------------- training stream
def test_training_stream_mixes_at_the_stated_ratio_and_seeks_exactly(tokenizer):
    stream = TrainingStream("pydoc", tokenizer, seq_len=128, seed=3, synthetic_ratio=0.25)
    items = [next(stream) for _ in range(40)]
    kinds = [it["kind"] for it in items]
    assert 4 <= sum(k != "corpus" for k in kinds) <= 16 and {"passkey", "kv_retrieval"} & set(kinds)
    assert all(it["input_ids"].shape == it["labels"].shape == (128,) for it in items)
    corpus = [it["input_ids"] for it in items if it["kind"] == "corpus"]
    assert torch.equal(torch.stack(corpus[:5]), data.packed_sequences("pydoc", tokenizer, 128, 5))
    for it in items:
        if it["kind"] != "corpus":  # scored on the answer + EOS only, which end the sequence
            scored = (it["labels"] != -100).nonzero().flatten()
            assert scored.tolist() == list(range(128 - len(scored), 128))
            assert it["input_ids"][-1] == tokenizer.eos_token_id
    again = TrainingStream("pydoc", tokenizer, seq_len=128, seed=3, synthetic_ratio=0.25).seek(25)
    assert again.position == 25
    for it in items[25:]:
        nxt = next(again)
        assert nxt["kind"] == it["kind"] and torch.equal(nxt["input_ids"], it["input_ids"])
    other_seed = TrainingStream("pydoc", tokenizer, seq_len=128, seed=4, synthetic_ratio=0.25)
    assert [next(other_seed)["kind"] for _ in range(40)] != kinds


def test_training_stream_cycles_small_corpora_and_refuses_tiny_ones(tmp_path, tokenizer):
    (tmp_path / "a.txt").write_text("one two three four five six seven eight nine ten " * 4)
    stream = TrainingStream(tmp_path, tokenizer, seq_len=16)
    batch = stream.take(12)  # more sequences than one pass holds: the corpus starts over
    assert batch["input_ids"].shape == (12, 16) and stream.position == 12
    token_docs = data.tokenize(data.documents(tmp_path), tokenizer)
    per_epoch = len(list(data.pack(token_docs, 16, tokenizer.eos_token_id)))
    assert per_epoch < 12 and torch.equal(batch["input_ids"][0], batch["input_ids"][per_epoch])
    with pytest.raises(ValueError, match="too small for one packed sequence"):
        TrainingStream(tmp_path, tokenizer, seq_len=100_000).check()
    random_stream = TrainingStream("random", None, seq_len=32, vocab_size=100)
    assert random_stream.take(2)["input_ids"].max() < 100
    with pytest.raises(ValueError, match="tokenizer"):
        TrainingStream("random", None, seq_len=256, vocab_size=100, synthetic_ratio=0.5)


def test_export_text_round_trips(tmp_path):
    count = data.export_text("pydoc", tmp_path / "pydoc", split="heldout")
    assert count == len(list(data.documents("pydoc", "heldout")))
    assert list(data.documents(tmp_path / "pydoc")) == list(data.documents("pydoc", "heldout"))


def test_prefetcher_hands_out_batches_in_stream_order_with_their_positions():
    expected = TrainingStream("random", None, 16, seed=2, vocab_size=100)
    batches = Prefetcher(TrainingStream("random", None, 16, seed=2, vocab_size=100), n=3)
    try:
        for step in range(4):
            got, want = batches.next(), expected.take(3)
            assert torch.equal(got["input_ids"], want["input_ids"]) and got["position"] == 3 * (step + 1)
    finally:
        batches.close()


def test_prefetcher_raises_the_streams_error_in_the_consumer():
    class Broken:
        def take(self, n):
            raise ValueError("corpus gone")

    batches = Prefetcher(Broken(), n=1)
    for _ in range(2):  # and again: a second call must not wait forever
        with pytest.raises(ValueError, match="corpus gone"):
            batches.next()
    batches.close()

    working = Prefetcher(TrainingStream("random", None, 8, vocab_size=50), n=1)
    working.close()
    with pytest.raises(RuntimeError, match="after close"):
        working.next()


def test_kjv_documents_can_move_between_threads():
    """A resumed run skips the consumed corpus on the main thread; the Prefetcher reads on."""
    import threading

    docs = data.documents("kjv")
    first = next(docs)  # the connection is opened on this thread
    out = []
    reader = threading.Thread(target=lambda: out.append(next(docs)))  # the next book: a new query
    reader.start()
    reader.join()
    assert out and out[0].split("\n")[0] != first.split("\n")[0]


def test_shakespeare_is_an_evaluation_only_corpus():
    plays = list(data.documents("shakespeare", "heldout"))
    assert len(plays) == 38 and list(data.documents("shakespeare", "train")) == []
    macbeth = next(p for p in plays if p.startswith("Macbeth\n"))
    assert "First Witch: When shall we three meet again In thunder" in macbeth
    assert "**" not in macbeth and "_Exeunt_" not in macbeth and sum(map(len, plays)) > 4_000_000
