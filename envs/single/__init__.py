"""Numba kernels of the single-environment engine (see envs.single.engine)."""
