"""The extension experiment end to end at cpu-tiny: every unit, every arm, every task; parts merged;
a job killed in the middle of an arm's training resumes to the same results; the evaluation resumes
cell by cell within a time budget."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from longgen_core.data.suite import SUITE_TASKS
from longgen_core.experiments import extension as ext
from longgen_core.train.presets import get_preset

ROOT = Path(__file__).resolve().parent.parent
PLAN = ext.PLANS["cpu-tiny"]


@pytest.fixture(scope="module")
def complete(tmp_path_factory):
    """Every unit of the cpu-tiny plan, uninterrupted: (result, work folder)."""
    work = tmp_path_factory.mktemp("extension")
    result = ext.run(PLAN, work=work, parts=work / "parts", out=work / "out", progress=False)
    return result, work


def test_every_variant_is_scored_on_every_task_and_the_summary_reads_them(complete):
    result, work = complete
    assert list(result["variants"]) == list(ext.VARIANTS)
    summary = result["summary"]
    assert summary["longest"] == max(PLAN.lengths)
    for variant in ext.VARIANTS:
        grids = result["variants"][variant]["tasks"]
        assert sorted(grids) == sorted(SUITE_TASKS)
        for task, grid in grids.items():
            assert len(grid["details"]) == len(PLAN.lengths) * len(PLAN.depths) * PLAN.samples
            assert 0.0 <= summary["at_longest"][variant][task] <= 1.0
        assert set(result["variants"][variant]["perplexity"]) == {str(n) for n in PLAN.lengths}
    assert result["variants"]["hybrid"]["layer_map"] == "ssFFss"
    assert result["variants"]["all_sparse"]["layer_map"] == "ssssss"
    assert result["variants"]["streaming"]["layer_map"] == "ssssss"
    assert result["variants"]["full"]["layer_map"] == "FFFFFF"
    assert set(summary["tokens_per_s"]) == set(ext.TRAINED)
    assert set(result["training"]) == set(ext.TRAINED)
    # every arm trained on the same items: a task sample (or corpus text) at the same steps
    kinds = {arm: tuple(r["task_loss"] is None for r in rec["log"]) for arm, rec in result["training"].items()}
    assert len(set(kinds.values())) == 1 and len(next(iter(kinds.values()))) == PLAN.train["steps"]
    stored = json.loads((work / "out" / f"{PLAN.result_name}.json").read_text())
    assert stored["summary"] == json.loads(json.dumps(summary))
    assert (work / "out" / f"{PLAN.result_name}_grids.png").stat().st_size > 10_000
    assert "exact match at" in ext.summary_text(result)


def test_evicting_baseline_scores_zero_on_every_evicted_needle(complete):
    """StreamingLLM on every layer cannot answer from a needle outside sink + window: the
    generated answer never contains the needle's value there (the model never saw it)."""
    result, _ = complete
    evicted = result["summary"]["outside_window"]["streaming"]
    assert any(v is not None for v in evicted.values())
    assert all(v in (None, 0.0) for v in evicted.values()), evicted


def test_merge_of_the_parts_gives_the_same_result(complete, tmp_path):
    result, work = complete
    merged = ext.merge(PLAN, work / "parts", out=None)
    assert merged["summary"] == result["summary"]
    assert sorted(p.stem for p in (work / "parts").glob("*.json")) == sorted(ext.UNITS)
    assert merged["missing_units"] == []


def test_a_partial_merge_names_the_missing_units(complete, tmp_path):
    result, work = complete
    (tmp_path / "parts").mkdir()
    for unit in ("hybrid", "original"):
        shutil.copy(work / "parts" / f"{unit}.json", tmp_path / "parts")
    merged = ext.merge(PLAN, tmp_path / "parts", out=None)
    assert merged["missing_units"] == ["all_sparse", "full"]
    assert sorted(merged["variants"]) == ["hybrid", "original"]
    assert "hybrid_within_gap_of_full" not in merged["summary"]["met"]
    assert merged["summary"]["at_longest"]["hybrid"] == result["summary"]["at_longest"]["hybrid"]
    assert "not run yet (their variants and targets are absent): all_sparse, full" in ext.summary_text(merged)


class CellBudget:
    """A deadline that allows ``cells`` more evaluation cells, then none (no clock involved)."""

    def __init__(self, cells):
        self.cells, self.end = cells, 0.0

    def left(self):
        self.cells -= 1
        return float("inf") if self.cells >= 0 else -1.0


def test_evaluation_stops_between_cells_and_continues(complete, tmp_path):
    result, _ = complete
    parts = tmp_path / "parts"
    assert ext.run_unit(PLAN, "original", tmp_path, parts, deadline=CellBudget(3), progress=False) is None
    assert len(list((tmp_path / "original" / "cells").glob("*.json"))) == 3
    part = ext.run_unit(PLAN, "original", tmp_path, parts, progress=False)
    assert part["variants"]["original"]["tasks"] == result["variants"]["original"]["tasks"]


