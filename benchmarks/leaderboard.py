"""The leaderboard: every algorithm on every task over several seeds, scored against every
rule-based baseline and the task's oracle on the task's held-out test days.

    python benchmarks/leaderboard.py [--tasks Flat,Peak-Storage] [--algos mappo,maddpg]
        [--policies my_pkg.my_mod:MyPolicy,sb3:model.zip] [--seeds 0,1,2] [--steps N]
        [--episodes 0] [--out results/leaderboard] [--cpus N | --address auto] [--force]
        [train.n_envs=64 mappo.actor_lr=1e-3 ...]

For each task (``envs/tasks.py``; ``--tasks my_tasks/two-rate.yaml``, the path of an env YAML,
is a task of your own named after the file):

1. **References**, once per task, in this process: every rule-based baseline of
   ``agents.baselines.BASELINES`` (all but ``random``) and the task's oracle (``oracle`` or
   ``oracle_network``), run by ``evaluate.Evaluator`` on the task's test days (``--episodes
   N``: N of them evenly spaced, 0 = all) with evaluation seed ``--eval-seed``. Saved as
   ``<out>/cells/<task>/references.json`` (a baseline registered later is scored and added by
   the next run).
2. **Cells**, one per algorithm x seed. Every cell without a finished record is one trial of
   ``agents.sweep.run_trials`` (Ray Tune): ``train.Trainer`` trains ``configs/<algo>.yaml`` on the
   task (as ``python train.py --task <task> --config configs/<algo>.yaml seed=<seed>``, with
   ``train.total_steps=--steps`` when given and the trailing overrides) into a run folder under
   ``<out>/runs/<task>/<config>/``, in a Ray worker; the cells of all tasks train side by side, each
   asking Ray for ``train.torch_threads`` CPUs (1 in the shipped configs). By default a local Ray is
   started with ``--cpus`` CPUs (default: every core; one single-threaded cell per CPU) and stopped
   at the end; ``--address`` (or ``RAY_ADDRESS``) sends the cells to a running cluster instead,
   whose nodes need peergrid installed and ``--out`` on a file system they share with this machine
   at the same path. Ray (``pip install 'peergrid[sweep]'``) is needed only when a cell is to be
   trained. Cells start largest community first (the longest first, so that the last to start are
   short ones: :func:`largest_first`). Right after training, in the same worker,
   ``evaluate.RunScorer`` scores the run's final checkpoint (``checkpoint_latest.pt``; not the best
   one, which ``train.py`` picks by evaluations on test days: choosing on the scored days would
   flatter the learners) in the run's own env config (the task's, plus the algorithm's inline env
   keys such as dqn's discrete actions) on the same days with the same seed; a run trained without
   those scores (by an earlier version, or scored on other days) is scored in this process. Saved as
   ``<out>/cells/<task>/<algo>__<seed>.json``; the engine's own state (a record per trained run,
   keyed by a hash of its run config, and Tune's folders) is in ``<out>/sweep/``.
3. **Submitted policies** (``--policies``), one per spec, no training: any spec that
   ``evaluate.py --policies`` takes but the oracles (a policy of your own, ``agents.external``:
   ``module.path:Name``, ``path/to/file.py:Name``, ``sb3:model.zip``; a variant of a rule such
   as ``fixed_price:price_fraction=0.7``; a run folder), scored by ``evaluate.Evaluator`` in the
   task's env config on the same days with the same seed, one row each (seeds 1: one
   deterministic evaluation). Saved as ``<out>/cells/<task>/policy__<spec>.json``; the record
   depends on the spec and, for a file spec, the file's SHA-256 (a retrained model is a record
   with other settings: ``--force``). With ``--policies`` and no ``--algos`` nothing is
   trained (and Ray is not started); give ``--algos`` too to have the learners' rows beside
   them (finished cells are read from their records, not retrained). A spec that cannot be
   loaded stops the command before anything runs; a policy that fails on a task (it does not
   fit the task's env, or raises) is reported with its name, the other rows are made, and the
   exit code is 2.

**Resume.** Every record is written atomically when it is finished; rerunning the same
command skips the finished ones: a cell with a record is not trained again, a cell trained
but not yet scored (the engine's record of its run is there) is only scored, and a cell
interrupted while training continues from its run folder's ``checkpoint_latest.pt``
(``agents.sweep``). ``--force`` redoes everything (cells in fresh run folders), and a record
made with other settings (budget, days, configs) stops the run with a message naming the
setting. A cell whose training raises is reported with its error while the others train and
are scored; the table of what finished is written and the exit code is 2 (130 when the
command was interrupted: rerun it to continue).

Records keep each policy's ``evaluate.summarise`` row and per-day savings; the columns of
``agents.leaderboard`` (share of the task oracle's savings, gain over the best rule, ...) are
computed from them when the table is made, and aggregated over seeds (interquartile mean and
95 % bootstrap confidence interval, Agarwal et al. 2021) and written to ``<out>/leaderboard.md``,
``leaderboard.csv`` and ``leaderboard.png``; the markdown table is printed. ``leaderboard.md``
opens with the gain over the best rule as one table (:func:`summary_markdown`: a column per
task, a row per policy, with how many seeds beat the best rule) and ends with what the cells
and this run of the command cost (:func:`compute_markdown`).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.util
import io
import math
import os
import sys
import textwrap
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # train.py and evaluate.py live at the repository root
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import evaluate  # noqa: E402
import train  # noqa: E402
from agents import leaderboard, registry, sweep  # noqa: E402
from agents.baselines import ORACLES  # noqa: E402
from agents.external import file_sha256, spec_source_file  # noqa: E402
from agents.imitation import (  # noqa: E402
    demonstration_request,
    demonstrations_path,
    solve_demonstration_sets,
)
from agents.leaderboard import rule_names  # noqa: E402
from agents.policy import PolicyLoadError  # noqa: E402
from agents.run_config import RunConfig, build_run_config  # noqa: E402
from envs import metrics  # noqa: E402
from envs.config import ConfigError, EnvConfig, load_yaml, to_dict  # noqa: E402
from envs.data import load_feeder  # noqa: E402
from envs.files import atomic_write, atomic_write_text  # noqa: E402
from envs.tasks import get_task, task_env_config, task_names  # noqa: E402

CONFIGS = ROOT / "configs"

SCORED_CHECKPOINT = "checkpoint_latest.pt"
"""The checkpoint a cell is scored with: the final policy, never one selected on test days."""

SWEEP_STATE = "sweep"
"""Folder of ``<out>`` holding ``agents.sweep``'s state (its records of trained runs, Tune's)."""

FORMATS = {"community_cost": ".2f", "oracle_share": ".3f", "gain_vs_best_rule": "+.2f",
           "violations": ".1f", "savings_gini": ".3f", "worse_off_share": ".2f"}
"""How each column prints in the markdown table."""


def shipped_algorithms() -> dict[str, str]:
    """Every shipped run config ``configs/<name>.yaml`` of a registered algorithm, by name
    (the file's stem): its ``algo``. Variants of one algorithm (``mappo_imitation``: MAPPO
    with options) are rows of their own next to the pure learner (``mappo``)."""
    found = {}
    for path in sorted(CONFIGS.glob("*.yaml")):
        data = load_yaml(path)
        if isinstance(data, dict) and data.get("algo") in registry.names():
            found[path.stem] = data["algo"]
    order = {algo: index for index, algo in enumerate(registry.names())}
    return dict(sorted(found.items(), key=lambda item: (order[item[1]], item[0])))


# --------------------------------------------------------------------------------------------
# References and cells
# --------------------------------------------------------------------------------------------


def cell_folder(out: Path, task: str) -> Path:
    return out / "cells" / task


def policy_record_path(out: Path, task: str, spec: str) -> Path:
    """The record of a submitted policy: ``policy__<spec, as a file name>__<hash>.json``
    (the hash keeps specs apart that differ only in characters a file name cannot hold)."""
    digest = hashlib.sha1(spec.encode()).hexdigest()[:8]
    return cell_folder(out, task) / f"policy__{evaluate._file_name(spec)[:80]}__{digest}.json"


def policy_settings(task: str, spec: str, days: list[int], eval_seed: int) -> dict[str, Any]:
    """What a submitted policy's score depends on: the task's env config, the days, the seed,
    the spec and, for a file spec (``.py`` or SB3 ``.zip``), the file's SHA-256."""
    source = spec_source_file(spec)
    return {"env": to_dict(task_env_config(task)), "days": days, "eval_seed": eval_seed,
            "policy": spec, "source_sha256": file_sha256(source) if source is not None
            and source.is_file() else None}


