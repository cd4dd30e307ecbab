"""The checkers of notebook 05 (evaluation): how the suite scores an answer, and which needle depths
an evicting (sink + window) cache still holds when the question is read.

The tasks and the tokenizer are imported inside the checkers (see :mod:`longgen_core.exercises.nb03`).
"""

from __future__ import annotations

from functools import lru_cache

import torch

from ..patterns import sink_window

DEPTHS = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)


@lru_cache(maxsize=1)
def _tokenizer():
    from ..train.loop import load_tokenizer
    from ..train.presets import get_preset

    return load_tokenizer(get_preset("cpu-tiny"))  # SmolLM2's


def scored_continuations(answer) -> tuple[bool, str]:
    """05.1: ``(qa1_text, multivalue_text)``: a continuation of the ``babilong_qa1`` sample that names
    the right place and scores 0, and one of the ``niah_multivalue`` sample that gets partial credit
    (both samples: 256 tokens, depth 0.5, seed 0, the repeated filler as haystack)."""
    import re

    from ..data import suite

    try:
        qa1_text, multivalue_text = (str(x) for x in answer)
    except (TypeError, ValueError):
        return False, "answer with a pair of strings: (babilong_qa1 continuation, niah_multivalue continuation)"
    qa1 = suite.babilong_qa1(_tokenizer(), 256, 0.5, seed=0, haystack="repeat")
    multivalue = suite.niah_multivalue(_tokenizer(), 256, 0.5, seed=0, haystack="repeat")
    qa1_score, mv_score = suite.score(qa1, qa1_text), suite.score(multivalue, multivalue_text)
    if qa1.answer not in re.findall(r"[a-z]+", qa1_text.lower()):
        return False, "the babilong_qa1 continuation must name the right place (qa1.answer) as a word"
    if qa1_score != 0:
        return False, f"the babilong_qa1 continuation scores {qa1_score:g}: make it name the right place and still fail"
    if not 0 < mv_score < 1:
        return False, f"the niah_multivalue continuation scores {mv_score:g}: give it partial credit"
    found = round(mv_score * len(multivalue.answers))
    return True, (f"BABILong fails an answer that also names another place (no hedging); RULER's multi-value counts "
                  f"the share found: {found} of {len(multivalue.answers)} = {mv_score:.2f}")


def visible_depths(depths) -> tuple[bool, str]:
    """05.2: the needle depths of :data:`DEPTHS` whose whole needle a sink 64 + window 4096 cache still
    holds when the last token of a 32,768-token pass-key prompt (seed 0) is read."""
    from ..data import tasks

    try:
        got = sorted({round(float(d), 6) for d in depths})
    except (TypeError, ValueError):
        return False, f"answer with a list of depths out of {list(DEPTHS)}"
    n, pattern = 32768, sink_window(64, 4096)
    kept = {}
    for d in DEPTHS:
        s = tasks.passkey(_tokenizer(), n, d, seed=0)
        kept[d] = (s.needle_start, s.needle_end, bool(pattern.slot_mask(n - 1, torch.arange(s.needle_start,
                                                                                          s.needle_end)).all()))
    want = sorted(d for d, (_, _, k) in kept.items() if k)
    if got == want:
        start, end, _ = kept[0.0]
        return True, (f"depths {want}: the depth-0 needle (tokens {start}-{end - 1}) sits inside the 64 sink tokens, "
                      "0.9 and 1.0 in the last 4,096; the others are gone from the cache of every evicting layer")
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    return False, (f"{'missing ' + str(missing) if missing else ''}{'; ' if missing and extra else ''}"
                   f"{'evicted: ' + str(extra) if extra else ''} -- look where each needle sits "
                   "(needle_start, needle_end) against the sink and the window")
