"""Finetuning loop: chunked loss, the cpu-tiny preset, exact resume, crash-safe checkpoints,
bad inputs, the command line and the full-vs-hybrid measurement (on the CPU)."""

import json

import pytest
import torch

from longgen_core.train import checkpoint as ckpt
from longgen_core.train import cli as train_cli
from longgen_core.train import loop as tr
from longgen_core.data.stream import TrainingStream
from longgen_core.models.convert import load_longgen
from longgen_core.train.loss import IGNORE_INDEX, CausalLMLoss, chunked_lm_loss
from longgen_core.models.base import tiny_llama
from longgen_core.bench.training import load_results, measure, results_table

# A SmolLM2-shaped model shrunk to hidden 64 and 4 layers, random weights, 128-token sequences of
# Python's documentation mixed half and half with retrieval samples: ~0.1 s per step.
MICRO = dict(random_init=True, num_layers=4, seq_len=128, corpus="pydoc", steps=6, warmup_steps=2, lr=2e-3,
             trainable="all", synthetic_ratio=0.5, checkpoint_every=3, keep_checkpoints=2, loss_chunk=48,
             gradient_checkpointing=True,
             pattern={"kind": "sink_window", "sink_tokens": 4, "window_tokens": 16},
             model_overrides=(("hidden_size", 64), ("head_dim", 16), ("num_attention_heads", 4),
                              ("num_key_value_heads", 2), ("intermediate_size", 128)))


def run(run_dir, attention="hybrid", **kwargs):
    """The MICRO preset with preset-field ``kwargs`` on top; other ``kwargs`` go to train()."""
    fields = {k: v for k, v in kwargs.items() if k in tr.Preset.__dataclass_fields__}
    flags = {k: v for k, v in kwargs.items() if k not in fields}
    return tr.train("cpu-tiny", attention, run_dir, progress=False, **flags, **{**MICRO, **fields})


# ---------------------------------------------------------------------- loss
@pytest.mark.parametrize("chunk", [7, 1000])
def test_chunked_loss_equals_plain_loss_and_gradients(chunk):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 512, (2, 40), generator=gen)
    labels = ids.clone()
    labels[1, :25] = IGNORE_INDEX  # the second sequence is scored on its tail only (like a task sample)
    lm_a, lm_b = tiny_llama(seed=3).train(), tiny_llama(seed=3).train()
    chunked = CausalLMLoss(lm_a, chunk)(ids, labels)
    logits = lm_b(ids).logits[:, :-1]
    plain = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels[:, 1:],
                                              ignore_index=IGNORE_INDEX, reduction="none")
    expected = plain.sum(1) / (labels[:, 1:] != IGNORE_INDEX).sum(1)
    assert torch.allclose(chunked, expected, atol=1e-5)
    chunked.sum().backward()
    expected.sum().backward()
    for (name, a), (_, b) in zip(lm_a.named_parameters(), lm_b.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5), name


