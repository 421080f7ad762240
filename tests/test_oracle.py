"""Tests for ``agents/oracle.py``: the perfect-foresight community LP."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.oracle import (
    BatteryFleet,
    NetworkLinearisation,
    OracleResult,
    SharedBattery,
    solve_oracle,
)

DT_H = 0.25
LP_TOLERANCE = 1e-7
"""Absolute slack allowed when comparing LP optima (HiGHS tolerances are 1e-7)."""


# ---------------------------------------------------------------------------------------
# Helpers: independent re-implementation of the environment's settlement and battery
# ---------------------------------------------------------------------------------------


def grid_bill(net_kwh: np.ndarray, retail: np.ndarray, feed_in: np.ndarray) -> float:
    """Grid bill of net positions ``[T]`` or ``[T, N]`` (kWh): imports at retail, exports
    at feed-in, each position settled on its own."""
    net_kwh = net_kwh.reshape(len(retail), -1)
    imports, exports = np.maximum(net_kwh, 0.0), np.maximum(-net_kwh, 0.0)
    return float(np.sum(retail[:, None] * imports - feed_in[:, None] * exports))


def simulate_battery_policy(
    load_kwh: np.ndarray,
    pv_kwh: np.ndarray,
    retail: np.ndarray,
    feed_in: np.ndarray,
    fleet: BatteryFleet,
    charge_kwh: np.ndarray,
    discharge_kwh: np.ndarray,
    *,
    p2p: bool,
    dt_h: float = DT_H,
    tolerance: float = 1e-6,
    terminal_price: float = 0.0,
    terminal_credit_price: float | None = None,
) -> float:
    """Step the battery actions ``[T, N]`` (kWh, AC side) through the environment rules,
    asserting that they are feasible, and return the community cost (currency), terminal
    value ``terminal_price * (initial - final SoC)^+ - terminal_credit_price * (final -
    initial SoC)^+`` included (credit None: the charge price)."""
    soc = fleet.initial_soc_kwh.copy()
    soc_low, soc_high = fleet.soc_bounds_kwh()
    cost = 0.0
    for t in range(load_kwh.shape[0]):
        charge, discharge = charge_kwh[t], discharge_kwh[t]
        assert np.all(charge >= -tolerance) and np.all(discharge >= -tolerance)
        assert np.all(charge <= fleet.max_charge_kw * dt_h + tolerance)
        assert np.all(discharge <= fleet.max_discharge_kw * dt_h + tolerance)
        soc = soc + fleet.charge_efficiency * charge - discharge / fleet.discharge_efficiency
        assert np.all(soc >= soc_low - tolerance) and np.all(soc <= soc_high + tolerance)
        net = load_kwh[t] - pv_kwh[t] + charge - discharge
        settled = np.array([net.sum()]) if p2p else net
        cost += grid_bill(settled[None, :], retail[t : t + 1], feed_in[t : t + 1])
        cost += float(np.sum(fleet.degradation_cost * (charge + discharge)))
    return cost + terminal_value(fleet.initial_soc_kwh, soc, terminal_price,
                                 terminal_credit_price)


def terminal_value(initial_soc: np.ndarray, final_soc: np.ndarray, price: float,
                   credit: float | None = None) -> float:
    """The environment's terminal value summed over agents, currency: ``price`` per kWh
    taken from the cells, ``credit`` (None: ``price``) per kWh added."""
    credit = price if credit is None else credit
    taken = np.asarray(initial_soc) - np.asarray(final_soc)
    return float(np.sum(price * np.maximum(taken, 0.0) - credit * np.maximum(-taken, 0.0)))


def random_feasible_actions(
    fleet: BatteryFleet, n_steps: int, rng: np.random.Generator, dt_h: float = DT_H
) -> tuple[np.ndarray, np.ndarray]:
    """Random battery actions ``[T, N]`` (kWh) clipped to the power and SoC limits."""
    n_agents = fleet.n_agents
    charge = np.zeros((n_steps, n_agents))
    discharge = np.zeros((n_steps, n_agents))
    soc = fleet.initial_soc_kwh.copy()
    soc_low, soc_high = fleet.soc_bounds_kwh()
    for t in range(n_steps):
        power_kw = rng.uniform(-fleet.max_discharge_kw, fleet.max_charge_kw)
        charge_room = np.maximum(soc_high - soc, 0.0) / fleet.charge_efficiency
        discharge_room = np.maximum(soc - soc_low, 0.0) * fleet.discharge_efficiency
        charge[t] = np.minimum(np.maximum(power_kw, 0.0) * dt_h, charge_room)
        discharge[t] = np.minimum(np.maximum(-power_kw, 0.0) * dt_h, discharge_room)
        soc = soc + fleet.charge_efficiency * charge[t] - discharge[t] / fleet.discharge_efficiency
        soc = np.clip(soc, soc_low, soc_high)  # only rounding can push it out
    return charge, discharge


def random_day(rng: np.random.Generator, n_steps: int, n_agents: int) -> dict:
    """A random community day: loads, PV, prices with retail >= feed-in, and batteries."""
    load = rng.uniform(0.0, 1.0, (n_steps, n_agents))
    pv = rng.uniform(0.0, 1.5, (n_steps, n_agents)) * (rng.random((n_steps, n_agents)) < 0.6)
    retail = rng.uniform(0.1, 0.5, n_steps)
    feed_in = retail * rng.uniform(-0.1, 0.9, n_steps)  # sometimes negative
    capacity = np.where(rng.random(n_agents) < 0.6, rng.uniform(1.0, 8.0, n_agents), 0.0)
    soc_min = rng.uniform(0.0, 0.2, n_agents)
    soc_max = rng.uniform(0.8, 1.0, n_agents)
    fleet = BatteryFleet(
        capacity_kwh=capacity,
        max_charge_kw=rng.uniform(0.5, 5.0, n_agents),
        max_discharge_kw=rng.uniform(0.5, 5.0, n_agents),
        charge_efficiency=rng.uniform(0.85, 1.0, n_agents),
        discharge_efficiency=rng.uniform(0.85, 1.0, n_agents),
        soc_min=soc_min,
        soc_max=soc_max,
        initial_soc_kwh=capacity * rng.uniform(soc_min, soc_max),
        degradation_cost=rng.uniform(0.0, 0.03, n_agents),
    )
    return {"load_kwh": load, "pv_kwh": pv, "retail_price": retail, "feed_in_price": feed_in,
            "battery": fleet}  # fmt: skip


def at_most(smaller: float, larger: float) -> bool:
    """``smaller <= larger`` up to the LP tolerance."""
    return smaller <= larger + LP_TOLERANCE * (1.0 + abs(larger))


# ---------------------------------------------------------------------------------------
# Hand-computed cases
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("p2p", [True, False])
def test_single_agent_without_battery_pays_its_grid_bill(p2p: bool) -> None:
    load = np.array([[1.0], [2.0], [0.5], [0.0]])
    pv = np.array([[0.0], [3.0], [0.5], [1.0]])
    retail = np.array([0.30, 0.30, 0.25, 0.20])
    feed_in = np.array([0.08, 0.08, 0.05, 0.00])
    result = solve_oracle(load, pv, retail, feed_in, BatteryFleet.none(1), p2p=p2p)
    # net = [1, -1, 0, -1] kWh: 0.30 * 1 - 0.08 * 1 + 0 - 0.00 * 1 = 0.22
    assert result.cost == pytest.approx(0.22, abs=1e-9)
    assert result.cost == pytest.approx(
        np.sum(retail * np.maximum(load - pv, 0)[:, 0] - feed_in * np.maximum(pv - load, 0)[:, 0])
    )
    np.testing.assert_allclose(result.grid_import_kwh, [1.0, 0.0, 0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(result.grid_export_kwh, [0.0, 1.0, 0.0, 1.0], atol=1e-9)
    assert result.degradation_cost == 0.0
    assert "Optimal" in result.status


def test_p2p_saves_the_price_spread_on_matched_energy() -> None:
    load = np.array([[1.0, 3.0]])  # agent A, agent B
    pv = np.array([[3.0, 0.5]])  # A: surplus 2 kWh, B: deficit 2.5 kWh
    retail, feed_in = np.array([0.30]), np.array([0.08])
    fleet = BatteryFleet.none(2)
    individual = solve_oracle(load, pv, retail, feed_in, fleet, p2p=False)
    community = solve_oracle(load, pv, retail, feed_in, fleet, p2p=True)
    # Individual: B imports 2.5 * 0.30 = 0.75, A exports 2 * 0.08 = 0.16 -> 0.59.
    assert individual.cost == pytest.approx(0.59, abs=1e-9)
    # Community: net deficit 0.5 kWh * 0.30 = 0.15.
    assert community.cost == pytest.approx(0.15, abs=1e-9)
    # Saving: the 2 kWh matched inside the community, each worth 0.30 - 0.08 = 0.22.
    assert individual.cost - community.cost == pytest.approx(2 * 0.22, abs=1e-9)
    np.testing.assert_allclose(individual.grid_import_kwh, [2.5], atol=1e-9)
    np.testing.assert_allclose(individual.grid_export_kwh, [2.0], atol=1e-9)
    np.testing.assert_allclose(community.grid_import_kwh, [0.5], atol=1e-9)
    np.testing.assert_allclose(community.grid_export_kwh, [0.0], atol=1e-9)


def test_battery_charges_off_peak_and_discharges_at_the_peak() -> None:
    # 1 agent, load 2 kWh per 15-min step, no PV; 2 cheap then 2 expensive steps.
    load = np.full((4, 1), 2.0)
    pv = np.zeros((4, 1))
    retail = np.array([0.10, 0.10, 0.50, 0.50])
    feed_in = np.zeros(4)
    fleet = BatteryFleet(
        capacity_kwh=np.array([10.0]),
        max_charge_kw=4.0,  # 1 kWh per step
        max_discharge_kw=4.0,
        charge_efficiency=0.9,
        discharge_efficiency=0.9,
        soc_min=0.1,  # 1 kWh
        soc_max=0.9,  # 9 kWh
        initial_soc_kwh=1.0,  # empty (at soc_min)
        degradation_cost=0.01,
    )
    result = solve_oracle(load, pv, retail, feed_in, fleet)
    # Charging 1 kWh (AC) costs 0.10 + 0.01 and returns 0.9 * 0.9 = 0.81 kWh at the peak,
    # worth 0.81 * (0.50 - 0.01) = 0.397 > 0.11: charge at full power in both cheap steps.
    np.testing.assert_allclose(result.charge_kwh[:, 0], [1.0, 1.0, 0.0, 0.0], atol=1e-9)
    # Stored 2 * 0.9 = 1.8 kWh above soc_min -> 1.8 * 0.9 = 1.62 kWh AC at the peak
    # (at most 1 kWh per step; how it splits across the two peak steps is immaterial).
    np.testing.assert_allclose(result.discharge_kwh[:2, 0], 0.0, atol=1e-9)
    assert result.discharge_kwh[2:, 0].sum() == pytest.approx(1.62, abs=1e-9)
    np.testing.assert_allclose(result.soc_kwh[:, 0][[0, 1, 2, 4]], [1.0, 1.9, 2.8, 1.0], atol=1e-9)
    # Grid: 3 * 0.10 + 3 * 0.10 + (4 - 1.62) * 0.50 = 1.79; degradation (2 + 1.62) * 0.01.
    assert result.degradation_cost == pytest.approx(0.0362, abs=1e-9)
    assert result.cost == pytest.approx(1.79 + 0.0362, abs=1e-9)
    # Without the battery: 2 * (0.10 + 0.10 + 0.50 + 0.50) = 2.40.
    idle = solve_oracle(load, pv, retail, feed_in, fleet, use_battery=False)
    assert idle.cost == pytest.approx(2.40, abs=1e-9)
    np.testing.assert_allclose(idle.soc_kwh, 1.0, atol=1e-12)
    assert solve_oracle(load, pv, retail, feed_in, fleet.idle()).cost == pytest.approx(2.40)


@pytest.mark.parametrize("p2p", [True, False])  # one agent: sharing is worth nothing
@pytest.mark.parametrize(
    ("terminal_price", "credit", "final_soc", "terminal_cost", "cost"),
    [
        # Unvalued (v1): empty the cells, 5 * 0.8 = 4 kWh AC: 2 cover the load, 2 are
        # exported at 0.10.
        (0.0, 0.0, 0.0, 0.0, -0.2),
        # An AC kWh from the battery saves 0.30 and costs 1.25 cell kWh * 0.2 = 0.25 of
        # terminal value: still discharge (exporting, worth 0.10, is not). 0.2 * 2.5 = 0.5.
        (0.2, 0.1, 2.5, 0.5, 0.5),
        # 1.25 * 0.4 = 0.5 > 0.30: keep the cells; a kWh bought at 0.30 is credited 0.10:
        # do not fill either. The load is bought: 2 * 0.30 = 0.6.
        (0.4, 0.1, 5.0, 0.0, 0.6),
        # Symmetric at 0.4 (the artefact): a kWh bought at 0.30 is credited 0.40, so fill
        # the 5 kWh of room from the grid: 0.30 * (2 + 5) - 0.40 * 5 = 0.1.
        (0.4, 0.4, 10.0, -2.0, 0.1),
        # A credit of 0.35 > 0.30 still pays for filling: 0.30 * 7 - 0.35 * 5 = 0.35.
        (0.4, 0.35, 10.0, -1.75, 0.35),
    ],
)
def test_terminal_value_hand_computed(
    terminal_price: float, credit: float, final_soc: float, terminal_cost: float, cost: float,
    p2p: bool,
) -> None:
    # 1 agent, two 1-hour steps of 1 kWh load, no PV; flat 0.30 / 0.10; a 10 kWh battery
    # half full, 4 kW, lossless charging, 0.8 discharge efficiency, no degradation.
    load, pv = np.ones((2, 1)), np.zeros((2, 1))
    retail, feed_in = np.full(2, 0.30), np.full(2, 0.10)
    fleet = BatteryFleet(capacity_kwh=np.array([10.0]), max_charge_kw=4.0, max_discharge_kw=4.0,
                         charge_efficiency=1.0, discharge_efficiency=0.8, soc_min=0.0,
                         soc_max=1.0, initial_soc_kwh=5.0, degradation_cost=0.0)
    result = solve_oracle(load, pv, retail, feed_in, fleet, dt_h=1.0, p2p=p2p,
                          terminal_price=terminal_price, terminal_credit_price=credit)
    assert result.soc_kwh[-1, 0] == pytest.approx(final_soc, abs=1e-9)
    assert result.terminal_value_cost == pytest.approx(terminal_cost, abs=1e-9)
    np.testing.assert_allclose(result.agent_terminal_value_cost, [terminal_cost], atol=1e-9)
    assert result.cost == pytest.approx(cost, abs=1e-9)
    # The grid bill is the rest of the cost.
    bill = grid_bill(result.net_kwh, retail, feed_in)
    assert result.cost == pytest.approx(bill + terminal_cost, abs=1e-9)


@pytest.mark.parametrize(
    ("p2p", "final_soc", "agent_terminal", "cost"),
    [
        # Each home alone (oracle_household): agent 0 covers its 2 kWh peak load from its
        # cells (saves 2 * 0.50 = 1.0, charged 2 * 0.4 = 0.8; it cannot charge), agent 1
        # stores its 3 kWh of PV (exporting earns 0, storing is credited 3 * 0.05): ends
        # below (3) and above (8) its start. 0.8 - 0.15 = 0.65.
        (False, [3.0, 8.0], [0.8, -0.15], 0.65),
        # Together (oracle): agent 1's PV covers agent 0's load, free; the 1 kWh left is
        # stored for the credit: -0.05.
        (True, [5.0, 6.0], [0.0, -0.05], -0.05),
    ],
)
def test_asymmetric_terminal_value_hand_computed_on_both_sides(
    p2p: bool, final_soc: list[float], agent_terminal: list[float], cost: float
) -> None:
    # Two 1-hour steps: retail 0.10 then 0.50, feed-in 0; terminal value 0.4 per kWh taken,
    # 0.05 per kWh added. Agent 0: 2 kWh load at the peak, a battery that can only
    # discharge. Agent 1: 3 kWh PV at the peak, no load. 10 kWh, half full, 4 kW, lossless.
    load = np.array([[0.0, 0.0], [2.0, 0.0]])
    pv = np.array([[0.0, 0.0], [0.0, 3.0]])
    retail, feed_in = np.array([0.10, 0.50]), np.zeros(2)
    fleet = BatteryFleet(capacity_kwh=np.array([10.0, 10.0]), max_charge_kw=np.array([0.0, 4.0]),
                         max_discharge_kw=4.0, charge_efficiency=1.0, discharge_efficiency=1.0,
                         initial_soc_kwh=5.0)
    result = solve_oracle(load, pv, retail, feed_in, fleet, dt_h=1.0, p2p=p2p,
                          terminal_price=0.4, terminal_credit_price=0.05)
    np.testing.assert_allclose(result.soc_kwh[-1], final_soc, atol=1e-9)
    np.testing.assert_allclose(result.agent_terminal_value_cost, agent_terminal, atol=1e-9)
    assert result.terminal_value_cost == pytest.approx(sum(agent_terminal), abs=1e-9)
    assert result.cost == pytest.approx(cost, abs=1e-9)
    replayed = simulate_battery_policy(load, pv, retail, feed_in, fleet, result.charge_kwh,
                                       result.discharge_kwh, p2p=p2p, dt_h=1.0,
                                       terminal_price=0.4, terminal_credit_price=0.05)
    assert replayed == pytest.approx(cost, abs=1e-9)


def test_negative_feed_in_price_is_paid_or_avoided_by_curtailment() -> None:
    load, pv = np.array([[0.0]]), np.array([[1.0]])
    retail, feed_in = np.array([0.30]), np.array([-0.05])
    fleet = BatteryFleet.none(1)
    # Exporting 1 kWh at -0.05 costs 0.05; curtailing it costs nothing.
    assert solve_oracle(load, pv, retail, feed_in, fleet).cost == pytest.approx(0.05)
    curtailed = solve_oracle(load, pv, retail, feed_in, fleet, allow_curtailment=True)
    assert curtailed.cost == pytest.approx(0.0, abs=1e-9)
    assert curtailed.curtailment_kwh[0, 0] == pytest.approx(1.0)


def test_result_shapes_and_bookkeeping() -> None:
    day = random_day(np.random.default_rng(3), n_steps=7, n_agents=3)
    result = solve_oracle(**day)
    assert isinstance(result, OracleResult)
    for name in ("charge_kwh", "discharge_kwh", "net_kwh", "curtailment_kwh"):
        assert getattr(result, name).shape == (7, 3)
    assert result.soc_kwh.shape == (8, 3)
    assert result.grid_import_kwh.shape == result.grid_export_kwh.shape == (7,)
    np.testing.assert_array_equal(result.soc_kwh[0], day["battery"].initial_soc_kwh)
    expected_net = day["load_kwh"] - day["pv_kwh"] + result.charge_kwh - result.discharge_kwh
    np.testing.assert_allclose(result.net_kwh, expected_net, atol=1e-9)
    np.testing.assert_allclose(
        result.grid_import_kwh - result.grid_export_kwh, result.net_kwh.sum(axis=1), atol=1e-9
    )
    assert np.all(result.curtailment_kwh == 0.0)
    assert result.network_slack == 0.0 and result.voltage_pu is None


# ---------------------------------------------------------------------------------------
# Properties on random days
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_individual_settlement_without_battery_is_the_sum_of_bills(seed: int) -> None:
    day = random_day(np.random.default_rng(seed), n_steps=24, n_agents=5)
    result = solve_oracle(**day, p2p=False, use_battery=False)
    net = day["load_kwh"] - day["pv_kwh"]
    bills = sum(grid_bill(net[:, i], day["retail_price"], day["feed_in_price"]) for i in range(5))
    assert result.cost == pytest.approx(bills, rel=1e-9, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    n_agents=st.integers(1, 6),
    n_steps=st.integers(1, 24),
    seed=st.integers(0, 2**32 - 1),
)
def test_cost_ordering_of_p2p_and_battery(n_agents: int, n_steps: int, seed: int) -> None:
    day = random_day(np.random.default_rng(seed), n_steps, n_agents)
    cost = {
        (p2p, use_battery): solve_oracle(**day, p2p=p2p, use_battery=use_battery).cost
        for p2p in (True, False)
        for use_battery in (True, False)
    }
    assert at_most(cost[True, True], cost[True, False])
    assert at_most(cost[True, False], cost[False, False])
    assert at_most(cost[True, True], cost[False, True])
    assert at_most(cost[False, True], cost[False, False])


@settings(max_examples=25, deadline=None)
@given(
    n_agents=st.integers(1, 6),
    n_steps=st.integers(1, 24),
    seed=st.integers(0, 2**32 - 1),
    terminal_prices=st.sampled_from([(0.0, 0.0), (0.2, 0.2), (0.6, 0.6), (0.6, 0.05),
                                     (0.4, 0.0)]),
)
def test_oracle_is_a_lower_bound_on_simulated_feasible_policies(
    n_agents: int, n_steps: int, seed: int, terminal_prices: tuple[float, float]
) -> None:
    rng = np.random.default_rng(seed)
    day = random_day(rng, n_steps, n_agents)
    fleet = day["battery"]
    terminal_price, credit = terminal_prices
    bound = solve_oracle(**day, p2p=True, terminal_price=terminal_price,
                         terminal_credit_price=credit).cost
    household = solve_oracle(**day, p2p=False, terminal_price=terminal_price,
                             terminal_credit_price=credit).cost
    assert at_most(bound, household)
    prices = (day["retail_price"], day["feed_in_price"])
    for _ in range(10):
        charge, discharge = random_feasible_actions(fleet, n_steps, rng)
        for p2p in (False, True):
            simulated = simulate_battery_policy(
                day["load_kwh"], day["pv_kwh"], *prices, fleet, charge, discharge, p2p=p2p,
                terminal_price=terminal_price, terminal_credit_price=credit,
            )
            assert at_most(bound, simulated)
            if not p2p:  # each home alone: the per-household optimum bounds it too
                assert at_most(household, simulated)


@pytest.mark.parametrize(("terminal_price", "credit"), [(0.0, 0.0), (0.25, 0.25),
                                                        (0.25, 0.05)])
@pytest.mark.parametrize("p2p", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_oracle_schedule_replays_to_its_cost_in_the_simulator(
    p2p: bool, seed: int, terminal_price: float, credit: float
) -> None:
    day = random_day(np.random.default_rng(100 + seed), n_steps=24, n_agents=4)
    result = solve_oracle(**day, p2p=p2p, terminal_price=terminal_price,
                          terminal_credit_price=credit)
    replayed = simulate_battery_policy(
        day["load_kwh"],
        day["pv_kwh"],
        day["retail_price"],
        day["feed_in_price"],
        day["battery"],
        result.charge_kwh,
        result.discharge_kwh,
        p2p=p2p,
        terminal_price=terminal_price,
        terminal_credit_price=credit,
    )
    assert replayed == pytest.approx(result.cost, abs=1e-6)
    terminal = terminal_value(result.soc_kwh[0], result.soc_kwh[-1], terminal_price, credit)
    assert result.terminal_value_cost == pytest.approx(terminal, abs=1e-9)


# ---------------------------------------------------------------------------------------
# In the environment, with the terminal value (episode.terminal_value, on by default)
# ---------------------------------------------------------------------------------------

ENV_CONFIG = {"community": {"feeder": "synthetic", "n_agents": 5, "battery_share": 0.6},
              "network": {"model": "none"}}
ENV_DAYS = [6, 97, 202]  # test days (d % 7 == 6) in winter, spring and summer
TOU_RETAIL = [0.2] * 6 + [0.28] * 11 + [0.4] * 4 + [0.28] + [0.2] * 2
STRONG_TOU_RETAIL = [0.12] * 6 + [0.28] * 11 + [0.50] * 4 + [0.28] + [0.12] * 2
"""Issue 9's strong time-of-use tariff (feed-in flat 0.08, the default)."""
TARIFFS = {"flat": {}, "tou": {"retail_tou": TOU_RETAIL},
           "strong-tou": {"retail_tou": STRONG_TOU_RETAIL}}


