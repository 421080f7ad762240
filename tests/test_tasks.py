"""envs/tasks.py: every task of the suite builds and steps, its YAML holds the issue's
overrides, an unknown name lists the valid ones, and the ``--task`` entry points of
train.py (through ``agents.run_config.resolve_env``) and evaluate.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import evaluate
import train
from agents.baselines import ORACLES
from agents.run_config import build_run_config
from envs import make_batched_env
from envs.config import ConfigError
from envs.tasks import TASKS, get_task, task_env_config, task_names

ROOT = Path(__file__).resolve().parents[1]

STRONG = [0.12] * 6 + [0.28] * 11 + [0.50] * 4 + [0.28] + [0.12] * 2
"""The issue's STRONG hourly retail tariff, currency/kWh."""

EXPECTED = {  # task: (feeder, agents, community overrides, STRONG tariff?, oracle)
    "Flat": ("1-LV-rural1--0-sw", 13, {}, False, "oracle"),
    "TOU-Arbitrage": ("1-LV-rural1--0-sw", 13, {"battery_share": 1.0}, True, "oracle"),
    "Peak-Storage": ("1-LV-rural1--0-sw", 13,
                     {"battery_share": 1.0, "battery_kwh_per_mwh": 2.5}, True, "oracle"),
    "Urban-Scale": ("1-LV-urban6--0-sw", 111, {"battery_share": 1.0}, True, "oracle"),
    "Grid-Rebound": ("1-LV-semiurb4--0-sw", 41,
                     {"battery_share": 1.0, "battery_kwh_per_mwh": 2.5}, True,
                     "oracle_network"),
    "PV-Hosting": ("1-LV-semiurb4--0-sw", 41,
                   {"pv_share": 1.0, "pv_kwp_per_mwh": 2.0, "battery_share": 1.0,
                    "battery_kwh_per_mwh": 2.5}, False, "oracle_network"),
}


