"""Name -> algorithm class. Add an algorithm with one line in :data:`ALGORITHMS` naming its
module, whose :class:`agents.algorithm.Algorithm` subclass is the module attribute
``ALGORITHM``, or ``module:Class`` for a module holding several algorithms. Modules are
imported when first asked for.
"""

from __future__ import annotations

import importlib

from envs.config import ConfigError

__all__ = ["ALGORITHMS", "get", "names"]

ALGORITHMS: dict[str, str] = {
    "mappo": "agents.mappo",
    "dqn": "agents.dqn",
    "ddpg": "agents.ddpg",
    "maddpg": "agents.maddpg",
    "qlearning": "agents.qlearning",
    "sb3_ppo": "agents.sb3_baselines:SB3PPO",
    "sb3_td3": "agents.sb3_baselines:SB3TD3",
    "sb3_dqn": "agents.sb3_baselines:SB3DQN",
}
"""Registry name -> ``module`` (defining ``ALGORITHM``) or ``module:Class``."""


def names() -> list[str]:
    """Every registered name."""
    return list(ALGORITHMS)


def get(name: str) -> type:
    """The algorithm class registered as ``name``; ConfigError for an unknown name."""
    if name not in ALGORITHMS:
        raise ConfigError(f"config key 'algo': got {name!r}; allowed: one of "
                          f"{', '.join(ALGORITHMS)}")
    module_name, _, attribute = ALGORITHMS[name].partition(":")
    return getattr(importlib.import_module(module_name), attribute or "ALGORITHM")
