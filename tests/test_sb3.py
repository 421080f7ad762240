"""The stable-baselines3 VecEnv adapter (envs/sb3_vec_env.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecCheckNan, VecMonitor

import envs
from envs.info_schema import INFO_KEYS, NETWORK_INFO
from envs.sb3_vec_env import SB3VecEnv

SMALL = {"community": {"feeder": "synthetic", "n_agents": 4}, "network": {"model": "none"}}


def test_vec_check_nan_passes_a_whole_episode_and_catches_nan_actions():
    """SB3's own VecCheckNan around the adapter: a full episode with a network model (NaN is
    only allowed in infos, never in observations or rewards), then a NaN action is caught by
    the wrapper before it reaches the core."""
    vec = VecCheckNan(envs.make_vec_env({**SMALL, "network": {"model": "zbus"}}, n_envs=2),
                      raise_exception=True)
    vec.reset()
    generator = np.random.default_rng(1)
    for _ in range(96):
        _, _, dones, _ = vec.step(generator.uniform(-1.0, 1.0, (8, 2)).astype(np.float32))
    assert dones.all()
    actions = np.zeros((8, 2), dtype=np.float32)
    actions[3, 0] = np.nan
    with pytest.raises(ValueError, match="found nan in actions"):
        vec.step(actions)


def test_vec_env_shapes_and_terminal_observation():
    """Shapes, and the terminal observation of every sub-environment: the observation after
    its last step, as a second core stepped with the same actions gives it (the SoC reached
    on that step, the price it cleared at), not the first one of the next episode."""
    vec = envs.make_vec_env(SMALL, n_envs=3)
    assert vec.num_envs == 12
    twin = envs.make_batched_env(SMALL, n_envs=3)
    obs = vec.reset()
    twin_obs, _ = twin.reset()
    assert obs.shape == (12, vec.core.obs_dim) and obs.dtype == np.float32
    np.testing.assert_array_equal(obs, twin_obs.reshape(12, -1).numpy())
    generator = np.random.default_rng(0)
    for _ in range(96):
        actions = generator.uniform(-1.0, 1.0, (12, 2)).astype(np.float32)
        obs, rewards, dones, infos = vec.step(actions)
        assert rewards.shape == (12,) and dones.shape == (12,)
        twin_actions = torch.as_tensor(actions).reshape(3, 4, 2)
        twin_actions[..., 1] = (twin_actions[..., 1] + 1.0) / 2.0  # the adapter's mapping
        twin_obs, _, _, _, twin_info = twin.step(twin_actions)
    assert dones.all()
    assert all("terminal_observation" in info for info in infos)
    assert all(info["step_of_day"] == 95.0 for info in infos)
    final = np.stack([info["terminal_observation"] for info in infos])
    assert final.dtype == np.float32
    np.testing.assert_array_equal(final, twin_info["final_observation"].reshape(12, -1).numpy())
    np.testing.assert_array_equal(obs, twin_obs.reshape(12, -1).numpy())
    features = twin.feature_names
    soc = twin_info["soc_kwh"] / twin.capacity_kwh.clamp_min(1e-9)  # after the last step
    np.testing.assert_allclose(final[:, features.index("soc")], soc.reshape(-1).numpy(),
                               rtol=1e-6, atol=1e-7)
    last_price = np.repeat(twin_info["clearing_price"].numpy() / twin.price_scale, 4)
    traded = ~np.isnan(last_price)
    assert traded.any()
    np.testing.assert_allclose(final[traded, features.index("last_price")],
                               last_price[traded], rtol=1e-6)
    assert not np.array_equal(final, obs)  # the new episodes' first observations differ
    # the core has reset every env: reset infos of the new episodes
    new_days = vec.core.day.tolist()
    assert [(info["day"], info["step_of_day"]) for info in vec.reset_infos] == [
        (float(new_days[i // 4]), -1.0) for i in range(12)]


def test_vec_env_two_day_episodes_end_after_192_steps():
    """episode.length_days = 2: every sub-environment is done after 192 steps (not at the
    first midnight), with its terminal observation and the day advanced in between."""
    vec = envs.make_vec_env({**SMALL, "episode": {"length_days": 2}}, n_envs=2)
    vec.reset()
    start = vec.core.day.tolist()
    generator = np.random.default_rng(0)
    for step in range(192):
        actions = generator.uniform(-1.0, 1.0, (8, 2)).astype(np.float32)
        _, _, dones, infos = vec.step(actions)
        assert dones.all() == (step == 191) and (dones.any() == dones.all()), step
        if step == 96:
            assert [info["day"] for info in infos] == [
                float((start[i // 4] + 1) % 366) for i in range(8)]
    assert all("terminal_observation" in info for info in infos)
    assert not any(info["TimeLimit.truncated"] for info in infos)


def test_symmetric_price_action_maps_to_band():
    vec = envs.make_vec_env(SMALL, n_envs=1, market={"mechanism": "uniform"})
    vec.reset()
    actions = np.array([[0.0, -1.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.5]], np.float32)
    vec.step(actions)
    core = vec.core
    retail, feed_in = vec.last_info["retail_price"][0], vec.last_info["feed_in_price"][0]
    expected = feed_in + torch.tensor([0.0, 1.0, 0.5, 0.75]) * (retail - feed_in)
    torch.testing.assert_close(vec.last_info["price"][0], expected)
    assert core.n_agents == 4


@pytest.mark.slow
def test_sb3_ppo_trains_on_the_adapter():
    vec = VecMonitor(envs.make_vec_env(SMALL, n_envs=2))
    model = PPO("MlpPolicy", vec, n_steps=128, batch_size=256, n_epochs=2, seed=0,
                device="cpu", verbose=0)
    model.learn(total_timesteps=3072)
    assert model.num_timesteps >= 3072
    obs = vec.reset()
    action, _ = model.predict(obs, deterministic=True)
    assert action.shape == (8, 2)
    assert "train/loss" in model.logger.name_to_value
    assert np.isfinite(model.logger.name_to_value["train/loss"])


def test_vec_env_infos_follow_the_info_schema():
    """Sub-env b * N + n: agent n's values and env b's community values, NaN where the core
    has none (no network model); reset infos NaN but the day and step -1."""
    vec = envs.make_vec_env(SMALL, n_envs=2)
    vec.reset()
    days = vec.core.day.tolist()
    for i, info in enumerate(vec.reset_infos):
        assert tuple(info) == INFO_KEYS
        assert (info["day"], info["step_of_day"]) == (float(days[i // 4]), -1.0)
        assert math.isnan(info["cost"])
    _, rewards, _, infos = vec.step(np.zeros((8, 2), np.float32))
    cost, clearing_price = vec.last_info["cost"], vec.last_info["clearing_price"]
    for i, info in enumerate(infos):
        assert tuple(info) == INFO_KEYS and all(type(v) is float for v in info.values())
        assert info["cost"] == pytest.approx(float(cost[i // 4, i % 4]), rel=1e-6)
        assert info["cost"] == pytest.approx(-float(rewards[i]), rel=1e-5)
        assert info["step_of_day"] == 0.0 and math.isnan(info["v_min_pu"])
        np.testing.assert_equal(info["clearing_price"], float(clearing_price[i // 4]))
    quiet = SB3VecEnv(envs.make_batched_env(SMALL, n_envs=2), step_infos=False)
    quiet.reset()
    assert quiet.step(np.zeros((8, 2), np.float32))[3] == [{}] * 8


def test_vec_env_network_infos_are_the_cores():
    """With a network model every sub-environment has exactly INFO_KEYS too, the network
    keys defined: its community's values of the core's infos (``v_min_pu`` ...)."""
    vec = envs.make_vec_env({**SMALL, "network": {"model": "zbus"}}, n_envs=2)
    vec.reset()
    _, _, _, infos = vec.step(np.zeros((8, 2), np.float32))
    for i, info in enumerate(infos):
        assert tuple(info) == INFO_KEYS
        for key in NETWORK_INFO:
            assert math.isfinite(info[key]), key
            assert info[key] == pytest.approx(float(vec.last_info[key][i // 4]), rel=1e-6)
    assert 0.8 < infos[0]["v_min_pu"] <= infos[0]["v_max_pu"] < 1.2
