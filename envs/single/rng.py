"""Counter-based random numbers of ``envs.rng`` for one environment, as numba kernels.

Same SplitMix64 hashing of (env seed, counter, stream, element index), bit for bit: a draw
here equals the batched core's draw for the environment with the same seed. The hash's
constants, the stream ids and the noise counter are ``envs.rng``'s own, read from there.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from envs import rng

_GOLDEN = np.uint64(rng.GOLDEN_GAMMA)
_MIX_1 = np.uint64(rng.MIX_MULTIPLIER_1)
_MIX_2 = np.uint64(rng.MIX_MULTIPLIER_2)
_STREAM_MULTIPLIER = np.uint64(rng.STREAM_MULTIPLIER)
_SHIFT_30 = np.uint64(30)
_SHIFT_27 = np.uint64(27)
_SHIFT_31 = np.uint64(31)
_SHIFT_11 = np.uint64(11)
_TWO_POW_53 = 1.0 / float(1 << 53)


@njit(cache=True)
def splitmix64(x: np.uint64) -> np.uint64:
    """Mirrors ``envs.rng.splitmix64`` (wrapping uint64 arithmetic)."""
    x = x + _GOLDEN
    x = (x ^ (x >> _SHIFT_30)) * _MIX_1
    x = (x ^ (x >> _SHIFT_27)) * _MIX_2
    return x ^ (x >> _SHIFT_31)


@njit(cache=True)
def stream_key(seed: int, counter: int, stream: int) -> np.uint64:
    """The per-(seed, counter, stream) key of ``envs.rng.uniform``."""
    key = splitmix64(np.uint64(seed) * _STREAM_MULTIPLIER + np.uint64(stream))
    return splitmix64(key ^ splitmix64(np.uint64(counter)))


@njit(cache=True)
def uniform_at(key: np.uint64, position: int) -> float:
    """Element ``position`` (0-based, flat) of ``envs.rng.uniform``'s draw for ``key``."""
    bits = splitmix64(np.uint64(key) + np.uint64(position + 1) * _GOLDEN)
    return float(bits >> _SHIFT_11) * _TWO_POW_53


@njit(cache=True)
def normal_at(key: np.uint64, position: int, count: int) -> float:
    """Element ``position`` of ``envs.rng.normal``'s draw of ``count`` numbers (Box-Muller on
    the flat uniforms ``position`` and ``count + position``)."""
    key = np.uint64(key)
    radius = math.sqrt(-2.0 * math.log1p(-uniform_at(key, position)))
    return radius * math.cos(2.0 * math.pi * uniform_at(key, count + position))


@njit(cache=True)
def random_rank_into(key: np.uint64, rank: np.ndarray) -> None:
    """Mirrors ``envs.rng.random_rank`` for one environment: write into ``rank [n]`` (int64)
    each element's place in the random order of the ``n`` uniforms of ``key`` (stable)."""
    n = rank.shape[0]
    draws = np.empty(n)
    for position in range(n):
        draws[position] = uniform_at(key, position)
    order = np.argsort(draws, kind="mergesort")
    for place in range(n):
        rank[order[place]] = place


forecast_noise_counter = njit(rng.forecast_noise_counter)
"""``envs.rng.forecast_noise_counter`` itself, compiled for the engine's kernels."""
