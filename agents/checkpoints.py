"""Checkpoint files of ``train.py``: written atomically, verified when read.

A checkpoint file (format 7) is the ``torch.save`` of the checkpoint itself, a zip archive
whose every record carries its CRC-32; :func:`load_checkpoint` checks them all
(``zipfile.ZipFile.testzip``) before reading, and reads the file mapped. Formats 5 and 6,
``{"format", "sha256": hex digest, "payload": the torch.save of the checkpoint}`` (``bytes`` in
5, a uint8 tensor in 6), are read as well and checked against their SHA-256. The checkpoint:

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
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from envs.files import atomic_save

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "READABLE_FORMATS", "REQUIRED_KEYS",
           "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = 7
"""Version of the file layout (1: an unverified ``torch.save`` of the checkpoint; 2: the
collector kept its own list of core attributes; 3: the core's ``get_state``; 4: the core's
state holds ``day_of_episode``, multi-day episodes; 5: and ``behaviour_day_gain``, the
behavioural rewards' day time scale, in a container with its SHA-256; 6: the container's
payload a uint8 tensor mapped from a temporary file, where 5's ``bytes`` were copied four
times in memory (a MADDPG run whose checkpoint is about 1.5 GB grew to 13 GB while saving);
7: the checkpoint itself, checked by its zip records' CRC-32, written once where 6 wrote it
twice, to the temporary file and into the container)."""

READABLE_FORMATS = (5, 6, 7)
"""Formats :func:`load_checkpoint` reads (5 to 7 hold the same checkpoint)."""

REQUIRED_KEYS = ("format", "config", "global_step", "algorithm", "collector", "generator",
                 "trainer")


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used: missing, damaged or of another format."""


def save_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> Path:
    """Write ``checkpoint`` (with the keys of :data:`REQUIRED_KEYS`) to ``path`` atomically,
    streamed to disk once (no copy of its buffers in memory)."""
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise ValueError(f"checkpoint lacks {missing}")
    if checkpoint["format"] != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint of format {checkpoint['format']!r}; this version writes "
                         f"format {CHECKPOINT_FORMAT}")
    path = Path(path)
    with _write_failures(path):
        return atomic_save(checkpoint, path)


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
    ``device``, after checking its records' CRC-32 (format 7) or its payload's SHA-256
    (formats 5 and 6) and its keys. Raises :class:`CheckpointError`."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint_latest.pt"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at '{path}'")
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()  # every record read, its CRC-32 compared
        # mapped: the file stays in the page cache instead of a copy in process memory
        loaded = torch.load(path, map_location=device, weights_only=True, mmap=True)
    except Exception as error:  # truncated, empty, not a torch file: all unusable alike
        raise CheckpointError(f"'{path}' is not a readable checkpoint (damaged or truncated "
                              f"file?): {type(error).__name__}: {error}") from None
    if damaged is not None:
        raise CheckpointError(f"'{path}' is damaged: its record '{damaged}' does not match "
                              f"its CRC-32")
    found = loaded.get("format") if isinstance(loaded, dict) else None
    if found not in READABLE_FORMATS:
        raise CheckpointError(f"'{path}' is not a checkpoint of format {CHECKPOINT_FORMAT} "
                              f"(found format {found!r}; this version of train.py reads "
                              f"formats {', '.join(map(str, READABLE_FORMATS))})")
    checkpoint = loaded if found == 7 else _unpack_container(path, loaded, device)
    missing = [key for key in REQUIRED_KEYS if not isinstance(checkpoint, dict)
               or key not in checkpoint]
    if missing:
        raise CheckpointError(f"'{path}' lacks the checkpoint keys {missing}")
    return checkpoint


def _unpack_container(path: Path, container: dict[str, Any], device: str | torch.device
                      ) -> Any:
    """The checkpoint in a format 5 or 6 container, after checking its SHA-256."""
    payload, digest = container.pop("payload", None), container.get("sha256")
    if container["format"] == 6 and isinstance(payload, torch.Tensor) and (
            payload.dtype == torch.uint8):
        payload = payload.cpu().reshape(-1).numpy()  # a view of the tensor's memory
    elif container["format"] == 6:
        payload = None  # format 6 holds a tensor: anything else is damage
    if not isinstance(payload, bytes | np.ndarray) or (
            hashlib.sha256(payload).hexdigest() != digest):
        raise CheckpointError(f"'{path}' is damaged: its content does not match its SHA-256 "
                              f"checksum")
    try:
        return torch.load(io.BytesIO(payload), map_location=device, weights_only=True)
    except Exception as error:
        raise CheckpointError(f"'{path}': cannot read its content: {type(error).__name__}: "
                              f"{error}") from None
