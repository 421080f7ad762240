"""The run config: one YAML per algorithm (``configs/<algo>.yaml``), typed and validated.

Layout: ``algo`` (registry name, ``agents/registry.py``), ``seed``, ``name`` (run-folder
prefix), ``env`` (see :func:`resolve_env`), ``train`` (:class:`TrainConfig`), and the section
named after ``algo`` (its ``Config``). :func:`build_run_config` types and validates it; the
resolved config (``RunConfig.to_dict``) is what ``train.py`` logs as ``config.yaml`` and what
ran.

Steps: ``global_step`` and ``train.total_steps`` count env-steps: one env-step advances one
community by 15 minutes, so a batched step of the core is ``n_envs`` env-steps and
``n_envs * n_agents`` agent-steps. Throughput (``charts/SPS``) is in agent-steps per second.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from agents import registry
from agents.allocator import MAX_THRESHOLD_MB
from envs.config import (
    MAX_ENVS,
    SEED_MAX,
    ConfigError,
    EnvConfig,
    apply_overrides,
    check,
    from_dict,
    load_yaml,
    to_dict,
)
from envs.data import day_split
from envs.files import FOLDER_NAME_RULE, is_folder_name
from envs.storage import require_rule_operator
from envs.tasks import get_task

EVAL_REFERENCES = ("auto", "oracle", "oracle_network", "none")
"""Values of ``train.eval_reference``."""

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The repository root: relative env YAML paths are looked up here when not found from the
working directory."""

