"""agents/sweep.py (``train.py --sweep``): the override grammar, validation before any trial,
a 2-trial sweep on Ray end to end, its results table against the trials' metrics.json,
resuming without redoing a finished trial, and a failing trial reported while the other
finishes. One local Ray (2 CPUs) serves the whole module; trials are tiny MAPPO runs (the
tests on Ray are marked slow: together about 40 s on 2 cores)."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import train
from agents import sweep
from agents.run_config import build_run_config
from envs.config import ConfigError

ray = pytest.importorskip("ray")


def tiny_config() -> dict:
    """Two MAPPO iterations on a 3-agent synthetic community, evaluated on 2 test days."""
    return {
        "algo": "mappo", "seed": 0, "name": "tiny",
        "env": {"community": {"feeder": "synthetic", "n_agents": 3},
                "network": {"model": "none"}},
        "train": {"total_steps": 192, "n_envs": 2, "eval_every": 96, "eval_episodes": 2,
                  "checkpoint_every": 96, "torch_threads": 1, "eval_reference": "none"},
        "mappo": {"rollout_steps": 48, "hidden_sizes": [16], "update_epochs": 1,
                  "n_minibatches": 1},
    }


@pytest.fixture(scope="module")
def config_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config(), sort_keys=False))
    return path


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (the sweeps reuse a running Ray and leave it running);
    this module's functions travel to the workers by value (a trial's ``post`` hook)."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(**sweep.local_ray_options(2), log_to_driver=False)
    yield
    ray.shutdown()


# ------------------------------------------------------------------------------------------
# Grammar and validation (no Ray)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("item", "kind", "values"), [
    ("mappo.actor_lr=[1e-4,3e-4]", "grid", (1e-4, 3e-4)),
    ("env.market.mechanism=[uniform, mmr]", "grid", ("uniform", "mmr")),
    ("mappo.hidden_sizes=[[64,64],[128]]", "grid", ([64, 64], [128])),
    ("mappo.actor_lr=loguniform(1e-5,1e-3)", "loguniform", (1e-5, 1e-3)),
    ("mappo.ent_coef=uniform(0,0.01)", "uniform", (0, 0.01)),
    ("mappo.update_epochs=randint(2,6)", "randint", (2, 6)),
    ("env.market.mechanism=choice(uniform,mmr)", "choice", ("uniform", "mmr")),
])
def test_parse_axis(item, kind, values):
    axis = sweep.parse_axis(item)
    assert axis is not None and axis.kind == kind and axis.values == values
    assert axis.key == item.split("=")[0]


def test_fixed_values_are_not_axes():
    assert sweep.parse_axis("train.total_steps=1000") is None
    assert sweep.parse_axis("env.market.mechanism=mmr") is None


@pytest.mark.parametrize("item", ["mappo.actor_lr=[]", "mappo.actor_lr=[1,1]",
                                  "mappo.actor_lr=uniform(1)", "mappo.actor_lr=uniform(2,1)",
                                  "mappo.actor_lr=loguniform(0,1)",
                                  "mappo.update_epochs=randint(1.5,3)"])
def test_malformed_axis(item):
    with pytest.raises(ConfigError, match="override"):
        sweep.parse_axis(item)


def test_parse_seeds():
    assert sweep.parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert sweep.parse_seeds("0-1,7") == [0, 1, 7]
    for bad in ("a", "3-1", "1,1"):
        with pytest.raises(ConfigError, match="--seeds"):
            sweep.parse_seeds(bad)


def spec_of(argv: list[str]) -> sweep.SweepSpec:
    return sweep.build_spec(sweep.parse_args(argv))


def test_a_sweep_needs_evaluations(config_path, tmp_path):
    """A sweep ranks configurations by their final evaluation: train.eval_episodes=0 (runs
    without evaluations) is one error naming the key."""
    spec = spec_of(["--config", str(config_path), "--seeds", "0", "--out", str(tmp_path),
                    "train.eval_every=0", "train.eval_episodes=0", "mappo.actor_lr=[1e-3,3e-4]"])
    with pytest.raises(ConfigError, match=r"train\.eval_episodes.*sweep"):
        sweep.expand(spec)


def test_expand_grid_and_random(config_path, tmp_path):
    spec = spec_of(["--config", str(config_path), "--seeds", "0-1", "--out", str(tmp_path),
                    "mappo.actor_lr=[1e-3,3e-4]", "env.market.mechanism=[uniform,mmr]"])
    trials = sweep.expand(spec)
    assert len(trials) == 8 and len({t.key for t in trials}) == 8
    assert trials[0].params == {"mappo.actor_lr": 1e-3, "env.market.mechanism": "uniform",
                                "seed": 0}
    assert trials[-1].config.hyperparameters.actor_lr == 3e-4
    assert trials[-1].config.env.market.mechanism == "mmr" and trials[-1].config.seed == 1
    assert trials[0].logdir == tmp_path.resolve() / "trials" / trials[0].key
    random = ["--config", str(config_path), "--num-samples", "3", "--out", str(tmp_path),
              "mappo.actor_lr=loguniform(1e-5,1e-3)", "mappo.update_epochs=randint(1,4)"]
    drawn = sweep.expand(spec_of(random))
    assert spec_of(random).search == "random" and len(drawn) == 3
    assert [t.key for t in drawn] == [t.key for t in sweep.expand(spec_of(random))]  # seeded
    for trial in drawn:
        assert 1e-5 <= trial.config.hyperparameters.actor_lr <= 1e-3
        assert trial.config.hyperparameters.update_epochs in (1, 2, 3)


def test_tasks_axis(config_path, tmp_path):
    trials = sweep.expand(spec_of(["--config", str(config_path), "--tasks", "flat,Peak-Storage",
                                   "--out", str(tmp_path)]))
    assert [t.params["task"] for t in trials] == ["Flat", "Peak-Storage"]
    assert [t.config.name for t in trials] == ["Flat", "Peak-Storage"]
    # the task's env YAML is the base, the config's inline env keys stay (train.py --task)
    assert trials[0].config.env != trials[1].config.env
    assert trials[1].config.env.community.feeder == "synthetic"


@pytest.mark.parametrize(("override", "named"), [
    ("mappo.lr=[1e-4,3e-4]", "mappo.lr"),
    ("train.n_envs=[2,-1]", "train.n_envs"),
    ("env.market.mechanism=[uniform,mmmr]", "env.market.mechanism"),
    ("mappo.gamma=uniform(0.9,1.5)", "mappo.gamma"),
    ("mappo.hidden_sizes=[64,64]", "list of lists"),
    ("mappo.hidden_sizes=[64,128]", "list of lists"),
    ("train.total_stepz=10", "train.total_stepz"),
])
def test_bad_key_or_value_stops_before_any_trial(config_path, tmp_path, capsys, override,
                                                 named):
    out = tmp_path / "sweep"
    code = train.main(["--sweep", "--config", str(config_path), "--seeds", "0-1",
                       "--out", str(out), override])
    assert code == 2
    assert named in capsys.readouterr().err
    assert not out.exists()  # nothing written, no Ray started, no trial run


def test_trial_needing_more_cpus_than_the_local_ray_stops_before_it_starts(tmp_path,
                                                                          monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    trial = sweep.Trial(build_run_config(tiny_config(), ["train.torch_threads=3"]), tmp_path)
    with pytest.raises(ConfigError, match="3 CPUs"):
        sweep.check_local_resources([trial], sweep.RayOptions(cpus=2))
    sweep.check_local_resources([trial], sweep.RayOptions(cpus=4))


def test_results_table_groups_seeds():
    def finished(params, value):
        return sweep.TrialResult(f"k{len(params)}{value}", params, sweep.FINISHED,
                                 metrics={"final_eval": {"episodic_return": value,
                                                         "global_step": 5}})
    results = [finished({"a": 1, "seed": 0}, 1.0), finished({"a": 1, "seed": 1}, 3.0),
               finished({"a": 2, "seed": 0}, 5.0),
               sweep.TrialResult("e", {"a": 3, "seed": 0}, sweep.ERROR, error="boom")]
    tables = sweep.results_tables(results)
    first, second = tables["configurations"]
    assert first["params"] == {"a": 1} and first["seeds"] == [0, 1]
    row = first["metrics"]["episodic_return"]
    assert row["n"] == 2 and row["mean"] == 2.0 and row["std"] == pytest.approx(math.sqrt(2))
    assert row["iqm"] == 2.0 and row["ci_low"] <= 2.0 <= row["ci_high"]
    assert "global_step" not in first["metrics"]
    assert math.isnan(second["metrics"]["episodic_return"]["std"])
    assert tables["best"] == 1
    assert sweep.results_tables(results, mode="min")["best"] == 0
    text = sweep.results_markdown(tables, results)
    assert "error: a=3" in text and "**Best configuration**" in text


# ------------------------------------------------------------------------------------------
# Sweeps on Ray
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_sweep(local_ray, config_path, tmp_path_factory) -> Path:
    """A 2-trial sweep (seeds 0 and 1) through the command line."""
    out = tmp_path_factory.mktemp("sweep") / "out"
    assert train.main(["--sweep", "--config", str(config_path), "--seeds", "0-1",
                       "--out", str(out), "--verbose", "0"]) == 0
    return out


def run_folders(out: Path) -> list[Path]:
    return sorted(path.parent for path in out.glob("trials/*/*/config.yaml"))


@pytest.mark.slow
def test_sweep_runs_end_to_end(finished_sweep):
    runs = run_folders(finished_sweep)
    assert len(runs) == 2
    for run_dir in runs:  # ordinary train.py run folders
        for name in ("config.yaml", "checkpoint_latest.pt", "checkpoint_best.pt",
                     "metrics.json"):
            assert (run_dir / name).is_file(), name
        assert list(run_dir.glob("events.out.tfevents.*"))
    seeds = sorted(build_run_config(run / "config.yaml").seed for run in runs)
    assert seeds == [0, 1]
    records = sorted((finished_sweep / "records").glob("*.json"))
    assert len(records) == 2
    assert all(json.loads(path.read_text())["status"] == "finished" for path in records)
    for name in ("results.md", "results.csv", "results.json"):
        assert (finished_sweep / name).is_file()


@pytest.mark.slow
def test_results_table_matches_metrics_json(finished_sweep):
    per_run = [json.loads((run / "metrics.json").read_text())["final_eval"]
               for run in run_folders(finished_sweep)]
    (configuration,) = json.loads((finished_sweep / "results.json").read_text()
                                  )["configurations"]
    assert sorted(configuration["seeds"]) == [0, 1]
    for name in ("episodic_return", "community_cost", "self_sufficiency"):
        values = np.array([run[name] for run in per_run])
        row = configuration["metrics"][name]
        assert row["n"] == 2
        assert row["mean"] == pytest.approx(values.mean(), rel=1e-12)
        assert row["std"] == pytest.approx(values.std(ddof=1), rel=1e-9, abs=1e-15)
        assert row["iqm"] == pytest.approx(values.mean(), rel=1e-12)
    csv_rows = (finished_sweep / "results.csv").read_text().splitlines()
    returns = next(line for line in csv_rows if ",eval/episodic_return," in line)
    assert repr(configuration["metrics"]["episodic_return"]["mean"]) in returns


@pytest.mark.slow
def test_interrupted_sweep_resumes_without_redoing_finished_trials(finished_sweep, config_path):
    """One trial as a killed machine leaves it (checkpoint written, no metrics.json, no
    record); the same command finishes it in its own run folder and leaves the other one."""
    done, killed = run_folders(finished_sweep)
    done_mtime = (done / "metrics.json").stat().st_mtime_ns
    killed_key = killed.parent.name
    (killed / "metrics.json").unlink()
    (finished_sweep / "records" / f"{killed_key}.json").unlink()
    assert train.main(["--sweep", "--config", str(config_path), "--seeds", "0-1",
                       "--out", str(finished_sweep), "--verbose", "0"]) == 0
    assert run_folders(finished_sweep) == [done, killed]  # no new run folder
    assert (done / "metrics.json").stat().st_mtime_ns == done_mtime  # not redone
    assert (killed / "metrics.json").is_file()  # resumed from its checkpoint
    record = json.loads((finished_sweep / "records" / f"{killed_key}.json").read_text())
    assert record["status"] == "finished" and record["run_dir"] == str(killed)


def fail_after_training(config, run_dir, metrics):
    """A trial's ``post`` hook that raises (runs in the Ray worker)."""
    if config.seed == 1:
        raise RuntimeError("boom in seed 1")
    return {"scored": metrics["global_step"]}


