"""The README's results section matches the committed JSON; ``report --check`` says what is stale,
``--write`` rewrites it, and without a flag the command writes nothing."""

import json

import pytest

from longgen_core import report


def test_readme_results_match_the_json():
    assert report.readme_block() == report.render(), f"run: {report.WRITE_COMMAND}"
    assert report.stale_parts() == []


def test_kernel_table_from_rows(tmp_path):
    rows = [
        {"impl": "longgen", "pattern": "sink_window_64_4096", "n": 131072, "pass": "fwd", "ms": 10.0,
         "tflops": 500.0, "gbps": None},
        {"impl": "flex", "pattern": "sink_window_64_4096", "n": 131072, "pass": "fwd", "ms": 20.0,
         "tflops": 250.0, "gbps": None},
        {"impl": "sdpa_full", "pattern": "full_causal", "n": 131072, "pass": "fwd", "ms": 250.0,
         "tflops": 560.0, "gbps": None},
    ]
    (tmp_path / "bench_kernels.json").write_text(json.dumps(
        {"device": "GPU X", "torch": "2.11", "triton": "3.6", "date": "2026-11-23", "rows": rows}))
    text = report.render(tmp_path)
    assert "| sink_window_64_4096 | 128K | fwd | 10.00 | 20.00 | – | – | 250.00 | – | 2.00x | 500 |" in text
    assert "GPU X" in text


def test_kernel_table_puts_fa4_on_the_window_beside_sink_and_window(tmp_path):
    def row(impl, pattern, ms, **extra):
        return {"impl": impl, "pattern": pattern, "n": 131072, "pass": "fwd", "ms": ms, "tflops": 1.0, **extra}

    rows = [row("longgen", "sink_window_64_4096", 10.0), row("flex", "sink_window_64_4096", 20.0),
            row("flex_flash", "sink_window_64_4096", 8.0),
            row("fa4", "sliding_window_4096", 7.5, instead_of="sink_window_64_4096"),
            row("longgen", "sliding_window_4096", 9.0), row("sdpa_full", "full_causal", 250.0),
            row("fa4", "full_causal", 125.0), row("fa4", "strided_64_16_8_hetero", None, unavailable="cannot")]
    (tmp_path / "bench_kernels.json").write_text(json.dumps(
        {"device": "GPU X", "torch": "2.11", "triton": "3.6", "date": "2026-12-03", "rows": rows,
         "versions": {"flash-attn-4": "4.0.0b36"}}))
    text = report.render(tmp_path)
    assert "flash-attn-4 4.0.0b36" in text
    assert "| sink_window_64_4096 | 128K | fwd | 10.00 | 20.00 | 8.00 | 7.50 † | 250.00 | 125.00 | 0.75x | 1 |" in text
    assert "| sliding_window_4096 | 128K | fwd | 9.00 | – | – | 7.50 | 250.00 | 125.00 | 0.83x | 1 |" in text


def test_update_readme_rewrites_only_the_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.START}\nold\n{report.END}\noutro\n")
    assert report.update_readme(readme, tmp_path)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text
    assert "No GPU results committed yet" in text
    assert not report.update_readme(readme, tmp_path)


def model_bench(rows, layer_map="ssFFss"):
    return {"device": "GPU Y", "torch": "2.11", "transformers": "5.17", "date": "2026-11-23", "layers": len(layer_map),
            "layer_map": layer_map, "pattern": "sink_window_64_4096", "dtype": "bfloat16", "reps": 3,
            "decode_steps": 16, "decode_batch": 8, "rows": rows, "notes": []}


