"""Where training time goes: ``train.py``'s Trainer on a run config for a short budget, with
the parts of an iteration timed from outside (methods of the built instances wrapped; no
library code changed), printed as a markdown table.

    python benchmarks/train_profile.py [--config configs/mappo.yaml] [--steps 50000]
        [--cprofile 25 | --ops 25] [key=value ...]

Categories (exclusive wall time: a timed call nested in another is subtracted from it):

- ``env step (core)``: ``BatchedP2PEnv.step`` of the training envs;
- ``collector``: the rest of ``Collector.step`` (``env.state()``, final observations,
  episode accumulator);
- ``policy (forward, sampling)``: the algorithm's acting calls during the rollout
  (MAPPO ``_policy_output``/``_sample``/``_value``/``_to_env``, DDPG ``_explore``, DQN and
  Q-learning ``act``; SB3 TD3's and DQN's ``_sample_action``, with TD3's exploration noise;
  SB3 PPO's policy forward);
- ``rollout other``: the rest of ``iterate`` outside the update (buffer writes, GAE, rewards);
- ``replay buffer add``: off-policy ``buffer.add``;
- ``update``: the algorithm's ``_update`` (PPO epochs, or each gradient step; DQN's
  ``_gradient_step``, Q-learning's table update ``learn``; the SB3 baselines' ``train``),
  with its ``policy forward`` calls (MAPPO) shown as a sub-row;
- ``imitation``: behaviour cloning before the first rollout (``imitate``), once per run;
- ``logging``: ``SummaryWriter.add_scalar``/``add_text``, ``pop_episodes`` and the episode
  metrics (``metric_scalars``) of training;
- ``evaluation``: ``Trainer.evaluate`` (held-out days, deterministic), with its env steps,
  policy calls and ``eval/*`` writes as sub-rows;
- ``checkpoint``: ``Trainer.checkpoint`` (state dicts) and ``save_checkpoint`` (the file);
- ``trainer loop other``: the rest of ``Trainer.run`` (progress bar, bookkeeping).

Shares are of the wall time of ``Trainer.run`` (setup, including the evaluation references,
is reported apart). ``--steps`` overrides ``train.total_steps``: the short run evaluates at the
start and the end, far more often per env-step than the full run, so a second column projects
every part to the config's own ``train.total_steps``, ``eval_every`` and
``checkpoint_every`` (per-call means times the full run's number of calls; the best
checkpoint counted at every evaluation, an upper bound). ``--cprofile N`` adds the ``N``
functions with the most own time (cProfile), ``--ops N`` the ``N`` torch operators with the
most own CPU time (``torch.profiler``); both slow the run, so the table's shares are then
inflated by their overhead: read them from a run without.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import io
import math
import pstats
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train  # noqa: E402
from agents.run_config import REPO_ROOT, build_run_config  # noqa: E402

GROUPS = ("update", "imitation", "evaluation", "checkpoint")
"""Categories whose nested timed calls are shown as their sub-rows ("update / policy ...")."""
ORDER = ("env step (core)", "collector", "policy (forward, sampling)", "rollout other",
         "replay buffer add", "update", "imitation", "logging", "evaluation", "checkpoint",
         "trainer loop other")
PER_STEP = {"env step (core)", "collector", "policy (forward, sampling)", "rollout other",
            "replay buffer add", "update", "logging", "trainer loop other"}
"""Categories whose time grows with env-steps (projected by steps; the others by calls)."""


_INHERITED = object()
"""A wrapped attribute that was not the owner's own (an instance's method): restored by
deleting the wrapper."""


class Timer:
    """Exclusive wall time per category of nested timed calls."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[list[Any]] = []  # [label, start, time of timed children]
        self._wrapped: list[tuple[Any, str, Any]] = []  # (owner, name, own attribute)

    def label(self, category: str) -> str:
        if category in GROUPS:
            return category
        for frame in reversed(self._stack):
            if frame[0] in GROUPS:
                return f"{frame[0]} / {category}"
        return category

    def wrap(self, owner: Any, name: str, category: str) -> None:
        """Replace ``owner.name`` (an instance's method or a module's function) by a timed
        call of it."""
        function = getattr(owner, name)
        self._wrapped.append((owner, name, vars(owner).get(name, _INHERITED)))

        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            label = self.label(category)
            frame = [label, time.perf_counter(), 0.0]
            self._stack.append(frame)
            try:
                return function(*args, **kwargs)
            finally:
                self._stack.pop()
                elapsed = time.perf_counter() - frame[1]
                self.seconds[label] += elapsed - frame[2]
                if label == category or category in GROUPS:
                    self.calls[label] += 1
                if self._stack:
                    self._stack[-1][2] += elapsed

        setattr(owner, name, timed)

    def restore(self) -> None:
        """Undo every :meth:`wrap` (a class wrapped stays wrapped in the process otherwise)."""
        for owner, name, own in reversed(self._wrapped):
            if own is _INHERITED:
                delattr(owner, name)
            else:
                setattr(owner, name, own)
        self._wrapped.clear()


