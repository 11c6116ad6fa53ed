"""Atomic file writes, the one home for every sub-package: a file is written under a temporary name in its own
folder and moved into place with ``os.replace``, so a reader sees the old file or the new one, never a torn one.
A folder (a model folder, a training checkpoint) is built the same way: under a temporary name beside it, then
renamed into place (:func:`write_folder_atomic`).

Pure standard library (no torch, no NumPy), so the datasets, the checks, the diffraction CLI and the model I/O all
write the same way. Temporary files get the permissions of an ordinary file (``0666`` less the umask), not the
``0600`` of :func:`tempfile.mkstemp`.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


def umask() -> int:
    """The process's file-creation mask (read without changing it for longer than the call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, write: Callable[[str], Any], suffix: str = ".tmp") -> None:
    """Create ``path`` by calling ``write(tmp)`` on a temporary path beside it, then ``os.replace``.

    ``suffix`` ends the temporary name (pass ``path.suffix`` for writers that infer the format from it); the
    folder is created if missing, and the temporary file is removed if ``write`` raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600 files; give the usual permissions
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, synced to disk before the rename."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    write_atomic(path, write)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    """Atomically write ``obj`` as JSON (indented, keys sorted, newline-terminated)."""
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def write_csv_atomic(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """Atomically write ``rows`` as CSV with a header of ``columns`` (in that order; a missing or None value is an
    empty cell, keys outside ``columns`` are left out)."""
    rows = list(rows)

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            # "\n", not the csv module's default "\r\n": the files are read by Unix tools as often as by spreadsheets
            writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})

    write_atomic(path, write, ".csv")


def write_folder_atomic(path: str | os.PathLike, build: Callable[[Path], Any]) -> Path:
    """Create the folder ``path`` by calling ``build(tmp)`` on an empty temporary folder beside it, then renaming.

    The temporary folder gets an ordinary folder's permissions (``0777`` less the umask, not the ``0700`` of
    :func:`tempfile.mkdtemp`). An existing ``path`` is replaced: renamed aside first, then removed, so ``path`` is
    always the old folder or the new one. If ``build`` raises, the old folder is kept and the temporary one is
    removed. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        os.chmod(tmp, 0o777 & ~umask())
        build(tmp)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


__all__ = [
    "umask",
    "write_atomic",
    "write_bytes_atomic",
    "write_csv_atomic",
    "write_folder_atomic",
    "write_json_atomic",
    "write_text_atomic",
]
