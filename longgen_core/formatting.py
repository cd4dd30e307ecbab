"""Text helpers shared by the tables and figures (no plotting library needed: GPU nodes print
tables without matplotlib).

Example::

    >>> format_tokens(131072), format_tokens(300)
    ('128K', '300')
    >>> print(format_table([{"n": "32K", "ms": 1.25}]))
      n    ms
    32K  1.25
"""

from __future__ import annotations

__all__ = ["format_tokens", "format_table"]


def format_tokens(tokens: int) -> str:
    """``32768`` -> ``'32K'``; lengths that are not whole K stay as they are (``'256'``)."""
    return f"{tokens // 1024}K" if tokens >= 1024 and tokens % 1024 == 0 else str(tokens)


def format_table(rows: list[dict], floatfmt: str = "{:.3g}") -> str:
    """Plain-text table of dicts sharing keys (the text twin of a plot)."""
    if not rows:
        return "(empty)"
    keys = list(rows[0])
    cells = [[floatfmt.format(r[k]) if isinstance(r[k], float) else str(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*keys)] + [fmt.format(*c) for c in cells])
