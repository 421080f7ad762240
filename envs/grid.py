"""The core's view of the distribution network: one ``step(p_kw, q_kvar)`` call per env step.

:func:`make_network` builds, from ``config.network.model``:

- ``none``: no network; zero penalties, no voltages.
- ``zbus``: the batched torch power flow of ``envs.network`` (default).
- ``ac``: pandapower ``runpp`` for every environment and step (exact, slow; for validation
  and evaluation). A run that does not converge is reported in ``info["network_converged"]``
  and penalised (``envs.network.network_penalty``'s divergence penalty), never raised.

Both network models report per step, each ``[B]`` (``envs.info_schema.NETWORK_INFO``):
``v_min_pu`` and ``v_max_pu`` (the lowest and highest bus voltage, p.u.),
``max_line_loading`` and ``max_trafo_loading`` (%), ``voltage_violations`` (buses outside
[v_min, v_max]), ``line_violations`` (lines and transformers above 100 %), ``losses_kw`` and
``network_converged`` (1.0 or 0.0); penalties are shared among agents by
``envs.network.network_penalty``'s rule (by contribution: an agent that does not inject pays
nothing).

:meth:`~PowerFlowNetwork.penalty_table` charges ``T`` independent steps at once, by the same
rule as ``step``: the core's table of the no-P2P operation's penalties (``envs.core``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from envs.config import NetworkConfig
from envs.data import FeederData

if TYPE_CHECKING:
    from envs.network import PowerFlowResult

_INFO_NAMES = {
    "v_min_pu": "v_min_pu",
    "v_max_pu": "v_max_pu",
    "max_line_loading_percent": "max_line_loading",
    "max_trafo_loading_percent": "max_trafo_loading",
    "n_voltage_violations": "voltage_violations",
    "n_line_violations": "line_violations",
    "losses_kw": "losses_kw",
    "converged": "network_converged",
}


@dataclass
class NetworkStep:
    """What one network step returns: ``penalty [B, N]`` (money), ``agent_voltage [B, N]``
    (p.u., None without a network) and per-env ``info`` tensors."""

    penalty: Tensor
    agent_voltage: Tensor | None
    info: dict[str, Tensor] = field(default_factory=dict)


class NoNetwork:
    """``network.model: none``: nothing is constrained."""

    model = None

    def step(self, p_kw: Tensor, q_kvar: Tensor) -> NetworkStep:
        return NetworkStep(torch.zeros_like(p_kw), None, {})

    def penalty_table(self, p_kw: Tensor, q_kvar: Tensor) -> Tensor:
        """No penalties: zeros like ``p_kw [T, N]``."""
        return torch.zeros_like(p_kw)


class PowerFlowNetwork:
    """``zbus`` or ``ac``: power flow, penalties shared by contribution, info statistics."""

    def __init__(self, config: NetworkConfig, data: FeederData, device: torch.device,
                 dtype: torch.dtype, battery_bus: int | None = None) -> None:
        from envs.network import BatchedPowerFlow

        self.config = config
        self.net = data.net()
        if battery_bus is not None:
            from envs.storage import with_battery_load

            self.net = with_battery_load(self.net, battery_bus)
        self.model = BatchedPowerFlow.from_pandapower(
            self.net, device=device, dtype=dtype, max_iterations=config.max_iterations)
        self.sensitivity = self.model.sensitivity()
        self.exact = config.model == "ac"

    def solve(self, p_kw: Tensor, q_kvar: Tensor):
        if self.exact:
            from envs.network import run_ac

            result = run_ac(self.net, p_kw, q_kvar)
            return type(result)(**{
                name: value.to(device=p_kw.device, dtype=p_kw.dtype)
                if isinstance(value, Tensor) and value.is_floating_point()
                else (value.to(p_kw.device) if isinstance(value, Tensor) else value)
                for name, value in vars(result).items()})
        return self.model.solve(p_kw, q_kvar, angles=False)

    def statistics(self, result: PowerFlowResult
                   ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """``(agent_voltage [B, N], info, violated)`` of power-flow ``result``: the agents'
        bus voltages (p.u., 1 where NaN), the info statistics, and whether any environment
        has a violation or did not converge (a 0-d bool tensor: without one every penalty
        share is 0 and :meth:`penalty` need not run)."""
        from envs.network import network_summary

        cfg = self.config
        summary = network_summary(result, v_min=cfg.v_min, v_max=cfg.v_max)
        violated = (summary["n_voltage_violations"] + summary["n_line_violations"]) > 0
        info = {_INFO_NAMES[key]: value for key, value in summary.items() if key in _INFO_NAMES}
        voltage = torch.nan_to_num(result.vm_pu[:, self.model.agent_bus], nan=1.0)
        return voltage, info, (violated | ~result.converged).any()

    def penalty(self, result: PowerFlowResult, p_kw: Tensor) -> Tensor:
        """Each agent's penalty share ``[B, N]`` of ``result`` (``envs.network.network_penalty``)
        for consumption ``p_kw [B, N]``."""
        from envs.network import network_penalty

        cfg = self.config
        penalty, _ = network_penalty(result, p_kw, self.sensitivity, v_min=cfg.v_min,
                                     v_max=cfg.v_max, voltage_penalty=cfg.voltage_penalty,
                                     line_penalty=cfg.line_penalty)
        return penalty

    def step(self, p_kw: Tensor, q_kvar: Tensor) -> NetworkStep:
        result = self.solve(p_kw, q_kvar)
        voltage, info, violated = self.statistics(result)
        # the common case, no violation: skip the sharing arithmetic
        penalty = self.penalty(result, p_kw) if bool(violated) else torch.zeros_like(p_kw)
        return NetworkStep(penalty, voltage, info)

    def penalty_table(self, p_kw: Tensor, q_kvar: Tensor, chunk: int = 8192) -> Tensor:
        """Each agent's penalty share ``[T, N]`` (money) of ``T`` independent steps with
        consumption ``p_kw``, ``q_kvar [T, N]`` (kW, kvar), charged as :meth:`step` charges
        a batch of them, solved ``chunk`` steps at a time (one batched solve per chunk).
        With ``ac`` the Z-bus model solves them (pandapower's equations, ~2e-7 p.u. from
        ``runpp``; ``runpp`` per step would take minutes for a year)."""
        parts = []
        for start in range(0, p_kw.shape[0], chunk):
            p, q = p_kw[start:start + chunk], q_kvar[start:start + chunk]
            result = self.model.solve(p, q, angles=False)
            _, _, violated = self.statistics(result)
            parts.append(self.penalty(result, p) if bool(violated) else torch.zeros_like(p))
        return torch.cat(parts) if parts else torch.zeros_like(p_kw)


def make_network(config: NetworkConfig, data: FeederData, device: torch.device,
                 dtype: torch.dtype, battery_bus: int | None = None
                 ) -> NoNetwork | PowerFlowNetwork:
    """The network model named by ``config.model`` for feeder ``data``; with
    ``battery_bus`` (a pandapower bus index) a shared battery (``envs.storage``) is one more
    load at that bus, the last column of ``p_kw``/``q_kvar`` and of the penalties."""
    if config.model == "none":
        return NoNetwork()
    if data.net_json is None:
        raise ValueError(f"network.model={config.model!r} needs a pandapower net, but feeder "
                         f"{data.name!r} has none; use network.model=none")
    return PowerFlowNetwork(config, data, device, dtype, battery_bus)
