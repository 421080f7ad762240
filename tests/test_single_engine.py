"""The numba single-environment engine (envs/single/) steps exactly like the torch core at B=1.

Each case runs the engine and a float64 ``BatchedP2PEnv`` with ``n_envs=1`` side by side over
more than one episode (so an automatic reset is crossed; episodes of one day, and of two
days in one case) with the same random actions, and checks
observations, rewards, every info key, the global state and the episode ends. The cases are
driven by the config schema: every leaf field of ``EnvConfig`` is set to a non-default value
by some case or listed in :data:`ENGINE_IRRELEVANT` with the reason it cannot matter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

import envs
from envs.config import StorageConfig, env_config
from envs.core import STATE_KEYS, CoreTables
from envs.data import STEPS_PER_DAY
from envs.info_schema import ARRIVAL_RANK
from envs.market import MECHANISMS
from envs.single.engine import AGENT_INFO, SingleEnvEngine, Tables, supports

SYNTHETIC = {"community": {"feeder": "synthetic", "n_agents": 6, "pv_share": 0.7,
                           "battery_share": 0.7}, "network": {"model": "none"}}

CASES = {
    **{f"rural1-{mechanism}": {"market": {"mechanism": mechanism}}
       for mechanism in MECHANISMS},
    "rural1-discrete": {"action": {"type": "discrete", "battery_levels": 3,
                                   "price_levels": 4}},
    "rural1-observation-options": {"observation": {"forecast_steps": 2,
                                                   "forecast_noise": 0.1,
                                                   "include_voltage": True,
                                                   "community": True}},
    # observation.rule: the rule_battery feature, after the voltage, from envs.rules'
    # kernels mirrored in the engine; under STRONG every branch of time_of_use runs (grid
    # charge in two cheap blocks, hold, the peak) on a battery in every home.
    "rural1-rule-self-consumption": {"observation": {"rule": "self_consumption",
                                                     "include_voltage": True}},
    "rural1-rule-time-of-use": {
        "community": {"battery_share": 1.0},
        "tariff": {"retail_tou": [0.12] * 6 + [0.28] * 11 + [0.50] * 4 + [0.28] + [0.12] * 2},
        "observation": {"rule": "time_of_use", "forecast_steps": 1, "forecast_noise": 0.1}},
    "synthetic-rule-time-of-use-flat": {**SYNTHETIC, "observation": {"rule": "time_of_use"}},
    # The community rule reads every home's load, PV and SoC (batteries fill and empty).
    "rural1-rule-community": {"observation": {"rule": "community_self_consumption",
                                              "community": True}},
    "rural1-rule-community-time-of-use": {
        "community": {"battery_share": 1.0},
        "tariff": {"retail_tou": [0.12] * 6 + [0.28] * 11 + [0.50] * 4 + [0.28] + [0.12] * 2},
        "observation": {"rule": "community_time_of_use"}},
    # A tight voltage band: most steps violate it, so the penalty sharing path runs (at
    # other penalty weights than the default).
    "rural1-violations": {"network": {"v_min": 0.999, "v_max": 1.001, "voltage_penalty": 50.0,
                                      "line_penalty": 2.0},
                          "market": {"mechanism": "mcafee"}},
    "rural1-fees": {"network": {"p2p_fee": 0.01, "p2p_distance_fee": 0.02,
                                "p2p_loss_factor": 0.05, "matching_temperature": 0.5}},
    "rural1-time-of-use": {"tariff": {"retail_tou": [0.2] * 8 + [0.3] * 10 + [0.4] * 6,
                                      "feed_in_tou": [0.05] * 8 + [0.1] * 10 + [0.12] * 6},
                           "reward_scale": 0.5, "episode": {"days": "test"}},
    "case33bw": {"community": {"feeder": "case33bw"}, "market": {"mechanism": "sdr"},
                 "network": {"max_iterations": 30}},
    # Two-day episodes: the midnight inside the episode (next day, SoC, last price and
    # voltage kept, the noise counted on over the episode), the terminal value at its end.
    # (and the community features, with a forecast, over the midnight and the year's end).
    "rural1-two-day-episodes": {
        "episode": {"length_days": 2},
        "tariff": {"retail_tou": [0.12] * 6 + [0.28] * 11 + [0.50] * 4 + [0.28] + [0.12] * 2},
        "observation": {"rule": "time_of_use", "forecast_steps": 1, "forecast_noise": 0.1,
                        "include_voltage": True, "community": True}},
    "synthetic-no-network": SYNTHETIC,
    "synthetic-discrete": {**SYNTHETIC, "action": {"type": "discrete"},
                           "market": {"mechanism": "pay_as_bid"}},
    # The terminal value is on by default (every case above); off, and at a set price on the
    # network-charges path (penalties and fees are added after the kernel).
    "synthetic-terminal-value-off": {**SYNTHETIC, "episode": {"terminal_value": False}},
    "rural1-violations-terminal-value-off": {
        "network": {"v_min": 0.999, "v_max": 1.001}, "episode": {"terminal_value": False}},
    "rural1-fees-terminal-price": {"network": {"p2p_fee": 0.01, "p2p_loss_factor": 0.05},
                                   "episode": {"terminal_price": 0.5}},
    # Both prices set (every case above credits at the default, the lowest feed-in price),
    # and on a feeder with a network and the default prices under a time-of-use tariff.
    "synthetic-terminal-credit-price": {**SYNTHETIC, "episode": {"terminal_price": 0.45,
                                                                 "terminal_credit_price": 0.1}},
    "rural1-terminal-both-sides-tou": {"tariff": {"retail_tou": [0.12] * 6 + [0.5] * 18}},
    # Every other setting away from its default: assets, battery physics, flat tariffs, k,
    # the day split, and the base seed (this case resets without a seed, so the engine and
    # the core seed themselves from config.seed).
    "synthetic-other-settings": {
        "community": {**SYNTHETIC["community"], "pv_kwp_per_mwh": 1.5,
                      "battery_kwh_per_mwh": 2.0, "battery_c_rate": 0.25, "seed": 3},
        "network": {"model": "none"},
        "battery": {"charge_efficiency": 0.9, "discharge_efficiency": 0.92, "soc_min": 0.05,
                    "soc_max": 0.95, "initial_soc": 0.3, "degradation_cost": 0.05},
        "tariff": {"retail": 0.25, "feed_in": 0.05},
        "market": {"k": 0.3},
        "episode": {"test_every": 5},
        "seed": 7},
    # Behavioural agents (envs.behaviour): a seeded half of the default feeder, rewards from
    # the kernel; a list of agents against the zero reference with a P2P fee, so that every
    # reward is recomputed on the network-charges path after the kernel.
    "rural1-behaviour-share": {"behaviour": {"share": 0.5, "alpha": 0.8, "beta": 0.9,
                                             "loss_aversion": 2.0, "seed": 3}},
    "synthetic-behaviour-agents-zero-fees": {
        **SYNTHETIC, "network": {"model": "none", "p2p_fee": 0.01},
        "behaviour": {"agents": ["house_1", "house_4"], "reference": "zero"}},
    # The day time scale: the running day gain (core state behaviour_day_gain) from the
    # kernel on a mixed population with network penalties (rewards recomputed after the
    # kernel, the gain restarted at midnight there too), and over the midnight inside a
    # two-day episode.
    "rural1-behaviour-day-violations": {
        "network": {"v_min": 0.999, "v_max": 1.001},
        "behaviour": {"share": 0.4, "time_scale": "day", "seed": 2}},
    "synthetic-behaviour-day-two-day-episodes": {
        **SYNTHETIC, "episode": {"length_days": 2},
        "behaviour": {"share": 0.5, "time_scale": "day"}},
}
ENGINE_IRRELEVANT: dict[str, str] = {
    "n_envs": "the engine steps one environment: its reference core is built with n_envs=1 "
              "and the PettingZoo wrapper refuses any other value",
    "device": "the engine runs on the CPU: supports() refuses other devices (test below)",
    "dtype": "the engine computes in float64 whatever dtype says (the torch core's dtype); "
             "every case compares it with a float64 core",
    "compile": "whether the torch core runs its step compiled (same results, "
               "tests/test_compiled.py); the engine is numba-compiled anyway",
    **{f"storage.{field.name}": "a shared battery runs on the torch engine only: supports() "
       "refuses storage.mode other than none (tests/test_storage.py), and every other "
       "storage key is read only with a shared battery"
       for field in dataclasses.fields(StorageConfig)},
}
"""The leaf fields of ``EnvConfig`` (dotted paths) that cannot change what the engine
computes, with the reason; every other field must be set to a non-default value by a case of
:data:`CASES` (``test_cases_cover_every_config_field``)."""
BOTH_SIDES = ("synthetic-terminal-credit-price", "rural1-terminal-both-sides-tou")
"""Cases whose actions are biased (even agents charge, odd ones discharge) so that each day
ends with some agent above and some below its start SoC: both the charge and the credit of
the terminal value are compared (asserted)."""
FAST_CASES = ("rural1-uniform", "rural1-fees", "synthetic-discrete", "rural1-two-day-episodes",
              "rural1-rule-community", "rural1-behaviour-share",
              "synthetic-behaviour-agents-zero-fees", "rural1-behaviour-day-violations",
              "synthetic-behaviour-day-two-day-episodes")
"""The cases of the fast loop (``pytest -m "not slow"``): the default feeder with its network,
the fee path, discrete actions, two-day episodes; each case steps more than an episode (2 to
5 s), the others are marked slow."""


def _actions(engine: SingleEnvEngine, rng: np.random.Generator) -> np.ndarray:
    n = engine.n_agents
    if engine.discrete:
        return rng.integers(0, engine.n_discrete_actions, n)
    # Exact bounds now and then: prices at feed-in / retail make ties in the book.
    battery = rng.choice([-1.0, 0.0, 1.0, *rng.uniform(-1, 1, 3)], n)
    price = rng.choice([0.0, 1.0, 0.5, *rng.uniform(0, 1, 3)], n)
    return np.stack([battery, price], axis=1).astype(np.float32)


def _fees(config, info: dict) -> tuple[float, float]:
    """Check a step's network fees against the formula of ``envs.fees``, computed here: each
    buyer pays ``p2p_fee + p2p_loss_factor * retail`` per kWh bought in the market plus a
    distance fee of at most ``p2p_distance_fee`` per kWh (electrical distances normalised to
    at most 1), exactly the former without a distance fee; the revenue is their sum.
    Returns the step's fees and their distance part (money)."""
    cfg = config.network
    bought = np.maximum(info["p2p_energy_kwh"], 0.0)
    flat = (cfg.p2p_fee + cfg.p2p_loss_factor * info["retail_price"]) * bought
    fee = info["network_fee"]
    if cfg.p2p_distance_fee == 0.0:
        np.testing.assert_allclose(fee, flat, rtol=1e-12, atol=1e-15)
    else:
        assert np.all(fee >= flat - 1e-12), (fee, flat)
        assert np.all(fee <= flat + cfg.p2p_distance_fee * bought + 1e-12), (fee, flat)
    assert info["network_fee_revenue"] == pytest.approx(fee.sum(), rel=1e-12, abs=1e-15)
    return float(fee.sum()), float((fee - flat).sum())


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=() if name in FAST_CASES else pytest.mark.slow) for name in CASES])
def test_engine_steps_like_the_core(name: str) -> None:
    config = env_config(CASES[name])
    engine = SingleEnvEngine(config)
    core = envs.make_batched_env(config, n_envs=1, dtype="float64")
    seed = None if "seed" in CASES[name] else 11  # None: both seed from config.seed
    obs, day = engine.reset(seed=seed)
    core_obs, core_info = core.reset(seed=seed)
    assert day == int(core_info["day"][0])
    np.testing.assert_allclose(obs, core_obs[0].numpy(), rtol=1e-6, atol=1e-7)
    rng = np.random.default_rng(0)
    penalised = 0
    fee_steps, distance_fees = 0, 0.0
    behavioural = core.behavioural.numpy()
    assert behavioural.any() == config.behaviour.enabled
    behavioural_steps = 0
    for step in range(core.episode_steps + 30):
        actions = _actions(engine, rng)
        if name in BOTH_SIDES:  # even agents tend to charge, odd ones to discharge
            bias = np.where(np.arange(engine.n_agents) % 2 == 0, 0.5, -0.5)
            actions[:, 0] = np.clip(actions[:, 0] + bias, -1.0, 1.0)
        obs, reward, done, info = engine.step(actions)
        core_obs, core_reward, terminated, _, core_info = core.step(torch.as_tensor(actions)[None])
        assert done == bool(terminated[0]), step
        np.testing.assert_allclose(reward, core_reward[0].numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(obs, core_obs[0].numpy(), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(engine.state(), core.state()[0].numpy(), rtol=1e-6,
                                   atol=1e-7)
        for key in AGENT_INFO:
            np.testing.assert_allclose(info[key], core_info[key][0].numpy(), rtol=1e-9,
                                       atol=1e-12, err_msg=f"{key} at step {step}")
        for key, value in core_info.items():
            if key in AGENT_INFO or key == "done":
                continue
            if key == ARRIVAL_RANK:  # cda: the same arrival order, drawn by both
                np.testing.assert_array_equal(info[key], value[0].numpy(), err_msg=str(step))
                continue
            if key.startswith("final_"):
                np.testing.assert_allclose(info[key], value[0].numpy(), rtol=1e-6, atol=1e-7)
                continue
            np.testing.assert_allclose(info[key], float(value[0]), rtol=1e-9, atol=1e-12,
                                       err_msg=f"{key} at step {step}")
        assert set(info) == set(core_info) - {"done"}
        penalised += bool(np.any(info["network_penalty"] > 0))
        money = -info["cost"] * config.reward_scale  # rational agents: exactly this
        np.testing.assert_array_equal(reward[~behavioural], money[~behavioural])
        behavioural_steps += bool(np.any(reward[behavioural] != money[behavioural]))
        fees, distance_part = _fees(config, info)
        fee_steps += fees > 0.0
        distance_fees += distance_part
        terminal = info["terminal_value_cost"]
        if not done or not config.episode.terminal_value:
            assert not np.any(terminal), step  # charged on the last step only
        else:  # the random actions moved some battery away from its start
            assert np.any(terminal != 0.0), step
            if name in BOTH_SIDES:
                assert np.any(terminal > 0.0) and np.any(terminal < 0.0), terminal
    state, core_state = engine.get_state(), core.get_state()
    for key in STATE_KEYS:  # behaviour_day_gain among them: the day time scale's sum
        np.testing.assert_allclose(np.asarray(state[key], dtype=float),
                                   np.asarray(core_state[key], dtype=float), rtol=1e-9,
                                   atol=1e-12, err_msg=key)
    if config.behaviour.time_scale == "day":  # a day's sum is carried (and not all zero)
        assert np.any(state["behaviour_day_gain"] != 0.0)
    if config.behaviour.enabled:  # the prospect value really ran
        assert behavioural_steps > 50
    if name == "rural1-violations":
        assert penalised > 50  # the torch penalty path really ran
    if name in ("rural1-fees", "rural1-fees-terminal-price"):
        assert fee_steps > 50  # fees were really charged, on most steps
    if name == "rural1-fees":
        assert distance_fees > 0.0  # and the distance fee with them


def _leaves(config: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted path, value)`` of every leaf field of the config dataclass ``config``."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, f"{prefix}{field.name}.")
        else:
            yield f"{prefix}{field.name}", value


def test_cases_cover_every_config_field() -> None:
    """A new config field fails here until a parity case sets it (so the engine is shown to
    follow it) or ENGINE_IRRELEVANT lists it with the reason it cannot matter."""
    default = dict(_leaves(env_config(None)))
    assert set(ENGINE_IRRELEVANT) <= set(default), "ENGINE_IRRELEVANT names unknown fields"
    exercised = {path for case in CASES.values()
                 for path, value in _leaves(env_config(case)) if value != default[path]}
    untested = sorted(set(default) - exercised - set(ENGINE_IRRELEVANT))
    assert not untested, (f"config fields that no parity case sets to a non-default value: "
                          f"{untested}; add them to a case of CASES, or to ENGINE_IRRELEVANT "
                          f"with the reason they cannot matter to the engine")


def test_engine_reads_the_cores_tables_and_state_keys() -> None:
    """The engine's tables are the core's public ``tables()`` field for field, and its state
    has the keys and shapes of the core's ``get_state()`` at n_envs=1."""
    assert Tables._fields == CoreTables._fields
    config = env_config(SYNTHETIC)
    engine = SingleEnvEngine(config)
    core = envs.make_batched_env(config, n_envs=1, dtype="float64")
    for name, table in core.tables()._asdict().items():
        np.testing.assert_array_equal(getattr(engine.tables, name), table.numpy(), err_msg=name)
    engine.reset(seed=2)
    core.reset(seed=2)
    state, core_state = engine.get_state(), core.get_state()
    assert tuple(state) == tuple(core_state) == STATE_KEYS
    for name in STATE_KEYS:
        np.testing.assert_array_equal(state[name], np.asarray(core_state[name]), err_msg=name)


@pytest.mark.parametrize("network", ["none", "zbus"])
def test_engine_and_core_take_over_from_each_other_mid_episode(network: str) -> None:
    """A core set to the engine's state continues its episode step for step (across the end
    of the day, with forecast noise, so the random streams' counters travel too), and an
    engine set to the core's state continues the core's."""
    config = env_config({"community": SYNTHETIC["community"], "network": {"model": network},
                         "observation": {"forecast_noise": 0.1, "include_voltage": True}})
    engine = SingleEnvEngine(config)
    core = envs.make_batched_env(config, n_envs=1, dtype="float64")
    engine.reset(seed=4)
    rng = np.random.default_rng(1)
    for _ in range(60):
        obs, *_ = engine.step(_actions(engine, rng))
    core.set_state(engine.get_state())
    np.testing.assert_allclose(core.observe()[0].numpy(), obs, rtol=1e-6, atol=1e-7)
    for step in range(50):
        actions = _actions(engine, rng)
        obs, reward, done, _ = engine.step(actions)
        core_obs, core_reward, terminated, _, _ = core.step(torch.as_tensor(actions)[None])
        assert done == bool(terminated[0]), step
        np.testing.assert_allclose(reward, core_reward[0].numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(obs, core_obs[0].numpy(), rtol=1e-6, atol=1e-7)
    successor = SingleEnvEngine(config)
    successor.set_state(core.get_state())
    actions = _actions(engine, rng)
    np.testing.assert_array_equal(successor.step(actions)[0], engine.step(actions)[0])
    with pytest.raises(ValueError, match="'step_of_day'"):
        successor.set_state({**core.get_state(), "step_of_day": torch.tensor([96])})
    with pytest.raises(ValueError, match="'day_of_episode'"):  # one-day episodes: only 0
        successor.set_state({**core.get_state(), "day_of_episode": torch.tensor([1])})


def test_two_day_episode_over_the_year_end_matches_the_core() -> None:
    """A two-day episode from the year's last day runs on into day 0 (as the profiles wrap),
    on both engines alike: the day advances at midnight, the episode ends after 192 steps
    with the terminal value, and an engine set to the core's state mid-episode (on its
    second day) continues it."""
    config = env_config({**SYNTHETIC, "episode": {"length_days": 2},
                         "observation": {"forecast_noise": 0.1}})
    engine = SingleEnvEngine(config)
    core = envs.make_batched_env(config, n_envs=1, dtype="float64")
    engine.reset(seed=5, day=365)
    core.reset(seed=5, days=[365])
    rng = np.random.default_rng(2)
    days, ends = [], []
    for step in range(2 * STEPS_PER_DAY + 5):
        actions = _actions(engine, rng)
        obs, reward, done, info = engine.step(actions)
        core_obs, core_reward, terminated, _, core_info = core.step(
            torch.as_tensor(actions)[None])
        assert done == bool(terminated[0]), step
        np.testing.assert_allclose(obs, core_obs[0].numpy(), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(reward, core_reward[0].numpy(), rtol=1e-9, atol=1e-12)
        days.append(int(info["day"]))
        if done:
            ends.append(step)
            assert np.any(info["terminal_value_cost"] != 0.0)
        else:
            assert not np.any(info["terminal_value_cost"]), step
    assert days[:2 * STEPS_PER_DAY] == [365] * STEPS_PER_DAY + [0] * STEPS_PER_DAY
    assert ends == [2 * STEPS_PER_DAY - 1]
    engine.reset(seed=6, day=100)
    for _ in range(STEPS_PER_DAY + 10):
        engine.step(_actions(engine, rng))
    state = engine.get_state()
    assert int(state["day"][0]) == 101 and int(state["day_of_episode"][0]) == 1
    core.set_state(state)
    for step in range(STEPS_PER_DAY):
        actions = _actions(engine, rng)
        obs, reward, done, _ = engine.step(actions)
        core_obs, core_reward, terminated, _, _ = core.step(torch.as_tensor(actions)[None])
        assert done == bool(terminated[0]) == (step == STEPS_PER_DAY - 11), step
        np.testing.assert_allclose(reward, core_reward[0].numpy(), rtol=1e-9, atol=1e-12)


def test_fixed_day_and_reseeding_match_the_core() -> None:
    config = env_config(SYNTHETIC)
    engine = SingleEnvEngine(config)
    core = envs.make_batched_env(config, n_envs=1, dtype="float64")
    for seed, day in [(3, None), (None, 200), (None, None), (5, 17)]:
        obs, drawn = engine.reset(seed=seed, day=day)
        core_obs, info = core.reset(seed=seed, days=None if day is None else [day])
        assert drawn == int(info["day"][0])
        np.testing.assert_allclose(obs, core_obs[0].numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="day indices in \\[0, 365\\]"):
        engine.reset(day=366)


def test_bad_actions_name_the_agent_and_change_nothing() -> None:
    engine = SingleEnvEngine(env_config(SYNTHETIC))
    engine.reset(seed=0)
    before = engine.state()
    actions = np.zeros((engine.n_agents, 2), np.float32)
    actions[3, 1] = np.nan
    with pytest.raises(ValueError, match="agent 'house_3' \\(index 3\\)"):
        engine.step(actions)
    actions[3, 1] = 1.5
    with pytest.raises(ValueError, match="price in \\[0, 1\\]"):
        engine.step(actions)
    with pytest.raises(ValueError, match="shape \\[n_envs, n_agents, 2\\] = \\[1, 6, 2\\]"):
        engine.step(np.zeros((engine.n_agents, 3)))
    np.testing.assert_array_equal(engine.state(), before)
    discrete = SingleEnvEngine(env_config({**SYNTHETIC, "action": {"type": "discrete"}}))
    discrete.reset(seed=0)
    with pytest.raises(ValueError, match="allowed: 0..24"):
        discrete.step(np.full(discrete.n_agents, 25))
    with pytest.raises(ValueError, match="integers"):
        discrete.step(np.full(discrete.n_agents, 0.5))


def test_unsupported_configs_are_refused() -> None:
    assert supports(env_config(None)) is None
    assert "ac" in supports(env_config({"network": {"model": "ac"}}))
    assert "storage" in supports(env_config({"storage": {"mode": "virtual"}}))
    with pytest.raises(ValueError, match="engine='torch'"):
        SingleEnvEngine(env_config({"network": {"model": "ac"}}))


def test_no_p2p_reference_carries_the_penalties_on_the_engine_too() -> None:
    """Where plain grid operation violates limits (PV in every home), the engine reports the
    core's ``no_p2p_network_penalty`` table as the core does, and idle batteries without a
    market pay exactly the no-P2P reference (tariff bill + those penalties), agent by agent:
    the ``no_p2p`` policy saves 0 on the PettingZoo engine as on the core."""
    from envs.metrics import no_p2p_step_cost

    config = env_config({"community": {"pv_share": 1.0, "pv_kwp_per_mwh": 3.0},
                         "market": {"mechanism": "none"}})
    engine = SingleEnvEngine(config)
    np.testing.assert_array_equal(engine.tables.no_p2p_network_penalty,
                                  engine.reference.no_p2p_network_penalty.numpy())
    engine.reset(seed=0, day=172)
    actions = np.zeros((engine.n_agents, 2))
    actions[:, 1] = 0.5
    cost = reference = penalty = 0.0
    for _ in range(STEPS_PER_DAY):
        _, _, _, info = engine.step(actions)
        agent = [torch.as_tensor(info[key])[None] for key in (
            "load_kwh", "pv_kwh", "no_p2p_network_penalty")]
        prices = [torch.tensor([info[key]], dtype=torch.float64)
                  for key in ("retail_price", "feed_in_price")]
        bill = no_p2p_step_cost(agent[0], agent[1], *prices, agent[2])[0].numpy()
        np.testing.assert_allclose(info["network_penalty"], info["no_p2p_network_penalty"],
                                   rtol=0, atol=1e-8)
        cost, reference = cost + info["cost"], reference + bill
        penalty += info["network_penalty"].sum()
    assert penalty > 1.0  # the limits bind
    np.testing.assert_allclose(cost, reference, rtol=0, atol=1e-8 * STEPS_PER_DAY)
