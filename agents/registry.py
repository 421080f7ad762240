"""Name -> algorithm class. Add an algorithm with one line in :data:`ALGORITHMS` naming its
module, whose :class:`agents.common.Algorithm` subclass is the module attribute ``ALGORITHM``,
or ``module:Class`` for a module holding several algorithms.

Modules are imported lazily, so a registered algorithm whose file is not written yet only
fails when it is asked for; :func:`available` lists the ones that import.
"""

from __future__ import annotations

import importlib

from envs.config import ConfigError

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
    """Every registered name (importable or not)."""
    return list(ALGORITHMS)


def get(name: str) -> type:
    """The algorithm class registered as ``name``; ConfigError for an unknown name."""
    if name not in ALGORITHMS:
        raise ConfigError(f"config key 'algo': got {name!r}; allowed: one of "
                          f"{', '.join(ALGORITHMS)}")
    module_name, _, attribute = ALGORITHMS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        raise ConfigError(f"config key 'algo': {name!r} is registered but its module "
                          f"{module_name} does not exist yet") from None
    return getattr(module, attribute or "ALGORITHM")


def available() -> list[str]:
    """Registered names whose module imports."""
    found = []
    for name in ALGORITHMS:
        try:
            get(name)
        except ConfigError:
            continue
        found.append(name)
    return found


class TrainedPolicy:
    """A trained algorithm behind the evaluation interface of ``agents.policy.Policy``:
    ``act(obs, env)`` gives the deterministic actions (the critic and the global state are
    not used by decentralised actors, but are passed on as the algorithm's ``act`` takes
    them)."""

    def __init__(self, algorithm, config, name: str) -> None:
        self.algorithm = algorithm
        self.config = config
        """The run config the policy was trained with (``agents.common.RunConfig``)."""
        self.name = name
        self.mechanism: str | None = None

    def reset(self, env, seed: int | None = None) -> None:
        """Check that ``env`` matches what the policy was trained on (deterministic actions
        need no per-episode state)."""
        trained = self.config.env
        if trained.action.type != env.config.action.type or (
                trained.action.type == "discrete" and (
                    trained.action.battery_levels, trained.action.price_levels) != (
                    env.config.action.battery_levels, env.config.action.price_levels)):
            raise ConfigError(
                f"policy {self.name!r} was trained with {trained.action.type} actions "
                f"({trained.action}), the evaluation env has {env.config.action}; evaluate it "
                f"in its own env config (evaluate.py --config <run folder>)")
        if trained.community.feeder != env.config.community.feeder:
            raise ConfigError(f"policy {self.name!r} was trained on feeder "
                              f"{trained.community.feeder!r}, the evaluation env is "
                              f"{env.config.community.feeder!r}")

    def act(self, obs, env):
        return self.algorithm.act(obs, env.state(), deterministic=True)


def load_policy_from_run(run_dir, checkpoint: str = "checkpoint_best.pt",
                         device: str = "cpu") -> TrainedPolicy:
    """The policy of a run folder written by ``train.py``: ``checkpoint`` (falling back to
    ``checkpoint_latest.pt``) with the run's ``config.yaml``, as a :class:`TrainedPolicy`
    named after the folder."""
    from pathlib import Path

    from agents.common import load_policy

    run_dir = Path(run_dir)
    path = run_dir / checkpoint
    if not path.is_file():
        path = run_dir / "checkpoint_latest.pt"
    config, algorithm = load_policy(path, device=device)
    return TrainedPolicy(algorithm, config, run_dir.name)