def test_model_table_from_rows(tmp_path):
    n, GiB = 131072, 2**30
    rows = [
        {"attention": "full", "n": n, "metric": "kv_bytes", "value": 12 * GiB},
        {"attention": "hybrid", "n": n, "metric": "kv_bytes", "value": 4 * GiB, "kv_bytes_formula": 4 * GiB},
        {"attention": "full", "n": n, "metric": "prefill_ms", "value": 2000.0},
        {"attention": "hybrid", "n": n, "metric": "prefill_ms", "value": 1000.0},
        {"attention": "full", "n": n, "metric": "decode_ms_b1", "value": 80.0},
        {"attention": "hybrid", "n": n, "metric": "decode_ms_b1", "value": 20.0},
        {"attention": "full", "n": n, "metric": "decode_ms_b8", "value": None, "skipped": "out of memory"},
        {"attention": "hybrid", "n": n, "metric": "decode_ms_b8", "value": 100.0},
        {"attention": "full", "n": n, "metric": "train_step_ms", "value": 1600.0},
        {"attention": "hybrid", "n": n, "metric": "train_step_ms", "value": 1000.0},
    ]
    (tmp_path / "bench_model.json").write_text(json.dumps(model_bench(rows)))
    text = report.render(tmp_path)
    assert "**Whole model** (GPU Y" in text and "layer map `ssFFss`" in text
    assert "| KV cache | 128K | 12.00 GiB | 4.00 GiB | −66.7% | −62% | −62% (met) |" in text
    assert "| prefill ms | 128K | 2000.00 | 1000.00 | 2.00x | 1.67x | ≥1.75x (met) |" in text
    assert "| train step ms | 128K | 1600.00 | 1000.00 | 1.60x | 1.55x | ≥1.7x (not met) |" in text
    # missing value: a dash and the reason from the JSON
    assert "| decode ms/token, batch 8 | 128K | — | 100.00 | — | 1.41x | ≥1.8x |" in text
    assert "— = no value: full 128K decode ms/token, batch 8: out of memory." in text
    # 4x on a map with 2 of 6 layers full is more than Amdahl allows: flagged
    assert "| decode ms/token, batch 1 | 128K | 80.00 | 20.00 | 4.00x † | 1.41x | ≥1.8x (met) |" in text
    assert "† above 3.00x = layers / full layers" in text and "decode ms/token, batch 1 at 128K" in text
    assert "Hybrid KV bytes measured = `kv_bytes_formula` at every N." in text


def test_model_table_paper_and_targets_only_at_128k(tmp_path):
    rows = [{"attention": a, "n": n, "metric": "prefill_ms", "value": v}
            for a, n, v in [("full", 32768, 3.0), ("hybrid", 32768, 2.0), ("full", 65536, 9.0), ("hybrid", 65536, 5.0)]]
    rows.append({"attention": "hybrid", "n": 65536, "metric": "kv_bytes", "value": 5, "kv_bytes_formula": 6})
    (tmp_path / "bench_model.json").write_text(json.dumps(model_bench(rows)))
    text = report.render(tmp_path)
    assert "| prefill ms | 32K | 3.00 | 2.00 | 1.50x |  |  |" in text
    assert "| prefill ms | 64K | 9.00 | 5.00 | 1.80x |  |  |" in text  # no 128K run: nothing to compare
    assert "full 32K KV cache: not in the JSON" in text
    assert "Hybrid KV bytes measured ≠ `kv_bytes_formula` at 64K." in text
    assert "†" not in text


def test_readme_has_the_model_table_when_the_json_is_committed():
    if (report.ROOT / "figures" / "bench_model.json").exists():
        assert "**Whole model**" in report.readme_block()


def test_miniature_table_from_the_committed_json():
    mini = json.loads((report.ROOT / "figures" / "miniature.json").read_text())
    lines = report._miniature_table(mini)
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| variant")]
    assert [r.split(" | ")[0][2:] for r in rows] == list(mini["variants"])
    hybrid = next(r for r in rows if r.startswith("| hybrid "))
    longest = str(max(mini["plan"]["lengths"]))
    assert f"{mini['variants']['hybrid']['grid']['mean_by_length'][longest]:.2f}" in hybrid
    assert report._layer_counts("ssFFss") == "2 full / 4 sparse" and report._layer_counts("FFF") == "3 full"


def test_generate_table_from_rows(tmp_path):
    served = (("full", "transformers", 10.0, 0.5), ("full", "longgen", 100.0, 0.5), ("hybrid", "longgen", 150.0, 0.3))
    rows = [{"attention": a, "serving": s, "cuda_graphs": s == "longgen", "prompt_tokens": 32768, "batch": 1,
             "tokens_per_s": t, "ms_per_token": 1000 / t, "prefill_s": p, "total_s": p + 2.0, "peak_gib": 1.0}
            for a, s, t, p in served]
    rows.append({"attention": "full", "serving": "transformers", "prompt_tokens": 131072, "batch": 8,
                 "tokens_per_s": None, "ms_per_token": None, "note": "out of memory"})
    (tmp_path / "bench_generate.json").write_text(json.dumps({
        "device": "GPU X", "versions": {"torch": "2", "transformers": "5"}, "date": "2026-12-02T00:00:00",
        "model": "SmolLM2-135M-Instruct", "dtype": "bfloat16", "layer_map": "ssFFss",
        "pattern": "sink_window_64_4096", "new_tokens": 256, "rows": rows}))
    text = report.render(tmp_path)
    assert "**Generation** (GPU X" in text
    assert "| 32K | 1 | 10.0 | 100.0 | 150.0 | 1.50x | 15.00x | 0.5, 0.3 |" in text
    assert "| 128K | 8 | - | - | - | - | - |" in text  # out of memory: no number, no ratio


