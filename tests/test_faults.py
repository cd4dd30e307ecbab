"""Fault injection on training runs (CPU, the micro cpu-tiny preset of test_train) and on saved
models (a tiny hybrid): crafted pickles, folders that are not runs, torn logs, full disks, flipped
bytes, removed files, damaged JSON. Each case checks what a hostile or unlucky user would hit:
nothing is executed, nothing is silently lost, the message names the file, a resume after the
fault gives the losses of an uninterrupted run, and a command line says it in one line (exit 1)."""

import errno
import json
import os
import pickle
import re
import shutil
import subprocess
from types import SimpleNamespace

import pytest
import torch
from safetensors import SafetensorError
from transformers import PreTrainedModel

from longgen_core.bench import training as bench_training
from longgen_core.experiments import cli as experiments_cli
from longgen_core.experiments import miniature
from longgen_core.manifest import MANIFEST_FILE, IntegrityError, write_manifest
from longgen_core.models.base import tiny_llama
from longgen_core.models.convert import load_longgen, save_longgen, to_longgen
from longgen_core.patterns import sink_window
from longgen_core.train import checkpoint as ckpt
from longgen_core.train import cli as train_cli
from longgen_core.train import loop as tr
from test_train import run


def losses(result):
    return [r["loss"] for r in result.log]


class _Payload:
    """Unpickling this creates ``path``: proof that a pickle was executed."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_a_crafted_pickle_in_a_checkpoint_is_refused_and_never_executed(tmp_path):
    run(tmp_path, stop_after=4)
    sentinel = tmp_path / "pwned"
    newest = ckpt.latest_checkpoint(tmp_path / "checkpoints")
    (newest / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(_Payload(sentinel)))
    with pytest.raises(ValueError, match="custom_checkpoint_0.pkl is not a file longgen_core checkpoints hold"):
        run(tmp_path)
    assert not sentinel.exists()


def test_no_checkpoint_file_is_a_pickle(straight):
    for folder in ckpt.list_checkpoints(straight.run_dir / "checkpoints"):
        for file in folder.iterdir():
            assert file.suffix in (".json", ".safetensors"), file
            assert not file.read_bytes().startswith(b"\x80"), file  # the pickle protocol's opening byte


def test_a_fresh_start_refuses_a_folder_that_is_not_a_run(straight, tmp_path):
    """The README saves a model to runs/hybrid: --no-resume there must not touch it."""
    save_longgen(straight.model, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ValueError, match="not empty and not a training run"):
        run(tmp_path, resume=False, steps=1)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_fresh_start_moves_the_earlier_run_aside(tmp_path):
    folder = tmp_path / "run"
    first = run(folder, steps=2, checkpoint_every=1)
    again = run(folder, resume=False, steps=2, checkpoint_every=1)
    aside = tmp_path / "run.previous"
    assert losses(again) == losses(first)
    assert [r["loss"] for r in tr.read_log(aside)] == losses(first)
    assert (aside / "final" / "config.json").is_file()


def test_a_torn_last_log_line_is_dropped_with_a_warning(straight, tmp_path):
    run(tmp_path, stop_after=4)
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 3.')  # a kill during the append
    with pytest.warns(UserWarning, match="dropped a torn last line"):
        resumed = run(tmp_path)
    assert resumed.resumed_from == 3
    assert losses(resumed) == losses(straight)


def test_a_damaged_log_line_before_the_last_names_the_file_and_line(tmp_path):
    (tmp_path / "log.jsonl").write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"log.jsonl, line 2, is not JSON"):
        tr.read_log(tmp_path)


# What each writer raises on a full disk: Python's own writes an OSError, safetensors' (which
# save_pretrained uses too) a SafetensorError with this text (seen on a full tmpfs).
FULL_DISK = [OSError(errno.ENOSPC, "No space left on device"),
             SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")]


@pytest.mark.parametrize("error", FULL_DISK, ids=["oserror", "safetensors"])
def test_a_full_disk_stops_with_one_line_and_the_run_resumes(straight, tmp_path, monkeypatch, error):
    real = ckpt.save_file

    def full(tensors, filename, *args, **kwargs):
        if "step-0000006" in str(filename):
            raise error
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save_file", full)
    with pytest.raises(ckpt.CheckpointWriteError) as info:
        run(tmp_path)
    message = str(info.value)
    assert message.endswith(": No space left on device; the last good checkpoint is step-0000003"), message
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    monkeypatch.setattr(ckpt, "save_file", real)
    resumed = run(tmp_path)
    assert resumed.resumed_from == 3 and losses(resumed) == losses(straight)


@pytest.fixture
def small_disk(tmp_path):
    """``resize(mib)``: a real tmpfs of that size at ``tmp_path/disk`` (remounted on later calls),
    returned as the folder; skipped where mounting is not allowed (not root, or a container without
    the capability). Unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mounted = []

    def resize(mib: float):
        options = ("remount," if mounted else "") + f"size={int(mib)}m"
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(disk)], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(options)
        return disk

    yield resize
    if mounted:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_real_full_disk_stops_with_one_line_and_the_run_resumes_once_there_is_room(straight, small_disk):
    one = sum(f.stat().st_size for f in (straight.run_dir / "checkpoints" / "step-0000003").iterdir()) / 2**20
    disk = small_disk(1.5 * one + 1)  # room for the first checkpoint, not the second
    with pytest.raises(ckpt.CheckpointWriteError) as info:
        run(disk)
    message = str(info.value)
    assert message.endswith("No space left on device; the last good checkpoint is step-0000003"), message
    assert not list((disk / "checkpoints").glob(".tmp-*"))  # the disk is not left full
    resumed = run(small_disk(4 * one + 1))
    assert resumed.resumed_from == 3 and losses(resumed) == losses(straight)


