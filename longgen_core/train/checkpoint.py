"""Training checkpoints without pickle: one directory per step, written atomically, verified on
resume, the last K kept.

Layout under a run's ``checkpoints/`` folder (tensors in safetensors, everything else in JSON --
nothing that loading could execute)::

    step-0000020/
        model.safetensors        weights (tied tensors stored once)
        optimizer.safetensors    AdamW moments and step counts, keyed ``state.<param>.<name>``
        optimizer.json           the param groups and which state entries are not tensors
        scheduler.json           the LR scheduler's state_dict
        rng-<rank>.json          Python and NumPy RNG states of each process
        rng-<rank>.safetensors   torch CPU (and CUDA) RNG states of each process
        trainer_state.json       step, data position, tokens, elapsed time, RNG fingerprint
        data_state.json          the training stream's state_dict() (position, corpus pipeline state
                                 and carried tokens): the data resumes without re-reading
        manifest.json            size and SHA-256 of every file above (written last)

A checkpoint is written into ``.tmp-step-0000020/`` and renamed into place with ``os.replace``
only after every file -- ``manifest.json`` last -- is complete. A crash or a full disk while
writing leaves the previous checkpoint untouched; the half-written folder is removed at once when
the error is seen, else by the next start or save. :func:`resume_point` verifies every file
against the manifest and falls back to the previous intact checkpoint with a warning;
:func:`load_checkpoint` refuses a folder holding any file this module does not write (a crafted
``*.pkl`` is never opened).

Multi-process (DDP): every process writes its own RNG files into the temporary folder; the main
process writes the rest and renames. FSDP / DeepSpeed shard the optimizer and are refused.

Example::

    >>> path = save_checkpoint(accelerator, "runs/x/checkpoints", 20, {...}, model, opt, sched)  # doctest: +SKIP
    >>> resume_point("runs/x/checkpoints").name                                                  # doctest: +SKIP
    'step-0000020'
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from ..jsonio import read_json, write_json_atomic
from ..manifest import MANIFEST_FILE, WRITE_ERRORS, IntegrityError, verify_manifest, write_failure, write_manifest

__all__ = ["STATE_FILE", "DATA_STATE_FILE", "CheckpointWriteError", "refuse_sharded", "checkpoint_name",
           "list_checkpoints", "latest_checkpoint", "resume_point", "remove_stale", "save_checkpoint",
           "load_checkpoint"]

STATE_FILE = "trainer_state.json"
DATA_STATE_FILE = "data_state.json"  # absent from checkpoints of older versions
_PREFIX, _TMP = "step-", ".tmp-"
_MODEL, _OPT_TENSORS, _OPT_JSON, _SCHEDULER = ("model.safetensors", "optimizer.safetensors", "optimizer.json",
                                               "scheduler.json")
_ALLOWED = re.compile(rf"^({re.escape(_MODEL)}|{re.escape(_OPT_TENSORS)}|{re.escape(_OPT_JSON)}|{re.escape(_SCHEDULER)}"
                      rf"|rng-\d+\.json|rng-\d+\.safetensors|{re.escape(STATE_FILE)}"
                      rf"|{re.escape(DATA_STATE_FILE)}|{re.escape(MANIFEST_FILE)})$")
_SHARDED = {"FSDP", "DEEPSPEED", "MEGATRON_LM"}
log = logging.getLogger(__name__)


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (full disk, read-only folder); the previous one is intact."""


def checkpoint_name(step: int) -> str:
    """``step-0000020`` for step 20 (zero-padded so names sort by step)."""
    return f"{_PREFIX}{step:07d}"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Finished checkpoints under ``root`` (those with a manifest), oldest first (not yet verified)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX)
             and p.name[len(_PREFIX):].isdigit() and (p / MANIFEST_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX):]))


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest finished checkpoint under ``root``, or ``None``."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def resume_point(root: str | Path) -> Path | None:
    """The newest checkpoint under ``root`` whose files all match its manifest, or ``None`` when
    there is none at all. A damaged newer one is skipped with a warning; when every checkpoint is
    damaged, the :class:`~longgen_core.manifest.IntegrityError` of the newest is raised; a file
    this module does not write raises ``ValueError`` naming it."""
    found = list_checkpoints(root)
    for unfinished in sorted(set(Path(root).glob(_PREFIX + "*")) - set(found)):
        log.warning("skipping %s: no %s (unfinished, or written by an older version)", unfinished.name, MANIFEST_FILE)
    errors = []
    for path in reversed(found):
        _check_files(path)  # a foreign file (a planted pickle) stops the resume: no fallback around it
        try:
            verify_manifest(path)
            return path
        except IntegrityError as err:
            log.warning("skipping checkpoint %s: %s", path.name, err)
            errors.append(err)
    if errors:
        raise IntegrityError(f"no intact checkpoint in {root}: {errors[0]}")
    return None


def remove_stale(root: str | Path) -> None:
    """Remove ``.tmp-*`` folders a crash or a full disk left under ``root``."""
    root = Path(root)
    if root.is_dir():
        for stale in root.glob(_TMP + "*"):
            shutil.rmtree(stale, ignore_errors=True)


