"""The ``zbus`` power flow of ``envs.network.BatchedPowerFlow`` for one environment, as numba
kernels over the model's own precomputed matrices (complex128, float64).

:func:`grid_arrays` takes the arrays out of a float64 model; :func:`solve_into` runs the
fixed point and writes pandapower-style results, :func:`summarise_into` the per-step
statistics of ``envs.network.network_summary``. The iteration, its stopping rule and every
output definition mirror ``BatchedPowerFlow._iterate`` and ``_results`` (see there).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

from envs.network import BatchedPowerFlow

_KW_PER_MW = 1000.0


class GridArrays(NamedTuple):
    """Static arrays of one feeder's Z-bus model (``BatchedPowerFlow`` attributes)."""

    grid_agents: np.ndarray  # [N_grid] int64: agents not at the slack bus
    agent_load_column: np.ndarray  # [N_grid] int64: their load-bus column
    w_load: np.ndarray  # [L] complex128: no-load voltages of the load buses
    z_load_t: np.ndarray  # [L, L] complex128: Z_LL transposed
    output_offset: np.ndarray  # [n + 2 m] complex128
    output_factor_t: np.ndarray  # [L, n + 2 m] complex128
    bus_layout: np.ndarray  # [n_bus] int64: layout position (0 slack, > n missing)
    branch_from: np.ndarray  # [m] int64 layout bus
    branch_to: np.ndarray  # [m] int64 layout bus
    scale_from: np.ndarray  # [m] float64: |I| p.u. -> loading %
    scale_to: np.ndarray  # [m] float64
    line_slot: np.ndarray  # [n_line] int64 monitored row (m: out of service)
    trafo_slot: np.ndarray  # [n_trafo] int64
    agent_bus: np.ndarray  # [N] int64: each agent's column of vm_pu
    v_slack: complex
    base_mva: float
    tolerance_pu: float
    max_iterations: int


def grid_arrays(model: BatchedPowerFlow) -> GridArrays:
    """The arrays of a float64 ``model`` as numpy, ready for :func:`solve_into`."""
    if model.dtype.itemsize != 8:
        raise ValueError("the single-environment engine needs a float64 BatchedPowerFlow")

    def array(tensor, dtype) -> np.ndarray:
        return np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=dtype)

    return GridArrays(
        grid_agents=array(model._grid_agents, np.int64),
        agent_load_column=array(model._agent_load_column, np.int64),
        w_load=array(model._w_load, np.complex128),
        z_load_t=array(model._z_load_t, np.complex128),
        output_offset=array(model._output_offset, np.complex128),
        output_factor_t=array(model._output_factor_t, np.complex128),
        bus_layout=array(model._bus_layout_t, np.int64),
        branch_from=array(model._branch_from_t, np.int64),
        branch_to=array(model._branch_to_t, np.int64),
        scale_from=array(model._scale_from, np.float64),
        scale_to=array(model._scale_to, np.float64),
        line_slot=array(model._line_slot, np.int64),
        trafo_slot=array(model._trafo_slot, np.int64),
        agent_bus=array(model.agent_bus, np.int64),
        v_slack=complex(model._v_slack),
        base_mva=float(model.base_mva),
        tolerance_pu=float(model.tolerance_pu),
        max_iterations=int(model.max_iterations),
    )


