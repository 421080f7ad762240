"""One community stepped by numba kernels: the PettingZoo wrapper's fast engine.

The batched torch core (``envs.core.BatchedP2PEnv``) steps thousands of communities at once,
but at ``B = 1`` its ~500 small torch operations cost ~0.7 ms a step. This engine runs the same
dynamics for one community in one compiled call (a few microseconds), so that the PettingZoo
wrapper is limited by its dict bookkeeping, not by the physics.

It is the core at ``B = 1`` in float64, not a second model:

* everything precomputed (profiles, assets, tariffs, observation tables, the Z-bus matrices,
  sensitivities, electrical distances, the no-P2P operation's network penalties) is taken
  from a float64 ``BatchedP2PEnv`` built from the same config, which the engine keeps as
  ``reference``, through the core's public
  contract only: ``BatchedP2PEnv.tables()`` (:class:`Tables` has the fields of
  ``envs.core.CoreTables``) and its public attributes;
* the names both implement are imported, never re-declared: the random streams and the noise
  counter from ``envs.rng``, the observation layout from ``envs.observations``, the info keys
  from ``envs.info_schema``, the state keys (``get_state``/``set_state``, the core's at
  ``B = 1``) from ``envs.core.STATE_KEYS``;
* the per-step kernels mirror the core's functions one to one (``envs.physics.battery_step``,
  ``envs.market.clear``, ``envs.network`` Z-bus solve and summary, ``envs.rng``, the
  battery rules of ``envs.rules`` (on the core's ``tou_schedule`` table),
  ``BatchedP2PEnv.observe``/``state``/``_reset_where``); each names what it mirrors;
* the behavioural agents' reward (``behaviour``: the prospect value of ``envs.behaviour``,
  mirrored by :func:`prospect_value` and :func:`behavioural_rewards_into`, on the core's
  ``behavioural`` mask);
* the rare or optional parts call the core's own torch functions: the sharing of network
  penalties (``envs.network.network_penalty``, only on steps with a violation or a
  non-converged power flow) and P2P network fees (``envs.fees.p2p_charges``, only when fees
  are configured);
* ``tests/test_single_engine.py`` steps both side by side over whole episodes for every
  mechanism, action type, network model and observation option and asserts equal
  observations, rewards and infos (to 1e-9), so the two cannot drift apart.

Supported: ``device: cpu`` with ``network.model`` ``none`` or ``zbus`` (``ac`` runs pandapower
per step, which the engine cannot speed up: use the torch engine). The engine always computes
in float64 whatever ``dtype`` says (``dtype`` is the torch core's); observations are float32.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple, get_type_hints

import numpy as np
import torch
from numba import njit, typeof

from envs import fees, observations
from envs.behaviour import REFERENCE_NO_P2P, REFERENCES
from envs.config import INT64_MAX, OBSERVATION_RULES, EnvConfig
from envs.core import STATE_KEYS, BatchedP2PEnv, checked_days, checked_seed
from envs.data import DAYS_PER_YEAR, START_WEEKDAY, STEPS_PER_DAY, STEPS_PER_YEAR
from envs.info_schema import AGENT_INFO, ARRIVAL_RANK, ENV_INFO, NETWORK_INFO
from envs.network import PowerFlowResult, network_penalty
from envs.observations import (
    N_PROFILE_FEATURES,
    SHARED_FROM_STEP_TABLE,
    SHARED_FROM_WEEKDAY_TABLE,
    SHARED_LAST_PRICE,
)
from envs.rng import STREAM_CDA_ARRIVAL, STREAM_FORECAST_NOISE, STREAM_START_DAY
from envs.single.market import MECHANISM_CODE, clear_into
from envs.single.network import GridArrays, grid_arrays, solve_into, summarise_into
from envs.single.rng import (
    forecast_noise_counter,
    normal_at,
    random_rank_into,
    stream_key,
    uniform_at,
)

# Codes of observation.rule (Params.rule), checked against envs.config.OBSERVATION_RULES.
_RULE_NONE, _RULE_SELF_CONSUMPTION, _RULE_TIME_OF_USE, _RULE_COMMUNITY = 0, 1, 2, 3
_RULE_COMMUNITY_TOU = 4
_CDA = MECHANISM_CODE["cda"]
if OBSERVATION_RULES != ("none", "self_consumption", "time_of_use",
                         "community_self_consumption", "community_time_of_use"):
    raise ImportError(f"envs.single.engine's _RULE_* codes do not follow envs.config."
                      f"OBSERVATION_RULES {OBSERVATION_RULES}")

# Rows of the agent buffer, in the order of envs.info_schema.AGENT_INFO (numba reads
# module-level ints as constants; _check_buffer_layout asserts the order at import).
_A_P2P_ENERGY_KWH = 0  # rows 0-4 are envs.single.market.clear_into's rows
_A_GRID_ENERGY_KWH = 1
_A_PAYMENT = 2
_A_P2P_PAYMENT = 3
_A_GRID_PAYMENT = 4
_A_NET_ENERGY_KWH = 5
_A_LOAD_KWH = 6
_A_PV_KWH = 7
_A_BATTERY_ENERGY_KWH = 8
_A_BATTERY_CUT_KWH = 9
_A_SOC_KWH = 10
_A_DEGRADATION_COST = 11
_A_NETWORK_PENALTY = 12
_A_NETWORK_FEE = 13
_A_COST = 14
_A_PRICE = 15
_A_TERMINAL_VALUE_COST = 16
_A_NO_P2P_NETWORK_PENALTY = 17

# Entries of the env buffer, in the order of envs.info_schema.ENV_INFO + NETWORK_INFO.
_E_NETWORK_FEE_REVENUE = 0
_E_CLEARING_PRICE = 1
_E_OPERATOR_SURPLUS = 2
_E_COMMUNITY_COST = 3
_E_P2P_VOLUME_KWH = 4
_E_GRID_IMPORT_KWH = 5
_E_GRID_EXPORT_KWH = 6
_E_RETAIL_PRICE = 7
_E_FEED_IN_PRICE = 8
_E_DAY = 9
_E_STEP_OF_DAY = 10
_E_V_MIN_PU = 11
_E_V_MAX_PU = 12
_E_MAX_LINE_LOADING = 13
_E_MAX_TRAFO_LOADING = 14
_E_VOLTAGE_VIOLATIONS = 15
_E_LINE_VIOLATIONS = 16
_E_LOSSES_KW = 17
_E_NETWORK_CONVERGED = 18
_N_ENV_INFO = len(ENV_INFO)
_N_NETWORK_INFO = len(NETWORK_INFO)


def _check_buffer_layout() -> None:
    """Fail at import if the buffer constants above and ``envs.info_schema`` disagree."""
    constants = globals()
    for prefix, names in (("_A_", AGENT_INFO), ("_E_", ENV_INFO + NETWORK_INFO)):
        rows = {name: constants.get(prefix + name.upper()) for name in names}
        if list(rows.values()) != list(range(len(names))):
            raise ImportError(f"envs.single.engine's {prefix}* buffer rows {rows} do not follow "
                              f"the order of envs.info_schema")


_check_buffer_layout()


class Tables(NamedTuple):
    """Static per-feeder arrays: ``envs.core.CoreTables`` of the reference core (float64) as
    numpy arrays, field for field (the engine builds it by name from ``core.tables()``)."""

    load_kw: np.ndarray  # [T, N]
    load_kvar: np.ndarray  # [T, N]
    pv_kw: np.ndarray  # [T, N]
    profile: np.ndarray  # [T, N, 2] load, PV / own peak load
    sizes: np.ndarray  # [N, 2] kWp, kWh / own peak load
    capacity_kwh: np.ndarray  # [N]
    inverse_capacity: np.ndarray  # [N] (0 without a battery)
    battery_kw: np.ndarray  # [N]
    step_table: np.ndarray  # [96, 4] tod sin, cos, retail, feed-in (normalised)
    weekday_table: np.ndarray  # [7, 2]
    retail_price: np.ndarray  # [96] currency/kWh
    feed_in_price: np.ndarray  # [96]
    start_days: np.ndarray  # [D] int64
    battery_levels: np.ndarray  # [Lb] discrete battery fractions
    price_levels: np.ndarray  # [Lp] discrete price fractions
    community_net: np.ndarray  # [T] community net load / sum of peak loads
    tou_grid_charge: np.ndarray  # [96] bool: envs.rules.TouSchedule.grid_charge
    tou_hold: np.ndarray  # [96] bool: TouSchedule.hold
    tou_cheap_steps_left: np.ndarray  # [96] TouSchedule.cheap_steps_left
    no_p2p_network_penalty: np.ndarray  # [T, N] penalty shares of the no-P2P operation
    behavioural: np.ndarray  # [N] bool: behavioural (prospect-theory) agents


class Params(NamedTuple):
    """Scalar settings of the config."""

    charge_efficiency: float
    discharge_efficiency: float
    soc_min: float
    soc_max: float
    initial_soc: float
    degradation_cost: float
    mechanism: int
    k: float
    reward_scale: float
    price_scale: float
    dt_h: float
    forecast_steps: int
    forecast_noise: float
    soc_column: int  # columns of the observation: envs.observations.layout
    pv_size_column: int
    battery_size_column: int
    shared_column: int
    community_column: int  # -1 without observation.community
    inverse_total_capacity: float  # 1 / community battery capacity, 1/kWh (0 without)
    voltage_column: int  # -1 without observation.include_voltage
    rule_column: int  # -1 with observation.rule none
    rule: int  # code of observation.rule: index in envs.config.OBSERVATION_RULES
    discrete: bool
    network: bool
    v_min: float
    v_max: float
    terminal_value: bool
    terminal_price: float
    terminal_credit_price: float
    episode_days: int  # episode.length_days
    any_behavioural: bool  # some agent is behavioural (BatchedP2PEnv.behavioural)
    behaviour_alpha: float  # behaviour.alpha
    behaviour_beta: float  # behaviour.beta
    loss_aversion: float  # behaviour.loss_aversion
    behaviour_reference: int  # code of behaviour.reference: index in REFERENCES
    day_time_scale: bool  # behavioural agents at behaviour.time_scale day (BatchedP2PEnv)


class Buffers(NamedTuple):
    """Arrays the kernels write (reused every step)."""

    obs: np.ndarray  # [N, obs_dim] float32
    final_obs: np.ndarray  # [N, obs_dim] float32
    final_state: np.ndarray  # [3 N + 7] float32
    agent: np.ndarray  # [len(AGENT_INFO), N] float64
    env: np.ndarray  # [len(ENV_INFO) + len(NETWORK_INFO)] float64
    market: np.ndarray  # [5, N] float64 (envs.single.market.clear_into rows)
    arrival_rank: np.ndarray  # [N] int64, the cda's arrival order (BatchedP2PEnv.arrival_rank)
    reward: np.ndarray  # [N] float64
    day_gain_before: np.ndarray  # [N] the day's running gain before the step (time scale day)
    vm_pu: np.ndarray  # [n_bus]
    line_loading: np.ndarray  # [n_line] %
    trafo_loading: np.ndarray  # [n_trafo] %
    line_p_from_kw: np.ndarray  # [n_line]
    trafo_p_hv_kw: np.ndarray  # [n_trafo]


# State layout: ints [env_seed, episode_count, day, step_of_day, day_of_episode]; floats
# soc [N], last_voltage [N], last_price [1], episode_start_soc [N] (kWh, for the terminal
# value), day_gain [N] (BatchedP2PEnv.behaviour_day_gain, currency).
_SEED, _EPISODE, _DAY, _STEP, _EPISODE_DAY = 0, 1, 2, 3, 4


@njit(cache=True)
def _shared_features(tables, params, ints, last_price, out, row, column):
    """Mirrors ``BatchedP2PEnv._shared_features``: ``envs.observations.SHARED_FEATURES`` into
    ``out[row, column:column + 7]``."""
    step = min(ints[_STEP], STEPS_PER_DAY - 1)
    weekday = (ints[_DAY] + START_WEEKDAY) % 7
    for k in range(len(SHARED_FROM_STEP_TABLE)):
        out[row, column + SHARED_FROM_STEP_TABLE[k]] = tables.step_table[step, k]
    for k in range(len(SHARED_FROM_WEEKDAY_TABLE)):
        out[row, column + SHARED_FROM_WEEKDAY_TABLE[k]] = tables.weekday_table[weekday, k]
    out[row, column + SHARED_LAST_PRICE] = last_price[0] / params.price_scale


@njit(cache=True)
def rule_fraction(tables, params, ints, soc, i, community):
    """Mirrors ``envs.rules.rule_fraction`` of ``observation.rule`` for agent ``i``: the
    battery fraction of the current step, from the true load and PV, the SoC ``soc [N]``, the
    core's ``tou_schedule`` tables and, for the community rules, every agent's
    ``community_self_consumption`` fraction ``community [N]`` (:func:`community_rule_fractions`)."""
    kw = tables.battery_kw[i]
    if not kw > 0.0:
        return 0.0
    if params.rule == _RULE_COMMUNITY or params.rule == _RULE_COMMUNITY_TOU:
        base = community[i]
    else:
        t = (ints[_DAY] * STEPS_PER_DAY + ints[_STEP]) % STEPS_PER_YEAR
        base = min(max((tables.pv_kw[t, i] - tables.load_kw[t, i]) / kw, -1.0), 1.0)
    if params.rule == _RULE_SELF_CONSUMPTION or params.rule == _RULE_COMMUNITY:
        return base
    step = min(ints[_STEP], STEPS_PER_DAY - 1)
    if tables.tou_grid_charge[step]:
        missing_ac_kwh = (max(params.soc_max * tables.capacity_kwh[i] - soc[i], 0.0)
                          / params.charge_efficiency)
        window_h = max(tables.tou_cheap_steps_left[step], 1.0) * params.dt_h
        return min(max(max(base, missing_ac_kwh / window_h / kw), 0.0), 1.0)
    if tables.tou_hold[step]:
        return max(base, 0.0)
    return base


@njit(cache=True)
def community_rule_fractions(tables, params, ints, soc, out):
    """Mirrors ``envs.rules.community_self_consumption``: every agent's battery fraction
    into ``out [N]`` (own home first, then the community's remaining surplus or deficit
    shared by the room each battery has left)."""
    n = soc.shape[0]
    t = (ints[_DAY] * STEPS_PER_DAY + ints[_STEP]) % STEPS_PER_YEAR
    own = np.zeros(n)
    room_in = np.zeros(n)
    room_out = np.zeros(n)
    surplus = 0.0
    for i in range(n):
        kw = tables.battery_kw[i]
        net = tables.pv_kw[t, i] - tables.load_kw[t, i]
        if kw > 0.0:
            own[i] = min(max(net / kw, -1.0), 1.0) * kw
            charge = min(kw, max(params.soc_max * tables.capacity_kwh[i] - soc[i], 0.0)
                         / params.charge_efficiency / params.dt_h)
            discharge = min(kw, max(soc[i] - params.soc_min * tables.capacity_kwh[i], 0.0)
                            * params.discharge_efficiency / params.dt_h)
            room_in[i] = max(charge - max(own[i], 0.0), 0.0)
            room_out[i] = max(discharge + min(own[i], 0.0), 0.0)
        surplus += net - own[i]
    total_in = 0.0
    total_out = 0.0
    for i in range(n):
        total_in += room_in[i]
        total_out += room_out[i]
    for i in range(n):
        kw = tables.battery_kw[i]
        if not kw > 0.0:
            out[i] = 0.0
            continue
        if surplus > 0.0:
            extra = room_in[i] * (min(surplus, total_in) / max(total_in, 1e-12))
        else:
            extra = -room_out[i] * (min(-surplus, total_out) / max(total_out, 1e-12))
        out[i] = min(max((own[i] + extra) / kw, -1.0), 1.0)


@njit(cache=True)
def observe_into(tables, params, ints, soc, last_voltage, last_price, out):
    """Mirrors ``BatchedP2PEnv.observe``: local observations ``out [N, obs_dim]``, at the
    columns of ``envs.observations.layout`` (``params.*_column``)."""
    n = soc.shape[0]
    steps = params.forecast_steps + 1
    now = (ints[_DAY] * STEPS_PER_DAY + ints[_STEP]) % STEPS_PER_YEAR
    noisy = params.forecast_noise > 0.0
    key = np.uint64(0)
    count = steps * n * N_PROFILE_FEATURES  # the core's draw: [steps, N, 2] normals
    if noisy:
        step_of_episode = ints[_EPISODE_DAY] * STEPS_PER_DAY + ints[_STEP]
        key = stream_key(ints[_SEED], forecast_noise_counter(ints[_EPISODE], step_of_episode),
                         STREAM_FORECAST_NOISE)
    community = np.zeros(n)
    if params.rule == _RULE_COMMUNITY or params.rule == _RULE_COMMUNITY_TOU:
        community_rule_fractions(tables, params, ints, soc, community)
    community_soc = 0.0
    if params.community_column >= 0:
        for i in range(n):
            community_soc += soc[i]
        community_soc *= params.inverse_total_capacity
    for i in range(n):
        for s in range(steps):
            t = (now + s) % STEPS_PER_YEAR
            for c in range(N_PROFILE_FEATURES):
                value = tables.profile[t, i, c]
                if noisy:
                    z = normal_at(key, (s * n + i) * N_PROFILE_FEATURES + c, count)
                    value = value * max(1.0 + params.forecast_noise * z, 0.0)
                out[i, N_PROFILE_FEATURES * s + c] = value
        out[i, params.soc_column] = soc[i] * tables.inverse_capacity[i]
        out[i, params.pv_size_column] = tables.sizes[i, 0]
        out[i, params.battery_size_column] = tables.sizes[i, 1]
        _shared_features(tables, params, ints, last_price, out, i, params.shared_column)
        if params.community_column >= 0:
            for s in range(steps):
                out[i, params.community_column + s] = tables.community_net[
                    (now + s) % STEPS_PER_YEAR]
            out[i, params.community_column + steps] = community_soc
        if params.voltage_column >= 0:
            out[i, params.voltage_column] = (last_voltage[i] - 1.0) * 10.0
        if params.rule != _RULE_NONE:
            out[i, params.rule_column] = rule_fraction(tables, params, ints, soc, i, community)


@njit(cache=True)
def state_into(tables, params, ints, soc, last_price, out):
    """Mirrors ``BatchedP2PEnv.state``: the global state ``out [3 N + 7]``."""
    n = soc.shape[0]
    now = (ints[_DAY] * STEPS_PER_DAY + ints[_STEP]) % STEPS_PER_YEAR
    for i in range(n):
        out[i] = tables.profile[now, i, 0]
        out[n + i] = tables.profile[now, i, 1]
        out[2 * n + i] = soc[i] * tables.inverse_capacity[i]
    _shared_features(tables, params, ints, last_price, out.reshape((1, out.shape[0])), 0,
                     3 * n)


@njit(cache=True)
def reset_into(tables, params, ints, soc, last_voltage, last_price, episode_start_soc,
               day_gain):
    """Mirrors ``BatchedP2PEnv._reset_where`` for one environment: draw the start day from
    the episode's stream, zero the step, initial SoC (kept as the episode's start SoC),
    midpoint price, flat voltage, the day's running gain zeroed (time scale day)."""
    u = uniform_at(stream_key(ints[_SEED], ints[_EPISODE], STREAM_START_DAY), 0)
    n_days = tables.start_days.shape[0]
    ints[_DAY] = tables.start_days[min(int(u * n_days), n_days - 1)]
    ints[_STEP] = 0
    ints[_EPISODE_DAY] = 0
    for i in range(soc.shape[0]):
        soc[i] = params.initial_soc * tables.capacity_kwh[i]
        episode_start_soc[i] = soc[i]
        last_voltage[i] = 1.0
        if params.day_time_scale:
            day_gain[i] = 0.0
    last_price[0] = 0.5 * (tables.retail_price[0] + tables.feed_in_price[0])
    ints[_EPISODE] += 1


