"""agents/leaderboard.py (IQM, bootstrap intervals, columns, atomic records) and
benchmarks/leaderboard.py (cells trained as trials of agents.sweep on Ray and scored on the
driver; an interrupted leaderboard resumes without redoing finished cells; failed and
interrupted cells), on a tiny synthetic task. The leaderboards that train share one local Ray
(2 CPUs) started by a module fixture."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import evaluate
import train
from agents import leaderboard, sweep
from agents.baselines import BASELINES
from envs import files, tasks
from envs.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def load_cli():
    spec = importlib.util.spec_from_file_location("leaderboard_cli",
                                                  ROOT / "benchmarks" / "leaderboard.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def scores_table(out: Path) -> str:
    """leaderboard.md without its compute table (the seconds of each run differ)."""
    text = (out / "leaderboard.md").read_text()
    assert "\n## Compute\n" in text
    return text.split("\n## Compute\n")[0]


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


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray (2 CPUs) for the module's leaderboards that train: ``agents.sweep``
    reuses a running Ray and leaves it running, so it starts once."""
    ray = pytest.importorskip("ray")
    ray.init(**sweep.local_ray_options(2), log_to_driver=False)
    yield
    ray.shutdown()


def same_json(a, b) -> bool:
    """Equal as JSON (NaN, a missing measurement, equals NaN)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def run_folders(out: Path, task: str) -> list[Path]:
    """The run folders of ``task``'s cells (``<out>/runs/<task>/<config>/<run>``)."""
    return sorted(path.parent for path in (out / "runs" / task).glob("*/*/config.yaml"))


