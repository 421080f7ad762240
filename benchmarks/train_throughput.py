"""Training throughput: agent-steps per second of every registered algorithm, end to end
(rollout + update, as ``train.py`` runs it), next to the batched core alone, as a markdown
table. Algorithms are taken from ``agents/registry.py`` (those whose module exists), each
with its ``configs/<algo>.yaml`` (or its defaults).

    python benchmarks/train_throughput.py [--algos mappo] [--n-envs 1024] [--threads 2]
        [--env configs/env/default.yaml] [--seconds 20] [--config RUN.yaml] [key=value ...]

``--config`` measures one run config (e.g. ``configs/mappo_imitation.yaml``, its own algo)
instead of ``configs/<algo>.yaml`` of each of ``--algos``.

``key=value`` overrides apply to every algorithm's run config (e.g. ``env.network.model=none``).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

import envs
from agents import registry
from agents.algorithm import EnvSpec
from agents.allocator import raise_malloc_thresholds
from agents.collector import Collector
from agents.run_config import REPO_ROOT, build_run_config, make_generator
from envs.config import ConfigError


def env_rate(env, actions: torch.Tensor, seconds: float) -> float:
    """Agent-steps/s of the core alone, stepping with fixed ``actions``."""
    env.reset(seed=0)
    for _ in range(3):
        env.step(actions)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        env.step(actions)
        steps += 1
    return steps * env.n_envs * env.n_agents / (time.perf_counter() - start)


def train_rate(algo: str, overrides: list[str], seconds: float,
               path: Path | None = None) -> tuple[float, float, int, float, float]:
    """(training agent-steps/s, core-only agent-steps/s, agents, training agent-steps per
    CPU-second of this process, share of that CPU time in the kernel) of ``algo`` with run
    config ``path`` (default: ``configs/<algo>.yaml`` or the algorithm's defaults). The
    per-CPU-second rate counts only this process's own time (``os.times``), so other jobs on
    the machine move it much less than the wall-clock rate."""
    path = path or REPO_ROOT / "configs" / f"{algo}.yaml"
    config = build_run_config(path if path.is_file() else {"algo": algo}, overrides)
    if config.train.malloc_threshold_mb:  # as train.py's Trainer (process-wide from here on)
        raise_malloc_thresholds(config.train.malloc_threshold_mb)
    env = envs.make_batched_env(config.env)
    algorithm = registry.get(algo)(config.hyperparameters, EnvSpec.from_env(env),
                                   config.train, make_generator(config.seed))
    collector = Collector(env, seed=config.seed)
    algorithm.iterate(collector)  # warm-up (allocations, first update)
    start_step, start, cpu_start = collector.global_step, time.perf_counter(), os.times()
    while time.perf_counter() - start < seconds:
        algorithm.iterate(collector)
    elapsed, cpu_end = time.perf_counter() - start, os.times()
    agent_steps = (collector.global_step - start_step) * env.n_agents
    user, system = cpu_end.user - cpu_start.user, cpu_end.system - cpu_start.system
    actions = algorithm.act(collector.obs, collector.state)
    return (agent_steps / elapsed, env_rate(env, actions, min(seconds, 5.0)), env.n_agents,
            agent_steps / (user + system), system / (user + system))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", nargs="*", default=None,
                        help="registry names (default: every available algorithm)")
    parser.add_argument("--n-envs", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--env", default="configs/env/default.yaml", help="env YAML")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="minimum wall time of training measured per algorithm")
    parser.add_argument("--config", type=Path, default=None,
                        help="one run config YAML to measure instead of configs/<algo>.yaml "
                             "(its algo; --algos is then not allowed)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    if args.config is not None and args.algos:
        parser.error("--config measures the algo of its run config; drop --algos")
    torch.set_num_threads(args.threads)
    if args.config is not None:
        algos = [build_run_config(args.config).algo]
    else:
        algos = args.algos or registry.names()
    overrides = [f"env.base={Path(args.env)}", f"train.n_envs={args.n_envs}",
                 f"train.torch_threads={args.threads}", *args.overrides]
    print(f"torch {torch.__version__}, {args.threads} threads, env {args.env}, "
          f"n_envs {args.n_envs}, config {args.config or 'configs/<algo>.yaml'}, "
          f"overrides {args.overrides or 'none'}\n")
    print("| algorithm | B | agents | core only, agent-steps/s | training, agent-steps/s | "
          "training, agent-steps per CPU-s | kernel share of CPU |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for algo in algos:
        try:
            rate, core, n_agents, per_cpu, kernel = train_rate(algo, overrides, args.seconds,
                                                               args.config)
        except ConfigError as error:  # e.g. a discrete-action algorithm without its YAML
            print(f"| {algo} | {args.n_envs} | | skipped: {error} | |", flush=True)
            continue
        print(f"| {algo} | {args.n_envs} | {n_agents} | {core:,.0f} | {rate:,.0f} | "
              f"{per_cpu:,.0f} | {kernel:.1%} |", flush=True)


if __name__ == "__main__":
    main()