@dataclass(frozen=True)
class TrainConfig:
    """How long and on what to train, and how often to evaluate and checkpoint."""

    total_steps: int = 500_000
    """Env-steps to train for (one community advanced 15 min; agent-steps = env-steps * N)."""
    n_envs: int = 128
    """Communities stepped together by the batched core (sets the env's ``n_envs``)."""
    eval_every: int = 50_000
    """Env-steps between evaluations on held-out test days (0 = only before and after)."""
    eval_episodes: int = 26
    """Test days per evaluation, spread evenly over the test split (one episode each).
    0 = no evaluations at all (needs ``eval_every`` 0): no evaluation environment, no
    references, no ``eval/*`` scalars and no ``checkpoint_best.pt``; ``metrics.json``'s
    ``final_eval`` and ``best_eval`` are empty. For runs scored elsewhere (the leaderboard
    scores its cells' final checkpoints itself); evaluations never change what is trained."""
    checkpoint_every: int = 100_000
    """Env-steps between ``checkpoint_latest.pt`` writes (0 = only at the end)."""
    checkpoint_minutes: float = 10.0
    """Wall-clock minutes between ``checkpoint_latest.pt`` writes as well (0 = by steps
    only), so that a run killed early can always be resumed."""
    keep_buffers: bool = True
    """Keep the replay buffers (``Algorithm.experience_attributes``) in the finished run's
    last ``checkpoint_latest.pt``, so that it can be trained further with ``--resume`` and a
    larger ``total_steps``. ``false`` writes that last checkpoint without them (DDPG, MADDPG
    and DQN: about 90 MB on the 13-home feeder, up to several GB on the 111-home one; MAPPO
    and Q-learning keep none): the periodic checkpoints keep them, so an interrupted run
    still resumes exactly; a finished one then refuses ``--resume`` (its checkpoints act as
    before). The leaderboard gives its cells ``false`` (``train.keep_buffers=true`` on its
    command line keeps them)."""
    device: str = "cpu"
    """Torch device of the environments and networks (sets the env's ``device``)."""
    torch_threads: int = 1
    """``torch.set_num_threads`` for the run (0 = torch's default). 1 by default: the small
    networks gain little from more, and OpenMP threads slow down badly on a busy machine."""
    malloc_threshold_mb: int = 1024
    """glibc's mmap and trim thresholds, MiB, raised when training starts (``mallopt``,
    ``agents.allocator``): freed blocks below them are reused instead of unmapped, which
    makes large-batch updates 1.5x or more faster and changes no result; process-wide.
    0 = leave glibc's defaults; ignored where the C library is not glibc."""
    validation_days: int = 0
    """Model selection at the end of training (0 = off): the final policy and the untrained
    one (step 0; with a residual on a rule, the rule itself, before any cloning) play this
    many training days, spread evenly over the training split and none of them an imitation
    demonstration day (:func:`validation_days`); where the untrained policy has the higher
    mean ``episodic_return`` the run ends with its parameters (``checkpoint_latest.pt``,
    ``final_eval``), so that it never returns a policy that did worse than where it started
    on those days. Test days are never used. ``metrics.json``'s ``validation`` and the
    ``validation/*`` scalars record both returns and which policy was kept."""
    validation_every: int = 0
    """Env-steps between validations during training (0 = only the final policy against the
    untrained one; needs ``validation_days``). Each validation plays the policy of that
    moment on the validation days; the run ends with the best of the untrained policy, these
    and the final one (the final one on a tie, an earlier one only where it is strictly
    better than every later candidate so far): early stopping on training days that the run
    did not clone, never on test days. What is trained is the same either way."""
    validation_residual_scales: list[float] = field(default_factory=list)
    """A line search on the validation days at the end of training, for a residual policy
    (``<algo>.residual: true``; needs ``validation_days``; empty = off): the learned residual
    of the best learned policy (the final one, or the best one validated during training
    where that did strictly better) is multiplied by each of these scales (``output = rule
    + scale * residual``, the actor's output layer scaled) and played on the validation days
    too. The run ends with the best of every candidate (untrained, validated during
    training, final, scaled), the final one on a tie. A scale below 1 steps only part of the
    way from the rule to the learned policy, which wins where the full step overshoots (a
    conservative step, as in Kakade and Langford 2002); values > 0, not 1 (the unscaled
    policy is always a candidate), without repeats. What is trained is the same either way."""
    eval_reference: str = "auto"
    """Score each evaluation against references on the same days: ``eval/oracle_share`` (share
    of this oracle's savings against no P2P captured) and ``eval/gain_vs_best_rule`` (the best
    rule-based baseline's community cost minus the policy's, currency per episode, that is
    per day with the default one-day episodes; > 0 = the policy wins). ``oracle`` or
    ``oracle_network``; ``auto`` = the task's reference oracle (``envs.tasks``) when
    ``env.task`` names one, else ``oracle``; ``none`` = no references.
    The references are evaluated once per run (cached, ``train.py``)."""

    def __post_init__(self) -> None:
        check(self.total_steps >= 1, "total_steps", ">= 1", self.total_steps)
        check(1 <= self.n_envs <= MAX_ENVS, "n_envs", f"an integer in [1, {MAX_ENVS}]",
              self.n_envs)
        check(self.eval_every >= 0, "eval_every", ">= 0", self.eval_every)
        check(self.eval_episodes >= 0, "eval_episodes", ">= 0 (0: no evaluations)",
              self.eval_episodes)
        check(self.eval_episodes > 0 or self.eval_every == 0, "eval_every",
              "0 with train.eval_episodes=0 (no evaluations to run every eval_every "
              "env-steps)", self.eval_every)
        check(self.checkpoint_every >= 0, "checkpoint_every", ">= 0", self.checkpoint_every)
        check(0.0 <= self.checkpoint_minutes < float("inf"), "checkpoint_minutes",
              "a finite number of minutes >= 0", self.checkpoint_minutes)
        check(self.device.split(":")[0] in ("cpu", "cuda", "mps"), "device",
              "cpu, cuda, cuda:N or mps", self.device)
        check(self.torch_threads >= 0, "torch_threads", ">= 0", self.torch_threads)
        check(0 <= self.malloc_threshold_mb <= MAX_THRESHOLD_MB, "malloc_threshold_mb",
              f"an integer number of MiB in [0, {MAX_THRESHOLD_MB}] (0 = glibc's defaults)",
              self.malloc_threshold_mb)
        check(self.eval_reference in EVAL_REFERENCES, "eval_reference",
              f"one of {EVAL_REFERENCES}", self.eval_reference)
        check(self.validation_days >= 0, "validation_days", ">= 0 (0: off)",
              self.validation_days)
        check(self.validation_every >= 0, "validation_every", ">= 0 (0: at the end only)",
              self.validation_every)
        check(self.validation_days > 0 or self.validation_every == 0, "validation_every",
              "0 with train.validation_days=0 (no validation days to play every "
              "validation_every env-steps)", self.validation_every)
        scales = self.validation_residual_scales
        check(isinstance(scales, list) and all(
            isinstance(scale, (int, float)) and not isinstance(scale, bool)
            and 0.0 < scale < float("inf") and scale != 1.0 for scale in scales)
              and len(set(scales)) == len(scales), "validation_residual_scales",
              "a list of distinct finite numbers > 0 other than 1 (the unscaled policy is "
              "always a candidate)", scales)
        check(self.validation_days > 0 or not scales, "validation_residual_scales",
              "[] with train.validation_days=0 (no validation days to compare the scales on)",
              scales)