def reference_settings(task: str, days: list[int], eval_seed: int) -> dict[str, Any]:
    """What a task's references depend on: a cached record with others is not reused."""
    return {"env": to_dict(task_env_config(task)), "days": days, "eval_seed": eval_seed,
            "oracle": get_task(task).oracle}


def settings_defaults(algo: str | None = None) -> dict[str, Any]:
    """Default values shaped as the records' settings (``agents.leaderboard.read_record``'s
    ``defaults``): the env config's defaults under ``env``, and with ``algo`` (a registry
    name, the run config's ``algo``) its run config's under ``run_config``. A record made
    before a config key existed matches when this run leaves that key at its default."""
    defaults: dict[str, Any] = {"env": to_dict(EnvConfig())}
    if algo is not None:
        defaults["run_config"] = build_run_config({"algo": algo}).to_dict()
    return defaults


UNSCORED_KEYS = ("keep_buffers", "checkpoint_every", "checkpoint_minutes", "eval_every",
                 "eval_episodes")
"""``train`` keys that decide when checkpoints are written and what they keep, and whether
and how often training evaluates on its own (they leave the trained state as it was, bit for
bit: ``tests/test_train.py::test_evaluations_do_not_change_what_is_trained``), not what is
trained and scored: not one of a cell record's settings (:data:`CELL_OVERRIDES` sets four of
them, and records made before it did still count)."""


def cell_settings(config: RunConfig, days: list[int], eval_seed: int) -> dict[str, Any]:
    """What a cell's scores depend on: its resolved run config but :data:`UNSCORED_KEYS`,
    the scored days and the seed."""
    run_config = config.to_dict()
    for key in UNSCORED_KEYS:
        del run_config["train"][key]
    return {"run_config": run_config, "days": days, "eval_seed": eval_seed,
            "checkpoint": SCORED_CHECKPOINT}


def references(task: str, days: list[int], eval_seed: int, out: Path, force: bool
               ) -> dict[str, Any]:
    """The task's oracle and every rule-based baseline on ``days`` (cached; a baseline
    registered after the record was made is evaluated and added)."""
    settings = reference_settings(task, days, eval_seed)
    path = cell_folder(out, task) / "references.json"
    record = None if force else leaderboard.read_record(path, settings, settings_defaults())
    policies = {} if record is None else record["policies"]
    missing = [name for name in (settings["oracle"], *rule_names()) if name not in policies]
    if not missing:
        print(f"[{task}] references: done ({path})", flush=True)
        return record
    start = time.perf_counter()
    evaluator = evaluate.Evaluator(task_env_config(task), days, seed=eval_seed)
    for name in missing:
        policies[name] = evaluate.record_scores(evaluator.run(name))
    leaderboard.write_record(path, {"task": task, "settings": settings, "policies": policies})
    print(f"[{task}] references: {', '.join(missing)} in {time.perf_counter() - start:.0f} s",
          flush=True)
    return leaderboard.read_record(path, settings, settings_defaults())


