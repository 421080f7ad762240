"""Shared community storage: one battery the members of a community share (``storage``).

Two operating modes (``storage.mode``, :class:`envs.config.StorageConfig`):

- ``market`` (RENew Nexus-like): the battery is one more participant of the P2P market,
  after the agents. Each step its operator posts a battery fraction in [-1, 1] (of its power
  limit; > 0 charges) and a price fraction in [0, 1] of the band [feed-in, retail], exactly
  as an agent does; the battery is driven within its limits (``envs.physics.battery_step``)
  and its AC energy is its market position: what the market does not clear settles with the
  grid. The operator is a built-in rule (``storage.rule``: ``community_self_consumption``
  charges with the members' surplus of the step and discharges into their deficit, orders at
  the middle of the band; ``idle``; under ``market.mechanism`` none, with no market to trade
  in, the rules keep the battery idle) or, with ``storage.operator`` agent, a policy: the
  PettingZoo env then has the agent :data:`BATTERY_AGENT` with its own spaces
  (:func:`operator_observation`), and the batched core's ``step`` takes its actions
  ``[B, 2]`` as ``storage_actions``.
- ``virtual`` (PowerBank / sonnenCommunity-like): member ``i`` holds an account ``a_i``
  (kWh) of size ``S_i`` (``subscription_kwh``). Before the market, each step, with
  ``x_i = load - PV + home battery`` (kWh, > 0 a deficit):
  stored ``s_i = min(max(-x_i, 0), S_i - a_i)``; drawn ``d_i = min(max(x_i, 0), a_i)``
  within ``draw_hours`` (else 0). The physical battery carries the members' net
  ``p = sum s - sum d``: when ``p`` exceeds what the cells can take (power limit
  ``P dt charge_efficiency`` or room ``soc_max C - E``) every ``s_i`` is scaled down by one
  factor, when ``-p`` exceeds ``P dt / discharge_efficiency`` every ``d_i`` is. The cells
  then change by exactly ``p`` (accounts are cell energy): ``E = soc_min C + sum_i a_i +
  pool`` at all times, where ``pool`` is energy the operator owns (balances it bought at
  settlement), released as fast as the power limit allows: ``y = min(pool, p + P dt /
  discharge_efficiency)``. The cell change is ``p - y`` and the AC flow ``q = (p - y) /
  charge_efficiency`` when charging, ``(p - y) * discharge_efficiency`` when discharging; the
  battery's exchange with the grid ``g = q - p`` buys its conversion losses at retail
  (``g > 0``) and sells the released pool at feed-in (``g < 0``). The members' market
  positions are ``x_i + s_i - d_i``. At settlement (every midnight with ``settle`` day, the
  episode's end with ``settle`` episode, and always at the episode's end) each balance is
  paid at ``leftover_price`` and emptied (its energy joins the pool); at the episode's end
  the pool is credited at the feed-in price after discharge losses.

In both modes the battery is an extra load at its bus (``storage.bus``) in the power flow,
``q / dt`` kW, and it pays its share of network penalties like an agent. Its costs, the
operator's bill ``operator_cost`` of the step: market, its market and grid payment; virtual,
the grid exchange ``retail g+ - feed_in g-`` and the leftover payouts; in both, degradation
``degradation_cost |q|``, capacity ``capacity_cost C / 96``, its network penalty share and
its terminal value (market mode: the home batteries' rule, ``episode.terminal_value``;
virtual: minus the pool's credit) are allocated to the members by ``cost_allocation``:
``subscription`` in proportion to ``S_i`` (equal by default), ``throughput`` in proportion
to ``s_i + d_i`` of the step (by subscription in a step without any). A member's cost is its
own plus ``share_i * operator_cost - payout_i``: the members' costs sum to the community's
whole bill, battery included (``tests/test_storage.py``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from envs import physics
from envs.config import ConfigError, StorageConfig
from envs.data import STEP_HOURS, STEPS_PER_DAY

BATTERY_AGENT = "community_battery"
"""The shared battery's name: the PettingZoo agent of ``storage.operator`` agent, and the
load it is in the power flow."""

OPERATOR_FEATURES: tuple[str, ...] = (
    "soc", "tod_sin", "tod_cos", "dow_sin", "dow_cos", "retail", "feed_in", "last_price",
    "community_net")
"""The operator agent's observation (mode market, operator agent): the battery's SoC as a
fraction of capacity, the shared time and price features of the agents
(``envs.observations.SHARED_FEATURES``, same scaling) and the members' net load of the
step (load - PV summed over members, over the sum of their peak loads)."""

AGENT_INFO: tuple[str, ...] = (
    "storage_stored_kwh", "storage_drawn_kwh", "storage_account_kwh", "storage_payout",
    "storage_cost_share")
"""Per-agent info keys with a shared battery: ``storage_stored_kwh`` ``s_i`` and
``storage_drawn_kwh`` ``d_i`` (virtual mode; 0 in market mode), kWh; ``storage_account_kwh``
the balance after the step (after a settlement: 0), kWh; ``storage_payout`` the leftover
balance paid out this step, money; ``storage_cost_share`` the member's share of the
battery's ``storage_cost``, money (both in ``cost``: ``+ share - payout``)."""