@dataclass(frozen=True)
class _RunHeader:
    """Top-level scalar keys of a run config."""

    algo: str
    """Registry name of the algorithm (``agents/registry.py``)."""
    seed: int = 1
    """Seed of the run's generator and of the environments (env b uses seed + b)."""
    name: str = "default"
    """Prefix of the run folder ``{name}__{algo}__{seed}__{time}``: letters, digits, ``-``,
    ``_`` and ``.`` (no path separators, so the folder stays inside ``--logdir``)."""

    def __post_init__(self) -> None:
        check(is_folder_name(self.name), "name", FOLDER_NAME_RULE, self.name)
        check(0 <= self.seed <= SEED_MAX, "seed", f"an integer in [0, {SEED_MAX}]", self.seed)


@dataclass(frozen=True)
class RunConfig:
    """A fully resolved and validated run: algorithm, seed, environment, training and the
    algorithm's hyperparameters (an instance of its ``Config``)."""

    algo: str
    seed: int
    name: str
    env: EnvConfig
    train: TrainConfig
    hyperparameters: Any

    def to_dict(self) -> dict[str, Any]:
        """The YAML layout: hyperparameters under the key named by ``algo``."""
        return {"algo": self.algo, "seed": self.seed, "name": self.name,
                "env": to_dict(self.env), "train": to_dict(self.train),
                self.algo: to_dict(self.hyperparameters)}


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def find_config_file(path: str | Path) -> Path:
    """``path`` as given if it exists, else relative to :data:`REPO_ROOT`."""
    path = Path(path)
    if path.is_file() or path.is_absolute():
        return path
    candidate = REPO_ROOT / path
    return candidate if candidate.is_file() else path


_RUN_SET_ENV_KEYS = {"n_envs": "train.n_envs", "device": "train.device", "seed": "seed"}


def resolve_env(env: str | dict[str, Any] | None, train: TrainConfig, seed: int) -> EnvConfig:
    """The run's environment from the ``env`` section.

    ``env`` is a path to an env YAML (``configs/env/default.yaml``), or a mapping of
    ``EnvConfig`` keys, or a mapping with ``base: <env YAML>`` plus keys that override the
    base's (merged section by section; lists are replaced). Missing keys take
    ``EnvConfig``'s defaults. ``task: <name>`` (``envs.tasks``, e.g. ``Peak-Storage``) takes
    the task's env YAML as the base, in place of any ``base`` (``train.py --task``); the
    other inline keys still override it (dqn's discrete action type, say). ``n_envs``,
    ``device`` and ``seed`` belong to the run (``train.n_envs``, ``train.device``, ``seed``):
    they replace the base file's values, and setting them inline to anything else is an error.
    """
    if env is None:
        env = {}
    if isinstance(env, str | Path):
        env = {"base": str(env)}
    if not isinstance(env, dict):
        raise ConfigError(f"config key 'env': got {env!r}; allowed: a path to an env YAML or "
                          f"a mapping of env keys (optionally with 'base: <env YAML>')")
    inline = dict(env)
    base = inline.pop("base", None)
    if "task" in inline:  # the task's env YAML replaces the base
        base = str(get_task(inline.pop("task"), where="config key 'env.task'").config_path)
    run_values = {"n_envs": train.n_envs, "device": train.device, "seed": seed}
    for key, owner in _RUN_SET_ENV_KEYS.items():
        if key in inline:
            check(inline[key] == run_values[key], f"env.{key}",
                  f"the run's {owner} ({run_values[key]!r}); set {owner} instead", inline[key])
    if base is not None:
        check(isinstance(base, str), "env.base", "a path to an env YAML", base)
        data = _deep_merge(load_yaml(find_config_file(base)), inline)
    else:
        data = inline
    data.update(run_values)
    config = from_dict(EnvConfig, data, prefix="env.")
    require_rule_operator(config.storage, "train.py's algorithms")
    return config


