"""The core's view of the distribution network: one ``step(p_kw, q_kvar)`` call per env step.

:func:`make_network` builds, from ``config.network.model``:

- ``none``: no network; zero penalties, no voltage.
- ``zbus``: the batched torch power flow of ``envs.network`` (default).
- ``ac``: pandapower ``runpp`` for every environment and step (exact, slow; for validation
  and evaluation). A run that does not converge is reported in ``info["converged"]`` and
  penalised as a full-band voltage violation at every bus, never raised.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from envs.config import NetworkConfig
from envs.data import FeederData


@dataclass
class NetworkStep:
    """What one network step returns: ``penalty [B, N]`` (money), ``agent_voltage [B, N]``
    (p.u., None without a network) and per-env ``info`` tensors."""

    penalty: Tensor
    agent_voltage: Tensor | None
    info: dict[str, Tensor] = field(default_factory=dict)


class NoNetwork:
    """``network.model: none``: nothing is constrained."""

    def step(self, p_kw: Tensor, q_kvar: Tensor) -> NetworkStep:
        return NetworkStep(torch.zeros_like(p_kw), None, {})


def make_network(config: NetworkConfig, data: FeederData, device: torch.device,
                 dtype: torch.dtype):
    """The network model named by ``config.model`` for feeder ``data``."""
    if config.model == "none":
        return NoNetwork()
    if data.net_json is None:
        raise ValueError(f"network.model={config.model!r} needs a pandapower net, but feeder "
                         f"{data.name!r} has none; use network.model=none")
    raise NotImplementedError(f"network.model={config.model!r} is not wired yet")
