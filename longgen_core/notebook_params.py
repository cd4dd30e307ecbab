"""What a notebook's parameters may be, checked in the cell right after its ``parameters`` cell.

papermill inserts the overrides of a run (``-p NAME VALUE``) as an ``injected-parameters`` cell
right after ``parameters``, so a check cell placed next sees the values the run was given. A bad
value then stops the run there, with one ValueError naming each bad parameter, its value and what
is allowed, instead of deep in the cell that first uses it ("Data cannot be log-scaled", an
IndexError, an error of Triton's interpreter).

A rule is a function of the value that returns ``None`` when the value is allowed, else what is
wrong with it. The factories: :func:`integer`, :func:`number`, :func:`power_of_two`,
:func:`one_of`, :func:`flag`, :func:`text`, :func:`int_list`, :func:`names` and
:func:`needs_cuda`; ``why=`` says where a limit comes from. Rules that relate parameters
(``KV_MIN_TOKENS <= KV_MAX_TOKENS``) go in a second call, once the first has checked each value
alone. Standard library only (torch is imported inside :func:`needs_cuda`, for a value that wants
a GPU).

Example::

    >>> LONG_N, TILE, SAVE_FIGURES = 1000, 128, True
    >>> check_parameters(LONG_N=(LONG_N, integer(4096, why="the cost curves start at 4K")),
    ...                  TILE=(TILE, power_of_two(16)), SAVE_FIGURES=(SAVE_FIGURES, flag()))
    Traceback (most recent call last):
    ...
    ValueError: LONG_N=1000: must be an int >= 4096 (the cost curves start at 4K)
"""

from __future__ import annotations

from argparse import ArgumentTypeError
from typing import Callable

from .cli_values import int_list as _comma_ints

__all__ = ["check_parameters", "integer", "number", "power_of_two", "one_of", "flag", "text", "int_list",
           "names", "needs_cuda"]

Rule = Callable[[object], "str | None"]  # the value -> None when allowed, else what is wrong with it


def check_parameters(**checks: tuple) -> None:
    """Raise one ValueError, a line per bad parameter, unless every ``NAME=(value, rule, ...)``
    passes its rules (tried in order; the first that refuses the value is the one reported).

    Example: ``check_parameters(HEAD_DIM=(96, one_of(16, 32, 64, 128)))`` raises
    ``HEAD_DIM=96: must be one of 16, 32, 64, 128``.
    """
    lines = []
    for name, (value, *rules) in checks.items():
        if not rules:
            raise TypeError(f"check_parameters({name}=...) takes (value, rule, ...), got no rule")
        problem = next((p for p in (rule(value) for rule in rules) if p is not None), None)
        if problem is not None:
            lines.append(f"{name}={value!r}: {problem}")
    if lines:
        raise ValueError("\n".join(lines))


# ---------------------------------------------------------------------- the rules
def integer(minimum: int | None = None, maximum: int | None = None, why: str = "") -> Rule:
    """An int (not a bool) in ``[minimum, maximum]``; ``None`` leaves that side open.

    Example: ``integer(1)(0)`` -> ``'must be an int >= 1'``.
    """
    return _rule(_bounded("an int", minimum, maximum), lambda v: _is_int(v) and _within(v, minimum, maximum),
                 why)


def number(minimum: float | None = None, maximum: float | None = None, why: str = "") -> Rule:
    """An int or a float (not a bool, not NaN) in ``[minimum, maximum]``.

    Example: ``number(0)(-1.5)`` -> ``'must be a number >= 0'``.
    """
    def accepts(value) -> bool:
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return is_number and _within(value, minimum, maximum)

    return _rule(_bounded("a number", minimum, maximum), accepts, why)


def power_of_two(minimum: int = 1, maximum: int | None = None, why: str = "") -> Rule:
    """An int power of 2 in ``[minimum, maximum]``: a tile, a block of tokens.

    Example: ``power_of_two(16)(48)`` -> ``'must be a power of 2 >= 16 (16, 32, 64, ...)'``.
    """
    def accepts(value) -> bool:
        return _is_int(value) and value > 0 and not value & (value - 1) and _within(value, minimum, maximum)

    examples = ", ".join(str(minimum << i) for i in range(3))
    return _rule(f"{_bounded('a power of 2', minimum, maximum)} ({examples}, ...)", accepts, why)


