"""The named task suite: communities with headroom between the rules and the optimum.

A task is an env config with a name (``configs/tasks/<file>.yaml``, commented), a line on
what it tests, and its reference oracle (``agents.baselines.ORACLES``: ``oracle``, or
``oracle_network`` where the feeder's limits bind). Every entry point reaches a task through
:func:`get_task`, so a name means the same community everywhere:

    python train.py --task Peak-Storage --config configs/mappo.yaml   # or, in a run config,
    env: {task: Peak-Storage}                                        # (agents.run_config)
    python evaluate.py --task Peak-Storage --policies no_p2p,self_consumption,oracle
    python benchmarks/leaderboard.py --tasks Flat,Peak-Storage

``STRONG`` below is the hourly retail tariff ``[0.12 x6, 0.28 x11, 0.50 x4, 0.28, 0.12 x2]``
currency/kWh (cheap nights, an evening peak at 17-21 h) with a flat feed-in of 0.08.

=============  =============  ===============================================  ==============
task           feeder         overrides of the defaults                        oracle
=============  =============  ===============================================  ==============
Flat           rural1 (13)    none                                             oracle
TOU-Arbitrage  rural1         STRONG, battery_share 1.0                        oracle
Peak-Storage   rural1         TOU-Arbitrage + battery_kwh_per_mwh 2.5          oracle
Urban-Scale    urban6 (111)   STRONG, battery_share 1.0                        oracle
Grid-Rebound   semiurb4 (41)  STRONG, battery_share 1.0, battery_kwh_per_mwh   oracle_network
                              2.5
PV-Hosting     semiurb4       pv_share 1.0, pv_kwp_per_mwh 2.0, battery_share  oracle_network
                              1.0, battery_kwh_per_mwh 2.5
=============  =============  ===============================================  ==============

Feeders are SimBench's ``1-LV-rural1--0-sw``, ``1-LV-urban6--0-sw`` and
``1-LV-semiurb4--0-sw`` (agents in brackets); every other key takes ``envs/config.py``'s
default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envs.config import ConfigError, EnvConfig, env_config

__all__ = ["TASKS", "TASKS_DIR", "Task", "get_task", "task_env_config", "task_names"]

TASKS_DIR = Path(__file__).resolve().parents[1] / "configs" / "tasks"
"""Folder of the task YAMLs (beside the installed packages, as every shipped config)."""


@dataclass(frozen=True)
class Task:
    """One named task of the suite."""

    name: str
    """The name used on the command line and in run configs (``Peak-Storage``)."""
    file: str
    """Its env YAML, a file name under :data:`TASKS_DIR`."""
    description: str
    """What the task tests, in one line."""
    oracle: str
    """Name of its reference oracle in ``agents.baselines.ORACLES``."""

    @property
    def config_path(self) -> Path:
        """Path of the task's env YAML."""
        return TASKS_DIR / self.file


TASKS: dict[str, Task] = {task.name: task for task in (
    Task("Flat", "flat.yaml",
         "the default community under a flat tariff: little headroom above the "
         "self-consumption rule, tests P2P pricing and battery use without arbitrage",
         "oracle"),
    Task("TOU-Arbitrage", "tou-arbitrage.yaml",
         "a strong time-of-use tariff and a battery in every home: tests buying at night "
         "and covering the evening peak (temporal arbitrage)",
         "oracle"),
    Task("Peak-Storage", "peak-storage.yaml",
         "TOU-Arbitrage with 2.5x larger batteries: tests holding stored energy through the "
         "day and spending it over the whole 4-hour peak",
         "oracle"),
    Task("Urban-Scale", "urban-scale.yaml",
         "the STRONG tariff with batteries on a 111-agent urban feeder: tests whether a "
         "learner scales in the number of agents",
         "oracle"),
    Task("Grid-Rebound", "grid-rebound.yaml",
         "STRONG tariff, large batteries, semi-urban feeder: every home charging in the same "
         "cheap hour overloads lines (209 %), tests coordination under line limits",
         "oracle_network"),
    Task("PV-Hosting", "pv-hosting.yaml",
         "PV on every roof at 2 kWp/MWh with large batteries on the semi-urban feeder: "
         "midday export meets the voltage limits, tests absorbing PV within them",
         "oracle_network"),
)}
"""The task suite by name."""


def task_names() -> list[str]:
    """The names of every task, in the suite's order."""
    return list(TASKS)


def get_task(name: Any, where: str = "config key 'task'") -> Task:
    """The task called ``name`` (case-insensitive). An unknown name raises
    :class:`ConfigError` naming ``where`` it was given and listing the valid names."""
    if isinstance(name, str):
        by_lower = {task.lower(): task for task in TASKS}
        found = by_lower.get(name.strip().lower())
        if found is not None:
            return TASKS[found]
    raise ConfigError(f"{where}: unknown task {name!r}; allowed: {', '.join(TASKS)}")


def task_env_config(name: str, **overrides: Any) -> EnvConfig:
    """The env config of task ``name`` with ``envs.config.env_config``'s keyword overrides
    (``n_envs=64``, ``market={"mechanism": "mmr"}``)."""
    return env_config(get_task(name).config_path, **overrides)
