"""The papermill batch runner: parameters it passes, stop at first failure, summary table."""

import json
import os

import nbformat
import pytest

from longgen_core import runner


def make_notebook(path, source_cells, parameters="PRESET = 'cpu-tiny'\nSTEPS = 2"):
    cells = [nbformat.v4.new_code_cell(parameters)]
    cells[0].metadata["tags"] = ["parameters"]
    cells += [nbformat.v4.new_code_cell(s) for s in source_cells]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_parameters_are_filtered_to_what_the_notebook_declares(tmp_path):
    nb = make_notebook(tmp_path / "01_a.ipynb", ["print(PRESET, STEPS)"])
    assert runner.parameters_for(nb, "gpu-small", {"STEPS": 5, "UNKNOWN": 1}) == {"STEPS": 5, "PRESET": "gpu-small"}
    other = make_notebook(tmp_path / "02_b.ipynb", ["print(N)"], parameters="N = 3")
    assert runner.parameters_for(other, "gpu-small", {}) == {}


def test_runs_in_order_stops_at_first_failure_and_writes_summary(tmp_path, capsys):
    src, out = tmp_path / "nbs", tmp_path / "runs"
    src.mkdir()
    first = make_notebook(src / "01_ok.ipynb", ["result = STEPS * 10\nprint('result', result)"])
    second = make_notebook(src / "02_fails.ipynb", ["raise RuntimeError('boom in cell')"])
    third = make_notebook(src / "03_never.ipynb", ["print('unreachable')"])
    rows = runner.run_notebooks([first, second, third], out, preset="gpu-small", overrides={"STEPS": 4})
    assert [(r["notebook"], r["status"]) for r in rows] == [("01_ok.ipynb", "ok"), ("02_fails.ipynb", "failed")]
    executed = nbformat.read(out / "01_ok.ipynb", 4)
    printed = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert "result 40" in printed
    assert not (out / "03_never.ipynb").exists()
    assert "boom in cell" in capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text()) == rows
    assert "| 02_fails.ipynb | gpu-small | failed |" in (out / "summary.md").read_text()


def test_a_run_into_a_folder_saves_the_figures_there_not_in_figures(tmp_path, monkeypatch):
    monkeypatch.delenv("LONGGEN_FIGURE_DIR", raising=False)  # conftest points every test at runs/
    src, out = tmp_path / "nbs", tmp_path / "runs"
    src.mkdir()
    nb = make_notebook(src / "01_fig.ipynb", [
        "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
        "from longgen_core.plots import save_figure\nprint(save_figure(plt.figure(), 'zz_runner_probe'))"])
    rows = runner.run_notebooks([nb], out)
    assert rows[0]["status"] == "ok"
    assert (out / "figures" / "zz_runner_probe.png").is_file()
    assert not (runner.NOTEBOOKS_DIR.parent / "figures" / "zz_runner_probe.png").exists()
    assert "LONGGEN_FIGURE_DIR" not in os.environ  # restored after the run


def test_kernels_get_absolute_import_paths_and_sparse_progress_bars(tmp_path, monkeypatch):
    # papermill starts each kernel in the notebook's folder: a relative PYTHONPATH entry (the GPU
    # batch once ran with PYTHONPATH=.) would point there, and longgen_core would not import
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", "lib")
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    src, out = tmp_path / "nbs", tmp_path / "runs"
    src.mkdir()
    nb = make_notebook(src / "01_env.ipynb", [
        "import os, longgen_core\n"
        "paths = os.environ['PYTHONPATH'].split(os.pathsep)\n"
        "print('absolute', all(os.path.isabs(p) for p in paths), paths[-1])\n"
        "print('interval', os.environ['TQDM_MININTERVAL'])"])
    assert runner.run_notebooks([nb], out)[0]["status"] == "ok"
    printed = "".join(o.get("text", "") for c in nbformat.read(out / "01_env.ipynb", 4).cells
                      for o in c.get("outputs", []))
    assert f"absolute True {tmp_path / 'lib'}" in printed
    assert "interval 30" in printed
    assert os.environ["PYTHONPATH"] == "lib" and "TQDM_MININTERVAL" not in os.environ  # restored