def run_config(task: str, algo: str, seed: int, steps: int | None,
               overrides: list[str]) -> RunConfig:
    """The run config of one cell: ``configs/<algo>.yaml`` on ``task`` (``train.py --task``)."""
    budget = [] if steps is None else [f"train.total_steps={steps}"]
    return build_run_config(CONFIGS / f"{algo}.yaml",
                            train.task_overrides(task, [f"seed={seed}", *budget, *overrides]))


@dataclass(frozen=True)
class Cell:
    """One (task, shipped config, seed) of the leaderboard and the run config it trains."""

    task: str
    algo: str
    """The shipped run config's name (``configs/<algo>.yaml``)."""
    seed: int
    config: RunConfig
    """:func:`run_config` of the cell."""
    header: str
    """Comment on top of the run folder's ``config.yaml``."""

    @property
    def label(self) -> str:
        return f"[{self.task}] {self.algo} seed {self.seed}"

    def record_path(self, out: Path) -> Path:
        return cell_folder(out, self.task) / f"{self.algo}__{self.seed}.json"

    def trial(self, out: Path, days: list[int] | None = None, eval_seed: int = 0
              ) -> sweep.Trial:
        """The cell as a trial of ``agents.sweep``: a run folder under
        ``<out>/runs/<task>/<config>`` (run folders are named after the algorithm, which a
        config and its variants share); with ``days``, the trial's worker also scores the
        run's :data:`SCORED_CHECKPOINT` on them with ``eval_seed`` right after training
        (``evaluate.RunScorer``)."""
        post = None if days is None else evaluate.RunScorer(tuple(days), eval_seed,
                                                             SCORED_CHECKPOINT)
        return sweep.Trial(self.config, out / "runs" / self.task / self.algo,
                           {"task": self.task, "algo": self.algo, "seed": self.seed},
                           header=self.header, post=post)


def plan_cell(task: str, algo: str, seed: int, steps: int | None,
              overrides: list[str]) -> Cell:
    """The :class:`Cell` of (task, algo, seed) with ``--steps`` and the algorithm's overrides
    (raises :class:`ConfigError` on a bad override)."""
    header = (f"peergrid leaderboard cell: task {task}, configs/{algo}.yaml, seed {seed}"
              + (f", train.total_steps={steps}" if steps is not None else "")
              + (f", {' '.join(overrides)}" if overrides else ""))
    return Cell(task, algo, seed, run_config(task, algo, seed, steps, overrides), header)


def prepare_demonstrations(cells: list[Cell], cpus: int) -> None:
    """Solve the oracle demonstrations that ``cells`` clone from and this machine's cache
    (``agents.imitation``) lacks, each distinct set once, before the cells train: otherwise
    the first cells of a task, started together, would each solve the same set (minutes per
    set on the larger feeders) while holding a CPU. The days of every set are split between
    ``cpus`` processes (``agents.imitation.solve_demonstration_sets``), the sets started in
    the order of their first cell (``main`` passes the cells largest first). A set that fails
    here is left to its cells, which report the error."""
    jobs: dict[Path, tuple[Cell, tuple[EnvConfig, int, str, str], list[str]]] = {}
    for cell in cells:
        request = demonstration_request(cell.config)
        if request is None:
            continue
        path = demonstrations_path(*request)
        if path in jobs:
            if cell.algo not in jobs[path][2]:
                jobs[path][2].append(cell.algo)
        elif not path.is_file():
            jobs[path] = (cell, request, [cell.algo])
    if not jobs:
        return
    sets = list(jobs.values())
    print(f"demonstrations: solving {len(sets)} sets, their days split between {cpus} "
          f"processes", flush=True)

    def report(index: int, outcome: float | Exception) -> None:
        cell, request, algos = sets[index]
        what = (f"[{cell.task}] demonstrations of {', '.join(algos)} ({request[1]} days of "
                f"{request[2]})")
        if isinstance(outcome, Exception):  # the cells solve it again and report it
            print(f"leaderboard.py: warning: {what}: {type(outcome).__name__}: {outcome}",
                  file=sys.stderr, flush=True)
        else:
            print(f"{what} in {outcome:.0f} s", flush=True)

    solve_demonstration_sets([request for _, request, _ in sets], cpus, report)


def largest_first(cells: list[Cell]) -> list[Cell]:
    """``cells`` with those of the larger communities (more agents) first, otherwise in their
    order: the long cells start first and the last to start are short ones, so that no CPU
    waits long at the end for one cell (longest processing time first)."""
    sizes: dict[tuple[str, int | None, int], int] = {}

    def minus_size(cell: Cell) -> int:
        community = cell.config.env.community
        key = (community.feeder, community.n_agents, community.seed)
        if key not in sizes:  # each community's data loaded once
            sizes[key] = load_feeder(community.feeder, n_agents=community.n_agents,
                                     seed=community.seed).n_agents
        return -sizes[key]

    return sorted(cells, key=minus_size)


