"""Prosumer physics as pure batched torch functions: battery, PV, load.

Every tensor has the batch dimension first: ``[B, N]`` for B environments of N agents.
Energies are kWh per step, powers kW, state of charge (SoC) kWh stored in the cells.

Battery model (a standard linear "bucket" model with separate charge and discharge
efficiencies, as in e.g. Long et al. 2018, Applied Energy 226): with ``c`` the AC energy drawn
while charging and ``d`` the AC energy delivered while discharging in one step of ``dt`` hours,

    soc' = soc + eta_c * c - d / eta_d,
    0 <= c <= P_charge * dt,   0 <= d <= P_discharge * dt,
    soc_min * E <= soc' <= soc_max * E.

A request beyond these limits is cut to the nearest feasible value; the cut is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class BatteryStep:
    """Result of :func:`battery_step`, all ``[B, N]``.

    ``energy_kwh``: AC-side energy, > 0 charging (drawn from the agent's bus), < 0 discharging;
    ``soc_kwh``: SoC after the step; ``cut_kwh``: |requested - feasible| AC energy;
    ``throughput_kwh``: |energy_kwh| (what degradation is charged on).
    """

    energy_kwh: Tensor
    soc_kwh: Tensor
    cut_kwh: Tensor
    throughput_kwh: Tensor


def battery_step(
    soc_kwh: Tensor,
    request_kwh: Tensor,
    capacity_kwh: Tensor,
    power_kw: Tensor,
    charge_efficiency: float,
    discharge_efficiency: float,
    soc_min: float,
    soc_max: float,
    dt_h: float,
) -> BatteryStep:
    """Apply a requested AC energy ``request_kwh [B, N]`` (> 0 charge) to the batteries.

    ``capacity_kwh`` and ``power_kw`` are ``[N]`` or ``[B, N]`` (0 capacity = no battery, every
    request is cut to zero); efficiencies and SoC bounds (fractions of capacity) are scalars.
    """
    headroom = (soc_max * capacity_kwh - soc_kwh).clamp_min(0.0) / charge_efficiency
    available = (soc_kwh - soc_min * capacity_kwh).clamp_min(0.0) * discharge_efficiency
    max_step = power_kw * dt_h
    upper = torch.minimum(headroom, max_step)
    lower = -torch.minimum(available, max_step)
    energy = torch.maximum(torch.minimum(request_kwh, upper), lower)
    charged = energy.clamp_min(0.0)
    discharged = (-energy).clamp_min(0.0)
    soc = soc_kwh + charge_efficiency * charged - discharged / discharge_efficiency
    # Guard against float round-off pushing the SoC a hair outside its band.
    soc = torch.minimum(torch.maximum(soc, soc_min * capacity_kwh), soc_max * capacity_kwh)
    return BatteryStep(energy, soc, (request_kwh - energy).abs(), energy.abs())


def pv_power_kw(pv_kw_per_kwp: Tensor, pv_kwp: Tensor) -> Tensor:
    """PV output, kW: the profile (kW per kWp installed) times each agent's kWp."""
    return pv_kw_per_kwp * pv_kwp


def noisy(values: Tensor, relative_std: float, standard_normal: Tensor) -> Tensor:
    """A multiplicative-noise forecast of nonnegative ``values``: values * max(0, 1 + s*z)."""
    if relative_std == 0.0:
        return values
    return values * (1.0 + relative_std * standard_normal).clamp_min(0.0)
