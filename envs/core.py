"""The batched core: B peer-to-peer energy communities of N prosumers stepped at once in torch.

Every tensor has the batch dimension first and lives on the core's device; there is no Python
loop over environments or agents in ``reset`` or ``step``. One step is 15 minutes:

1. each agent's action sets its battery power (fraction of its power limit) and the price it
   bids or asks (fraction of the band [feed-in, retail]);
2. the battery is driven within its physical limits (``envs.physics``); the cut is reported;
3. the agent's net position ``load - PV + battery charge`` (kWh, > 0 buys) is cleared in the
   P2P market (``envs.market``), the rest settles with the grid; with a shared battery
   (``storage``, ``envs.storage``) the virtual accounts first store and draw, or the battery
   joins the market as one more participant, and its bill is allocated to the members;
4. the network model (``envs.network``) computes voltages, loadings and losses, and shares
   the penalties of limit violations among the agents that caused them;
5. optional network-use fees and loss charges on P2P trades (``envs.fees``) are charged to
   buyers;
6. on the last step of an episode, the terminal value (``episode.terminal_value``): each agent
   pays ``terminal_price * max(start - end, 0) - terminal_credit_price * max(end - start, 0)``
   (SoC at the episode's start and now, kWh in the cells), a charge for energy taken from the
   battery over the episode, a smaller credit for energy added;
7. reward = -(payment + degradation + network penalty + network fee + terminal value)
   * reward_scale; for the behavioural agents of ``behaviour`` (``envs.behaviour``) the
   prospect-theory value of that money against the step's reference instead,
   ``V(reference_cost - cost) * reward_scale``, or with ``behaviour.time_scale`` day the
   step's change of ``V`` of the day's running sum ``behaviour_day_gain`` (rational agents'
   rewards are unchanged).

The no-P2P reference of the metrics (``envs.metrics``: batteries idle, no market, each
agent's net ``load - PV`` settled with the grid) does not depend on the agents, so its network
penalties are charged once at construction for every step of the year, by the same network
model and sharing rule as step 4 (:meth:`~envs.grid.PowerFlowNetwork.penalty_table`), into
the table ``no_p2p_network_penalty [T, N]``; each step reports its row as
``info["no_p2p_network_penalty"]``, and a ``no_p2p`` policy pays exactly these penalties.

Episodes are ``episode.length_days`` days (``96 * length_days`` steps, one day by default)
starting at a day drawn from the configured split and running over the following calendar
days (``day`` advances at midnight, wrapping at the year's end; the SoC, last price and
voltage carry over); finished environments are reset automatically (the last observation is
in ``info["final_observation"]``).
Environment b draws its random numbers from its own counter-based stream keyed by
``seed + b`` (``envs.rng``), so a batch of B environments reproduces B single environments
with the same seeds exactly.

The numba engine (``envs.single.engine``) mirrors this core at ``B = 1``. It reads the core
through public names only: the precomputed tables (:meth:`BatchedP2PEnv.tables`, a
:class:`CoreTables`), the mutable state (:meth:`BatchedP2PEnv.get_state` /
:meth:`~BatchedP2PEnv.set_state`, keyed by :data:`STATE_KEYS`, which the engine's own
``get_state``/``set_state`` share) and the public attributes (prices, the network model, fees).
The names both implement live in one module each: random streams and the noise counter in
``envs.rng``, the observation layout in ``envs.observations``, info keys in
``envs.info_schema``. The collector's checkpoints (``agents.collector``) hold ``get_state``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from envs import behaviour, fees, market, observations, physics, rng, rules, storage
from envs.compiled import CompiledStages, compile_wanted
from envs.config import INT64_MAX, ConfigError, EnvConfig
from envs.data import (
    DAYS_PER_YEAR,
    START_WEEKDAY,
    STEP_HOURS,
    STEPS_PER_DAY,
    STEPS_PER_YEAR,
    Assets,
    FeederData,
    build_assets,
    day_split,
    load_feeder,
)
from envs.info_schema import ARRIVAL_RANK
from envs.metrics import no_p2p_step_cost

STATE_KEYS: tuple[str, ...] = (
    "env_seed", "episode_count", "day", "step_of_day", "day_of_episode", "soc_kwh",
    "episode_start_soc_kwh", "last_price", "last_voltage", "behaviour_day_gain", "seeded")
"""Keys of :meth:`BatchedP2PEnv.get_state`: everything of the core that changes after
construction (its random draws are counter-based, keyed by ``env_seed`` and
``episode_count``, so this is all a resumed run or the numba engine needs); a core with a
shared battery adds :data:`STORAGE_STATE_KEYS` (:attr:`BatchedP2PEnv.state_keys`)."""

STORAGE_STATE_KEYS: tuple[str, ...] = (
    "storage_soc_kwh", "storage_start_soc_kwh", "storage_account_kwh")
"""The state of a shared battery (``storage``, ``envs.storage``): its cell energy and that at
the episode's start ``[B]`` (kWh), and the members' virtual balances ``[B, N]`` (kWh)."""


class CoreTables(NamedTuple):
    """The core's precomputed tables (fixed at construction), as :meth:`BatchedP2PEnv.tables`
    returns them: the contract with the numba engine, whose ``envs.single.engine.Tables``
    holds the same fields as numpy arrays. ``T`` = STEPS_PER_YEAR steps, ``N`` agents; floats
    in the core's dtype, all on its device."""

    load_kw: Tensor
    """``[T, N]`` each agent's load, kW."""
    load_kvar: Tensor
    """``[T, N]`` each agent's reactive load, kvar."""
    pv_kw: Tensor
    """``[T, N]`` each agent's PV output, kW."""
    profile: Tensor
    """``[T, N, 2]`` load and PV (``envs.observations.PROFILE_FEATURES``) / own peak load."""
    sizes: Tensor
    """``[N, 2]`` installed kWp and battery kWh / own peak load."""
    capacity_kwh: Tensor
    """``[N]`` battery capacity, kWh (0 without a battery)."""
    inverse_capacity: Tensor
    """``[N]`` 1 / capacity, 1/kWh (0 without a battery)."""
    battery_kw: Tensor
    """``[N]`` battery power limit, kW."""
    step_table: Tensor
    """``[96, 4]`` the shared features of each step of the day
    (``envs.observations.STEP_TABLE_FEATURES``)."""
    weekday_table: Tensor
    """``[7, 2]`` the weekday features (``envs.observations.WEEKDAY_TABLE_FEATURES``)."""
    retail_price: Tensor
    """``[96]`` retail price of each step of the day, currency/kWh."""
    feed_in_price: Tensor
    """``[96]`` feed-in price of each step of the day, currency/kWh."""
    start_days: Tensor
    """``[D]`` int64: the days episodes start on (``episode.days``)."""
    battery_levels: Tensor
    """``[Lb]`` the battery fractions of the discrete actions."""
    price_levels: Tensor
    """``[Lp]`` the price fractions of the discrete actions."""
    community_net: Tensor
    """``[T]`` the community's net load (load - PV summed over agents) / the sum of peak
    loads (the ``community_net`` observation feature)."""
    tou_grid_charge: Tensor
    """``[96]`` bool: ``envs.rules.TouSchedule.grid_charge``."""
    tou_hold: Tensor
    """``[96]`` bool: ``envs.rules.TouSchedule.hold``."""
    tou_cheap_steps_left: Tensor
    """``[96]`` ``envs.rules.TouSchedule.cheap_steps_left``."""
    no_p2p_network_penalty: Tensor
    """``[T, N]`` each agent's share of the network penalty of the no-P2P operation (batteries
    idle, no market: consumption ``load - PV``) at each step, money (0 without a network
    model): the ``no_p2p_network_penalty`` info."""
    behavioural: Tensor
    """``[N]`` bool: the agents whose reward is the prospect value of ``behaviour``
    (:attr:`BatchedP2PEnv.behavioural`)."""


