"""Shared fixtures: small, fast configurations of the environment."""

from __future__ import annotations

import pytest
import torch

SYNTHETIC = {"community": {"feeder": "synthetic", "n_agents": 6, "pv_share": 0.5,
                           "battery_share": 0.5}}


@pytest.fixture
def synthetic_config() -> dict:
    """A 6-agent synthetic community without a network model (fast)."""
    return {**SYNTHETIC, "network": {"model": "none"}}


@pytest.fixture
def one_torch_thread():
    """Tiny networks and tensors: extra threads only add synchronisation (as the shipped
    configs' train.torch_threads=1). Use with pytest.mark.usefixtures."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
