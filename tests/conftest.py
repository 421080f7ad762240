"""Shared fixtures: small, fast configurations of the environment."""

from __future__ import annotations

import pytest

SYNTHETIC = {"community": {"feeder": "synthetic", "n_agents": 6, "pv_share": 0.5,
                           "battery_share": 0.5}}


@pytest.fixture
def synthetic_config() -> dict:
    """A 6-agent synthetic community without a network model (fast)."""
    return {**SYNTHETIC, "network": {"model": "none"}}