@pytest.mark.parametrize("tariff", list(TARIFFS.values()), ids=list(TARIFFS))
def test_oracle_bounds_the_baselines_with_the_terminal_value(tariff: dict) -> None:
    import envs
    from agents.baselines import BASELINES, make_oracle, make_policy
    from agents.evaluation import evaluate_policy
    from envs import metrics

    config = {**ENV_CONFIG, "tariff": tariff}
    env = envs.make_batched_env(config, n_envs=1, dtype="float64")
    peak_retail = max(tariff.get("retail_tou", [0.3]))
    assert env.terminal_price == pytest.approx(0.95 * (peak_retail - 0.02))
    assert env.terminal_credit_price == pytest.approx(0.08)  # the lowest feed-in price
    oracle, schedules = make_oracle("oracle").evaluate(env, ENV_DAYS)
    bound = metrics.community_cost(oracle)
    terminal = metrics.summary(oracle)["terminal_value_cost"]
    expected = [terminal_value(s.soc_kwh[0], s.soc_kwh[-1], env.terminal_price,
                               env.terminal_credit_price) for s in schedules]
    np.testing.assert_allclose(terminal.numpy(), expected, atol=1e-9)
    np.testing.assert_allclose([s.terminal_value_cost for s in schedules], expected, atol=1e-9)
    household, _ = make_oracle("oracle_household").evaluate(env, ENV_DAYS)
    assert bool((bound <= metrics.community_cost(household) + 1e-7).all())
    for spec in BASELINES:  # every rule-based policy, time_of_use included
        policy = make_policy(spec)
        mechanism = policy.mechanism or "uniform"
        env = envs.make_batched_env(config, n_envs=len(ENV_DAYS), dtype="float64",
                                    **{"market.mechanism": mechanism})
        totals, _ = evaluate_policy(env, policy, ENV_DAYS, seed=0)
        cost = metrics.community_cost(totals)
        assert bool((cost >= bound - 1e-7).all()), (spec, (cost - bound).tolist())
        # The cost the bound holds against includes the policy's own terminal value.
        terminal = metrics.summary(totals)["terminal_value_cost"]
        if spec in ("no_p2p", "zi"):  # idle batteries end where they started
            assert bool((terminal == 0).all()), spec
        else:
            assert bool((terminal != 0).any()), spec


