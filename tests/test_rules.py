"""The rule-based battery decisions of envs/rules.py and the ``time_of_use`` baseline.

Hand-computed days on a one-home synthetic community without PV under a two-level tariff
(the SoC trajectory of the spread grid charge and of the peak discharge), the tariff table
of STRONG, the reduction to self-consumption under a flat tariff, and the cost of the rule
on STRONG against ``self_consumption`` and ``no_p2p`` on four test days of the default feeder.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import envs
from agents import baselines
from agents.baselines import make_policy
from agents.evaluation import evaluate_policy
from envs import metrics, rules
from envs.config import BatteryConfig, ConfigError

STRONG = [0.12] * 6 + [0.28] * 11 + [0.50] * 4 + [0.28] + [0.12] * 2
"""Issue 9's STRONG hourly retail tariff, currency/kWh."""

TWO_LEVEL = [0.10] * 6 + [0.40] * 18
"""Cheap 00-06 h (steps 0-23), expensive the rest of the day."""

ONE_HOME = {"community": {"feeder": "synthetic", "n_agents": 1, "pv_share": 0.0,
                          "battery_share": 1.0},
            "network": {"model": "none"}, "market": {"mechanism": "none"}}


def _hourly_steps(hours: list[float]) -> torch.Tensor:
    return torch.tensor(hours, dtype=torch.float64).repeat_interleave(4)


def test_tou_schedule_of_strong():
    schedule = rules.tou_schedule(_hourly_steps(STRONG), BatteryConfig())
    steps = torch.arange(96)
    night, evening_cheap = steps < 24, steps >= 88
    peak = (steps >= 68) & (steps < 84)
    assert schedule.grid_charge.tolist() == (night | evening_cheap).tolist()
    assert schedule.hold.tolist() == (~(night | evening_cheap | peak)).tolist()
    # Two cheap blocks, no wrap over midnight: 24 steps from 00:00, 8 from 22:00.
    assert schedule.cheap_steps_left[[0, 1, 23, 24, 88, 95]].tolist() == [24, 23, 1, 0, 8, 1]


def test_tou_schedule_flat_and_unprofitable_spreads():
    battery = BatteryConfig()
    flat = rules.tou_schedule(torch.full((96,), 0.3), battery)
    assert not flat.grid_charge.any() and not flat.hold.any()  # = self-consumption
    # 0.29 -> 0.30: a kWh bought cheap delivers 0.9025 kWh at the peak, worth less than it
    # costs with wear, so cheap steps only hold.
    narrow = rules.tou_schedule(_hourly_steps([0.29] * 12 + [0.30] * 12), battery)
    assert not narrow.grid_charge.any()
    assert narrow.hold.tolist() == [True] * 48 + [False] * 48


def test_one_home_charges_in_the_cheap_hours_and_covers_its_load_at_the_peak():
    env = envs.make_batched_env({**ONE_HOME, "tariff": {"retail_tou": TWO_LEVEL}},
                                n_envs=1, dtype="float64")
    day = 20
    env.reset(seed=0, days=[day])
    capacity = float(env.capacity_kwh[0])
    power = float(env.battery_kw[0])
    assert capacity > 0 and float(env.pv_kw[:, 0].max()) == 0.0
    policy = make_policy("time_of_use")
    soc, grid = [], []
    for _ in range(96):
        _, _, _, _, info = env.step(policy.act(None, env))
        soc.append(float(info["soc_kwh"][0, 0]))
        grid.append(float(info["grid_energy_kwh"][0, 0]))
    soc = np.array(soc)
    # Cheap block of 24 steps from 50 % to soc_max 90 %, linearly: after j steps
    # 0.5 C + 0.4 C j / 24 (constant AC power 0.4 C / 0.95 / 6 h = 0.070 C kW < 0.5 C).
    for j in (1, 6, 12, 18, 24):
        assert soc[j - 1] == pytest.approx((0.5 + 0.4 * j / 24) * capacity, rel=1e-9), j
    # Expensive steps: discharge covers the own load (cells lose load * dt / 0.95) down
    # to the 10 % floor; the grid supplies nothing while energy is left.
    load_kwh = env.load_kw[day * 96 + 24: day * 96 + 96, 0].numpy() * 0.25
    assert load_kwh.max() < power * 0.25  # below the power limit: no cut by power
    expected = np.maximum(0.9 * capacity - np.cumsum(load_kwh) / 0.95, 0.1 * capacity)
    np.testing.assert_allclose(soc[24:], expected, rtol=1e-9)
    covered = expected > 0.1 * capacity + 1e-9
    assert covered[:8].all() and not covered[-1]  # it empties before the day ends
    np.testing.assert_allclose(np.array(grid[24:])[covered], 0.0, atol=1e-12)


