"""The single-environment RNG and power-flow kernels (envs/single/rng.py, network.py) against
the torch functions they mirror (envs/rng.py, envs/network.py), and the invalidation of the
kernels' on-disk cache (envs/single/__init__.py)."""

from __future__ import annotations

import ast
import dis
import functools
import importlib
import os
import pkgutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import envs
import envs.single
from envs import rng
from envs.network import network_summary
from envs.single import KERNEL_READS, drop_stale_kernel_caches
from envs.single import rng as single_rng
from envs.single.network import grid_arrays, solve_into, summarise_into


@pytest.mark.parametrize("stream", [1, 2, 7])
def test_draws_equal_the_batched_streams_bit_for_bit(stream: int) -> None:
    seeds = torch.tensor([0, 5, -3, 2**40, 2**62 + 11])
    counters = torch.tensor([0, 7, 123_456_789, 3_000, 1])
    shape = (3, 5, 2)
    uniform = rng.uniform(seeds, counters, stream, shape, torch.float64).reshape(5, -1)
    normal = rng.normal(seeds, counters, stream, shape, torch.float64).reshape(5, -1)
    count = uniform.shape[1]
    for b in range(len(seeds)):
        key = np.uint64(single_rng.stream_key(int(seeds[b]), int(counters[b]), stream))
        drawn = [single_rng.uniform_at(key, p) for p in range(count)]
        assert drawn == uniform[b].tolist()
        drawn = [single_rng.normal_at(key, p, count) for p in range(count)]
        np.testing.assert_allclose(drawn, normal[b].numpy(), rtol=0, atol=1e-15)


SUMMARY_KEYS = ("v_min_pu", "v_max_pu", "max_line_loading_percent",
                "max_trafo_loading_percent", "n_voltage_violations", "n_line_violations",
                "losses_kw", "converged")


@pytest.mark.parametrize("feeder", ["1-LV-rural1--0-sw", "1-LV-semiurb4--0-sw", "case33bw"])
def test_power_flow_equals_the_batched_model(feeder: str) -> None:
    core = envs.make_batched_env({"community": {"feeder": feeder}}, dtype="float64")
    model = core.network.model
    grid = grid_arrays(model)
    generator = np.random.default_rng(0)
    # Ordinary steps, heavy export, and a load far beyond what the feeder can carry (the
    # fixed point diverges: NaN results, not converged).
    scales = [generator.uniform(-1, 2, core.n_agents), generator.uniform(-8, -4, core.n_agents),
              np.full(core.n_agents, 400.0)]
    for t, scale in zip([100, 20_000, 30_000], scales, strict=True):
        p_kw = core.load_kw[t].numpy() * scale
        q_kvar = core.load_kvar[t].numpy() * np.abs(scale)
        expected = model.solve(torch.tensor(p_kw)[None], torch.tensor(q_kvar)[None],
                               angles=False)
        vm = np.empty(model.n_bus)
        line, trafo = np.empty(model.n_line), np.empty(model.n_trafo)
        line_p, trafo_p = np.empty(model.n_line), np.empty(model.n_trafo)
        losses, converged, _ = solve_into(grid, p_kw, q_kvar, vm, line, trafo, line_p, trafo_p)
        assert converged == bool(expected.converged[0])
        for got, want in [(vm, expected.vm_pu), (line, expected.line_loading_percent),
                          (trafo, expected.trafo_loading_percent),
                          (line_p, expected.line_p_from_kw), (trafo_p, expected.trafo_p_hv_kw),
                          (losses, expected.losses_kw)]:
            np.testing.assert_allclose(got, want[0].numpy(), rtol=1e-9, atol=1e-9,
                                       equal_nan=True)
        summary = np.empty(8)
        flagged = summarise_into(vm, line, trafo, losses, converged, 0.95, 1.05, summary)
        reference = network_summary(expected)
        np.testing.assert_allclose(summary, [float(reference[key][0]) for key in SUMMARY_KEYS],
                                   rtol=1e-9, atol=1e-9, equal_nan=True)
        assert flagged == (summary[4] + summary[5] > 0 or not converged)
    assert not converged  # the last case really diverged


# --------------------------------------------------------------------------------------------
# The kernels' on-disk cache
# --------------------------------------------------------------------------------------------


def _kernels(module: types.ModuleType) -> list:
    """The numba dispatchers defined in ``module``."""
    return [value for value in vars(module).values()
            if hasattr(value, "py_func") and value.py_func.__module__ == module.__name__]


def _global_names(code: types.CodeType) -> set[str]:
    """The globals that ``code`` and the code nested in it load."""
    names = {instruction.argval for instruction in dis.get_instructions(code)
             if instruction.opname == "LOAD_GLOBAL"}
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= _global_names(constant)
    return names


@functools.cache
def _module_statements(path: str) -> tuple[ast.AST, ...]:
    """The nodes of the module at ``path`` outside its functions and classes."""
    return tuple(_module_level(ast.parse(Path(path).read_text())))


