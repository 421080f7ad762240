"""Episode metrics (envs/metrics.py) on a hand-computed day, and the literature checks."""

from __future__ import annotations

import math

import pytest
import torch

from envs import market, metrics

RETAIL, FEED_IN = 0.3, 0.1


def _step(load, pv, battery, p2p, grid, payment, degradation, price, done, network,
          terminal=(0.0, 0.0), penalty=(0.0, 0.0), no_p2p_penalty=(0.0, 0.0)):
    """One step's info for one env of two agents (B = 1, N = 2); ``penalty``: the agents'
    network penalties, ``no_p2p_penalty``: those of the no-P2P operation (the core's
    ``no_p2p_network_penalty`` table)."""
    def agents(values):
        return torch.tensor([values], dtype=torch.float64)

    def env(value):
        return torch.tensor([value], dtype=torch.float64)

    net = [a - b + c for a, b, c in zip(load, pv, battery, strict=True)]
    cost = [p + d + x + v for p, d, x, v in zip(payment, degradation, penalty, terminal,
                                                strict=True)]
    info = {
        "cost": agents(cost), "payment": agents(payment), "degradation_cost": agents(degradation),
        "network_penalty": agents(list(penalty)), "terminal_value_cost": agents(list(terminal)),
        "no_p2p_network_penalty": agents(list(no_p2p_penalty)),
        "load_kwh": agents(load), "pv_kwh": agents(pv),
        "battery_energy_kwh": agents(battery), "net_energy_kwh": agents(net),
        "p2p_energy_kwh": agents(p2p), "grid_energy_kwh": agents(grid),
        "retail_price": env(RETAIL), "feed_in_price": env(FEED_IN),
        "clearing_price": env(price), "operator_surplus": env(0.0),
        "community_cost": env(sum(cost)),
        "p2p_volume_kwh": env(sum(max(x, 0.0) for x in p2p)),
        "grid_import_kwh": env(sum(max(x, 0.0) for x in grid)),
        "grid_export_kwh": env(sum(max(-x, 0.0) for x in grid)),
        "day": torch.tensor([5]),
        # envs.network.network_summary's names, to check the aliases
        "n_voltage_violations": env(network[0]), "n_line_violations": env(0.0),
        "losses_kw": env(4.0), "v_min_pu": env(network[1]), "v_max_pu": env(network[2]),
        "max_line_loading_percent": env(50.0),
    }
    if done:
        info["done"] = torch.tensor([True])
    return info, -agents(cost)


def hand_day(terminal: tuple[float, float] = (0.0, 0.0),
             penalty: tuple[float, float] = (0.0, 0.0),
             no_p2p_penalty: tuple[float, float] = (0.0, 0.0)) -> metrics.EpisodeTotals:
    """Retail 0.3, feed-in 0.1, two agents A and B, two steps.

    Step 1: A consumes 2 kWh, B produces 3 kWh. 2 kWh trade P2P at 0.2: A pays 0.4; B earns
    0.4 + 0.1 for 1 kWh exported. One bus violates the voltage band.
    Step 2: A consumes 1 kWh with 0.5 kWh PV and imports 0.5 (pays 0.15); B consumes 1 kWh
    from its battery (1 kWh AC discharge, degradation 0.02). No P2P. The episode ends: each
    agent pays its ``terminal`` value (0 unless given).
    In step 1 the agents pay network penalties ``penalty``, and the no-P2P operation would
    have paid ``no_p2p_penalty`` (both 0 unless given).
    """
    accumulator = metrics.EpisodeAccumulator(1, 2)
    info, reward = _step(load=[2.0, 0.0], pv=[0.0, 3.0], battery=[0.0, 0.0], p2p=[2.0, -2.0],
                         grid=[0.0, -1.0], payment=[0.4, -0.5], degradation=[0.0, 0.0],
                         price=0.2, done=False, network=(1.0, 0.97, 1.03), penalty=penalty,
                         no_p2p_penalty=no_p2p_penalty)
    assert accumulator.update(info, reward) is None
    info, reward = _step(load=[1.0, 1.0], pv=[0.5, 0.0], battery=[0.0, -1.0], p2p=[0.0, 0.0],
                         grid=[0.5, 0.0], payment=[0.15, 0.0], degradation=[0.0, 0.02],
                         price=math.nan, done=True, network=(0.0, 0.94, 1.06),
                         terminal=terminal)
    totals = accumulator.update(info, reward)
    assert totals is not None and len(totals) == 1
    return totals


