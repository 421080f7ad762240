"""The evaluation front end (evaluate.py): outputs, determinism, days, tables, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

import evaluate
from envs.config import ConfigError, env_config

CONFIG = {"community": {"feeder": "synthetic", "n_agents": 5, "battery_share": 0.6},
          "network": {"model": "none"}}


@pytest.fixture
def config_path(tmp_path) -> Path:
    path = tmp_path / "env.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


def _strict_json(path: Path):
    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(path.read_text(), parse_constant=reject)


@pytest.mark.slow
def test_cli_writes_tables_and_plots_deterministically(config_path, tmp_path, capsys):
    args = ["--config", str(config_path), "--policies",
            "no_p2p,self_consumption,zi,fixed_price,oracle", "--days", "test",
            "--episodes", "2", "--mechanisms", "uniform,mcafee", "--no-progress",
            "--seed", "3", "market.k=0.4"]
    assert evaluate.main([*args, "--out", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    assert "| self_consumption | uniform |" in printed
    assert "Allocative efficiency of zero-intelligence traders" in printed
    out = tmp_path / "a"
    report = _strict_json(out / "results.json")
    assert report["config"]["market"]["k"] == 0.4
    assert len(report["days"]) == 2
    rows = {row["policy"]: row for row in report["results"]}
    assert set(rows) == {"no_p2p", "self_consumption", "zi", "fixed_price", "oracle"}
    assert rows["no_p2p"]["mechanism"] == "none"
    assert rows["oracle"]["captured_savings_share_mean"] == pytest.approx(1.0)
    assert rows["oracle"]["community_cost_mean"] <= rows["self_consumption"][
        "community_cost_mean"] + 1e-6
    assert len(rows["zi"]["agent_savings"]) == 5
    mechanisms = {(row["mechanism"], row["policy"]) for row in report["mechanisms"]}
    assert ("mcafee", "zi") in mechanisms and ("uniform", "fixed_price") in mechanisms
    with (out / "results.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 5 + 2 * 3
    assert "allocative_efficiency_mean" in table[0]
    for name in report["plots"]:
        assert (out / name).stat().st_size > 1000
    assert {"metrics.png", "agent_savings.png", "mechanisms.png", "day_oracle.png",
            "day_zi.png"} <= set(report["plots"])
    assert not list(out.glob(".*"))  # no temporary files left behind

    assert evaluate.main([*args, "--out", str(tmp_path / "b"), "--no-plots"]) == 0
    again = _strict_json(tmp_path / "b" / "results.json")
    assert again["results"] == report["results"]
    assert again["per_day"] == report["per_day"]


def test_two_day_episodes_are_reported_per_day():
    """With episode.length_days = 2 each evaluated day starts a two-day episode: the table
    rows report sums over the episode (cost, savings, volumes, the return) per day (episode
    total / 2) and ratios as they are, while ``per_day`` keeps each episode's values (as
    train.py's references compare them with episode totals); the recorded trajectory
    covers the 192 steps; the oracle plans the whole episode and stays below the rule."""
    from envs import metrics

    config = env_config({**CONFIG, "episode": {"length_days": 2}})
    evaluator = evaluate.Evaluator(config, [6, 13], batch_size=2)
    rule = evaluator.run("self_consumption", "uniform")
    oracle = evaluator.run("oracle")
    for result in (rule, oracle):
        assert result.episode_days == 2
        assert len(result.trajectory["load_kw"]) == 192
        episode = metrics.evaluation_summary(result.totals)
        assert result.per_day["community_cost"].tolist() == episode["community_cost"].tolist()
        row = evaluate.summarise(result, oracle)
        for key in ("community_cost", "savings_vs_no_p2p", "p2p_volume_kwh", "no_p2p_cost",
                    "episodic_return"):
            assert row[f"{key}_mean"] == pytest.approx(float(episode[key].mean()) / 2,
                                                       nan_ok=True), key  # oracle: no return
        for key in ("savings_percent", "self_sufficiency"):
            assert row[f"{key}_mean"] == pytest.approx(float(episode[key].mean())), key
    assert (oracle.per_day["community_cost"] <= rule.per_day["community_cost"] + 1e-6).all()
    row = evaluate.summarise(rule, oracle)
    assert row["captured_savings_share_mean"] == pytest.approx(float(
        metrics.savings_vs_no_p2p(rule.totals).sum()
        / metrics.savings_vs_no_p2p(oracle.totals).sum()))
    assert row["agent_savings"] == pytest.approx(
        (metrics.agent_savings(rule.totals).double().mean(0) / 2).tolist())


def test_select_days():
    config = env_config(CONFIG)
    test_days = evaluate.select_days(config, "test", 0)
    assert len(test_days) == 52 and all(d % 7 == 6 for d in test_days)
    spread = evaluate.select_days(config, "test", 4)
    assert spread == [test_days[0], test_days[17], test_days[34], test_days[51]]
    assert evaluate.select_days(config, "3,40", 0) == [3, 40]
    with pytest.raises(ConfigError):
        evaluate.select_days(config, "400", 0)
    with pytest.raises(ConfigError):
        evaluate.select_days(config, "winter", 0)


def test_run_folder_config(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"env": CONFIG, "algo": {"lr": 1e-3}}))
    assert evaluate.config_source(run) == CONFIG
    assert evaluate.is_run_spec("runs/x/") and not evaluate.is_run_spec("zi")


def test_markdown_table_marks_undefined_values():
    rows = [{"policy": "a", "mechanism": "uniform", "x_mean": -1e-12, "x_std": 0.0,
             "y_mean": float("nan"), "y_std": float("nan")},
            {"policy": "b", "mechanism": "-", "x_mean": 1.23456, "x_std": 0.5,
             "y_mean": 250.0, "y_std": 10.0}]
    table = evaluate.markdown_table(rows, (("x", "X"), ("y", "Y")))
    assert table.splitlines()[2] == "| a | uniform | 0.000 | – |"
    assert table.splitlines()[3] == "| b | - | 1.235 ± 0.500 | 250.0 ± 10.0 |"


@pytest.mark.parametrize("extra", [["--policies", "greedy"], ["--mechanisms", "vickrey"],
                                   ["--days", "winter"], ["colour=red"],
                                   ["--policies", "zi,zi"], ["--plot-day", "5"]])
def test_bad_input_is_a_clear_error(config_path, tmp_path, extra, capsys):
    args = ["--config", str(config_path), "--episodes", "2", "--no-progress", "--no-plots",
            "--out", str(tmp_path / "x"), *extra]
    assert evaluate.main(args) == 2
    assert "error:" in capsys.readouterr().err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A short MAPPO run on CONFIG's community (a real run folder with checkpoints)."""
    import train
    from agents.run_config import build_run_config

    config = build_run_config({
        "algo": "mappo", "seed": 4, "name": "tiny", "env": CONFIG,
        "train": {"total_steps": 2 * 8 * 16, "n_envs": 8, "eval_every": 0, "eval_episodes": 3,
                  "checkpoint_every": 0},
        "mappo": {"rollout_steps": 16, "hidden_sizes": [16, 16]}})
    run_dir = train.new_run_dir(tmp_path_factory.mktemp("runs"), config)
    train.Trainer(config, run_dir, progress=False).run()
    return run_dir


