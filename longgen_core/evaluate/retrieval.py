"""Long-context evaluation: retrieval grids (length x depth), task accuracy, perplexity vs length.

One interface for every model variant -- the original model, full attention extended, the
LongGen hybrid, and post-hoc StreamingLLM on the full model: each is a Hugging Face causal LM;
converted ones (``config.longgen``) decode with the evicting :class:`~longgen_core.models.cache.LongGenCache`,
plain ones with transformers' default cache. Decoding is greedy. Prompts of one cell all have the
same length (the task generators build them exact), so a cell runs as one padding-free batch.

Example::

    >>> result = retrieval_grid(model, tok, "passkey", lengths=[512, 1024], depths=[0.0, 0.5, 1.0],
    ...                         samples=2)                                   # doctest: +SKIP
    >>> result["mean_by_length"]                                             # doctest: +SKIP
    {'512': 1.0, '1024': 0.5}
    >>> fig = plot_grid(result)                                              # doctest: +SKIP

Reference points (LongGen paper, Llama-2-7B extended to 128K): the hybrid keeps NIAH retrieval
near full attention's, while StreamingLLM applied post hoc fails on needles outside its window.
"""

from __future__ import annotations

import logging
import math

import torch
from ..progress import tqdm

from ..data import suite, tasks
from ..formatting import format_tokens
from ..train.loss import chunked_lm_loss


class _PastConfiguredLength(logging.Filter):
    """Drops transformers' notice that a generation ran past ``config.max_position_embeddings``.
    Evaluating there is deliberate (the unextended model at the extended lengths; a prompt that
    fills the target length, plus the answer's tokens), and each result records its lengths."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "exceeded the model's predefined maximum length" not in record.getMessage()


logging.getLogger("transformers.generation.stopping_criteria").addFilter(_PastConfiguredLength())


@torch.no_grad()
def generate_batch(model, prompts: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Greedy continuations ``(B, <= max_new_tokens)`` of equal-length prompts ``(B, N)``."""
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, attention_mask=torch.ones_like(prompts),
                  pad_token_id=model.config.eos_token_id if model.config.pad_token_id is None
                  else model.config.pad_token_id)
    out = model.generate(prompts, **kwargs)  # a converted model evicts by default (models.cache.evict_by_default)
    return out[:, prompts.shape[1]:]


