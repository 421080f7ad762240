"""agents/ddpg.py: short training with finite losses, bounded actions, warm-up, Polyak
targets, independent (unshared) networks, checkpoint loading, resume == uninterrupted."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from run_records import assert_same, run_metrics

import envs
import train
from agents import registry
from agents.algorithm import EnvSpec
from agents.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from agents.collector import Collector
from agents.ddpg import DDPG
from agents.networks import PerAgentMLP
from agents.policy import load_policy
from agents.run_config import build_run_config, make_generator
from envs.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = {"community": {"feeder": "synthetic", "n_agents": 4},
             "network": {"model": "none"}}
ITERATION = 4 * 4
"""Env-steps per iteration of the small config: n_envs * rollout_steps."""


def run_config(env: dict | None = None, **ddpg: Any) -> dict:
    """Two episodes per environment, a checkpoint every 20 iterations."""
    return {"algo": "ddpg", "seed": 2, "name": "test", "env": env or SYNTHETIC,
            "train": {"total_steps": 4 * 96 * 2, "n_envs": 4, "eval_every": 0,
                      "eval_episodes": 2, "checkpoint_every": 20 * ITERATION,
                      "torch_threads": 1},
            "ddpg": {"buffer_size": 2048, "learning_starts": 8 * ITERATION, "batch_size": 64,
                     "rollout_steps": 4, "gradient_steps": 2, "hidden_sizes": [32, 32],
                     **ddpg}}


def build(config: dict) -> tuple[DDPG, Collector]:
    config = build_run_config(config)
    env = envs.make_batched_env(config.env)
    algorithm = DDPG(config.hyperparameters, EnvSpec.from_env(env), config.train,
                     make_generator(config.seed))
    return algorithm, Collector(env, seed=config.seed)


def test_default_config_builds():
    config = build_run_config(ROOT / "configs" / "ddpg.yaml")
    assert config.algo == "ddpg" and config.hyperparameters.gradient_steps >= 1
    with pytest.raises(ConfigError, match="ddpg.noise_type"):
        build_run_config(ROOT / "configs" / "ddpg.yaml", ["ddpg.noise_type=pink"])


def test_imitation_config_builds():
    """configs/ddpg_imitation.yaml: a residual clone anchored on its demonstrations."""
    config = build_run_config(ROOT / "configs" / "ddpg_imitation.yaml")
    hyperparameters = config.hyperparameters
    assert config.algo == "ddpg" and hyperparameters.bc_target == "demonstrations"
    assert hyperparameters.residual and hyperparameters.imitation.days > 0
    assert hyperparameters.imitation.tie_break == "rule" and not hyperparameters.learn_price


def test_warm_up_then_finite_losses_and_bounded_actions():
    algorithm, collector = build(run_config())
    for _ in range(7):  # uniformly random actions, no update yet
        assert algorithm.iterate(collector) == {}
    assert len(algorithm.buffer) == 7 * ITERATION
    actor_before = [p.clone() for p in algorithm.actor.parameters()]
    target_before = [p.clone() for p in algorithm.target_critic.parameters()]
    for _ in range(4):
        scalars = algorithm.iterate(collector)
        assert all(math.isfinite(value) for value in scalars.values()), scalars
    assert {"losses/critic_loss", "losses/actor_loss", "losses/q_values"} <= set(scalars)
    assert algorithm.n_updates == 4 * 2
    assert any(not torch.equal(a, b) for a, b in zip(
        actor_before, algorithm.actor.parameters(), strict=True))
    # targets move by Polyak averaging: a little, not all the way
    for before, target, online in zip(target_before, algorithm.target_critic.parameters(),
                                      algorithm.critic.parameters(), strict=True):
        if not torch.equal(before, online):
            assert not torch.equal(target, before) and not torch.equal(target, online)
    for deterministic in (False, True):
        actions = algorithm.act(collector.obs, collector.state, deterministic)
        assert actions.shape == (4, 4, 2)
        assert bool((actions[..., 0].abs() <= 1).all())
        assert bool(((actions[..., 1] >= 0) & (actions[..., 1] <= 1)).all())
    # the buffer holds the symmetric actions the critic trains on, in [-1, 1]^2
    stored = algorithm.buffer.actions[: len(algorithm.buffer)]
    assert bool((stored.abs() <= 1).all()) and bool((stored[..., 1] < 0).any())


def test_actor_delay_holds_the_actor_while_the_critic_learns():
    algorithm, collector = build(run_config(learning_starts=0, actor_delay=6))
    actor_before = [p.clone() for p in algorithm.actor.parameters()]
    critic_before = [p.clone() for p in algorithm.critic.parameters()]
    for _ in range(3):  # 6 critic updates: the actor waits
        assert "losses/actor_loss" not in algorithm.iterate(collector)
    assert all(torch.equal(a, b) for a, b in zip(
        actor_before, algorithm.actor.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(
        critic_before, algorithm.critic.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(  # the critic's target still follows
        critic_before, algorithm.target_critic.parameters(), strict=True))
    assert "losses/actor_loss" in algorithm.iterate(collector)  # updates 7 and 8


def test_bc_alpha_pulls_the_actor_onto_the_replayed_actions():
    """TD3+BC with a negligible Q term is regression onto the replayed actions: an actor
    trained on a buffer of one constant action learns that action."""
    algorithm, collector = build(run_config(learning_starts=0, bc_alpha=1e-6,
                                            exploration_noise=0.0, actor_lr=3e-3,
                                            policy_frequency=1))
    constant = torch.tensor([0.6, -0.4])
    algorithm._explore = lambda obs, random: constant.expand(*obs.shape[:-1], 2).clone()
    for _ in range(150):
        algorithm.iterate(collector)
    actions = algorithm._policy(algorithm.actor, collector.obs)
    torch.testing.assert_close(actions, constant.expand_as(actions), atol=0.05, rtol=0.0)


def test_ou_noise_and_independent_networks():
    algorithm, collector = build(run_config(noise_type="ou", parameter_sharing=False,
                                            learning_starts=0))
    assert isinstance(algorithm.actor, PerAgentMLP)
    for _ in range(2):
        scalars = algorithm.iterate(collector)
        assert all(math.isfinite(value) for value in scalars.values())
    assert bool(algorithm.ou_state.abs().sum() > 0)
    # agent i's independent actor ignores agent j's observation
    obs = collector.obs.clone()
    base = algorithm.act(obs, collector.state, deterministic=True)
    obs[:, 1] += 1.0
    moved = algorithm.act(obs, collector.state, deterministic=True)
    assert torch.equal(base[:, [0, 2, 3]], moved[:, [0, 2, 3]])
    assert not torch.equal(base[:, 1], moved[:, 1])


def test_discrete_env_is_rejected():
    env = {**SYNTHETIC, "action": {"type": "discrete"}}
    with pytest.raises(ConfigError, match="continuous"):
        build(run_config(env))


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
    env.step(actions)  # the core accepts them


def test_best_checkpoint_leaves_out_the_replay_buffer(tmp_path):
    """checkpoint_best.pt is for acting: no replay buffer (smaller, faster to write), and the
    policy loaded from it acts as the algorithm it was written from; checkpoint_latest.pt keeps
    the buffer for resuming, and a checkpoint without it is refused for --resume."""
    config = build_run_config(run_config())
    run_dir = train.new_run_dir(tmp_path, config)
    trainer = train.Trainer(config, run_dir, progress=False)
    trainer.run()
    best = load_checkpoint(run_dir / "checkpoint_best.pt")
    latest = load_checkpoint(run_dir / "checkpoint_latest.pt")
    assert best["experience"] is False and "buffer" not in best["algorithm"]
    assert latest["experience"] is True and "buffer" in latest["algorithm"]
    assert ((run_dir / "checkpoint_best.pt").stat().st_size
            < (run_dir / "checkpoint_latest.pt").stat().st_size / 2)
    acting = load_policy(run_dir / "checkpoint_best.pt")
    twin, _ = build(run_config())
    twin.load_state_dict(best["algorithm"])  # the buffer stays empty, the networks load
    assert len(twin.buffer) == 0
    env = envs.make_batched_env(config.env, n_envs=3)
    obs, _ = env.reset(seed=1)
    torch.testing.assert_close(acting.act(obs, env),
                               twin.act(obs, env.state(), deterministic=True))
    save_checkpoint(best, run_dir / "checkpoint_latest.pt")
    with pytest.raises(CheckpointError, match="holds no replay buffers"):
        train.Trainer(config, run_dir, resume=True, progress=False)


@pytest.mark.slow
def test_resume_equals_uninterrupted(tmp_path):
    """OU noise, replay, targets, optimisers and counters all survive the checkpoint."""
    data = run_config(noise_type="ou", target_policy_noise=0.1, max_grad_norm=1.0)
    config = build_run_config(data)
    reference = train.new_run_dir(tmp_path / "reference", config)
    train.Trainer(config, reference, progress=False).run()

    run_dir = train.new_run_dir(tmp_path / "interrupted", config)
    assert train.Trainer(config, run_dir, progress=False).run(
        stop_after_steps=21 * ITERATION) is None
    assert load_checkpoint(run_dir)["global_step"] == 20 * ITERATION
    assert train.Trainer(config, run_dir, resume=True, progress=False).run() is not None

    assert run_metrics(reference) == run_metrics(run_dir)
    assert_same(load_checkpoint(reference)["algorithm"], load_checkpoint(run_dir)["algorithm"])


@pytest.mark.parametrize("noise_type", ["gaussian", "ou"])
def test_price_held_at_the_midpoint_without_learn_price(noise_type):
    """``learn_price: false``: the price is the midpoint (0.5 of [feed-in, retail]) in
    deterministic and noisy acting, in the random warm-up and the exploration of training,
    and through the updates, while the battery part still varies."""
    algorithm, collector = build(run_config(learn_price=False, noise_type=noise_type))
    obs = collector.obs
    for deterministic in (True, False):
        actions = algorithm.act(obs, collector.env.state(), deterministic=deterministic)
        assert torch.equal(actions[..., 1], torch.full_like(actions[..., 1], 0.5))
    for random in (True, False):
        explored = algorithm._explore(obs, random)
        assert torch.equal(explored[..., 1], torch.zeros_like(explored[..., 1]))
        assert float(explored[..., 0].std()) > 0.0
    for _ in range(12):  # past learning_starts: updates run
        algorithm.iterate(collector)
    actions = algorithm.act(collector.obs, collector.env.state())
    assert torch.equal(actions[..., 1], torch.full_like(actions[..., 1], 0.5))


# ------------------------------------------------------------------------------------------
# bc_target: demonstrations (shared with MADDPG, tests/test_maddpg.py)
# ------------------------------------------------------------------------------------------

RULE_SYNTHETIC = {**SYNTHETIC, "community": {"feeder": "synthetic", "n_agents": 4,
                                             "battery_share": 1.0},
                  "observation": {"rule": "time_of_use"}}


@pytest.mark.parametrize("algo", ["ddpg", "maddpg"])
def test_bc_target_settings_name_the_key(algo):
    def config(**section: Any) -> dict:
        return {"algo": algo, "env": SYNTHETIC, algo: section}

    with pytest.raises(ConfigError, match=rf"'{algo}\.bc_target'.*imitation\.days"):
        build_run_config(config(bc_target="demonstrations", bc_alpha=1.0))
    with pytest.raises(ConfigError, match=rf"'{algo}\.bc_target'.*bc_alpha"):
        build_run_config(config(bc_target="demonstrations", imitation={"days": 2}))
    with pytest.raises(ConfigError, match=rf"'{algo}\.bc_target'"):
        build_run_config(config(bc_target="oracle", bc_alpha=1.0, imitation={"days": 2}))
    built = build_run_config(config(bc_target="demonstrations", bc_alpha=1.0,
                                    imitation={"days": 2}))
    assert built.hyperparameters.bc_target == "demonstrations"
    assert build_run_config(config()).hyperparameters.bc_target == "replay"


def build_family(algo: str, **section: Any) -> tuple[DDPG, Collector]:
    """DDPG or MADDPG (``algo``) on the small config of :func:`run_config` with a rule in the
    observation, updating the actor at every update from the start, without exploration
    noise, as a residual on the rule, with ``section`` on top."""
    defaults = {"learning_starts": 0, "exploration_noise": 0.0, "actor_lr": 3e-3,
                "policy_frequency": 1, "residual": True, "imitation": {"days": 2}}
    data = run_config(RULE_SYNTHETIC, **{**defaults, **section})
    hyperparameters = data.pop("ddpg")
    data = {**data, "algo": algo, algo: hyperparameters}
    config = build_run_config(data)
    env = envs.make_batched_env(config.env)
    algorithm = registry.get(algo)(config.hyperparameters, EnvSpec.from_env(env),
                                   config.train, make_generator(config.seed))
    return algorithm, Collector(env, seed=config.seed)


def give_demonstrations(algorithm: DDPG, collector: Collector,
                        battery: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic demonstrations instead of the oracle's (no LP): 64 observations near those
    of ``collector``'s environments, with the battery target ``battery``, or (None) the
    actor's own deterministic actions there, standing in for a clone. The algorithm counts
    as cloned, so that no cloning runs."""
    obs = collector.obs.to(torch.float32)
    rows = obs[torch.arange(64) % obs.shape[0]]
    rows = rows + 0.1 * torch.randn(rows.shape, generator=torch.Generator().manual_seed(0))
    if battery is None:
        target = algorithm.act(rows, None, deterministic=True)[..., 0].clone()
    else:
        target = torch.full(rows.shape[:2], battery)
    algorithm.demonstrations = (rows, target)
    algorithm.imitated = True
    return rows, target


