"""Episode metrics of P2P energy communities, each defined once, batched over environments.

:class:`EpisodeAccumulator` sums the core's per-step ``info`` tensors over each environment's
episode and hands back the finished episodes' totals; :func:`schedule_totals` builds the same
totals from a centrally optimised schedule (the perfect-foresight oracle of
``agents/oracle.py``). The functions below turn totals into the metrics the P2P literature
reports; :func:`evaluation_summary` is the full set ``evaluate.py`` tabulates. Money in
currency, energy in kWh.

Metric definitions (per episode, ``E`` episodes, ``N`` agents, ``t`` steps; an episode is
``episode.length_days`` days, one by default, and every total below is over the whole
episode: per day is the total divided by ``length_days``):

==========================  ===================================================================
metric                      formula
==========================  ===================================================================
community_cost              sum_i (payment_i + degradation_i + network_penalty_i + fee_i
                            + terminal_value_i)
terminal_value_cost         sum_i [p (SoC_i at start - SoC_i at end)^+
                            - c (SoC_i at end - SoC_i at start)^+]  (p: terminal_price,
                            c: terminal_credit_price)
no_p2p_cost                 sum_i sum_t [r_t (load - pv)^+ - f_t (pv - load)^+
                            + no_p2p_network_penalty_i,t]  (idle battery, no market)
savings_vs_no_p2p           no_p2p_cost - community_cost
savings_percent             100 * savings_vs_no_p2p / |no_p2p_cost|
captured_savings_share      sum_days savings / sum_days oracle savings (aggregate over days)
self_sufficiency            1 - grid import / load
self_consumption            1 - grid export / PV
p2p_volume_kwh              sum_t P2P energy bought
clearing_price              sum_t price_t * volume_t / sum_t volume_t
agent savings               no_p2p_cost_i - cost_i                                 [E, N]
group savings               mean_{i in G} (no_p2p_cost_i - cost_i), G a group of agents
                            (e.g. the behavioural ones of ``behaviour``)             [E]
savings_gini                mean_ij |s_i - s_j| / (2 mean_i |s_i|)
allocative_efficiency       sum_t volume_t / sum_t min(D_t, S_t)
voltage/line_violations     bus-steps outside [v_min, v_max]; branch-steps above 100 % loading
losses_kwh                  sum_t losses_kw * 0.25 h
battery_throughput_kwh      sum_i sum_t |battery AC energy|
degradation_cost            sum_i degradation_cost * throughput_i
==========================  ===================================================================

With a shared battery (``storage.mode`` market or virtual, ``envs.storage``) the accumulator
also sums the battery's infos and :func:`evaluation_summary` adds (only then):

==========================  ===================================================================
storage_throughput_kwh      sum_t |storage_energy_kwh| (its AC flow)
storage_cycles              storage_throughput_kwh / (2 (soc_max - soc_min) capacity_kwh)
storage_stored_kwh          sum_t sum_i storage_stored_kwh (virtual: into the accounts)
storage_drawn_kwh           sum_t sum_i storage_drawn_kwh (virtual: out of the accounts)
storage_loss_kwh            sum_t storage_loss_kwh (conversion losses)
storage_cost                sum_t storage_cost (the battery's bill, allocated to the members,
                            already inside their costs)
storage_payout              sum_t sum_i storage_payout (leftover balances paid out)
storage_p2p_kwh             sum_t |storage_p2p_kwh| (its market trades, market mode)
==========================  ===================================================================

with ``D_t`` and ``S_t`` the community's total demand and supply (sums of positive and of
negative net positions) at step ``t``. The terminal value (``episode.terminal_value``, charged
by the core on an episode's last step) is part of every cost: a battery that is never used
ends where it started and pays none, so the idle-battery ``no_p2p_cost`` and a policy's
``community_cost`` are compared under the same accounting. So are network penalties: the
no-P2P reference pays the penalties its own operation (batteries idle, net = load - PV) causes,
shared as the core shares a step's penalty (``no_p2p_network_penalty``, a table the core
precomputes once), so the ``no_p2p`` policy saves exactly 0, and a policy saves money by
causing fewer penalties as well as by paying less for energy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from envs.data import STEP_HOURS

if TYPE_CHECKING:
    from envs.config import StorageConfig

# Per-agent sums [B, N] and per-env sums [B] kept over an episode.
_AGENT_KEYS = ("cost", "payment", "degradation_cost", "network_penalty", "terminal_value_cost",
               "load_kwh", "pv_kwh", "battery_throughput_kwh", "no_p2p_cost", "reward")
_ENV_KEYS = ("grid_import_kwh", "grid_export_kwh", "p2p_volume_kwh", "price_volume",
             "matchable_kwh", "voltage_violations", "line_violations", "losses_kwh",
             "operator_surplus", "community_cost", "network_steps", "network_fee")
STORAGE_METRICS: tuple[str, ...] = (
    "storage_throughput_kwh", "storage_cycles", "storage_stored_kwh", "storage_drawn_kwh",
    "storage_loss_kwh", "storage_cost", "storage_payout", "storage_p2p_kwh")
"""The shared battery's metrics of :func:`evaluation_summary` (with ``storage`` on only)."""
# Per-env sums [B] of a shared battery's infos, kept only when the infos carry them:
# total key -> (info key, reduction of a step's value).
_STORAGE_SUMS = {
    "storage_throughput_kwh": ("storage_energy_kwh", "abs"),
    "storage_stored_kwh": ("storage_stored_kwh", "agents"),
    "storage_drawn_kwh": ("storage_drawn_kwh", "agents"),
    "storage_loss_kwh": ("storage_loss_kwh", "env"),
    "storage_cost": ("storage_cost", "env"),
    "storage_payout": ("storage_payout", "agents"),
    "storage_p2p_kwh": ("storage_p2p_kwh", "abs"),
}
# Per-env extremes over an episode: key -> (reduction, value at episode start).
_ENV_EXTREMES = {"v_min_pu": (torch.fmin, float("inf")), "v_max_pu": (torch.fmax, float("-inf")),
                 "max_line_loading_percent": (torch.fmax, float("-inf")),
                 "max_trafo_loading_percent": (torch.fmax, float("-inf"))}

