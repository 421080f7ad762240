"""How fast the trade ledger (``envs.ledger``) writes, and what it adds to an evaluation.

    python benchmarks/ledger_throughput.py [--config configs/env/default.yaml] [--days 8]
        [--batch-size 8] [--policy zi] [--mechanism uniform] [--repeats 3] [--threads 1]
        [--command-repeats 2] [--command-policies no_p2p,...,oracle]
        [--out results/ledger_throughput] [key=value ...]

Four measurements on ``--days`` test days of the community (one evaluation batch of
``--batch-size`` days at a time, as ``evaluate.py``):

- **write**: the infos of one evaluation are collected first; then only the writer runs over
  them (bilateral matching, canonical bytes, SHA-256 chain, SQLite inserts and commits, the
  seal): rows per second and microseconds per row.
- **verify**: ``envs.ledger.verify`` of that file: rows per second.
- **evaluate**: ``agents.evaluation.evaluate_policy`` with and without a ledger, alternating
  ``--repeats`` times (a shared machine drifts): wall seconds of each and the median overhead
  ``with / without - 1``: the rollout alone, where the ledger costs most.
- **evaluate.py**: the whole command (``evaluate.main``, in this process, ``--no-plots``) on
  the same days with ``--command-policies`` (evaluate.py's default set, the oracle included),
  with and without ``--ledger``, alternating ``--command-repeats`` times (0: skipped).

Prints a markdown table and writes ``<out>/ledger_throughput.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from agents.baselines import make_policy  # noqa: E402
from agents.evaluation import chunk_seed, evaluate_policy  # noqa: E402
from envs import ledger  # noqa: E402
from envs.config import EnvConfig, build_config  # noqa: E402
from envs.core import BatchedP2PEnv  # noqa: E402
from envs.data import day_split  # noqa: E402
from envs.files import atomic_write_text  # noqa: E402

DEFAULT_CONFIG = ROOT / "configs" / "env" / "default.yaml"


def collect_infos(env: BatchedP2PEnv, policy, days: list[int], seed: int) -> list[tuple]:
    """The rollout of ``evaluate_policy``, keeping every step's infos the ledger reads."""
    batches = []
    for chunk, start in enumerate(range(0, len(days), env.n_envs)):
        chunk_days = days[start:start + env.n_envs]
        padded = chunk_days + [chunk_days[-1]] * (env.n_envs - len(chunk_days))
        obs, _ = env.reset(seed=seed + start, days=padded)
        policy.reset(env, seed=chunk_seed(seed, chunk))
        steps = []
        for _ in range(env.episode_steps):
            obs, _, _, _, info = env.step(policy.act(obs, env))
            steps.append({key: info[key] for key in ledger.INFO_KEYS_READ})
        batches.append((list(range(start, start + len(chunk_days))), chunk_days, steps))
    return batches


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--days", type=int, default=8, help="test days evaluated")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--policy", default="zi")
    parser.add_argument("--mechanism", default=None, help="default: the config's")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--command-repeats", type=int, default=2)
    parser.add_argument("--command-policies",
                        default="no_p2p,self_consumption,zi,fixed_price,oracle")
    parser.add_argument("--out", default="results/ledger_throughput")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from envs.config import load_yaml

    overrides = list(args.overrides) + [f"n_envs={args.batch_size}"]
    if args.mechanism:
        overrides.append(f"market.mechanism={args.mechanism}")
    config = build_config(EnvConfig, load_yaml(args.config), overrides)
    _, test = day_split(config.episode.test_every)
    days = [int(d) for d in test[:args.days]]
    env = BatchedP2PEnv(config)
    work = Path(tempfile.mkdtemp(prefix="ledger_bench_"))

    def writer(name: str) -> ledger.LedgerWriter:
        return ledger.LedgerWriter(work / name, env.config, env.agent_names, seed=args.seed,
                                   overwrite=True)

    # Write throughput over collected infos.
    batches = collect_infos(env, make_policy(args.policy), days, args.seed)
    write_runs = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        with writer("write.sqlite") as w:
            for episodes, chunk_days, steps in batches:
                w.start_episodes(episodes, chunk_days, [None] * len(episodes))
                for step, info in enumerate(steps):
                    w.record_step(info, episodes, step)
        write_runs.append((time.perf_counter() - start, w.n_rows))
    write_s, rows = min(write_runs)
    start = time.perf_counter()
    report = ledger.verify(work / "write.sqlite")
    verify_s = time.perf_counter() - start
    assert report.ok, report.problems
    size_mb = (work / "write.sqlite").stat().st_size / 1e6

    # Evaluation with and without the ledger, alternating.
    plain_s, with_s = [], []
    for _ in range(args.repeats):
        for timings, recorder in ((plain_s, None), (with_s, "eval.sqlite")):
            w = writer(recorder) if recorder else None
            start = time.perf_counter()
            evaluate_policy(env, make_policy(args.policy), days, seed=args.seed, recorder=w)
            if w is not None:
                w.close()
            timings.append(time.perf_counter() - start)
    overheads = [b / a - 1.0 for a, b in zip(plain_s, with_s, strict=True)]

    # The whole evaluate.py command, with and without --ledger, alternating.
    import contextlib
    import io

    import evaluate

    command = ["--config", args.config, "--policies", args.command_policies, "--days",
               ",".join(map(str, days)), "--batch-size", str(args.batch_size), "--seed",
               str(args.seed), "--no-plots", "--no-progress", "--out", str(work / "eval"),
               *[o for o in overrides if not o.startswith("n_envs=")]]
    command_plain, command_with = [], []
    for _ in range(args.command_repeats):
        for timings, extra in ((command_plain, []),
                               (command_with, ["--ledger", str(work / "ledgers")])):
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                assert evaluate.main([*command, *extra]) == 0
            timings.append(time.perf_counter() - start)
    command_overheads = [b / a - 1.0 for a, b in zip(command_plain, command_with,
                                                     strict=True)]

    result = {
        "config": args.config, "overrides": overrides, "mechanism": config.market.mechanism,
        "agents": env.n_agents, "days": len(days), "batch_size": args.batch_size,
        "policy": args.policy, "threads": args.threads, "rows": rows,
        "write_seconds": write_s, "rows_per_second": rows / write_s,
        "microseconds_per_row": 1e6 * write_s / rows, "file_mb": size_mb,
        "verify_seconds": verify_s, "verify_rows_per_second": rows / verify_s,
        "evaluate_seconds": plain_s, "evaluate_with_ledger_seconds": with_s,
        "overhead": overheads, "median_overhead": statistics.median(overheads),
        "command_policies": args.command_policies, "command_seconds": command_plain,
        "command_with_ledger_seconds": command_with, "command_overhead": command_overheads,
        "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "command": " ".join(sys.argv),
    }
    table = "\n".join([
        "| what | value |", "|---|---:|",
        f"| rows written | {rows:,} |",
        f"| write, rows/s | {result['rows_per_second']:,.0f} |",
        f"| write, µs/row | {result['microseconds_per_row']:.2f} |",
        f"| verify, rows/s | {result['verify_rows_per_second']:,.0f} |",
        f"| file size, MB | {size_mb:.1f} |",
        f"| evaluate without ledger, s (median) | {statistics.median(plain_s):.2f} |",
        f"| evaluate with ledger, s (median) | {statistics.median(with_s):.2f} |",
        f"| rollout overhead (median of {args.repeats} alternating pairs) | "
        f"{100 * result['median_overhead']:.0f}% |",
    ] + ([
        f"| evaluate.py without --ledger, s (median) | {statistics.median(command_plain):.1f} |",
        f"| evaluate.py with --ledger, s (median) | {statistics.median(command_with):.1f} |",
        f"| evaluate.py overhead (median of {args.command_repeats} alternating pairs) | "
        f"{100 * statistics.median(command_overheads):.0f}% |",
    ] if command_overheads else []))
    print(f"{env.n_agents} agents, {len(days)} days, batch {args.batch_size}, "
          f"{config.market.mechanism}, policy {args.policy}, {args.threads} thread(s)\n")
    print(table)
    out = Path(args.out)
    atomic_write_text(out / "ledger_throughput.json", json.dumps(result, indent=1) + "\n")
    atomic_write_text(out / "ledger_throughput.md", table + "\n")
    import shutil

    shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
