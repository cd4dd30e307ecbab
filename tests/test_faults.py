"""Fault injection on training runs (CPU, the micro cpu-tiny preset of test_train): crafted pickles,
folders that are not runs, torn logs, full disks, flipped bytes, damaged JSON. Each case checks
what a hostile or unlucky user would hit: nothing is executed, nothing is silently lost, the
message names the file, and a resume after the fault gives the losses of an uninterrupted run."""

import errno
import pickle

import pytest

from longgen_core.manifest import IntegrityError
from longgen_core.train import checkpoint as ckpt
from longgen_core.train import loop as tr
from test_train import run, straight  # noqa: F401 -- straight: the uninterrupted 6-step micro run


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
    straight.model.save_pretrained(tmp_path)
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


def test_a_full_disk_stops_with_one_line_and_the_run_resumes(straight, tmp_path, monkeypatch):
    real = ckpt.save_file

    def full(tensors, filename, *args, **kwargs):
        if "step-0000006" in str(filename):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save_file", full)
    with pytest.raises(ckpt.CheckpointWriteError) as info:
        run(tmp_path)
    message = str(info.value)
    assert "\n" not in message and "No space left on device" in message and "step-0000003" in message
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    monkeypatch.setattr(ckpt, "save_file", real)
    resumed = run(tmp_path)
    assert resumed.resumed_from == 3 and losses(resumed) == losses(straight)


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


def test_a_damaged_json_file_is_named():
    from longgen_core.jsonio import read_json

    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / "trainer_state.json"
    path.write_text('{"step": 3,')
    with pytest.raises(ValueError, match="trainer_state.json is not valid JSON"):
        read_json(path)
