"""agents/imitation.py and MAPPO's behaviour cloning of the oracle (``mappo.imitation_*``):
the demonstrations replay the optimum, are cached, and cloning them moves the actor onto
the optimum's actions."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import envs
from agents import imitation, registry
from agents.actions import env_actions
from agents.algorithm import EnvSpec
from agents.baselines import make_oracle
from agents.collector import Collector
from agents.evaluation import evaluate_policy, metric_scalars
from agents.mappo import MAPPO
from agents.run_config import build_run_config, make_generator
from envs.config import ConfigError

ENV = {"community": {"feeder": "synthetic", "n_agents": 4, "battery_share": 1.0},
       "network": {"model": "none"},
       "tariff": {"retail_tou": [0.12] * 6 + [0.28] * 11 + [0.5] * 4 + [0.28] + [0.12] * 2,
                  "feed_in": 0.08}}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_config(imitation=None, **mappo):
    return build_run_config({
        "algo": "mappo", "seed": 0, "env": ENV,
        "train": {"total_steps": 4096, "n_envs": 4, "eval_episodes": 4, "torch_threads": 1},
        "mappo": {"rollout_steps": 16, "hidden_sizes": [32, 32], **mappo,
                  "imitation": imitation or {}}})


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


@pytest.mark.slow
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


def test_greedy_demonstrations_replay_the_optimum_and_are_cached_apart(cache):
    """imitation.tie_break: the greedy optimum (flat tariff here, where the plain LP's
    schedule is arbitrary) replays to the same optimal cost, follows the deficit instead of
    bursting at full power, and is cached apart from the plain demonstrations."""
    config = dataclasses.replace(run_config().env, tariff=dataclasses.replace(
        run_config().env.tariff, retail_tou=None, retail=0.3))
    _, plain = imitation.oracle_demonstrations(config, 3)
    obs, greedy = imitation.oracle_demonstrations(config, 3, tie_break="greedy")
    assert len(list((cache / "demonstrations").glob("*.npz"))) == 2
    assert not torch.allclose(plain, greedy)
    days = imitation.training_days(config, 3)
    env = envs.make_batched_env(dataclasses.replace(config, n_envs=len(days)))
    totals, _ = evaluate_policy(env, Replay(greedy), days)
    solver = envs.make_batched_env(dataclasses.replace(config, n_envs=1))
    oracle = np.mean([make_oracle("oracle").solve_day(solver, day)[0].cost for day in days])
    assert metric_scalars(totals)["community_cost"] == pytest.approx(oracle, rel=1e-4)
    # Fewer full-power steps: the greedy battery tracks the homes' net load.
    assert int((greedy.abs() > 0.999).sum()) < int((plain.abs() > 0.999).sum())


def test_demonstrations_of_two_day_episodes_replay_the_episode_optimum(cache):
    """episode.length_days = 2: one plan per episode (``solve_episode``, 192 steps), replayed
    open loop in the core at the cost the LP says."""
    config = dataclasses.replace(run_config().env, episode=dataclasses.replace(
        run_config().env.episode, length_days=2))
    obs, battery = imitation.oracle_demonstrations(config, 2)
    days = imitation.training_days(config, 2)
    env = envs.make_batched_env(dataclasses.replace(config, n_envs=len(days)))
    assert env.episode_steps == 192
    assert obs.shape == (2, 192, 4, env.obs_dim) and battery.shape == (2, 192, 4)
    totals, _ = evaluate_policy(env, Replay(battery), days)
    replay = metric_scalars(totals)["community_cost"]
    solver = envs.make_batched_env(dataclasses.replace(config, n_envs=1))
    oracle = np.mean([make_oracle("oracle").solve_episode(solver, day)[0].cost for day in days])
    assert replay == pytest.approx(oracle, rel=1e-4)


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


@pytest.mark.slow
def test_cloning_moves_the_actor_onto_the_optimum(cache):
    config = run_config({"days": 4, "epochs": 200, "minibatch": 128, "lr": 3e-3},
                        hidden_sizes=[64, 64])
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


@pytest.mark.parametrize("algo", ["mappo", "ddpg", "maddpg", "dqn"])
@pytest.mark.parametrize(("key", "value"), [
    ("days", -1), ("days", 400), ("epochs", 0), ("lr", 0), ("minibatch", 0), ("oracle", "lp"),
    ("tie_break", "nearest"), ("tie_break", "true")])
def test_bad_imitation_settings_name_the_key(algo, key, value):
    with pytest.raises(ConfigError, match=rf"'{algo}\.imitation\.{key}'"):
        build_run_config({"algo": algo, "env": ENV}, [f"{algo}.imitation.{key}={value}"])


@pytest.mark.parametrize("algo", ["mappo", "ddpg", "maddpg"])
def test_rule_tie_break_needs_a_rule_in_the_observation(algo):
    config = build_run_config({"algo": algo, "env": ENV, "train": {"n_envs": 2},
                               algo: {"imitation": {"days": 2, "tie_break": "rule"}}})
    env = envs.make_batched_env(config.env)
    cls = registry.get(algo)
    with pytest.raises(ConfigError, match=rf"'{algo}\.imitation\.tie_break'"):
        cls(config.hyperparameters, EnvSpec.from_env(env), config.train, make_generator(0))


def test_rule_demonstrations_stay_nearest_the_rule(cache):
    """tie_break: rule picks, among the optimal schedules, the one nearest to what the rule of
    the observation does: it replays to the optimum's cost and lies closer to the rule's
    battery schedule than the arbitrary vertex and the greedy optimum do."""
    config = dataclasses.replace(run_config().env, observation=dataclasses.replace(
        run_config().env.observation, rule="time_of_use"))
    days = imitation.training_days(config, 3)
    env = envs.make_batched_env(dataclasses.replace(config, n_envs=len(days)))
    rule = imitation._rule_schedules(env, days)  # [D, T, N] kWh
    power = (env.battery_kw * env.dt_h).double().numpy()
    distance = {}
    for tie_break in imitation.TIE_BREAKS:
        _, battery = imitation.oracle_demonstrations(config, 3, tie_break=tie_break)
        distance[tie_break] = float(np.abs(battery.double().numpy() * power - rule).sum())
        if tie_break == "rule":
            totals, _ = evaluate_policy(env, Replay(battery), days)
            solver = envs.make_batched_env(dataclasses.replace(config, n_envs=1))
            oracle = np.mean([make_oracle("oracle").solve_day(solver, day)[0].cost
                              for day in days])
            assert metric_scalars(totals)["community_cost"] == pytest.approx(oracle, rel=1e-4)
    assert distance["rule"] < 0.9 * min(distance["none"], distance["greedy"]), distance
    with pytest.raises(ConfigError, match="env.observation.rule"):
        imitation.oracle_demonstrations(run_config().env, 3, tie_break="rule")


def test_imitation_needs_continuous_actions():
    config = build_run_config({"algo": "mappo", "env": {**ENV, "action": {"type": "discrete"}},
                               "train": {"n_envs": 2},
                               "mappo": {"imitation": {"days": 2}}})
    env = envs.make_batched_env(config.env)
    with pytest.raises(ConfigError, match="mappo.imitation.days"):
        MAPPO(config.hyperparameters, EnvSpec.from_env(env), config.train, make_generator(0))


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["ddpg", "maddpg"])
def test_ddpg_family_clones_into_actor_and_target(cache, algo):
    """One iteration of a cloning DDPG/MADDPG run clones the oracle once: its deterministic
    actions move onto the demonstrations and the target actor equals the actor."""
    config = build_run_config({
        "algo": algo, "seed": 0, "env": ENV,
        "train": {"total_steps": 64, "n_envs": 4, "eval_episodes": 4, "torch_threads": 1},
        algo: {"learning_starts": 0, "batch_size": 64, "hidden_sizes": [64, 64],
               "imitation": {"days": 4, "epochs": 200, "minibatch": 128, "lr": 3e-3}}})
    env = envs.make_batched_env(config.env)
    algorithm = registry.get(algo)(config.hyperparameters, EnvSpec.from_env(env),
                                   config.train, make_generator(0))
    obs, battery = imitation.oracle_demonstrations(config.env, 4)

    def error() -> float:
        action = algorithm.act(obs.reshape(-1, 4, obs.shape[-1]), None, deterministic=True)
        return float((action[..., 0] - battery.reshape(-1, 4)).square().mean())

    before = error()
    scalars = algorithm.iterate(Collector(env, seed=0))
    assert "losses/imitation_loss" in scalars and algorithm.imitated
    assert error() < 0.25 * before
    for online, target in zip(algorithm.actor.parameters(),
                              algorithm.target_actor.parameters(), strict=True):
        torch.testing.assert_close(online, target)
    assert "losses/imitation_loss" not in algorithm.iterate(Collector(env, seed=0))


def test_auto_imitates_the_runs_reference_oracle():
    auto = imitation.ImitationConfig(days=1)
    assert imitation.imitated_oracle(auto, "oracle_network") == "oracle_network"
    assert imitation.imitated_oracle(auto, "oracle") == "oracle"
    assert imitation.imitated_oracle(auto, "none") == "oracle"
    household = imitation.ImitationConfig(days=1, oracle="oracle_household")
    assert imitation.imitated_oracle(household, "oracle_network") == "oracle_household"
    grid = build_run_config({"algo": "mappo", "env": {"task": "Grid-Rebound"}})
    assert imitation.imitated_oracle(grid.hyperparameters.imitation,
                                     grid.train.eval_reference) == "oracle_network"


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["ddpg", "maddpg"])
def test_demonstration_anchor_keeps_the_clone_and_is_reloaded_on_resume(cache, algo):
    """``bc_target: demonstrations``: after cloning, actor updates with a tiny bc_alpha keep
    the actor as near the demonstrations as its clone (the same loss as cloning, residual
    actor included), while plain DDPG updates (bc_alpha null) move it away from them. The
    demonstrations are not checkpointed: a restored algorithm loads the same ones again (from
    the cache) without cloning again."""
    env_config = {**ENV, "observation": {"rule": "time_of_use"}}

    def trained(**section):
        config = build_run_config({
            "algo": algo, "seed": 0, "env": env_config,
            "train": {"total_steps": 64, "n_envs": 4, "eval_episodes": 4, "torch_threads": 1},
            algo: {"learning_starts": 0, "batch_size": 64, "hidden_sizes": [32, 32],
                   "exploration_noise": 0.0, "actor_lr": 1e-3, "policy_frequency": 1,
                   "residual": True,
                   "imitation": {"days": 2, "epochs": 200, "lr": 3e-3, "tie_break": "rule"},
                   **section}})
        env = envs.make_batched_env(config.env)
        cls = registry.get(algo)
        algorithm = cls(config.hyperparameters, EnvSpec.from_env(env), config.train,
                        make_generator(0))
        collector = Collector(env, seed=0)
        algorithm.iterate(collector)  # clones
        obs, battery = imitation.oracle_demonstrations(config.env, 2, tie_break="rule")
        obs, battery = obs.reshape(-1, 4, obs.shape[-1]), battery.reshape(-1, 4)

        def error() -> float:  # mean |battery action - demonstration|
            action = algorithm.act(obs, None, deterministic=True)[..., 0]
            return float((action - battery).abs().mean())

        cloned = error()
        for _ in range(30):
            algorithm.iterate(collector)
        return error() - cloned, algorithm, (config, env, cls, collector)

    anchored, algorithm, (config, env, cls, collector) = trained(
        bc_alpha=1e-3, bc_target="demonstrations")
    free, *_ = trained()
    assert anchored < 0.005 and free > 0.02, (anchored, free)

    demonstrations = algorithm.demonstrations
    assert demonstrations is not None and demonstrations[0].shape[1:] == (4, env.obs_dim)
    assert "demonstrations" not in algorithm.state_dict()
    restored = cls(config.hyperparameters, EnvSpec.from_env(env), config.train,
                   make_generator(1))
    restored.load_state_dict(algorithm.state_dict())
    assert restored.demonstrations is None
    scalars = restored.iterate(collector)
    assert "losses/imitation_loss" not in scalars and "losses/bc_loss" in scalars
    for mine, theirs in zip(restored.demonstrations, demonstrations, strict=True):
        torch.testing.assert_close(mine, theirs)


def test_sets_solved_in_parts_are_the_sets_solved_whole(cache):
    """solve_demonstration_sets splits each set's days between worker processes: the cache
    file it writes holds the arrays, to the bit, of the set solved whole in one process
    (oracle_demonstrations), tie-break references included; a set that fails is reported
    with its error while the others are still stored."""
    config = dataclasses.replace(run_config().env, observation=dataclasses.replace(
        run_config().env.observation, rule="time_of_use"))
    good = (config, 3, "oracle", "rule")
    bad = (run_config().env, 3, "oracle", "rule")  # no rule in the observation to break ties
    outcomes: dict = {}
    imitation.solve_demonstration_sets([bad, good], 2,
                                       lambda index, outcome: outcomes.update({index: outcome}))
    assert isinstance(outcomes[0], ConfigError) and "env.observation.rule" in str(outcomes[0])
    assert isinstance(outcomes[1], float) and outcomes[1] > 0.0
    path = imitation.demonstrations_path(*good)
    with np.load(path) as stored:
        parts = {key: stored[key] for key in ("obs", "battery")}
    path.unlink()
    obs, battery = imitation.oracle_demonstrations(*good)  # solved whole, in this process
    assert parts["battery"].shape == (3, 96, 4) and np.abs(parts["battery"]).max() > 0.1
    assert np.array_equal(parts["obs"], obs.numpy())
    assert np.array_equal(parts["battery"], battery.numpy())
