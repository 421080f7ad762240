"""agents/sb3_baselines.py: SB3 PPO, TD3 and DQN through train.py's loop (steps through the
collector), finite losses, bounded actions, global RNG left untouched, checkpoint loading,
resume == uninterrupted."""

from __future__ import annotations

import io
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from run_records import run_metrics

import envs
import train
from agents import registry
from agents.algorithm import EnvSpec
from agents.checkpoints import load_checkpoint
from agents.collector import Collector
from agents.policy import load_policy
from agents.run_config import build_run_config, make_generator
from envs.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = {"community": {"feeder": "synthetic", "n_agents": 4},
             "network": {"model": "none"}}
DISCRETE = {**SYNTHETIC, "action": {"type": "discrete", "battery_levels": 3, "price_levels": 3}}


def test_registered():
    """The three baselines are registry entries of one module (``module:Class``)."""
    for name, cls in (("sb3_ppo", "SB3PPO"), ("sb3_td3", "SB3TD3"), ("sb3_dqn", "SB3DQN")):
        assert registry.get(name).__name__ == cls and registry.get(name).name == name



# Small configs: 4 environments of 4 agents, two episodes each; an iteration is 16 env-steps.
SMALL = {
    "sb3_ppo": {"n_steps": 4, "n_minibatches": 2, "n_epochs": 2, "net_arch": [32, 32]},
    "sb3_td3": {"buffer_size": 1024, "learning_starts": 64, "batch_size": 64, "train_freq": 4,
                "gradient_steps": 2, "net_arch": [32, 32]},
    "sb3_dqn": {"buffer_size": 1024, "learning_starts": 64, "batch_size": 64, "train_freq": 4,
                "gradient_steps": 2, "target_update_interval": 64, "net_arch": [32, 32]},
}
ITERATION = 4 * 4


def run_config(algo: str, **hyperparameters: Any) -> dict:
    return {"algo": algo, "seed": 4, "name": "test",
            "env": DISCRETE if algo == "sb3_dqn" else SYNTHETIC,
            "train": {"total_steps": 4 * 96 * 2, "n_envs": 4, "eval_every": 0,
                      "eval_episodes": 2, "checkpoint_every": 20 * ITERATION,
                      "torch_threads": 1},
            algo: {**SMALL[algo], **hyperparameters}}


def build(config: dict):
    config = build_run_config(config)
    env = envs.make_batched_env(config.env)
    algorithm = registry.get(config.algo)(config.hyperparameters, EnvSpec.from_env(env),
                                          config.train, make_generator(config.seed))
    return algorithm, Collector(env, seed=config.seed)


def test_shipped_configs_build():
    for algo in ("sb3_ppo", "sb3_td3"):
        config = build_run_config(ROOT / "configs" / f"{algo}.yaml")
        assert config.algo == algo
    with pytest.raises(ConfigError, match="sb3_ppo.n_minibatches"):
        build_run_config(ROOT / "configs" / "sb3_ppo.yaml", ["sb3_ppo.n_minibatches=0"])


@pytest.mark.parametrize("algo, losses", [
    ("sb3_ppo", {"losses/value_loss", "losses/policy_gradient_loss", "losses/entropy_loss"}),
    ("sb3_td3", {"losses/actor_loss", "losses/critic_loss"}),
    ("sb3_dqn", {"losses/loss"}),
])
def test_iterations_step_through_the_collector(algo, losses):
    algorithm, collector = build(run_config(algo))
    torch_state = torch.get_rng_state()
    numpy_state = np.random.get_state()  # noqa: NPY002 (the global SB3 uses)
    for _ in range(6):
        scalars = algorithm.iterate(collector)
    assert losses <= set(scalars), scalars
    assert all(math.isfinite(value) for value in scalars.values())
    assert collector.global_step == 6 * ITERATION
    assert algorithm.model.num_timesteps == collector.global_step * 4  # agent-steps
    # SB3's global draws are private to the run: the caller's generators are untouched
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.random.get_state()[1].tolist() == numpy_state[1].tolist()  # noqa: NPY002
    for deterministic in (True, False):
        actions = algorithm.act(collector.obs, collector.state, deterministic)
        if algo == "sb3_dqn":
            assert actions.dtype == torch.int64 and actions.shape == (4, 4)
            assert bool(((actions >= 0) & (actions < 9)).all())
        else:
            assert actions.shape == (4, 4, 2)
            assert bool((actions[..., 0].abs() <= 1).all())
            assert bool(((actions[..., 1] >= 0) & (actions[..., 1] <= 1)).all())