ENV_INFO: tuple[str, ...] = (
    "storage_energy_kwh", "storage_soc_kwh", "storage_grid_kwh", "storage_p2p_kwh",
    "storage_loss_kwh", "storage_cost", "storage_network_penalty", "storage_price")
"""Per-community info keys with a shared battery: ``storage_energy_kwh`` its AC flow ``q``
(> 0 charging), kWh; ``storage_soc_kwh`` cell energy after the step, kWh;
``storage_grid_kwh`` its exchange with the grid (> 0 import), kWh; ``storage_p2p_kwh``
energy it bought (> 0) or sold in the market (market mode), kWh; ``storage_loss_kwh`` the
conversion loss of the step, kWh; ``storage_cost`` the operator's bill of the step (what is
allocated), money; ``storage_network_penalty`` its network-penalty share, money;
``storage_price`` its posted price (market mode; NaN in virtual mode), currency/kWh."""


def conversion_loss_kwh(charge_kwh: Any, discharge_kwh: Any, charge_efficiency: float,
                        discharge_efficiency: float) -> Any:
    """The energy lost converting AC charge and discharge (kWh, each >= 0; tensors or
    arrays): ``charge (1 - eta_c) + discharge (1 / eta_d - 1)``, the ``storage_loss_kwh`` of
    the core and of the oracle's planned flows."""
    return (charge_kwh * (1.0 - charge_efficiency)
            + discharge_kwh * (1.0 / discharge_efficiency - 1.0))


class StorageFlows(NamedTuple):
    """What the shared battery does in one step (``[B]`` per community, ``[B, N]`` per
    member)."""

    position_kwh: Tensor
    """``[B, N]`` the members' market positions (virtual: ``x + s - d``; market: ``x``)."""
    stored_kwh: Tensor
    """``[B, N]`` ``s_i`` (0 in market mode)."""
    drawn_kwh: Tensor
    """``[B, N]`` ``d_i`` (0 in market mode)."""
    account_kwh: Tensor
    """``[B, N]`` balances after the step and its settlement."""
    payout: Tensor
    """``[B, N]`` leftover balances paid out this step, money."""
    energy_kwh: Tensor
    """``[B]`` AC flow ``q``, kWh."""
    soc_kwh: Tensor
    """``[B]`` cell energy after the step."""
    grid_kwh: Tensor
    """``[B]`` virtual mode: ``g = q - p``; market mode: 0 (filled after the market)."""
    loss_kwh: Tensor
    """``[B]`` conversion loss, kWh."""
    price: Tensor
    """``[B]`` posted price (market mode), NaN in virtual mode."""


