"""TorchRL throughput: env-steps and agent-steps per second of the batched TorchRL env
(``envs.torchrl_env``, B communities per call) against TorchRL's ``PettingZooWrapper`` over the
PettingZoo env (one community per call, numba and torch engines) and the raw batched core,
stepped the way a collector steps them (``step_and_maybe_reset``, automatic resets included).

The compared things alternate within one run: each round times every one of them for
``--seconds``, and the table gives the median of the rounds, so a slower or faster spell of the
machine falls on all of them alike. Actions are drawn beforehand (uniform over the action box).

    python benchmarks/torchrl_throughput.py [--batch-sizes 1 16 256] [--rounds 5]
        [--seconds 0.5] [--network zbus] [--feeder 1-LV-rural1--0-sw] [--threads N]
        [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from torchrl.envs.libs.pettingzoo import PettingZooWrapper

import envs

Stepper = Callable[[], None]
"""One env-step of B communities (a closure over its env, tensordict and actions)."""


def random_actions(n_envs: int, n_agents: int, device: str, count: int = 8) -> torch.Tensor:
    """``[count, n_envs, n_agents, 2]`` actions in the core's box (battery in [-1, 1], price
    in [0, 1])."""
    generator = torch.Generator(device=device).manual_seed(0)
    actions = torch.rand(count, n_envs, n_agents, 2, generator=generator, device=device)
    actions[..., 0] = 2.0 * actions[..., 0] - 1.0
    return actions


def core_stepper(config: dict, n_envs: int, device: str) -> tuple[Stepper, int]:
    core = envs.make_batched_env(config, n_envs=n_envs, device=device)
    core.reset(seed=0)
    actions = random_actions(n_envs, core.n_agents, device)
    count = [0]

    def step() -> None:
        core.step(actions[count[0] % len(actions)])
        count[0] += 1

    return step, core.n_agents


def torchrl_stepper(env, group: str, actions: torch.Tensor) -> Stepper:
    """``step_and_maybe_reset`` of a TorchRL ``env``, acting ``actions [k, *action shape]``."""
    tensordict = env.reset()
    state = {"tensordict": tensordict, "count": 0}

    def step() -> None:
        tensordict = state["tensordict"]
        tensordict.set((group, "action"), actions[state["count"] % len(actions)])
        _, state["tensordict"] = env.step_and_maybe_reset(tensordict)
        state["count"] += 1

    return step


def batched_stepper(config: dict, n_envs: int, device: str, step_infos: bool) -> Stepper:
    env = envs.make_torchrl_env(config, n_envs=n_envs, device=device, step_infos=step_infos,
                                seed=0)
    return torchrl_stepper(env, "agents", random_actions(n_envs, env.core.n_agents, device))


def pettingzoo_stepper(config: dict, engine: str, n_agents: int) -> Stepper:
    env = PettingZooWrapper(env=envs.make_env(config, engine=engine), use_mask=False,
                            categorical_actions=False, seed=0)
    return torchrl_stepper(env, "prosumer", random_actions(1, n_agents, "cpu")[:, 0])


def plain_pettingzoo_stepper(config: dict) -> Stepper:
    """The PettingZoo env itself on the numba engine, without TorchRL (resets included)."""
    env = envs.make_env(config, engine="numba")
    env.reset(seed=0)
    actions = random_actions(1, len(env.possible_agents), "cpu")[:, 0].numpy()
    count = [0]

    def step() -> None:
        if not env.agents:
            env.reset()
        env.step({agent: actions[count[0] % len(actions), i]
                  for i, agent in enumerate(env.possible_agents)})
        count[0] += 1

    return step


def timed_rate(step: Stepper, seconds: float, device: str) -> float:
    """Calls of ``step`` per second over about ``seconds``."""
    calls = 0
    start = time.perf_counter()
    while True:
        for _ in range(10):
            step()
        calls += 10
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feeder", default="1-LV-rural1--0-sw")
    parser.add_argument("--network", default="zbus", choices=["zbus", "none"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 256])
    parser.add_argument("--rounds", type=int, default=5, help="alternations of all contenders")
    parser.add_argument("--seconds", type=float, default=0.5, help="per contender and round")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="PettingZoo in TorchRL is tested")
    config = {"community": {"feeder": args.feeder}, "network": {"model": args.network}}

    contenders: dict[tuple[str, int], Stepper] = {}
    n_agents = 0
    for n_envs in args.batch_sizes:
        contenders["core (BatchedP2PEnv.step)", n_envs], n_agents = core_stepper(
            config, n_envs, args.device)
        contenders["TorchRL batched env, infos", n_envs] = batched_stepper(
            config, n_envs, args.device, step_infos=True)
        contenders["TorchRL batched env, no infos", n_envs] = batched_stepper(
            config, n_envs, args.device, step_infos=False)
    if args.device == "cpu":
        for engine in ("numba", "torch"):
            contenders[f"TorchRL PettingZooWrapper, {engine} engine", 1] = pettingzoo_stepper(
                config, engine, n_agents)
        contenders["PettingZoo env alone, numba engine", 1] = plain_pettingzoo_stepper(config)

    for step in contenders.values():  # warm-up (numba compilation, first allocations)
        timed_rate(step, 0.1, args.device)
    rates: dict[tuple[str, int], list[float]] = {key: [] for key in contenders}
    for _ in range(args.rounds):
        for key, step in contenders.items():
            rates[key].append(timed_rate(step, args.seconds, args.device))

    print(f"torch {torch.__version__}, torch threads {torch.get_num_threads()}, device "
          f"{args.device}, feeder {args.feeder} ({n_agents} agents), network {args.network}, "
          f"median of {args.rounds} alternating rounds of {args.seconds} s\n")
    print("| what | B | env-steps/s | agent-steps/s | steps of B per s |")
    print("|---|---:|---:|---:|---:|")
    for (name, n_envs), values in rates.items():
        calls = statistics.median(values)
        print(f"| {name} | {n_envs} | {calls * n_envs:,.0f} | {calls * n_envs * n_agents:,.0f} "
              f"| {calls:,.0f} |")


if __name__ == "__main__":
    main()