def _module_level(node: ast.AST):
    """The statements of a module outside its functions and classes (in ifs and trys too)."""
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                                  ast.Lambda)):
            yield child
            yield from _module_level(child)


def _providers(module_name: str, name: str, seen: set[tuple[str, str]]) -> set[str]:
    """The modules of this repository whose source determines the global ``name`` of
    ``module_name`` as a kernel reads it: the module binding it, where it is imported from,
    what its module-level assignment reads, and for a kernel, its module and what that
    module's kernels read."""
    if not module_name.startswith("envs.") or (module_name, name) in seen:
        return set()
    seen.add((module_name, name))
    module = importlib.import_module(module_name)
    if name not in vars(module):  # a builtin (range, min, ...)
        return set()
    value = vars(module)[name]
    if isinstance(value, types.ModuleType):  # math, np, or one of ours read as module.name
        return {value.__name__} if value.__name__.startswith("envs.") else set()
    if hasattr(value, "py_func"):
        kernel_module = value.py_func.__module__
        return {kernel_module} | _module_reads(kernel_module, seen)
    found = {module_name}
    for node in _module_statements(module.__file__):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    found |= _providers(node.module, alias.name, seen)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            bound = {target.id for target_node in targets for target in ast.walk(target_node)
                     if isinstance(target, ast.Name)}
            if name in bound and node.value is not None:
                for read in ast.walk(node.value):
                    if isinstance(read, ast.Name) and read.id != name:
                        found |= _providers(module_name, read.id, seen)
    return found


def _module_reads(module_name: str, seen: set[tuple[str, str]] | None = None) -> set[str]:
    """Every module but ``module_name`` that the kernels of ``module_name`` depend on."""
    seen = set() if seen is None else seen
    module = importlib.import_module(module_name)
    found = set()
    for kernel in _kernels(module):
        for name in _global_names(kernel.py_func.__code__):
            found |= _providers(module_name, name, seen)
    return found - {module_name}


def test_the_cache_check_covers_every_module_the_kernels_read() -> None:
    """envs.single.KERNEL_READS lists, for every module with kernels, exactly the modules
    derived from the kernels' code: a kernel newly calling another module's kernel, or
    reading a constant defined (or computed from one) elsewhere, fails here until listed."""
    modules = [f"envs.single.{info.name}" for info in pkgutil.iter_modules(envs.single.__path__)]
    with_kernels = {name.rsplit(".", 1)[1] for name in modules
                    if _kernels(importlib.import_module(name))}
    assert set(KERNEL_READS) == with_kernels
    for module, reads in KERNEL_READS.items():
        assert set(reads) == _module_reads(f"envs.single.{module}"), module
    # The derivation finds what matters: the engine calls the other kernels, reads
    # envs.data's step counts, envs.info_schema's lengths, envs.observations' layout and
    # envs.rng's streams and noise counter; the market kernels read the mechanism codes
    # numbered from envs.market.MECHANISMS; the RNG kernels envs.rng's hash constants.
    assert {"envs.data", "envs.info_schema", "envs.market", "envs.observations", "envs.rng",
            "envs.single.rng"} <= _module_reads("envs.single.engine")
    assert _module_reads("envs.single.market") == {"envs.market"}
    assert _module_reads("envs.single.rng") == {"envs.rng"}


def test_stale_kernel_caches_are_dropped(tmp_path: Path) -> None:
    """A cached kernel older than its module or one it reads is deleted, a newer one kept,
    and only the stale module's files go."""
    for module in KERNEL_READS:
        for name in (module, *KERNEL_READS[module]):
            path = (tmp_path / "envs" / "single" / f"{module}.py" if name == module
                    else tmp_path.joinpath(*name.split(".")).with_suffix(".py"))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            os.utime(path, (1000, 1000))
    cache = tmp_path / "envs" / "single" / "__pycache__"
    cache.mkdir()
    files = {}
    for module in KERNEL_READS:
        for suffix in ("nbi", "1.nbc"):
            files[module, suffix] = cache / f"{module}.kernel-10.py311.{suffix}"
            files[module, suffix].touch()
            os.utime(files[module, suffix], (2000, 2000))
    assert drop_stale_kernel_caches(tmp_path) == []
    os.utime(tmp_path / "envs" / "data.py", (3000, 3000))  # read by the engine only
    assert drop_stale_kernel_caches(tmp_path) == sorted(
        [files["engine", "1.nbc"], files["engine", "nbi"]])
    os.utime(tmp_path / "envs" / "market.py", (3000, 3000))  # read by engine and market
    assert drop_stale_kernel_caches(tmp_path) == sorted(
        [files["market", "1.nbc"], files["market", "nbi"]])
    os.utime(tmp_path / "envs" / "rng.py", (3000, 3000))  # read by engine and rng
    assert drop_stale_kernel_caches(tmp_path) == sorted(
        [files["rng", "1.nbc"], files["rng", "nbi"]])
    assert sorted(cache.iterdir()) == sorted(files["network", suffix]
                                             for suffix in ("nbi", "1.nbc"))
