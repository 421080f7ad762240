"""Sweeps on Ray Tune: many seeds, tasks and hyperparameters, one ordinary run folder each.

    python train.py --sweep --config configs/mappo.yaml --seeds 0-4 \\
        'mappo.actor_lr=[1e-4,3e-4]' 'env.market.mechanism=[uniform,mmr]'
    python train.py --sweep --config configs/mappo.yaml --tasks Flat,Peak-Storage --seeds 0-2
    python train.py --sweep --config configs/mappo.yaml --search random --num-samples 16 \\
        'mappo.actor_lr=loguniform(1e-5,1e-3)' 'mappo.ent_coef=uniform(0,0.01)'
    python train.py --sweep ... --search optuna --num-samples 32 --asha   # Optuna TPE + ASHA
    python train.py --sweep ... --address auto --out /shared/sweep        # on a cluster's head
    peergrid-train --sweep ...                                             # the same, installed

**Overrides.** Every ``key=value`` of ``train.py`` works here, with the same dotted keys, YAML
values and strict validation (``agents.run_config.build_run_config``). A value of one of these
forms makes the key vary (:func:`parse_axis`; quote it for the shell):

======================  ==================================================================
value                   meaning
======================  ==================================================================
``[a,b,...]``           grid: every value (YAML values). A key whose value is itself a list
                        takes a list of lists: ``mappo.hidden_sizes=[[64,64],[128,128]]``
``choice(a,b,...)``     random search: one of the values
``uniform(lo,hi)``      random search: a float in [lo, hi]
``loguniform(lo,hi)``   random search: a float in [lo, hi], uniform in log (lo > 0)
``randint(lo,hi)``      random search: an integer in [lo, hi) (``hi`` excluded, as Tune's)
anything else           a fixed value, as in ``train.py``
======================  ==================================================================

``--seeds 0-4`` (or ``0,3,7``) and ``--tasks Flat,Peak-Storage`` (``envs.tasks``, as
``train.py --task``) are grid axes too. Before Ray starts, every trial's run config is built
and validated (a distribution: its bounds, every option of a choice); a bad key or value
stops the sweep with the message of ``train.py`` and no trial runs.

**Search** (``--search``): ``grid`` (the product of the grid axes, the default without
distributions), ``random`` (the default with distributions: ``--num-samples`` draws per grid
point with a seeded generator, ``--search-seed``, so the same command draws the same trials)
and ``optuna`` (Optuna's TPE sampler through Tune's ``OptunaSearch``, ``--num-samples``
trials; a list is a categorical choice there, and one seed and at most one task are allowed:
evaluate the best configuration over seeds with a grid sweep afterwards). ``--asha`` stops
poor trials early (Tune's ``ASHAScheduler`` on ``--metric``, time in env-steps).

**Trials.** One trial is one ``train.Trainer`` run in a Ray worker: an ordinary run folder
(``config.yaml``, TensorBoard events, checkpoints, ``metrics.json``) under
``<sweep>/trials/<key>/``, so ``evaluate.py``, ``train.py --resume`` and ``tensorboard --logdir
<sweep>`` work on it. It reports each evaluation's ``eval/*`` scalars (and ``global_step``) to
Tune. A trial asks Ray for ``max(1, train.torch_threads)`` CPUs and, with
``train.device=cuda``, one GPU. By default the command starts a local Ray with one CPU per core
(``--cpus``) and stops it at the end; ``--address`` (or ``RAY_ADDRESS``) sends the same sweep to
a running cluster, whose nodes need peergrid installed and ``--out`` on a file system they
share. Workers start with :data:`WORKER_ENV` (the Ray job's ``runtime_env``).

**Resume.** A trial's key is a hash of its resolved run config (:func:`config_key`). When it
ends, the driver writes ``<sweep>/records/<key>.json`` (finished, stopped by ASHA, or its
error). Rerunning the same command skips every finished or stopped trial, continues an
interrupted trial from its run folder's ``checkpoint_latest.pt`` and retries failed ones; a
trial that raises is recorded with its error and the others go on.

**Results.** ``<sweep>/results.md``, ``results.csv`` and ``results.json``: per configuration
(the trial parameters but the seed) and per final ``eval/*`` metric of ``metrics.json``: the
number of seeds, mean, standard deviation, interquartile mean and its 95 % percentile bootstrap
interval over seeds (``agents.leaderboard``, Agarwal et al. 2021, NeurIPS), and the best
configuration by the IQM of ``--metric``.

Other front ends (``benchmarks/leaderboard.py``) hand their own runs to :func:`run_trials`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import hashlib
import io
import itertools
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import train
from agents import leaderboard
from agents.run_config import RunConfig, build_run_config, find_config_file
from envs.config import ConfigError, parse_yaml
from envs.files import atomic_write_text, plain_json
from envs.tasks import get_task

__all__ = ["Axis", "RayOptions", "SearchOptions", "SweepSpec", "Trial", "TrialResult",
           "check_local_resources", "config_key", "expand", "main", "parse_axis",
           "parse_seeds", "ray_session", "read_result", "results_tables", "run_trials",
           "write_results"]

DEFAULT_METRIC = "eval/episodic_return"
"""The metric that picks the best configuration (and that Optuna and ASHA optimise)."""

RECORDS = "records"
"""Folder of a sweep's per-trial records (``<key>.json``)."""

TRIALS = "trials"
"""Folder of a sweep's run folders (``<key>/<run folder>``)."""

RESULT_KEY = "sweep/result"
"""Key of a trial's last Tune report holding its outcome as JSON (run folder, metrics.json)."""

FINISHED, STOPPED, ERROR = "finished", "stopped", "error"
"""Statuses of a trial record: trained to the end, stopped early by ASHA, raised."""

REUSE_WORKERS = True
"""Tune's ``reuse_actors``: a trial starts in the worker process of a finished one (same
resources) instead of a fresh process. Saves the start-up and imports, about 2.5 s of wall
time a trial (12 short leaderboard cells on 2 CPUs: 69-70 s -> 38-41 s, the same scores);
each trial builds its own Trainer, generators and torch settings, so where it runs does not
change its results (``tests/test_sweep.py``)."""

