"""Drop-in modules that do the same math in fewer GPU kernels (training speed, both arms alike).

Profiling the SmolLM2 training step at 32K on an H100 (``kernels/NOTES.md``) found ~290 ms of
its ~660 ms outside attention, much of it elementwise: Llama's RMSNorm alone is seven kernels per
call (cast to fp32, square, mean, add, rsqrt, multiply, cast back) and there are 61 of them, each
run again in the checkpointed recomputation and differentiated. :class:`FusedRMSNorm` calls
``torch.nn.functional.rms_norm`` instead (PyTorch's fused kernel where one exists).

Example::

    >>> from longgen_core.models.base import tiny_llama
    >>> model = tiny_llama(num_layers=2)
    >>> fuse_rms_norms(model)   # 2 x (input, post-attention) + the final norm
    5
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["FusedRMSNorm", "fuse_rms_norms", "LLAMA_STYLE_NORMS"]


class FusedRMSNorm(torch.nn.Module):
    """Llama's RMSNorm, ``weight * (x / rms(x))``, through one ``F.rms_norm`` call.

    Same parameter (``weight``, so state dicts and checkpoints are unchanged) and the same
    precision rule as the module it replaces: normalise in float32, round to the input dtype, then
    scale by the weight (an fp32 weight gives an fp32 output, as in transformers' LlamaRMSNorm).
    Shapes: any ``(..., hidden)``.
    """

    def __init__(self, weight: torch.nn.Parameter, eps: float):
        super().__init__()
        self.weight = weight
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(hidden_states.float(), hidden_states.shape[-1:], eps=self.variance_epsilon)
        return self.weight * normed.to(hidden_states.dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}, fused"


# Norms whose forward is exactly Llama's (normalise in fp32, round, then scale). Others that share
# the name and attributes (Olmo2, GptOss, ...) scale before rounding: they are left alone.
LLAMA_STYLE_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm")


def fuse_rms_norms(model: torch.nn.Module) -> int:
    """Replace every RMSNorm of ``model`` listed in :data:`LLAMA_STYLE_NORMS` by a
    :class:`FusedRMSNorm` sharing its weight; return the count."""
    targets = [(name, module) for name, module in model.named_modules()
               if type(module).__name__ in LLAMA_STYLE_NORMS]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, FusedRMSNorm(module.weight, module.variance_epsilon))
    return len(targets)
