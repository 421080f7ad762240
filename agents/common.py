"""The shared base of peergrid's learning algorithms: run config, rollout over the batched
core, evaluation, metrics and checkpoints. ``train.py`` drives any algorithm through it.

Contract of an algorithm module ``agents/<algo>.py``
-----------------------------------------------------
It defines one :class:`Algorithm` subclass, exposes it as the module attribute ``ALGORITHM``,
and is named in ``agents/registry.py`` (one line). The subclass provides:

- ``name``: the registry name, also the YAML section holding its hyperparameters;
- ``Config``: a frozen ``@dataclass`` of every hyperparameter, each with a default and a
  one-line docstring (validated by ``envs.config.from_dict``: unknown keys are errors);
- ``__init__(config, spec, train, generator)``: build networks and optimisers for the
  environment described by ``spec`` (:class:`EnvSpec`); every random draw (initialisation,
  exploration, minibatch order, replay sampling) comes from ``generator``, the run's own
  ``torch.Generator`` (never torch's global RNG: build layers with ``agents.networks``);
- ``act(obs [B, N, obs_dim], state [B, state_dim], deterministic) -> actions``: actions the
  core accepts: continuous ``[B, N, 2]`` with battery in [-1, 1] and price in [0, 1] (map
  with :func:`squash_actions` or :func:`symmetric_to_env`), discrete ``[B, N]`` int64;
  ``deterministic=True`` is used for evaluation, on a core whose B differs from training's,
  so ``act`` must work for any B and must not touch training state;
- ``iterate(collector) -> dict[str, float]``: one training iteration: step the environments
  through ``collector.step(actions)`` as many times as the algorithm wants (its rollout or
  its update interval), update, and return scalars keyed by their full TensorBoard tag
  (``losses/value_loss``, ``charts/learning_rate``, ...). ``train.py`` logs them at
  ``collector.global_step``, logs the episode metrics the collector saw, evaluates and
  checkpoints between iterations, and stops once ``train.total_steps`` is reached;
- ``checkpoint_attributes``: names of attributes with ``state_dict``/``load_state_dict``
  (modules, optimisers, normalisers, replay buffers) that make up the algorithm's state.
  Override :meth:`Algorithm.state_dict` / :meth:`Algorithm.load_state_dict` if more is
  needed. Everything that influences later iterations must be in it: a resumed run has to
  reproduce the uninterrupted one exactly.

What it gets: :class:`EnvSpec` (sizes, action type), :class:`TrainConfig` (``total_steps``
for schedules), the run's generator, and a :class:`Collector` whose ``step`` returns a
:class:`Transition` (obs, state, actions, reward, next_obs/next_state with the final
observation where an episode ended, terminated, truncated) and keeps ``obs``, ``state``,
``global_step`` (env-steps) and the episode metrics. Shared pieces: ``agents.networks``
(MLPs initialised from a generator, :class:`~agents.networks.RunningMeanStd`),
``agents.buffers`` (on-policy rollout buffer with GAE, replay buffer). Off-policy algorithms
call ``collector.step`` a few times per ``iterate`` and add each transition to a
``ReplayBuffer``; a library with its own loop (stable-baselines3) is driven through a
``VecEnv`` whose ``step_wait`` calls ``collector.step`` (layout as in
``envs.sb3_vec_env``), ``model.learn`` running a fixed number of steps per ``iterate``.

Also here: :func:`evaluate_policy` (deterministic episodes on fixed days), :func:`metric_scalars`
(the ``charts/`` and ``eval/`` scalars, from ``envs.metrics``), :func:`load_policy` (a trained
algorithm from a checkpoint), atomic file writes.

Run config (one YAML per algorithm, ``configs/<algo>.yaml``)
-------------------------------------------------------------
``algo`` (registry name), ``seed``, ``name`` (run-folder prefix), ``env`` (see
:func:`resolve_env`), ``train`` (:class:`TrainConfig`), and the section named after ``algo``
(its ``Config``). :func:`build_run_config` types and validates it; the resolved config
(``RunConfig.to_dict``) is what ``train.py`` logs as ``config.yaml`` and what ran.

Steps: ``global_step`` and ``train.total_steps`` count env-steps: one env-step advances one
community by 15 minutes, so a batched step of the core is ``n_envs`` env-steps and
``n_envs * n_agents`` agent-steps. Throughput (``charts/SPS``) is in agent-steps per second.
"""

