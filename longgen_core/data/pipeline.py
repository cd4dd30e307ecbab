"""The training corpus as a ``datasets`` pipeline: documents -> tokenised groups -> fixed-length
blocks, epoch after epoch, with a state that resumes at the next token.

The stages:

1. :func:`text_dataset`: a ``datasets.IterableDataset`` of ``{"text": str}`` rows, one per
   document. A shipped corpus or a ``.txt`` file/folder is ``IterableDataset.from_generator``
   with one shard per document (:func:`~longgen_core.data.corpora.document_shards`), so a resume
   opens the document it stopped after, not the ones before; a ``.jsonl``/``.parquet`` file or a
   hub id (``"hf:owner/name"``) is ``load_dataset(..., streaming=True)``
   (:func:`~longgen_core.data.corpora.records`).
2. :func:`token_dataset`: ``.batch(docs_per_batch)`` and a ``.map`` that tokenises each group of
   documents in one tokenizer call: ``{"input_ids": list[int]}`` rows, the group's documents each
   followed by EOS. (Not ``.map(batched=True)`` over document rows: ``datasets`` resumes a batched
   map at the start of its current batch and runs the function over that batch again, which would
   tokenise consumed documents a second time. Here the batched step that restarts is ``.batch``,
   which only regroups raw text; the tokenising map resumes at the next group.)
3. :class:`PackedCorpus`: cuts the rows into ``(seq_len,)`` blocks, carrying the tail of a group
   into the next block; at the end of an epoch the partial block is dropped and the corpus starts
   over. The blocks are those of :func:`~longgen_core.data.corpora.pack` (same tokens, same cuts).

Resume: :meth:`PackedCorpus.state_dict` (JSON) is the token dataset's ``state_dict()`` after the
last group read, the tokens carried and not yet handed out (fewer than one group + ``seq_len``),
the epoch and the blocks cut in it. :meth:`PackedCorpus.load_state_dict` continues with exactly the
next token: the carried tokens, then the group after the last one read. Nothing consumed is
tokenised again; what is read again is at most the raw text of one group (and, in a
``.jsonl``/``.parquet`` file, what ``datasets`` parses to skip to its place in the file).

Example (a toy tokenizer: a word's id is its length, EOS is 0)::

    >>> class Words:
    ...     eos_token_id = 0
    ...     def __call__(self, texts, add_special_tokens=False):
    ...         return {"input_ids": [[len(word) for word in text.split()] for text in texts]}
    >>> corpus = PackedCorpus("pydoc", Words(), seq_len=256)
    >>> first, state = next(corpus), corpus.state_dict()
    >>> again = PackedCorpus("pydoc", Words(), seq_len=256).load_state_dict(state)
    >>> torch.equal(next(again), next(corpus)), first.shape, state["blocks"], len(state["carry"]) > 0
    (True, torch.Size([256]), 1, True)
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from .corpora import document_shards, records, text_of

__all__ = ["DOCS_PER_BATCH", "text_dataset", "token_dataset", "PackedCorpus", "StaleDataState"]

DOCS_PER_BATCH = 8  # documents per tokenizer call (a KJV book is ~15K tokens)


def text_dataset(source: str | Path, split: str = "train", text_field: str = "text"):
    """``{"text": str}`` rows, one per document of ``source`` (see :func:`~longgen_core.data.corpora.documents`),
    as a streaming ``datasets.IterableDataset``. Raises ValueError for an unknown corpus, an empty
    file, a bad split or a corpus without documents; a record without ``text_field`` raises when read."""
    import datasets

    shards = document_shards(source, split)
    if shards is None:
        stream = records(source, split)
        return stream.map(_text_row, fn_kwargs={"text_field": text_field}, remove_columns=stream.column_names)
    keys, read = shards
    if not keys:
        raise ValueError(f"corpus {str(source)!r} ({split}) has no documents")
    return datasets.IterableDataset.from_generator(_document_rows, gen_kwargs={"keys": keys, "read": read})


def _document_rows(keys: list, read):
    for text in read(keys):
        yield {"text": text}


def _text_row(record: dict, text_field: str) -> dict:
    return {"text": text_of(record, text_field)}


def token_dataset(texts, tokenizer, docs_per_batch: int = DOCS_PER_BATCH):
    """``texts`` (rows ``{"text"}``) tokenised ``docs_per_batch`` documents per call: rows
    ``{"input_ids": list[int]}``, each the group's documents (no special tokens) each followed by
    the tokenizer's EOS.

    Example: groups of 2 of ``["a b", "c", "d"]`` -> ``[ids(a b) + [eos] + ids(c) + [eos], ids(d) + [eos]]``
    """
    if isinstance(docs_per_batch, bool) or not isinstance(docs_per_batch, int) or docs_per_batch < 1:
        raise ValueError(f"docs_per_batch must be an int >= 1, got {docs_per_batch!r}")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token_id, needed to mark document boundaries")
    return texts.batch(docs_per_batch).map(_tokenise_group, remove_columns=["text"],
                                           fn_kwargs={"tokenizer": tokenizer, "eos_id": tokenizer.eos_token_id})


class StaleDataState(ValueError):
    """A data state that another version of ``datasets`` wrote (see :meth:`PackedCorpus.load_state_dict`)."""


def _tokenizer_identity(tokenizer) -> str:
    """What a resume must not change about the tokenizer: its name (or class) and vocabulary size."""
    name = getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__
    try:
        size = len(tokenizer)
    except TypeError:
        size = "?"
    return f"{name} ({size} tokens)"


def _tokenise_group(group: dict, tokenizer, eos_id: int) -> dict:
    ids: list[int] = []
    for doc in tokenizer(group["text"], add_special_tokens=False)["input_ids"]:
        ids.extend(doc)
        ids.append(eos_id)
    return {"input_ids": ids}


class PackedCorpus:
    """``(seq_len,)`` long tensors of ``source``'s packed tokens, epoch after epoch, forever.

    ``epoch`` (from 0) and ``blocks`` (cut in this epoch) tell where it is. Raises ValueError, at
    the end of the first epoch, when the corpus cannot fill one block (naming it and its tokens).
    :meth:`state_dict` / :meth:`load_state_dict`: see the module docstring.
    """

    _IDENTITY = ("source", "split", "text_field", "seq_len", "docs_per_batch", "tokenizer")

    def __init__(self, source: str | Path, tokenizer, seq_len: int, split: str = "train", text_field: str = "text",
                 docs_per_batch: int = DOCS_PER_BATCH):
        if seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {seq_len}")
        self.source, self.tokenizer, self.seq_len, self.split = source, tokenizer, seq_len, split
        self.text_field, self.docs_per_batch = text_field, docs_per_batch
        self._build()  # bad input fails here, before anything is read
        self.epoch, self.blocks, self._epoch_tokens = 0, 0, 0
        self._carry: list[int] = []  # tokens read and not handed out start at _offset
        self._offset = 0
        self._dataset_state: dict | None = None  # the token dataset's state after the last group read
        self._rows = None

    def _build(self):
        return token_dataset(text_dataset(self.source, self.split, self.text_field), self.tokenizer,
                             self.docs_per_batch)

    def _open(self, dataset_state: dict | None) -> None:
        self._dataset = self._build()  # a new one per epoch: a loaded state would apply to every iter()
        if dataset_state is not None:
            self._dataset.load_state_dict(dataset_state)
        self._rows = iter(self._dataset)

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        while len(self._carry) - self._offset < self.seq_len:
            self._read_group()
        block = self._carry[self._offset:self._offset + self.seq_len]
        self._offset += self.seq_len
        self.blocks += 1
        return torch.tensor(block, dtype=torch.long)

    def _read_group(self) -> None:
        if self._rows is None:
            self._open(self._dataset_state)
        try:
            ids = next(self._rows)["input_ids"]
        except StopIteration:
            if self.blocks == 0:
                raise ValueError(f"corpus {str(self.source)!r} ({self.split}) is too small for one packed sequence: "
                                 f"it holds {self._epoch_tokens} tokens (EOS included), fewer than "
                                 f"seq_len={self.seq_len}") from None
            self.epoch, self.blocks, self._epoch_tokens = self.epoch + 1, 0, 0
            self._carry, self._offset, self._dataset_state = [], 0, None  # the partial block is dropped
            self._open(None)
            return
        self._epoch_tokens += len(ids)
        self._carry = self._carry[self._offset:] + ids  # a new list: states handed out stay as they were
        self._offset = 0
        self._dataset_state = self._dataset.state_dict()

    def state_dict(self) -> dict:
        """Where the corpus is, as JSON-able values: its identity (source, split, text field,
        seq_len, docs_per_batch, tokenizer), ``epoch``, ``blocks``, ``epoch_tokens``, ``dataset``
        (the token dataset's ``state_dict()``, ``None`` before the epoch's first group),
        ``datasets_version`` and ``carry``."""
        return self.snapshot()()

    def snapshot(self):
        """:meth:`state_dict` as of now, built only when called: cheap to take after every batch
        (the carried tokens, up to a whole group, are copied only for the states that are saved).
        Safe because ``_carry`` is replaced, never changed in place."""
        return functools.partial(self._state, self._carry, self._offset, self.epoch, self.blocks,
                                 self._epoch_tokens, self._dataset_state)

    def _state(self, carry, offset, epoch, blocks, epoch_tokens, dataset_state) -> dict:
        import datasets

        identity = {name: getattr(self, name) for name in self._IDENTITY if name not in ("source", "tokenizer")}
        identity.update(source=str(self.source), tokenizer=_tokenizer_identity(self.tokenizer))
        return {**identity, "epoch": epoch, "blocks": blocks, "epoch_tokens": epoch_tokens,
                "dataset": dataset_state, "datasets_version": datasets.__version__, "carry": carry[offset:]}

    def load_state_dict(self, state: dict) -> "PackedCorpus":
        """Continue where ``state`` (of :meth:`state_dict`) was taken; return self. Raises
        ValueError when it is the state of another corpus, packing or tokenizer, and
        :class:`StaleDataState` when another version of ``datasets`` wrote it (its state format is
        that library's own: the caller can fall back to reading up to the position)."""
        mine = self.state_dict()
        other = {name: (mine[name], state.get(name)) for name in self._IDENTITY if state.get(name) != mine[name]}
        if other:
            raise ValueError(f"the data state is of another corpus or packing: {other} (this one, the state's)")
        if state.get("datasets_version") != mine["datasets_version"]:
            raise StaleDataState(f"the data state was written by datasets {state.get('datasets_version')}, this is "
                                 f"datasets {mine['datasets_version']}")
        self.epoch, self.blocks, self._epoch_tokens = state["epoch"], state["blocks"], state["epoch_tokens"]
        self._carry, self._offset, self._dataset_state = list(state["carry"]), 0, state["dataset"]
        self._rows = None  # opened at the loaded state on the next read
        return self
