"""A stable-baselines3 ``VecEnv`` over the batched core, with parameter sharing.

Every (environment, agent) pair of the core is one sub-environment: ``num_envs = B * N``, the
observation is the agent's local observation, and all agents are driven by one policy. The
action space is symmetric for SB3 (its ``check_env`` advice): continuous actions are
``Box(-1, 1, (2,))`` and the price fraction is mapped as ``(a + 1) / 2``; discrete actions are
``Discrete(battery_levels * price_levels)``. Episodes of all agents of an environment end
together; the last observation is in ``infos[i]["terminal_observation"]`` as SB3 expects.
Wrap it in ``stable_baselines3.common.vec_env.VecMonitor`` for episode statistics.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.vec_env import VecEnv

from envs.core import BatchedP2PEnv


class SB3VecEnv(VecEnv):
    """``B * N`` SB3 sub-environments over one :class:`BatchedP2PEnv`."""

    def __init__(self, core: BatchedP2PEnv) -> None:
        self.core = core
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
        obs, _ = self.core.reset(seed=self._seed)
        self._seed = None
        return self._flat(obs).astype(np.float32, copy=False)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self):
        b, n = self.core.n_envs, self.core.n_agents
        actions = torch.as_tensor(self._actions, device=self.core.device)
        if self.core.config.action.type == "continuous":
            actions = actions.reshape(b, n, 2).to(self.core.dtype)
            actions = torch.stack([actions[..., 0], (actions[..., 1] + 1.0) / 2.0], dim=-1)
        else:
            actions = actions.reshape(b, n).long()
        obs, reward, terminated, truncated, info = self.core.step(actions)
        self.last_info = info
        done = (terminated | truncated)[:, None].expand(b, n).reshape(-1).cpu().numpy()
        rewards = reward.reshape(-1).detach().cpu().numpy().astype(np.float32)
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        if done.any():
            final = self._flat(info["final_observation"]).astype(np.float32, copy=False)
            time_limit = truncated[:, None].expand(b, n).reshape(-1).cpu().numpy()
            for i in np.flatnonzero(done):
                infos[i]["terminal_observation"] = final[i]
                infos[i]["TimeLimit.truncated"] = bool(time_limit[i])
        return self._flat(obs).astype(np.float32, copy=False), rewards, done, infos

    def close(self) -> None:
        pass

    def seed(self, seed: int | None = None) -> list[int | None]:
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
