"""peergrid's PettingZoo ``ParallelEnv``: one P2P energy community over the batched core.

=====================  ==========================================================
agents                 ``prosumer_0`` ... ``prosumer_{N-1}`` (one per load of the
                       feeder: N = 13 on the default ``1-LV-rural1--0-sw``)
action (continuous)    ``Box([-1, 0], [1, 1], (2,), float32)``: battery power as a
                       fraction of its limit (> 0 charges), price as a fraction of
                       [feed-in, retail]
action (discrete)      ``Discrete(battery_levels * price_levels)``: index
                       ``battery_level * price_levels + price_level``
observation            ``Box(-inf, inf, (obs_dim,), float32)``, 12 features by
                       default, 1 more with ``observation.rule``
                       (``envs.observations``)
state                  ``Box(-inf, inf, (3 N + 7,), float32)``
episode                96 steps of 15 minutes per day, ``episode.length_days``
                       days (one by default); all agents end together
=====================  ==========================================================

Observations
    Own load and PV of the step being traded (optionally noisy, optionally k steps of
    forecast), state of charge, PV and battery size, time of day and weekday, tariffs and the
    last clearing price, optionally the own bus voltage and (``observation.rule``) a rule's
    battery fraction in [-1, 1] as the last feature; see ``envs.observations``.

Actions
    See the table; ``step`` takes a dict mapping every agent to its action. Each action holds
    real numbers (Python or numpy int or float; bool, complex, str and None are not
    converted but refused) of the space's shape; a discrete action may be a float with an
    integral value. Anything else (another container, a missing or unknown agent, a wrong
    shape or type, NaN or outside the space) raises one ValueError naming the agent and what
    is allowed, before any state changes, the same on both engines.

Infos
    Every agent's info is a flat dict with the keys of ``envs.info_schema.INFO_KEYS``, the
    same at ``reset()`` and at every ``step()`` on both engines, all Python floats: the
    agent's own values (``AGENT_INFO``: energies, payments, battery, costs, posted price) and
    its community's (``ENV_INFO``: clearing price, volumes, tariffs, day and step;
    ``NETWORK_INFO``: voltages, loadings, losses). Undefined values are NaN: the clearing
    price of a step without trade, the network keys without a network model, and at reset
    every key but ``day`` and ``step_of_day`` (-1: no step taken yet).

Rewards
    Minus the agent's money of the step: market and grid payment, battery degradation and its
    share of network penalties, times ``reward_scale``. The behavioural agents of
    ``behaviour`` (listed in ``behavioural_agents``) get instead the prospect-theory value of
    that money against their no-P2P bill of the step (``envs.behaviour``).

Reset options
    ``{"day": d}`` starts the episode on day d of the year (an integer in 0..365) instead of a
    drawn one. ``seed`` is None or an integer in [0, ``envs.config.SEED_MAX``]. A bad seed,
    day or ``options`` (not a dict) raises ValueError before any state changes, the same on
    both engines; other option keys are ignored with a warning (PettingZoo's own API test
    passes one).

Arguments
    ``make_env(config=None, render_mode=None, engine="auto", **overrides)``: ``config`` is a
    YAML path, a dict or None; overrides as in ``envs.config.env_config``. ``n_envs`` must be
    1. ``engine``: ``numba`` steps the community with the compiled single-environment engine
    (``envs.single.engine``: the core's dynamics at B=1 in float64, tested step for step
    against it, about 40x faster per step); ``torch`` with the batched core at ``n_envs=1``
    (in the config's dtype and on its device); ``auto`` (default) takes ``numba`` where it
    applies (``device: cpu`` and ``network.model`` ``none`` or ``zbus``), else ``torch``.
    ``ledger``: a path (None by default: off, nothing computed): write a tamper-evident trade
    ledger there (``envs.ledger``: every step's orders, bilateral trades and payments,
    episodes numbered from 0 at each ``reset()``, with its seed or -1; agents named as in
    ``possible_agents``); ``close()`` seals it.
    The file must not exist yet. An env with a ledger cannot be pickled.

Version history
    v0: initial release. Later in v0 the numba engine became the default on the CPU; it steps
    the same dynamics (tested step for step against the core), in float64. Later still, actions,
    seeds and reset days of other types (bool, complex, str, None, non-integral floats) are
    refused instead of converted, and a bad reset changes nothing. Later still (info schema
    version 2, ``envs.info_schema``), the extreme bus voltages ``v_min`` and ``v_max`` were
    renamed ``v_min_pu`` and ``v_max_pu``, apart from the voltage band's settings. Later
    still, the optional trade ledger (``ledger``; off by default, nothing else changed).
    Later still, behavioural agents (``behaviour``, ``behavioural_agents``; off by default,
    nothing else changed).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from pettingzoo import ParallelEnv

from envs.config import INT64_MAX, SEED_MAX, EnvConfig
from envs.core import BatchedP2PEnv, checked_seed, is_integer
from envs.data import DAYS_PER_YEAR
from envs.info_schema import AGENT_INFO, ARRIVAL_RANK, ENV_INFO, INFO_KEYS, NETWORK_INFO
from envs.ledger import LedgerWriter
from envs.single.engine import SingleEnvEngine, supports
from envs.storage import AGENT_INFO as STORAGE_AGENT_INFO
from envs.storage import BATTERY_AGENT, OPERATOR_FEATURES
from envs.storage import ENV_INFO as STORAGE_ENV_INFO

ENGINES = ("auto", "numba", "torch")
RESET_OPTIONS = ("day",)


class P2PParallelEnv(ParallelEnv):
    """One community of N prosumers as a PettingZoo parallel environment (see module doc)."""

    metadata = {"name": "peergrid_p2p_v0", "render_modes": ["ansi"], "is_parallelizable": True}

    def __init__(self, config: EnvConfig, render_mode: str | None = None,
                 engine: str = "auto", ledger: str | Path | None = None) -> None:
        if config.n_envs != 1:
            raise ValueError(f"the PettingZoo env wraps one community: n_envs must be 1, got "
                             f"{config.n_envs}; use envs.make_batched_env for batches")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode {render_mode!r} not supported; allowed: None, "
                             f"{self.metadata['render_modes']}")
        if engine not in ENGINES:
            raise ValueError(f"engine {engine!r} not supported; allowed: {ENGINES}")
        unsupported = supports(config)
        if engine == "numba" and unsupported is not None:
            raise ValueError(f"engine 'numba' does not support {unsupported}; use engine="
                             f"'torch' or 'auto'")
        self.config = config
        self.render_mode = render_mode
        self.engine_name = "numba" if engine == "numba" or (
            engine == "auto" and unsupported is None) else "torch"
        self.engine: SingleEnvEngine | TorchEngine = (
            SingleEnvEngine(config) if self.engine_name == "numba" else TorchEngine(config))
        n = self.engine.n_agents
        self.prosumers = [f"prosumer_{i}" for i in range(n)]
        """The prosumer agents, in the engine's order."""
        self.battery_agent: str | None = (
            BATTERY_AGENT if self.engine_name == "torch" and self.engine.core.storage_operator_agent
            else None)
        """:data:`envs.storage.BATTERY_AGENT` when the shared battery is driven by an agent
        (``storage.operator`` agent), else None."""
        self.possible_agents = self.prosumers + (
            [self.battery_agent] if self.battery_agent else [])
        self.agents: list[str] = []
        self.behavioural_agents: tuple[str, ...] = tuple(
            agent for agent, behavioural in zip(
                self.prosumers, self.engine.behavioural.tolist(), strict=True)
            if behavioural)
        """The agents whose reward is the prospect value of ``behaviour`` (none when off)."""
        observation_space = spaces.Box(-np.inf, np.inf, (self.engine.obs_dim,), np.float32)
        if config.action.type == "continuous":
            action_space: spaces.Space = spaces.Box(
                np.array([-1.0, 0.0], np.float32), np.array([1.0, 1.0], np.float32),
                dtype=np.float32)
        else:
            action_space = spaces.Discrete(self.engine.n_discrete_actions)
        self._observation_spaces = {a: observation_space for a in self.prosumers}
        # Distinct sample streams per agent; spaces are reseeded by tests as needed.
        self._action_spaces = {agent: _copy_space(action_space, seed=i)
                               for i, agent in enumerate(self.prosumers)}
        if self.battery_agent:  # its own spaces (envs.storage)
            self._observation_spaces[BATTERY_AGENT] = spaces.Box(
                -np.inf, np.inf, (len(OPERATOR_FEATURES),), np.float32)
            battery_space = spaces.Box(np.array([-1.0, 0.0], np.float32),
                                       np.array([1.0, 1.0], np.float32), dtype=np.float32)
            battery_space.seed(n)
            self._action_spaces[BATTERY_AGENT] = battery_space
        self.state_space = spaces.Box(-np.inf, np.inf, (self.engine.state_dim,), np.float32)
        self._last_info: dict[str, Any] | None = None
        # Every info key, NaN: the start of each agent's info dict.
        self._storage_keys = (STORAGE_AGENT_INFO, STORAGE_ENV_INFO) if (
            config.storage.enabled) else ((), ())
        """The shared battery's info keys (per agent, per community), none without one."""
        self._undefined_info = dict.fromkeys(
            INFO_KEYS + self._storage_keys[0] + self._storage_keys[1], math.nan)
        self._ledger: LedgerWriter | None = None
        self._ledger_episode, self._ledger_step = -1, 0
        if ledger is not None:
            self._ledger = LedgerWriter(
                ledger, config, self.possible_agents,
                meta={"source": "pettingzoo", "engine": self.engine_name,
                      "feeder_agent_names": list(self.engine.agent_names)})

    def observation_space(self, agent: str) -> spaces.Space:
        return self._observation_spaces[agent]

    def action_space(self, agent: str) -> spaces.Space:
        return self._action_spaces[agent]

    def reset(self, seed: int | None = None, options: dict | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
        # Everything is checked before the engine changes any state.
        if seed is not None:
            seed = checked_seed(seed, SEED_MAX)
        if options is not None and not isinstance(options, Mapping):
            raise ValueError(f"reset options: got {_short_repr(options)}; allowed: None or a "
                             f"dict with the optional keys {RESET_OPTIONS}")
        options = dict(options or {})
        day = options.pop("day", None)
        if day is not None and not (is_integer(day) and 0 <= day < DAYS_PER_YEAR):
            raise ValueError(f"reset option 'day': got {_short_repr(day)}; allowed: None or an "
                             f"integer in [0, {DAYS_PER_YEAR - 1}] (day of the year)")
        if options:
            warnings.warn(f"reset options {sorted(map(str, options))} are not used by peergrid "
                          f"(it reads only {RESET_OPTIONS}); they were ignored", stacklevel=2)
        obs, day = self.engine.reset(seed=seed, day=None if day is None else int(day))
        if self._ledger is not None:
            self._ledger_episode += 1
            self._ledger_step = 0
            self._ledger.start_episodes([self._ledger_episode], [day], [seed])
        self.agents = list(self.possible_agents)
        self._last_info = None
        observations = dict(zip(self.prosumers, obs, strict=True))
        if self.battery_agent:
            observations[BATTERY_AGENT] = self.engine.storage_observation()
        return observations, self.reset_infos(day)

    def reset_infos(self, day: int) -> dict[str, dict[str, float]]:
        """The infos of ``reset()`` on ``day``: every :data:`INFO_KEYS` NaN but the day and
        ``step_of_day = -1``, one dict per agent."""
        reset_info = self._undefined_info.copy()
        reset_info.update(day=float(day), step_of_day=-1.0)
        return {agent: reset_info.copy() for agent in self.possible_agents}

    def step(self, actions: dict[str, Any]):
        if not self.agents:
            raise RuntimeError("step() called on a finished episode: call reset() first")
        agents = self.possible_agents
        if self.battery_agent:
            actions, battery_action = self._split_battery_action(actions)
            obs, reward, done, info = self.engine.step(self._action_batch(actions),
                                                       battery_action)
        else:
            obs, reward, done, info = self.engine.step(self._action_batch(actions))
        self._last_info = info
        if self._ledger is not None:
            self._ledger.record_step(info, [self._ledger_episode], self._ledger_step,
                                     batched=False)
            self._ledger_step += 1
        if done:
            obs = info["final_observation"]
            self.agents = []
        observations = dict(zip(self.prosumers, obs, strict=True))
        rewards = dict(zip(self.prosumers, reward.tolist(), strict=True))
        if self.battery_agent:
            observations[BATTERY_AGENT] = (info["final_storage_observation"] if done
                                           else self.engine.storage_observation())
            rewards[BATTERY_AGENT] = -info["storage_cost"] * self.config.reward_scale
        return (observations, rewards, dict.fromkeys(agents, done),
                dict.fromkeys(agents, False), self.agent_infos(info))

    def _split_battery_action(self, actions: Any) -> tuple[dict[str, Any], np.ndarray]:
        """The prosumers' actions and the battery agent's ``[2]`` (checked: two real
        numbers; their range is checked by the core)."""
        if not isinstance(actions, Mapping) or BATTERY_AGENT not in actions:
            raise ValueError(f"actions must have one entry per live agent; missing "
                             f"[{BATTERY_AGENT!r}] (the shared battery's operator agent)")
        actions = dict(actions)
        value = actions.pop(BATTERY_AGENT)
        if not _holds_real_numbers(value) or _shape(value) != (2,):
            raise ValueError(f"action of agent {BATTERY_AGENT!r}: got {_short_repr(value)}; "
                             f"allowed: 2 real numbers, battery in [-1, 1], price in [0, 1]")
        return actions, np.asarray(value, dtype=np.float64)

    def _action_batch(self, actions: Any) -> np.ndarray:
        """``actions`` (a dict of every agent's action) as one array ``[N, *shape]`` in the
        order of ``possible_agents``, or ValueError naming what is wrong and what is allowed.
        The container, the agents, the types, the shapes and that discrete floats are
        integral are checked here; the range and NaN of continuous actions and the range of
        discrete ones by the engine, which names the agent and changes nothing."""
        agents = self.prosumers
        if not isinstance(actions, Mapping):
            raise ValueError(f"actions: got {_short_repr(actions)}; allowed: a dict mapping every "
                             f"agent ({agents[0]!r} ... {agents[-1]!r}) to its action")
        try:
            values = [actions[agent] for agent in agents]
        except KeyError:
            values = None
        if values is None or len(actions) != len(agents):
            missing = [a for a in agents if a not in actions]
            unknown = [a for a in actions if a not in self._observation_spaces]
            raise ValueError(f"actions must have one entry per live agent; missing {missing}, "
                             f"unknown {unknown}")
        space = self._action_spaces[agents[0]]
        bad = _first_not_real(values)
        if bad is not None:
            raise ValueError(f"action of agent {agents[bad]!r}: got {_short_repr(values[bad])}; "
                             f"allowed: {self._allowed_action()}")
        try:
            batch = np.array(values)
        except ValueError:  # ragged: some agent's action has the wrong shape
            batch = None
        if batch is None or batch.shape != (len(agents), *space.shape):
            shapes = {agent: _shape(value) for agent, value in zip(agents, values, strict=True)}
            raise ValueError(f"every agent's action must have the shape of its action space "
                             f"{space.shape}; got {shapes}")
        if self.config.action.type == "discrete" and batch.dtype.kind == "f":
            # Integral floats only, as the engines' integers (NaN, 2.5 or 1e30 are not).
            integral = np.isfinite(batch) & (batch == np.round(batch)) & (np.abs(batch) < 2**62)
            bad = None if integral.all() else int(np.argmin(integral))
        else:
            bad = None if _fits_int64(batch) else next(  # Python ints beyond int64
                (i for i, value in enumerate(values) if not _fits_int64(np.asarray(value))), 0)
        if bad is not None:
            raise ValueError(f"action of agent {agents[bad]!r}: got {_short_repr(values[bad])}; "
                             f"allowed: {self._allowed_action()}")
        # Unsigned integers as int64 (checked to fit): torch compares no uint64.
        return batch.astype(np.int64) if batch.dtype.kind == "u" else batch

    def _allowed_action(self) -> str:
        if self.config.action.type == "continuous":
            return ("2 real numbers (int or float; not bool, complex, str or None): battery in "
                    "[-1, 1], price in [0, 1]")
        return (f"an integer in 0..{self.engine.n_discrete_actions - 1} (Python or numpy int, "
                f"or a float with an integral value; not bool)")

    def agent_infos(self, info: dict[str, Any]) -> dict[str, dict[str, float]]:
        """The engine's step ``info`` as one dict of :data:`INFO_KEYS` per agent, in that
        order: the agent's own values and its community's, NaN where the engine has none
        (the network keys without a network model)."""
        shared = self._undefined_info.copy()
        shared.update(zip(self.engine.env_keys, [info[key] for key in self.engine.env_keys],
                          strict=True))
        agent_keys, env_keys = self._storage_keys
        shared.update((key, info[key]) for key in env_keys)
        agent_keys = AGENT_INFO + agent_keys
        rows = zip(*[info[key].tolist() for key in agent_keys], strict=True)
        infos = {}
        for agent, row in zip(self.prosumers, rows, strict=True):
            infos[agent] = shared.copy()
            infos[agent].update(zip(agent_keys, row, strict=True))
        if self.battery_agent:
            infos[BATTERY_AGENT] = shared
        return infos

    def state(self) -> np.ndarray:
        return self.engine.state()

    def render(self) -> str | None:
        """``ansi``: a one-step summary of the last step (None before the first step)."""
        if self.render_mode is None:
            return None
        info = self._last_info
        if info is None:
            return "peergrid: no step yet"
        lines = [
            f"day {int(info['day'])} step {int(info['step_of_day'])} | "
            f"retail {info['retail_price']:.3f} feed-in {info['feed_in_price']:.3f} | "
            f"clearing price {info['clearing_price']:.3f} | P2P {info['p2p_volume_kwh']:.2f}"
            f" kWh | import {info['grid_import_kwh']:.2f} kWh export "
            f"{info['grid_export_kwh']:.2f} kWh | community cost {info['community_cost']:.3f}",
        ]
        if "v_min_pu" in info:
            lines.append(f"voltage {info['v_min_pu']:.4f}-{info['v_max_pu']:.4f} p.u. | max line "
                         f"loading {info['max_line_loading']:.1f}%")
        for i, agent in enumerate(self.prosumers):
            lines.append(f"  {agent:>12}: net {info['net_energy_kwh'][i]:+7.3f} kWh "
                         f"p2p {info['p2p_energy_kwh'][i]:+7.3f} pays "
                         f"{info['payment'][i]:+7.4f} soc {info['soc_kwh'][i]:6.2f} kWh")
        return "\n".join(lines)

    def close(self) -> None:
        """Seal the ledger, if any (``ledger``)."""
        if self._ledger is not None:
            self._ledger.close()


class TorchEngine:
    """The batched core at ``n_envs=1`` behind :class:`~envs.single.engine.SingleEnvEngine`'s
    interface (numpy in and out, no batch dimension), for what the numba engine does not run:
    other devices and ``network.model: ac``."""

    def __init__(self, config: EnvConfig) -> None:
        self.core = BatchedP2PEnv(dataclasses.replace(config, n_envs=1))
        self.n_agents, self.agent_names = self.core.n_agents, self.core.agent_names
        self.obs_dim, self.state_dim = self.core.obs_dim, self.core.state_dim
        self.n_discrete_actions = self.core.n_discrete_actions
        self.behavioural = self.core.behavioural.cpu().numpy()
        self.env_keys = ENV_INFO + (NETWORK_INFO if config.network.model != "none" else ())

    @staticmethod
    def _numpy(tensor: torch.Tensor) -> np.ndarray:
        return tensor[0].detach().cpu().numpy()

    def reset(self, seed: int | None = None, day: int | None = None) -> tuple[np.ndarray, int]:
        obs, info = self.core.reset(seed=seed, days=None if day is None else [day])
        return self._numpy(obs).astype(np.float32), int(info["day"][0])

    def state(self) -> np.ndarray:
        return self._numpy(self.core.state()).astype(np.float32)

    def storage_observation(self) -> np.ndarray:
        """The shared battery's operator observation (``envs.storage.OPERATOR_FEATURES``)."""
        return self._numpy(self.core.storage_observation()).astype(np.float32)

    def step(self, actions: np.ndarray, storage_action: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.core.step(
            torch.as_tensor(actions)[None],
            None if storage_action is None else torch.as_tensor(storage_action)[None])
        done = bool(terminated[0] or truncated[0])
        return (self._numpy(obs).astype(np.float32), self._numpy(reward).astype(np.float64),
                done, engine_info(info, 0))


def engine_info(info: Mapping[str, torch.Tensor], index: int) -> dict[str, Any]:
    """Environment ``index`` of the batched core's step ``info`` as the single-environment
    engines give it: per-agent keys as float64 ``(N,)``, the ``cda`` arrival rank as int64
    ``(N,)``, the final observation and state as float32, every other key a float (``done``
    dropped)."""
    out: dict[str, Any] = {}
    for key, value in info.items():
        if key in AGENT_INFO or key in STORAGE_AGENT_INFO:
            out[key] = value[index].detach().cpu().numpy().astype(np.float64)
        elif key == ARRIVAL_RANK:
            out[key] = value[index].detach().cpu().numpy()
        elif key in ("final_observation", "final_state", "final_storage_observation"):
            out[key] = value[index].detach().cpu().numpy().astype(np.float32)
        elif key != "done":
            out[key] = float(value[index])
    return out


_REAL_KINDS = "iuf"
"""numpy dtype kinds of real numbers (signed and unsigned integers, floats)."""
_REAL_KIND_SET = frozenset(_REAL_KINDS)


def _first_not_real(values: list[Any]) -> int | None:
    """Index of the first of ``values`` that does not hold real numbers only (see
    :func:`_holds_real_numbers`), or None; one set of types and dtypes in the usual case of
    numpy arrays and scalars or of Python numbers."""
    types = set(map(type, values))
    if all(issubclass(kind, np.ndarray | np.generic) for kind in types):
        if {value.dtype.kind for value in values} <= _REAL_KIND_SET:
            return None
    elif types <= {int, float}:  # bool is a type of its own
        return None
    return next((i for i, value in enumerate(values) if not _holds_real_numbers(value)), None)


def _holds_real_numbers(value: Any) -> bool:
    """Whether ``value`` is a real number or an array, tensor, list or tuple of them: Python
    int or float, numpy integer or float scalars and arrays, torch integer or float tensors
    (bool, complex, str, None and other objects are not)."""
    if type(value) is np.ndarray or isinstance(value, np.ndarray | np.generic):
        return value.dtype.kind in _REAL_KINDS
    if isinstance(value, list | tuple):
        return all(_holds_real_numbers(item) for item in value)
    if isinstance(value, torch.Tensor):
        return not (value.dtype.is_complex or value.dtype == torch.bool)
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fits_int64(array: np.ndarray) -> bool:
    """Whether ``array`` has a real dtype and no integer beyond int64 (numpy stores larger
    Python ints as uint64 or object)."""
    kind = array.dtype.kind
    return kind in _REAL_KINDS and not (kind == "u" and bool((array > INT64_MAX).any()))


def _shape(value: Any) -> tuple[int, ...] | str:
    """The shape numpy gives ``value``, or ``"ragged"``."""
    try:
        return np.shape(value)
    except ValueError:
        return "ragged"


def _short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` with its type, cut to about ``limit`` characters."""
    text = repr(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"{text} ({type(value).__name__})"


def _copy_space(space: spaces.Space, seed: int) -> spaces.Space:
    if isinstance(space, spaces.Box):
        copy: spaces.Space = spaces.Box(space.low, space.high, dtype=space.dtype)
    else:
        copy = spaces.Discrete(space.n)
    copy.seed(seed)
    return copy