def test_model_table_shows_the_full_model_on_fa4_where_it_was_measured(tmp_path):
    rows = [{"attention": a, "n": 131072, "metric": "prefill_ms", "value": v}
            for a, v in (("full", 3000.0), ("hybrid", 1500.0), ("full_fa4", 2400.0))]
    (tmp_path / "bench_model.json").write_text(json.dumps(model_bench(rows)))
    text = report.render(tmp_path)
    assert "| full / hybrid | paper (7B, 128K) | target (128K) | full on FA4 | full on FA4 / hybrid |" in text
    line = next(x for x in text.splitlines() if x.startswith("| prefill ms | 128K"))
    assert line.endswith("| 2400.00 | 1.60x |") and "| 3000.00 | 1500.00 | 2.00x |" in line


# ---------------------------------------------------------------------- report --check / --write
@pytest.fixture
def stale_readme(tmp_path):
    figures = tmp_path / "figures"
    figures.mkdir()
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.START}\nold table\n{report.END}\noutro\n")
    return readme, figures


def test_report_check_names_the_stale_part_and_exits_1(stale_readme, capsys):
    readme, figures = stale_readme
    assert report.main(["--check", "--readme", str(readme), "--figures", str(figures)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the paper's numbers; the note that no results exist" in err
    assert "run `python -m longgen_core.report --write`" in err
    assert "old table" in readme.read_text()  # a check writes nothing


def test_report_check_names_a_table_whose_json_changed(tmp_path, capsys):
    figures = tmp_path / "figures"
    figures.mkdir()
    (figures / "bench_kernels.json").write_text('{"device": "GPU X", "torch": "2", "triton": "3", "date": "d", '
                                                '"rows": []}')
    readme = tmp_path / "README.md"
    readme.write_text(f"{report.START}\n{report.render(figures)}{report.END}\n")
    assert report.main(["--check", "--readme", str(readme), "--figures", str(figures)]) == 0
    (figures / "bench_kernels.json").write_text('{"device": "GPU Z", "torch": "2", "triton": "3", "date": "d", '
                                                '"rows": []}')
    assert report.main(["--check", "--readme", str(readme), "--figures", str(figures)]) == 1
    assert "in the table of figures/bench_kernels.json;" in capsys.readouterr().err


def test_report_write_rewrites_and_then_check_passes(stale_readme, capsys):
    readme, figures = stale_readme
    assert report.main(["--write", "--readme", str(readme), "--figures", str(figures)]) == 0
    assert "old table" not in readme.read_text() and readme.read_text().endswith("outro\n")
    assert report.main(["--check", "--readme", str(readme), "--figures", str(figures)]) == 0


def test_report_without_a_flag_prints_the_block_and_writes_nothing(stale_readme, capsys):
    readme, figures = stale_readme
    before = readme.read_text()
    assert report.main(["--readme", str(readme), "--figures", str(figures)]) == 0
    assert capsys.readouterr().out == report.render(figures)
    assert readme.read_text() == before


def test_report_check_on_a_readme_without_the_block_is_one_line(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit) as stop:
        report.main(["--check", "--readme", str(readme), "--figures", str(tmp_path)])
    assert stop.value.code == 2
    assert capsys.readouterr().err == (f"python -m longgen_core.report: error: {readme} has no {report.START} ... "
                                       f"{report.END} block\n")


def test_the_committed_readme_passes_report_check():
    assert report.main(["--check"]) == 0


def test_model_table_names_the_hybrids_backend_when_it_is_not_ours():
    flex = json.loads((report.ROOT / "figures" / "bench_model_flex.json").read_text())
    title = report._model_table(flex)[0]
    assert title.startswith('**Whole model, the hybrid on `backend="flex"`**') and "--backend flex`" in title
    ours = report._model_table({**flex, "backend": "auto"})[0]
    assert ours.startswith("**Whole model** (") and "--backend" not in ours