def test_the_suite_is_the_issues_table():
    assert task_names() == list(EXPECTED)
    default = task_env_config("Flat")
    for name, (feeder, _, community, strong, oracle) in EXPECTED.items():
        task = get_task(name)
        assert task.config_path.is_file() and task.config_path.parent == ROOT / "configs" / "tasks"
        assert task.description and task.oracle == oracle and oracle in ORACLES
        text = task.config_path.read_text()
        assert text.startswith(f"# Task {name} ")  # each task YAML is commented
        config = task_env_config(name)
        assert config.community.feeder == feeder
        for key, value in community.items():
            assert getattr(config.community, key) == value, (name, key)
        retail, feed_in = config.tariff.hourly()
        assert retail == (STRONG if strong else [0.30] * 24)
        assert feed_in == [0.08] * 24
        # nothing else differs from the defaults
        overridden = {"community": {"feeder", *community}, "tariff": {"retail_tou", "feed_in"}}
        for section, keys in yaml.safe_load(text).items():
            assert set(keys) <= overridden[section], (name, section)
        assert config.network == default.network and config.battery == default.battery


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("name", list(EXPECTED))
def test_every_task_builds_and_steps(name):
    env = make_batched_env(task_env_config(name, n_envs=2))
    assert env.n_agents == EXPECTED[name][1]
    obs, _ = env.reset(seed=0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        actions = torch.rand(2, env.n_agents, 2, generator=generator, dtype=obs.dtype)
        actions[..., 0] = 2.0 * actions[..., 0] - 1.0
        obs, reward, _, _, info = env.step(actions)
        assert torch.isfinite(obs).all() and torch.isfinite(reward).all()
        assert torch.isfinite(info["community_cost"]).all()


@pytest.mark.parametrize("name", ["peak-storage", " PEAK-STORAGE "])
def test_names_are_case_insensitive(name):
    assert get_task(name) is TASKS["Peak-Storage"]


@pytest.mark.parametrize("name", ["Peak-Storag", "", None, 3])
def test_unknown_task_lists_the_valid_names(name):
    with pytest.raises(ConfigError) as error:
        get_task(name)
    assert all(task in str(error.value) for task in TASKS)


def test_run_config_task_replaces_the_base_and_keeps_inline_keys():
    # dqn.yaml: env {base: configs/env/default.yaml, action: {type: discrete, ...}}
    config = build_run_config(ROOT / "configs" / "dqn.yaml", ["env.task=Peak-Storage"])
    assert config.env.action.type == "discrete"
    assert config.env.community.battery_kwh_per_mwh == 2.5
    assert config.env.tariff.retail_tou == STRONG
    assert config.env.n_envs == config.train.n_envs  # the run still owns n_envs and seed
    # the config-level spelling, and inline keys over the task's
    config = build_run_config({"algo": "mappo", "env": {"task": "Grid-Rebound",
                                                        "market": {"mechanism": "mmr"}}})
    assert config.env.community.feeder == "1-LV-semiurb4--0-sw"
    assert config.env.market.mechanism == "mmr"
    with pytest.raises(ConfigError, match=r"'env\.task'.*Flat, TOU-Arbitrage"):
        build_run_config({"algo": "mappo", "env": {"task": "Flat2"}})


@pytest.mark.slow
def test_train_cli_task(tmp_path, capsys):
    config = {"algo": "mappo", "seed": 2, "name": "default",
              "env": {"base": "configs/env/synthetic.yaml"},
              "train": {"total_steps": 32, "n_envs": 2, "eval_every": 0, "eval_episodes": 1,
                        "checkpoint_every": 0, "torch_threads": 1},
              "mappo": {"rollout_steps": 16, "hidden_sizes": [8, 8], "update_epochs": 1,
                        "n_minibatches": 1}}
    path = tmp_path / "mappo.yaml"
    path.write_text(yaml.safe_dump(config))
    logdir = tmp_path / "runs"
    assert train.main(["--task", "tou-arbitrage", "--config", str(path), "--logdir",
                       str(logdir), "--no-progress"]) == 0
    (run_dir,) = logdir.iterdir()
    assert run_dir.name.startswith("TOU-Arbitrage__mappo__2__")  # named after the task
    logged = (run_dir / "config.yaml").read_text()
    assert "env.task=TOU-Arbitrage" in logged.splitlines()[0]  # the header records it
    env = yaml.safe_load(logged)["env"]
    assert env["community"]["feeder"] == "1-LV-rural1--0-sw"
    assert env["tariff"]["retail_tou"] == STRONG
    # a name= override wins over the task's
    assert train.task_overrides("Flat", ["name=mine"]) == ["env.task=Flat", "name=mine"]
    capsys.readouterr()
    assert train.main(["--task", "Nope", "--config", str(path), "--logdir", str(logdir)]) == 2
    assert "Peak-Storage" in capsys.readouterr().err
    assert train.main(["--resume", str(run_dir), "--task", "Flat"]) == 2
    assert len(list(logdir.iterdir())) == 1  # no run folder left by the refused runs


def test_evaluate_cli_task(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--policies", "no_p2p,self_consumption", "--days", "6", "--no-plots",
            "--no-progress", "--out", str(out)]
    assert evaluate.main(["--task", "TOU-Arbitrage", *args, "network.model=none"]) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["config"]["tariff"]["retail_tou"] == STRONG
    assert report["config"]["community"]["battery_share"] == 1.0
    assert report["config"]["network"]["model"] == "none"  # overrides still apply
    capsys.readouterr()
    assert evaluate.main(["--task", "TOU", *args]) == 2
    assert "TOU-Arbitrage" in capsys.readouterr().err
    assert evaluate.main(["--task", "Flat", "--config", "configs/env/default.yaml", *args]) == 2


# --- tasks of your own: the path of an env YAML wherever a task name is taken ---------------

TWO_RATE = {"community": {"feeder": "synthetic", "n_agents": 5, "battery_share": 1.0},
            "tariff": {"retail_tou": [0.15] * 7 + [0.35] * 15 + [0.15] * 2},
            "network": {"model": "none"}}


@pytest.fixture
def own_tasks(monkeypatch):
    """A fresh register of the tasks of your own resolved in this process."""
    import envs.tasks

    monkeypatch.setattr(envs.tasks, "_OWN_TASKS", {})


def write_task(folder: Path, name: str, data: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.usefixtures("own_tasks")
def test_a_task_file_of_your_own_is_a_task(tmp_path, monkeypatch):
    path = write_task(tmp_path / "mine", "two-rate.yaml", TWO_RATE)
    monkeypatch.chdir(tmp_path)
    task = get_task(" mine/two-rate.yaml ")  # relative to the current folder
    assert (task.name, task.config_path, task.spec) == ("two-rate", path, str(path))
    assert task.oracle == "oracle"  # network.model none: nothing for oracle_network to respect
    assert get_task("TWO-RATE") is task and get_task(str(path)) is task  # resolved once
    config = task_env_config("two-rate", n_envs=3)
    assert config.community.n_agents == 5 and config.n_envs == 3
    assert config.tariff.hourly()[0] == TWO_RATE["tariff"]["retail_tou"]
    # a power flow on: the reference is the optimum within the feeder's limits
    zbus = write_task(tmp_path, "zbus.yml", {"community": {"feeder": "synthetic"}})
    assert get_task(str(zbus)).oracle == "oracle_network"
    # train.py --task: the run config takes the file's env by its absolute path (so that a
    # Ray trial in another folder resolves it too) and the run its name
    overrides = train.task_overrides("mine/two-rate.yaml", ["seed=3"])
    assert overrides == [f"env.task={path}", "name=two-rate", "seed=3"]
    monkeypatch.chdir(ROOT)
    run = build_run_config(ROOT / "configs" / "dqn.yaml", overrides)
    assert run.name == "two-rate" and run.train.eval_reference == "oracle"
    assert run.env.community.n_agents == 5 and run.env.action.type == "discrete"


@pytest.mark.usefixtures("own_tasks")
def test_bad_task_files_are_refused_naming_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"--task: no task file 'nowhere/x\.yaml'.*Flat"):
        get_task("nowhere/x.yaml", where="--task")
    flat = write_task(tmp_path, "flat.yaml", TWO_RATE)  # would shadow the suite's Flat
    with pytest.raises(ConfigError, match=r"named 'flat', like the suite's task Flat"):
        get_task(str(flat))
    spaced = write_task(tmp_path, "two rate.yaml", TWO_RATE)  # names run folders
    with pytest.raises(ConfigError, match=r"named 'two rate'; rename.*letters, digits"):
        get_task(str(spaced))
    bad = write_task(tmp_path, "bad.yaml", {"community": {"n_agent": 5}})
    with pytest.raises(ConfigError, match=r"task file '.*bad\.yaml': .*n_agent"):
        get_task(str(bad))
    import envs.tasks

    assert not envs.tasks._OWN_TASKS  # nothing registered by a refused file
    # two files of one name: each by its path, the name alone is ambiguous
    first = get_task(str(write_task(tmp_path / "a", "same.yaml", TWO_RATE)))
    second = get_task(str(write_task(tmp_path / "b", "same.yaml", TWO_RATE)))
    assert first.spec != second.spec and first.name == second.name == "same"
    with pytest.raises(ConfigError, match=r"'same' is ambiguous.*give the path"):
        get_task("same")


@pytest.mark.usefixtures("own_tasks")
def test_evaluate_cli_on_a_task_file(tmp_path, capsys):
    path = write_task(tmp_path, "two-rate.yaml", TWO_RATE)
    out = tmp_path / "out"
    assert evaluate.main(["--task", str(path), "--policies", "no_p2p", "--days", "6",
                          "--no-plots", "--no-progress", "--out", str(out)]) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["config"]["community"]["n_agents"] == 5
    assert report["config"]["tariff"]["retail_tou"] == TWO_RATE["tariff"]["retail_tou"]
    assert evaluate.main(["--task", str(tmp_path / "missing.yaml"), "--policies", "no_p2p",
                          "--out", str(out)]) == 2
    assert "no task file" in capsys.readouterr().err
