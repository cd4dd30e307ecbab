"""Training and evaluation data (stage 4): corpora, packed sequences, retrieval samples.

- :mod:`.corpora`: documents of a corpus (KJV, pydoc, Shakespeare, local files, hub ids), packing
  into sequences.
- :mod:`.pipeline`: the training corpus on ``datasets``: streamed documents, a tokenising ``map``,
  packed blocks, epochs, a state that resumes at the next token.
- :mod:`.stream`: the training stream that mixes packed sequences with synthetic samples.
- :mod:`.tasks`: pass key, NIAH, RULER- and BABILong-style samples from explicit seeds.
- :mod:`.suite`: the evaluation suite (six RULER/BABILong-style tasks) with disjoint train / held-out
  templates, vocabularies and haystack text; its scoring.
"""

from .corpora import CORPORA, documents, pack, packed_sequences
from .pipeline import PackedCorpus
from .stream import Prefetcher, TrainingStream
from .tasks import TASKS, Sample

__all__ = ["CORPORA", "PackedCorpus", "Prefetcher", "TrainingStream", "documents", "pack", "packed_sequences", "TASKS",
           "Sample"]
