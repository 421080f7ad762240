"""Milliseconds of one gradient step (forward, backward, Adam) of the algorithms' small MLPs,
with ``agents.networks.adam`` fused and with torch's per-parameter loop, in alternating
rounds in one process; prints one markdown row per network.

    python benchmarks/adam_step.py [--rounds 3] [--steps 400] [--batch 512] [--threads 1]

The networks: an actor of the imitation configs (87 observation features -> 64 -> 64 -> 2),
a DQN head (87 -> 128 -> 128 -> 63 actions) and a centralised critic (600 -> 256 -> 256 -> 1).
Each timing is the fastest of ``--rounds``, after 20 warm-up steps.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents import networks  # noqa: E402

NETWORKS = (([64, 64], 87, 2), ([128, 128], 87, 63), ([256, 256], 600, 1))


def step_ms(fused: bool, hidden: list[int], n_in: int, n_out: int, batch: int,
            steps: int) -> float:
    generator = torch.Generator().manual_seed(0)
    net = networks.mlp(n_in, hidden, n_out, "relu", generator)
    devices = networks.FUSED_ADAM_DEVICES
    networks.FUSED_ADAM_DEVICES = devices if fused else ()
    try:
        optimizer = networks.adam(list(net.parameters()), lr=1e-3)
    finally:
        networks.FUSED_ADAM_DEVICES = devices
    x = torch.randn(batch, n_in, generator=generator)
    y = torch.randn(batch, n_out, generator=generator)

    def step() -> None:
        loss = (net(x) - y).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(20):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}\n")
    print("| network | per-parameter loop, ms/step | fused, ms/step | speed-up |")
    print("|---|---:|---:|---:|")
    for hidden, n_in, n_out in NETWORKS:
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for fused in (False, True):
                times[fused].append(step_ms(fused, hidden, n_in, n_out, args.batch,
                                            args.steps))
        loop, fused_ms = min(times[False]), min(times[True])
        name = "-".join(str(size) for size in (n_in, *hidden, n_out))
        print(f"| {name} | {loop:.3f} | {fused_ms:.3f} | {loop / fused_ms:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