def tiny_mappo_argv(task: str, out: Path) -> list[str]:
    """A leaderboard command of two tiny MAPPO cells (seeds 0, 1) on ``task``; its last five
    entries are the run-config overrides."""
    return ["--tasks", task, "--algos", "mappo", "--seeds", "0,1", "--steps", "32",
            "--episodes", "2", "--out", str(out), "--verbose", "0", "train.n_envs=2",
            "train.eval_every=0", "train.eval_episodes=0", "mappo.rollout_steps=16",
            "mappo.hidden_sizes=[8,8]"]


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread", "local_ray")
def test_interrupted_leaderboard_resumes_without_redoing_cells(tiny_task, tmp_path,
                                                               monkeypatch, capsys):
    """Cells train as trials of ``agents.sweep`` on Ray and are scored here; a rerun trains
    only the cells without a record: one killed while scored is scored again from its run,
    one killed while trained continues in its run folder."""
    cli = load_cli()
    out = tmp_path / "lb"
    argv = tiny_mappo_argv(tiny_task, out)
    trained, returned = [], []
    real_run_trials = cli.sweep.run_trials

    def spy(trials, state_dir, **options):
        trained.extend(trial.params["seed"] for trial in trials)
        results = real_run_trials(trials, state_dir, **options)
        returned.extend(results)
        return results

    monkeypatch.setattr(cli.sweep, "run_trials", spy)
    assert cli.main(argv) == 0
    assert trained == [0, 1]
    assert [r.status for r in returned] == ["finished", "finished"]
    assert not any(r.reused for r in returned)
    cells = out / "cells" / tiny_task
    assert sorted(p.name for p in cells.iterdir()) == ["mappo__0.json", "mappo__1.json",
                                                       "references.json"]
    runs = run_folders(out, tiny_task)
    assert len(runs) == 2 and {run.parent.name for run in runs} == {"mappo"}
    for seed, result in enumerate(returned):  # scored from the trial's own run folder
        record = json.loads((cells / f"mappo__{seed}.json").read_text())
        assert record["run_dir"] == result.run_dir and Path(result.run_dir) in runs
        # ... in the trial's worker (evaluate.RunScorer): its scores are the record's
        assert result.extra["checkpoint"] == "checkpoint_latest.pt"
        assert same_json(result.extra["summary"], record["summary"])
        assert result.extra["savings_per_day"] == record["savings_per_day"]
        assert record["score_wall_s"] == result.extra["score_wall_s"] > 0
        assert record["train"]["global_step"] == 32
        assert record["train_wall_s"] == result.metrics["timing"]["train_time_s"]
        assert record["run_wall_s"] == result.metrics["timing"]["wall_time_s"]
        assert record["run_wall_s"] > record["train_wall_s"] > 0
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.png"):
        assert (out / name).stat().st_size > 0
    rows = (out / "leaderboard.csv").read_text().splitlines()
    rules = [name for name in BASELINES if name != "random"]  # every rule-based baseline
    assert {"no_p2p", "self_consumption", "zi", "fixed_price"} <= set(rules)
    assert [r.split(",")[1] for r in rows[1:]] == [*rules, "oracle", "mappo"]
    table = scores_table(out)
    assert "| Tiny | mappo | 2 |" in table

    # killed while seed 1 was scored: its record was never written; the run is scored again
    # (the engine's record of it is reused: nothing runs on Ray)
    run_1 = Path(returned[1].run_dir)
    (cells / "mappo__1.json").unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in cells.iterdir()}
    trained.clear()
    returned.clear()
    assert cli.main(argv) == 0
    assert trained == [1] and returned[0].reused  # only the unscored cell, not retrained
    assert {p.name: p.stat().st_mtime_ns for p in cells.iterdir()
            if p.name in kept} == kept
    assert scores_table(out) == table  # the same measurements

    # killed while seed 1 trained: no record, no metrics.json; it continues in its run folder
    (cells / "mappo__1.json").unlink()
    (out / "sweep" / "records" / f"{returned[0].key}.json").unlink()
    (run_1 / "metrics.json").unlink()
    trained.clear()
    returned.clear()
    assert cli.main(argv) == 0
    assert trained == [1] and not returned[0].reused
    assert run_folders(out, tiny_task) == runs and (run_1 / "metrics.json").is_file()
    assert json.loads((cells / "mappo__1.json").read_text())["run_dir"] == str(run_1)
    assert scores_table(out) == table

    # a baseline registered later is scored and added; no cell is redone
    monkeypatch.setitem(BASELINES, "copycat", BASELINES["self_consumption"])
    trained.clear()
    assert cli.main(argv) == 0 and trained == []
    references = json.loads((cells / "references.json").read_text())["policies"]
    copy, original = references["copycat"], references["self_consumption"]
    assert copy["savings_per_day"] == original["savings_per_day"]
    assert copy["summary"]["community_cost_mean"] == original["summary"]["community_cost_mean"]
    assert "| Tiny | `copycat` | 1 |" in (out / "leaderboard.md").read_text()

    # another budget on the same --out: refused before anything runs
    capsys.readouterr()
    assert cli.main([*argv[:-5], "--steps", "64", *argv[-5:]]) == 2
    assert "total_steps=32" in capsys.readouterr().err


@pytest.mark.usefixtures("one_torch_thread")
def test_force_and_failed_or_interrupted_cells(tiny_task, tmp_path, monkeypatch, capsys):
    """``--force`` hands every cell to the engine again (mocked here: seed 0's run finished,
    seed 1 raised or was interrupted); a failed cell is reported with its error and the table
    of what finished is written (exit code 2; interrupted: 130)."""
    pytest.importorskip("ray")  # the cells' trials are checked against the local Ray
    cli = load_cli()
    out = tmp_path / "lb"
    argv = tiny_mappo_argv(tiny_task, out)
    trial = cli.plan_cell(tiny_task, "mappo", 0, 32, argv[-5:]).trial(out)
    run_dir = train.new_run_dir(trial.logdir, trial.config, "a finished run")
    train.Trainer(trial.config, run_dir, progress=False).run()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    calls = []

    def engine(outcome):
        def run_trials(trials, state_dir, **options):
            calls.append(([t.params["seed"] for t in trials], options["force"]))
            return [cli.sweep.TrialResult(trials[0].key, trials[0].params, "finished",
                                          str(run_dir), metrics),
                    cli.sweep.TrialResult(trials[1].key, trials[1].params, outcome,
                                          error="RuntimeError: boom in seed 1"
                                          if outcome == "error" else None)]
        return run_trials

    for outcome, code in (("error", 2), ("pending", 130)):
        monkeypatch.setattr(cli.sweep, "run_trials", engine(outcome))
        capsys.readouterr()
        assert cli.main([*argv, "--force"]) == code
        assert calls.pop() == ([0, 1], True)
        err = capsys.readouterr().err
        assert ("boom in seed 1" in err) == (outcome == "error")
        assert ("rerun the same command" in err) == (outcome == "pending")
        assert "| Tiny | mappo | 1 |" in (out / "leaderboard.md").read_text()
        cells = out / "cells" / tiny_task
        assert sorted(p.name for p in cells.iterdir()) == ["mappo__0.json", "references.json"]
        assert json.loads((cells / "mappo__0.json").read_text())["run_dir"] == str(run_dir)


