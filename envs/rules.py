"""Rule-based battery decisions as pure batched torch functions of the core's tensors.

One implementation serves both the rule-based traders (``agents.baselines``) and the core's
optional ``rule_battery`` observation feature (``observation.rule``, ``envs.observations``);
the numba engine mirrors them in ``envs.single.engine.rule_fraction`` and
``community_rule_fractions``. Every
function returns a battery fraction ``[B, N]`` in [-1, 1] of each agent's power limit
(> 0 charges), 0 for agents without a battery. The core cuts any request at the battery's
SoC limits (``envs.physics.battery_step``), so the rules may ask for more than fits.

=====================  =====================================================================
rule                   battery fraction
=====================  =====================================================================
``self_consumption``   ``clamp((pv - load) / battery_kw, -1, 1)``: charge the own PV surplus,
                       cover the own deficit of the step (true load and PV, as a home
                       energy-management system measures them).
``time_of_use``        from the day's retail tariff table (:func:`tou_schedule`):

                       * **cheap** steps (retail at the day's minimum, when the day has more
                         than one price and arbitrage pays, see below): charge from the grid
                         towards ``soc_max``, spread evenly over the rest of the cheap block
                         (:func:`time_of_use`), or faster when the own PV surplus is larger;
                         never discharge;
                       * **expensive** steps (retail at the day's maximum): self-consumption,
                         i.e. discharge to cover the own deficit (surplus still charges);
                       * every other step: **hold** for the expensive hours: charge the own
                         PV surplus, never discharge.

                       With a flat tariff every step is at the maximum, so the rule is
                       exactly ``self_consumption``.
``community_self_``    :func:`community_self_consumption`: self-consumption of the whole
``consumption``        community. Each battery first covers its own home as
                       ``self_consumption``; the PV surplus (or deficit) the community
                       still has after that is then absorbed by (covered from) every battery
                       with room left, shared in proportion to the AC power each can still
                       take (give) this step. Needs the community's net load, which a P2P
                       platform publishes (``observation.community``).
``community_time_``    ``time_of_use`` with ``community_self_consumption`` in place of the
``of_use``             home's own self-consumption wherever ``time_of_use`` uses it (cheap,
                       hold and expensive steps alike); under a flat tariff it is exactly
                       ``community_self_consumption``.
=====================  =====================================================================

**Time of use, in detail.** Cheap steps charge from the grid only if a kWh bought at the
day's lowest price and used at its highest saves money after losses and wear:
``(max_retail - degradation) * eta_c * eta_d > min_retail + degradation`` (buy 1 kWh AC,
pay wear on it, store ``eta_c``, deliver ``eta_c * eta_d`` at the peak and pay wear on that);
otherwise cheap steps are hold steps. A *cheap block* is a maximal run of consecutive cheap
steps of the day (no wrap over midnight: the STRONG tariff's 00-06 h and 22-24 h are two
blocks). At a cheap step with ``k`` cheap steps left in its block (this one included) the
battery asks for the AC energy still missing to ``soc_max``, divided evenly over them:

    fraction = max(self_consumption, ((soc_max * capacity - soc) / eta_c) / (k * dt_h) / battery_kw)

clamped to [0, 1]. Charging at this constant rate fills the battery exactly at the end of
the block, the SoC rising linearly from where it entered (``soc_k = soc_0 + (soc_max *
capacity - soc_0) * j / K`` after ``j`` of the block's ``K`` steps). Why spread: with every
home charging at full power at the start of the cheap window (the naive rule) the feeder
sees a rebound peak of ``sum(battery_kw)`` at 00:00; spread over the window the extra load
is the smallest constant that still fills every battery in time (from the default 50 % SoC
over the STRONG tariff's 6-hour night block: 0.07 kW per kWh of capacity against the 0.5
kW/kWh limit).

Only the retail tariff decides; a time-of-use feed-in price is ignored. The env's tariff is
the same every day, so the schedule is computed once per env (``BatchedP2PEnv.tou_schedule``).

**A price rule: the loss-averse trader** (:func:`loss_averse_price_fraction`, the
``loss_averse`` baseline of ``agents.baselines``). A behavioural prosumer refuses to sell below
its reference price and to buy above it. It does not know the fair price of the step, so it
takes every price of the grid band as equally likely to be the reference, ``R ~ U[f, r]``
(feed-in, retail), and posts the lowest ask ``a`` (highest bid ``b``) whose expected
loss-averse value is not negative, with the value of a trade at ``p`` being ``p - R`` for a
gain and ``-lambda (R - p)`` for a loss (the value function of ``envs.behaviour`` with linear
exponents). For a seller, with ``y = (a - f) / (r - f)``:

    E[V] = (r - f) * (y**2 / 2 - lambda * (1 - y)**2 / 2) >= 0
    <=>  y >= sqrt(lambda) / (1 + sqrt(lambda))

and symmetrically a buyer bids the fraction ``1 / (1 + sqrt(lambda))``: with lambda = 1 both
post the midpoint (the truthful traders' price), with Tversky & Kahneman's 2.25 sellers ask
0.6 and buyers bid 0.4 of the band (with 4: 2/3 and 1/3). The gap between what the trader asks
and what it bids is the endowment effect (Kahneman, Knetsch & Thaler 1990, "Experimental
tests of the endowment effect and the Coase theorem", J. Political Economy 98(6)): a
loss-averse seller's ask is above its bid as a buyer. Whether the agent sells this step is
decided on its net position after its battery (:func:`planned_net_kwh`).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from envs import physics
from envs.config import OBSERVATION_RULES, BatteryConfig
from envs.data import STEPS_PER_DAY, STEPS_PER_YEAR

__all__ = ["RULES", "TouSchedule", "community_self_consumption",
           "community_self_consumption_fraction", "community_time_of_use_fraction",
           "current_load_pv_kw", "loss_averse_price_fraction", "planned_net_kwh",
           "rule_fraction",
           "self_consumption", "self_consumption_fraction", "time_of_use",
           "time_of_use_fraction", "tou_schedule"]


class TouSchedule(NamedTuple):
    """The time-of-use rule's per-step table of a day, each ``[96]`` (see module docstring)."""

    grid_charge: Tensor
    """bool: a cheap step on which the battery charges from the grid."""
    hold: Tensor
    """bool: a step on which the battery holds its energy (charges PV surplus only)."""
    cheap_steps_left: Tensor
    """Cheap steps left in the step's cheap block, this one included (0 elsewhere), in the
    core's float dtype."""


