"""agents/imitation.py and MAPPO's behaviour cloning of the oracle (``mappo.imitation_*``):
the demonstrations replay the optimum, are cached, and cloning them moves the actor onto
the optimum's actions."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import envs
from agents import imitation
from agents.actions import env_actions
from agents.algorithm import EnvSpec
from agents.baselines import make_oracle
from agents.evaluation import evaluate_policy, metric_scalars
from agents.mappo import MAPPO
from agents.run_config import build_run_config, make_generator
from envs.config import ConfigError

ENV = {"community": {"feeder": "synthetic", "n_agents": 4, "battery_share": 1.0},
       "network": {"model": "none"},
       "tariff": {"retail_tou": [0.12] * 6 + [0.28] * 11 + [0.5] * 4 + [0.28] + [0.12] * 2,
                  "feed_in": 0.08}}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_config(**mappo):
    return build_run_config({
        "algo": "mappo", "seed": 0, "env": ENV,
        "train": {"total_steps": 4096, "n_envs": 4, "eval_episodes": 4, "torch_threads": 1},
        "mappo": {"rollout_steps": 16, "hidden_sizes": [32, 32], **mappo}})


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PEERGRID_CACHE", str(tmp_path))
    return tmp_path


class Replay:
    """Plays fixed battery fractions ``[D, T, N]`` at the midpoint price."""

    name, mechanism = "replay", None

    def __init__(self, fractions: torch.Tensor) -> None:
        self.fractions, self.step = fractions, 0

    def reset(self, env, seed=None) -> None:
        self.step = 0

    def act(self, obs, env):
        battery = self.fractions[:, self.step].to(env.dtype)
        self.step += 1
        return env_actions(battery, torch.full_like(battery, 0.5), env)


def test_training_days_are_training_days():
    config = run_config().env
    days = imitation.training_days(config, 10)
    assert len(days) == 10 == len(set(days)) and days == sorted(days)
    assert all(day % config.episode.test_every != config.episode.test_every - 1 for day in days)


def test_demonstrations_replay_the_optimum(cache):
    """Played open loop in the core, the demonstrated actions cost what the oracle LP says."""
    config = run_config().env
    obs, battery = imitation.oracle_demonstrations(config, 3)
    days = imitation.training_days(config, 3)
    env = envs.make_batched_env(dataclasses.replace(config, n_envs=len(days)))
    assert obs.shape == (3, env.episode_steps, 4, env.obs_dim)
    assert battery.shape == (3, env.episode_steps, 4)
    assert battery.abs().max() <= 1.0 and battery.abs().max() > 0.5  # the battery is used
    totals, _ = evaluate_policy(env, Replay(battery), days)
    replay = metric_scalars(totals)["community_cost"]
    solver = envs.make_batched_env(dataclasses.replace(config, n_envs=1))
    oracle = np.mean([make_oracle("oracle").solve_day(solver, day)[0].cost for day in days])
    assert replay == pytest.approx(oracle, rel=1e-4)
    # The observations are those the replay saw: its first step's are a reset's.
    first, _ = env.reset(seed=0, days=days)
    torch.testing.assert_close(obs[:, 0], first.float().cpu())


def test_demonstrations_are_cached_and_damage_is_solved_again(cache, monkeypatch):
    config = run_config().env
    obs, battery = imitation.oracle_demonstrations(config, 2)
    (path,) = (cache / "demonstrations").iterdir()
    solve = imitation._solve
    monkeypatch.setattr(imitation, "_solve", None)  # solving again would fail
    again = imitation.oracle_demonstrations(config, 2)
    torch.testing.assert_close(again[0], obs)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    monkeypatch.setattr(imitation, "_solve", solve)
    torch.testing.assert_close(imitation.oracle_demonstrations(config, 2)[1], battery)
    other = dataclasses.replace(config, tariff=dataclasses.replace(config.tariff, feed_in=0.05))
    imitation.oracle_demonstrations(other, 2)  # another config is another file
    assert len(list((cache / "demonstrations").iterdir())) == 2


def test_cloning_moves_the_actor_onto_the_optimum(cache):
    config = run_config(imitation_days=4, imitation_epochs=200, imitation_minibatch=128,
                        imitation_lr=3e-3, hidden_sizes=[64, 64])
    env = envs.make_batched_env(config.env)
    algorithm = MAPPO(config.hyperparameters, EnvSpec.from_env(env), config.train,
                      make_generator(0))
    obs, battery = imitation.oracle_demonstrations(config.env, 4)

    def error() -> float:
        with torch.no_grad():
            action = algorithm.act(obs.reshape(-1, 4, obs.shape[-1]), None, deterministic=True)
        return float((action[..., 0] - battery.reshape(-1, 4)).square().mean())

    before = error()
    loss = algorithm.imitate(config.env)
    assert error() < 0.25 * before and loss == pytest.approx(error(), rel=0.5)
    assert algorithm.imitated and algorithm.state_dict()["imitated"]
    fresh = MAPPO(config.hyperparameters, EnvSpec.from_env(env), config.train,
                  make_generator(1))
    fresh.load_state_dict(algorithm.state_dict())
    assert fresh.imitated  # a resumed run does not clone again


@pytest.mark.parametrize(("override", "named"), [
    ("mappo.imitation_days=-1", "mappo.imitation_days"),
    ("mappo.imitation_days=400", "mappo.imitation_days"),
    ("mappo.imitation_epochs=0", "mappo.imitation_epochs"),
    ("mappo.imitation_lr=0", "mappo.imitation_lr"),
    ("mappo.imitation_minibatch=0", "mappo.imitation_minibatch"),
    ("mappo.imitation_oracle=lp", "mappo.imitation_oracle"),
])
def test_bad_imitation_settings_name_the_key(override, named):
    with pytest.raises(ConfigError, match=named):
        build_run_config({"algo": "mappo", "env": ENV}, [override])


def test_imitation_needs_continuous_actions(cache):
    config = build_run_config({"algo": "mappo", "env": {**ENV, "action": {"type": "discrete"}},
                               "train": {"n_envs": 2},
                               "mappo": {"imitation_days": 2}})
    env = envs.make_batched_env(config.env)
    algorithm = MAPPO(config.hyperparameters, EnvSpec.from_env(env), config.train,
                      make_generator(0))
    with pytest.raises(ConfigError, match="imitation_days"):
        algorithm.imitate(config.env)
