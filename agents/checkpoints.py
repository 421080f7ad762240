"""Checkpoint files of ``train.py``: written atomically, verified by a checksum when read.

A checkpoint file holds ``{"format": CHECKPOINT_FORMAT, "sha256": hex digest, "payload":
bytes}``, where ``payload`` is the ``torch.save`` of the checkpoint itself:

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

import hashlib
import io
from pathlib import Path
from typing import Any

import torch

from envs.files import atomic_write_bytes

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "REQUIRED_KEYS", "load_checkpoint",
           "save_checkpoint"]

CHECKPOINT_FORMAT = 5
"""Version of the file layout (1: an unverified ``torch.save`` of the checkpoint; 2: the
collector kept its own list of core attributes; 3: the core's ``get_state``; 4: the core's
state holds ``day_of_episode``, multi-day episodes; 5: and ``behaviour_day_gain``, the
behavioural rewards' day time scale)."""

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
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    payload = buffer.getvalue()
    container = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "sha256": hashlib.sha256(payload).hexdigest(),
                "payload": payload}, container)
    return atomic_write_bytes(path, container.getvalue())


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint in ``path`` (a run folder means its ``checkpoint_latest.pt``), tensors on
    ``device``, after checking its checksum and keys. Raises :class:`CheckpointError`."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint_latest.pt"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at '{path}'")
    try:
        container = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, empty, not a torch file: all unusable alike
        raise CheckpointError(f"'{path}' is not a readable checkpoint (damaged or truncated "
                              f"file?): {type(error).__name__}: {error}") from None
    if not isinstance(container, dict) or container.get("format") != CHECKPOINT_FORMAT:
        found = container.get("format") if isinstance(container, dict) else None
        raise CheckpointError(f"'{path}' is not a checkpoint of format {CHECKPOINT_FORMAT} "
                              f"(found format {found!r}); it was not written by this version "
                              f"of train.py")
    payload, digest = container.get("payload"), container.get("sha256")
    if not isinstance(payload, bytes) or hashlib.sha256(payload).hexdigest() != digest:
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