def build_run_config(source: str | Path | dict[str, Any],
                     overrides: list[str] | dict[str, Any] | None = None) -> RunConfig:
    """Type and validate a run config from a YAML path or a dict plus dotted overrides
    (``["train.total_steps=20000", "mappo.actor_lr=1e-3"]``).

    Raises :class:`~envs.config.ConfigError` naming the first unknown key or bad value.
    """
    data = load_yaml(find_config_file(source)) if isinstance(source, str | Path) else source
    if not isinstance(data, dict):
        raise ConfigError(f"a run config must be a mapping, got {type(data).__name__}")
    data = dict(data)
    if isinstance(data.get("env"), str):  # so that env.<key>=... overrides merge into it
        data["env"] = {"base": data["env"]}
    data = apply_overrides(data, overrides)
    header = from_dict(_RunHeader, {key: data[key] for key in ("algo", "seed", "name")
                                    if key in data})
    algorithm = registry.get(header.algo)
    allowed = ["algo", "seed", "name", "env", "train", header.algo]
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        hint = (f" (a section for algorithm '{unknown[0]}', but algo is '{header.algo}')"
                if unknown[0] in registry.names() else "")
        raise ConfigError(f"unknown config key '{unknown[0]}'{hint}; allowed keys in "
                          f"'<root>': {', '.join(allowed)}")
    train = from_dict(TrainConfig, data.get("train"), prefix="train.")
    hyperparameters = from_dict(algorithm.Config, data.get(header.algo),
                                prefix=f"{header.algo}.")
    env_section = data.get("env")
    env = resolve_env(env_section, train, header.seed)
    if train.eval_reference == "auto":  # the resolved config records what was used
        task = env_section.get("task") if isinstance(env_section, dict) else None
        train = dataclasses.replace(
            train, eval_reference=get_task(task).oracle if task is not None else "oracle")
    n_test_days = len(day_split(env.episode.test_every)[1])
    check(n_test_days > 0, "env.episode.test_every",
          "an integer >= 2 (evaluation needs held-out test days)", env.episode.test_every)
    check(train.eval_episodes <= n_test_days, "train.eval_episodes",
          f"at most the {n_test_days} test days of env.episode.test_every="
          f"{env.episode.test_every}", train.eval_episodes)
    if train.validation_residual_scales and not getattr(hyperparameters, "residual", False):
        residual = [name for name in registry.names() if "residual" in {
            item.name for item in dataclasses.fields(registry.get(name).Config)}]
        raise ConfigError(
            f"config key 'train.validation_residual_scales': got "
            f"{train.validation_residual_scales}; allowed: [] unless the policy is a residual "
            f"on a rule (<algo>.residual: true with env.observation.rule, algo one of "
            f"{', '.join(residual)})")
    config = RunConfig(header.algo, header.seed, header.name, env, train, hyperparameters)
    if train.validation_days:
        n_days = len(_validation_candidates(config))
        check(train.validation_days <= n_days, "train.validation_days",
              f"at most the {n_days} training days of env.episode.test_every="
              f"{env.episode.test_every} that are not imitation demonstration days",
              train.validation_days)
    return config


def dump_run_config(config: RunConfig, header: str = "") -> str:
    """The resolved config as YAML text (``header`` lines are prefixed as comments)."""
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    return comment + yaml.safe_dump(config.to_dict(), sort_keys=False)


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """The run's own generator (no global seeding anywhere)."""
    return torch.Generator(device=device).manual_seed(seed)


def _env_on(config: RunConfig, days: str, n_envs: int) -> EnvConfig:
    """The training environment on the ``days`` split, ``n_envs`` environments."""
    episode = dataclasses.replace(config.env.episode, days=days)
    return dataclasses.replace(config.env, episode=episode, n_envs=n_envs)


def _spread(days: Sequence[int], n_days: int) -> list[int]:
    """``n_days`` of ``days`` spread evenly over them, first and last included."""
    index = np.linspace(0, len(days) - 1, n_days).round().astype(int)
    return [int(days[i]) for i in index]


def eval_env_config(config: RunConfig) -> EnvConfig:
    """The evaluation environment: the training one on the held-out test days, one
    environment per evaluation episode."""
    return _env_on(config, "test", config.train.eval_episodes)


def _validation_candidates(config: RunConfig) -> list[int]:
    """Training days of ``config`` that are not among its imitation demonstrations."""
    from agents.imitation import training_days  # imports torch networks; only when used

    imitation = getattr(config.hyperparameters, "imitation", None)
    demonstrated = set(training_days(config.env, imitation.days)
                       if imitation is not None and imitation.days else [])
    return [int(day) for day in day_split(config.env.episode.test_every)[0]
            if int(day) not in demonstrated]


def validation_days(config: RunConfig) -> list[int]:
    """``train.validation_days`` days of the training split spread evenly over it, none of
    them a day the algorithm's ``imitation`` clones (always the same ones for a config)."""
    return _spread(_validation_candidates(config), config.train.validation_days)


def validation_env_config(config: RunConfig) -> EnvConfig:
    """The environment of ``train.validation_days``: the training one, one environment per
    validation day."""
    return _env_on(config, "train", config.train.validation_days)


def evaluation_days(env_config: EnvConfig, n_episodes: int) -> list[int]:
    """``n_episodes`` test days spread evenly over the test split (always the same ones)."""
    return _spread(day_split(env_config.episode.test_every)[1], n_episodes)