@njit(cache=True)
def _decode(tables, params, actions, battery_fraction, price_fraction) -> int:
    """Mirrors ``BatchedP2PEnv.decode_actions``; returns the first invalid agent, or -1."""
    n = battery_fraction.shape[0]
    if params.discrete:
        n_price = tables.price_levels.shape[0]
        n_actions = tables.battery_levels.shape[0] * n_price
        for i in range(n):
            a = actions.ravel()[i]
            if a < 0 or a >= n_actions:
                return i
        for i in range(n):
            a = int(actions.ravel()[i])
            battery_fraction[i] = tables.battery_levels[a // n_price]
            price_fraction[i] = tables.price_levels[a % n_price]
        return -1
    flat = actions.ravel()
    for i in range(n):
        b, p = float(flat[2 * i]), float(flat[2 * i + 1])
        # NaN fails both comparisons, as in the core.
        if not (b >= -1.0 - 1e-6 and b <= 1.0 + 1e-6 and p >= -1e-6 and p <= 1.0 + 1e-6):
            return i
    for i in range(n):
        battery_fraction[i] = min(max(float(flat[2 * i]), -1.0), 1.0)
        price_fraction[i] = min(max(float(flat[2 * i + 1]), 0.0), 1.0)
    return -1


@njit(cache=True)
def prospect_value(x, alpha, beta, loss_aversion):
    """Mirrors ``envs.behaviour.prospect_value`` on one float: ``x ** alpha`` for gains,
    ``-loss_aversion * (-x) ** beta`` for losses (Tversky & Kahneman 1992)."""
    gain = max(x, 0.0) ** alpha
    loss = max(-x, 0.0) ** beta
    return gain - loss_aversion * loss


@njit(cache=True)
def behavioural_rewards_into(tables, params, agent, retail, feed_in, day_gain_before,
                             day_gain, reward):
    """Mirrors ``BatchedP2PEnv.behavioural_reward``: the reward ``reward [N]`` of each
    behavioural agent set to its prospect value of ``x = reference_cost - cost`` from the
    agent buffer's ``cost`` row; the reference is ``envs.metrics.no_p2p_step_cost`` of the
    step (from the buffer's load, PV and no-P2P penalty rows, the same operations in the same
    order) or 0 (``behaviour.reference`` zero). Time scale step: ``V(x) * reward_scale``;
    day (``params.day_time_scale``): ``day_gain [N] = day_gain_before + x`` for every agent
    and ``(V(day_gain) - V(day_gain_before)) * reward_scale``. Other agents' rewards are
    left as they are."""
    for i in range(reward.shape[0]):
        if not (tables.behavioural[i] or params.day_time_scale):
            continue
        reference_cost = 0.0
        if params.behaviour_reference == REFERENCE_NO_P2P:
            net = agent[_A_LOAD_KWH, i] - agent[_A_PV_KWH, i]
            bill = retail * max(net, 0.0) + feed_in * min(net, 0.0)
            reference_cost = bill + agent[_A_NO_P2P_NETWORK_PENALTY, i]
        x = reference_cost - agent[_A_COST, i]
        if params.day_time_scale:
            day_gain[i] = day_gain_before[i] + x
            value = (prospect_value(day_gain[i], params.behaviour_alpha,
                                    params.behaviour_beta, params.loss_aversion)
                     - prospect_value(day_gain_before[i], params.behaviour_alpha,
                                      params.behaviour_beta, params.loss_aversion))
        else:
            value = prospect_value(x, params.behaviour_alpha, params.behaviour_beta,
                                   params.loss_aversion)
        if tables.behavioural[i]:
            reward[i] = value * params.reward_scale


@njit(cache=True)
def step_kernel(tables, params, grid, ints, soc, last_voltage, last_price, episode_start_soc,
                day_gain, actions, buffers):
    """One 15-minute step; mirrors ``BatchedP2PEnv.step`` at ``B = 1`` without the network
    penalty and fees (the caller adds those when the returned flag asks for them), with the
    terminal value (``BatchedP2PEnv.terminal_value_cost``) on the last step of an episode,
    and the midnight inside a multi-day episode (next day, SoC kept; the day's running gain
    of the day time scale zeroed at every midnight, its value before the step kept in
    ``buffers.day_gain_before`` for the network-charges path).

    Returns ``(bad_agent, done, needs_penalty)``: ``bad_agent >= 0`` when that agent's action
    is invalid (nothing changed), ``done`` when the episode ended (``buffers.final_obs`` and
    ``final_state`` hold the last observation and the env was reset), ``needs_penalty`` when
    the power flow found a violation or did not converge.
    """
    n = soc.shape[0]
    battery_fraction = np.empty(n)
    price_fraction = np.empty(n)
    bad = _decode(tables, params, actions, battery_fraction, price_fraction)
    if bad >= 0:
        return bad, False, False
    agent, env = buffers.agent, buffers.env
    t = (ints[_DAY] * STEPS_PER_DAY + ints[_STEP]) % STEPS_PER_YEAR
    now = min(ints[_STEP], STEPS_PER_DAY - 1)
    retail, feed_in = tables.retail_price[now], tables.feed_in_price[now]
    dt = params.dt_h
    ce, de = params.charge_efficiency, params.discharge_efficiency
    net = np.empty(n)
    price = np.empty(n)
    for i in range(n):
        # envs.physics.battery_step
        capacity = tables.capacity_kwh[i]
        request = battery_fraction[i] * tables.battery_kw[i] * dt
        headroom = max(params.soc_max * capacity - soc[i], 0.0) / ce
        available = max(soc[i] - params.soc_min * capacity, 0.0) * de
        max_step = tables.battery_kw[i] * dt
        energy = max(min(request, min(headroom, max_step)), -min(available, max_step))
        new_soc = soc[i] + ce * max(energy, 0.0) - max(-energy, 0.0) / de
        new_soc = min(max(new_soc, params.soc_min * capacity), params.soc_max * capacity)
        load_kwh = tables.load_kw[t, i] * dt
        pv_kwh = tables.pv_kw[t, i] * dt
        net[i] = load_kwh - pv_kwh + energy
        price[i] = feed_in + price_fraction[i] * (retail - feed_in)
        agent[_A_NET_ENERGY_KWH, i] = net[i]
        agent[_A_LOAD_KWH, i] = load_kwh
        agent[_A_PV_KWH, i] = pv_kwh
        agent[_A_BATTERY_ENERGY_KWH, i] = energy
        agent[_A_BATTERY_CUT_KWH, i] = abs(request - energy)
        agent[_A_SOC_KWH, i] = new_soc
        agent[_A_DEGRADATION_COST, i] = params.degradation_cost * abs(energy)
        agent[_A_PRICE, i] = price[i]
        soc[i] = new_soc

    market = buffers.market
    if params.mechanism == _CDA:  # BatchedP2PEnv.arrival_rank
        step_of_episode = ints[_EPISODE_DAY] * STEPS_PER_DAY + ints[_STEP]
        random_rank_into(stream_key(ints[_SEED], forecast_noise_counter(ints[_EPISODE],
                                                                         step_of_episode),
                                    STREAM_CDA_ARRIVAL), buffers.arrival_rank)
    clearing_price, operator_surplus = clear_into(params.mechanism, price, net, retail,
                                                  feed_in, params.k, buffers.arrival_rank,
                                                  market)
    needs_penalty = False
    if params.network:
        p_kw = net / dt
        losses, converged, _ = solve_into(grid, p_kw, tables.load_kvar[t], buffers.vm_pu,
                                          buffers.line_loading, buffers.trafo_loading,
                                          buffers.line_p_from_kw, buffers.trafo_p_hv_kw)
        needs_penalty = summarise_into(buffers.vm_pu, buffers.line_loading,
                                       buffers.trafo_loading, losses, converged, params.v_min,
                                       params.v_max,
                                       env[_N_ENV_INFO:_N_ENV_INFO + _N_NETWORK_INFO])
        for i in range(n):
            v = buffers.vm_pu[grid.agent_bus[i]]
            last_voltage[i] = 1.0 if math.isnan(v) else v

    last_step = (params.terminal_value and ints[_STEP] == STEPS_PER_DAY - 1
                 and ints[_EPISODE_DAY] == params.episode_days - 1)
    volume, imports, exports, community_cost = 0.0, 0.0, 0.0, 0.0
    for i in range(n):
        for row in range(5):  # p2p_energy, grid_energy, payment, p2p_payment, grid_payment
            agent[row, i] = market[row, i]
        agent[_A_NETWORK_PENALTY, i] = 0.0
        agent[_A_NETWORK_FEE, i] = 0.0
        terminal = 0.0
        if last_step:  # soc[i] already holds the SoC after the step
            # BatchedP2PEnv.terminal_value_cost: the same products in the same order.
            taken = episode_start_soc[i] - soc[i]
            terminal = (params.terminal_price * max(taken, 0.0)
                        - params.terminal_credit_price * max(-taken, 0.0))
        agent[_A_TERMINAL_VALUE_COST, i] = terminal
        agent[_A_NO_P2P_NETWORK_PENALTY, i] = tables.no_p2p_network_penalty[t, i]
        # Same order of additions as the core (penalty and fee are 0 here).
        cost = market[2, i] + agent[_A_DEGRADATION_COST, i] + terminal
        agent[_A_COST, i] = cost
        buffers.reward[i] = -cost * params.reward_scale
        community_cost += cost
        volume += max(market[0, i], 0.0)
        imports += max(market[1, i], 0.0)
        exports += max(-market[1, i], 0.0)
    if params.any_behavioural:
        if params.day_time_scale:
            buffers.day_gain_before[:] = day_gain
        behavioural_rewards_into(tables, params, agent, retail, feed_in,
                                 buffers.day_gain_before, day_gain, buffers.reward)

    if not math.isnan(clearing_price):
        last_price[0] = clearing_price
    env[_E_NETWORK_FEE_REVENUE] = 0.0
    env[_E_CLEARING_PRICE] = clearing_price
    env[_E_OPERATOR_SURPLUS] = operator_surplus
    env[_E_COMMUNITY_COST] = community_cost
    env[_E_P2P_VOLUME_KWH] = volume
    env[_E_GRID_IMPORT_KWH] = imports
    env[_E_GRID_EXPORT_KWH] = exports
    env[_E_RETAIL_PRICE] = retail
    env[_E_FEED_IN_PRICE] = feed_in
    env[_E_DAY] = ints[_DAY]
    env[_E_STEP_OF_DAY] = ints[_STEP]
    ints[_STEP] += 1

    midnight = ints[_STEP] >= STEPS_PER_DAY
    done = midnight and ints[_EPISODE_DAY] >= params.episode_days - 1
    if midnight and params.day_time_scale:  # the day's sum restarts at every midnight
        day_gain[:] = 0.0
    if midnight and not done:  # BatchedP2PEnv.step: the next calendar day of the episode
        ints[_DAY] = (ints[_DAY] + 1) % DAYS_PER_YEAR
        ints[_STEP] = 0
        ints[_EPISODE_DAY] += 1
    if done:
        observe_into(tables, params, ints, soc, last_voltage, last_price, buffers.final_obs)
        state_into(tables, params, ints, soc, last_price, buffers.final_state)
        reset_into(tables, params, ints, soc, last_voltage, last_price, episode_start_soc,
                   day_gain)
    observe_into(tables, params, ints, soc, last_voltage, last_price, buffers.obs)
    return -1, done, needs_penalty


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    """``tensor`` as a contiguous numpy array: bool and int64 kept, floats as float64."""
    dtype = {torch.bool: np.bool_, torch.int64: np.int64}.get(tensor.dtype, np.float64)
    return np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=dtype)


