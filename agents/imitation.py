"""Demonstrations of the perfect-foresight optimum, for behaviour cloning before RL.

"Imitate the optimum, then fine-tune with RL" (Wohlgenannt et al. 2026 report imitation of a
MILP reaching 92 % of the optimum and RL fine-tuning 93 %, against 68 % for the best
heuristic, under dynamic prices). :func:`oracle_demonstrations` solves the oracle LP
(``agents.baselines``'s ``oracle``) on training days, replays each episode's optimal battery
schedule (from that start day, ``episode.length_days`` days planned as one) in the batched
core, and returns the observations the agents saw with the battery
action the optimum took: ``(charge - discharge) / (battery_kw * dt)``, the core's battery
fraction, 0 for agents without a battery. The price part is the tariff midpoint (the oracle
has no market).

Demonstrations depend only on the env config and the days, so they are cached in
``envs.data.cache_dir()/demonstrations`` (written atomically, keyed by a hash of both):
solving takes about a second per day on a 13-agent feeder.

:class:`ImitationConfig` is the ``imitation`` section of the algorithms that can clone
(``mappo.imitation``, ``ddpg.imitation``, ``maddpg.imitation``, ``dqn.imitation``) and
:func:`clone` the one behaviour-cloning loop they share.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from agents.networks import adam
from envs.config import ConfigError, EnvConfig, check, to_dict
from envs.data import cache_dir, day_split
from envs.files import atomic_write_bytes

__all__ = ["CACHE_VERSION", "IMITATED_ORACLES", "TIE_BREAKS", "ImitationConfig",
           "check_rule_feature", "clone", "demonstration_batch", "demonstration_request",
           "demonstrations", "demonstrations_path", "imitated_oracle", "imitation_loss",
           "oracle_demonstrations", "solve_demonstration_sets", "solve_schedules",
           "training_days"]

CACHE_VERSION = 1
IMITATED_ORACLES = ("auto", "oracle", "oracle_network", "oracle_household")
TIE_BREAKS = ("none", "greedy", "rule")
MIDPOINT = 0.5
"""Price fraction the clone is taught (the oracle has no market; the rules bid it too)."""


@dataclass(frozen=True)
class ImitationConfig:
    """Behaviour cloning of the perfect-foresight optimum before RL (the ``imitation``
    section of an algorithm's config)."""

    days: int = 0
    """Training days of demonstrations the actor regresses before the first rollout
    (0 = off)."""
    epochs: int = 30
    """Passes over the demonstrations."""
    lr: float = 1e-3
    """Adam learning rate of cloning (its own optimiser; the RL optimisers are untouched)."""
    minibatch: int = 512
    """Agent-steps per gradient step (rounded up to whole steps of every agent)."""
    oracle: str = "auto"
    """Which optimum to imitate: oracle, oracle_network (the feeder's linearised limits),
    oracle_household (each home alone), or auto: the run's reference oracle
    (``train.eval_reference``: ``oracle_network`` on the tasks whose limits bind), else
    oracle."""
    tie_break: str = "none"
    """Which of the optimal schedules to imitate. The LP has many (under a flat tariff which
    evening hour a battery covers and which home's battery covers it cost the same) and
    HiGHS returns an arbitrary vertex, full-power bursts no observation explains. ``none``:
    that vertex; ``greedy``: the one that avoids grid exchange as early as possible and lets
    each battery serve its own home first; ``rule``: the one nearest to what the rule in the
    observation (``env.observation.rule``) does on the day, so that a residual policy
    (``residual``) learns only where the optimum departs from its rule
    (``agents.oracle.solve_oracle``'s ``tie_break`` and ``tie_break_reference_kwh``)."""

    def __post_init__(self) -> None:
        check(0 <= self.days <= 366, "days", "an integer in [0, 366]", self.days)
        check(self.epochs >= 1, "epochs", ">= 1", self.epochs)
        check(self.lr > 0.0, "lr", "> 0", self.lr)
        check(self.minibatch >= 1, "minibatch", ">= 1", self.minibatch)
        check(self.oracle in IMITATED_ORACLES, "oracle", f"one of {IMITATED_ORACLES}",
              self.oracle)
        check(self.tie_break in TIE_BREAKS, "tie_break", f"one of {TIE_BREAKS}",
              self.tie_break)


def check_rule_feature(config: ImitationConfig, feature_names: Sequence[str], key: str) -> None:
    """Raise ConfigError naming ``key`` (the algorithm's ``imitation`` section) when
    ``tie_break: rule`` has no rule in the observation to break ties towards."""
    if config.days and config.tie_break == "rule" and "rule_battery" not in feature_names:
        raise ConfigError(f"config key '{key}.tie_break': got 'rule'; allowed only with a rule "
                          f"in the observation (set env.observation.rule)")


def training_days(config: EnvConfig, n_days: int) -> list[int]:
    """``n_days`` training days (the config's split) spread evenly over the year."""
    days = day_split(config.episode.test_every)[0]
    index = np.linspace(0, len(days) - 1, min(n_days, len(days))).round().astype(int)
    return [int(day) for day in days[np.unique(index)]]


def _cache_key(config: EnvConfig, days: list[int], oracle: str) -> str:
    data = to_dict(dataclasses.replace(config, n_envs=1, device="cpu", seed=0))
    text = json.dumps({"config": data, "days": days, "oracle": oracle,
                       "version": CACHE_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _rule_schedules(env: Any, days: list[int]) -> np.ndarray:
    """``[D, T, N]`` AC kWh into each battery (< 0 out) when every agent follows the rule of
    ``env``'s ``observation.rule`` for the episode from each of ``days`` (in a core with
    ``len(days)`` environments, midpoint bids)."""
    from agents.actions import env_actions
    from envs import rules

    name = env.config.observation.rule
    env.reset(seed=0, days=days)
    energy = []
    for _ in range(env.episode_steps):
        battery = rules.rule_fraction(name, env)
        _, _, _, _, info = env.step(env_actions(battery, torch.full_like(battery, MIDPOINT),
                                                env))
        energy.append(info["battery_energy_kwh"].double().cpu().numpy())
    return np.stack(energy, axis=1)


def _references(config: EnvConfig, days: list[int], tie_break: str
                ) -> tuple[Any, list[np.ndarray | None]]:
    """The profiles of a core of ``config`` (to build its other cores from) and, per day of
    ``days``, the battery schedule ``[T, N]`` the ``rule`` tie-break keeps the optimum
    nearest to (:func:`_rule_schedules`, every day in one core), else None."""
    from envs.core import BatchedP2PEnv

    data = BatchedP2PEnv(dataclasses.replace(config, n_envs=1, device="cpu")).data
    if tie_break != "rule":
        return data, [None] * len(days)
    replay_config = dataclasses.replace(config, n_envs=len(days), device="cpu")
    return data, list(_rule_schedules(BatchedP2PEnv(replay_config, data), days))


def solve_schedules(config: EnvConfig, days: list[int], oracle: str, tie_break: str,
                    references: Sequence[np.ndarray | None], data: Any = None) -> np.ndarray:
    """``[D, T, N]`` kWh into each battery (< 0 out) of ``oracle``'s optimum for the episode
    from each of ``days`` (``references``: :func:`_references` of these days), one LP after
    another in a core of one environment: the part of :func:`oracle_demonstrations` that
    takes the time, and that :func:`solve_demonstration_sets` splits between processes (each
    day's LP is the same whichever process solves it, so the demonstrations are too).
    ``data``: the profiles of a core of ``config`` already built (else they are loaded)."""
    from agents.baselines import make_oracle
    from envs.core import BatchedP2PEnv

    solver_env = BatchedP2PEnv(dataclasses.replace(config, n_envs=1, device="cpu"), data)
    # One plan per episode (episode.length_days days from each start day).
    solver = make_oracle(oracle, tie_break=tie_break != "none")
    schedules = [solver.solve_episode(solver_env, day, reference)[0]
                 for day, reference in zip(days, references, strict=True)]
    return np.stack([(s.charge_kwh - s.discharge_kwh) for s in schedules])


def _replay(config: EnvConfig, days: list[int], battery_kwh: np.ndarray, data: Any
            ) -> dict[str, np.ndarray]:
    """The demonstrations of the optimal battery schedules ``battery_kwh [D, T, N]``
    (:func:`solve_schedules`): the fractions of full power, replayed from each of ``days`` in
    one core for the observations the agents saw."""
    from agents.actions import env_actions
    from envs.core import BatchedP2PEnv

    env = BatchedP2PEnv(dataclasses.replace(config, n_envs=len(days), device="cpu"), data)
    power = (env.battery_kw * env.dt_h).double().numpy()  # [N] kWh per step at full power
    fraction = np.where(power > 0, battery_kwh / np.where(power > 0, power, 1.0), 0.0)
    fraction = np.clip(fraction, -1.0, 1.0)
    obs, _ = env.reset(seed=0, days=days)
    observations = []
    for step in range(env.episode_steps):
        battery = torch.as_tensor(fraction[:, step], dtype=env.dtype)
        observations.append(obs.cpu().numpy())
        obs, *_ = env.step(env_actions(battery, torch.full_like(battery, 0.5), env))
    return {"obs": np.stack(observations, axis=1).astype(np.float32),  # [D, T, N, O]
            "battery": fraction.astype(np.float32)}  # [D, T, N]


def _solve(config: EnvConfig, days: list[int], oracle: str, tie_break: str
           ) -> dict[str, np.ndarray]:
    data, references = _references(config, days, tie_break)
    return _replay(config, days,
                   solve_schedules(config, days, oracle, tie_break, references, data), data)


def demonstrations_path(config: EnvConfig, n_days: int, oracle: str = "oracle",
                        tie_break: str = "none") -> Path:
    """The cache file of :func:`oracle_demonstrations` with these arguments (there once they
    have been solved on this machine)."""
    days = training_days(config, n_days)
    key = _cache_key(config, days, oracle if tie_break == "none" else f"{oracle}:{tie_break}")
    return cache_dir() / "demonstrations" / f"{key}.npz"


def demonstration_request(run_config: Any) -> tuple[EnvConfig, int, str, str] | None:
    """The arguments of :func:`oracle_demonstrations` that a run of ``run_config``
    (``agents.run_config.RunConfig``) clones from, or None when it clones nothing (no
    ``imitation`` section, or ``imitation.days`` 0)."""
    config = getattr(run_config.hyperparameters, "imitation", None)
    if not isinstance(config, ImitationConfig) or not config.days:
        return None
    return (run_config.env, config.days,
            imitated_oracle(config, run_config.train.eval_reference), config.tie_break)


def _check_request(config: EnvConfig, tie_break: str) -> None:
    if tie_break not in TIE_BREAKS:
        raise ConfigError(f"imitation.tie_break: got {tie_break!r}; allowed: {TIE_BREAKS}")
    if tie_break == "rule" and config.observation.rule == "none":
        raise ConfigError("config key 'imitation.tie_break': got 'rule'; allowed only with a "
                          "rule in the observation (set env.observation.rule)")


def _store(path: Path, data: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **data)
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError:
        pass  # a cache that cannot be written costs time, not results


def oracle_demonstrations(config: EnvConfig, n_days: int, oracle: str = "oracle",
                          tie_break: str = "none") -> tuple[Tensor, Tensor]:
    """``(obs [D, T, N, obs_dim], battery fraction [D, T, N])`` of the optimum of ``oracle``
    (which of its optimal schedules: ``tie_break``, :class:`ImitationConfig`) on ``n_days``
    training days of ``config`` (float32, CPU), from the cache when there."""
    _check_request(config, tie_break)
    days = training_days(config, n_days)
    path = demonstrations_path(config, n_days, oracle, tie_break)
    data: dict[str, Any] | None = None
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as stored:
                data = {key: stored[key] for key in ("obs", "battery")}
            if data["obs"].shape[:3] != data["battery"].shape or not all(
                    np.isfinite(value).all() for value in data.values()):
                data = None
        except Exception:  # a damaged cache is solved again
            data = None
    if data is None:
        data = _solve(config, days, oracle, tie_break)
        _store(path, data)
    return torch.as_tensor(data["obs"]), torch.as_tensor(data["battery"])


def _solve_part(config: EnvConfig, days: list[int], oracle: str, tie_break: str,
                references: list[np.ndarray | None]) -> np.ndarray:
    """:func:`solve_schedules` in a worker process of :func:`solve_demonstration_sets`."""
    torch.set_num_threads(1)
    return solve_schedules(config, days, oracle, tie_break, references)


def solve_demonstration_sets(requests: Sequence[tuple[EnvConfig, int, str, str]],
                             workers: int,
                             on_done: Callable[[int, float | Exception], None] | None = None
                             ) -> None:
    """Solve the demonstrations of ``requests`` (:func:`demonstration_request`s; each as
    :func:`oracle_demonstrations` would, cached ones again) into the cache, the days of every
    set split between ``workers`` spawned processes (one torch thread each): a set's LPs,
    a day each, take the time (up to half a minute a day on the 111-agent feeder), and
    solving whole sets side by side leaves processes idle while the largest one finishes.
    This process computes each set's tie-break references and, once its days are solved,
    replays them (:func:`_replay`) and writes the cache file: the same file, to the bit, as
    solving the set in one process (every day's LP has the same inputs). Sets are started in
    the order given. ``on_done(index, seconds)`` is called when the set ``requests[index]``
    is stored (seconds from its start), ``on_done(index, error)`` when it fails (the rest go
    on)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    report = on_done or (lambda index, outcome: None)
    sets: dict[int, dict[str, Any]] = {}
    pending: dict[Any, tuple[int, int]] = {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        try:
            for index, (config, n_days, oracle, tie_break) in enumerate(requests):
                start = time.perf_counter()
                try:
                    _check_request(config, tie_break)
                    days = training_days(config, n_days)
                    data, references = _references(config, days, tie_break)
                except Exception as error:
                    report(index, error)
                    continue
                chunks = [chunk.tolist() for chunk in
                          np.array_split(np.arange(len(days)), min(workers, len(days)))]
                sets[index] = {"start": start, "days": days, "data": data,
                               "parts": [None] * len(chunks)}
                for part, chunk in enumerate(chunks):
                    future = pool.submit(_solve_part, config, [days[i] for i in chunk], oracle,
                                         tie_break, [references[i] for i in chunk])
                    pending[future] = (index, part)
            for future in as_completed(pending):
                index, part = pending[future]
                solving = sets.get(index)
                if solving is None:  # failed already
                    continue
                try:
                    solving["parts"][part] = future.result()
                    if any(value is None for value in solving["parts"]):
                        continue
                    config, n_days, oracle, tie_break = requests[index]
                    data = _replay(config, solving["days"], np.concatenate(solving["parts"]),
                                   solving["data"])
                    _store(demonstrations_path(config, n_days, oracle, tie_break), data)
                except Exception as error:
                    del sets[index]
                    report(index, error)
                    continue
                del sets[index]
                report(index, time.perf_counter() - solving["start"])
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def imitated_oracle(config: ImitationConfig, eval_reference: str) -> str:
    """The oracle ``config`` imitates in a run whose ``train.eval_reference`` is
    ``eval_reference``."""
    if config.oracle != "auto":
        return config.oracle
    return eval_reference if eval_reference in IMITATED_ORACLES else "oracle"


def demonstrations(config: ImitationConfig, env_config: EnvConfig,
                   device: torch.device | str = "cpu", eval_reference: str = "oracle"
                   ) -> tuple[Tensor, Tensor]:
    """The demonstrations :func:`clone` regresses: ``(obs [S, N, obs_dim], battery fraction
    [S, N])`` on ``device``, S = ``config.days`` x steps per episode (one row per env-step,
    every agent), of the oracle :func:`imitated_oracle` picks."""
    obs, battery = oracle_demonstrations(env_config, config.days,
                                         imitated_oracle(config, eval_reference),
                                         config.tie_break)
    n_agents = obs.shape[2]
    return (obs.reshape(-1, n_agents, obs.shape[-1]).to(device),
            battery.reshape(-1, n_agents).to(device))


def imitation_loss(action: Tensor, battery: Tensor) -> Tensor:
    """Behaviour-cloning loss of the core's continuous actions ``[..., N, 2]`` against the
    demonstrated battery fractions ``[..., N]`` and the midpoint price: the squared errors of
    both parts summed, averaged over agent-steps (action units)."""
    return ((action[..., 0] - battery).square() + (action[..., 1] - MIDPOINT).square()).mean()


def clone(act: Callable[[Tensor], Tensor] | None, parameters: Iterable[torch.nn.Parameter],
          config: ImitationConfig, env_config: EnvConfig, generator: torch.Generator,
          device: torch.device | str = "cpu", eval_reference: str = "oracle",
          loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None) -> float:
    """Regress ``act`` (observations ``[S, N, obs_dim]`` -> the core's continuous actions
    ``[S, N, 2]``, differentiable in ``parameters``) onto the battery actions of the oracle
    (:func:`imitated_oracle`) and the midpoint price (:func:`imitation_loss`), on
    ``config.days`` training days of ``env_config`` (:func:`demonstrations`). Returns the
    last epoch's mean loss (here the squared error, action units, both parts).

    ``loss_fn(obs [M, N, obs_dim], battery [M, N]) -> scalar``, when given, replaces
    ``imitation_loss(act(obs), battery)`` (``act`` is then unused): DQN's large-margin loss
    on its discrete actions (``agents.dqn``) goes through the same epochs and minibatches."""
    if loss_fn is None:
        if act is None:
            raise ValueError("clone needs act or loss_fn")
        policy = act

        def loss_fn(obs: Tensor, battery: Tensor) -> Tensor:
            return imitation_loss(policy(obs), battery)

    obs, target = demonstrations(config, env_config, device, eval_reference)
    rows = math.ceil(config.minibatch / obs.shape[1])
    optimizer = adam([p for p in parameters if p.requires_grad], lr=config.lr)
    mean_loss = math.nan
    for _ in range(config.epochs):
        order = torch.randperm(obs.shape[0], generator=generator, device=generator.device)
        total = torch.zeros((), dtype=torch.float64, device=device)
        for index in order.to(device).split(rows):
            # index_select: the rows advanced indexing gives, several times faster on CPU
            loss = loss_fn(obs.index_select(0, index), target.index_select(0, index))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(index)  # no host sync per step
        mean_loss = float(total) / obs.shape[0]
    return mean_loss


def demonstration_batch(demonstrations: tuple[Tensor, Tensor], rows: int,
                        generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``rows`` demonstration steps (observations and their targets, every agent) drawn
    uniformly with ``generator`` from ``demonstrations`` ``(obs, target)``: the minibatch of
    the demonstration losses that anchor RL (``ddpg.bc_target``, ``dqn.demo_weight``)."""
    obs, target = demonstrations
    index = torch.randint(obs.shape[0], (rows,), generator=generator,
                          device=generator.device).to(obs.device)
    return obs[index], target[index]
