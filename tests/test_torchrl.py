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
