"""Typed, validated configuration for the peergrid environment.

YAML holds the values, these dataclasses hold the types, defaults and allowed ranges. A config
is built with :func:`build_config` from a YAML path, a nested dict or ``None`` (the defaults),
plus optional dotted overrides (``{"mechanism": "mmr"}``). Unknown keys, wrong types and
out-of-range values raise one :class:`ConfigError` that names the full key and what is allowed;
nothing is silently ignored or rewritten after construction.

Every number is checked where it enters (:func:`from_dict`): floats must be finite (``.inf``
and ``.nan`` are rejected for every float key, the agents' configs included) and at most
:data:`MAX_FLOAT` in magnitude (so that float32 tables built from them stay finite), integers must
fit int64 (a float with an integral value, ``1e6``, is accepted as that integer), and sizes
have generous upper bounds (:data:`MAX_AGENTS`, :data:`MAX_ENVS`, :data:`MAX_ACTION_LEVELS`)
so that a typo fails here rather than as an allocation. YAML (files and ``key=value``
overrides) is read by :class:`ConfigLoader`: ``3e-4`` is a float, a duplicate key is an error,
and a syntax or encoding error is a :class:`ConfigError` naming the file or override.

The same machinery (:func:`from_dict`, :func:`apply_overrides`) types the agents' configs.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from envs.behaviour import REFERENCES, TIME_SCALES, TK_ALPHA, TK_BETA, TK_LOSS_AVERSION

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is unknown, of the wrong type, or out of range."""


def check(condition: bool, key: str, allowed: str, value: Any) -> None:
    """Raise :class:`ConfigError` naming ``key`` and what is allowed unless ``condition``."""
    if not condition:
        raise ConfigError(f"config key '{key}': got {value!r}; allowed: {allowed}")


# --------------------------------------------------------------------------------------------
# Environment config sections
# --------------------------------------------------------------------------------------------

MAX_EPISODE_DAYS = 10
"""Most days of one episode (``episode.length_days``): the observation noise of an episode
is counted over its steps (``envs.rng.forecast_noise_counter``), 96 per day plus the final
observation, within the ``envs.rng.NOISE_COUNTER_STRIDE`` = 1000 counters of an episode."""

MAX_AGENTS = 1000
"""Most prosumers of the ``synthetic`` community (a year of profiles is about 0.4 MB per
agent; the power flow's matrices grow with the square)."""
MAX_ENVS = 65_536
"""Most environments stepped together (``n_envs``)."""
MAX_ACTION_LEVELS = 101
"""Most discrete battery or price levels (steps of 1% of the range; the discrete action space
has battery_levels x price_levels actions)."""
INT64_MAX = 2**63 - 1
SEED_MAX = 2**63 - 2**32
"""Largest seed: seeds are int64 (``envs.rng``) and environment and evaluation seeds add
offsets below 2**32 (environment b uses seed + b)."""
DAYS_PER_YEAR = 366
"""Days of the profile year (SimBench's 2016, also used by the synthetic community)."""

FEEDERS = (
    "1-LV-rural1--0-sw",
    "1-LV-semiurb4--0-sw",
    "1-LV-urban6--0-sw",
    "case33bw",
    "synthetic",
)


@dataclass(frozen=True)
class CommunityConfig:
    """Which feeder and profiles, and who owns PV and batteries."""

    feeder: str = "1-LV-rural1--0-sw"
    """One of FEEDERS: a SimBench LV feeder code, pandapower's ``case33bw``, or ``synthetic``."""
    n_agents: int | None = None
    """Number of prosumers of the ``synthetic`` community (default 10, at most MAX_AGENTS).
    Real feeders have one agent per load, so setting it for them is an error."""
    pv_share: float = 0.6
    """Fraction of agents with rooftop PV, chosen at random (seeded)."""
    battery_share: float = 0.4
    """Fraction of agents with a battery, chosen at random among all agents (seeded)."""
    pv_kwp_per_mwh: float = 1.0
    """Installed PV (kWp) per MWh of the agent's annual consumption."""
    battery_kwh_per_mwh: float = 1.0
    """Battery capacity (kWh) per MWh of the agent's annual consumption."""
    battery_c_rate: float = 0.5
    """Battery charge and discharge power limit (kW) per kWh of capacity."""
    seed: int = 0
    """Seed of the asset allocation and of the synthetic profiles, in [0, SEED_MAX]."""

    def __post_init__(self) -> None:
        check(self.feeder in FEEDERS, "feeder", f"one of {FEEDERS}", self.feeder)
        if self.feeder == "synthetic":
            check(self.n_agents is None or 1 <= self.n_agents <= MAX_AGENTS, "n_agents",
                  f"an integer in [1, {MAX_AGENTS}] (MAX_AGENTS)", self.n_agents)
        else:
            check(self.n_agents is None, "n_agents",
                  "null for a real feeder (one agent per load); set only for 'synthetic'",
                  self.n_agents)
        for name in ("pv_share", "battery_share"):
            value = getattr(self, name)
            check(0.0 <= value <= 1.0, f"{name}", "a fraction in [0, 1]", value)
        for name in ("pv_kwp_per_mwh", "battery_kwh_per_mwh"):
            value = getattr(self, name)
            check(value >= 0.0, f"{name}", ">= 0", value)
        check(self.battery_c_rate > 0.0, "battery_c_rate", "> 0", self.battery_c_rate)
        check(0 <= self.seed <= SEED_MAX, "seed", f"an integer in [0, {SEED_MAX}]", self.seed)


