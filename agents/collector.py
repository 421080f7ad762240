"""Stepping the batched core for an algorithm: :class:`Collector` and the
:class:`Transition` it returns.

The collector holds the current observations and state, counts env-steps
(``global_step``), and measures the returns and metrics of finished episodes (never buffer
estimates). Its ``state_dict`` holds the core's mutable state (``BatchedP2PEnv.get_state``),
so a resumed run continues the same episodes.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from envs.metrics import EpisodeAccumulator, EpisodeTotals, concat_totals

__all__ = ["Collector", "Transition"]


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
        """Everything a resumed run needs: the core's state (``BatchedP2PEnv.get_state``),
        the current observations and state, ``global_step`` and the running and finished
        episodes' sums."""
        return {
            "core": self.env.get_state(),
            "obs": self.obs.clone(), "state": self.state.clone(),
            "global_step": self.global_step,
            "accumulator": _clone(vars(self.accumulator)),  # sums of running episodes
            "finished": [{f.name: getattr(totals, f.name) for f in dataclasses.fields(totals)}
                         for totals in self._finished],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the core checks its part (``set_state``: ValueError
        naming the key, e.g. for the state of another community)."""
        env = self.env
        state = _clone(state, env.device)
        env.set_state(state["core"])
        self.obs, self.state = state["obs"], state["state"]
        self.global_step = int(state["global_step"])
        for name, value in state["accumulator"].items():
            setattr(self.accumulator, name, value)
        self._finished = [EpisodeTotals(**item) for item in state["finished"]]
