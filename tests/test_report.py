"""The README's results section matches the committed JSON."""

import json

from longgen_core import report


def test_readme_results_match_the_json():
    assert report.readme_block() == report.render(), "run: python -m longgen_core.report"


def test_kernel_table_from_rows(tmp_path):
    rows = [
        {"impl": "longgen", "pattern": "sink_window_64_4096", "n": 131072, "pass": "fwd", "ms": 10.0, "tflops": 500.0, "gbps": None},
        {"impl": "flex", "pattern": "sink_window_64_4096", "n": 131072, "pass": "fwd", "ms": 20.0, "tflops": 250.0, "gbps": None},
        {"impl": "sdpa_full", "pattern": "full_causal", "n": 131072, "pass": "fwd", "ms": 250.0, "tflops": 560.0, "gbps": None},
    ]
    (tmp_path / "bench_kernels.json").write_text(json.dumps(
        {"device": "GPU X", "torch": "2.11", "triton": "3.6", "date": "2026-11-23", "rows": rows}))
    text = report.render(tmp_path)
    assert "| sink_window_64_4096 | 128K | fwd | 10.00 | 20.00 | 250.00 | 2.00x | 25.0x | 500 |" in text
    assert "GPU X" in text


def test_update_readme_rewrites_only_the_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.START}\nold\n{report.END}\noutro\n")
    assert report.update_readme(readme, tmp_path)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text
    assert "No GPU results committed yet" in text
    assert not report.update_readme(readme, tmp_path)