@pytest.mark.slow
def test_failing_trial_is_reported_and_the_other_finishes(local_ray, tmp_path):
    trials = [sweep.Trial(build_run_config(tiny_config(), [f"seed={seed}"]), tmp_path / "runs",
                          {"seed": seed}, post=fail_after_training) for seed in (0, 1)]
    ok, failed = sweep.run_trials(trials, tmp_path / "state")
    assert ok.status == "finished" and ok.extra == {"scored": 192}
    assert Path(ok.run_dir, "metrics.json").is_file()
    assert failed.status == "error" and "boom in seed 1" in failed.error
    assert failed.params == {"seed": 1}
    # rerun: the finished trial is reused, the failed one tried again (and fails again)
    again = sweep.run_trials(trials, tmp_path / "state")
    assert again[0].reused and again[0].run_dir == ok.run_dir
    assert again[1].status == "error" and not again[1].reused


def worker_pid(config, run_dir, metrics):
    """A trial's ``post`` hook naming the worker process it ran in."""
    return {"pid": os.getpid(), "final_eval": metrics["final_eval"]}


@pytest.mark.slow
def test_trials_reuse_worker_processes_with_the_same_results(local_ray, tmp_path):
    """Four trials on two CPUs run in fewer than four worker processes (each new process
    costs seconds of start-up and imports per trial), and a trial that ran in a reused worker
    ends exactly as its twin (the same run config but the name) that did not."""
    trials = [sweep.Trial(build_run_config(tiny_config(), [f"seed={seed}", f"name={name}"]),
                          tmp_path / "runs", {"seed": seed, "name": name}, post=worker_pid)
              for name in ("first", "again") for seed in (0, 1)]
    results = sweep.run_trials(trials, tmp_path / "state")
    assert [result.status for result in results] == ["finished"] * 4
    pids = [result.extra["pid"] for result in results]
    assert len(set(pids)) < len(trials)
    for seed in (0, 1):
        assert results[seed].extra["final_eval"] == results[2 + seed].extra["final_eval"]