def retrieval_grid(model, tokenizer, task: str = "passkey", lengths=(512, 1024), depths=(0.0, 0.5, 1.0),
                   samples: int = 2, seed: int = 0, max_new_tokens: int | None = None,
                   batch_size: int = 8, progress: bool = True, **task_kwargs) -> dict:
    """Score ``task`` at every (length, depth) cell; ``samples`` seeded prompts per cell.

    ``task``: a name of the evaluation suite (:data:`~longgen_core.data.suite.SUITE_TASKS`, scored
    by :func:`~longgen_core.data.suite.score`; pass ``split="heldout"`` -- the default -- or
    ``"train"``) or of :data:`~longgen_core.data.tasks.TASKS` (scored by
    :func:`~longgen_core.data.tasks.score`). ``task_kwargs`` go to the generator.

    Returns a JSON-ready dict: ``scores[i][j]`` is the mean score at ``depths[i]``, ``lengths[j]``;
    ``mean_by_length`` averages over depths; ``examples`` keeps one generation per cell;
    ``details`` lists every sample as ``[length, depth, needle_start, needle_end, score]`` (where the needle
    sat decides whether an evicting cache could still see it).
    """
    if task in suite.SUITE_TASKS:
        make, score = suite.SUITE_TASKS[task], suite.score
    elif task in tasks.TASKS:
        make, score = tasks.TASKS[task], tasks.score
    else:
        raise ValueError(f"task must be one of {sorted(suite.SUITE_TASKS) + sorted(tasks.TASKS)}, got {task!r}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    device = next(model.parameters()).device
    scores = [[0.0] * len(lengths) for _ in depths]
    examples, details = [], []
    cells = [(i, j) for j in range(len(lengths)) for i in range(len(depths))]
    bar = tqdm(cells, desc=f"{task}", disable=not progress)
    for i, j in bar:
        n, depth = lengths[j], depths[i]
        batch = [make(tokenizer, n, depth, seed=seed + 10_000 * k + 100 * i + j, **task_kwargs)
                 for k in range(samples)]
        new_tokens = max_new_tokens or max(len(s.answer_ids) for s in batch) + 4
        total = 0.0
        for start in range(0, samples, batch_size):
            chunk = batch[start:start + batch_size]
            prompts = torch.tensor([s.prompt_ids for s in chunk], device=device)
            outputs = generate_batch(model, prompts, new_tokens)
            texts = tokenizer.batch_decode(outputs, skip_special_tokens=True)
            sample_scores = [score(s, t) for s, t in zip(chunk, texts)]
            total += sum(sample_scores)
            details += [[n, depth, s.needle_start, s.needle_end, sc] for s, sc in zip(chunk, sample_scores)]
            if start == 0:
                examples.append({"length": n, "depth": depth, "answer": chunk[0].answer, "output": texts[0]})
        scores[i][j] = total / samples
        bar.set_postfix(length=n, depth=depth, score=round(scores[i][j], 2), refresh=False)  # drawn by the next step
    mean_by_length = {str(n): sum(scores[i][j] for i in range(len(depths))) / len(depths)
                      for j, n in enumerate(lengths)}
    return {"task": task, "lengths": list(lengths), "depths": list(depths), "samples": samples, "seed": seed,
            "scores": scores, "mean_by_length": mean_by_length, "examples": examples,
            "details": details}


def outside_window_score(grid: dict, window_tokens: int, sink_tokens: int = 0) -> float | None:
    """Mean score over samples whose whole needle lies after the ``sink_tokens`` first positions and
    before the last ``window_tokens`` ones -- evicted from a sink + window cache once the prompt is
    read; ``None`` if there are none. (Evicted is not quite unseen: through L stacked sparse layers
    a token reaches about L * (window - 1) positions further through the residual stream.)"""
    scores = [score for n, _, start, end, score in grid["details"]
              if start >= sink_tokens and end <= n - window_tokens]
    return sum(scores) / len(scores) if scores else None


@torch.no_grad()
def perplexity(model, sequences: torch.Tensor, chunk: int = 1024) -> float:
    """Perplexity of ``sequences`` ``(B, N)`` under ``model`` (next-token prediction, all positions).

    The LM head runs over ``chunk`` positions at a time, so a 49K vocabulary at long N never
    materialises the whole ``(N, vocab)`` logits.
    """
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    for seq in sequences:  # one at a time: long sequences do not batch in memory
        ids = seq.unsqueeze(0).to(device)
        hidden = model.get_decoder()(input_ids=ids).last_hidden_state  # (1, N, hidden)
        total, scored = chunked_lm_loss(hidden, model.get_output_embeddings(), ids, chunk)
        nll += total.item()
        count += int(scored.item())
    return math.exp(nll / count)


def perplexity_by_length(model, tokenizer, lengths, source: str = "kjv", num_sequences: int = 2,
                         progress: bool = True) -> dict:
    """Held-out perplexity at each context length (``{str(length): ppl}``)."""
    from ..data.corpora import packed_sequences

    out = {}
    for n in tqdm(lengths, desc="perplexity", disable=not progress):
        seqs = packed_sequences(source, tokenizer, n, num_sequences, split="heldout")
        out[str(n)] = perplexity(model, seqs)
    return out


def plot_grid(result: dict, title: str | None = None, ax=None):
    """The paper-style retrieval heatmap: depth (rows) x context length (columns), red to green,
    each cell annotated with its score (seaborn's ``heatmap``; ``ax.texts`` holds the numbers)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    if ax is None:
        fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(result["lengths"]), 0.9 + 0.45 * len(result["depths"])))
    else:
        fig = ax.figure
    sns.heatmap(result["scores"], ax=ax, cmap="RdYlGn", vmin=0, vmax=1, annot=True, fmt=".2f", cbar=False,
                annot_kws={"fontsize": 7}, linewidths=0.5, linecolor="white",
                xticklabels=[format_tokens(n) for n in result["lengths"]],
                yticklabels=[f"{d:.0%}" for d in result["depths"]])
    ax.tick_params(axis="y", rotation=0)
    ax.set_xlabel("context length")
    ax.set_ylabel("needle depth")
    ax.set_title(title or result.get("variant", result["task"]), fontsize=10)
    return fig


def grid_text(result: dict) -> str:
    """Text twin of :func:`plot_grid`: one row per depth, scores to 2 decimals, then the means."""
    head = "depth  " + " ".join(f"{n:>7}" for n in result["lengths"])
    rows = [f"{d:5.0%}  " + " ".join(f"{s:7.2f}" for s in row) for d, row in zip(result["depths"], result["scores"])]
    mean = "mean   " + " ".join(f"{result['mean_by_length'][str(n)]:7.2f}" for n in result["lengths"])
    return "\n".join([head, *rows, mean])
