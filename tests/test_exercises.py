"""Every notebook exercise: its first guess (the code cell as committed) fails its check, and the
solution folded under it passes, run as a reader would run them, in one namespace after the
notebook's own set-up cells."""

from __future__ import annotations

import json
import linecache
import re

import pytest

from longgen_core.exercises import EXERCISES, check
from longgen_core.runner import numbered_notebooks

HEADING = re.compile(r"^### Exercise (\d\d\.\d+)")
SOLUTION = re.compile(r"<details><summary>Solution</summary>\s*```python\n(.*?)```", re.S)


def _exercises():
    """``(notebook, id, set-up code, guess code, solution code)`` for every exercise."""
    found = []
    for path in numbered_notebooks():
        cells = json.loads(path.read_text())["cells"]
        setup = "\n".join("".join(c["source"]) for c in cells[1:4] if c["cell_type"] == "code")
        for i, cell in enumerate(cells):
            match = HEADING.match("".join(cell["source"])) if cell["cell_type"] == "markdown" else None
            if match:
                guess, solution = "".join(cells[i + 1]["source"]), "".join(cells[i + 2]["source"])
                found.append((path.name, match.group(1), setup, guess, SOLUTION.search(solution).group(1)))
    return found


FOUND = _exercises()


def run_cell(code: str, namespace: dict, name: str) -> None:
    """Run ``code`` as a notebook cell named ``name``: its source is registered, as Jupyter does, so
    that a ``@triton.jit`` kernel defined in it can read its own source."""
    linecache.cache[name] = (len(code), None, code.splitlines(True), name)
    exec(compile(code, name, "exec"), namespace)


def test_every_checker_has_its_exercise_in_a_notebook():
    assert sorted(e[1] for e in FOUND) == sorted(EXERCISES)


@pytest.mark.parametrize("notebook, exercise, setup, guess, solution", FOUND, ids=[e[1] for e in FOUND])
def test_the_guess_fails_and_the_solution_passes(notebook, exercise, setup, guess, solution):
    assert exercise.startswith(notebook[:2]) and f'check("{exercise}"' in guess and f'check("{exercise}"' in solution
    answer = EXERCISES[exercise].answer
    for code, right in ((guess, False), (solution, True)):
        namespace: dict = {}
        exec(setup, namespace)  # the parameters and imports the cells rely on
        exec("from longgen_core.exercises import check", namespace)  # the first exercise cell's import
        run_cell(code, namespace, f"<exercise {exercise} {'solution' if right else 'guess'}>")
        ok, message = EXERCISES[exercise].checker(namespace[answer])
        assert ok is right, message


def test_a_wrong_id_is_refused_and_a_wrong_answer_only_printed(capsys):
    with pytest.raises(ValueError, match="no exercise '99.9'"):
        check("99.9", None)
    check("01.2", "not a function")
    assert capsys.readouterr().out.startswith("not yet: calling it on index tensors failed")


def _solution(exercise: str) -> tuple[str, str]:
    """``(set-up code, solution code)`` of one exercise."""
    setup, solution = next((e[2], e[4]) for e in FOUND if e[1] == exercise)
    return setup, solution


def _answer_from(setup: str, code: str, exercise: str):
    namespace: dict = {}
    exec(setup, namespace)
    exec("from longgen_core.exercises import check", namespace)
    run_cell(code, namespace, f"<exercise {exercise} variant>")
    return namespace[EXERCISES[exercise].answer]


def test_an_output_holding_nan_is_infinitely_wrong():
    import math

    import torch

    from longgen_core.kernels.tutorial import rel_err

    assert rel_err(torch.tensor([1.0, float("nan")]), torch.ones(2)) == math.inf


def test_a_kernel_that_stores_nothing_fails_the_kernel_exercises():
    # The launchers hand out NaN-filled buffers: an output never written must not pass on luck.
    setup, solution = _solution("02.1")
    lazy = re.sub(r"\n\s*tl\.store\([^\n]*", "\n    pass", solution)
    assert "tl.store" not in lazy
    ok, _ = EXERCISES["02.1"].checker(_answer_from(setup, lazy, "02.1"))
    assert not ok


def test_a_kernel_that_loads_whole_tiles_fails_the_sub_block_exercise():
    setup, solution = _solution("02.3")
    assert "BLOCK_N" in solution
    # right values at every BLOCK_N (a whole tile per step), but BLOCK_N unused: the check must see it
    whole_tiles = solution.replace("STEPS = TILE // BLOCK_N", "STEPS = 1").replace(
        "(it % STEPS) * BLOCK_N + tl.arange(0, BLOCK_N)", "tl.arange(0, TILE)")
    assert whole_tiles.count("BLOCK_N") == solution.count("BLOCK_N") - 3
    ok, message = EXERCISES["02.3"].checker(_answer_from(setup, whole_tiles, "02.3"))
    assert not ok and "never uses BLOCK_N" in message, message