_LIST_HINT = (" (in a sweep a list is a grid of values; a list-valued key takes a list of "
              "lists, e.g. mappo.hidden_sizes=[[64,64]])")

_DISTRIBUTION = re.compile(r"(choice|uniform|loguniform|randint)\((.*)\)", re.DOTALL)


# --------------------------------------------------------------------------------------------
# What varies
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Axis:
    """One varying dotted key: a grid of values or a distribution."""

    key: str
    """Dotted run-config key (``mappo.actor_lr``)."""
    kind: str
    """``grid``, ``choice``, ``uniform``, ``loguniform`` or ``randint``."""
    values: tuple[Any, ...]
    """Grid or choice values, or the bounds ``(lo, hi)`` of a distribution."""

    @property
    def is_grid(self) -> bool:
        return self.kind == "grid"

    def checked_values(self) -> list[Any]:
        """The values validated before a sweep starts: all of a grid or choice, the bounds of
        a distribution (``randint``: ``lo`` and ``hi - 1``)."""
        if self.kind in ("grid", "choice"):
            return list(self.values)
        low, high = self.values
        return [low, high - 1] if self.kind == "randint" else [low, high]

    def sample(self, rng: np.random.Generator) -> Any:
        """One value drawn with ``rng`` (a grid has no draws)."""
        if self.kind == "choice":
            return self.values[int(rng.integers(len(self.values)))]
        low, high = self.values
        if self.kind == "uniform":
            return float(rng.uniform(low, high))
        if self.kind == "loguniform":
            return float(math.exp(rng.uniform(math.log(low), math.log(high))))
        if self.kind == "randint":
            return int(rng.integers(low, high))
        raise ValueError(f"axis '{self.key}': a grid is not sampled")

    def domain(self) -> Any:
        """The Ray Tune search domain (``tune.choice`` for a grid: Optuna samples it)."""
        from ray import tune

        if self.kind in ("grid", "choice"):
            return tune.choice(list(self.values))
        return {"uniform": tune.uniform, "loguniform": tune.loguniform,
                "randint": tune.randint}[self.kind](*self.values)


def parse_axis(item: str) -> Axis | None:
    """The :class:`Axis` of a ``key=value`` override whose value is a grid or a distribution
    (module docstring), or None for a fixed value. A malformed one raises
    :class:`ConfigError` naming the override."""
    if "=" not in item:
        raise ConfigError(f"override '{item}': expected key=value")
    key, text = (part.strip() for part in item.split("=", 1))
    match = _DISTRIBUTION.fullmatch(text)
    if match is None:
        if not text.startswith("["):
            return None
        values = parse_yaml(text, f"override '{item}'")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"override '{item}': a grid is a non-empty list [a,b,...]")
        kind = "grid"
    else:
        kind = match.group(1)
        values = parse_yaml(f"[{match.group(2)}]", f"override '{item}'")
        if not values:
            raise ConfigError(f"override '{item}': {kind}() needs values")
    if kind in ("grid", "choice"):
        if len({json.dumps(value, sort_keys=True) for value in values}) != len(values):
            raise ConfigError(f"override '{item}': duplicate values in {values}{_LIST_HINT}")
        return Axis(key, kind, tuple(values))
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    if len(values) != 2 or not numbers or not values[0] < values[1]:
        raise ConfigError(f"override '{item}': {kind}(lo,hi) takes two numbers lo < hi")
    if kind == "loguniform" and values[0] <= 0:
        raise ConfigError(f"override '{item}': loguniform(lo,hi) needs lo > 0")
    if kind == "randint" and not all(isinstance(v, int) for v in values):
        raise ConfigError(f"override '{item}': randint(lo,hi) takes integers")
    return Axis(key, kind, (values[0], values[1]))