NETWORK_INFO_KEYS: dict[str, tuple[str, ...]] = {
    "voltage_violations": ("voltage_violations", "n_voltage_violations"),
    "line_violations": ("line_violations", "n_line_violations"),
    "losses_kw": ("losses_kw",),
    "v_min_pu": ("v_min_pu",),
    "v_max_pu": ("v_max_pu",),
    "max_line_loading": ("max_line_loading", "max_line_loading_percent"),
    "max_trafo_loading": ("max_trafo_loading", "max_trafo_loading_percent"),
}
"""Per-env network statistics of a step's ``info`` ([B] each) and the names they may carry:
the core's names first (``envs.info_schema.NETWORK_INFO``), then those of
``envs.network.network_summary`` where they differ (the extreme voltages have one name,
``v_min_pu``/``v_max_pu``, in both and in the totals)."""


def network_info(info: dict[str, Tensor], name: str) -> Tensor | None:
    """The network statistic ``name`` (a key of :data:`NETWORK_INFO_KEYS`) of a step's
    ``info``, ``[B]``, or None when the environment has no network model."""
    for key in NETWORK_INFO_KEYS[name]:
        if key in info:
            return info[key]
    return None


@dataclass(frozen=True)
class EpisodeTotals:
    """Totals of finished episodes: per agent ``[E, N]`` and per env ``[E]`` tensors, E the
    number of finished episodes, plus ``day [E]``, each episode's start day (its first
    day: a multi-day episode runs over the following days)."""

    agent: dict[str, Tensor]
    env: dict[str, Tensor]
    day: Tensor

    def __len__(self) -> int:
        return int(self.day.shape[0])


def no_p2p_step_cost(load_kwh: Tensor, pv_kwh: Tensor, retail: Tensor, feed_in: Tensor,
                     network_penalty: Tensor | None = None) -> Tensor:
    """Each agent's cost of a step without P2P and with its battery idle, ``[B, N]``:
    retail * max(load - pv, 0) - feed_in * max(pv - load, 0) + its share of the network
    penalty of that operation (``network_penalty [B, N]``, the core's
    ``no_p2p_network_penalty``; None: 0)."""
    net = load_kwh - pv_kwh
    bill = retail[:, None] * net.clamp_min(0.0) + feed_in[:, None] * net.clamp_max(0.0)
    return bill if network_penalty is None else bill + network_penalty


def matchable_kwh(net_kwh: Tensor) -> Tensor:
    """The most energy a market step could match inside the community, ``[...]`` from
    ``net_kwh [..., N]`` (> 0 buys): min(total demand, total supply), kWh."""
    demand = net_kwh.clamp_min(0.0).sum(-1)
    supply = (-net_kwh).clamp_min(0.0).sum(-1)
    return torch.minimum(demand, supply)


