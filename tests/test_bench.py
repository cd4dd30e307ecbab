"""FORMAT TESTS of longgen_core.bench.kernels on FAKE rows: the JSON writer, the text table, the figure and
the command line. The numbers below are invented to exercise the code; they are not measurements
(those come from `python -m longgen_core.bench kernels` on a GPU, see figures/bench_kernels.json).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from longgen_core.bench import cli as bench_cli
from longgen_core.bench import kernels as bench

FAKE = {
    "device": "FAKE DEVICE (format test)", "torch": "0", "triton": "0", "date": "2000-01-01",
    "rows": [
        {"impl": impl, "pattern": pattern, "n": n, "pass": pass_, "ms": ms * n / 16384, "tflops": 1.0,
         "gbps": None}
        for impl, pattern, ms in (("longgen", "sink_window_64_4096", 1.0),
                                  ("flex", "sink_window_64_4096", 2.0),
                                  ("sdpa_full", "full_causal", 8.0))
        for n in (16384, 32768)
        for pass_ in ("fwd", "fwdbwd")
    ] + [{"impl": "longgen", "pattern": "sink_window_64_4096", "n": 32768, "pass": "decode", "ms": 0.5,
          "tflops": None, "gbps": 100.0, "cache": "evicted", "batch": 8},
         {"impl": "flex", "pattern": "sink_window_64_4096", "n": 32768, "pass": "decode", "ms": None,
          "tflops": None, "gbps": None, "skipped": "time budget"}],
}


def test_write_and_load_round_trip(tmp_path):
    path = tmp_path / "sub" / "bench.json"
    bench.write_results(path, FAKE)
    assert bench.load_results(path) == json.loads(json.dumps(FAKE))
    assert not list(path.parent.glob("*.tmp"))  # written atomically


def test_results_table_lists_every_timed_row_and_the_speedups():
    table = bench.results_table(FAKE)
    lines = table.splitlines()
    assert lines[0].split()[-2:] == ["16K", "32K"]
    fwd_longgen = next(line for line in lines
                       if line.split()[:3] == ["sink_window_64_4096", "fwd", "longgen"])
    assert fwd_longgen.split()[3:] == ["1.0", "2.0"]
    assert any("longgen/evicted" in line for line in lines)
    speedups = {tuple(line.split()[:4]): line.split()[4] for line in lines if " vs " in line}
    assert speedups[("sink_window_64_4096", "fwd", "vs", "flex")] == "2.00x"
    assert speedups[("sink_window_64_4096", "fwdbwd", "vs", "sdpa_full")] == "8.00x"


def test_plot_and_png(tmp_path):
    fig = bench.plot_results(FAKE)
    assert len(fig.axes) == 3  # fwd, fwdbwd, decode
    bench.save_plot(FAKE, tmp_path / "b.png")
    assert (tmp_path / "b.png").stat().st_size > 1000


def test_command_line_has_the_kernels_subcommand(capsys):
    with pytest.raises(SystemExit):
        bench_cli.main(["kernels", "--help"])
    assert "--out" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench_cli.main([])  # a subcommand is required


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_kernels_needs_a_gpu(tmp_path):
    assert bench_cli.main(["kernels", "--out", str(tmp_path / "x.json")]) == 2
    assert not (tmp_path / "x.json").exists()


def test_save_figure_goes_where_the_environment_says(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from longgen_core import plots

    fig, _ = plt.subplots()
    monkeypatch.setenv("LONGGEN_FIGURE_DIR", str(tmp_path / "env"))
    assert plots.save_figure(fig, "probe") == tmp_path / "env" / "probe.png"
    assert plots.save_figure(fig, "probe", tmp_path / "given") == tmp_path / "given" / "probe.png"
    assert (tmp_path / "env" / "probe.png").stat().st_size > 0 and (tmp_path / "given" / "probe.png").exists()
    plt.close(fig)


def test_versus_names_a_missing_or_clashing_other_copy(tmp_path):
    from longgen_core.bench import versus

    with pytest.raises(FileNotFoundError, match="no package 'old'"):
        versus.load_other(tmp_path, "old", "kernels", "patterns")
    (tmp_path / "longgen_core").mkdir()
    (tmp_path / "longgen_core" / "__init__.py").write_text("")
    with pytest.raises(ValueError, match="another package name"):
        versus.load_other(tmp_path, "longgen_core", "kernels", "patterns")


def test_versus_loads_another_copy_whose_patterns_match_ours(tmp_path):
    import shutil

    from longgen_core import patterns
    from longgen_core.bench import versus

    shutil.copytree(Path(patterns.__file__).parent.parent, tmp_path / "longgen_copy",
                    ignore=shutil.ignore_patterns("__pycache__"))
    ops, pats = versus.load_other(tmp_path, "longgen_copy", "kernels", "patterns")
    assert ops.__name__ == "longgen_copy.kernels" and ops is not __import__("longgen_core").kernels
    ours, theirs = bench.kernel_patterns(4), bench.kernel_patterns(4, pats)
    assert list(ours) == list(theirs) == ["sink_window", "strided"]
    for name in ours:
        assert type(theirs[name]) is not type(ours[name])  # built by the copy's own factories
        assert torch.equal(ours[name].dense_mask(4500, num_heads=4), theirs[name].dense_mask(4500, num_heads=4)), name


def test_cuda_graphs_time_the_decode_rows_and_only_them(monkeypatch):
    # the timer is the GPU's; here only which one each pass gets is checked
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    asked = []
    monkeypatch.setattr(bench, "median_ms", lambda fn, graph=False: asked.append(graph) or 1.0)
    for graphs in (True, False):
        sweep = bench._Sweep([], ["fwd", "decode"], ["longgen"], 4, 4, 16, 1, float("inf"), log=lambda s: None,
                             decode_graphs=graphs)
        sweep.time("longgen", "p", 64, "decode", lambda: None)
        sweep.time("longgen", "p", 64, "fwd", lambda: None)
        assert [r["ms"] for r in sweep.rows] == [1.0, 1.0]
    assert asked == [True, False, False, False]


def test_the_report_says_when_decode_was_timed_under_cuda_graphs():
    from longgen_core import report

    decode = {**FAKE, "decode_batch": 1, "decode_timing": "cuda_graph"}
    assert "timed as CUDA graph replays" in report._kernel_table(decode)[0]
    assert "CUDA graph" not in report._kernel_table({**FAKE, "decode_timing": "eager"})[0]


def test_the_recorded_command_names_the_output_folder_as_OUT(monkeypatch):
    from longgen_core.bench.results import command_line

    monkeypatch.setenv("OUT", "/root/out")
    monkeypatch.setattr("sys.argv", ["bench", "kernels", "--out", "/root/out/k.json", "--n", "131072"])
    assert command_line() == "python -m longgen_core.bench kernels --out $OUT/k.json --n 131072"
    monkeypatch.delenv("OUT")
    assert command_line().endswith("--out /root/out/k.json --n 131072")
