"""Seconds of one behaviour-cloning epoch (``agents.imitation.clone``) of the shipped
imitation configs on tasks, at several ``imitation.minibatch`` sizes, in alternating rounds in
one process; prints one markdown row per (task, config) with each size's epoch time and the
config's whole cloning time (its ``imitation.epochs``) at that size.

    python benchmarks/clone_epoch.py [--tasks Urban-Scale,Grid-Rebound,PV-Hosting]
        [--algos mappo_imitation,maddpg_imitation,ddpg_imitation,dqn_imitation]
        [--sizes 512,40n] [--epochs 2] [--rounds 1] [--threads 1]

A size is agent-steps (``imitation.minibatch``; 512 in every shipped config, rounded up to
whole env-steps of every agent) or ``<k>n``: ``k`` env-steps of every agent (``k x agents``
agent-steps, as many gradient steps an epoch on every feeder). An epoch's time is
``(t(1 + epochs) - t(1)) / epochs`` of two whole ``imitate`` calls, so that loading the cached
demonstrations and building the optimiser cancel; the fastest of ``--rounds``. The
demonstrations must be in the machine's cache (a leaderboard or ``train.py`` run of the
config on the task solves them), or the first call solves them.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import leaderboard  # noqa: E402

import envs  # noqa: E402
from agents import registry  # noqa: E402
from agents.algorithm import EnvSpec  # noqa: E402
from agents.run_config import make_generator  # noqa: E402
from envs.config import ConfigError  # noqa: E402


def imitate_seconds(task: str, algo: str, section: str, spec: EnvSpec, epochs: int,
                    minibatch: int) -> float:
    """Wall seconds of one ``imitate`` call of ``configs/<algo>.yaml`` (its algorithm's
    section ``section``) on ``task`` (seed 0, ``spec`` of its training envs) with ``epochs``
    epochs of ``minibatch`` agent-steps a minibatch."""
    config = leaderboard.run_config(task, algo, 0, None, [
        f"{section}.imitation.epochs={epochs}", f"{section}.imitation.minibatch={minibatch}"])
    algorithm = registry.get(config.algo)(config.hyperparameters, spec, config.train,
                                          make_generator(0))
    start = time.perf_counter()
    algorithm.imitate(config.env)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="Urban-Scale,Grid-Rebound,PV-Hosting")
    parser.add_argument("--algos",
                        default="mappo_imitation,maddpg_imitation,ddpg_imitation,dqn_imitation")
    parser.add_argument("--sizes", default="512,40n",
                        help="comma-separated minibatch sizes: agent-steps, or <k>n for k "
                             "env-steps of every agent")
    parser.add_argument("--epochs", type=int, default=2, help="epochs timed per call")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    for name, value in (("--epochs", args.epochs), ("--rounds", args.rounds),
                        ("--threads", args.threads)):
        if value < 1:
            parser.error(f"{name} must be >= 1, got {value}")
    sizes = [item.strip() for item in args.sizes.split(",") if item.strip()]
    for size in sizes:
        digits = size[:-1] if size.endswith("n") else size
        if not (digits.isdigit() and int(digits) >= 1):
            parser.error(f"--sizes: {size!r} is neither a positive integer (agent-steps) nor "
                         "<k>n (k env-steps of every agent, k >= 1)")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.epochs} epochs timed, "
          f"fastest of {args.rounds} round(s)")
    print("| task | config | agents | epochs | "
          + " | ".join(f"{size}: s/epoch (env-steps), whole clone s" for size in sizes) + " |")
    print("|---|---|---:|---:|" + "---:|" * len(sizes))
    for task in args.tasks.split(","):
        for algo in args.algos.split(","):
            try:
                config = leaderboard.run_config(task, algo, 0, None, [])
            except ConfigError as error:  # an unknown task or config
                parser.error(str(error))
            spec = EnvSpec.from_env(envs.make_batched_env(config.env,
                                                          n_envs=config.train.n_envs))
            n_agents = spec.n_agents
            shipped = config.hyperparameters.imitation.epochs
            minibatch = {size: int(size[:-1]) * n_agents if size.endswith("n") else int(size)
                         for size in sizes}
            best = {size: math.inf for size in sizes}
            for _ in range(args.rounds):
                for size in sizes:  # alternating sizes within each round
                    short, long = (imitate_seconds(task, algo, config.algo, spec, epochs,
                                                   minibatch[size])
                                   for epochs in (1, 1 + args.epochs))
                    best[size] = min(best[size], (long - short) / args.epochs)
            cells = " | ".join(f"{best[size]:.3f} ({math.ceil(minibatch[size] / n_agents)}), "
                               f"{best[size] * shipped:.0f}"
                               for size in sizes)
            print(f"| {task} | {algo} | {n_agents} | {shipped} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