@dataclass(frozen=True)
class BatteryConfig:
    """Battery physics shared by every battery of the community."""

    charge_efficiency: float = 0.95
    """Fraction of the AC energy drawn while charging that reaches the cells, in (0, 1]."""
    discharge_efficiency: float = 0.95
    """Fraction of the energy leaving the cells that reaches the AC side, in (0, 1]."""
    soc_min: float = 0.1
    """Lowest state of charge, as a fraction of capacity."""
    soc_max: float = 0.9
    """Highest state of charge, as a fraction of capacity."""
    initial_soc: float = 0.5
    """State of charge at the start of every episode, as a fraction of capacity."""
    degradation_cost: float = 0.02
    """Cost per kWh of AC-side throughput (charge + discharge), currency/kWh."""

    def __post_init__(self) -> None:
        for name in ("charge_efficiency", "discharge_efficiency"):
            value = getattr(self, name)
            check(0.0 < value <= 1.0, f"{name}", "a value in (0, 1]", value)
        check(0.0 <= self.soc_min < self.soc_max <= 1.0, "soc_min",
              "0 <= soc_min < soc_max <= 1", (self.soc_min, self.soc_max))
        check(self.soc_min <= self.initial_soc <= self.soc_max, "initial_soc",
              f"a fraction in [soc_min, soc_max] = [{self.soc_min}, {self.soc_max}]",
              self.initial_soc)
        check(self.degradation_cost >= 0.0, "degradation_cost", ">= 0",
              self.degradation_cost)


@dataclass(frozen=True)
class TariffConfig:
    """Grid tariffs: retail (import) and feed-in (export) prices, currency/kWh."""

    retail: float = 0.30
    """Flat retail price, currency/kWh, > 0 and >= feed-in (used when ``retail_tou`` is
    null)."""
    feed_in: float = 0.08
    """Flat feed-in price, currency/kWh (used when ``feed_in_tou`` is null)."""
    retail_tou: list[float] | None = None
    """Time-of-use retail price: 24 hourly values, currency/kWh, or null for flat."""
    feed_in_tou: list[float] | None = None
    """Time-of-use feed-in price: 24 hourly values, currency/kWh, or null for flat."""

    def __post_init__(self) -> None:
        for name in ("retail_tou", "feed_in_tou"):
            value = getattr(self, name)
            if value is not None:
                check(len(value) == 24, f"{name}", "a list of 24 hourly prices", value)
        retail = self.retail_tou if self.retail_tou is not None else [self.retail] * 24
        feed_in = self.feed_in_tou if self.feed_in_tou is not None else [self.feed_in] * 24
        check(all(r >= f for r, f in zip(retail, feed_in, strict=True)), "retail",
              "retail >= feed-in in every hour", {"retail": retail, "feed_in": feed_in})
        check(min(feed_in) >= 0.0, "feed_in", ">= 0", feed_in)
        check(min(retail) > 0.0, "retail", "> 0 in every hour (prices are normalised by it)",
              retail)

    def hourly(self) -> tuple[list[float], list[float]]:
        """The (retail, feed-in) price of each hour of the day, currency/kWh."""
        retail = self.retail_tou if self.retail_tou is not None else [self.retail] * 24
        feed_in = self.feed_in_tou if self.feed_in_tou is not None else [self.feed_in] * 24
        return list(retail), list(feed_in)


MECHANISM_NAMES = ("uniform", "pay_as_bid", "mcafee", "mmr", "bill_sharing", "sdr", "none",
                   "cda")


@dataclass(frozen=True)
class MarketConfig:
    """The P2P market mechanism (see ``envs.market``)."""

    mechanism: str = "uniform"
    """One of uniform, pay_as_bid, mcafee, mmr, bill_sharing, sdr, none, cda (continuous
    double auction: needs at least two agents)."""
    k: float = 0.5
    """k of the k-double auction: price = ask + k * (bid - ask), in [0, 1]."""

    def __post_init__(self) -> None:
        check(self.mechanism in MECHANISM_NAMES, "mechanism",
              f"one of {MECHANISM_NAMES}", self.mechanism)
        check(0.0 <= self.k <= 1.0, "k", "a value in [0, 1]", self.k)


NETWORK_MODELS = ("zbus", "ac", "none")