ACTING = ("_policy_output", "_sample", "_value", "_to_env", "_explore", "act")
"""The algorithms' acting calls in the rollout (MAPPO's, DDPG/MADDPG's, DQN's and
Q-learning's ``act``)."""
UPDATES = ("_update", "_gradient_step", "learn")
"""An update, by algorithm: MAPPO's and DDPG/MADDPG's ``_update``, DQN's gradient step,
Q-learning's table update; the first the algorithm has is timed."""


def instrument(trainer: train.Trainer, timer: Timer) -> None:
    """Wrap the parts of ``trainer`` (instances, and ``train``'s imported functions)."""
    algorithm = trainer.algorithm
    timer.wrap(trainer.env, "step", "env step (core)")
    timer.wrap(trainer.collector, "step", "collector")
    timer.wrap(trainer.collector, "pop_episodes", "logging")
    timer.wrap(algorithm, "iterate", "rollout other")
    for name in ACTING:
        if hasattr(algorithm, name):
            timer.wrap(algorithm, name, "policy (forward, sampling)")
    for name in ("buffer", "replay_buffer"):
        if hasattr(getattr(algorithm, name, None), "add"):
            timer.wrap(getattr(algorithm, name), "add", "replay buffer add")
    model = getattr(algorithm, "model", None)
    if model is not None and hasattr(model, "train") and hasattr(model, "policy"):
        instrument_sb3(model, timer)
    else:
        updates = [name for name in UPDATES if hasattr(algorithm, name)]
        if not updates:
            raise SystemExit(f"train_profile.py: {type(algorithm).__name__} has none of the "
                             f"update methods it times ({', '.join(UPDATES)})")
        timer.wrap(algorithm, updates[0], "update")
    if hasattr(algorithm, "imitate"):
        timer.wrap(algorithm, "imitate", "imitation")
    timer.wrap(trainer.writer, "add_scalar", "logging")
    timer.wrap(trainer.writer, "add_text", "logging")
    timer.wrap(train, "metric_scalars", "logging")
    timer.wrap(trainer, "evaluate", "evaluation")
    if trainer.eval_env is not None:  # none with train.eval_episodes=0
        timer.wrap(trainer.eval_env, "step", "env step (core)")
    timer.wrap(trainer.policy, "act", "policy (forward, sampling)")
    timer.wrap(trainer, "checkpoint", "checkpoint")
    timer.wrap(train, "save_checkpoint", "checkpoint")
    timer.wrap(trainer, "run", "trainer loop other")


def instrument_sb3(model: Any, timer: Timer) -> None:
    """The parts of an SB3 model's ``learn`` (``agents.sb3_baselines``): its ``train`` (the
    gradient steps) as the update; acting as policy time: off-policy algorithms'
    ``_sample_action`` (the policy, the exploration noise or random warm-up actions),
    on-policy ones' policy forward; the replay buffer's ``add``. Wrapped on the classes
    (this process has one model), since the checkpoints pickle the model's and the replay
    buffer's instance attributes."""
    timer.wrap(type(model), "train", "update")
    if hasattr(model, "_sample_action"):
        timer.wrap(type(model), "_sample_action", "policy (forward, sampling)")
    else:
        timer.wrap(type(model.policy), "forward", "policy (forward, sampling)")
    if hasattr(getattr(model, "replay_buffer", None), "add"):
        timer.wrap(type(model.replay_buffer), "add", "replay buffer add")