def train_cells(cells: list[Cell], out: Path, ray_options: sweep.RayOptions, force: bool,
                verbose: int, days: dict[str, list[int]], eval_seed: int
                ) -> list[sweep.TrialResult]:
    """Train ``cells`` as trials of ``agents.sweep.run_trials`` (state in ``<out>/sweep``),
    each scored in its worker on its task's ``days`` with ``eval_seed`` once trained
    (:meth:`Cell.trial`), returning their results in order. An engine record of a finished
    run whose scored checkpoint is gone (the run folder was deleted or moved) is dropped
    first: that cell trains again rather than failing when it is scored."""
    state = out / SWEEP_STATE
    trials = [cell.trial(out, days[cell.task], eval_seed) for cell in cells]
    to_run = []
    for cell, trial in zip(cells, trials, strict=True):
        result = None if force else sweep.read_result(state, trial.key)
        if result is not None and result.status == sweep.FINISHED:
            if Path(result.run_dir or "", SCORED_CHECKPOINT).is_file():
                print(f"{cell.label}: trained earlier ({result.run_dir})", flush=True)
                continue
            (state / sweep.RECORDS / f"{trial.key}.json").unlink(missing_ok=True)
        to_run.append(cell)
    if to_run:
        import ray  # only when there is something to train

        address = ray_options.resolved_address()
        where = ("the running Ray" if ray.is_initialized() else f"Ray at {address}"
                 if address else
                 f"a local Ray with {ray_options.cpus or os.cpu_count() or 1} CPUs")
        print(f"training {len(to_run)} cells on {where}: "
              + ", ".join(cell.label for cell in to_run), flush=True)
    return sweep.run_trials(trials, state, ray_options=ray_options, force=force,
                            verbose=verbose)


def score_cell(cell: Cell, result: sweep.TrialResult, refs: dict[str, Any], out: Path
               ) -> dict[str, Any]:
    """Score the final checkpoint of ``cell``'s finished run (``result``, from
    :func:`train_cells`) on the task's days with the references' seed, and write the cell's
    record: the scores, the run's ``metrics.json`` training entries, ``train_wall_s`` (its
    training time without evaluations, metrics.json ``timing``; s) and ``score_wall_s`` (s)."""
    days, eval_seed = refs["settings"]["days"], refs["settings"]["eval_seed"]
    settings = cell_settings(cell.config, days, eval_seed)
    run_dir = Path(result.run_dir or "")
    extra = result.extra if isinstance(result.extra, dict) else {}
    if (extra.get("days") == list(days) and extra.get("eval_seed") == eval_seed
            and extra.get("checkpoint") == SCORED_CHECKPOINT and "summary" in extra):
        scores = {key: extra[key] for key in ("summary", "savings_per_day")}
        score_wall = float(extra["score_wall_s"])  # scored in the trial's worker
    else:  # trained before scoring moved into the workers, or on other days
        start = time.perf_counter()
        scores = evaluate.record_scores(evaluate.Evaluator(cell.config.env, days, seed=eval_seed)
                                        .run(str(run_dir / SCORED_CHECKPOINT)))
        score_wall = time.perf_counter() - start
    train_metrics = result.metrics or {}
    timing = train_metrics.get(train.TIMING_KEY) or {}
    train_wall, run_wall = timing.get("train_time_s"), timing.get("wall_time_s")
    path = cell.record_path(out)
    leaderboard.write_record(path, {
        "task": cell.task, "algo": cell.algo, "seed": cell.seed, "settings": settings,
        "run_dir": str(run_dir),
        "train": {key: train_metrics.get(key) for key in
                  ("global_step", "agent_steps", "best_eval", train.TIMING_KEY)},
        "train_wall_s": train_wall, "run_wall_s": run_wall, "score_wall_s": score_wall,
        "wall_s": (run_wall or train_wall or 0.0) + score_wall, **scores})
    record = leaderboard.read_record(path, settings, settings_defaults(cell.config.algo))
    row = columns(record, refs)
    print(f"{cell.label}: {row['community_cost']:.2f}/day, oracle share "
          f"{row['oracle_share']:.3f} (trained in {train_wall or 0.0:.0f} s, scored in "
          f"{score_wall:.0f} s)", flush=True)
    return record


def policy_cell(task: str, spec: str, refs: dict[str, Any], out: Path, force: bool,
                evaluator: evaluate.Evaluator) -> dict[str, Any] | None:
    """Score one submitted policy on the task's days (cached); None when it failed (the
    failure is printed, naming the policy)."""
    days, eval_seed = refs["settings"]["days"], refs["settings"]["eval_seed"]
    settings = policy_settings(task, spec, days, eval_seed)
    path = policy_record_path(out, task, spec)
    record = None if force else leaderboard.read_record(path, settings, settings_defaults())
    if record is not None:
        print(f"[{task}] policy {spec}: done ({path})", flush=True)
        return record
    start = time.perf_counter()
    try:
        result = evaluator.run(spec)
    except Exception as error:  # one policy's failure must not end the leaderboard
        print(f"leaderboard.py: error: [{task}] {evaluate.failure_message(spec, error)}",
              file=sys.stderr, flush=True)
        return None
    leaderboard.write_record(path, {"task": task, "policy": spec, "settings": settings,
                                    "wall_s": time.perf_counter() - start,
                                    **evaluate.record_scores(result)})
    record = leaderboard.read_record(path, settings, settings_defaults())
    row = columns(record, refs)
    print(f"[{task}] policy {spec}: {row['community_cost']:.2f}/day, oracle share "
          f"{row['oracle_share']:.3f} ({record['wall_s']:.0f} s)", flush=True)
    return record


# --------------------------------------------------------------------------------------------
# Aggregation and output
# --------------------------------------------------------------------------------------------


def _numbers(values: Any) -> np.ndarray:
    return np.asarray([math.nan if v is None else v for v in values], dtype=float)