def test_terminal_value_enters_cost_and_savings_like_with_like():
    """B's battery gave 1 kWh AC = 1 / 0.95 kWh of cells; at the default 0.266 per cell kWh
    the day's last step charges it 0.28. The no-P2P reference (idle batteries, no terminal
    value) is unchanged, so the saving drops by exactly the charge."""
    v1, valued = hand_day(), hand_day(terminal=(0.0, 0.28))
    m1 = {key: float(value[0]) for key, value in metrics.evaluation_summary(v1).items()}
    m = {key: float(value[0]) for key, value in metrics.evaluation_summary(valued).items()}
    assert m1["terminal_value_cost"] == 0.0
    assert m["terminal_value_cost"] == pytest.approx(0.28)
    assert m["community_cost"] == pytest.approx(0.07 + 0.28)
    assert m["no_p2p_cost"] == pytest.approx(m1["no_p2p_cost"])
    assert m["savings_vs_no_p2p"] == pytest.approx(0.68 - 0.28)
    assert m["episodic_return"] == pytest.approx(-(0.07 + 0.28) / 2)
    torch.testing.assert_close(metrics.agent_savings(valued)[0],
                               torch.tensor([0.2, 0.48 - 0.28], dtype=torch.float64))


def test_network_penalties_enter_the_no_p2p_reference():
    """The no-P2P reference bill carries the penalties its own operation causes (the core's
    ``no_p2p_network_penalty``), agent by agent; a policy's cost carries its own: savings are
    (tariff bill + reference penalties) - (cost + own penalties)."""
    plain = hand_day()
    penalised = hand_day(penalty=(0.05, 0.0), no_p2p_penalty=(0.03, 0.01))
    m1 = {key: float(value[0]) for key, value in metrics.evaluation_summary(plain).items()}
    m = {key: float(value[0]) for key, value in metrics.evaluation_summary(penalised).items()}
    assert m["no_p2p_cost"] == pytest.approx(m1["no_p2p_cost"] + 0.04)
    assert m["network_penalty"] == pytest.approx(0.05)
    assert m["community_cost"] == pytest.approx(m1["community_cost"] + 0.05)
    assert m["savings_vs_no_p2p"] == pytest.approx(0.68 + 0.04 - 0.05)
    torch.testing.assert_close(metrics.agent_savings(penalised)[0],
                               torch.tensor([0.2 + 0.03 - 0.05, 0.48 + 0.01],
                                            dtype=torch.float64))
    # The same penalties in a central schedule's reference (per step, [E, T, N]).
    load = torch.tensor([[[2.0, 0.0], [1.0, 1.0]]], dtype=torch.float64)
    pv = torch.tensor([[[0.0, 3.0], [0.5, 0.0]]], dtype=torch.float64)
    prices = torch.tensor([[RETAIL, RETAIL]], dtype=torch.float64)
    schedule = metrics.schedule_totals(
        load, pv, load - pv, torch.zeros_like(load), prices, prices * FEED_IN / RETAIL,
        torch.tensor([0.0]), torch.zeros(1, 2, dtype=torch.float64), torch.tensor([5]),
        p2p=True, no_p2p_network_penalty=torch.tensor([[[0.03, 0.01], [0.0, 0.0]]],
                                                      dtype=torch.float64))
    assert float(schedule.agent["no_p2p_cost"].sum()) == pytest.approx(m["no_p2p_cost"])


def test_hand_computed_day():
    totals = hand_day()
    m = {key: float(value[0]) for key, value in metrics.evaluation_summary(totals).items()}
    # costs: A 0.4 + 0.15 = 0.55, B -0.5 + 0.02 = -0.48; no-P2P bills: A 0.6 + 0.15, B -0.3 + 0.3
    assert m["community_cost"] == pytest.approx(0.07)
    assert m["no_p2p_cost"] == pytest.approx(0.75)
    assert m["savings_vs_no_p2p"] == pytest.approx(0.68)
    assert m["savings_percent"] == pytest.approx(100 * 0.68 / 0.75)
    savings = metrics.agent_savings(totals)[0]
    torch.testing.assert_close(savings, torch.tensor([0.2, 0.48], dtype=torch.float64))
    # Gini: mean |s_i - s_j| over the 4 ordered pairs = 0.56 / 4; over 2 * mean |s| = 0.68
    assert m["savings_gini"] == pytest.approx(0.14 / 0.68)
    assert m["self_sufficiency"] == pytest.approx(1 - 0.5 / 4.0)  # import 0.5 of load 4
    assert m["self_consumption"] == pytest.approx(1 - 1.0 / 3.5)  # export 1 of PV 3.5
    assert m["p2p_volume_kwh"] == pytest.approx(2.0)
    assert m["clearing_price"] == pytest.approx(0.2)
    assert m["allocative_efficiency"] == pytest.approx(1.0)  # 2 of min(2, 3) + min(0.5, 0)
    assert m["battery_throughput_kwh"] == pytest.approx(1.0)
    assert m["degradation_cost"] == pytest.approx(0.02)
    assert m["voltage_violations"] == 1.0 and m["line_violations"] == 0.0
    assert m["losses_kwh"] == pytest.approx(2.0)  # 4 kW for two 15-minute steps
    assert m["v_min_pu"] == pytest.approx(0.94) and m["v_max_pu"] == pytest.approx(1.06)
    assert m["max_line_loading_percent"] == pytest.approx(50.0)
    assert m["episodic_return"] == pytest.approx(-0.07 / 2)