def test_a_later_run_into_the_same_folder_keeps_the_other_rows(tmp_path):
    src, out = tmp_path / "nbs", tmp_path / "runs"
    src.mkdir()
    first = make_notebook(src / "01_a.ipynb", ["print(1)"])
    second = make_notebook(src / "02_b.ipynb", ["print(2)"])
    runner.run_notebooks([second], out)
    runner.run_notebooks([first], out, preset="gpu-small")
    rows = json.loads((out / "summary.json").read_text())
    assert [(r["notebook"], r["preset"], r["device"]) for r in rows] == [
        ("01_a.ipynb", "gpu-small", "cpu"), ("02_b.ipynb", "default", "cpu")]
    runner.run_notebooks([second], out, preset="gpu-small")  # replaces its own row only
    rows = json.loads((out / "summary.json").read_text())
    assert [(r["notebook"], r["preset"]) for r in rows] == [("01_a.ipynb", "gpu-small"), ("02_b.ipynb", "gpu-small")]
    assert "| 02_b.ipynb | gpu-small | ok |" in (out / "summary.md").read_text()


def test_an_in_place_run_keeps_no_machine_path_in_the_metadata(tmp_path):
    nb = make_notebook(tmp_path / "01_here.ipynb", ["print(STEPS)"])
    assert runner.run_notebooks([nb], None)[0]["status"] == "ok"
    record = nbformat.read(nb, 4).metadata["papermill"]
    assert record["input_path"] == record["output_path"] == "notebooks/01_here.ipynb"
    assert str(tmp_path) not in nb.read_text()


def test_cli_needs_exactly_one_destination(tmp_path):
    with pytest.raises(SystemExit):
        runner.main(["--in-place", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        runner.main([str(tmp_path / "missing.ipynb"), "--out", str(tmp_path)])


@pytest.mark.parametrize("text,value", [("8", 8), ("1e6", 1e6), ("True", True), ("gpu-small", "gpu-small")])
def test_parse_value(text, value):
    assert runner.parse_value(text) == value


@pytest.mark.parametrize("text,value", [
    ("true", True), ("True", True), ("null", None), ("None", None), ("1e-4", 1e-4), ("-3", -3),
    ("[1, 2]", [1, 2]), ("(1, 2)", (1, 2)), ('{"kind": "sink_window"}', {"kind": "sink_window"}),
    ("{'kind': 'full'}", {"kind": "full"}), ('"8"', "8"), ("'8'", "8"),
    ("kjv", "kjv"), ("runs/x", "runs/x"), ("gpu-small", "gpu-small"), ("", ""), ("a b", "a b")])
def test_one_value_rule_for_every_command_line(text, value):
    """JSON first, then a Python literal, else the text: -p and --set read VALUE alike."""
    from longgen_core.train import options

    assert runner.parse_value(text) == options.parse_value(text) == value
    assert type(runner.parse_value(text)) is type(value)


@pytest.mark.parametrize("notebook", runner.numbered_notebooks(), ids=lambda p: p.name)
def test_papermill_reads_every_name_of_the_parameters_cell(notebook):
    """A parameter papermill cannot parse (e.g. a comment holding '=') is silently never overridden."""
    import ast

    import nbformat
    import papermill

    cells = [c for c in nbformat.read(notebook, as_version=4).cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "exactly one cell tagged 'parameters'"
    assigned = [t.id for node in ast.parse(cells[0].source).body if isinstance(node, ast.Assign)
                for t in node.targets if isinstance(t, ast.Name)]
    assert list(papermill.inspect_notebook(str(notebook))) == assigned
