"""The cost model of longgen_core.bench.cost_model: FLOPs and bytes per layer, Amdahl's law, and the
measured-vs-model rows read from a ``bench model`` JSON (a small synthetic one here)."""

from __future__ import annotations

import doctest
import math

import pytest

from longgen_core.bench import cost_model as efficiency
from longgen_core.models.cache import kv_bytes_formula
from longgen_core.models.convert import convert_config, layer_map
from longgen_core.models.base import llama2_7b_config
from longgen_core.patterns import attention_flops, full_causal, sink_window, sliding_window, strided


def hybrid_7b(n=131072):
    return convert_config(llama2_7b_config(n), pattern=sink_window(64, 4096))


def test_docstring_examples():
    result = doctest.testmod(efficiency, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_layer_params_llama2_7b():
    assert efficiency.layer_params(llama2_7b_config()) == 4 * 4096**2 + 3 * 4096 * 11008


def test_layer_costs_use_attention_flops_and_kv_bytes():
    config = hybrid_7b()
    n = 65536
    rows = efficiency.layer_costs(config, n, "prefill")
    assert [r["kind"] == "full" for r in rows] == [c == "F" for c in layer_map(config)]
    assert rows[0]["attention"] == attention_flops(sink_window(64, 4096), n, 32, 128)
    assert rows[15]["attention"] == attention_flops(full_causal(), n, 32, 128)
    assert rows[0]["linear"] == 2 * efficiency.layer_params(config) * n
    train = efficiency.layer_costs(config, n, "train")
    assert train[0]["linear"] == 4 * rows[0]["linear"] and train[0]["attention"] == 4.5 * rows[0]["attention"]
    decode = efficiency.layer_costs(config, n, "decode", batch=8)
    assert [r["attention"] for r in decode] == kv_bytes_formula(config, n, batch=8)
    assert decode[0]["linear"] == 2 * efficiency.layer_params(config)  # bf16 weights, read once


@pytest.mark.parametrize("phase,batch", [("prefill", 1), ("train", 1), ("decode", 1), ("decode", 8)])
def test_amdahl_law(phase, batch):
    config = hybrid_7b()
    previous = 1.0
    for n in (8192, 32768, 131072):
        a = efficiency.amdahl(config, n, phase, batch)
        assert a["speedup"] == pytest.approx(1 / ((1 - a["f"]) + a["f"] / a["s"]))
        assert a["speedup"] == pytest.approx(a["full"] / a["hybrid"])
        assert previous < a["speedup"] < a["bound"] < a["limit"] == pytest.approx(32 / 11)
        previous = a["speedup"]


def test_amdahl_all_full_is_one():
    config = convert_config(llama2_7b_config(8192), full_layers=list(range(32)))
    a = efficiency.amdahl(config, 8192, "prefill")
    assert a["f"] == 0 and a["speedup"] == 1 and a["bound"] == 1


def test_model_cost_parts_and_errors():
    config = hybrid_7b()
    full = efficiency.model_cost(config, 131072, "prefill", full=True)
    hybrid = efficiency.model_cost(config, 131072, "prefill")
    assert set(full) == {*efficiency.PARTS, "total"}
    assert full["linear"] == hybrid["linear"] and full["attention (full layers)"] == hybrid["attention (full layers)"]
    assert hybrid["attention (sparse layers)"] < full["attention (sparse layers)"]
    with pytest.raises(ValueError, match="phase"):
        efficiency.model_cost(config, 1024, "generate")
    with pytest.raises(ValueError, match="n must be"):
        efficiency.model_cost(config, 0)
    with pytest.raises(ValueError, match="batch must be"):
        efficiency.model_cost(config, 1024, "decode", batch=0)


@pytest.mark.parametrize("pattern", [sink_window(64, 4096), sliding_window(512), full_causal(),
                                     strided(64, 16, 8, homo_head=False, num_heads=32),
                                     strided(64, 4, 4, homo_head=True)])
def test_pattern_from_name(pattern):
    assert efficiency.pattern_from_name(pattern.name, 32) == pattern


def test_pattern_from_name_rejects_unknown():
    with pytest.raises(ValueError, match="unknown pattern name"):
        efficiency.pattern_from_name("dilated_8")


def synthetic_results(full_b8_128=None):
    """A bench model JSON of a tiny shape: 3 layers (sFs), sink 4 + window 16, N = 64 and 128."""
    shape = {"hidden": 256, "heads": 4, "kv_heads": 4, "head_dim": 64, "mlp": 512, "vocab": 1000}
    values = {("full", 64): (2.0, 4.0, 8.0, 20.0), ("hybrid", 64): (1.6, 0.5, 6.0, 16.0),
              ("full", 128): (6.0, 4.1, full_b8_128, 60.0), ("hybrid", 128): (3.0, 0.6, 7.0, 30.0)}
    rows = []
    for (att, n), (prefill, b1, b8, train) in values.items():
        kv = (3 if att == "full" else 1) * n * 2 * 4 * 64 * 2 + (0 if att == "full" else 2 * 20 * 2 * 4 * 64 * 2)
        rows.append({"attention": att, "n": n, "metric": "kv_bytes", "value": kv})
        rows.append({"attention": att, "n": n, "metric": "prefill_ms", "value": prefill})
        rows.append({"attention": att, "n": n, "metric": "decode_ms_b1", "value": b1})
        rows.append({"attention": att, "n": n, "metric": "decode_ms_b8", "value": b8,
                     **({} if b8 is not None else {"skipped": "out of memory"})})
        rows.append({"attention": att, "n": n, "metric": "train_step_ms", "value": train})
    return {"device": "GPU X", "torch": "2.11", "transformers": "5.17", "date": "2026-11-23", "layers": 3,
            "layer_map": "sFs", "full_layers": [1], "pattern": "sink_window_4_16", "shape": shape,
            "dtype": "bfloat16", "reps": 3, "decode_steps": 16, "decode_batch": 8, "rows": rows, "notes": []}


def test_bench_config_rebuilds_the_benchmarked_model():
    results = synthetic_results()
    config = efficiency.bench_config(results)
    assert layer_map(config) == "sFs" and config.hidden_size == 256 and config.intermediate_size == 512
    for r in results["rows"]:
        if r["metric"] == "kv_bytes" and r["attention"] == "hybrid":
            assert sum(kv_bytes_formula(config, r["n"])) == r["value"]


def test_measured_vs_model_rows_and_text():
    results = synthetic_results()
    rows = efficiency.measured_vs_model(results)
    assert [(r["metric"], r["n"]) for r in rows][:2] == [("kv_bytes", 64), ("kv_bytes", 128)]
    by = {(r["metric"], r["n"]): r for r in rows}
    assert by["prefill_ms", 128]["measured"] == 2.0
    assert by["decode_ms_b8", 128]["measured"] is None and by["decode_ms_b8", 128]["full"] is None
    assert by["kv_bytes", 128]["measured"] == pytest.approx(by["kv_bytes", 128]["model"])
    assert by["kv_bytes", 128]["bound"] == 3.0
    for r in rows:
        assert r["model"] <= r["bound"] * (1 + 1e-12) and math.isfinite(r["model"])
    text = efficiency.comparison_text(rows, {"prefill_speedup": 1.67, "kv_saving": 0.62, "decode_speedup": 1.41,
                                             "train_speedup": 1.55},
                                      {"prefill_speedup": 1.75, "kv_saving": 0.62, "decode_speedup": 1.8,
                                       "train_speedup": 1.7}, paper_n=128)
    assert "8.00x !" in text  # decode b1 at 64K: 4.0 / 0.5, far above the bound
    assert "! measured above the cost model's Amdahl bound" in text
    assert efficiency.MISSING in text and ">=1.75x" in text
    assert text.count(">=1.75x") == 1  # on the paper_n row only


def test_decode_rows_show_change_and_floor():
    rows = efficiency.decode_rows(synthetic_results(), gbps=0.01)  # a slow "GPU": floors in ms
    assert [(r["batch"], r["N"]) for r in rows] == [(1, "64"), (1, "128"), (8, "64"), (8, "128")]
    assert rows[1]["full change"] == "+0.10" and rows[0]["full change"] == efficiency.MISSING
    assert rows[3]["full ms"] == efficiency.MISSING
    assert float(rows[1]["full floor ms"]) > float(rows[1]["hybrid floor ms"]) > 0


def test_pictures():
    results = synthetic_results(full_b8_128=9.0)
    fig = efficiency.plot_measured(efficiency.measured_vs_model(results), {"prefill_speedup": 1.67}, None)
    assert len(fig.axes) == 6
    fig = efficiency.plot_cost_breakdown(hybrid_7b(), [32768, 131072], "train")
    assert len(fig.axes[0].patches) == 2 * 2 * len(efficiency.PARTS)
    fig = efficiency.plot_decode(results, gbps=1000.0)
    assert fig.axes[0].get_yscale() == "log"