def test_accumulator_resets_between_episodes():
    accumulator = metrics.EpisodeAccumulator(1, 2)
    for _ in range(2):
        info, reward = _step([1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0], [1.0, -1.0],
                             [0.3, -0.1], [0.0, 0.0], math.nan, True, (0.0, 0.99, 1.01))
        totals = accumulator.update(info, reward)
        assert float(metrics.community_cost(totals)[0]) == pytest.approx(0.2)
        assert float(totals.env["v_min_pu"][0]) == pytest.approx(0.99)


def test_network_metrics_nan_without_network():
    totals = hand_day()
    totals.env["network_steps"].zero_()
    summary = metrics.evaluation_summary(totals)
    for key in ("voltage_violations", "line_violations", "losses_kwh", "v_min_pu"):
        assert math.isnan(float(summary[key][0]))


def test_gini_and_shares():
    equal = torch.full((1, 4), 2.0)
    assert float(metrics.gini(equal)[0]) == pytest.approx(0.0)
    one_has_all = torch.tensor([[0.0, 0.0, 0.0, 4.0]])
    assert float(metrics.gini(one_has_all)[0]) == pytest.approx(3 / 4)
    share = metrics.captured_savings_share(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 6.0]))
    assert float(share) == pytest.approx(0.5)
    assert math.isnan(float(metrics.captured_savings_share(torch.ones(2), torch.zeros(2))))
    mean, std = metrics.mean_std(torch.tensor([1.0, math.nan, 3.0]))
    assert (mean, std) == (pytest.approx(2.0), pytest.approx(1.0))


def test_schedule_totals_match_definitions():
    """A central schedule's totals: shared energy = matchable energy, no per-agent costs."""
    load = torch.tensor([[[2.0, 0.0], [1.0, 1.0]]], dtype=torch.float64)
    pv = torch.tensor([[[0.0, 3.0], [0.5, 0.0]]], dtype=torch.float64)
    battery = torch.tensor([[[0.0, 0.0], [0.0, -1.0]]], dtype=torch.float64)
    prices = torch.tensor([[RETAIL, RETAIL]], dtype=torch.float64)
    totals = metrics.schedule_totals(
        load, pv, load - pv + battery, battery.abs(), prices, prices * FEED_IN / RETAIL,
        torch.tensor([-0.1 * 1.0 + 0.3 * 0.5 + 0.02]), torch.tensor([[0.0, 0.02]]),
        torch.tensor([5]), p2p=True)
    m = {key: float(value[0]) for key, value in metrics.evaluation_summary(totals).items()}
    assert m["p2p_volume_kwh"] == pytest.approx(2.0)
    assert m["allocative_efficiency"] == pytest.approx(1.0)
    assert m["no_p2p_cost"] == pytest.approx(0.75)
    assert m["self_sufficiency"] == pytest.approx(1 - 0.5 / 4.0)
    assert math.isnan(m["savings_gini"]) and math.isnan(m["clearing_price"])
    assert m["terminal_value_cost"] == 0.0  # none given
    valued = metrics.schedule_totals(
        load, pv, load - pv + battery, battery.abs(), prices, prices * FEED_IN / RETAIL,
        torch.tensor([0.07 + 0.28]), torch.tensor([[0.0, 0.02]]), torch.tensor([5]),
        p2p=True, terminal_value_cost=torch.tensor([[0.0, 0.28]], dtype=torch.float64))
    m = {key: float(value[0]) for key, value in metrics.evaluation_summary(valued).items()}
    assert m["terminal_value_cost"] == pytest.approx(0.28)
    assert m["community_cost"] == pytest.approx(0.35)


@pytest.mark.parametrize("seed", range(5))
def test_truthful_extreme_bids_are_fully_efficient_under_uniform(seed):
    """Buyers bidding retail and sellers asking feed-in trade every matchable kWh in a
    uniform-price double auction: allocative efficiency 100 %."""
    generator = torch.Generator().manual_seed(seed)
    quantity = torch.randn(16, 7, generator=generator, dtype=torch.float64)
    retail = torch.full((16,), RETAIL, dtype=torch.float64)
    feed_in = torch.full((16,), FEED_IN, dtype=torch.float64)
    price = torch.where(quantity > 0, retail[:, None], feed_in[:, None])
    cleared = market.clear("uniform", price, quantity, retail, feed_in)
    volume = cleared.p2p_energy.clamp_min(0.0).sum(1)
    efficiency = metrics.step_allocative_efficiency(volume, quantity)
    matchable = metrics.matchable_kwh(quantity) > 0
    torch.testing.assert_close(efficiency[matchable], torch.ones_like(efficiency[matchable]))
    assert torch.isnan(efficiency[~matchable]).all()
