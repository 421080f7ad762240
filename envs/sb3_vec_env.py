"""A stable-baselines3 ``VecEnv`` over the batched core, with parameter sharing.

Every (environment, agent) pair of the core is one sub-environment: ``num_envs = B * N``, the
observation is the agent's local observation, and all agents are driven by one policy. The
action space is symmetric for SB3 (its ``check_env`` advice): continuous actions are
``Box(-1, 1, (2,))`` and the price fraction is mapped as ``(a + 1) / 2``; discrete actions are
``Discrete(battery_levels * price_levels)``. Episodes of all agents of an environment end
together; the last observation is in ``infos[i]["terminal_observation"]`` as SB3 expects.
Wrap it in ``stable_baselines3.common.vec_env.VecMonitor`` for episode statistics.

Actions are one array for all sub-environments: ``[B * N, 2]`` real numbers in [-1, 1]
(continuous) or ``[B * N]`` integers in ``0..battery_levels * price_levels - 1`` (discrete; a
float with an integral value is accepted). Anything else (another shape, bool, complex, str or
object dtypes, NaN, values outside the space) raises one ValueError naming the expected shape
and dtype, or the first bad sub-environment, before the core steps. A seed (``seed()``) is None
or an integer in [0, ``envs.config.SEED_MAX``], as the PettingZoo env's and the configs'.

Infos: with ``step_infos=True`` (default) sub-environment ``i = b * N + n`` gets the keys of
``envs.info_schema.INFO_KEYS`` as floats at every step (agent n's own values and environment
b's community values, NaN where undefined), the same as the PettingZoo env's agents; after
``reset()`` and after each automatic reset, ``reset_infos[i]`` holds the same keys, all NaN
but ``day`` and ``step_of_day`` (-1). ``step_infos=False`` leaves only SB3's keys
(``terminal_observation``, ``TimeLimit.truncated``) for speed: building B * N dicts costs
about 4 us each (3 ms a step at 64 x 13 sub-environments, more than the core's step on the
CPU). The core's info tensors of the last step are always in :attr:`SB3VecEnv.last_info`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.vec_env import VecEnv

from envs.config import SEED_MAX
from envs.core import BatchedP2PEnv, checked_seed
from envs.info_schema import AGENT_INFO, ENV_INFO, INFO_KEYS, NETWORK_INFO


class SB3VecEnv(VecEnv):
    """``B * N`` SB3 sub-environments over one :class:`BatchedP2PEnv`."""

    def __init__(self, core: BatchedP2PEnv, step_infos: bool = True) -> None:
        self.core = core
        self.step_infos = step_infos
        """Whether the per-sub-environment infos carry ``INFO_KEYS`` (see module doc)."""
        b, n = core.n_envs, core.n_agents
        observation_space = spaces.Box(-np.inf, np.inf, (core.obs_dim,), np.float32)
        if core.config.action.type == "continuous":
            action_space: spaces.Space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        else:
            action_space = spaces.Discrete(core.n_discrete_actions)
        self.render_mode = None
        super().__init__(b * n, observation_space, action_space)
        self.last_info: dict[str, torch.Tensor] = {}
        """The core's info tensors of the last step (per agent [B, N], per env [B])."""
        self._actions: np.ndarray | None = None
        self._seed: int | None = None

    def _flat(self, tensor: torch.Tensor) -> np.ndarray:
        return tensor.detach().cpu().numpy().reshape(self.num_envs, *tensor.shape[2:])

    def reset(self) -> np.ndarray:
        obs, info = self.core.reset(seed=self._seed)
        self._seed = None
        if self.step_infos:
            day = info.get("day")
            self.reset_infos = self._reset_infos(
                np.full(self.num_envs, np.nan) if day is None
                else np.repeat(day.cpu().numpy().astype(np.float64), self.core.n_agents))
        return self._flat(obs).astype(np.float32, copy=False)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = self._checked_actions(actions)

    def _checked_actions(self, actions: Any) -> np.ndarray:
        """``actions`` as an array ``[B * N, 2]`` (continuous) or ``[B * N]`` (discrete), or
        ValueError naming the expected shape and dtype or the first bad sub-environment."""
        b, n = self.core.n_envs, self.core.n_agents
        continuous = self.core.config.action.type == "continuous"
        if continuous:
            shape, dtype, values = (self.num_envs, 2), "float (or integer)", "in [-1, 1]"
        else:
            shape, dtype = (self.num_envs,), "integer (or integral float)"
            values = f"in 0..{self.core.n_discrete_actions - 1}"
        allowed = (f"a numpy array of shape {shape} ({b} envs x {n} agents), {dtype} dtype, "
                   f"values {values}")
        try:
            array = np.asarray(actions)
        except (TypeError, ValueError):  # ragged lists, objects numpy cannot hold
            array = None
        if array is None or array.shape != shape or array.dtype.kind not in "iuf":
            got = (f"{type(actions).__name__}" if array is None
                   else f"shape {array.shape}, dtype {array.dtype}")
            raise ValueError(f"SB3VecEnv actions: got {got}; allowed: {allowed}")
        if continuous:
            # NaN fails both comparisons; the core's tolerance for rounding.
            valid = ((array >= -1.0 - 1e-6) & (array <= 1.0 + 1e-6)).all(axis=-1)
        elif array.dtype.kind == "f":
            valid = (np.isfinite(array) & (array == np.round(array)) & (array >= 0)
                     & (array < self.core.n_discrete_actions))
        else:
            valid = (array >= 0) & (array < self.core.n_discrete_actions)
        if not valid.all():
            i = int(np.argmin(valid))
            raise ValueError(f"SB3VecEnv action of sub-environment {i} (env {i // n}, agent "
                             f"{i % n}): got {array[i].tolist()}; allowed: {dtype} values "
                             f"{values}")
        # Unsigned integers as int64 (checked in range): torch compares no uint64.
        return array.astype(np.int64) if array.dtype.kind == "u" else array

    def step_wait(self):
        b, n = self.core.n_envs, self.core.n_agents
        actions = torch.as_tensor(self._actions, device=self.core.device)
        if self.core.config.action.type == "continuous":
            actions = actions.reshape(b, n, 2).to(self.core.dtype)
            actions = torch.stack([actions[..., 0], (actions[..., 1] + 1.0) / 2.0], dim=-1)
        else:  # checked integral: the conversion is exact
            actions = actions.reshape(b, n).long()
        obs, reward, terminated, truncated, info = self.core.step(actions)
        self.last_info = info
        done = (terminated | truncated)[:, None].expand(b, n).reshape(-1).cpu().numpy()
        rewards = reward.reshape(-1).detach().cpu().numpy().astype(np.float32)
        infos = (self._step_infos(info) if self.step_infos
                 else [{} for _ in range(self.num_envs)])
        if done.any():
            final = self._flat(info["final_observation"]).astype(np.float32, copy=False)
            time_limit = truncated[:, None].expand(b, n).reshape(-1).cpu().numpy()
            for i in np.flatnonzero(done):
                infos[i]["terminal_observation"] = final[i]
                infos[i]["TimeLimit.truncated"] = bool(time_limit[i])
            if self.step_infos:  # the core has reset those environments
                day = getattr(self.core, "day", None)
                days = (np.full(self.num_envs, np.nan) if day is None
                        else np.repeat(day.cpu().numpy().astype(np.float64), n))
                for i, reset_info in zip(np.flatnonzero(done), self._reset_infos(
                        days[done]), strict=True):
                    self.reset_infos[i] = reset_info
        return self._flat(obs).astype(np.float32, copy=False), rewards, done, infos

    def _step_infos(self, info: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
        """The core's step ``info`` as one dict of :data:`INFO_KEYS` per sub-environment, in
        that order: agent n's values and env b's community values, NaN for keys the core did
        not report (the network keys without a network model)."""
        b, n = self.core.n_envs, self.core.n_agents

        def rows(keys: list[str]) -> list[list[float]]:
            if not keys:
                return [[] for _ in range(b * n)]
            stacked = torch.stack([info[key].detach().double() for key in keys], dim=-1)
            return stacked.cpu().reshape(-1, len(keys)).tolist()

        agent_keys = [key for key in AGENT_INFO if key in info]
        env_keys = [key for key in ENV_INFO + NETWORK_INFO if key in info]
        agent_rows, env_rows = rows(agent_keys), rows(env_keys)
        undefined = dict.fromkeys(INFO_KEYS, np.nan)
        infos = []
        for env in range(b):
            shared = undefined.copy()
            shared.update(zip(env_keys, env_rows[env], strict=True))
            for row in agent_rows[env * n:(env + 1) * n]:
                infos.append(shared.copy())
                infos[-1].update(zip(agent_keys, row, strict=True))
        return infos

    @staticmethod
    def _reset_infos(days: np.ndarray) -> list[dict[str, Any]]:
        """Reset infos of sub-environments starting day ``days [k]``: all NaN but ``day`` and
        ``step_of_day`` (-1, no step taken yet)."""
        template = dict.fromkeys(INFO_KEYS, np.nan)
        return [{**template, "day": day, "step_of_day": -1.0} for day in days.tolist()]

    def close(self) -> None:
        pass

    def seed(self, seed: int | None = None) -> list[int | None]:
        if seed is not None:
            seed = checked_seed(seed, SEED_MAX)
        self._seed = seed
        return [seed] * self.num_envs

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self, attr_name)] * len(self._indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs):
        raise NotImplementedError(f"env_method({method_name!r}) is not supported: the "
                                  f"sub-environments share one batched core")

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False] * len(self._indices(indices))

    def _indices(self, indices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        if isinstance(indices, int):
            return [indices]
        return list(indices)
