"""Readers of what ``train.py`` writes and an exact comparison of checkpoints, shared by the
training tests (imported as a plain module: pytest puts ``tests/`` on the path)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train


def tensorboard_scalars(run_dir: Path, speed: bool = True
                        ) -> dict[str, list[tuple[int, float]]]:
    """Every scalar curve of a run as ``{tag: [(step, value), ...]}``; without ``charts/SPS``
    (wall-clock speed, never reproducible) unless ``speed``."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"] if speed or tag != "charts/SPS"}


def run_metrics(run_dir: Path) -> dict:
    """``metrics.json`` of a run without its timing entry (which never repeats)."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics.pop(train.TIMING_KEY)
    return metrics


def assert_same(first: Any, second: Any, where: str = "state") -> None:
    """Nested dicts/lists of tensors and numbers are exactly equal."""
    if isinstance(first, dict):
        assert first.keys() == second.keys(), where
        for key in first:
            assert_same(first[key], second[key], f"{where}.{key}")
    elif isinstance(first, list | tuple):
        assert len(first) == len(second), where
        for index, (a, b) in enumerate(zip(first, second, strict=True)):
            assert_same(a, b, f"{where}[{index}]")
    elif isinstance(first, torch.Tensor):
        assert torch.equal(first, second), where
    else:
        assert first == second, where
