"""Battery and PV physics (envs/physics.py): hand-computed cases and invariants."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from envs import physics

ETA_C, ETA_D = 0.9, 0.8


def step(soc, request, capacity=10.0, power=4.0, soc_min=0.1, soc_max=0.9, dt=0.25):
    t = lambda x: torch.tensor([[x]], dtype=torch.float64)  # noqa: E731
    return physics.battery_step(t(soc), t(request), t(capacity), t(power), ETA_C, ETA_D,
                                soc_min, soc_max, dt)


def test_feasible_charge_applies_efficiency():
    # 0.5 kWh drawn at 90% efficiency stores 0.45 kWh.
    result = step(soc=5.0, request=0.5)
    assert result.energy_kwh.item() == 0.5
    assert abs(result.soc_kwh.item() - 5.45) < 1e-12
    assert result.cut_kwh.item() == 0.0


def test_power_limit_cuts_request():
    # 4 kW for 15 minutes is at most 1 kWh; asking 3 kWh cuts 2 kWh.
    result = step(soc=5.0, request=3.0)
    assert abs(result.energy_kwh.item() - 1.0) < 1e-12
    assert abs(result.cut_kwh.item() - 2.0) < 1e-12


def test_soc_limit_cuts_charge():
    # Headroom 9.0 - 8.8 = 0.2 kWh in the cells: at most 0.2 / 0.9 kWh drawn.
    result = step(soc=8.8, request=1.0)
    assert abs(result.energy_kwh.item() - 0.2 / 0.9) < 1e-12
    assert abs(result.soc_kwh.item() - 9.0) < 1e-12


def test_soc_limit_cuts_discharge():
    # Above the floor: 1.3 - 1.0 = 0.3 kWh in the cells, delivering 0.3 * 0.8 = 0.24 kWh.
    result = step(soc=1.3, request=-1.0)
    assert abs(result.energy_kwh.item() + 0.24) < 1e-12
    assert abs(result.soc_kwh.item() - 1.0) < 1e-12
    assert abs(result.cut_kwh.item() - 0.76) < 1e-12


def test_no_battery_cuts_everything():
    result = step(soc=0.0, request=0.7, capacity=0.0, power=0.0)
    assert result.energy_kwh.item() == 0.0
    assert abs(result.cut_kwh.item() - 0.7) < 1e-12


@settings(max_examples=200, deadline=None)
@given(soc_fraction=st.floats(0.1, 0.9), request=st.floats(-5.0, 5.0),
       capacity=st.floats(0.0, 20.0), power=st.floats(0.0, 10.0))
def test_battery_invariants(soc_fraction, request, capacity, power):
    result = step(soc=soc_fraction * capacity, request=request, capacity=capacity, power=power)
    soc = result.soc_kwh.item()
    energy = result.energy_kwh.item()
    assert 0.1 * capacity - 1e-9 <= soc <= 0.9 * capacity + 1e-9
    assert abs(energy) <= power * 0.25 + 1e-9
    assert abs(result.cut_kwh.item() - abs(request - energy)) < 1e-9
    # Energy conservation through the efficiencies.
    expected = soc_fraction * capacity + (ETA_C * energy if energy > 0 else energy / ETA_D)
    assert abs(soc - expected) < 1e-9
    # The cut moves the request towards zero, never past it.
    assert energy * request >= 0


def test_noise_is_multiplicative_and_nonnegative():
    values = torch.tensor([1.0, 2.0, 0.0])
    z = torch.tensor([1.0, -20.0, 3.0])
    noisy = physics.noisy(values, 0.1, z)
    assert torch.allclose(noisy, torch.tensor([1.1, 0.0, 0.0]))
    assert torch.equal(physics.noisy(values, 0.0, z), values)