def tou_schedule(retail_price: Tensor, battery: BatteryConfig) -> TouSchedule:
    """The time-of-use rule's table from the day's retail tariff ``retail_price [96]``
    (currency/kWh per step) and the battery's efficiencies and wear cost."""
    low, high = retail_price.min(), retail_price.max()
    efficiency = battery.charge_efficiency * battery.discharge_efficiency
    wear = battery.degradation_cost
    arbitrage = bool((high - wear) * efficiency > low + wear) and bool(high > low)
    expensive = retail_price == high
    grid_charge = (retail_price == low) & arbitrage
    steps = torch.arange(retail_price.shape[0], device=retail_price.device)
    # First step at or after each step that is not a grid-charge step (96 past the end).
    breaks = torch.where(grid_charge, torch.full_like(steps, retail_price.shape[0]), steps)
    next_break = breaks.flip(0).cummin(0).values.flip(0)
    cheap_steps_left = torch.where(grid_charge, next_break - steps, 0).to(retail_price.dtype)
    return TouSchedule(grid_charge=grid_charge, hold=~(grid_charge | expensive),
                       cheap_steps_left=cheap_steps_left)


def self_consumption(load_kw: Tensor, pv_kw: Tensor, battery_kw: Tensor) -> Tensor:
    """Battery fraction ``[B, N]`` that charges the own PV surplus and covers the own deficit:
    ``clamp((pv - load) / battery_kw, -1, 1)`` (0 without a battery), from this step's load
    and PV ``[B, N]`` (kW) and the power limits ``battery_kw [N]``."""
    has_battery = battery_kw > 0
    fraction = (pv_kw - load_kw) / torch.where(has_battery, battery_kw, 1.0)
    return torch.where(has_battery, fraction, 0.0).clamp(-1.0, 1.0)


