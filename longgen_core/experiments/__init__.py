"""The paper's experiments, built from train + evaluate: ``python -m longgen_core.experiments``.

- :mod:`.miniature`: full vs hybrid extension of SmolLM2 8K -> 32K, then the pass key on every variant.
- :mod:`.extension`: full / hybrid / all-sparse extension (to 128K on a GPU) in resumable units, then
  the RULER/BABILong-style suite on every variant.
- :mod:`.cli`: ``python -m longgen_core.experiments miniature|extension``.
"""
