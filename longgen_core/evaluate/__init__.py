"""Scoring a model (stage 6): retrieval grids (length x depth) with the evicting cache, perplexity."""

from .retrieval import generate_batch, grid_text, perplexity, perplexity_by_length, plot_grid, retrieval_grid

__all__ = ["generate_batch", "grid_text", "perplexity", "perplexity_by_length", "plot_grid", "retrieval_grid"]
