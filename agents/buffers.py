"""Experience storage shared by the algorithms, all in preallocated torch tensors.

- :class:`RolloutBuffer`: one on-policy rollout of T steps of the batched core
  (``[T, B, N, ...]``) and generalised advantage estimation over it.
- :class:`ReplayBuffer`: a ring buffer of env-steps (every agent of one community at one
  step, ``[capacity, N, ...]``) for off-policy algorithms, sampled with the run's generator.

Both keep everything in ``state_dict`` so a resumed run continues bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor

from agents.collector import Transition


def generalized_advantages(rewards: Tensor, values: Tensor, terminated: Tensor,
                           last_value: Tensor, gamma: float, gae_lambda: float
                           ) -> tuple[Tensor, Tensor]:
    """GAE(gamma, lambda) (Schulman et al. 2016, "High-dimensional continuous control using
    generalized advantage estimation").

    Args: ``rewards``, ``values`` ``[T, B, N]`` (values of the observations acted on);
    ``terminated [T, B]`` (the episode ended with step t: no bootstrap across it; truncation
    must already be folded into the reward); ``last_value [B, N]`` (value of the observation
    after step T-1). Returns ``(advantages, returns)``, each ``[T, B, N]``.
    """
    steps = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(last_value)
    next_value = last_value
    not_done = (~terminated).to(rewards.dtype)[..., None]  # [T, B, 1]
    for t in range(steps - 1, -1, -1):
        delta = rewards[t] + gamma * next_value * not_done[t] - values[t]
        running = delta + gamma * gae_lambda * not_done[t] * running
        advantages[t] = running
        next_value = values[t]
    return advantages, advantages + values


class RolloutBuffer:
    """T steps of B environments of N agents for on-policy updates.

    Per agent ``[T, B, N, ...]``: ``obs``, ``actions`` (``[T, B, N, action_dim]`` float or
    ``[T, B, N]`` int64), ``log_probs``, ``values``, ``rewards``; per env ``[T, B, ...]``:
    ``state``, ``terminated``.
    """

    def __init__(self, steps: int, n_envs: int, n_agents: int, obs_dim: int, state_dim: int,
                 action_shape: tuple[int, ...], action_dtype: torch.dtype,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
                 ) -> None:
        t, b, n = steps, n_envs, n_agents
        options = {"device": device, "dtype": dtype}
        self.steps = steps
        self.obs = torch.zeros(t, b, n, obs_dim, **options)
        self.state = torch.zeros(t, b, state_dim, **options)
        self.actions = torch.zeros(t, b, n, *action_shape, device=device, dtype=action_dtype)
        self.log_probs = torch.zeros(t, b, n, **options)
        self.values = torch.zeros(t, b, n, **options)
        self.rewards = torch.zeros(t, b, n, **options)
        self.terminated = torch.zeros(t, b, dtype=torch.bool, device=device)

    def store(self, t: int, obs: Tensor, state: Tensor, actions: Tensor, log_probs: Tensor,
              values: Tensor, rewards: Tensor, terminated: Tensor) -> None:
        """Write step ``t`` (each argument without the leading T dimension)."""
        self.obs[t] = obs
        self.state[t] = state
        self.actions[t] = actions
        self.log_probs[t] = log_probs
        self.values[t] = values
        self.rewards[t] = rewards
        self.terminated[t] = terminated


class ReplayBuffer:
    """A ring buffer of env-steps: every agent of one environment at one step.

    Storage ``[capacity, N, ...]`` for ``obs``, ``next_obs``, ``actions``, ``rewards``;
    ``[capacity, ...]`` for ``state``, ``next_state``, ``terminated``. ``next_obs`` /
    ``next_state`` of the last step of an episode are the final ones (not the reset ones).
    """

    def __init__(self, capacity: int, n_agents: int, obs_dim: int, state_dim: int,
                 action_shape: tuple[int, ...], action_dtype: torch.dtype,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
                 ) -> None:
        c, n = capacity, n_agents
        options = {"device": device, "dtype": dtype}
        self.capacity = capacity
        self.obs = torch.zeros(c, n, obs_dim, **options)
        self.next_obs = torch.zeros(c, n, obs_dim, **options)
        self.state = torch.zeros(c, state_dim, **options)
        self.next_state = torch.zeros(c, state_dim, **options)
        self.actions = torch.zeros(c, n, *action_shape, device=device, dtype=action_dtype)
        self.rewards = torch.zeros(c, n, **options)
        self.terminated = torch.zeros(c, dtype=torch.bool, device=device)
        self.position = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, transition: Transition) -> None:
        """Append the B env-steps of one collector step (wrapping around)."""
        b = transition.reward.shape[0]
        index = (self.position + torch.arange(b, device=self.rewards.device)) % self.capacity
        self.obs[index] = transition.obs.to(self.obs.dtype)
        self.next_obs[index] = transition.next_obs.to(self.obs.dtype)
        self.state[index] = transition.state.to(self.state.dtype)
        self.next_state[index] = transition.next_state.to(self.state.dtype)
        self.actions[index] = transition.action.to(self.actions.dtype)
        self.rewards[index] = transition.reward.to(self.rewards.dtype)
        self.terminated[index] = transition.terminated
        self.position = (self.position + b) % self.capacity
        self.size = min(self.size + b, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        """``batch_size`` env-steps drawn uniformly with replacement from ``generator``."""
        index = torch.randint(self.size, (batch_size,), generator=generator,
                              device=generator.device)
        index = index.to(self.rewards.device)
        return {name: getattr(self, name).index_select(0, index) for name in self._tensors()}

    def sample_n_step(self, batch_size: int, generator: torch.Generator, n_step: int,
                      gamma: float, stride: int) -> dict[str, Tensor]:
        """Like :meth:`sample`, with ``n_step``-step returns: ``rewards`` is the discounted
        sum of the rewards of the next up to ``n_step`` steps of the same environment
        (``stride`` = environments per collector step, the slots between its consecutive
        steps), stopping after the episode's last step or at the newest stored step;
        ``next_obs``/``next_state`` are those after the last step summed and ``discount`` is
        ``gamma ** steps`` (0 after the episode's last step), so the target is ``rewards +
        discount * Q'(next)``."""
        index = torch.randint(self.size, (batch_size,), generator=generator,
                              device=generator.device).to(self.rewards.device)
        age = (self.position - 1 - index) % self.capacity  # 0 = the newest slot
        batch = {name: getattr(self, name).index_select(0, index)
                 for name in ("obs", "state", "actions")}
        total = self.rewards.new_zeros((batch_size, *self.rewards.shape[1:]))
        discount = torch.ones(batch_size, dtype=self.rewards.dtype, device=index.device)
        last = index.clone()
        alive = torch.ones(batch_size, dtype=torch.bool, device=index.device)
        for k in range(n_step):
            alive &= age >= k * stride  # a step not stored yet ends the sum
            if k and not bool(alive.any()):
                break
            slot = (index + k * stride) % self.capacity
            total += torch.where(alive[:, None],
                                 discount[:, None] * self.rewards.index_select(0, slot), 0.0)
            last = torch.where(alive, slot, last)
            discount = torch.where(alive, discount * gamma, discount)
            alive &= ~self.terminated.index_select(0, slot)
        ended = self.terminated.index_select(0, last)
        batch.update(rewards=total, next_obs=self.next_obs.index_select(0, last),
                     next_state=self.next_state.index_select(0, last), terminated=ended,
                     discount=torch.where(ended, 0.0, discount))
        return batch

    @staticmethod
    def _tensors() -> tuple[str, ...]:
        return ("obs", "next_obs", "state", "next_state", "actions", "rewards", "terminated")

    def state_dict(self) -> dict:
        """Only the filled part of the storage, plus the write position."""
        return {"position": self.position, "size": self.size,
                **{name: getattr(self, name)[: self.size].clone() for name in self._tensors()}}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])
        self.size = int(state["size"])
        for name in self._tensors():
            getattr(self, name)[: self.size] = state[name]
