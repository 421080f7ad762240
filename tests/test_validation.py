"""train.validation_days: the final policy against the untrained one (and, with
train.validation_every, the policies of the run's validations) on training days that are
neither test days nor imitation demonstrations; the run keeps the best one, and keeping the
final one changes nothing (short runs on a 4-agent synthetic community)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from run_records import assert_same, run_metrics, tensorboard_scalars

import train
from agents import registry
from agents.checkpoints import load_checkpoint
from agents.imitation import training_days
from agents.run_config import build_run_config, validation_days
from envs.config import ConfigError
from envs.data import day_split
from envs.tasks import task_names

ITERATION = 8 * 16
"""Env-steps per MAPPO iteration of the small config: n_envs * rollout_steps."""

SYNTHETIC = {"community": {"feeder": "synthetic", "n_agents": 4}, "network": {"model": "none"}}
DISCRETE = ("dqn", "qlearning", "sb3_dqn")
UPDATES_FROM_THE_START = {"mappo": {"rollout_steps": 16}, "qlearning": {"rollout_steps": 16},
                          "ddpg": {"learning_starts": 64}, "maddpg": {"learning_starts": 64},
                          "dqn": {"learning_starts": 64}, "sb3_td3": {"learning_starts": 64},
                          "sb3_dqn": {"learning_starts": 64}}


def residual_config(**train_keys) -> dict:
    """MAPPO acting as a residual on the self-consumption rule: untrained, it is the rule."""
    return {
        "algo": "mappo", "seed": 3, "name": "validation",
        "env": {**SYNTHETIC, "observation": {"rule": "self_consumption"}},
        "train": {"total_steps": 4 * ITERATION, "n_envs": 8, "eval_every": 0,
                  "eval_episodes": 4, "checkpoint_every": 2 * ITERATION, "torch_threads": 1,
                  "validation_days": 6, **train_keys},
        "mappo": {"rollout_steps": 16, "hidden_sizes": [32, 32], "update_epochs": 2,
                  "n_minibatches": 2, "residual": True},
    }


def test_validation_days_are_training_days_without_demonstrations():
    data = {"algo": "ddpg", "seed": 0, "env": SYNTHETIC,
            "train": {"validation_days": 40},
            "ddpg": {"imitation": {"days": 60}}}
    config = build_run_config(data)
    days = validation_days(config)
    train_split, test_split = day_split(config.env.episode.test_every)
    assert len(days) == len(set(days)) == 40 and days == sorted(days)
    assert set(days) <= set(train_split.tolist())
    assert not set(days) & set(test_split.tolist())
    assert not set(days) & set(training_days(config.env, 60))
    assert days == validation_days(build_run_config(data))  # always the same ones
    # without imitation every training day is a candidate: the spread starts at the first
    plain = build_run_config({**data, "ddpg": {}})
    assert validation_days(plain)[0] == int(train_split[0])


@pytest.mark.parametrize(("value", "allowed"), [(-1, ">= 0"), (400, "at most the 254 training")])
def test_bad_validation_days_name_the_key(value, allowed):
    data = {"algo": "ddpg", "seed": 0, "env": SYNTHETIC, "train": {"validation_days": value},
            "ddpg": {"imitation": {"days": 60}}}
    with pytest.raises(ConfigError, match="train.validation_days") as error:
        build_run_config(data)
    assert allowed in str(error.value)


@pytest.mark.parametrize(("train_keys", "allowed"), [
    ({"validation_days": 6, "validation_every": -1}, ">= 0"),
    ({"validation_every": 1000}, "0 with train.validation_days=0")])
def test_bad_validation_intervals_name_the_key(train_keys, allowed):
    data = {"algo": "ddpg", "seed": 0, "env": SYNTHETIC, "train": train_keys}
    with pytest.raises(ConfigError, match="train.validation_every") as error:
        build_run_config(data)
    assert allowed in str(error.value)


def test_shipped_configs_with_validation_fall_back_to_a_rule_on_every_task():
    """A shipped config that sets train.validation_days acts as a residual on a rule, so the
    policy it may fall back to is that rule (not an untrained network), and its days fit on
    every task of the suite: training days, none of them a test or demonstration day."""
    configs = Path(__file__).resolve().parents[1] / "configs"
    validated = []
    for path in sorted(configs.glob("*.yaml")):
        config = build_run_config(path)
        if not config.train.validation_days:
            continue
        validated.append(path.stem)
        section = config.hyperparameters
        assert section.residual and config.env.observation.rule, path.name
        # early stopping: several validations during training, not only at the end
        assert 0 < 2 * config.train.validation_every <= config.train.total_steps, path.name
        # and a line search over the residual's scale after training
        assert config.train.validation_residual_scales, path.name
        for task in task_names():
            on_task = build_run_config(path, train.task_overrides(task, []))
            days = validation_days(on_task)
            test_split = day_split(on_task.env.episode.test_every)[1]
            demonstrations = training_days(on_task.env, section.imitation.days)
            assert len(set(days)) == on_task.train.validation_days, (path.name, task)
            assert not set(days) & (set(test_split.tolist()) | set(demonstrations))
    assert {"mappo_imitation", "maddpg_imitation", "ddpg_imitation"} <= set(validated)


def test_a_worse_final_policy_gives_way_to_the_untrained_one(tmp_path, monkeypatch):
    """Training that wrecks the residual (its actor weights scaled by 30 after every
    iteration) ends worse than the rule it started as on the validation days: the run keeps
    the untrained parameters, and its final evaluation is the step-0 one (the same policy on
    the same test days)."""
    real_iterate = registry.get("mappo").iterate

    def wrecking_iterate(self, collector):
        scalars = real_iterate(self, collector)
        with torch.no_grad():
            for parameter in self.actor.parameters():
                parameter.mul_(30.0)
        return scalars

    monkeypatch.setattr(registry.get("mappo"), "iterate", wrecking_iterate)
    config = build_run_config(residual_config())
    run_dir = train.new_run_dir(tmp_path, config)
    trainer = train.Trainer(config, run_dir, progress=False)
    untrained = {key: value.clone() for key, value in trainer.algorithm.actor.state_dict().items()}
    metrics = trainer.run()
    validation = metrics["validation"]
    assert validation["kept"] == "initial"
    assert validation["initial_return"] > validation["final_return"]
    assert validation["days"] == validation_days(config)
    final = load_checkpoint(run_dir)["algorithm"]["actor"]
    for key, value in untrained.items():
        assert torch.equal(final[key], value), key
    curves = tensorboard_scalars(run_dir, speed=False)
    step0 = dict(curves["eval/episodic_return"])[0]
    assert metrics["final_eval"]["episodic_return"] == pytest.approx(step0, rel=1e-6)
    assert curves["validation/kept_initial"] == [(metrics["global_step"], 1.0)]
    assert "keeps the initial policy" in train.summary_text(run_dir, metrics, tmp_path)


@pytest.mark.parametrize("algo", registry.names())
def test_keeping_the_final_policy_changes_nothing(tmp_path, monkeypatch, algo):
    """Where the final policy wins (forced here: the real validation episodes are played, the
    returns of the untrained policy and of those validated during training, every
    ``train.validation_every`` env-steps, are lowered), the run ends in the same state, bit
    for bit, with the same final evaluation as a run without validation: validation uses its
    own environment and no random stream of training, and loads nothing."""
    if algo.startswith("sb3_"):
        pytest.importorskip("stable_baselines3")
    real_return = train.Trainer._validation_return
    calls = []

    def final_wins(self):
        calls.append(real_return(self))
        final = self.collector.global_step >= self.config.train.total_steps
        return calls[-1] - (0.0 if final else 1e9)

    monkeypatch.setattr(train.Trainer, "_validation_return", final_wins)
    states, finals = [], []
    for days in (3, 0):
        calls.clear()
        data = {"algo": algo, "seed": 5, "name": "validation",
                "env": {**SYNTHETIC,
                        "action": {"type": "discrete" if algo in DISCRETE else "continuous"}},
                "train": {"total_steps": 4 * ITERATION, "n_envs": 8, "eval_every": 0,
                          "eval_episodes": 2, "checkpoint_every": 0, "torch_threads": 1,
                          "validation_days": days, "validation_every": ITERATION if days else 0},
                **({algo: UPDATES_FROM_THE_START[algo]} if algo in UPDATES_FROM_THE_START
                   else {})}
        config = build_run_config(data)
        run_dir = train.new_run_dir(tmp_path / str(days), config)
        metrics = train.Trainer(config, run_dir, progress=False).run()
        assert ("validation" in metrics) == bool(days)
        if days:
            validation = metrics["validation"]
            assert validation["kept"] == "final"
            assert validation["kept_step"] == metrics["global_step"]
            # the untrained policy, at least one during training, the final one
            assert len(calls) == 1 + len(validation["returns"]) >= 3
            assert all(value == value for value in calls)  # real, finite returns
        checkpoint = load_checkpoint(run_dir)
        state = {key: checkpoint[key] for key in ("algorithm", "collector", "generator")}
        if isinstance(state["algorithm"].get("model"), bytes):  # stable-baselines3's zip
            from test_train import _zip_members

            state["algorithm"]["model"] = _zip_members(state["algorithm"]["model"])
        states.append(state)
        finals.append(metrics["final_eval"])
    assert_same(states[0], states[1])
    assert finals[0] == finals[1]


def test_resume_validates_against_the_same_untrained_policy(tmp_path):
    """An interrupted run resumed with --resume compares with the policy the run started with
    (kept in its checkpoints), and ends as the uninterrupted run."""
    config = build_run_config(residual_config())
    whole = train.new_run_dir(tmp_path / "whole", config)
    train.Trainer(config, whole, progress=False).run()
    parts = train.new_run_dir(tmp_path / "parts", config)
    assert train.Trainer(config, parts, progress=False).run(
        stop_after_steps=3 * ITERATION) is None
    assert "initial_algorithm" in load_checkpoint(parts)
    # a checkpoint to act from does not carry it
    assert "initial_algorithm" not in load_checkpoint(parts / "checkpoint_best.pt")
    assert train.main(["--resume", str(parts), "--no-progress"]) == 0
    assert run_metrics(whole) == run_metrics(parts)
    assert "validation" in run_metrics(whole)


def test_the_best_policy_validated_during_training_is_kept(tmp_path, monkeypatch):
    """With train.validation_every the policy of a validation during training that beats the
    untrained one and every later one (the final one included) is what the run ends with:
    its parameters in checkpoint_latest.pt, the final evaluation of that policy, and the
    record naming its env-step. The returns are scripted by env-step; the policies are
    the run's own."""
    scripted = {0: 0.0, 2 * ITERATION: 5.0, 3 * ITERATION: 4.0}  # else 1.0, the final one too
    actors: dict[int, dict] = {}

    def by_step(self):
        step = self.collector.global_step
        actors[step] = {key: value.clone()
                        for key, value in self.algorithm.actor.state_dict().items()}
        return scripted.get(step, 1.0)

    monkeypatch.setattr(train.Trainer, "_validation_return", by_step)
    config = build_run_config(residual_config(validation_every=ITERATION, eval_every=ITERATION))
    run_dir = train.new_run_dir(tmp_path, config)
    metrics = train.Trainer(config, run_dir, progress=False).run()
    validation = metrics["validation"]
    assert validation["kept"] == "intermediate" and validation["kept_step"] == 2 * ITERATION
    assert validation["returns"] == [[ITERATION, 1.0], [2 * ITERATION, 5.0],
                                     [3 * ITERATION, 4.0], [4 * ITERATION, 1.0]]
    assert sorted(actors) == [0, ITERATION, 2 * ITERATION, 3 * ITERATION, 4 * ITERATION]
    final = load_checkpoint(run_dir)["algorithm"]["actor"]
    for key, value in actors[2 * ITERATION].items():
        assert torch.equal(final[key], value), key
    assert any(not torch.equal(value, actors[4 * ITERATION][key])  # training moved on
               for key, value in actors[2 * ITERATION].items())
    # the final evaluation scores the kept policy: the same as its evaluation at that step
    curves = tensorboard_scalars(run_dir, speed=False)
    evaluations = dict(curves["eval/episodic_return"])
    assert metrics["final_eval"]["episodic_return"] == pytest.approx(
        evaluations[2 * ITERATION], rel=1e-6)
    assert metrics["final_eval"]["episodic_return"] != pytest.approx(
        [value for step, value in curves["eval/episodic_return"]
         if step == 4 * ITERATION][0], rel=1e-6)
    assert curves["validation/kept_step"] == [(4 * ITERATION, 2.0 * ITERATION)]
    assert "intermediate policy of env-step 256" in train.summary_text(run_dir, metrics, tmp_path)