TWO_DAY_CASES = {
    "synthetic-tou": {**ENV_CONFIG, "tariff": {"retail_tou": TOU_RETAIL}},
    "rural1-strong-tou": {"community": {"battery_share": 1.0},
                          "tariff": {"retail_tou": STRONG_TOU_RETAIL}},
}
"""Two-day episodes: a small synthetic community, and the default feeder (with its network)
under the strong time-of-use tariff with a battery in every home."""
TWO_DAY_STARTS = [97, 365]
"""Start days of the two-day episodes: spring, and the year's last day (on into day 0)."""


@pytest.mark.parametrize("case", list(TWO_DAY_CASES))
def test_two_day_oracle_plans_the_episode_and_bounds_every_baseline(case: str) -> None:
    """With episode.length_days = 2 the oracle plans each episode as one LP over its 192
    steps (one SoC trajectory, the terminal value at the end only), from exactly the profiles
    the env steps through (the idle, no-P2P oracle reproduces ``no_p2p`` episode by episode,
    across the year's end too), and every baseline's episode costs at least as much."""
    import envs
    from agents.baselines import BASELINES, make_oracle, make_policy
    from agents.evaluation import evaluate_policy
    from envs import metrics

    config = {**TWO_DAY_CASES[case], "episode": {"length_days": 2}}
    env = envs.make_batched_env(config, n_envs=1, dtype="float64")
    assert env.episode_steps == 192
    oracle, schedules = make_oracle("oracle").evaluate(env, TWO_DAY_STARTS)
    bound = metrics.community_cost(oracle)
    assert oracle.day.tolist() == TWO_DAY_STARTS
    for schedule in schedules:
        assert schedule.soc_kwh.shape[0] == 192 + 1
        expected = terminal_value(schedule.soc_kwh[0], schedule.soc_kwh[-1], env.terminal_price,
                                  env.terminal_credit_price)
        assert schedule.terminal_value_cost == pytest.approx(expected, abs=1e-9)
    idle, _ = make_oracle("oracle_no_p2p_idle").evaluate(env, TWO_DAY_STARTS)
    batch = len(TWO_DAY_STARTS)
    for spec in BASELINES:  # every rule-based policy, random and time_of_use included
        policy = make_policy(spec)
        mechanism = policy.mechanism or "uniform"
        env = envs.make_batched_env(config, n_envs=batch, dtype="float64",
                                    **{"market.mechanism": mechanism})
        totals, _ = evaluate_policy(env, policy, TWO_DAY_STARTS, seed=0)
        assert totals.day.tolist() == TWO_DAY_STARTS
        cost = metrics.community_cost(totals)
        assert bool((cost >= bound - 1e-6).all()), (spec, (cost - bound).tolist())
        if spec == "no_p2p":
            np.testing.assert_allclose(cost.numpy(), metrics.community_cost(idle).numpy(),
                                       rtol=0, atol=1e-9)
            np.testing.assert_allclose(totals.agent["no_p2p_cost"].sum(1).numpy(),
                                       idle.agent["no_p2p_cost"].sum(1).numpy(), atol=1e-9)


