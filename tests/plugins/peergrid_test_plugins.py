"""Policies of a user's own, for tests/test_plugins.py (plain files, not a test module).

Each is evaluated through ``agents.external``; the rule followers act on the observation's
``rule_battery`` feature (``observation.rule: self_consumption``), so they reproduce the
built-in ``self_consumption`` rule exactly.
"""

from __future__ import annotations

import numpy as np
import torch

EPISODE_STEPS = 96


class NoMarket:
    """PettingZoo level: battery idle, price at the midpoint, no market (= ``no_p2p``)."""

    mechanism = "none"

    def __call__(self, observations):
        return {agent: np.array([0.0, 0.5], dtype=np.float32) for agent in observations}


class RuleFollower:
    """PettingZoo level: the observed self-consumption battery fraction (last feature), a
    fixed price fraction."""

    def __init__(self, price: float = 0.5) -> None:
        self.price = price

    def __call__(self, observations):
        return {agent: [float(obs[-1]), self.price] for agent, obs in observations.items()}


def rule_follower(observations, price=0.5):
    """PettingZoo level as a function (options as keyword arguments)."""
    return {agent: np.array([obs[-1], price]) for agent, obs in observations.items()}


class InfoRecorder(RuleFollower):
    """PettingZoo level with infos: acts as :class:`RuleFollower` and keeps every infos dict
    it is given; sells at the retail price once it has seen a step's clearing price (so what
    it does depends on the infos)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict] = []

    def __call__(self, observations, infos):
        self.seen.append(infos)
        actions = super().__call__(observations)
        traded = any(np.isfinite(info["clearing_price"]) for info in infos.values())
        return {agent: [battery, 1.0 if traded else price]
                for agent, (battery, price) in actions.items()}


def info_rule(observations, price=0.5, *, infos):
    """PettingZoo level as a function with options and infos (keyword only)."""
    assert set(infos) == set(observations)
    return rule_follower(observations, price)


class BatchedRuleFollower:
    """Batched level: ``act(obs [B, N, obs_dim])``."""

    def __init__(self, price: float = 0.5) -> None:
        self.price = price

    def act(self, obs):
        battery = obs[..., -1]
        return torch.stack([battery, torch.full_like(battery, self.price)], dim=-1)


class EpisodeCounter:
    """PettingZoo level with state: counts its calls since ``reset()`` and refuses more than
    one episode's steps (it sees one community, as in the PettingZoo env)."""

    def __init__(self) -> None:
        self.calls = 0

    def reset(self) -> None:
        self.calls = 0

    def __call__(self, observations):
        self.calls += 1
        if self.calls > EPISODE_STEPS:
            raise RuntimeError(f"called {self.calls} times in one episode")
        return {agent: (0.0, 0.5) for agent in observations}


class WrongShape:
    """Returns one number per agent where two are expected."""

    def __call__(self, observations):
        return {agent: np.array([0.0]) for agent in observations}


class MissingAgent:
    """Forgets the last agent."""

    def __call__(self, observations):
        agents = list(observations)[:-1]
        return {agent: np.array([0.0, 0.5]) for agent in agents}


class OutOfBounds:
    """Asks for twice the battery's power."""

    def __call__(self, observations):
        return {agent: np.array([2.0, 0.5]) for agent in observations}


class Raises:
    """Fails inside the policy."""

    def __call__(self, observations):
        raise RuntimeError("my policy broke")


class BatchedWrongAgents:
    """Batched level, acting for one agent too few."""

    def act(self, obs, env):
        b, n = obs.shape[:2]
        return torch.zeros(b, n - 1, 2)


class ActTakesThree:
    """An ``act`` that takes neither (obs, env) nor (obs)."""

    def act(self, obs, env, state):
        return obs


class NoMethod:
    """Neither callable nor with an act method."""


not_a_policy = NoMethod()
