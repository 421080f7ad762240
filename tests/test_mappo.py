"""agents/mappo.py (and the shared pieces it uses): GAE, short training, checkpoints, actions
in bounds, discrete actions, and learning a battery arbitrage with a known better policy."""

from __future__ import annotations

import math

import pytest
import torch

import envs
import train as train_module
from agents.algorithm import EnvSpec
from agents.baselines import make_policy
from agents.buffers import generalized_advantages
from agents.collector import Collector
from agents.evaluation import evaluate_policy, metric_scalars
from agents.mappo import MAPPO
from agents.policy import load_algorithm, load_policy
from agents.run_config import build_run_config, eval_env_config, evaluation_days, make_generator
from envs.config import ConfigError

SYNTHETIC = {"community": {"feeder": "synthetic", "n_agents": 4},
             "network": {"model": "none"}}


def run_config(env: dict | None = None, **mappo) -> dict:
    return {"algo": "mappo", "seed": 0, "env": env or SYNTHETIC,
            "train": {"total_steps": 4096, "n_envs": 8, "eval_episodes": 4,
                      "torch_threads": 1},
            "mappo": {"rollout_steps": 16, "hidden_sizes": [32, 32], **mappo}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def build(config: dict) -> tuple[MAPPO, Collector]:
    config = build_run_config(config)
    env = envs.make_batched_env(config.env)
    algorithm = MAPPO(config.hyperparameters, EnvSpec.from_env(env), config.train,
                      make_generator(config.seed))
    return algorithm, Collector(env, seed=config.seed)


def test_gae_matches_a_direct_sum():
    """With lambda = 1 the advantage is the discounted return minus the value; episodes
    (terminated) cut the sum."""
    generator = torch.Generator().manual_seed(0)
    t, b, n, gamma = 6, 2, 3, 0.9
    rewards = torch.rand(t, b, n, generator=generator, dtype=torch.float64)
    values = torch.rand(t, b, n, generator=generator, dtype=torch.float64)
    last = torch.rand(b, n, generator=generator, dtype=torch.float64)
    terminated = torch.zeros(t, b, dtype=torch.bool)
    terminated[2, 0] = True
    advantages, returns = generalized_advantages(rewards, values, terminated, last, gamma, 1.0)
    for env in range(b):
        future = last[env]
        for step in reversed(range(t)):
            if terminated[step, env]:
                future = torch.zeros(n, dtype=torch.float64)
            future = rewards[step, env] + gamma * future
            torch.testing.assert_close(returns[step, env], future)
    torch.testing.assert_close(advantages, returns - values)
    # lambda = 0: one-step TD errors
    advantages, _ = generalized_advantages(rewards, values, terminated, last, gamma, 0.0)
    next_values = torch.cat([values[1:], last[None]]) * (~terminated)[..., None]
    torch.testing.assert_close(advantages, rewards + gamma * next_values - values)


def test_short_training_finite_losses_and_bounded_actions():
    algorithm, collector = build(run_config())
    before = [p.clone() for p in algorithm.actor.parameters()]
    for _ in range(3):
        scalars = algorithm.iterate(collector)
        assert all(math.isfinite(value) for value in scalars.values()), scalars
    assert {"losses/policy_loss", "losses/value_loss", "losses/entropy"} <= set(scalars)
    assert any(not torch.equal(a, b) for a, b in zip(before, algorithm.actor.parameters(),
                                                     strict=True))
    assert collector.global_step == 3 * 16 * 8
    for deterministic in (False, True):
        actions = algorithm.act(collector.obs, collector.state, deterministic)
        assert actions.shape == (8, 4, 2)
        assert bool((actions[..., 0].abs() <= 1).all())
        assert bool(((actions[..., 1] >= 0) & (actions[..., 1] <= 1)).all())


def test_discrete_actions():
    env = {**SYNTHETIC, "action": {"type": "discrete", "battery_levels": 3,
                                   "price_levels": 2}}
    algorithm, collector = build(run_config(env, ent_coef=0.01))
    scalars = algorithm.iterate(collector)
    assert all(math.isfinite(value) for value in scalars.values())
    actions = algorithm.act(collector.obs, collector.state, deterministic=True)
    assert actions.dtype == torch.int64 and actions.shape == (8, 4)
    assert bool(((actions >= 0) & (actions < 6)).all())


def test_same_generator_state_same_update():
    first, collector_1 = build(run_config())
    second, collector_2 = build(run_config())
    first.iterate(collector_1)
    second.iterate(collector_2)
    for a, b in zip(first.actor.parameters(), second.actor.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_checkpoint_loads_back_and_acts(tmp_path):
    config = build_run_config(run_config())
    run_dir = train_module.new_run_dir(tmp_path, config)
    train_module.Trainer(config, run_dir, progress=False).run()
    loaded_config, algorithm = load_algorithm(run_dir / "checkpoint_latest.pt", n_envs=3)
    assert loaded_config.hyperparameters == config.hyperparameters
    env = envs.make_batched_env(config.env, n_envs=3)
    obs, _ = env.reset(seed=1)
    actions = algorithm.act(obs, env.state(), deterministic=True)
    assert actions.shape == (3, 4, 2)
    # the evaluation interface (agents.policy.Policy) over the best checkpoint
    policy = load_policy(run_dir)
    policy.reset(env, seed=0)
    torch.testing.assert_close(policy.act(obs, env).shape, actions.shape)
    assert policy.name == run_dir.name


# ------------------------------------------------------------------------------------------
# Learning: a single prosumer with a battery under a time-of-use tariff
# ------------------------------------------------------------------------------------------

NIGHT, DAY, EVENING = 0.10, 0.25, 0.50
TOU = [NIGHT] * 6 + [DAY] * 11 + [EVENING] * 4 + [DAY] * 3
"""Cheap night (0-6 h), expensive evening (17-21 h), currency/kWh."""


class IdleBattery:
    """Battery action 0 (price irrelevant without a market)."""

    name, mechanism = "idle", None

    def reset(self, env, seed=None):
        pass

    def act(self, obs, env):
        return torch.zeros(*obs.shape[:2], 2)


@pytest.mark.slow
def test_learns_battery_arbitrage(tmp_path):
    """One prosumer with a battery, no PV, no market, a time-of-use tariff: buying at night
    and using the energy in the day and evening beats leaving the battery idle. After
    training, the deterministic policy must cost clearly less than the idle battery on the
    held-out test days (and less than the untrained policy).

    Undiscounted Monte-Carlo advantages (gamma = lambda = 1) over the fixed 96-step day: with
    bootstrapped ones the critic's early, wrong value of stored energy drives PPO to the
    myopic "always discharge" policy (which stores nothing)."""
    env = {"community": {"feeder": "synthetic", "n_agents": 1, "battery_share": 1.0,
                         "pv_share": 0.0},
           "network": {"model": "none"}, "market": {"mechanism": "none"},
           "tariff": {"retail_tou": TOU, "feed_in": 0.05}}
    config = build_run_config({
        "algo": "mappo", "seed": 0, "name": "toy", "env": env,
        "train": {"total_steps": 64 * 96 * 16, "n_envs": 64, "eval_every": 0,
                  "eval_episodes": 26, "checkpoint_every": 0, "torch_threads": 1},
        "mappo": {"rollout_steps": 96, "update_epochs": 10, "actor_lr": 0.001,
                  "gamma": 1.0, "gae_lambda": 1.0}})
    run_dir = train_module.new_run_dir(tmp_path, config)
    metrics = train_module.Trainer(config, run_dir, progress=False).run()
    eval_config = eval_env_config(config)
    eval_env = envs.make_batched_env(eval_config)
    days = evaluation_days(eval_config, config.train.eval_episodes)
    idle = metric_scalars(evaluate_policy(eval_env, IdleBattery(), days, config.seed)[0])
    learned, idle_cost = metrics["final_eval"]["community_cost"], idle["community_cost"]
    print(f"test-day cost per day: idle {idle_cost:.3f}, trained {learned:.3f}")
    assert learned < 0.9 * idle_cost


def test_residual_on_the_rule_starts_as_the_rule():
    """``mappo.residual`` with ``env.observation.rule: self_consumption``: with the actor's
    output at zero the deterministic actions are the ``self_consumption`` baseline's
    (battery; price at the midpoint 0.5), to 1e-5, wherever the rule lies within
    the prior's ``LIMIT`` (saturated rules give +-LIMIT). The shipped initialisation
    (output gain 0.01, not zero) stays within 0.05 of them (measured 0.018). Without the rule
    feature, ``residual: true`` is a ConfigError."""
    env = {**SYNTHETIC, "community": {**SYNTHETIC["community"], "battery_share": 1.0},
           "observation": {"rule": "self_consumption"}}
    algorithm, collector = build(run_config(env, residual=True))
    core = collector.env
    baseline = make_policy("self_consumption")
    obs, _ = core.reset(seed=0)
    shipped, limit = 0.0, algorithm.prior.LIMIT
    saturated = 0
    for step in range(60):
        rule = baseline.act(obs, core)
        actions = algorithm.act(obs, core.state(), deterministic=True)
        shipped = max(shipped, float((actions - rule).abs().max()))
        with torch.no_grad():
            output_layer = algorithm.actor.body[-1]
            weight, bias = output_layer.weight.clone(), output_layer.bias.clone()
            output_layer.weight.zero_()
            output_layer.bias.zero_()
            zeroed = algorithm.act(obs, core.state(), deterministic=True)
            output_layer.weight.copy_(weight)
            output_layer.bias.copy_(bias)
        inside = rule[..., 0].abs() <= limit
        saturated += int((~inside).sum())
        torch.testing.assert_close(zeroed[..., 0][inside], rule[..., 0][inside].float(),
                                   atol=1e-5, rtol=0.0, msg=f"step {step}")
        torch.testing.assert_close(zeroed[..., 0][~inside],
                                   limit * rule[..., 0][~inside].sign().float(),
                                   atol=1e-5, rtol=0.0)
        torch.testing.assert_close(zeroed[..., 1], torch.full_like(zeroed[..., 1], 0.5),
                                   atol=1e-6, rtol=0.0)
        obs, *_ = core.step(rule)
    assert saturated > 0 and shipped < 0.05
    with pytest.raises(ConfigError, match="mappo.residual"):
        build(run_config(SYNTHETIC, residual=True))


def test_critic_warmup_trains_the_critic_alone_first():
    """``critic_warmup_steps``: the updates of the first rollouts (up to that many env-steps)
    leave the actor and its log std exactly as they were while the critic learns; the first
    update after the warm-up moves the actor."""
    algorithm, collector = build(run_config(critic_warmup_steps=2 * 16 * 8))
    actor = [p.detach().clone() for p in algorithm.actor.parameters()]
    log_std = algorithm.log_std["log_std"].detach().clone()
    critic = [p.detach().clone() for p in algorithm.critic.parameters()]
    for _ in range(2):  # 2 rollouts of 16 steps x 8 envs: within the warm-up
        algorithm.iterate(collector)
    for before, after in zip(actor, algorithm.actor.parameters(), strict=True):
        assert torch.equal(before, after)
    assert torch.equal(log_std, algorithm.log_std["log_std"])
    assert any(not torch.equal(before, after)
               for before, after in zip(critic, algorithm.critic.parameters(), strict=True))
    algorithm.iterate(collector)
    assert any(not torch.equal(before, after)
               for before, after in zip(actor, algorithm.actor.parameters(), strict=True))
    with pytest.raises(ConfigError, match="critic_warmup_steps"):
        build_run_config(run_config(critic_warmup_steps=-1))


def test_price_held_at_the_midpoint_without_learn_price():
    """``learn_price: false``: sampled and deterministic prices are exactly the midpoint, the
    log-probability covers the battery only (its gradient never reaches the price), and the
    battery part is still learned."""
    algorithm, collector = build(run_config(learn_price=False))
    obs, _ = collector.env.reset(seed=0)
    for deterministic in (True, False):
        actions = algorithm.act(obs, collector.env.state(), deterministic=deterministic)
        torch.testing.assert_close(actions[..., 1], torch.full_like(actions[..., 1], 0.5))
    output = algorithm._policy_output(obs)
    sample, log_prob = algorithm._sample(output)
    recomputed, _ = algorithm._log_prob_entropy(output, sample)
    torch.testing.assert_close(log_prob, recomputed)
    before = [p.detach().clone() for p in algorithm.actor.parameters()]
    algorithm.iterate(collector)
    assert any(not torch.equal(b, p) for b, p in zip(before, algorithm.actor.parameters(),
                                                       strict=True))
    obs = collector.obs
    torch.testing.assert_close(algorithm.act(obs, collector.env.state())[..., 1],
                               torch.full_like(obs[..., 0], 0.5))
    discrete = {**SYNTHETIC, "action": {"type": "discrete"}}
    with pytest.raises(ConfigError, match="mappo.learn_price"):
        build(run_config(discrete, learn_price=False))