def test_resume_keeps_the_policy_validated_before_the_interruption(tmp_path, monkeypatch):
    """The best policy validated before an interruption travels in checkpoint_latest.pt: the
    resumed run ends with it, as the uninterrupted run does."""
    monkeypatch.setattr(train.Trainer, "_validation_return",
                        lambda self: {ITERATION: 5.0}.get(self.collector.global_step, 1.0))
    config = build_run_config(residual_config(validation_every=ITERATION))
    whole = train.new_run_dir(tmp_path / "whole", config)
    train.Trainer(config, whole, progress=False).run()
    parts = train.new_run_dir(tmp_path / "parts", config)
    assert train.Trainer(config, parts, progress=False).run(
        stop_after_steps=3 * ITERATION) is None
    assert "validated_algorithm" in load_checkpoint(parts)  # written at 2 * ITERATION
    assert train.main(["--resume", str(parts), "--no-progress"]) == 0
    assert run_metrics(whole) == run_metrics(parts)
    assert run_metrics(whole)["validation"]["kept_step"] == ITERATION
    assert_same(load_checkpoint(whole)["algorithm"], load_checkpoint(parts)["algorithm"])


@pytest.mark.parametrize(("train_keys", "allowed"), [
    ({"validation_days": 6, "validation_residual_scales": [1.0]}, "other than 1"),
    ({"validation_days": 6, "validation_residual_scales": [0.5, 0.5]}, "distinct"),
    ({"validation_days": 6, "validation_residual_scales": [0.0]}, "> 0"),
    ({"validation_days": 6, "validation_residual_scales": [float("inf")]}, "finite"),
    ({"validation_residual_scales": [0.5]}, "[] with train.validation_days=0")])