@njit(cache=True)
def solve_into(grid, p_kw, q_kvar, vm_pu, line_loading, trafo_loading, line_p_from_kw,
               trafo_p_hv_kw):
    """AC power flow of one environment; mirrors ``BatchedPowerFlow.solve(angles=False)``.

    ``p_kw, q_kvar [N]``: agents' net consumption (kW, kvar). Writes ``vm_pu [n_bus]``,
    ``line_loading [n_line]`` and ``trafo_loading [n_trafo]`` (%), ``line_p_from_kw`` and
    ``trafo_p_hv_kw`` (kW), all NaN when the iteration did not converge (isolated buses NaN
    always). Returns ``(losses_kw, converged, iterations)``.
    """
    n_load = grid.w_load.shape[0]
    scale = -1.0 / (_KW_PER_MW * grid.base_mva)
    injection_conj = np.zeros(n_load, dtype=np.complex128)
    for k in range(grid.grid_agents.shape[0]):
        agent = grid.grid_agents[k]
        injection_conj[grid.agent_load_column[k]] += complex(p_kw[agent], -q_kvar[agent]) * scale
    voltage = grid.w_load.copy()
    current = np.zeros(n_load, dtype=np.complex128)
    change = math.inf
    iterations = 0
    for iterations in range(1, grid.max_iterations + 1):  # noqa: B007 (used after the loop)
        for i in range(n_load):
            current[i] = injection_conj[i] * (1.0 / voltage[i]).conjugate()
        change = 0.0
        for j in range(n_load):
            updated = grid.w_load[j]
            for i in range(n_load):
                updated += current[i] * grid.z_load_t[i, j]
            step = updated - voltage[j]
            change = max(change, abs(step.real), abs(step.imag))
            voltage[j] = updated
        if change < grid.tolerance_pu or math.isnan(change):
            break
    for i in range(n_load):
        current[i] = injection_conj[i] * (1.0 / voltage[i]).conjugate()
    converged = change < grid.tolerance_pu and math.isfinite(change)

    n_out = grid.output_offset.shape[0]
    outputs = grid.output_offset.copy()
    for i in range(n_load):
        for j in range(n_out):
            outputs[j] += current[i] * grid.output_factor_t[i, j]
    n_monitored = grid.scale_from.shape[0]
    n_non_slack = n_out - 2 * n_monitored
    layout = np.empty(n_non_slack + 2, dtype=np.complex128)  # [slack, non-slack, missing]
    layout[0] = grid.v_slack
    layout[1:n_non_slack + 1] = outputs[:n_non_slack]
    layout[n_non_slack + 1] = complex(math.nan, math.nan)
    nan = math.nan
    for b in range(vm_pu.shape[0]):
        v = layout[min(grid.bus_layout[b], n_non_slack + 1)]
        vm_pu[b] = math.sqrt(v.real * v.real + v.imag * v.imag) if converged else nan
    to_kw = grid.base_mva * _KW_PER_MW
    loading = np.zeros(n_monitored + 1)
    p_from = np.zeros(n_monitored + 1)
    losses = 0.0
    for r in range(n_monitored):
        i_from = outputs[n_non_slack + r]
        i_to = outputs[n_non_slack + n_monitored + r]
        s_from = layout[grid.branch_from[r]] * i_from.conjugate()
        s_to = layout[grid.branch_to[r]] * i_to.conjugate()
        loading[r] = max(abs_complex(i_from) * grid.scale_from[r],
                         abs_complex(i_to) * grid.scale_to[r])
        p_from[r] = s_from.real * to_kw
        losses += s_from.real + s_to.real
    for k in range(line_loading.shape[0]):
        line_loading[k] = loading[grid.line_slot[k]] if converged else nan
        line_p_from_kw[k] = p_from[grid.line_slot[k]] if converged else nan
    for k in range(trafo_loading.shape[0]):
        trafo_loading[k] = loading[grid.trafo_slot[k]] if converged else nan
        trafo_p_hv_kw[k] = p_from[grid.trafo_slot[k]] if converged else nan
    return (losses * to_kw if converged else nan), converged, iterations


@njit(cache=True)
def abs_complex(value: complex) -> float:
    """``|value|`` as ``sqrt(re^2 + im^2)``, like ``envs.network._magnitude``."""
    return math.sqrt(value.real * value.real + value.imag * value.imag)


@njit(cache=True)
def summarise_into(vm_pu, line_loading, trafo_loading, losses_kw, converged, v_min, v_max,
                   out) -> bool:
    """``envs.network.network_summary`` of one environment into ``out [8]``: v_min_pu, v_max_pu,
    max line loading, max trafo loading, voltage violations, line violations, losses (kW),
    converged (1.0/0.0). Returns whether there is anything to penalise (a violation or no
    convergence)."""
    nan = math.nan
    lowest, highest = math.inf, -math.inf
    voltage_violations = 0
    for b in range(vm_pu.shape[0]):
        v = vm_pu[b]
        if not math.isnan(v):
            lowest = min(lowest, v)
            highest = max(highest, v)
            if v < v_min or v > v_max:
                voltage_violations += 1
    line_max, trafo_max, line_violations = 0.0, 0.0, 0
    for k in range(line_loading.shape[0]):
        value = 0.0 if math.isnan(line_loading[k]) else line_loading[k]
        line_max = max(line_max, value)
        line_violations += value > 100.0
    for k in range(trafo_loading.shape[0]):
        value = 0.0 if math.isnan(trafo_loading[k]) else trafo_loading[k]
        trafo_max = max(trafo_max, value)
        line_violations += value > 100.0
    out[0] = lowest if converged else nan
    out[1] = highest if converged else nan
    out[2] = line_max if converged else nan
    out[3] = trafo_max if converged else nan
    out[4] = voltage_violations
    out[5] = line_violations
    out[6] = losses_kw
    out[7] = 1.0 if converged else 0.0
    return voltage_violations + line_violations > 0 or not converged
