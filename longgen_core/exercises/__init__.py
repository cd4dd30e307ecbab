"""The notebooks' exercises: one checker per exercise, so a reader learns at once whether an
answer is right, and a test can run every solution (``tests/test_exercises.py``).

Each notebook ends with exercises. An exercise is a markdown cell headed ``### Exercise <id>``, a
code cell that defines the answer (a first guess to change) and calls :func:`check`, and a
markdown cell holding the solution in a collapsed ``<details>`` block. :data:`EXERCISES` maps
each id to the answer's name in the notebook and its checker, which returns ``(ok, message)``.
The checkers live in modules of this package, one per notebook (``nb01`` ... ``nb06``).

Example::

    >>> from longgen_core import patterns as P
    >>> check("01.1", P.sink_window(64, 4096))
    not yet: the pattern keeps 4,160 slots per sparse layer at 128K; the budget is 2,048
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import nb01, nb02, nb03, nb04, nb05, nb06

__all__ = ["EXERCISES", "Exercise", "check"]


@dataclass(frozen=True)
class Exercise:
    """``answer``: the name the notebook's code cell binds; ``checker(answer) -> (ok, message)``."""

    answer: str
    checker: Callable


EXERCISES = {
    "01.1": Exercise("my_pattern", nb01.budget_pattern),
    "01.2": Exercise("dilated_mask", nb01.dilated_mask),
    "01.3": Exercise("answer", nb01.full_layers_at_top),
    "02.1": Exercise("online_fixed", nb02.online_rescale),
    "02.2": Exercise("dilated_kernel", nb02.dilated_kernel),
    "02.3": Exercise("blocked_kernel", nb02.sub_blocks),
    "03.1": Exercise("full_layers", nb03.kv_budget_map),
    "03.2": Exercise("held", nb03.cache_positions),
    "03.3": Exercise("layer_bytes", nb03.per_layer_bytes),
    "04.1": Exercise("new_base", nb04.rope_base_16x),
    "04.2": Exercise("logits_gib", nb04.logits_memory),
    "04.3": Exercise("item", nb04.resumed_item),
    "05.1": Exercise("continuations", nb05.scored_continuations),
    "05.2": Exercise("in_cache", nb05.visible_depths),
    "06.1": Exercise("speedup", nb06.prefill_speedup),
    "06.2": Exercise("kv_gib", nb06.gqa_kv_cache),
    "06.3": Exercise("n_tokens", nb06.train_target_length),
}


def check(exercise: str, answer) -> None:
    """Check ``answer`` to ``exercise`` (an id of :data:`EXERCISES`) and print whether it is
    right and why. Never raises on a wrong answer: the notebook runs top to bottom either way
    (``EXERCISES[exercise].checker(answer)`` gives ``(ok, message)`` to code)."""
    if exercise not in EXERCISES:
        raise ValueError(f"no exercise {exercise!r}; there are {', '.join(EXERCISES)}")
    ok, message = EXERCISES[exercise].checker(answer)
    print(("right: " if ok else "not yet: ") + message)
