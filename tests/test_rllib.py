"""The PettingZoo env under RLlib's ``ParallelPettingZooEnv`` and a short PPO run
(``benchmarks/rllib_ppo.py``); skipped where the ``rllib`` extra (``ray[rllib]``, which pins
gymnasium 1.2.2) is not installed."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.rllib")

from ray.rllib.utils.pre_checks.env import check_multiagent_environments  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import rllib_ppo  # noqa: E402

SMALL = {"community": {"feeder": "synthetic", "n_agents": 4, "pv_share": 0.5,
                       "battery_share": 0.5}, "network": {"model": "none"}}


def test_parallel_pettingzoo_env_passes_rllibs_check():
    env = rllib_ppo.make_rllib_env(SMALL)
    check_multiagent_environments(env)
    obs, infos = env.reset(seed=0)
    assert sorted(obs) == [f"prosumer_{i}" for i in range(4)]
    for _ in range(96):
        actions = {agent: env.action_space[agent].sample() for agent in obs}
        obs, rewards, terminateds, truncateds, infos = env.step(actions)
        assert all(math.isfinite(reward) for reward in rewards.values())
    assert terminateds["__all__"] and not truncateds["__all__"]
    assert all(np.isfinite(info["cost"]) for info in infos.values())


@pytest.mark.slow
def test_one_ppo_iteration():
    """One PPO iteration of two days with the shared policy: every agent's steps sampled and
    trained, a finite loss."""
    import ray

    algo = rllib_ppo.ppo_config(SMALL, batch=192, seed=0).build_algo()
    try:
        result = algo.train()
    finally:
        algo.stop()
        ray.shutdown()
    runners = result["env_runners"]
    assert runners["num_env_steps_sampled_lifetime"] == 192
    assert runners["num_module_steps_sampled_lifetime"][rllib_ppo.POLICY] == 192 * 4
    assert runners["num_episodes_lifetime"] == 2
    assert math.isfinite(result["learners"][rllib_ppo.POLICY]["total_loss"])
