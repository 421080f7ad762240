"""Numba kernels of the single-environment engine (see envs.single.engine).

The kernels are compiled with ``cache=True``: numba keeps them in ``__pycache__`` and
reuses them while the kernel's own source file is unchanged. It does not look at the
other files a kernel compiles in: the kernels it calls from another module and the
module-level values it reads (numba freezes globals as constants at compile time). So
importing this package first deletes every cached kernel older than a module of
:data:`KERNEL_READS` (:func:`drop_stale_kernel_caches`); without this an edit there would
not reach the engine until its cache was cleared by hand.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["KERNEL_READS", "drop_stale_kernel_caches"]

KERNEL_READS: dict[str, tuple[str, ...]] = {
    "engine": ("envs.behaviour", "envs.config", "envs.data", "envs.info_schema", "envs.market",
               "envs.observations", "envs.rng", "envs.single.market", "envs.single.network",
               "envs.single.rng"),
    "market": ("envs.market",),
    "network": (),
    "rng": ("envs.rng",),
}
"""For each module of this package with cached kernels, every other module that its
compiled kernels depend on: the modules of the kernels they call (and, in turn, of what
those read), of the globals they read, and of the values those globals are computed from
(``engine``'s ``_N_ENV_INFO = len(ENV_INFO)`` reads ``envs.info_schema``, its
``STEPS_PER_YEAR`` of ``envs.data`` is computed from ``envs.config.DAYS_PER_YEAR``; the
observation layout comes from ``envs.observations``, the random streams, the noise counter
and the hash's constants from ``envs.rng``).
``tests/test_single_kernels.py`` derives this table from the kernels' code and fails when
it differs."""

_REPOSITORY = Path(__file__).resolve().parents[2]
"""The folder holding the ``envs`` package."""


def drop_stale_kernel_caches(root: Path = _REPOSITORY) -> list[Path]:
    """Delete the cached kernels of each module of :data:`KERNEL_READS` (numba's
    ``envs/single/__pycache__/<module>.*.nbi`` index and ``.nbc`` data files under ``root``)
    that are older than the module itself or one it reads; returns the files deleted.

    A read-only install is left alone: its files do not change either.
    """
    folder = root / "envs" / "single"
    deleted = []
    for module, reads in KERNEL_READS.items():
        sources = [folder / f"{module}.py"]
        sources += [root.joinpath(*name.split(".")).with_suffix(".py") for name in reads]
        try:
            newest = max(source.stat().st_mtime for source in sources)
            for cached in sorted((folder / "__pycache__").glob(f"{module}.*.nb[ci]")):
                if cached.stat().st_mtime < newest:
                    cached.unlink(missing_ok=True)
                    deleted.append(cached)
        except OSError:
            pass
    return deleted


drop_stale_kernel_caches()