from __future__ import annotations

import abc
import copy
import dataclasses
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
import yaml
from torch import Tensor

from envs.config import ConfigError, EnvConfig, check, from_dict, load_yaml, to_dict
from envs.data import day_split
from envs.metrics import EpisodeAccumulator, EpisodeTotals, concat_totals, summary

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The repository root: relative env YAML paths are looked up here when not found from the
working directory."""

CHECKPOINT_FORMAT = 1


# --------------------------------------------------------------------------------------------
# Run config
# --------------------------------------------------------------------------------------------


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
    """Test days per evaluation, spread evenly over the test split (one episode each)."""
    checkpoint_every: int = 100_000
    """Env-steps between ``checkpoint_latest.pt`` writes (0 = only at the end)."""
    device: str = "cpu"
    """Torch device of the environments and networks (sets the env's ``device``)."""
    torch_threads: int = 1
    """``torch.set_num_threads`` for the run (0 = torch's default). 1 by default: the small
    networks gain little from more, and OpenMP threads slow down badly on a busy machine."""

    def __post_init__(self) -> None:
        check(self.total_steps >= 1, "total_steps", ">= 1", self.total_steps)
        check(self.n_envs >= 1, "n_envs", ">= 1", self.n_envs)
        check(self.eval_every >= 0, "eval_every", ">= 0", self.eval_every)
        check(self.eval_episodes >= 1, "eval_episodes", ">= 1", self.eval_episodes)
        check(self.checkpoint_every >= 0, "checkpoint_every", ">= 0", self.checkpoint_every)
        check(self.device.split(":")[0] in ("cpu", "cuda", "mps"), "device",
              "cpu, cuda, cuda:N or mps", self.device)
        check(self.torch_threads >= 0, "torch_threads", ">= 0", self.torch_threads)


@dataclass(frozen=True)
class _RunHeader:
    """Top-level scalar keys of a run config."""

    algo: str
    """Registry name of the algorithm (``agents/registry.py``)."""
    seed: int = 1
    """Seed of the run's generator and of the environments (env b uses seed + b)."""
    name: str = "default"
    """Prefix of the run folder ``{name}__{algo}__{seed}__{time}``."""


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
    ``EnvConfig``'s defaults. ``n_envs``, ``device`` and ``seed`` belong to the run
    (``train.n_envs``, ``train.device``, ``seed``): they replace the base file's values, and
    setting them inline to anything else is an error.
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
    return from_dict(EnvConfig, data, prefix="env.")


def build_run_config(source: str | Path | dict[str, Any],
                     overrides: list[str] | dict[str, Any] | None = None) -> RunConfig:
    """Type and validate a run config from a YAML path or a dict plus dotted overrides
    (``["train.total_steps=20000", "mappo.actor_lr=1e-3"]``).

    Raises :class:`~envs.config.ConfigError` naming the first unknown key or bad value.
    """
    from agents import registry
    from envs.config import apply_overrides

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
    env = resolve_env(data.get("env"), train, header.seed)
    n_test_days = len(day_split(env.episode.test_every)[1])
    check(n_test_days > 0, "env.episode.test_every",
          "an integer >= 2 (evaluation needs held-out test days)", env.episode.test_every)
    check(train.eval_episodes <= n_test_days, "train.eval_episodes",
          f"at most the {n_test_days} test days of env.episode.test_every="
          f"{env.episode.test_every}", train.eval_episodes)
    return RunConfig(header.algo, header.seed, header.name, env, train, hyperparameters)


def dump_run_config(config: RunConfig, header: str = "") -> str:
    """The resolved config as YAML text (``header`` lines are prefixed as comments)."""
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    return comment + yaml.safe_dump(config.to_dict(), sort_keys=False)


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """The run's own generator (no global seeding anywhere)."""
    return torch.Generator(device=device).manual_seed(seed)


def eval_env_config(config: RunConfig) -> EnvConfig:
    """The evaluation environment: the training one on the held-out test days, one
    environment per evaluation episode."""
    episode = dataclasses.replace(config.env.episode, days="test")
    return dataclasses.replace(config.env, episode=episode, n_envs=config.train.eval_episodes)


def evaluation_days(env_config: EnvConfig, n_episodes: int) -> list[int]:
    """``n_episodes`` test days spread evenly over the test split (always the same ones)."""
    test_days = day_split(env_config.episode.test_every)[1]
    index = np.linspace(0, len(test_days) - 1, n_episodes).round().astype(int)
    return [int(day) for day in test_days[index]]


# --------------------------------------------------------------------------------------------
# Environment description, actions, rollout
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnvSpec:
    """What an algorithm needs to know about the batched core."""

    n_envs: int
    n_agents: int
    obs_dim: int
    state_dim: int
    action_type: str
    """``continuous`` (``[B, N, action_dim]``) or ``discrete`` (``[B, N]`` indices)."""
    n_discrete_actions: int
    """Size of the discrete action set (battery_levels * price_levels)."""
    episode_steps: int
    agent_names: tuple[str, ...]
    device: torch.device
    action_dim: int = 2
    """Continuous action size: [battery fraction in [-1, 1], price fraction in [0, 1]]."""

    @classmethod
    def from_env(cls, env: Any) -> EnvSpec:
        return cls(env.n_envs, env.n_agents, env.obs_dim, env.state_dim,
                   env.config.action.type, env.n_discrete_actions, env.episode_steps,
                   tuple(env.agent_names), env.device)


def linear_schedule(start: float, end: float, duration: float, step: float) -> float:
    """``start`` moving linearly to ``end`` over ``duration`` steps, then ``end``."""
    return start + (end - start) * min(step / max(duration, 1e-9), 1.0)


def epsilon_greedy(greedy: Tensor, n_actions: int, epsilon: float,
                   generator: torch.Generator) -> Tensor:
    """``greedy`` actions (any shape, int64), each replaced with probability ``epsilon`` by
    a uniform random one of ``n_actions``; all draws from ``generator``."""
    device = generator.device
    explore = torch.rand(greedy.shape, generator=generator, device=device)
    random_action = torch.randint(n_actions, greedy.shape, generator=generator, device=device)
    return torch.where(explore.to(greedy.device) < epsilon, random_action.to(greedy.device),
                       greedy)


def symmetric_to_env(action: Tensor) -> Tensor:
    """Map symmetric actions in [-1, 1]^2 ``[..., 2]`` to the core's [battery in [-1, 1],
    price in [0, 1]] (price = (a + 1) / 2), clamping to the bounds."""
    action = action.clamp(-1.0, 1.0)
    return torch.stack([action[..., 0], 0.5 * (action[..., 1] + 1.0)], dim=-1)


def squash_actions(raw: Tensor, how: str) -> Tensor:
    """Map unbounded policy outputs ``[..., 2]`` to the core's action box: ``tanh``
    squashes, ``clip`` clamps to [-1, 1]; then :func:`symmetric_to_env`."""
    return symmetric_to_env(torch.tanh(raw) if how == "tanh" else raw)


@dataclass
class Transition:
    """One batched step as seen by an algorithm. Per agent ``[B, N, ...]``: ``obs``,
    ``action``, ``reward``, ``next_obs``; per env ``[B, ...]``: ``state``, ``next_state``,
    ``terminated``, ``truncated``. ``next_obs``/``next_state`` are the final ones where an
    episode ended (the collector's ``obs`` already shows the reset environment)."""

    obs: Tensor
    state: Tensor
    action: Tensor
    reward: Tensor
    next_obs: Tensor
    next_state: Tensor
    terminated: Tensor
    truncated: Tensor
    info: dict[str, Tensor] = field(repr=False)


_CORE_STATE = ("env_seed", "episode_count", "day", "step_of_day", "soc_kwh", "last_price",
               "last_voltage")
"""Mutable tensors of ``envs.core.BatchedP2PEnv`` (everything else is fixed at construction;
its random draws are counter-based, keyed by ``env_seed`` and ``episode_count``)."""


def _clone(value: Any, device: torch.device | None = None) -> Any:
    """A copy of nested dicts/lists of tensors (tensors cloned, or moved to ``device``)."""
    if isinstance(value, Tensor):
        return value.clone() if device is None else value.to(device, copy=True)
    if isinstance(value, dict):
        return {key: _clone(item, device) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_clone(item, device) for item in value)
    return copy.deepcopy(value)


class Collector:
    """Steps the batched core for an algorithm and keeps what the trainer logs.

    Holds the current ``obs [B, N, obs_dim]`` and ``state [B, state_dim]``, the number of
    env-steps taken (``global_step``) and the metrics of finished episodes (measured returns,
    never buffer estimates), handed to the trainer by :meth:`pop_episodes`.
    """

    def __init__(self, env: Any, seed: int) -> None:
        self.env = env
        self.obs, _ = env.reset(seed=seed)
        self.state = env.state()
        self.global_step = 0
        self.accumulator = EpisodeAccumulator(env.n_envs, env.n_agents, device=env.device)
        self._finished: list[EpisodeTotals] = []

    def step(self, actions: Tensor) -> Transition:
        """Step every environment with ``actions`` and return the transition."""
        obs, reward, terminated, truncated, info = self.env.step(actions)
        state = self.env.state()
        next_obs, next_state = obs, state
        if "final_observation" in info:
            done = info["done"]
            next_obs = torch.where(done[:, None, None], info["final_observation"], obs)
            next_state = torch.where(done[:, None], info["final_state"], state)
        totals = self.accumulator.update(info, reward)
        if totals is not None:
            self._finished.append(totals)
        transition = Transition(self.obs, self.state, actions, reward, next_obs, next_state,
                                terminated, truncated, info)
        self.obs, self.state = obs, state
        self.global_step += self.env.n_envs
        return transition

    def pop_episodes(self) -> EpisodeTotals | None:
        """Totals of the episodes finished since the last call (None if none)."""
        if not self._finished:
            return None
        finished, self._finished = self._finished, []
        return concat_totals(finished)

    def state_dict(self) -> dict[str, Any]:
        env = self.env
        network = getattr(env.network, "state_dict", None)
        return {
            "core": {name: getattr(env, name).clone() for name in _CORE_STATE},
            "core_seeded": env._seeded,
            "network": network() if callable(network) else None,
            "obs": self.obs.clone(), "state": self.state.clone(),
            "global_step": self.global_step,
            "accumulator": _clone(vars(self.accumulator)),  # sums of running episodes
            "finished": [{f.name: getattr(totals, f.name) for f in dataclasses.fields(totals)}
                         for totals in self._finished],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        env = self.env
        state = _clone(state, env.device)
        for name in _CORE_STATE:
            setattr(env, name, state["core"][name])
        env._seeded = state["core_seeded"]
        if state["network"] is not None:
            env.network.load_state_dict(state["network"])
        self.obs, self.state = state["obs"], state["state"]
        self.global_step = int(state["global_step"])
        for name, value in state["accumulator"].items():
            setattr(self.accumulator, name, value)
        self._finished = [EpisodeTotals(**item) for item in state["finished"]]


# --------------------------------------------------------------------------------------------
# Algorithms
# --------------------------------------------------------------------------------------------


class Policy(Protocol):
    """Anything that acts in the batched core (algorithms, baselines)."""

    def act(self, obs: Tensor, state: Tensor, deterministic: bool = False) -> Tensor: ...


class Algorithm(abc.ABC):
    """Base of the learning algorithms (the contract is in the module docstring)."""

    name: ClassVar[str]
    """Registry name and YAML section of the hyperparameters."""
    Config: ClassVar[type]
    """Frozen dataclass of the hyperparameters."""
    checkpoint_attributes: ClassVar[tuple[str, ...]] = ()
    """Attributes with ``state_dict``/``load_state_dict`` saved in checkpoints."""

    def __init__(self, config: Any, spec: EnvSpec, train: TrainConfig,
                 generator: torch.Generator) -> None:
        self.config = config
        self.spec = spec
        self.train_config = train
        self.generator = generator
        self.device = torch.device(train.device)

    @abc.abstractmethod
    def act(self, obs: Tensor, state: Tensor, deterministic: bool = False) -> Tensor:
        """Actions for ``obs [B, N, obs_dim]`` (and ``state [B, state_dim]``) in the core's
        format; ``deterministic`` for evaluation."""

    @abc.abstractmethod
    def iterate(self, collector: Collector) -> dict[str, float]:
        """Collect experience through ``collector`` and update; return scalars by tag."""

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name).state_dict() for name in self.checkpoint_attributes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self.checkpoint_attributes:
            getattr(self, name).load_state_dict(state[name])


# --------------------------------------------------------------------------------------------
# Evaluation and metrics
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_policy(policy: Policy, env: Any, days: list[int], seed: int,
                    deterministic: bool = True) -> EpisodeTotals:
    """One episode per environment of ``env`` (``env.n_envs == len(days)``), starting on
    ``days``, with ``policy``'s (deterministic) actions; returns the episodes' totals."""
    obs, _ = env.reset(seed=seed, days=days)
    accumulator = EpisodeAccumulator(env.n_envs, env.n_agents, device=env.device)
    totals = None
    for _ in range(env.episode_steps):
        actions = policy.act(obs, env.state(), deterministic=deterministic)
        obs, reward, _, _, info = env.step(actions)
        totals = accumulator.update(info, reward)
    assert totals is not None and len(totals) == env.n_envs
    return totals


_TAG_NAMES = {"p2p_volume_kwh": "p2p_volume"}


def metric_scalars(totals: EpisodeTotals) -> dict[str, float]:
    """Mean over the finished episodes of every ``envs.metrics.summary`` metric, keyed by
    its TensorBoard name (``episodic_return`` is the mean per agent; metrics undefined in
    every episode, e.g. the clearing price without trades, are left out)."""
    scalars = {}
    for key, values in summary(totals).items():
        values = values[~torch.isnan(values)]
        if values.numel():
            scalars[_TAG_NAMES.get(key, key)] = float(values.double().mean())
    return scalars


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _atomic_write(path: Path, write: Any) -> None:
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                         suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then ``os.replace``."""
    _atomic_write(Path(path), lambda file: torch.save(obj, file))


def atomic_write_text(text: str, path: str | Path) -> None:
    """Write ``text`` to a temporary file beside ``path``, then ``os.replace``."""
    _atomic_write(Path(path), lambda file: file.write(text.encode()))


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint written by ``train.py`` (a run folder means its latest checkpoint)."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint_latest.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    checkpoint = torch.load(path, map_location=device, weights_only=True)
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: checkpoint format {checkpoint.get('format')!r}, expected "
                         f"{CHECKPOINT_FORMAT}")
    return checkpoint


def load_policy(path: str | Path, n_envs: int = 1, device: str = "cpu"
                ) -> tuple[RunConfig, Algorithm]:
    """The trained algorithm of a checkpoint (or run folder), ready to ``act`` on a core with
    ``n_envs`` environments on ``device``; returns ``(run config, algorithm)``."""
    from agents import registry

    checkpoint = load_checkpoint(path, device)
    data = copy.deepcopy(checkpoint["config"])
    data["train"]["n_envs"] = n_envs
    data["train"]["device"] = device
    data["env"].update(n_envs=n_envs, device=device)
    config = build_run_config(data)
    cls = registry.get(config.algo)
    spec_env = _spec_of(config.env)
    algorithm = cls(config.hyperparameters, spec_env, config.train,
                    make_generator(config.seed, device))
    algorithm.load_state_dict(checkpoint["algorithm"])
    return config, algorithm


def _spec_of(env_config: EnvConfig) -> EnvSpec:
    from envs.core import BatchedP2PEnv

    return EnvSpec.from_env(BatchedP2PEnv(env_config))
