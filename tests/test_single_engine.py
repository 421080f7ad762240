"""The numba single-environment engine (envs/single/) steps exactly like the torch core at B=1.

Each case runs the engine and a float64 ``BatchedP2PEnv`` with ``n_envs=1`` side by side over
more than one day (so an automatic reset is crossed) with the same random actions, and checks
observations, rewards, every info key, the global state and the episode ends.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import envs
from envs.config import env_config
from envs.data import STEPS_PER_DAY
from envs.market import MECHANISMS
from envs.single.engine import AGENT_INFO, SingleEnvEngine, supports

SYNTHETIC = {"community": {"feeder": "synthetic", "n_agents": 6, "pv_share": 0.7,
                           "battery_share": 0.7}, "network": {"model": "none"}}

CASES = {
    **{f"rural1-{mechanism}": {"market": {"mechanism": mechanism}}
       for mechanism in MECHANISMS},
    "rural1-discrete": {"action": {"type": "discrete", "battery_levels": 3,
                                   "price_levels": 4}},
    "rural1-observation-options": {"observation": {"forecast_steps": 2,
                                                   "forecast_noise": 0.1,
                                                   "include_voltage": True}},
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
    # A tight voltage band: most steps violate it, so the penalty sharing path runs.
    "rural1-violations": {"network": {"v_min": 0.999, "v_max": 1.001},
                          "market": {"mechanism": "mcafee"}},
    "rural1-fees": {"network": {"p2p_fee": 0.01, "p2p_distance_fee": 0.02,
                                "p2p_loss_factor": 0.05}},
    "rural1-time-of-use": {"tariff": {"retail_tou": [0.2] * 8 + [0.3] * 10 + [0.4] * 6},
                           "reward_scale": 0.5, "episode": {"days": "test"}},
    "case33bw": {"community": {"feeder": "case33bw"}, "market": {"mechanism": "sdr"}},
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
}
BOTH_SIDES = ("synthetic-terminal-credit-price", "rural1-terminal-both-sides-tou")
"""Cases whose actions are biased (even agents charge, odd ones discharge) so that each day
ends with some agent above and some below its start SoC: both the charge and the credit of
the terminal value are compared (asserted)."""
FAST_CASES = ("rural1-uniform", "rural1-fees", "synthetic-discrete")
"""The cases of the fast loop (``pytest -m "not slow"``): the default feeder with its network,
the fee path, discrete actions; each case steps more than a day (2 to 5 s), the others are
marked slow."""


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
    obs, day = engine.reset(seed=11)
    core_obs, core_info = core.reset(seed=11)
    assert day == int(core_info["day"][0])
    np.testing.assert_allclose(obs, core_obs[0].numpy(), rtol=1e-6, atol=1e-7)
    rng = np.random.default_rng(0)
    penalised = 0
    fee_steps, distance_fees = 0, 0.0
    for step in range(STEPS_PER_DAY + 30):
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
            if key.startswith("final_"):
                np.testing.assert_allclose(info[key], value[0].numpy(), rtol=1e-6, atol=1e-7)
                continue
            np.testing.assert_allclose(info[key], float(value[0]), rtol=1e-9, atol=1e-12,
                                       err_msg=f"{key} at step {step}")
        assert set(info) == set(core_info) - {"done"}
        penalised += bool(np.any(info["network_penalty"] > 0))
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
    if name == "rural1-violations":
        assert penalised > 50  # the torch penalty path really ran
    if name in ("rural1-fees", "rural1-fees-terminal-price"):
        assert fee_steps > 50  # fees were really charged, on most steps
    if name == "rural1-fees":
        assert distance_fees > 0.0  # and the distance fee with them


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
    with pytest.raises(ValueError, match="engine='torch'"):
        SingleEnvEngine(env_config({"network": {"model": "ac"}}))