@pytest.mark.parametrize("tariff", list(TARIFFS.values()), ids=list(TARIFFS))
def test_household_optimum_lies_between_the_oracle_and_the_rule_alone(tariff: dict) -> None:
    """oracle <= oracle_household <= self_consumption under mechanism none (each home with
    its own grid bill), and oracle_household <= no_p2p, day by day: each home planning its
    battery alone with perfect foresight does at least as well as the rule alone (or as
    idling), and the community's optimum at least as well as the homes alone."""
    import envs
    from agents.baselines import ORACLES, make_oracle, make_policy
    from agents.evaluation import evaluate_policy
    from envs import metrics

    assert ORACLES["oracle_household"] == {"p2p": False, "use_battery": True,
                                           "network": False}
    config = {**ENV_CONFIG, "tariff": tariff, "market": {"mechanism": "none"}}
    env = envs.make_batched_env(config, n_envs=len(ENV_DAYS), dtype="float64")
    cost = {name: metrics.community_cost(make_oracle(name).evaluate(env, ENV_DAYS)[0])
            for name in ("oracle", "oracle_household")}
    for spec in ("self_consumption", "no_p2p"):
        totals, _ = evaluate_policy(env, make_policy(spec), ENV_DAYS, seed=0)
        cost[spec] = metrics.community_cost(totals)
    tolerance = 1e-7
    assert bool((cost["oracle"] <= cost["oracle_household"] + tolerance).all())
    assert bool((cost["oracle_household"] <= cost["self_consumption"] + tolerance).all())
    assert bool((cost["oracle_household"] <= cost["no_p2p"] + tolerance).all())
    # Sharing is worth something on these days: the oracle is strictly better.
    assert float((cost["oracle_household"] - cost["oracle"]).sum()) > 0.1
    # The household totals carry no P2P volume: every home settles on its own.
    household, _ = make_oracle("oracle_household").evaluate(env, ENV_DAYS)
    assert bool((household.env["p2p_volume_kwh"] == 0).all())


def test_household_optimum_of_one_agent_is_the_oracle() -> None:
    """With one agent there is nothing to share: oracle_household == oracle."""
    import envs
    from agents.baselines import make_oracle
    from envs import metrics

    config = {**ENV_CONFIG, "community": {"feeder": "synthetic", "n_agents": 1,
                                          "battery_share": 1.0, "pv_share": 1.0},
              "tariff": {"retail_tou": STRONG_TOU_RETAIL}}
    env = envs.make_batched_env(config, n_envs=1, dtype="float64")
    assert float(env.capacity_kwh[0]) > 0
    oracle, alone = (metrics.community_cost(make_oracle(name).evaluate(env, ENV_DAYS)[0])
                     for name in ("oracle", "oracle_household"))
    np.testing.assert_allclose(alone.numpy(), oracle.numpy(), rtol=1e-9, atol=1e-7)


