"""Command lines refuse bad input before any work (issue #19, items 8 and 9): GPU-scale commands
without CUDA, notebook parameters no notebook declares, unknown presets, mistyped ``--set`` values
and missing model folders. CPU only and fast: CUDA is patched in or out, and the work a command
would start is replaced by a stand-in that fails the test (refused) or stops it (let through)."""

import pytest
import torch

from longgen_core import runner
from longgen_core.bench import cli as bench_cli
from longgen_core.bench import training as bench_training
from longgen_core.experiments import cli as experiments_cli
from longgen_core.experiments import extension, miniature
from longgen_core.train import cli as train_cli
from longgen_core.train.presets import get_preset
from test_runner import make_notebook


class Started(Exception):
    """Raised by a stand-in for the real work: the command got past its checks."""


def started(*args, **kwargs):
    raise Started


def never(*args, **kwargs):
    pytest.fail("the command started its work despite a bad input")


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


# ---------------------------------------------------------------------- GPU-scale without CUDA
@pytest.mark.parametrize("argv,words", [
    (["model"], "time a Llama-2-7B-shaped model at N = 32768,65536,131072"),
    (["generate"], "run SmolLM2 generate() from 32768,131072-token prompts")])
def test_bench_refuses_a_cpu_it_was_not_given(no_cuda, monkeypatch, capsys, argv, words):
    monkeypatch.setattr(bench_cli, "run_model", never)
    monkeypatch.setattr(bench_cli, "run_generate", never)
    assert bench_cli.main(argv) == 2
    line = capsys.readouterr().err.strip()
    assert line == (f"bench {argv[0]}: no CUDA GPU is visible; refusing to {words} on the CPU (hours at this "
                    f"scale); pass --device cpu to run it there anyway")


@pytest.mark.parametrize("command", ["model", "generate"])
def test_bench_refuses_device_cuda_without_a_gpu(no_cuda, monkeypatch, capsys, command):
    monkeypatch.setattr(bench_cli, "run_model", never)
    monkeypatch.setattr(bench_cli, "run_generate", never)
    assert bench_cli.main([command, "--device", "cuda"]) == 2
    assert "pass --device cpu" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["model", "generate"])
def test_bench_device_cpu_passes_the_check(no_cuda, monkeypatch, command):
    monkeypatch.setattr(bench_cli, "run_model", started)
    monkeypatch.setattr(bench_cli, "run_generate", started)
    with pytest.raises(Started):
        bench_cli.main([command, "--device", "cpu"])


@pytest.mark.parametrize("command", ["model", "generate", "kernels"])
def test_bench_with_a_gpu_starts_without_a_device_flag(cuda, monkeypatch, command):
    for name in ("run_model", "run_generate", "run_kernels"):
        monkeypatch.setattr(bench_cli, name, started)
    with pytest.raises(Started):
        bench_cli.main([command])


def test_bench_kernels_has_no_cpu_mode(no_cuda, monkeypatch, capsys):
    monkeypatch.setattr(bench_cli, "run_kernels", never)
    assert bench_cli.main(["kernels", "--n", "16384"]) == 2
    assert capsys.readouterr().err.strip() == ("bench kernels: no CUDA GPU is visible; it needs one to time the "
                                               "Triton kernels at N = 16384 (it has no CPU mode)")


@pytest.mark.parametrize("argv,command,words", [
    (["--preset", "gpu-small"], "train", "train preset gpu-small (32,768-token sequences, 100 steps)"),
    (["--preset", "paper-7b-128k"], "train", "train preset paper-7b-128k (131,072-token sequences, 1200 steps)"),
    (["--preset", "cpu-tiny", "--device", "cuda"], "train", "train preset cpu-tiny (256-token sequences, 40 steps)"),
    (["measure"], "train measure",
     "time full and hybrid training of preset gpu-small (32,768-token sequences, 100 steps)")])
def test_train_refuses_a_gpu_preset_on_a_cpu(no_cuda, monkeypatch, capsys, argv, command, words):
    monkeypatch.setattr(train_cli, "train", never)
    monkeypatch.setattr(bench_training, "measure", never)
    assert train_cli.main(argv) == 2
    assert capsys.readouterr().err.strip() == (f"{command}: no CUDA GPU is visible; refusing to {words} on the "
                                               f"CPU (hours at this scale); pass --device cpu to run it there anyway")


@pytest.mark.parametrize("argv", [["--preset", "gpu-small", "--device", "cpu"], ["measure", "--device", "cpu"],
                                  ["--preset", "cpu-tiny"]])
def test_train_device_cpu_or_a_cpu_preset_passes_the_check(no_cuda, monkeypatch, argv):
    monkeypatch.setattr(train_cli, "train", started)
    monkeypatch.setattr(bench_training, "measure", started)
    with pytest.raises(Started):
        train_cli.main(argv)


@pytest.mark.parametrize("argv,words", [
    (["miniature", "--preset", "gpu-small"],
     "train and score the gpu-small plan (16,384-token sequences, 300 steps an arm)"),
    (["extension", "--plan", "gpu-128k"],
     "train and score the gpu-128k plan (131,072-token sequences, 60 steps an arm)")])
def test_experiments_refuse_a_gpu_plan_on_a_cpu(no_cuda, monkeypatch, capsys, argv, words):
    monkeypatch.setattr(miniature, "main_miniature", never)
    monkeypatch.setattr(extension, "main_extension", never)
    assert experiments_cli.main(argv) == 2
    assert capsys.readouterr().err.strip() == (f"experiments {argv[0]}: no CUDA GPU is visible; refusing to "
                                               f"{words} on the CPU (hours at this scale); pass --device cpu to "
                                               f"run it there anyway")


