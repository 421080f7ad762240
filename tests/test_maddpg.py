"""agents/maddpg.py: the centralised critic (sees every agent's action, equals an MLP on the
concatenated input, grows linearly with N), short training, N = 111, checkpoint loading,
resume == uninterrupted."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from run_records import assert_same, run_metrics

import envs
import train
from agents.algorithm import EnvSpec
from agents.checkpoints import load_checkpoint
from agents.collector import Collector
from agents.maddpg import MADDPG, CentralisedCritic
from agents.networks import mlp
from agents.policy import load_policy
from agents.run_config import build_run_config, make_generator

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = {"community": {"feeder": "synthetic", "n_agents": 4},
             "network": {"model": "none"}}
ITERATION = 4 * 4
"""Env-steps per iteration of the small config: n_envs * rollout_steps."""
OBS, ACTION, HIDDEN = 12, 2, 32


def run_config(env: dict | None = None, n_envs: int = 4, **maddpg: Any) -> dict:
    """Two episodes per environment, a checkpoint every 20 iterations."""
    return {"algo": "maddpg", "seed": 5, "name": "test", "env": env or SYNTHETIC,
            "train": {"total_steps": n_envs * 96 * 2, "n_envs": n_envs, "eval_every": 0,
                      "eval_episodes": 2, "checkpoint_every": 20 * ITERATION,
                      "torch_threads": 1},
            "maddpg": {"buffer_size": 2048, "learning_starts": 8 * ITERATION,
                       "batch_size": 64, "rollout_steps": 4, "gradient_steps": 2,
                       "hidden_sizes": [HIDDEN, HIDDEN], **maddpg}}


def build(config: dict) -> tuple[MADDPG, Collector]:
    config = build_run_config(config)
    env = envs.make_batched_env(config.env)
    algorithm = MADDPG(config.hyperparameters, EnvSpec.from_env(env), config.train,
                       make_generator(config.seed))
    return algorithm, Collector(env, seed=config.seed)


def critic(n_agents: int, seed: int = 0) -> CentralisedCritic:
    return CentralisedCritic(3 * n_agents + 7, OBS, n_agents, ACTION, [HIDDEN, HIDDEN], "relu",
                             torch.Generator().manual_seed(seed))


def inputs(n_agents: int, m: int = 5, seed: int = 1) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    state = torch.randn(m, 3 * n_agents + 7, generator=generator)
    obs = torch.randn(m, n_agents, OBS, generator=generator)
    actions = 2 * torch.rand(m, n_agents, ACTION, generator=generator) - 1
    return state, obs, actions


def n_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------------
# The centralised critic
# ------------------------------------------------------------------------------------------


def test_critic_sees_every_agents_action():
    q_network, n = critic(6), 6
    state, obs, actions = inputs(n)
    q = q_network(state, obs, actions)
    assert q.shape == (5, n)
    for other in range(1, n):  # agent 0's Q moves with each other agent's action
        changed = actions.clone()
        changed[:, other] = -changed[:, other]
        assert not torch.allclose(q_network(state, obs, changed)[:, 0], q[:, 0])
    swapped = actions.clone()
    swapped[:, [1, 2]] = actions[:, [2, 1]]  # who did what matters, not only the mean
    assert not torch.allclose(q_network(state, obs, swapped)[:, 0], q[:, 0])


def test_critic_is_an_mlp_on_the_concatenated_input():
    """The block-wise first layer equals agents.networks.mlp on [s, a_1..a_N, o_i, a_i,
    one_hot(i)] initialised from the same generator state."""
    n = 5
    q_network = critic(n, seed=3)
    full = mlp(3 * n + 7 + n * ACTION + OBS + ACTION + n, [HIDDEN, HIDDEN], 1, "relu",
               torch.Generator().manual_seed(3))
    state, obs, actions = inputs(n)
    joint = actions.reshape(5, 1, -1).expand(5, n, n * ACTION)
    x = torch.cat([state[:, None].expand(5, n, state.shape[1]), joint, obs, actions,
                   torch.eye(n).expand(5, n, n)], dim=-1)
    torch.testing.assert_close(q_network(state, obs, actions), full(x).squeeze(-1))


def test_own_actions_replace_only_the_agents_own_slot():
    n = 4
    q_network = critic(n)
    state, obs, actions = inputs(n)
    own = 2 * torch.rand(5, n, ACTION, generator=torch.Generator().manual_seed(9)) - 1
    q = q_network(state, obs, actions, own_actions=own)
    for i in range(n):
        replaced = actions.clone()
        replaced[:, i] = own[:, i]
        torch.testing.assert_close(q[:, i], q_network(state, obs, replaced)[:, i])


def test_critic_parameters_grow_linearly_with_agents():
    counts = {n: n_parameters(critic(n)) for n in (4, 8, 111)}
    per_agent = (counts[8] - counts[4]) / 4
    assert per_agent == 6 * HIDDEN  # state 3H, joint action 2H, agent id H
    assert counts[111] == counts[4] + 107 * per_agent  # affine in N, not quadratic
    assert counts[111] < 111 * 8 * HIDDEN + 4 * HIDDEN * HIDDEN


# ------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------


def test_default_config_builds():
    config = build_run_config(ROOT / "configs" / "maddpg.yaml")
    assert config.algo == "maddpg" and config.hyperparameters.max_grad_norm == 0.5


def test_imitation_config_builds():
    """configs/maddpg_imitation.yaml: a residual clone anchored on its demonstrations."""
    config = build_run_config(ROOT / "configs" / "maddpg_imitation.yaml")
    hyperparameters = config.hyperparameters
    assert config.algo == "maddpg" and hyperparameters.bc_target == "demonstrations"
    assert hyperparameters.residual and hyperparameters.imitation.days > 0
    assert hyperparameters.imitation.tie_break == "rule" and not hyperparameters.learn_price


def test_short_training_finite_losses():
    algorithm, collector = build(run_config())
    for _ in range(8):
        algorithm.iterate(collector)
    critic_before = [p.clone() for p in algorithm.critic.parameters()]
    for _ in range(3):
        scalars = algorithm.iterate(collector)
        assert all(math.isfinite(value) for value in scalars.values()), scalars
    assert {"losses/critic_loss", "losses/actor_loss", "losses/q_values"} <= set(scalars)
    assert any(not torch.equal(a, b) for a, b in zip(
        critic_before, algorithm.critic.parameters(), strict=True))
    actions = algorithm.act(collector.obs, collector.state, deterministic=True)
    assert actions.shape == (4, 4, 2)
    assert bool((actions[..., 0].abs() <= 1).all())
    assert bool(((actions[..., 1] >= 0) & (actions[..., 1] <= 1)).all())


def test_one_update_with_111_agents():
    env = {"community": {"feeder": "synthetic", "n_agents": 111}, "network": {"model": "none"}}
    algorithm, collector = build(run_config(env, n_envs=2, learning_starts=0, rollout_steps=2,
                                            gradient_steps=2, batch_size=256))
    scalars = algorithm.iterate(collector)
    assert algorithm.spec.n_agents == 111 and algorithm.n_updates == 2
    assert {"losses/critic_loss", "losses/actor_loss"} <= set(scalars)
    assert all(math.isfinite(value) for value in scalars.values())
    assert n_parameters(algorithm.critic) < 111 * 8 * HIDDEN + 4 * HIDDEN * HIDDEN


def test_checkpoint_loads_back_and_acts(tmp_path):
    config = build_run_config(run_config())
    run_dir = train.new_run_dir(tmp_path, config)
    metrics = train.Trainer(config, run_dir, progress=False).run()
    assert math.isfinite(metrics["final_eval"]["episodic_return"])
    policy = load_policy(run_dir)
    env = envs.make_batched_env(config.env, n_envs=3)
    obs, _ = env.reset(seed=1)
    actions = policy.act(obs, env)
    assert actions.shape == (3, 4, 2) and bool(torch.isfinite(actions).all())
    env.step(actions)


@pytest.mark.slow
@pytest.mark.parametrize("anchored", [False, True])
def test_resume_equals_uninterrupted(tmp_path, monkeypatch, anchored):
    """With ``bc_target: demonstrations`` too: the demonstrations are not in the checkpoint,
    the resumed run loads the same ones again (here from the cache the first run wrote)."""
    monkeypatch.setenv("PEERGRID_CACHE", str(tmp_path / "cache"))
    anchor = {"residual": True, "bc_alpha": 0.1, "bc_target": "demonstrations",
              "actor_delay": 4, "imitation": {"days": 2, "epochs": 2, "tie_break": "rule"}}
    env = {**SYNTHETIC, "observation": {"rule": "time_of_use"}}
    config = build_run_config(run_config(env, noise_type="ou", **anchor) if anchored
                              else run_config(noise_type="ou"))
    reference = train.new_run_dir(tmp_path / "reference", config)
    train.Trainer(config, reference, progress=False).run()

    run_dir = train.new_run_dir(tmp_path / "interrupted", config)
    assert train.Trainer(config, run_dir, progress=False).run(
        stop_after_steps=21 * ITERATION) is None
    assert load_checkpoint(run_dir)["global_step"] == 20 * ITERATION
    assert train.Trainer(config, run_dir, resume=True, progress=False).run() is not None

    assert run_metrics(reference) == run_metrics(run_dir)
    assert_same(load_checkpoint(reference)["algorithm"], load_checkpoint(run_dir)["algorithm"])
