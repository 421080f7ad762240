"""Policies of a user's own (agents/external.py): the PettingZoo level, the batched level and
stable-baselines3 model files, each scored through evaluate.py's one evaluation path, and
every way one can fail to fit."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import evaluate
from agents.external import (
    PettingZooPolicy,
    detect_sb3_algorithm,
    is_external_spec,
    load_external_policy,
)
from agents.policy import PolicyLoadError
from envs.config import env_config

PLUGINS = Path(__file__).resolve().parent / "plugins"
FILE = f"{PLUGINS / 'peergrid_test_plugins.py'}"
"""The fixture policies as a file spec target (path/to/file.py)."""
MODULE = "peergrid_test_plugins"
"""The same file as a module spec target (importable once PLUGINS is on sys.path)."""

CONFIG = {"community": {"feeder": "synthetic", "n_agents": 5, "battery_share": 0.6},
          "network": {"model": "none"}, "observation": {"rule": "self_consumption"}}
"""A 5-agent community whose observations end with the self-consumption rule's battery
fraction, which the fixture rule followers act on."""
DAYS = [6, 13]


@pytest.fixture
def on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))


@pytest.fixture(scope="module")
def evaluator() -> evaluate.Evaluator:
    return evaluate.Evaluator(env_config(CONFIG), DAYS, batch_size=2)


@pytest.fixture
def config_path(tmp_path) -> Path:
    path = tmp_path / "env.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


def assert_same_results(result: evaluate.PolicyResult, reference: evaluate.PolicyResult):
    assert result.mechanism == reference.mechanism
    assert set(result.per_day) == set(reference.per_day)
    for key, values in reference.per_day.items():
        np.testing.assert_array_equal(result.per_day[key], values, err_msg=key)
    for key, values in reference.totals.agent.items():
        torch.testing.assert_close(result.totals.agent[key], values, rtol=0, atol=0,
                                   equal_nan=True, msg=key)


@pytest.mark.usefixtures("on_path")
@pytest.mark.parametrize("spec, builtin", [
    (f"{FILE}:RuleFollower", "self_consumption"),
    (f"{MODULE}:RuleFollower:price=0.7", "fixed_price:price_fraction=0.7"),
    (f"{MODULE}:rule_follower:price=0.7", "fixed_price:price_fraction=0.7"),
    (f"{FILE}:NoMarket", "no_p2p"),
    (f"{MODULE}:BatchedRuleFollower", "self_consumption"),
    (f"{FILE}:BatchedRuleFollower:price=0.7", "fixed_price:price_fraction=0.7"),
])
def test_a_policy_of_ones_own_scores_as_the_builtin_rule_it_copies(evaluator, spec, builtin):
    """A PettingZoo-level callable (class or function, from a file or a module) or a batched
    object acting as a built-in rule gives that rule's numbers exactly, every metric of every
    day, under the mechanism it asks for (NoMarket: ``none``, as ``no_p2p``)."""
    result = evaluator.run(spec)
    assert result.name == spec
    assert_same_results(result, evaluator.run(builtin))


def test_the_readme_rule_scores_the_same_at_both_levels(evaluator):
    """The README's rule, written per agent on observation dicts and on the batch tensor,
    gives the same numbers: the two adapters see the same observations and the actions
    reach the core the same way."""
    rules = PLUGINS / "readme_rules.py"
    per_agent = evaluator.run(f"{rules}:SunnyDiscount:discount=0.2")
    batched = evaluator.run(f"{rules}:SunnyDiscountBatched:discount=0.2")
    assert_same_results(per_agent, batched)
    assert per_agent.per_day["p2p_volume_kwh"].min() > 0.0  # it trades


def test_the_adapter_gives_the_pettingzoo_envs_observations(evaluator):
    """What a PettingZoo-level policy sees is what ``envs.make_env`` gives on the same day:
    the agent names, float32 arrays of the observation space's shape, the same values."""
    import envs

    policy = load_external_policy(f"{FILE}:RuleFollower")
    assert isinstance(policy, PettingZooPolicy)
    core = envs.make_batched_env(CONFIG, n_envs=1)
    obs, _ = core.reset(seed=3, days=[13])
    policy.reset(core)
    [seen] = policy.observations(obs)
    env = envs.make_env(CONFIG, engine="torch")
    expected, _ = env.reset(seed=3, options={"day": 13})
    assert list(seen) == env.possible_agents == list(expected)
    for agent, value in expected.items():
        assert seen[agent].dtype == value.dtype == np.float32
        assert env.observation_space(agent).contains(seen[agent])
        np.testing.assert_array_equal(seen[agent], value)


