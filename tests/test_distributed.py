"""Two processes (gloo, CPU) train exactly like one: the multi-GPU path of issue #9, checked on the CPU.

The real entry point runs twice on the same items: ``accelerate launch`` with 2 processes and
``grad_accum=2``, then plain ``python -m longgen_core.train`` with 1 process and ``grad_accum=4``
(4 sequences per optimizer step both times). Per-step losses and gradient norms and the final weights
must agree. The test fails if the ranks read the wrong items (other losses), if gradients are not
averaged across processes (other gradient norm, other weights), or if the run silently fell back to
one process.

``accelerate launch --cpu`` starts a single process unless MPI is set up, so the 2-process run uses
accelerate's torchrun launcher (``--multi_gpu``) with ``ACCELERATE_USE_CPU=true``: the Accelerator
then picks ``MULTI_CPU`` with the gloo backend. FSDP cannot be checked this way: accelerate 1.15 turns
it on only with a GPU-type device (``--use_fsdp`` under ``ACCELERATE_USE_CPU`` quietly runs DDP, which
``info.distributed`` in ``config.json`` shows). ~15 s on 2 cores.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from longgen_core.train import loop as tr

ROOT = Path(__file__).resolve().parent.parent
ACCELERATE = [sys.executable, "-m", "accelerate.commands.accelerate_cli"]  # the `accelerate` command

# A 3-layer hybrid (sparse, full, sparse) with hidden 64 and a 512-token vocabulary, random weights,
# random tokens (no tokenizer needed), 64-token sequences, 3 optimizer steps, gradient checkpointing on.
FIELDS = dict(random_init=True, corpus="random", seq_len=64, steps=3, num_layers=3,
              model_overrides=[["vocab_size", 512], ["hidden_size", 64], ["head_dim", 16],
                               ["num_attention_heads", 4], ["num_key_value_heads", 2],
                               ["intermediate_size", 128]],
              pattern={"kind": "sink_window", "sink_tokens": 4, "window_tokens": 16}, trainable="all",
              lr=2e-3, warmup_steps=1, gradient_checkpointing=True, loss_chunk=24, checkpoint_every=0,
              batch_size=1)
TINY = ["--preset", "cpu-tiny", "--attention", "hybrid", "--no-resume", "--no-progress"]
for _name, _value in FIELDS.items():
    TINY += ["--set", _name, json.dumps(_value)]


def _env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env.update(ACCELERATE_USE_CPU="true",  # MULTI_CPU + gloo instead of looking for GPUs
               HF_HOME=str(tmp_path / "hf"),  # no user `accelerate config` file changes the launch
               OMP_NUM_THREADS="1",  # both runs compute with one thread per process
               TRITON_INTERPRET=env.get("TRITON_INTERPRET", "1"))
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo's hostname-based interface lookup is flaky on CI
    return env


def _run(command: list, tmp_path: Path) -> None:
    done = subprocess.run(command, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(command)}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distributed")
    two, one = tmp / "two", tmp / "one"
    _run([*ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
          "-m", "longgen_core.train", *TINY, "--set", "grad_accum", "2", "--run-dir", str(two)], tmp)
    _run([sys.executable, "-m", "longgen_core.train", *TINY, "--set", "grad_accum", "4",
          "--run-dir", str(one)], tmp)
    return two, one


def _log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_two_processes_really_ran_on_gloo(runs):
    two = runs[0]
    two_info, one_info = (json.loads((run / "config.json").read_text())["info"] for run in runs)
    assert (two_info["processes"], two_info["distributed"]) == (2, "MULTI_CPU")  # DDP over gloo
    assert (one_info["processes"], one_info["distributed"]) == (1, "NO")
    states = sorted(p.name for p in (two / "checkpoints" / "step-0000003").glob("rng-*"))
    assert states == ["rng-0.json", "rng-0.safetensors", "rng-1.json", "rng-1.safetensors"]  # one per process


def test_two_processes_give_the_losses_and_gradients_of_one(runs):
    two, one = _log(runs[0]), _log(runs[1])
    assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2, 3]
    for a, b in zip(two, one):
        assert a["tokens"] == b["tokens"] == a["step"] * 4 * 64  # same items per optimizer step
        assert a["lr"] == b["lr"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-6), (a, b)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5), (a, b)
    # The check is not vacuous: the steps differ from each other (the weights moved).
    assert len({round(r["loss"], 4) for r in one}) == 3 and len({round(r["grad_norm"], 4) for r in one}) == 3


def test_two_processes_end_with_the_weights_of_one(runs):
    two, one = (load_file(run / "final" / "model.safetensors") for run in runs)
    assert two.keys() == one.keys() and len(two) > 10
    initial, _ = tr.build_model(tr.get_preset("cpu-tiny", **FIELDS), "hybrid")  # the seeded start
    initial = initial.state_dict()
    moved = 0.0
    for name in one:
        assert torch.allclose(two[name], one[name], rtol=1e-5, atol=1e-6), \
            (name, (two[name] - one[name]).abs().max().item())
        moved = max(moved, (one[name] - initial[name]).abs().max().item())
    assert moved > 1e-3  # training moved the weights far beyond the tolerance
