"""Tests for :mod:`envs.market`: hand-computed cases, property tests and input checks.

Hand cases use retail ``r = 10`` and feed-in ``f = 2`` currency/kWh unless stated otherwise.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from envs import market, rng
from envs.market import MECHANISMS, ClearingResult

RETAIL = 10.0
FEED_IN = 2.0
AUCTIONS = ("uniform", "pay_as_bid", "mcafee")
STRICTLY_BUDGET_BALANCED = tuple(m for m in MECHANISMS if m != "mcafee")
ATOL = 1e-9


def clear(mechanism: str, price: torch.Tensor, quantity: torch.Tensor, *args: object,
          **kwargs: object) -> ClearingResult:
    """``envs.market.clear``; ``cda`` without an ``arrival_rank`` gets the agents' index order
    (the env draws a random order every step: ``envs.rng.random_rank``)."""
    if mechanism == "cda" and "arrival_rank" not in kwargs and price.ndim == 2:
        kwargs["arrival_rank"] = torch.arange(price.shape[1]).expand(price.shape)
    return market.clear(mechanism, price, quantity, *args, **kwargs)


def _random_rank(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """``[B, N]`` a random arrival order per row (``arrival_rank`` of :func:`clear`)."""
    draws = torch.rand(shape, generator=torch.Generator().manual_seed(seed))
    return draws.argsort(1).argsort(1)


def _row(values: list[float]) -> torch.Tensor:
    """One environment ``[1, N]`` float64 tensor."""
    return torch.tensor([values], dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# Hand-computed cases
# --------------------------------------------------------------------------------------------

# (mechanism, prices, quantities, k, p2p_energy, payment, clearing_price, operator_surplus)
HAND_CASES = [
    # Uniform 1: demand curve 8 on [0,3], 6 on [3,5]; supply 3 on [0,4], 7 on [4,6].
    # Bid >= ask up to Q = 4; marginal bid 6 (buyer B), marginal ask 3 (seller C).
    # Price 3 + 0.5 (6 - 3) = 4.5. A buys 3 (13.5), B buys 1 (4.5) + 1 from grid (10),
    # C sells 4 (-18), D exports 2 at f (-4).
    ("uniform", [8, 6, 3, 7], [3, 2, -4, -2], 0.5, [3, 1, -4, 0], [13.5, 14.5, -18, -4], 4.5, 0),
    # Uniform 2: two buyers tied at bid 6 for 2 kWh each, one seller 3 kWh at ask 4.
    # Q = 3, buyers rationed pro rata 1.5 each; price 4 + 0.5 (6 - 4) = 5.
    # Buyer: 1.5 * 5 + 0.5 * 10 = 12.5; seller: -3 * 5 = -15.
    ("uniform", [6, 6, 4], [2, 2, -3], 0.5, [1.5, 1.5, -3], [12.5, 12.5, -15], 5.0, 0),
    # Uniform 3: bid 3 < ask 5, no trade; buyer imports 1 * 10, seller exports 1 * 2.
    ("uniform", [3, 5], [1, -1], 0.5, [0, 0], [10, -2], math.nan, 0),
    # Uniform 4 (k = 1: price = marginal bid): bid 9 for 2 kWh, ask 4 for 1 kWh, Q = 1 at 9.
    # Buyer 9 + 1 * 10 = 19, seller -9.
    ("uniform", [9, 4], [2, -1], 1.0, [1, -1], [19, -9], 9.0, 0),
    # Pay-as-bid 1: same book as uniform 1. Accepted volume axis: A [0,3] bid 8, B [3,4] bid 6;
    # C [0,4] ask 3. A pays 0.5*8 + 0.5*3 = 5.5/kWh -> 16.5; B 0.5*6 + 0.5*3 = 4.5 -> 4.5 + 10
    # grid; C gets 0.5*3 + 0.5 * mean bid (3*8 + 1*6)/4 = 7.5 -> 5.25/kWh -> 21; D exports.
    # Volume-weighted price 21 / 4 = 5.25.
    (
        "pay_as_bid",
        [8, 6, 3, 7],
        [3, 2, -4, -2],
        0.5,
        [3, 1, -4, 0],
        [16.5, 14.5, -21, -4],
        5.25,
        0,
    ),
    # Pay-as-bid 2: one buyer 4 kWh at 9; sellers 1 @3, 2 @5, 3 @8.5. Q = 4; E sells 1 of 3.
    # Buyer: 0.5*9 + 0.5*(3 + 2*5 + 8.5)/4 = 4.5 + 2.6875 = 7.1875/kWh -> 28.75.
    # C: 0.5*3 + 0.5*9 = 6; D: 2 * (0.5*5 + 4.5) = 14; E: 0.5*8.5 + 4.5 = 8.75, plus 2 kWh
    # exported at f = 4 -> -12.75. Sellers receive 6 + 14 + 8.75 = 28.75 (budget-balanced).
    (
        "pay_as_bid",
        [9, 3, 5, 8.5],
        [4, -1, -2, -3],
        0.5,
        [4, -1, -2, -1],
        [28.75, -6, -14, -12.75],
        7.1875,
        0,
    ),
    # McAfee 1: one buyer (1 kWh, bid 9), one seller (1 kWh, ask 5). Nobody excluded, so the
    # grid is the outside option: b_{K+1} = f = 2, s_{K+1} = r = 10, p0 = 6 in [5, 9] -> trade at 6.
    ("mcafee", [9, 5], [1, -1], 0.5, [1, -1], [6, -6], 6.0, 0),
    # McAfee 2: bids 9.5, 8, 3; asks 2.5, 7, 9 (1 kWh each). Efficient Q = 2 with b_K = 8,
    # s_K = 7. Excluded: bid 3, ask 9 -> p0 = 6 < 7: trade reduction. Buyer 9.5 buys 1 at 8,
    # seller 2.5 sells 1 at 7, operator keeps 1. The others use the grid (10, 10, -2, -2).
    (
        "mcafee",
        [9.5, 8, 3, 2.5, 7, 9],
        [1, 1, 1, -1, -1, -1],
        0.5,
        [1, 0, 0, -1, 0, 0],
        [8, 10, 10, -7, -2, -2],
        8.0,
        1.0,
    ),
    # McAfee 3: as McAfee 2 but buyer 9.5 wants 2 kWh and seller 7 offers 2 kWh: Q = 3,
    # p0 = 6 < 7 -> reduction; kept demand 2, kept supply 1 -> buyer rationed to 1 at 8 plus
    # 1 from grid: 8 + 10 = 18; operator keeps (8 - 7) * 1 = 1.
    (
        "mcafee",
        [9.5, 8, 3, 2.5, 7, 9],
        [2, 1, 1, -1, -2, -1],
        0.5,
        [1, 0, 0, -1, 0, 0],
        [18, 10, 10, -7, -4, -2],
        8.0,
        1.0,
    ),
    # MMR 1: D = 4, S = 2; buyers get 2/4 of demand at (10 + 2)/2 = 6, rest at 10.
    # A: 1.5*6 + 1.5*10 = 24; B: 0.5*6 + 0.5*10 = 8; seller: -2*6 = -12. Prices ignored.
    ("mmr", [1, 1, 1], [3, 1, -2], 0.5, [1.5, 0.5, -2], [24, 8, -12], 6.0, 0),
    # MMR 2: D = 1, S = 4; each seller sells 1/4 of 2 kWh = 0.5 at 6 and exports 1.5 at 2:
    # -3 - 3 = -6. Buyer pays 6.
    ("mmr", [7, 3, 9], [1, -2, -2], 0.5, [1, -0.5, -0.5], [6, -6, -6], 6.0, 0),
    # SDR 1: SDR = 2/4 = 0.5 < 1: p_sell = 10*2/((10-2)*0.5 + 2) = 20/6 = 10/3;
    # p_buy = (10/3)*0.5 + 10*0.5 = 20/3. A: 3 * 20/3 = 20; B: 20/3; seller: -2 * 10/3.
    ("sdr", [1, 1, 1], [3, 1, -2], 0.5, [1.5, 0.5, -2], [20, 20 / 3, -20 / 3], 10 / 3, 0),
    # SDR 2: SDR = 3/1 >= 1: both prices f = 2. Buyer pays 1*2; seller sells 1 P2P and
    # exports 2, all at 2: -6.
    ("sdr", [1, 1], [1, -3], 0.5, [1, -1], [2, -6], 2.0, 0),
    # Bill sharing 1: net import 4 - 2 = 2 kWh costs 2*10 = 20, shared by demand 3:1 ->
    # 15 and 5; the seller gets nothing.
    ("bill_sharing", [1, 1, 1], [3, 1, -2], 0.5, [1.5, 0.5, -2], [15, 5, 0], 0.0, 0),
    # Bill sharing 2: net export 4 - 1 = 3 kWh earns 3*2 = 6, shared by supply 2:2 -> -3 each;
    # the buyer pays nothing.
    ("bill_sharing", [1, 1, 1], [1, -2, -2], 0.5, [1, -0.5, -0.5], [0, -3, -3], 0.0, 0),
    # None 1 and 2: everything with the grid.
    ("none", [5, 5], [3, -2], 0.5, [0, 0], [30, -4], math.nan, 0),
    ("none", [0, 0, 0], [0, 1.5, -0.5], 0.5, [0, 0, 0], [0, 15, -1], math.nan, 0),
]


@pytest.mark.parametrize(
    ("mechanism", "prices", "quantities", "k", "p2p", "payment", "price", "surplus"), HAND_CASES
)
def test_hand_computed_cases(
    mechanism: str,
    prices: list[float],
    quantities: list[float],
    k: float,
    p2p: list[float],
    payment: list[float],
    price: float,
    surplus: float,
) -> None:
    result = clear(mechanism, _row(prices), _row(quantities), RETAIL, FEED_IN, k=k)
    torch.testing.assert_close(result.p2p_energy, _row(p2p))
    torch.testing.assert_close(result.payment, _row(payment))
    torch.testing.assert_close(
        result.clearing_price, torch.tensor([price], dtype=torch.float64), equal_nan=True
    )
    torch.testing.assert_close(
        result.operator_surplus, torch.tensor([surplus], dtype=torch.float64)
    )


def test_one_buyer_one_seller() -> None:
    # Buyer 2 kWh bidding 8, seller 3 kWh asking 4, k = 0.5: Q = 2 at 4 + 0.5*(8 - 4) = 6.
    # Buyer pays 12; seller earns 12 P2P and exports the last kWh at f = 2 -> -14.
    result = clear("uniform", _row([8, 4]), _row([2, -3]), RETAIL, FEED_IN)
    torch.testing.assert_close(result.p2p_energy, _row([2, -2]))
    torch.testing.assert_close(result.grid_energy, _row([0, -1]))
    torch.testing.assert_close(result.p2p_payment, _row([12, -12]))
    torch.testing.assert_close(result.grid_payment, _row([0, -2]))
    torch.testing.assert_close(result.payment, _row([12, -14]))
    assert result.clearing_price.item() == pytest.approx(6.0)
    assert result.operator_surplus.item() == 0.0


def test_prices_are_clamped_into_tariff_band() -> None:
    # Bid 15 is clamped to r = 10 and ask -3 to f = 2: price 2 + 0.5*(10 - 2) = 6.
    result = clear("uniform", _row([15, -3]), _row([1, -1]), RETAIL, FEED_IN)
    assert result.clearing_price.item() == pytest.approx(6.0)


def test_sdr_buying_price_matches_liu_et_al() -> None:
    # With SDR < 1 a buyer's mean price (P2P at p_sell plus grid at r) must equal the paper's
    # buying price p_sell * SDR + r * (1 - SDR), and sellers must earn exactly p_sell.
    generator = torch.Generator().manual_seed(0)
    demand = torch.rand(64, 5, generator=generator, dtype=torch.float64) + 0.1
    supply = torch.rand(64, 4, generator=generator, dtype=torch.float64) * 0.5
    quantity = torch.cat([demand, -supply], dim=1)
    retail = torch.rand(64, generator=generator, dtype=torch.float64) * 0.3 + 0.2
    feed_in = torch.rand(64, generator=generator, dtype=torch.float64) * 0.1
    result = clear("sdr", torch.zeros_like(quantity), quantity, retail, feed_in)
    ratio = supply.sum(1) / demand.sum(1)
    assert bool((ratio < 1).all())
    selling = retail * feed_in / ((retail - feed_in) * ratio + feed_in)
    buying = selling * ratio + retail * (1 - ratio)
    torch.testing.assert_close(result.payment[:, :5] / demand, buying[:, None].expand(-1, 5))
    torch.testing.assert_close(-result.payment[:, 5:] / supply, selling[:, None].expand(-1, 4))
    torch.testing.assert_close(result.clearing_price, selling)


@pytest.mark.parametrize("mechanism", ["uniform", "pay_as_bid"])
def test_truthful_extreme_bids_reach_full_efficiency(mechanism: str) -> None:
    # Buyers bidding retail and sellers asking feed-in trade min(S, D).
    generator = torch.Generator().manual_seed(1)
    quantity = torch.randn(32, 10, generator=generator, dtype=torch.float64)
    quantity[:, 0] = 0.0
    price = torch.where(quantity > 0, RETAIL, FEED_IN)
    result = clear(mechanism, price, quantity, RETAIL, FEED_IN)
    expected = torch.minimum(quantity.clamp(min=0).sum(1), (-quantity).clamp(min=0).sum(1))
    torch.testing.assert_close(result.p2p_energy.clamp(min=0).sum(1), expected)


def test_mcafee_without_excluded_agents_uses_grid_as_outside_option() -> None:
    # Everyone at one price level: b_K = s_K = 5, p0 = (f + r)/2 = 6 > 5 -> trade reduction
    # removes the only price level and nothing trades.
    result = clear("mcafee", _row([5, 5, 5]), _row([3, 1, -2]), RETAIL, FEED_IN)
    torch.testing.assert_close(result.p2p_energy, _row([0, 0, 0]))
    assert math.isnan(result.clearing_price.item())


@pytest.mark.parametrize("retail, feed_in, dtype", [(0.28, 0.08, torch.float64),
                                                     (0.3, 0.08, torch.float32)])
def test_mcafee_midpoint_equal_to_the_marginal_levels_up_to_rounding_trades_in_full(
        retail, feed_in, dtype) -> None:
    """Buyer 0 and seller 2 at the band's midpoint, buyer 1 at 0.4 and seller 3 at 0.6 of it:
    in exact arithmetic McAfee's candidate (the midpoint of the first excluded bid and ask)
    equals the marginal bid and ask, so the efficient trade happens at it. In float the
    candidate misses them by one ulp (as these tariffs do); it must not reduce the trade to
    nothing. Both engines."""
    from envs.single.market import clear_one

    fraction = torch.tensor([[0.5, 0.4, 0.5, 0.6]], dtype=dtype)
    band = torch.tensor(retail, dtype=dtype) - torch.tensor(feed_in, dtype=dtype)
    price = feed_in + fraction * band
    candidate = 0.5 * (price[0, 1] + price[0, 3])
    assert candidate != price[0, 0]  # the rounding this test is about
    quantity = torch.tensor([[1.0, 1.0, -2.0, -1.0]], dtype=dtype)
    result = clear("mcafee", price, quantity, retail, feed_in)
    torch.testing.assert_close(result.p2p_energy, torch.tensor([[1.0, 0.0, -1.0, 0.0]],
                                                               dtype=dtype))
    assert result.clearing_price[0] == price[0, 0]  # on the levels, not outside them
    torch.testing.assert_close(result.payment[0, 0], price[0, 0])
    single = clear_one("mcafee", price[0].numpy(), quantity[0].numpy(), retail, feed_in)
    np.testing.assert_allclose(single["p2p_energy"], [1.0, 0.0, -1.0, 0.0])
    assert single["clearing_price"] == pytest.approx(float(price[0, 0]), rel=1e-6)


def test_rows_without_buyers_or_sellers() -> None:
    price = torch.tensor([[5.0, 6.0], [5.0, 6.0], [5.0, 6.0]], dtype=torch.float64)
    quantity = torch.tensor([[1.0, 2.0], [-1.0, -2.0], [0.0, 0.0]], dtype=torch.float64)
    for mechanism in MECHANISMS:
        result = clear(mechanism, price, quantity, RETAIL, FEED_IN)
        assert bool((result.p2p_energy == 0).all()), mechanism
        assert bool(result.clearing_price.isnan().all()), mechanism
        torch.testing.assert_close(result.grid_energy, quantity)


def test_float32_and_per_env_tariffs() -> None:
    price = torch.tensor([[8.0, 4.0], [0.3, 0.1]], dtype=torch.float32)
    quantity = torch.tensor([[2.0, -3.0], [1.0, -1.0]], dtype=torch.float32)
    retail = torch.tensor([10.0, 0.4])
    feed_in = torch.tensor([2.0, 0.05])
    for mechanism in MECHANISMS:
        result = clear(mechanism, price, quantity, retail, feed_in)
        for value in _fields(result):
            assert value.dtype == torch.float32
    result = clear("uniform", price, quantity, retail, feed_in)
    torch.testing.assert_close(result.clearing_price, torch.tensor([6.0, 0.2]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    generator = torch.Generator().manual_seed(2)
    price = torch.rand(256, 111, generator=generator, dtype=torch.float64) * 12
    quantity = torch.randn(256, 111, generator=generator, dtype=torch.float64)
    for mechanism in MECHANISMS:
        on_cpu = clear(mechanism, price, quantity, RETAIL, FEED_IN)
        on_gpu = clear(mechanism, price.cuda(), quantity.cuda(), RETAIL, FEED_IN)
        for expected, actual in zip(_fields(on_cpu), _fields(on_gpu), strict=True):
            torch.testing.assert_close(actual.cpu(), expected, equal_nan=True)


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_full_size_batch(mechanism: str) -> None:
    # B = 4096 environments of N = 111 agents, the largest size the env uses.
    generator = torch.Generator().manual_seed(3)
    price = torch.rand(4096, 111, generator=generator) * 12
    quantity = torch.randn(4096, 111, generator=generator)
    result = clear(mechanism, price, quantity, RETAIL, FEED_IN)
    torch.testing.assert_close(result.p2p_energy + result.grid_energy, quantity)
    assert float(result.p2p_energy.sum(1).abs().max()) < 1e-3


# --------------------------------------------------------------------------------------------
# Property tests
# --------------------------------------------------------------------------------------------


@st.composite
def markets(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, object, object, float]:
    """Random float64 books: ``(price [B, N], quantity [B, N], retail, feed_in, k)``.

    Prices come partly from a few levels (ties) and reach outside ``[f, r]`` (clamping);
    quantities include zeros. Tariffs are numbers or ``[B]`` tensors with ``0 <= f <= r``.
    """
    n_envs = draw(st.integers(1, 8))
    n_agents = draw(st.integers(1, 12))
    size = n_envs * n_agents
    price_value = st.one_of(
        st.sampled_from([0.0, 2.0, 3.0, 5.0, 6.0, 10.0, 13.0]),
        st.floats(0.0, 13.0).map(lambda x: round(x, 3)),
    )
    quantity_value = st.one_of(
        st.just(0.0),
        st.sampled_from([-2.0, -1.0, 1.0, 2.0]),
        st.floats(-5.0, 5.0).map(lambda x: round(x, 3)),
    )
    price = torch.tensor(draw(st.lists(price_value, min_size=size, max_size=size)))
    quantity = torch.tensor(draw(st.lists(quantity_value, min_size=size, max_size=size)))
    if draw(st.booleans()):
        feed_in: object = draw(st.sampled_from([0.0, 2.0, 5.0]))
        retail: object = feed_in + draw(st.sampled_from([0.0, 3.0, 8.0]))
    else:
        feed_in_values = draw(st.lists(st.floats(0.0, 5.0), min_size=n_envs, max_size=n_envs))
        spreads = draw(st.lists(st.floats(0.0, 8.0), min_size=n_envs, max_size=n_envs))
        feed_in = torch.tensor(feed_in_values, dtype=torch.float64)
        retail = feed_in + torch.tensor(spreads, dtype=torch.float64)
    k = draw(st.sampled_from([0.0, 0.5, 1.0, 0.3]))
    shape = (n_envs, n_agents)
    return price.reshape(shape).double(), quantity.reshape(shape).double(), retail, feed_in, k


def _per_env(tariff: object, n_envs: int) -> torch.Tensor:
    """Tariff as a float64 ``[B]`` tensor."""
    if isinstance(tariff, torch.Tensor):
        return tariff
    return torch.full((n_envs,), float(tariff), dtype=torch.float64)


def _fields(result: ClearingResult) -> list[torch.Tensor]:
    return [
        result.p2p_energy,
        result.grid_energy,
        result.payment,
        result.p2p_payment,
        result.grid_payment,
        result.clearing_price,
        result.operator_surplus,
    ]


PROPERTY_SETTINGS = settings(max_examples=40, deadline=None)


@PROPERTY_SETTINGS
@pytest.mark.parametrize("mechanism", MECHANISMS)
@given(book=markets())
def test_invariants(mechanism: str, book: tuple) -> None:
    price, quantity, retail, feed_in, k = book
    n_envs = price.shape[0]
    arrival = {"arrival_rank": _random_rank(price.shape, 5)} if mechanism == "cda" else {}
    result = clear(mechanism, price, quantity, retail, feed_in, k=k, **arrival)
    r = _per_env(retail, n_envs)[:, None]
    f = _per_env(feed_in, n_envs)[:, None]
    for value in _fields(result)[:5]:
        assert value.shape == price.shape
    for value in _fields(result)[5:]:
        assert value.shape == (n_envs,)

    # Energy: balance per agent, P2P sums to zero, same sign and no more than the position.
    torch.testing.assert_close(result.p2p_energy + result.grid_energy, quantity)
    assert float(result.p2p_energy.sum(1).abs().max()) < ATOL
    assert bool((result.p2p_energy * quantity >= 0).all())
    assert bool((result.p2p_energy.abs() <= quantity.abs()).all())

    # Money: totals add up, grid settled at r / f, budget balance.
    torch.testing.assert_close(result.payment, result.p2p_payment + result.grid_payment)
    expected_grid = r * result.grid_energy.clamp(min=0) + f * result.grid_energy.clamp(max=0)
    torch.testing.assert_close(result.grid_payment, expected_grid)
    torch.testing.assert_close(
        result.p2p_payment.sum(1), result.operator_surplus, atol=ATOL, rtol=0
    )
    if mechanism in STRICTLY_BUDGET_BALANCED:
        assert bool((result.operator_surplus == 0).all())
    else:
        assert bool((result.operator_surplus >= 0).all())

    # Zero-quantity agents get zero everything.
    inactive = quantity == 0
    for value in _fields(result)[:5]:
        assert bool((value[inactive] == 0).all())

    # No buyer pays more than r per kWh on average; sellers earn at least f (bill sharing:
    # between 0 and f, because sellers of a net-importing community are paid nothing).
    buyer, seller = quantity > 0, quantity < 0
    assert bool((result.payment <= r * quantity + ATOL)[buyer].all())
    earned = -result.payment
    if mechanism == "bill_sharing":
        assert bool((earned >= -ATOL)[seller].all())
        assert bool((earned <= f * quantity.abs() + ATOL)[seller].all())
    else:
        assert bool((earned >= f * quantity.abs() - ATOL)[seller].all())

    # Clearing price: NaN exactly where nothing traded, otherwise inside [f, r].
    traded = result.p2p_energy.clamp(min=0).sum(1) > 0
    assert bool((result.clearing_price.isnan() == ~traded).all())
    finite_price = result.clearing_price[traded]
    if mechanism == "bill_sharing":
        assert bool((finite_price == 0).all())
    else:
        assert bool((finite_price >= f[traded, 0] - ATOL).all())
        assert bool((finite_price <= r[traded, 0] + ATOL).all())


@PROPERTY_SETTINGS
@pytest.mark.parametrize("mechanism", (*AUCTIONS, "cda"))
@given(book=markets())
def test_auctions_are_individually_rational(mechanism: str, book: tuple) -> None:
    price, quantity, retail, feed_in, k = book
    n_envs = price.shape[0]
    arrival = {"arrival_rank": _random_rank(price.shape, 6)} if mechanism == "cda" else {}
    result = clear(mechanism, price, quantity, retail, feed_in, k=k, **arrival)
    r = _per_env(retail, n_envs)[:, None]
    f = _per_env(feed_in, n_envs)[:, None]
    clamped = torch.minimum(torch.maximum(price, f), r)
    bought = result.p2p_energy.clamp(min=0)
    sold = (-result.p2p_energy).clamp(min=0)
    buyer, seller = bought > 0, sold > 0
    assert bool((result.p2p_payment <= clamped * bought + ATOL)[buyer].all())
    assert bool((-result.p2p_payment >= clamped * sold - ATOL)[seller].all())


def _reference_book(
    price: torch.Tensor, quantity: torch.Tensor, retail: float, feed_in: float, k: float
) -> tuple[float, list[float], list[float]]:
    """Slow per-environment reference for the divisible k-double auction.

    Returns ``(volume kWh, bought kWh per agent, pay-as-bid cost per agent)``:
    price levels are merged on the volume axis with Python loops; each overlap of a bid level
    ``b`` and ask level ``a`` trades at ``a + k (b - a)``; agents within a level share its
    volume and money pro rata.
    """
    prices = [min(max(p, feed_in), retail) for p in price.tolist()]
    quantities = quantity.tolist()
    bid_levels = sorted({p for p, q in zip(prices, quantities, strict=True) if q > 0}, reverse=True)
    ask_levels = sorted({p for p, q in zip(prices, quantities, strict=True) if q < 0})

    def level_volume(level: float, sign: int) -> float:
        return sum(
            abs(q) for p, q in zip(prices, quantities, strict=True) if p == level and q * sign > 0
        )

    # Brute-force volume: max over candidate prices p of min(D(>= p), S(<= p)).
    candidates = bid_levels + ask_levels
    volume = max(
        (
            min(
                sum(level_volume(b, 1) for b in bid_levels if b >= p),
                sum(level_volume(a, -1) for a in ask_levels if a <= p),
            )
            for p in candidates
        ),
        default=0.0,
    )
    # Merge levels up to the volume.
    bid_money = {b: 0.0 for b in bid_levels}
    bid_filled = {b: 0.0 for b in bid_levels}
    i = j = 0
    left_bid = level_volume(bid_levels[0], 1) if bid_levels else 0.0
    left_ask = level_volume(ask_levels[0], -1) if ask_levels else 0.0
    remaining = volume
    while remaining > 1e-12:
        step = min(left_bid, left_ask, remaining)
        b, a = bid_levels[i], ask_levels[j]
        bid_money[b] += step * (a + k * (b - a))
        bid_filled[b] += step
        remaining -= step
        left_bid -= step
        left_ask -= step
        if left_bid <= 1e-12 and remaining > 1e-12:
            i += 1
            left_bid = level_volume(bid_levels[i], 1)
        if left_ask <= 1e-12 and remaining > 1e-12:
            j += 1
            left_ask = level_volume(ask_levels[j], -1)
    bought, cost = [], []
    for p, q in zip(prices, quantities, strict=True):
        if q > 0:
            share = q / level_volume(p, 1)
            bought.append(bid_filled[p] * share)
            cost.append(bid_money[p] * share)
        else:
            bought.append(0.0)
            cost.append(0.0)
    return volume, bought, cost


@PROPERTY_SETTINGS
@given(book=markets())
def test_uniform_and_pay_as_bid_match_slow_reference(book: tuple) -> None:
    price, quantity, retail, feed_in, k = book
    n_envs = price.shape[0]
    r = _per_env(retail, n_envs)
    f = _per_env(feed_in, n_envs)
    uniform = clear("uniform", price, quantity, retail, feed_in, k=k)
    pay_as_bid = clear("pay_as_bid", price, quantity, retail, feed_in, k=k)
    mcafee = clear("mcafee", price, quantity, retail, feed_in, k=k)
    clamped = torch.minimum(torch.maximum(price, f[:, None]), r[:, None])
    for env in range(n_envs):
        volume, bought, cost = _reference_book(
            price[env], quantity[env], float(r[env]), float(f[env]), k
        )
        reference_bought = torch.tensor(bought, dtype=torch.float64)
        # Both auctions trade the efficient volume with the same allocation.
        for result in (uniform, pay_as_bid):
            traded = float(result.p2p_energy[env].clamp(min=0).sum())
            assert traded == pytest.approx(volume, abs=1e-9)
            torch.testing.assert_close(result.p2p_energy[env].clamp(min=0), reference_bought)
        torch.testing.assert_close(
            pay_as_bid.p2p_payment[env].clamp(min=0),
            torch.tensor(cost, dtype=torch.float64),
        )
        # McAfee never trades more than the efficient volume.
        assert float(mcafee.p2p_energy[env].clamp(min=0).sum()) <= volume + 1e-9
        # Uniform: every accepted bid >= clearing price >= every accepted ask.
        if volume > 0:
            clearing_price = float(uniform.clearing_price[env])
            accepted_bids = clamped[env][uniform.p2p_energy[env] > 0]
            accepted_asks = clamped[env][uniform.p2p_energy[env] < 0]
            assert bool((accepted_bids >= clearing_price - ATOL).all())
            assert bool((accepted_asks <= clearing_price + ATOL).all())


@settings(max_examples=25, deadline=None)
@pytest.mark.parametrize("mechanism", MECHANISMS)
@given(book=markets(), data=st.data())
def test_batched_equals_single_and_order_free(mechanism: str, book: tuple, data) -> None:
    price, quantity, retail, feed_in, k = book
    n_envs, n_agents = price.shape
    # cda: each row's own arrival order, permuted with the agents below.
    rank = _random_rank(price.shape, data.draw(st.integers(0, 2**31)))
    arrival = {"arrival_rank": rank} if mechanism == "cda" else {}
    batched = clear(mechanism, price, quantity, retail, feed_in, k=k, **arrival)
    for env in range(n_envs):
        env_retail = retail[env : env + 1] if isinstance(retail, torch.Tensor) else retail
        env_feed_in = feed_in[env : env + 1] if isinstance(feed_in, torch.Tensor) else feed_in
        env_arrival = {"arrival_rank": rank[env : env + 1]} if mechanism == "cda" else {}
        single = clear(
            mechanism, price[env : env + 1], quantity[env : env + 1], env_retail, env_feed_in, k=k,
            **env_arrival,
        )
        for expected, actual in zip(_fields(single), _fields(batched), strict=True):
            torch.testing.assert_close(actual[env : env + 1], expected, equal_nan=True)
    # Permuting the agents permutes the outcome (ties are shared, not broken by order). On
    # quantities in steps of 1/8 kWh every cumulative volume is exact: elsewhere the order of
    # a float sum can tip a knife-edge comparison (see envs.single.market's docstring).
    quantity = (quantity * 8).round() / 8
    batched = clear(mechanism, price, quantity, retail, feed_in, k=k, **arrival)
    permutation = torch.tensor(data.draw(st.permutations(range(n_agents))))
    permuted_arrival = {"arrival_rank": rank[:, permutation]} if mechanism == "cda" else {}
    permuted = clear(
        mechanism, price[:, permutation], quantity[:, permutation], retail, feed_in, k=k,
        **permuted_arrival,
    )
    for expected, actual in zip(_fields(batched)[:5], _fields(permuted)[:5], strict=True):
        torch.testing.assert_close(actual, expected[:, permutation])
    for expected, actual in zip(_fields(batched)[5:], _fields(permuted)[5:], strict=True):
        torch.testing.assert_close(actual, expected, equal_nan=True)


# --------------------------------------------------------------------------------------------
# Continuous double auction (cda): the arrival order decides who trades at what price
# --------------------------------------------------------------------------------------------

# Agents: A asks 3 for 2 kWh, B asks 6 for 1 kWh, C bids 8 for 2 kWh, D bids 5 for 1 kWh.
CDA_PRICE = [3.0, 6.0, 8.0, 5.0]
CDA_QUANTITY = [-2.0, -1.0, 2.0, 1.0]
# (arrival_rank of A, B, C, D; p2p_energy; p2p_payment; clearing_price; pairs (buyer, seller,
# kWh, price)); each trade at the resting order's price.
CDA_CASES = [
    # A, B rest; C takes A's 2 kWh at A's 3; D (5) does not cross B (6).
    ([0, 1, 2, 3], [-2, 0, 2, 0], [-6, 0, 6, 0], 3.0, [(2, 0, 2.0, 3.0)]),
    # D, C rest; B takes 1 kWh of C at C's 8; A takes C's last kWh at 8, then D's at 5.
    ([3, 2, 1, 0], [-2, -1, 2, 1], [-13, -8, 16, 5], 7.0,
     [(2, 1, 1.0, 8.0), (2, 0, 1.0, 8.0), (3, 0, 1.0, 5.0)]),
    # C, D rest; A sells both kWh to C at C's 8; B (6) does not cross D (5).
    ([2, 3, 0, 1], [-2, 0, 2, 0], [-16, 0, 16, 0], 8.0, [(2, 0, 2.0, 8.0)]),
]


@pytest.mark.parametrize(("rank", "p2p", "p2p_payment", "price", "pairs"), CDA_CASES)
def test_cda_arrival_order_decides_who_trades_at_what_price(rank, p2p, p2p_payment, price,
                                                            pairs) -> None:
    arrival_rank = torch.tensor([rank])
    result = clear("cda", _row(CDA_PRICE), _row(CDA_QUANTITY), RETAIL, FEED_IN,
                   arrival_rank=arrival_rank)
    torch.testing.assert_close(result.p2p_energy, _row(p2p))
    torch.testing.assert_close(result.p2p_payment, _row(p2p_payment))
    # The rest settles with the grid: imports at r = 10, exports at f = 2.
    grid = _row(CDA_QUANTITY) - _row(p2p)
    torch.testing.assert_close(result.grid_payment,
                               grid.clamp(min=0) * RETAIL + grid.clamp(max=0) * FEED_IN)
    torch.testing.assert_close(result.clearing_price, torch.tensor([price], dtype=torch.float64))
    assert float(result.operator_surplus) == 0.0
    trades = market.bilateral_trades(
        "cda", _row(CDA_PRICE), result.p2p_energy, result.p2p_payment, result.clearing_price,
        result.operator_surplus, RETAIL, FEED_IN, arrival_rank=arrival_rank)
    expected_quantity = torch.zeros(1, 4, 4, dtype=torch.float64)
    expected_price = torch.zeros(1, 4, 4, dtype=torch.float64)
    for buyer, seller, kwh, unit_price in pairs:
        expected_quantity[0, buyer, seller] = kwh
        expected_price[0, buyer, seller] = unit_price
    torch.testing.assert_close(trades.quantity, expected_quantity)
    torch.testing.assert_close(trades.buyer_price, expected_price)
    torch.testing.assert_close(trades.seller_price, expected_price)


@pytest.mark.parametrize(("rank", "sold"), [([0, 1, 2, 3], [1.0, 0.0, 0.5]),
                                             ([1, 0, 2, 3], [0.0, 1.0, 0.5]),
                                             ([0, 1, 3, 2], [1.0, 0.5, 0.0])])
def test_cda_price_time_priority(rank: list[int], sold: list[float]) -> None:
    # Sellers S1 and S2 ask 4 for 1 kWh each, S3 asks 3 for 0.5 kWh; a buyer B bids 9 for
    # 1.5 kWh. B takes the cheapest resting ask first (S3), then at one price the earlier
    # (S1 in the first row, S2 in the second); in the third row S3 arrives after B is filled.
    price, quantity = _row([4.0, 4.0, 3.0, 9.0]), _row([-1.0, -1.0, -0.5, 1.5])
    result = clear("cda", price, quantity, RETAIL, FEED_IN, arrival_rank=torch.tensor([rank]))
    torch.testing.assert_close(result.p2p_energy, _row([-sold[0], -sold[1], -sold[2], 1.5]))
    torch.testing.assert_close(result.p2p_payment,
                               _row([-4 * sold[0], -4 * sold[1], -3 * sold[2],
                                     4 * (sold[0] + sold[1]) + 3 * sold[2]]))


def test_cda_partly_filled_order_rests_and_trades_at_its_own_price() -> None:
    # S1 asks 4 for 1 kWh and rests; B bids 7 for 3 kWh: 1 kWh at 4, 2 kWh rest at 7;
    # S2 asks 6 for 1 kWh and takes the resting bid at B's 7; B imports its last kWh at r.
    result = clear("cda", _row([4.0, 7.0, 6.0]), _row([-1.0, 3.0, -1.0]), RETAIL, FEED_IN,
                   arrival_rank=torch.tensor([[0, 1, 2]]))
    torch.testing.assert_close(result.p2p_energy, _row([-1.0, 2.0, -1.0]))
    torch.testing.assert_close(result.payment, _row([-4.0, 4.0 + 7.0 + RETAIL, -7.0]))
    torch.testing.assert_close(result.clearing_price, torch.tensor([5.5], dtype=torch.float64))


def test_cda_can_trade_more_than_the_call() -> None:
    # Bids 10 and 5, asks 4 and 9 (1 kWh each): the call pairs the highest bid with the lowest
    # ask and trades 1 kWh; in a CDA where ask 9 meets bid 10 first and ask 4 then meets bid 5,
    # both pairs cross and 2 kWh trade.
    price, quantity = _row([10.0, 5.0, 4.0, 9.0]), _row([1.0, 1.0, -1.0, -1.0])
    torch.testing.assert_close(clear("uniform", price, quantity, RETAIL, FEED_IN).p2p_energy,
                               _row([1.0, 0.0, -1.0, 0.0]))
    result = clear("cda", price, quantity, RETAIL, FEED_IN,
                   arrival_rank=torch.tensor([[1, 3, 2, 0]]))
    torch.testing.assert_close(result.p2p_energy, _row([1.0, 1.0, -1.0, -1.0]))
    torch.testing.assert_close(result.p2p_payment, _row([9.0, 4.0, -4.0, -9.0]))


def test_cda_random_arrival_order_is_seeded_per_step() -> None:
    # The same (seed, counter) gives the same order, batch or not; another step or episode
    # (counter) or seed another one; every row is a permutation.
    seed = torch.tensor([7, 7, 8])
    counter = torch.tensor([rng.forecast_noise_counter(2, 5)] * 3)
    ranks = rng.random_rank(seed, counter, rng.STREAM_CDA_ARRIVAL, 30)
    assert torch.equal(ranks[0], ranks[1]) and not torch.equal(ranks[0], ranks[2])
    alone = rng.random_rank(seed[2:], counter[2:], rng.STREAM_CDA_ARRIVAL, 30)
    assert torch.equal(alone[0], ranks[2])
    next_step = rng.random_rank(seed[:1], counter[:1] + 1, rng.STREAM_CDA_ARRIVAL, 30)
    assert not torch.equal(next_step[0], ranks[0])
    assert torch.equal(ranks.sort(1).values, torch.arange(30).expand(3, 30))


@pytest.mark.parametrize(("arrival_rank", "message"), [
    (None, "needs arrival_rank"),
    (torch.tensor([[0, 1, 2]]), "needs arrival_rank"),
    (torch.tensor([[0, 0]]), "permutation"),
    (torch.tensor([[0.5, 1.0]]), "integers"),
])
def test_cda_bad_arrival_rank_raises(arrival_rank, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        market.clear("cda", _PRICE, _QUANTITY, RETAIL, FEED_IN, arrival_rank=arrival_rank)


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------

_PRICE = torch.tensor([[5.0, 5.0]])
_QUANTITY = torch.tensor([[1.0, -1.0]])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mechanism": "vickrey"}, "unknown market mechanism 'vickrey'"),
        ({"price": torch.tensor([[5.0, 5.0, 5.0]])}, "same shape"),
        ({"price": torch.tensor([5.0, 5.0]), "quantity": torch.tensor([1.0, -1.0])}, "2-D"),
        ({"quantity": torch.tensor([[[1.0, -1.0]]])}, "2-D"),
        ({"quantity": torch.tensor([[1, -1]])}, "floating"),
        ({"price": torch.tensor([[math.nan, 5.0]])}, "finite"),
        ({"quantity": torch.tensor([[math.inf, -1.0]])}, "finite"),
        ({"retail_price": torch.tensor([10.0, 10.0])}, r"retail_price must be .* shape \[B\]"),
        ({"feed_in_price": torch.ones(1, 1)}, r"feed_in_price must be .* shape \[B\]"),
        ({"feed_in_price": math.nan}, "feed_in_price must be finite"),
        ({"retail_price": 1.0}, "retail_price must be >= feed_in_price"),
        ({"k": 1.5}, r"k must be a number in \[0, 1\]"),
        ({"k": -0.1}, r"k must be a number in \[0, 1\]"),
        ({"mechanism": "sdr", "feed_in_price": -1.0}, "feed_in_price >= 0"),
        ({"price": torch.zeros(1, 0), "quantity": torch.zeros(1, 0)}, "at least one agent"),
    ],
)
def test_bad_inputs_raise_value_error(kwargs: dict, message: str) -> None:
    arguments = {
        "mechanism": "uniform",
        "price": _PRICE,
        "quantity": _QUANTITY,
        "retail_price": RETAIL,
        "feed_in_price": FEED_IN,
        "k": 0.5,
    }
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        clear(**arguments)


def test_module_exports() -> None:
    assert set(market.MECHANISMS) == {
        "none",
        "uniform",
        "pay_as_bid",
        "mcafee",
        "mmr",
        "sdr",
        "bill_sharing",
        "cda",
    }
    assert set(market.__all__) == {"MECHANISMS", "ClearingResult", "clear"}