def parse_seeds(text: str) -> list[int]:
    """``0-4`` (inclusive range), ``0,3,7`` or a mix (``0-2,10``); duplicates are an error."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if match is None:
            raise ConfigError(f"--seeds: expected integers or ranges like 0-4, got {text!r}")
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        if high < low:
            raise ConfigError(f"--seeds: empty range {part!r}")
        seeds.extend(range(low, high + 1))
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: duplicate seeds in {text!r}")
    return seeds


def _override(key: str, value: Any) -> str:
    """``key=value`` with ``value`` written as JSON (valid YAML flow, read back exactly)."""
    return f"{key}={json.dumps(value)}"


def config_key(config: RunConfig) -> str:
    """A trial's identity: a hash of its resolved run config (20 hex digits)."""
    text = json.dumps(plain_json(config.to_dict()), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


# --------------------------------------------------------------------------------------------
# Trials
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    """One training run handed to :func:`run_trials`."""

    config: RunConfig
    """The resolved run config (``build_run_config``)."""
    logdir: Path
    """Folder the run folder ``{name}__{algo}__{seed}__{time}`` is made in (absolute)."""
    params: dict[str, Any] = field(default_factory=dict)
    """What sets this trial apart (``{"mappo.actor_lr": 1e-4, "seed": 0}``): a configuration
    is the params but ``seed``; the results table groups by it."""
    header: str = ""
    """Comment on top of the run folder's ``config.yaml``."""
    post: Callable[[RunConfig, Path, dict[str, Any]], Any] | None = None
    """Called in the trial's worker after training, ``post(config, run_dir, metrics)``; its
    JSON-able return value is kept in the record as ``extra`` (a leaderboard scores the
    checkpoint there). Must be importable by the workers (a module-level function)."""

    @property
    def key(self) -> str:
        return config_key(self.config)


@dataclass
class TrialResult:
    """The outcome of one trial, as recorded in ``<state>/records/<key>.json``."""

    key: str
    params: dict[str, Any]
    status: str
    """``finished``, ``stopped`` (ASHA), ``error`` or ``pending`` (not run: interrupted)."""
    run_dir: str | None = None
    metrics: dict[str, Any] | None = None
    """The run's ``metrics.json`` (finished), or the last reported ``eval/*`` (stopped)."""
    error: str | None = None
    extra: Any = None
    """What :attr:`Trial.post` returned."""
    reused: bool = False
    """True when the record was already there (not run by this call)."""

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("reused")
        return plain_json(data)


def _record_path(state_dir: Path, key: str) -> Path:
    return state_dir / RECORDS / f"{key}.json"


def read_result(state_dir: Path, key: str) -> TrialResult | None:
    """The recorded outcome of trial ``key``, or None (none, or an unreadable file)."""
    try:
        data = json.loads(_record_path(state_dir, key).read_text())
        return TrialResult(**{name: data.get(name) for name in (
            "key", "params", "status", "run_dir", "metrics", "error", "extra")}, reused=True)
    except (OSError, ValueError, TypeError):
        return None


def _write_result(state_dir: Path, result: TrialResult, config: dict[str, Any]) -> None:
    data = {**result.to_json(), "config": config, "written": time.time()}
    atomic_write_text(_record_path(state_dir, result.key), json.dumps(data, indent=1) + "\n")


def _existing_run(trial: Trial) -> tuple[Path | None, bool]:
    """A run folder of ``trial`` already in its logdir (the same resolved config): the one
    with ``metrics.json`` (finished) first, else one with ``checkpoint_latest.pt`` (to
    resume); ``(None, False)`` when there is none."""
    found: tuple[Path | None, bool] = (None, False)
    for run_dir in sorted(Path(trial.logdir).glob("*/config.yaml")):
        run_dir = run_dir.parent
        try:
            same = build_run_config(run_dir / "config.yaml") == trial.config
        except ConfigError:
            continue
        if not same:
            continue
        if (run_dir / "metrics.json").is_file():
            return run_dir, True
        if (run_dir / "checkpoint_latest.pt").is_file():
            found = (run_dir, False)
    return found


def _train_trial(trial: Trial, report: Callable[[dict[str, Any]], None], fresh: bool = False
                 ) -> dict[str, Any]:
    """Train ``trial`` (or continue or reuse its run folder, unless ``fresh``), reporting
    every evaluation; returns ``{"run_dir", "metrics", "extra"}``."""
    run_dir, finished = (None, False) if fresh else _existing_run(trial)
    if finished:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    else:
        resume = run_dir is not None
        if run_dir is None:
            run_dir = train.new_run_dir(trial.logdir, trial.config, trial.header)

        def on_evaluate(step: int, scalars: dict[str, float]) -> None:
            report({"global_step": step, **{f"eval/{k}": v for k, v in scalars.items()}})

        trainer = train.Trainer(trial.config, run_dir, resume=resume, progress=False,
                                on_evaluate=on_evaluate)
        metrics = trainer.run()
        assert metrics is not None
    extra = trial.post(trial.config, run_dir, metrics) if trial.post is not None else None
    return {"run_dir": str(run_dir), "metrics": metrics, "extra": extra}


def _trainable(tune_config: dict[str, Any], trials: Sequence[Trial] | None = None,
               spec: SweepSpec | None = None, fresh: bool = False) -> None:
    """Ray Tune's function trainable: the trial of ``tune_config["trial"]`` (an index in
    ``trials``) or the trial of ``spec`` with the sampled values ``tune_config``; ``fresh``:
    a new run folder even where one of the same config exists (``--force``)."""
    from ray import tune

    if trials is not None:
        trial = trials[tune_config["trial"]]
    else:
        assert spec is not None
        trial = spec.trial(dict(tune_config))
    last: dict[str, Any] = {}

    def report(scalars: dict[str, Any]) -> None:
        last.clear()
        last.update(scalars)
        tune.report(scalars)

    outcome = _train_trial(trial, report, fresh)
    final = {f"eval/{k}": v for k, v in outcome["metrics"].get("final_eval", {}).items()
             if k != "global_step"}
    tune.report({**last, **final, "global_step": outcome["metrics"]["global_step"],
                 RESULT_KEY: json.dumps(plain_json({"key": trial.key, "params": trial.params,
                                                    "config": trial.config.to_dict(),
                                                    **outcome}))})


def _resources(trial: Trial) -> dict[str, float]:
    """What a trial asks Ray for: ``max(1, train.torch_threads)`` CPUs, one GPU on cuda."""
    cpus = max(1, trial.config.train.torch_threads)
    return {"cpu": cpus, "gpu": 1 if trial.config.train.device.startswith("cuda") else 0}


# --------------------------------------------------------------------------------------------
# Ray
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RayOptions:
    """Where trials run."""

    address: str | None = None
    """An existing Ray cluster (``auto`` on one of its nodes, ``host:6379``); None:
    ``RAY_ADDRESS`` if set, else a local Ray started and stopped here."""
    cpus: int | None = None
    """CPUs of the local Ray (None: every core). Ignored on a cluster."""

    def resolved_address(self) -> str | None:
        return self.address or os.environ.get("RAY_ADDRESS") or None


def check_local_resources(trials: Sequence[Trial], options: RayOptions) -> None:
    """Raise :class:`ConfigError` when a local Ray of ``options`` could never run one of
    ``trials`` (more CPUs than it has, or a GPU on a machine without CUDA), where Tune would
    wait for ever. Nothing is checked on a cluster (it may add nodes)."""
    if not trials or options.resolved_address() is not None:
        return
    cpus = options.cpus or os.cpu_count() or 1
    need = max(_resources(trial)["cpu"] for trial in trials)
    if need > cpus:
        raise ConfigError(f"a trial asks for {need} CPUs (train.torch_threads), the local Ray "
                          f"has {cpus} (--cpus)")
    if any(_resources(trial)["gpu"] for trial in trials):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("train.device=cuda: this machine has no CUDA GPU for the local "
                              "Ray (use a GPU machine or --address)")


WORKER_ENV = {"MALLOC_ARENA_MAX": "1"}
"""Environment variables of the Ray workers (the job's ``runtime_env``). Tune runs a trial in
a thread of its worker, not the main one, and glibc gives such a thread an arena of its own
whose heaps hold at most 64 MiB: the raised thresholds of ``train.malloc_threshold_mb`` do not
keep the update's large blocks there, so every one is mapped and unmapped again (page faults:
3.9 million against 0.42 million, 7.8 s against 1.7 s of system time, MAPPO 1.6x slower on
Urban-Scale; README, "Sweeps on Ray"). One arena, glibc's main one, for every thread of the
worker makes a trial train as fast as ``train.py``. A Ray started by the caller should pass
``runtime_env={"env_vars": WORKER_ENV}`` to ``ray.init`` (:func:`local_ray_options` does)."""


def local_ray_options(cpus: int) -> dict[str, Any]:
    """``ray.init`` keywords of a local Ray with ``cpus`` CPUs as the sweeps start one: no
    dashboard, Ray's logging left alone, workers with :data:`WORKER_ENV`."""
    return {"num_cpus": cpus, "include_dashboard": False, "configure_logging": False,
            "runtime_env": {"env_vars": dict(WORKER_ENV)}}


@contextlib.contextmanager
def ray_session(options: RayOptions) -> Iterator[None]:
    """A connected Ray: the running one (left running), the cluster of ``options``, or a
    local one with ``options.cpus`` CPUs and no dashboard (both shut down at the end); the
    workers of the last two start with :data:`WORKER_ENV`."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = options.resolved_address()
    if address is not None:
        ray.init(address=address, configure_logging=False,
                 runtime_env={"env_vars": dict(WORKER_ENV)})
    else:
        ray.init(**local_ray_options(options.cpus or os.cpu_count() or 1))
    try:
        yield
    finally:
        ray.shutdown()


@dataclass(frozen=True)
class SearchOptions:
    """How Tune picks and stops trials beyond a fixed list."""

    metric: str = DEFAULT_METRIC
    mode: str = "max"
    asha: bool = False
    """Stop poor trials early with ``ASHAScheduler`` (time: ``global_step``, env-steps)."""
    asha_grace: int | None = None
    """Env-steps a trial runs before ASHA may stop it (None: a quarter of the longest)."""
    asha_reduction: float = 3.0
    max_failures: int = 0
    """Retries of a failing trial within one sweep (Tune's ``FailureConfig``)."""

    def scheduler(self, max_steps: int) -> Any:
        if not self.asha:
            return None
        from ray.tune.schedulers import ASHAScheduler

        grace = self.asha_grace or max(1, max_steps // 4)
        # max_t one past the end: a trial that reaches train.total_steps is left to finish
        # its run (ASHA stops trials at max_t, before their metrics.json is written)
        return ASHAScheduler(time_attr="global_step", metric=self.metric, mode=self.mode,
                             max_t=max_steps + 1, grace_period=min(grace, max_steps),
                             reduction_factor=self.asha_reduction)


Resolver = Callable[[dict[str, Any]], "tuple[str, dict[str, Any], dict[str, Any]] | None"]
"""From a Tune trial's config to its ``(key, params, run config dict)``."""


def _list_resolver(trials: Sequence[Trial]) -> Resolver:
    def resolve(tune_config: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]] | None:
        if "trial" not in tune_config:
            return None
        trial = trials[tune_config["trial"]]
        return trial.key, trial.params, trial.config.to_dict()
    return resolve


def _spec_resolver(spec: SweepSpec) -> Resolver:
    def resolve(tune_config: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]] | None:
        if any(axis.key not in tune_config for axis in spec.axes):
            return None
        trial = spec.trial(dict(tune_config))
        return trial.key, trial.params, trial.config.to_dict()
    return resolve


def _make_callback(state_dir: Path, resolve: Resolver) -> Any:
    """A Tune callback, run in the driver, that writes each trial's record as it ends (so a
    driver killed later loses no finished trial)."""
    from ray.tune import Callback

    class _Recorder(Callback):
        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any
                              ) -> None:
            last = trial.last_result or {}
            if RESULT_KEY in last:
                outcome = json.loads(last[RESULT_KEY])
                result = TrialResult(outcome["key"], outcome["params"], FINISHED,
                                     outcome["run_dir"], outcome["metrics"],
                                     extra=outcome["extra"])
                _write_result(state_dir, result, outcome["config"])
                return
            found = resolve(trial.config)
            if found is None or not last:
                return  # stopped before reporting anything: it runs again
            key, params, config = found
            eval_scalars = {k: v for k, v in last.items()
                            if k.startswith("eval/") or k == "global_step"}
            _write_result(state_dir, TrialResult(key, params, STOPPED, metrics=eval_scalars),
                          config)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any
                           ) -> None:
            found = resolve(trial.config)
            if found is None:
                return
            key, params, config = found
            text = trial.get_error() if hasattr(trial, "get_error") else None
            _write_result(state_dir, TrialResult(key, params, ERROR,
                                                 error=_error_summary(str(text or "error"))),
                          config)

    return _Recorder()