def best_rule(refs: dict[str, Any]) -> tuple[str, float]:
    """The rule-based baseline with the lowest mean community cost, and that cost."""
    return leaderboard.best_rule({
        name: _number(refs["policies"][name]["summary"]["community_cost_mean"])
        for name in rule_names()})


def columns(entry: dict[str, Any], refs: dict[str, Any]) -> dict[str, float]:
    """The leaderboard columns of one evaluated policy (a reference or a cell) on its task:
    the share of the task oracle's savings and the gain over the best rule from ``refs``."""
    oracle = refs["policies"][refs["settings"]["oracle"]]
    share = metrics.captured_savings_share(
        torch.as_tensor(_numbers(entry["savings_per_day"]), dtype=torch.float64),
        torch.as_tensor(_numbers(oracle["savings_per_day"]), dtype=torch.float64))
    return leaderboard.cell_metrics(entry["summary"], best_rule(refs)[1], float(share))


def table_rows(refs: dict[str, dict[str, Any]], cells: dict[tuple[str, str], list[dict]],
               submitted: dict[tuple[str, str], dict[str, Any]] | None = None
               ) -> list[dict[str, Any]]:
    """One row per task and policy: references and submitted policies (``submitted``:
    (task, spec) -> record) as measured (one evaluation), learners aggregated over seeds
    (IQM and 95 % bootstrap CI per column)."""
    rows = []

    def measured(task: str, name: str, kind: str, entry: dict[str, Any]) -> dict[str, Any]:
        values = columns(entry, refs[task])
        return {"task": task, "policy": name, "kind": kind, "seeds": 1,
                **{key: {"iqm": values[key], "ci_low": math.nan, "ci_high": math.nan, "n": 1}
                   for key, _ in leaderboard.COLUMNS}}

    for task, ref in refs.items():
        oracle = ref["settings"]["oracle"]
        for name in (*rule_names(), oracle):
            rows.append(measured(task, name, "oracle" if name == oracle else "rule",
                                 ref["policies"][name]))
        for (cell_task, algo), records in cells.items():
            if cell_task != task:
                continue
            per_seed = [columns(record, ref) for record in records]
            row: dict[str, Any] = {"task": task, "policy": algo, "kind": "learner",
                                   "seeds": len(records),
                                   "seeds_above_best_rule": sum(
                                       leaderboard.beats_best_rule(values["gain_vs_best_rule"])
                                       for values in per_seed)}
            for key, _ in leaderboard.COLUMNS:
                row[key] = leaderboard.aggregate([values[key] for values in per_seed])
            rows.append(row)
        for (policy_task, spec), record in (submitted or {}).items():
            if policy_task == task:
                rows.append(measured(task, spec, "submitted", record))
    return rows


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _format(value: float, spec: str) -> str:
    if not math.isfinite(value):
        return "–"
    text = format(value, spec)
    return format(0.0, spec) if float(text) == 0.0 else text  # no "-0.000"


def _aggregate_text(value: dict[str, float], spec: str) -> str:
    """A column's value as printed: the IQM, with its 95 % CI where defined."""
    text = _format(value["iqm"], spec)
    if math.isfinite(value["ci_low"]):
        text += f" [{_format(value['ci_low'], spec)}, {_format(value['ci_high'], spec)}]"
    return text