@pytest.mark.parametrize("algo", ["ddpg", "maddpg"])
@pytest.mark.parametrize("bc_target", ["demonstrations", "replay"])
def test_demonstrations_pull_a_residual_actor_onto_the_demonstrated_actions(algo, bc_target):
    """With a negligible Q term the actor regresses the demonstration minibatch: a residual
    actor (which acts as the rule plus its output, as it was cloned) learns to play the
    demonstrated battery fraction 0.3 and the midpoint price on the demonstrated
    observations, in the core's units; with ``bc_target: replay`` it does not (it regresses
    its own replayed actions)."""
    algorithm, collector = build_family(algo, bc_alpha=1e-6, bc_target=bc_target)
    obs, target = give_demonstrations(algorithm, collector, 0.3)
    before = float((algorithm.act(obs, None, deterministic=True)[..., 0] - target).abs().mean())
    for _ in range(150):
        scalars = algorithm.iterate(collector)
    assert ("losses/bc_loss" in scalars) == (bc_target == "demonstrations")
    actions = algorithm.act(obs, None, deterministic=True)
    error = float((actions[..., 0] - target).abs().mean())
    if bc_target == "demonstrations":
        assert error < 0.03 < 0.3 < before, (error, before)
        torch.testing.assert_close(actions[..., 1], torch.full_like(target, 0.5), atol=0.05,
                                   rtol=0.0)
    else:
        assert error > 0.1


