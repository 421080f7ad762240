"""Benchmark policies against rule-based traders and the perfect-foresight optimum.

    python evaluate.py --config configs/env/default.yaml \\
        --policies no_p2p,self_consumption,zi,fixed_price,oracle,oracle_network,runs/<run>/ \\
        --days test --episodes 8 --out results/<name>/ [--mechanisms all] [key=value ...]

Every policy runs one episode on each evaluated day, the episode's start day (one day, or
``episode.length_days`` consecutive days from it); ``--batch-size`` episodes at once in one
batched env (``env.reset(days=...)``). Sums over an episode (costs, savings, energy,
violations, the return) are reported per day: the episode's total / ``length_days``.
Days: ``--days test|train|all`` (the config's split, ``episode.test_every``) or a comma list
of day indices; ``--episodes N`` takes N days evenly spaced over the split (0: all of them),
so that every season is represented.

Policies (comma separated): rule-based ones by spec (``agents/baselines.py``:
``no_p2p``, ``self_consumption``, ``time_of_use``, ``zi``, ``fixed_price[:price_fraction=0.7]``,
``random``),
the oracles (``oracle``, ``oracle_network``, ``oracle_household``: each home's own optimum
without sharing, ``oracle_no_p2p_idle``), a run folder /
checkpoint (``agents.policy.load_policy``), or a policy of your own (``agents.external``):
``my_package.my_module:MyPolicy[:key=value...]`` or ``path/to/my_policy.py:MyPolicy[:...]``
(a PettingZoo-level callable or a batched object with ``act``), ``sb3:path/to/model.zip`` or
``sb3:ppo:path/to/model.zip`` (a stable-baselines3 model trained on ``envs.make_vec_env``).
``no_p2p`` always runs under mechanism ``none``.

A spec that cannot be loaded (unknown name, a module that does not import, constructor
arguments it does not take) stops the command before anything runs (exit code 2). A policy
that fails while evaluated (it does not fit the env, returns wrong actions, raises) is reported
as ``policy <spec> failed: ...``; the other policies are evaluated and written, the failure
is listed under ``failed`` in ``results.json``, and the exit code is 2.

``--config``: an env YAML or a run folder (its ``config.yaml``; the ``env`` section if it has
one); without it, a run folder among the policies supplies it, else ``configs/env/default.yaml``.
``--task NAME`` instead: the env YAML of a named task (``envs/tasks.py``: Flat, Peak-Storage...).
Trailing ``key=value`` overrides apply to the env config (``network.model=none``).

Writes into ``--out``: ``results.csv`` (one row per policy and mechanism: mean and std over
days of every metric of ``envs.metrics.evaluation_summary``, plus the share of the oracle's
savings captured), ``results.json`` (the same, the values of each evaluated day's episode
(per episode, not divided by ``length_days``), per-agent savings, the config and the days),
both atomically, and PNG plots. Prints markdown tables. Deterministic for a given ``--seed``
(and ``--batch-size``).

Behavioural prosumers (``behaviour.share=0.5`` or ``behaviour.agents=[...]``, ``envs.behaviour``):
both tables (and ``--mechanisms``' comparison) add the mean daily saving vs no P2P per agent of
the behavioural and of the rational agents (``behavioural_savings``, ``rational_savings``);
``loss_averse:population=behavioural`` makes the behavioural agents trade as loss-averse
traders (``agents/baselines.py``) beside truthful rational ones.

Shared battery (``storage.mode`` market or virtual, ``envs.storage``): the rows add its use per
day (``envs.metrics.STORAGE_METRICS``: throughput, equivalent full cycles of its usable
capacity, energy stored into and drawn from the accounts, conversion losses, its bill, the
leftover payouts, its P2P trades), printed as a second table; without one, none of them appears.

``--storage-sweep 0,20,50,100`` (total capacities, kWh) runs a sweep instead of the usual
evaluation: every policy at every size as one shared battery (``storage.mode`` of the config,
``virtual`` when it has none; capacity S, power S * ``community.battery_c_rate``, the members'
accounts splitting its usable capacity; no home batteries; S=0: no shared battery) and as a
battery in every home (``community.battery_share`` 1, ``battery_kwh_per_mwh`` sized so that
the homes hold S in all). It writes ``storage_sweep.csv`` (one row per policy, layout and size:
the mean daily savings vs no P2P and their std over days, the battery's throughput and, for
the shared battery, the home capacity saving as much, interpolated linearly on the home curve,
``> max`` beyond the sweep, and the ratio of the shared to that home capacity),
``storage_sweep.md`` (the printed tables) and ``storage_sweep.png`` (savings against capacity;
not with ``--no-plots``) into ``--out``, atomically.

``--ledger DIR`` also writes a tamper-evident trade ledger (``envs.ledger``) of every policy
that trades in the market, one SQLite file per policy and mechanism,
``DIR/<policy>__<mechanism>.ledger.sqlite`` (replaced if it exists), with every step's orders,
bilateral trades and payments; the oracles (a central schedule, no market) have none. Each
file's path, row count and head hash are listed under ``ledgers`` in ``results.json``; check
a file with ``python -m envs.ledger verify PATH --expect-head HASH``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from agents.baselines import ORACLES, make_oracle, make_policy
from agents.evaluation import evaluate_policy
from agents.external import is_external_spec, load_external_policy
from agents.policy import Policy, PolicyLoadError, load_policy
from agents.run_config import find_config_file
from envs import metrics
from envs.config import (
    MECHANISM_NAMES,
    ConfigError,
    EnvConfig,
    build_config,
    env_config,
    load_yaml,
    to_dict,
)
from envs.core import BatchedP2PEnv
from envs.data import DAYS_PER_YEAR, FeederData, build_assets, day_split, load_feeder
from envs.files import atomic_write_text, plain_json
from envs.ledger import LedgerWriter
from envs.storage import require_rule_operator
from envs.tasks import get_task

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "env" / "default.yaml"

TABLE_METRICS: tuple[tuple[str, str], ...] = (
    ("community_cost", "cost"),
    ("savings_vs_no_p2p", "savings"),
    ("savings_percent", "savings %"),
    ("captured_savings_share", "oracle share"),
    ("self_sufficiency", "self-suff."),
    ("self_consumption", "PV self-cons."),
    ("p2p_volume_kwh", "P2P kWh"),
    ("clearing_price", "price"),
    ("allocative_efficiency", "alloc. eff."),
    ("savings_gini", "Gini"),
    ("battery_throughput_kwh", "battery kWh"),
    ("degradation_cost", "degradation"),
    ("voltage_violations", "V viol."),
    ("line_violations", "line viol."),
    ("losses_kwh", "losses kWh"),
)
"""Columns of the printed table: (metric key, header). Money in currency per day."""

BEHAVIOUR_METRICS: tuple[tuple[str, str], ...] = (
    ("behavioural_savings", "saving/agent behavioural"),
    ("rational_savings", "saving/agent rational"),
)
"""Columns added to both tables when the config has behavioural agents (``behaviour``): the
mean daily saving vs no P2P per agent of each group (``envs.metrics.group_savings``)."""

MECHANISM_METRICS: tuple[tuple[str, str], ...] = (
    ("community_cost", "cost"),
    ("savings_percent", "savings %"),
    ("captured_savings_share", "oracle share"),
    ("p2p_volume_kwh", "P2P kWh"),
    ("clearing_price", "price"),
    ("allocative_efficiency", "alloc. eff."),
    ("savings_gini", "Gini"),
    ("operator_surplus", "operator surplus"),
)

STORAGE_TABLE_METRICS: tuple[tuple[str, str], ...] = (
    ("savings_vs_no_p2p", "savings"),
    ("storage_throughput_kwh", "throughput kWh"),
    ("storage_cycles", "cycles"),
    ("storage_stored_kwh", "stored kWh"),
    ("storage_drawn_kwh", "drawn kWh"),
    ("storage_loss_kwh", "loss kWh"),
    ("storage_cost", "battery bill"),
    ("storage_payout", "payout"),
    ("storage_p2p_kwh", "P2P kWh"),
)
"""Columns of the shared battery's table (``storage`` on only, ``envs.metrics.STORAGE_METRICS``):
its use per day."""

PLOT_METRICS: tuple[tuple[str, str], ...] = (
    ("community_cost", "community cost / day"),
    ("savings_percent", "savings vs no P2P, %"),
    ("self_sufficiency", "self-sufficiency"),
    ("self_consumption", "PV self-consumption"),
    ("p2p_volume_kwh", "P2P volume, kWh / day"),
    ("allocative_efficiency", "allocative efficiency"),
    ("savings_gini", "Gini of agent savings"),
    ("battery_throughput_kwh", "battery throughput, kWh"),
    ("voltage_violations", "voltage violations (bus-steps)"),
)


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def config_source(path: str | Path) -> dict[str, Any]:
    """The env config mapping of an env YAML or of a run folder (``config.yaml``, its ``env``
    section when it has one)."""
    path = find_config_file(path)
    if path.is_file() and path.suffix == ".pt":  # a checkpoint: its run folder's config
        path = path.parent
    if path.is_dir():
        path = path / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"config '{path}' does not exist")
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"config '{path}' must hold a mapping")
    if path.name == "config.yaml" and isinstance(data.get("env"), dict):
        data = data["env"]
    return data


def is_run_spec(spec: str) -> bool:
    """Whether a policy spec names a run folder or checkpoint rather than a built-in or an
    external policy (``agents.external``)."""
    if is_external_spec(spec):
        return False
    return "/" in spec or spec.endswith(".pt") or Path(spec).exists()


def build_policy(spec: str) -> Policy:
    """The :class:`~agents.policy.Policy` of any spec but an oracle's: an external policy
    (``agents.external``), a run folder or checkpoint, or a rule-based baseline. Raises
    :class:`~agents.policy.PolicyLoadError` or ValueError (a bad built-in spec)."""
    if is_external_spec(spec):
        return load_external_policy(spec)
    if is_run_spec(spec):
        return load_policy(spec)
    return make_policy(spec)


def failure_message(spec: str, error: BaseException) -> str:
    """``policy <spec> failed: <error>``, with the line that raised for an error that is not
    one of peergrid's own messages (an exception inside a user's policy)."""
    text, named = str(error), f"policy {spec!r}"
    if text.startswith(named):  # the adapters' own messages name the policy already
        return f"{named} failed{text[len(named):]}"
    if not isinstance(error, ConfigError | PolicyLoadError | ValueError):
        import traceback

        frames = traceback.extract_tb(error.__traceback__)
        where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
        text = f"{type(error).__name__}: {text}{where}"
    return f"{named} failed: {text}"


def select_days(config: EnvConfig, days: str, episodes: int) -> list[int]:
    """Evaluated days: ``days`` is ``train``, ``test``, ``all`` or a comma list of day
    indices; ``episodes > 0`` keeps that many, evenly spaced over the selection."""
    if days in ("train", "test", "all"):
        train, test = day_split(config.episode.test_every)
        selection = {"train": train, "test": test, "all": np.arange(DAYS_PER_YEAR)}[days]
    else:
        try:
            selection = np.asarray([int(d) for d in days.split(",") if d.strip()])
        except ValueError:
            raise ConfigError(f"--days: expected train, test, all or day indices, got "
                              f"{days!r}") from None
        if len(selection) == 0 or selection.min() < 0 or selection.max() >= DAYS_PER_YEAR:
            raise ConfigError(f"--days: day indices must lie in [0, {DAYS_PER_YEAR - 1}]")
    if len(selection) == 0:
        raise ConfigError(f"--days {days}: no day selected (episode.test_every="
                          f"{config.episode.test_every})")
    if episodes < 0:
        raise ConfigError(f"--episodes must be >= 0, got {episodes}")
    if 0 < episodes < len(selection):
        picks = np.round(np.linspace(0, len(selection) - 1, episodes)).astype(int)
        selection = selection[picks]
    return [int(d) for d in selection]


@dataclass
class PolicyResult:
    """One policy under one mechanism over the evaluated days."""

    name: str
    mechanism: str
    """Mechanism it ran under; ``-`` for the oracles (no market)."""
    totals: metrics.EpisodeTotals
    per_day: dict[str, np.ndarray]
    """``envs.metrics.evaluation_summary`` values of each evaluated day's episode, each
    ``[days]``: per episode (``episode.length_days`` days; :func:`summarise` turns the sums
    into per-day values for the tables, ``train.py``'s references compare these with its own
    episode totals)."""
    trajectory: dict[str, np.ndarray] | None = None
    episode_days: int = 1
    """Days per episode (``episode.length_days``)."""
    ledger: dict[str, Any] | None = None
    """``path``, ``rows`` and ``head`` hash of its ledger (``--ledger``), else None."""


class Evaluator:
    """Runs policies on fixed days of one community (one data load, one env per mechanism)."""

    def __init__(self, config: EnvConfig, days: list[int], seed: int = 0,
                 batch_size: int = 64, record_day: int = 0, progress: Any = None,
                 ledger_dir: str | Path | None = None, data: FeederData | None = None) -> None:
        require_rule_operator(config.storage, "evaluate.py")
        self.config = config
        self.days = days
        self.seed = seed
        self.batch_size = max(1, min(batch_size, len(days)))
        self.record_day = record_day
        self.progress = progress
        self.ledger_dir = None if ledger_dir is None else Path(ledger_dir)
        """Folder of the trade ledgers (``envs.ledger``), None: no ledger."""
        community = config.community
        self.data = data if data is not None else load_feeder(
            community.feeder, n_agents=community.n_agents, seed=community.seed)
        """The feeder's data (``data``: already loaded for this community, e.g. by
        :func:`storage_sweep`)."""
        self._envs: dict[tuple[str, int], BatchedP2PEnv] = {}
        self.policies: dict[str, Policy] = {}
        """Policies by spec, built once (:meth:`policy`)."""

    def env(self, mechanism: str | None = None, n_envs: int | None = None) -> BatchedP2PEnv:
        """The batched env under ``mechanism`` (None: the config's), cached."""
        mechanism = mechanism or self.config.market.mechanism
        n_envs = n_envs or self.batch_size
        key = (mechanism, n_envs)
        if key not in self._envs:
            config = env_config(self.config, n_envs=n_envs, **{"market.mechanism": mechanism})
            self._envs[key] = BatchedP2PEnv(config, self.data)
        return self._envs[key]

    @property
    def behavioural(self) -> Tensor:
        """``[N]`` bool: the community's behavioural agents (``BatchedP2PEnv.behavioural``,
        the same under every mechanism)."""
        return self.env(n_envs=1).behavioural

    def _describe(self, text: str) -> None:
        if self.progress is not None:
            self.progress.set_description(text)

    def policy(self, spec: str) -> Policy:
        """The policy of ``spec`` (:func:`build_policy`), built on first use."""
        if spec not in self.policies:
            self.policies[spec] = build_policy(spec)
        return self.policies[spec]

    def run(self, spec: str, mechanism: str | None = None) -> PolicyResult:
        """Evaluate the policy ``spec`` (see the module docstring) under ``mechanism``."""
        if spec in ORACLES:
            self._describe(spec)
            oracle = make_oracle(spec)
            env = self.env(n_envs=1)
            totals, schedules = oracle.evaluate(env, self.days, progress=self.progress)
            profile = _oracle_profile(env, self.days[self.record_day])
            trajectory = oracle.trajectory(schedules[self.record_day], profile, env.dt_h)
            trajectory["day"] = np.asarray(self.days[self.record_day])
            return PolicyResult(spec, "-", totals, self._per_day(totals), trajectory,
                                self.config.episode.length_days)
        policy = self.policy(spec)
        mechanism = policy.mechanism or mechanism or self.config.market.mechanism
        self._describe(f"{policy.name} ({mechanism})")
        env = self.env(mechanism)
        writer = None if self.ledger_dir is None else self._ledger(spec, policy, env)
        try:
            totals, trajectory = evaluate_policy(env, policy, self.days, seed=self.seed,
                                                 record_day=self.record_day,
                                                 progress=self.progress, recorder=writer)
        finally:
            ledger = None if writer is None else {
                "path": str(writer.path), "head": writer.close(), "rows": writer.n_rows}
        return PolicyResult(policy.name, mechanism, totals, self._per_day(totals), trajectory,
                            self.config.episode.length_days, ledger)

    def _per_day(self, totals: metrics.EpisodeTotals) -> dict[str, np.ndarray]:
        return _per_day(totals, metrics.storage_usable_kwh(self.config.storage))

    def _ledger(self, spec: str, policy: Policy, env: BatchedP2PEnv) -> LedgerWriter:
        """A new ledger for ``policy`` in ``env``, ``<policy>__<mechanism>.ledger.sqlite``."""
        mechanism = env.config.market.mechanism
        path = self.ledger_dir / f"{_file_name(policy.name)}__{mechanism}.ledger.sqlite"
        return LedgerWriter(path, env.config, env.agent_names, seed=self.seed, overwrite=True,
                            meta={"policy": spec, "policy_name": policy.name,
                                  "days": self.days, "batch_size": self.batch_size,
                                  "source": "evaluate.py"})


def _oracle_profile(env: BatchedP2PEnv, day: int) -> dict[str, np.ndarray]:
    from agents.baselines import day_profiles

    return day_profiles(env, day, env.episode_days)


def _per_day(totals: metrics.EpisodeTotals,
             storage_usable_kwh: float | None = None) -> dict[str, np.ndarray]:
    """``envs.metrics.evaluation_summary`` of each episode as numpy arrays (with the shared
    battery's metrics when ``storage_usable_kwh``, its usable capacity, is given)."""
    return {key: value.double().cpu().numpy() for key, value in metrics.evaluation_summary(
        totals, storage_usable_kwh).items()}


def summarise(result: PolicyResult, oracle: PolicyResult | None,
              behavioural: Tensor | None = None) -> dict[str, Any]:
    """One table row: mean and std over days of every metric, the oracle share, and each
    agent's mean daily saving. Sums over an episode (``envs.metrics.EPISODE_SUMS``) are per
    day: the episode's value / ``episode.length_days``. With ``behavioural [N]`` (bool, some
    True): also :data:`BEHAVIOUR_METRICS`, the mean daily saving per agent of the behavioural
    and of the rational agents."""
    row: dict[str, Any] = {"policy": result.name, "mechanism": result.mechanism,
                           "days": len(result.totals)}
    daily = metrics.per_day({key: torch.as_tensor(values)
                             for key, values in result.per_day.items()}, result.episode_days)
    for key, values in daily.items():
        row[f"{key}_mean"], row[f"{key}_std"] = metrics.mean_std(values)
    share = float("nan")
    if oracle is not None:
        share = float(metrics.captured_savings_share(
            torch.as_tensor(result.per_day["savings_vs_no_p2p"]),
            torch.as_tensor(oracle.per_day["savings_vs_no_p2p"])))
    row["captured_savings_share_mean"], row["captured_savings_share_std"] = share, float("nan")
    if behavioural is not None and bool(behavioural.any()):
        for key, members in (("behavioural_savings", behavioural),
                             ("rational_savings", ~behavioural)):
            values = metrics.group_savings(result.totals, members).double()
            row[f"{key}_mean"], row[f"{key}_std"] = metrics.mean_std(
                values / result.episode_days)
    savings = metrics.agent_savings(result.totals).double() / result.episode_days
    row["agent_savings"] = savings.nanmean(0).tolist() if savings.numel() else []
    return row


def record_scores(result: PolicyResult) -> dict[str, Any]:
    """What a leaderboard record (``benchmarks/leaderboard.py``) keeps of one evaluated
    policy: :func:`summarise`'s row and the per-day savings against ``no_p2p`` (for the share
    of the task oracle's savings, computed when the table is made)."""
    return {"summary": summarise(result, None),
            "savings_per_day": result.per_day["savings_vs_no_p2p"]}


@dataclass(frozen=True)
class RunScorer:
    """Scores a trained run's checkpoint on fixed days with a fixed seed, in the run's own env
    config: ``agents.sweep.Trial.post`` of the leaderboard's cells, so that each cell is
    scored in its Ray worker right after training, beside the other cells, instead of one
    after another in the driver once all have trained.

    ``scorer(config, run_dir, metrics)`` returns :func:`record_scores` of ``<run_dir>/
    <checkpoint>`` plus ``days``, ``eval_seed``, ``checkpoint`` (what it was scored with, for
    the caller to check) and ``score_wall_s``; ``{"error": message}`` when scoring raised
    (the run did train: its caller scores it again and reports the failure)."""

    days: tuple[int, ...]
    seed: int
    checkpoint: str

    def __call__(self, config: Any, run_dir: str | Path, metrics_json: Any = None
                 ) -> dict[str, Any]:
        start = time.perf_counter()
        path = Path(run_dir) / self.checkpoint
        try:
            result = Evaluator(config.env, list(self.days), seed=self.seed).run(str(path))
        except Exception as error:  # the run trained: the caller scores it again and reports
            return {"error": failure_message(str(path), error)}
        return {"days": list(self.days), "eval_seed": self.seed, "checkpoint": self.checkpoint,
                "score_wall_s": time.perf_counter() - start, **record_scores(result)}


def _cell(mean: float, std: float) -> str:
    if mean is None or not math.isfinite(mean):
        return "–"
    digits = 3 if abs(mean) < 100 else 1
    mean = round(mean, digits) + 0.0  # no "-0.000"
    if std is None or not math.isfinite(std) or round(std, digits) == 0.0:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(rows: list[dict[str, Any]], columns: tuple[tuple[str, str], ...],
                   keys: tuple[str, ...] = ("policy", "mechanism")) -> str:
    """Rows as a markdown table of ``mean ± std`` cells (– where undefined)."""
    header = [*keys, *(label for _, label in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(row[k]) for k in keys]
        cells += [_cell(row.get(f"{key}_mean"), row.get(f"{key}_std")) for key, _ in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Storage sweep: a shared battery against home batteries of the same total capacity
# --------------------------------------------------------------------------------------------

SWEEP_LAYOUTS: tuple[str, ...] = ("shared", "home")
"""The battery layouts of ``--storage-sweep``: one battery the community shares
(``storage``), or a battery in every home (``community.battery_share`` 1)."""


def parse_storage_sizes(text: str) -> list[float]:
    """The total capacities (kWh) of ``--storage-sweep``: a comma list of distinct numbers
    >= 0, returned sorted. Raises ConfigError naming the option."""
    usage = "a comma list of distinct total capacities in kWh >= 0, e.g. 0,20,50,100"
    try:
        sizes = [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise ConfigError(f"--storage-sweep: expected {usage}; got {text!r}") from None
    if not sizes:
        raise ConfigError(f"--storage-sweep: expected {usage}; got no size")
    bad = [size for size in sizes if not math.isfinite(size) or size < 0.0]
    if bad:
        raise ConfigError(f"--storage-sweep: expected {usage}; got {bad[0]:g}")
    if len(set(sizes)) != len(sizes):
        repeated = next(size for size in sizes if sizes.count(size) > 1)
        raise ConfigError(f"--storage-sweep: expected {usage}; {repeated:g} is given twice")
    return sorted(sizes)


def home_kwh_per_unit(config: EnvConfig, data: FeederData) -> float:
    """The community's total home battery capacity (kWh) per unit of
    ``community.battery_kwh_per_mwh`` with a battery in every home (``battery_share`` 1):
    the batteries ``envs.data.build_assets`` sizes on the loaded feeder (what a core of that
    config holds as ``capacity_kwh``)."""
    probe = env_config(config, n_envs=1, **{"storage.mode": "none",
                                            "community.battery_share": 1.0,
                                            "community.battery_kwh_per_mwh": 1.0})
    total = float(build_assets(data, probe.community).battery_kwh.astype(np.float64).sum())
    if total <= 0.0:
        raise ConfigError("--storage-sweep: the community has no consumption to size home "
                          "batteries by (battery_kwh_per_mwh)")
    return total


def sweep_config(config: EnvConfig, layout: str, size: float, kwh_per_unit: float,
                 n_agents: int) -> EnvConfig:
    """The env config of one ``--storage-sweep`` point: total capacity ``size`` kWh as one
    shared battery (``layout`` shared) or as a battery in every home (``home``).

    shared: ``storage.mode`` the config's (``virtual`` when it has none),
    ``storage.capacity_kwh`` ``size``, ``storage.power_kw`` ``size * community.battery_c_rate``
    (the home batteries' C-rate), no home batteries; in mode virtual the members' accounts
    split the usable capacity ``(soc_max - soc_min) size`` (``subscription_kwh``, equally, or
    in the config's proportions when it lists one size per member), so that the whole
    battery can be used. Size 0: no shared battery (``storage.mode`` none).
    home: no shared battery, ``battery_share`` 1 and ``battery_kwh_per_mwh`` such that the
    homes' capacities add up to ``size`` (``kwh_per_unit``: :func:`home_kwh_per_unit`).
    ``n_agents``: the community's agents (the members when ``storage.members`` is null)."""
    community = config.community
    if layout == "home":
        return env_config(config, **{"storage.mode": "none", "community.battery_share": 1.0,
                                     "community.battery_kwh_per_mwh": size / kwh_per_unit})
    if layout != "shared":
        raise ValueError(f"unknown layout {layout!r}; allowed: {', '.join(SWEEP_LAYOUTS)}")
    if size == 0.0:
        return env_config(config, **{"storage.mode": "none", "community.battery_share": 0.0})
    storage = config.storage
    mode = storage.mode if storage.enabled else "virtual"
    overrides: dict[str, Any] = {
        "storage.mode": mode, "storage.capacity_kwh": size,
        "storage.power_kw": size * community.battery_c_rate, "community.battery_share": 0.0}
    if mode == "virtual":
        usable = (storage.soc_max - storage.soc_min) * size
        if isinstance(storage.subscription_kwh, list):
            weights = np.asarray(storage.subscription_kwh, dtype=float)
            overrides["storage.subscription_kwh"] = (usable * weights / weights.sum()).tolist()
        else:
            members = len(storage.members) if storage.members is not None else n_agents
            overrides["storage.subscription_kwh"] = usable / members
    return env_config(config, **overrides)


def home_equivalent(savings: float, sizes: list[float],
                    home_savings: list[float]) -> tuple[float, str]:
    """The home battery capacity (kWh, total) saving ``savings``: linear interpolation on
    the home curve ``home_savings`` over ``sizes`` (ascending), its first crossing.

    Returns ``(capacity, text)``: text the capacity (``%.1f``), ``> max`` (NaN capacity) when
    no point of the sweep reaches ``savings``, ``<= min`` (the smallest size) when the
    smallest home size saves at least as much and is not 0; ``–`` (NaN) for a NaN saving."""
    curve = np.asarray(home_savings, dtype=float)
    if not math.isfinite(savings) or not np.isfinite(curve).all():
        return float("nan"), "–"
    if savings <= curve[0]:
        return sizes[0], (f"{sizes[0]:.1f}" if sizes[0] == 0.0 else f"<= {sizes[0]:g}")
    for k in range(len(sizes) - 1):
        low, high = curve[k], curve[k + 1]
        if low < savings <= high:
            capacity = sizes[k] + (savings - low) / (high - low) * (sizes[k + 1] - sizes[k])
            return float(capacity), f"{capacity:.1f}"
    return float("nan"), "> max"


def sweep_rows(results: list[tuple[str, str, float, dict[str, Any], float]],
               sizes: list[float]) -> list[dict[str, Any]]:
    """The rows of ``storage_sweep.csv`` from ``(policy, layout, size, summarise row,
    installed kWh)`` of every evaluated point: the mean daily savings vs no P2P (and their
    std over days) and, for the shared layout, the home capacity saving as much
    (:func:`home_equivalent`) and the ratio of the shared to that home capacity."""
    rows = []
    for policy, layout, size, row, installed in results:
        # The battery's AC throughput per day: the shared one's (NaN for a policy whose
        # totals lack it, e.g. a central schedule that does not report it), else the homes'.
        throughput = (row.get("storage_throughput_kwh_mean", float("nan"))
                      if layout == "shared" and size > 0 else
                      row.get("battery_throughput_kwh_mean", float("nan")))
        rows.append({
            "policy": policy, "layout": layout, "capacity_kwh": size,
            "installed_kwh": installed, "days": row["days"],
            "savings_mean": row["savings_vs_no_p2p_mean"],
            "savings_std": row["savings_vs_no_p2p_std"],
            "savings_percent_mean": row["savings_percent_mean"],
            "throughput_kwh_mean": throughput,
            "storage_cycles_mean": row.get("storage_cycles_mean", float("nan")),
            "home_equivalent_kwh": float("nan"), "home_equivalent": "",
            "shared_over_home": float("nan"), "shared_over_home_text": ""})
    for row in rows:
        if row["layout"] != "shared":
            continue
        home = {r["capacity_kwh"]: r["savings_mean"] for r in rows
                if r["policy"] == row["policy"] and r["layout"] == "home"}
        if any(size not in home for size in sizes):
            continue  # the policy failed on part of the home curve
        capacity, text = home_equivalent(row["savings_mean"], sizes, [home[s] for s in sizes])
        row["home_equivalent_kwh"], row["home_equivalent"] = capacity, text
        size = row["capacity_kwh"]
        if text == "> max":
            row["shared_over_home_text"] = f"< {size / sizes[-1]:.2f}" if sizes[-1] > 0 else "–"
        elif math.isfinite(capacity) and capacity > 0 and not text.startswith("<="):
            row["shared_over_home"] = size / capacity
            row["shared_over_home_text"] = f"{size / capacity:.2f}"
        else:
            row["shared_over_home_text"] = "–"
    return rows


def sweep_markdown(rows: list[dict[str, Any]], sizes: list[float], mode: str) -> str:
    """``storage_sweep.md``: per policy, the savings of both layouts at every size and the
    home capacity saving as much as each shared battery."""
    lines = [f"Savings vs no P2P per day (mean ± std over days); shared battery mode {mode}; "
             "home: a battery in every home, same total capacity; home kWh for the same "
             "savings: linear interpolation on the home curve (> max: beyond the sweep).", ""]
    for policy in dict.fromkeys(row["policy"] for row in rows):
        lines += [f"### {policy}", "",
                  "| capacity kWh | shared savings | home savings | home kWh for shared's "
                  "savings | shared / home capacity |", "|---|---|---|---|---|"]
        by = {(r["layout"], r["capacity_kwh"]): r for r in rows if r["policy"] == policy}
        for size in sizes:
            shared, home = by.get(("shared", size)), by.get(("home", size))
            cells = [f"{size:g}",
                     _cell(shared["savings_mean"], shared["savings_std"]) if shared else "failed",
                     _cell(home["savings_mean"], home["savings_std"]) if home else "failed",
                     (shared["home_equivalent"] or "–") if shared else "–",
                     (shared["shared_over_home_text"] or "–") if shared else "–"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def storage_sweep(config: EnvConfig, specs: list[str], policies: dict[str, Policy],
                  days: list[int], sizes: list[float], out: Path, *, seed: int = 0,
                  batch_size: int = 64, progress: Any = None,
                  plots: bool = True) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``--storage-sweep``: every policy of ``specs`` on ``days`` with each total capacity of
    ``sizes`` as a shared battery and as home batteries (:func:`sweep_config`); writes
    ``storage_sweep.csv``, ``storage_sweep.md`` and (``plots``) ``storage_sweep.png`` into
    ``out`` atomically. Returns ``(rows, failed)``: a policy that fails at a point is
    reported and listed in ``failed``; its row is missing. Raises ConfigError (naming
    ``--storage-sweep``) before anything runs when a size gives an invalid config."""
    community = config.community
    data = load_feeder(community.feeder, n_agents=community.n_agents, seed=community.seed)
    kwh_per_unit = home_kwh_per_unit(config, data)
    points = []
    for size in sizes:  # every point's config first: a bad one stops the sweep here
        for layout in SWEEP_LAYOUTS:
            try:
                point = sweep_config(config, layout, size, kwh_per_unit, data.n_agents)
            except ConfigError as error:
                raise ConfigError(f"--storage-sweep: {size:g} kWh ({layout}): {error}") from None
            points.append((layout, size, point))
    results, failed = [], []
    for layout, size, point_config in points:
        evaluator = Evaluator(point_config, days, seed=seed, batch_size=batch_size,
                              progress=progress, data=data)
        evaluator.policies.update(policies)
        installed = (float(evaluator.env(n_envs=1).capacity_kwh.double().sum())
                     if layout == "home" else
                     (point_config.storage.capacity_kwh if point_config.storage.enabled
                      else 0.0))
        for spec in specs:
            try:
                result = evaluator.run(spec)
            except Exception as error:  # one failing point must not end the sweep
                message = f"{failure_message(spec, error)} ({layout}, {size:g} kWh)"
                tqdm.write(f"error: {message}", file=sys.stderr)
                failed.append({"policy": spec, "layout": layout, "capacity_kwh": size,
                               "error": message})
                continue
            results.append((result.name, layout, size, summarise(result, None), installed))
    rows = sweep_rows(results, sizes)
    mode = config.storage.mode if config.storage.enabled else "virtual"
    text = sweep_markdown(rows, sizes, mode)
    if failed:
        text += "\nFailed:\n\n" + "\n".join(f"- {entry['error']}" for entry in failed) + "\n"
    if rows:
        atomic_write_text(out / "storage_sweep.csv", csv_text(rows))
    atomic_write_text(out / "storage_sweep.md", text)
    if plots and rows:
        from envs import plots as plotting

        plotting.plot_storage_sweep(
            rows, out / "storage_sweep.png",
            title=f"{community.feeder}, {len(days)} days: shared battery ({mode}) vs home "
                  "batteries")
    return rows, failed


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def csv_text(rows: list[dict[str, Any]]) -> str:
    """Rows as CSV (list-valued fields left out)."""
    fields = [k for k in rows[0] if not isinstance(rows[0][k], list)]
    for row in rows[1:]:
        fields += [k for k in row if k not in fields and not isinstance(row[k], list)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if isinstance(v, float) and not math.isfinite(v) else v)
                         for k, v in row.items() if k in fields})
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark P2P trading policies against rule-based traders and the "
                    "perfect-foresight optimum.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", default=None,
                        help="env YAML or run folder (default: a run among --policies, else "
                             "configs/env/default.yaml)")
    parser.add_argument("--task", default=None,
                        help="evaluate on a named task of envs/tasks.py or a task file of your "
                             "own (the path of an env YAML; not with --config)")
    parser.add_argument("--policies", default="no_p2p,self_consumption,zi,fixed_price,oracle",
                        help="comma-separated policy specs, oracles, run folders and your "
                             "own policies: module.path:Name[:key=value...], "
                             "path/to/file.py:Name[:key=value...], sb3:[algo:]model.zip")
    parser.add_argument("--days", default="test",
                        help="train, test, all, or comma-separated day indices")
    parser.add_argument("--episodes", type=int, default=0,
                        help="number of days, evenly spaced over --days (0: all)")
    parser.add_argument("--out", default="results/eval", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of envs and policies")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="days evaluated in parallel in one batched env")
    parser.add_argument("--mechanisms", default="",
                        help="'all' or a comma list: also run every policy under each of "
                             "these market mechanisms (zi always included)")
    parser.add_argument("--plot-day", type=int, default=0,
                        help="position among the evaluated days of the day whose trajectory "
                             "is plotted")
    parser.add_argument("--ledger", default=None, metavar="DIR",
                        help="write a tamper-evident trade ledger (envs.ledger) per policy "
                             "and mechanism into this folder")
    parser.add_argument("--storage-sweep", default=None, metavar="SIZES",
                        help="comma list of total battery capacities in kWh (e.g. 0,20,50,100): "
                             "evaluate every policy with that capacity as one shared battery "
                             "and as home batteries; writes storage_sweep.csv/.md/.png instead "
                             "of the usual outputs")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", help="env config overrides key=value")
    # key=value overrides may come before, between or after the options
    return parser.parse_intermixed_args(argv)


def _policy_specs(text: str) -> list[str]:
    specs = [s.strip() for s in text.split(",") if s.strip()]
    if not specs:
        raise ConfigError("--policies: no policy given")
    if len(set(specs)) != len(specs):
        raise ConfigError(f"--policies: duplicate entries in {specs}")
    return specs


def _mechanisms(text: str) -> list[str]:
    if not text:
        return []
    if text == "all":
        return list(MECHANISM_NAMES)
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in MECHANISM_NAMES]
    if unknown:
        raise ConfigError(f"--mechanisms: unknown {unknown}; allowed: all or "
                          f"{', '.join(MECHANISM_NAMES)}")
    return names


def _plots(out: Path, config: EnvConfig, evaluator: Evaluator, results: list[PolicyResult],
           rows: list[dict[str, Any]], mechanism_rows: list[dict[str, Any]],
           oracle_rows: list[dict[str, Any]]) -> list[str]:
    from envs import plots

    env = evaluator.env(n_envs=1)
    names = list(env.agent_names)
    capacity = env.capacity_kwh.cpu().numpy()
    limits = (config.network.v_min, config.network.v_max)
    paths = []
    for result in results:
        if result.trajectory is None:
            continue
        day = int(result.trajectory["day"])
        paths.append(plots.plot_day(
            result.trajectory, out / f"day_{_file_name(result.name)}.png",
            title=f"{result.name} ({mechanism_label(result.mechanism)}), day {day}",
            v_limits=limits,
            agent_names=names, capacity_kwh=capacity))
    paths.append(plots.plot_policy_metrics(rows, PLOT_METRICS, out / "metrics.png",
                                           title=f"{len(evaluator.days)} days, mean ± std"))
    savings = {row["policy"]: np.asarray(row["agent_savings"], dtype=float) for row in rows
               if row["agent_savings"]}
    if savings:
        paths.append(plots.plot_agent_savings(savings, out / "agent_savings.png", names,
                                              title="mean daily saving per agent vs no P2P"))
    if mechanism_rows:
        references = {key: {row["policy"]: row.get(f"{key}_mean", float("nan"))
                            for row in oracle_rows}
                      for key in ("savings_percent", "community_cost")}
        paths.append(plots.plot_mechanisms(
            mechanism_rows, [("savings_percent", "savings vs no P2P, %"),
                             ("allocative_efficiency", "allocative efficiency"),
                             ("clearing_price", "mean clearing price"),
                             ("savings_gini", "Gini of savings")],
            out / "mechanisms.png", title="policies under every mechanism",
            references=references))
    return [str(p) for p in paths]


def mechanism_label(mechanism: str) -> str:
    """How a result's mechanism reads in titles (``-``: an oracle's central schedule)."""
    return "central schedule, no market" if mechanism == "-" else f"mechanism {mechanism}"


def _file_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("_")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        specs = _policy_specs(args.policies)
        mechanisms = _mechanisms(args.mechanisms)
        source: Any = args.config
        if args.task is not None:
            if args.config is not None:
                raise ConfigError("--task and --config both name the env config; give one")
            source = get_task(args.task, where="--task").config_path
        if source is None:
            runs = [s for s in specs if is_run_spec(s)]
            source = runs[0] if runs else DEFAULT_CONFIG
        config = build_config(EnvConfig, config_source(source), args.overrides)
        days = select_days(config, args.days, args.episodes)
        if not 0 <= args.plot_day < len(days):
            raise ConfigError(f"--plot-day must lie in [0, {len(days) - 1}]")
        if args.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise ConfigError(f"--out {args.out}: exists and is not a folder")
        if args.ledger is not None and Path(args.ledger).exists() and not Path(
                args.ledger).is_dir():
            raise ConfigError(f"--ledger {args.ledger}: exists and is not a folder")
        sizes = None
        if args.storage_sweep is not None:
            sizes = parse_storage_sizes(args.storage_sweep)
            if mechanisms or args.ledger is not None:
                raise ConfigError("--storage-sweep runs the policies under the config's "
                                  "mechanism without ledgers: leave out --mechanisms and "
                                  "--ledger")
        # Every policy is built before anything runs: a spec that cannot be loaded stops here.
        policies = {spec: build_policy(spec) for spec in specs if spec not in ORACLES}
    except (ConfigError, PolicyLoadError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if sizes is not None:
        return _storage_sweep_main(args, config, specs, policies, days, sizes)

    out = Path(args.out)
    step_specs = [s for s in specs if s not in ORACLES]
    compared = [s for s in step_specs if s != "no_p2p"]
    if mechanisms and "zi" not in compared:
        compared.append("zi")
    total = len(days) * (len(specs) + len(mechanisms) * len(compared))
    progress = tqdm(total=total, unit="day", disable=args.no_progress, file=sys.stderr)
    evaluator = Evaluator(config, days, seed=args.seed, batch_size=args.batch_size,
                          record_day=args.plot_day, progress=progress,
                          ledger_dir=args.ledger)
    evaluator.policies.update(policies)
    failed: list[dict[str, str | None]] = []

    def run(spec: str, mechanism: str | None = None) -> PolicyResult | None:
        """The policy's result, or None when it failed (reported, listed in ``failed``)."""
        try:
            return evaluator.run(spec, mechanism)
        except Exception as error:  # a policy's failure must not end the others' evaluation
            message = failure_message(spec, error)
            tqdm.write(f"error: {message}", file=sys.stderr)
            failed.append({"policy": spec, "mechanism": mechanism, "error": message})
            return None

    results = [result for result in map(run, specs) if result is not None]
    broken = {entry["policy"] for entry in failed}
    comparison = [result for mechanism in mechanisms for spec in compared
                  if spec not in broken and (result := run(spec, mechanism)) is not None]
    progress.close()
    if not results:
        atomic_write_text(out / "results.json", json.dumps(plain_json(
            {"config": to_dict(config), "seed": args.seed, "days": days, "split": args.days,
             "policies": specs, "results": [], "failed": failed}), indent=1) + "\n")
        print(f"error: no policy could be evaluated (failures under 'failed' in "
              f"{out / 'results.json'})", file=sys.stderr)
        return 2

    oracle = next((r for r in results if r.name == "oracle"), None)
    behavioural = evaluator.behavioural if config.behaviour.enabled else None
    rows = [summarise(result, oracle, behavioural) for result in results]
    mechanism_rows = [summarise(result, oracle, behavioural) for result in comparison]
    extra = BEHAVIOUR_METRICS if behavioural is not None and bool(behavioural.any()) else ()
    oracle_rows = [row for row in rows if row["policy"] in ORACLES]

    network = config.network.model
    print(f"\n## {config.community.feeder}: {len(days)} {args.days} days, mechanism "
          f"{config.market.mechanism}, network model {network}, seed {args.seed}\n")
    print(markdown_table(rows, TABLE_METRICS + extra))
    if config.storage.enabled:
        storage = config.storage
        print(f"\n## Shared battery (storage.mode {storage.mode}, {storage.capacity_kwh:g} kWh, "
              f"{storage.power_kw:g} kW), per day\n")
        print(markdown_table(rows, STORAGE_TABLE_METRICS))
    if mechanism_rows:
        print("\n## Market mechanisms (same policies under every mechanism)\n")
        print(markdown_table(mechanism_rows + oracle_rows, MECHANISM_METRICS + extra))
        print("\n## Allocative efficiency of zero-intelligence traders (Gode & Sunder 1993), "
              "realised P2P volume / min(supply, demand)\n")
        zi_rows = [r for r in mechanism_rows if r["policy"].split(":")[0] == "zi"]
        print(markdown_table(zi_rows, (("allocative_efficiency", "alloc. eff."),),
                             keys=("mechanism",)))

    plot_paths = [] if args.no_plots else _plots(out, config, evaluator, results, rows,
                                                   mechanism_rows, oracle_rows)
    report = {
        "config": to_dict(config), "seed": args.seed, "days": days, "split": args.days,
        "batch_size": evaluator.batch_size, "policies": specs,
        "agent_names": list(evaluator.data.agent_names),
        "results": rows, "mechanisms": mechanism_rows,
        "per_day": {f"{r.name}@{r.mechanism}": r.per_day for r in results + comparison},
        "plots": [Path(p).name for p in plot_paths], "failed": failed,
    }
    if args.ledger is not None:
        report["ledgers"] = [{"policy": r.name, "mechanism": r.mechanism, **r.ledger}
                             for r in results + comparison if r.ledger is not None]
    atomic_write_text(out / "results.csv", csv_text(rows + mechanism_rows))
    atomic_write_text(out / "results.json", json.dumps(plain_json(report), indent=1) + "\n")
    print(f"\nwrote {out / 'results.csv'}, {out / 'results.json'}"
          + (f" and {len(plot_paths)} plots: " + ", ".join(plot_paths) if plot_paths else ""))
    if failed:
        print(f"error: {len(failed)} evaluation(s) failed (above, and under 'failed' in "
              f"results.json): " + ", ".join(sorted({entry["policy"] for entry in failed})),
              file=sys.stderr)
        return 2
    return 0


def _storage_sweep_main(args: argparse.Namespace, config: EnvConfig, specs: list[str],
                        policies: dict[str, Policy], days: list[int], sizes: list[float]) -> int:
    """``--storage-sweep``: :func:`storage_sweep`, its table printed; exit code 2 when a
    sweep point's config is invalid or a policy failed somewhere."""
    out = Path(args.out)
    progress = tqdm(total=len(days) * len(specs) * len(sizes) * len(SWEEP_LAYOUTS), unit="day",
                    disable=args.no_progress, file=sys.stderr)
    try:
        rows, failed = storage_sweep(config, specs, policies, days, sizes, out, seed=args.seed,
                                     batch_size=args.batch_size, progress=progress,
                                     plots=not args.no_plots)
    except ConfigError as error:
        progress.close()
        print(f"error: {error}", file=sys.stderr)
        return 2
    progress.close()
    mode = config.storage.mode if config.storage.enabled else "virtual"
    print(f"\n## Storage sweep, {config.community.feeder}: {len(days)} {args.days} days, "
          f"mechanism {config.market.mechanism}, seed {args.seed}\n")
    print(sweep_markdown(rows, sizes, mode))
    written = [out / name for name in ("storage_sweep.csv", "storage_sweep.md",
                                       "storage_sweep.png") if (out / name).is_file()]
    print("wrote " + ", ".join(str(path) for path in written))
    if failed:
        print(f"error: {len(failed)} evaluation(s) failed (above, and in storage_sweep.md): "
              + ", ".join(sorted({entry["policy"] for entry in failed})), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