def test_chunked_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match="hidden must be"):
        chunked_lm_loss(torch.zeros(2, 5), torch.nn.Linear(5, 3), torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk"):
        chunked_lm_loss(torch.zeros(1, 4, 5), torch.nn.Linear(5, 3), torch.zeros(1, 4, dtype=torch.long),
                        chunk=0)


# ---------------------------------------------------------------------- training
def test_cpu_tiny_lowers_the_loss(tmp_path):
    result = tr.train("cpu-tiny", "hybrid", tmp_path, steps=12, checkpoints=False, save_final=False,
                      progress=False)
    summary = tr.loss_summary(result.log)
    assert result.info["layer_map"] == "ssFFss" and result.info["rope_theta"] == 1.2e6
    assert summary["went down"], summary
    assert summary["last 5 mean"] < summary["first 5 mean"] - 1.0
    records = tr.read_log(tmp_path)
    assert [r["step"] for r in records] == list(range(1, 13))
    assert {"loss", "lr", "tokens", "tokens_per_s", "elapsed_s"} <= set(records[0])
    assert records[-1]["tokens"] == 12 * 256
    assert (tmp_path / "loss.png").stat().st_size > 1000


def test_run_writes_log_checkpoints_and_a_reloadable_final_model(straight):
    log = straight.log
    assert straight.finished and [r["step"] for r in log] == list(range(1, 7))
    assert sum(r["synthetic"] for r in log) > 0 and any(r["task_loss"] is not None for r in log)
    assert log[0]["lr"] < log[1]["lr"] and log[-1]["lr"] < log[1]["lr"]  # warm-up, then cosine decay
    names = [p.name for p in ckpt.list_checkpoints(straight.run_dir / "checkpoints")]
    assert names == ["step-0000003", "step-0000006"]
    state = json.loads((straight.run_dir / "checkpoints" / "step-0000006" / ckpt.STATE_FILE).read_text())
    assert state["step"] == 6 and state["data_position"] == 6 and state["tokens"] == 6 * 128
    assert (straight.run_dir / "checkpoints" / "step-0000006" / "model.safetensors").exists()
    reloaded = load_longgen(straight.run_dir / "final")
    ids = torch.randint(0, 49152, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, straight.model.eval()(ids).logits, atol=1e-5)
    assert reloaded.config.rope_parameters["rope_theta"] == straight.info["rope_theta"]


def test_resume_reproduces_the_uninterrupted_losses(straight, tmp_path, monkeypatch):
    interrupted = run(tmp_path, stop_after=4)  # checkpoint at 3, step 4 lost in the "crash"
    assert not interrupted.finished and [r["step"] for r in interrupted.log] == [1, 2, 3, 4]
    data_state = json.loads((tmp_path / "checkpoints" / "step-0000003" / ckpt.DATA_STATE_FILE).read_text())
    assert data_state["position"] == 3 and data_state["corpus"]["source"] == "pydoc"

    def reread(self, position):
        raise AssertionError("the resume read the consumed corpus again (TrainingStream.seek)")

    monkeypatch.setattr(TrainingStream, "seek", reread)  # the data state puts the stream in place
    resumed = run(tmp_path)
    assert resumed.resumed_from == 3 and resumed.finished
    assert [r["step"] for r in resumed.log] == list(range(1, 7))  # the lost step's line was replaced
    for a, b in zip(straight.log, resumed.log):
        assert a["loss"] == b["loss"] and a["lr"] == b["lr"] and a["synthetic"] == b["synthetic"], (a, b)


def test_a_time_budget_stops_with_a_checkpoint_and_the_next_call_continues(straight, tmp_path):
    first = run(tmp_path, time_budget_s=0.0)  # out of time after the first step
    assert not first.finished and [r["step"] for r in first.log] == [1]
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")] == ["step-0000001"]
    second = run(tmp_path, time_budget_s=0.0)
    assert second.resumed_from == 1 and [r["step"] for r in second.log] == [1, 2]
    rest = run(tmp_path)
    assert rest.resumed_from == 2 and rest.finished
    for a, b in zip(straight.log, rest.log):
        assert a["loss"] == b["loss"] and a["grad_norm"] == b["grad_norm"], (a, b)


def test_all_sparse_has_no_full_layer(tmp_path):
    result = run(tmp_path, "all_sparse", steps=1, checkpoints=False, save_final=False)
    assert result.info["layer_map"] == "ssss" and result.info["full_layers"] == []


def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_one(straight, tmp_path, monkeypatch):
    real = ckpt.write_json_atomic

    def crash(path, obj):  # model, optimizer and RNG files are written; the state file is not
        if isinstance(obj, dict) and obj.get("step") == 6:
            raise OSError(28, "No space left on device (simulated)")
        return real(path, obj)

    monkeypatch.setattr(ckpt, "write_json_atomic", crash)
    with pytest.raises(ckpt.CheckpointWriteError, match="step-0000006 could not be written .*simulated.*"
                                                        "last good checkpoint is step-0000003"):
        run(tmp_path)
    root = tmp_path / "checkpoints"
    assert not list(root.glob(".tmp-*"))  # removed at once: a full disk must not stay full
    assert ckpt.latest_checkpoint(root).name == "step-0000003"
    monkeypatch.setattr(ckpt, "write_json_atomic", real)
    resumed = run(tmp_path)
    assert resumed.resumed_from == 3
    assert [r["loss"] for r in resumed.log] == [r["loss"] for r in straight.log]


def test_gradient_accumulation_and_checkpointing_do_not_change_the_math(tmp_path):
    common = dict(steps=2, checkpoints=False, save_final=False, synthetic_ratio=0.0)
    one = run(tmp_path / "a", batch_size=2, grad_accum=1, gradient_checkpointing=False, **common)
    two = run(tmp_path / "b", batch_size=1, grad_accum=2, gradient_checkpointing=True, **common)
    for a, b in zip(one.log, two.log):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["tokens"] == b["tokens"] == a["step"] * 2 * 128


def test_full_attention_baseline_gets_the_same_rope_change(tmp_path):
    preset = tr.get_preset("cpu-tiny", **MICRO)
    full, full_info = tr.build_model(preset, "full")
    hybrid, hybrid_info = tr.build_model(preset, "hybrid")
    assert full_info["rope_theta"] == hybrid_info["rope_theta"] == 1.2e6
    assert full_info["layer_map"] == "FFFF" and hybrid_info["layer_map"] == "sFss"
    assert full.config.max_position_embeddings == hybrid.config.max_position_embeddings == 32768
    assert torch.equal(full.model.rotary_emb.inv_freq, hybrid.model.rotary_emb.inv_freq)
    ids = torch.randint(0, 49152, (1, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # same weights; equal while every query still sees its whole prefix
        a, b = full.eval()(ids).logits, hybrid.eval()(ids).logits
    assert torch.allclose(a[:, :20], b[:, :20], atol=1e-4) and not torch.allclose(a, b, atol=1e-3)


def test_freezing_trains_only_what_was_asked():
    model = tiny_llama()
    n_attention = tr.set_trainable(model, "attention")
    assert n_attention == sum(p.numel() for n, p in model.named_parameters() if ".self_attn." in n)
    assert not model.model.embed_tokens.weight.requires_grad
    tr.set_trainable(model, "layers")
    assert model.model.norm.weight.requires_grad and not model.lm_head.weight.requires_grad
    with pytest.raises(ValueError, match="trainable"):
        tr.set_trainable(model, "everything")


def test_warmup_cosine_schedule():
    factor = tr.warmup_cosine(steps=5, warmup=2, min_ratio=0.1)
    assert [round(factor(i), 3) for i in range(5)] == [0.5, 1.0, 1.0, 0.55, 0.1]


# ---------------------------------------------------------------------- bad input
def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'gpu-huge'"):
        tr.train("gpu-huge", run_dir=tmp_path)
    with pytest.raises(ValueError, match="attention must be one of"):
        tr.train("cpu-tiny", "sparse", tmp_path)
    with pytest.raises(ValueError, match="beyond the RoPE-extended range"):
        tr.train("cpu-tiny", "hybrid", tmp_path, seq_len=65536)
    small = tmp_path / "small.txt"
    small.write_text("Only a few words.")
    with pytest.raises(ValueError, match="too small for one packed sequence"):
        run(tmp_path / "run", corpus=str(small))
    assert not (tmp_path / "run" / "checkpoints").exists()  # failed before any training


def test_resuming_with_another_configuration_is_refused(straight):
    with pytest.raises(ValueError, match="another configuration"):
        run(straight.run_dir, lr=1e-2)


# ---------------------------------------------------------------------- command line and measurement
def test_command_line_trains_and_rejects_unknown_presets(tmp_path, capsys):
    args = ["--preset", "cpu-tiny", "--random-init", "--corpus", "pydoc", "--steps", "2", "--seq-len", "128",
            "--run-dir", str(tmp_path), "--no-progress", "--set", "num_layers", "2",
            "--set", "model_overrides", json.dumps([list(kv) for kv in MICRO["model_overrides"]]),
            "--set", "pattern", json.dumps(MICRO["pattern"]), "--set", "warmup_steps", "1"]
    assert train_cli.main(args) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["steps"] == "1..2" and (tmp_path / "final" / "config.json").exists()
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main(["--preset", "nope"])
    assert exit_info.value.code == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err


def test_the_progress_bar_redraws_at_its_interval_not_every_step(tmp_path, capsys, monkeypatch):
    # headless runs (the notebook runner) set TQDM_MININTERVAL: a stored notebook then holds a few bar
    # lines, not one per step (a GPU batch run once stored ~200 for notebook 04)
    monkeypatch.setenv("TQDM_MININTERVAL", "1000")
    tr.train("cpu-tiny", "hybrid", tmp_path / "run", progress=True, **MICRO)
    draws = capsys.readouterr().err.count("cpu-tiny hybrid")
    assert 1 <= draws <= 3, draws  # the first draw, then the last at close(); six steps between


def test_measure_records_both_runs(tmp_path):
    out = tmp_path / "train_micro.json"
    results = measure("cpu-tiny", untimed_steps=1, out=out, progress=False, **{**MICRO, "steps": 3})
    saved = load_results(out)
    assert saved["runs"].keys() == {"full", "hybrid"} and saved["steps"] == 3
    assert saved["runs"]["full"]["layer_map"] == "FFFF" and saved["runs"]["hybrid"]["layer_map"] == "sFss"
    assert len(saved["runs"]["hybrid"]["loss"]) == 3 and saved["runs"]["full"]["timed_steps"] == 2
    assert saved["speedup"] == pytest.approx(saved["runs"]["hybrid"]["tokens_per_s"]
                                             / saved["runs"]["full"]["tokens_per_s"])
    assert out.with_suffix(".png").exists()
    table = results_table(results)
    assert "hybrid / full tokens/s" in table and "sdpa-mask" in table


def test_bf16_autocast_reaches_the_sparse_attention_in_bf16(monkeypatch):
    """On the GPU the Triton kernels need bf16 queries; Hugging Face's RoPE would promote them to
    fp32 under autocast unless the residual stream starts in bf16 (checked here with CPU autocast)."""
    from longgen_core.models import attention as hf_attention

    seen = []

    def spy(backend, query, reindex):
        seen.append(query.dtype)
        return None  # keep the SDPA path on the CPU

    monkeypatch.setattr(hf_attention, "kernel_ops", spy)
    model, _ = tr.build_model(tr.get_preset("cpu-tiny", **MICRO), "hybrid")
    loss = CausalLMLoss(model, 32)
    ids = torch.randint(0, 49152, (1, 64), generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss(ids, ids)
        assert set(seen) == {torch.float32}  # the problem
        seen.clear()
        tr.compute_in_autocast_dtype(model)
        per_seq = loss(ids, ids)
    assert set(seen) == {torch.bfloat16} and len(seen) == 3  # the three sparse layers
    assert per_seq.dtype == torch.float32 and torch.isfinite(per_seq).all()


def test_one_process_trains_a_preset_after_one_of_another_precision(tmp_path):
    """accelerate keeps one state per process: a bf16 run before an fp32 one (notebook 04 on a GPU
    trains cpu-tiny and then the bf16 128K arm) must not refuse the second run."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # earlier tests of this process left an fp32 state
    Accelerator(mixed_precision="bf16", cpu=True)  # what an earlier bf16 run leaves behind
    assert AcceleratorState().mixed_precision == "bf16"
    result = run(tmp_path, steps=2, checkpoints=False, save_final=False)
    assert result.finished and len(result.log) == 2
    assert AcceleratorState().mixed_precision == "no"
