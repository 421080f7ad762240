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
                       default (``envs.observations``)
state                  ``Box(-inf, inf, (3 N + 7,), float32)``
episode                96 steps of 15 minutes (one day); all agents end together
=====================  ==========================================================

Observations
    Own load and PV of the step being traded (optionally noisy, optionally k steps of
    forecast), state of charge, PV and battery size, time of day and weekday, tariffs and the
    last clearing price, optionally the own bus voltage; see ``envs.observations``.

Actions
    See the table. Actions outside the space or NaN raise ValueError naming the agent.

Infos
    Per agent: payment, P2P and grid energy, net energy, battery energy, cut and SoC,
    degradation cost, network penalty and posted price; per community: clearing price (None
    when nothing traded), P2P volume, grid import and export, community cost, tariffs, and the
    network's voltage and loading figures.

Rewards
    Minus the agent's money of the step: market and grid payment, battery degradation and its
    share of network penalties, times ``reward_scale``.

Reset options
    ``{"day": d}`` starts the episode on day d of the year (0..365) instead of a drawn one.

Arguments
    ``make_env(config=None, render_mode=None, **overrides)``: ``config`` is a YAML path, a
    dict or None; overrides as in ``envs.config.env_config``. ``n_envs`` must be 1.

Version history
    v0: initial release.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from pettingzoo import ParallelEnv

from envs.config import EnvConfig
from envs.core import BatchedP2PEnv

_PER_AGENT_INFO = ("payment", "p2p_energy_kwh", "grid_energy_kwh", "net_energy_kwh",
                   "battery_energy_kwh", "battery_cut_kwh", "soc_kwh", "degradation_cost",
                   "network_penalty", "price")