def step_allocative_efficiency(p2p_volume_kwh: Tensor, net_kwh: Tensor) -> Tensor:
    """Allocative efficiency of one market step, ``[B]``: realised P2P volume over
    min(total supply, total demand) (:func:`matchable_kwh`); NaN where nothing could be
    matched. Volume-based, as in the P2P-market comparisons of Zhou et al. (2018), Applied
    Energy 222; 1 means every kWh that could be traded inside the community was."""
    matchable = matchable_kwh(net_kwh)
    return torch.where(matchable > 0, p2p_volume_kwh / matchable.clamp_min(1e-12),
                       torch.full_like(matchable, float("nan")))


class EpisodeAccumulator:
    """Sums a batch's step infos per episode; :meth:`update` returns finished episodes."""

    def __init__(self, n_envs: int, n_agents: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float64) -> None:
        self.agent = {key: torch.zeros(n_envs, n_agents, dtype=dtype, device=device)
                      for key in _AGENT_KEYS}
        self.env = {key: torch.zeros(n_envs, dtype=dtype, device=device) for key in _ENV_KEYS}
        self.extreme = {key: torch.full((n_envs,), start, dtype=dtype, device=device)
                        for key, (_, start) in _ENV_EXTREMES.items()}
        # The day of each env's first accumulated step of its episode (its start day).
        self.start_day = torch.zeros(n_envs, dtype=torch.int64, device=device)
        self._fresh = torch.ones(n_envs, dtype=torch.bool, device=device)

    def update(self, info: dict[str, Tensor], reward: Tensor) -> EpisodeTotals | None:
        """Add one step's ``info`` and ``reward [B, N]``; return the totals of the episodes
        that ended at this step (None if none ended), ``day`` the day of each episode's first
        step accumulated (its start day when the accumulator saw the whole episode)."""
        a, e = self.agent, self.env
        day = info["day"].to(self.start_day.device)
        self.start_day = torch.where(self._fresh, day, self.start_day)
        self._fresh = torch.zeros_like(self._fresh)
        dtype = a["cost"].dtype
        a["cost"] += info["cost"].to(dtype)
        a["payment"] += info["payment"].to(dtype)
        a["degradation_cost"] += info["degradation_cost"].to(dtype)
        a["network_penalty"] += info["network_penalty"].to(dtype)
        a["terminal_value_cost"] += info["terminal_value_cost"].to(dtype)
        a["load_kwh"] += info["load_kwh"].to(dtype)
        a["pv_kwh"] += info["pv_kwh"].to(dtype)
        a["battery_throughput_kwh"] += info["battery_energy_kwh"].abs().to(dtype)
        a["no_p2p_cost"] += no_p2p_step_cost(info["load_kwh"], info["pv_kwh"],
                                             info["retail_price"], info["feed_in_price"],
                                             info["no_p2p_network_penalty"]).to(dtype)
        a["reward"] += reward.to(dtype)
        e["grid_import_kwh"] += info["grid_import_kwh"].to(dtype)
        e["grid_export_kwh"] += info["grid_export_kwh"].to(dtype)
        volume = info["p2p_volume_kwh"].to(dtype)
        e["p2p_volume_kwh"] += volume
        price = torch.nan_to_num(info["clearing_price"].to(dtype), nan=0.0)
        e["price_volume"] += price * volume
        net = info["net_energy_kwh"].to(dtype)
        if "storage_price" in info:  # a shared battery trading in the market is a participant
            trading = ~torch.isnan(info["storage_price"])
            battery = torch.where(trading, info["storage_energy_kwh"],
                                  torch.zeros_like(info["storage_energy_kwh"]))
            net = torch.cat([net, battery.to(dtype)[:, None]], dim=1)
        e["matchable_kwh"] += matchable_kwh(net)
        e["operator_surplus"] += info["operator_surplus"].to(dtype)
        e["community_cost"] += info["community_cost"].to(dtype)
        if "network_fee" in info:
            e["network_fee"] += info["network_fee"].sum(1).to(dtype)
        if "storage_energy_kwh" in info:  # a shared battery (envs.storage)
            for key, (name, reduction) in _STORAGE_SUMS.items():
                value = info[name].to(dtype)
                value = (value.abs() if reduction == "abs" else
                         value.sum(1) if reduction == "agents" else value)
                if key not in e:
                    e[key] = torch.zeros_like(e["community_cost"])
                e[key] += value
        violations = network_info(info, "voltage_violations")
        if violations is not None:
            e["network_steps"] += 1.0
            e["voltage_violations"] += violations.to(dtype)
            for name, key in (("line_violations", "line_violations"), ("losses_kw", "losses_kwh")):
                value = network_info(info, name)
                if value is not None:
                    scale = STEP_HOURS if name == "losses_kw" else 1.0
                    e[key] += value.to(dtype) * scale
            for name, key in (("v_min_pu", "v_min_pu"), ("v_max_pu", "v_max_pu"),
                              ("max_line_loading", "max_line_loading_percent"),
                              ("max_trafo_loading", "max_trafo_loading_percent")):
                value = network_info(info, name)
                if value is not None:
                    reduce, _ = _ENV_EXTREMES[key]
                    self.extreme[key] = reduce(self.extreme[key], value.to(dtype))
        done = info.get("done")
        if done is None or not bool(done.any()):
            return None
        extremes = {k: torch.where(torch.isinf(v[done]), float("nan"), v[done])
                    for k, v in self.extreme.items()}
        totals = EpisodeTotals({k: v[done].clone() for k, v in a.items()},
                               {**{k: v[done].clone() for k, v in e.items()}, **extremes},
                               self.start_day[done].clone())
        self._fresh = done.to(self._fresh.device).clone()
        for value in (*a.values(), *e.values()):
            value[done] = 0.0
        for key, (_, start) in _ENV_EXTREMES.items():
            self.extreme[key][done] = start
        return totals


