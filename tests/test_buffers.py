"""agents/buffers.py: n-step returns of the replay buffer against a hand-kept record."""

from __future__ import annotations

import pytest
import torch

from agents.buffers import ReplayBuffer
from agents.collector import Transition

N_ENVS, STEPS, CAPACITY, GAMMA = 2, 7, 10, 0.5
ENDS = {(2, 0), (5, 1)}
"""(collector step, environment) pairs whose episode ends at that step."""


def reward(t: int, b: int) -> float:
    return 10.0 * t + b


def filled_buffer() -> ReplayBuffer:
    """7 collector steps of 2 environments in 10 slots (wrapped: steps 2..6 remain); obs hold
    ``100 t + b``, next_obs ``1000 + 100 t + b``."""
    buffer = ReplayBuffer(CAPACITY, n_agents=1, obs_dim=1, state_dim=1, action_shape=(1,),
                          action_dtype=torch.float32)
    for t in range(STEPS):
        code = torch.tensor([[[100.0 * t + b]] for b in range(N_ENVS)])
        buffer.add(Transition(
            obs=code, state=code[:, 0], action=code, next_obs=code + 1000.0,
            next_state=code[:, 0] + 1000.0, reward=torch.tensor([[reward(t, b)]
                                                                 for b in range(N_ENVS)]),
            terminated=torch.tensor([(t, b) in ENDS for b in range(N_ENVS)]),
            truncated=torch.zeros(N_ENVS, dtype=torch.bool), info={}))
    return buffer


def expected(t: int, b: int, n_step: int) -> tuple[float, float, float, bool]:
    """(summed reward, discount, next_obs, terminated) by hand: the next ``n_step`` steps of
    environment b from step t, stopping after an episode's end or at the newest step."""
    total, discount, last = 0.0, 1.0, t
    for k in range(n_step):
        if t + k >= STEPS:
            break
        total += discount * reward(t + k, b)
        discount *= GAMMA
        last = t + k
        if (t + k, b) in ENDS:
            return total, 0.0, 1000.0 + 100.0 * last + b, True
    return total, discount, 1000.0 + 100.0 * last + b, False


@pytest.mark.parametrize("n_step", [1, 2, 3, 5])
def test_n_step_returns_match_the_hand_kept_record(n_step):
    buffer = filled_buffer()
    batch = buffer.sample_n_step(400, torch.Generator().manual_seed(0), n_step, GAMMA,
                                 stride=N_ENVS)
    seen = set()
    for i in range(400):
        code = int(batch["obs"][i, 0, 0])
        t, b = divmod(code, 100)
        seen.add((t, b))
        total, discount, next_obs, ended = expected(t, b, n_step)
        assert float(batch["rewards"][i, 0]) == pytest.approx(total), (t, b)
        assert float(batch["discount"][i]) == pytest.approx(discount), (t, b)
        assert float(batch["next_obs"][i, 0, 0]) == next_obs, (t, b)
        assert float(batch["next_state"][i, 0]) == next_obs, (t, b)
        assert bool(batch["terminated"][i]) == ended, (t, b)
    assert seen == {(t, b) for t in range(2, STEPS) for b in range(N_ENVS)}  # 2..6 remain


def test_one_step_equals_plain_sampling():
    buffer = filled_buffer()
    plain = buffer.sample(50, torch.Generator().manual_seed(3))
    n_step = buffer.sample_n_step(50, torch.Generator().manual_seed(3), 1, GAMMA, N_ENVS)
    for key in ("obs", "actions", "rewards", "next_obs", "terminated"):
        torch.testing.assert_close(n_step[key], plain[key])
    torch.testing.assert_close(n_step["discount"],
                               torch.where(plain["terminated"], 0.0, GAMMA))