@pytest.mark.parametrize("argv", [["miniature", "--preset", "gpu-small", "--device", "cpu"],
                                  ["extension", "--plan", "gpu-128k", "--device", "cpu"],
                                  ["extension", "--plan", "gpu-128k", "--merge-only"],  # reads JSON only
                                  ["miniature"]])  # cpu-tiny
def test_experiments_device_cpu_merging_or_a_cpu_plan_pass_the_check(no_cuda, monkeypatch, argv):
    monkeypatch.setattr(miniature, "main_miniature", started)
    monkeypatch.setattr(extension, "main_extension", started)
    with pytest.raises(Started):
        experiments_cli.main(argv)


# ---------------------------------------------------------------------- train --set and --model
@pytest.mark.parametrize("argv,lines", [
    (["--set", "seed", "1.5"], ["seed must be an int, got 1.5 (float)"]),
    (["--set", "lr", '"abc"'], ["lr must be a number, got 'abc' (str)"]),
    (["--set", "lr", '"abc"', "--set", "seed", "1.5"],
     ["lr must be a number, got 'abc' (str)", "seed must be an int, got 1.5 (float)"]),
    (["--set", "full_layers", "5"], ["full_layers must be a list or None, got 5 (int)"]),
    (["--steps", "3", "--set", "gradient_checkpointing", "1"],
     ["gradient_checkpointing must be true or false, got 1 (int)"]),
    (["--model", "/nonexistent"], ["model '/nonexistent': no such directory; give 'smollm2', 'tiny', a folder "
                                   "written by save_pretrained, or a hub id such as meta-llama/Llama-2-7b-hf"]),
    (["--tokenizer", "./nope"], ["tokenizer './nope': no such directory; give 'smollm2', 'tiny', a folder "
                                 "written by save_pretrained, or a hub id such as meta-llama/Llama-2-7b-hf"])])
@pytest.mark.parametrize("command", [[], ["measure", "--preset", "cpu-tiny"]])
def test_train_names_each_bad_field_on_one_line(monkeypatch, capsys, command, argv, lines):
    monkeypatch.setattr(train_cli, "train", never)
    monkeypatch.setattr(bench_training, "measure", never)
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main(command + argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-len(lines):] == [err.strip().splitlines()[-len(lines)].split(": error: ")[0]
                                                      + ": error: " + lines[0], *lines[1:]]


def test_presets_accept_what_the_command_line_writes():
    """JSON lists for tuples, whole numbers for floats; bools are never numbers."""
    assert get_preset("cpu-tiny", full_layers=[1, 2], rope_theta=5000000).full_layers == (1, 2)
    with pytest.raises(ValueError, match=r"^steps must be an int, got True \(bool\)$"):
        get_preset("cpu-tiny", steps=True)


# ---------------------------------------------------------------------- the notebook runner
def notebooks(tmp_path):
    return [make_notebook(tmp_path / "01_a.ipynb", ["print(PRESET, STEPS)"]),
            make_notebook(tmp_path / "02_b.ipynb", ["print(N)"], parameters="N = 3")]


def runner_error(monkeypatch, capsys, argv) -> list[str]:
    """The error lines of ``runner.main(argv)``, after checking it exits 2 before any notebook runs."""
    monkeypatch.setattr(runner, "run_notebooks", never)
    with pytest.raises(SystemExit) as exit_info:
        runner.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    return [line.split(": error: ", 1)[-1] for line in err[next(i for i, s in enumerate(err) if ": error: " in s):]]


def test_runner_refuses_a_parameter_no_notebook_declares(tmp_path, monkeypatch, capsys):
    paths = [str(p) for p in notebooks(tmp_path)]
    lines = runner_error(monkeypatch, capsys, ["--out", str(tmp_path / "o"), "-p", "TYPO", "5", *paths])
    assert lines == ["-p TYPO: no selected notebook declares it; they declare ['N', 'PRESET', 'STEPS']"]


def test_runner_refuses_an_unknown_preset_or_one_no_notebook_takes(tmp_path, monkeypatch, capsys):
    paths = [str(p) for p in notebooks(tmp_path)]
    lines = runner_error(monkeypatch, capsys, ["--out", str(tmp_path / "o"), "--preset", "nope", *paths])
    assert lines == ["--preset nope: unknown preset; presets are ['cpu-tiny', 'gpu-small', 'paper-7b-128k']"]
    lines = runner_error(monkeypatch, capsys, ["--out", str(tmp_path / "o"), "--preset", "gpu-small", paths[1]])
    assert lines == ["--preset gpu-small: no selected notebook declares PRESET"]


def test_runner_passes_a_name_one_selected_notebook_declares(tmp_path, monkeypatch):
    first, second = notebooks(tmp_path)
    seen = {}
    monkeypatch.setattr(runner, "run_notebooks", lambda nbs, out, preset, overrides, timeout: seen.update(
        overrides=overrides, preset=preset) or [{"status": "ok"}] * len(nbs))
    assert runner.main(["--out", str(tmp_path / "o"), "--preset", "gpu-small", "-p", "N", "4",
                        str(first), str(second)]) == 0
    assert seen == {"overrides": {"N": 4}, "preset": "gpu-small"}
    assert runner.parameters_for(first, "gpu-small", {"N": 4}) == {"PRESET": "gpu-small"}  # N dropped here
    assert runner.parameters_for(second, "gpu-small", {"N": 4}) == {"N": 4}  # and PRESET here