def full_run_calls(config: Any, category: str, short_calls: int) -> float:
    """Calls of a per-call category in a run of the config's own ``train.total_steps``."""
    train_config = config.train
    evaluations = 1 + (math.ceil(train_config.total_steps / train_config.eval_every)
                       if train_config.eval_every else 1)
    if category == "evaluation":
        return evaluations
    if category == "checkpoint":  # Trainer.checkpoint + save_checkpoint per checkpoint
        latest = 1 + (train_config.total_steps // train_config.checkpoint_every
                      if train_config.checkpoint_every else 0)
        return 2 * (latest + evaluations)
    return short_calls  # imitation: once


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/mappo.yaml", help="run config YAML")
    parser.add_argument("--steps", type=int, default=50_000,
                        help="env-steps to train (train.total_steps of the short run)")
    parser.add_argument("--cprofile", type=int, default=0, metavar="N",
                        help="also print the N functions with the most own time (cProfile)")
    parser.add_argument("--ops", type=int, default=0, metavar="N",
                        help="also print the N torch operators with the most own CPU time "
                             "(torch.profiler)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    if args.cprofile and args.ops:
        parser.error("--cprofile and --ops: one profiler at a time")
    path = Path(args.config)
    path = path if path.is_file() else REPO_ROOT / path
    full = build_run_config(path, args.overrides)
    config = build_run_config(path, [*args.overrides, f"train.total_steps={args.steps}"])

    with tempfile.TemporaryDirectory(prefix="train_profile_",
                                     ignore_cleanup_errors=True) as logdir:
        start = time.perf_counter()
        trainer = train.Trainer(config, train.new_run_dir(logdir, config), progress=False)
        setup = time.perf_counter() - start
        threads = torch.get_num_threads()  # as the Trainer set it (train.torch_threads)
        timer = Timer()
        instrument(trainer, timer)
        profiler = cProfile.Profile() if args.cprofile else None
        ops = (torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
               if args.ops else contextlib.nullcontext())
        start = time.perf_counter()
        with ops:
            if profiler is not None:
                profiler.enable()
            trainer.run()
            if profiler is not None:
                profiler.disable()
        wall = time.perf_counter() - start
    env_steps, n_agents = trainer.collector.global_step, trainer.n_agents
    agent_steps = env_steps * n_agents
    train_time = trainer.state["train_time_s"]

    print(f"config {args.config}, overrides {args.overrides or 'none'}, train.total_steps "
          f"{args.steps} (config: {full.train.total_steps}); torch {torch.__version__}, "
          f"{threads} torch thread(s), n_envs {config.train.n_envs}, {n_agents} agents")
    print(f"trained {env_steps:,} env-steps = {agent_steps:,} agent-steps in {wall:.1f} s "
          f"(setup before it {setup:.1f} s); agent-steps/s: {agent_steps / train_time:,.0f} "
          f"over iterations (train.py's figure), {agent_steps / wall:,.0f} end to end\n")
    scale = full.train.total_steps / env_steps
    rows: list[tuple[str, float, float, int]] = []
    for category in ORDER:
        labels = [category] + sorted(key for key in timer.seconds
                                     if key.startswith(f"{category} / "))
        for label in labels:
            if label not in timer.seconds:
                continue
            seconds = timer.seconds[label]
            if category in PER_STEP:
                projected = seconds * scale
            else:
                calls = max(timer.calls.get(category, 0), 1)
                projected = seconds / calls * full_run_calls(full, category, calls)
            rows.append((label, seconds, projected, timer.calls.get(label, 0)))
    total_projected = sum(row[2] for row in rows)
    print(f"| part | calls | seconds | share of wall | projected share, "
          f"{full.train.total_steps:,} steps |")
    print("|---|---:|---:|---:|---:|")
    for label, seconds, projected, calls in rows:
        name = f"&nbsp;&nbsp;{label.split(' / ', 1)[1]}" if " / " in label else label
        print(f"| {name} | {calls or ''} | {seconds:.2f} | {100 * seconds / wall:.1f}% | "
              f"{100 * projected / total_projected:.1f}% |")
    accounted = sum(row[1] for row in rows)
    print(f"| **total** | | {accounted:.2f} | {100 * accounted / wall:.1f}% | 100% |")
    if profiler is not None:
        stream = io.StringIO()
        pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(args.cprofile)
        print("\n" + stream.getvalue())
    if args.ops:
        print("\n" + ops.key_averages().table(sort_by="self_cpu_time_total",
                                               row_limit=args.ops))


if __name__ == "__main__":
    main()
