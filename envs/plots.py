"""Evaluation plots (PNG, matplotlib's Agg backend): a day's trajectory, metrics across policies,
per-agent savings, the market-mechanism comparison and the storage sweep (savings against battery
capacity).

Every function takes plain numbers (numpy arrays, dicts, lists of rows as written by
``evaluate.py``), writes one PNG to ``path`` and returns the path. No computation of metrics
happens here (they come from ``envs.metrics``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from envs.data import STEP_HOURS  # noqa: E402
from envs.files import atomic_write  # noqa: E402

__all__ = ["plot_agent_savings", "plot_day", "plot_mechanisms", "plot_policy_metrics",
           "plot_storage_sweep"]

_MIN_TRADE_KWH = 1e-6
"""Steps with less P2P volume than this (float round-off of balanced positions) show no price."""


def _save(fig: Any, path: str | Path) -> Path:
    path = atomic_write(path, lambda file: fig.savefig(file, dpi=110, bbox_inches="tight",
                                                       format="png"))
    plt.close(fig)
    return path


def plot_day(trajectory: dict[str, np.ndarray], path: str | Path, title: str = "",
             v_limits: tuple[float, float] | None = None,
             agent_names: Sequence[str] | None = None,
             capacity_kwh: np.ndarray | None = None) -> Path:
    """One day of one policy: community load and PV (kW); each battery's SoC (kWh); clearing
    price against retail and feed-in (currency/kWh); P2P, grid import and export volumes (kWh
    per step); min/max bus voltage against ``v_limits`` (p.u.) when the trajectory has them.

    ``trajectory``: arrays over the T steps with keys ``load_kw``, ``pv_kw``, ``soc_kwh
    [T, N]``, ``clearing_price``, ``retail_price``, ``feed_in_price``, ``p2p_volume_kwh``,
    ``grid_import_kwh``, ``grid_export_kwh``, optional ``v_min_pu``, ``v_max_pu``. The clearing
    price is drawn only at steps with P2P volume above 1e-6 kWh.
    """
    hours = np.arange(len(trajectory["load_kw"])) * STEP_HOURS
    has_voltage = "v_min_pu" in trajectory and bool(np.isfinite(trajectory["v_min_pu"]).any())
    rows = 5 if has_voltage else 4
    fig, axes = plt.subplots(rows, 1, figsize=(9, 2.2 * rows), sharex=True)

    ax = axes[0]
    ax.plot(hours, trajectory["load_kw"], label="load")
    ax.plot(hours, trajectory["pv_kw"], label="PV")
    ax.set_ylabel("community kW")
    ax.legend(loc="upper left", fontsize=8)

    ax = axes[1]
    soc = np.asarray(trajectory["soc_kwh"])
    batteries = (np.flatnonzero(np.asarray(capacity_kwh) > 0) if capacity_kwh is not None
                 else np.flatnonzero(np.abs(soc).max(axis=0) > 0))
    for i in batteries:
        label = agent_names[i] if agent_names is not None else f"agent {i}"
        ax.plot(hours, soc[:, i], label=label)
    ax.set_ylabel("SoC kWh")
    if len(batteries):
        ax.legend(loc="upper left", fontsize=7, ncol=min(4, len(batteries)))

    ax = axes[2]
    ax.plot(hours, trajectory["retail_price"], "k--", label="retail")
    ax.plot(hours, trajectory["feed_in_price"], "k:", label="feed-in")
    traded = np.asarray(trajectory["p2p_volume_kwh"]) > _MIN_TRADE_KWH
    price = np.where(traded, trajectory["clearing_price"], np.nan)
    ax.plot(hours, price, "o", ms=2.5, label="clearing price")
    ax.set_ylabel("currency/kWh")
    ax.legend(loc="upper left", fontsize=8)

    ax = axes[3]
    ax.plot(hours, trajectory["p2p_volume_kwh"], label="P2P")
    ax.plot(hours, trajectory["grid_import_kwh"], label="grid import")
    ax.plot(hours, trajectory["grid_export_kwh"], label="grid export")
    ax.set_ylabel("kWh per step")
    ax.legend(loc="upper left", fontsize=8)

    if has_voltage:
        ax = axes[4]
        ax.plot(hours, trajectory["v_min_pu"], label="min bus voltage")
        ax.plot(hours, trajectory["v_max_pu"], label="max bus voltage")
        if v_limits is not None:
            for limit in v_limits:
                ax.axhline(limit, color="r", ls="--", lw=0.8)
        ax.set_ylabel("p.u.")
        ax.legend(loc="upper left", fontsize=8)
    axes[-1].set_xlabel("hour of day")
    axes[-1].set_xlim(0, 24)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_policy_metrics(rows: list[dict[str, Any]], metrics: Sequence[tuple[str, str]],
                        path: str | Path, title: str = "") -> Path:
    """Bar chart of ``metrics`` (``(key, label)`` pairs) across policies, one panel per
    metric, bars at ``row[key + "_mean"]`` with ``row[key + "_std"]`` error bars (std over
    days; undefined values are marked n/a). ``rows``: one dict per policy with a ``policy``
    name."""
    names = [row["policy"] for row in rows]
    columns = 3
    panels = math.ceil(len(metrics) / columns)
    fig, axes = plt.subplots(panels, columns, figsize=(4.2 * columns, 2.8 * panels),
                             squeeze=False)
    x = np.arange(len(names))
    for ax, (key, label) in zip(axes.flat, metrics, strict=False):
        mean = np.array([row.get(f"{key}_mean", np.nan) for row in rows], dtype=float)
        std = np.array([row.get(f"{key}_std", np.nan) for row in rows], dtype=float)
        ax.bar(x, np.nan_to_num(mean), yerr=np.where(np.isfinite(std), std, 0.0),
               color=[f"C{i}" for i in range(len(names))], capsize=3)
        for i in np.flatnonzero(~np.isfinite(mean)):
            ax.text(x[i], 0.0, "n/a", ha="center", va="bottom", fontsize=7, color="gray")
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.axhline(0.0, color="k", lw=0.6)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_agent_savings(savings: dict[str, np.ndarray], path: str | Path,
                       agent_names: Sequence[str] | None = None, title: str = "") -> Path:
    """Each agent's mean daily saving against its own no-P2P bill (currency), sorted, one
    panel per policy (policies without any saving, such as ``no_p2p``, or without per-agent
    costs, such as the oracle, are left out). ``savings``: policy name -> ``[N]``."""
    policies = [name for name, values in savings.items()
                if np.isfinite(values).any() and np.abs(values).max() > 0]
    if not policies:
        policies = list(savings)[:1]
    fig, axes = plt.subplots(len(policies), 1, figsize=(9, 2.3 * max(1, len(policies))),
                             squeeze=False)
    for ax, name in zip(axes[:, 0], policies, strict=True):
        values = np.asarray(savings[name], dtype=float)
        order = np.argsort(values)[::-1]
        ax.bar(np.arange(len(values)), values[order],
               color=np.where(values[order] >= 0, "C2", "C3"))
        labels = ([agent_names[i] for i in order] if agent_names is not None
                  else [str(i) for i in order])
        ax.set_xticks(np.arange(len(values)), labels, rotation=60, ha="right", fontsize=6)
        ax.axhline(0.0, color="k", lw=0.6)
        ax.set_ylabel("saving / day")
        ax.set_title(name, fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_mechanisms(rows: list[dict[str, Any]], metrics: Sequence[tuple[str, str]],
                    path: str | Path, title: str = "",
                    references: dict[str, dict[str, float]] | None = None) -> Path:
    """The same policies under every market mechanism: grouped bars (groups = mechanisms,
    bars = policies), one panel per metric. ``rows``: dicts with ``mechanism``, ``policy``
    and ``<key>_mean``. ``references``: metric key -> {label: value} drawn as horizontal
    lines (e.g. the oracle's savings)."""
    mechanisms = list(dict.fromkeys(row["mechanism"] for row in rows))
    policies = list(dict.fromkeys(row["policy"] for row in rows))
    lookup = {(row["mechanism"], row["policy"]): row for row in rows}
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(8, 1.3 * len(mechanisms)),
                                                        2.8 * len(metrics)), squeeze=False)
    width = 0.8 / max(1, len(policies))
    x = np.arange(len(mechanisms))
    for ax, (key, label) in zip(axes[:, 0], metrics, strict=True):
        for j, policy in enumerate(policies):
            values = [lookup.get((m, policy), {}).get(f"{key}_mean", np.nan) for m in mechanisms]
            ax.bar(x + (j - (len(policies) - 1) / 2) * width, np.nan_to_num(values), width,
                   label=policy)
        for k, (name, value) in enumerate((references or {}).get(key, {}).items()):
            if np.isfinite(value):
                ax.axhline(value, color=f"C{len(policies) + k}", ls="--", lw=1, label=name)
        ax.set_xticks(x, mechanisms)
        ax.set_ylabel(label, fontsize=9)
        ax.axhline(0.0, color="k", lw=0.6)
    axes[0, 0].legend(fontsize=8, ncol=min(4, len(policies) + 1))
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_storage_sweep(rows: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """``evaluate.py --storage-sweep``: mean savings per day vs no P2P against the total
    battery capacity, one line per policy and layout (solid: one shared battery, dashed: a
    battery in every home; one colour per policy). Means only: the std over days (in the
    sweep's CSV) mostly reflects the weather and would hide the differences. ``rows``: dicts
    with ``policy``, ``layout``, ``capacity_kwh`` and ``savings_mean``."""
    policies = list(dict.fromkeys(row["policy"] for row in rows))
    layouts = list(dict.fromkeys(row["layout"] for row in rows))
    styles = {"shared": "-", "home": "--"}
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for j, policy in enumerate(policies):
        for layout in layouts:
            points = sorted((row["capacity_kwh"], row["savings_mean"]) for row in rows
                            if row["policy"] == policy and row["layout"] == layout)
            if points:
                size, mean = np.asarray(points, dtype=float).T
                ax.plot(size, mean, styles.get(layout, ":"), marker="o", ms=4,
                        color=f"C{j}", label=f"{policy}, {layout}")
    ax.set_xlabel("total battery capacity, kWh")
    ax.set_ylabel("mean savings vs no P2P / day")
    ax.legend(fontsize=8, ncol=min(2, max(1, len(policies))))
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
