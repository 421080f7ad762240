"""Episode metrics of P2P energy communities, each defined once, batched over environments.

:class:`EpisodeAccumulator` sums the core's per-step ``info`` tensors over each environment's
episode and hands back the finished episodes' totals; the functions below turn totals into
the metrics the P2P literature reports. Money in currency, energy in kWh.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

# Per-agent sums [B, N] and per-env sums [B] kept over an episode.
_AGENT_KEYS = ("cost", "payment", "degradation_cost", "network_penalty", "load_kwh", "pv_kwh",
               "battery_throughput_kwh", "no_p2p_cost", "reward")
_ENV_KEYS = ("grid_import_kwh", "grid_export_kwh", "p2p_volume_kwh", "price_volume",
             "matchable_kwh", "voltage_violations", "line_violations", "losses_kwh",
             "operator_surplus")


@dataclass(frozen=True)
class EpisodeTotals:
    """Totals of finished episodes: per agent ``[E, N]`` and per env ``[E]`` tensors, E the
    number of finished episodes, plus ``day [E]``."""

    agent: dict[str, Tensor]
    env: dict[str, Tensor]
    day: Tensor

    def __len__(self) -> int:
        return int(self.day.shape[0])


def no_p2p_step_cost(load_kwh: Tensor, pv_kwh: Tensor, retail: Tensor, feed_in: Tensor
                     ) -> Tensor:
    """Each agent's cost of a step without P2P and with its battery idle, ``[B, N]``:
    retail * max(load - pv, 0) - feed_in * max(pv - load, 0)."""
    net = load_kwh - pv_kwh
    return retail[:, None] * net.clamp_min(0.0) + feed_in[:, None] * net.clamp_max(0.0)


class EpisodeAccumulator:
    """Sums a batch's step infos per episode; :meth:`update` returns finished episodes."""

    def __init__(self, n_envs: int, n_agents: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float64) -> None:
        self.agent = {key: torch.zeros(n_envs, n_agents, dtype=dtype, device=device)
                      for key in _AGENT_KEYS}
        self.env = {key: torch.zeros(n_envs, dtype=dtype, device=device) for key in _ENV_KEYS}

    def update(self, info: dict[str, Tensor], reward: Tensor) -> EpisodeTotals | None:
        """Add one step's ``info`` and ``reward [B, N]``; return the totals of the episodes
        that ended at this step (None if none ended)."""
        a, e = self.agent, self.env
        dtype = a["cost"].dtype
        a["cost"] += info["cost"].to(dtype)
        a["payment"] += info["payment"].to(dtype)
        a["degradation_cost"] += info["degradation_cost"].to(dtype)
        a["network_penalty"] += info["network_penalty"].to(dtype)
        a["load_kwh"] += info["load_kwh"].to(dtype)
        a["pv_kwh"] += info["pv_kwh"].to(dtype)
        a["battery_throughput_kwh"] += info["battery_energy_kwh"].abs().to(dtype)
        a["no_p2p_cost"] += no_p2p_step_cost(info["load_kwh"], info["pv_kwh"],
                                             info["retail_price"],
                                             info["feed_in_price"]).to(dtype)
        a["reward"] += reward.to(dtype)
        e["grid_import_kwh"] += info["grid_import_kwh"].to(dtype)
        e["grid_export_kwh"] += info["grid_export_kwh"].to(dtype)
        volume = info["p2p_volume_kwh"].to(dtype)
        e["p2p_volume_kwh"] += volume
        price = torch.nan_to_num(info["clearing_price"].to(dtype), nan=0.0)
        e["price_volume"] += price * volume
        net = info["net_energy_kwh"].to(dtype)
        e["matchable_kwh"] += torch.minimum(net.clamp_min(0).sum(1), (-net).clamp_min(0).sum(1))
        e["operator_surplus"] += info["operator_surplus"].to(dtype)
        if "voltage_violations" in info:
            e["voltage_violations"] += info["voltage_violations"].to(dtype)
            e["line_violations"] += info["line_violations"].to(dtype)
            e["losses_kwh"] += info["losses_kw"].to(dtype) * 0.25
        done = info.get("done")
        if done is None or not bool(done.any()):
            return None
        totals = EpisodeTotals({k: v[done].clone() for k, v in a.items()},
                               {k: v[done].clone() for k, v in e.items()}, info["day"][done])
        for value in (*a.values(), *e.values()):
            value[done] = 0.0
        return totals