@pytest.mark.parametrize("algo", ["sb3_ppo", "sb3_td3", "sb3_dqn"])
def test_iterations_leave_no_logger_folders(algo, tmp_path, monkeypatch):
    """SB3 configures a logger of its own at every ``learn`` call unless the model has one,
    and that creates an empty ``SB3-<date>`` folder in the temporary directory: one per
    iteration. The baselines' models keep one logger without outputs, also after loading a
    checkpoint, and still report each iteration's losses."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    algorithm, collector = build(run_config(algo))
    for _ in range(6):
        scalars = algorithm.iterate(collector)
    algorithm.load_state_dict(algorithm.state_dict())
    scalars_after_load = algorithm.iterate(collector)
    assert any(key.startswith("losses/") for key in scalars)
    assert set(scalars_after_load) == set(scalars)
    assert scalars_after_load != scalars  # this iteration's values, not the last ones again
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith("SB3-")] == []


def test_action_type_is_checked():
    with pytest.raises(ConfigError, match="continuous"):
        build({**run_config("sb3_td3"), "env": DISCRETE})
    with pytest.raises(ConfigError, match="discrete"):
        build({**run_config("sb3_dqn"), "env": SYNTHETIC})


def test_td3_noise_is_sb3s_per_environment_noise_drawn_at_once():
    """``BatchedNormalNoise`` draws, in one call, the numbers SB3's ``VectorizedActionNoise``
    over one ``NormalActionNoise`` per sub-environment draws (also across episode resets),
    so TD3 trains to the same parameters, to the bit, as with SB3's own noise."""
    from stable_baselines3.common.noise import NormalActionNoise, VectorizedActionNoise

    from agents.sb3_baselines import BatchedNormalNoise

    batched = BatchedNormalNoise(2, 0.3, 5)
    sb3 = VectorizedActionNoise(NormalActionNoise(np.zeros(2), np.full(2, 0.3)), 5)
    np.random.seed(7)  # noqa: NPY002 (the global generator SB3's noise draws from)
    expected = [sb3() for _ in range(3)]
    sb3.reset([1, 3])
    expected.append(sb3())
    np.random.seed(7)  # noqa: NPY002
    drawn = [batched() for _ in range(3)]
    batched.reset([1, 3])
    drawn.append(batched())
    for got, want in zip(drawn, expected, strict=True):
        assert got.dtype == want.dtype == np.float32 and got.shape == (5, 2)
        np.testing.assert_array_equal(got, want)
    assert float(np.abs(drawn[0]).max()) > 0.0

    algorithm, collector = build(run_config("sb3_td3"))
    assert isinstance(algorithm.model.action_noise, BatchedNormalNoise)
    assert algorithm.model.action_noise.n_envs == algorithm.vec_env.num_envs == 16
    reference, reference_collector = build(run_config("sb3_td3"))
    reference.model.action_noise = NormalActionNoise(np.zeros(2), np.full(2, 0.1))
    for _ in range(8):  # past learning_starts: noisy actions, then gradient steps
        algorithm.iterate(collector)
        reference.iterate(reference_collector)
    assert isinstance(reference.model.action_noise, VectorizedActionNoise)  # SB3 wrapped it
    assert type(reference.model.action_noise) is not BatchedNormalNoise
    for got, want in zip(algorithm.model.policy.parameters(),
                         reference.model.policy.parameters(), strict=True):
        assert torch.equal(got, want)
    assert not all(torch.equal(got, want) for got, want in zip(
        algorithm.model.policy.parameters(),
        build(run_config("sb3_td3"))[0].model.policy.parameters(), strict=True))


def test_dqn_epsilon_follows_the_whole_run():
    algorithm, collector = build(run_config("sb3_dqn", exploration_fraction=0.5))
    scalars = algorithm.iterate(collector)
    progress = collector.global_step / (4 * 96 * 2)
    expected = 1.0 - progress / 0.5 * (1.0 - 0.05)
    assert scalars["charts/exploration_rate"] == pytest.approx(expected)


@pytest.mark.parametrize("algo", ["sb3_ppo", "sb3_td3", "sb3_dqn"])
def test_checkpoint_acts_and_resume_equals_uninterrupted(tmp_path, algo):
    """The checkpoint loads back and acts as the trained model. SB3's global randomness is
    seeded from the run's generator each iteration, and the model, optimisers, counters and
    replay buffer are in the checkpoint: a resumed run equals the uninterrupted one."""
    config = build_run_config(run_config(algo))
    reference = train.new_run_dir(tmp_path / "reference", config)
    trainer = train.Trainer(config, reference, progress=False)
    assert math.isfinite(trainer.run()["final_eval"]["episodic_return"])
    policy = load_policy(reference / "checkpoint_latest.pt")
    env = envs.make_batched_env(config.env, n_envs=3)
    obs, _ = env.reset(seed=1)
    actions = policy.act(obs, env)
    assert actions.shape == ((3, 4) if algo == "sb3_dqn" else (3, 4, 2))
    env.step(actions)
    torch.testing.assert_close(actions, trainer.algorithm.act(obs, env.state(), True))

    run_dir = train.new_run_dir(tmp_path / "interrupted", config)
    assert train.Trainer(config, run_dir, progress=False).run(
        stop_after_steps=21 * ITERATION) is None
    assert load_checkpoint(run_dir)["global_step"] == 20 * ITERATION
    resumed = train.Trainer(config, run_dir, resume=True, progress=False)
    assert resumed.run() is not None

    assert run_metrics(reference) == run_metrics(run_dir)
    first = load_checkpoint(reference)["algorithm"]
    second = load_checkpoint(run_dir)["algorithm"]
    parameters = [resumed.algorithm.sb3_class.load(io.BytesIO(state["model"])).policy
                  .state_dict() for state in (first, second)]
    for key, value in parameters[0].items():
        assert torch.equal(parameters[1][key], value), key
