"""Counter-based random numbers for batched environments.

Each environment owns a seed; every random draw is a pure function of (env seed, counter,
stream, element index), hashed with SplitMix64 (Steele, Lea & Flood 2014, "Fast splittable
pseudorandom number generators", OOPSLA). So environment b of a batch draws exactly what a
single environment with the same seed draws, whatever the batch size, device or call order,
and no global random state is touched.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# The constants of the hash and of the draws, shared with the numba kernels of
# envs.single.rng (which read them as uint64): the two implementations draw the same bits.
GOLDEN_GAMMA = 0x9E3779B97F4A7C15
"""SplitMix64's increment (the odd integer nearest 2**64 / golden ratio), unsigned."""
MIX_MULTIPLIER_1 = 0xBF58476D1CE4E5B9
"""The first multiplier of SplitMix64's finaliser, unsigned."""
MIX_MULTIPLIER_2 = 0x94D049BB133111EB
"""The second multiplier of SplitMix64's finaliser, unsigned."""
STREAM_MULTIPLIER = 0x1F3
"""The key of a draw hashes ``seed * STREAM_MULTIPLIER + stream`` (:func:`uniform`)."""

# The random streams of the environment (``stream`` of :func:`uniform`): one per use, so
# draws never collide. The core (envs.core) and the numba engine (envs.single.engine) both
# read them from here.
STREAM_START_DAY = 1
"""Start day of each episode; counter: the environment's episode number."""
STREAM_FORECAST_NOISE = 2
"""Noise of the observed load, PV and forecasts; counter: :func:`forecast_noise_counter`."""
STREAM_CDA_ARRIVAL = 3
"""Arrival order of the orders in the continuous double auction (``market.mechanism: cda``,
:func:`random_rank`); counter: :func:`forecast_noise_counter` of the step."""
NOISE_COUNTER_STRIDE = 1000
"""Counters of :data:`STREAM_FORECAST_NOISE` (and :data:`STREAM_CDA_ARRIVAL`) per episode (more
than the 96 steps of a day)."""


def forecast_noise_counter(episode_count: Tensor | int, step_of_episode: Tensor | int
                           ) -> Tensor | int:
    """The counter of the observation noise drawn at ``step_of_episode`` (``day_of_episode *
    96 + step_of_day``) of episode number ``episode_count``: ``episode_count *
    NOISE_COUNTER_STRIDE + step_of_episode``. Plain arithmetic, so the same function serves
    int64 tensors ``[B]`` (the core) and ints (the numba engine compiles it)."""
    return episode_count * NOISE_COUNTER_STRIDE + step_of_episode


_MASK_64 = (1 << 64) - 1


def _signed(value: int) -> int:
    value &= _MASK_64
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN = _signed(GOLDEN_GAMMA)
_MIX_1 = _signed(MIX_MULTIPLIER_1)
_MIX_2 = _signed(MIX_MULTIPLIER_2)


def _shift_right(x: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(x: Tensor) -> Tensor:
    """The SplitMix64 finaliser on int64 tensors (wrapping arithmetic)."""
    x = x + _GOLDEN
    x = (x ^ _shift_right(x, 30)) * _MIX_1
    x = (x ^ _shift_right(x, 27)) * _MIX_2
    return x ^ _shift_right(x, 31)


def uniform(seed: Tensor, counter: Tensor, stream: int, shape: tuple[int, ...] = (),
            dtype: torch.dtype = torch.float32) -> Tensor:
    """Uniform numbers in [0, 1), shape ``[B, *shape]``, for int64 ``seed [B]`` and
    ``counter [B]``; ``stream`` separates independent uses (start day, noise, ...)."""
    key = splitmix64(seed.to(torch.int64) * STREAM_MULTIPLIER + stream)
    key = splitmix64(key ^ splitmix64(counter.to(torch.int64)))
    count = math.prod(shape)
    index = torch.arange(1, count + 1, device=seed.device, dtype=torch.int64)
    bits = splitmix64(key[:, None] + index[None, :] * _GOLDEN)
    mantissa = _shift_right(bits, 11).to(torch.float64) * (1.0 / (1 << 53))
    return mantissa.reshape(seed.shape[0], *shape).to(dtype)


def normal(seed: Tensor, counter: Tensor, stream: int, shape: tuple[int, ...] = (),
           dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal numbers, shape ``[B, *shape]`` (Box-Muller on :func:`uniform`)."""
    u = uniform(seed, counter, stream, (2, *shape), torch.float64)
    radius = torch.sqrt(-2.0 * torch.log1p(-u[:, 0]))
    return (radius * torch.cos(2.0 * math.pi * u[:, 1])).to(dtype)


def random_rank(seed: Tensor, counter: Tensor, stream: int, n: int) -> Tensor:
    """``[B, n]`` int64: the place of each of ``n`` elements in a random order, the ranks of
    ``n`` draws of :func:`uniform` (``0`` for the smallest; ties, of probability ~``2**-53``,
    by index). ``envs.single.rng.random_rank_into`` draws the same ranks."""
    draws = uniform(seed, counter, stream, (n,), torch.float64)
    return draws.argsort(dim=1, stable=True).argsort(dim=1)