@pytest.mark.usefixtures("one_torch_thread")
def test_a_run_is_scored_by_its_scorer_as_by_the_evaluator(tiny_task, tmp_path):
    """``evaluate.RunScorer``, which scores each cell in its worker, gives the record what
    ``evaluate.Evaluator`` gives on the same days and seed; a checkpoint it cannot score is
    an error message, not an exception (the driver scores the run again and reports it)."""
    cli = load_cli()
    out = tmp_path / "lb"
    cell = cli.plan_cell(tiny_task, "mappo", 0, 32, tiny_mappo_argv(tiny_task, out)[-5:])
    trial = cell.trial(out, [6, 13], 3)
    assert trial.post == evaluate.RunScorer((6, 13), 3, "checkpoint_latest.pt")
    assert cell.trial(out).post is None
    run_dir = train.new_run_dir(trial.logdir, trial.config, "a run")
    train.Trainer(trial.config, run_dir, progress=False).run()
    scores = trial.post(trial.config, run_dir, None)
    expected = evaluate.Evaluator(cell.config.env, [6, 13], seed=3).run(
        str(run_dir / "checkpoint_latest.pt"))
    assert scores["days"] == [6, 13] and scores["eval_seed"] == 3 and scores["score_wall_s"] > 0
    assert same_json(scores["summary"], evaluate.summarise(expected, None))
    np.testing.assert_array_equal(scores["savings_per_day"],
                                  expected.per_day["savings_vs_no_p2p"])
    (run_dir / "checkpoint_latest.pt").write_bytes(b"not a checkpoint")
    failed = trial.post(trial.config, run_dir, None)
    assert set(failed) == {"error"} and "checkpoint_latest.pt" in failed["error"]


def test_cells_of_larger_communities_train_first(tmp_path, monkeypatch):
    """Longest first: the 111-agent Urban-Scale cells before the 41-agent feeder's before the
    13-agent one's before a 4-agent task file's; within a task the order is kept."""
    cli = load_cli()
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(
        {"community": {"feeder": "synthetic", "n_agents": 4}, "network": {"model": "none"}}))
    monkeypatch.chdir(tmp_path)
    cells = [cli.plan_cell(task, algo, seed, 32, [])
             for task in ("Flat", "Grid-Rebound", "tiny.yaml", "Urban-Scale")
             for algo in ("mappo", "ddpg") for seed in (0, 1)]
    ordered = cli.largest_first(cells)
    assert [cell.task for cell in ordered] == (["Urban-Scale"] * 4 + ["Grid-Rebound"] * 4
                                               + ["Flat"] * 4 + ["tiny.yaml"] * 4)
    assert [(c.algo, c.seed) for c in ordered[:4]] == [("mappo", 0), ("mappo", 1),
                                                       ("ddpg", 0), ("ddpg", 1)]