def test_bad_residual_scales_name_the_key(train_keys, allowed):
    data = {"algo": "ddpg", "seed": 0, "env": SYNTHETIC, "train": train_keys}
    with pytest.raises(ConfigError, match="train.validation_residual_scales") as error:
        build_run_config(data)
    assert allowed in str(error.value)


@pytest.mark.parametrize("algo", ["mappo", "dqn"])
def test_residual_scales_need_a_residual_policy(algo):
    """Refused when the config is built, before any run folder exists: MAPPO without
    ``residual``, and DQN, which has no residual option."""
    data = residual_config(validation_residual_scales=[0.5])
    if algo == "mappo":
        data["mappo"] = {**data["mappo"], "residual": False}
    else:
        data = {**{key: value for key, value in data.items() if key != "mappo"}, "algo": algo}
        data["env"] = {**data["env"], "action": {"type": "discrete"}}
    with pytest.raises(ConfigError, match="train.validation_residual_scales") as error:
        build_run_config(data)
    assert "mappo, ddpg, maddpg" in str(error.value)


def _residual_run(algo: str, **train_keys) -> dict:
    """``algo`` as a residual on the self-consumption rule (DDPG with one network per agent,
    to cover ``PerAgentMLP``), on the small synthetic community."""
    if algo == "mappo":
        return residual_config(**train_keys)
    data = residual_config(**train_keys)
    del data["mappo"]
    return {**data, "algo": algo,
            algo: {"learning_starts": 64, "hidden_sizes": [32, 32], "residual": True,
                   "parameter_sharing": False}}