def supports(config: EnvConfig) -> str | None:
    """None if the engine can run ``config``, else why not."""
    if config.device != "cpu":
        return f"device {config.device!r} (the engine runs on the CPU)"
    if config.network.model == "ac":
        return "network.model 'ac' (pandapower per step)"
    if config.storage.enabled:
        return f"storage.mode {config.storage.mode!r} (a shared battery)"
    return None


class SingleEnvEngine:
    """One community of ``config`` stepped by the numba kernels of this module.

    Arrays have no batch dimension: observations ``[N, obs_dim]`` float32, rewards ``[N]``,
    continuous actions ``[N, 2]``, discrete ``[N]``. ``info`` maps each of :data:`AGENT_INFO`
    to an ``[N]`` array and each per-community key to a float, plus ``final_observation``
    and ``final_state`` on the step that ends an episode (the engine has then reset itself, as the
    core does).
    """

    def __init__(self, config: EnvConfig) -> None:
        reason = supports(config)
        if reason is not None:
            raise ValueError(f"the single-environment engine does not support {reason}; "
                             f"use engine='torch'")
        self.config = config
        core = BatchedP2PEnv(dataclasses.replace(config, n_envs=1, dtype="float64"))
        self.reference = core
        self.n_agents = core.n_agents
        self.agent_names = core.agent_names
        self.obs_dim, self.state_dim = core.obs_dim, core.state_dim
        self.n_discrete_actions = core.n_discrete_actions
        self.discrete = config.action.type == "discrete"
        n = self.n_agents
        self.tables = Tables(**{name: _numpy(table)
                                for name, table in core.tables()._asdict().items()})
        self.behavioural = self.tables.behavioural
        """``[N]`` bool: the behavioural agents (``BatchedP2PEnv.behavioural``)."""
        layout = observations.layout(config.observation)
        battery, network = config.battery, config.network
        values = dict(
            charge_efficiency=battery.charge_efficiency,
            discharge_efficiency=battery.discharge_efficiency, soc_min=battery.soc_min,
            soc_max=battery.soc_max, initial_soc=battery.initial_soc,
            degradation_cost=battery.degradation_cost,
            mechanism=MECHANISM_CODE[config.market.mechanism], k=config.market.k,
            reward_scale=config.reward_scale, price_scale=core.price_scale, dt_h=core.dt_h,
            forecast_steps=config.observation.forecast_steps,
            forecast_noise=config.observation.forecast_noise,
            soc_column=layout.soc, pv_size_column=layout.pv_size,
            battery_size_column=layout.battery_size, shared_column=layout.shared,
            community_column=layout.community,
            inverse_total_capacity=core._inverse_total_capacity,
            voltage_column=layout.voltage, rule_column=layout.rule_battery,
            rule=OBSERVATION_RULES.index(config.observation.rule), discrete=self.discrete,
            network=network.model != "none", v_min=network.v_min, v_max=network.v_max,
            terminal_value=core.terminal_value, terminal_price=core.terminal_price,
            terminal_credit_price=core.terminal_credit_price,
            episode_days=core.episode_days, any_behavioural=bool(core.behavioural.any()),
            behaviour_alpha=config.behaviour.alpha, behaviour_beta=config.behaviour.beta,
            loss_aversion=config.behaviour.loss_aversion,
            behaviour_reference=REFERENCES.index(config.behaviour.reference),
            day_time_scale=bool(core.behavioural.any()) and config.behaviour.time_scale == "day")
        # Exact Python types, so that every config compiles to the same kernel signature.
        types = get_type_hints(Params)
        self.params = Params(**{name: types[name](value) for name, value in values.items()})
        model = core.network.model
        self.grid = grid_arrays(model) if model is not None else _no_grid()
        n_bus, n_line, n_trafo = ((model.n_bus, model.n_line, model.n_trafo)
                                  if model is not None else (0, 0, 0))
        self.buffers = Buffers(
            obs=np.zeros((n, self.obs_dim), np.float32),
            final_obs=np.zeros((n, self.obs_dim), np.float32),
            final_state=np.zeros(self.state_dim, np.float32),
            agent=np.zeros((len(AGENT_INFO), n)), env=np.zeros(len(ENV_INFO + NETWORK_INFO)),
            market=np.zeros((5, n)), arrival_rank=np.zeros(n, np.int64), reward=np.zeros(n),
            day_gain_before=np.zeros(n),
            vm_pu=np.zeros(n_bus),
            line_loading=np.zeros(n_line), trafo_loading=np.zeros(n_trafo),
            line_p_from_kw=np.zeros(n_line), trafo_p_hv_kw=np.zeros(n_trafo))
        self.env_keys = ENV_INFO + (NETWORK_INFO if self.params.network else ())
        self._ints = np.zeros(5, np.int64)
        self._soc = np.zeros(n)
        self._last_voltage = np.ones(n)
        self._last_price = np.zeros(1)
        self._episode_start_soc = np.zeros(n)
        self._day_gain = np.zeros(n)
        self._state = (self._ints, self._soc, self._last_voltage, self._last_price,
                       self._episode_start_soc, self._day_gain)
        self._seeded = False
        self._charges_p2p = core.charges_p2p
        # Actions are always copied to one dtype and layout, so the kernel is compiled (or
        # loaded from numba's cache) once here and called through its entry point, skipping
        # numba's per-call type dispatch (about 5 us of a ~15 us step).
        self._actions_dtype = np.int64 if self.discrete else np.float64
        self._step_kernel = self._compile_step_kernel()

    def _compile_step_kernel(self):
        example = np.zeros((self.n_agents,) if self.discrete else (self.n_agents, 2),
                           self._actions_dtype)
        return step_kernel.compile(tuple(
            typeof(value) for value in (self.tables, self.params, self.grid, *self._state,
                                        example, self.buffers)))

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the compiled entry point (it is not picklable; reloaded after)."""
        state = dict(self.__dict__)
        del state["_step_kernel"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._step_kernel = self._compile_step_kernel()

    # ----------------------------------------------------------------------------------------
    def seed(self, seed: int) -> None:
        """Seed the environment's random streams (as ``BatchedP2PEnv.seed`` for env 0)."""
        self._ints[_SEED] = int(seed)
        self._ints[_EPISODE] = 0
        self._seeded = True

    def _state_views(self) -> dict[str, np.ndarray]:
        """Views of the engine's state arrays in the layout of ``BatchedP2PEnv.get_state`` at
        ``n_envs = 1``: every key of ``envs.core.STATE_KEYS`` but ``seeded``."""
        ints = self._ints
        return {"env_seed": ints[_SEED:_SEED + 1], "episode_count": ints[_EPISODE:_EPISODE + 1],
                "day": ints[_DAY:_DAY + 1], "step_of_day": ints[_STEP:_STEP + 1],
                "day_of_episode": ints[_EPISODE_DAY:_EPISODE_DAY + 1],
                "soc_kwh": self._soc[None], "episode_start_soc_kwh": self._episode_start_soc[None],
                "last_price": self._last_price, "last_voltage": self._last_voltage[None],
                "behaviour_day_gain": self._day_gain[None]}

    def get_state(self) -> dict[str, np.ndarray | bool]:
        """A copy of the engine's state as ``BatchedP2PEnv.get_state`` of a core with
        ``n_envs = 1`` gives it (keys ``envs.core.STATE_KEYS``, numpy arrays with a batch
        dimension of 1): a core of the same config restores it with ``set_state``."""
        views = self._state_views()
        state: dict[str, np.ndarray | bool] = {
            name: views[name].copy() for name in STATE_KEYS if name != "seeded"}
        state["seeded"] = self._seeded
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`get_state`, or a ``BatchedP2PEnv.get_state`` of a core of the same
        config with ``n_envs = 1``. Checked by the reference core's ``set_state`` (the one
        check of a state: ValueError naming the key, before any state changes)."""
        self.reference.set_state(state)
        checked = self.reference.get_state()
        for name, view in self._state_views().items():
            view[...] = checked[name].numpy()
        self._seeded = bool(checked["seeded"])

    def reset(self, seed: int | None = None, day: int | None = None) -> tuple[np.ndarray, int]:
        """Start an episode (on ``day`` if given, else a drawn one); returns (obs, day).
        ``seed`` and ``day`` are checked as the core's (``envs.core.checked_seed``,
        ``checked_days``) before any state changes."""
        if seed is not None:
            seed = checked_seed(seed, INT64_MAX)
        if day is not None:
            day = checked_days([day], 1)[0]
        if seed is not None:
            self.seed(seed)
        elif not self._seeded:
            self.seed(self.config.seed)
        reset_into(self.tables, self.params, *self._state)
        if day is not None:
            self._ints[_DAY] = day
        observe_into(self.tables, self.params, self._ints, self._soc, self._last_voltage,
                     self._last_price, self.buffers.obs)
        return self.buffers.obs.copy(), int(self._ints[_DAY])

    def state(self) -> np.ndarray:
        """The global state ``[3 N + 7]`` float32."""
        out = np.empty(self.state_dim, np.float32)
        state_into(self.tables, self.params, self._ints, self._soc, self._last_price, out)
        return out

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool, dict[str, Any]]:
        """Advance one step: ``(obs, reward, done, info)``. Raises ValueError for actions of
        the wrong shape or an invalid agent action (the environment is left unchanged)."""
        actions = self._check_shape(actions)
        bad, done, needs_penalty = self._step_kernel(self.tables, self.params, self.grid,
                                                     *self._state, actions, self.buffers)
        if bad >= 0:
            raise ValueError(self._bad_action_message(actions, bad))
        buffers = self.buffers
        if needs_penalty or self._charges_p2p:
            self._add_network_charges(needs_penalty)
        agent = buffers.agent.copy()
        info: dict[str, Any] = dict(zip(AGENT_INFO, agent, strict=True))
        info.update(zip(self.env_keys, buffers.env.tolist(), strict=False))
        if self.params.mechanism == _CDA:
            info[ARRIVAL_RANK] = buffers.arrival_rank.copy()
        if done:
            info["final_observation"] = buffers.final_obs.copy()
            info["final_state"] = buffers.final_state.copy()
        return buffers.obs.copy(), buffers.reward.copy(), bool(done), info

    # ----------------------------------------------------------------------------------------
    def _check_shape(self, actions: Any) -> np.ndarray:
        """``actions`` as a new C-contiguous array of the kernel's dtype, or ValueError."""
        actions = np.asarray(actions)
        n = self.n_agents
        if self.discrete:
            if actions.shape != (n,):
                raise ValueError(f"discrete actions must have shape [n_envs, n_agents] = "
                                 f"[1, {n}], got {[1, *actions.shape]}")
            if actions.dtype.kind == "f":
                if not (np.isfinite(actions).all() and (actions == np.round(actions)).all()):
                    raise ValueError("discrete actions must be integers, got non-integral "
                                     "values")
            elif actions.dtype.kind not in "iu":
                raise ValueError(f"discrete actions must be integers, got dtype "
                                 f"{actions.dtype}")
            return np.array(actions, dtype=np.int64, order="C")
        if actions.shape != (n, 2):
            raise ValueError(f"continuous actions must have shape [n_envs, n_agents, 2] = "
                             f"[1, {n}, 2], got {[1, *actions.shape]}")
        return np.array(actions, dtype=np.float64, order="C")

    def _bad_action_message(self, actions: np.ndarray, agent: int) -> str:
        name = self.agent_names[agent]
        if self.discrete:
            return (f"discrete action of agent {name!r} (index {agent}) in env 0 is "
                    f"{int(actions[agent])}; allowed: 0..{self.n_discrete_actions - 1}")
        return (f"action of agent {name!r} (index {agent}) in env 0 is "
                f"{actions[agent].astype(float).tolist()}; allowed: finite [battery in "
                f"[-1, 1], price in [0, 1]]")

    def _add_network_charges(self, needs_penalty: bool) -> None:
        """Network penalty shares and P2P fees through the core's torch functions."""
        buffers, core, cfg = self.buffers, self.reference, self.config.network
        agent, env = buffers.agent, buffers.env
        extra = np.zeros(self.n_agents)
        if needs_penalty:
            result = PowerFlowResult(
                vm_pu=torch.from_numpy(buffers.vm_pu)[None],
                va_degree=None,
                line_loading_percent=torch.from_numpy(buffers.line_loading)[None],
                trafo_loading_percent=torch.from_numpy(buffers.trafo_loading)[None],
                losses_kw=torch.tensor([env[_E_LOSSES_KW]], dtype=torch.float64),
                converged=torch.tensor([env[_E_NETWORK_CONVERGED] == 1.0]),
                line_p_from_kw=torch.from_numpy(buffers.line_p_from_kw)[None],
                trafo_p_hv_kw=torch.from_numpy(buffers.trafo_p_hv_kw)[None])
            p_kw = torch.from_numpy(agent[_A_NET_ENERGY_KWH] / self.params.dt_h)[None]
            penalty, _ = network_penalty(result, p_kw, core.network.sensitivity,
                                         v_min=cfg.v_min, v_max=cfg.v_max,
                                         voltage_penalty=cfg.voltage_penalty,
                                         line_penalty=cfg.line_penalty)
            agent[_A_NETWORK_PENALTY] = penalty[0].numpy()
            extra += agent[_A_NETWORK_PENALTY]
        if self._charges_p2p:
            p2p = torch.from_numpy(agent[_A_P2P_ENERGY_KWH])[None]
            fee, loss_charge, _ = fees.p2p_charges(
                p2p.clamp_min(0.0), (-p2p).clamp_min(0.0), core.electrical_distance,
                torch.tensor([env[_E_RETAIL_PRICE]], dtype=torch.float64), cfg.p2p_fee,
                cfg.p2p_distance_fee, cfg.p2p_loss_factor, cfg.matching_temperature)
            agent[_A_NETWORK_FEE] = (fee + loss_charge)[0].numpy()
            env[_E_NETWORK_FEE_REVENUE] = agent[_A_NETWORK_FEE].sum()
            extra += agent[_A_NETWORK_FEE]
        # Same order of additions as the core: payment + degradation + penalty + fee +
        # terminal value (the kernel's, 0 but on the last step).
        cost = (agent[_A_PAYMENT] + agent[_A_DEGRADATION_COST]
                + agent[_A_NETWORK_PENALTY] + agent[_A_NETWORK_FEE]
                + agent[_A_TERMINAL_VALUE_COST])
        agent[_A_COST] = cost
        buffers.reward[:] = -cost * self.params.reward_scale
        if self.params.any_behavioural:
            behavioural_rewards_into(self.tables, self.params, agent, env[_E_RETAIL_PRICE],
                                     env[_E_FEED_IN_PRICE], buffers.day_gain_before,
                                     self._day_gain, buffers.reward)
            if self.params.day_time_scale and env[_E_STEP_OF_DAY] == STEPS_PER_DAY - 1:
                self._day_gain[:] = 0.0  # the step ended the day: its sum restarts
        env[_E_COMMUNITY_COST] = cost.sum()


def _no_grid() -> GridArrays:
    """Typed empty arrays standing in for the network when ``network.model`` is none."""
    empty_int = np.zeros(0, np.int64)
    empty_complex = np.zeros(0, np.complex128)
    return GridArrays(
        grid_agents=empty_int, agent_load_column=empty_int, w_load=empty_complex,
        z_load_t=np.zeros((0, 0), np.complex128), output_offset=empty_complex,
        output_factor_t=np.zeros((0, 0), np.complex128), bus_layout=empty_int,
        branch_from=empty_int, branch_to=empty_int, scale_from=np.zeros(0),
        scale_to=np.zeros(0), line_slot=empty_int, trafo_slot=empty_int, agent_bus=empty_int,
        v_slack=complex(1.0, 0.0), base_mva=1.0, tolerance_pu=1e-10, max_iterations=1)
