"""Next-token cross-entropy in chunks of the sequence: the full-vocabulary logits never exist at once.

At long context the logits, not attention, dominate training memory: SmolLM2's 49,152-token
vocabulary at 128K positions is 25 GB of fp32 logits (plus as much again for their gradient).
:func:`chunked_lm_loss` applies the output head and the cross-entropy to ``chunk`` positions at a
time under activation checkpointing, so the forward keeps only the per-chunk loss sums and the
backward recomputes one chunk's logits at a time: peak extra memory is
``batch * chunk * vocab`` floats instead of ``batch * seq_len * vocab``.

:class:`CausalLMLoss` wraps a Hugging Face causal LM so that the whole computation -- decoder,
head, chunked loss -- is one ``forward``: the module accelerate prepares (DDP/FSDP wrap it and
see every parameter used in its forward).

Example::

    >>> import torch
    >>> from longgen_core.models.base import tiny_llama
    >>> lm = tiny_llama()
    >>> ids = torch.randint(0, 512, (2, 40), generator=torch.Generator().manual_seed(0))
    >>> per_seq = CausalLMLoss(lm, chunk=16)(ids, ids)          # (2,) mean loss per sequence
    >>> plain = lm(ids, labels=ids).loss                          # transformers' own loss
    >>> bool(torch.allclose(per_seq.mean(), plain, atol=1e-5))
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

__all__ = ["IGNORE_INDEX", "chunked_lm_loss", "CausalLMLoss"]

IGNORE_INDEX = -100  # label of positions without loss (Hugging Face's convention)


def _chunk_loss_sum(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum of the cross-entropies of one chunk, per sequence: ``(B, C, H)``, ``(B, C)`` -> ``(B,)``."""
    logits = head(hidden).float()  # (B, C, V); fp32 for a stable log-softmax under bf16 autocast
    losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX,
                             reduction="none")
    return losses.view(targets.shape).sum(dim=1)


def chunked_lm_loss(hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor,
                    chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token loss of ``hidden`` ``(B, N, H)`` under ``head`` against ``labels`` ``(B, N)``.

    Position ``t`` predicts ``labels[:, t + 1]``; labels equal to :data:`IGNORE_INDEX` carry no
    loss. Returns ``(loss_sum, count)``, both ``(B,)``: the summed loss and the number of scored
    positions of each sequence (``loss_sum / count`` is transformers' mean for one sequence).
    """
    if hidden.dim() != 3 or labels.shape != hidden.shape[:2]:
        raise ValueError(f"hidden must be (B, N, H) and labels (B, N); got {tuple(hidden.shape)} and "
                         f"{tuple(labels.shape)}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an int >= 1, got {chunk!r}")
    inputs, targets = hidden[:, :-1], labels[:, 1:]
    total = hidden.new_zeros(hidden.shape[0], dtype=torch.float32)
    for start in range(0, targets.shape[1], chunk):
        h, y = inputs[:, start:start + chunk], targets[:, start:start + chunk]
        if torch.is_grad_enabled() and h.requires_grad:
            # Recompute this chunk's logits in the backward instead of keeping them.
            total = total + checkpoint(_chunk_loss_sum, head, h, y, use_reentrant=False)
        else:
            total = total + _chunk_loss_sum(head, h, y)
    count = (targets != IGNORE_INDEX).sum(dim=1)
    return total, count


class CausalLMLoss(torch.nn.Module):
    """``forward(input_ids (B, N), labels (B, N)) -> (B,)`` mean next-token loss per sequence.

    Runs the decoder (``lm.get_decoder()``) for the hidden states, then :func:`chunked_lm_loss`
    with the output head (``lm.get_output_embeddings()``). A sequence without any scored position
    gets loss 0.
    """

    def __init__(self, lm: torch.nn.Module, chunk: int = 4096):
        super().__init__()
        self.lm = lm
        self.chunk = chunk

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        hidden = self.lm.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state
        total, count = chunked_lm_loss(hidden, self.lm.get_output_embeddings(), labels, self.chunk)
        return total / count.clamp(min=1)