@pytest.mark.parametrize("engine", ["FSDP", "DEEPSPEED"])
def test_a_sharded_run_that_would_checkpoint_is_refused_before_any_work(tmp_path, monkeypatch, engine):
    def nothing_may_load(preset):
        raise AssertionError("the run loaded its tokenizer before refusing")

    monkeypatch.setattr(tr, "_accelerator",
                        lambda preset: SimpleNamespace(distributed_type=SimpleNamespace(value=engine)))
    monkeypatch.setattr(tr, "load_tokenizer", nothing_may_load)
    with pytest.raises(ValueError, match=f"checkpoints under {engine} are not supported .*--no-checkpoints"):
        run(tmp_path)
    with pytest.raises(AssertionError, match="loaded its tokenizer"):  # without checkpoints it starts
        run(tmp_path, checkpoints=False)


def test_stale_temporary_folders_are_removed_on_start(tmp_path):
    run(tmp_path, stop_after=4)
    stale = tmp_path / "checkpoints" / ".tmp-step-0000006"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 1000)
    run(tmp_path, stop_after=5)
    assert not stale.exists()


def _flip(path, offset=4096, count=64):
    data = bytearray(path.read_bytes())
    data[offset:offset + count] = bytes(b ^ 0xFF for b in data[offset:offset + count])
    path.write_bytes(bytes(data))


def test_a_corrupted_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    """Steps 1..9 with checkpoints at 3 and 6; bytes flipped in step 6's weights: the resume
    warns, continues from step 3, and ends with the losses of an uninterrupted 9-step run."""
    reference = run(tmp_path / "reference", steps=9)
    folder = tmp_path / "damaged"
    run(folder, steps=9, stop_after=7)
    _flip(folder / "checkpoints" / "step-0000006" / "model.safetensors")
    with caplog.at_level("WARNING", logger=ckpt.__name__):
        resumed = run(folder, steps=9)
    assert "skipping checkpoint step-0000006: model.safetensors in" in caplog.text
    assert resumed.resumed_from == 3
    assert losses(resumed) == losses(reference)


def test_every_checkpoint_damaged_fails_naming_the_file(tmp_path):
    run(tmp_path, stop_after=4)
    state = ckpt.latest_checkpoint(tmp_path / "checkpoints") / ckpt.STATE_FILE
    state.write_text(state.read_text().replace('"step": 3', '"step": 30'))
    with pytest.raises(IntegrityError, match="trainer_state.json in .*step-0000003 does not match its manifest"):
        run(tmp_path)