def test_oracle_of_a_float32_env_is_built_from_float64_tables_and_bounds_it() -> None:
    """In the default float32 env the oracle reads float64 tables (tariffs and PV power not
    rounded to float32) and stays a lower bound: on case33bw self_consumption's cost equals
    the optimum (in float64, to rounding) and came out 4e-5 to 8e-5 below an oracle built
    from the env's float32 tables on these days."""
    import envs
    from agents.baselines import make_oracle, make_policy
    from agents.evaluation import evaluate_policy
    from envs import metrics
    from envs.data import STEPS_PER_DAY

    days = [6, 20, 356]
    env = envs.make_batched_env({"community": {"feeder": "case33bw"}}, n_envs=len(days))
    assert env.dtype == torch.float32
    oracle = make_oracle("oracle")
    bound = metrics.community_cost(oracle.evaluate(env, days)[0])
    _, profile = oracle.solve_day(env, days[0])
    retail, feed_in = (np.asarray(prices)[np.arange(STEPS_PER_DAY) // 4]
                       for prices in env.config.tariff.hourly())
    np.testing.assert_array_equal(profile["retail_price"], retail)  # 0.3, not float32's
    np.testing.assert_array_equal(profile["feed_in_price"], feed_in)
    assert not np.array_equal(env.retail_price.double().numpy(), retail)
    totals, _ = evaluate_policy(env, make_policy("self_consumption"), days, seed=0)
    cost = metrics.community_cost(totals)
    assert bool((cost >= bound - LP_TOLERANCE).all()), (cost - bound).tolist()
    np.testing.assert_allclose(cost.numpy(), bound.numpy(), rtol=1e-7)  # equal up to float32


# ---------------------------------------------------------------------------------------
# Network-constrained variant
# ---------------------------------------------------------------------------------------


def assert_network_limits_hold(
    result: OracleResult, network: NetworkLinearisation, dt_h: float = DT_H
) -> None:
    """The reported voltages/loadings follow the linear model and respect the limits."""
    power_kw = result.net_kwh / dt_h
    np.testing.assert_allclose(result.voltage_pu, network.v0_pu + power_kw @ network.dv_dp.T)
    assert np.all(result.voltage_pu <= network.v_max + 1e-7)
    assert np.all(result.voltage_pu >= network.v_min - 1e-7)
    if network.dline_dp is not None:
        loading0 = 0.0 if network.line_loading0 is None else network.line_loading0
        expected = loading0 + power_kw @ network.dline_dp.T
        np.testing.assert_allclose(result.line_loading_percent, expected)
        assert np.all(np.abs(result.line_loading_percent) <= network.line_max_percent + 1e-6)


def test_overvoltage_forces_pv_curtailment() -> None:
    # 1 agent exporting 1 kWh in 15 min = 4 kW; each kW of export raises the voltage by
    # 0.01 p.u. -> 1.04 > v_max = 1.03, so at most 3 kW (0.75 kWh) may be exported.
    load, pv = np.array([[0.0]]), np.array([[1.0]])
    retail, feed_in = np.array([0.30]), np.array([0.08])
    network = NetworkLinearisation(
        v0_pu=np.array([1.0]), dv_dp=np.array([[-0.01]]), v_min=0.95, v_max=1.03
    )
    fleet = BatteryFleet.none(1)
    free = solve_oracle(load, pv, retail, feed_in, fleet)
    result = solve_oracle(load, pv, retail, feed_in, fleet, network=network)
    assert free.cost == pytest.approx(-0.08)
    assert result.curtailment_kwh[0, 0] == pytest.approx(0.25, abs=1e-9)
    assert result.cost == pytest.approx(-0.08 * 0.75, abs=1e-9)
    assert result.voltage_pu[0, 0] == pytest.approx(1.03, abs=1e-9)
    assert result.network_slack == 0.0
    assert_network_limits_hold(result, network)


def test_overvoltage_is_absorbed_by_the_battery_instead() -> None:
    # Step 0: 4 kW PV export (limit 3 kW as above); step 1: 0.5 kWh load. Retail equals
    # feed-in (0.08), so storing is worth nothing except avoiding curtailment.
    load = np.array([[0.0], [0.5]])
    pv = np.array([[1.0], [0.0]])
    retail = feed_in = np.array([0.08, 0.08])
    fleet = BatteryFleet(
        capacity_kwh=np.array([2.0]),
        max_charge_kw=4.0,
        max_discharge_kw=4.0,
        charge_efficiency=1.0,
        discharge_efficiency=1.0,
        degradation_cost=0.001,
    )
    network = NetworkLinearisation(v0_pu=np.array([1.0]), dv_dp=np.array([[-0.01]]), v_max=1.03)
    free = solve_oracle(load, pv, retail, feed_in, fleet)
    result = solve_oracle(load, pv, retail, feed_in, fleet, network=network)
    # Unconstrained: degradation makes the battery not worth using: -0.08 + 0.04 = -0.04.
    assert free.cost == pytest.approx(-0.04, abs=1e-9)
    np.testing.assert_allclose(free.charge_kwh, 0.0, atol=1e-9)
    # Constrained: store the 0.25 kWh that may not be exported and use it at step 1:
    # -0.08 * 0.75 + 0.08 * 0.25 + 0.001 * (0.25 + 0.25) = -0.0395 (curtailing: -0.02).
    assert result.charge_kwh[0, 0] == pytest.approx(0.25, abs=1e-9)
    assert result.discharge_kwh[1, 0] == pytest.approx(0.25, abs=1e-9)
    np.testing.assert_allclose(result.curtailment_kwh, 0.0, atol=1e-9)
    assert result.cost == pytest.approx(-0.0395, abs=1e-9)
    assert_network_limits_hold(result, network)


def test_line_limit_caps_community_export() -> None:
    # Two agents behind one line rated 4 kW (25 % per kW of consumption); each exports
    # 3 kW, so -150 %: 2 kW (0.5 kWh) must be curtailed between them.
    load = np.zeros((1, 2))
    pv = np.full((1, 2), 0.75)
    retail, feed_in = np.array([0.30]), np.array([0.08])
    network = NetworkLinearisation(
        v0_pu=np.ones(1), dv_dp=np.zeros((1, 2)), dline_dp=np.array([[25.0, 25.0]])
    )
    result = solve_oracle(load, pv, retail, feed_in, BatteryFleet.none(2), network=network)
    assert result.curtailment_kwh.sum() == pytest.approx(0.5, abs=1e-9)
    assert result.line_loading_percent[0, 0] == pytest.approx(-100.0, abs=1e-6)
    assert result.cost == pytest.approx(-0.08 * 1.0, abs=1e-9)
    assert_network_limits_hold(result, network)


def _random_network(
    rng: np.random.Generator, n_agents: int, v_max: float, line_max: float
) -> NetworkLinearisation:
    """Two buses and one line over ``n_agents`` agents, no undervoltage limit."""
    return NetworkLinearisation(
        v0_pu=np.full(2, 1.0),
        dv_dp=-rng.uniform(0.002, 0.01, (2, n_agents)),
        v_min=0.0,
        v_max=v_max,
        dline_dp=rng.uniform(5.0, 12.0, (1, n_agents)),
        line_max_percent=line_max,
    )


@pytest.mark.parametrize("seed", range(4))
def test_loose_network_limits_reproduce_the_unconstrained_optimum(seed: int) -> None:
    rng = np.random.default_rng(seed)
    day = random_day(rng, n_steps=24, n_agents=4)
    day["feed_in_price"] = np.abs(day["feed_in_price"])  # curtailment then never pays
    network = _random_network(rng, 4, v_max=10.0, line_max=1e6)
    free = solve_oracle(**day)
    constrained = solve_oracle(**day, network=network)
    assert constrained.cost == pytest.approx(free.cost, rel=1e-9, abs=1e-9)
    assert constrained.network_slack == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_binding_network_limits_are_met_at_a_higher_cost(seed: int) -> None:
    rng = np.random.default_rng(seed)
    day = random_day(rng, n_steps=24, n_agents=4)
    # Loads alone reach at most 4 agents * 4 kW * 12 %/kW = 192 % < 200 %: curtailment can
    # always meet the limits, while PV exports (up to 6 kW each) can break both.
    network = _random_network(rng, 4, v_max=1.03, line_max=200.0)
    free = solve_oracle(**day, allow_curtailment=True)  # curtailment pays at feed-in < 0
    free_voltage = network.v0_pu + (free.net_kwh / DT_H) @ network.dv_dp.T
    free_loading = (free.net_kwh / DT_H) @ network.dline_dp.T
    assert np.any(free_voltage > 1.03) or np.any(np.abs(free_loading) > 200.0)
    result = solve_oracle(**day, network=network)
    assert result.network_slack == 0.0
    assert_network_limits_hold(result, network)
    assert at_most(free.cost, result.cost)


def test_undervoltage_from_load_alone_is_reported_as_slack() -> None:
    # 1 kWh per step = 4 kW of load at -0.02 p.u./kW: 0.92 p.u., 0.03 below v_min.
    load, pv = np.ones((2, 1)), np.zeros((2, 1))
    retail, feed_in = np.array([0.30, 0.30]), np.array([0.08, 0.08])
    network = NetworkLinearisation(v0_pu=np.ones(1), dv_dp=np.array([[-0.02]]), v_min=0.95)
    result = solve_oracle(load, pv, retail, feed_in, BatteryFleet.none(1), network=network)
    assert result.network_slack == pytest.approx(2 * 0.03, abs=1e-7)
    assert result.cost == pytest.approx(0.60, abs=1e-9)  # the penalty is not in the cost
    np.testing.assert_allclose(result.voltage_pu, 0.92, atol=1e-9)


@pytest.mark.parametrize(
    ("initial_soc_kwh", "expected_slack"),
    [
        # Each step needs net <= 2.5 kW (0.625 kWh), i.e. 0.375 kWh of discharge: 0.75 in
        # all, which a full 1 kWh battery covers.
        (1.0, 0.0),
        # With 0.5 kWh, 0.25 kWh (1 kW over one step) is missing: 0.02 p.u. of violation.
        (0.5, 0.02),
    ],
)
def test_undervoltage_forces_battery_discharge(
    initial_soc_kwh: float, expected_slack: float
) -> None:
    load, pv = np.ones((2, 1)), np.zeros((2, 1))
    retail, feed_in = np.array([0.30, 0.30]), np.array([0.08, 0.08])
    fleet = BatteryFleet(
        capacity_kwh=np.array([1.0]),
        max_charge_kw=4.0,
        max_discharge_kw=4.0,
        charge_efficiency=1.0,
        discharge_efficiency=1.0,
        initial_soc_kwh=initial_soc_kwh,
        degradation_cost=0.001,  # makes simultaneous charge and discharge unattractive
    )
    network = NetworkLinearisation(v0_pu=np.ones(1), dv_dp=np.array([[-0.02]]), v_min=0.95)
    result = solve_oracle(load, pv, retail, feed_in, fleet, network=network)
    assert result.network_slack == pytest.approx(expected_slack, abs=1e-7)
    # All stored energy is worth using (terminal SoC has no value).
    assert result.discharge_kwh.sum() == pytest.approx(initial_soc_kwh, abs=1e-7)
    np.testing.assert_allclose(result.charge_kwh, 0.0, atol=1e-9)
    if expected_slack == 0.0:
        assert_network_limits_hold(result, network)
        assert np.all(result.discharge_kwh >= 0.375 - 1e-9)


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------


def _valid_inputs() -> dict:
    return {
        "load_kwh": np.ones((3, 2)),
        "pv_kwh": np.zeros((3, 2)),
        "retail_price": np.full(3, 0.3),
        "feed_in_price": np.full(3, 0.1),
        "battery": BatteryFleet.none(2),
    }


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("battery", BatteryFleet.none(3), "battery has 3 agents"),
        ("load_kwh", np.ones(3), "shape"),
        ("pv_kwh", np.zeros((2, 2)), "pv_kwh must have shape"),
        ("retail_price", np.full(4, 0.3), "retail_price must have shape"),
        ("load_kwh", np.array([[1.0, np.nan]] * 3), "NaN"),
        ("feed_in_price", np.array([0.1, np.inf, 0.1]), "NaN"),
        ("load_kwh", -np.ones((3, 2)), "load_kwh must be >= 0"),
        ("pv_kwh", -np.ones((3, 2)), "pv_kwh must be >= 0"),
        ("feed_in_price", np.array([0.1, 0.4, 0.1]), "retail_price < feed_in_price"),
    ],
)
def test_invalid_inputs_raise_value_error(field: str, value: np.ndarray, message: str) -> None:
    inputs = _valid_inputs() | {field: value}
    with pytest.raises(ValueError, match=message):
        solve_oracle(**inputs)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"capacity_kwh": np.array([-1.0, 1.0])}, "capacity_kwh must be >= 0"),
        ({"capacity_kwh": np.ones((2, 1))}, "shape"),
        ({"max_charge_kw": np.ones(3)}, "max_charge_kw must be a scalar or have shape"),
        ({"charge_efficiency": 0.0}, r"charge_efficiency must lie in \(0, 1\]"),
        ({"discharge_efficiency": 1.1}, r"discharge_efficiency must lie in \(0, 1\]"),
        ({"soc_min": 0.8, "soc_max": 0.2}, "soc_min must be <= soc_max"),
        ({"initial_soc_kwh": 9.5, "soc_max": 0.9}, "initial_soc_kwh outside"),
        ({"initial_soc_kwh": 0.5, "soc_min": 0.1}, "initial_soc_kwh outside"),
        ({"degradation_cost": np.nan}, "NaN"),
    ],
)
def test_invalid_battery_fleet_raises_value_error(overrides: dict, message: str) -> None:
    params = {"capacity_kwh": np.array([10.0, 10.0]), "max_charge_kw": 3.0,
              "max_discharge_kw": 3.0, "initial_soc_kwh": 5.0} | overrides  # fmt: skip
    with pytest.raises(ValueError, match=message):
        BatteryFleet(**params)


