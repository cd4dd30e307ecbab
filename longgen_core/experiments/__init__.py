"""The paper's experiments, built from train + evaluate: ``python -m longgen_core.experiments``.

- :mod:`.miniature`: full vs hybrid extension of SmolLM2 8K -> 32K, then every variant scored.
"""
