"""Test set-up shared by every test file.

Triton kernels run on the CPU through Triton's interpreter, which must be switched on before any
``@triton.jit`` function is defined, so it is set here, before the tests import longgen_core.
Figures the notebooks save while nbval executes them go to ``runs/test-figures`` (git-ignored), so
``make test`` leaves the committed ``figures/`` untouched.
"""

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("LONGGEN_FIGURE_DIR", str(Path(__file__).resolve().parent.parent / "runs" / "test-figures"))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted 6-step micro run (test_train's ``run``) that the resume tests of
    test_train and test_faults compare against; one per module."""
    from test_train import run

    return run(tmp_path_factory.mktemp("straight"))
