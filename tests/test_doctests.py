"""The examples in the docstrings run and print what they say."""

import doctest

import pytest

import longgen_core
import longgen_core.kernels.reference
import longgen_core.data.corpora
import longgen_core.data.pipeline
import longgen_core.data.stream
import longgen_core.formatting
import longgen_core.models.fused
import longgen_core.models.convert
import longgen_core.models.hybrid
import longgen_core.models.settings
import longgen_core.patterns.masks
import longgen_core.plots
import longgen_core.train.options
import longgen_core.bench.targets
import longgen_core.cli_parser
import longgen_core.cli_values
import longgen_core.jsonio
import longgen_core.manifest
import longgen_core.notebook_params
import longgen_core.bench.baselines
import longgen_core.bench.results
import longgen_core.exercises
import longgen_core.kernels.flex
import longgen_core.paths

MODULES = [longgen_core.patterns.masks, longgen_core.kernels.reference, longgen_core.kernels.flex, longgen_core.plots,
           longgen_core.data.corpora, longgen_core.data.pipeline, longgen_core.data.stream, longgen_core.models.convert,
           longgen_core.models.hybrid,
           longgen_core.models.settings, longgen_core.models.fused,
           longgen_core, longgen_core.train.options, longgen_core.bench.targets, longgen_core.bench.baselines,
           longgen_core.bench.results, longgen_core.cli_parser, longgen_core.cli_values, longgen_core.jsonio,
           longgen_core.manifest, longgen_core.formatting, longgen_core.notebook_params, longgen_core.paths,
           longgen_core.exercises]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