class SharedStorage:
    """The shared battery of a core: its parameters as tensors, and the step's arithmetic
    (pure tensor code: compiled with the core's stages).

    Args:
        config: the ``storage`` section (mode not none).
        agent_names: the community's agents.
        device, dtype: the core's.
        mechanism: ``market.mechanism``.
    """

    def __init__(self, config: StorageConfig, agent_names: tuple[str, ...],
                 device: torch.device, dtype: torch.dtype, mechanism: str = "uniform") -> None:
        self.config = config
        self.mode = config.mode
        self.mechanism = mechanism
        """The market's mechanism (``market.mechanism``): under ``none`` there is no market
        and the operator rule keeps the battery idle."""
        n = len(agent_names)
        names = list(agent_names)
        if config.members is None:
            members = np.ones(n, dtype=bool)
        else:
            unknown = [name for name in config.members if name not in names]
            if unknown:
                raise ConfigError(
                    f"config key 'storage.members': got {unknown[0]!r}; allowed: names of this "
                    f"community's agents ({', '.join(names[:5])}{', ...' if n > 5 else ''})")
            members = np.isin(np.asarray(names), np.asarray(config.members))
        n_members = int(members.sum())
        sizes = config.subscription_kwh
        if isinstance(sizes, list):
            if len(sizes) != n_members:
                raise ConfigError(
                    f"config key 'storage.subscription_kwh': got {len(sizes)} sizes; allowed: "
                    f"one number, or one size per member ({n_members} members)")
            subscription = np.zeros(n)
            subscription[members] = sizes if config.members is None else [
                sizes[config.members.index(name)] for name in np.asarray(names)[members]]
        else:
            subscription = np.where(members, float(sizes), 0.0)
        self.n_members = n_members
        self.member = torch.as_tensor(members, device=device)
        """``[N]`` bool: the members."""
        self.subscription_kwh = torch.as_tensor(subscription, dtype=dtype, device=device)
        """``[N]`` each member's account size, kWh (0 for non-members)."""
        self.subscription_share = self.subscription_kwh / self.subscription_kwh.sum()
        """``[N]`` the members' shares of the costs under ``subscription`` allocation."""
        self.capacity_kwh = config.capacity_kwh
        self.power_kw = config.power_kw
        self.charge_efficiency = config.charge_efficiency
        self.discharge_efficiency = config.discharge_efficiency
        self.floor_kwh = config.soc_min * config.capacity_kwh
        self.ceiling_kwh = config.soc_max * config.capacity_kwh
        self.initial_kwh = (config.initial_soc * config.capacity_kwh if self.mode == "market"
                            else self.floor_kwh)
        """Cell energy at every episode's start (virtual mode: the floor, empty accounts)."""
        self.capacity_cost_per_step = config.capacity_cost * config.capacity_kwh / STEPS_PER_DAY
        hour = torch.arange(STEPS_PER_DAY, device=device, dtype=torch.float64) * STEP_HOURS
        start, end = config.draw_hours
        self.draw_window = (hour >= start) & (hour < end)
        """``[96]`` bool: the steps in which members may draw (virtual mode)."""

    # ----------------------------------------------------------------------------------------

    def operator_rule(self, position_kwh: Tensor) -> tuple[Tensor, Tensor]:
        """The built-in operator rule's action ``(battery fraction [B], price fraction [B])``
        for the members' positions ``[B, N]`` of the step (mode market, operator rule)."""
        surplus = -(position_kwh * self.member).sum(dim=1)
        if self.config.rule == "idle" or self.mechanism == "none":
            fraction = torch.zeros_like(surplus)
        else:  # community_self_consumption
            fraction = (surplus / (self.power_kw * STEP_HOURS)).clamp(-1.0, 1.0)
        return fraction, torch.full_like(surplus, 0.5)

    def market_step(self, position_kwh: Tensor, soc_kwh: Tensor, battery_fraction: Tensor,
                    price_fraction: Tensor, retail: Tensor, feed_in: Tensor,
                    account_kwh: Tensor) -> StorageFlows:
        """Mode market: the battery driven by the operator's action (``[B]`` each) from
        ``soc_kwh [B]``; its market order is ``(energy_kwh, price)``."""
        capacity = torch.full_like(soc_kwh, self.capacity_kwh)
        battery = physics.battery_step(
            soc_kwh, battery_fraction * self.power_kw * STEP_HOURS, capacity,
            torch.full_like(soc_kwh, self.power_kw), self.charge_efficiency,
            self.discharge_efficiency, self.config.soc_min, self.config.soc_max, STEP_HOURS)
        energy = battery.energy_kwh
        loss = conversion_loss_kwh(energy.clamp_min(0.0), (-energy).clamp_min(0.0),
                                   self.charge_efficiency, self.discharge_efficiency)
        zeros = torch.zeros_like(position_kwh)
        return StorageFlows(
            position_kwh=position_kwh, stored_kwh=zeros, drawn_kwh=zeros,
            account_kwh=account_kwh, payout=zeros, energy_kwh=energy, soc_kwh=battery.soc_kwh,
            grid_kwh=torch.zeros_like(energy), loss_kwh=loss,
            price=feed_in + price_fraction * (retail - feed_in))

    def virtual_step(self, position_kwh: Tensor, soc_kwh: Tensor, account_kwh: Tensor,
                     step_of_day: Tensor, settle_now: Tensor, leftover_price: Tensor
                     ) -> StorageFlows:
        """Mode virtual (see the module docstring): the members' positions ``x [B, N]``
        before the battery, the cells ``soc_kwh [B]``, balances ``account_kwh [B, N]``,
        ``step_of_day [B]``, ``settle_now [B]`` bool (settlement after this step) and the
        ``leftover_price [B]``."""
        member = self.member
        window = self.draw_window[step_of_day][:, None]
        surplus = (-position_kwh).clamp_min(0.0) * member
        deficit = position_kwh.clamp_min(0.0) * member * window
        stored = torch.minimum(surplus, (self.subscription_kwh - account_kwh).clamp_min(0.0))
        drawn = torch.minimum(deficit, account_kwh)
        total_stored, total_drawn = stored.sum(dim=1), drawn.sum(dim=1)
        step_kwh = self.power_kw * STEP_HOURS
        charge_limit = torch.minimum(torch.full_like(soc_kwh, step_kwh * self.charge_efficiency),
                                     (self.ceiling_kwh - soc_kwh).clamp_min(0.0))
        discharge_limit = step_kwh / self.discharge_efficiency
        net = total_stored - total_drawn
        # One factor per community scales the side that exceeds the battery's limits.
        store_scale = torch.where(
            net > charge_limit,
            (charge_limit + total_drawn) / total_stored.clamp_min(1e-30),
            torch.ones_like(net)).clamp(0.0, 1.0)
        draw_scale = torch.where(
            net < -discharge_limit,
            (discharge_limit + total_stored) / total_drawn.clamp_min(1e-30),
            torch.ones_like(net)).clamp(0.0, 1.0)
        stored = stored * store_scale[:, None]
        drawn = drawn * draw_scale[:, None]
        net = stored.sum(dim=1) - drawn.sum(dim=1)
        account = account_kwh + stored - drawn
        pool = (soc_kwh - self.floor_kwh - account_kwh.sum(dim=1)).clamp_min(0.0)
        release = torch.minimum(pool, (net + discharge_limit).clamp_min(0.0))
        change = net - release
        energy = torch.where(change >= 0.0, change / self.charge_efficiency,
                             change * self.discharge_efficiency)
        soc = (soc_kwh + change).clamp(self.floor_kwh, self.ceiling_kwh)
        loss = conversion_loss_kwh(energy.clamp_min(0.0), (-energy).clamp_min(0.0),
                                   self.charge_efficiency, self.discharge_efficiency)
        payout = torch.where(settle_now[:, None], account * leftover_price[:, None],
                             torch.zeros_like(account))
        account = torch.where(settle_now[:, None], torch.zeros_like(account), account)
        return StorageFlows(
            position_kwh=position_kwh + stored - drawn, stored_kwh=stored, drawn_kwh=drawn,
            account_kwh=account, payout=payout, energy_kwh=energy, soc_kwh=soc,
            grid_kwh=energy - net, loss_kwh=loss,
            price=torch.full_like(soc, float("nan")))

    def allocate(self, operator_cost: Tensor, flows: StorageFlows) -> Tensor:
        """Each member's share ``[B, N]`` of the operator's bill ``[B]`` (the rows sum to
        it): by subscription, or by the step's stored + drawn energy (``throughput``; by
        subscription where no member stored or drew)."""
        share = self.subscription_share.expand_as(flows.stored_kwh)
        if self.config.cost_allocation == "throughput":
            moved = flows.stored_kwh + flows.drawn_kwh
            total = moved.sum(dim=1, keepdim=True)
            share = torch.where(total > 0.0, moved / total.clamp_min(1e-30), share)
        return share * operator_cost[:, None]

    def operator_observation(self, soc_kwh: Tensor, shared: Tensor,
                             community_net: Tensor) -> Tensor:
        """``[B, len(OPERATOR_FEATURES)]``: the operator agent's observation from the
        battery's cells ``soc_kwh [B]``, the agents' shared features ``[B, 7]`` and the
        members' net load ``[B]``."""
        return torch.cat([(soc_kwh / self.capacity_kwh)[:, None], shared,
                          community_net[:, None]], dim=1)


