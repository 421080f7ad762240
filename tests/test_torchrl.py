"""The PettingZoo env under TorchRL's ``PettingZooWrapper`` (torchrl.envs.libs.pettingzoo).

TorchRL builds its info spec from the infos of ``reset()`` and fills it at every step, so it
needs the stable info schema of ``envs.info_schema``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchrl.envs.libs.pettingzoo import PettingZooWrapper
from torchrl.envs.utils import check_env_specs

import envs
from envs.info_schema import DEFINED_AT_RESET, INFO_KEYS, NETWORK_INFO

SMALL = {"community": {"feeder": "synthetic", "n_agents": 4, "pv_share": 0.5,
                       "battery_share": 0.5}, "network": {"model": "none"}}
pytestmark = pytest.mark.filterwarnings("ignore:PettingZoo in TorchRL is tested")
GROUP = "prosumer"  # TorchRL groups agents named prosumer_0, prosumer_1, ... under "prosumer"


def wrap(engine: str) -> PettingZooWrapper:
    return PettingZooWrapper(env=envs.make_env(SMALL, engine=engine), use_mask=False,
                             categorical_actions=False, seed=0)


@pytest.mark.parametrize("engine", ["numba", "torch"])
def test_specs_hold_the_info_schema(engine):
    env = wrap(engine)
    check_env_specs(env, seed=0)
    info_spec = env.observation_spec[GROUP, "info"]
    assert set(info_spec.keys()) == set(INFO_KEYS)
    assert all(info_spec[key].shape == (4,) for key in INFO_KEYS)


@pytest.mark.parametrize("engine", ["numba", "torch"])
def test_rollout_of_a_day_matches_the_plain_env(engine):
    """96 steps of fixed actions through TorchRL: same observations, rewards and infos as
    the same actions stepped on a plain env of the same day."""
    env = wrap(engine)
    generator = torch.Generator().manual_seed(0)
    actions = torch.rand(96, 4, 2, generator=generator)
    actions[..., 0] = 2.0 * actions[..., 0] - 1.0
    steps = iter(actions)

    def policy(tensordict):
        return tensordict.set((GROUP, "action"), next(steps))

    rollout = env.rollout(200, policy, break_when_any_done=True)
    assert rollout.batch_size == (96,)
    assert rollout["next", "done"].squeeze(-1).tolist() == [False] * 95 + [True]
    first_info = rollout[0][GROUP, "info"]
    day = float(first_info["day"][0])
    assert first_info["step_of_day"].tolist() == [-1.0] * 4
    assert all(first_info[key].isnan().all() for key in INFO_KEYS
               if key not in DEFINED_AT_RESET)

    plain = envs.make_env(SMALL, engine=engine)
    obs, _ = plain.reset(seed=0, options={"day": int(day)})
    np.testing.assert_allclose(rollout[0][GROUP, "observation"].numpy(),
                               np.stack(list(obs.values())), rtol=1e-6)
    next_info = rollout["next", GROUP, "info"]
    for step in range(96):
        _, rewards, _, _, infos = plain.step(
            {agent: actions[step, i].numpy() for i, agent in enumerate(plain.possible_agents)})
        np.testing.assert_allclose(rollout["next", GROUP, "reward"][step, :, 0].numpy(),
                                   list(rewards.values()), rtol=1e-5, atol=1e-7)
        for key in INFO_KEYS:
            np.testing.assert_allclose(
                next_info[key][step].numpy(), [info[key] for info in infos.values()],
                rtol=1e-5, atol=1e-7, err_msg=key)  # NaN where the plain env has NaN
    assert next_info["step_of_day"][:, 0].tolist() == [float(s) for s in range(96)]
    assert (next_info["day"] == day).all()
    defined = [key for key in INFO_KEYS if key not in NETWORK_INFO + ("clearing_price",)]
    assert all(next_info[key].isfinite().all() for key in defined)
    traded = next_info["p2p_volume_kwh"][:, 0] > 0
    assert (next_info["clearing_price"][:, 0].isfinite() == traded).all() and traded.any()
    assert next_info["cost"].sum() == pytest.approx(
        -rollout["next", GROUP, "reward"].sum().item(), rel=1e-5)  # reward_scale 1


# --------------------------------------------------------------------------------------------
# The batched TorchRL env over the core (envs.torchrl_env)
# --------------------------------------------------------------------------------------------

N_ENVS = 2


def fixed_actions(steps: int, seed: int = 0) -> torch.Tensor:
    """``[steps, N_ENVS, 4, 2]`` actions in the core's box: battery in [-1, 1], price in
    [0, 1]."""
    actions = torch.rand(steps, N_ENVS, 4, 2, generator=torch.Generator().manual_seed(seed))
    actions[..., 0] = 2.0 * actions[..., 0] - 1.0
    return actions


def replay(actions: torch.Tensor):
    """A TorchRL policy that plays ``actions [T, B, N, 2]`` one step after the other."""
    steps = iter(actions)
    return lambda tensordict: tensordict.set((BATCHED, "action"), next(steps))


BATCHED = "agents"  # the batched env's one group, as VMAS and BenchMARL name it


@pytest.mark.parametrize("action_type", ["continuous", "discrete"])
def test_batched_specs(action_type):
    env = envs.make_torchrl_env(SMALL, n_envs=N_ENVS, seed=0, action={"type": action_type})
    check_env_specs(env, seed=0)
    assert env.batch_size == (N_ENVS,) and env.device == env.core.device
    assert env.group_map == {BATCHED: [f"prosumer_{i}" for i in range(4)]}
    assert env.observation_spec[BATCHED, "observation"].shape == (N_ENVS, 4, 12)
    assert set(env.observation_spec[BATCHED, "info"].keys()) == set(INFO_KEYS)
    assert env.full_reward_spec[BATCHED, "reward"].shape == (N_ENVS, 4, 1)
    assert set(env.full_done_spec.keys()) == {"done", "terminated", "truncated"}
    assert all(spec.shape == (N_ENVS, 1) for spec in env.full_done_spec.values())
    action = env.full_action_spec[BATCHED, "action"]
    if action_type == "continuous":
        assert action.shape == (N_ENVS, 4, 2)
        assert action.space.low[0, 0].tolist() == [-1.0, 0.0]
        assert action.space.high[0, 0].tolist() == [1.0, 1.0]
    else:
        assert action.shape == (N_ENVS, 4) and action.space.n == env.core.n_discrete_actions
    bare = envs.make_torchrl_env(SMALL, n_envs=N_ENVS, step_infos=False)
    assert "info" not in bare.observation_spec[BATCHED].keys()
    check_env_specs(bare, seed=0)


def test_batched_rollout_matches_the_core():
    """A day and 10 steps of the next episode through TorchRL: the same rewards, observations
    and infos as a twin core seeded alike and stepped with the same actions; the episode's
    last observation is the final one, then TorchRL's reset reports the core's new episode."""
    steps = 106
    actions = fixed_actions(steps)
    env = envs.make_torchrl_env(SMALL, n_envs=N_ENVS, seed=3)
    rollout = env.rollout(steps, replay(actions), break_when_any_done=False)
    assert rollout.batch_size == (N_ENVS, steps)
    done = rollout["next", "done"][..., 0]
    assert done.tolist() == [[False] * 95 + [True] + [False] * 10] * N_ENVS
    assert not rollout["next", "truncated"].any()

    twin = envs.make_batched_env(SMALL, n_envs=N_ENVS)
    obs, _ = twin.reset(seed=3)
    assert torch.equal(rollout[:, 0][BATCHED, "observation"], obs)
    next_info = rollout["next", BATCHED, "info"]
    for step in range(steps):
        obs, reward, _, _, info = twin.step(actions[step])
        assert torch.equal(rollout["next", BATCHED, "reward"][:, step, :, 0], reward), step
        last = info.get("final_observation", obs)
        assert torch.equal(rollout["next", BATCHED, "observation"][:, step], last), step
        assert torch.equal(rollout["next", "state"][:, step], info.get("final_state",
                                                                        twin.state()))
        assert torch.equal(next_info["cost"][:, step], info["cost"])
        torch.testing.assert_close(next_info["clearing_price"][:, step],
                                   info["clearing_price"][:, None].expand(N_ENVS, 4),
                                   rtol=0, atol=0, equal_nan=True)
        if step + 1 < steps:  # the observation the policy acts on next: the new episode's
            assert torch.equal(rollout[:, step + 1][BATCHED, "observation"], obs), step
    first_of_next = rollout[:, 96][BATCHED, "info"]
    assert (first_of_next["step_of_day"] == -1).all()
    assert torch.equal(first_of_next["day"][:, 0], twin.get_state()["day"].float())
    assert all(first_of_next[key].isnan().all() for key in INFO_KEYS
               if key not in DEFINED_AT_RESET)
    assert next_info["step_of_day"][:, :96, 0].tolist() == [list(range(96))] * N_ENVS
    assert (next_info[NETWORK_INFO[0]].isnan()).all()  # no network model


def test_batched_reset_after_done_and_partial_reset():
    env = envs.make_torchrl_env(SMALL, n_envs=N_ENVS, seed=5, step_infos=False)
    twin = envs.make_batched_env(SMALL, n_envs=N_ENVS)
    twin.reset(seed=5)
    actions = fixed_actions(100, seed=1)
    rollout = env.rollout(96, replay(actions), break_when_any_done=True)
    assert rollout.batch_size == (N_ENVS, 96) and rollout["next", "done"][:, -1].all()
    for step in range(96):
        twin.step(actions[step])
    # A full reset after the done step starts new episodes everywhere, as the core's reset.
    tensordict = env.reset()
    assert not tensordict["done"].any()
    assert torch.equal(tensordict[BATCHED, "observation"], twin.reset()[0])
    # A partial reset restarts community 0 only; community 1 runs on.
    env.set_seed(5)
    obs, _ = twin.reset(seed=5)
    tensordict = env.reset()
    assert torch.equal(tensordict[BATCHED, "observation"], obs)
    for step in range(3):
        tensordict = env.step(tensordict.set((BATCHED, "action"), actions[step]))["next"]
        twin.step(actions[step])
    running = tensordict[BATCHED, "observation"][1].clone()
    tensordict.set("_reset", torch.tensor([[True], [False]]))
    tensordict = env.reset(tensordict)
    obs, _ = twin.reset(env_index=0)
    assert env.core.get_state()["step_of_day"].tolist() == [0, 3]
    assert torch.equal(tensordict[BATCHED, "observation"], obs)
    assert torch.equal(tensordict[BATCHED, "observation"][1], running)
    for step in range(3, 6):
        tensordict = env.step(tensordict.set((BATCHED, "action"), actions[step]))
        _, reward, _, _, _ = twin.step(actions[step])
        assert torch.equal(tensordict["next", BATCHED, "reward"][..., 0], reward)
        tensordict = tensordict["next"]


def test_batched_seeding():
    env = envs.make_torchrl_env(SMALL, n_envs=N_ENVS, step_infos=False)
    env.set_seed(11)
    first = env.rollout(5, replay(fixed_actions(5)))
    env.set_seed(11)
    again = env.rollout(5, replay(fixed_actions(5)))
    assert torch.equal(first["next", BATCHED, "reward"], again["next", BATCHED, "reward"])
    env.set_seed(12)
    other = env.rollout(5, replay(fixed_actions(5)))
    assert not torch.equal(first[BATCHED, "observation"], other[BATCHED, "observation"])
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="seed"):
            env.set_seed(bad)


def test_batched_env_under_a_collector():
    """TorchRL's synchronous collector (``Collector``, formerly ``SyncDataCollector``) with
    the spec's random policy: two batches of 100 steps per community cross the end of a
    day."""
    from torchrl.collectors import Collector

    env = envs.make_torchrl_env(SMALL, n_envs=N_ENVS, seed=0, step_infos=False)
    collector = Collector(env, None, frames_per_batch=200, total_frames=400)
    batches = [batch.clone() for batch in collector]
    collector.shutdown()
    assert [batch.batch_size for batch in batches] == [torch.Size([N_ENVS, 100])] * 2
    done = torch.cat([batch["next", "done"][..., 0] for batch in batches], dim=1)
    assert done.nonzero()[:, 1].tolist() == [95, 191] * N_ENVS
    rewards = torch.cat([batch["next", BATCHED, "reward"] for batch in batches], dim=1)
    assert rewards.shape == (N_ENVS, 200, 4, 1) and rewards.isfinite().all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batched_env_follows_the_cores_device():
    env = envs.make_torchrl_env(SMALL, n_envs=N_ENVS, device="cuda", seed=0)
    assert env.device.type == env.core.device.type == "cuda"
    check_env_specs(env, seed=0)
    rollout = env.rollout(100, break_when_any_done=False)
    assert rollout.device.type == "cuda"
    assert rollout["next", "done"][..., 0].nonzero()[:, 1].tolist() == [95] * N_ENVS