@pytest.mark.parametrize("extra, message", [
    (["--tasks", "Flatt"], "Peak-Storage"),
    (["--algos", "nope"], "mappo"),
    (["--seeds", "a"], "integers"),
    (["seed=3"], "train.<key>"),
    (["env.market.mechanism=mmr"], "the task fixes the env"),
    (["--cpus", "0"], "--cpus"),
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
    monkeypatch.setattr(cli.sweep, "run_trials", lambda *_, **__: pytest.fail("nothing trains"))
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


def test_a_record_older_than_a_config_key_matches_its_default(tmp_path):
    """A record made before a config section existed (no ``storage`` in its settings) is
    still valid when this run leaves the section at its default, and is refused when the
    run sets it to something else; a key the record has is compared as ever."""
    from envs.config import EnvConfig, StorageConfig, to_dict

    path = tmp_path / "cells" / "Flat" / "mappo__0.json"
    defaults = {"env": to_dict(EnvConfig())}
    wanted = {"env": to_dict(EnvConfig()), "days": [6]}
    stored = {"env": {k: v for k, v in wanted["env"].items() if k != "storage"}, "days": [6]}
    leaderboard.write_record(path, {"settings": stored, "metrics": {}})
    assert leaderboard.read_record(path, wanted, defaults) is not None
    with pytest.raises(ConfigError, match=r"env\.storage"):  # without defaults: a difference
        leaderboard.read_record(path, wanted)
    virtual = dict(wanted, env={**wanted["env"],
                                "storage": to_dict(StorageConfig(mode="virtual"))})
    with pytest.raises(ConfigError, match=r"env\.storage\.mode='none'.*'virtual'"):
        leaderboard.read_record(path, virtual, defaults)
    with pytest.raises(ConfigError, match=r"days"):
        leaderboard.read_record(path, dict(wanted, days=[7]), defaults)


def test_a_record_made_before_cells_changed_checkpoints_and_evaluations_still_counts(tmp_path):
    """The leaderboard gives its cells train.keep_buffers=false, train.checkpoint_every=0,
    train.eval_every=0 and train.eval_episodes=0 (what the finished run's checkpoint keeps,
    when checkpoints are written and whether evaluations run, not its scores): a record made
    with the shipped config's values, before that, is not a record of other settings."""
    cli = load_cli()
    days = [6]
    kept = cli.plan_cell("Flat", "mappo", 0, 100, ["train.keep_buffers=true",
                                                   "train.checkpoint_minutes=3"])
    dropped = cli.plan_cell("Flat", "mappo", 0, 100, list(cli.CELL_OVERRIDES))
    assert kept.config.train.keep_buffers and not dropped.config.train.keep_buffers
    assert kept.config.train.checkpoint_every > 0 == dropped.config.train.checkpoint_every
    assert kept.config.train.eval_every > 0 == dropped.config.train.eval_every
    assert kept.config.train.eval_episodes > 0 == dropped.config.train.eval_episodes
    path = kept.record_path(tmp_path)
    leaderboard.write_record(path, {"settings": cli.cell_settings(kept.config, days, 0)})
    assert leaderboard.read_record(path, cli.cell_settings(dropped.config, days, 0),
                                   cli.settings_defaults("mappo")) is not None
    other = cli.plan_cell("Flat", "mappo", 0, 200, list(cli.CELL_OVERRIDES))
    with pytest.raises(ConfigError, match=r"total_steps"):  # a setting that counts still does
        leaderboard.read_record(path, cli.cell_settings(other.config, days, 0),
                                cli.settings_defaults("mappo"))


def test_overrides_may_stand_between_options():
    args = load_cli().parse_args(["train.n_envs=8", "--seeds", "0", "mappo.gamma=0.9",
                                  "--force"])
    assert args.overrides == ["train.n_envs=8", "mappo.gamma=0.9"]
    assert args.seeds == "0" and args.force


def _evaluated(cost: float, savings: list[float]) -> dict:
    """A reference or cell record as the leaderboard keeps it (summary and daily savings)."""
    return {"summary": {"community_cost_mean": cost, "voltage_violations_mean": 0.0,
                        "line_violations_mean": 0.0, "savings_gini_mean": 0.1,
                        "agent_savings": [1.0, 2.0]},
            "savings_per_day": savings}


def test_a_run_that_costs_what_the_rule_costs_ties_it():
    """A run that went back to its rule (train.validation_days) costs the rule's cost up to
    float round-off (3e-8/day measured on Flat); it ties the best rule and is not counted
    among the seeds that beat it, while a gain of a thousandth of a unit a day is."""
    cli = load_cli()
    policies = {name: _evaluated(120.0, [1.0, 1.0]) for name in leaderboard.rule_names()}
    policies["community_self_consumption"] = _evaluated(114.61295227047343, [2.0, 2.0])
    policies["oracle"] = _evaluated(113.39, [4.0, 4.0])
    refs = {"Flat": {"settings": {"oracle": "oracle"}, "policies": policies}}
    cells = {("Flat", "mappo_imitation"): [_evaluated(cost, [2.0, 2.0]) for cost in
                                           (114.61295224038454, 114.611, 114.62)]}
    (row,) = [row for row in cli.table_rows(refs, cells, {}) if row["kind"] == "learner"]
    assert row["seeds_above_best_rule"] == 1  # the tie and the loss do not count
    assert leaderboard.beats_best_rule(114.61295227047343 - 114.611)
    assert not leaderboard.beats_best_rule(114.61295227047343 - 114.61295224038454)
    assert not leaderboard.beats_best_rule(0.0)


def test_summary_table_of_gains_over_the_best_rule():
    """One row per policy, one column per task: the gain over that task's best rule (cost/day),
    learners as IQM [CI] with the seeds above the best rule, hand-computed."""
    cli = load_cli()
    rules = leaderboard.rule_names()
    refs = {}
    for task, best_cost, oracle in (("A", 100.0, "oracle"), ("B", 50.0, "oracle_network")):
        policies = {name: _evaluated(best_cost + 10.0 + i, [1.0, 1.0])
                    for i, name in enumerate(rules)}
        policies["community_time_of_use"] = _evaluated(best_cost, [2.0, 2.0])
        policies["zi"] = _evaluated(best_cost + 7.0, [0.5, 0.5])
        policies["no_p2p"] = _evaluated(best_cost + 20.0, [0.0, 0.0])
        policies[oracle] = _evaluated(best_cost - 5.0, [4.0, 4.0])
        refs[task] = {"settings": {"oracle": oracle}, "policies": policies}
    cells = {("A", "mappo"): [_evaluated(c, [3.0, 3.0]) for c in (99.0, 98.0, 101.0)],
             ("B", "mappo"): [_evaluated(c, [3.0, 3.0]) for c in (49.0, 48.0, 47.0)],
             ("A", "ddpg"): [_evaluated(105.0, [0.0, 0.0])]}  # no ddpg cell on B
    submitted = {("B", "my.py:Mine"): _evaluated(52.5, [1.0, 1.0])}
    rows = cli.table_rows(refs, cells, submitted)
    text = cli.summary_markdown(rows, refs)
    lines = text.splitlines()
    assert lines[0] == "| policy | A | B |"
    assert lines[2] == "| best rule: cost/day | `community_time_of_use` 100.00 | " \
                       "`community_time_of_use` 50.00 |"
    assert lines[3] == "| oracle | +5.00 (`oracle`) | +5.00 (`oracle_network`) |"
    assert lines[4] == "| `zi` | -7.00 | -7.00 |"
    assert lines[5] == "| `no_p2p` | -20.00 | -20.00 |"
    # A: gains +1, +2, -1 (IQM of 3 = their mean), 2 of 3 seeds above the rule; the
    # bootstrap interval of 3 seeds spans their range
    assert lines[6] == "| mappo | +0.67 [-1.00, +2.00] 2/3 | +2.00 [+1.00, +3.00] 3/3 |"
    assert lines[7] == "| ddpg | -5.00 0/1 | – |"  # one seed: no interval; no cell on B
    assert lines[8] == "| `my.py:Mine` | – | -2.50 |"  # a submitted policy: one evaluation
    assert len(lines) == 9
    assert cli.summary_markdown([row for row in rows if row["kind"] != "learner"
                                 and row["kind"] != "submitted"], refs) == ""


def test_compute_table_from_the_records():
    cli = load_cli()
    cells = {("Flat", "mappo"): [{"train_wall_s": 10.0, "run_wall_s": 15.0, "score_wall_s": 2.0},
                                 {"train_wall_s": 30.0, "run_wall_s": 45.0, "score_wall_s": 4.0}],
             ("Flat", "ddpg"): [{"train_wall_s": 5.0, "score_wall_s": 1.0}]}  # an older record
    text = cli.compute_markdown(cells)
    assert "| Flat | mappo | 2 | 20 [10, 30] | 30 [15, 45] | 3 [2, 4] |" in text
    assert "| Flat | ddpg | 1 | 5 [5, 5] | – | 1 [1, 1] |" in text
    assert ("3 cells: 45 s of training, 60 s of whole runs (1 of the cells not recorded), 7 s "
            "of scoring" in text)
    old = {("Flat", "ddpg"): cells[("Flat", "ddpg")]}
    assert "1 cell: 5 s of training, whole runs not recorded, 1 s of scoring" in (
        cli.compute_markdown(old))
    assert cli.compute_markdown({}) == ""


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread", "local_ray")
def test_a_task_file_of_your_own_is_a_leaderboard_task(tmp_path, monkeypatch, capsys):
    """``--tasks <env YAML>``: the file is a task named after its stem, trained on Ray (the
    trials run in other processes and folders) and scored against its references; the same
    name twice is refused."""
    monkeypatch.setattr(tasks, "_OWN_TASKS", {})
    path = tmp_path / "mine" / "two-rate.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(
        {"community": {"feeder": "synthetic", "n_agents": 4, "battery_share": 1.0},
         "tariff": {"retail_tou": [0.15] * 7 + [0.35] * 15 + [0.15] * 2},
         "network": {"model": "none"}}))
    cli = load_cli()
    out = tmp_path / "lb"
    argv = tiny_mappo_argv(str(path), out)
    argv[argv.index("--seeds") + 1] = "0"
    assert cli.main(argv) == 0
    record = json.loads((out / "cells" / "two-rate" / "mappo__0.json").read_text())
    assert record["task"] == "two-rate"
    assert record["settings"]["run_config"]["env"]["community"]["n_agents"] == 4
    assert len(run_folders(out, "two-rate")) == 1
    refs = json.loads((out / "cells" / "two-rate" / "references.json").read_text())
    assert refs["settings"]["oracle"] == "oracle"
    table = (out / "leaderboard.md").read_text()
    assert "| two-rate | mappo | 1 |" in table and "| two-rate | `oracle` | 1 |" in table
    capsys.readouterr()
    assert cli.main(["--tasks", f"Flat,flat,{path}", "--out", str(tmp_path / "x")]) == 2
    assert "tasks of the same name" in capsys.readouterr().err