def test_a_checkpoint_without_a_manifest_is_not_resumed(tmp_path, caplog):
    """What an older version (accelerate's pickles) or a copy cut short leaves: never loaded."""
    run(tmp_path, stop_after=4)
    (ckpt.latest_checkpoint(tmp_path / "checkpoints") / "manifest.json").unlink()
    with caplog.at_level("WARNING", logger=ckpt.__name__):
        result = run(tmp_path, stop_after=1)
    assert result.resumed_from == 0
    assert "skipping step-0000003: no manifest.json" in caplog.text


def test_a_checkpoint_without_a_data_state_resumes_by_reading_the_corpus_to_its_position(straight, tmp_path):
    """Checkpoints written before data_state.json: still resumed, exactly, with a warning."""
    run(tmp_path, stop_after=4)
    newest = ckpt.latest_checkpoint(tmp_path / "checkpoints")
    (newest / ckpt.DATA_STATE_FILE).unlink()
    write_manifest(newest)  # as an older version wrote it
    with pytest.warns(UserWarning, match="step-0000003 has no data_state.json .* reads its first 3 items again"):
        resumed = run(tmp_path)
    assert resumed.resumed_from == 3 and losses(resumed) == losses(straight)


def test_a_data_state_of_another_datasets_version_resumes_by_reading_the_corpus(straight, tmp_path):
    """datasets' state format is its own: after an upgrade the stream finds its place by reading."""
    run(tmp_path, stop_after=4)
    newest = ckpt.latest_checkpoint(tmp_path / "checkpoints")
    path = newest / ckpt.DATA_STATE_FILE
    state = json.loads(path.read_text())
    state["corpus"]["datasets_version"] = "0.0.1"
    path.write_text(json.dumps(state))
    write_manifest(newest)
    with pytest.warns(UserWarning, match="written by datasets 0.0.1.* reads its first 3 items again"):
        resumed = run(tmp_path)
    assert resumed.resumed_from == 3 and losses(resumed) == losses(straight)


def test_a_data_state_at_another_position_than_the_trainer_state_is_refused(tmp_path):
    run(tmp_path, stop_after=4)
    newest = ckpt.latest_checkpoint(tmp_path / "checkpoints")
    path = newest / ckpt.DATA_STATE_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), "position": 5}))
    write_manifest(newest)
    with pytest.raises(ValueError, match="data_state.json is at item 5, trainer_state.json at 3"):
        run(tmp_path)


def test_a_damaged_json_file_is_named():
    from longgen_core.jsonio import read_json

    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / "trainer_state.json"
    path.write_text('{"step": 3,')
    with pytest.raises(ValueError, match="trainer_state.json is not valid JSON"):
        read_json(path)


# ---------------------------------------------------------------------- saved models: the manifest
IDS = torch.randint(3, 500, (1, 50), generator=torch.Generator().manual_seed(0))  # past sink + window (36)


def logits(model):
    with torch.no_grad():
        return model(IDS).logits


@pytest.fixture
def saved(tmp_path):
    """``(model, folder)``: a tiny hybrid written by save_longgen."""
    model = to_longgen(tiny_llama(seed=5), pattern=sink_window(4, 32))
    return model, save_longgen(model, tmp_path / "hybrid")


def test_an_intact_saved_hybrid_loads_with_identical_logits(saved):
    model, folder = saved
    listed = json.loads((folder / MANIFEST_FILE).read_text())["files"]
    assert {"config.json", "model.safetensors"} <= set(listed)
    assert listed["model.safetensors"]["bytes"] == (folder / "model.safetensors").stat().st_size
    assert not folder.with_name("hybrid.tmp").exists()
    assert torch.equal(logits(load_longgen(folder)), logits(model))


@pytest.mark.parametrize("damage,message", [
    (lambda f: _flip(f, offset=f.stat().st_size - 100, count=1), r"\(SHA-256 differs\)"),  # one weight byte
    (lambda f: f.write_bytes(f.read_bytes()[:-8]), r"\(size \d+ bytes, expected \d+\)"),
    (lambda f: f.unlink(), r"is missing \(listed in its manifest\)"),
], ids=["flipped", "truncated", "removed"])
def test_a_damaged_saved_hybrid_fails_naming_the_file(saved, damage, message):
    _, folder = saved
    damage(folder / "model.safetensors")
    with pytest.raises(IntegrityError, match=rf"^model\.safetensors in {re.escape(str(folder))} .*{message}"):
        load_longgen(folder)


