"""Rule-based traders and the oracle (agents/baselines.py), evaluated through
agents.evaluation.evaluate_policy.

The oracle bound: on random days, under every market mechanism, no policy (random-acting or
rule-based) gets a community cost below the perfect-foresight optimum; and the oracle with
P2P off and batteries idle reproduces the ``no_p2p`` reference to rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import envs
from agents import baselines
from agents.actions import env_actions
from agents.baselines import make_oracle, make_policy
from agents.evaluation import evaluate_policy
from envs import metrics
from envs.config import MECHANISM_NAMES
from envs.data import day_split
from envs.rules import planned_net_kwh

CONFIG = {"community": {"feeder": "synthetic", "n_agents": 5, "battery_share": 0.6},
          "network": {"model": "none"}}
DAYS = [int(d) for d in np.random.default_rng(42).choice(day_split(7)[1], 3, replace=False)]
POLICIES = ("random", "no_p2p", "self_consumption", "zi", "zi:battery=self_consumption",
            "fixed_price", "fixed_price:price_fraction=0.9", "loss_averse")


def make_env(n_envs: int = len(DAYS), **overrides):
    return envs.make_batched_env(CONFIG, n_envs=n_envs, dtype="float64", **overrides)


def run(spec: str, mechanism: str | None = None, seed: int = 0):
    policy = make_policy(spec)
    mechanism = policy.mechanism or mechanism or "uniform"
    env = make_env(**{"market.mechanism": mechanism})
    totals, _ = evaluate_policy(env, policy, DAYS, seed=seed)
    return totals


@pytest.fixture(scope="module")
def oracle_cost() -> torch.Tensor:
    totals, _ = make_oracle("oracle").evaluate(make_env(1), DAYS)
    return metrics.community_cost(totals)


@pytest.mark.parametrize("mechanism", MECHANISM_NAMES)
def test_oracle_bounds_every_policy_under_every_mechanism(mechanism, oracle_cost):
    for spec in POLICIES:
        cost = metrics.community_cost(run(spec, mechanism))
        slack = cost - oracle_cost
        assert bool((slack >= -1e-7).all()), (spec, mechanism, slack.tolist())


def test_oracle_bound_and_terminal_value_with_the_option_off(oracle_cost):
    """v1 accounting (episode.terminal_value false): left-over energy is free, so the oracle
    and the battery policies drain; the bound still holds, and the terminal value is what
    separates the two accountings (``community_cost`` - ``terminal_value_cost`` of a run
    with the option on is its payments, degradation and penalties)."""
    off = {"episode.terminal_value": False}
    env = make_env(1, **off)
    assert env.terminal_price == 0.0
    totals, schedules = make_oracle("oracle").evaluate(env, DAYS)
    bound = metrics.community_cost(totals)
    assert bool((bound <= oracle_cost + 1e-7).all())  # draining for free only helps
    assert all(s.terminal_value_cost == 0.0 for s in schedules)
    for spec in ("self_consumption", "random"):
        policy = make_policy(spec)
        v1, _ = evaluate_policy(make_env(**off), policy, DAYS, seed=0)
        assert bool((metrics.community_cost(v1) >= bound - 1e-7).all()), spec
        assert bool((metrics.summary(v1)["terminal_value_cost"] == 0).all())
        valued, _ = evaluate_policy(make_env(), policy, DAYS, seed=0)
        torch.testing.assert_close(
            metrics.community_cost(valued) - metrics.summary(valued)["terminal_value_cost"],
            metrics.community_cost(v1), rtol=0, atol=1e-9)


def test_oracle_without_p2p_and_battery_equals_no_p2p():
    totals, _ = make_oracle("oracle_no_p2p_idle").evaluate(make_env(1), DAYS)
    no_p2p = run("no_p2p")
    torch.testing.assert_close(metrics.community_cost(totals), metrics.community_cost(no_p2p),
                               rtol=1e-9, atol=1e-9)
    # and no_p2p's cost is the analytic no-P2P bill: zero savings
    torch.testing.assert_close(metrics.savings_vs_no_p2p(no_p2p),
                               torch.zeros(len(DAYS), dtype=torch.float64), atol=1e-9, rtol=0)


def test_oracle_network_costs_at_least_the_oracle(oracle_cost):
    totals, schedules = make_oracle("oracle_network").evaluate(make_env(1), DAYS)
    assert bool((metrics.community_cost(totals) >= oracle_cost - 1e-7).all())
    summary = metrics.evaluation_summary(totals)
    assert bool((summary["voltage_violations"] == 0).all())
    assert schedules[0].voltage_pu is not None


def test_network_linearisation_matches_the_power_flow():
    """The oracle's linear voltage model agrees with the Z-bus power flow near a real day."""
    from envs.network import BatchedPowerFlow

    env = make_env(1)
    day = DAYS[0]
    linear = baselines.network_linearisation(env, day)
    profile = baselines.day_profiles(env, day)
    p_kw = (profile["load_kwh"] - profile["pv_kwh"]) / env.dt_h  # [T, N]
    model = BatchedPowerFlow.from_pandapower(env.data.net(), dtype=torch.float64)
    exact = model.solve(torch.as_tensor(p_kw), torch.as_tensor(profile["load_kvar"])).vm_pu
    exact = exact[:, torch.isfinite(exact[0])].numpy()
    approx = linear.v0_pu + p_kw @ linear.dv_dp.T
    assert np.abs(approx - exact).max() < 2e-3


