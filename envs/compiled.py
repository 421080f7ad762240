"""The compiled core: the batched core's step run through ``torch.compile`` (config key
``compile``: true, false or auto).

:meth:`envs.core.BatchedP2PEnv.step` is split into stages that are pure tensor functions of
the core's state and tables, with the Python control flow (action checks, the solver's
convergence test, resets) left outside:

- ``trade``: :meth:`~envs.core.BatchedP2PEnv._trade` (profiles, battery, the configured
  market mechanism, P2P charges);
- ``network``: the ``zbus`` power flow in real arithmetic (:class:`envs.network.RealZbus`:
  inductor generates no code for complex tensors), compiled as its first iterations, further
  blocks of :data:`ITERATION_BLOCK` iterations run until every environment has converged or
  ``network.max_iterations`` is reached (an environment that converged keeps its voltages, as
  in the eager solver, so results do not depend on the batch), then the results and
  statistics (:meth:`envs.grid.PowerFlowNetwork.statistics`) and, where some environment has
  a violation, the penalty shares (:meth:`~envs.grid.PowerFlowNetwork.penalty`); the ``ac``
  model (pandapower) and ``none`` run eager;
- ``settle``: :meth:`~envs.core.BatchedP2PEnv._settle` (terminal value, costs, rewards,
  info);
- ``observe``: :meth:`~envs.core.BatchedP2PEnv.observe`.

Each stage is compiled with ``fullgraph=True, dynamic=False`` (for the core's batch shape)
on its first call; the seconds spent there are :attr:`CompiledStages.compile_seconds`
(inductor's on-disk FX graph cache makes later processes compile the same graphs faster).
A stage that cannot be compiled (a graph break, e.g. a mechanism with data-dependent Python
control flow, or code inductor cannot generate, e.g. the int64 hashing of
``observation.forecast_noise``'s random streams) runs eager, with a warning naming the stage
and the reason (:attr:`CompiledStages.eager_stages`); where compilation itself is
unavailable (no C++ compiler, an unsupported platform: a one-line probe fails) one warning
says so and every core of the process runs eager.
Results equal the eager core's to float rounding (``tests/test_compiled.py``).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from envs.config import EnvConfig
from envs.grid import NetworkStep, PowerFlowNetwork

if TYPE_CHECKING:
    from envs.core import BatchedP2PEnv
    from envs.network import PowerFlowResult

AUTO_MIN_ENVS = 1024
"""``compile: auto`` compiles the core from this many environments on. Measured on a 2-core
CPU (README "Compiled core"): the compiled step is 1.4-1.8x faster from B = 64 on, but the
compilation takes 10-20 s (1-4 s from inductor's cache); at B = 1024 it saves about 2 ms a
step and pays off within about 7,500 steps, at B = 64 only after about 30,000. Smaller batches
(the PettingZoo env at B = 1, training at B = 32..128, the tests) are left eager."""

ITERATION_BLOCK = 4
"""Fixed-point iterations of the ``zbus`` solver per compiled call; the convergence test
(one host sync) runs between blocks (the eager solver tests after every iteration: 5-8
iterations per step on the shipped feeders)."""

SCALAR_CPU_OPTIONS = {"cpp.simdlen": 1}
"""Inductor options on the CPU for the stages whose tensors are ``[B, N]`` or smaller in the
last dimension (trade, settle, observe, the network's statistics): no SIMD vectorisation.
Inductor vectorises the innermost dimension, here tiny (agents, 2 profile features, 4
forecast steps), with masked tail loads: measured about 2x slower than its scalar loops. The
solver's iterations (``[B, 2 L]``) keep the default."""

RECOMPILE_LIMIT = 64
"""Cores of distinct configs (or batch sizes) per process whose stages compile; dynamo's
``recompile_limit`` (default 8) is raised to it when a compiled core is built."""

_unavailable: str | None = None
"""Why compilation failed in this process (then every later core runs eager), or None."""


def compile_wanted(config: EnvConfig) -> bool:
    """Whether a core of ``config`` runs compiled: ``compile`` true, or auto with at least
    :data:`AUTO_MIN_ENVS` environments; never after compilation failed in this process."""
    if _unavailable is not None or config.compile is False:
        return False
    return config.compile is True or config.n_envs >= AUTO_MIN_ENVS


class _Stage:
    """One compiled function with its eager twin: the first call compiles (timed); if that
    fails the stage runs eager from then on, with a warning."""

    def __init__(self, name: str, eager: Callable[..., Any], device: torch.device,
                 vectorise: bool = False) -> None:
        self.name = name
        self.eager = eager
        options = SCALAR_CPU_OPTIONS if device.type == "cpu" and not vectorise else None
        self.compiled = torch.compile(eager, fullgraph=True, dynamic=False, options=options)
        self.compile_seconds = 0.0
        self.eager_reason: str | None = None
        self._ready = False

    @property
    def started(self) -> bool:
        """Whether the first call (the compilation, or the fallback to eager) has happened."""
        return self._ready or self.eager_reason is not None or _unavailable is not None

    def __call__(self, *args: Any) -> Any:
        if self._ready:
            return self.compiled(*args)
        if self.eager_reason is not None or _unavailable is not None:
            return self.eager(*args)
        start = time.perf_counter()
        if not _compiler_works(args):
            self.eager_reason = _unavailable
            return self.eager(*args)
        try:
            result = self.compiled(*args)
        except Exception as error:  # a graph break, or code inductor cannot generate
            self.eager_reason = _first_line(error)
            warnings.warn(f"peergrid compiled core: stage {self.name!r} cannot be compiled "
                          f"({self.eager_reason}); it runs eager", RuntimeWarning,
                          stacklevel=3)
            return self.eager(*args)
        self.compile_seconds += time.perf_counter() - start
        self._ready = True
        return result


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


_probed_devices: set[str] = set()
"""The devices where :func:`_compiler_works` compiled its probe."""


def _compiler_works(args: tuple[Any, ...]) -> bool:
    """Whether ``torch.compile`` works at all on the device of the tensors in ``args``: a
    one-line function is compiled once per process and device. If that fails (no C++
    compiler, an unsupported platform) one warning says so and every compiled core of the
    process runs eager; the failure of a real stage after that is the stage's own."""
    global _unavailable
    if _unavailable is not None:
        return False
    tensor = next((arg for arg in args if isinstance(arg, Tensor)), None)
    device = tensor.device if tensor is not None else torch.device("cpu")
    if str(device) in _probed_devices:
        return True
    try:
        options = SCALAR_CPU_OPTIONS if device.type == "cpu" else None
        probe = torch.compile(_probe, fullgraph=True, dynamic=False, options=options)
        probe(torch.ones(2, device=device))
    except Exception as error:
        _unavailable = _first_line(error)
        warnings.warn(f"peergrid compiled core: torch.compile is unavailable here "
                      f"({_unavailable}); the core runs eager (set compile: false to silence "
                      f"this)", RuntimeWarning, stacklevel=4)
        return False
    _probed_devices.add(str(device))
    return True


def _probe(x: Tensor) -> Tensor:
    return x * 2.0 + 1.0


class _CompiledZbus:
    """The ``zbus`` network step from compiled blocks of :class:`envs.network.RealZbus`."""

    def __init__(self, network: PowerFlowNetwork) -> None:
        self.network = network
        self.zbus = network.model.real_form()
        self.max_iterations = network.model.max_iterations
        self.first_block = min(ITERATION_BLOCK, self.max_iterations)
        device = network.model.device
        self.begin = _Stage("network", self._begin, device, vectorise=True)
        self.block = _Stage("network", self._block, device, vectorise=True)
        self.single = _Stage("network", self._single, device, vectorise=True)
        self.statistics = _Stage("network", self._statistics, device)
        self.penalty = _Stage("network", self._penalty, device)
        self.stages = (self.begin, self.block, self.single, self.statistics, self.penalty)

    def _begin(self, p_kw: Tensor, q_kvar: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        injection = self.zbus.injection(p_kw, q_kvar)
        voltage, change = self.zbus.start(injection)
        return injection, *self.zbus.iterate(injection, voltage, change, self.first_block)

    def _block(self, injection: Tensor, voltage: Tensor, change: Tensor
               ) -> tuple[Tensor, Tensor]:
        return self.zbus.iterate(injection, voltage, change, ITERATION_BLOCK)

    def _single(self, injection: Tensor, voltage: Tensor, change: Tensor
                ) -> tuple[Tensor, Tensor]:
        return self.zbus.iterate(injection, voltage, change, 1)

    def _result(self, injection: Tensor, voltage: Tensor, change: Tensor) -> PowerFlowResult:
        # iterations is not used by the penalties or statistics: 0, no compile-time constant
        return self.zbus.result(injection, voltage, change, 0)

    def _statistics(self, injection: Tensor, voltage: Tensor, change: Tensor
                    ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        return self.network.statistics(self._result(injection, voltage, change))

    def _penalty(self, injection: Tensor, voltage: Tensor, change: Tensor, p_kw: Tensor
                 ) -> Tensor:
        return self.network.penalty(self._result(injection, voltage, change), p_kw)

    def __call__(self, p_kw: Tensor, q_kvar: Tensor) -> NetworkStep:
        injection, voltage, change = self.begin(p_kw, q_kvar)
        iterations = self.first_block
        while iterations < self.max_iterations and not self.zbus.all_converged(change):
            if iterations + ITERATION_BLOCK <= self.max_iterations:
                voltage, change = self.block(injection, voltage, change)
                iterations += ITERATION_BLOCK
            else:
                voltage, change = self.single(injection, voltage, change)
                iterations += 1
        agent_voltage, info, violated = self.statistics(injection, voltage, change)
        # as PowerFlowNetwork.step: the sharing arithmetic only where there is a violation
        # (compiled on the first step in any case: no compile pause in the middle of a run)
        if bool(violated):
            penalty = self.penalty(injection, voltage, change, p_kw)
        else:
            if not self.penalty.started:
                self.penalty(injection, voltage, change, p_kw)
            penalty = torch.zeros_like(p_kw)
        return NetworkStep(penalty, agent_voltage, info)


class CompiledStages:
    """The compiled stages of a core's step (see the module docstring): ``trade``,
    ``network_step``, ``settle`` and ``observe``, called by
    :meth:`envs.core.BatchedP2PEnv.step` with the arguments of their eager versions."""

    def __init__(self, core: BatchedP2PEnv) -> None:
        # Each core is a new set of guards on the stages' code (its config and tables):
        # allow more than dynamo's default 8 cores of distinct configs per process.
        dynamo_config = torch._dynamo.config
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
        device = core.device
        self.trade = _Stage(f"trade ({core.config.market.mechanism})", core._trade, device)
        self.settle = _Stage("settle", core._settle, device)
        self.observe = _Stage("observe", core.observe, device)
        stages = [self.trade, self.settle, self.observe]
        self.network_step: Callable[[Tensor, Tensor], NetworkStep] = core.network.step
        network = core.network
        if isinstance(network, PowerFlowNetwork) and not network.exact:
            zbus = _CompiledZbus(network)
            self.network_step = zbus
            stages.extend(zbus.stages)
        self._stages = tuple(stages)

    @property
    def compile_seconds(self) -> float:
        """Seconds spent compiling so far (the first call of each stage)."""
        return sum(stage.compile_seconds for stage in self._stages)

    @property
    def eager_stages(self) -> dict[str, str]:
        """The stages that run eager, with the reason (empty when all compiled)."""
        return {stage.name: stage.eager_reason for stage in self._stages
                if stage.eager_reason is not None}
