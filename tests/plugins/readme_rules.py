"""The README's examples of a policy of one's own (section "Benchmark your own policy"): one
rule at the PettingZoo level and at the batched level."""

from __future__ import annotations

import numpy as np
import torch


class SunnyDiscount:
    """PettingZoo level: charge from the PV surplus, discharge into the deficit; sell cheaper
    while the sun shines."""

    def __init__(self, discount: float = 0.3):
        self.discount = discount

    def __call__(self, observations):
        actions = {}
        for agent, obs in observations.items():
            load, pv = obs[0], obs[1]  # this step's load and PV / the home's peak load
            battery = np.clip(4.0 * (pv - load), -1.0, 1.0)  # > 0 charges
            price = 0.5 - self.discount if pv > load else 0.5  # fraction of [feed-in, retail]
            actions[agent] = np.array([battery, price], dtype=np.float32)
        return actions


class SunnyDiscountBatched:
    """The same rule on the whole batch at once: obs [B, N, obs_dim] -> actions [B, N, 2]."""

    def __init__(self, discount: float = 0.3):
        self.discount = discount

    def act(self, obs):
        load, pv = obs[..., 0], obs[..., 1]
        battery = (4.0 * (pv - load)).clamp(-1.0, 1.0)
        price = torch.where(pv > load, 0.5 - self.discount, 0.5)
        return torch.stack([battery, price], dim=-1)