@pytest.mark.parametrize("algo", ["mappo", "ddpg"])
def test_a_scaled_residual_scores_between_the_rule_and_the_policy(tmp_path, algo):
    """Scale 0 of a trained residual is the rule itself (the same actions as the untrained
    policy), scale 1 the trained policy, and a scale s multiplies the learned part of the
    actor's output (before the squash) by s."""
    from agents.networks import scale_output

    config = build_run_config(_residual_run(algo, validation_days=0))
    trainer = train.Trainer(config, train.new_run_dir(tmp_path, config), progress=False)
    obs = trainer.collector.obs
    rule = trainer.algorithm.act(obs, trainer.env.state(), deterministic=True)
    trainer.run()
    network = trainer.algorithm.residual_network()
    trained = trainer.algorithm.act(obs, trainer.env.state(), deterministic=True)
    assert not torch.allclose(trained, rule)  # training moved the policy off the rule
    residual = network(obs.float()).clone()
    scale_output(network, 0.5)
    torch.testing.assert_close(network(obs.float()), 0.5 * residual)
    scale_output(network, 0.0)
    torch.testing.assert_close(trainer.algorithm.act(obs, trainer.env.state(), deterministic=True),
                               rule)


@pytest.mark.parametrize("algo", ["mappo", "ddpg"])
def test_the_best_scaled_residual_is_kept(tmp_path, monkeypatch, algo):
    """The returns are scripted from the residual's size (its output layer's norm against the
    final policy's): best at half the final residual. With the scales [0.25, 0.5, 2.0] the run
    ends with the final parameters whose output layer is halved (every other tensor as
    trained), records every scale's return, logs the scale and names it in the summary; the
    rule and the unscaled policy tie."""
    from agents.networks import output_layer

    norms = []

    def by_residual_size(self):
        norms.append(float(output_layer(self.algorithm.residual_network())[0].detach().norm()))
        if self.collector.global_step < self.config.train.total_steps:
            return -0.25  # the untrained policy (the rule: a residual of size 0)
        final = next(norm for norm in norms if norm > 0.0)  # the first validated at the end
        return -(norms[-1] / final - 0.5) ** 2

    monkeypatch.setattr(train.Trainer, "_validation_return", by_residual_size)
    config = build_run_config(_residual_run(algo, validation_residual_scales=[0.25, 0.5, 2.0]))
    run_dir = train.new_run_dir(tmp_path, config)
    trainer = train.Trainer(config, run_dir, progress=False)
    real_validate = trainer.validate
    trained = {}

    def remember_final():
        trained.update({key: value.clone() for key, value
                        in trainer.algorithm.residual_network().state_dict().items()})
        return real_validate()

    trainer.validate = remember_final
    metrics = trainer.run()
    validation = metrics["validation"]
    assert validation["kept"] == "scaled" and validation["residual_scale"] == 0.5
    assert validation["kept_step"] == metrics["global_step"]
    assert validation["final_return"] == pytest.approx(-0.25)
    assert [scale for scale, _ in validation["scaled_returns"]] == [0.25, 0.5, 2.0]
    assert [value for _, value in validation["scaled_returns"]] == pytest.approx(
        [-0.0625, 0.0, -2.25])
    kept = load_checkpoint(run_dir)["algorithm"]["actor"]
    weight, bias = output_layer(trainer.algorithm.residual_network())
    layer_names = {name for name, parameter
                   in trainer.algorithm.residual_network().named_parameters()
                   if parameter is weight or parameter is bias}
    assert len(layer_names) == 2
    for key, value in trained.items():
        expected = 0.5 * value if key in layer_names else value
        assert torch.equal(kept[key], expected), key
    curves = tensorboard_scalars(run_dir, speed=False)
    assert curves["validation/residual_scale"] == [(metrics["global_step"], 0.5)]
    assert "residual scaled by 0.5" in train.summary_text(run_dir, metrics, tmp_path)


