"""agents/leaderboard.py (IQM, bootstrap intervals, columns, atomic records) and
benchmarks/leaderboard.py (an interrupted leaderboard resumes without redoing finished cells),
on a tiny synthetic task."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from agents import leaderboard
from agents.baselines import BASELINES
from envs import files, tasks
from envs.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def load_cli():
    spec = importlib.util.spec_from_file_location("leaderboard_cli",
                                                  ROOT / "benchmarks" / "leaderboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_iqm_of_hand_computed_arrays():
    # sorted: 1 2 | 3 4 5 6 | 10 100: the middle half's mean
    assert leaderboard.iqm([10, 1, 2, 3, 100, 4, 5, 6]) == pytest.approx(4.5)
    # 12 values: 3 cut from each end, mean of 4..9
    assert leaderboard.iqm(np.arange(1, 13)[::-1]) == pytest.approx(6.5)
    assert leaderboard.iqm([1.0, 2.0, 9.0]) == pytest.approx(4.0)  # < 4 runs: the mean
    np.testing.assert_allclose(leaderboard.iqm(np.array([[1, 2, 3, 100], [0, 0, 4, 4]])),
                               [2.5, 2.0])


def test_bootstrap_interval_covers_the_mean_of_a_known_sample():
    sample = np.random.default_rng(1).normal(5.0, 1.0, 200)
    low, high = leaderboard.bootstrap_ci(sample, statistic=np.mean)
    assert low < 5.0 < high and high - low < 0.5  # +-1.96 * 1 / sqrt(200) = +-0.14
    assert low < sample.mean() < high
    low, high = leaderboard.bootstrap_ci(sample)  # the IQM's interval
    assert low < leaderboard.iqm(sample) < high
    assert leaderboard.bootstrap_ci(sample) == (low, high)  # seeded
    assert all(math.isnan(v) for v in leaderboard.bootstrap_ci([1.0]))
    assert leaderboard.bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    summary = leaderboard.aggregate([1.0, float("nan"), 3.0])
    assert summary["n"] == 2 and summary["iqm"] == 2.0 and summary["ci_low"] >= 1.0
    assert math.isnan(leaderboard.aggregate([float("nan")])["iqm"])


def test_columns_from_an_evaluation_row():
    row = {"community_cost_mean": 100.0, "captured_savings_share_mean": 0.5,
           "voltage_violations_mean": 2.0, "line_violations_mean": 1.0,
           "savings_gini_mean": 0.3, "agent_savings": [1.0, -2.0, -1e-9, 0.0]}
    columns = leaderboard.cell_metrics(row, best_rule_cost=104.0)
    assert columns == {"community_cost": 100.0, "oracle_share": 0.5,
                       "gain_vs_best_rule": 4.0, "violations": 3.0, "savings_gini": 0.3,
                       "worse_off_share": 0.25}
    assert [k for k, _ in leaderboard.COLUMNS] == list(columns)
    assert leaderboard.cell_metrics(row, 104.0, oracle_share=0.7)["oracle_share"] == 0.7
    assert math.isnan(leaderboard.worse_off_share([float("nan")] * 3))  # the oracle's rows


def test_records_are_written_atomically_and_checked(tmp_path, monkeypatch):
    path = tmp_path / "cells" / "Flat" / "mappo__0.json"
    settings = {"run_config": {"train": {"total_steps": 10}}, "days": [6, 13]}
    leaderboard.write_record(path, {"settings": settings, "metrics": {"x": float("nan")}})
    assert leaderboard.read_record(path, settings)["metrics"] == {"x": None}
    before = path.read_bytes()

    def crash(*_):
        raise OSError("killed mid-write")

    monkeypatch.setattr(files.os, "replace", crash)
    with pytest.raises(OSError):
        leaderboard.write_record(path, {"settings": settings, "metrics": {"x": 2.0}})
    monkeypatch.undo()
    assert path.read_bytes() == before  # the old record, whole
    assert os.listdir(path.parent) == [path.name]  # no temporary left behind
    other = {"run_config": {"train": {"total_steps": 20}}, "days": [6, 13]}
    with pytest.raises(ConfigError, match=r"run_config\.train\.total_steps=10.*=20.*--force"):
        leaderboard.read_record(path, other)
    assert leaderboard.read_record(tmp_path / "missing.json", settings) is None
    path.write_text('{"settings": ')  # not a complete record (written by hand): redone
    with pytest.warns(UserWarning, match="redoing"):
        assert leaderboard.read_record(path, settings) is None


@pytest.fixture
def tiny_task(tmp_path, monkeypatch) -> str:
    """A 4-agent synthetic task without a network, registered as ``Tiny``."""
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "tiny.yaml").write_text(yaml.safe_dump(
        {"community": {"feeder": "synthetic", "n_agents": 4, "battery_share": 0.5},
         "network": {"model": "none"}}))
    monkeypatch.setattr(tasks, "TASKS_DIR", folder)
    monkeypatch.setitem(tasks.TASKS, "Tiny", tasks.Task("Tiny", "tiny.yaml", "a test", "oracle"))
    return "Tiny"


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_interrupted_leaderboard_resumes_without_redoing_cells(tiny_task, tmp_path,
                                                               monkeypatch, capsys):
    cli = load_cli()
    out = tmp_path / "lb"
    argv = ["--tasks", tiny_task, "--algos", "mappo", "--seeds", "0,1", "--steps", "32",
            "--episodes", "2", "--out", str(out), "train.n_envs=2", "train.eval_every=0",
            "train.eval_episodes=1", "mappo.rollout_steps=16", "mappo.hidden_sizes=[8,8]"]
    trained = []
    real_train = cli.train_cell

    def spy(config, logdir, header):
        trained.append(config.seed)
        return real_train(config, logdir, header)

    monkeypatch.setattr(cli, "train_cell", spy)
    assert cli.main(argv) == 0
    assert trained == [0, 1]
    cells = out / "cells" / tiny_task
    assert sorted(p.name for p in cells.iterdir()) == ["mappo__0.json", "mappo__1.json",
                                                       "references.json"]
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.png"):
        assert (out / name).stat().st_size > 0
    rows = (out / "leaderboard.csv").read_text().splitlines()
    rules = [name for name in BASELINES if name != "random"]  # every rule-based baseline
    assert {"no_p2p", "self_consumption", "zi", "fixed_price"} <= set(rules)
    assert [r.split(",")[1] for r in rows[1:]] == [*rules, "oracle", "mappo"]
    table = (out / "leaderboard.md").read_text()
    assert "| Tiny | mappo | 2 |" in table

    # interrupted while seed 1 trained: its record was never written
    (cells / "mappo__1.json").unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in cells.iterdir()}
    trained.clear()
    assert cli.main(argv) == 0
    assert trained == [1]  # only the unfinished cell
    assert {p.name: p.stat().st_mtime_ns for p in cells.iterdir()
            if p.name in kept} == kept
    assert (out / "leaderboard.md").read_text() == table  # the same measurements

    # a baseline registered later is scored and added; no cell is redone
    monkeypatch.setitem(BASELINES, "copycat", BASELINES["self_consumption"])
    trained.clear()
    assert cli.main(argv) == 0 and trained == []
    references = json.loads((cells / "references.json").read_text())["policies"]
    copy, original = references["copycat"], references["self_consumption"]
    assert copy["savings_per_day"] == original["savings_per_day"]
    assert copy["summary"]["community_cost_mean"] == original["summary"]["community_cost_mean"]
    assert "| Tiny | `copycat` | 1 |" in (out / "leaderboard.md").read_text()

    # --force redoes every cell (training mocked: reuse a finished run)
    run_dir = json.loads((cells / "mappo__0.json").read_text())["run_dir"]
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    monkeypatch.setattr(cli, "train_cell",
                        lambda config, *_: (trained.append(config.seed), (Path(run_dir),
                                                                          metrics))[1])
    assert cli.main([*argv, "--force"]) == 0
    assert trained == [0, 1]

    # another budget on the same --out: refused before anything runs
    capsys.readouterr()
    assert cli.main([*argv[:-5], "--steps", "64", *argv[-5:]]) == 2
    assert "total_steps=32" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--tasks", "Flatt"], "Peak-Storage"),
    (["--algos", "nope"], "mappo"),
    (["--seeds", "a"], "integers"),
    (["seed=3"], "train.<key>"),
    (["env.market.mechanism=mmr"], "the task fixes the env"),
])
def test_bad_input_is_refused(extra, message, tmp_path, capsys):
    cli = load_cli()
    assert cli.main(["--tasks", "Flat", "--algos", "mappo", "--out", str(tmp_path), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


PLUGIN_FILE = ROOT / "tests" / "plugins" / "peergrid_test_plugins.py"


def test_submitted_policies_are_scored_beside_the_references_without_training(
        tiny_task, tmp_path, monkeypatch, capsys):
    """``--policies``: a policy of one's own (a file spec) and a rule variant are scored on
    the task's test days with no training, one row each beside the references; a copy of
    ``no_p2p`` scores as ``no_p2p``; a policy that fails is reported by name while the others'
    rows are made (exit code 2); a rerun reuses the records; a spec that cannot be loaded or
    an oracle is refused before anything runs."""
    cli = load_cli()
    monkeypatch.setattr(cli, "train_cell", lambda *_: pytest.fail("nothing is trained"))
    out = tmp_path / "lb"
    copy, variant, broken = (f"{PLUGIN_FILE}:NoMarket", "fixed_price:price_fraction=0.7",
                             f"{PLUGIN_FILE}:Raises")
    argv = ["--tasks", tiny_task, "--episodes", "2", "--out", str(out)]
    assert cli.main([*argv, "--policies", f"{copy},{variant},{broken}"]) == 2
    captured = capsys.readouterr()
    assert f"[Tiny] policy '{broken}' failed: RuntimeError: my policy broke" in captured.err
    with (out / "leaderboard.csv").open() as handle:
        rows = {row["policy"]: row for row in csv.DictReader(handle)}
    assert rows[copy]["kind"] == rows[variant]["kind"] == "submitted"
    assert broken not in rows and "mappo" not in rows  # no learner without --algos
    for key in ("community_cost", "oracle_share", "gain_vs_best_rule", "worse_off_share"):
        assert rows[copy][key] == rows["no_p2p"][key], key
    assert f"| Tiny | `{copy}` | 1 |" in (out / "leaderboard.md").read_text()

    records = sorted((out / "cells" / tiny_task).glob("policy__*.json"))
    assert len(records) == 2  # the failed policy left no record
    kept = {path: path.stat().st_mtime_ns for path in records}
    assert cli.main([*argv, "--policies", f"{copy},{variant}"]) == 0
    assert "policy fixed_price:price_fraction=0.7: done" in capsys.readouterr().out
    assert {path: path.stat().st_mtime_ns for path in records} == kept

    for bad, message in ((f"{PLUGIN_FILE}:Nope", "has no attribute 'Nope'"),
                         ("oracle", "references of every task already")):
        fresh = tmp_path / "fresh"
        assert cli.main(["--tasks", tiny_task, "--out", str(fresh), "--policies", bad]) == 2
        assert message in capsys.readouterr().err
        assert not fresh.exists()
