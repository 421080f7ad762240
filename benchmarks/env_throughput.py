"""Environment throughput: agent-steps per second of the batched core (market and network
together), eager and compiled (``envs.compiled``, measured side by side in alternating
blocks, with its compile time), and of the PettingZoo wrapper on both of its engines (the
compiled numba engine and the torch core at B=1), against a per-scenario pandapower
``runpp`` loop measured in the same run, printed as a markdown table.

    python benchmarks/env_throughput.py [--feeder 1-LV-rural1--0-sw] [--network zbus]
        [--mechanism uniform [cda ...]] [--rounds 1] [--batch-sizes 1 64 1024 4096]
        [--steps 200] [--device cpu] [--threads 2] [--no-compiled] [--no-wrappers]

With several mechanisms the core is measured alternately, mechanism after mechanism at each
batch size, ``--rounds`` times (the machine's speed drifts, so alternating keeps the
comparison fair); each row gives the median over the rounds, its ratio to the eager core of
the same mechanism (compiled rows) and to the first mechanism's eager core.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import envs
from envs.market import MECHANISMS


def core_rates(feeder: str, network: str, mechanism: str, n_envs: int, steps: int,
               device: str, compiled: bool, rounds: int = 4
               ) -> tuple[float, float | None, float | None, int]:
    """Agent-steps/s of the eager core and (``compiled``) of the compiled core
    (``envs.compiled``) at ``n_envs``, measured side by side: ``rounds`` alternating blocks of
    ``steps / rounds`` steps each, after a warm-up that includes the compilation. Returns
    ``(eager rate, compiled rate or None, compile seconds or None, agents)``."""
    config = {"community": {"feeder": feeder}, "network": {"model": network},
              "market": {"mechanism": mechanism}}
    cores = {"eager": envs.make_batched_env(config, n_envs=n_envs, device=device,
                                            compile=False)}
    if compiled:
        cores["compiled"] = envs.make_batched_env(config, n_envs=n_envs, device=device,
                                                  compile=True)
    n_agents = cores["eager"].n_agents
    generator = torch.Generator(device=device).manual_seed(0)
    actions = torch.rand(8, n_envs, n_agents, 2, generator=generator, device=device)
    actions[..., 0] = actions[..., 0] * 2 - 1
    for env in cores.values():
        env.reset(seed=0)
        for i in range(10):  # warm-up (and compilation)
            env.step(actions[i % 8])
    elapsed = dict.fromkeys(cores, 0.0)
    block = max(1, steps // rounds)
    for _ in range(rounds):
        for name, env in cores.items():
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            for i in range(block):
                env.step(actions[i % 8])
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            elapsed[name] += time.perf_counter() - start
    rates = {name: rounds * block * n_envs * n_agents / seconds
             for name, seconds in elapsed.items()}
    if not compiled:
        return rates["eager"], None, None, n_agents
    stages = cores["compiled"].compiled
    eager_stages = stages.eager_stages
    if eager_stages:
        print(f"(B={n_envs}: stages running eager: {eager_stages})")
    return rates["eager"], rates["compiled"], stages.compile_seconds, n_agents


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
    parser.add_argument("--no-compiled", dest="compiled", action="store_false",
                        help="skip the compiled core (envs.compiled)")
    parser.add_argument("--no-wrappers", dest="wrappers", action="store_false",
                        help="skip the PettingZoo wrapper rows")
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
    print("| what | B | agents | agent-steps/s | env-steps/s | x runpp loop | x eager core "
          "| x first mechanism | compile s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n_envs in args.batch_sizes:
        steps = max(20, args.steps if n_envs >= 64 else args.steps * 5)
        eager_rates: dict[str, list[float]] = {mechanism: [] for mechanism in mechanisms}
        compiled_rates: dict[str, list[float]] = {mechanism: [] for mechanism in mechanisms}
        compile_seconds: dict[str, float] = {}
        for _ in range(args.rounds):
            for mechanism in mechanisms:
                eager, compiled, seconds, n_agents = core_rates(
                    args.feeder, args.network, mechanism, n_envs, steps, args.device,
                    args.compiled)
                eager_rates[mechanism].append(eager)
                if compiled is not None:
                    compiled_rates[mechanism].append(compiled)
                    compile_seconds.setdefault(mechanism, seconds)
        first = statistics.median(eager_rates[mechanisms[0]])
        for mechanism in mechanisms:
            eager = statistics.median(eager_rates[mechanism])
            print(f"| core, {mechanism} | {n_envs} | {n_agents} | {eager:,.0f} | "
                  f"{eager / n_agents:,.0f} | {eager / reference:,.0f} | 1 | "
                  f"{eager / first:.2f} | |", flush=True)
            if compiled_rates[mechanism]:
                compiled = statistics.median(compiled_rates[mechanism])
                print(f"| core, compiled, {mechanism} | {n_envs} | {n_agents} | "
                      f"{compiled:,.0f} | {compiled / n_agents:,.0f} | "
                      f"{compiled / reference:,.0f} | {compiled / eager:.2f} | | "
                      f"{compile_seconds[mechanism]:.1f} |", flush=True)
    for mechanism in mechanisms if args.wrappers else ():
        for engine, steps in (("numba", args.steps * 50), ("torch", args.steps * 5)):
            rate = pettingzoo_rate(args.feeder, args.network, mechanism, steps, engine)
            print(f"| PettingZoo wrapper, {engine} engine, {mechanism} | 1 | {n_agents} | "
                  f"{rate * n_agents:,.0f} | {rate:,.0f} | {rate * n_agents / reference:,.0f} "
                  f"| | | |", flush=True)
    print(f"| pandapower runpp per scenario | 1 | {n_agents} | {reference:,.0f} | "
          f"{reference / n_agents:,.0f} | 1 | | | |")


if __name__ == "__main__":
    main()
