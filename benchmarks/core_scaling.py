"""Scaling of the batched core: agent-steps/s against the number of agents N and of
environments B, eager and compiled (``envs.compiled``) side by side, and the eager step's
split into the market (``BatchedP2PEnv._trade``: battery and the market's clearing, whose
sorts grow as N log N) and the network step (the ``zbus`` solve, whose GEMMs grow as N^2),
printed as a markdown table.

    python benchmarks/core_scaling.py [--threads 1] [--mechanism uniform] [--quick]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

import envs

CASES: tuple[tuple[str, int | None, str, tuple[int, ...]], ...] = (
    ("1-LV-rural1--0-sw", None, "zbus", (256, 4096)),
    ("1-LV-semiurb4--0-sw", None, "zbus", (256, 4096)),
    ("1-LV-urban6--0-sw", None, "zbus", (256, 4096)),
    ("synthetic", 500, "zbus", (64, 512)),
    ("synthetic", 1000, "none", (64, 512)),
)
"""(feeder, synthetic n_agents, network model, batch sizes): the SimBench feeders (13, 41,
111 agents) and the synthetic community at 500 and 1000 agents (``community.n_agents``, at
most MAX_AGENTS); at 1000 agents without a network: building a ``zbus`` core solves the
year's 35,136 no-P2P steps for its penalty table, several minutes at that size."""


def seconds(function: Callable[[], object], repeats: int) -> float:
    """Mean seconds of ``function()`` over ``repeats`` calls."""
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - start) / repeats


def row(feeder: str, n_agents: int | None, network: str, n_envs: int, mechanism: str,
        work: float) -> str:
    """One table row; ``work``: agent-steps per timed block (sets the steps per block)."""
    community = {"feeder": feeder} | ({"n_agents": n_agents} if n_agents else {})
    config = {"community": community, "network": {"model": network},
              "market": {"mechanism": mechanism}}
    eager = envs.make_batched_env(config, n_envs=n_envs, compile=False)
    compiled = envs.make_batched_env(config, n_envs=n_envs, compile=True)
    n = eager.n_agents
    generator = torch.Generator().manual_seed(0)
    actions = torch.rand(4, n_envs, n, 2, generator=generator)
    actions[..., 0] = actions[..., 0] * 2 - 1
    for env in (eager, compiled):
        env.reset(seed=0)
        for i in range(3):  # warm-up and compilation
            env.step(actions[i % 4])
    steps = max(3, min(40, int(work / (n_envs * n))))
    totals = {"eager": 0.0, "compiled": 0.0}
    for _ in range(2):  # alternating blocks
        for name, env in (("eager", eager), ("compiled", compiled)):
            totals[name] += seconds(lambda e=env: [e.step(actions[i % 4])
                                                   for i in range(steps)], 1)
    step_eager = totals["eager"] / (2 * steps)
    rate_eager = n_envs * n / step_eager
    rate_compiled = n_envs * n * 2 * steps / totals["compiled"]
    battery, price = eager.decode_actions(actions[0])
    market_s = seconds(lambda: eager._trade(battery, price), 3)
    trade = eager._trade(battery, price)
    network_s = seconds(lambda: eager.network.step(trade["p_kw"], trade["q_kvar"]), 3)
    rest_s = max(step_eager - market_s - network_s, 0.0)
    return (f"| {feeder} | {network} | {n} | {n_envs} | {rate_eager:,.0f} | {rate_compiled:,.0f} | "
            f"{rate_compiled / rate_eager:.2f} | {compiled.compiled.compile_seconds:.1f} | "
            f"{market_s * 1e3:.1f} | {network_s * 1e3:.1f} | {rest_s * 1e3:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--mechanism", default="uniform")
    parser.add_argument("--quick", action="store_true",
                        help="only the SimBench feeders (skip the 500 and 1000 agent rows)")
    parser.add_argument("--only-synthetic", action="store_true",
                        help="only the 500 and 1000 agent rows")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"mechanism {args.mechanism}\n")
    print("| community | network | N | B | eager agent-steps/s | compiled agent-steps/s "
          "| x eager | "
          "compile s | eager ms/step: market | network | rest |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for feeder, n_agents, network, batch_sizes in CASES:
        if (args.quick and n_agents is not None) or (args.only_synthetic and n_agents is None):
            continue
        for n_envs in batch_sizes:
            print(row(feeder, n_agents, network, n_envs, args.mechanism, 2e6), flush=True)


if __name__ == "__main__":
    main()
