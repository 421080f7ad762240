"""peergrid environments: the batched P2P energy-trading core and its wrappers.

- :func:`make_batched_env`: the batched torch core (``envs.core.BatchedP2PEnv``);
- :func:`make_env`: one community as a PettingZoo ``ParallelEnv``;
- :func:`make_vec_env`: a stable-baselines3 ``VecEnv`` of every (env, agent) pair;
- :func:`make_torchrl_env`: a batched TorchRL ``EnvBase`` (``batch_size [n_envs]``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from envs.config import ConfigError, EnvConfig, env_config

__all__ = ["ConfigError", "EnvConfig", "env_config", "make_batched_env", "make_env",
           "make_torchrl_env", "make_vec_env"]

ConfigSource = str | Path | dict[str, Any] | EnvConfig | None


def make_batched_env(config: ConfigSource = None, n_envs: int | None = None,
                     device: str | None = None, **overrides: Any):
    """The batched core over ``n_envs`` environments (default: the config's ``n_envs``)."""
    from envs.core import BatchedP2PEnv

    if n_envs is not None:
        overrides["n_envs"] = n_envs
    if device is not None:
        overrides["device"] = device
    return BatchedP2PEnv(env_config(config, **overrides))


def make_env(config: ConfigSource = None, render_mode: str | None = None,
             engine: str = "auto", ledger: str | Path | None = None, **overrides: Any):
    """One community as a PettingZoo ``ParallelEnv`` (``envs.pettingzoo_env``); ``engine`` is
    ``auto``, ``numba`` (the compiled single-environment engine) or ``torch`` (the core);
    ``ledger``: a path to write a tamper-evident trade ledger to (``envs.ledger``; off when
    None)."""
    from envs.pettingzoo_env import P2PParallelEnv

    return P2PParallelEnv(env_config(config, **overrides), render_mode=render_mode,
                          engine=engine, ledger=ledger)


def make_vec_env(config: ConfigSource = None, n_envs: int | None = None,
                 device: str | None = None, step_infos: bool = True, **overrides: Any):
    """A stable-baselines3 ``VecEnv`` with one sub-environment per (env, agent) pair;
    ``step_infos=False`` skips the per-agent info dicts (``envs.info_schema``), which cost more
    than the core's step at large batches."""
    from envs.sb3_vec_env import SB3VecEnv

    return SB3VecEnv(make_batched_env(config, n_envs=n_envs, device=device, **overrides),
                     step_infos=step_infos)


def make_torchrl_env(config: ConfigSource = None, n_envs: int | None = None,
                     device: str | None = None, step_infos: bool = True,
                     seed: int | None = None, **overrides: Any):
    """A batched TorchRL ``EnvBase`` over the core (``envs.torchrl_env``): ``batch_size
    [n_envs]``, all agents in the group ``"agents"``; ``seed`` as its ``set_seed``."""
    from envs.torchrl_env import PeergridTorchRLEnv

    return PeergridTorchRLEnv(make_batched_env(config, n_envs=n_envs, device=device,
                                               **overrides), step_infos=step_infos, seed=seed)
