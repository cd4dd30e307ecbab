"""The miniature experiment at CPU scale: the pipeline end to end, and what is robust there."""

import copy
import json

import pytest

from longgen_core.evaluate.retrieval import outside_window_score
from longgen_core.experiments import miniature as experiments


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("miniature")
    runs = tmp_path_factory.mktemp("runs")
    return experiments.run_miniature("cpu-tiny", out=out, runs_dir=runs, progress=False, steps=4), out


def test_every_variant_is_trained_or_converted_and_scored(result):
    res, _ = result
    plan = experiments.PLANS["cpu-tiny"]
    assert list(res["variants"]) == list(experiments.VARIANTS)
    maps = {name: v["layer_map"] for name, v in res["variants"].items()}
    assert maps == {"original": "FFFFFF", "full": "FFFFFF", "hybrid": "ssFFss", "streaming": "ssssss",
                    "posthoc_hybrid": "ssFFss"}
    # RoPE: the original keeps its base, every extended variant has the raised one
    assert res["variants"]["original"]["rope_theta"] == 1e5
    assert {res["variants"][n]["rope_theta"] for n in ("full", "hybrid", "streaming")} == {1.2e6}
    for v in res["variants"].values():
        grid = v["grid"]
        assert len(grid["details"]) == len(plan.lengths) * len(plan.depths) * plan.samples
        assert set(v["perplexity"]) == {str(n) for n in plan.lengths}
    assert res["training"]["full"]["steps"] == res["training"]["hybrid"]["steps"] == 4


def test_both_arms_saw_the_same_data(result):
    res, _ = result
    kinds = {arm: [(r["lm_loss"] is None, r["task_loss"] is None) for r in rec["log"]]
             for arm, rec in res["training"].items()}
    assert kinds["full"] == kinds["hybrid"]
    assert any(task is False for _, task in kinds["full"])  # some pass-key samples were in the mix


def test_the_evicting_baseline_cannot_see_a_needle_outside_its_window(result):
    res, _ = result
    window = res["preset"]["pattern"]["window_tokens"]
    grid = res["variants"]["streaming"]["grid"]
    sink = res["preset"]["pattern"]["sink_tokens"]
    outside = [d for d in grid["details"] if d[2] >= sink and d[3] <= d[0] - window]
    assert outside, "the plan must place some needles outside the window"
    assert all(score == 0.0 for *_, score in outside)
    assert res["summary"]["outside_window"]["streaming"] == 0.0
    assert res["summary"]["met"]["streaming_outside"] is True


def test_stacked_windows_bound_what_the_streaming_model_can_reach():
    """Eviction's blindness on logits: with sink 4 + window 32 in all 6 layers, a token reaches at
    most 6 * 31 positions further, so changing tokens 10..39 leaves the logits at position 255
    bit-identical; the full model's change."""
    import torch

    from longgen_core.models.convert import to_posthoc_streaming
    from longgen_core.models.base import tiny_llama
    from longgen_core.patterns import sink_window

    full = tiny_llama(num_layers=6, seed=1).eval()
    streaming = to_posthoc_streaming(copy.deepcopy(full), full_layers=[], pattern=sink_window(4, 32))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, full.config.vocab_size, (1, 256), generator=gen)
    changed = ids.clone()
    changed[0, 10:40] = (ids[0, 10:40] + 1) % full.config.vocab_size
    with torch.no_grad():
        assert torch.equal(streaming(ids).logits[0, -1], streaming(changed).logits[0, -1])
        assert not torch.allclose(full(ids).logits[0, -1], full(changed).logits[0, -1])


def test_outputs_are_written_and_the_text_twin_lists_every_variant(result):
    res, out = result
    assert json.loads((out / "miniature.json").read_text())["summary"] == res["summary"]
    assert (out / "miniature_grids.png").stat().st_size > 10_000
    assert (out / "miniature_training.png").stat().st_size > 10_000
    text = experiments.summary_text(res)
    for name in experiments.VARIANTS:
        assert name in text


def test_outside_window_score_uses_the_needle_end():
    grid = {"details": [[100, 0.0, 10, 20, 1.0], [100, 0.5, 50, 70, 0.0], [100, 1.0, 80, 95, 1.0]]}
    assert outside_window_score(grid, window_tokens=30) == 0.5  # needles ending at 20 and 70
    assert outside_window_score(grid, window_tokens=30, sink_tokens=16) == 0.0  # 10..20: a sink
    assert outside_window_score(grid, window_tokens=95) is None


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="no miniature plan"):
        experiments.run_miniature("paper-7b-128k", progress=False)
    with pytest.raises(ValueError, match="beyond the extended range"):
        experiments.run_miniature("cpu-tiny", progress=False, target_len=8192, original_len=8192,
                                  plan=experiments.MiniaturePlan(preset="cpu-tiny", lengths=(16384,)))
