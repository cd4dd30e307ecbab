"""The examples in the docstrings run and print what they say."""

import doctest

import pytest

import longgen_core.attention.reference
import longgen_core.data
import longgen_core.fused
import longgen_core.hybrid
import longgen_core.patterns
import longgen_core.plots

MODULES = [longgen_core.patterns, longgen_core.attention.reference, longgen_core.plots, longgen_core.data,
           longgen_core.hybrid, longgen_core.fused]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
