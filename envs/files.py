"""Atomic file writes: the one writer every module uses for caches, configs, checkpoints,
results and plots.

A file is written to a temporary file beside its destination, flushed and ``fsync``-ed, then
moved into place with ``os.replace``, so a reader sees the old file or the complete new one,
never a partial write (a kill or a full disk leaves the destination untouched). Temporary files
are named ``.{name}.*.tmp``; :func:`remove_stale_temporaries` clears ones left by a killed
process.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["FOLDER_NAME_RULE", "atomic_save", "atomic_write", "atomic_write_bytes",
           "atomic_write_text", "is_folder_name", "plain_json", "remove_stale_temporaries"]

TEMPORARY_SUFFIX = ".tmp"

_FOLDER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")
FOLDER_NAME_RULE = "1-100 letters, digits, '_', '.' and '-' (no path separators)"
"""What :func:`is_folder_name` allows, for error messages."""


def is_folder_name(text: str) -> bool:
    """Whether ``text`` may name a run or result folder (a run config's ``name``, a task
    file's stem): :data:`FOLDER_NAME_RULE`, and not ``.`` or ``..``, so the folder stays inside
    its parent on every file system."""
    return bool(_FOLDER_NAME.fullmatch(text)) and text not in (".", "..")


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(binary file)`` on a temporary file beside ``path`` (parent folders are
    created), ``fsync`` it and move it onto ``path``. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                    suffix=TEMPORARY_SUFFIX)
    temporary = Path(name)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, payload: bytes) -> Path:
    """Write ``payload`` to ``path`` atomically."""
    return atomic_write(path, lambda file: file.write(payload))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda file: file.write(text.encode("utf-8")))


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically."""
    import torch

    return atomic_write(path, lambda file: torch.save(obj, file))


def plain_json(value: Any) -> Any:
    """``value`` as standard JSON values for ``json.dumps``: NaN and inf become null, numpy
    and torch arrays lists, numpy scalars Python numbers, dict keys strings."""
    if isinstance(value, dict):
        return {str(key): plain_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain_json(item) for item in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return plain_json(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files of :func:`atomic_write` left in ``folder`` by a process that
    was killed mid-write; returns the deleted paths. Call it only where no other process is
    writing into ``folder``."""
    removed = []
    for path in Path(folder).glob(f".*{TEMPORARY_SUFFIX}"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