def markdown(rows: list[dict[str, Any]]) -> str:
    """The leaderboard as a markdown table; learners as ``IQM [95 % CI]`` over seeds."""
    header = ["task", "policy", "seeds", *(label for _, label in leaderboard.COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|---|---|---:|" + "---:|" * len(
        leaderboard.COLUMNS)]
    for row in rows:
        name = row["policy"] if row["kind"] == "learner" else f"`{row['policy']}`"
        cells = [row["task"], name, str(row["seeds"])]
        for key, _ in leaderboard.COLUMNS:
            cells.append(_aggregate_text(row[key], FORMATS[key]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_markdown(rows: list[dict[str, Any]], refs: dict[str, dict[str, Any]]) -> str:
    """The gain over the best rule (cost/day; > 0 beats every rule) as one table: a column
    per task, a row per policy (learners: IQM [95 % CI] over seeds and how many seeds beat
    the best rule), with the best rule and its cost, the task's oracle, ``zi`` and
    ``no_p2p`` on top for scale; '' without learners or submitted policies."""
    tasks = list(refs)
    entries = {(row["task"], row["policy"]): row for row in rows}
    policies = {row["policy"]: row["kind"] for row in rows
                if row["kind"] in ("learner", "submitted")}
    if not policies:
        return ""

    def gain(row: dict[str, Any] | None) -> str:
        if row is None:
            return "–"
        text = _aggregate_text(row["gain_vs_best_rule"], FORMATS["gain_vs_best_rule"])
        if row["kind"] == "learner":
            text += f" {row['seeds_above_best_rule']}/{row['seeds']}"
        return text

    lines = ["| policy | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
    best = [best_rule(refs[task]) for task in tasks]
    lines.append("| best rule: cost/day | " + " | ".join(
        f"`{name}` {cost:.2f}" for name, cost in best) + " |")
    lines.append("| oracle | " + " | ".join(
        f"{gain(entries.get((task, refs[task]['settings']['oracle'])))}"
        f" (`{refs[task]['settings']['oracle']}`)" for task in tasks) + " |")
    for name in ("zi", "no_p2p"):
        if all((task, name) in entries for task in tasks):
            lines.append(f"| `{name}` | " + " | ".join(
                gain(entries[(task, name)]) for task in tasks) + " |")
    for name, kind in policies.items():
        label = name if kind == "learner" else f"`{name}`"
        lines.append(f"| {label} | " + " | ".join(
            gain(entries.get((task, name))) for task in tasks) + " |")
    return "\n".join(lines)


def compute_markdown(cells: dict[tuple[str, str], list[dict[str, Any]]]) -> str:
    """What the learners' cells cost, from their records: per task and config the seconds of
    one seed, mean [min, max], of its training iterations (``train_wall_s``), of its whole run
    (``run_wall_s``: building the envs, imitation, training, evaluations, checkpoints, in the
    cell's own process) and of its scoring, and the sums over all cells; '' without cells.
    Records older than a field count as unknown (–)."""
    if not cells:
        return ""
    keys = ("train_wall_s", "run_wall_s", "score_wall_s")
    lines = ["| task | policy | seeds | training s per seed | whole run s per seed | "
             "scoring s per seed |", "|---|---|---:|---:|---:|---:|"]
    totals = dict.fromkeys(keys, 0.0)
    unknown = dict.fromkeys(keys, 0)
    for (task, algo), records in cells.items():
        texts = []
        for key in keys:
            values = _numbers([record.get(key) for record in records])
            known = values[np.isfinite(values)]
            unknown[key] += len(values) - len(known)
            totals[key] += float(known.sum())
            texts.append("–" if not len(known) else (
                f"{known.mean():.0f} [{known.min():.0f}, {known.max():.0f}]"))
        lines.append(f"| {task} | {algo} | {len(records)} | " + " | ".join(texts) + " |")
    n_cells = sum(len(records) for records in cells.values())
    sums = [f"{what} not recorded" if unknown[key] == n_cells else (
        f"{totals[key]:.0f} s of {what}"
        + (f" ({unknown[key]} of the cells not recorded)" if unknown[key] else ""))
            for key, what in zip(keys, ("training", "whole runs", "scoring"), strict=True)]
    counted = f"{n_cells} cell{'s' * (n_cells != 1)}"
    return ("\n".join(lines) + f"\n\n{counted}: {', '.join(sums)}, summed over cells "
            f"(each cell's own process; cells train side by side, one per "
            f"`train.torch_threads` CPUs of `--cpus`).\n")


def csv_text(rows: list[dict[str, Any]]) -> str:
    """The leaderboard as CSV: per column its IQM (the measured value for references) and
    95 % CI bounds (empty where undefined)."""
    fields = ["task", "policy", "kind", "seeds"]
    for key, _ in leaderboard.COLUMNS:
        fields += [key, f"{key}_ci_low", f"{key}_ci_high"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        flat: dict[str, Any] = {name: row[name] for name in fields[:4]}
        for key, _ in leaderboard.COLUMNS:
            for suffix, part in (("", "iqm"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high")):
                value = row[key][part]
                flat[f"{key}{suffix}"] = "" if not math.isfinite(value) else f"{value:.6g}"
        writer.writerow(flat)
    return buffer.getvalue()


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """One panel per task: each policy's share of the oracle's savings (learners: IQM with its
    95 % bootstrap interval), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(row["task"] for row in rows))
    columns = min(3, len(tasks))
    lines = math.ceil(len(tasks) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(4.6 * columns, 0.4 + 2.6 * lines),
                             squeeze=False)
    colours = {"rule": "tab:gray", "oracle": "black", "learner": "tab:blue",
               "submitted": "tab:orange"}
    for ax, task in zip(axes.flat, tasks, strict=False):
        task_rows = [row for row in rows if row["task"] == task]
        share = np.array([row["oracle_share"]["iqm"] for row in task_rows])
        low = np.array([row["oracle_share"]["ci_low"] for row in task_rows])
        high = np.array([row["oracle_share"]["ci_high"] for row in task_rows])
        y = np.arange(len(task_rows))
        ax.barh(y, np.nan_to_num(share), color=[colours[row["kind"]] for row in task_rows])
        has_ci = np.isfinite(low) & np.isfinite(share)
        if has_ci.any():
            ax.errorbar(share[has_ci], y[has_ci], fmt="none", ecolor="black", capsize=3,
                        xerr=np.abs(np.stack([share - low, high - share])[:, has_ci]))
        ax.set_yticks(y, [row["policy"] for row in task_rows], fontsize=8)
        ax.invert_yaxis()
        ax.axvline(0.0, color="black", linewidth=0.6)
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("share of the oracle's savings vs no_p2p", fontsize=8)
    for ax in list(axes.flat)[len(tasks):]:
        ax.set_visible(False)
    fig.suptitle(textwrap.fill(title, 40 * columns + 20), fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda file: fig.savefig(file, dpi=110, bbox_inches="tight",
                                                format="png"))
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train every algorithm on every task over seeds and rank them against the "
                    "rule-based baselines and the oracle (see the module docstring).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--tasks", default=",".join(task_names()),
                        help="comma-separated task names (envs/tasks.py) and task files of your "
                             "own (paths of env YAMLs, each named after its file)")
    parser.add_argument("--algos", default=None,
                        help="comma-separated shipped run configs, each trained with "
                             "configs/<name>.yaml (an algorithm or a variant of one); default: "
                             "all of them, none when --policies is given")
    parser.add_argument("--policies", default="",
                        help="comma-separated policies scored without training, as evaluate.py "
                             "--policies takes them (module.path:Name[:key=value...], "
                             "path/to/file.py:Name, sb3:[algo:]model.zip, rule variants, run "
                             "folders; not the oracles)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    parser.add_argument("--steps", type=int, default=None,
                        help="train.total_steps of every cell (default: each shipped config's)")
    parser.add_argument("--episodes", type=int, default=0,
                        help="test days scored, evenly spaced over the test split (0: all)")
    parser.add_argument("--eval-seed", type=int, default=0, help="seed of the evaluation")
    parser.add_argument("--out", default="results/leaderboard", help="output folder")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the evaluations (training: train.torch_threads)")
    sweep.add_ray_arguments(parser, "cell")
    parser.add_argument("--force", action="store_true",
                        help="redo finished cells and references instead of skipping them")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="run-config overrides for every cell: train.* for all, <algo>.* "
                             "for that algorithm's cells only")
    # key=value overrides may come before, between or after the options
    return parser.parse_intermixed_args(argv)


def _split_list(text: str, what: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ConfigError(f"--{what}: nothing given")
    if len(set(items)) != len(items):
        raise ConfigError(f"--{what}: duplicate entries in {items}")
    return items


CELL_OVERRIDES = ("train.keep_buffers=false", "train.checkpoint_every=0", "train.eval_every=0",
                  "train.eval_episodes=0")
"""Given to every cell before the command line's overrides (which may change them): a
finished cell's ``checkpoint_latest.pt`` without its replay buffers (several hundred MB to
1.5 GB each on the larger feeders for the off-policy learners, tens of GB over the whole
leaderboard), periodic checkpoints by wall time only (``train.checkpoint_minutes``, 10 by
default) instead of every ``checkpoint_every`` env-steps: a cell is minutes long, and each
periodic write of its replay buffer took about 3.5 s (DDPG on Urban-Scale, a 44 s cell) to
7 s (DDPG with imitation on Grid-Rebound, a 106 s cell), while an interrupted leaderboard
loses at most those minutes of a cell; and no evaluations by ``train.py`` at all (the cell
scores its final checkpoint on the task's test days itself, with the task's references, and
evaluations do not change what is trained), so a cell builds no evaluation environment and
computes no references of its own, and its TensorBoard has no ``eval/`` curves
(``train.eval_episodes=26 train.eval_every=10000`` on the command line draws them)."""


def _check_overrides(overrides: list[str], algos: list[str]) -> dict[str, list[str]]:
    """Each shipped config's overrides; only ``train.*`` and ``<algo>.*`` keys (the task
    fixes the env, ``--seeds`` the seed); ``<algo>.*`` applies to every config of that
    algorithm."""
    shipped = shipped_algorithms()
    per_algo: dict[str, list[str]] = {algo: [] for algo in algos}
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        section = key.split(".", 1)[0]
        if "=" not in item or "." not in key or (section != "train"
                                                 and section not in registry.names()):
            raise ConfigError(f"override '{item}': the leaderboard takes train.<key>=<value> "
                              f"or <algo>.<key>=<value> (the task fixes the env, --seeds the "
                              f"seed, --steps train.total_steps)")
        for algo in algos:
            if section in ("train", shipped[algo]):
                per_algo[algo].append(item)
    return per_algo


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        tasks = [get_task(name, where="--tasks").name for name in _split_list(args.tasks,
                                                                                "tasks")]
        if len(set(tasks)) != len(tasks):  # "Flat,flat", or two task files of one name
            raise ConfigError(f"--tasks: tasks of the same name in {tasks}")
        policies = _split_list(args.policies, "policies") if args.policies.strip() else []
        if args.algos is None:
            algos = [] if policies else list(shipped_algorithms())
        else:
            algos = _split_list(args.algos, "algos")
        unknown = [algo for algo in algos if algo not in shipped_algorithms()]
        if unknown:
            raise ConfigError(f"--algos: unknown {unknown}; allowed: "
                              f"{', '.join(shipped_algorithms())}")
        oracles = [spec for spec in policies if spec in ORACLES]
        if oracles:
            raise ConfigError(f"--policies: {oracles} are references of every task already; "
                              f"give policies to score")
        for spec in policies:  # a spec that cannot be loaded stops here, before any work
            evaluate.build_policy(spec)
        try:
            seeds = [int(seed) for seed in _split_list(args.seeds, "seeds")]
        except ValueError:
            raise ConfigError(f"--seeds: expected integers, got {args.seeds!r}") from None
        if args.steps is not None and args.steps < 1:
            raise ConfigError(f"--steps must be >= 1, got {args.steps}")
        overrides = _check_overrides([*CELL_OVERRIDES, *args.overrides], algos)
        days = {task: evaluate.select_days(task_env_config(task), "test", args.episodes)
                for task in tasks}
        if args.cpus is not None and args.cpus < 1:
            raise ConfigError(f"--cpus must be >= 1, got {args.cpus}")
        out = Path(args.out)
        # Before anything runs: every run config is valid, and no finished record was made
        # with other settings (it would stop the leaderboard halfway).
        cells = [plan_cell(task, algo, seed, args.steps, overrides[algo])
                 for task in tasks for algo in algos for seed in seeds]
        done: dict[tuple[str, str, int], dict[str, Any]] = {}  # finished cell records
        if not args.force:
            for cell in cells:
                record = leaderboard.read_record(cell.record_path(out), cell_settings(
                    cell.config, days[cell.task], args.eval_seed),
                    settings_defaults(cell.config.algo))
                if record is not None:
                    done[(cell.task, cell.algo, cell.seed)] = record
            for task in tasks:
                leaderboard.read_record(cell_folder(out, task) / "references.json",
                                        reference_settings(task, days[task], args.eval_seed),
                                        settings_defaults())
                for spec in policies:
                    leaderboard.read_record(policy_record_path(out, task, spec),
                                            policy_settings(task, spec, days[task],
                                                            args.eval_seed),
                                            settings_defaults())
        to_train = largest_first([cell for cell in cells
                                  if (cell.task, cell.algo, cell.seed) not in done])
        ray_options = sweep.RayOptions(address=args.address, cpus=args.cpus)
        if to_train:
            if importlib.util.find_spec("ray") is None:
                raise ConfigError("the cells train on Ray Tune, which is not installed: pip "
                                  "install 'peergrid[sweep]'")
            import ray

            if not ray.is_initialized():  # a CPU or GPU the local Ray lacks: Tune would wait
                sweep.check_local_resources([cell.trial(out) for cell in to_train],
                                            ray_options)
    except (ConfigError, PolicyLoadError, ValueError) as error:
        print(f"leaderboard.py: error: {error}", file=sys.stderr)
        return 2

    previous_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    refs: dict[str, dict[str, Any]] = {}
    submitted: dict[tuple[str, str], dict[str, Any]] = {}
    failed: list[str] = []
    unfinished: list[str] = []
    try:
        for task in tasks:
            refs[task] = references(task, days[task], args.eval_seed, out, args.force)
            if policies:
                evaluator = evaluate.Evaluator(task_env_config(task), days[task],
                                               seed=args.eval_seed)
                for spec in policies:
                    record = policy_cell(task, spec, refs[task], out, args.force, evaluator)
                    if record is None:
                        failed.append(f"{spec} on {task}")
                    else:
                        submitted[(task, spec)] = record
        for cell in cells:
            if (cell.task, cell.algo, cell.seed) in done:
                print(f"{cell.label}: done ({cell.record_path(out)})", flush=True)
        if to_train and args.address is None:  # a cluster's nodes have caches of their own
            try:
                prepare_demonstrations(to_train, args.cpus or os.cpu_count() or 1)
            except KeyboardInterrupt:
                print("leaderboard.py: interrupted while solving demonstrations; rerun the same "
                      "command to continue", file=sys.stderr)
                return 130
        results = (train_cells(to_train, out, ray_options, args.force, args.verbose, days,
                               args.eval_seed) if to_train else [])
        for cell, result in zip(to_train, results, strict=True):
            if result.status == sweep.FINISHED:
                try:
                    done[(cell.task, cell.algo, cell.seed)] = score_cell(cell, result,
                                                                         refs[cell.task], out)
                except Exception:  # one cell's failure must not lose the others' scores
                    print(f"leaderboard.py: error: {cell.label}: scoring "
                          f"{Path(result.run_dir or '', SCORED_CHECKPOINT)} failed:",
                          file=sys.stderr, flush=True)
                    traceback.print_exc()
                    failed.append(cell.label)
            elif result.status == sweep.ERROR:
                print(f"leaderboard.py: error: {cell.label}: training failed:\n{result.error}",
                      file=sys.stderr, flush=True)
                failed.append(cell.label)
            else:  # pending: interrupted (Ctrl-C) before it finished
                unfinished.append(cell.label)
    except ConfigError as error:
        print(f"leaderboard.py: error: {error}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(previous_threads)
    wall = time.perf_counter() - start
    cell_records: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for cell in cells:  # the finished ones, per task and algorithm in seed order
        record = done.get((cell.task, cell.algo, cell.seed))
        if record is not None:
            cell_records.setdefault((cell.task, cell.algo), []).append(record)

    rows = table_rows(refs, cell_records, submitted)
    budget = "each shipped config's train.total_steps" if args.steps is None else (
        f"train.total_steps={args.steps}")
    n_days = ", ".join(f"{task} {len(days[task])}" for task in tasks)
    title = (f"{len(seeds)} seeds ({args.seeds}), {budget}, test days: {n_days}; learners: "
             f"IQM [95 % bootstrap CI] over seeds" if algos else
             f"no training, test days: {n_days}")
    if policies:
        title += f"; submitted policies ({len(policies)}): one evaluation each"
    table = markdown(rows)
    summary = summary_markdown(rows, refs)
    if summary:
        summary = (f"Gain over the best rule-based baseline, cost/day (> 0 beats every rule; "
                   f"learners: IQM [95 % CI] over seeds, then the seeds that beat the best "
                   f"rule):\n\n{summary}\n\n")
    text = (f"# peergrid leaderboard\n\n{title}.\n\n{summary}{table}\n\n"
            + "".join(f"- {task}: reference oracle `{refs[task]['settings']['oracle']}`, best "
                      f"rule `{best_rule(refs[task])[0]}` ({best_rule(refs[task])[1]:.2f}/day)\n"
                      for task in tasks))
    compute = compute_markdown(cell_records)
    if compute:
        text += (f"\n## Compute\n\n{compute}\nThis run of the command: {wall:.0f} s of wall "
                 f"time (references, demonstrations, training and scoring; a resumed run "
                 f"counts its last part only).\n")
    atomic_write_text(out / "leaderboard.md", text)
    atomic_write_text(out / "leaderboard.csv", csv_text(rows))
    plot(rows, out / "leaderboard.png", title)
    print(f"\n{text}\nwrote {out / 'leaderboard.md'}, {out / 'leaderboard.csv'}, "
          f"{out / 'leaderboard.png'} ({wall:.0f} s)")
    if failed:
        print(f"leaderboard.py: error: failed (above): {', '.join(failed)}", file=sys.stderr)
    if unfinished:
        print(f"leaderboard.py: {len(unfinished)} cells did not finish (interrupted, or Ray "
              f"Tune stopped: above): "
              f"{', '.join(unfinished)}; rerun the same command to continue them",
              file=sys.stderr)
        return 130
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
