"""The PettingZoo wrapper (envs/pettingzoo_env.py) against PettingZoo's own test suite."""

from __future__ import annotations

import numpy as np
import pytest
from pettingzoo.test import parallel_api_test, parallel_seed_test

import envs

SMALL = {"community": {"feeder": "synthetic", "n_agents": 4}, "network": {"model": "none"}}


@pytest.mark.parametrize("action_type", ["continuous", "discrete"])
def test_parallel_api(action_type):
    env = envs.make_env({**SMALL, "action": {"type": action_type}})
    parallel_api_test(env, num_cycles=200)


def test_parallel_api_default_feeder_with_network():
    parallel_api_test(envs.make_env(), num_cycles=100)


def test_parallel_seed():
    parallel_seed_test(lambda: envs.make_env(SMALL))


def test_spaces_are_cached_and_state_matches():
    env = envs.make_env(SMALL)
    agent = env.possible_agents[0]
    assert env.observation_space(agent) is env.observation_space(agent)
    assert env.action_space(agent) is env.action_space(agent)
    env.reset(seed=0)
    assert env.state().shape == env.state_space.shape == (3 * 4 + 7,)
    assert env.state().dtype == np.float32


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


def test_missing_agent_action_is_an_error():
    env = envs.make_env(SMALL)
    env.reset(seed=0)
    actions = {agent: env.action_space(agent).sample() for agent in env.agents[1:]}
    with pytest.raises(ValueError, match="missing \\['prosumer_0'\\]"):
        env.step(actions)


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
