"""Integrity manifests: the size and SHA-256 of every file of a folder the project wrote (a training
checkpoint, a ``save_pretrained`` model), so that a truncated, zeroed or edited file is found
before its bytes are used.

``manifest.json`` is written last and atomically: a folder without one was never finished.

Example::

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "weights.bin").write_bytes(b"abc")
    >>> sorted(write_manifest(folder)["files"])
    ['weights.bin']
    >>> verify_manifest(folder)  # returns nothing when every file matches
    >>> _ = (folder / "weights.bin").write_bytes(b"abd")
    >>> verify_manifest(folder)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    longgen_core.manifest.IntegrityError: weights.bin in ... does not match its manifest (SHA-256 differs):
    the file is corrupted or was changed after it was written
    >>> verify_if_present(folder / "elsewhere")  # no manifest (a hub id, another tool's folder): nothing to check
    False
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from safetensors import SafetensorError

from .jsonio import read_json, write_json_atomic

__all__ = ["MANIFEST_FILE", "IntegrityError", "WRITE_ERRORS", "write_failure", "file_digest", "write_manifest",
           "verify_manifest", "verify_if_present"]

MANIFEST_FILE = "manifest.json"
_CHUNK = 1 << 24  # 16 MiB reads: hashing a 28 GB checkpoint never holds more than this


# What a disk that refuses a file raises while such a folder is written: OSError from Python's own
# writes, and SafetensorError -- not an OSError -- from safetensors' writer (which save_pretrained
# uses too): on a full 600 MB tmpfs it raised "Error while serializing: I/O error: No space left
# on device (os error 28)".
WRITE_ERRORS = (OSError, SafetensorError)


class IntegrityError(ValueError):
    """A file of a folder differs from its manifest (or the manifest is missing or unreadable)."""


def write_failure(err: Exception) -> str:
    """Why one of :data:`WRITE_ERRORS` happened, in a few words (the system's message when it has one).

    Example::

        >>> import errno
        >>> write_failure(OSError(errno.ENOSPC, "No space left on device"))
        'No space left on device'
        >>> write_failure(SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"))
        'No space left on device'
    """
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    text = " ".join(str(err).splitlines())
    found = re.search(r"I/O error: (.*?)(?: \(os error \d+\))?$", text)
    return found.group(1) if found else text


def file_digest(path: str | Path) -> str:
    """Hex SHA-256 of the file at ``path``, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE
                  and not p.name.endswith(".tmp"))


def write_manifest(folder: str | Path) -> dict:
    """Record every file under ``folder`` (sizes and SHA-256) in ``folder/manifest.json``; return it."""
    folder = Path(folder)
    manifest = {"files": {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": file_digest(p)}
                          for p in _files(folder)}}
    write_json_atomic(folder / MANIFEST_FILE, manifest)
    return manifest


def verify_manifest(folder: str | Path) -> None:
    """Raise :class:`IntegrityError` naming the first file that is missing, extra, or differs in size
    or SHA-256 from ``folder/manifest.json`` (sizes are compared first: cheap, and most damage shows)."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise IntegrityError(f"{folder} has no {MANIFEST_FILE}: it was not finished, or not written by longgen_core")
    try:
        listed = read_json(path)["files"]
    except (ValueError, KeyError, TypeError) as err:
        raise IntegrityError(f"{path} is unreadable ({err})") from None
    present = {p.relative_to(folder).as_posix() for p in _files(folder)}
    for name in sorted(present - set(listed)):
        raise IntegrityError(f"{name} in {folder} is not in its manifest: a file was added after it was written")
    for name, entry in listed.items():
        file = folder / name
        if not file.is_file():
            raise IntegrityError(f"{name} in {folder} is missing (listed in its manifest)")
        if file.stat().st_size != entry["bytes"]:
            raise IntegrityError(f"{name} in {folder} does not match its manifest (size {file.stat().st_size} "
                                 f"bytes, expected {entry['bytes']}): the file is truncated or was changed")
        if file_digest(file) != entry["sha256"]:
            raise IntegrityError(f"{name} in {folder} does not match its manifest (SHA-256 differs): the file is "
                                 "corrupted or was changed after it was written")


def verify_if_present(folder: str | Path) -> bool:
    """:func:`verify_manifest` when ``folder`` is a local directory holding a ``manifest.json``;
    whether it was checked. What every loader of a saved model calls first: a hub id or a folder
    written by another tool has no manifest and is read unverified, as transformers reads it."""
    if not (Path(folder) / MANIFEST_FILE).is_file():
        return False
    verify_manifest(folder)
    return True
