"""The PettingZoo wrapper (envs/pettingzoo_env.py) against PettingZoo's own test suite."""

from __future__ import annotations

import math
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from pettingzoo.test import parallel_api_test, parallel_seed_test
from pettingzoo.utils.wrappers import BaseParallelWrapper

import envs
from envs.info_schema import AGENT_INFO, DEFINED_AT_RESET, ENV_INFO, INFO_KEYS, NETWORK_INFO

SMALL = {"community": {"feeder": "synthetic", "n_agents": 4}, "network": {"model": "none"}}


@pytest.mark.parametrize("engine", ["numba", "torch"])
@pytest.mark.parametrize("action_type", ["continuous", "discrete"])
def test_parallel_api(action_type, engine):
    env = envs.make_env({**SMALL, "action": {"type": action_type}}, engine=engine)
    assert env.engine_name == engine
    parallel_api_test(env, num_cycles=200)


def test_parallel_api_default_feeder_with_network():
    parallel_api_test(envs.make_env(), num_cycles=100)


class NanComparable(BaseParallelWrapper):
    """NaN infos as the string ``"nan"``: PettingZoo's seed test compares infos of two envs
    with ``==``, under which a NaN (a step without trade, the network keys without a
    network) never equals itself."""

    def step(self, actions):
        *rest, infos = self.env.step(actions)
        return (*rest, {agent: {key: "nan" if math.isnan(value) else value
                                for key, value in info.items()}
                        for agent, info in infos.items()})


@pytest.mark.parametrize("engine", ["numba", "torch"])
def test_parallel_seed(engine):
    parallel_seed_test(lambda: NanComparable(envs.make_env(SMALL, engine=engine)))


@pytest.mark.slow
@pytest.mark.parametrize("action_type", ["continuous", "discrete"])
def test_numba_and_torch_engines_play_the_same_episodes(action_type):
    """Two days and a bit, unseeded resets in between: same days, observations, rewards and
    infos from the compiled engine and from the float64 torch core."""
    config = {"action": {"type": action_type}, "observation": {"forecast_noise": 0.05}}
    fast = envs.make_env(config, engine="numba")
    slow = envs.make_env(config, engine="torch", dtype="float64")
    assert (fast.engine_name, slow.engine_name) == ("numba", "torch")
    obs_fast, info_fast = fast.reset(seed=3)
    obs_slow, info_slow = slow.reset(seed=3)
    np.testing.assert_equal(info_fast, info_slow)  # the start day, NaN elsewhere
    for _ in range(2 * 96 + 20):
        if not fast.agents:
            obs_fast, info_fast = fast.reset()
            obs_slow, info_slow = slow.reset()
            np.testing.assert_equal(info_fast, info_slow)
        for agent in fast.possible_agents:
            np.testing.assert_allclose(obs_fast[agent], obs_slow[agent], rtol=1e-6)
        actions = {agent: fast.action_space(agent).sample() for agent in fast.agents}
        obs_fast, reward_fast, term_fast, trunc_fast, info_fast = fast.step(actions)
        obs_slow, reward_slow, term_slow, trunc_slow, info_slow = slow.step(actions)
        assert (term_fast, trunc_fast) == (term_slow, trunc_slow)
        np.testing.assert_allclose(list(reward_fast.values()), list(reward_slow.values()),
                                   rtol=1e-9, atol=1e-12)
        for agent in fast.possible_agents:
            assert info_fast[agent].keys() == info_slow[agent].keys()
            for key, value in info_fast[agent].items():
                np.testing.assert_allclose(value, info_slow[agent][key], rtol=1e-9,
                                           atol=1e-12, err_msg=key)
        np.testing.assert_allclose(fast.state(), slow.state(), rtol=1e-6)


@pytest.mark.parametrize("engine", ["numba", "torch"])
def test_pickled_env_continues_the_same_episode(engine):
    env = envs.make_env(SMALL, engine=engine)
    env.reset(seed=2)
    actions = [{agent: env.action_space(agent).sample() for agent in env.possible_agents}
               for _ in range(3)]
    env.step(actions[0])
    copy = pickle.loads(pickle.dumps(env))
    for action in actions[1:]:
        obs, rewards, _, _, _ = env.step(action)
        obs_copy, rewards_copy, _, _, _ = copy.step(action)
        assert rewards == rewards_copy
        for agent in env.possible_agents:
            np.testing.assert_array_equal(obs[agent], obs_copy[agent])


