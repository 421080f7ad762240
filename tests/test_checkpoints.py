"""Checkpoint files (agents/checkpoints.py) and loading a policy from a run folder
(agents/policy.py): round trip, checksum, and one clear error for each kind of damage."""

from __future__ import annotations

import io
import pickle

import pytest
import torch

from agents.checkpoints import (
    CHECKPOINT_FORMAT,
    REQUIRED_KEYS,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from agents.policy import PolicyLoadError, load_policy
from envs.files import atomic_write_text, remove_stale_temporaries


def _checkpoint() -> dict:
    checkpoint = {key: {"value": torch.arange(5.0)} for key in REQUIRED_KEYS}
    checkpoint.update(format=CHECKPOINT_FORMAT, global_step=1234, config={"algo": "mappo"})
    return checkpoint


def test_round_trip(tmp_path):
    path = save_checkpoint(_checkpoint(), tmp_path / "c.pt")
    loaded = load_checkpoint(path)
    assert loaded["global_step"] == 1234
    assert torch.equal(loaded["algorithm"]["value"], torch.arange(5.0))
    assert load_checkpoint(tmp_path / "c.pt")["config"] == {"algo": "mappo"}
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left


def test_a_run_folder_means_its_latest_checkpoint(tmp_path):
    save_checkpoint(_checkpoint(), tmp_path / "checkpoint_latest.pt")
    assert load_checkpoint(tmp_path)["global_step"] == 1234


def test_save_refuses_an_incomplete_checkpoint(tmp_path):
    checkpoint = _checkpoint()
    del checkpoint["trainer"]
    with pytest.raises(ValueError, match="trainer"):
        save_checkpoint(checkpoint, tmp_path / "c.pt")
    assert not (tmp_path / "c.pt").exists()


def _flip(data: bytes, position: int) -> bytes:
    return data[:position] + bytes([data[position] ^ 0x01]) + data[position + 1:]


@pytest.mark.parametrize("damage, message", [
    (lambda data: data[: len(data) // 2], "not a readable checkpoint"),
    (lambda data: data[:100], "not a readable checkpoint"),
    (lambda data: b"", "not a readable checkpoint"),
    (lambda data: b"format: 2\n", "not a readable checkpoint"),
])
def test_truncated_or_foreign_files_are_clear_errors(tmp_path, damage, message):
    path = save_checkpoint(_checkpoint(), tmp_path / "c.pt")
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_flipped_bytes_never_load_silently(tmp_path):
    """A bit flipped anywhere in the file (sampled every 61 bytes) gives CheckpointError:
    it fails the checksum or the container, never loads with other values."""
    path = save_checkpoint(_checkpoint(), tmp_path / "c.pt")
    data = path.read_bytes()
    damaged = tmp_path / "damaged.pt"
    for position in range(0, len(data), 61):
        damaged.write_bytes(_flip(data, position))
        try:
            loaded = load_checkpoint(damaged)
        except CheckpointError:
            continue
        # a flip in zip metadata that neither reader checks may leave the content intact
        assert torch.equal(loaded["algorithm"]["value"], torch.arange(5.0)), position
        assert loaded["global_step"] == 1234


def test_other_formats_and_missing_keys(tmp_path):
    old = tmp_path / "old.pt"
    torch.save(_checkpoint() | {"format": 1}, old)  # a v1 checkpoint: no container
    with pytest.raises(CheckpointError, match=f"format {CHECKPOINT_FORMAT}"):
        load_checkpoint(old)
    partial = _checkpoint()
    del partial["collector"]
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match=r"lacks the checkpoint keys \['collector'\]"):
        load_checkpoint(tmp_path / "partial.pt")
    import hashlib

    buffer = io.BytesIO()
    torch.save(partial | {"format": 6}, buffer)
    payload = buffer.getvalue()
    torch.save({"format": 6, "sha256": hashlib.sha256(payload).hexdigest(),
                "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8)},
               tmp_path / "partial6.pt")
    with pytest.raises(CheckpointError, match=r"lacks the checkpoint keys \['collector'\]"):
        load_checkpoint(tmp_path / "partial6.pt")
    with pytest.raises(ValueError, match="format 1.*writes format"):
        save_checkpoint(_checkpoint() | {"format": 1}, tmp_path / "v1.pt")
    previous = _checkpoint() | {"format": 4}  # the core's state without behaviour_day_gain
    buffer = io.BytesIO()
    torch.save(previous, buffer)
    payload = buffer.getvalue()
    torch.save({"format": 4, "sha256": hashlib.sha256(payload).hexdigest(),
                "payload": payload}, tmp_path / "previous.pt")
    with pytest.raises(CheckpointError, match="found format 4"):
        load_checkpoint(tmp_path / "previous.pt")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_load_policy_errors(tmp_path):
    with pytest.raises(PolicyLoadError, match="no run folder"):
        load_policy(tmp_path / "missing")
    with pytest.raises(PolicyLoadError, match="holds no checkpoint"):
        load_policy(tmp_path)
    (tmp_path / "checkpoint_best.pt").write_bytes(b"\x00" * 10)
    with pytest.raises(PolicyLoadError, match="not a readable checkpoint"):
        load_policy(tmp_path)


def test_stale_temporaries_are_removed(tmp_path):
    atomic_write_text(tmp_path / "metrics.json", "{}")
    stale = tmp_path / ".checkpoint_latest.pt.abc123.tmp"
    stale.write_bytes(b"partial")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_format_5_and_6_files_still_load(tmp_path):
    """Formats 5 and 6 held the same checkpoint in a container with its SHA-256, its
    payload as ``bytes`` (5) or a uint8 tensor (6): read, and checked."""
    import hashlib

    buffer = io.BytesIO()
    torch.save(_checkpoint() | {"format": 6}, buffer)
    payload = bytearray(buffer.getvalue())
    container = {"format": 6, "sha256": hashlib.sha256(payload).hexdigest(),
                 "payload": torch.frombuffer(payload, dtype=torch.uint8)}
    torch.save(container, tmp_path / "v6.pt")
    loaded = load_checkpoint(tmp_path / "v6.pt")
    assert loaded["global_step"] == 1234 and loaded["format"] == 6
    assert torch.equal(loaded["algorithm"]["value"], torch.arange(5.0))
    payload[-30] ^= 1  # a flip the zip's CRC-32 of the container cannot see: the SHA-256 does
    torch.save(container | {"payload": torch.frombuffer(payload, dtype=torch.uint8)},
               tmp_path / "v6_bad.pt")
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(tmp_path / "v6_bad.pt")

    buffer = io.BytesIO()
    torch.save(_checkpoint() | {"format": 5}, buffer)
    payload = buffer.getvalue()
    container = {"format": 5, "sha256": hashlib.sha256(payload).hexdigest(), "payload": payload}
    torch.save(container, tmp_path / "v5.pt")
    loaded = load_checkpoint(tmp_path / "v5.pt")
    assert loaded["global_step"] == 1234
    assert torch.equal(loaded["algorithm"]["value"], torch.arange(5.0))
    torch.save(container | {"payload": payload[:-1] + b"?"}, tmp_path / "v5_bad.pt")
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(tmp_path / "v5_bad.pt")
    # a format 6 container must hold a uint8 tensor
    torch.save(container | {"format": 6}, tmp_path / "v6_bytes.pt")
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(tmp_path / "v6_bytes.pt")


def test_saving_holds_no_copy_of_the_checkpoint_in_memory(tmp_path, monkeypatch):
    """The checkpoint is streamed to its file once (format 5 held it four to six times over
    in memory: a MADDPG run with a checkpoint of about 1.5 GB grew to 13 GB while saving;
    format 6 wrote it twice, to a temporary file and into its container). tracemalloc sees
    Python's buffers (BytesIO, bytes), which held those copies, not the tensors' own
    storage."""
    import tracemalloc

    written = []
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, *args, **kwargs: (
        written.append(obj), real_save(obj, *args, **kwargs))[1])

    checkpoint = _checkpoint()
    checkpoint["algorithm"] = {"buffer": torch.ones(8_000_000)}  # 32 MB
    tracemalloc.start()
    try:
        save_checkpoint(checkpoint, tmp_path / "c.pt")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4_000_000  # an eighth of the checkpoint
    assert len(written) == 1 and written[0] is checkpoint  # one write, of the checkpoint
    assert torch.equal(load_checkpoint(tmp_path / "c.pt")["algorithm"]["buffer"],
                       checkpoint["algorithm"]["buffer"])
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left


def test_a_failed_save_leaves_nothing_behind(tmp_path):
    save_checkpoint(_checkpoint(), tmp_path / "c.pt")
    before = (tmp_path / "c.pt").read_bytes()
    checkpoint = _checkpoint()
    checkpoint["trainer"] = {"not serialisable": lambda: None}
    with pytest.raises((pickle.PicklingError, AttributeError)):  # "can't pickle a lambda"
        save_checkpoint(checkpoint, tmp_path / "c.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    assert (tmp_path / "c.pt").read_bytes() == before  # the previous checkpoint is intact


def test_a_full_disk_is_one_clear_error(tmp_path, monkeypatch):
    """torch.save on a full disk says only "unexpected pos" (seen when finished runs' 4 GB
    checkpoints filled the disk): CheckpointError names the file and the free space, the
    previous checkpoint stays, no temporary is left."""
    path = save_checkpoint(_checkpoint(), tmp_path / "c.pt")
    before = path.read_bytes()
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "collector" in obj:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos "
                               "832 vs 726")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=r"cannot write the checkpoint .*c\.pt.*unexpected "
                                              r"pos.*GiB free on its disk"):
        save_checkpoint(_checkpoint(), path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["c.pt"]
