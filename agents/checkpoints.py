"""Checkpoint files of ``train.py``: written atomically, verified by a checksum when read.

A checkpoint file holds ``{"format": CHECKPOINT_FORMAT, "sha256": hex digest, "payload":
uint8 tensor}``, where ``payload`` is the ``torch.save`` of the checkpoint itself (format 5
files, whose payload is a ``bytes`` object, are read as well):

=============  ===========================================================================
key            content
=============  ===========================================================================
``format``     :data:`CHECKPOINT_FORMAT`
``config``     the resolved run config (``agents.run_config.RunConfig.to_dict``)
``global_step`` env-steps trained
``algorithm``  ``Algorithm.state_dict()``
``collector``  ``Collector.state_dict()`` (the core's state and the running episodes)
``generator``  the run generator's state
``trainer``    the trainer's bookkeeping (next evaluation, best return, ...)
=============  ===========================================================================

Any damage (a truncated or empty file, flipped bytes, another file format, missing keys)
raises :class:`CheckpointError` naming the file, never a raw unpickling error, and a damaged
file never loads silently with other weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from envs.files import atomic_save, temporary_beside

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "READABLE_FORMATS", "REQUIRED_KEYS",
           "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = 6
"""Version of the file layout (1: an unverified ``torch.save`` of the checkpoint; 2: the
collector kept its own list of core attributes; 3: the core's ``get_state``; 4: the core's
state holds ``day_of_episode``, multi-day episodes; 5: and ``behaviour_day_gain``, the
behavioural rewards' day time scale; 6: the payload is a uint8 tensor mapped from a temporary
file, which ``torch.save`` streams into the container, where 5's ``bytes`` were serialised
in memory and copied three more times: a MADDPG run whose checkpoint is about 1.5 GB
grew to 13 GB while saving)."""

READABLE_FORMATS = (5, 6)
"""Container formats :func:`load_checkpoint` reads (5 and 6 hold the same checkpoint)."""

REQUIRED_KEYS = ("format", "config", "global_step", "algorithm", "collector", "generator",
                 "trainer")


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used: missing, damaged or of another format."""


def save_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> Path:
    """Write ``checkpoint`` (with the keys of :data:`REQUIRED_KEYS`) to ``path`` atomically,
    with its SHA-256 checksum."""
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise ValueError(f"checkpoint lacks {missing}")
    path = Path(path)
    handle, inner = temporary_beside(path)
    os.close(handle)
    container: dict[str, Any] | None = None
    try:
        with _write_failures(path):  # streamed to disk: no copy of the buffers in memory
            torch.save(checkpoint, inner)
        digest, piece = hashlib.sha256(), memoryview(bytearray(1 << 20))
        with open(inner, "rb") as file:  # in 1 MiB pieces (hashlib.file_digest: Python 3.11)
            while read := file.readinto(piece):
                digest.update(piece[:read])
        size = os.path.getsize(inner)
        # the payload tensor maps the file (page cache, not process memory) while the
        # container is written
        container = {"format": CHECKPOINT_FORMAT, "sha256": digest.hexdigest(),
                     "payload": torch.from_file(str(inner), shared=True, size=size,
                                                dtype=torch.uint8)}
        with _write_failures(path):
            return atomic_save(container, path)
    finally:
        container = None  # unmaps the file
        inner.unlink(missing_ok=True)


@contextlib.contextmanager
def _write_failures(path: Path) -> Iterator[None]:
    """A failed write of the checkpoint ``path`` (a full disk shows as torch's "unexpected
    pos" or an OSError) raises :class:`CheckpointError` naming ``path`` and the space left on
    its disk; the checkpoint already at ``path`` stays as it was."""
    try:
        yield
    except (OSError, RuntimeError) as error:
        free = shutil.disk_usage(path.parent).free / 2**30
        raise CheckpointError(
            f"cannot write the checkpoint '{path}': {type(error).__name__}: {error} "
            f"({free:.1f} GiB free on its disk; writing needs about twice the checkpoint's "
            f"size for a moment; the previous checkpoint there is unchanged)") from error


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint in ``path`` (a run folder means its ``checkpoint_latest.pt``), tensors on
    ``device``, after checking its checksum and keys. Raises :class:`CheckpointError`."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint_latest.pt"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at '{path}'")
    try:
        # mapped: the payload stays in the page cache while it is hashed and read
        container = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # truncated, empty, not a torch file: all unusable alike
        raise CheckpointError(f"'{path}' is not a readable checkpoint (damaged or truncated "
                              f"file?): {type(error).__name__}: {error}") from None
    found = container.get("format") if isinstance(container, dict) else None
    if found not in READABLE_FORMATS:
        raise CheckpointError(f"'{path}' is not a checkpoint of format {CHECKPOINT_FORMAT} "
                              f"(found format {found!r}; this version of train.py reads "
                              f"formats {', '.join(map(str, READABLE_FORMATS))})")
    payload, digest = container.pop("payload", None), container.get("sha256")
    if found >= 6 and isinstance(payload, torch.Tensor) and payload.dtype == torch.uint8:
        payload = payload.reshape(-1).numpy()  # a view of the tensor's memory
    elif found >= 6:
        payload = None  # format 6 holds a tensor: anything else is damage
    if not isinstance(payload, bytes | np.ndarray) or (
            hashlib.sha256(payload).hexdigest() != digest):
        raise CheckpointError(f"'{path}' is damaged: its content does not match its SHA-256 "
                              f"checksum")
    try:
        checkpoint = torch.load(io.BytesIO(payload), map_location=device, weights_only=True)
    except Exception as error:
        raise CheckpointError(f"'{path}': cannot read its content: {type(error).__name__}: "
                              f"{error}") from None
    missing = [key for key in REQUIRED_KEYS if not isinstance(checkpoint, dict)
               or key not in checkpoint]
    if missing:
        raise CheckpointError(f"'{path}' lacks the checkpoint keys {missing}")
    return checkpoint