# ------------------------------------------------------------------------------------------
# Metrics from totals (each [E], one value per finished episode, unless noted)
# ------------------------------------------------------------------------------------------


def community_cost(totals: EpisodeTotals) -> Tensor:
    """Sum over agents of payment + degradation + network penalty (+ P2P network fees) +
    terminal value, currency (the env total ``community_cost`` when the totals carry it:
    :func:`schedule_totals` has no per-agent costs)."""
    if "community_cost" in totals.env:
        return totals.env["community_cost"]
    return totals.agent["cost"].sum(1)


def savings_vs_no_p2p(totals: EpisodeTotals) -> Tensor:
    """Community cost without P2P and with idle batteries (its network penalties included)
    minus the community cost, currency (positive = the policy saves money; the ``no_p2p``
    policy saves 0). Like with like: idle batteries end where they
    started, so the reference's terminal value is 0, and the policy's is in its cost."""
    return totals.agent["no_p2p_cost"].sum(1) - community_cost(totals)


def savings_percent(totals: EpisodeTotals) -> Tensor:
    """:func:`savings_vs_no_p2p` as a percentage of the no-P2P cost."""
    base = totals.agent["no_p2p_cost"].sum(1)
    return 100.0 * savings_vs_no_p2p(totals) / base.abs().clamp_min(1e-9)


def agent_savings(totals: EpisodeTotals) -> Tensor:
    """Each agent's saving against its own no-P2P, idle-battery bill, ``[E, N]``."""
    return totals.agent["no_p2p_cost"] - totals.agent["cost"]


def group_savings(totals: EpisodeTotals, members: Tensor) -> Tensor:
    """The mean saving per agent (:func:`agent_savings`) of the agents in ``members [N]``
    (bool, e.g. ``BatchedP2PEnv.behavioural``), ``[E]`` currency; NaN for an empty group."""
    savings = agent_savings(totals)
    members = members.to(savings.device)
    if not bool(members.any()):
        return torch.full(savings.shape[:1], float("nan"), dtype=savings.dtype,
                          device=savings.device)
    return savings[:, members].mean(1)


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
        "terminal_value_cost": totals.agent["terminal_value_cost"].sum(1),
        "operator_surplus": totals.env["operator_surplus"],
    }


# ------------------------------------------------------------------------------------------
# Evaluation: the oracle's totals, the full metric set, aggregation over days
# ------------------------------------------------------------------------------------------