def _error_summary(text: str) -> str:
    """The last lines of a traceback (the exception and where it came from)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[-6:])


def run_trials(trials: Sequence[Trial], state_dir: str | Path, *,
               ray_options: RayOptions = RayOptions(), search: SearchOptions = SearchOptions(),
               force: bool = False, verbose: int = 0) -> list[TrialResult]:
    """Run ``trials`` on Ray Tune, each a ``train.Trainer`` run in its own run folder, and
    return their results in order.

    ``state_dir`` holds the records (``records/<key>.json``) and Tune's own state
    (``tune/``). A trial whose record says finished or stopped is not run again (unless
    ``force``); an interrupted one continues from its run folder's ``checkpoint_latest.pt``;
    a failed one is retried. Ray is started only when a trial is to run (:func:`ray_session`:
    a Ray already initialised by the caller is used and left running). A trial that raises
    is returned with status ``error`` and its error; the others go on. Interrupted (Ctrl-C),
    or Tune's own loop failing (Ray's memory monitor killing a trial's actor as it starts
    makes ``Tuner.fit`` raise): the trials not recorded are returned as ``pending``, with one
    message and nothing raised.
    """
    from ray import tune

    state_dir = Path(state_dir).resolve()
    trials = [dataclasses.replace(t, logdir=Path(t.logdir).resolve()) for t in trials]
    keys = [trial.key for trial in trials]
    if len(set(keys)) != len(keys):
        duplicate = next(k for k in keys if keys.count(k) > 1)
        raise ConfigError(f"two trials have the same resolved run config "
                          f"({[t.params for t in trials if t.key == duplicate]})")
    done = {} if force else {k: r for k in keys if (r := read_result(state_dir, k)) is not None
                             and r.status in (FINISHED, STOPPED)}
    pending = [trial for trial in trials if trial.key not in done]
    if pending:
        import ray

        if not ray.is_initialized():
            check_local_resources(pending, ray_options)
        trainable = tune.with_resources(
            tune.with_parameters(_trainable, trials=pending, fresh=force),
            lambda config: _resources(pending[config["trial"]]))
        max_steps = max(trial.config.train.total_steps for trial in pending)
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search(list(range(len(pending))))},
            tune_config=tune.TuneConfig(scheduler=search.scheduler(max_steps),
                                        reuse_actors=REUSE_WORKERS),
            run_config=_tune_run_config(state_dir, _list_resolver(pending), search, verbose))
        with ray_session(ray_options):
            _fit(tuner, state_dir, _list_resolver(pending))
    results = []
    for trial in trials:
        result = done.get(trial.key) or read_result(state_dir, trial.key)
        if result is None:
            result = TrialResult(trial.key, trial.params, "pending")
        elif trial.key not in done:
            result.reused = False
        results.append(result)
    return results


def _fit(tuner: Any, state_dir: Path, resolve: Resolver) -> None:
    """``tuner.fit()``; then record the error of each failed trial the callback missed.
    Ctrl-C, or an error of Tune's own loop (not of a trial), ends it with one message: what
    finished is recorded, the rest runs on the next call."""
    try:
        grid = tuner.fit()
    except KeyboardInterrupt:
        print("sweep: interrupted; rerun the same command to continue", file=sys.stderr)
        return
    except Exception as error:  # Tune's own loop failed, e.g. Ray's memory monitor killed a
        # trial's actor while it started: what finished is recorded, the rest stays pending
        first = (str(error).strip().splitlines() or [""])[0][:400]
        print(f"sweep: error: Ray Tune stopped: {type(error).__name__}: {first}\nThe trials "
              f"not finished are left pending: rerun the same command to continue them",
              file=sys.stderr)
        return
    for result in grid:
        found = resolve(result.config or {}) if result.error is not None else None
        if found is None:
            continue
        key, params, config = found
        recorded = read_result(state_dir, key)
        if recorded is None or recorded.status != ERROR or recorded.error == "error":
            text = f"{type(result.error).__name__}: {result.error}"
            _write_result(state_dir, TrialResult(key, params, ERROR,
                                                 error=_error_summary(text)), config)


def _tune_run_config(state_dir: Path, resolve: Resolver, search: SearchOptions,
                     verbose: int) -> Any:
    from ray import tune

    return tune.RunConfig(
        storage_path=str(state_dir / "tune"), name=f"tune_{int(time.time())}",
        failure_config=tune.FailureConfig(max_failures=search.max_failures),
        callbacks=[_make_callback(state_dir, resolve)], verbose=verbose)


# --------------------------------------------------------------------------------------------
# A sweep from the command line
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepSpec:
    """A sweep as given on the command line: a run config, fixed overrides and axes."""

    config_path: str
    fixed: tuple[str, ...]
    axes: tuple[Axis, ...]
    seeds: tuple[int, ...] | None
    tasks: tuple[str, ...] | None
    search: str
    num_samples: int
    search_seed: int
    out: str
    """The sweep folder (absolute)."""

    def identity(self) -> str:
        """A hash of what the sweep runs (its default folder name)."""
        data = {"config": self.config_path, "fixed": self.fixed,
                "axes": [dataclasses.asdict(axis) for axis in self.axes],
                "seeds": self.seeds, "tasks": self.tasks, "search": self.search,
                "num_samples": self.num_samples, "search_seed": self.search_seed}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()
                              ).hexdigest()[:8]

    def overrides(self, params: dict[str, Any]) -> list[str]:
        """The ``train.py`` overrides of one trial (``task``, ``seed`` and axis values)."""
        items = list(self.fixed) + [_override(key, value) for key, value in params.items()
                                    if key not in ("task", "seed")]
        if "seed" in params:
            items.append(f"seed={params['seed']}")
        return train.task_overrides(params.get("task"), items)

    def trial(self, params: dict[str, Any]) -> Trial:
        """The :class:`Trial` of ``params`` (validated; raises :class:`ConfigError`)."""
        overrides = self.overrides(params)
        config = build_run_config(self.config_path, overrides)
        if config.train.eval_episodes == 0:  # nothing to rank the configurations by
            raise ConfigError("config key 'train.eval_episodes': got 0; allowed in a sweep: "
                              ">= 1 (a sweep ranks its configurations by --metric, an eval/* "
                              "value of each run's final evaluation)")
        params = {**params, "seed": config.seed}  # the config's own when not swept
        header = (f"peergrid sweep trial, resolved from {self.config_path} with "
                  f"{' '.join(overrides)}")
        return Trial(config, Path(self.out) / TRIALS / config_key(config), dict(params),
                     header)


def expand(spec: SweepSpec) -> list[Trial]:
    """The trials of a grid or random sweep, every run config built and validated: the
    product of the grid axes, ``num_samples`` draws of the distributions per grid point
    (random search; generator seeded with ``search_seed``), tasks, then seeds."""
    grid = [axis for axis in spec.axes if axis.is_grid]
    drawn = [axis for axis in spec.axes if not axis.is_grid]
    rng = np.random.default_rng(spec.search_seed)
    trials = []
    for point in itertools.product(*(axis.values for axis in grid)):
        for _ in range(spec.num_samples):
            sample = {axis.key: axis.sample(rng) for axis in drawn}
            for task in spec.tasks or (None,):
                for seed in spec.seeds or (None,):
                    params = {axis.key: value for axis, value in zip(grid, point, strict=True)}
                    params.update(sample)
                    if task is not None:
                        params["task"] = task
                    if seed is not None:
                        params["seed"] = seed
                    trials.append(spec.trial(params))
    return trials


def validate_axes(spec: SweepSpec) -> None:
    """Build the run config of every value of every axis (a distribution: its bounds),
    the others at their first value, so a bad key or value stops the sweep before Ray."""
    first = {axis.key: axis.checked_values()[0] for axis in spec.axes}
    if spec.tasks:
        first["task"] = spec.tasks[0]
    if spec.seeds:
        first["seed"] = spec.seeds[0]
    for axis in spec.axes:
        for value in axis.checked_values():
            try:
                spec.trial({**first, axis.key: value})
            except ConfigError as error:
                hint = _LIST_HINT if axis.is_grid and not isinstance(value, list) else ""
                raise ConfigError(f"sweep value {axis.key}={json.dumps(value)}: {error}{hint}"
                                  ) from None
    for task in spec.tasks or ():
        spec.trial({**first, "task": task})


def _optuna_trials(spec: SweepSpec, state_dir: Path, search: SearchOptions,
                   ray_options: RayOptions, verbose: int) -> list[TrialResult]:
    """Optuna's TPE sampler through Tune's ``OptunaSearch``: ``num_samples`` trials in all,
    the finished ones of an earlier run of the same sweep fed back to it (resume)."""
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    earlier = []
    for path in sorted((state_dir / RECORDS).glob("*.json")):
        result = read_result(state_dir, path.stem)
        if (result is not None and result.status in (FINISHED, STOPPED)
                and all(axis.key in result.params for axis in spec.axes)):
            earlier.append(result)  # a trial of this sweep, done: Optuna learns from it
    done_params = [{axis.key: r.params.get(axis.key) for axis in spec.axes} for r in earlier]
    rewards = [_metric_value(r, search.metric) for r in earlier]
    keep = [i for i, value in enumerate(rewards) if math.isfinite(value)]
    remaining = spec.num_samples - len(earlier)
    if remaining > 0:
        fixed = {key: value for key, value in (("seed", spec.seeds[0] if spec.seeds else None),
                                               ("task", spec.tasks[0] if spec.tasks else None))
                 if value is not None}
        # seeded by the trials done, so that a resumed sweep does not draw the first ones again
        searcher = OptunaSearch(
            metric=search.metric, mode=search.mode, seed=spec.search_seed + len(earlier),
            points_to_evaluate=[done_params[i] for i in keep] or None,
            evaluated_rewards=[rewards[i] for i in keep] or None)
        probe = spec.trial({**{a.key: a.checked_values()[0] for a in spec.axes}, **fixed})
        space = {**{axis.key: axis.domain() for axis in spec.axes}, **fixed}
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(_trainable, spec=spec),
                                _resources(probe)),
            param_space=space,
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=remaining,
                                        scheduler=search.scheduler(
                                            probe.config.train.total_steps),
                                        reuse_actors=REUSE_WORKERS),
            run_config=_tune_run_config(state_dir, _spec_resolver(spec), search, verbose))
        with ray_session(ray_options):
            _fit(tuner, state_dir, _spec_resolver(spec))
    return [r for path in sorted((state_dir / RECORDS).glob("*.json"))
            if (r := read_result(state_dir, path.stem)) is not None]


def _metric_value(result: TrialResult, metric: str) -> float:
    """``metric`` (``eval/<name>``) of a finished (metrics.json) or stopped trial."""
    metrics = result.metrics or {}
    if result.status == FINISHED:
        value = metrics.get("final_eval", {}).get(metric.removeprefix("eval/"))
    else:
        value = metrics.get(metric)
    return math.nan if value is None else float(value)


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


def _label(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in params.items()) or "(the run config)"


def results_tables(results: Sequence[TrialResult], metric: str = DEFAULT_METRIC,
                   mode: str = "max") -> dict[str, Any]:
    """Aggregate finished trials over seeds: ``{"configurations": [{"params", "label",
    "seeds", "metrics": {name: {"n", "mean", "std", "iqm", "ci_low", "ci_high"}}}], "best":
    index or None}``; a configuration is a trial's params but ``seed``; metrics are the
    final evaluation of each ``metrics.json`` (``final_eval``)."""
    groups: dict[str, dict[str, Any]] = {}
    for result in results:
        if result.status != FINISHED or not result.metrics:
            continue
        params = {k: v for k, v in result.params.items() if k != "seed"}
        group = groups.setdefault(json.dumps(params, sort_keys=True),
                                  {"params": params, "label": _label(params), "seeds": [],
                                   "values": {}})
        group["seeds"].append(result.params.get("seed"))
        for name, value in result.metrics.get("final_eval", {}).items():
            if name != "global_step" and isinstance(value, int | float):
                group["values"].setdefault(name, []).append(float(value))
    configurations = []
    for group in groups.values():
        metrics = {}
        for name, values in group["values"].items():
            sample = np.asarray(values, dtype=float)
            stats = leaderboard.aggregate(sample)
            finite = sample[np.isfinite(sample)]
            metrics[name] = {
                "n": stats["n"],
                "mean": float(finite.mean()) if finite.size else math.nan,
                "std": float(finite.std(ddof=1)) if finite.size > 1 else math.nan,
                "iqm": stats["iqm"], "ci_low": stats["ci_low"], "ci_high": stats["ci_high"]}
        configurations.append({"params": group["params"], "label": group["label"],
                               "seeds": group["seeds"], "metrics": metrics})
    name = metric.removeprefix("eval/")
    scored = [(i, c["metrics"][name]["iqm"]) for i, c in enumerate(configurations)
              if name in c["metrics"] and math.isfinite(c["metrics"][name]["iqm"])]
    best = None
    if scored:
        pick = max if mode == "max" else min
        best = pick(scored, key=lambda item: item[1])[0]
    return {"metric": metric, "mode": mode, "configurations": configurations, "best": best}


def _fmt(value: float) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.4g}"


def results_markdown(tables: dict[str, Any], results: Sequence[TrialResult]) -> str:
    """One markdown table per configuration (rows: eval metrics), the best configuration,
    and the trials that failed or were stopped."""
    lines = ["# peergrid sweep results", ""]
    counts = {s: sum(r.status == s for r in results)
              for s in (FINISHED, STOPPED, ERROR, "pending")}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items() if n) + " trials. Final "
                 "evaluation of each run (metrics.json `final_eval`) over seeds: mean, std, "
                 "interquartile mean with its 95 % bootstrap interval.")
    lines.append("")
    best = tables["best"]
    if best is not None:
        config = tables["configurations"][best]
        value = config["metrics"][tables["metric"].removeprefix("eval/")]
        lines += [f"**Best configuration** by the IQM of {tables['metric']} ({tables['mode']}):"
                  f" {config['label']} ({_fmt(value['iqm'])} [{_fmt(value['ci_low'])}, "
                  f"{_fmt(value['ci_high'])}])", ""]
    for index, config in enumerate(tables["configurations"]):
        lines += [f"## {index}: {config['label']}", "",
                  f"seeds: {', '.join(str(s) for s in config['seeds'])}", "",
                  "| metric | n | mean | std | IQM | 95 % CI |", "|---|---:|---:|---:|---:|---|"]
        for name, value in config["metrics"].items():
            lines.append(f"| eval/{name} | {value['n']} | {_fmt(value['mean'])} | "
                         f"{_fmt(value['std'])} | {_fmt(value['iqm'])} | "
                         f"[{_fmt(value['ci_low'])}, {_fmt(value['ci_high'])}] |")
        lines.append("")
    failed = [r for r in results if r.status in (ERROR, STOPPED, "pending")]
    if failed:
        lines += ["## Trials not in the tables", ""]
        for result in failed:
            detail = (result.error or "").splitlines()[-1:] or [""]
            lines.append(f"- {result.status}: {_label(result.params)} ({result.key})"
                         + (f": {detail[0]}" if detail[0] else ""))
        lines.append("")
    return "\n".join(lines)


def results_csv(tables: dict[str, Any]) -> str:
    """One CSV row per configuration and metric (long format)."""
    buffer = io.StringIO()
    fields = ["configuration", "params", "metric", "n", "mean", "std", "iqm", "ci_low",
              "ci_high", "best"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for index, config in enumerate(tables["configurations"]):
        for name, value in config["metrics"].items():
            writer.writerow({"configuration": index, "params": json.dumps(config["params"]),
                             "metric": f"eval/{name}", "best": int(index == tables["best"]),
                             **{k: "" if not math.isfinite(value[k]) else repr(value[k])
                                for k in ("mean", "std", "iqm", "ci_low", "ci_high")},
                             "n": value["n"]})
    return buffer.getvalue()


def write_results(out: Path, results: Sequence[TrialResult], metric: str, mode: str
                  ) -> dict[str, Any]:
    """Write ``results.md``, ``results.csv`` and ``results.json`` into ``out`` (atomically)."""
    tables = results_tables(results, metric, mode)
    atomic_write_text(out / "results.md", results_markdown(tables, results))
    atomic_write_text(out / "results.csv", results_csv(tables))
    atomic_write_text(out / "results.json", json.dumps(plain_json(
        {**tables, "trials": [r.to_json() for r in results]}), indent=1) + "\n")
    return tables


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def add_ray_arguments(parser: argparse.ArgumentParser, run: str) -> None:
    """``--address``, ``--cpus`` and ``--verbose``: where and how :func:`run_trials` trains
    its runs, named ``run`` in the help (a sweep's trial, a leaderboard's cell)."""
    parser.add_argument("--address", default=None,
                        help=f"train the {run}s on this running Ray cluster (auto, host:6379; "
                             f"default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--cpus", type=int, default=None,
                        help=f"CPUs of the local Ray, one single-threaded {run} per CPU "
                             f"(default: every core)")
    parser.add_argument("--verbose", type=int, default=1,
                        help=f"Ray Tune's progress output while {run}s train (0-3)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="train.py --sweep",
        description="Sweep seeds, tasks and hyperparameters on Ray Tune; each trial is a "
                    "train.py run folder (see agents/sweep.py).")
    parser.add_argument("--config", default=None,
                        help="run config YAML (default: configs/mappo.yaml)")
    parser.add_argument("--seeds", default=None,
                        help="seeds, e.g. 0-4 or 0,3,7 (default: the config's seed)")
    parser.add_argument("--tasks", default=None,
                        help="comma-separated tasks of envs/tasks.py or task files of your own "
                             "(paths of env YAMLs; as train.py --task)")
    parser.add_argument("--search", choices=("grid", "random", "optuna"), default=None,
                        help="grid (default without distributions), random (default with "
                             "them) or optuna (TPE through Tune's OptunaSearch)")
    parser.add_argument("--num-samples", type=int, default=None,
                        help="random: draws per grid point (default 8); optuna: trials "
                             "(default 16)")
    parser.add_argument("--search-seed", type=int, default=0,
                        help="seed of the random draws and of Optuna's sampler")
    parser.add_argument("--metric", default=DEFAULT_METRIC,
                        help="eval/* metric of the best configuration, Optuna and ASHA")
    parser.add_argument("--mode", choices=("max", "min"), default="max")
    parser.add_argument("--asha", action="store_true",
                        help="stop poor trials early (ASHA on --metric, time in env-steps)")
    parser.add_argument("--asha-grace", type=int, default=None,
                        help="env-steps before ASHA may stop a trial (default: a quarter of "
                             "train.total_steps)")
    parser.add_argument("--max-failures", type=int, default=0,
                        help="retries of a failing trial within the sweep")
    parser.add_argument("--logdir", default="runs",
                        help="root of the default sweep folder (default: runs)")
    parser.add_argument("--out", default=None,
                        help="sweep folder (default: <logdir>/sweep__<config>__<hash of the "
                             "sweep>; the same command finds it again)")
    add_ray_arguments(parser, "trial")
    parser.add_argument("--force", action="store_true",
                        help="rerun finished trials instead of skipping them")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate and list the trials, run nothing")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="train.py overrides; [a,b] grid, choice(..), uniform(lo,hi), "
                             "loguniform(lo,hi), randint(lo,hi) vary")
    # key=value overrides may come before, between or after the options
    return parser.parse_intermixed_args(argv)


def build_spec(args: argparse.Namespace) -> SweepSpec:
    """The :class:`SweepSpec` of the command line (raises :class:`ConfigError`)."""
    fixed, axes = [], []
    for item in args.overrides:
        axis = parse_axis(item)
        if axis is None:
            fixed.append(item)
        else:
            axes.append(axis)
    keys = [axis.key for axis in axes] + [item.split("=", 1)[0].strip() for item in fixed]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"a key is given twice in {args.overrides}")
    if "seed" in keys and args.seeds:
        raise ConfigError("seed= and --seeds both given; use --seeds")
    if "env.task" in keys and args.tasks:
        raise ConfigError("env.task= and --tasks both given; use --tasks")
    search = args.search or ("random" if any(not a.is_grid for a in axes) else "grid")
    if search == "grid" and any(not axis.is_grid for axis in axes):
        raise ConfigError("--search grid: distributions need --search random or optuna")
    num_samples = args.num_samples or {"grid": 1, "random": 8, "optuna": 16}[search]
    if num_samples < 1 or (search == "grid" and num_samples != 1):
        raise ConfigError("--num-samples: >= 1, and only with --search random or optuna "
                          "(a grid repeats over seeds: --seeds)")
    seeds = tuple(parse_seeds(args.seeds)) if args.seeds else None
    tasks = None
    if args.tasks:
        tasks = tuple(get_task(name.strip(), where="--tasks").name
                      for name in args.tasks.split(",") if name.strip())
        if len(set(tasks)) != len(tasks):
            raise ConfigError(f"--tasks: duplicate tasks in {args.tasks!r}")
    if search == "optuna":
        if (seeds and len(seeds) > 1) or (tasks and len(tasks) > 1):
            raise ConfigError("--search optuna: one seed and at most one task (evaluate the "
                              "best configuration over seeds with a grid sweep afterwards)")
        if not axes:
            raise ConfigError("--search optuna: nothing varies")
        for axis in axes:
            if axis.kind in ("grid", "choice") and not all(
                    value is None or isinstance(value, bool | int | float | str)
                    for value in axis.values):
                raise ConfigError(f"--search optuna: {axis.key} takes lists, which Optuna "
                                  f"cannot choose from; use a grid sweep for it")
    if not args.metric.startswith("eval/"):
        raise ConfigError(f"--metric: an eval/* metric, got {args.metric!r}")
    config_path = str(find_config_file(args.config or train.DEFAULT_CONFIG).resolve())
    spec = SweepSpec(config_path, tuple(fixed), tuple(axes), seeds, tasks, search,
                     num_samples, args.search_seed, out="")
    out = Path(args.out) if args.out else Path(args.logdir) / (
        f"sweep__{Path(config_path).stem}__{spec.identity()}")
    return dataclasses.replace(spec, out=str(out.resolve()))


def main(argv: list[str] | None = None) -> int:
    """``python train.py --sweep ...`` (``peergrid-train --sweep ...``)."""
    args = parse_args(argv)
    try:
        spec = build_spec(args)
        validate_axes(spec)
        trials = expand(spec) if spec.search != "optuna" else []
        search = SearchOptions(metric=args.metric, mode=args.mode, asha=args.asha,
                               asha_grace=args.asha_grace, max_failures=args.max_failures)
        ray_options = RayOptions(address=args.address, cpus=args.cpus)
        check_local_resources(trials, ray_options)
    except ConfigError as error:
        print(f"train.py --sweep: error: {error}", file=sys.stderr)
        return 2
    out = Path(spec.out)
    done = sum(1 for t in trials if (r := read_result(out, t.key)) is not None
               and r.status in (FINISHED, STOPPED))
    what = (f"{len(trials)} trials ({done} already done)" if spec.search != "optuna"
            else f"{spec.num_samples} Optuna trials")
    print(f"sweep: {what} of {spec.config_path} -> {out}", flush=True)
    if args.dry_run:
        for trial in trials:
            print(f"  {trial.key}  {_label(trial.params)}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "sweep.json", json.dumps(
        {"command": ["train.py", "--sweep", *(argv if argv is not None else sys.argv[1:])],
         "spec": dataclasses.asdict(spec)}, indent=1, default=str) + "\n")
    start = time.perf_counter()
    if spec.search == "optuna":
        results = _optuna_trials(spec, out, search, ray_options, args.verbose)
    else:
        results = run_trials(trials, out, ray_options=ray_options, search=search,
                             force=args.force, verbose=args.verbose)
    tables = write_results(out, results, search.metric, search.mode)
    print(results_markdown(tables, results))
    print(f"sweep: wrote {out / 'results.md'}, {out / 'results.csv'} "
          f"({time.perf_counter() - start:.0f} s); tensorboard --logdir {out}")
    errors = [r for r in results if r.status == ERROR]
    for result in errors:
        print(f"sweep: trial {result.key} ({_label(result.params)}) failed:\n"
              f"{result.error}", file=sys.stderr)
    pending = [r for r in results if r.status == "pending"]
    if pending:
        print(f"sweep: {len(pending)} trials did not finish (interrupted); rerun the same "
              f"command to continue them", file=sys.stderr)
        return 130
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