def storage_bus(config: StorageConfig, net) -> int:
    """The pandapower bus index of the battery (``storage.bus``) on ``net``: the index or
    name given, else the low-voltage bus of the first transformer, else the first load's
    bus. Raises ConfigError naming ``storage.bus`` and the feeder's buses when it is not on
    the feeder."""
    bus = config.bus
    if bus is None:
        if len(net.trafo):
            return int(net.trafo.lv_bus.iloc[0])
        return int(net.load.bus.iloc[0])
    if isinstance(bus, str):
        matches = net.bus.index[net.bus.name.astype(str) == bus]
        if len(matches) == 1:
            return int(matches[0])
    elif bus in net.bus.index and bool(net.bus.in_service.get(bus, True)):
        return int(bus)
    names = [str(name) for name in net.bus.name.iloc[:6]]
    raise ConfigError(
        f"config key 'storage.bus': got {bus!r}; allowed: null, an in-service bus index of "
        f"this feeder (0..{int(net.bus.index.max())}) or one bus name (e.g. "
        f"{', '.join(names)})")


def with_battery_load(net, bus: int):
    """A copy of pandapower ``net`` with the battery as its last load (``BATTERY_AGENT`` at
    ``bus``, 0 MW): the power flow's extra column."""
    import copy

    import pandapower as pp

    work = copy.deepcopy(net)
    pp.create_load(work, bus=bus, p_mw=0.0, q_mvar=0.0, name=BATTERY_AGENT)
    return work


def require_rule_operator(config: StorageConfig, where: str) -> None:
    """Raise ConfigError unless the shared battery, if any, is driven by its built-in rule:
    an operator agent (``storage.operator`` agent, mode market) acts through the PettingZoo
    env (``envs.make_env``) only; ``where`` names what refuses it (``train.py``, ...)."""
    if config.mode == "market" and config.operator == "agent":
        raise ConfigError(
            f"config key 'storage.operator': got 'agent'; allowed in {where}: 'rule' (the "
            f"battery's operator agent {BATTERY_AGENT!r} acts through the PettingZoo env, "
            f"envs.make_env; {where} drives the battery with storage.rule)")
