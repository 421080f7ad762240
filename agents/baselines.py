"""Reference traders of the benchmark and the perfect-foresight optimum, by name.

Rule-based policies (each a :class:`agents.policy.Policy`, built by :func:`make_policy` from a
spec ``name[:key=value[:key=value...]]``, e.g. ``fixed_price:price_fraction=0.7``):

====================  =============================================================================
name                  behaviour
====================  =============================================================================
``no_p2p``            battery idle, no market: evaluated under mechanism ``none`` whatever the
                      config says. It is the no-market reference every saving is measured
                      against (its cost is each agent's own grid bill).
``self_consumption``  battery charges from the agent's own PV surplus and discharges to cover
                      its own deficit of the current step (true load and PV of the step, as
                      a home energy-management system measures them); bids and asks truthfully
                      at the tariff midpoint (price fraction 0.5).
``time_of_use``       time-of-use battery rule (``envs.rules``, defined there in full): at
                      the day's lowest retail price (when arbitrage pays after losses and
                      wear) charge from the grid towards ``soc_max``, spread evenly over the
                      rest of the cheap block so that the homes do not create a rebound peak;
                      at the day's highest retail price self-consumption (discharge to cover
                      the own deficit); at every other price hold (charge PV surplus only).
                      Under a flat tariff it is ``self_consumption``. Bids and asks at the
                      tariff midpoint.
``community_self_     self-consumption of the whole community (``envs.rules``): each battery
consumption``         covers its own home as ``self_consumption``, then the surplus (deficit)
                      the community still has is absorbed by (covered from) all batteries with
                      room, in proportion to the AC power each can still take (give); it
                      reads the community's net load, as agents do with
                      ``observation.community``. Bids and asks at the tariff midpoint.
``community_time_     ``time_of_use`` built on ``community_self_consumption`` (``envs.rules``):
of_use``              the community's sharing wherever ``time_of_use`` self-consumes; under a
                      flat tariff it is ``community_self_consumption``. Midpoint bids.
``zi``                zero-intelligence constrained traders (Gode & Sunder 1993, "Allocative
                      efficiency of markets with zero-intelligence traders", J. Political
                      Economy 101(1)): each step every agent draws its price uniformly in
                      [feed-in, retail] (its reservation band: no buyer bids above the grid's
                      price, no seller asks below the grid's), from the policy's own seeded
                      ``torch.Generator``. Battery idle by default, so that ``zi`` measures
                      the market alone; ``battery=self_consumption`` switches it on.
``fixed_price``       everyone posts the same price fraction (``price_fraction``, default 0.5)
                      with the self-consumption battery rule.
``random``            battery fraction uniform in [-1, 1] and price fraction uniform in [0, 1]
                      (seeded); a sanity reference, and a stress test for the oracle bound.
``loss_averse``       a loss-averse (behavioural) trader (``envs.rules``, derived there): it
                      refuses to sell below its reference price or buy above it, and not
                      knowing the fair price it asks the fraction sqrt(lambda) / (1 +
                      sqrt(lambda)) of [feed-in, retail] as a seller and bids 1 / (1 +
                      sqrt(lambda)) as a buyer (0.6 and 0.4 at lambda = 2.25; the midpoint
                      at 1); seller or buyer by its net position after the
                      ``self_consumption`` battery rule. ``loss_aversion``: lambda (default
                      the env's ``behaviour.loss_aversion``); ``population``: ``all`` agents
                      (default) or only the env's ``behavioural`` ones (``behaviour.share`` /
                      ``agents``), the others trading as ``self_consumption`` (midpoint), for
                      mixed populations. With discrete actions the prices snap to the nearest
                      price level.
====================  =============================================================================

The perfect-foresight optimum (:class:`PerfectForesightOracle`) solves the linear program of
``agents/oracle.py`` for each evaluated episode (a day, or the ``episode.length_days``
consecutive days of a multi-day episode planned as one, the terminal value at its end) with
the env's own profiles, tariffs and battery parameters, in float64 whatever the env's dtype
(:func:`float64_tables`): ``oracle`` (free P2P inside the community, batteries controlled
centrally) and
``oracle_network`` (the same within the feeder's voltage and loading limits, linearised around
the no-load point by :func:`network_linearisation`). It is charged the env's terminal value
(``env.terminal_price`` per kWh taken from the batteries over the episode, ``env.
terminal_credit_price`` credited per kWh added, see ``envs.config.EpisodeConfig``) as every
policy is, so its cost is a lower bound on any policy's community cost under any mechanism on
the same episode, without network penalties. ``oracle_household`` is the per-household optimum:
each home plans its own battery alone with perfect foresight of its own load and PV and the
tariff, imports at retail and exports at feed-in on its own (no sharing), with the same
terminal value; the community's cost is the sum over homes. ``oracle_household - oracle`` is
what coordination (sharing energy and planning batteries together) is worth on that day.
With a shared community battery (``storage.mode`` market or virtual) ``oracle`` and
``oracle_network`` plan it too (its power at its own bus in the network rows) and are charged
its degradation, terminal value and constant capacity cost; ``oracle_household`` and
``oracle_no_p2p_idle`` exclude the shared battery and its capacity cost (no household has a
community battery): they remain the bounds of the community without it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from agents.actions import env_actions
from agents.oracle import (
    BatteryFleet,
    NetworkLinearisation,
    OracleResult,
    SharedBattery,
    solve_oracle,
)
from agents.policy import Policy
from envs import metrics
from envs.config import BehaviourConfig
from envs.data import STEPS_PER_DAY, STEPS_PER_YEAR
from envs.rules import (
    community_self_consumption_fraction,
    community_time_of_use_fraction,
    current_load_pv_kw,
    loss_averse_price_fraction,
    planned_net_kwh,
    self_consumption_fraction,
    time_of_use_fraction,
)

__all__ = ["BASELINES", "CommunitySelfConsumption", "CommunityTimeOfUse", "FixedPrice",
           "LossAverse", "MidpointRule", "NoP2P",
           "ORACLES", "PerfectForesightOracle", "RandomPolicy", "SelfConsumption", "TimeOfUse",
           "ZeroIntelligence", "battery_fleet", "shared_battery", "storage_capacity_cost",
           "current_load_pv_kw", "float64_tables", "make_oracle", "make_policy",
           "network_linearisation", "self_consumption_fraction", "time_of_use_fraction"]

MIDPOINT = 0.5
"""Price fraction of the tariff midpoint (r + f) / 2."""


# --------------------------------------------------------------------------------------------
# Rule-based traders
# --------------------------------------------------------------------------------------------


# The battery rules (current_load_pv_kw, self_consumption_fraction, time_of_use_fraction)
# live in envs.rules, shared with the core's rule_battery observation feature.


def _batch_zeros(env: Any) -> Tensor:
    return torch.zeros(env.n_envs, env.n_agents, dtype=env.dtype, device=env.device)


class NoP2P:
    """Battery idle, no market (mechanism ``none``): the no-market reference."""

    mechanism = "none"

    def __init__(self, name: str = "no_p2p") -> None:
        self.name = name

    def reset(self, env: Any, seed: int | None = None) -> None:
        pass

    def act(self, obs: Tensor, env: Any) -> Tensor:
        zeros = _batch_zeros(env)
        return env_actions(zeros, zeros + MIDPOINT, env)


class MidpointRule:
    """A battery rule of ``envs.rules`` (``rule(env) -> [B, N]`` fraction); truthful bids and
    asks at the tariff midpoint. Subclasses name the rule."""

    mechanism = None
    default_name = ""
    rule: Callable[[Any], Tensor]

    def __init__(self, name: str | None = None) -> None:
        self.name = name or self.default_name

    def reset(self, env: Any, seed: int | None = None) -> None:
        pass

    def act(self, obs: Tensor, env: Any) -> Tensor:
        battery = type(self).rule(env)
        return env_actions(battery, torch.full_like(battery, MIDPOINT), env)


class SelfConsumption(MidpointRule):
    """Self-consumption battery rule (``envs.rules.self_consumption``); bids and asks at the
    midpoint."""

    default_name = "self_consumption"
    rule = staticmethod(self_consumption_fraction)


class TimeOfUse(MidpointRule):
    """Time-of-use battery rule (``envs.rules.time_of_use``: grid charge spread over the
    cheapest hours, hold, self-consumption at the peak); bids and asks at the midpoint."""

    default_name = "time_of_use"
    rule = staticmethod(time_of_use_fraction)


class CommunitySelfConsumption(MidpointRule):
    """Community self-consumption (``envs.rules.community_self_consumption``: every battery
    covers its own home, then the community's remaining surplus or deficit is shared among
    the batteries with room); bids and asks at the midpoint."""

    default_name = "community_self_consumption"
    rule = staticmethod(community_self_consumption_fraction)


class CommunityTimeOfUse(MidpointRule):
    """Time of use on community self-consumption (``envs.rules``' ``community_time_of_use``:
    ``time_of_use`` with the community's sharing where it would self-consume); bids and asks
    at the midpoint."""

    default_name = "community_time_of_use"
    rule = staticmethod(community_time_of_use_fraction)


class FixedPrice:
    """Everyone posts ``price_fraction`` of [feed-in, retail]; self-consumption battery."""

    mechanism = None

    def __init__(self, name: str = "fixed_price", price_fraction: float = 0.5) -> None:
        if not 0.0 <= price_fraction <= 1.0:
            raise ValueError(f"fixed_price: price_fraction must lie in [0, 1], got "
                             f"{price_fraction}")
        self.name = name
        self.price_fraction = float(price_fraction)

    def reset(self, env: Any, seed: int | None = None) -> None:
        pass

    def act(self, obs: Tensor, env: Any) -> Tensor:
        battery = self_consumption_fraction(env)
        return env_actions(battery, torch.full_like(battery, self.price_fraction), env)


class _Seeded:
    """A policy that draws from its own generator, reseeded on every ``reset`` (with the
    episode's ``seed`` if given, else its own)."""

    mechanism = None

    def __init__(self, name: str, seed: int) -> None:
        self.name = name
        self.seed = int(seed)
        self.generator = torch.Generator()

    def reset(self, env: Any, seed: int | None = None) -> None:
        self.generator = torch.Generator(device=env.device)
        self.generator.manual_seed(self.seed if seed is None else int(seed))


class ZeroIntelligence(_Seeded):
    """Zero-intelligence constrained traders (Gode & Sunder 1993): price uniform in
    [feed-in, retail] each step; battery ``idle`` (default) or ``self_consumption``."""

    def __init__(self, name: str = "zi", battery: str = "idle", seed: int = 0) -> None:
        if battery not in ("idle", "self_consumption"):
            raise ValueError(f"zi: battery must be idle or self_consumption, got {battery!r}")
        super().__init__(name, seed)
        self.battery = battery

    def act(self, obs: Tensor, env: Any) -> Tensor:
        price = torch.rand(env.n_envs, env.n_agents, generator=self.generator,
                           device=env.device, dtype=env.dtype)
        battery = (self_consumption_fraction(env) if self.battery == "self_consumption"
                   else torch.zeros_like(price))
        return env_actions(battery, price, env)


class RandomPolicy(_Seeded):
    """Battery fraction uniform in [-1, 1], price fraction uniform in [0, 1] (seeded)."""

    def __init__(self, name: str = "random", seed: int = 0) -> None:
        super().__init__(name, seed)

    def act(self, obs: Tensor, env: Any) -> Tensor:
        shape = (env.n_envs, env.n_agents)
        battery = torch.rand(shape, generator=self.generator, device=env.device,
                             dtype=env.dtype) * 2.0 - 1.0
        price = torch.rand(shape, generator=self.generator, device=env.device, dtype=env.dtype)
        return env_actions(battery, price, env)


class LossAverse:
    """Loss-averse traders (``envs.rules.loss_averse_price_fraction``): sellers ask
    ``sqrt(lambda) / (1 + sqrt(lambda))`` of [feed-in, retail], buyers bid ``1 / (1 +
    sqrt(lambda))``; ``self_consumption`` battery. ``loss_aversion``: lambda in [1, 100] (None:
    the env's ``behaviour.loss_aversion``); ``population``: ``all`` or ``behavioural`` (only
    the env's behavioural agents, ``BatchedP2PEnv.behavioural``; the others post the
    midpoint)."""

    mechanism = None
    POPULATIONS = ("all", "behavioural")

    def __init__(self, name: str = "loss_averse", loss_aversion: float | None = None,
                 population: str = "all") -> None:
        if loss_aversion is not None:
            # The one range check of lambda: BehaviourConfig's (ConfigError is a ValueError).
            BehaviourConfig(loss_aversion=float(loss_aversion))
        if population not in self.POPULATIONS:
            raise ValueError(f"loss_averse: population must be one of {self.POPULATIONS}, got "
                             f"{population!r}")
        self.name = name
        self.loss_aversion = None if loss_aversion is None else float(loss_aversion)
        self.population = population

    def reset(self, env: Any, seed: int | None = None) -> None:
        pass

    def act(self, obs: Tensor, env: Any) -> Tensor:
        battery = self_consumption_fraction(env)
        loss_aversion = (env.config.behaviour.loss_aversion if self.loss_aversion is None
                         else self.loss_aversion)
        price = loss_averse_price_fraction(planned_net_kwh(env, battery), loss_aversion)
        if self.population == "behavioural":
            price = torch.where(env.behavioural, price, torch.full_like(price, MIDPOINT))
        return env_actions(battery, price, env)


BASELINES: dict[str, type] = {
    "no_p2p": NoP2P,
    "self_consumption": SelfConsumption,
    "time_of_use": TimeOfUse,
    "community_self_consumption": CommunitySelfConsumption,
    "community_time_of_use": CommunityTimeOfUse,
    "zi": ZeroIntelligence,
    "fixed_price": FixedPrice,
    "random": RandomPolicy,
    "loss_averse": LossAverse,
}
"""Rule-based policies by name."""


def _parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``name:key=value:...`` -> (name, {key: value}); values parsed as YAML scalars."""
    import yaml

    name, *options = spec.split(":")
    kwargs: dict[str, Any] = {}
    for option in options:
        if "=" not in option:
            raise ValueError(f"policy '{spec}': option '{option}' is not key=value")
        key, value = option.split("=", 1)
        kwargs[key.strip()] = yaml.safe_load(value)
    return name.strip(), kwargs


def make_policy(spec: str) -> Policy:
    """The rule-based policy named by ``spec`` (``name[:key=value...]``, see the module
    docstring); its ``name`` is the full spec, so variants get their own table rows."""
    name, kwargs = _parse_spec(spec)
    if name not in BASELINES:
        raise ValueError(f"unknown policy {name!r}; rule-based policies: "
                         f"{', '.join(BASELINES)}; oracles: {', '.join(ORACLES)}")
    try:
        return BASELINES[name](name=spec, **kwargs)
    except TypeError as error:
        raise ValueError(f"policy '{spec}': {error}") from None


# --------------------------------------------------------------------------------------------
# Perfect-foresight optimum
# --------------------------------------------------------------------------------------------


def float64_tables(env: Any) -> Any:
    """``env`` itself when it computes in float64, else a float64 CPU core of one environment
    built from ``env``'s config and feeder data: the same tables, with tariffs, PV power and
    battery sizes not rounded to the env's dtype. The oracle LP is built from these: from a
    float32 env's rounded tables (retail 0.3 as 0.30000001) its optimum can lie above what a
    policy reaches in that env (case33bw, days 6, 20, 356: 4e-5 to 8e-5 currency above
    ``self_consumption``), not below."""
    if env.dtype == torch.float64:
        return env
    from envs.core import BatchedP2PEnv

    config = dataclasses.replace(env.config, n_envs=1, dtype="float64", device="cpu")
    return BatchedP2PEnv(config, data=env.data)


def battery_fleet(env: Any) -> BatteryFleet:
    """The env's batteries for the oracle LP: capacities and power limits per agent
    (``env.capacity_kwh``, ``env.battery_kw``), efficiencies, SoC band, initial SoC and
    degradation cost from ``env.config.battery``."""
    cfg = env.config.battery
    capacity = env.capacity_kwh.detach().double().cpu().numpy()
    power = env.battery_kw.detach().double().cpu().numpy()
    return BatteryFleet(capacity_kwh=capacity, max_charge_kw=power, max_discharge_kw=power,
                        charge_efficiency=cfg.charge_efficiency,
                        discharge_efficiency=cfg.discharge_efficiency, soc_min=cfg.soc_min,
                        soc_max=cfg.soc_max, initial_soc_kwh=cfg.initial_soc * capacity,
                        degradation_cost=cfg.degradation_cost)


def shared_battery(env: Any) -> SharedBattery | None:
    """The community's shared battery for the oracle LP (``env.config.storage``), or None
    when ``storage.mode`` is ``none``. Its initial SoC is ``initial_soc * capacity_kwh`` in
    mode ``market`` and ``soc_min * capacity_kwh`` in mode ``virtual`` (which starts with
    empty accounts); power, efficiencies, SoC band and degradation cost as configured."""
    cfg = env.config.storage
    if cfg.mode == "none":
        return None
    initial = cfg.initial_soc if cfg.mode == "market" else cfg.soc_min
    return SharedBattery(capacity_kwh=cfg.capacity_kwh, power_kw=cfg.power_kw,
                         charge_efficiency=cfg.charge_efficiency,
                         discharge_efficiency=cfg.discharge_efficiency, soc_min=cfg.soc_min,
                         soc_max=cfg.soc_max, initial_soc_kwh=initial * cfg.capacity_kwh,
                         degradation_cost=cfg.degradation_cost)


def storage_capacity_cost(env: Any, n_days: int) -> float:
    """The shared battery's capacity cost over ``n_days`` days (currency): ``capacity_cost *
    capacity_kwh`` per day (the env charges it in equal parts over the day's steps, whatever
    the battery does); 0 when ``storage.mode`` is ``none``."""
    cfg = env.config.storage
    if cfg.mode == "none":
        return 0.0
    return float(cfg.capacity_cost * cfg.capacity_kwh * n_days)


def day_profiles(env: Any, day: int, n_days: int = 1) -> dict[str, np.ndarray]:
    """The ``load_kwh``, ``pv_kwh``, ``load_kvar``, ``no_p2p_network_penalty`` ``[T, N]`` and
    ``retail_price``, ``feed_in_price`` ``[T]`` (float64 numpy) of ``n_days`` consecutive days
    from day ``day`` (``T = 96 n_days``; wrapping from the year's last day to its first),
    exactly what the env steps through in an episode of ``n_days`` days starting on ``day``
    (``no_p2p_network_penalty``: the core's table, the no-P2P reference's penalties)."""
    index = (torch.arange(STEPS_PER_DAY * n_days, device=env.device)
             + int(day) * STEPS_PER_DAY) % STEPS_PER_YEAR

    def numpy(tensor: Tensor) -> np.ndarray:
        return tensor.detach().double().cpu().numpy()

    return {"load_kwh": numpy(env.load_kw[index]) * env.dt_h,
            "pv_kwh": numpy(env.pv_kw[index]) * env.dt_h,
            "load_kvar": numpy(env.load_kvar[index]),
            "retail_price": np.tile(numpy(env.retail_price), n_days),
            "feed_in_price": np.tile(numpy(env.feed_in_price), n_days),
            "no_p2p_network_penalty": numpy(env.no_p2p_network_penalty[index])}


class _FeederSensitivity:
    """No-load voltage and sensitivities of the env's feeder (built once per oracle).

    One column per agent; with a shared battery (``storage.mode`` not none) one more, the
    last, for the battery's bus (``has_storage_column``): the core's own network model when
    it has that ``N + 1``-th column (``env.network.model``), else the feeder's net with a
    load added at ``storage.bus``."""

    def __init__(self, env: Any) -> None:
        from envs.network import BatchedPowerFlow

        net = env.data.net()
        if net is None:
            raise ValueError(f"oracle_network needs a pandapower net; feeder {env.data.name!r} "
                             "has none")
        self.has_storage_column = env.config.storage.mode != "none"
        n_agents = len(net.load)  # one agent per load of the feeder
        model = None
        if self.has_storage_column:
            core_model = getattr(getattr(env, "network", None), "model", None)
            if core_model is not None and core_model.n_agent == n_agents + 1:
                model = core_model
            else:
                from envs.storage import storage_bus, with_battery_load

                net = with_battery_load(net, storage_bus(env.config.storage, net))
        if model is None:
            model = BatchedPowerFlow.from_pandapower(net, dtype=torch.float64)
        expected = n_agents + self.has_storage_column
        if model.n_agent != expected:
            raise ValueError(f"the feeder's power-flow model has {model.n_agent} injection "
                             f"columns, the oracle expects {expected} (agents"
                             f"{' and the shared battery' if self.has_storage_column else ''})")

        def numpy(tensor: Tensor) -> np.ndarray:
            return tensor.detach().double().cpu().numpy()

        sensitivity = model.sensitivity()
        v_no_load = numpy(model.no_load_voltage())
        valid = np.isfinite(v_no_load)
        self.v_no_load = v_no_load[valid]  # [n_bus]
        # Consumption is minus injection: flip the injection sensitivities. Columns: the
        # agents, then the shared battery when has_storage_column.
        self.dv_dp = -numpy(sensitivity.voltage_pu_per_kw)[valid]  # [n_bus, N(+1)] p.u./kW
        self.dv_dq = -numpy(sensitivity.voltage_pu_per_kvar)[valid]  # [n_bus, N(+1)] p.u./kvar
        sqrt3 = math.sqrt(3.0)
        line_kw = []
        for line in net.line.itertuples():
            vn_kv = float(net.bus.at[line.from_bus, "vn_kv"])
            line_kw.append(sqrt3 * vn_kv * line.max_i_ka * line.df * line.parallel * 1000.0)
        trafo_kw = [t.sn_mva * t.parallel * t.df * 1000.0 for t in net.trafo.itertuples()]
        rating_kw = np.asarray(line_kw + trafo_kw, dtype=np.float64)
        ptdf = numpy(sensitivity.branch_ptdf)  # [n_branch, N(+1)] kW flow per kW injected
        self.dloading_dp = -100.0 * ptdf / rating_kw[:, None]  # [n_branch, N(+1)] %/kW


def network_linearisation(env: Any, day: int,
                          sensitivity: _FeederSensitivity | None = None,
                          n_days: int = 1, shared: bool = False) -> NetworkLinearisation:
    """The feeder's voltage and loading limits of ``n_days`` days from day ``day``
    (:func:`day_profiles`), linearised for the oracle.

    From ``envs.network.BatchedPowerFlow`` (the env's own Z-bus model of ``env.data.net()``)
    at the no-load point: bus voltages ``v[t] = v_no_load + dv_dq @ q_kvar[t] + dv_dp @
    p_kw[t]`` with the day's fixed reactive loads in ``v0``; signed branch loading (%) ``=
    -100 * PTDF @ p_kw / rating_kw``, the active-power share of the current loading (rating
    ``sqrt(3) V_n I_max`` for lines, ``S_n`` for transformers; reactive flows neglected).
    Limits: ``config.network.v_min``/``v_max`` and 100 % loading. Isolated buses are left out.

    ``N`` injection columns (the agents), or with ``shared`` ``N + 1``, the last the shared
    battery's bus (for ``solve_oracle(shared=...)``; the env must have a shared battery). The
    battery draws no reactive power.
    """
    sensitivity = sensitivity or _FeederSensitivity(env)
    if shared and not sensitivity.has_storage_column:
        raise ValueError("network_linearisation(shared=True) needs a shared battery "
                         "(storage.mode market or virtual)")
    profile = day_profiles(env, day, n_days)
    n_agents = profile["load_kvar"].shape[1]
    columns = n_agents + 1 if shared else n_agents
    v0 = (sensitivity.v_no_load[None, :]
          + profile["load_kvar"] @ sensitivity.dv_dq[:, :n_agents].T)
    cfg = env.config.network
    return NetworkLinearisation(v0_pu=v0, dv_dp=sensitivity.dv_dp[:, :columns], v_min=cfg.v_min,
                                v_max=cfg.v_max, dline_dp=sensitivity.dloading_dp[:, :columns],
                                line_max_percent=100.0)


class PerfectForesightOracle:
    """The perfect-foresight LP of ``agents/oracle.py`` as an evaluated "policy".

    Args:
        name: table name.
        p2p: free energy sharing inside the community (False: every agent settles its own
            net position with the grid).
        use_battery: let the oracle drive the batteries (False: idle).
        network: respect the feeder's linearised voltage and loading limits
            (:func:`network_linearisation`); PV curtailment is then allowed.
        tie_break: among the optimal schedules pick the greedy one (``agents.oracle.
            solve_oracle``'s ``tie_break``: grid exchange avoided as early as possible, each
            battery serving its own home first); the demonstrations of
            ``imitation.tie_break``.

    With a shared battery (``storage.mode`` market or virtual) a P2P oracle (``p2p=True``:
    ``oracle``, ``oracle_network``) plans it with the homes' batteries
    (:func:`shared_battery`, ``solve_oracle(shared=...)``; idle with ``use_battery=False``)
    and its reported cost includes the battery's degradation, terminal value and the constant
    capacity cost (:func:`storage_capacity_cost`), so it stays a lower bound on the
    community's cost with the battery. An oracle without P2P (``p2p=False``:
    ``oracle_household``, ``oracle_no_p2p_idle``) excludes the shared battery and its
    capacity cost: each household plans alone and has no community battery, so these are the
    bounds of the community *without* it.
    """

    mechanism = None

    def __init__(self, name: str = "oracle", p2p: bool = True, use_battery: bool = True,
                 network: bool = False, tie_break: bool = False) -> None:
        self.name = name
        self.p2p = p2p
        self.use_battery = use_battery
        self.network = network
        self.tie_break = tie_break
        self._sensitivity: _FeederSensitivity | None = None
        self._tables: tuple[Any, Any] | None = None  # (env, float64_tables(env))

    def shared_battery(self, env: Any) -> SharedBattery | None:
        """The shared battery this oracle plans (:func:`shared_battery`), None without one
        or without P2P (a household oracle has no community battery)."""
        return shared_battery(env) if self.p2p else None

    def capacity_cost(self, env: Any, n_days: int) -> float:
        """The shared battery's capacity cost over ``n_days`` days that this oracle's
        reported cost includes (:func:`storage_capacity_cost`; 0 without P2P)."""
        return storage_capacity_cost(env, n_days) if self.p2p else 0.0

    def solve_day(self, env: Any, day: int) -> tuple[OracleResult, dict[str, np.ndarray]]:
        """The optimal schedule of day ``day`` alone (96 steps, the terminal value at its
        end) and the day's profiles, from ``env``'s tables in float64
        (:func:`float64_tables`)."""
        return self.solve_days(env, day, 1)

    def solve_episode(self, env: Any, day: int, tie_break_reference_kwh: np.ndarray | None = None
                      ) -> tuple[OracleResult, dict[str, np.ndarray]]:
        """The optimal schedule of ``env``'s episode starting on day ``day``
        (``env.episode_days`` consecutive days, :meth:`solve_days`): what :meth:`evaluate`
        compares with a policy's episode; :meth:`solve_day` for one-day episodes."""
        return self.solve_days(env, day, env.episode_days, tie_break_reference_kwh)

    def solve_days(self, env: Any, day: int, n_days: int,
                   tie_break_reference_kwh: np.ndarray | None = None
                   ) -> tuple[OracleResult, dict[str, np.ndarray]]:
        """One plan over ``n_days`` consecutive days from day ``day`` (:func:`day_profiles`;
        ``T = 96 n_days`` steps, one SoC trajectory, the terminal value charged at the end
        only) and their profiles, from ``env``'s tables in float64 (:func:`float64_tables`).
        ``tie_break_reference_kwh [T, N]``: with ``tie_break``, the optimum nearest to this
        battery schedule (``agents.oracle.solve_oracle``)."""
        if self._tables is None or self._tables[0] is not env:
            self._tables = (env, float64_tables(env))
        tables = self._tables[1]
        profile = day_profiles(tables, day, n_days)
        shared = self.shared_battery(tables)
        linearisation = None
        if self.network:
            if self._sensitivity is None:
                self._sensitivity = _FeederSensitivity(tables)
            linearisation = network_linearisation(tables, day, self._sensitivity, n_days,
                                                  shared=shared is not None)
        result = solve_oracle(profile["load_kwh"], profile["pv_kwh"], profile["retail_price"],
                              profile["feed_in_price"], battery_fleet(tables), p2p=self.p2p,
                              use_battery=self.use_battery, dt_h=env.dt_h,
                              network=linearisation, terminal_price=env.terminal_price,
                              terminal_credit_price=env.terminal_credit_price,
                              tie_break=self.tie_break,
                              tie_break_reference_kwh=tie_break_reference_kwh, shared=shared)
        return result, profile

    def trajectory(self, result: OracleResult, profile: dict[str, np.ndarray], dt_h: float
                   ) -> dict[str, np.ndarray]:
        """The schedule in the layout of ``agents.policy.evaluate_policy``'s trajectories
        (no clearing price: energy is shared at no price; P2P volume = matched energy)."""
        shared = metrics.matchable_kwh(torch.as_tensor(result.net_kwh)).numpy()
        nan = np.full(len(result.grid_import_kwh), np.nan)
        voltage = result.voltage_pu
        return {
            "load_kw": profile["load_kwh"].sum(1) / dt_h,
            "pv_kw": profile["pv_kwh"].sum(1) / dt_h,
            "soc_kwh": result.soc_kwh[1:],
            "clearing_price": nan,
            "retail_price": profile["retail_price"],
            "feed_in_price": profile["feed_in_price"],
            "p2p_volume_kwh": shared if self.p2p else np.zeros_like(nan),
            "grid_import_kwh": result.grid_import_kwh,
            "grid_export_kwh": result.grid_export_kwh,
            "v_min_pu": nan if voltage is None else voltage.min(1),
            "v_max_pu": nan if voltage is None else voltage.max(1),
        }

    def evaluate(self, env: Any, days: list[int], progress: Any = None
                 ) -> tuple[metrics.EpisodeTotals, list[OracleResult]]:
        """Totals (:func:`envs.metrics.schedule_totals`) and schedules of the episodes
        starting on ``days`` (each ``env.episode_days`` days, :meth:`solve_episode`). With a
        shared battery the community cost adds its capacity cost (:meth:`capacity_cost`) to
        the LP's cost, and the grid import and export count its flow."""
        results, profiles = [], []
        for day in days:
            result, profile = self.solve_episode(env, int(day))
            results.append(result)
            profiles.append(profile)
            if progress is not None:
                progress.update(1)

        def stack(values: list[np.ndarray]) -> Tensor:
            return torch.as_tensor(np.stack(values), dtype=torch.float64)

        network = None
        if self.network:
            cfg = env.config.network
            voltage = stack([r.voltage_pu for r in results])  # [E, T, n_bus]
            loading = stack([r.line_loading_percent for r in results]).abs()  # [E, T, n_line]
            tolerance = 1e-6
            network = {
                "network_steps": torch.full((len(days),), float(env.episode_steps),
                                            dtype=torch.float64),
                "voltage_violations": ((voltage < cfg.v_min - tolerance)
                                       | (voltage > cfg.v_max + tolerance)).sum((1, 2)).double(),
                "line_violations": (loading > 100.0 + 1e-4).sum((1, 2)).double(),
                "losses_kwh": torch.full((len(days),), float("nan"), dtype=torch.float64),
                "v_min_pu": voltage.amin((1, 2)), "v_max_pu": voltage.amax((1, 2)),
                "max_line_loading_percent": loading.amax((1, 2)),
            }
        capacity = self.capacity_cost(env, env.episode_days)
        throughput = stack([r.charge_kwh + r.discharge_kwh for r in results])
        degradation = stack([env.config.battery.degradation_cost
                             * (r.charge_kwh + r.discharge_kwh).sum(0) for r in results])
        terminal = stack([r.agent_terminal_value_cost for r in results])  # [E, N]
        totals = metrics.schedule_totals(
            load_kwh=stack([p["load_kwh"] for p in profiles]),
            pv_kwh=stack([p["pv_kwh"] for p in profiles]),
            net_kwh=stack([r.net_kwh for r in results]),
            battery_kwh=throughput,
            retail_price=stack([p["retail_price"] for p in profiles]),
            feed_in_price=stack([p["feed_in_price"] for p in profiles]),
            community_cost=torch.tensor([r.cost + capacity for r in results],
                                        dtype=torch.float64),
            degradation_cost=degradation, terminal_value_cost=terminal,
            no_p2p_network_penalty=stack([p["no_p2p_network_penalty"] for p in profiles]),
            day=torch.as_tensor(np.asarray(days, dtype=np.int64)),
            p2p=self.p2p, network=network)
        if any(r.shared_charge_kwh is not None for r in results):
            # The community's position with the grid includes the shared battery's flow.
            position = stack([r.net_kwh.sum(1) + r.shared_charge_kwh - r.shared_discharge_kwh
                              for r in results])  # [E, T]
            totals.env["grid_import_kwh"] = position.clamp_min(0.0).sum(1)
            totals.env["grid_export_kwh"] = (-position).clamp_min(0.0).sum(1)
            # The battery's use as evaluate.py reports it (envs.metrics' storage_* sums); a
            # central plan has no accounts, payouts, market or bill of its own: NaN there.
            from envs.storage import conversion_loss_kwh

            cfg = env.config.storage
            charge = stack([r.shared_charge_kwh for r in results])
            discharge = stack([r.shared_discharge_kwh for r in results])
            nan = torch.full_like(totals.env["community_cost"], float("nan"))
            totals.env.update({
                "storage_throughput_kwh": (charge + discharge).sum(1),
                "storage_loss_kwh": conversion_loss_kwh(
                    charge, discharge, cfg.charge_efficiency, cfg.discharge_efficiency).sum(1),
                "storage_cost": nan,
                "storage_stored_kwh": nan, "storage_drawn_kwh": nan, "storage_payout": nan,
                "storage_p2p_kwh": nan})
        return totals, results


ORACLES: dict[str, dict[str, bool]] = {
    "oracle": {"p2p": True, "use_battery": True, "network": False},
    "oracle_network": {"p2p": True, "use_battery": True, "network": True},
    "oracle_household": {"p2p": False, "use_battery": True, "network": False},
    "oracle_no_p2p_idle": {"p2p": False, "use_battery": False, "network": False},
}
"""Oracle variants by name. ``oracle_household``: each agent settles its own net position, so
the one LP decomposes into an independent perfect-foresight plan per household (no sharing).
``oracle_no_p2p_idle`` reproduces ``no_p2p``: a consistency check of the LP against the
env. With a shared battery (``storage.mode`` not none) ``oracle`` and ``oracle_network`` plan it
too and are charged its costs (capacity cost included); ``oracle_household`` and
``oracle_no_p2p_idle`` exclude the shared battery and its capacity cost (a household alone has no
community battery): they bound the community without it (:class:`PerfectForesightOracle`)."""


def make_oracle(name: str, tie_break: bool = False) -> PerfectForesightOracle:
    """The oracle variant ``name`` (a key of :data:`ORACLES`); ``tie_break``: its greedy
    optimal schedule (:class:`PerfectForesightOracle`)."""
    if name not in ORACLES:
        raise ValueError(f"unknown oracle {name!r}; allowed: {', '.join(ORACLES)}")
    return PerfectForesightOracle(name=name, tie_break=tie_break, **ORACLES[name])