def community_self_consumption(load_kw: Tensor, pv_kw: Tensor, soc_kwh: Tensor,
                               battery_kw: Tensor, capacity_kwh: Tensor,
                               battery: BatteryConfig, dt_h: float) -> Tensor:
    """The community self-consumption battery fraction ``[B, N]`` (module docstring).

    Args:
        load_kw, pv_kw: this step's load and PV ``[B, N]``, kW.
        soc_kwh: state of charge ``[B, N]``, kWh in the cells.
        battery_kw, capacity_kwh: power limits and capacities ``[N]``.
        battery: SoC band and efficiencies (the limits of ``envs.physics.battery_step``).
        dt_h: step length, hours.
    """
    has_battery = battery_kw > 0
    own_kw = self_consumption(load_kw, pv_kw, battery_kw) * battery_kw
    # AC power each battery can still take / give this step beyond its own home's share.
    charge_kw = torch.minimum(
        battery_kw, (battery.soc_max * capacity_kwh - soc_kwh).clamp_min(0.0)
        / battery.charge_efficiency / dt_h)
    discharge_kw = torch.minimum(
        battery_kw, (soc_kwh - battery.soc_min * capacity_kwh).clamp_min(0.0)
        * battery.discharge_efficiency / dt_h)
    room_in = torch.where(has_battery, (charge_kw - own_kw.clamp_min(0.0)).clamp_min(0.0), 0.0)
    room_out = torch.where(has_battery, (discharge_kw + own_kw.clamp_max(0.0)).clamp_min(0.0),
                           0.0)
    surplus_kw = (pv_kw - load_kw - own_kw).sum(dim=1, keepdim=True)  # [B, 1], < 0: deficit
    total_in = room_in.sum(dim=1, keepdim=True)
    total_out = room_out.sum(dim=1, keepdim=True)
    extra_kw = torch.where(
        surplus_kw > 0,
        room_in * (surplus_kw.clamp_max(total_in) / total_in.clamp_min(1e-12)),
        -room_out * ((-surplus_kw).clamp_max(total_out) / total_out.clamp_min(1e-12)))
    fraction = (own_kw + extra_kw) / torch.where(has_battery, battery_kw, 1.0)
    return torch.where(has_battery, fraction, 0.0).clamp(-1.0, 1.0)


def time_of_use(load_kw: Tensor, pv_kw: Tensor, soc_kwh: Tensor, battery_kw: Tensor,
                capacity_kwh: Tensor, step: Tensor, schedule: TouSchedule, soc_max: float,
                charge_efficiency: float, dt_h: float, base: Tensor | None = None) -> Tensor:
    """The time-of-use battery fraction ``[B, N]`` (module docstring); ``base``: the
    self-consumption fraction it builds on, ``[B, N]`` (None: :func:`self_consumption`;
    ``community_time_of_use`` passes :func:`community_self_consumption`'s).

    Args:
        load_kw, pv_kw: this step's load and PV ``[B, N]``, kW.
        soc_kwh: state of charge ``[B, N]``, kWh in the cells.
        battery_kw, capacity_kwh: power limits and capacities ``[N]``.
        step: step of the day ``[B]`` (0..95) whose tariff applies.
        schedule: :func:`tou_schedule` of the day's tariff.
        soc_max: highest SoC, fraction of capacity; charge_efficiency: AC -> cells.
        dt_h: step length, hours.
    """
    if base is None:
        base = self_consumption(load_kw, pv_kw, battery_kw)
    has_battery = battery_kw > 0
    missing_ac_kwh = (soc_max * capacity_kwh - soc_kwh).clamp_min(0.0) / charge_efficiency
    window_h = schedule.cheap_steps_left[step].clamp_min(1.0)[:, None] * dt_h
    spread = missing_ac_kwh / window_h / torch.where(has_battery, battery_kw, 1.0)
    charge = torch.maximum(base, torch.where(has_battery, spread, 0.0)).clamp(0.0, 1.0)
    hold = base.clamp_min(0.0)
    return torch.where(schedule.grid_charge[step][:, None], charge,
                       torch.where(schedule.hold[step][:, None], hold, base))


# --------------------------------------------------------------------------------------------
# The same rules on a core's current state (agents.baselines, BatchedP2PEnv.observe)
# --------------------------------------------------------------------------------------------


