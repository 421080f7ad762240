"""P2P network fees and locality-aware matching (envs/fees.py) and their use in the core."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import envs
from envs import fees


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 8),
       temperature=st.sampled_from([0.05, 0.3, 10.0]))
@example(seed=1218, n=4, temperature=0.05)  # 500 scalings left a row 1e-4 off before rounding
def test_sinkhorn_plan_has_the_cleared_marginals(seed, n, temperature):
    g = torch.Generator().manual_seed(seed)
    buyer = torch.rand(3, n, generator=g) > 0.5
    bought = torch.rand(3, n, generator=g, dtype=torch.float64) * buyer
    sold = torch.rand(3, n, generator=g, dtype=torch.float64) * (bought == 0)
    sold = sold * bought.sum(1, keepdim=True) / sold.sum(1, keepdim=True).clamp_min(1e-12)
    sold = torch.where(bought.sum(1, keepdim=True) > 0, sold, torch.zeros_like(sold))
    bought = torch.where(sold.sum(1, keepdim=True) > 0, bought, torch.zeros_like(bought))
    distance = torch.rand(n, n, generator=g, dtype=torch.float64)
    distance = (distance + distance.T) / 2
    plan = fees.sinkhorn_plan(bought, sold, distance, temperature, iterations=500)
    assert bool((plan >= 0).all())
    torch.testing.assert_close(plan.sum(2), bought, atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(plan.sum(1), sold, atol=1e-12, rtol=1e-9)
    few = fees.sinkhorn_plan(bought, sold, distance, temperature, iterations=3)
    assert bool((few >= 0).all())  # exact marginals after 3 scalings too (the rounding)
    torch.testing.assert_close(few.sum(2), bought, atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(few.sum(1), sold, atol=1e-12, rtol=1e-9)


def test_low_temperature_prefers_the_near_seller():
    # Buyer 0 sits next to seller 1 (distance 0.1) and far from seller 2 (distance 1).
    distance = torch.tensor([[0.0, 0.1, 1.0], [0.1, 0.0, 1.0], [1.0, 1.0, 0.0]],
                            dtype=torch.float64)
    bought = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    sold = torch.tensor([[0.0, 0.5, 0.5]], dtype=torch.float64)
    # Sellers' volumes fix the plan here (one buyer): both sell their 0.5 kWh to buyer 0.
    plan = fees.sinkhorn_plan(bought, sold, distance, 0.01)
    torch.testing.assert_close(plan[0, 0], torch.tensor([0.0, 0.5, 0.5], dtype=torch.float64))
    # Two buyers, two sellers: the near pairs are matched when locality is strong...
    bought = torch.tensor([[1.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    sold = torch.tensor([[0.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    distance = torch.tensor([[0, 0, 0.1, 1.0], [0, 0, 1.0, 0.1], [0.1, 1.0, 0, 0],
                             [1.0, 0.1, 0, 0]], dtype=torch.float64)
    near = fees.sinkhorn_plan(bought, sold, distance, 0.02)[0]
    assert near[0, 2] > 0.99 and near[1, 3] > 0.99
    # ...and in proportion (a pool) when it is weak.
    pool = fees.sinkhorn_plan(bought, sold, distance, 1e4)[0]
    torch.testing.assert_close(pool[:2, 2:], torch.full((2, 2), 0.5, dtype=torch.float64),
                               atol=1e-3, rtol=0)


def test_charges_hand_computed():
    bought = torch.tensor([[2.0, 0.0]])
    sold = torch.tensor([[0.0, 2.0]])
    distance = torch.tensor([[0.0, 3.0], [3.0, 0.0]])
    fee, loss, plan = fees.p2p_charges(bought, sold, distance, torch.tensor([0.3]),
                                       flat_fee=0.01, distance_fee=0.04, loss_factor=0.05,
                                       temperature=0.1)
    # 2 kWh over the largest distance: 2 * (0.01 + 0.04 * 1) = 0.10; loss 0.05 * 2 * 0.3.
    torch.testing.assert_close(fee, torch.tensor([[0.10, 0.0]]))
    torch.testing.assert_close(loss, torch.tensor([[0.03, 0.0]]))
    assert plan is not None


@pytest.mark.parametrize("mechanism", ["uniform", "mmr"])
def test_core_charges_fees_to_buyers_outside_the_p2p_budget(mechanism):
    config = {"community": {"feeder": "synthetic", "n_agents": 6, "pv_share": 0.5},
              "market": {"mechanism": mechanism},
              "network": {"p2p_fee": 0.01, "p2p_distance_fee": 0.02, "p2p_loss_factor": 0.03}}
    env = envs.make_batched_env(config, n_envs=4, dtype="float64")
    plain = envs.make_batched_env({**config, "network": {}}, n_envs=4, dtype="float64")
    env.reset(seed=0, days=[170, 171, 172, 173])
    plain.reset(seed=0, days=[170, 171, 172, 173])
    actions = torch.zeros(4, 6, 2, dtype=torch.float64)
    actions[..., 1] = 0.5
    charged_total = 0.0
    for _ in range(56):  # until mid-afternoon: PV surplus gets traded
        _, reward, _, _, info = env.step(actions)
        _, reward_plain, _, _, info_plain = plain.step(actions)
        bought = info["p2p_energy_kwh"].clamp_min(0)
        assert bool((info["network_fee"][bought == 0] == 0).all())
        flat = (0.01 + 0.03 * info["retail_price"][:, None]) * bought
        assert bool((info["network_fee"] >= flat - 1e-12).all())
        assert bool((info["network_fee"] <= flat + 0.02 * bought + 1e-12).all())
        torch.testing.assert_close(info["p2p_payment"].sum(1), info["operator_surplus"])
        torch.testing.assert_close(reward, reward_plain - info["network_fee"])
        torch.testing.assert_close(info["network_fee_revenue"], info["network_fee"].sum(1))
        charged_total += float(info["network_fee_revenue"].sum())
    assert charged_total > 0.0


def test_distance_fee_needs_a_network_model():
    with pytest.raises(envs.ConfigError, match="network.p2p_distance_fee"):
        envs.make_batched_env({"network": {"model": "none", "p2p_distance_fee": 0.1}})