@dataclass(frozen=True)
class NetworkConfig:
    """Distribution-network model and penalties (see ``envs.network``)."""

    model: str = "zbus"
    """``zbus`` (batched fixed-point AC power flow in torch), ``ac`` (pandapower runpp per
    environment and step: exact and slow), or ``none``."""
    v_min: float = 0.95
    """Lowest allowed bus voltage, p.u."""
    v_max: float = 1.05
    """Highest allowed bus voltage, p.u."""
    voltage_penalty: float = 100.0
    """Penalty per p.u. of voltage outside [v_min, v_max], summed over buses, currency/step."""
    line_penalty: float = 1.0
    """Penalty per 100 percentage points of line or transformer loading above 100%,
    currency/step."""
    max_iterations: int = 50
    """Most fixed-point iterations of the ``zbus`` solver per step; it stops as soon as every
    environment has converged to 1e-6 p.u. (measured: 5-8 in float32 on the shipped feeders,
    about 30 at five times peak load). Not converged: penalised and reported, never raised."""

    p2p_fee: float = 0.0
    """Flat network-use fee on every P2P kWh, paid by the buyer, currency/kWh."""
    p2p_distance_fee: float = 0.0
    """Network-use fee growing with the electrical distance between buyer and seller:
    currency/kWh at the feeder's largest distance (needs model zbus or ac)."""
    p2p_loss_factor: float = 0.0
    """Share of each P2P kWh charged to the buyer at the retail price as network losses."""
    matching_temperature: float = 0.1
    """Locality of the buyer-seller matching used for distance fees (``envs.fees``): small
    prefers electrically close partners, large matches in proportion (a pool)."""

    def __post_init__(self) -> None:
        check(self.model in NETWORK_MODELS, "model", f"one of {NETWORK_MODELS}",
              self.model)
        check(0.0 < self.v_min < 1.0 < self.v_max, "v_min",
              "0 < v_min < 1 < v_max", (self.v_min, self.v_max))
        check(self.voltage_penalty >= 0.0, "voltage_penalty", ">= 0",
              self.voltage_penalty)
        check(self.line_penalty >= 0.0, "line_penalty", ">= 0", self.line_penalty)
        for name in ("p2p_fee", "p2p_distance_fee"):
            check(getattr(self, name) >= 0.0, name, ">= 0 currency/kWh", getattr(self, name))
        check(0.0 <= self.p2p_loss_factor < 1.0, "p2p_loss_factor", "a fraction in [0, 1)",
              self.p2p_loss_factor)
        check(self.matching_temperature > 0.0, "matching_temperature", "> 0",
              self.matching_temperature)
        check(self.p2p_distance_fee == 0.0 or self.model != "none", "p2p_distance_fee",
              "0 when model is none (distances come from the network model)",
              self.p2p_distance_fee)
        check(1 <= self.max_iterations <= 100, "max_iterations", "an integer in [1, 100]",
              self.max_iterations)


ACTION_TYPES = ("continuous", "discrete")


@dataclass(frozen=True)
class ActionConfig:
    """Each agent's action: battery power and bid/ask price."""

    type: str = "continuous"
    """``continuous``: Box [battery fraction in [-1, 1], price fraction in [0, 1]];
    ``discrete``: index into battery_levels x price_levels."""
    battery_levels: int = 5
    """Discrete battery levels, evenly spaced over [-1, 1] of the power limit, in
    [2, MAX_ACTION_LEVELS]."""
    price_levels: int = 5
    """Discrete price levels, evenly spaced over [feed-in, retail], in [2, MAX_ACTION_LEVELS]."""

    def __post_init__(self) -> None:
        check(self.type in ACTION_TYPES, "type", f"one of {ACTION_TYPES}", self.type)
        for name in ("battery_levels", "price_levels"):
            check(2 <= getattr(self, name) <= MAX_ACTION_LEVELS, name,
                  f"an integer in [2, {MAX_ACTION_LEVELS}] (MAX_ACTION_LEVELS)",
                  getattr(self, name))


OBSERVATION_RULES = ("none", "self_consumption", "time_of_use", "community_self_consumption",
                     "community_time_of_use")
"""Values of ``observation.rule``: no rule feature, or the rule of ``envs.rules``."""


@dataclass(frozen=True)
class ObservationConfig:
    """What each agent observes (see ``envs.observations``)."""

    forecast_steps: int = 0
    """Further steps of own load and PV observed beyond the step being traded (0 = none)."""
    forecast_noise: float = 0.0
    """Relative std of multiplicative Gaussian noise on the observed load and PV of the step
    being traded and of the forecasts (0 = exact)."""
    include_voltage: bool = False
    """Add the agent's own bus voltage of the last step (p.u. - 1) to its observation."""
    community: bool = False
    """Add the community's aggregates, the same for every agent (what a P2P platform
    publishes): its net load (load - PV summed over the homes) of the step being traded and of
    each forecast step, / the sum of the homes' peak loads, and its batteries' state of
    charge (stored kWh / capacity kWh, summed over the homes); true values, never noisy."""
    rule: str = "none"
    """Add a rule's battery fraction of this step in [-1, 1] as the last feature,
    ``rule_battery`` (``envs.rules``, from the true load and PV): ``none``,
    ``self_consumption``, ``time_of_use``, ``community_self_consumption`` or
    ``community_time_of_use``."""

    def __post_init__(self) -> None:
        check(0 <= self.forecast_steps <= 96, "forecast_steps",
              "an integer in [0, 96]", self.forecast_steps)
        check(self.forecast_noise >= 0.0, "forecast_noise", ">= 0",
              self.forecast_noise)
        check(self.rule in OBSERVATION_RULES, "rule", f"one of {OBSERVATION_RULES}",
              self.rule)


DAY_SPLITS = ("train", "test", "all")


