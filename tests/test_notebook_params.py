"""Notebook parameters at edge values are refused in the cell right after ``parameters``, by name
(issue "Runs that cannot be hijacked, lost or stuck", item 9).

The rules of ``longgen_core.notebook_params`` one by one; then each notebook's check cell, run on
its ``parameters`` cell plus overrides (fast: nothing else of the notebook runs); then papermill
on the five values measured to fail far from their cause, which must now stop in the check cell.
CUDA is patched out (or in) where a value needs a GPU.
"""

from __future__ import annotations

import nbformat
import papermill
import pytest
import torch
from papermill.exceptions import PapermillExecutionError

from longgen_core.notebook_params import (check_parameters, flag, int_list, integer, names, needs_cuda,
                                          number, one_of, power_of_two, text)
from longgen_core.runner import NOTEBOOKS_DIR, numbered_notebooks


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# ---------------------------------------------------------------------- the rules
@pytest.mark.parametrize("rule, good, bad, allowed", [
    (integer(1), [1, 2**40], [0, -3, 1.0, True, "1", None], "an int >= 1"),
    (integer(4096, 2**31 - 1), [4096, 2**31 - 1], [4095, 2**31], "an int in [4096, 2147483647]"),
    (integer(maximum=8), [-5, 8], [9], "an int <= 8"),
    (integer(), [0, -(2**70)], [0.5, False], "an int"),
    (number(0), [0, 0.0, 2.5, 10**9], [-0.1, float("nan"), True, "1"], "a number >= 0"),
    (power_of_two(16), [16, 64, 2**30], [8, 48, 0, -16, 16.0, True], "a power of 2 >= 16 (16, 32, 64, ...)"),
    (power_of_two(16, 128), [128], [256], "a power of 2 in [16, 128] (16, 32, 64, ...)"),
    (one_of("auto", True, False), ["auto", True, False], [1, 0, "True", None], "one of 'auto', True, False"),
    (one_of(16, 32), [16, 32], [True, 16.0, 96], "one of 16, 32"),
    (flag(), [True, False], [1, 0, "yes", None], "one of True, False"),
    (text(), ["", "runs/x"], [None, 3, b"x"], "a str"),
    (text(nonempty=True), ["smollm2"], [""], "a non-empty str"),
    (int_list(1), ["32768,65536,131072", "8", " 8, 16", 32768], ["", "32768,", "32K", "8,0", 8.0, [8], True],
     "comma-separated ints >= 1, e.g. '32768,65536'"),
    (names(["full", "hybrid"]), ["", "hybrid", "full,hybrid"], ["hybird", "full,", ",", None, 1],
     "'' or comma-separated names from 'full', 'hybrid'"),
], ids=["int>=1", "int-range", "int<=", "any-int", "number", "pow2", "pow2-range", "auto-bool", "ints-of",
        "flag", "text", "nonempty", "int-list", "names"])
def test_rules_accept_their_range_and_say_what_it_is(rule, good, bad, allowed):
    assert [rule(v) for v in good] == [None] * len(good)
    assert [rule(v) for v in bad] == [f"must be {allowed}"] * len(bad)


def test_why_follows_what_is_allowed():
    assert integer(4096, why="the curves start at 4K")(1000) == \
        "must be an int >= 4096 (the curves start at 4K)"
    assert integer(5000, 2048)(256) == "must be an int in [5000, 2048]"  # an empty range is reported as it is


def test_needs_cuda_refuses_only_gpu_values_without_a_gpu(monkeypatch):
    rule = needs_cuda("re-run the benchmark", "set RUN_BENCH = False", unless=("auto", False))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert rule("auto") is None and rule(False) is None
    assert rule(True) == \
        "needs a CUDA GPU to re-run the benchmark, and none is visible; set RUN_BENCH = False"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert rule(True) is None


def test_check_parameters_names_every_bad_parameter_once_on_its_line():
    with pytest.raises(ValueError) as err:
        check_parameters(A=(0, integer(1), integer(5)), B=(2, integer(1)), C=("x", flag()))
    assert str(err.value) == "A=0: must be an int >= 1\nC='x': must be one of True, False"


def test_check_parameters_passes_good_values_and_wants_a_rule():
    assert check_parameters(A=(1, integer(1)), B=(True, flag())) is None
    with pytest.raises(TypeError, match="A=..."):
        check_parameters(A=(1,))