def schedule_totals(load_kwh: Tensor, pv_kwh: Tensor, net_kwh: Tensor, battery_kwh: Tensor,
                    retail_price: Tensor, feed_in_price: Tensor, community_cost: Tensor,
                    degradation_cost: Tensor, day: Tensor, *, p2p: bool,
                    network: dict[str, Tensor] | None = None,
                    terminal_value_cost: Tensor | None = None,
                    no_p2p_network_penalty: Tensor | None = None) -> EpisodeTotals:
    """Totals of ``E`` centrally scheduled days (the oracle), comparable with those of
    :class:`EpisodeAccumulator`.

    Args (``T`` steps, ``N`` agents, float tensors):
        load_kwh, pv_kwh, net_kwh: ``[E, T, N]`` kWh per step; ``net = load - pv + battery
            (+ curtailment)``, > 0 consumes; ``pv`` before curtailment (curtailed PV counts as
            not self-consumed).
        battery_kwh: ``[E, T, N]`` AC-side battery throughput (charge + discharge), kWh.
        retail_price, feed_in_price: ``[E, T]`` currency/kWh.
        community_cost: ``[E]`` the schedule's total cost (terminal value included), currency.
        degradation_cost: ``[E, N]`` each agent's battery wear cost, currency.
        terminal_value_cost: ``[E, N]`` each agent's terminal value (terminal price times
            the SoC at the start minus at the end), currency; None: 0 (no terminal value).
        day: ``[E]`` day indices.
        p2p: whether energy moves freely inside the community (only the community's net
            position meets the grid) or every agent settles its own net position.
        network: optional per-env network totals ``[E]`` (keys of the accumulator's env dict,
            e.g. ``voltage_violations``, ``network_steps``).
        no_p2p_network_penalty: ``[E, T, N]`` the core's ``no_p2p_network_penalty`` table at
            the episodes' steps, money: the network penalties of the no-P2P reference (its
            bill, ``no_p2p_cost``, carries them as the accumulator's does); None: 0 (no
            network model, or none binding).

    A central schedule has no market and no payments between agents, so per-agent costs,
    rewards and hence agent savings and their Gini are NaN; with ``p2p`` every matchable kWh
    is shared (P2P volume = :func:`matchable_kwh`, allocative efficiency 1) at no price
    (clearing price NaN).
    """
    e, _, n = net_kwh.shape
    nan_agents = torch.full((e, n), float("nan"), dtype=net_kwh.dtype, device=net_kwh.device)
    zeros_env = torch.zeros(e, dtype=net_kwh.dtype, device=net_kwh.device)
    no_p2p = no_p2p_step_cost(
        load_kwh.reshape(-1, n), pv_kwh.reshape(-1, n), retail_price.reshape(-1),
        feed_in_price.reshape(-1),
        None if no_p2p_network_penalty is None else no_p2p_network_penalty.reshape(-1, n)
    ).reshape(e, -1, n)
    matchable = matchable_kwh(net_kwh).sum(1)
    if p2p:
        community_net = net_kwh.sum(-1)
        grid_import = community_net.clamp_min(0.0).sum(1)
        grid_export = (-community_net).clamp_min(0.0).sum(1)
        volume, price_volume = matchable, torch.full_like(matchable, float("nan"))
    else:
        grid_import = net_kwh.clamp_min(0.0).sum((1, 2))
        grid_export = (-net_kwh).clamp_min(0.0).sum((1, 2))
        volume, price_volume = zeros_env, zeros_env
    agent = {"cost": nan_agents, "payment": nan_agents, "reward": nan_agents,
             "degradation_cost": degradation_cost, "network_penalty": torch.zeros_like(nan_agents),
             "terminal_value_cost": (torch.zeros_like(nan_agents) if terminal_value_cost is None
                                     else terminal_value_cost),
             "load_kwh": load_kwh.sum(1), "pv_kwh": pv_kwh.sum(1),
             "battery_throughput_kwh": battery_kwh.sum(1), "no_p2p_cost": no_p2p.sum(1)}
    env = {key: zeros_env for key in _ENV_KEYS}
    env.update({key: torch.full_like(zeros_env, float("nan")) for key in _ENV_EXTREMES})
    env.update({"grid_import_kwh": grid_import, "grid_export_kwh": grid_export,
                "p2p_volume_kwh": volume, "price_volume": price_volume,
                "matchable_kwh": matchable, "community_cost": community_cost})
    env.update(network or {})
    return EpisodeTotals(agent, env, day)


def captured_savings_share(savings: Tensor, oracle_savings: Tensor) -> Tensor:
    """Share of the oracle's savings a policy captures over a set of days (a scalar):
    sum_d savings_d / sum_d oracle_savings_d, both against the no-P2P, idle-battery bill
    with its network penalties (:func:`savings_vs_no_p2p`). A ratio of sums, not a mean of
    daily ratios, which explode on days where the oracle saves almost nothing. NaN if the
    oracle saves nothing."""
    total = oracle_savings.sum()
    return torch.where(total > 0, savings.sum() / total.clamp_min(1e-12),
                       torch.full_like(total, float("nan")))


