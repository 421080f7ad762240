"""The one policy interface of peergrid, and loading a trained policy from a run folder.

A policy acts for every agent of every environment of a batched core
(``envs.core.BatchedP2PEnv``) at once:

=====================  ========================================================================
member                 meaning
=====================  ========================================================================
``name``               short name used in tables and file names
``mechanism``          market mechanism the policy must be evaluated under (``None``: the
                       config's); e.g. ``no_p2p`` is the no-market reference, ``"none"``
``reset(env, seed)``   start of a batch of episodes (all environments reset together); a
                       policy that cannot act in ``env`` raises ``ConfigError`` here
``act(obs, env)``      ``obs [B, N, obs_dim]`` -> actions in the env's action space: continuous
                       ``[B, N, 2]`` (battery fraction in [-1, 1], price fraction in [0, 1])
                       or discrete ``[B, N]`` indices (``agents.actions.env_actions``
                       converts)
=====================  ========================================================================

Rule-based traders (``agents.baselines``) may read the env (``env.load_kw``,
``env.soc_kwh``, ...) as traders with perfect knowledge of the current step do; a trained
algorithm acts on ``obs`` and the global ``env.state()`` only, behind :class:`TrainedPolicy`.
Policies written outside peergrid (a PettingZoo-level callable on observation and action
dicts, a batched object with ``act``, a stable-baselines3 model file) become one through the
adapters of ``agents.external``. ``agents.evaluation.evaluate_policy`` rolls any of them out.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from agents import registry
from agents.algorithm import Algorithm, EnvSpec
from agents.checkpoints import CheckpointError, load_checkpoint
from agents.run_config import RunConfig, build_run_config, make_generator
from envs.config import ConfigError

__all__ = ["Policy", "PolicyLoadError", "TrainedPolicy", "load_policy", "run_folder"]


@runtime_checkable
class Policy(Protocol):
    """What evaluation needs from a policy (see the module docstring)."""

    name: str
    mechanism: str | None

    def reset(self, env: Any, seed: int | None = None) -> None:
        """Prepare for a new batch of episodes of ``env``; ``seed`` seeds the policy's own
        generator (never the global one)."""

    def act(self, obs: Tensor, env: Any) -> Tensor:
        """Actions of every agent of every environment, given ``obs [B, N, obs_dim]``."""


class PolicyLoadError(RuntimeError):
    """A checkpoint, run folder or external policy spec (``agents.external``) cannot be
    turned into a policy; the message names what was expected."""


class TrainedPolicy:
    """A trained algorithm behind :class:`Policy`: ``act(obs, env)`` gives its deterministic
    actions (``algorithm.act(obs, env.state(), deterministic=True)``).

    Args:
        algorithm: the trained ``agents.algorithm.Algorithm``.
        config: the run config it was trained with.
        name: its name in tables (a run folder's name).
    """

    def __init__(self, algorithm: Algorithm, config: RunConfig, name: str) -> None:
        self.algorithm = algorithm
        self.config = config
        self.name = name
        self.mechanism: str | None = None

    def reset(self, env: Any, seed: int | None = None) -> None:
        """Refuse an env the policy cannot act in: another action space, feeder, number of
        agents or observation layout (deterministic actions need no per-episode state)."""
        trained, given = self.config.env, env.config
        if trained.action.type != given.action.type or (
                trained.action.type == "discrete" and (
                    trained.action.battery_levels, trained.action.price_levels) != (
                    given.action.battery_levels, given.action.price_levels)):
            raise ConfigError(
                f"policy {self.name!r} was trained with {trained.action.type} actions "
                f"({trained.action}), the evaluation env has {given.action}; evaluate it "
                f"in its own env config (evaluate.py --config <run folder>)")
        if trained.community.feeder != given.community.feeder:
            raise ConfigError(f"policy {self.name!r} was trained on feeder "
                              f"{trained.community.feeder!r}, the evaluation env is "
                              f"{given.community.feeder!r}")
        spec = getattr(self.algorithm, "spec", None)
        if spec is not None and spec.n_agents != env.n_agents:
            raise ConfigError(f"policy {self.name!r} was trained for {spec.n_agents} agents, "
                              f"the evaluation env has {env.n_agents}")
        if spec is not None and (spec.obs_dim, spec.feature_names) != (
                env.obs_dim, tuple(env.feature_names)):
            raise ConfigError(
                f"policy {self.name!r} was trained on observations {list(spec.feature_names)} "
                f"({spec.obs_dim} features), the evaluation env gives "
                f"{list(env.feature_names)} ({env.obs_dim}); use the run's observation "
                f"config ({trained.observation})")

    def act(self, obs: Tensor, env: Any) -> Tensor:
        return self.algorithm.act(obs, env.state(), deterministic=True)


def run_folder(path: str | Path) -> Path:
    """The run folder of ``path``: the folder itself, or the folder holding a checkpoint file
    (``runs/<run>/checkpoint_best.pt``)."""
    path = Path(path)
    if path.is_file():
        return path.parent
    if path.is_dir():
        return path
    raise PolicyLoadError(f"no run folder or checkpoint at '{path}'")


def _checkpoint_file(path: Path) -> Path:
    if path.is_file():
        return path
    for name in ("checkpoint_best.pt", "checkpoint_latest.pt"):
        if (path / name).is_file():
            return path / name
    raise PolicyLoadError(f"run folder '{path}' holds no checkpoint_best.pt or "
                          f"checkpoint_latest.pt")


def load_algorithm(path: str | Path, n_envs: int = 1, device: str = "cpu"
                   ) -> tuple[RunConfig, Algorithm]:
    """The trained algorithm of a checkpoint file, ready to ``act`` on a core of ``n_envs``
    environments on ``device``; returns ``(run config, algorithm)``. Raises
    :class:`PolicyLoadError` (damaged checkpoint, config this version rejects)."""
    from envs.core import BatchedP2PEnv

    try:
        checkpoint = load_checkpoint(path, device)
        data = copy.deepcopy(checkpoint["config"])
        data["train"].update(n_envs=n_envs, device=device)
        data["env"].update(n_envs=n_envs, device=device)
        config = build_run_config(data)
    except (CheckpointError, ConfigError, KeyError, TypeError, AttributeError) as error:
        raise PolicyLoadError(f"cannot load the policy of '{path}': {error}") from None
    spec = EnvSpec.from_env(BatchedP2PEnv(config.env))
    algorithm = registry.get(config.algo)(config.hyperparameters, spec, config.train,
                                          make_generator(config.seed, device))
    try:
        algorithm.load_state_dict(checkpoint["algorithm"])
    except (KeyError, RuntimeError, ValueError) as error:
        raise PolicyLoadError(f"'{path}': the weights do not fit {config.algo} with its "
                              f"config: {error}") from None
    return config, algorithm


@torch.no_grad()
def load_policy(path: str | Path, device: str = "cpu") -> TrainedPolicy:
    """The trained policy of a run folder written by ``train.py`` (its
    ``checkpoint_best.pt``, else ``checkpoint_latest.pt``) or of a checkpoint file in one,
    named after the run folder. Raises :class:`PolicyLoadError`."""
    path = Path(path)
    folder = run_folder(path)
    config, algorithm = load_algorithm(_checkpoint_file(path), device=device)
    return TrainedPolicy(algorithm, config, folder.name)