# ---------------------------------------------------------------------- each notebook's check cell
NOTEBOOKS = {nb.name[:2]: nb for nb in numbered_notebooks()}


def cells_of(key: str) -> tuple[str, str]:
    """The sources of the ``parameters`` cell and of the cell right after it."""
    cells = nbformat.read(NOTEBOOKS[key], as_version=4).cells
    at = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
    return cells[at].source, cells[at + 1].source


def run_check_cell(key: str, **overrides) -> None:
    """Execute the parameters cell, the overrides (what papermill injects), then the check cell."""
    parameters, check = cells_of(key)
    namespace: dict = {}
    exec(parameters, namespace)
    namespace.update(overrides)
    exec(check, namespace)


@pytest.mark.parametrize("key", sorted(NOTEBOOKS))
def test_every_notebook_checks_its_parameters_right_after_them(key):
    parameters, check = cells_of(key)
    declared = papermill.inspect_notebook(str(NOTEBOOKS[key]))
    assert "check_parameters(" in check
    missing = [name for name in declared if f"{name}=({name}," not in check]
    assert not missing, f"{NOTEBOOKS[key].name}: parameters without a check: {missing}"


@pytest.mark.parametrize("key", sorted(NOTEBOOKS))
def test_defaults_pass_the_check(key, no_cuda):
    run_check_cell(key)


@pytest.mark.parametrize("key, overrides", [
    ("01", {"LONG_N": 4096, "TOY_SINK": 0, "NUM_LAYERS": 1, "TILE": 16, "STRIDED_BLOCK": 256}),
    ("02", {"HEAD_DIM": 16, "TILE": 128, "SEQ_LEN": 52}),            # SEQ_LEN = SINK + WINDOW
    ("03", {"LONG_TOKENS": 69, "MEASURE_MAX_TOKENS": 64}),          # one past SINK + WINDOW
    ("05", {"DEMO_SHORT": 64, "DEMO_LONG": 65, "SAMPLE_TOKENS": 8192}),
    ("06", {"KV_MIN_TOKENS": 131072, "MODEL_LENGTHS": 32768, "RUN_BENCH": False, "HBM_GBPS": 900}),
])
def test_edge_values_that_run_are_accepted(key, overrides, no_cuda):
    run_check_cell(key, **overrides)


def test_gpu_values_pass_with_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    run_check_cell("06", RUN_BENCH=True)
    run_check_cell("05", PRESET="gpu-small")
    run_check_cell("04", PRESET="gpu-small", RUN_128K_UNITS="full,all_sparse")


