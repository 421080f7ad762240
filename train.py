"""Train a peergrid algorithm on the batched P2P energy-trading core.

    python train.py                                   # configs/mappo.yaml, the Quickstart run
    python train.py --config configs/mappo.yaml train.total_steps=20000 train.n_envs=64 seed=3
    python train.py --task Peak-Storage --config configs/mappo.yaml   # a task of envs/tasks.py
    python train.py --resume runs/default__mappo__1__1700000000
    python train.py --sweep --config configs/mappo.yaml --seeds 0-4 'mappo.actor_lr=[1e-4,3e-4]'

Overrides are dotted ``key=value`` pairs (values parsed as YAML) over any key of the run
config (``agents.run_config``: ``algo``, ``seed``, ``name``, ``env.*``, ``train.*``,
``<algo>.*``); an unknown key or a bad value stops the run at once with a message naming it.

A run writes ``<logdir>/{name}__{algo}__{seed}__{unix time}/``: TensorBoard events
(``charts/*`` episode metrics of training, ``losses/*``, ``eval/*`` on held-out test days
with deterministic actions, all against ``global_step`` in env-steps), ``config.yaml`` (the
resolved config that ran), ``checkpoint_latest.pt`` and ``checkpoint_best.pt`` (best
``eval/episodic_return``) and, at the end, ``metrics.json``; all files are written atomically.
``--resume`` continues from ``checkpoint_latest.pt`` and gives the results of an uninterrupted
run. ``train.validation_days`` ends a run with its untrained policy where that did better than
the final one on training days, and with ``train.validation_every`` with the best policy
validated during training (``validation/*`` scalars, ``metrics.json``'s ``validation``).
No algorithm math lives here: algorithms implement ``agents.algorithm.Algorithm``; the
``eval/*`` curves come from ``agents.evaluation.evaluate_policy``, the function behind
``evaluate.py``'s tables. ``--sweep`` hands the command line to ``agents.sweep`` (seeds,
tasks and hyperparameter grids or distributions on Ray Tune, each trial an ordinary run folder
of this Trainer).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import fcntl
import hashlib
import itertools
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

import envs
from agents import registry
from agents.algorithm import EnvSpec
from agents.allocator import raise_malloc_thresholds
from agents.checkpoints import CHECKPOINT_FORMAT, CheckpointError, load_checkpoint, save_checkpoint
from agents.collector import Collector
from agents.evaluation import evaluate_policy, metric_scalars
from agents.leaderboard import best_rule, rule_names
from agents.networks import scale_output
from agents.policy import TrainedPolicy
from agents.run_config import (
    RunConfig,
    build_run_config,
    dump_run_config,
    eval_env_config,
    evaluation_days,
    make_generator,
    validation_days,
    validation_env_config,
)
from envs import metrics as env_metrics
from envs.config import ActionConfig, ConfigError, EnvConfig, to_dict
from envs.data import cache_dir
from envs.files import atomic_write_text, remove_stale_temporaries
from envs.tasks import get_task

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "mappo.yaml"
REFERENCES_VERSION = 2
"""Version of the cached evaluation references (bump when what they hold changes)."""
TIMING_KEY = "timing"
"""Key of metrics.json's wall-clock entries, the only ones that differ between equal runs."""


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def evaluation_references(config: EnvConfig, days: list[int], seed: int, oracle: str
                          ) -> dict[str, Any]:
    """What ``eval/oracle_share`` and ``eval/gain_vs_best_rule`` compare with on ``days``:
    ``{"oracle": name, "oracle_savings": [per day, against no_p2p], "rule_costs": {rule:
    mean community cost per day}}``, evaluated as ``evaluate.py`` does (seed ``seed``) and
    cached in ``envs.data.cache_dir()/references`` (a damaged cache is evaluated again).

    The rules play continuous actions whatever the run's ``env.action``, as in the
    leaderboard's references: a discrete learner (dqn, qlearning) is compared with the rules of
    the task, not with the rules rounded to its action grid."""
    import evaluate  # the one evaluation path of the tables; imports train lazily, not back

    env_config = dataclasses.replace(config, n_envs=1, device="cpu", action=ActionConfig())
    key = json.dumps({"env": to_dict(env_config), "days": days, "seed": seed,
                      "oracle": oracle, "rules": rule_names(),
                      "version": REFERENCES_VERSION}, sort_keys=True)
    path = cache_dir() / "references" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"
    try:
        stored = json.loads(path.read_text())
        if stored["key"] == key:
            return stored["references"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    evaluator = evaluate.Evaluator(env_config, list(days), seed=seed)
    result = evaluator.run(oracle)
    references = {
        "oracle": oracle,
        "oracle_savings": [float(v) for v in result.per_day["savings_vs_no_p2p"]],
        "rule_costs": {name: float(np.mean(evaluator.run(name).per_day["community_cost"]))
                       for name in rule_names()}}
    try:
        atomic_write_text(path, json.dumps({"key": key, "references": references}) + "\n")
    except OSError:
        pass  # a cache that cannot be written costs time, not results
    return references


def reference_scalars(totals: env_metrics.EpisodeTotals, references: dict[str, Any]
                      ) -> dict[str, float]:
    """``oracle_share`` and ``gain_vs_best_rule`` of evaluated episodes (in the order of the
    references' days) against :func:`evaluation_references`."""
    summary = env_metrics.evaluation_summary(totals)
    share = env_metrics.captured_savings_share(
        summary["savings_vs_no_p2p"].double().cpu(),
        torch.as_tensor(references["oracle_savings"], dtype=torch.float64))
    _, rule_cost = best_rule(references["rule_costs"])
    return {"oracle_share": float(share),
            "gain_vs_best_rule": rule_cost - float(summary["community_cost"].double().mean())}


def new_run_dir(logdir: str | Path, config: RunConfig, header: str = "") -> Path:
    """A fresh ``{logdir}/{name}__{algo}__{seed}__{time}`` folder holding ``config.yaml``
    (``header`` as a comment on top)."""
    stem = f"{config.name}__{config.algo}__{config.seed}__{int(time.time())}"
    Path(logdir).mkdir(parents=True, exist_ok=True)
    for suffix in itertools.count():
        run_dir = Path(logdir) / (stem if suffix == 0 else f"{stem}-{suffix}")
        try:
            run_dir.mkdir()  # atomic: of two processes racing for a name, one gets it
            break
        except FileExistsError:
            continue
    atomic_write_text(run_dir / "config.yaml", dump_run_config(config, header))
    return run_dir


def _after_existing_event_files(run_dir: Path) -> None:
    """Wait (at most a second) until a new TensorBoard event file of ``run_dir`` sorts after
    the existing ones: TensorBoard reads a run's files in name order, whose first field is the
    second of creation, and the rest (host, process, a counter) does not order a resumed
    writer after the interrupted one within the same second."""
    seconds = [int(part[3]) for part in (path.name.split(".") for path in
                                         run_dir.glob("events.out.tfevents.*"))
               if len(part) > 3 and part[3].isdigit()]
    deadline = time.monotonic() + 1.5  # a file dated in the future (clock change): give up
    while seconds and int(time.time()) <= max(seconds) and time.monotonic() < deadline:
        time.sleep(0.02)


class Trainer:
    """Builds the environments and the algorithm of ``config`` and runs the training loop:
    iterate, log, evaluate, checkpoint."""

    def __init__(self, config: RunConfig, run_dir: Path, resume: bool = False,
                 progress: bool = True,
                 on_evaluate: Callable[[int, dict[str, float]], None] | None = None) -> None:
        """``on_evaluate(global_step, scalars)`` is called after each evaluation with the
        ``eval/*`` scalars as logged, without the prefix (``agents.sweep`` reports them to Ray
        Tune)."""
        self._started = time.perf_counter()  # metrics.json's timing.wall_time_s
        self.config, self.run_dir, self.progress = config, Path(run_dir), progress
        self.on_evaluate = on_evaluate
        train = config.train
        self._lock = self._acquire(self.run_dir)
        remove_stale_temporaries(self.run_dir)  # left by a process killed mid-write
        self._previous_threads = torch.get_num_threads()
        if train.torch_threads:
            torch.set_num_threads(train.torch_threads)
        if train.malloc_threshold_mb:
            raise_malloc_thresholds(train.malloc_threshold_mb)
        self.env = envs.make_batched_env(config.env)
        # train.eval_episodes=0: no evaluations, so no evaluation env and no references
        eval_config = eval_env_config(config) if train.eval_episodes else None
        self.eval_env = None if eval_config is None else envs.make_batched_env(eval_config)
        self.eval_days = ([] if eval_config is None
                          else evaluation_days(eval_config, train.eval_episodes))
        self.generator = make_generator(config.seed, train.device)
        self.algorithm = registry.get(config.algo)(
            config.hyperparameters, EnvSpec.from_env(self.env), train, self.generator)
        self.policy = TrainedPolicy(self.algorithm, config, self.run_dir.name)
        self.collector = Collector(self.env, seed=config.seed)
        # train.validation_days: the untrained policy, to compare the final one with (kept in
        # the checkpoints to resume from, so that a resumed run compares with the same one)
        self.validation_env = (envs.make_batched_env(validation_env_config(config))
                               if train.validation_days else None)
        self.validation_days = validation_days(config) if train.validation_days else []
        self.initial_algorithm = (copy.deepcopy(self.algorithm.state_dict(experience=False))
                                  if train.validation_days and not resume else None)
        # train.validation_every: the parameters of the best policy validated during training
        # (None while the untrained one is the best; in the checkpoints to resume from)
        self.validated_algorithm: dict[str, Any] | None = None
        self.n_agents = self.env.n_agents
        self.state: dict[str, Any] = {
            "next_eval": train.eval_every, "next_checkpoint": train.checkpoint_every,
            "best_return": -math.inf, "best_eval": {}, "last_eval": {}, "last_eval_step": -1,
            "last_train": {}, "train_time_s": 0.0, "references": None,
            "next_validation": train.validation_every, "validation_returns": []}
        if resume:
            checkpoint = load_checkpoint(self.run_dir / "checkpoint_latest.pt")  # on the CPU
            if not checkpoint.get("experience", True):
                raise CheckpointError(f"{self.run_dir / 'checkpoint_latest.pt'} holds no "
                                      f"replay buffers (a checkpoint to act from, or a "
                                      f"run finished with train.keep_buffers=false): "
                                      f"cannot resume training from it")
            self.algorithm.load_state_dict(checkpoint["algorithm"])
            self.collector.load_state_dict(checkpoint["collector"])
            self.generator.set_state(checkpoint["generator"])
            self.state = {"references": None, **checkpoint["trainer"]}
            if train.validation_days:
                if "initial_algorithm" not in checkpoint:
                    raise CheckpointError(f"{self.run_dir / 'checkpoint_latest.pt'} holds no "
                                          f"untrained policy for train.validation_days")
                self.initial_algorithm = checkpoint["initial_algorithm"]
                self.validated_algorithm = checkpoint.get("validated_algorithm")
                self.state.setdefault("next_validation", train.validation_every)
                self.state.setdefault("validation_returns", [])
        if (eval_config is not None and train.eval_reference != "none"
                and self.state["references"] is None):
            self.state["references"] = evaluation_references(
                eval_config, [int(day) for day in self.eval_days], config.seed,
                train.eval_reference)
        # the checkpoint was written after logging its step: drop the later events of the
        # interrupted process (TensorBoard purges steps >= purge_step)
        if resume:
            _after_existing_event_files(self.run_dir)
        self.writer = SummaryWriter(
            str(self.run_dir), purge_step=self.collector.global_step + 1 if resume else None)
        if not resume:
            rows = "\n".join(f"|{key}|{value}|"
                             for key, value in _flatten(config.to_dict()).items())
            self.writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{rows}")

    @staticmethod
    def _acquire(run_dir: Path) -> Any:
        """An exclusive lock on ``run_dir`` (``.lock``), held until :meth:`release`: two
        processes never train into one run folder."""
        handle = (run_dir / ".lock").open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ConfigError(f"run folder '{run_dir}' is in use by another train.py "
                              f"process") from None
        return handle

    def release(self) -> None:
        """Release the run folder's lock (done at the end of :meth:`run`)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # ----------------------------------------------------------------------------------------

    def checkpoint(self, experience: bool = True) -> dict[str, Any]:
        """Everything to resume the run (``checkpoint_latest.pt``); ``experience=False``
        leaves out the replay buffers (``Algorithm.experience_attributes``): a checkpoint to
        act from (``checkpoint_best.pt``), written at every improving evaluation, which the
        buffers would make several times larger and slower."""
        checkpoint = {"format": CHECKPOINT_FORMAT, "config": self.config.to_dict(),
                      "global_step": self.collector.global_step, "experience": experience,
                      "algorithm": self.algorithm.state_dict(experience),
                      "collector": self.collector.state_dict(),
                      "generator": self.generator.get_state(), "trainer": dict(self.state)}
        if self.initial_algorithm is not None and experience:  # only resuming needs them
            checkpoint["initial_algorithm"] = self.initial_algorithm
            if self.validated_algorithm is not None:
                checkpoint["validated_algorithm"] = self.validated_algorithm
        return checkpoint

    def _validation_return(self) -> float:
        totals, _ = evaluate_policy(self.validation_env, self.policy, self.validation_days,
                                    seed=self.config.seed)
        return metric_scalars(totals)["episodic_return"]

    def _best_validated(self) -> tuple[int, float]:
        """``(env-step, return)`` of the best policy validated so far (0: the untrained one):
        the first of the highest returns, since a later one replaces it only when strictly
        better."""
        best = (0, self.state["initial_validation_return"])
        for step, value in self.state["validation_returns"]:
            if value > best[1]:
                best = (step, value)
        return best

    def validate_now(self) -> float:
        """``train.validation_every``: play the current policy on the validation days and keep
        a copy of its parameters where it beats every policy validated before (the untrained
        one included); logs ``validation/episodic_return``."""
        step = self.collector.global_step
        value = self._validation_return()
        if value > self._best_validated()[1]:
            self.validated_algorithm = copy.deepcopy(self.algorithm.state_dict(experience=False))
        self.state["validation_returns"].append([step, value])
        self.writer.add_scalar("validation/episodic_return", value, step)
        return value

    def validate(self) -> dict[str, Any]:
        """``train.validation_days``: play the final policy on the validation days
        (deterministic actions) and go back to the parameters of the best policy validated
        before it (the untrained one, played before the first iteration, or with
        ``train.validation_every`` one validated during training) where that one's mean
        ``episodic_return`` there is strictly higher. With
        ``train.validation_residual_scales`` the residual of the best learned policy (final,
        or validated during training where strictly better) is also played scaled by each
        scale, and a scaled one is kept where it is strictly better than every other
        candidate. Returns metrics.json's ``validation`` record (also logged as
        ``validation/*`` scalars at the final step). Keeping the final policy loads nothing:
        the run ends as without validation."""
        step = self.collector.global_step
        best_step, best_return = self._best_validated()
        final_return = self._validation_return()
        initial_return = self.state["initial_validation_return"]
        scales = self.config.train.validation_residual_scales
        scaled_returns, scaled = [], None
        if scales:
            final = copy.deepcopy(self.algorithm.state_dict(experience=False))
            # the learned policy to scale: the final one unless one validated during training
            # did strictly better (validated_algorithm: the best of those, if it beat the
            # untrained one; the untrained one is the rule, whose residual is zero)
            learned_step, learned = step, final
            if self.validated_algorithm is not None and best_return > final_return:
                learned_step, learned = best_step, self.validated_algorithm
            for scale in scales:
                self.algorithm.load_state_dict(copy.deepcopy(learned))
                scale_output(self.algorithm.residual_network(), scale)
                value = self._validation_return()
                scaled_returns.append([scale, value])
                if value > max(best_return, final_return) and (
                        scaled is None or value > scaled[1]):
                    scaled = (scale, value, copy.deepcopy(
                        self.algorithm.state_dict(experience=False)))
            self.algorithm.load_state_dict(final)  # as before the line search
        residual_scale = 1.0
        if scaled is not None:
            kept, kept_step, residual_scale = "scaled", learned_step, scaled[0]
            self.algorithm.load_state_dict(scaled[2])
        elif best_return > final_return:
            kept, kept_step = ("initial" if best_step == 0 else "intermediate"), best_step
            self.algorithm.load_state_dict(copy.deepcopy(
                self.initial_algorithm if best_step == 0 else self.validated_algorithm))
        else:
            kept, kept_step = "final", step
        self.writer.add_scalar("validation/episodic_return", final_return, step)
        self.writer.add_scalar("validation/initial_episodic_return", initial_return, step)
        self.writer.add_scalar("validation/kept_initial", float(kept == "initial"), step)
        self.writer.add_scalar("validation/kept_step", kept_step, step)
        record = {"days": list(self.validation_days), "final_return": final_return,
                  "initial_return": initial_return,
                  "returns": [*self.state["validation_returns"], [step, final_return]],
                  "kept": kept, "kept_step": kept_step}
        if scales:
            self.writer.add_scalar("validation/residual_scale", residual_scale, step)
            record.update(scaled_returns=scaled_returns, residual_scale=residual_scale)
        return record

    def evaluate(self) -> dict[str, float]:
        """Deterministic episodes on the held-out test days, logged under ``eval/``; saves
        ``checkpoint_best.pt`` when ``eval/episodic_return`` improves."""
        step = self.collector.global_step
        if self.eval_env is None:
            raise RuntimeError("train.eval_episodes=0: this run has no evaluation environment")
        totals, _ = evaluate_policy(self.eval_env, self.policy, self.eval_days,
                                    seed=self.config.seed)
        scalars = metric_scalars(totals)
        if self.state["references"] is not None:
            scalars.update(reference_scalars(totals, self.state["references"]))
        for key, value in scalars.items():
            self.writer.add_scalar(f"eval/{key}", value, step)
        self.state["last_eval"] = {"global_step": step, **scalars}
        self.state["last_eval_step"] = step
        if scalars["episodic_return"] > self.state["best_return"]:
            self.state["best_return"] = scalars["episodic_return"]
            self.state["best_eval"] = {"global_step": step, **scalars}
            save_checkpoint(self.checkpoint(experience=False),
                            self.run_dir / "checkpoint_best.pt")
        if self.on_evaluate is not None:
            self.on_evaluate(step, dict(scalars))
        return scalars

    def run(self, stop_after_steps: int | None = None) -> dict[str, Any] | None:
        """Train to ``train.total_steps`` and return the final metrics (also written to
        ``metrics.json``). ``stop_after_steps`` stops early without finishing the run, as an
        interruption would (for tests; resume with ``--resume``)."""
        train, collector, state = self.config.train, self.collector, self.state
        bar = tqdm(total=train.total_steps, initial=collector.global_step, unit="env-step",
                   unit_scale=True, dynamic_ncols=True, disable=not self.progress)
        last_checkpoint = time.monotonic()
        try:
            if self.eval_env is not None and state["last_eval_step"] < 0:
                self.evaluate()  # the untrained policy: the curve's starting point
            if self.validation_env is not None and "initial_validation_return" not in state:
                state["initial_validation_return"] = self._validation_return()
            while collector.global_step < train.total_steps:
                if stop_after_steps is not None and collector.global_step >= stop_after_steps:
                    return None
                start_step, start_time = collector.global_step, time.perf_counter()
                scalars = self.algorithm.iterate(collector)
                elapsed = time.perf_counter() - start_time
                state["train_time_s"] += elapsed  # iterations only, without evaluations
                step = collector.global_step
                sps = (step - start_step) * self.n_agents / max(elapsed, 1e-9)
                self.writer.add_scalar("charts/SPS", sps, step)
                for tag, value in scalars.items():
                    self.writer.add_scalar(tag, value, step)
                episodes = collector.pop_episodes()
                if episodes is not None:
                    state["last_train"] = {"global_step": step, **metric_scalars(episodes)}
                    for key, value in state["last_train"].items():
                        if key != "global_step":
                            self.writer.add_scalar(f"charts/{key}", value, step)
                bar.update(min(step, train.total_steps) - bar.n)  # a last iteration may overshoot
                bar.set_postfix_str(f"agent-steps/s={sps:,.0f} return="
                                    f"{state['last_train'].get('episodic_return', math.nan):.4f}")
                if train.eval_every and step >= state["next_eval"]:
                    self.evaluate()
                    while state["next_eval"] <= step:
                        state["next_eval"] += train.eval_every
                # not in the iteration that ends training: the final validation follows
                if (train.validation_every and step >= state["next_validation"]
                        and step < train.total_steps):
                    self.validate_now()
                    while state["next_validation"] <= step:
                        state["next_validation"] += train.validation_every
                by_steps = train.checkpoint_every and step >= state["next_checkpoint"]
                by_time = train.checkpoint_minutes and (
                    time.monotonic() - last_checkpoint >= 60.0 * train.checkpoint_minutes)
                # not in the iteration that ends training: the final checkpoint follows at once
                if (by_steps or by_time) and step < train.total_steps:
                    while train.checkpoint_every and state["next_checkpoint"] <= step:
                        state["next_checkpoint"] += train.checkpoint_every
                    save_checkpoint(self.checkpoint(), self.run_dir / "checkpoint_latest.pt")
                    last_checkpoint = time.monotonic()
            if self.validation_env is not None and "validation" not in state:
                state["validation"] = self.validate()
                if state["validation"]["kept"] != "final":
                    state["last_eval_step"] = -1  # evaluate the policy the run ends with
            if self.eval_env is not None and state["last_eval_step"] != collector.global_step:
                self.evaluate()
            # the final state: no periodic checkpoint was written in the last iteration
            drop_buffers = not train.keep_buffers and bool(self.algorithm.experience_attributes)
            save_checkpoint(self.checkpoint(experience=not drop_buffers),
                            self.run_dir / "checkpoint_latest.pt")
        finally:
            bar.close()
            self.writer.close()
            torch.set_num_threads(self._previous_threads)
            self.release()
        metrics = {
            "algo": self.config.algo, "seed": self.config.seed,
            "global_step": collector.global_step,
            "agent_steps": collector.global_step * self.n_agents,
            "final_eval": state["last_eval"], "best_eval": state["best_eval"],
            "train": state["last_train"],
            **({"validation": state["validation"]} if "validation" in state else {}),
            TIMING_KEY: {"train_time_s": state["train_time_s"],
                         "agent_steps_per_s": collector.global_step * self.n_agents
                         / max(state["train_time_s"], 1e-9),
                         # this process's whole run: building the envs, imitation, training,
                         # evaluations and checkpoints (a resumed run: its own part)
                         "wall_time_s": time.perf_counter() - self._started},
        }
        atomic_write_text(self.run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        return metrics


def summary_text(run_dir: Path, metrics: dict[str, Any], logdir: Path) -> str:
    final = metrics["final_eval"]
    lines = [f"run folder: {run_dir}",
             f"trained {metrics['global_step']:,} env-steps ({metrics['agent_steps']:,} "
             f"agent-steps) at {metrics[TIMING_KEY]['agent_steps_per_s']:,.0f} agent-steps/s"]
    if not final:
        lines.append("no evaluation (train.eval_episodes=0); score the run with evaluate.py "
                     f"--policies {run_dir / 'checkpoint_latest.pt'}")
    else:
        lines.append("final evaluation on held-out test days: " + ", ".join(
            f"{key} {final[key]:.4g}" for key in ("episodic_return", "community_cost",
                                                  "savings_vs_no_p2p", "oracle_share",
                                                  "gain_vs_best_rule", "self_sufficiency")
            if key in final))
    validation = metrics.get("validation")
    if validation:
        kept = validation["kept"]
        if kept == "intermediate":
            kept = f"{kept} policy of env-step {validation['kept_step']:,}"
        elif kept == "scaled":
            kept = (f"policy of env-step {validation['kept_step']:,} with its residual scaled "
                    f"by {validation['residual_scale']:g}")
        else:
            kept = f"{kept} policy"
        best = max((value for _, value in validation.get("returns", [])), default=None)
        during = ("" if best is None or len(validation["returns"]) < 2
                  else f", {best:.4g} the best of {len(validation['returns'])} validations")
        lines.append(f"validation on {len(validation['days'])} training days: episodic_return "
                     f"{validation['final_return']:.4g} final, {validation['initial_return']:.4g} "
                     f"untrained{during}; the run keeps the {kept}")
    lines.append(f"TensorBoard: tensorboard --logdir {logdir}")
    return "\n".join(lines)


def task_overrides(task: str | None, overrides: list[str]) -> list[str]:
    """The run-config overrides of ``--task``: ``env.task=<task>`` (``agents.run_config``'s
    ``resolve_env``; a task file of your own by its absolute path, ``envs.tasks.Task.spec``)
    and ``name=<task's name>`` (run folders named after the task) unless ``overrides`` set
    ``name``, followed by ``overrides``. No task: ``overrides``."""
    if task is None:
        return list(overrides)
    found = get_task(task, where="--task")  # an unknown name lists the valid ones
    names_run = any(item.split("=", 1)[0].strip() == "name" for item in overrides)
    return [f"env.task={found.spec}", *([] if names_run else [f"name={found.name}"]),
            *overrides]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train a peergrid algorithm (see the module docstring).")
    parser.add_argument("--config", default=None,
                        help="run config YAML (default: configs/mappo.yaml)")
    parser.add_argument("--task", default=None,
                        help="train on a named task of envs/tasks.py (Flat, Peak-Storage, "
                             "...) or a task file of your own (the path of an env YAML): its "
                             "env YAML replaces the run config's env base, inline env keys "
                             "stay; the run is named after the task unless name= is given")
    parser.add_argument("--logdir", default="runs", help="root folder of runs (default: runs)")
    parser.add_argument("--resume", default=None, metavar="RUN_DIR",
                        help="continue the run in RUN_DIR from its checkpoint_latest.pt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--sweep", action="store_true",
                        help="run a sweep of seeds, tasks and hyperparameters on Ray Tune "
                             "(agents/sweep.py; options: python train.py --sweep --help)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides, e.g. train.total_steps=20000 seed=3")
    # key=value overrides may come before, between or after the options
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--sweep" in argv:  # Ray is imported only by sweeps
        from agents import sweep

        return sweep.main([item for item in argv if item != "--sweep"])
    args = parse_args(argv)
    try:
        if args.resume:
            if args.config or args.overrides or args.task:
                raise ConfigError("--resume continues a run with the config it logged; "
                                  "--config, --task and overrides are not allowed with it")
            run_dir = Path(args.resume)
            config = build_run_config(run_dir / "config.yaml")
            if not (run_dir / "checkpoint_latest.pt").is_file():
                raise ConfigError(f"--resume {run_dir}: no checkpoint_latest.pt there")
        else:
            overrides = task_overrides(args.task, args.overrides)
            config = build_run_config(args.config or DEFAULT_CONFIG, overrides)
            run_dir = None
    except ConfigError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    fresh = run_dir is None
    if fresh:
        header = f"peergrid run config, resolved from {args.config or DEFAULT_CONFIG}" + (
            f" with {' '.join(overrides)}" if overrides else "")
        run_dir = new_run_dir(args.logdir, config, header)
    print(f"training {config.algo} on {config.env.community.feeder} "
          f"({config.train.n_envs} envs, seed {config.seed}) -> {run_dir}", flush=True)
    try:
        trainer = Trainer(config, run_dir, resume=bool(args.resume),
                          progress=not args.no_progress)
    except (ConfigError, CheckpointError) as error:
        if fresh:  # nothing ran: leave no empty run folder behind
            shutil.rmtree(run_dir, ignore_errors=True)
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    try:
        metrics = trainer.run()
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: python train.py --resume {run_dir}",
              file=sys.stderr)
        return 130
    except CheckpointError as error:  # e.g. a full disk: the last checkpoint is intact
        print(f"train.py: error: {error}\ncontinue with: python train.py --resume {run_dir}",
              file=sys.stderr)
        return 2
    assert metrics is not None
    print(summary_text(run_dir, metrics, run_dir.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