def one_of(*choices, why: str = "") -> Rule:
    """One of ``choices``, of the same type (``1`` is not ``True``, ``True`` is not ``1``).

    Example: ``one_of("auto", True, False)(1)`` -> ``"must be one of 'auto', True, False"``.
    """
    return _rule("one of " + ", ".join(map(repr, choices)), lambda v: _member(v, choices), why)


def flag(why: str = "") -> Rule:
    """``True`` or ``False``."""
    return one_of(True, False, why=why)


def text(nonempty: bool = False, why: str = "") -> Rule:
    """A str (a path, a model id); not ``""`` when ``nonempty``."""
    return _rule("a non-empty str" if nonempty else "a str",
                 lambda v: isinstance(v, str) and (v != "" or not nonempty), why)


def int_list(minimum: int | None = None, maximum: int | None = None, why: str = "") -> Rule:
    """Comma-separated ints in ``[minimum, maximum]`` (``"32768,65536"``), or one int (papermill
    reads ``-p MODEL_LENGTHS 32768`` as the int): what ``[int(x) for x in str(v).split(",")]`` reads.

    Example: ``int_list(1)("32768,64K")`` -> ``"must be comma-separated ints >= 1, e.g. '32768,65536'"``.
    """
    def accepts(value) -> bool:
        values = _ints(value)
        return values is not None and all(_within(x, minimum, maximum) for x in values)

    return _rule(_bounded("comma-separated ints", minimum, maximum) + ", e.g. '32768,65536'", accepts, why)


def names(choices, why: str = "") -> Rule:
    """``""`` (none) or comma-separated names from ``choices``: ``"hybrid"``, ``"full,all_sparse"``.

    Example: ``names(["full", "hybrid"])("hybird")`` ->
    ``"must be '' or comma-separated names from 'full', 'hybrid'"``.
    """
    choices = list(choices)
    return _rule("'' or comma-separated names from " + ", ".join(map(repr, choices)),
                 lambda v: v == "" or (isinstance(v, str) and all(x in choices for x in v.split(","))), why)


def needs_cuda(work: str, instead: str, unless=(False, "")) -> Rule:
    """Any value but those of ``unless`` needs a visible CUDA GPU; without one, the message says
    what the value would ``work`` at and how to run the notebook ``instead``.

    Example: ``needs_cuda("re-run the benchmark", "set RUN_BENCH = False", unless=(False,))(True)``
    on a CPU -> ``'needs a CUDA GPU to re-run the benchmark, and none is visible; set RUN_BENCH = False'``.
    """
    def problem(value):
        if _member(value, unless):
            return None
        import torch

        if torch.cuda.is_available():
            return None
        return f"needs a CUDA GPU to {work}, and none is visible; {instead}"

    return problem


# ---------------------------------------------------------------------- pieces
def _rule(allowed: str, accepts: Callable[[object], bool], why: str) -> Rule:
    """The rule that refuses what ``accepts`` does not, saying "must be ``allowed`` (``why``)"."""
    def problem(value):
        if accepts(value):
            return None
        return f"must be {allowed}" + (f" ({why})" if why else "")

    return problem


def _bounded(kind: str, minimum, maximum) -> str:
    """``an int in [1, 8]``, ``an int >= 1``, ``an int <= 8`` or ``an int``."""
    if minimum is not None and maximum is not None:
        return f"{kind} in [{minimum}, {maximum}]"
    if minimum is not None:
        return f"{kind} >= {minimum}"
    return f"{kind} <= {maximum}" if maximum is not None else kind


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _within(value, minimum, maximum) -> bool:
    return (minimum is None or value >= minimum) and (maximum is None or value <= maximum)


def _member(value, choices) -> bool:
    return any(type(value) is type(c) and value == c for c in choices)


def _ints(value) -> list[int] | None:
    """The ints of a comma-separated str (or of one int); ``None`` when it holds anything else."""
    if not (_is_int(value) or isinstance(value, str)):
        return None
    try:  # the command lines' rule for such lists (``bench --n``), so both read the same text alike
        return list(_comma_ints(str(value)))
    except ArgumentTypeError:
        return None
