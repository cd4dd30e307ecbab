"""The training stream: packed corpus sequences, cycled over epochs, mixed with synthetic
retrieval samples at a stated ratio; item ``i`` is a function of ``(seed, i)`` and the corpus
alone. :meth:`TrainingStream.state_dict` is the position and the corpus pipeline's state
(:class:`~longgen_core.data.pipeline.PackedCorpus`), from which a run resumes at the next item
without reading the consumed corpus again. :class:`Prefetcher` builds its batches on a background
thread.

Example::

    >>> stream = TrainingStream("random", None, seq_len=8, vocab_size=50)
    >>> item = next(stream)
    >>> item["input_ids"].shape, item["kind"], stream.position
    (torch.Size([8]), 'random', 1)
"""

from __future__ import annotations

import queue
import random
import threading
from functools import partial
from pathlib import Path

import torch

from . import tasks as task_module  # "tasks" is TrainingStream's argument
from .pipeline import DOCS_PER_BATCH, PackedCorpus
from .suite import SUITE_TASKS, training_sample

__all__ = ["TrainingStream", "Prefetcher"]


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
    sequences of ``source`` in order (:class:`~longgen_core.data.pipeline.PackedCorpus`: tokenised
    ``docs_per_batch`` documents at a time, epochs when the corpus runs out), labelled everywhere.
    ``source="random"`` gives uniform random tokens (speed runs without a tokenizer; needs
    ``vocab_size``).

    Each item is ``{"input_ids": (seq_len,) long, "labels": (seq_len,) long (-100 = no loss),
    "kind": "corpus" | "random" | <task name>}``. ``position`` counts the items
    handed out. A checkpoint stores :meth:`state_dict` and resumes with :meth:`load_state_dict`;
    :meth:`seek` finds a position by reading the corpus up to it (for states without a corpus part).

    Example::

        >>> stream = TrainingStream("pydoc", tok, seq_len=256, seed=0, synthetic_ratio=0.25)  # doctest: +SKIP
        >>> [next(stream)["kind"] for _ in range(4)], stream.position                        # doctest: +SKIP
        (['corpus', 'passkey', 'corpus', 'corpus'], 4)
    """

    def __init__(self, source: str | Path, tokenizer, seq_len: int, seed: int = 0,
                 synthetic_ratio: float = 0.0, tasks: tuple = ("passkey", "kv_retrieval"),
                 split: str = "train", vocab_size: int | None = None, text_field: str = "text",
                 docs_per_batch: int = DOCS_PER_BATCH):
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

        known = set(SUITE_TASKS) | set(task_module.TASKS)
        if not tasks or set(tasks) - known:
            raise ValueError(f"tasks must be a non-empty tuple of names in {sorted(known)}, got {tasks}")
        if synthetic_ratio > 0 and set(tasks) & set(SUITE_TASKS) and seq_len < 512:
            raise ValueError(f"seq_len must be >= 512 for the suite's tasks {sorted(SUITE_TASKS)}, got {seq_len}")
        self.source, self.tokenizer, self.seq_len, self.seed = source, tokenizer, seq_len, seed
        self.synthetic_ratio, self.tasks, self.split = synthetic_ratio, tuple(tasks), split
        self.vocab_size, self.text_field, self.docs_per_batch = vocab_size, text_field, docs_per_batch
        self.position = 0
        self._corpus: PackedCorpus | None = None

    def _item_rng(self, index: int):
        return random.Random(f"{self.seed}-{index}")

    def _is_synthetic(self, rng) -> bool:
        return self.synthetic_ratio > 0 and rng.random() < self.synthetic_ratio

    def _corpus_iter(self) -> PackedCorpus:
        if self._corpus is None:
            self._corpus = self._fresh_corpus()
        return self._corpus

    def _fresh_corpus(self) -> PackedCorpus:
        return PackedCorpus(self.source, self.tokenizer, self.seq_len, self.split, self.text_field,
                            self.docs_per_batch)

    def check(self) -> "TrainingStream":
        """Fail early (ValueError) when the corpus cannot fill one sequence; return self."""
        if self.source != "random":
            first = next(self._fresh_corpus())
            assert first.shape == (self.seq_len,)
        return self

    def state_dict(self) -> dict:
        """``{"position": items handed out, "corpus": PackedCorpus.state_dict() (None for source
        'random')}``, JSON-able: what :meth:`load_state_dict` resumes from."""
        return self.snapshot()()

    def snapshot(self):
        """:meth:`state_dict` as of now, built when called (cheap to take after every batch; see
        :meth:`PackedCorpus.snapshot`)."""
        corpus = None if self.source == "random" else self._corpus_iter().snapshot()
        return partial(_stream_state, self.position, corpus)

    def load_state_dict(self, state: dict) -> "TrainingStream":
        """Continue after the items counted in ``state`` (of :meth:`state_dict`), with the corpus at
        its next token; nothing consumed is tokenised again. Returns self."""
        _check_position(state.get("position"))
        if self.source != "random":
            if state.get("corpus") is None:
                raise ValueError(f"the data state has no corpus part, needed for corpus {str(self.source)!r}")
            self._corpus = self._fresh_corpus().load_state_dict(state["corpus"])
        self.position = state["position"]
        return self

    def seek(self, position: int) -> "TrainingStream":
        """Continue after ``position`` items, as if they had been read (exact resume, slowly: it
        reads and tokenises the consumed corpus; :meth:`load_state_dict` does not)."""
        _check_position(position)
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
        task = self.tasks[rng.randrange(len(self.tasks))]
        depth, sample_seed = rng.random(), rng.randrange(2**31)
        if task in SUITE_TASKS:  # the suite's training split, never its held-out one
            make = partial(training_sample, task)
        else:
            make = getattr(task_module, task)
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
        ``position``, the stream position after them, and ``state``, :meth:`snapshot` after them
        (call it for the state a checkpoint stores)."""
        items = [next(self) for _ in range(n)]
        return {"input_ids": torch.stack([it["input_ids"] for it in items]),
                "labels": torch.stack([it["labels"] for it in items]),
                "kinds": [it["kind"] for it in items], "position": self.position, "state": self.snapshot()}


def _stream_state(position: int, corpus) -> dict:
    return {"position": position, "corpus": None if corpus is None else corpus()}


def _check_position(position) -> None:
    if isinstance(position, bool) or not isinstance(position, int) or position < 0:
        raise ValueError(f"position must be an int >= 0, got {position!r}")


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
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._fill, args=(stream, n), daemon=True)
        self._thread.start()

    def _fill(self, stream: TrainingStream, n: int) -> None:
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