def test_self_consumption_follows_own_surplus():
    env = make_env(**{"market.mechanism": "none"})
    env.reset(seed=0, days=DAYS)
    for _ in range(48):  # to midday
        env.step(make_policy("self_consumption").act(None, env))
    load_kw, pv_kw = baselines.current_load_pv_kw(env)
    _, _, _, _, info = env.step(make_policy("self_consumption").act(None, env))
    surplus = (pv_kw - load_kw) * env.dt_h
    battery = info["battery_energy_kwh"]
    assert bool((battery * surplus >= -1e-12).all())  # charges on surplus, discharges on deficit
    assert bool((battery.abs() <= surplus.abs() + 1e-12).all())
    no_battery = env.capacity_kwh == 0
    assert bool((battery[:, no_battery] == 0).all())


def test_zi_is_seeded_and_stays_in_its_band():
    env = make_env()
    env.reset(seed=0, days=DAYS)
    first, second = make_policy("zi"), make_policy("zi")
    first.reset(env, seed=3)
    second.reset(env, seed=3)
    a, b = first.act(None, env), second.act(None, env)
    torch.testing.assert_close(a, b)
    assert bool((a[..., 0] == 0).all())
    assert bool(((a[..., 1] >= 0) & (a[..., 1] <= 1)).all())
    third = make_policy("zi")
    third.reset(env, seed=4)
    assert not torch.equal(third.act(None, env), a)


def test_evaluation_is_deterministic_and_batch_padding_is_dropped():
    first, second = run("zi", seed=5), run("zi", seed=5)
    torch.testing.assert_close(metrics.community_cost(first), metrics.community_cost(second))
    env = make_env(n_envs=2)  # 3 days in batches of 2: the last batch is padded
    totals, trajectory = evaluate_policy(env, make_policy("self_consumption"), DAYS, seed=0,
                                         record_day=2)
    assert totals.day.tolist() == DAYS
    assert int(trajectory["day"]) == DAYS[2] and trajectory["soc_kwh"].shape == (96, 5)
    torch.testing.assert_close(metrics.community_cost(totals),
                               metrics.community_cost(run("self_consumption")))


class _ExtremeTruthful:
    """Battery idle; net buyers bid retail, net sellers ask feed-in."""

    name, mechanism = "extreme_truthful", None

    def reset(self, env, seed=None):
        pass

    def act(self, obs, env):
        load_kw, pv_kw = baselines.current_load_pv_kw(env)
        price = (load_kw > pv_kw).to(env.dtype)
        return env_actions(torch.zeros_like(price), price, env)


def test_extreme_truthful_traders_reach_full_efficiency_under_uniform():
    env = make_env(**{"market.mechanism": "uniform"})
    totals, _ = evaluate_policy(env, _ExtremeTruthful(), DAYS)
    efficiency = metrics.allocative_efficiency(totals)
    torch.testing.assert_close(efficiency, torch.ones_like(efficiency))


def test_discrete_actions_map_to_nearest_levels():
    env = make_env(**{"action.type": "discrete"})
    env.reset(seed=0, days=DAYS)
    battery = torch.tensor([[-1.0, -0.4, 0.0, 0.6, 1.0]] * len(DAYS), dtype=torch.float64)
    price = torch.tensor([[0.0, 0.3, 0.5, 0.8, 1.0]] * len(DAYS), dtype=torch.float64)
    decoded_battery, decoded_price = env.decode_actions(env_actions(battery, price, env))
    torch.testing.assert_close(decoded_battery[0], torch.tensor(
        [-1.0, -0.5, 0.0, 0.5, 1.0], dtype=torch.float64))
    torch.testing.assert_close(decoded_price[0], torch.tensor(
        [0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
    totals, _ = evaluate_policy(env, make_policy("self_consumption"), DAYS)
    assert len(totals) == len(DAYS)


def test_policy_specs():
    assert make_policy("fixed_price:price_fraction=0.7").price_fraction == 0.7
    assert make_policy("zi:battery=self_consumption:seed=3").battery == "self_consumption"
    assert make_policy("no_p2p").mechanism == "none"
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("greedy")
    with pytest.raises(ValueError, match="price_fraction"):
        make_policy("fixed_price:price_fraction=1.5")
    with pytest.raises(ValueError, match="fixed_price:colour=red"):
        make_policy("fixed_price:colour=red")
    with pytest.raises(ValueError, match="unknown oracle"):
        make_oracle("oracle_magic")


def test_loss_averse_trader_prices_by_hand():
    """Behavioural agents of the env ask 0.6 / bid 0.4 of [feed-in, retail] at lambda = 2.25
    (the env's behaviour.loss_aversion by default) by the sign of their net position; the
    others post the midpoint; population=all shades everyone, with its own lambda."""
    names = [f"house_{i}" for i in (0, 3)]
    env = make_env(n_envs=1, **{"behaviour.agents": names})
    env.reset(seed=0, days=[172])
    mask = env.behavioural
    assert mask.tolist() == [True, False, False, True, False]
    for step in range(96):
        for spec, ask, population in (("loss_averse:population=behavioural", 0.6, mask),
                                      ("loss_averse:loss_aversion=4", 2 / 3, None)):
            _, price = env.decode_actions(make_policy(spec).act(None, env))
            battery, _ = env.decode_actions(make_policy("self_consumption").act(None, env))
            selling = planned_net_kwh(env, battery) < 0
            expected = torch.where(selling, ask, 1 - ask).to(price.dtype)
            if population is not None:
                expected = torch.where(population, expected, 0.5)
            torch.testing.assert_close(price, expected)
        if step == 60:  # at noon in June some behavioural agent sells and some agent buys
            assert bool(selling.any()) and bool((~selling).any())
        env.step(make_policy("self_consumption").act(None, env))


def test_loss_averse_spec_errors():
    assert make_policy("loss_averse").population == "all"
    with pytest.raises(ValueError, match="loss_aversion"):
        make_policy("loss_averse:loss_aversion=0.5")
    with pytest.raises(ValueError, match="population"):
        make_policy("loss_averse:population=some")