def test_invalid_network_and_step_raise_value_error() -> None:
    inputs = _valid_inputs()
    with pytest.raises(ValueError, match="dt_h"):
        solve_oracle(**inputs, dt_h=0.0)
    for price in (-0.1, np.nan, np.inf):
        with pytest.raises(ValueError, match="terminal_price must be a finite price >= 0"):
            solve_oracle(**inputs, terminal_price=price)
    for credit in (-0.1, np.nan, np.inf, 0.31):  # above the charge price: not convex
        with pytest.raises(ValueError, match="terminal_credit_price must be a finite price"):
            solve_oracle(**inputs, terminal_price=0.3, terminal_credit_price=credit)
    with pytest.raises(ValueError, match="dv_dp must have shape"):
        bad = NetworkLinearisation(v0_pu=np.ones(1), dv_dp=np.ones((1, 3)))
        solve_oracle(**inputs, network=bad)
    with pytest.raises(ValueError, match="v0_pu must be a scalar or have shape"):
        bad = NetworkLinearisation(v0_pu=np.ones((2, 1)), dv_dp=np.ones((1, 2)))
        solve_oracle(**inputs, network=bad)
    with pytest.raises(ValueError, match="v_min must be <="):
        bad = NetworkLinearisation(v0_pu=np.ones(1), dv_dp=np.ones((1, 2)), v_min=1.1)
        solve_oracle(**inputs, network=bad)


# ---------------------------------------------------------------------------------------
# Scale (timing is reported, not asserted)
# ---------------------------------------------------------------------------------------


