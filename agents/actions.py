"""Actions in the core's action space: mapping policy outputs (algorithms) and rule
fractions (baselines) onto it.

The core takes continuous ``[B, N, 2]`` actions (battery fraction in [-1, 1], > 0 charges;
price fraction in [0, 1] of the band [feed-in, retail]) or discrete ``[B, N]`` indices
``battery_level * price_levels + price_level``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from envs.config import ConfigError

__all__ = ["RulePrior", "env_actions", "squash_actions", "symmetric_to_env"]


def symmetric_to_env(action: Tensor) -> Tensor:
    """Map symmetric actions in [-1, 1]^2 ``[..., 2]`` to the core's [battery in [-1, 1],
    price in [0, 1]] (price = (a + 1) / 2), clamping to the bounds."""
    action = action.clamp(-1.0, 1.0)
    return torch.stack([action[..., 0], 0.5 * (action[..., 1] + 1.0)], dim=-1)


def squash_actions(raw: Tensor, how: str) -> Tensor:
    """Map unbounded policy outputs ``[..., 2]`` to the core's action box: ``tanh``
    squashes, ``clip`` clamps to [-1, 1]; then :func:`symmetric_to_env`."""
    return symmetric_to_env(torch.tanh(raw) if how == "tanh" else raw)



def env_actions(battery_fraction: Tensor, price_fraction: Tensor, env: Any) -> Tensor:
    """Actions in ``env``'s action space from a battery fraction in [-1, 1] (> 0 charges, of
    ``env.battery_kw``) and a price fraction in [0, 1] (of [feed-in, retail]), each ``[B, N]``.

    Continuous: ``[B, N, 2]``. Discrete: the index ``battery_level * price_levels +
    price_level`` of the nearest levels (``envs.core.BatchedP2PEnv.decode_actions``'s grid).
    """
    battery_fraction = battery_fraction.clamp(-1.0, 1.0).to(env.dtype)
    price_fraction = price_fraction.clamp(0.0, 1.0).to(env.dtype)
    action = env.config.action
    if action.type == "continuous":
        return torch.stack([battery_fraction, price_fraction], dim=-1)
    return discrete_actions(battery_fraction, price_fraction, action.battery_levels,
                            action.price_levels)


def discrete_actions(battery_fraction: Tensor, price_fraction: Tensor, battery_levels: int,
                     price_levels: int) -> Tensor:
    """The discrete action ``battery_level * price_levels + price_level`` (int64, ``[...]``)
    nearest to a battery fraction in [-1, 1] and a price fraction in [0, 1] (each ``[...]``):
    the nearest of ``battery_levels`` levels evenly spaced over [-1, 1] and of
    ``price_levels`` over [0, 1] (``envs.core.BatchedP2PEnv.decode_actions``'s grid); a value
    halfway between two levels goes to the even level index (``torch.round``)."""
    battery_level = torch.round((battery_fraction.clamp(-1.0, 1.0) + 1.0) / 2.0
                                * (battery_levels - 1))
    price_level = torch.round(price_fraction.clamp(0.0, 1.0) * (price_levels - 1))
    return battery_level.long() * price_levels + price_level.long()


class RulePrior:
    """The rule's continuous action before the squash, from the observation's
    ``rule_battery`` feature (``envs.observations``): ``[atanh(rule), 0]`` for the ``tanh``
    squash, ``[rule, 0]`` for ``clip``; the price stays at the tariff midpoint, where a zero
    output already lands. ``__call__(obs [..., obs_dim]) -> [..., 2]``. A
    residual policy adds its output to this (``spec``: an ``agents.algorithm.EnvSpec``; ``key``:
    the config key that asked for it, named in errors)."""

    LIMIT = 0.995
    """Rule actions are clamped to +-LIMIT before atanh (a saturated mean of +-3)."""

    def __init__(self, spec: Any, squash: str, key: str) -> None:
        if spec.action_type != "continuous":
            raise ConfigError(f"config key '{key}': got true; allowed: true only with "
                              f"continuous actions (env.action.type=continuous)")
        if "rule_battery" not in spec.feature_names:
            raise ConfigError(f"config key '{key}': got true; allowed: true only when the "
                              f"observation holds a rule's action (set env.observation.rule, "
                              f"e.g. self_consumption)")
        self.index = spec.feature_names.index("rule_battery")
        self.squash = squash

    def __call__(self, obs: Tensor) -> Tensor:
        rule = obs[..., self.index].clamp(-self.LIMIT, self.LIMIT)
        battery = torch.atanh(rule) if self.squash == "tanh" else rule
        return torch.stack([battery, torch.zeros_like(battery)], dim=-1)
