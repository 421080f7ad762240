"""The leaderboard's statistics, its columns and its store of finished cells
(``benchmarks/leaderboard.py`` runs it).

A *cell* is one (task, algorithm, seed): a training run scored on the task's held-out test
days. Each finished cell, and each task's reference rows (the rule-based baselines and the
oracle, computed once per task), is one JSON file written atomically, so an interrupted
leaderboard resumes where it stopped: :func:`read_record` returns a finished record, or None
when there is none.

Aggregation over seeds follows Agarwal et al. (2021), "Deep reinforcement learning at the edge
of the statistical precipice", NeurIPS: the interquartile mean (IQM: the mean of the middle
50 % of the runs, :func:`iqm`) with a 95 % percentile bootstrap confidence interval over runs
(:func:`bootstrap_ci`, ``scipy.stats.bootstrap``).

Columns (:data:`COLUMNS`), per day of the evaluated test days, from a row of
``evaluate.summarise`` (:func:`cell_metrics`):

==================  ===========================================================================
column              meaning
==================  ===========================================================================
community_cost      community cost, currency/day
oracle_share        share of the task oracle's savings against ``no_p2p`` captured (sum over
                    days of savings / sum of the oracle's, ``envs.metrics``)
gain_vs_best_rule   best rule-based policy's cost minus this cost, currency/day (> 0 beats it)
violations          voltage violations (bus-steps) + line violations (branch-steps) per day
savings_gini        Gini coefficient of the agents' savings against ``no_p2p``
worse_off_share     share of agents whose mean daily saving against ``no_p2p`` is negative
                    (the equity KPI of CityLearn: who loses by joining the community)
==================  ===========================================================================
"""

from __future__ import annotations

import inspect
import json
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from envs.config import ConfigError
from envs.files import atomic_write_text, plain_json

__all__ = ["BEATS_TOLERANCE", "COLUMNS", "NOT_RULES", "WORSE_OFF_TOLERANCE", "aggregate",
           "beats_best_rule", "best_rule", "bootstrap_ci", "cell_metrics", "iqm", "read_record",
           "rule_names", "worse_off_share", "write_record"]

COLUMNS: tuple[tuple[str, str], ...] = (
    ("community_cost", "cost/day"),
    ("oracle_share", "oracle share"),
    ("gain_vs_best_rule", "vs best rule"),
    ("violations", "violations/day"),
    ("savings_gini", "Gini"),
    ("worse_off_share", "worse off"),
)
"""Leaderboard columns: (metric key, header)."""

WORSE_OFF_TOLERANCE = 1e-6
"""An agent counts as worse off when its mean daily saving is below minus this, currency/day
(float round-off of a policy that changes nothing for it is not a loss)."""

BEATS_TOLERANCE = 1e-6
"""A run beats the best rule when its gain over it is above this, currency/day: a policy that
acts as the rule (a residual that stays at zero, a run that went back to its rule) costs the
same up to float round-off, and a tie is not a win."""


def beats_best_rule(gain: float, tolerance: float = BEATS_TOLERANCE) -> bool:
    """Whether a run's ``gain_vs_best_rule`` (currency/day) beats the best rule: above
    ``tolerance``, so float round-off of the rule's own cost counts as a tie."""
    return gain > tolerance


NOT_RULES = ("random",)
"""Baselines of ``agents.baselines.BASELINES`` that are not rule-based traders (left out of
the references every learner is compared with)."""

IQM_CUT = 0.25
"""Fraction of runs cut from each end for the interquartile mean."""


def iqm(values: Sequence[float] | np.ndarray, axis: int = -1) -> Any:
    """Interquartile mean along ``axis``: the mean after cutting the lowest and the highest
    25 % of the values (``scipy.stats.trim_mean``, as Agarwal et al. 2021 and rliable; with
    fewer than 4 values nothing is cut and it is the mean). NaN values are not allowed."""
    return stats.trim_mean(np.asarray(values, dtype=float), IQM_CUT, axis=axis)


_RNG_KEYWORD = "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"