def test_demonstrations_are_solved_once_before_the_cells(tmp_path, monkeypatch, capsys):
    """The leaderboard solves each set of demonstrations its cells clone from once (MAPPO's
    and DDPG's imitation configs share one on a task), in worker processes, into the cache
    the cells read; a cached set and a cell that clones nothing are left alone."""
    import shutil

    from agents.imitation import demonstration_request, demonstrations_path, oracle_demonstrations
    from envs.data import cache_dir

    cli = load_cli()
    feeder = cache_dir() / "1-LV-rural1--0-sw.v1.npz"
    if feeder.is_file():  # the feeder's profiles, so that only the demonstrations are new
        shutil.copy(feeder, tmp_path / feeder.name)
    monkeypatch.setenv("PEERGRID_CACHE", str(tmp_path))
    cells = [cli.plan_cell("Flat", algo, seed, 100, overrides)
             for algo, seed, overrides in (("mappo_imitation", 0, ["mappo.imitation.days=2"]),
                                           ("mappo_imitation", 1, ["mappo.imitation.days=2"]),
                                           ("ddpg_imitation", 0, ["ddpg.imitation.days=2"]),
                                           ("ddpg", 0, []))]
    requests = [demonstration_request(cell.config) for cell in cells]
    assert requests[3] is None
    path = demonstrations_path(*requests[0])
    assert path.parent.parent == tmp_path and not path.exists()
    assert {demonstrations_path(*request) for request in requests[:3]} == {path}
    cli.prepare_demonstrations(cells, cpus=2)
    output = capsys.readouterr().out
    assert "solving 1 sets, their days split between 2 processes" in output
    assert "[Flat] demonstrations of mappo_imitation, ddpg_imitation (2 days of oracle)" in output
    assert path.is_file()
    stamp = path.stat().st_mtime_ns
    obs, battery = oracle_demonstrations(*requests[0])  # what a cell reads: the solved set
    assert obs.shape[:3] == battery.shape == (2, 96, 13) and path.stat().st_mtime_ns == stamp
    cli.prepare_demonstrations(cells, cpus=2)
    assert capsys.readouterr().out == ""