@dataclass(frozen=True)
class EpisodeConfig:
    """Episode length and the train/test split of days."""

    days: str = "train"
    """Which days episodes start on: ``train``, ``test`` or ``all``."""
    length_days: int = 1
    """Days per episode (1..10, ``MAX_EPISODE_DAYS``): an episode is ``96 * length_days``
    steps. Only its start day is drawn from the split (``days``); it then runs over the
    following calendar days, whether they belong to the split or not (wrapping from the last
    day of the year to the first, as the profiles do). The SoC carries over midnight and the
    terminal value is charged on the episode's last step only."""
    test_every: int = 7
    """Every ``test_every``-th day of the year (day index % test_every == test_every - 1) is a
    test day; 0 makes every day a training day."""
    terminal_value: bool = True
    """Value the energy stored at the end of an episode against the energy at its start: on
    the last step each agent's cost gets ``terminal_price * max(SoC at start - SoC at end,
    0) - terminal_credit_price * max(SoC at end - SoC at start, 0)`` (kWh in the cells)
    added; false is the v1 accounting (left-over energy is worth 0)."""
    terminal_price: float | None = None
    """Price charged per kWh of cell energy taken over an episode (SoC at the end below the
    start), currency/kWh; null = ``discharge_efficiency * (highest hourly retail price -
    degradation_cost)``, the most a stored kWh can save when it is discharged (see
    :meth:`terminal_price_per_kwh`)."""
    terminal_credit_price: float | None = None
    """Price credited per kWh of cell energy added over an episode (SoC at the end above the
    start), currency/kWh, at most the charge price; null = the lowest price at which a kWh
    can be acquired during the day, the lowest hourly feed-in price (capped at the charge
    price; see :meth:`terminal_credit_price_per_kwh`)."""

    def __post_init__(self) -> None:
        check(self.days in DAY_SPLITS, "days", f"one of {DAY_SPLITS}", self.days)
        check(isinstance(self.length_days, int) and not isinstance(self.length_days, bool)
              and 1 <= self.length_days <= MAX_EPISODE_DAYS, "length_days",
              f"an integer in [1, {MAX_EPISODE_DAYS}]", self.length_days)
        check(self.test_every == 0 or self.test_every >= 2, "test_every",
              "0 (no test days) or an integer >= 2", self.test_every)
        for name in ("terminal_price", "terminal_credit_price"):
            price = getattr(self, name)
            if price is None:
                continue
            # NaN fails the comparison, inf the upper bound.
            check(0.0 <= price < float("inf"), name,
                  "null (the default rule) or a finite price >= 0 currency/kWh", price)
            check(self.terminal_value, name,
                  "null when terminal_value is false (no terminal value is charged)", price)
        # Credit <= charge price is checked in EnvConfig: the default charge price depends on
        # the tariff and the battery.

    def terminal_price_per_kwh(self, tariff: TariffConfig, battery: BatteryConfig) -> float:
        """The price charged per kWh of cell energy taken over an episode, currency/kWh (0
        when ``terminal_value`` is false): ``terminal_price``, or by default

        ``discharge_efficiency * (max_h retail_h - degradation_cost)`` (at least 0).

        Why: a kWh taken from the cells reaches the AC side as ``discharge_efficiency`` kWh,
        pays ``degradation_cost`` on it, and at best displaces a grid import at the retail
        price (no market price lies above retail). So draining the battery below its start
        SoC saves at most this price per kWh in payments, and the terminal term charges
        exactly that back: draining gains nothing (exactly nothing when every discharged
        kWh displaces an import at the highest retail price, less otherwise; network
        penalties and P2P fees aside). Energy charged and discharged within the day leaves
        the SoC where it was and is not charged, so cycling PV surplus (worth the feed-in
        price) into later consumption (worth retail) still pays. A lower price (the mean
        retail price of a time-of-use day, say) would let draining at the peak pay. Energy
        added above the start SoC is credited at the lower
        :meth:`terminal_credit_price_per_kwh`: crediting it at this price would make filling
        the battery at cheap hours and ending full pay.
        """
        if not self.terminal_value:
            return 0.0
        if self.terminal_price is not None:
            return float(self.terminal_price)
        retail, _ = tariff.hourly()
        return max(battery.discharge_efficiency * (max(retail) - battery.degradation_cost),
                   0.0)

    def terminal_credit_price_per_kwh(self, tariff: TariffConfig,
                                      battery: BatteryConfig) -> float:
        """The price credited per kWh of cell energy added over an episode, currency/kWh (0
        when ``terminal_value`` is false): ``terminal_credit_price``, or by default

        ``min(min_h min(feed_in_h, retail_h), terminal_price_per_kwh)``

        (the lowest hourly feed-in price, as feed-in <= retail in every hour).

        Why: the cheapest way to put a kWh into the cells during the day is to store PV
        surplus at the hour with the lowest feed-in price (the export forgone) or to buy at
        the lowest retail price; P2P prices lie between feed-in and retail, so no trade is
        cheaper. Storing one cell kWh takes ``1 / charge_efficiency`` AC kWh and pays
        ``degradation_cost`` on each, so it costs at least ``(min_h feed_in_h +
        degradation_cost) / charge_efficiency`` >= this price: the credit is the acquisition
        price without dividing by the efficiency or adding wear, so ending fuller than the
        start never gains (strictly loses with losses or wear), however cheap the night
        tariff. Ending full is not punished either: the surplus is credited, at what the
        energy could have been bought for at best. The cap at the charge price keeps the
        terminal value convex in the final SoC (a kWh added is never credited more than a kWh
        taken is charged: no gain from moving energy between episodes) and the oracle's LP a
        linear program; it binds only when feed-in is close to retail at every hour.
        """
        if not self.terminal_value:
            return 0.0
        if self.terminal_credit_price is not None:
            return float(self.terminal_credit_price)
        retail, feed_in = tariff.hourly()
        lowest = min(min(f, r) for f, r in zip(feed_in, retail, strict=True))
        return max(min(lowest, self.terminal_price_per_kwh(tariff, battery)), 0.0)


