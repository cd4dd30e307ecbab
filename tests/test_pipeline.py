"""The training corpus on ``datasets``: the blocks of ``pack()``, epochs, exact resume from a JSON
state without tokenising the consumed corpus again, hub ids (monkeypatched: no network here), and
clear errors on bad input."""

import json

import datasets
import pytest
import torch
from transformers import AutoTokenizer

from longgen_core.data import corpora as data
from longgen_core.data.pipeline import PackedCorpus, StaleDataState
from longgen_core.data.stream import TrainingStream
from longgen_core.models.base import setup_smollm2

TEXTS = [f"Document {i}: " + " ".join(f"word{i}x{j}" for j in range(3 + 7 * (i % 5))) for i in range(14)]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(setup_smollm2(verbose=False))


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The same 14 documents as a folder of .txt files, a .jsonl and a .parquet file."""
    root = tmp_path_factory.mktemp("corpora")
    (root / "txt").mkdir()
    for i, text in enumerate(TEXTS):
        (root / "txt" / f"{i:03d}.txt").write_text(text)
    (root / "c.jsonl").write_text("\n".join(json.dumps({"text": t, "n": i}) for i, t in enumerate(TEXTS)))
    datasets.Dataset.from_list([{"text": t} for t in TEXTS]).to_parquet(root / "c.parquet")
    return {"txt": root / "txt", "jsonl": root / "c.jsonl", "parquet": root / "c.parquet"}


class CountingTokenizer:
    """The tokenizer, recording every text it tokenises."""

    def __init__(self, tokenizer):
        self.tokenizer, self.texts = tokenizer, []
        self.eos_token_id = tokenizer.eos_token_id
        self.name_or_path = tokenizer.name_or_path  # the same tokenizer, as far as a data state can tell

    def __len__(self):
        return len(self.tokenizer)

    def __call__(self, texts, **kwargs):
        self.texts.extend([texts] if isinstance(texts, str) else texts)
        return self.tokenizer(texts, **kwargs)


def blocks(corpus, n):
    return [next(corpus) for _ in range(n)]


@pytest.mark.parametrize("kind", ["txt", "jsonl", "parquet"])
def test_blocks_are_those_of_pack_epoch_after_epoch(tokenizer, local, kind):
    per_epoch = list(data.pack(data.tokenize(TEXTS, tokenizer), 32, tokenizer.eos_token_id))
    corpus = PackedCorpus(local[kind], tokenizer, seq_len=32, docs_per_batch=3)
    got = blocks(corpus, 2 * len(per_epoch) + 3)  # the partial block of each epoch is dropped
    assert all(torch.equal(g, per_epoch[i % len(per_epoch)]) for i, g in enumerate(got))
    assert corpus.epoch == 2 and corpus.blocks == 3


def test_shipped_corpus_blocks_equal_packed_sequences(tokenizer):
    corpus = PackedCorpus("pydoc", tokenizer, seq_len=128)
    assert torch.equal(torch.stack(blocks(corpus, 40)), data.packed_sequences("pydoc", tokenizer, 128, 40))


@pytest.mark.parametrize("kind", ["txt", "jsonl", "parquet"])
@pytest.mark.parametrize("taken", [0, 1, 4, 9, 20])  # before any read, in a group, at and past an epoch's end
def test_resume_from_a_json_state_gives_the_next_tokens(tokenizer, local, kind, taken):
    corpus = PackedCorpus(local[kind], tokenizer, seq_len=24, docs_per_batch=3)
    blocks(corpus, taken)
    state = json.loads(json.dumps(corpus.state_dict()))  # what a checkpoint holds
    expected = blocks(corpus, 12)
    resumed = PackedCorpus(local[kind], tokenizer, seq_len=24, docs_per_batch=3).load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(blocks(resumed, 12), expected))
    assert (resumed.epoch, resumed.blocks) == (corpus.epoch, corpus.blocks)


def test_resume_tokenises_nothing_consumed_and_rereads_at_most_one_group(tokenizer, local, monkeypatch):
    counting = CountingTokenizer(tokenizer)
    corpus = PackedCorpus(local["txt"], counting, seq_len=24, docs_per_batch=3)
    blocks(corpus, 5)
    tokenised = len(counting.texts)  # whole groups: the documents read so far
    assert tokenised % 3 == 0 and counting.texts == TEXTS[:tokenised]
    state = corpus.state_dict()

    opened = []
    real = data.read_text_files
    monkeypatch.setattr(data, "read_text_files", lambda files: (opened.extend(files), real(files))[1])
    again = CountingTokenizer(tokenizer)
    resumed = PackedCorpus(local["txt"], again, seq_len=24, docs_per_batch=3).load_state_dict(state)
    blocks(resumed, 3)
    assert again.texts and again.texts == TEXTS[tokenised:tokenised + len(again.texts)]  # only new text
    first_opened = min(int(f.rsplit("/", 1)[-1][:3]) for f in opened)
    assert first_opened >= tokenised - 3  # raw text of the last group read, at most, is read again

    # The old way (TrainingStream.seek) tokenises every consumed document again.
    slow = CountingTokenizer(tokenizer)
    TrainingStream(local["txt"], slow, seq_len=24, docs_per_batch=3).seek(5)
    assert slow.texts[:tokenised] == TEXTS[:tokenised]


def test_training_stream_state_resumes_the_mixed_stream(tokenizer):
    def stream():
        return TrainingStream("pydoc", tokenizer, seq_len=128, seed=3, synthetic_ratio=0.25, docs_per_batch=4)

    first = stream()
    batch = first.take(9)
    assert batch["state"]() == first.state_dict() and batch["state"]()["position"] == 9
    state = json.loads(json.dumps(batch["state"]()))
    expected = first.take(10)
    resumed = stream().load_state_dict(state).take(10)
    assert resumed["kinds"] == expected["kinds"] and torch.equal(resumed["input_ids"], expected["input_ids"])
    assert stream().seek(9).take(10)["kinds"] == expected["kinds"]
    random_stream = TrainingStream("random", None, seq_len=16, vocab_size=50)
    random_stream.take(3)
    copy = TrainingStream("random", None, seq_len=16, vocab_size=50).load_state_dict(random_stream.state_dict())
    assert torch.equal(copy.take(2)["input_ids"], random_stream.take(2)["input_ids"])


# ---------------------------------------------------------------------- hub ids
def test_a_hub_id_goes_to_load_dataset_streaming(tokenizer, monkeypatch):
    calls = []

    def load_dataset(path, name=None, **kwargs):
        calls.append((path, name, kwargs))
        return datasets.IterableDataset.from_generator(_hub_rows)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    corpus = PackedCorpus("hf:someone/corpus/en", tokenizer, seq_len=32, split="heldout", text_field="content")
    expected = list(data.pack(data.tokenize(TEXTS, tokenizer), 32, tokenizer.eos_token_id))
    assert all(torch.equal(a, b) for a, b in zip(blocks(corpus, len(expected)), expected))
    assert calls[0] == ("someone/corpus", "en", {"split": "validation", "streaming": True})
    assert list(data.documents("hf:someone/corpus", text_field="content")) == TEXTS
    assert calls[-1] == ("someone/corpus", None, {"split": "train", "streaming": True})


def _hub_rows():
    for text in TEXTS:
        yield {"content": text, "url": "https://example.org"}


def test_a_hub_id_offline_is_a_clear_error(tokenizer, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # the real load_dataset, without network
    with pytest.raises(ValueError, match=r"hub dataset 'hf:someone/corpus' could not be opened .*network access"):
        PackedCorpus("hf:someone/corpus", tokenizer, seq_len=32)


@pytest.mark.parametrize("bad,match", [("hf:", "owner/name"), ("hf:corpus", "owner/name"),
                                       ("hf:a/b/c/d", "owner/name"), ("hf:a//c", "owner/name")])
def test_bad_hub_ids(tokenizer, bad, match):
    with pytest.raises(ValueError, match=match):
        PackedCorpus(bad, tokenizer, seq_len=32)
    with pytest.raises(ValueError, match="split must be one of"):
        data.records("hf:a/b", split="all")


# ---------------------------------------------------------------------- bad input
def test_bad_corpora_are_clear_errors(tokenizer, tmp_path, local):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "no_txt").mkdir()
    (tmp_path / "no_txt" / "notes.md").write_text("not a corpus file")
    cases = [("nope", "one of .*an existing path or a hub id"), (tmp_path / "empty.txt", "is empty"),
             (tmp_path / "empty.jsonl", "is empty"), (tmp_path / "no_txt", "holds no .txt files")]
    for source, match in cases:
        with pytest.raises(ValueError, match=match):
            PackedCorpus(source, tokenizer, seq_len=32)
    with pytest.raises(ValueError, match=r"'shakespeare' \(train\) has no documents"):
        PackedCorpus("shakespeare", tokenizer, seq_len=32)
    with pytest.raises(ValueError, match=r"too small for one packed sequence: it holds \d+ tokens"):
        next(PackedCorpus(local["jsonl"], tokenizer, seq_len=100_000))
    with pytest.raises(ValueError, match="no field 'body'"):
        next(PackedCorpus(local["jsonl"], tokenizer, seq_len=32, text_field="body"))
    with pytest.raises(ValueError, match="records come from .jsonl, .json or .parquet"):
        data.records(next(local["txt"].glob("*.txt")))
    with pytest.raises(ValueError, match="docs_per_batch"):
        PackedCorpus("pydoc", tokenizer, seq_len=32, docs_per_batch=0)
    with pytest.raises(ValueError, match="seq_len"):
        PackedCorpus("pydoc", tokenizer, seq_len=1)


def test_a_state_of_another_corpus_is_refused(tokenizer, local):
    state = PackedCorpus(local["txt"], tokenizer, seq_len=24).state_dict()
    with pytest.raises(ValueError, match=r"another corpus or packing: \{'seq_len': \(32, 24\)\}"):
        PackedCorpus(local["txt"], tokenizer, seq_len=32).load_state_dict(state)
    with pytest.raises(ValueError, match="no corpus part"):
        TrainingStream("pydoc", tokenizer, seq_len=32).load_state_dict({"position": 3, "corpus": None})
    with pytest.raises(ValueError, match="position"):
        TrainingStream("pydoc", tokenizer, seq_len=32).load_state_dict({"position": -1})


def test_a_state_of_another_tokenizer_or_datasets_version_is_refused(tokenizer, local):
    state = PackedCorpus(local["txt"], tokenizer, seq_len=24).state_dict()
    assert state["tokenizer"].endswith(f"({len(tokenizer)} tokens)")
    with pytest.raises(ValueError, match="another corpus or packing: {'tokenizer'"):
        other = CountingTokenizer(tokenizer)
        other.name_or_path = "another/tokenizer"
        PackedCorpus(local["txt"], other, seq_len=24).load_state_dict(state)
    # datasets' own state format may change between versions: a distinct error, which the training
    # loop answers by reading up to the position instead (tests/test_faults.py)
    with pytest.raises(StaleDataState, match="written by datasets 0.0.1"):
        PackedCorpus(local["txt"], tokenizer, seq_len=24).load_state_dict({**state, "datasets_version": "0.0.1"})