# ------------------------------------------------------------------------------------------
# Metrics from totals (each [E], one value per finished episode, unless noted)
# ------------------------------------------------------------------------------------------


def community_cost(totals: EpisodeTotals) -> Tensor:
    """Sum over agents of payment + degradation + network penalty, currency."""
    return totals.agent["cost"].sum(1)


def savings_vs_no_p2p(totals: EpisodeTotals) -> Tensor:
    """Community cost without P2P and with idle batteries minus the community cost, currency
    (positive = the policy saves money)."""
    return totals.agent["no_p2p_cost"].sum(1) - community_cost(totals)


def savings_percent(totals: EpisodeTotals) -> Tensor:
    """:func:`savings_vs_no_p2p` as a percentage of the no-P2P cost."""
    base = totals.agent["no_p2p_cost"].sum(1)
    return 100.0 * savings_vs_no_p2p(totals) / base.abs().clamp_min(1e-9)


def agent_savings(totals: EpisodeTotals) -> Tensor:
    """Each agent's saving against its own no-P2P, idle-battery bill, ``[E, N]``."""
    return totals.agent["no_p2p_cost"] - totals.agent["cost"]


def self_sufficiency(totals: EpisodeTotals) -> Tensor:
    """Share of the community's load not imported from the grid:
    1 - grid import / load."""
    load = totals.agent["load_kwh"].sum(1)
    return 1.0 - totals.env["grid_import_kwh"] / load.clamp_min(1e-9)


def self_consumption(totals: EpisodeTotals) -> Tensor:
    """Share of the community's PV used inside the community: 1 - grid export / PV
    (1 when there is no PV)."""
    pv = totals.agent["pv_kwh"].sum(1)
    return torch.where(pv > 0, 1.0 - totals.env["grid_export_kwh"] / pv.clamp_min(1e-9),
                       torch.ones_like(pv))


def mean_clearing_price(totals: EpisodeTotals) -> Tensor:
    """Volume-weighted mean clearing price of the episode (NaN if nothing traded)."""
    volume = totals.env["p2p_volume_kwh"]
    return torch.where(volume > 0, totals.env["price_volume"] / volume.clamp_min(1e-12),
                       torch.full_like(volume, float("nan")))


def allocative_efficiency(totals: EpisodeTotals) -> Tensor:
    """Realised P2P volume over the most that could have been matched, the smaller of total
    supply and total demand summed over steps (NaN where nothing could be matched)."""
    matchable = totals.env["matchable_kwh"]
    return torch.where(matchable > 0, totals.env["p2p_volume_kwh"] / matchable.clamp_min(1e-12),
                       torch.full_like(matchable, float("nan")))


def gini(values: Tensor) -> Tensor:
    """Gini coefficient of each row of ``values [E, N]`` (mean absolute difference over twice
    the mean absolute value, so it is defined for savings of either sign; 0 = equal)."""
    diff = (values[:, :, None] - values[:, None, :]).abs().mean(dim=(1, 2))
    return diff / (2.0 * values.abs().mean(1).clamp_min(1e-12))


def summary(totals: EpisodeTotals) -> dict[str, Tensor]:
    """Every scalar metric of the finished episodes, each ``[E]``."""
    return {
        "community_cost": community_cost(totals),
        "savings_vs_no_p2p": savings_vs_no_p2p(totals),
        "savings_percent": savings_percent(totals),
        "episodic_return": totals.agent["reward"].mean(1),
        "self_sufficiency": self_sufficiency(totals),
        "self_consumption": self_consumption(totals),
        "p2p_volume_kwh": totals.env["p2p_volume_kwh"],
        "clearing_price": mean_clearing_price(totals),
        "allocative_efficiency": allocative_efficiency(totals),
        "savings_gini": gini(agent_savings(totals)),
        "voltage_violations": totals.env["voltage_violations"],
        "line_violations": totals.env["line_violations"],
        "losses_kwh": totals.env["losses_kwh"],
        "battery_throughput_kwh": totals.agent["battery_throughput_kwh"].sum(1),
        "degradation_cost": totals.agent["degradation_cost"].sum(1),
        "network_penalty": totals.agent["network_penalty"].sum(1),
        "operator_surplus": totals.env["operator_surplus"],
    }
