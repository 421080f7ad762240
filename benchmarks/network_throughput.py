"""Throughput of the batched Z-bus power flow (envs/network.py) against pandapower ``runpp``.

For each feeder and batch size B: milliseconds per ``BatchedPowerFlow.solve`` of B random
scenarios (median over ``--repeats``), agent-steps per second (B * N / time), pandapower
``runpp`` milliseconds for one scenario measured in the same run (median), and the speed-up
``B * runpp / solve``. Scenarios draw each agent's consumption between -3x (rooftop PV export)
and 1x its load's peak, with the load's power factor. Prints a markdown table.

    python benchmarks/network_throughput.py [--feeders 1-LV-rural1--0-sw 1-LV-urban6--0-sw]
        [--batch-sizes 1 64 1024 4096] [--repeats 50] [--runpp-repeats 20]
        [--dtype float32] [--device cpu] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pandapower as pp
import simbench
import torch

from envs.network import RUNPP_OPTIONS, BatchedPowerFlow, agent_net


def load_net(name: str) -> pp.pandapowerNet:
    if name == "case33bw":
        import pandapower.networks as pn

        return pn.case33bw()
    return simbench.get_simbench_net(name)


def scenarios(net: pp.pandapowerNet, batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``[batch, N]`` consumption, kW and kvar."""
    rng = np.random.default_rng(seed)
    peak_kw = net.load["p_mw"].to_numpy() * 1000.0
    q_kvar = net.load["q_mvar"].to_numpy() * 1000.0
    tan_phi = np.divide(q_kvar, peak_kw, out=np.zeros_like(peak_kw), where=peak_kw > 0)
    p_kw = rng.uniform(-3.0, 1.0, size=(batch, len(peak_kw))) * peak_kw
    return p_kw, p_kw * tan_phi


def runpp_ms(net: pp.pandapowerNet, repeats: int) -> float:
    """Median ms of one pandapower ``runpp`` (the options of ``run_ac``) on random scenarios."""
    work = agent_net(net)
    p_kw, q_kvar = scenarios(net, repeats + 1, seed=1)
    times = []
    for row in range(repeats + 1):
        work.load["p_mw"] = p_kw[row] / 1000.0
        work.load["q_mvar"] = q_kvar[row] / 1000.0
        start = time.perf_counter()
        pp.runpp(work, **RUNPP_OPTIONS)
        if row:  # the first run is a warm-up
            times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def solve_ms(model: BatchedPowerFlow, batch: int, net: pp.pandapowerNet, repeats: int,
             device: torch.device) -> tuple[float, int]:
    """Median ms of one ``solve`` over ``batch`` scenarios, and its iteration count."""
    p_np, q_np = scenarios(net, batch, seed=2)
    p_kw = torch.as_tensor(p_np, dtype=model.dtype, device=device)
    q_kvar = torch.as_tensor(q_np, dtype=model.dtype, device=device)
    result = model.solve(p_kw, q_kvar)  # warm-up
    assert bool(result.converged.all())
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        model.solve(p_kw, q_kvar)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times), result.iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feeders", nargs="+",
                        default=["1-LV-rural1--0-sw", "1-LV-urban6--0-sw"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64, 1024, 4096])
    parser.add_argument("--repeats", type=int, default=50, help="timed solves per batch size")
    parser.add_argument("--runpp-repeats", type=int, default=20, help="timed runpp calls")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}, "
          f"dtype {args.dtype}, pandapower {pp.__version__}")
    print()
    print("| feeder | agents | B | solve ms | iterations | agent-steps/s | runpp ms (1 scenario)"
          " | speed-up vs runpp loop |")
    print("|---|---|---|---|---|---|---|---|")
    for feeder in args.feeders:
        net = load_net(feeder)
        model = BatchedPowerFlow.from_pandapower(net, device=device, dtype=dtype)
        reference_ms = runpp_ms(net, args.runpp_repeats)
        for batch in args.batch_sizes:
            elapsed_ms, iterations = solve_ms(model, batch, net, args.repeats, device)
            rate = batch * model.n_agent / (elapsed_ms / 1000.0)
            speed_up = batch * reference_ms / elapsed_ms
            print(f"| {feeder} | {model.n_agent} | {batch} | {elapsed_ms:.3f} | {iterations} | "
                  f"{rate:,.0f} | {reference_ms:.1f} | {speed_up:,.0f}x |")


if __name__ == "__main__":
    main()