@pytest.mark.slow
def test_optuna_with_asha_runs_and_resumes(local_ray, config_path, tmp_path):
    """Optuna's sampler with ASHA: 2 trials, then the same sweep asked for 3 draws only one
    more (the 2 recorded ones are handed back to the sampler)."""
    out = tmp_path / "optuna"
    argv = ["--sweep", "--config", str(config_path), "--search", "optuna", "--asha",
            "--out", str(out), "--verbose", "0", "mappo.actor_lr=loguniform(1e-4,1e-2)",
            "env.market.mechanism=[uniform,mmr]"]
    assert train.main([*argv, "--num-samples", "2"]) == 0
    first = {path.name for path in (out / "records").glob("*.json")}
    assert len(first) == 2
    assert train.main([*argv, "--num-samples", "3"]) == 0
    records = [json.loads(path.read_text()) for path in (out / "records").glob("*.json")]
    assert len(records) == 3 and first < {path.name for path in
                                          (out / "records").glob("*.json")}
    for record in records:
        assert record["status"] in ("finished", "stopped")
        assert 1e-4 <= record["params"]["mappo.actor_lr"] <= 1e-2
        assert record["params"]["env.market.mechanism"] in ("uniform", "mmr")


def test_an_error_of_tunes_own_loop_leaves_trials_pending(tmp_path, capsys):
    """Ray's memory monitor killing a trial's actor as it started made ``Tuner.fit`` raise a
    RuntimeError out of the leaderboard (a traceback, the finished cells unscored): now one
    message, and the caller gets the trials back as pending to rerun."""

    class FailingTuner:
        def fit(self):
            raise RuntimeError("Caught unexpected exception: 1 worker(s) were killed due to "
                               "the node running low on memory.\nObject store memory usage: ...")

    sweep._fit(FailingTuner(), tmp_path, lambda config: None)
    err = capsys.readouterr().err
    assert "Ray Tune stopped: RuntimeError: Caught unexpected exception: 1 worker(s) were " \
           "killed due to the node running low on memory." in err
    assert "Object store" not in err and "rerun the same command" in err
