"""Test set-up shared by every test file.

Triton kernels run on the CPU through Triton's interpreter, which must be switched on before any
``@triton.jit`` function is defined, so it is set here, before the tests import longgen_core.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
