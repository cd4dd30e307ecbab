"""Training and evaluation data (stage 4): corpora, packed sequences, retrieval samples.

- :mod:`.corpora`: documents of a corpus (KJV, pydoc, local files), packing into sequences,
  the training stream that mixes them with synthetic samples.
- :mod:`.tasks`: pass key, NIAH, RULER- and BABILong-style samples from explicit seeds.
- :mod:`.suite`: the evaluation suite (six RULER/BABILong-style tasks) with disjoint train / held-out
  templates, vocabularies and haystack text; its scoring.
"""

from .corpora import CORPORA, Prefetcher, TrainingStream, documents, pack, packed_sequences
from .tasks import TASKS, Sample

__all__ = ["CORPORA", "Prefetcher", "TrainingStream", "documents", "pack", "packed_sequences", "TASKS", "Sample"]