@pytest.mark.parametrize("key, overrides, message", [
    # the five measured to fail far from their cause
    ("01", {"LONG_N": 1000}, "LONG_N=1000: must be an int in [4096, 2147483647]"),
    ("02", {"HEAD_DIM": 96}, "HEAD_DIM=96: must be one of 16, 32, 64, 128"),
    ("03", {"LONG_TOKENS": 40}, "LONG_TOKENS=40: must be an int in [69, 2048] (past SINK + WINDOW = 68"),
    ("06", {"KV_MIN_TOKENS": 200000}, "KV_MIN_TOKENS=200000: must be an int in [1, 131072]"),
    ("06", {"RUN_BENCH": True}, "RUN_BENCH=True: needs a CUDA GPU to re-run the model benchmark"),
    # and more of each notebook
    ("01", {"TILE": 48}, "TILE=48: must be a power of 2"),
    ("01", {"STRIDED_BLOCK": 8, "TOY_WINDOW": 0},  # every bad one, in the order of the check cell
     "TOY_WINDOW=0: must be an int in [1, 2147483647]\nSTRIDED_BLOCK=8: must be a power of 2 in [16,"),
    ("01", {"NUM_LAYERS": 0}, "NUM_LAYERS=0"),
    ("01", {"SAVE_FIGURES": "no"}, "SAVE_FIGURES='no': must be one of True, False"),
    ("02", {"TILE": 256}, "TILE=256: must be one of 16, 32, 64, 128"),
    ("02", {"SEQ_LEN": 51}, "SEQ_LEN=51: must be an int >= 52"),
    ("02", {"SINK": -1}, "SINK=-1"),
    ("03", {"LONG_TOKENS": 4096}, "LONG_TOKENS=4096"),
    ("03", {"MEASURE_MAX_TOKENS": 32}, "MEASURE_MAX_TOKENS=32"),
    ("03", {"PAPER_WINDOW": 200000}, "PAPER_MAX_TOKENS=131072: must be an int >= 200065"),
    ("03", {"MODEL": ""}, "MODEL='': must be a non-empty str"),
    ("04", {"PRESET": "gpu-tiny"}, "PRESET='gpu-tiny': must be one of 'cpu-tiny', 'gpu-small'"),
    ("04", {"PRESET": "gpu-small"}, "PRESET='gpu-small': needs a CUDA GPU"),
    ("04", {"ATTENTION": "sparse"}, "ATTENTION='sparse'"),
    ("04", {"MAX_STEPS": -1}, "MAX_STEPS=-1"),
    ("04", {"RUN_128K_UNITS": "hybird"}, "RUN_128K_UNITS='hybird': must be '' or comma-separated names"),
    ("04", {"RUN_128K_UNITS": "hybrid"}, "RUN_128K_UNITS='hybrid': needs a CUDA GPU"),
    ("04", {"RUN_128K_BUDGET": 0}, "RUN_128K_BUDGET=0"),
    ("05", {"PRESET": "paper-7b-128k"}, "PRESET='paper-7b-128k': must be one of"),
    ("05", {"PRESET": "gpu-small"}, "PRESET='gpu-small': needs a CUDA GPU"),
    ("05", {"DEMO_LONG": 256}, "DEMO_LONG=256: must be an int in [257, 8192]"),
    ("05", {"DEMO_SHORT": 32}, "DEMO_SHORT=32"),
    ("05", {"SAMPLE_TOKENS": 100}, "SAMPLE_TOKENS=100"),
    ("05", {"DEMO_SAMPLES": 0}, "DEMO_SAMPLES=0"),
    ("06", {"RUN_BENCH": "yes"}, "RUN_BENCH='yes': must be one of 'auto', True, False"),
    ("06", {"MODEL_LENGTHS": "32K,64K"}, "MODEL_LENGTHS='32K,64K': must be comma-separated ints"),
    ("06", {"WINDOW": 200000}, "WINDOW=200000: must be an int in [1, 131007]"),
    ("06", {"BENCH_LAYERS": 1}, "BENCH_LAYERS=1"),
    ("06", {"HBM_GBPS": -1}, "HBM_GBPS=-1"),
])
def test_bad_values_are_refused_by_name(key, overrides, message, no_cuda):
    with pytest.raises(ValueError) as err:
        run_check_cell(key, **overrides)
    assert str(err.value).startswith(message)


# ---------------------------------------------------------------------- the same through papermill
@pytest.mark.parametrize("key, name, value, words", [
    ("01", "LONG_N", 1000, "LONG_N=1000: must be an int in [4096"),
    ("02", "HEAD_DIM", 96, "HEAD_DIM=96: must be one of 16, 32, 64, 128"),
    ("03", "LONG_TOKENS", 40, "LONG_TOKENS=40: must be an int in [69, 2048]"),
    ("06", "KV_MIN_TOKENS", 200000, "KV_MIN_TOKENS=200000: must be an int in [1, 131072]"),
    pytest.param("06", "RUN_BENCH", True, "RUN_BENCH=True: needs a CUDA GPU", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="with a CUDA GPU, RUN_BENCH=True runs the benchmark")),
], ids=["01-LONG_N", "02-HEAD_DIM", "03-LONG_TOKENS", "06-KV_MIN_TOKENS", "06-RUN_BENCH"])
def test_papermill_stops_in_the_check_cell(tmp_path, key, name, value, words):
    out = tmp_path / NOTEBOOKS[key].name
    with pytest.raises(PapermillExecutionError) as err:
        papermill.execute_notebook(str(NOTEBOOKS[key]), str(out), parameters={name: value},
                                   cwd=str(NOTEBOOKS_DIR), progress_bar=False)
    assert err.value.ename == "ValueError" and err.value.evalue.startswith(words)
    # code cells only: papermill inserts markdown cells that point at the error
    cells = [c for c in nbformat.read(out, as_version=4).cells if c.cell_type == "code"]
    failed = [i for i, c in enumerate(cells) if any(o.output_type == "error" for o in c.get("outputs", []))]
    injected = next(i for i, c in enumerate(cells) if "injected-parameters" in c.metadata.get("tags", []))
    assert failed == [injected + 1], "the error must come from the cell right after the injected parameters"
