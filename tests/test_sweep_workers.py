"""agents.sweep's Ray workers: the environment they start with (a file of its own, so that the
sweep starts its own Ray here: tests/test_sweep.py and tests/test_leaderboard.py start one per
module and the sweeps reuse it)."""

from __future__ import annotations

import os

import pytest

from agents import sweep


@pytest.mark.slow
def test_workers_of_a_sweeps_own_ray_start_with_one_malloc_arena(monkeypatch):
    """Tune trains a trial in a thread of its worker; glibc gives such a thread an arena whose
    heaps hold at most 64 MiB, so train.malloc_threshold_mb would not keep the update's large
    blocks and a trial trained 1.6x slower than train.py (README, "Sweeps on Ray"): the Ray the
    sweep starts gives its workers sweep.WORKER_ENV (one arena, glibc's main one)."""
    ray = pytest.importorskip("ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)  # not inherited from this process
    assert not ray.is_initialized()
    assert sweep.WORKER_ENV == {"MALLOC_ARENA_MAX": "1"}
    names = list(sweep.WORKER_ENV)

    def worker_environment() -> dict[str, str | None]:  # defined here: sent by value
        return {name: os.environ.get(name) for name in names}

    with sweep.ray_session(sweep.RayOptions(cpus=1)):
        seen = ray.get(ray.remote(num_cpus=1)(worker_environment).remote())
    assert not ray.is_initialized()  # the sweep's own Ray is stopped again
    assert seen == sweep.WORKER_ENV