def test_flat_tariff_gives_the_self_consumption_actions():
    env = envs.make_batched_env(None, n_envs=2, dtype="float64")
    env.reset(seed=0, days=[6, 188])
    tou, self_consumption = make_policy("time_of_use"), make_policy("self_consumption")
    for step in range(96):
        actions = self_consumption.act(None, env)
        assert torch.equal(tou.act(None, env), actions), step
        env.step(actions)


def test_community_time_of_use_is_community_self_consumption_under_a_flat_tariff():
    env = envs.make_batched_env(None, n_envs=2, dtype="float64")
    env.reset(seed=0, days=[6, 188])
    tou, community = make_policy("community_time_of_use"), make_policy(
        "community_self_consumption")
    for step in range(96):
        actions = community.act(None, env)
        assert torch.equal(tou.act(None, env), actions), step
        env.step(actions)


def test_baselines_keep_the_rules_public_names():
    assert baselines.self_consumption_fraction is rules.self_consumption_fraction
    assert baselines.current_load_pv_kw is rules.current_load_pv_kw
    assert baselines.time_of_use_fraction is rules.time_of_use_fraction
    assert "time_of_use" in baselines.BASELINES


def test_time_of_use_beats_self_consumption_on_strong():
    """Measured (float64, rural1, zbus, battery in every home, default terminal value at the
    time of writing), community cost per day on days 6, 97, 188, 279: no_p2p 141.3, 146.5,
    79.2, 167.1; self_consumption 169.0, 163.6, 78.0, 194.8; time_of_use 110.5, 98.1, 38.5,
    127.0 (at least 39 below self_consumption and 30 below no_p2p on each day)."""
    config = {"community": {"battery_share": 1.0},
              "tariff": {"retail_tou": STRONG, "feed_in": 0.08}}
    days = [6, 97, 188, 279]
    cost = {}
    for spec in ("no_p2p", "self_consumption", "time_of_use"):
        policy = make_policy(spec)
        overrides = {"market.mechanism": policy.mechanism} if policy.mechanism else {}
        env = envs.make_batched_env(config, n_envs=len(days), dtype="float64", **overrides)
        totals, _ = evaluate_policy(env, policy, days, seed=0)
        cost[spec] = metrics.community_cost(totals)
    assert bool((cost["time_of_use"] < cost["self_consumption"] - 20.0).all()), cost
    assert bool((cost["time_of_use"] < cost["no_p2p"] - 15.0).all()), cost