def bootstrap_ci(values: Sequence[float] | np.ndarray,
                 statistic: Callable[..., Any] = iqm, confidence: float = 0.95,
                 n_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``statistic`` over the runs ``values``
    (``scipy.stats.bootstrap``, resampling runs with replacement; ``statistic(x, axis)``
    vectorised). Seeded, so the same values give the same interval. Fewer than 2 finite
    values: (NaN, NaN); identical values: (value, value)."""
    sample = np.asarray(values, dtype=float)
    sample = sample[np.isfinite(sample)]
    if sample.size < 2:
        return math.nan, math.nan
    if np.all(sample == sample[0]):
        return float(sample[0]), float(sample[0])
    with warnings.catch_warnings():  # tiny samples: scipy warns that the CI may be unstable
        warnings.simplefilter("ignore")
        result = stats.bootstrap((sample,), statistic, n_resamples=n_resamples,
                                 confidence_level=confidence, method="percentile",
                                 vectorized=True,
                                 **{_RNG_KEYWORD: np.random.default_rng(seed)})
    interval = result.confidence_interval
    return float(interval.low), float(interval.high)


def aggregate(values: Sequence[float] | np.ndarray, seed: int = 0) -> dict[str, float]:
    """IQM and 95 % bootstrap interval of one metric over runs: ``{"iqm", "ci_low",
    "ci_high", "n"}`` (``n`` finite values; NaN values, such as a Gini without agent costs,
    are left out, and with none left every entry is NaN)."""
    sample = np.asarray(values, dtype=float)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return {"iqm": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
    low, high = bootstrap_ci(sample, seed=seed)
    return {"iqm": float(iqm(sample)), "ci_low": low, "ci_high": high, "n": int(sample.size)}


def worse_off_share(agent_savings: Sequence[float] | np.ndarray,
                    tolerance: float = WORSE_OFF_TOLERANCE) -> float:
    """Share of agents worse off than without P2P: the fraction of agents whose mean daily
    saving against ``no_p2p`` (``envs.metrics.agent_savings`` averaged over days, currency/day)
    is below ``-tolerance``. NaN when no agent has a defined saving (the oracles' central
    schedules have no per-agent bills)."""
    savings = np.asarray(agent_savings, dtype=float)
    savings = savings[np.isfinite(savings)]
    if savings.size == 0:
        return math.nan
    return float(np.mean(savings < -tolerance))


def rule_names() -> list[str]:
    """The rule-based baselines a learner is compared with: every baseline of
    ``agents.baselines.BASELINES`` but :data:`NOT_RULES` (``zi`` included)."""
    from agents.baselines import BASELINES  # the baselines import torch models; keep this light

    return [name for name in BASELINES if name not in NOT_RULES]


def best_rule(costs: dict[str, float]) -> tuple[str, float]:
    """The rule with the lowest mean community cost among ``costs`` (rule name ->
    currency/day; NaN costs never win), and that cost."""
    finite = {name: float(cost) for name, cost in costs.items() if not math.isnan(cost)}
    if not finite:
        raise ValueError(f"no rule has a finite cost: {costs}")
    name = min(finite, key=lambda key: finite[key])
    return name, finite[name]


def cell_metrics(row: dict[str, Any], best_rule_cost: float,
                 oracle_share: float | None = None) -> dict[str, float]:
    """The :data:`COLUMNS` of one policy from its ``evaluate.summarise`` row (means over the
    evaluated days), given the best rule-based policy's mean cost (currency/day).
    ``oracle_share`` replaces the row's ``captured_savings_share_mean`` (for rows summarised
    without the task's oracle)."""
    def mean(key: str) -> float:
        value = row.get(f"{key}_mean")
        return math.nan if value is None else float(value)

    cost = mean("community_cost")
    share = mean("captured_savings_share") if oracle_share is None else float(oracle_share)
    return {
        "community_cost": cost,
        "oracle_share": share,
        "gain_vs_best_rule": float(best_rule_cost) - cost,
        "violations": mean("voltage_violations") + mean("line_violations"),
        "savings_gini": mean("savings_gini"),
        "worse_off_share": worse_off_share(row.get("agent_savings") or []),
    }


def write_record(path: str | Path, record: dict[str, Any]) -> Path:
    """Write a finished cell's (or a task's references') record as JSON, atomically
    (``envs.files``): a reader, or a resumed leaderboard, sees the whole record or none."""
    return atomic_write_text(path, json.dumps(plain_json(record), indent=1) + "\n")


def read_record(path: str | Path, settings: dict[str, Any],
                defaults: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The finished record at ``path``, or None when there is none (not yet run, or a file
    that is not a complete record: it is redone). A record made with other ``settings``
    (budget, days, seed) raises :class:`ConfigError` naming the setting, rather than mixing
    results of two budgets; rerun with ``--force`` or another ``--out``.

    ``defaults`` (shaped as ``settings``, e.g. the env config's defaults under ``env``): a
    key the stored settings do not have at all (a config key added after the record was
    made) matches when the wanted value is that key's default, the value every run had
    before the key existed; an older record thus stays valid when a new config section that
    is off by default appears."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        warnings.warn(f"leaderboard: '{path}' is not a readable record; redoing it",
                      stacklevel=2)
        return None
    if not isinstance(record, dict) or "settings" not in record:
        warnings.warn(f"leaderboard: '{path}' holds no settings; redoing it", stacklevel=2)
        return None
    difference = _first_difference(record["settings"], plain_json(settings),
                                   defaults=None if defaults is None else plain_json(defaults))
    if difference is not None:
        key, stored, wanted = difference
        raise ConfigError(
            f"leaderboard: '{path}' was made with {key}={stored!r}, this run asks for "
            f"{key}={wanted!r}; use --force to redo it or another --out")
    return record


def _first_difference(stored: Any, wanted: Any, prefix: str = "",
                      defaults: Any = None) -> tuple[str, Any, Any] | None:
    """The first dotted key where two JSON values differ, with both values (None if equal);
    a key absent from ``stored`` compares ``defaults``' value for it (when ``defaults`` has
    it) with ``wanted``'s (see :func:`read_record`)."""
    if isinstance(stored, dict) and isinstance(wanted, dict):
        defaults = defaults if isinstance(defaults, dict) else {}
        for key in sorted(set(stored) | set(wanted)):
            if key not in stored and key in defaults:
                found = _first_difference(defaults[key], wanted.get(key), f"{prefix}{key}.")
            else:
                found = _first_difference(stored.get(key), wanted.get(key), f"{prefix}{key}.",
                                          defaults.get(key))
            if found is not None:
                return found
        return None
    return None if stored == wanted else (prefix.rstrip("."), stored, wanted)
