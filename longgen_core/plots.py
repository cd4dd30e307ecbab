"""Pictures of patterns and results, each with a text twin that tests can compare.

Two entry points per picture (as in attention-gym): ``plot_*`` returns a matplotlib Figure for
notebooks; :func:`save_figure` writes it under ``figures/``. Text twins (:func:`ascii_block_map`,
:func:`layer_map_text`, :func:`format_table`) print deterministic strings for nbval.

Example::

    >>> from longgen_core.patterns import sink_window
    >>> print(ascii_block_map(sink_window(16, 32).block_layout(64, block_size=16)))
    +...
    #+..
    ##+.
    #+#+
    tiles 4x4 of 16, kept 10, tile density 1.0000
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from matplotlib.colors import ListedColormap

from .formatting import format_table, format_tokens  # noqa: F401 -- importable from plots too
from .paths import figures_dir
from .patterns import TILE_EMPTY, TILE_FULL, TILE_PARTIAL, BlockLayout, Pattern

FIGURES_DIR = figures_dir()
TILE_COLORS = ListedColormap(["#f4f4f4", "#f2a65a", "#3b6ea8"])  # empty, needs mask, fully kept
TILE_CHARS = {TILE_EMPTY: ".", TILE_PARTIAL: "+", TILE_FULL: "#"}


def save_figure(fig: plt.Figure, name: str, directory: str | Path | None = None) -> Path:
    """Save ``fig`` as ``<directory>/<name>.png`` (150 dpi) and return the path.

    ``directory`` defaults to ``$LONGGEN_FIGURE_DIR`` if set (the tests point it at ``runs/``, so
    that executing the notebooks under ``make test`` leaves the committed figures alone), else
    ``figures/``. Example: ``save_figure(fig, "04_loss")`` -> ``figures/04_loss.png``."""
    directory = Path(directory or os.environ.get("LONGGEN_FIGURE_DIR") or FIGURES_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.png"
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path


def plot_token_mask(pattern: Pattern, n: int, head: int = 0, num_heads: int = 1, ax=None) -> plt.Figure:
    """Token-level mask as an image; ``Q{i}``/``KV{i}`` ticks and a grid when ``n <= 32``."""
    mask = pattern.dense_mask(n, num_heads=max(num_heads, head + 1))
    mask = mask[head if pattern.per_head else 0].float()
    fig, ax = _figure(ax, size=(4.2, 4.2))
    ax.imshow(mask, cmap="Blues", vmin=0, vmax=1.3, interpolation="nearest")
    if n <= 32:
        ax.set_xticks(range(n), [f"KV{i}" for i in range(n)], rotation=90, fontsize=6)
        ax.set_yticks(range(n), [f"Q{i}" for i in range(n)], fontsize=6)
        ax.set_xticks([i - 0.5 for i in range(n + 1)], minor=True)
        ax.set_yticks([i - 0.5 for i in range(n + 1)], minor=True)
        ax.grid(which="minor", color="white", linewidth=0.5)
        ax.tick_params(which="minor", length=0)
    ax.set_xlabel("Key Tokens")
    ax.set_ylabel("Query Tokens")
    kept = int(mask.sum())
    ax.set_title(f"{pattern.name}\n{kept} of {n * (n + 1) // 2} causal pairs", fontsize=9)
    return fig


def plot_block_map(layout: BlockLayout, head: int = 0, title: str = "", ax=None) -> plt.Figure:
    """Tile map of a :class:`BlockLayout`: blue fully kept, orange needs the mask, grey skipped."""
    dense = layout.to_dense(head)
    fig, ax = _figure(ax, size=(4.2, 4.2))
    # big maps have more tiles than pixels: antialias so thin stripes do not alias away
    interpolation = "nearest" if layout.num_blocks <= 256 else "antialiased"
    ax.imshow(dense, cmap=TILE_COLORS, vmin=0, vmax=2, interpolation=interpolation)
    ticks = [t for t in _nice_ticks(layout.n) if t < layout.n]
    ax.set_xticks([t / layout.block_size - 0.5 for t in ticks], [_k(t) for t in ticks], fontsize=7)
    ax.set_yticks([t / layout.block_size - 0.5 for t in ticks], [_k(t) for t in ticks], fontsize=7)
    ax.set_xlabel("Key position")
    ax.set_ylabel("Query position")
    ax.set_title(f"{title}\n{layout.num_blocks}x{layout.num_blocks} tiles of {layout.block_size}, "
                 f"{layout.tile_density():.1%} of causal tiles kept", fontsize=9)
    return fig


def ascii_block_map(layout: BlockLayout, head: int = 0, width: int = 32,
                    first_tiles: int | None = None) -> str:
    """The block map as text: ``#`` fully kept, ``+`` needs the mask, ``.`` skipped.

    ``first_tiles`` crops to the top-left square of that many tiles (a zoom). Larger maps are
    shrunk to ``width`` characters a side; each character shows the strongest tile class in its
    group (so a group with any kept tile is never drawn as ``.``).
    """
    dense = layout.to_dense(head).long()
    if first_tiles is not None:
        dense = dense[:first_tiles, :first_tiles]
    nb = dense.shape[0]
    group = max(1, -(-nb // width))
    if group > 1:
        pad = group * (-(-nb // group)) - nb
        dense = torch.nn.functional.pad(dense, (0, pad, 0, pad))
        side = dense.shape[0] // group
        dense = dense.view(side, group, side, group).amax(dim=(1, 3))
    lines = ["".join(TILE_CHARS[int(c)] for c in row) for row in dense]
    scale = f" (1 char = {group}x{group} tiles)" if group > 1 else ""
    zoom = f", first {first_tiles} tiles shown" if first_tiles is not None else ""
    lines.append(f"tiles {layout.num_blocks}x{layout.num_blocks} of {layout.block_size}{zoom}{scale}, "
                 f"kept {int(layout.nnz[head])}, tile density {layout.tile_density():.4f}")
    return "\n".join(lines)


def plot_curves(x, series: dict, xlabel: str, ylabel: str, title: str = "", logy: bool = False,
                ax=None) -> plt.Figure:
    """Lines ``series[label] = y values`` over ``x`` (context lengths drawn as 4K, 8K, ...)."""
    fig, ax = _figure(ax, size=(5.5, 3.6))
    for label, y in series.items():
        ax.plot(x, y, marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(x), [_k(v) for v in x])
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_layer_map(full_layers, num_layers: int, ax=None) -> plt.Figure:
    """One cell per decoder layer: full attention (dark) vs sparse (light)."""
    fig, ax = _figure(ax, size=(8, 1.3))
    row = torch.tensor([[1.0 if i in set(full_layers) else 0.0 for i in range(num_layers)]])
    ax.imshow(row, cmap=ListedColormap(["#9ecae1", "#08306b"]), vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(num_layers), [str(i) for i in range(num_layers)], fontsize=7)
    ax.set_yticks([])
    ax.set_xlabel("decoder layer (dark: full attention, light: sparse)")
    ax.set_title(f"{len(set(full_layers))} full of {num_layers} layers", fontsize=9)
    return fig


def layer_map_text(full_layers, num_layers: int) -> str:
    """Text twin of :func:`plot_layer_map`: ``F`` full, ``s`` sparse, bottom layer first."""
    full = set(full_layers)
    return "".join("F" if i in full else "s" for i in range(num_layers))


def _figure(ax, size):
    if ax is None:
        fig, ax = plt.subplots(figsize=size)
        return fig, ax
    return ax.figure, ax


_k = format_tokens


def _nice_ticks(n: int) -> list[int]:
    step = 1 << max(0, (n // 4).bit_length() - 1)
    return list(range(0, n + 1, step))
