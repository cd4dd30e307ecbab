"""Training checkpoints: one directory per step, written atomically, the last K kept.

Layout under a run's ``checkpoints/`` folder::

    step-0000020/
        model.safetensors        weights (accelerate's ``save_state``; FSDP: its sharded format)
        optimizer.bin            AdamW state (torch.save)
        custom_checkpoint_0.pkl  the LR scheduler (registered with accelerate)
        random_states_0.pkl      Python / NumPy / torch (/ CUDA) RNG states, one file per process
        trainer_state.json       step, data position, tokens, elapsed time, RNG fingerprint

A checkpoint is written into ``.tmp-step-0000020/`` and renamed into place with ``os.replace``
only after every file -- ``trainer_state.json`` last -- is complete. A crash while writing
leaves the ``.tmp-*`` folder behind (ignored, removed by the next save) and the previous
checkpoint untouched, so a run loses at most the steps since its last checkpoint.
Multi-process: every process writes its part into the same temporary folder (accelerate decides
who writes what); the main process renames and prunes between barriers.

Example::

    >>> path = save_checkpoint(accelerator, "runs/x/checkpoints", step=20, state={...})  # doctest: +SKIP
    >>> latest_checkpoint("runs/x/checkpoints").name                                    # doctest: +SKIP
    'step-0000020'
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from ..jsonio import read_json, write_json_atomic


class _TiedHeadNote(logging.Filter):
    """Drops accelerate's "Removed shared tensor {'lm_head.weight'}" note: models that tie the
    output head to the embedding (SmolLM2) store it once by design, and the exact reload is
    tested (tests/test_train.py), so the note would only add a warning to every run's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("Removed shared tensor" in message and "lm_head.weight" in message)


logging.getLogger("accelerate.utils.other").addFilter(_TiedHeadNote())

__all__ = ["STATE_FILE", "checkpoint_name", "list_checkpoints", "latest_checkpoint", "save_checkpoint",
           "load_checkpoint"]

STATE_FILE = "trainer_state.json"
_PREFIX, _TMP = "step-", ".tmp-"


def checkpoint_name(step: int) -> str:
    """``step-0000020`` for step 20 (zero-padded so names sort by step)."""
    return f"{_PREFIX}{step:07d}"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root`` (those with a ``trainer_state.json``), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir()
             if p.is_dir() and p.name.startswith(_PREFIX) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX):]))


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under ``root``, or ``None``."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def save_checkpoint(accelerator, root: str | Path, step: int, state: dict, keep: int = 2) -> Path:
    """Save the prepared model/optimizer/registered objects and ``state`` as checkpoint ``step``.

    Every process must call it (accelerate gathers sharded states). Returns the final path. Keeps
    the newest ``keep`` complete checkpoints.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    root = Path(root)
    final, tmp = root / checkpoint_name(step), root / (_TMP + checkpoint_name(step))
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(_TMP + "*"):  # leftovers of an earlier crash
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(tmp / STATE_FILE, {"step": step, **state})  # last: marks the folder complete
        if final.exists():  # the same step saved again (e.g. re-running a finished run)
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: str | Path) -> dict:
    """Restore model, optimizer, registered objects and RNG states from ``path``; return its state."""
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        raise ValueError(f"{path} is not a complete checkpoint (no {STATE_FILE})")
    accelerator.load_state(str(path))
    return read_json(path / STATE_FILE)