def evaluation_summary(totals: EpisodeTotals,
                       storage_usable_kwh: float | None = None) -> dict[str, Tensor]:
    """:func:`summary` plus the no-P2P cost, grid import and export (kWh), P2P network fees
    (currency) and the episode's extreme voltages (p.u.) and line and transformer loadings
    (%), each ``[E]``. Network metrics are NaN for
    episodes run without a network model (rather than a misleading 0).

    With a shared battery also the :data:`STORAGE_METRICS`: when the totals carry its sums
    (the accumulator of a core with ``storage`` on), or when ``storage_usable_kwh`` is given
    (the env has a shared battery: NaN for totals without its sums, e.g. a central schedule
    that does not report them). ``storage_usable_kwh``: its usable capacity
    ``(soc_max - soc_min) capacity_kwh`` (:func:`storage_usable_kwh`), the divisor of
    ``storage_cycles`` (NaN without it). Without either, no storage metric appears."""
    metrics = summary(totals)
    metrics["no_p2p_cost"] = totals.agent["no_p2p_cost"].sum(1)
    metrics["grid_import_kwh"] = totals.env["grid_import_kwh"]
    metrics["grid_export_kwh"] = totals.env["grid_export_kwh"]
    metrics["network_fee"] = totals.env["network_fee"]
    nan = torch.full_like(metrics["community_cost"], float("nan"))
    for key in _ENV_EXTREMES:
        metrics[key] = totals.env.get(key, nan)
    has_network = totals.env["network_steps"] > 0
    for key in ("voltage_violations", "line_violations", "losses_kwh", *_ENV_EXTREMES):
        metrics[key] = torch.where(has_network, metrics[key], nan)
    if "storage_throughput_kwh" in totals.env or storage_usable_kwh is not None:
        usable = storage_usable_kwh or 0.0
        for key in STORAGE_METRICS:
            if key == "storage_cycles":
                throughput = totals.env.get("storage_throughput_kwh", nan)
                metrics[key] = throughput / (2.0 * usable) if usable > 0 else nan
            else:
                metrics[key] = totals.env.get(key, nan)
    return metrics


def storage_usable_kwh(storage: StorageConfig) -> float | None:
    """The usable capacity ``(soc_max - soc_min) capacity_kwh`` of a ``storage`` config
    section, kWh; None when it is off (mode none)."""
    if not storage.enabled:
        return None
    return float((storage.soc_max - storage.soc_min) * storage.capacity_kwh)


EPISODE_SUMS: tuple[str, ...] = (
    "community_cost", "savings_vs_no_p2p", "episodic_return", "p2p_volume_kwh",
    "voltage_violations", "line_violations", "losses_kwh", "battery_throughput_kwh",
    "degradation_cost", "network_penalty", "terminal_value_cost", "operator_surplus",
    "no_p2p_cost", "grid_import_kwh", "grid_export_kwh", "network_fee", *STORAGE_METRICS)
"""Metrics of :func:`evaluation_summary` that are sums over an episode's steps (money,
energy, counts, the return); the others are ratios, prices or extremes."""


def per_day(values: dict[str, Tensor], episode_days: int) -> dict[str, Tensor]:
    """``values`` (of :func:`evaluation_summary`, per episode) per day of an episode of
    ``episode_days`` days: the :data:`EPISODE_SUMS` divided by ``episode_days``, the rest as
    they are (unchanged for one-day episodes)."""
    if episode_days == 1:
        return dict(values)
    return {key: value / episode_days if key in EPISODE_SUMS else value
            for key, value in values.items()}


def concat_totals(parts: list[EpisodeTotals]) -> EpisodeTotals:
    """The episodes of several :class:`EpisodeTotals` in one, in order."""
    return EpisodeTotals({k: torch.cat([p.agent[k] for p in parts]) for k in parts[0].agent},
                         {k: torch.cat([p.env[k] for p in parts]) for k in parts[0].env},
                         torch.cat([p.day for p in parts]))


def mean_std(values: Tensor) -> tuple[float, float]:
    """Mean and (population, ddof 0) standard deviation of per-episode values ``[E]``,
    ignoring NaN; (NaN, NaN) if every value is NaN."""
    finite = values[~torch.isnan(values)].double()
    if finite.numel() == 0:
        return float("nan"), float("nan")
    return float(finite.mean()), float(finite.std(unbiased=False))