def test_run_folder_supplies_config_and_policy(trained_run, tmp_path):
    """A run folder among --policies: its config.yaml's env section is the config, and its
    best checkpoint is the policy, named after the folder."""
    out = tmp_path / "out"
    assert evaluate.main(["--policies", f"self_consumption,{trained_run}/", "--episodes", "1",
                          "--no-progress", "--no-plots", "--out", str(out)]) == 0
    report = _strict_json(out / "results.json")
    assert report["config"]["community"]["n_agents"] == 5
    assert [row["policy"] for row in report["results"]] == ["self_consumption",
                                                              trained_run.name]


def test_training_curve_and_evaluation_table_agree(trained_run, tmp_path):
    """train.py's final eval/* values and evaluate.py's table come from one function: the
    final checkpoint on the run's evaluation days and seed gives the same numbers."""
    from agents.run_config import build_run_config, eval_env_config, evaluation_days

    metrics = json.loads((trained_run / "metrics.json").read_text())
    config = build_run_config(trained_run / "config.yaml")
    days = evaluation_days(eval_env_config(config), config.train.eval_episodes)
    out = tmp_path / "out"
    # a checkpoint file as the policy, as the README documents; it also supplies the config
    assert evaluate.main(["--policies", str(trained_run / "checkpoint_latest.pt"), "--days",
                          ",".join(map(str, days)), "--seed", str(config.seed),
                          "--no-progress", "--no-plots", "--out", str(out)]) == 0
    row = _strict_json(out / "results.json")["results"][0]
    for key in ("community_cost", "savings_vs_no_p2p", "self_sufficiency"):
        assert row[f"{key}_mean"] == pytest.approx(metrics["final_eval"][key], rel=1e-6), key


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_damaged_checkpoint_is_a_clear_error(trained_run, tmp_path, damage, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    path = run / "checkpoint_best.pt"
    data = path.read_bytes()
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        middle = len(data) // 2
        data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]
    else:
        data = b""
    path.write_bytes(data)
    assert evaluate.main(["--policies", str(path), "--episodes", "1", "--no-progress",
                          "--no-plots", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "checkpoint_best.pt" in err and "Traceback" not in err


def test_run_on_another_community_size_is_refused(trained_run, tmp_path, capsys):
    """A policy trained for 5 agents refuses a 6-agent community before stepping."""
    assert evaluate.main(["--policies", str(trained_run), "--config", str(trained_run),
                          "--episodes", "1", "--no-progress", "--no-plots", "--out",
                          str(tmp_path / "out"), "community.n_agents=6"]) == 2
    assert "trained for 5 agents" in capsys.readouterr().err


def test_trained_policy_refuses_an_env_with_other_actions():
    """A run trained on the discrete grid cannot silently act in a continuous env."""
    from types import SimpleNamespace

    import envs
    from agents.policy import TrainedPolicy
    from envs.config import ConfigError, env_config

    trained_env = env_config(None, action={"type": "discrete"})
    policy = TrainedPolicy(None, SimpleNamespace(env=trained_env), "run_x")
    env = envs.make_batched_env(None, network={"model": "none"})
    with pytest.raises(ConfigError, match="trained with discrete actions"):
        policy.reset(env)


def test_behavioural_and_rational_savings_per_mechanism(config_path, tmp_path, capsys):
    """With behavioural agents (behaviour.agents) the tables split the mean daily saving per
    agent by group: the mean of the per-agent savings of each group. Under mmr (the price
    ignores the bids) the loss-averse traders cost exactly what the truthful ones do."""
    args = ["--config", str(config_path), "--policies",
            "no_p2p,self_consumption,loss_averse:population=behavioural", "--days", "6,13,20",
            "--mechanisms", "uniform,mmr", "--no-progress", "--no-plots",
            "--out", str(tmp_path / "out"), "behaviour.agents=[house_0, house_3]"]
    assert evaluate.main(args) == 0
    printed = capsys.readouterr().out
    assert "saving/agent behavioural" in printed and "saving/agent rational" in printed
    report = _strict_json(tmp_path / "out" / "results.json")
    for row in report["results"] + report["mechanisms"]:
        savings = row["agent_savings"]
        assert row["behavioural_savings_mean"] == pytest.approx(
            (savings[0] + savings[3]) / 2, abs=1e-12)
        assert row["rational_savings_mean"] == pytest.approx(
            (savings[1] + savings[2] + savings[4]) / 3, abs=1e-12)
    by = {(row["policy"], row["mechanism"]): row for row in report["mechanisms"]}
    loss_averse = "loss_averse:population=behavioural"
    assert by[(loss_averse, "mmr")]["community_cost_mean"] == pytest.approx(
        by[("self_consumption", "mmr")]["community_cost_mean"], abs=1e-12)
    assert by[(loss_averse, "uniform")]["p2p_volume_kwh_mean"] < by[(
        "self_consumption", "uniform")]["p2p_volume_kwh_mean"]
    off = evaluate.main([*args[:-1], "--out", str(tmp_path / "off")])
    assert off == 0 and "saving/agent" not in capsys.readouterr().out
