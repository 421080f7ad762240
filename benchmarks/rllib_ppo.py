"""PPO from RLlib (new API stack) on peergrid's PettingZoo env, one policy shared by all agents.

An example of peergrid under RLlib's ``ParallelPettingZooEnv``
(``ray.rllib.env.wrappers.pettingzoo_env``), not one of peergrid's own algorithms (those are
in ``agents/``); it is not run in CI. It needs the ``rllib`` extra (``ray[rllib]``, which pins
gymnasium 1.2.2): install it in its own virtual environment, e.g.

    python -m venv rllib-venv && rllib-venv/bin/pip install torch==2.13.0 \\
        "ray[rllib]==2.60.0" -e .
    rllib-venv/bin/python benchmarks/rllib_ppo.py [--iterations 4] [--batch 960] [--seed 0]

Every prosumer maps to the one RLModule ``"shared"`` (parameter sharing, as the SB3
``VecEnv`` and TorchRL examples); RLlib squashes the policy's Gaussian actions into the
action box ``[-1, 1] x [0, 1]`` (``normalize_actions``, clipped).
"""

from __future__ import annotations

import argparse
import time

from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.env.wrappers.pettingzoo_env import ParallelPettingZooEnv
from ray.tune.registry import register_env

import envs

CONFIG = {"community": {"feeder": "synthetic", "n_agents": 6, "pv_share": 0.5,
                        "battery_share": 0.5}, "network": {"model": "none"}}
ENV_NAME = "peergrid"
POLICY = "shared"


def make_rllib_env(env_config: dict) -> ParallelPettingZooEnv:
    """RLlib's env creator: ``env_config`` is a peergrid config dict (``envs.env_config``)."""
    return ParallelPettingZooEnv(envs.make_env(dict(env_config)))


def ppo_config(env_config: dict, batch: int, seed: int) -> PPOConfig:
    """PPO with one shared policy over every prosumer; ``batch`` env-steps per iteration."""
    register_env(ENV_NAME, make_rllib_env)
    return (
        PPOConfig()
        .environment(ENV_NAME, env_config=env_config)
        .env_runners(num_env_runners=0, num_envs_per_env_runner=1,
                     rollout_fragment_length=batch)
        .multi_agent(policies={POLICY},
                     policy_mapping_fn=lambda agent_id, episode, **kwargs: POLICY)
        .rl_module(rl_module_spec=MultiRLModuleSpec(rl_module_specs={POLICY: RLModuleSpec()}),
                   model_config=DefaultModelConfig(fcnet_hiddens=[64, 64]))
        .training(train_batch_size_per_learner=batch, minibatch_size=batch,
                  num_epochs=4, lr=3e-4, gamma=0.99, lambda_=0.95)
        .debugging(seed=seed)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--batch", type=int, default=960, help="env steps per iteration")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    algo = ppo_config(CONFIG, args.batch, args.seed).build_algo()
    start = time.perf_counter()
    for iteration in range(args.iterations):
        result = algo.train()
        runners, learner = result["env_runners"], result["learners"][POLICY]
        print(f"iteration {iteration}: env steps "
              f"{runners['num_env_steps_sampled_lifetime']:.0f}, agent steps "
              f"{runners['num_module_steps_sampled_lifetime'][POLICY]:.0f}, episodes "
              f"{runners['num_episodes_lifetime']:.0f}, episode return (sum over agents) "
              f"{runners.get('episode_return_mean', float('nan')):.3f}, total loss "
              f"{learner['total_loss']:.4f}, {time.perf_counter() - start:.1f} s", flush=True)
    algo.stop()


if __name__ == "__main__":
    main()