def test_a_pettingzoo_level_policy_taking_infos_gets_the_pettingzoo_envs_infos():
    """A policy with an ``infos`` parameter is given, with each observation dict, the infos
    the PettingZoo env gives beside it (its reset infos, then each step's): the same keys and
    values as ``envs.make_env`` on the same day, seed and actions, for each environment of a
    batch; its actions depend on them (it trades differently once prices are seen)."""
    import envs
    from agents.evaluation import evaluate_policy

    policy = load_external_policy(f"{FILE}:InfoRecorder")
    assert isinstance(policy, PettingZooPolicy) and policy.takes_infos
    core = envs.make_batched_env(CONFIG, n_envs=2)
    evaluate_policy(core, policy, DAYS, seed=5)
    for b, day in enumerate(DAYS):
        recorded = policy._copies[b].seen
        assert len(recorded) == core.episode_steps
        env = envs.make_env(CONFIG, engine="torch")
        obs, infos = env.reset(seed=5 + b, options={"day": day})
        twin = type(policy._copies[b])()
        for step, seen in enumerate(recorded):
            assert list(seen) == env.possible_agents, step
            for agent, info in infos.items():
                np.testing.assert_array_equal(np.array(list(seen[agent].values())),
                                              np.array(list(info.values())), err_msg=step)
                assert list(seen[agent]) == list(info)
            obs, _, _, _, infos = env.step(twin(obs, infos))
        assert np.isnan(recorded[0]["prosumer_0"]["clearing_price"])
        assert recorded[0]["prosumer_0"]["day"] == day


@pytest.mark.usefixtures("on_path")
def test_a_function_with_options_and_infos_scores_as_without(evaluator):
    spec = f"{MODULE}:info_rule:price=0.7"
    assert evaluator.policy(spec).takes_infos
    assert_same_results(evaluator.run(spec), evaluator.run(f"{MODULE}:rule_follower:price=0.7"))


def test_each_environment_gets_its_own_copy_of_a_stateful_policy(evaluator):
    """A policy counting its calls since ``reset()`` sees one community's 96 steps per
    episode, though the batch steps two communities at once."""
    spec = f"{FILE}:EpisodeCounter"
    evaluator.run(spec)
    assert evaluator.policy(spec).policy.calls == 0  # the original is never stepped


