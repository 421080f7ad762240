"""Overhead of a Ray Tune sweep (``train.py --sweep``) against the same trials run back to back
at the same total core use.

    python benchmarks/sweep_overhead.py [--trials 8] [--cpus 2] [--steps 100000]
        [--repeats 1] [--sequential] [--out results/sweep_overhead] [key=value ...]

Both ways train the same ``--trials`` short MAPPO runs (``configs/mappo.yaml``, seeds
``0..trials-1``, ``train.total_steps=--steps``, 16 environments, 8 test days evaluated before
and after training, no oracle references) with ``train.torch_threads=1``:

- **sweep**: one ``python train.py --sweep --seeds 0-<trials-1> --cpus <cpus>`` process: it
  starts a local Ray with ``--cpus`` CPUs, runs ``--cpus`` trials at a time (one CPU each),
  writes the results table and stops Ray. Timed from launch to exit, Ray's start-up included.
- **back to back**: the same trials as plain ``python train.py seed=<i>`` processes, ``--cpus``
  of them at a time (a pool of ``--cpus`` slots, each taking the next trial when one ends).

Same total core use means: ``--cpus`` cores busy with one single-threaded trial each, in both.
``--sequential`` adds a third line: the trials one at a time with
``train.torch_threads=<cpus>`` (the other way to use the same cores). The overhead is
``sweep wall / back-to-back wall - 1``; ``--repeats N`` alternates the two ways N times (a
machine shared with other work drifts) and reports each pair and their median. Results go to
``<out>/sweep_overhead.json`` and ``.md`` and are printed. Trailing ``key=value`` overrides
apply to every trial.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from envs.files import atomic_write_text  # noqa: E402


def trial_overrides(steps: int, extra: list[str]) -> list[str]:
    return [f"train.total_steps={steps}", "train.n_envs=16", "train.eval_every=0",
            "train.eval_episodes=8", "train.checkpoint_every=0", "train.eval_reference=none",
            "train.torch_threads=1", *extra]


def timed(commands: list[list[str]], slots: int) -> float:
    """Wall seconds to run ``commands``, ``slots`` at a time (each must exit 0)."""
    def run(command: list[str]) -> None:
        subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=slots) as pool:
        list(pool.map(run, commands))
    return time.perf_counter() - start


def train_seconds(folder: Path) -> list[float]:
    """Each run's own training time (``metrics.json`` ``timing.train_time_s``)."""
    return [json.loads(path.read_text())["timing"]["train_time_s"]
            for path in sorted(folder.rglob("metrics.json"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--cpus", type=int, default=2, help="cores used by both ways")
    parser.add_argument("--steps", type=int, default=100_000, help="train.total_steps per trial")
    parser.add_argument("--config", default="configs/mappo.yaml")
    parser.add_argument("--repeats", type=int, default=1,
                        help="pairs of (back to back, sweep) measurements, alternated")
    parser.add_argument("--sequential", action="store_true",
                        help="also time the trials one at a time at torch_threads=--cpus")
    parser.add_argument("--out", default="results/sweep_overhead")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    python = sys.executable
    overrides = trial_overrides(args.steps, args.overrides)
    seeds = list(range(args.trials))

    pairs = []
    for repeat in range(args.repeats):
        shutil.rmtree(work, ignore_errors=True)
        plain = [[python, "train.py", "--config", args.config, "--logdir",
                  str(work / "plain"), "--no-progress", *overrides, f"seed={seed}"]
                 for seed in seeds]
        back_to_back = timed(plain, args.cpus)
        print(f"[{repeat}] back to back, {args.cpus} at a time: {back_to_back:.1f} s",
              flush=True)
        sweep = [python, "train.py", "--sweep", "--config", args.config,
                 "--seeds", f"0-{args.trials - 1}", "--cpus", str(args.cpus), "--verbose", "0",
                 "--out", str(work / "sweep"), *overrides]
        swept = timed([sweep], 1)
        print(f"[{repeat}] sweep on a local Ray with {args.cpus} CPUs: {swept:.1f} s",
              flush=True)
        pairs.append({"back_to_back_s": back_to_back, "sweep_s": swept,
                      "overhead": swept / back_to_back - 1.0,
                      "train_time_s": {"back_to_back": sum(train_seconds(work / "plain")),
                                       "sweep": sum(train_seconds(work / "sweep" / "trials"))}})
    overhead = statistics.median(pair["overhead"] for pair in pairs)

    result = {
        "trials": args.trials, "cpus": args.cpus, "steps": args.steps, "config": args.config,
        "overrides": overrides, "python": platform.python_version(),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "overhead": overhead, "pairs": pairs,
    }
    if args.sequential:
        one_by_one = [[python, "train.py", "--config", args.config, "--logdir",
                       str(work / "sequential"), "--no-progress", *overrides,
                       f"train.torch_threads={args.cpus}", f"seed={seed}"] for seed in seeds]
        result["sequential_s"] = timed(one_by_one, 1)
        print(f"one at a time, torch_threads={args.cpus}: {result['sequential_s']:.1f} s")

    command = "python benchmarks/sweep_overhead.py " + " ".join(argv or sys.argv[1:])
    lines = [f"`{command.strip()}`: {args.trials} MAPPO trials of {args.steps} env-steps, "
             f"{args.cpus} cores, Python {result['python']}", "",
             f"| pair | back to back, {args.cpus} single-threaded trials at a time (s) | "
             "`train.py --sweep`, local Ray, start-up included (s) | overhead | trials' "
             "training time, back to back / sweep (s) |", "|---:|---:|---:|---:|---:|"]
    for index, pair in enumerate(pairs):
        lines.append(f"| {index} | {pair['back_to_back_s']:.1f} | {pair['sweep_s']:.1f} | "
                     f"{100 * pair['overhead']:+.1f} % | "
                     f"{pair['train_time_s']['back_to_back']:.1f} / "
                     f"{pair['train_time_s']['sweep']:.1f} |")
    lines += ["", f"Sweep overhead: {100 * overhead:+.1f} % of the back-to-back wall time"
                  + (f" (median of {len(pairs)} alternated pairs)" if len(pairs) > 1 else "")
                  + "."]
    if args.sequential:
        lines.append(f"One at a time with train.torch_threads={args.cpus}: "
                     f"{result['sequential_s']:.1f} s.")
    text = "\n".join(lines) + "\n"
    atomic_write_text(out / "sweep_overhead.json", json.dumps(result, indent=1) + "\n")
    atomic_write_text(out / "sweep_overhead.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