@pytest.mark.parametrize("algo", ["ddpg", "maddpg"])
def test_a_large_bc_weight_keeps_the_actor_at_the_clone(algo):
    """A tiny bc_alpha (a huge regression weight) keeps the actor at the demonstrated
    actions (its own at the start, standing in for a clone) through 60 actor updates; plain
    DDPG (bc_alpha null) moves several times as far."""
    def distance(**section: Any) -> float:
        algorithm, collector = build_family(algo, **section)
        obs, clone = give_demonstrations(algorithm, collector)
        for _ in range(30):
            algorithm.iterate(collector)
        return float((algorithm.act(obs, None, deterministic=True)[..., 0] - clone)
                     .abs().mean())

    anchored = distance(bc_alpha=1e-3, bc_target="demonstrations")
    free = distance(imitation={"days": 0})
    assert anchored < 0.02 and free > 5 * anchored, (anchored, free)


@pytest.mark.parametrize("keep_buffers", [True, False])
def test_keep_buffers_decides_only_the_finished_checkpoint(tmp_path, keep_buffers):
    """train.keep_buffers=false writes the finished run's checkpoint_latest.pt without the
    replay buffer (the leaderboard's disk), while a periodic checkpoint keeps it so that an
    interrupted run resumes exactly; such a finished run then refuses --resume by name."""
    data = run_config()
    data["train"]["keep_buffers"] = keep_buffers
    config = build_run_config(data)
    run_dir = train.new_run_dir(tmp_path, config)
    trainer = train.Trainer(config, run_dir, progress=False)
    assert trainer.run(stop_after_steps=20 * ITERATION) is None
    trainer.release()
    periodic = load_checkpoint(run_dir)
    assert periodic["experience"] and periodic["algorithm"]["buffer"]["size"] > 0
    train.Trainer(config, run_dir, resume=True, progress=False).run()
    final = load_checkpoint(run_dir)
    assert final["global_step"] == config.train.total_steps
    assert final["experience"] is keep_buffers
    assert ("buffer" in final["algorithm"]) is keep_buffers
    if not keep_buffers:
        with pytest.raises(CheckpointError, match="keep_buffers=false"):
            train.Trainer(config, run_dir, resume=True, progress=False)
