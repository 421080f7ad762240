"""Train every algorithm with its shipped config, then benchmark the trained policies on the
held-out test days against the rule-based baselines and the oracle; print a markdown table.

    python benchmarks/train_results.py [--algos mappo,maddpg,ddpg,dqn,qlearning,sb3_ppo,sb3_td3]
        [--logdir runs/bench] [--out results/bench] [--episodes 0]

Each algorithm runs ``python train.py --config configs/<algo>.yaml`` (wall time and agent-steps/s
from its ``metrics.json``); then one ``evaluate.py`` call scores every run's best checkpoint and
the baselines on the same days (``--episodes 0``: every test day).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINES = ["no_p2p", "self_consumption", "zi", "fixed_price", "oracle"]


def train(algo: str, logdir: Path) -> tuple[Path, float, dict]:
    before = set(logdir.glob(f"*__{algo}__*")) if logdir.exists() else set()
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "train.py"), "--config",
                    str(ROOT / "configs" / f"{algo}.yaml"), "--logdir", str(logdir),
                    "--no-progress"], check=True, cwd=ROOT)
    wall = time.perf_counter() - start
    (run,) = set(logdir.glob(f"*__{algo}__*")) - before
    return run, wall, json.loads((run / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", default="mappo,maddpg,ddpg,dqn,qlearning,sb3_ppo,sb3_td3")
    parser.add_argument("--logdir", default="runs/bench")
    parser.add_argument("--out", default="results/bench")
    parser.add_argument("--episodes", type=int, default=0)
    args = parser.parse_args()
    logdir = Path(args.logdir)
    runs = {}
    for algo in args.algos.split(","):
        run, wall, metrics = train(algo, logdir)
        runs[algo] = (run, wall, metrics["agent_steps"] / wall)
        print(f"{algo}: {run} in {wall:.0f} s", flush=True)

    def evaluate(config: Path, policies: list[str], out: Path) -> dict[str, dict]:
        subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--config", str(config),
                        "--policies", ",".join(policies), "--days", "test", "--episodes",
                        str(args.episodes), "--out", str(out), "--no-progress", "--no-plots"],
                       check=True, cwd=ROOT)
        rows = json.loads((out / "results.json").read_text())["results"]
        return {row["policy"]: row for row in rows}

    # Baselines once; each run in an env of its own config (discrete-action runs need theirs),
    # on the same days with the same seed.
    out = Path(args.out)
    by_policy = evaluate(ROOT / "configs" / "env" / "default.yaml", BASELINES, out / "baselines")
    rows = list(by_policy.values())
    for algo, (run, _, _) in runs.items():
        by_policy.update(evaluate(run, [str(run)], out / algo))
    best_rule = min((by_policy[name]["community_cost_mean"], name) for name in
                    ("self_consumption", "zi", "fixed_price"))
    no_p2p = by_policy["no_p2p"]["community_cost_mean"]
    oracle = by_policy["oracle"]["community_cost_mean"]
    print(f"\nheld-out test days: {rows[0]['days']}; no_p2p {no_p2p:.2f}, best rule-based "
          f"{best_rule[1]} {best_rule[0]:.2f}, oracle {oracle:.2f} (currency/day)\n")
    print("| algorithm | community cost/day | saving vs no_p2p | vs best rule-based "
          "| share of oracle saving | wall s | agent-steps/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for algo, (run, wall, rate) in runs.items():
        row = next(r for name, r in by_policy.items() if Path(name).name == run.name
                   or name == str(run) or name.endswith(run.name))
        cost = row["community_cost_mean"]
        print(f"| {algo} | {cost:.2f} ± {row['community_cost_std']:.2f} | "
              f"{100 * (no_p2p - cost) / no_p2p:.1f} % | {best_rule[0] - cost:+.2f} | "
              f"{(no_p2p - cost) / (no_p2p - oracle):.2f} | {wall:.0f} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