@dataclass(frozen=True)
class BehaviourConfig:
    """Behavioural (prospect-theory) prosumers (``envs.behaviour``): which agents value their
    money against a reference with loss aversion; the rest stay risk-neutral. Off by default
    (``share`` 0, ``agents`` null): no agent is behavioural and the core computes nothing
    extra."""

    share: float = 0.0
    """Fraction of the agents that are behavioural, in [0, 1]: ``round(share * N)`` agents
    drawn with ``seed``. Not with ``agents``."""
    agents: list[str] | None = None
    """The behavioural agents by name (the feeder's agent names; checked when the env is
    built), or null. Not with a non-zero ``share``."""
    alpha: float = TK_ALPHA
    """Exponent of gains, ``V(x) = x ** alpha``, in (0, 1] (1: linear in gains; default
    Tversky & Kahneman 1992's 0.88)."""
    beta: float = TK_BETA
    """Exponent of losses, ``V(x) = -loss_aversion * (-x) ** beta``, in (0, 1]."""
    loss_aversion: float = TK_LOSS_AVERSION
    """lambda, how much more a loss weighs than a gain of the same size, in [1, 100]
    (1: no loss aversion; default 2.25)."""
    reference: str = "no_p2p"
    """The reference money of a step (``envs.behaviour.REFERENCES``): ``no_p2p`` (the agent's
    own no-P2P, idle-battery bill of the same step, network penalties included: ``x`` is the
    step's saving) or ``zero`` (``x = -cost``)."""
    time_scale: str = "step"
    """Over what the prospect value is taken (``envs.behaviour.TIME_SCALES``): ``step`` (each
    step's ``x`` on its own, reward ``V(x_t)``) or ``day`` (the running sum ``S_t`` of the
    day's ``x``, reward ``V(S_t) - V(S_{t-1})``, restarting at every midnight: a day's
    rewards sum to ``V`` of the day's total). See ``envs.behaviour``."""
    seed: int = 0
    """Seed of the draw of ``share``, in [0, SEED_MAX]."""

    def __post_init__(self) -> None:
        check(0.0 <= self.share <= 1.0, "share", "a fraction in [0, 1]", self.share)
        check(self.agents is None or self.share == 0.0, "agents",
              "null when share is set (give share or agents, not both)",
              {"share": self.share, "agents": self.agents})
        if self.agents is not None:
            check(len(set(self.agents)) == len(self.agents), "agents",
                  "a list of distinct agent names", self.agents)
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            check(0.0 < value <= 1.0, name, "an exponent in (0, 1]", value)
        check(1.0 <= self.loss_aversion <= 100.0, "loss_aversion", "a value in [1, 100]",
              self.loss_aversion)
        check(self.reference in REFERENCES, "reference", f"one of {REFERENCES}",
              self.reference)
        check(self.time_scale in TIME_SCALES, "time_scale", f"one of {TIME_SCALES}",
              self.time_scale)
        check(0 <= self.seed <= SEED_MAX, "seed", f"an integer in [0, {SEED_MAX}]", self.seed)

    @property
    def enabled(self) -> bool:
        """Whether any agent can be behavioural (a non-zero ``share`` or an ``agents``
        list)."""
        return self.share > 0.0 or bool(self.agents)


STORAGE_MODES = ("none", "market", "virtual")
STORAGE_OPERATORS = ("rule", "agent")
STORAGE_RULES = ("community_self_consumption", "idle")
COST_ALLOCATIONS = ("subscription", "throughput")
SETTLEMENTS = ("day", "episode")
LEFTOVER_PRICES = ("feed_in", "retail")


