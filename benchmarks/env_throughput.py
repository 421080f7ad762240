"""Environment throughput: agent-steps per second of the batched core (market and network
together) and of the PettingZoo wrapper on both of its engines (the compiled numba engine and
the torch core at B=1), against a per-scenario pandapower ``runpp`` loop measured in the same
run, printed as a markdown table.

    python benchmarks/env_throughput.py [--feeder 1-LV-rural1--0-sw] [--network zbus]
        [--mechanism uniform [cda ...]] [--rounds 1] [--batch-sizes 1 64 1024 4096]
        [--steps 200] [--device cpu] [--threads 2]

With several mechanisms the core is measured alternately, mechanism after mechanism at each
batch size, ``--rounds`` times (the machine's speed drifts, so alternating keeps the
comparison fair); each row gives the median over the rounds and its ratio to the first
mechanism's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import envs
from envs.market import MECHANISMS


def core_rate(feeder: str, network: str, mechanism: str, n_envs: int, steps: int,
              device: str) -> tuple[float, int]:
    env = envs.make_batched_env({"community": {"feeder": feeder}, "network": {"model": network},
                                 "market": {"mechanism": mechanism}}, n_envs=n_envs,
                                device=device)
    env.reset(seed=0)
    generator = torch.Generator(device=device).manual_seed(0)
    actions = torch.rand(8, n_envs, env.n_agents, 2, generator=generator, device=device)
    actions[..., 0] = actions[..., 0] * 2 - 1
    for i in range(10):  # warm-up
        env.step(actions[i % 8])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(steps):
        env.step(actions[i % 8])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return steps * n_envs * env.n_agents / elapsed, env.n_agents


def pettingzoo_rate(feeder: str, network: str, mechanism: str, steps: int,
                    engine: str) -> float:
    """Env-steps/s of the PettingZoo wrapper on ``engine``, resets included, actions sampled
    from its spaces beforehand."""
    env = envs.make_env({"community": {"feeder": feeder}, "network": {"model": network},
                         "market": {"mechanism": mechanism}}, engine=engine)
    env.reset(seed=0)
    actions = [{agent: env.action_space(agent).sample() for agent in env.possible_agents}
               for _ in range(8)]
    for i in range(20):  # warm-up
        env.step(actions[i % 8])
    env.reset()
    done_steps = 0
    start = time.perf_counter()
    while done_steps < steps:
        if not env.agents:
            env.reset()
        env.step(actions[done_steps % 8])
        done_steps += 1
    return steps / (time.perf_counter() - start)


def runpp_rate(feeder: str, repeats: int = 20) -> float:
    """Agent-steps/s of one pandapower ``runpp`` per scenario (the network step alone)."""
    from envs.network import run_ac

    env = envs.make_batched_env({"community": {"feeder": feeder}, "network": {"model": "none"}})
    net = env.data.net()
    p_kw = env.load_kw[12 * 96 + 48][None].double()
    q_kvar = env.load_kvar[12 * 96 + 48][None].double()
    run_ac(net, p_kw, q_kvar)
    start = time.perf_counter()
    for _ in range(repeats):
        run_ac(net, p_kw, q_kvar)
    return repeats * env.n_agents / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feeder", default="1-LV-rural1--0-sw")
    parser.add_argument("--network", default="zbus", choices=["zbus", "none"])
    parser.add_argument("--mechanism", nargs="+", default=["uniform"], choices=MECHANISMS,
                        help="market mechanisms, measured alternately (ratios to the first)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternating rounds per batch size (median reported)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 1024, 4096])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    mechanisms = args.mechanism

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}, "
          f"feeder {args.feeder}, network {args.network}, mechanisms {', '.join(mechanisms)}, "
          f"rounds {args.rounds}\n")
    reference = runpp_rate(args.feeder)
    print("| what | B | agents | agent-steps/s | env-steps/s | x runpp loop | x first mechanism |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for n_envs in args.batch_sizes:
        steps = max(20, args.steps if n_envs >= 64 else args.steps * 5)
        rates: dict[str, list[float]] = {mechanism: [] for mechanism in mechanisms}
        for _ in range(args.rounds):
            for mechanism in mechanisms:
                rate, n_agents = core_rate(args.feeder, args.network, mechanism, n_envs, steps,
                                           args.device)
                rates[mechanism].append(rate)
        first = statistics.median(rates[mechanisms[0]])
        for mechanism in mechanisms:
            rate = statistics.median(rates[mechanism])
            print(f"| core, {mechanism} | {n_envs} | {n_agents} | {rate:,.0f} | "
                  f"{rate / n_agents:,.0f} | {rate / reference:,.0f} | {rate / first:.2f} |",
                  flush=True)
    for mechanism in mechanisms:
        for engine, steps in (("numba", args.steps * 50), ("torch", args.steps * 5)):
            rate = pettingzoo_rate(args.feeder, args.network, mechanism, steps, engine)
            print(f"| PettingZoo wrapper, {engine} engine, {mechanism} | 1 | {n_agents} | "
                  f"{rate * n_agents:,.0f} | {rate:,.0f} | {rate * n_agents / reference:,.0f} "
                  f"| |", flush=True)
    print(f"| pandapower runpp per scenario | 1 | {n_agents} | {reference:,.0f} | "
          f"{reference / n_agents:,.0f} | 1 | |")


if __name__ == "__main__":
    main()
