"""CPU test of the ``model`` benchmark (longgen_core.bench.model) on a tiny random Llama: the JSON
structure and the KV bytes (hybrid < full past the window, hybrid == kv_bytes_formula). The times
it records on CPU are not measurements of anything."""

from __future__ import annotations

import json

import pytest

import torch

from longgen_core.bench import cli as bench_cli
from longgen_core.bench import kernels as bench
from longgen_core.bench import model as bench_model
from longgen_core.models.base import tiny_llama
from longgen_core.patterns import sink_window


def test_model_bench_tiny_cpu(tmp_path):
    config = tiny_llama(num_layers=3, hidden_size=64, num_heads=4, num_kv_heads=2, vocab_size=128).config
    res = bench_model.run_model_bench([64, 128], device="cpu", dtype=torch.float32, config=config,
                                      pattern=sink_window(4, 16), reps=1, decode_steps=2, decode_batch=2,
                                      chunk=32, log=lambda s: None)
    for key in ("device", "torch", "triton", "transformers", "date", "layers", "rows", "notes"):
        assert key in res
    assert res["layers"] == 3 and res["layer_map"] == "sFs"
    metrics = {"kv_bytes", "prefill_ms", "decode_ms_b1", "decode_ms_b2", "decode_graph_ms_b1", "decode_graph_ms_b2",
               "train_step_ms"}
    cells = {(r["attention"], r["n"], r["metric"]) for r in res["rows"]}
    assert cells == {(a, n, m) for a in ("full", "hybrid") for n in (64, 128) for m in metrics}
    for r in res["rows"]:
        assert r["value"] is not None and r["value"] > 0, r
    kv = {(r["attention"], r["n"]): r for r in res["rows"] if r["metric"] == "kv_bytes"}
    for n in (64, 128):
        assert kv["hybrid", n]["value"] < kv["full", n]["value"]
        assert kv["hybrid", n]["value"] == kv["hybrid", n]["kv_bytes_formula"]
    # full: 3 layers * 2 (K, V) * 2 kv heads * 16 head_dim * 4 bytes * n
    assert kv["full", 128]["value"] == 3 * 2 * 2 * 16 * 4 * 128
    assert res["ratios"]["kv_bytes"]["128"] > 1
    graphed = {(r["attention"], r["n"], r["batch"]): r for r in res["rows"] if r["metric"].startswith("decode_graph")}
    weights = sum(p.numel() for p in tiny_llama(num_layers=3, hidden_size=64, num_heads=4, num_kv_heads=2,
                                                 vocab_size=128).model.layers.parameters())
    weights = 4 * (weights + 64 + 128 * 64)  # the layers, the final norm and the head, float32
    for n in (64, 128):
        for batch in (1, 2):
            full, hybrid = graphed["full", n, batch], graphed["hybrid", n, batch]
            assert full["host_ms"] > 0 and full["floor_ms"] is None  # no copy bandwidth measured on the CPU
            assert full["bytes_read"] == weights + batch * kv["full", n]["value"]
            assert hybrid["bytes_read"] == weights + batch * kv["hybrid", n]["value"]
    out = tmp_path / "bench_model.json"
    bench.write_results(out, res)
    assert json.loads(out.read_text())["rows"]
    bench_model.save_plot(res, tmp_path / "bench_model.png")
    assert (tmp_path / "bench_model.png").stat().st_size > 0
    assert "kv_bytes" in bench_model.results_table(res)


def test_model_subcommand_is_registered():
    import pytest

    with pytest.raises(SystemExit) as exc:
        bench_cli.main(["model", "--help"])
    assert exc.value.code == 0


def test_both_bench_models_fuse_their_norms_without_changing_the_logits():
    config = tiny_llama(num_layers=3, hidden_size=64, num_heads=4, num_kv_heads=2, vocab_size=128).config
    fused = bench_model.build_models(config, "cpu", torch.float32, sink_window(4, 16))
    plain = bench_model.build_models(config, "cpu", torch.float32, sink_window(4, 16), fused_norms=False)
    ids = torch.randint(0, 128, (1, 40), generator=torch.Generator().manual_seed(0))
    for f, p in zip(fused, plain):
        kinds = {type(m).__name__ for m in f.modules() if "RMSNorm" in type(m).__name__}
        assert kinds == {"FusedRMSNorm"} and "FusedRMSNorm" not in {type(m).__name__ for m in p.modules()}
        with torch.no_grad():
            torch.testing.assert_close(f(ids).logits, p(ids).logits, rtol=1e-5, atol=1e-5)


def test_model_subcommand_measures_every_metric_by_default(monkeypatch):
    seen = {}
    monkeypatch.setattr(bench_cli, "_run_model", lambda args: seen.update(vars(args)) or 0)
    assert bench_cli.main(["model"]) == 0
    assert seen["metrics"] == bench_model.METRICS


def test_generate_bench_times_both_models_on_the_cpu(tmp_path):
    from longgen_core.bench import cli
    from longgen_core.bench.generate import results_table

    out = tmp_path / "gen.json"
    assert cli.main(["generate", "--out", str(out), "--prompts", "96", "--batches", "1,2", "--new-tokens", "4",
                     "--sink", "4", "--window", "32", "--device", "cpu"]) == 0
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["pattern"] == "sink_window_4_32"
    served = {("full", "transformers"), ("full", "longgen"), ("hybrid", "longgen")}
    assert ({(r["attention"], r["serving"], r["batch"]) for r in result["rows"]}
            == {(*s, b) for s in served for b in (1, 2)})
    assert not any(r["cuda_graphs"] for r in result["rows"])  # the CPU runs transformers' loop
    for r in result["rows"]:
        assert r["prompt_tokens"] == 96 and r["tokens_per_s"] > 0
        # decode = total - prefill, floored at ~0 (on a busy CPU the 1-token call can be the slower)
        assert abs(r["ms_per_token"] * 3 / 1000 - max(r["total_s"] - r["prefill_s"], 0)) < 2e-3
    assert results_table(result).count("| 96 |") == 2  # one line per batch


def test_generate_bench_writes_each_row_as_it_is_timed(tmp_path):
    from longgen_core.bench.generate import run_generate_bench

    out, seen = tmp_path / "gen.json", []
    run_generate_bench((64,), (1,), new_tokens=2, sink=4, window=16, device="cpu", out=out,
                       log=lambda line: seen.append(len(json.loads(out.read_text())["rows"])))
    assert seen == [1, 2, 3]  # on disk before each row's line is printed


def test_generate_row_refuses_fewer_than_two_new_tokens():
    from longgen_core.bench.generate import generate_row
    from longgen_core.models.base import tiny_llama

    with pytest.raises(ValueError, match="new_tokens must be >= 2"):
        generate_row(tiny_llama(), "full", 16, 1, 1)


def test_decode_bytes_read_counts_a_tied_head_once_and_whole():
    from longgen_core.models.base import load_smollm2

    model = load_smollm2()[0]  # SmolLM2 ties its head to the embedding table
    params = sum(p.numel() * 4 for p in model.parameters())
    kv = 30 * 2 * 3 * 64 * 4 * 100  # layers * (K, V) * kv heads * head_dim * float32 * tokens
    assert bench_model.decode_bytes_read(model, 100, 1, torch.float32) == params + kv