def test_community_self_consumption_by_hand():
    """Three homes (batteries 1 kW / 10 kWh in the first two, none in the third), SoC band
    0.1-0.9, lossless, 15 min.
    Step 1: home 0 is 2 kW short (its battery gives its 1 kW), home 1 has 2.5 kW surplus (its
    battery takes 1 kW), home 2 is 0.2 kW short: the community has 0.3 kW surplus left, and
    only home 0's battery has room for it: [-1 + 0.3, 1, 0].
    Step 2: home 0 has 0.4 kW surplus (its battery takes it), home 1 is 0.5 kW short (its
    battery, 0.1 kWh above the floor, can give 0.4 kW for a quarter hour; the rule asks 0.5
    and the physics would cut it), home 2 is 1 kW short: 1 kW deficit left. Home 1 has no
    room to give beyond its own share (0.4 - 0.5 < 0), home 0 has 1 kW: it gives all of it,
    0.4 - 1 = -0.6."""
    battery = BatteryConfig(soc_min=0.1, soc_max=0.9, charge_efficiency=1.0,
                            discharge_efficiency=1.0)
    battery_kw = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    capacity = torch.tensor([10.0, 10.0, 0.0], dtype=torch.float64)
    load = torch.tensor([[2.0, 0.5, 0.2], [0.6, 0.5, 1.0]], dtype=torch.float64)
    pv = torch.tensor([[0.0, 3.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    soc = torch.tensor([[5.0, 5.0, 0.0], [5.0, 1.1, 0.0]], dtype=torch.float64)
    fraction = rules.community_self_consumption(load, pv, soc, battery_kw, capacity, battery,
                                                0.25)
    torch.testing.assert_close(fraction, torch.tensor([[-0.7, 1.0, 0.0], [-0.6, -0.5, 0.0]],
                                                      dtype=torch.float64))
    # With room to spare the community exchanges nothing with the grid: the batteries take
    # (give) exactly the net surplus (deficit) of all homes.
    soc = torch.full((2, 3), 5.0, dtype=torch.float64)
    load = torch.tensor([[0.9, 0.2, 0.3], [0.4, 0.9, 0.5]], dtype=torch.float64)
    pv = torch.tensor([[0.0, 1.1, 0.9], [0.3, 0.0, 0.0]], dtype=torch.float64)
    fraction = rules.community_self_consumption(load, pv, soc, battery_kw, capacity, battery,
                                                0.25)
    torch.testing.assert_close((fraction * battery_kw).sum(dim=1), (pv - load).sum(dim=1))
    assert float(fraction[:, 2].abs().max()) == 0.0


def test_observation_rule_is_validated():
    with pytest.raises(ConfigError, match=r"observation.rule.*self_consumption.*time_of_use"):
        envs.make_batched_env(None, **{"observation.rule": "greedy"})


def test_loss_averse_price_fraction_by_hand():
    # Sellers (net < 0) ask sqrt(lambda) / (1 + sqrt(lambda)), the others bid the rest:
    # lambda = 2.25 -> 1.5 / 2.5 = 0.6 and 0.4; lambda = 4 -> 2/3, 1/3; lambda = 1: midpoint.
    net = torch.tensor([[-1.0, 0.0, 2.0, -1e-9]], dtype=torch.float64)
    torch.testing.assert_close(rules.loss_averse_price_fraction(net, 2.25), torch.tensor(
        [[0.6, 0.4, 0.4, 0.6]], dtype=torch.float64))
    torch.testing.assert_close(rules.loss_averse_price_fraction(net, 4.0), torch.tensor(
        [[2 / 3, 1 / 3, 1 / 3, 2 / 3]], dtype=torch.float64))
    assert bool((rules.loss_averse_price_fraction(net, 1.0) == 0.5).all())
    # At the ask the expected loss-averse value over a reference uniform in the band is 0:
    # y**2 / 2 - lambda * (1 - y)**2 / 2 with y = 0.6, lambda = 2.25: 0.18 - 0.18.
    assert 0.6**2 / 2 - 2.25 * 0.4**2 / 2 == pytest.approx(0.0, abs=1e-15)


def test_planned_net_is_the_net_position_the_core_steps():
    """The loss-averse trader decides seller or buyer on planned_net_kwh: exactly the core's
    net position after the step, the battery cut at its SoC limits included."""
    env = envs.make_batched_env({"community": {"battery_share": 1.0}}, n_envs=3,
                                dtype="float64")
    env.reset(seed=0, days=[10, 172, 300])
    generator = torch.Generator().manual_seed(1)
    for _ in range(60):
        battery = torch.rand(3, env.n_agents, generator=generator, dtype=torch.float64) * 2 - 1
        planned = rules.planned_net_kwh(env, battery)
        _, _, _, _, info = env.step(torch.stack([battery, torch.full_like(battery, 0.5)], -1))
        assert torch.equal(planned, info["net_energy_kwh"])