# ---------------------------------------------------------------------- the pieces, as safetensors + JSON
def _optimizer_files(optimizer) -> tuple[dict, dict]:
    """``(tensors, json)`` of ``optimizer.state_dict()``: tensors flattened to ``state.<param>.<name>``."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for param, entries in sd["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"state.{param}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{param}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars, "params": sorted(sd["state"])}


def _optimizer_state(tensors: dict, meta: dict) -> dict:
    state: dict = {p: {} for p in meta["params"]}
    for key, value in tensors.items():
        _, param, name = key.split(".", 2)
        state[int(param)][name] = value
    for key, value in meta["scalars"].items():
        param, name = key.split(".", 1)
        state[int(param)][name] = value
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def _rng_files() -> tuple[dict, dict]:
    """``(json, tensors)`` of this process's Python, NumPy, torch and CUDA RNG states."""
    version, words, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    meta = {"python": [version, list(words), gauss], "numpy": [name, keys.tolist(), pos, has_gauss, cached]}
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return meta, tensors


def _restore_rng(meta: dict, tensors: dict) -> None:
    version, words, gauss = meta["python"]
    random.setstate((version, tuple(words), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _write_parts(accelerator, tmp: Path, step: int, state: dict, model, optimizer, scheduler,
                 data_state: dict | None) -> None:
    rank = accelerator.process_index
    meta, tensors = _rng_files()
    write_json_atomic(tmp / f"rng-{rank}.json", meta)
    save_file(tensors, str(tmp / f"rng-{rank}.safetensors"))
    if accelerator.is_main_process:
        save_model(accelerator.unwrap_model(model), str(tmp / _MODEL))
        opt_tensors, opt_meta = _optimizer_files(optimizer)
        save_file(opt_tensors, str(tmp / _OPT_TENSORS))
        write_json_atomic(tmp / _OPT_JSON, opt_meta)
        write_json_atomic(tmp / _SCHEDULER, scheduler.state_dict())
        if data_state is not None:
            write_json_atomic(tmp / DATA_STATE_FILE, data_state)
        write_json_atomic(tmp / STATE_FILE, {"step": step, **state})


def refuse_sharded(accelerator) -> None:
    """Raise ValueError when accelerate shards the optimizer state (FSDP, DeepSpeed, Megatron-LM):
    these checkpoints hold one full copy of it, written by the main process. :func:`train` calls it
    before loading anything when the run will checkpoint, so that it fails at once, not at the first
    save hours later."""
    engine = accelerator.distributed_type.value
    if engine in _SHARDED:
        raise ValueError(f"checkpoints under {engine} are not supported (its optimizer state is sharded; "
                         "longgen_core checkpoints hold one full copy): train with DDP or one process, or "
                         "without checkpoints (--no-checkpoints; only final/ is written, and nothing resumes)")


def save_checkpoint(accelerator, root: str | Path, step: int, state: dict, model, optimizer, scheduler,
                    keep: int = 2, data_state: dict | None = None) -> Path:
    """Save ``model`` (as prepared), ``optimizer``, ``scheduler``, the RNG states, ``state`` and
    ``data_state`` (JSON, the data stream's state) as checkpoint ``step``; keep the newest ``keep``.
    Every process must call it. Returns the path.

    Raises :class:`CheckpointWriteError` (one line: what, where, why) when the disk refuses a file;
    the half-written folder is removed and the previous checkpoint is left as it was.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    refuse_sharded(accelerator)
    root = Path(root)
    final, tmp = root / checkpoint_name(step), root / (_TMP + checkpoint_name(step))
    try:
        if accelerator.is_main_process:
            root.mkdir(parents=True, exist_ok=True)
            remove_stale(root)
            tmp.mkdir()
        accelerator.wait_for_everyone()
        _write_parts(accelerator, tmp, step, state, model, optimizer, scheduler, data_state)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_manifest(tmp)  # last: marks the folder complete
            if final.exists():  # the same step saved again (e.g. re-running a finished run)
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in list_checkpoints(root)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    except WRITE_ERRORS as err:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk stays full until the partial folder goes
        previous = latest_checkpoint(root)
        raise CheckpointWriteError(
            f"checkpoint {checkpoint_name(step)} could not be written to {root}: {write_failure(err)}; "
            f"the last good checkpoint is {previous.name if previous else 'none'}") from err
    accelerator.wait_for_everyone()
    return final


def _check_files(path: Path) -> None:
    for file in sorted(path.iterdir()):
        if not _ALLOWED.match(file.name):
            raise ValueError(f"{file} is not a file longgen_core checkpoints hold: refusing to resume from {path} "
                             "(files such as pickles could run code when loaded); remove it or start a new run")


def load_checkpoint(accelerator, path: str | Path, model, optimizer, scheduler) -> dict:
    """Restore ``model``, ``optimizer``, ``scheduler`` and this process's RNG states from the
    checkpoint at ``path`` (verified against its manifest first); return its trainer state, with
    the data stream's under ``"data_state"`` (``None`` in a checkpoint of an older version)."""
    path = Path(path)
    refuse_sharded(accelerator)
    _check_files(path)
    verify_manifest(path)
    rank = accelerator.process_index
    if not (path / f"rng-{rank}.json").is_file():
        raise ValueError(f"{path} has no RNG state for process {rank}: it was written by fewer processes")
    load_model(accelerator.unwrap_model(model), str(path / _MODEL))
    # Loaded on the CPU: load_state_dict moves each moment to its parameter's device (and keeps
    # step counts where the optimizer wants them: CPU, or the device for fused / capturable AdamW).
    optimizer.load_state_dict(_optimizer_state(load_file(str(path / _OPT_TENSORS)), read_json(path / _OPT_JSON)))
    scheduler.load_state_dict(read_json(path / _SCHEDULER))
    _restore_rng(read_json(path / f"rng-{rank}.json"), load_file(str(path / f"rng-{rank}.safetensors")))
    data_state = read_json(path / DATA_STATE_FILE) if (path / DATA_STATE_FILE).is_file() else None
    return {**read_json(path / STATE_FILE), "data_state": data_state}