def test_external_specs_are_told_apart_from_runs_and_builtins():
    for spec in ("my_pkg.mod:MyPolicy", "path/to/rule.py:Rule:price=0.7", "sb3:model.zip",
                 "sb3:ppo:runs/model.zip"):
        assert is_external_spec(spec) and not evaluate.is_run_spec(spec), spec
    for spec in ("zi", "fixed_price:price_fraction=0.7", "fixed_price:0.7", "runs/x/",
                 "oracle"):
        assert not is_external_spec(spec), spec


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("on_path")
@pytest.mark.parametrize("spec, message", [
    (f"{PLUGINS / 'broken_plugin.py'}:Policy", "No module named 'peergrid_missing_dependency'"),
    ("peergrid_no_such_module:Policy", "cannot import 'peergrid_no_such_module'"),
    (f"{MODULE}:Nope", "has no attribute 'Nope'; it defines ["),
    (f"{FILE}:not_a_policy", "neither callable nor has an act method"),
    (f"{FILE}:ActTakesThree", "ActTakesThree.act takes neither (obs, env) nor (obs)"),
    (f"{FILE}:RuleFollower:colour=red", "does not take the arguments {'colour': 'red'}"),
    (f"{FILE}:RuleFollower:red", "option 'red' is not key=value"),
    ("missing/rule.py:Rule", "no Python file at 'missing/rule.py'"),
    ("sb3:missing/model.zip", "no model file at 'missing/model.zip'"),
    (f"sb3:{FILE}", "cannot load"),
    (f"sb3:xyz:{FILE}", "unknown SB3 algorithm 'xyz'"),
])
def test_a_spec_that_cannot_be_loaded_stops_before_anything_runs(spec, message, config_path,
                                                                 tmp_path, capsys):
    with pytest.raises(PolicyLoadError, match="policy '"):
        load_external_policy(spec)
    out = tmp_path / "out"
    assert evaluate.main(["--config", str(config_path), "--policies", f"zi,{spec}",
                          "--days", "6", "--no-progress", "--no-plots", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("name, message", [
    ("WrongShape", "every agent's action must have the shape of its action space (2,)"),
    ("MissingAgent", "missing ['prosumer_4']"),
    ("OutOfBounds", "action of agent 'prosumer_0' is [2.0, 0.5]; allowed: [battery fraction "
                    "in [-1, 1]"),
    ("Raises", "RuntimeError: my policy broke (at "),
    ("BatchedWrongAgents", "act returned shape [1, 4, 2], dtype torch.float32; expected a "
                           "tensor of shape [1, 5, 2]"),
])
def test_a_failing_policy_is_reported_and_the_others_are_scored(name, message, config_path,
                                                                tmp_path, capsys):
    spec = f"{FILE}:{name}"
    out = tmp_path / "out"
    assert evaluate.main(["--config", str(config_path), "--policies", f"{spec},no_p2p",
                          "--days", "6", "--no-progress", "--no-plots", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"policy '{spec}' failed" in err and message in err, err
    if name == "Raises":
        assert "peergrid_test_plugins.py:" in err  # the line of the user's code that raised
    report = json.loads((out / "results.json").read_text())
    assert [row["policy"] for row in report["results"]] == ["no_p2p"]
    assert [entry["policy"] for entry in report["failed"]] == [spec]
    assert message in report["failed"][0]["error"]


# --------------------------------------------------------------------------------------------
# stable-baselines3
# --------------------------------------------------------------------------------------------


SB3_CONFIG = {key: value for key, value in CONFIG.items() if key != "observation"}
"""The community without the rule feature (12 observed features)."""


@pytest.fixture(scope="module")
def ppo_model(tmp_path_factory) -> Path:
    """A PPO model trained briefly on ``envs.make_vec_env`` (2 envs x 5 agents), saved."""
    from stable_baselines3 import PPO

    import envs

    vec_env = envs.make_vec_env(SB3_CONFIG, n_envs=2, step_infos=False)
    vec_env.seed(0)
    model = PPO("MlpPolicy", vec_env, n_steps=16, batch_size=80, n_epochs=2, seed=0,
                policy_kwargs={"net_arch": [16]}, device="cpu")
    model.learn(320)
    path = tmp_path_factory.mktemp("sb3") / "ppo_model.zip"
    model.save(path)
    return path


def _direct_rollout(path: Path, days: list[int]) -> np.ndarray:
    """Each day's community cost of the saved model acting through the VecEnv itself
    (``model.predict`` on its observations, the VecEnv's own action mapping)."""
    from stable_baselines3 import PPO

    import envs

    model = PPO.load(path, device="cpu")
    vec_env = envs.make_vec_env(SB3_CONFIG, n_envs=len(days), step_infos=False)
    obs, _ = vec_env.core.reset(seed=0, days=days)
    obs = obs.reshape(vec_env.num_envs, -1).numpy()
    cost = np.zeros(len(days))
    for _ in range(vec_env.core.episode_steps):
        action, _ = model.predict(obs, deterministic=True)
        obs, _, _, _ = vec_env.step(action)
        cost += vec_env.last_info["community_cost"].double().numpy()
    return cost


def test_sb3_model_round_trip_from_the_command_line(ppo_model, tmp_path):
    """Trained on the VecEnv, saved, scored by ``evaluate.py --policies sb3:...``: the row is
    in results.csv, and its costs are the model's own rollout on the VecEnv."""
    config = tmp_path / "env.yaml"
    config.write_text(yaml.safe_dump(SB3_CONFIG))
    out = tmp_path / "out"
    specs = [f"sb3:{ppo_model}", f"sb3:ppo:{ppo_model}"]
    assert evaluate.main(["--config", str(config), "--policies", ",".join(["zi", *specs]),
                          "--days", ",".join(map(str, DAYS)), "--no-progress", "--no-plots",
                          "--out", str(out)]) == 0
    with (out / "results.csv").open() as handle:
        rows = {row["policy"]: row for row in csv.DictReader(handle)}
    assert set(specs) <= set(rows)
    report = json.loads((out / "results.json").read_text())
    direct = _direct_rollout(ppo_model, DAYS)
    for spec in specs:
        np.testing.assert_allclose(report["per_day"][f"{spec}@uniform"]["community_cost"],
                                   direct, rtol=1e-6)
        assert float(rows[spec]["community_cost_mean"]) == pytest.approx(direct.mean(),
                                                                         rel=1e-6)


def test_an_sb3_file_whose_algorithm_cannot_be_told_must_name_it(ppo_model, tmp_path):
    """A model file whose saved data has none of the attributes that tell the algorithms
    apart is refused with the spec that names the algorithm; the same data with them is
    told to be PPO."""
    import zipfile

    edited = tmp_path / "model.zip"
    with zipfile.ZipFile(ppo_model) as source, zipfile.ZipFile(edited, "w") as target:
        for item in source.infolist():
            content = source.read(item)
            if item.filename == "data":
                data = json.loads(content)
                assert detect_sb3_algorithm(data) == "ppo"
                for key in ("clip_range", "n_steps"):
                    data.pop(key)
                assert detect_sb3_algorithm(data) is None
                content = json.dumps(data).encode()
            target.writestr(item, content)
    with pytest.raises(PolicyLoadError, match=rf"cannot tell which SB3 algorithm saved "
                                              rf"'{edited}'; name it: sb3:<algo>:{edited}"):
        load_external_policy(f"sb3:{edited}")


@pytest.mark.parametrize("override, message", [
    ("observation.rule=self_consumption", "observation space Box(-inf, inf, (12,), float32), "
                                          "envs.make_vec_env of the evaluated config has "
                                          "Box(-inf, inf, (13,), float32)"),
    ("action.type=discrete", "action space Box(-1.0, 1.0, (2,), float32)"),
])
def test_sb3_model_of_another_layout_is_refused(ppo_model, tmp_path, override, message,
                                                capsys):
    config = tmp_path / "env.yaml"
    config.write_text(yaml.safe_dump(SB3_CONFIG))
    spec = f"sb3:{ppo_model}"
    assert evaluate.main(["--config", str(config), "--policies", f"no_p2p,{spec}", "--days",
                          "6", "--no-progress", "--no-plots", "--out", str(tmp_path / "out"),
                          override]) == 2
    err = capsys.readouterr().err
    assert f"policy '{spec}' failed: " in err and message in err, err