class P2PParallelEnv(ParallelEnv):
    """One community of N prosumers as a PettingZoo parallel environment (see module doc)."""

    metadata = {"name": "peergrid_p2p_v0", "render_modes": ["ansi"], "is_parallelizable": True}

    def __init__(self, config: EnvConfig, render_mode: str | None = None) -> None:
        if config.n_envs != 1:
            raise ValueError(f"the PettingZoo env wraps one community: n_envs must be 1, got "
                             f"{config.n_envs}; use envs.make_batched_env for batches")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode {render_mode!r} not supported; allowed: None, "
                             f"{self.metadata['render_modes']}")
        self.config = config
        self.render_mode = render_mode
        self.core = BatchedP2PEnv(dataclasses.replace(config, n_envs=1))
        n = self.core.n_agents
        self.possible_agents = [f"prosumer_{i}" for i in range(n)]
        self.agents: list[str] = []
        self._index = {agent: i for i, agent in enumerate(self.possible_agents)}
        observation_space = spaces.Box(-np.inf, np.inf, (self.core.obs_dim,), np.float32)
        if config.action.type == "continuous":
            action_space: spaces.Space = spaces.Box(
                np.array([-1.0, 0.0], np.float32), np.array([1.0, 1.0], np.float32),
                dtype=np.float32)
        else:
            action_space = spaces.Discrete(self.core.n_discrete_actions)
        self._observation_spaces = {a: observation_space for a in self.possible_agents}
        self._action_spaces = {a: action_space for a in self.possible_agents}
        for i, agent in enumerate(self.possible_agents):
            # Distinct sample streams per agent; spaces are reseeded by tests as needed.
            self._action_spaces[agent] = _copy_space(action_space, seed=i)
        self.state_space = spaces.Box(-np.inf, np.inf, (self.core.state_dim,), np.float32)
        self._last_info: dict[str, Any] | None = None

    def observation_space(self, agent: str) -> spaces.Space:
        return self._observation_spaces[agent]

    def action_space(self, agent: str) -> spaces.Space:
        return self._action_spaces[agent]

    def _to_dict(self, obs: torch.Tensor) -> dict[str, np.ndarray]:
        array = obs[0].detach().cpu().numpy().astype(np.float32, copy=False)
        return {agent: array[i] for i, agent in enumerate(self.possible_agents)}

    def reset(self, seed: int | None = None, options: dict | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
        options = dict(options or {})
        day = options.pop("day", None)
        if options:
            warnings.warn(f"reset options {sorted(options)} are not used by peergrid (it reads "
                          f"only 'day'); they were ignored", stacklevel=2)
        obs, info = self.core.reset(seed=seed, days=None if day is None else [int(day)])
        self.agents = list(self.possible_agents)
        self._last_info = None
        day = int(info["day"][0])
        return self._to_dict(obs), {agent: {"day": day} for agent in self.agents}

    def step(self, actions: dict[str, Any]):
        if not self.agents:
            raise RuntimeError("step() called on a finished episode: call reset() first")
        missing = [a for a in self.agents if a not in actions]
        unknown = [a for a in actions if a not in self._index]
        if missing or unknown:
            raise ValueError(f"actions must have one entry per live agent; missing {missing}, "
                             f"unknown {unknown}")
        batch = np.stack([np.asarray(actions[a]) for a in self.possible_agents])[None]
        obs, reward, terminated, truncated, info = self.core.step(torch.as_tensor(batch))
        self._last_info = info
        done = bool(terminated[0] or truncated[0])
        if done:
            obs = info["final_observation"]
        observations = self._to_dict(obs)
        rewards_array = reward[0].detach().cpu().numpy()
        per_agent = {key: info[key][0].detach().cpu().numpy() for key in _PER_AGENT_INFO}
        shared: dict[str, float | None] = {
            key: float(value[0]) for key, value in info.items()
            if value.dim() == 1 and key not in ("done",)}
        if np.isnan(shared["clearing_price"]):
            shared["clearing_price"] = None  # no P2P trade this step
        rewards, terminations, truncations, infos = {}, {}, {}, {}
        for i, agent in enumerate(self.possible_agents):
            rewards[agent] = float(rewards_array[i])
            terminations[agent] = bool(terminated[0])
            truncations[agent] = bool(truncated[0])
            infos[agent] = {**{key: float(v[i]) for key, v in per_agent.items()}, **shared}
        if done:
            self.agents = []
        if self.render_mode == "ansi":
            pass  # rendering is on demand through render()
        return observations, rewards, terminations, truncations, infos

    def state(self) -> np.ndarray:
        return self.core.state()[0].detach().cpu().numpy().astype(np.float32, copy=False)

    def render(self) -> str | None:
        """``ansi``: a one-step summary of the last step (None before the first step)."""
        if self.render_mode is None:
            return None
        info = self._last_info
        if info is None:
            return "peergrid: no step yet"
        lines = [
            f"day {int(info['day'][0])} step {int(info['step_of_day'][0])} | "
            f"retail {float(info['retail_price'][0]):.3f} feed-in "
            f"{float(info['feed_in_price'][0]):.3f} | clearing price "
            f"{float(info['clearing_price'][0]):.3f} | P2P {float(info['p2p_volume_kwh'][0]):.2f}"
            f" kWh | import {float(info['grid_import_kwh'][0]):.2f} kWh export "
            f"{float(info['grid_export_kwh'][0]):.2f} kWh | community cost "
            f"{float(info['community_cost'][0]):.3f}",
        ]
        if "v_min" in info:
            lines.append(f"voltage {float(info['v_min'][0]):.4f}-{float(info['v_max'][0]):.4f}"
                         f" p.u. | max line loading {float(info['max_line_loading'][0]):.1f}%")
        for i, agent in enumerate(self.possible_agents):
            lines.append(f"  {agent:>12}: net {float(info['net_energy_kwh'][0, i]):+7.3f} kWh "
                         f"p2p {float(info['p2p_energy_kwh'][0, i]):+7.3f} pays "
                         f"{float(info['payment'][0, i]):+7.4f} soc "
                         f"{float(info['soc_kwh'][0, i]):6.2f} kWh")
        return "\n".join(lines)

    def close(self) -> None:
        pass


def _copy_space(space: spaces.Space, seed: int) -> spaces.Space:
    if isinstance(space, spaces.Box):
        copy: spaces.Space = spaces.Box(space.low, space.high, dtype=space.dtype)
    else:
        copy = spaces.Discrete(space.n)
    copy.seed(seed)
    return copy