def test_a_cell_is_expected_to_take_what_its_length_took_or_more():
    assert ext.expected_cell_seconds({}, 8192) == 0.0
    assert ext.expected_cell_seconds({8192: 3.0, 32768: 20.0}, 32768) == 20.0
    assert ext.expected_cell_seconds({8192: 3.0, 32768: 20.0}, 131072) == 80.0  # from the longest shorter
    assert ext.expected_cell_seconds({32768: 20.0}, 8192) == 0.0  # longer cells say nothing about shorter


def test_a_job_does_not_start_a_cell_that_earlier_jobs_timing_says_will_not_fit(tmp_path):
    task, n = ext.cells(PLAN, "original")[0]
    cells = tmp_path / "original" / "cells"
    cells.mkdir(parents=True)
    (cells / f"original.{task}.{n}.json").write_text(json.dumps({"seconds": 1000.0, "value": {}}))
    assert ext.run_unit(PLAN, "original", tmp_path, tmp_path / "parts", deadline=ext.Deadline(600),
                        progress=False) is None
    assert len(list(cells.glob("*.json"))) == 1  # nothing started: 1.5 x 1000 s > 600 s left


def test_a_job_killed_during_training_resumes_to_the_same_results(complete, tmp_path):
    result, _ = complete
    cmd = [sys.executable, "-m", "longgen_core.experiments", "extension", "--plan", "cpu-tiny", "--units", "hybrid",
           "--work", str(tmp_path), "--parts", str(tmp_path / "parts"), "--out", str(tmp_path / "out"),
           "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    job = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    checkpoints = tmp_path / "hybrid" / "run" / "checkpoints"
    deadline = time.monotonic() + 300
    while not any(checkpoints.glob("step-*")) and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.poll() is None, "the job ended before its first checkpoint: nothing was killed"
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert not (tmp_path / "hybrid" / "training.json").exists()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    part = json.loads((tmp_path / "parts" / "hybrid.json").read_text())
    expected = result["variants"]["hybrid"]
    for task, grid in part["variants"]["hybrid"]["tasks"].items():
        assert grid["details"] == expected["tasks"][task]["details"], task
    losses = [r["loss"] for r in part["training"]["log"]]
    assert losses == [r["loss"] for r in result["training"]["hybrid"]["log"]]


def test_bad_units_and_missing_arms_are_named(tmp_path):
    with pytest.raises(ValueError, match="unit must be one of"):
        ext.run_unit(PLAN, "nope", tmp_path, tmp_path / "parts")
    with pytest.raises(FileNotFoundError, match="no finished 'full' arm"):
        ext.variant_model("streaming", get_preset(PLAN.preset, **PLAN.train), tmp_path, torch.device("cpu"))
    with pytest.raises(FileNotFoundError, match="no finished unit"):
        ext.merge(PLAN, tmp_path / "none", out=None)


def test_a_rerun_is_compared_with_the_stored_run_arm_by_arm(complete):
    result, _ = complete
    same = {r["name"]: r for r in ext.compare_runs(result, result)}
    assert same["hybrid"]["max |loss diff|"] == "0.000" and same["hybrid"]["steps"] == "4 / 4"
    assert same["original"]["steps"] == "" and same["original"]["suite mean (fresh / stored)"] != ""
    moved = json.loads(json.dumps(result))
    moved["training"]["hybrid"]["log"][2]["loss"] += 0.25
    moved["variants"]["hybrid"]["perplexity"][str(max(PLAN.lengths))] = 123.0
    rows = {r["name"]: r for r in ext.compare_runs(moved, result)}
    assert rows["hybrid"]["max |loss diff|"] == "0.250"
    assert rows["hybrid"]["ppl (fresh / stored)"].startswith("123.0 / ")
    prompts = sum(len(g["details"]) for g in result["variants"]["hybrid"]["tasks"].values())
    assert same["hybrid"]["prompts scored alike"] == f"{prompts} / {prompts}"
    first = moved["variants"]["hybrid"]["tasks"]["niah_single"]["details"][0]
    first[-1] = 1.0 - first[-1]
    rows = {r["name"]: r for r in ext.compare_runs(moved, result)}
    assert rows["hybrid"]["prompts scored alike"] == f"{prompts - 1} / {prompts}"
    only_hybrid = {**result, "training": {"hybrid": result["training"]["hybrid"]},
                   "variants": {"hybrid": result["variants"]["hybrid"]}}
    assert [r["name"] for r in ext.compare_runs(only_hybrid, result)] == ["hybrid"]