def test_full_community_day_solves(capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    n_steps, n_agents = 96, 111
    hours = np.arange(n_steps) * DT_H
    sun = np.clip(np.sin((hours - 6.0) / 12.0 * np.pi), 0.0, None)
    load = rng.uniform(0.2, 1.5, (n_steps, n_agents)) * DT_H
    pv = sun[:, None] * rng.uniform(0.0, 6.0, n_agents) * DT_H
    retail = np.where((hours >= 17) & (hours < 21), 0.40, 0.25)
    feed_in = np.full(n_steps, 0.08)
    capacity = np.where(rng.random(n_agents) < 0.5, 10.0, 0.0)
    fleet = BatteryFleet(capacity, 5.0, 5.0, 0.95, 0.95, 0.1, 0.9, 0.5 * capacity, 0.01)
    timings = {}
    costs = {}
    for p2p in (True, False):
        start = time.perf_counter()
        costs[p2p] = solve_oracle(load, pv, retail, feed_in, fleet, p2p=p2p).cost
        timings[p2p] = time.perf_counter() - start
    with capsys.disabled():
        print(
            f"\n[oracle] N={n_agents} T={n_steps}: p2p solve {timings[True]:.2f} s, "
            f"individual solve {timings[False]:.2f} s"
        )
    assert at_most(costs[True], costs[False])


# ---------------------------------------------------------------------------------------
# The greedy (tie-broken) optimum: the schedule behaviour cloning imitates
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("p2p", [True, False])
def test_tie_break_keeps_the_optimal_cost(seed: int, p2p: bool) -> None:
    """The greedy schedule is one of the optima: its cost (recomputed by replaying it through
    the environment's rules) is the plain optimum's, to the tie-break tolerance, with and
    without a binding network."""
    rng = np.random.default_rng(seed)
    day = random_day(rng, n_steps=24, n_agents=4)
    plain = solve_oracle(**day, p2p=p2p)
    greedy = solve_oracle(**day, p2p=p2p, tie_break=True)
    tolerance = 2e-7 * max(1.0, abs(plain.cost)) + LP_TOLERANCE
    assert abs(greedy.cost - plain.cost) <= tolerance
    replayed = simulate_battery_policy(day["load_kwh"], day["pv_kwh"], day["retail_price"],
                                       day["feed_in_price"], day["battery"],
                                       greedy.charge_kwh, greedy.discharge_kwh, p2p=p2p)
    assert replayed == pytest.approx(greedy.cost, abs=1e-5)
    network = _random_network(rng, 4, v_max=1.03, line_max=200.0)
    bound = solve_oracle(**day, network=network)
    greedy_bound = solve_oracle(**day, network=network, tie_break=True)
    assert abs(greedy_bound.cost - bound.cost) <= 2e-7 * max(1.0, abs(bound.cost)) + 1e-6
    assert greedy_bound.network_slack == 0.0
    assert_network_limits_hold(greedy_bound, network)


def test_tie_break_covers_the_earliest_deficit_from_the_own_battery() -> None:
    """Flat tariff, lossless batteries without wear, no terminal value: which evening step the
    stored kWh covers, and whose battery covers it, cost the same. Home 0 has 1 kWh to give
    (1 kWh/step power), home 1 as much; home 0 needs 0.5 kWh at steps 1, 2 and 3, home 1
    0.5 kWh at steps 2 and 3 (step 0 is idle). The greedy optimum lets each battery serve its
    own home first, from the earliest deficit on: home 0 discharges 0.5 at steps 1 and 2,
    home 1 at steps 2 and 3; the 0.5 kWh that no battery holds any more is imported at the
    last step, home 0's step 3 deficit."""
    load = np.array([[0.0, 0.0], [0.5, 0.0], [0.5, 0.5], [0.5, 0.5]])
    fleet = BatteryFleet(capacity_kwh=np.array([1.0, 1.0]), max_charge_kw=4.0,
                         max_discharge_kw=4.0, charge_efficiency=1.0, discharge_efficiency=1.0,
                         initial_soc_kwh=np.array([1.0, 1.0]))
    kwargs = {"load_kwh": load, "pv_kwh": np.zeros_like(load), "retail_price": np.full(4, 0.3),
              "feed_in_price": np.full(4, 0.08), "battery": fleet, "dt_h": 0.25}
    greedy = solve_oracle(**kwargs, tie_break=True)
    assert greedy.cost == pytest.approx(solve_oracle(**kwargs).cost, abs=1e-9)
    assert greedy.cost == pytest.approx(0.3 * 0.5, abs=1e-6)  # 2.5 kWh needed, 2 stored
    np.testing.assert_allclose(greedy.discharge_kwh, [[0.0, 0.0], [0.5, 0.0], [0.5, 0.5],
                                                      [0.0, 0.5]], atol=1e-7)
    np.testing.assert_allclose(greedy.grid_import_kwh, [0.0, 0.0, 0.0, 0.5], atol=1e-7)


# ---------------------------------------------------------------------------------------
# Shared community battery
# ---------------------------------------------------------------------------------------


def _shared_battery(rng: np.random.Generator) -> SharedBattery:
    capacity = rng.uniform(2.0, 20.0)
    soc_min, soc_max = rng.uniform(0.0, 0.2), rng.uniform(0.8, 1.0)
    return SharedBattery(
        capacity_kwh=capacity,
        power_kw=rng.uniform(0.5, 8.0),
        charge_efficiency=rng.uniform(0.85, 1.0),
        discharge_efficiency=rng.uniform(0.85, 1.0),
        soc_min=soc_min,
        soc_max=soc_max,
        initial_soc_kwh=capacity * rng.uniform(soc_min, soc_max),
        degradation_cost=rng.uniform(0.0, 0.03),
    )


@pytest.mark.parametrize(
    ("power_kw", "expected_cost", "charged_kwh"),
    [
        # Charge all 4 kWh of PV surplus at noon: 0.9 * 0.8 * 4 = 2.88 kWh in the evening.
        # Cost: 0.30 * (3 - 2.88) import + 0.01 * (4 + 2.88) wear = 0.036 + 0.0688.
        (5.0, 0.1048, 4.0),
        # Power-limited to 2 kWh: export 2 at 0.10, 1.44 delivered.
        # Cost: -0.10 * 2 + 0.30 * (3 - 1.44) + 0.01 * (2 + 1.44) = -0.2 + 0.468 + 0.0344.
        (2.0, 0.3024, 2.0),
    ],
)
def test_shared_battery_moves_noon_surplus_to_the_evening_hand_computed(
    power_kw: float, expected_cost: float, charged_kwh: float
) -> None:
    # One agent, 1-hour steps: 4 kWh PV surplus at noon, a 3 kWh deficit in the evening.
    load, pv = np.array([[0.0], [3.0]]), np.array([[4.0], [0.0]])
    retail, feed_in = np.array([0.30, 0.30]), np.array([0.10, 0.10])
    shared = SharedBattery(capacity_kwh=10.0, power_kw=power_kw, charge_efficiency=0.9,
                           discharge_efficiency=0.8, initial_soc_kwh=0.0,
                           degradation_cost=0.01)
    fleet = BatteryFleet.none(1)
    without = solve_oracle(load, pv, retail, feed_in, fleet, dt_h=1.0)
    result = solve_oracle(load, pv, retail, feed_in, fleet, dt_h=1.0, shared=shared)
    assert without.cost == pytest.approx(-0.10 * 4 + 0.30 * 3, abs=1e-9)
    assert without.shared_soc_kwh is None and without.shared_charge_kwh is None
    assert result.cost == pytest.approx(expected_cost, abs=1e-9)
    delivered = 0.9 * 0.8 * charged_kwh
    np.testing.assert_allclose(result.shared_charge_kwh, [charged_kwh, 0.0], atol=1e-9)
    np.testing.assert_allclose(result.shared_discharge_kwh, [0.0, delivered], atol=1e-9)
    np.testing.assert_allclose(result.shared_soc_kwh, [0.0, 0.9 * charged_kwh, 0.0],
                               atol=1e-9)
    assert result.shared_degradation_cost == pytest.approx(0.01 * (charged_kwh + delivered))
    assert result.shared_terminal_value_cost == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(result.grid_import_kwh, [0.0, 3.0 - delivered], atol=1e-9)
    np.testing.assert_allclose(result.grid_export_kwh, [4.0 - charged_kwh, 0.0], atol=1e-9)


def test_shared_battery_terminal_value_is_in_the_cost() -> None:
    # 2 kWh in the shared battery at the start, 1 kWh evening load, lossless. Taking 1 kWh
    # from the cells costs the terminal price 0.25 < retail 0.30: the battery covers it.
    load, pv = np.array([[1.0]]), np.array([[0.0]])
    retail, feed_in = np.array([0.30]), np.array([0.0])
    shared = SharedBattery(capacity_kwh=4.0, power_kw=4.0, charge_efficiency=1.0,
                           discharge_efficiency=1.0, initial_soc_kwh=2.0)
    result = solve_oracle(load, pv, retail, feed_in, BatteryFleet.none(1), dt_h=1.0,
                          shared=shared, terminal_price=0.25)
    assert result.cost == pytest.approx(0.25, abs=1e-9)
    assert result.shared_terminal_value_cost == pytest.approx(0.25, abs=1e-9)
    assert result.terminal_value_cost == pytest.approx(0.0, abs=1e-12)  # the homes' only


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("terminal_prices", [(0.0, 0.0), (0.3, 0.1)])
def test_shared_battery_equals_the_same_home_battery_of_a_single_agent(
    seed: int, terminal_prices: tuple[float, float]
) -> None:
    rng = np.random.default_rng(seed)
    day = random_day(rng, n_steps=24, n_agents=1)
    shared = _shared_battery(rng)
    home = BatteryFleet(
        capacity_kwh=np.array([shared.capacity_kwh]), max_charge_kw=shared.power_kw,
        max_discharge_kw=shared.power_kw, charge_efficiency=shared.charge_efficiency,
        discharge_efficiency=shared.discharge_efficiency, soc_min=shared.soc_min,
        soc_max=shared.soc_max, initial_soc_kwh=shared.initial_soc_kwh,
        degradation_cost=shared.degradation_cost,
    )
    price, credit = terminal_prices
    prices = {"terminal_price": price, "terminal_credit_price": credit}
    day.pop("battery")
    with_home = solve_oracle(**day, battery=home, **prices)
    with_shared = solve_oracle(**day, battery=BatteryFleet.none(1), shared=shared, **prices)
    assert with_shared.cost == pytest.approx(with_home.cost, rel=1e-9, abs=1e-9)
    assert (with_shared.shared_degradation_cost + with_shared.shared_terminal_value_cost
            == pytest.approx(with_home.degradation_cost + with_home.terminal_value_cost,
                             abs=1e-6))


@pytest.mark.parametrize("seed", range(5))
def test_shared_battery_never_raises_the_optimum_and_respects_its_limits(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_steps, n_agents = 32, 3
    day = random_day(rng, n_steps, n_agents)
    shared = _shared_battery(rng)
    prices = {"terminal_price": 0.3, "terminal_credit_price": 0.1}
    without = solve_oracle(**day, **prices)
    result = solve_oracle(**day, shared=shared, **prices)
    assert at_most(result.cost, without.cost)
    # Bounds: power, SoC band, and the SoC dynamics from the AC flows.
    step_max = shared.power_kw * DT_H
    charge, discharge, soc = (result.shared_charge_kwh, result.shared_discharge_kwh,
                              result.shared_soc_kwh)
    assert charge.shape == discharge.shape == (n_steps,) and soc.shape == (n_steps + 1,)
    assert np.all(charge >= -1e-9) and np.all(charge <= step_max + 1e-9)
    assert np.all(discharge >= -1e-9) and np.all(discharge <= step_max + 1e-9)
    low, high = shared.soc_bounds_kwh()
    assert np.all(soc >= low - 1e-9) and np.all(soc <= high + 1e-9)
    assert soc[0] == shared.initial_soc_kwh
    np.testing.assert_allclose(
        np.diff(soc),
        shared.charge_efficiency * charge - discharge / shared.discharge_efficiency,
        atol=1e-8,
    )
    # The community settles its agents' net positions plus the battery's AC flow.
    np.testing.assert_allclose(
        result.grid_import_kwh - result.grid_export_kwh,
        result.net_kwh.sum(1) + charge - discharge, atol=1e-8,
    )
    # The cost is the grid bill plus both batteries' wear and terminal value.
    bill = float(day["retail_price"] @ result.grid_import_kwh
                 - day["feed_in_price"] @ result.grid_export_kwh)
    assert result.cost == pytest.approx(
        bill + result.degradation_cost + result.terminal_value_cost
        + result.shared_degradation_cost + result.shared_terminal_value_cost, abs=1e-7)
    # Idle (use_battery=False) it holds its SoC and costs what the idle community does.
    idle = solve_oracle(**day, shared=shared, use_battery=False, **prices)
    np.testing.assert_allclose(idle.shared_soc_kwh, shared.initial_soc_kwh, atol=1e-9)
    assert idle.cost == pytest.approx(solve_oracle(**day, use_battery=False, **prices).cost,
                                      abs=1e-9)


def test_shared_battery_without_p2p_raises_value_error() -> None:
    day = random_day(np.random.default_rng(0), 4, 2)
    shared = SharedBattery(capacity_kwh=5.0, power_kw=2.0)
    with pytest.raises(ValueError, match="shared battery"):
        solve_oracle(**day, shared=shared, p2p=False)
    with pytest.raises(ValueError, match="SharedBattery"):
        solve_oracle(**day, shared="battery")
    # A network without the battery's column cannot place it.
    network = NetworkLinearisation(v0_pu=np.ones(1), dv_dp=np.zeros((1, 2)))
    with pytest.raises(ValueError, match="N \\+ 1"):
        solve_oracle(**day, shared=shared, network=network)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"capacity_kwh": 0.0}, "capacity_kwh"),
        ({"power_kw": -1.0}, "power_kw"),
        ({"charge_efficiency": 1.2}, "charge_efficiency"),
        ({"discharge_efficiency": 0.0}, "discharge_efficiency"),
        ({"soc_min": 0.9, "soc_max": 0.5}, "soc_min"),
        ({"initial_soc_kwh": 11.0}, "initial_soc_kwh"),
        ({"degradation_cost": float("nan")}, "degradation_cost"),
        ({"capacity_kwh": np.ones(2)}, "capacity_kwh"),
    ],
)
def test_invalid_shared_battery_raises_value_error(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SharedBattery(**{"capacity_kwh": 10.0, "power_kw": 5.0, **overrides})


@pytest.mark.parametrize("battery_shares_agent_bus", [False, True])
@pytest.mark.parametrize(("v_min", "v_max", "binding"), [(0.95, 1.10, (0, 0.95)),
                                                        (0.50, 1.05, (1, 1.05))])
def test_shared_battery_column_of_the_network_binds_its_power(
    battery_shares_agent_bus: bool, v_min: float, v_max: float, binding: tuple[int, float]
) -> None:
    # Two agents, 1-hour steps. Agent 1 (no voltage effect) has 8 kWh PV surplus at noon and
    # an 8 kWh evening load. The shared battery's bus drops 0.01 p.u. per kW consumed: with
    # v_min = 0.95 it may charge at most 5 kW (with v_max = 1.05 discharge at most 5 kW), so
    # 3 kWh are exported (0.10) and bought back (0.30) instead of all 8 kWh being stored.
    # Agent 0 (no load, no PV) sits at the battery's bus in one variant (the two columns are
    # then grouped in the LP).
    load = np.array([[0.0, 0.0], [0.0, 8.0]])
    pv = np.array([[0.0, 8.0], [0.0, 0.0]])
    retail, feed_in = np.array([0.30, 0.30]), np.array([0.10, 0.10])
    shared = SharedBattery(capacity_kwh=20.0, power_kw=10.0, charge_efficiency=1.0,
                           discharge_efficiency=1.0, initial_soc_kwh=0.0)
    agent_0 = -0.01 if battery_shares_agent_bus else 0.0
    network = NetworkLinearisation(v0_pu=np.ones(1), dv_dp=np.array([[agent_0, 0.0, -0.01]]),
                                   v_min=v_min, v_max=v_max)
    fleet = BatteryFleet.none(2)
    free = solve_oracle(load, pv, retail, feed_in, fleet, dt_h=1.0, shared=shared)
    result = solve_oracle(load, pv, retail, feed_in, fleet, dt_h=1.0, shared=shared,
                          network=network)
    assert free.cost == pytest.approx(0.0, abs=1e-9)
    assert free.shared_charge_kwh[0] == pytest.approx(8.0, abs=1e-9)
    assert result.network_slack == 0.0
    assert result.shared_charge_kwh[0] == pytest.approx(5.0, abs=1e-9)
    assert result.shared_discharge_kwh[1] == pytest.approx(5.0, abs=1e-9)
    assert result.cost == pytest.approx(-0.10 * 3 + 0.30 * 3, abs=1e-9)
    # The linearised voltages, recomputed from the schedule with the battery's kW as the
    # last column, are the reported ones and within the limits.
    power_kw = np.hstack([result.net_kwh, (result.shared_charge_kwh
                                           - result.shared_discharge_kwh)[:, None]]) / 1.0
    voltage = network.v0_pu + power_kw @ network.dv_dp.T
    np.testing.assert_allclose(result.voltage_pu, voltage, atol=1e-12)
    assert np.all(voltage >= v_min - 1e-9) and np.all(voltage <= v_max + 1e-9)
    step, limit = binding
    assert voltage[step, 0] == pytest.approx(limit, abs=1e-9)  # the limit binds


def test_network_without_shared_battery_keeps_n_columns() -> None:
    # N + 1 columns without a shared battery are a shape error, as before.
    day = random_day(np.random.default_rng(1), 4, 2)
    network = NetworkLinearisation(v0_pu=np.ones(1), dv_dp=np.zeros((1, 3)))
    with pytest.raises(ValueError, match="dv_dp"):
        solve_oracle(**day, network=network)


def test_oracle_baselines_take_the_shared_battery_from_the_storage_config() -> None:
    from types import SimpleNamespace

    from agents.baselines import make_oracle, shared_battery, storage_capacity_cost
    from envs.config import StorageConfig

    def env_with(**storage):
        return SimpleNamespace(config=SimpleNamespace(storage=StorageConfig(**storage)))

    sizes = {"capacity_kwh": 50.0, "power_kw": 10.0, "soc_min": 0.1, "soc_max": 0.9,
             "initial_soc": 0.6, "capacity_cost": 0.002, "degradation_cost": 0.03}
    assert shared_battery(env_with()) is None
    assert storage_capacity_cost(env_with(), 2) == 0.0
    market = shared_battery(env_with(mode="market", **sizes))
    assert market.initial_soc_kwh == pytest.approx(30.0)
    assert (market.power_kw, market.degradation_cost) == (10.0, 0.03)
    virtual = shared_battery(env_with(mode="virtual", **sizes))
    assert virtual.initial_soc_kwh == pytest.approx(5.0)
    assert storage_capacity_cost(env_with(mode="market", **sizes), 2) == pytest.approx(0.2)
    env = env_with(mode="virtual", **sizes)
    # The P2P oracles plan it and pay its capacity; the household and idle ones exclude it.
    assert make_oracle("oracle").shared_battery(env) is not None
    assert make_oracle("oracle_network").capacity_cost(env, 1) == pytest.approx(0.1)
    for name in ("oracle_household", "oracle_no_p2p_idle"):
        assert make_oracle(name).shared_battery(env) is None
        assert make_oracle(name).capacity_cost(env, 1) == 0.0