def test_the_line_search_scales_the_best_policy_validated_during_training(tmp_path, monkeypatch):
    """Where a policy validated during training beat the final one, the scales apply to it:
    the kept parameters are that policy's with its output layer scaled, and the record names
    its env-step."""
    from agents.networks import output_layer

    layers: list[dict] = []

    def scripted(self):
        step = self.collector.global_step
        weight, bias = output_layer(self.algorithm.residual_network())
        layers.append({"step": step, "weight": weight.detach().clone()})
        if step < self.config.train.total_steps:
            return {0: 0.0, 2 * ITERATION: 5.0}.get(step, 1.0)
        return 1.0 if sum(entry["step"] == step for entry in layers) == 1 else 6.0

    monkeypatch.setattr(train.Trainer, "_validation_return", scripted)
    config = build_run_config(residual_config(validation_every=ITERATION,
                                              validation_residual_scales=[0.5]))
    run_dir = train.new_run_dir(tmp_path, config)
    trainer = train.Trainer(config, run_dir, progress=False)
    metrics = trainer.run()
    validation = metrics["validation"]
    assert validation["kept"] == "scaled" and validation["kept_step"] == 2 * ITERATION
    assert validation["scaled_returns"] == [[0.5, 6.0]]
    intermediate = next(entry["weight"] for entry in layers if entry["step"] == 2 * ITERATION)
    final = next(entry["weight"] for entry in layers
                 if entry["step"] == metrics["global_step"])
    assert not torch.equal(intermediate, final)
    kept = output_layer(trainer.algorithm.residual_network())[0].detach()
    assert torch.equal(kept, 0.5 * intermediate)
    assert "policy of env-step 256 with its residual scaled by 0.5" in train.summary_text(
        run_dir, metrics, tmp_path)
