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

**Tasks of your own.** Wherever a task name is taken, the path of an env YAML
(``my_tasks/two-rate.yaml``, ending in ``.yaml`` or ``.yml``; relative to the current
folder) is a task too: named after the file's stem (``two-rate``), with the reference oracle
``oracle_network`` when its ``network.model`` is a power flow (the optimum within the feeder's
limits) and ``oracle`` with ``network.model: none``. Once resolved, the stem also names it in
the same process, and :attr:`Task.spec` (the file's absolute path) names it in any process:

    python benchmarks/leaderboard.py --tasks Flat,my_tasks/two-rate.yaml
    python train.py --task my_tasks/two-rate.yaml --config configs/mappo_imitation.yaml
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envs.config import ConfigError, EnvConfig, env_config
from envs.files import FOLDER_NAME_RULE, is_folder_name

__all__ = ["TASKS", "TASKS_DIR", "TASK_FILE_SUFFIXES", "Task", "get_task", "task_env_config",
           "task_names"]

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
        """Path of the task's env YAML (a task of your own: ``file`` is absolute)."""
        return TASKS_DIR / self.file

    @property
    def spec(self) -> str:
        """What :func:`get_task` resolves to this task in any process: the suite's name, or
        the absolute path of a task file of your own (``train.task_overrides`` writes it as
        ``env.task``)."""
        return self.file if Path(self.file).is_absolute() else self.name


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


TASK_FILE_SUFFIXES = (".yaml", ".yml")
"""How the path of a task file of your own ends (anything else is looked up as a name)."""

_OWN_TASKS: dict[Path, Task] = {}
"""Tasks of your own resolved in this process, by their file's absolute path."""


def get_task(name: Any, where: str = "config key 'task'") -> Task:
    """The task called ``name`` (case-insensitive), or the task of your own in the env YAML
    at the path ``name`` (module docstring). An unknown name raises :class:`ConfigError`
    naming ``where`` it was given and listing the valid names; a task file that is missing,
    invalid or named like a task of the suite raises it naming the file."""
    if isinstance(name, str):
        key = name.strip()
        by_lower = {task.lower(): task for task in TASKS}
        found = by_lower.get(key.lower())
        if found is not None:
            return TASKS[found]
        if key.lower().endswith(TASK_FILE_SUFFIXES):
            return _own_task(key, where)
        own = [task for task in _OWN_TASKS.values() if task.name.lower() == key.lower()]
        if len(own) == 1:
            return own[0]
        if len(own) > 1:
            raise ConfigError(f"{where}: task {name!r} is ambiguous: task files "
                              f"{', '.join(task.file for task in own)}; give the path")
    raise ConfigError(f"{where}: unknown task {name!r}; allowed: {', '.join(TASKS)}, or the "
                      f"path of an env YAML ({' or '.join(TASK_FILE_SUFFIXES)}) for a task of "
                      f"your own")


def _own_task(path_text: str, where: str) -> Task:
    """The task of your own in the env YAML at ``path_text`` (module docstring)."""
    path = Path(os.path.abspath(Path(path_text).expanduser()))
    if path in _OWN_TASKS:
        return _OWN_TASKS[path]
    if not path.is_file():
        raise ConfigError(f"{where}: no task file '{path_text}' ({path}); allowed: the suite's "
                          f"tasks {', '.join(TASKS)} or the path of an env YAML")
    name = path.stem
    if not is_folder_name(name):  # it names run and result folders
        raise ConfigError(f"{where}: the task file '{path_text}' would be named {name!r}; "
                          f"rename the file (allowed: {FOLDER_NAME_RULE})")
    clash = [task for task in TASKS if task.lower() == name.lower()]
    if clash:
        raise ConfigError(f"{where}: the task file '{path_text}' would be named {name!r}, "
                          f"like the suite's task {clash[0]}; rename the file")
    try:
        config = env_config(path)
    except ConfigError as error:
        raise ConfigError(f"{where}: task file '{path_text}': {error}") from None
    oracle = "oracle" if config.network.model == "none" else "oracle_network"
    task = Task(name, str(path), f"a task of your own ({path})", oracle)
    _OWN_TASKS[path] = task
    return task


def task_env_config(name: str, **overrides: Any) -> EnvConfig:
    """The env config of task ``name`` with ``envs.config.env_config``'s keyword overrides
    (``n_envs=64``, ``market={"mechanism": "mmr"}``)."""
    return env_config(get_task(name).config_path, **overrides)
