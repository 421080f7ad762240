#!/usr/bin/env bash
# CI: peergrid as an installed package. Builds the wheel from a clean copy of the tree, installs
# it (not editable) into a fresh virtual environment, torch first, and checks from a folder
# outside the repository, so that the sources there cannot shadow the installed package:
#   - envs.make_env() reset + step (compiles the numba engine) and envs.make_batched_env() step;
#   - peergrid-train: a short MAPPO run from the shipped configs/mappo.yaml;
#   - peergrid-evaluate: two rule-based policies on one day, with its default (shipped) config.
# `make wheel-smoke` runs it with the Makefile's PYTHON, TORCH_SPEC and TORCH_INDEX.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
TORCH_INDEX="${TORCH_INDEX:-}"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/peergrid-wheel-smoke.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
step() { echo "wheel-smoke [$((SECONDS - start)) s] $*"; }

step "copying the tree (without build outputs, whose stale files could reach the wheel)"
mkdir "$tmp/src" "$tmp/work"
tar -C "$repo" --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist \
    --exclude='*.egg-info' --exclude=__pycache__ --exclude=./runs --exclude=./results -cf - . \
    | tar -C "$tmp/src" -xf -

step "creating a fresh virtual environment with $PYTHON"
"$PYTHON" -m venv "$tmp/venv"
bin="$tmp/venv/bin"

step "building the wheel (isolated build, as pip install . does)"
"$bin/python" -m pip wheel -q --no-deps -w "$tmp/dist" "$tmp/src"
wheels=("$tmp"/dist/peergrid-*.whl)
step "built ${wheels[0]##*/}"

# --no-compile: no .pyc for all of torch up front; Python writes those it imports.
step "installing $TORCH_SPEC${TORCH_INDEX:+ from $TORCH_INDEX}"
# shellcheck disable=SC2086  # TORCH_SPEC may hold several words, as in the Makefile
"$bin/python" -m pip install -q --no-compile $TORCH_SPEC ${TORCH_INDEX:+--index-url "$TORCH_INDEX"}
step "installing the wheel and its dependencies"
"$bin/python" -m pip install -q --no-compile "${wheels[0]}"

cd "$tmp/work"
# The feeder data cache: built here from the installed simbench data (envs/data.py cache_dir;
# by default ~/.cache/peergrid, never the installed package's folder).
export PEERGRID_CACHE="$tmp/cache"

step "envs API from the installed package"
"$bin/python" - <<'EOF'
import sysconfig
from pathlib import Path

import torch

import envs

site = Path(sysconfig.get_paths()["purelib"]).resolve()
assert Path(envs.__file__).resolve().is_relative_to(site), f"envs imported from {envs.__file__}"

env = envs.make_env()
observations, infos = env.reset(seed=0)
actions = {agent: env.action_space(agent).sample() for agent in env.agents}
observations, rewards, terminations, truncations, infos = env.step(actions)
assert set(rewards) == set(env.possible_agents)

core = envs.make_batched_env(n_envs=2)
observations, info = core.reset(seed=0)
actions = torch.zeros(core.n_envs, core.n_agents, 2)
observations, rewards, terminated, truncated, info = core.step(actions)
assert rewards.shape == (2, core.n_agents) and bool(torch.isfinite(rewards).all())
print(f"make_env ({len(env.possible_agents)} agents, {type(env.engine).__name__}) and "
      f"make_batched_env stepped; envs from {Path(envs.__file__).parent}")
EOF

step "peergrid-train: one MAPPO rollout from the shipped configs/mappo.yaml"
"$bin/peergrid-train" --config configs/mappo.yaml --logdir "$tmp/runs" --no-progress \
    train.total_steps=192 train.n_envs=2 train.eval_episodes=2 train.eval_every=0 \
    train.checkpoint_every=0
runs=("$tmp"/runs/*/)
test -s "${runs[0]}metrics.json" && test -s "${runs[0]}checkpoint_latest.pt"

step "peergrid-evaluate: no_p2p and self_consumption on day 172"
"$bin/peergrid-evaluate" --policies no_p2p,self_consumption --days 172 --no-plots \
    --no-progress --out "$tmp/eval"
test -s "$tmp/eval/results.json"

step "passed"