def is_integer(value: Any) -> bool:
    """Whether ``value`` is a Python or numpy integer (``bool`` is not)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def checked_seed(seed: Any, high: int) -> int:
    """``seed`` as an int, or ValueError unless it is an integer (Python or numpy, not bool)
    in [0, high]: seeds are int64 (``envs.rng``) and environment b of a batch uses seed + b."""
    if not (is_integer(seed) and 0 <= seed <= high):
        raise ValueError(f"seed: got {seed!r}; allowed: None or an integer in [0, {high}]")
    return int(seed)


def checked_days(days: Any, count: int) -> list[int]:
    """``days`` as a list of ``count`` ints, or ValueError unless it is a list, tuple, array or
    tensor of ``count`` integers (not bool) in [0, DAYS_PER_YEAR - 1]."""
    values = days.tolist() if isinstance(days, Tensor | np.ndarray) else days
    if not (isinstance(values, list | tuple) and len(values) == count and all(
            is_integer(day) and 0 <= day < DAYS_PER_YEAR for day in values)):
        raise ValueError(f"days must be {count} integer day indices in [0, "
                         f"{DAYS_PER_YEAR - 1}] (one per environment reset), got {values!r}")
    return [int(day) for day in values]


class BatchedP2PEnv:
    """B environments of N prosumers trading in a P2P market, stepped together.

    Args:
        config: the validated environment config (``envs.config.EnvConfig``).
        data: feeder profiles (loaded from ``config.community`` when None).

    Shapes: observations ``[B, N, obs_dim]`` float, rewards ``[B, N]``, terminated and
    truncated ``[B]`` bool, state ``[B, state_dim]``; continuous actions ``[B, N, 2]`` in
    [-1, 1] x [0, 1], discrete actions ``[B, N]`` int64 in [0, battery_levels * price_levels).
    """

    def __init__(self, config: EnvConfig, data: FeederData | None = None) -> None:
        self.config = config
        self.device = torch.device(config.device)
        self.dtype = getattr(torch, config.dtype)
        community = config.community
        if data is None:
            data = load_feeder(community.feeder, n_agents=community.n_agents,
                               seed=community.seed)
        self.data = data
        self.assets: Assets = build_assets(data, community)
        self.n_envs = config.n_envs
        self.n_agents = data.n_agents
        self.agent_names = data.agent_names
        self.obs_dim = observations.obs_dim(config.observation)
        self.state_dim = observations.state_dim(self.n_agents)
        self.feature_names = observations.feature_names(config.observation)
        self.episode_days = config.episode.length_days
        """Days per episode (``episode.length_days``)."""
        self.episode_steps = STEPS_PER_DAY * self.episode_days
        """Steps per episode, ``96 * episode_days``."""
        self.dt_h = STEP_HOURS

        def tensor(array: Any, dtype: torch.dtype | None = None) -> Tensor:
            return torch.as_tensor(np.asarray(array), dtype=dtype or self.dtype,
                                   device=self.device)

        self.load_kw = tensor(data.load_kw)
        self.load_kvar = tensor(data.load_kvar)
        self.pv_kwp = tensor(self.assets.pv_kwp)
        self.pv_kw = physics.pv_power_kw(tensor(data.pv_kw_per_kwp), self.pv_kwp)
        self.capacity_kwh = tensor(self.assets.battery_kwh)
        self.battery_kw = tensor(self.assets.battery_kw)
        self.peak_load_kw = self.load_kw.max(dim=0).values.clamp_min(1e-6)

        retail, feed_in = config.tariff.hourly()
        hour_of_step = np.arange(STEPS_PER_DAY) // 4
        self.retail_price = tensor(np.asarray(retail)[hour_of_step])
        self.feed_in_price = tensor(np.asarray(feed_in)[hour_of_step])
        self.price_scale = float(max(retail))
        # Terminal value (see EpisodeConfig.terminal_price_per_kwh and
        # terminal_credit_price_per_kwh): currency per kWh of cell energy taken over an
        # episode, and credited per kWh added; 0 when episode.terminal_value is false.
        self.terminal_value = config.episode.terminal_value
        self.terminal_price = config.episode.terminal_price_per_kwh(config.tariff,
                                                                    config.battery)
        self.terminal_credit_price = config.episode.terminal_credit_price_per_kwh(
            config.tariff, config.battery)

        # Precomputed observation tables (see envs.observations for the layout).
        self._profile = torch.stack([self.load_kw / self.peak_load_kw,
                                     self.pv_kw / self.peak_load_kw], dim=-1)  # [T, N, 2]
        self._sizes = torch.stack([self.pv_kwp, self.capacity_kwh], dim=1) / self.peak_load_kw[
            :, None]
        self._community_net = ((self.load_kw - self.pv_kw).sum(dim=1)
                               / self.peak_load_kw.sum())  # [T]
        total_capacity_kwh = float(self.capacity_kwh.sum())
        self._inverse_total_capacity = (1.0 / total_capacity_kwh if total_capacity_kwh > 0
                                        else 0.0)
        self._inverse_capacity = torch.where(
            self.capacity_kwh > 0, 1.0 / self.capacity_kwh.clamp_min(1e-9),
            torch.zeros_like(self.capacity_kwh))
        tod = 2 * math.pi * torch.arange(STEPS_PER_DAY, dtype=torch.float64) / STEPS_PER_DAY
        by_step = {"tod_sin": tod.sin(), "tod_cos": tod.cos(),
                   "retail": torch.as_tensor(np.asarray(retail)[hour_of_step]) / max(retail),
                   "feed_in": torch.as_tensor(np.asarray(feed_in)[hour_of_step]) / max(retail)}
        self._step_table = torch.stack(
            [by_step[name] for name in observations.STEP_TABLE_FEATURES], dim=1).to(
            self.dtype).to(self.device)  # [96, 4]
        dow = 2 * math.pi * torch.arange(7, dtype=torch.float64) / 7
        by_weekday = {"dow_sin": dow.sin(), "dow_cos": dow.cos()}
        self._weekday_table = torch.stack(
            [by_weekday[name] for name in observations.WEEKDAY_TABLE_FEATURES], dim=1).to(
            self.dtype).to(self.device)  # [7, 2]
        # _shared_features concatenates the step table's row, the weekday table's row and
        # the last price; this gathers them into the order of SHARED_FEATURES.
        sources = (*observations.STEP_TABLE_FEATURES, *observations.WEEKDAY_TABLE_FEATURES,
                   "last_price")
        self._shared_order = torch.tensor(
            [sources.index(name) for name in observations.SHARED_FEATURES], device=self.device)
        # The time-of-use rule's table of the day's tariff (envs.rules), for the
        # time_of_use baseline and the rule_battery observation feature.
        self.tou_schedule = rules.tou_schedule(self.retail_price, config.battery)

        train_days, test_days = day_split(config.episode.test_every)
        split = {"train": train_days, "test": test_days,
                 "all": np.arange(DAYS_PER_YEAR)}[config.episode.days]
        if len(split) == 0:
            raise ValueError(f"episode.days={config.episode.days!r} selects no day with "
                             f"episode.test_every={config.episode.test_every}")
        self.start_days = tensor(split, torch.int64)

        b, n = self.n_envs, self.n_agents
        self.env_seed = torch.zeros(b, dtype=torch.int64, device=self.device)
        self.episode_count = torch.zeros(b, dtype=torch.int64, device=self.device)
        self.day = torch.zeros(b, dtype=torch.int64, device=self.device)
        self.step_of_day = torch.zeros(b, dtype=torch.int64, device=self.device)
        # Day of each environment's episode, 0..episode_days - 1 (the episode ends after the
        # last step of day episode_days - 1).
        self.day_of_episode = torch.zeros(b, dtype=torch.int64, device=self.device)
        self.soc_kwh = torch.zeros(b, n, dtype=self.dtype, device=self.device)
        # SoC at the start of each environment's episode (kWh), for the terminal value.
        self.episode_start_soc_kwh = torch.zeros(b, n, dtype=self.dtype, device=self.device)
        self.last_price = torch.zeros(b, dtype=self.dtype, device=self.device)
        self.last_voltage = torch.ones(b, n, dtype=self.dtype, device=self.device)
        # Each agent's running money against its reference over the day so far (currency),
        # behaviour.time_scale day; stays 0 otherwise (envs.behaviour).
        self.behaviour_day_gain = torch.zeros(b, n, dtype=self.dtype, device=self.device)
        self._agent_index = torch.arange(n, device=self.device)

        levels = config.action
        self._battery_levels = torch.linspace(-1.0, 1.0, levels.battery_levels,
                                              dtype=self.dtype, device=self.device)
        self._price_levels = torch.linspace(0.0, 1.0, levels.price_levels, dtype=self.dtype,
                                            device=self.device)
        self.n_discrete_actions = levels.battery_levels * levels.price_levels
        self._action_low = torch.tensor([-1.0, 0.0], dtype=self.dtype, device=self.device)
        self._action_high = torch.tensor([1.0, 1.0], dtype=self.dtype, device=self.device)

        from envs.grid import make_network

        self.storage: storage.SharedStorage | None = None
        """The shared battery (``storage``, ``envs.storage``), or None."""
        battery_bus = None
        if config.storage.enabled:
            self.storage = storage.SharedStorage(config.storage, self.agent_names, self.device,
                                                 self.dtype, config.market.mechanism)
            if data.net_json is not None:
                battery_bus = storage.storage_bus(config.storage, data.net())
            elif config.storage.bus is not None:
                raise ConfigError(f"config key 'storage.bus': got {config.storage.bus!r}; "
                                  f"allowed: null on feeder {data.name!r}, which has no network")
        self.network = make_network(config.network, data, self.device, self.dtype,
                                    battery_bus=battery_bus)
        self._battery_column = battery_bus is not None and config.network.model != "none"
        """Whether the network's inputs have the shared battery as a last column."""
        self.state_keys: tuple[str, ...] = STATE_KEYS + (
            STORAGE_STATE_KEYS if self.storage is not None else ())
        """The keys of :meth:`get_state`: :data:`STATE_KEYS`, and :data:`STORAGE_STATE_KEYS`
        with a shared battery."""
        self.storage_soc_kwh = torch.zeros(b, dtype=self.dtype, device=self.device)
        self.storage_start_soc_kwh = torch.zeros(b, dtype=self.dtype, device=self.device)
        self.storage_account_kwh = torch.zeros(b, n, dtype=self.dtype, device=self.device)
        net_cfg = config.network
        self.charges_p2p = (net_cfg.p2p_fee, net_cfg.p2p_distance_fee,
                            net_cfg.p2p_loss_factor) != (0.0, 0.0, 0.0)
        """Whether P2P trades pay network fees or loss charges (``envs.fees``)."""
        self.electrical_distance = None
        if net_cfg.p2p_distance_fee > 0.0:
            from envs.network import electrical_distance

            # the agents' block (a shared battery's column is not a trading agent)
            self.electrical_distance = electrical_distance(self.network.model)[:n, :n]
        # The no-P2P operation's consumption, computed as step() computes a no_p2p policy's
        # (kWh of the step, idle battery, back to kW), and its penalty shares.
        no_p2p_kw = (self.load_kw * self.dt_h - self.pv_kw * self.dt_h) / self.dt_h
        no_p2p_kvar = self.load_kvar
        if self._battery_column:  # the shared battery idle too
            no_p2p_kw = torch.nn.functional.pad(no_p2p_kw, (0, 1))
            no_p2p_kvar = torch.nn.functional.pad(no_p2p_kvar, (0, 1))
        self.no_p2p_network_penalty = self.network.penalty_table(
            no_p2p_kw, no_p2p_kvar)[:, :n]
        """``[T, N]``: :attr:`CoreTables.no_p2p_network_penalty`."""
        self.behavioural = torch.as_tensor(self._behavioural_mask(), device=self.device)
        """``[N]`` bool: the behavioural (prospect-theory) agents of ``behaviour``; all False
        when it is off."""
        self._any_behavioural = bool(self.behavioural.any())
        self._day_time_scale = (self._any_behavioural
                                and config.behaviour.time_scale == "day")
        """Whether the rewards use :attr:`behaviour_day_gain` (behavioural agents and
        ``behaviour.time_scale`` day); else it is never touched after construction."""
        self._seeded = False
        self.compiled: CompiledStages | None = (
            CompiledStages(self) if compile_wanted(config) else None)
        """The compiled stages of :meth:`step` (``compile`` on, ``envs.compiled``), or None."""
        # The info dict of the last step() (None after a reset of every environment): what a
        # PettingZoo-level policy sees as its infos (agents.external).
        self.last_info: dict[str, Tensor] | None = None

    def _behavioural_mask(self) -> np.ndarray:
        """``envs.behaviour.behavioural_mask`` of ``config.behaviour`` on this feeder's agents
        ([N] bool; all False when off); unknown agent names raise ConfigError naming
        ``behaviour.agents``."""
        cfg = self.config.behaviour
        if not cfg.enabled:
            return np.zeros(self.n_agents, dtype=bool)
        try:
            return behaviour.behavioural_mask(self.agent_names, cfg.share, cfg.agents, cfg.seed)
        except ValueError as error:
            raise ConfigError(f"config key 'behaviour.agents': got {cfg.agents!r}; allowed: "
                              f"names of this community's agents ({error})") from None

    def behavioural_reward(self, reward: Tensor, cost: Tensor, reference_cost: Tensor,
                           day_gain: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """The rewards ``[B, N]`` with the behavioural agents' replaced by their prospect
        value (``envs.behaviour.prospect_value`` of ``behaviour``, Tversky & Kahneman 1992),
        and the new running day gain.

        ``reward``, ``cost`` (money of the step) and ``reference_cost`` (the agent's no-P2P
        bill of the step, or 0 with ``behaviour.reference`` zero) ``[B, N]``; the step's
        ``x = reference_cost - cost``. Without ``day_gain`` (time scale step) the reward is
        ``V(x) * reward_scale`` and the second result is None. With ``day_gain [B, N]``, the
        day's running sum ``S_{t-1}`` before this step (time scale day), it is
        ``(V(S_t) - V(S_{t-1})) * reward_scale`` with ``S_t = S_{t-1} + x``, returned second
        (for every agent; only the behavioural agents' rewards use it). The rational agents'
        entries are ``reward``'s, untouched. Pure (changes no state)."""
        cfg = self.config.behaviour
        x = reference_cost - cost
        if day_gain is None:
            value = behaviour.prospect_value(x, cfg.alpha, cfg.beta, cfg.loss_aversion)
            new_gain = None
        else:
            new_gain = day_gain + x
            value = (behaviour.prospect_value(new_gain, cfg.alpha, cfg.beta, cfg.loss_aversion)
                     - behaviour.prospect_value(day_gain, cfg.alpha, cfg.beta,
                                                cfg.loss_aversion))
        return torch.where(self.behavioural, value * self.config.reward_scale, reward), new_gain

    # ----------------------------------------------------------------------------------------
    # Tables and state: the contract with the numba engine and with checkpoints
    # ----------------------------------------------------------------------------------------

    def tables(self) -> CoreTables:
        """The precomputed tables of the feeder, tariff and action levels (see
        :class:`CoreTables`); fixed at construction, not copies: do not modify them."""
        schedule = self.tou_schedule
        return CoreTables(
            load_kw=self.load_kw, load_kvar=self.load_kvar, pv_kw=self.pv_kw,
            profile=self._profile, sizes=self._sizes, capacity_kwh=self.capacity_kwh,
            inverse_capacity=self._inverse_capacity, battery_kw=self.battery_kw,
            step_table=self._step_table, weekday_table=self._weekday_table,
            retail_price=self.retail_price, feed_in_price=self.feed_in_price,
            start_days=self.start_days, battery_levels=self._battery_levels,
            price_levels=self._price_levels, community_net=self._community_net,
            tou_grid_charge=schedule.grid_charge,
            tou_hold=schedule.hold, tou_cheap_steps_left=schedule.cheap_steps_left,
            no_p2p_network_penalty=self.no_p2p_network_penalty, behavioural=self.behavioural)

    def get_state(self) -> dict[str, Tensor | bool]:
        """A copy of everything that changes after construction, keyed by
        :data:`STATE_KEYS`: int64 ``env_seed``, ``episode_count``, ``day`` (0..365),
        ``step_of_day`` (0..95) and ``day_of_episode`` (0..episode_days - 1), each ``[B]``;
        ``soc_kwh`` and ``episode_start_soc_kwh`` ``[B, N]`` (kWh), ``last_price [B]``
        (currency/kWh), ``last_voltage [B, N]`` (p.u.), ``behaviour_day_gain [B, N]`` (each
        agent's running money against its reference over the day so far, currency: the sum
        ``S`` of ``envs.behaviour``'s day time scale; 0 at the step time scale);
        ``seeded``: whether :meth:`seed` ran (else the next reset seeds with
        ``config.seed``); with a shared battery also :data:`STORAGE_STATE_KEYS`.
        :meth:`set_state` of a core of the same config restores it."""
        state: dict[str, Tensor | bool] = {
            name: getattr(self, name).clone() for name in self.state_keys if name != "seeded"}
        state["seeded"] = self._seeded
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`get_state` (tensors or arrays, from any device; floats are cast
        to the core's dtype). Raises ValueError naming the key, before any state changes,
        unless ``state`` has exactly :data:`STATE_KEYS` with the shapes of this core's,
        integers where the core holds integers, finite floats, ``day`` in 0..365,
        ``step_of_day`` in 0..95 and ``day_of_episode`` in 0..episode_days - 1."""
        if not isinstance(state, dict) or set(state) != set(self.state_keys):
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"core state: got keys {keys}; allowed: exactly "
                             f"{list(self.state_keys)}")
        seeded = state["seeded"]
        if not isinstance(seeded, bool | np.bool_):
            raise ValueError(f"core state 'seeded': got {seeded!r}; allowed: a bool")
        values = {}
        for name in (name for name in self.state_keys if name != "seeded"):
            current = getattr(self, name)
            value = torch.as_tensor(state[name])
            if tuple(value.shape) != tuple(current.shape) or (
                    value.is_floating_point() != current.is_floating_point()) or (
                    value.dtype == torch.bool or value.is_complex()):
                raise ValueError(f"core state {name!r}: got shape {list(value.shape)}, dtype "
                                 f"{value.dtype}; allowed: shape {list(current.shape)}, "
                                 f"{'float' if current.is_floating_point() else 'integer'}")
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise ValueError(f"core state {name!r}: got non-finite values")
            values[name] = value.to(device=self.device, dtype=current.dtype, copy=True)
        for name, high in (("day", DAYS_PER_YEAR), ("step_of_day", STEPS_PER_DAY),
                           ("day_of_episode", self.episode_days)):
            if not bool(((values[name] >= 0) & (values[name] < high)).all()):
                raise ValueError(f"core state {name!r}: got {values[name].tolist()}; allowed: "
                                 f"integers in [0, {high - 1}]")
        for name, value in values.items():
            setattr(self, name, value)
        self._seeded = bool(seeded)

    # ----------------------------------------------------------------------------------------
    # Reset
    # ----------------------------------------------------------------------------------------

    def seed(self, seed: int) -> None:
        """Seed every environment: environment b gets ``seed + b``, episodes count from 0."""
        self.env_seed = seed + torch.arange(self.n_envs, dtype=torch.int64,
                                            device=self.device)
        self.episode_count.zero_()
        self._seeded = True

    def reset(self, seed: int | None = None, env_index: int | Tensor | None = None,
              days: Tensor | list[int] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Start new episodes in all environments, or only those in ``env_index``.

        With ``seed``, all environments are reseeded first (see :meth:`seed`); without one an
        unseeded core uses ``config.seed``. ``days`` ([B], or one per reset env) fixes the
        start days (0..365) instead of drawing them from the split, e.g. for evaluation.
        Returns ``(observations, info)``. A bad ``seed`` (not an integer in
        [0, INT64_MAX - (B - 1)]) or bad ``days`` raise ValueError before any state changes.
        """
        if seed is not None:
            seed = checked_seed(seed, INT64_MAX - (self.n_envs - 1))
        mask = torch.ones(self.n_envs, dtype=torch.bool, device=self.device)
        if env_index is not None:
            mask = torch.zeros_like(mask)
            mask[torch.as_tensor(env_index, device=self.device)] = True
        if days is not None:
            days = torch.as_tensor(checked_days(days, int(mask.sum())), dtype=torch.int64,
                                   device=self.device)
        if seed is not None:
            self.seed(seed)
        elif not self._seeded:
            self.seed(self.config.seed)
        self._reset_where(mask)
        if days is not None:
            self.day = self.day.masked_scatter(mask, days)
        if env_index is None:
            self.last_info = None
        return self.observe(), {"day": self.day.clone()}

    def _reset_where(self, mask: Tensor) -> None:
        """Reset the environments where ``mask [B]`` is True (no Python loop)."""
        u = rng.uniform(self.env_seed, self.episode_count, rng.STREAM_START_DAY, (),
                        torch.float64)
        pick = (u * len(self.start_days)).long().clamp_max(len(self.start_days) - 1)
        day = self.start_days[pick]
        self.day = torch.where(mask, day, self.day)
        self.step_of_day = torch.where(mask, torch.zeros_like(self.step_of_day),
                                       self.step_of_day)
        self.day_of_episode = torch.where(mask, torch.zeros_like(self.day_of_episode),
                                          self.day_of_episode)
        initial = self.config.battery.initial_soc * self.capacity_kwh
        self.soc_kwh = torch.where(mask[:, None], initial.expand_as(self.soc_kwh),
                                   self.soc_kwh)
        self.episode_start_soc_kwh = torch.where(mask[:, None], self.soc_kwh,
                                                 self.episode_start_soc_kwh)
        midpoint = 0.5 * (self.retail_price[0] + self.feed_in_price[0])
        self.last_price = torch.where(mask, midpoint, self.last_price)
        self.last_voltage = torch.where(mask[:, None], torch.ones_like(self.last_voltage),
                                        self.last_voltage)
        if self.storage is not None:
            self.storage_soc_kwh = torch.where(
                mask, torch.full_like(self.storage_soc_kwh, self.storage.initial_kwh),
                self.storage_soc_kwh)
            self.storage_start_soc_kwh = torch.where(mask, self.storage_soc_kwh,
                                                     self.storage_start_soc_kwh)
            self.storage_account_kwh = torch.where(
                mask[:, None], torch.zeros_like(self.storage_account_kwh),
                self.storage_account_kwh)
        if self._day_time_scale:
            self.behaviour_day_gain = torch.where(
                mask[:, None], torch.zeros_like(self.behaviour_day_gain),
                self.behaviour_day_gain)
        self.episode_count = self.episode_count + mask.long()

    # ----------------------------------------------------------------------------------------
    # Observations
    # ----------------------------------------------------------------------------------------

    def time_index(self, offset: int = 0) -> Tensor:
        """Index into the year's profiles (``load_kw`` ...) of step ``step_of_day + offset``
        of each env's day, ``[B]`` int64."""
        return (self.day * STEPS_PER_DAY + self.step_of_day + offset) % STEPS_PER_YEAR

    def _shared_features(self) -> Tensor:
        """``[B, 7]``: ``envs.observations.SHARED_FEATURES``, time of day (sin, cos), weekday
        (sin, cos), retail, feed-in, last price, prices divided by the day's highest retail
        price."""
        step = self.step_of_day.clamp_max(STEPS_PER_DAY - 1)
        weekday = (self.day + START_WEEKDAY) % 7
        return torch.cat([self._step_table[step], self._weekday_table[weekday],
                          (self.last_price / self.price_scale)[:, None]],
                         dim=1).index_select(1, self._shared_order)

    def _tariffs_now(self) -> tuple[Tensor, Tensor]:
        step = self.step_of_day.clamp_max(STEPS_PER_DAY - 1)
        return self.retail_price[step], self.feed_in_price[step]

    def _soc_fraction(self) -> Tensor:
        return self.soc_kwh * self._inverse_capacity

    def observe(self) -> Tensor:
        """Local observations ``[B, N, obs_dim]`` (layout in ``envs.observations``)."""
        cfg = self.config.observation
        b, n = self.n_envs, self.n_agents
        steps = cfg.forecast_steps + 1
        offsets = torch.arange(steps, device=self.device)
        index = (self.time_index()[:, None] + offsets[None, :]) % STEPS_PER_YEAR  # [B, S]
        profile = self._profile[index]  # [B, S, N, 2]
        if cfg.forecast_noise > 0.0:
            # Counted over the episode's steps (day_of_episode * 96 + step_of_day), so the
            # days of a multi-day episode draw different noise.
            counter = rng.forecast_noise_counter(
                self.episode_count, self.day_of_episode * STEPS_PER_DAY + self.step_of_day)
            noise = rng.normal(self.env_seed, counter, rng.STREAM_FORECAST_NOISE,
                               (steps, n, observations.N_PROFILE_FEATURES), self.dtype)
            profile = physics.noisy(profile, cfg.forecast_noise, noise)
        profile = profile.permute(0, 2, 1, 3).reshape(b, n, 2 * steps)
        shared = self._shared_features()
        parts = [profile, self._soc_fraction()[..., None], self._sizes.expand(b, n, 2),
                 shared[:, None, :].expand(b, n, shared.shape[1])]
        if cfg.community:
            soc = self.soc_kwh.sum(dim=1, keepdim=True) * self._inverse_total_capacity
            community = torch.cat([self._community_net[index], soc], dim=1)  # [B, S + 1]
            parts.append(community[:, None, :].expand(b, n, steps + 1))
        if cfg.include_voltage:
            parts.append(((self.last_voltage - 1.0) * 10.0)[..., None])
        if cfg.rule != "none":
            parts.append(rules.rule_fraction(cfg.rule, self)[..., None])
        return torch.cat(parts, dim=-1)

    def state(self) -> Tensor:
        """Global state ``[B, 3 N + 7]`` for centralised critics (true load, PV, SoC of every
        agent, then time features, tariffs and last price)."""
        profile = self._profile[self.time_index()]  # [B, N, 2]
        return torch.cat([profile[..., 0], profile[..., 1], self._soc_fraction(),
                          self._shared_features()], dim=1)

    # ----------------------------------------------------------------------------------------
    # Step
    # ----------------------------------------------------------------------------------------

    def decode_actions(self, actions: Tensor) -> tuple[Tensor, Tensor]:
        """Validate ``actions`` and return (battery fraction in [-1, 1], price fraction in
        [0, 1]), each ``[B, N]``. Raises ValueError naming the first bad agent."""
        b, n = self.n_envs, self.n_agents
        actions = torch.as_tensor(actions, device=self.device)
        if self.config.action.type == "continuous":
            if actions.shape != (b, n, 2):
                raise ValueError(f"continuous actions must have shape [n_envs, n_agents, 2] = "
                                 f"[{b}, {n}, 2], got {list(actions.shape)}")
            actions = actions.to(self.dtype)
            low, high = self._action_low, self._action_high
            # NaN fails both comparisons, so one check covers NaN, inf and out-of-range.
            valid = (actions >= low - 1e-6) & (actions <= high + 1e-6)
            if not bool(valid.all()):
                env, agent = (~valid.all(dim=-1)).nonzero()[0].tolist()
                raise ValueError(
                    f"action of agent {self.agent_names[agent]!r} (index {agent}) in env {env} "
                    f"is {actions[env, agent].tolist()}; allowed: finite [battery in [-1, 1], "
                    f"price in [0, 1]]")
            actions = actions.clamp(low, high)
            return actions[..., 0], actions[..., 1]
        if actions.shape != (b, n):
            raise ValueError(f"discrete actions must have shape [n_envs, n_agents] = "
                             f"[{b}, {n}], got {list(actions.shape)}")
        if actions.is_floating_point():
            if not bool(torch.isfinite(actions).all()) or not bool(
                    (actions == actions.round()).all()):
                raise ValueError("discrete actions must be integers, got non-integral values")
            actions = actions.long()
        outside = (actions < 0) | (actions >= self.n_discrete_actions)
        if bool(outside.any()):
            env, agent = outside.nonzero()[0].tolist()
            raise ValueError(f"discrete action of agent {self.agent_names[agent]!r} (index "
                             f"{agent}) in env {env} is {int(actions[env, agent])}; allowed: "
                             f"0..{self.n_discrete_actions - 1}")
        n_price = self._price_levels.shape[0]
        return self._battery_levels[actions // n_price], self._price_levels[actions % n_price]

    @property
    def storage_operator_agent(self) -> bool:
        """Whether the shared battery is driven by an agent (mode market, operator agent):
        :meth:`step` then needs ``storage_actions``."""
        cfg = self.config.storage
        return cfg.mode == "market" and cfg.operator == "agent"

    def decode_storage_actions(self, storage_actions: Tensor | None) -> Tensor | None:
        """Validate the operator agent's ``storage_actions [B, 2]`` (None unless
        :attr:`storage_operator_agent`); returns them clamped, in the core's dtype. Raises
        ValueError naming what is wrong."""
        if not self.storage_operator_agent:
            if storage_actions is not None:
                raise ValueError("storage_actions are for a shared battery driven by an agent "
                                 "(storage.mode market, storage.operator agent); this core "
                                 f"has storage.mode {self.config.storage.mode!r}, operator "
                                 f"{self.config.storage.operator!r}: pass none")
            return None
        if storage_actions is None:
            raise ValueError("storage.operator is agent: step() needs storage_actions "
                             f"[{self.n_envs}, 2] (battery fraction in [-1, 1], price "
                             f"fraction in [0, 1]) for {storage.BATTERY_AGENT!r}")
        action = torch.as_tensor(storage_actions, device=self.device)
        if tuple(action.shape) != (self.n_envs, 2) or not action.is_floating_point():
            raise ValueError(f"storage_actions must be floats of shape [{self.n_envs}, 2], got "
                             f"{list(action.shape)} {action.dtype}")
        action = action.to(self.dtype)
        valid = (action >= self._action_low - 1e-6) & (action <= self._action_high + 1e-6)
        if not bool(valid.all()):
            env = int((~valid.all(dim=-1)).nonzero()[0, 0])
            raise ValueError(f"storage_actions of env {env} are {action[env].tolist()}; "
                             f"allowed: finite [battery in [-1, 1], price in [0, 1]]")
        return action.clamp(self._action_low, self._action_high)

    def arrival_rank(self) -> Tensor:
        """``[B, N]`` int64: each agent's place in the arrival order of the step being taken,
        for the continuous double auction (``market.mechanism: cda``), drawn from
        ``envs.rng.STREAM_CDA_ARRIVAL`` at the step's ``forecast_noise_counter``; the step's
        info gives it as ``arrival_rank``."""
        counter = rng.forecast_noise_counter(
            self.episode_count, self.day_of_episode * STEPS_PER_DAY + self.step_of_day)
        participants = self.n_agents + (
            1 if self.storage is not None and self.storage.mode == "market" else 0)
        return rng.random_rank(self.env_seed, counter, rng.STREAM_CDA_ARRIVAL, participants)

    def terminal_value_cost(self, soc_kwh: Tensor, start_kwh: Tensor | None = None) -> Tensor:
        """Each agent's terminal value of the step being taken, ``[B, N]`` currency:
        ``terminal_price * max(taken, 0) - terminal_credit_price * max(-taken, 0)`` with
        ``taken = episode_start_soc_kwh - soc_kwh`` (kWh) in the environments whose episode
        ends with this step (the last step of the episode's last day), 0 elsewhere (also at
        the midnights inside a multi-day episode) and when ``episode.terminal_value`` is
        false.
        ``soc_kwh [B, N]`` is the SoC after the step; ``start_kwh`` (same shape) the SoC at
        the episode's start, :attr:`episode_start_soc_kwh` when None (the shared battery's
        ``[B]`` is valued by the same rule)."""
        if not self.terminal_value:
            return torch.zeros_like(soc_kwh)
        last_step = self._episode_ends_now()
        if soc_kwh.dim() == 2:
            last_step = last_step[:, None]
        start = self.episode_start_soc_kwh if start_kwh is None else start_kwh
        taken = start - soc_kwh
        # The numba engine computes the same two products in the same order.
        value = (self.terminal_price * taken.clamp_min(0.0)
                 - self.terminal_credit_price * (-taken).clamp_min(0.0))
        return torch.where(last_step, value, torch.zeros_like(value))

    def _episode_ends_now(self) -> Tensor:
        """``[B]`` bool: whether the step being taken is its episode's last."""
        return ((self.step_of_day == STEPS_PER_DAY - 1)
                & (self.day_of_episode == self.episode_days - 1))

    def storage_observation(self) -> Tensor:
        """``[B, len(envs.storage.OPERATOR_FEATURES)]``: the shared battery's operator
        observation (``envs.storage``); needs a shared battery."""
        if self.storage is None:
            raise ValueError("storage_observation needs a shared battery (storage.mode "
                             "market or virtual)")
        return self.storage.operator_observation(
            self.storage_soc_kwh, self._shared_features(),
            self._community_net[self.time_index()])

    def _storage_flows(self, position_kwh: Tensor, retail: Tensor, feed_in: Tensor,
                       storage_action: Tensor | None) -> storage.StorageFlows:
        """The shared battery's step (``envs.storage``) before the market, for the members'
        positions ``[B, N]``; ``storage_action [B, 2]`` the operator agent's (else the
        rule's)."""
        shared = self.storage
        assert shared is not None
        if shared.mode == "market":
            if storage_action is None:
                fraction, price_fraction = shared.operator_rule(position_kwh)
            else:
                fraction, price_fraction = storage_action[:, 0], storage_action[:, 1]
            return shared.market_step(position_kwh, self.storage_soc_kwh, fraction,
                                      price_fraction, retail, feed_in,
                                      self.storage_account_kwh)
        cfg = self.config.storage
        last_of_day = self.step_of_day == STEPS_PER_DAY - 1
        settle_now = (last_of_day if cfg.settle == "day"
                      else torch.zeros_like(last_of_day)) | self._episode_ends_now()
        if cfg.leftover_price == "feed_in":
            leftover = feed_in
        elif cfg.leftover_price == "retail":
            leftover = retail
        else:
            leftover = torch.full_like(feed_in, float(cfg.leftover_price))
        return shared.virtual_step(position_kwh, self.storage_soc_kwh, self.storage_account_kwh,
                                   self.step_of_day.clamp_max(STEPS_PER_DAY - 1), settle_now,
                                   leftover)

    def _trade(self, battery_fraction: Tensor, price_fraction: Tensor,
               arrival_rank: Tensor | None = None, storage_action: Tensor | None = None
               ) -> dict[str, Tensor]:
        """Steps 2 and 3 of a step for decoded actions (``[B, N]`` each), without changing
        state: the profiles, the battery and the market, as a dict of tensors (``p_kw`` and
        ``q_kvar [B, N]``, kW and kvar, are the network's input). ``arrival_rank`` ``[B, N]``:
        the step's :meth:`arrival_rank` under ``cda`` (drawn outside: its integer hashing is
        not compiled), else None. ``storage_action [B, 2]``: the shared battery's operator
        agent's action (``storage.operator`` agent), else None.
        Pure tensor code (no host sync), compiled by ``envs.compiled``."""
        cfg = self.config
        index = self.time_index()
        load_kwh = self.load_kw[index] * self.dt_h
        pv_kwh = self.pv_kw[index] * self.dt_h
        retail, feed_in = self._tariffs_now()

        battery_power = battery_fraction * self.battery_kw
        battery = physics.battery_step(
            self.soc_kwh, battery_power * self.dt_h, self.capacity_kwh, self.battery_kw,
            cfg.battery.charge_efficiency, cfg.battery.discharge_efficiency,
            cfg.battery.soc_min, cfg.battery.soc_max, self.dt_h)
        net_kwh = load_kwh - pv_kwh + battery.energy_kwh
        price = feed_in[:, None] + price_fraction * (retail - feed_in)[:, None]
        p_kw = net_kwh / self.dt_h
        q_kvar = self.load_kvar[index]
        extra: dict[str, Tensor] = {}
        position = net_kwh
        if self.storage is None:
            # The tariff is validated by the config and the quantities are finite: no checks.
            cleared = market.clear_unchecked(cfg.market.mechanism, price, net_kwh, retail,
                                             feed_in, float(cfg.market.k), arrival_rank)
        else:
            n = self.n_agents
            flows = self._storage_flows(net_kwh, retail, feed_in, storage_action)
            position = flows.position_kwh
            extra = {f"storage_{name}": value for name, value in flows._asdict().items()}
            if self.storage.mode == "market":  # the battery is participant n
                both = market.clear_unchecked(
                    cfg.market.mechanism, torch.cat([price, flows.price[:, None]], dim=1),
                    torch.cat([net_kwh, flows.energy_kwh[:, None]], dim=1), retail, feed_in,
                    float(cfg.market.k), arrival_rank)
                cleared = dataclasses.replace(both, **{
                    name: getattr(both, name)[:, :n] for name in (
                        "payment", "p2p_energy", "grid_energy", "p2p_payment", "grid_payment")})
                extra.update(storage_payment=both.payment[:, n],
                             storage_p2p_kwh=both.p2p_energy[:, n],
                             storage_grid_kwh=both.grid_energy[:, n])
            else:
                cleared = market.clear_unchecked(cfg.market.mechanism, price, position, retail,
                                                 feed_in, float(cfg.market.k), arrival_rank)
                extra.update(storage_payment=torch.zeros_like(retail),
                             storage_p2p_kwh=torch.zeros_like(retail))
            if self._battery_column:
                p_kw = torch.cat([p_kw, (flows.energy_kwh / self.dt_h)[:, None]], dim=1)
                q_kvar = torch.nn.functional.pad(q_kvar, (0, 1))
        degradation = cfg.battery.degradation_cost * battery.throughput_kwh
        return {**extra,
            "index": index, "load_kwh": load_kwh, "pv_kwh": pv_kwh, "retail": retail,
            "feed_in": feed_in, "price": price, "net_kwh": net_kwh,
            "battery_energy_kwh": battery.energy_kwh, "battery_cut_kwh": battery.cut_kwh,
            "soc_kwh": battery.soc_kwh, "degradation": degradation,
            "position_kwh": position,
            "payment": cleared.payment, "p2p_energy": cleared.p2p_energy,
            "grid_energy": cleared.grid_energy, "p2p_payment": cleared.p2p_payment,
            "grid_payment": cleared.grid_payment, "clearing_price": cleared.clearing_price,
            "operator_surplus": cleared.operator_surplus,
            "p_kw": p_kw, "q_kvar": q_kvar}

    def _settle(self, trade: dict[str, Tensor], penalty: Tensor
                ) -> tuple[Tensor, Tensor, Tensor | None, dict[str, Tensor]]:
        """Steps 5, 6 and 7 for :meth:`_trade`'s ``trade`` and the network ``penalty [B, N]``,
        without changing state: ``(reward [B, N], last_price [B], day_gain, info)`` (the info
        of :meth:`step` before the day, the step and the network's statistics; ``day_gain``
        ``[B, N]`` the new :attr:`behaviour_day_gain` at the day time scale, which
        :meth:`step` assigns and zeroes at midnight, else None). Pure tensor code, compiled
        by ``envs.compiled``."""
        cfg = self.config
        n = self.n_agents
        battery_penalty = penalty[:, n] if penalty.shape[1] > n else None
        penalty = penalty[:, :n]
        p2p_energy, grid_energy = trade["p2p_energy"], trade["grid_energy"]
        # Here rather than in _trade: inductor (torch 2.13, CPU) miscompiled pay_as_bid's
        # payments when these charges were fused into the market's graph.
        if self.charges_p2p:
            fee, loss_charge, _ = fees.p2p_charges(
                p2p_energy.clamp_min(0.0), (-p2p_energy).clamp_min(0.0),
                self.electrical_distance, trade["retail"], cfg.network.p2p_fee,
                cfg.network.p2p_distance_fee, cfg.network.p2p_loss_factor,
                cfg.network.matching_temperature)
            network_fee = fee + loss_charge
        else:
            network_fee = torch.zeros_like(p2p_energy)
        terminal = self.terminal_value_cost(trade["soc_kwh"])
        cost = trade["payment"] + trade["degradation"] + penalty + network_fee + terminal
        storage_info: dict[str, Tensor] = {}
        if self.storage is not None:
            storage_info = self._storage_bill(trade, battery_penalty)
            cost = cost + storage_info["storage_cost_share"] - storage_info["storage_payout"]
        reward = -cost * cfg.reward_scale
        no_p2p_penalty = self.no_p2p_network_penalty[trade["index"]]
        day_gain = None
        if self._any_behavioural:
            reference_cost = (
                no_p2p_step_cost(trade["load_kwh"], trade["pv_kwh"], trade["retail"],
                                 trade["feed_in"], no_p2p_penalty)
                if cfg.behaviour.reference == "no_p2p" else torch.zeros_like(cost))
            reward, day_gain = self.behavioural_reward(
                reward, cost, reference_cost,
                self.behaviour_day_gain if self._day_time_scale else None)
        clearing_price = trade["clearing_price"]
        grid_import = grid_energy.clamp_min(0.0).sum(dim=1)
        grid_export = (-grid_energy).clamp_min(0.0).sum(dim=1)
        p2p_volume = p2p_energy.clamp_min(0.0).sum(dim=1)
        if self.storage is not None:
            battery_grid = trade["storage_grid_kwh"]
            grid_import = grid_import + battery_grid.clamp_min(0.0)
            grid_export = grid_export + (-battery_grid).clamp_min(0.0)
            p2p_volume = p2p_volume + trade["storage_p2p_kwh"].clamp_min(0.0)
        traded = ~torch.isnan(clearing_price)
        last_price = torch.where(traded, clearing_price, self.last_price)
        info: dict[str, Tensor] = {
            "payment": trade["payment"],
            "p2p_energy_kwh": p2p_energy,
            "grid_energy_kwh": grid_energy,
            "p2p_payment": trade["p2p_payment"],
            "grid_payment": trade["grid_payment"],
            "net_energy_kwh": trade["position_kwh"],
            "load_kwh": trade["load_kwh"],
            "pv_kwh": trade["pv_kwh"],
            "battery_energy_kwh": trade["battery_energy_kwh"],
            "battery_cut_kwh": trade["battery_cut_kwh"],
            "soc_kwh": trade["soc_kwh"],
            "degradation_cost": trade["degradation"],
            "network_penalty": penalty,
            "network_fee": network_fee,
            "terminal_value_cost": terminal,
            "no_p2p_network_penalty": no_p2p_penalty,
            "network_fee_revenue": network_fee.sum(dim=1),
            "cost": cost,
            "price": trade["price"],
            "clearing_price": clearing_price,
            "operator_surplus": trade["operator_surplus"],
            "community_cost": cost.sum(dim=1),
            "p2p_volume_kwh": p2p_volume,
            "grid_import_kwh": grid_import,
            "grid_export_kwh": grid_export,
            "retail_price": trade["retail"],
            "feed_in_price": trade["feed_in"],
            **storage_info,
        }
        return reward, last_price, day_gain, info

    def _storage_bill(self, trade: dict[str, Tensor], battery_penalty: Tensor | None
                      ) -> dict[str, Tensor]:
        """The shared battery's infos of the step (``envs.storage.AGENT_INFO`` and
        ``ENV_INFO``): the operator's bill (``storage_cost``) and its allocation to the
        members, from :meth:`_trade`'s flows and the battery's network penalty share
        (None without a network)."""
        shared = self.storage
        assert shared is not None
        energy, soc = trade["storage_energy_kwh"], trade["storage_soc_kwh"]
        retail, feed_in = trade["retail"], trade["feed_in"]
        payout = trade["storage_payout"]
        if battery_penalty is None:
            battery_penalty = torch.zeros_like(energy)
        if shared.mode == "market":
            bill = trade["storage_payment"] + self.terminal_value_cost(
                soc, self.storage_start_soc_kwh)
        else:
            grid = trade["storage_grid_kwh"]
            # at the episode's end the operator's pool (the cells above the floor: every
            # balance is settled) is credited as sold at feed-in after discharge losses
            pool = (soc - shared.floor_kwh).clamp_min(0.0)
            credit = torch.where(self._episode_ends_now(),
                                 pool * shared.discharge_efficiency * feed_in,
                                 torch.zeros_like(pool))
            bill = (retail * grid.clamp_min(0.0) - feed_in * (-grid).clamp_min(0.0)
                    + payout.sum(dim=1) - credit)
        bill = (bill + self.config.storage.degradation_cost * energy.abs()
                + shared.capacity_cost_per_step + battery_penalty)
        flows = storage.StorageFlows(**{
            name: trade[f"storage_{name}"] for name in storage.StorageFlows._fields})
        return {
            "storage_stored_kwh": trade["storage_stored_kwh"],
            "storage_drawn_kwh": trade["storage_drawn_kwh"],
            "storage_account_kwh": trade["storage_account_kwh"],
            "storage_payout": payout,
            "storage_cost_share": shared.allocate(bill, flows),
            "storage_energy_kwh": energy,
            "storage_soc_kwh": soc,
            "storage_grid_kwh": trade["storage_grid_kwh"],
            "storage_p2p_kwh": trade["storage_p2p_kwh"],
            "storage_loss_kwh": trade["storage_loss_kwh"],
            "storage_cost": bill,
            "storage_network_penalty": battery_penalty,
            "storage_price": trade["storage_price"],
        }

    def step(self, actions: Tensor, storage_actions: Tensor | None = None
             ) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """Advance every environment one 15-minute step.

        Returns ``(observations, rewards, terminated, truncated, info)``; ``info`` holds
        tensors (per agent ``[B, N]`` or per env ``[B]``), listed in the README.
        With ``compile`` on (``envs.compiled``), :meth:`_trade`, the network step,
        :meth:`_settle` and :meth:`observe` run compiled; the rest is the same code.
        ``storage_actions [B, 2]`` (battery fraction in [-1, 1], price fraction in [0, 1]):
        the shared battery's operator agent's actions, required with ``storage.operator``
        agent in mode market and refused otherwise (``envs.storage``).
        """
        battery_fraction, price_fraction = self.decode_actions(actions)
        storage_action = self.decode_storage_actions(storage_actions)
        arrival_rank = self.arrival_rank() if self.config.market.mechanism == "cda" else None
        stages = self.compiled
        if stages is None:
            trade = self._trade(battery_fraction, price_fraction, arrival_rank, storage_action)
            grid = self.network.step(trade["p_kw"], trade["q_kvar"])
            reward, last_price, day_gain, info = self._settle(trade, grid.penalty)
        else:
            trade = stages.trade(battery_fraction, price_fraction, arrival_rank, storage_action)
            grid = stages.network_step(trade["p_kw"], trade["q_kvar"])
            reward, last_price, day_gain, info = stages.settle(trade, grid.penalty)
        self.last_price = last_price
        self.soc_kwh = info["soc_kwh"]
        if self.storage is not None:
            self.storage_soc_kwh = info["storage_soc_kwh"]
            self.storage_account_kwh = info["storage_account_kwh"]
        if grid.agent_voltage is not None:  # the agents' (not the shared battery's)
            self.last_voltage = grid.agent_voltage[:, :self.n_agents]
        self.step_of_day = self.step_of_day + 1
        info.update({"day": self.day.clone(), "step_of_day": self.step_of_day - 1, **grid.info})
        if arrival_rank is not None:
            info[ARRIVAL_RANK] = arrival_rank

        midnight = self.step_of_day >= STEPS_PER_DAY
        done = midnight & (self.day_of_episode >= self.episode_days - 1)
        if day_gain is not None:  # the day's sum restarts at every midnight
            self.behaviour_day_gain = torch.where(midnight[:, None],
                                                  torch.zeros_like(day_gain), day_gain)
        if self.episode_days > 1:
            # Midnight inside an episode: the next calendar day (the profiles wrap at the
            # year's end, and so does the day); SoC, last price and voltage carry over.
            advance = midnight & ~done
            self.day = torch.where(advance, (self.day + 1) % DAYS_PER_YEAR, self.day)
            self.step_of_day = torch.where(advance, torch.zeros_like(self.step_of_day),
                                           self.step_of_day)
            self.day_of_episode = self.day_of_episode + advance.long()
        terminated = done
        truncated = torch.zeros_like(done)
        if bool(done.any()):
            info["final_observation"] = self.observe()
            info["final_state"] = self.state()
            if self.storage_operator_agent:
                info["final_storage_observation"] = self.storage_observation()
            info["done"] = done
            self._reset_where(done)
        self.last_info = info
        observation = self.observe() if stages is None else stages.observe()
        return observation, reward, terminated, truncated, info