def test_engine_choice():
    assert envs.make_env(SMALL).engine_name == "numba"
    exact = envs.make_env({"network": {"model": "ac"}})
    assert exact.engine_name == "torch"
    exact.reset(seed=0)
    _, _, _, _, infos = exact.step({a: exact.action_space(a).sample() for a in exact.agents})
    assert infos["prosumer_0"]["network_converged"] == 1.0 and 0.9 < infos["prosumer_0"]["v_min_pu"]
    with pytest.raises(ValueError, match="engine 'numba' does not support network.model"):
        envs.make_env({"network": {"model": "ac"}}, engine="numba")
    with pytest.raises(ValueError, match="allowed: \\('auto', 'numba', 'torch'\\)"):
        envs.make_env(SMALL, engine="jax")


def test_spaces_are_cached_and_state_matches():
    env = envs.make_env(SMALL)
    agent = env.possible_agents[0]
    assert env.observation_space(agent) is env.observation_space(agent)
    assert env.action_space(agent) is env.action_space(agent)
    env.reset(seed=0)
    assert env.state().shape == env.state_space.shape == (3 * 4 + 7,)
    assert env.state().dtype == np.float32


@pytest.mark.parametrize("engine", ["numba", "torch"])
@pytest.mark.parametrize("rule", ["self_consumption", "time_of_use"])
def test_observation_space_admits_the_rule_feature(engine, rule):
    tariff = {"retail_tou": [0.12] * 6 + [0.28] * 11 + [0.50] * 4 + [0.28] + [0.12] * 2}
    env = envs.make_env({**SMALL, "tariff": tariff, "observation": {"rule": rule}},
                        engine=engine)
    agent = env.possible_agents[0]
    assert env.observation_space(agent).shape == (13,)
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    seen = []
    for _ in range(40):
        for name, value in obs.items():
            assert env.observation_space(name).contains(value), name
            seen.append(value[-1])
        obs, *_ = env.step({a: np.array([rng.uniform(-1, 1), rng.uniform(0, 1)], np.float32)
                            for a in env.agents})
    assert -1.0 <= min(seen) and max(seen) <= 1.0 and max(seen) > 0.0


def test_episode_ends_after_one_day_and_agents_empty():
    env = envs.make_env(SMALL)
    env.reset(seed=1)
    steps = 0
    while env.agents:
        actions = {agent: env.action_space(agent).sample() for agent in env.agents}
        _, _, terminations, _, infos = env.step(actions)
        steps += 1
    assert steps == 96
    assert all(terminations.values())
    assert {"payment", "p2p_energy_kwh", "clearing_price", "community_cost"} <= set(
        infos[env.possible_agents[0]])
    with pytest.raises(RuntimeError, match="reset"):
        env.step({})


@pytest.mark.parametrize("engine", ["numba", "torch"])
def test_two_day_episode_ends_after_two_days(engine):
    """episode.length_days = 2: the agents live 192 steps; the day advances at midnight
    without termination, which only the last step reports."""
    env = envs.make_env({**SMALL, "episode": {"length_days": 2}}, engine=engine)
    _, infos = env.reset(seed=1, options={"day": 365})
    days, ended = [], []
    while env.agents:
        actions = {agent: env.action_space(agent).sample() for agent in env.agents}
        _, _, terminations, truncations, infos = env.step(actions)
        days.append(infos[env.possible_agents[0]]["day"])
        ended.append(all(terminations.values()))
        assert not any(truncations.values())
    assert days == [365.0] * 96 + [0.0] * 96
    assert ended == [False] * 191 + [True]