@dataclass(frozen=True)
class StorageConfig:
    """A battery the community shares (``envs.storage``): off by default (``mode`` none).

    ``market``: the battery is one more participant of the P2P market (after the agents, as
    ``community_battery``), driven by a built-in ``rule`` or, with ``operator`` agent, by a
    policy acting as its own agent of the PettingZoo env. ``virtual``: every member holds a
    virtual account of ``subscription_kwh``; its surplus is stored into it and its deficits
    drawn from it (draws only within ``draw_hours``) before the market; the physical battery
    carries the members' net flow; leftover balances are paid at ``leftover_price`` at every
    midnight (``settle`` day) or at the episode's end. In both modes the battery's costs
    (capacity, degradation, losses, its grid and market bills, its network-penalty share)
    are allocated to the members by ``cost_allocation`` and are part of their costs."""

    mode: str = "none"
    """One of STORAGE_MODES: none (no shared battery), market or virtual."""
    capacity_kwh: float = 100.0
    """Usable and unusable cell capacity together, kWh, > 0 (the SoC stays within
    [soc_min, soc_max] of it)."""
    power_kw: float = 50.0
    """Charge and discharge power limit on the AC side, kW, > 0."""
    charge_efficiency: float = 0.95
    """Fraction of the AC energy charged that reaches the cells, in (0, 1]."""
    discharge_efficiency: float = 0.95
    """Fraction of the energy leaving the cells that reaches the AC side, in (0, 1]."""
    soc_min: float = 0.1
    """Lowest state of charge, fraction of capacity."""
    soc_max: float = 0.9
    """Highest state of charge, fraction of capacity."""
    initial_soc: float = 0.5
    """SoC at every episode's start in mode market, fraction in [soc_min, soc_max]. Mode
    virtual always starts at soc_min with empty accounts (the physical battery holds the
    members' balances above its floor)."""
    degradation_cost: float = 0.02
    """Cost per kWh of AC-side throughput, currency/kWh, >= 0."""
    capacity_cost: float = 0.0
    """Capital and upkeep cost per kWh of capacity per day, currency/(kWh day), >= 0;
    charged in 96 equal parts over the day's steps."""
    bus: int | str | None = None
    """The feeder bus the battery is connected to: a pandapower bus index or bus name, or
    null for the low-voltage side of the feeder's first transformer (the first agent's bus
    on a feeder without a transformer). Must be null for a feeder without a network
    (``synthetic``)."""
    members: list[str] | None = None
    """The agents that share the battery (their names), or null for every agent."""
    cost_allocation: str = "subscription"
    """How the battery's costs are split among the members (COST_ALLOCATIONS):
    ``subscription`` (in proportion to ``subscription_kwh``; equal shares by default) or
    ``throughput`` (virtual mode: in proportion to each member's energy stored plus drawn in
    the step; by subscription in a step without any)."""
    operator: str = "rule"
    """Who drives the battery in mode market (STORAGE_OPERATORS): ``rule`` (the built-in
    ``rule``) or ``agent`` (a policy: the PettingZoo env gets the agent
    ``community_battery`` with its own spaces, ``envs.storage``)."""
    rule: str = "community_self_consumption"
    """The operator rule of mode market (STORAGE_RULES): ``community_self_consumption``
    (charge with the members' surplus of the step, discharge into their deficit, orders at
    the middle of the price band) or ``idle``. With ``market.mechanism`` none there is no
    market to trade in and both keep the battery idle."""
    subscription_kwh: float | list[float] = 8.0
    """Each member's virtual account size, kWh (> 0): one number for every member or one per
    member (in the order of ``members``, or of the agents); also the weights of
    ``cost_allocation`` subscription."""
    draw_hours: list[float] = field(default_factory=lambda: [0.0, 24.0])
    """Mode virtual: [start, end) hours of the day in which members may draw from their
    accounts, 0 <= start < end <= 24 (PowerBank: [15, 24]); storing is allowed always."""
    leftover_price: str | float = "feed_in"
    """Mode virtual: the price paid for a balance left at settlement, currency/kWh: a number
    >= 0, or ``feed_in`` / ``retail`` (that step's tariff)."""
    settle: str = "day"
    """Mode virtual (SETTLEMENTS): ``day`` (balances are paid out and emptied at every
    midnight, PowerBank) or ``episode`` (they carry over the days of an episode and are paid
    out at its end)."""

    def __post_init__(self) -> None:
        check(self.mode in STORAGE_MODES, "mode", f"one of {STORAGE_MODES}", self.mode)
        check(0.0 < self.capacity_kwh <= 1e7, "capacity_kwh", "a capacity in (0, 1e7] kWh",
              self.capacity_kwh)
        check(0.0 < self.power_kw <= 1e7, "power_kw", "a power in (0, 1e7] kW",
              self.power_kw)
        for name in ("charge_efficiency", "discharge_efficiency"):
            value = getattr(self, name)
            check(0.0 < value <= 1.0, name, "a value in (0, 1]", value)
        check(0.0 <= self.soc_min < self.soc_max <= 1.0, "soc_min",
              "0 <= soc_min < soc_max <= 1", (self.soc_min, self.soc_max))
        check(self.soc_min <= self.initial_soc <= self.soc_max, "initial_soc",
              f"a fraction in [soc_min, soc_max] = [{self.soc_min}, {self.soc_max}]",
              self.initial_soc)
        for name in ("degradation_cost", "capacity_cost"):
            check(getattr(self, name) >= 0.0, name, ">= 0", getattr(self, name))
        check(not isinstance(self.bus, bool) and (not isinstance(self.bus, int)
                                                  or self.bus >= 0),
              "bus", "null, a bus index >= 0 or a bus name", self.bus)
        if self.members is not None:
            check(len(self.members) > 0 and len(set(self.members)) == len(self.members),
                  "members", "null (every agent) or a non-empty list of distinct agent names",
                  self.members)
        check(self.cost_allocation in COST_ALLOCATIONS, "cost_allocation",
              f"one of {COST_ALLOCATIONS}", self.cost_allocation)
        check(self.cost_allocation != "throughput" or self.mode != "market", "cost_allocation",
              "subscription in mode market (throughput counts virtual stores and draws)",
              self.cost_allocation)
        check(self.operator in STORAGE_OPERATORS, "operator", f"one of {STORAGE_OPERATORS}",
              self.operator)
        check(self.rule in STORAGE_RULES, "rule", f"one of {STORAGE_RULES}", self.rule)
        sizes = (self.subscription_kwh if isinstance(self.subscription_kwh, list)
                 else [self.subscription_kwh])
        check(len(sizes) > 0 and all(0.0 < size <= 1e7 for size in sizes), "subscription_kwh",
              "a size in (0, 1e7] kWh, or a non-empty list of them (one per member)",
              self.subscription_kwh)
        hours = self.draw_hours
        check(len(hours) == 2 and 0.0 <= hours[0] < hours[1] <= 24.0, "draw_hours",
              "[start, end] hours of the day with 0 <= start < end <= 24", hours)
        check(self.leftover_price in LEFTOVER_PRICES or (
            not isinstance(self.leftover_price, str) and self.leftover_price >= 0.0),
            "leftover_price", f"a price >= 0 or one of {LEFTOVER_PRICES}", self.leftover_price)
        check(self.settle in SETTLEMENTS, "settle", f"one of {SETTLEMENTS}", self.settle)

    @property
    def enabled(self) -> bool:
        """Whether the community has a shared battery (``mode`` not none)."""
        return self.mode != "none"


DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class EnvConfig:
    """The whole environment: community, physics, market, network, spaces and batch."""

    community: CommunityConfig = field(default_factory=CommunityConfig)
    battery: BatteryConfig = field(default_factory=BatteryConfig)
    tariff: TariffConfig = field(default_factory=TariffConfig)
    market: MarketConfig = field(default_factory=MarketConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    action: ActionConfig = field(default_factory=ActionConfig)
    observation: ObservationConfig = field(default_factory=ObservationConfig)
    episode: EpisodeConfig = field(default_factory=EpisodeConfig)
    behaviour: BehaviourConfig = field(default_factory=BehaviourConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    reward_scale: float = 1.0
    """Rewards are minus money (payment + degradation + penalty) times this scale (for
    behavioural agents, ``behaviour``: the prospect value of their money times this scale)."""
    n_envs: int = 1
    """Number of environments stepped together by the batched core, in [1, MAX_ENVS]."""
    device: str = "cpu"
    """Torch device of the core's tensors."""
    dtype: str = "float32"
    """Torch dtype of the core's tensors: float32 or float64."""
    seed: int = 0
    """Base seed: environment b uses seed + b; in [0, SEED_MAX]."""
    compile: bool | Literal["auto"] = "auto"
    """Run the core's step compiled with ``torch.compile`` (``envs.compiled``; same results
    to float rounding): true, false, or auto (on from ``envs.compiled.AUTO_MIN_ENVS``
    environments, where it is faster; off for smaller batches, which would pay the compile
    time for nothing). Where compilation fails (no C++ compiler, ...) the core warns once
    and runs eager."""

    def __post_init__(self) -> None:
        check(self.compile is True or self.compile is False or self.compile == "auto",
              "compile", "true, false or auto", self.compile)
        check(self.reward_scale > 0.0, "reward_scale", "> 0", self.reward_scale)
        check(1 <= self.n_envs <= MAX_ENVS, "n_envs", f"an integer in [1, {MAX_ENVS}] (MAX_ENVS)",
              self.n_envs)
        check(self.dtype in DTYPES, "dtype", f"one of {DTYPES}", self.dtype)
        check(self.device.split(":")[0] in ("cpu", "cuda", "mps"), "device",
              "cpu, cuda, cuda:N or mps", self.device)
        check(0 <= self.seed <= SEED_MAX, "seed", f"an integer in [0, {SEED_MAX}]", self.seed)
        # Checked here rather than in EpisodeConfig: the bound is the profile year's length.
        test_every = self.episode.test_every
        check(test_every == 0 or 2 <= test_every <= DAYS_PER_YEAR, "episode.test_every",
              f"0 (no test days) or an integer in [2, {DAYS_PER_YEAR}] (days of the year)",
              test_every)
        check(self.episode.days != "test" or test_every != 0, "episode.days",
              "'train' or 'all' when episode.test_every is 0 (no test days)",
              self.episode.days)
        # Checked here: a continuous double auction needs a counterpart for every order.
        check(self.market.mechanism != "cda" or self.community.n_agents != 1,
              "market.mechanism", "a mechanism other than 'cda' for a community of one agent "
              "(community.n_agents: 1); cda needs at least two agents", self.market.mechanism)
        # Checked here: the default charge price depends on the tariff and the battery.
        charge = self.episode.terminal_price_per_kwh(self.tariff, self.battery)
        credit = self.episode.terminal_credit_price_per_kwh(self.tariff, self.battery)
        check(credit <= charge, "episode.terminal_credit_price",
              f"a price <= the terminal value's charge price ({charge:.6g} currency/kWh, "
              f"episode.terminal_price or its default rule)", credit)


# --------------------------------------------------------------------------------------------
# Generic strict loading
# --------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        errors = []
        for option in get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError as error:
                errors.append(error)
        not_null = [i for i, option in enumerate(get_args(tp)) if option is not type(None)]
        if value is not None and len(not_null) == 1:  # X | None: X's error names the item
            raise errors[not_null[0]] from None
        raise ConfigError(f"config key '{key}': got {value!r}; allowed: {_type_name(tp)}")
    if tp is type(None):
        check(value is None, key, "null", value)
        return None
    if origin is Literal:
        check(value in get_args(tp), key, f"one of {get_args(tp)}", value)
        return value
    if origin is list:
        check(isinstance(value, list | tuple), key, f"a list ({_type_name(tp)})", value)
        (item_type,) = get_args(tp)
        return [_coerce(item, item_type, f"{key}[{i}]") for i, item in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        check(isinstance(value, dict), key, f"a mapping of {tp.__name__} fields", value)
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is float:
        check(isinstance(value, int | float) and not isinstance(value, bool), key,
              "a finite number", value)
        check(_is_finite(value) and abs(value) <= MAX_FLOAT, key,
              f"a finite number of magnitude at most {MAX_FLOAT:g}", value)
        return float(value)
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # 1e6 written for 1000000
        check(isinstance(value, int) and not isinstance(value, bool), key, "an integer", value)
        check(-INT64_MAX - 1 <= value <= INT64_MAX, key, "an integer in [-2**63, 2**63 - 1] "
              "(int64)", value)
        return value
    if tp is bool:
        check(isinstance(value, bool), key, "true or false", value)
        return value
    if tp is str:
        check(isinstance(value, str), key, "a string", value)
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported annotation {tp!r} for config key '{key}'")


MAX_FLOAT = 1e12
"""Largest magnitude of a float config value: far above any physical or learning setting, far
below float32's 3.4e38, so that float32 tables and their products stay finite (a battery C-rate
of 1e300 would give infinite power limits)."""


def _is_finite(value: int | float) -> bool:
    """Whether ``value`` is a finite float (an int too large for a float is not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def from_dict(cls: type[T], data: dict[str, Any] | None, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys and wrong types.

    Errors raised by the dataclass's own range checks are re-raised with the full dotted key.
    """
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}': expected a "
                          f"mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}'; allowed keys in "
                          f"'{prefix.rstrip('.') or '<root>'}': {', '.join(names)}")
    kwargs = {name: _coerce(data[name], hints[name], prefix + name) for name in names
              if name in data}
    try:
        return cls(**kwargs)
    except ConfigError as error:
        message = str(error)
        marker = "config key '"
        if prefix and message.startswith(marker):
            message = marker + prefix + message[len(marker):]
        raise ConfigError(message) from None


def to_dict(config: Any) -> dict[str, Any]:
    """The config as a plain nested dict (what is logged is what ran)."""
    return dataclasses.asdict(config)


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader with two fixes for configs.

    - ``3e-4``, ``1e6`` and ``1.0e5`` are floats, as in YAML 1.2 and JSON (PyYAML's YAML 1.1
      resolver needs a dot and a signed exponent and reads them as strings).
    - A key given twice in one mapping is an error (PyYAML keeps the last silently). Keys
      merged in with ``<<`` may still be overridden.
    """

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _YAML_MERGE:
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found duplicate key {key!r} (first given on line "
                        f"{seen[key].start_mark.line + 1})", key_node.start_mark)
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


_YAML_MERGE = "tag:yaml.org,2002:merge"
ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str | bytes, source: str) -> Any:
    """Parse YAML ``text`` with :class:`ConfigLoader`; a syntax error, a duplicate key or bad
    encoding raises :class:`ConfigError` naming ``source`` (a file or an override)."""
    try:
        return yaml.load(text, Loader=ConfigLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        context = f"{error.context}: " if error.context else ""
        raise ConfigError(f"{source}: invalid YAML{where}: {context}{error.problem}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"{source}: invalid YAML: {' '.join(str(error).split())}") from None


def _parse_override_value(item: str, text: str) -> Any:
    return parse_yaml(text, f"override '{item}'")


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any] | list[str] | None
                    ) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted overrides applied.

    ``overrides`` is a dict ``{"mechanism": "mmr"}`` or a list of ``key=value``
    strings (values parsed as YAML). Missing intermediate sections are created; unknown keys
    are caught later by :func:`from_dict`.
    """
    import copy

    result = copy.deepcopy(data)
    if not overrides:
        return result
    if isinstance(overrides, list | tuple):
        pairs = {}
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override '{item}': expected key=value")
            key, value = item.split("=", 1)
            pairs[key.strip()] = _parse_override_value(item, value)
        overrides = pairs
    for dotted, value in overrides.items():
        node = result
        parts = dotted.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{dotted}': '{part}' is not a config section")
            node = child
        node[parts[-1]] = value
    return result


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path`` (an empty file is an empty mapping) with
    :class:`ConfigLoader`; unreadable or invalid YAML raises :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        payload = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"config file '{path}': cannot be read ({error})") from None
    data = parse_yaml(payload, f"config file '{path}'") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping, got {type(data).__name__}")
    return data


def build_config(cls: type[T], source: str | Path | dict[str, Any] | T | None = None,
                 overrides: dict[str, Any] | list[str] | None = None) -> T:
    """Build config ``cls`` from a YAML path, a dict, an instance or None, plus overrides."""
    if isinstance(source, cls):
        data = to_dict(source)
    elif source is None:
        data = {}
    elif isinstance(source, dict):
        data = source
    elif isinstance(source, str | Path):
        data = load_yaml(source)
    else:
        raise ConfigError(f"config must be a YAML path, a dict, a {cls.__name__} or None; "
                          f"got {type(source).__name__}")
    return from_dict(cls, apply_overrides(data, overrides))


def env_config(source: str | Path | dict[str, Any] | EnvConfig | None = None,
               **overrides: Any) -> EnvConfig:
    """The environment config from ``source`` with keyword overrides.

    Overrides are top-level values (``n_envs=64``), section dicts merged into their section
    (``market={"mechanism": "mmr"}``), or dotted keys (``**{"market.k": 0.3}``).
    """
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{inner}": item for inner, item in value.items()})
        else:
            flat[key] = value
    return build_config(EnvConfig, source, flat)
