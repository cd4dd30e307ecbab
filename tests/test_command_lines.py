"""The command lines agree (packaging issue, "command lines that agree"): each has a real
``--help``; a bad argument is one line on stderr and exit 2, never a traceback or a usage block;
``--out`` says whether it is a FILE or a DIR and refuses the other kind; one rule reads every
VALUE; ``report`` writes only when told; ``longgen`` dispatches to the same ``main(argv)`` as the
``python -m`` forms. In-process and fast: the work a command would start is replaced by a stand-in."""

import importlib
import re
import tomllib
from pathlib import Path

import pytest

from longgen_core import cli as longgen
from longgen_core import report, runner
from longgen_core.bench import cli as bench_cli
from longgen_core.bench import training as bench_training
from longgen_core.bench import versus
from longgen_core.cli_values import parse_value
from longgen_core.experiments import cli as experiments_cli
from longgen_core.experiments import extension, miniature
from longgen_core.models import cli as models_cli
from longgen_core.train import cli as train_cli
from longgen_core.train import options as train_options
from test_cli_edges import Started, never, started

ROOT = Path(__file__).resolve().parent.parent


def exit_code(main, argv) -> int:
    """``main(argv)``'s exit code, whether it returns it or argparse raises it."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


# ---------------------------------------------------------------------- --help
@pytest.mark.parametrize("main,argv,shown", [
    (bench_cli.main, [], ["usage: python -m longgen_core.bench", "kernels", "model", "generate"]),
    (bench_cli.main, ["kernels"], ["--out FILE", "--png FILE", "--impls"]),
    (bench_cli.main, ["generate"], ["--out FILE", "--prompts"]),
    (train_cli.main, [], ["usage: python -m longgen_core.train", "--preset", "--run-dir DIR", "measure"]),
    (train_cli.main, ["measure"], ["usage: python -m longgen_core.train measure", "--out FILE", "--run-root DIR",
                                   "--untimed-steps"]),
    (experiments_cli.main, [], ["miniature", "extension"]),
    (experiments_cli.main, ["miniature"], ["--out DIR", "--set FIELD VALUE", "--device"]),
    (experiments_cli.main, ["extension"], ["--out DIR", "--work DIR", "--parts DIR", "--units"]),
    (models_cli.main, [], ["usage: python -m longgen_core.models", "setup"]),
    (models_cli.main, ["setup"], ["--force"]),
    (report.main, [], ["usage: python -m longgen_core.report", "--check", "--write"]),
    (runner.main, [], ["usage: python -m longgen_core.runner", "--out DIR", "-p NAME VALUE", "--in-place"]),
    (versus.main, [], ["--root", "--out FILE"]),
], ids=lambda x: " ".join(x) if isinstance(x, list) else None)
def test_every_command_has_a_help_that_lists_its_options(capsys, main, argv, shown):
    assert exit_code(main, [*argv, "--help"]) == 0
    out = capsys.readouterr().out
    for text in shown:
        assert text in out


def test_report_help_writes_nothing(capsys):
    before = (ROOT / "README.md").read_bytes()
    assert exit_code(report.main, ["--help"]) == 0
    assert (ROOT / "README.md").read_bytes() == before


# ---------------------------------------------------------------------- bad arguments: one line, exit 2
def bad_arguments(tmp_path):
    """(main, argv, the one line on stderr) for bad command lines of every command."""
    a_file = tmp_path / "taken"
    a_file.write_text("")
    return [
        (bench_cli.main, ["model", "--lengths", "32k"], "python -m longgen_core.bench model: error: argument "
         "--lengths: expected comma-separated whole numbers such as 16384,32768, got '32k'"),
        (bench_cli.main, ["kernels", "--out", "figures/"], "python -m longgen_core.bench kernels: error: argument "
         "--out: 'figures/' is a folder; this option names the .json file to write"),
        (bench_cli.main, ["kernels", "--out", str(tmp_path)], f"python -m longgen_core.bench kernels: error: "
         f"argument --out: '{tmp_path}' is a folder; this option names the .json file to write"),
        (bench_cli.main, ["generate", "--out", "runs/gen"], "python -m longgen_core.bench generate: error: argument "
         "--out: 'runs/gen' does not end in .json; this option names the .json file to write"),
        (bench_cli.main, ["kernels", "--passes", "fwd,bwd"], "python -m longgen_core.bench kernels: error: argument "
         "--passes: unknown bwd; choose from fwd,fwdbwd,decode"),
        (bench_cli.main, ["modle"], "python -m longgen_core.bench: error: argument command: invalid choice: 'modle' "
         "(choose from 'kernels', 'model', 'generate')"),
        (train_cli.main, ["measure", "--out", "figures/"], "python -m longgen_core.train measure: error: argument "
         "--out: 'figures/' is a folder; this option names the .json file to write"),
        (train_cli.main, ["--run-dir", str(a_file)], f"python -m longgen_core.train: error: argument --run-dir: "
         f"'{a_file}' names a file; this option names the folder to write into (created if missing)"),
        (train_cli.main, ["--stpes=3"], "python -m longgen_core.train: error: unrecognized arguments: --stpes=3"),
        (experiments_cli.main, ["miniature", "--out", "figures/miniature.json"], "python -m "
         "longgen_core.experiments miniature: error: argument --out: 'figures/miniature.json' names a file; this "
         "option names the folder to write into (created if missing)"),
        (experiments_cli.main, ["extension", "--units", "hybrid,nope"], "python -m longgen_core.experiments "
         "extension: error: argument --units: unknown nope; choose from hybrid,all_sparse,full,original"),
        (experiments_cli.main, ["extension", "--set", "steps", "x"], "python -m longgen_core.experiments extension: "
         "error: steps must be an int, got 'x' (str)"),
        (experiments_cli.main, ["miniature", "--set", "seq_len", "1.5"], "python -m longgen_core.experiments "
         "miniature: error: seq_len must be an int or None, got 1.5 (float)"),
        (runner.main, ["--out", "runs/summary.json"], "python -m longgen_core.runner: error: argument --out: "
         "'runs/summary.json' names a file; this option names the folder to write into (created if missing)"),
        (models_cli.main, ["setpu"], "python -m longgen_core.models: error: argument command: invalid choice: "
         "'setpu' (choose from 'setup')"),
        (report.main, ["--check", "--write"], "python -m longgen_core.report: error: argument --write: not allowed "
         "with argument --check"),
        (versus.main, ["--root", "x", "--package", "y", "--out", "z/"], "python -m longgen_core.bench.versus: "
         "error: argument --out: 'z/' is a folder; this option names the .json file to write"),
    ]


@pytest.mark.parametrize("case", range(17))
def test_a_bad_argument_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, case):
    cases = bad_arguments(tmp_path)
    assert len(cases) == 17  # the parametrize range follows the list
    main, argv, line = cases[case]
    for module, name in ((train_cli, "train"), (bench_training, "measure"), (miniature, "run_miniature"),
                         (extension, "run"), (runner, "run_notebooks"), (models_cli, "setup_smollm2")):
        monkeypatch.setattr(module, name, never)
    assert exit_code(main, argv) == 2
    assert capsys.readouterr().err == line + "\n"


@pytest.mark.parametrize("argv", [["model", "--device", "cpu"], ["generate", "--device", "cpu"]])
def test_bench_reports_a_bad_value_found_deep_inside_in_one_line(monkeypatch, capsys, argv):
    def deep(args):
        raise ValueError("layers must be >= 1, got 0")

    monkeypatch.setattr(bench_cli, "run_model", deep)
    monkeypatch.setattr(bench_cli, "run_generate", deep)
    assert exit_code(bench_cli.main, argv) == 2
    assert capsys.readouterr().err == f"python -m longgen_core.bench {argv[0]}: error: layers must be >= 1, got 0\n"


@pytest.mark.parametrize("command,target", [("miniature", "run_miniature"), ("extension", "run")])
def test_experiments_report_a_bad_value_found_deep_inside_in_one_line(monkeypatch, capsys, command, target):
    def deep(*args, **kwargs):
        raise ValueError("heldout folder has no .txt files")

    monkeypatch.setattr(miniature if command == "miniature" else extension, target, deep)
    assert exit_code(experiments_cli.main, [command, "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"python -m longgen_core.experiments {command}: error: heldout folder has no .txt files\n"


def test_experiments_check_set_before_a_unit_starts(monkeypatch, capsys):
    """Before: ``extension --set steps x`` printed "unit hybrid: ... s left" and started the unit."""
    monkeypatch.setattr(extension, "run_unit", never)
    assert exit_code(experiments_cli.main, ["extension", "--set", "steps", "x"]) == 2
    assert capsys.readouterr().out == ""


def test_experiments_refusal_counts_the_steps_set_on_the_command_line(no_cuda, monkeypatch, capsys):
    monkeypatch.setattr(miniature, "main_miniature", never)
    assert experiments_cli.main(["miniature", "--preset", "gpu-small", "--set", "steps", "7"]) == 2
    assert "(16,384-token sequences, 7 steps an arm)" in capsys.readouterr().err


@pytest.fixture
def no_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# ---------------------------------------------------------------------- --out: FILE or DIR
def test_out_files_and_folders_reach_the_work_as_paths(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(bench_cli, "run_generate", lambda args: seen.update(out=args.out) or 0)
    assert bench_cli.main(["generate", "--out", str(tmp_path / "g.json"), "--device", "cpu"]) == 0
    assert seen["out"] == tmp_path / "g.json"
    monkeypatch.setattr(miniature, "main_miniature", lambda args, plan: seen.update(out=args.out) or 0)
    assert experiments_cli.main(["miniature", "--out", str(tmp_path / "new")]) == 0  # created later, if missing
    assert seen["out"] == tmp_path / "new"


# ---------------------------------------------------------------------- one VALUE rule
VALUES = ["8", "1e-4", "true", "True", "null", "None", "[1, 2]", "(1, 2)", "kjv", '"quoted"']


@pytest.mark.parametrize("text", VALUES)
def test_set_and_p_read_a_value_alike(tmp_path, monkeypatch, text):
    """train --set, experiments --set and runner -p hand the work the same value for the same text."""
    from test_runner import make_notebook

    seen = {}
    monkeypatch.setattr(train_options, "get_preset", lambda preset, **overrides: None)  # any field, any value
    monkeypatch.setattr(train_cli, "train", lambda *args, **overrides: seen.update(train=overrides["x"]) or started())
    with pytest.raises(Started):
        train_cli.main(["--set", "x", text])
    monkeypatch.setattr(miniature, "checked_plan", lambda preset, heldout=None, **overrides: seen.update(
        experiments=overrides["x"]) or miniature.PLANS["cpu-tiny"])
    monkeypatch.setattr(miniature, "main_miniature", started)
    with pytest.raises(Started):
        experiments_cli.main(["miniature", "--set", "x", text])
    nb = make_notebook(tmp_path / "01_a.ipynb", ["print(X)"], parameters="X = 1")
    monkeypatch.setattr(runner, "run_notebooks", lambda nbs, out, preset, overrides, timeout: seen.update(
        runner=overrides["X"]) or [{"status": "ok"}])
    assert runner.main(["--out", str(tmp_path / "o"), "-p", "X", text, str(nb)]) == 0
    assert seen == {"train": parse_value(text), "experiments": parse_value(text), "runner": parse_value(text)}


COMMAND_MODULES = ["bench/cli.py", "bench/training.py", "bench/versus.py", "train/cli.py", "train/options.py",
                   "experiments/cli.py", "experiments/miniature.py", "experiments/extension.py", "models/cli.py",
                   "report.py", "runner.py", "cli.py"]


@pytest.mark.parametrize("path", COMMAND_MODULES)
def test_no_command_reads_a_value_its_own_way(path):
    """Values come from longgen_core.cli_values (parse_value and the argparse types), not a local
    json.loads / literal_eval of an argument or a `[int(x) for x in args.n.split(",")]`."""
    source = (ROOT / "longgen_core" / path).read_text()
    assert not re.search(r"literal_eval|json\.loads\(\s*(args|value|text)|args\.\w+\.split\(", source)


# ---------------------------------------------------------------------- train measure, a real subcommand
def test_train_measure_is_a_subcommand_after_training_options_too(monkeypatch):
    """argv sniffing took `measure` only as the first word; argparse takes it after options."""
    seen = {}
    monkeypatch.setattr(train_cli, "train", never)
    monkeypatch.setattr(bench_training, "measure", lambda preset, *args, **kwargs: seen.update(preset=preset) or {})
    monkeypatch.setattr(bench_training, "results_table", lambda results: "")
    assert train_cli.main(["--no-progress", "measure", "--preset", "cpu-tiny"]) == 0
    assert seen == {"preset": "cpu-tiny"}


def test_train_without_a_subcommand_trains(monkeypatch):
    seen = {}
    monkeypatch.setattr(bench_training, "measure", never)
    monkeypatch.setattr(train_cli, "train", lambda preset, attention, run_dir, **kwargs: seen.update(
        preset=preset, attention=attention) or started())
    with pytest.raises(Started):
        train_cli.main(["--preset", "cpu-tiny", "--attention", "full"])
    assert seen == {"preset": "cpu-tiny", "attention": "full"}


# ---------------------------------------------------------------------- the longgen entry point
def test_longgen_help_lists_every_subcommand(capsys):
    assert exit_code(longgen.main, ["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("bench", "train", "experiments", "models", "report", "notebooks"):
        assert re.search(rf"^\s+{name}\b", out, re.M), name


def test_longgen_models_help_exits_0(capsys):
    assert exit_code(longgen.main, ["models", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: longgen models")


@pytest.mark.parametrize("argv,line", [
    (["nope"], "longgen: error: argument COMMAND: invalid choice: 'nope' (choose from 'bench', 'train', "
               "'experiments', 'models', 'report', 'notebooks')"),
    ([], "longgen: error: the following arguments are required: COMMAND")])
def test_longgen_unknown_or_missing_subcommand_exits_2(capsys, argv, line):
    assert exit_code(longgen.main, argv) == 2
    assert capsys.readouterr().err == line + "\n"


@pytest.mark.parametrize("name", list(longgen.COMMANDS))
def test_longgen_runs_the_main_of_the_python_m_form(monkeypatch, name):
    module = importlib.import_module(longgen.COMMANDS[name][0])
    calls = []
    monkeypatch.setattr(module, "main", lambda argv, prog: calls.append((argv, prog)) or 0)
    assert longgen.main([name, "--x", "1"]) == 0
    assert calls == [(["--x", "1"], f"longgen {name}")]
    package = ROOT / longgen.COMMANDS[name][0].replace(".", "/")
    if package.name == "cli":  # a package whose __main__ runs the same main
        assert "from .cli import main" in (package.parent / "__main__.py").read_text()
    else:  # a module run with python -m
        assert 'if __name__ == "__main__":\n    sys.exit(main())' in package.with_suffix(".py").read_text()


def test_pyproject_declares_the_longgen_script():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"longgen": "longgen_core.cli:main"}