def test_a_folder_without_a_manifest_still_loads(tmp_path):
    """Hub snapshots and folders saved by other tools carry no manifest: loaded as before."""
    model = to_longgen(tiny_llama(seed=5), pattern=sink_window(4, 32))
    model.save_pretrained(tmp_path)
    assert not (tmp_path / MANIFEST_FILE).exists()
    assert torch.equal(logits(load_longgen(tmp_path)), logits(model))


def test_save_longgen_replaces_its_own_folder_and_refuses_any_other(saved, tmp_path):
    model, folder = saved
    other = to_longgen(tiny_llama(seed=6), pattern=sink_window(4, 32))
    save_longgen(other, folder)  # a model saved here before: replaced whole
    assert torch.equal(logits(load_longgen(folder)), logits(other))
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an empty folder or a model saved by save_longgen"):
        save_longgen(model, foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("error", FULL_DISK, ids=["oserror", "safetensors"])
def test_a_full_disk_while_writing_final_stops_with_one_line_and_the_run_resumes(tmp_path, monkeypatch, error):
    real = PreTrainedModel.save_pretrained

    def full(self, folder, *args, **kwargs):
        real(self, folder, *args, **kwargs)
        raise error

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    with pytest.raises(ckpt.CheckpointWriteError) as info:
        run(tmp_path)
    message = str(info.value)
    assert "\n" not in message and "final model could not be written" in message
    assert "No space left on device" in message and "step-0000006" in message
    assert not (tmp_path / "final").exists() and not (tmp_path / "final.tmp").exists()
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", real)
    resumed = run(tmp_path)
    assert resumed.resumed_from == 6 and (tmp_path / "final" / MANIFEST_FILE).is_file()
    assert torch.equal(logits(load_longgen(tmp_path / "final")), logits(resumed.model.eval()))


# ---------------------------------------------------------------------- command lines: one line, exit 1
FAILURES = [ckpt.CheckpointWriteError("checkpoint step-0000006 could not be written to runs/x/checkpoints: "
                                      "No space left on device; the last good checkpoint is step-0000003"),
            IntegrityError("model.safetensors in runs/x/final does not match its manifest (SHA-256 differs)")]


def _raising(error):
    def work(*args, **kwargs):
        raise error
    return work


@pytest.mark.parametrize("error", FAILURES, ids=["write", "integrity"])
@pytest.mark.parametrize("command", ["train", "train measure", "experiments miniature"])
def test_a_run_failure_is_one_line_on_stderr_and_exit_1(monkeypatch, capsys, command, error):
    monkeypatch.setattr(train_cli, "train", _raising(error))
    monkeypatch.setattr(bench_training, "measure", _raising(error))
    monkeypatch.setattr(miniature, "main_miniature", _raising(error))
    if command == "experiments miniature":
        code = experiments_cli.main(["miniature"])
    else:
        code = train_cli.main(["measure"] * (command == "train measure") + ["--preset", "cpu-tiny"])
    assert code == 1
    captured = capsys.readouterr()
    assert captured.err == f"python -m longgen_core.{command}: error: {error}\n"
    assert captured.out == ""


def test_no_checkpoints_reaches_the_run(monkeypatch, capsys):
    seen = {}

    def train(*args, **kwargs):
        seen.update(kwargs)
        raise FAILURES[0]

    monkeypatch.setattr(train_cli, "train", train)
    assert train_cli.main(["--preset", "cpu-tiny", "--no-checkpoints"]) == 1
    assert seen["checkpoints"] is False
    assert train_cli.main(["--preset", "cpu-tiny"]) == 1 and seen["checkpoints"] is True


def test_a_bad_input_still_exits_2_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(train_cli, "train", _raising(ValueError("seq_len 9999 is beyond the range")))
    with pytest.raises(SystemExit) as info:
        train_cli.main(["--preset", "cpu-tiny"])
    assert info.value.code == 2
    assert capsys.readouterr().err == "python -m longgen_core.train: error: seq_len 9999 is beyond the range\n"