def test_missing_agent_action_is_an_error():
    env = envs.make_env(SMALL)
    env.reset(seed=0)
    actions = {agent: env.action_space(agent).sample() for agent in env.agents[1:]}
    with pytest.raises(ValueError, match="missing \\['prosumer_0'\\]"):
        env.step(actions)
    with pytest.raises(ValueError, match="unknown \\['prosumer_9'\\]"):
        env.step({**actions, "prosumer_0": actions["prosumer_1"], "prosumer_9": [0, 0]})
    with pytest.raises(ValueError, match="shape of its action space \\(2,\\)"):
        env.step({**actions, "prosumer_0": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="agent 'house_2' \\(index 2\\)"):
        env.step({**actions, "prosumer_0": actions["prosumer_1"],
                  "prosumer_2": np.array([2.0, 0.5], np.float32)})


def test_ansi_render_summarises_the_step():
    env = envs.make_env(render_mode="ansi")
    env.reset(seed=0)
    env.step({agent: env.action_space(agent).sample() for agent in env.agents})
    text = env.render()
    assert "clearing price" in text and "prosumer_12" in text and "voltage" in text
    with pytest.raises(ValueError, match="render_mode"):
        envs.make_env(SMALL, render_mode="human")


def test_n_envs_must_be_one():
    with pytest.raises(ValueError, match="n_envs must be 1"):
        envs.make_env(SMALL, n_envs=2)


def _assert_schema(infos: dict, agents: list[str]) -> None:
    """Every agent has exactly INFO_KEYS, each a Python float (never None)."""
    assert list(infos) == agents
    for agent in agents:
        assert tuple(infos[agent]) == INFO_KEYS, agent
        bad = {key: value for key, value in infos[agent].items() if type(value) is not float}
        assert not bad, (agent, bad)


@pytest.mark.parametrize("engine", ["numba", "torch"])
def test_infos_have_the_schema_at_reset_and_every_step(engine):
    """Same keys at reset and at each of the 96 steps; NaN exactly where undefined."""
    env = envs.make_env(SMALL, engine=engine)
    _, infos = env.reset(seed=0, options={"day": 40})
    _assert_schema(infos, env.possible_agents)
    for info in infos.values():
        assert (info["day"], info["step_of_day"]) == (40.0, -1.0)
        assert all(math.isnan(info[key]) for key in INFO_KEYS if key not in DEFINED_AT_RESET)
    traded = 0
    for step in range(96):
        actions = {agent: env.action_space(agent).sample() for agent in env.agents}
        _, _, _, _, infos = env.step(actions)
        _assert_schema(infos, env.possible_agents)
        for info in infos.values():
            assert (info["day"], info["step_of_day"]) == (40.0, float(step))
            assert all(math.isnan(info[key]) for key in NETWORK_INFO)  # no network model
            defined = [key for key in INFO_KEYS if key not in NETWORK_INFO + ("clearing_price",)]
            assert all(math.isfinite(info[key]) for key in defined), info
        # the clearing price is NaN exactly when nothing traded
        info = infos["prosumer_0"]
        assert math.isnan(info["clearing_price"]) == (info["p2p_volume_kwh"] == 0.0)
        traded += info["p2p_volume_kwh"] > 0.0
    assert not env.agents and 0 < traded < 96


@pytest.mark.parametrize("engine", ["numba", "torch"])
def test_network_infos_are_defined_with_a_network(engine):
    env = envs.make_env({**SMALL, "network": {"model": "zbus"}}, engine=engine)
    _, infos = env.reset(seed=0)
    _assert_schema(infos, env.possible_agents)
    _, _, _, _, infos = env.step({a: env.action_space(a).sample() for a in env.agents})
    _assert_schema(infos, env.possible_agents)
    info = infos["prosumer_0"]
    assert info["network_converged"] == 1.0 and 0.8 < info["v_min_pu"] <= info["v_max_pu"] < 1.2
    assert all(math.isfinite(info[key]) for key in NETWORK_INFO)


@pytest.mark.parametrize("engine", ["numba", "torch"])
def test_step_without_trade_has_nan_clearing_price(engine):
    """At midnight (no PV) with every battery charging at full power every agent buys: no
    seller, no trade."""
    env = envs.make_env(SMALL, engine=engine)
    env.reset(seed=0, options={"day": 10})
    _, _, _, _, infos = env.step(
        {agent: np.array([1.0, 1.0], np.float32) for agent in env.agents})
    for agent, info in infos.items():
        assert info["pv_kwh"] == 0.0 and info["net_energy_kwh"] > 0.0, agent
        assert math.isnan(info["clearing_price"]) and info["p2p_volume_kwh"] == 0.0
        assert info["p2p_energy_kwh"] == 0.0 and info["p2p_payment"] == 0.0


@pytest.mark.parametrize("engine", ["numba", "torch"])
def test_cost_info_is_minus_reward_over_scale_on_a_hand_checked_step(engine):
    """No P2P market, batteries idle, midnight: each agent imports its load at retail, so
    cost = payment = load x 0.30 and reward = -cost x reward_scale."""
    env = envs.make_env({**SMALL, "market": {"mechanism": "none"}}, engine=engine,
                        reward_scale=0.5, dtype="float64")
    env.reset(seed=0, options={"day": 10})
    _, rewards, _, _, infos = env.step(
        {agent: np.array([0.0, 0.5], np.float32) for agent in env.agents})
    for agent, info in infos.items():
        load = info["load_kwh"]
        assert load > 0.0 and info["pv_kwh"] == 0.0 and info["battery_energy_kwh"] == 0.0
        assert info["grid_energy_kwh"] == pytest.approx(load, rel=1e-12)
        assert info["retail_price"] == pytest.approx(0.30, rel=1e-12)
        assert info["grid_payment"] == pytest.approx(0.30 * load, rel=1e-12)
        assert info["cost"] == info["payment"] == pytest.approx(0.30 * load, rel=1e-12)
        assert rewards[agent] == pytest.approx(-0.5 * info["cost"], rel=1e-12)
        parts = (info["payment"] + info["degradation_cost"] + info["network_penalty"]
                 + info["network_fee"] + info["terminal_value_cost"])
        assert info["cost"] == pytest.approx(parts, rel=1e-12)
    assert infos["prosumer_0"]["community_cost"] == pytest.approx(
        sum(info["cost"] for info in infos.values()), rel=1e-12)


@pytest.mark.parametrize("network", ["none", "zbus"])
def test_schema_lists_every_info_of_the_core(network):
    """The core's per-agent infos ([B, N]) are exactly AGENT_INFO, its per-community ones
    ([B]) exactly ENV_INFO, plus NETWORK_INFO with a network model: the schema lists every
    key the core gives (so no wrapper drops one) and no other."""
    core = envs.make_batched_env({**SMALL, "network": {"model": network}}, n_envs=2)
    core.reset(seed=0)
    _, _, _, _, info = core.step(torch.zeros(2, core.n_agents, 2))
    per_agent = {key for key, value in info.items() if value.dim() == 2}
    assert per_agent == set(AGENT_INFO)
    expected = ENV_INFO + (NETWORK_INFO if network != "none" else ())
    assert set(info) - per_agent == set(expected)


README = Path(__file__).resolve().parents[1] / "README.md"


def _backticked(text: str) -> list[str]:
    return re.findall(r"`([a-z0-9_]+)`", text)


def test_readme_lists_exactly_the_info_schema():
    """The README's info list ("Spaces, reward, infos") and its info table ("Info schema")
    name exactly the keys of envs.info_schema, each once, with the right scope."""
    text = README.read_text()
    listing = text[text.index("**Infos** (core:"):]
    listing = listing[:listing.index("The batched core auto-resets")]
    agent_part, community_part = listing.split("Per community:")
    community_part, network_part = community_part.split("and with a network model")
    assert sorted(_backticked(agent_part.split("Per agent:")[1])) == sorted(AGENT_INFO)
    assert sorted(_backticked(community_part)) == sorted(ENV_INFO)
    assert sorted(_backticked(network_part)) == sorted(NETWORK_INFO)

    table = text[text.index("**Info schema.**"):]
    table = table[table.index("| key | scope |"):table.index("\n## ")]
    scopes: dict[str, list[str]] = {"agent": [], "community": []}
    for row in table.splitlines()[2:]:
        if row.startswith("|"):
            cells = row.split("|")
            scopes[cells[2].strip()] += _backticked(cells[1])
    assert sorted(scopes["agent"]) == sorted(AGENT_INFO)
    assert sorted(scopes["community"]) == sorted(ENV_INFO + NETWORK_INFO)


@pytest.mark.parametrize("engine", ["numba", "torch"])
def test_behavioural_agents_are_listed_and_rewarded_by_their_prospect_value(engine):
    """``behavioural_agents`` names the behavioural agents of ``behaviour``; their rewards
    are the prospect value of their step's saving (``envs.behaviour``), the others' minus
    their cost, on both engines."""
    from envs.behaviour import prospect_value

    env = envs.make_env({**SMALL, "behaviour": {"agents": ["house_1", "house_2"]}},
                        engine=engine)
    assert env.behavioural_agents == ("prosumer_1", "prosumer_2")
    assert envs.make_env(SMALL, engine=engine).behavioural_agents == ()
    env.reset(seed=0, options={"day": 172})
    for _ in range(50):
        actions = {agent: env.action_space(agent).sample() for agent in env.agents}
        _, rewards, _, _, infos = env.step(actions)
        for agent in env.agents:
            info = infos[agent]
            net = info["load_kwh"] - info["pv_kwh"]
            bill = (info["retail_price"] * max(net, 0.0) + info["feed_in_price"] * min(net, 0.0)
                    + info["no_p2p_network_penalty"])
            expected = (float(prospect_value(torch.tensor(bill - info["cost"],
                                                          dtype=torch.float64)))
                        if agent in env.behavioural_agents else -info["cost"])
            assert rewards[agent] == pytest.approx(expected, rel=1e-5, abs=1e-7), agent