def current_load_pv_kw(env: Any) -> tuple[Tensor, Tensor]:
    """True load and PV of the step each environment is about to trade, kW, each ``[B, N]``
    (``env.load_kw`` / ``env.pv_kw`` at the current time index)."""
    index = (env.day * STEPS_PER_DAY + env.step_of_day) % STEPS_PER_YEAR
    return env.load_kw[index], env.pv_kw[index]


def self_consumption_fraction(env: Any) -> Tensor:
    """:func:`self_consumption` on a core's (``envs.core.BatchedP2PEnv``) current step."""
    load_kw, pv_kw = current_load_pv_kw(env)
    return self_consumption(load_kw, pv_kw, env.battery_kw)


def community_self_consumption_fraction(env: Any) -> Tensor:
    """:func:`community_self_consumption` on a core's current step and SoC."""
    load_kw, pv_kw = current_load_pv_kw(env)
    return community_self_consumption(load_kw, pv_kw, env.soc_kwh, env.battery_kw,
                                      env.capacity_kwh, env.config.battery, env.dt_h)


def time_of_use_fraction(env: Any, base: Tensor | None = None) -> Tensor:
    """:func:`time_of_use` on a core's current step and SoC (its ``tou_schedule``; the
    tariff of step ``min(step_of_day, 95)``, as the core's prices); ``base`` as there."""
    load_kw, pv_kw = current_load_pv_kw(env)
    battery = env.config.battery
    step = env.step_of_day.clamp_max(STEPS_PER_DAY - 1)
    return time_of_use(load_kw, pv_kw, env.soc_kwh, env.battery_kw, env.capacity_kwh, step,
                       env.tou_schedule, battery.soc_max, battery.charge_efficiency, env.dt_h,
                       base)


def community_time_of_use_fraction(env: Any) -> Tensor:
    """``community_time_of_use``: :func:`time_of_use` built on
    :func:`community_self_consumption` instead of the home's own self-consumption."""
    return time_of_use_fraction(env, community_self_consumption_fraction(env))


RULES = {"self_consumption": self_consumption_fraction, "time_of_use": time_of_use_fraction,
         "community_self_consumption": community_self_consumption_fraction,
         "community_time_of_use": community_time_of_use_fraction}
"""Rules by name (the names of ``observation.rule`` but ``none``), each ``rule(env) -> [B, N]``."""
if tuple(RULES) != OBSERVATION_RULES[1:]:
    raise ImportError(f"envs.rules.RULES {tuple(RULES)} do not follow envs.config."
                      f"OBSERVATION_RULES {OBSERVATION_RULES}")


def rule_fraction(name: str, env: Any) -> Tensor:
    """The battery fraction ``[B, N]`` of rule ``name`` (a key of :data:`RULES`) on ``env``."""
    return RULES[name](env)


# --------------------------------------------------------------------------------------------
# A price rule (agents.baselines' loss_averse)
# --------------------------------------------------------------------------------------------


def loss_averse_price_fraction(net_kwh: Tensor, loss_aversion: float) -> Tensor:
    """The loss-averse trader's price fraction of [feed-in, retail] ``[B, N]`` (module
    docstring): sellers (``net_kwh < 0``, kWh of the step, > 0 buys) ask
    ``sqrt(lambda) / (1 + sqrt(lambda))``, everyone else bids ``1 / (1 + sqrt(lambda))``;
    ``loss_aversion`` is lambda >= 1 (1: the midpoint)."""
    root = math.sqrt(loss_aversion)
    ask = root / (1.0 + root)
    return torch.where(net_kwh < 0, ask, 1.0 - ask).to(net_kwh.dtype)


def planned_net_kwh(env: Any, battery_fraction: Tensor) -> Tensor:
    """Each agent's net position ``[B, N]`` (kWh, > 0 buys) if it takes ``battery_fraction
    [B, N]`` now: ``load - PV + battery AC energy`` of the current step, the battery cut at
    its limits by ``envs.physics.battery_step`` as the core's step cuts it."""
    load_kw, pv_kw = current_load_pv_kw(env)
    battery = env.config.battery
    step = physics.battery_step(
        env.soc_kwh, battery_fraction * env.battery_kw * env.dt_h, env.capacity_kwh,
        env.battery_kw, battery.charge_efficiency, battery.discharge_efficiency,
        battery.soc_min, battery.soc_max, env.dt_h)
    return load_kw * env.dt_h - pv_kw * env.dt_h + step.energy_kwh
