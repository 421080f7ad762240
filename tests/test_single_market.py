"""Tests for :mod:`envs.single.market`: the numba kernel equals ``envs.market.clear`` (float64).

Tolerances are 1e-9, scaled by the book's magnitude: the kernel sums over agents sequentially
where torch sums vectorised, so results agree to rounding (~1e-16 of the traded volume), not bit
for bit.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from envs.market import MECHANISMS, clear
from envs.single.market import MECHANISM_CODE, OUTPUT_ROWS, clear_into, clear_one
from tests.test_market import CDA_CASES, CDA_PRICE, CDA_QUANTITY, FEED_IN, HAND_CASES, RETAIL

TOLERANCE = 1e-9


def _torch_reference(
    mechanism: str, price: np.ndarray, quantity: np.ndarray, retail: float, feed_in: float,
    k: float, arrival_rank: np.ndarray,
) -> dict[str, np.ndarray | float]:
    """``envs.market.clear`` on one float64 ``[1, N]`` environment, as :func:`clear_one`'s dict."""
    result = clear(
        mechanism,
        torch.tensor(price, dtype=torch.float64)[None],
        torch.tensor(quantity, dtype=torch.float64)[None],
        retail,
        feed_in,
        k=k,
        arrival_rank=torch.from_numpy(arrival_rank)[None],
    )
    reference: dict[str, np.ndarray | float] = {
        name: getattr(result, name)[0].numpy() for name in OUTPUT_ROWS
    }
    reference["clearing_price"] = float(result.clearing_price[0])
    reference["operator_surplus"] = float(result.operator_surplus[0])
    return reference


def _kernel(
    mechanism: str, price: np.ndarray, quantity: np.ndarray, retail: float, feed_in: float,
    k: float, arrival_rank: np.ndarray,
) -> dict[str, np.ndarray | float]:
    """:func:`clear_into` into a NaN-filled ``out`` (every entry must be written)."""
    out = np.full((len(OUTPUT_ROWS), price.shape[0]), math.nan)
    clearing_price, surplus = clear_into(
        MECHANISM_CODE[mechanism], price, quantity, retail, feed_in, k, arrival_rank, out
    )
    result: dict[str, np.ndarray | float] = dict(zip(OUTPUT_ROWS, out, strict=True))
    result["clearing_price"] = clearing_price
    result["operator_surplus"] = surplus
    return result


def _assert_matches_torch(
    mechanism: str, price: np.ndarray, quantity: np.ndarray, retail: float, feed_in: float,
    k: float, arrival_rank: np.ndarray | None = None,
) -> None:
    """The kernel's outcome equals ``envs.market.clear``'s within :data:`TOLERANCE`, scaled by
    the total |quantity| (kWh) and, for money, the largest tariff (currency/kWh). The
    arrival order of ``cda`` is ``arrival_rank``, or a random one seeded by ``N``."""
    price = np.ascontiguousarray(price, dtype=np.float64)
    quantity = np.ascontiguousarray(quantity, dtype=np.float64)
    if arrival_rank is None:
        arrival_rank = np.random.default_rng(len(price)).permutation(len(price))
    arrival_rank = np.ascontiguousarray(arrival_rank, dtype=np.int64)
    price_before = price.copy()
    actual = _kernel(mechanism, price, quantity, retail, feed_in, k, arrival_rank)
    expected = _torch_reference(mechanism, price, quantity, retail, feed_in, k, arrival_rank)
    np.testing.assert_array_equal(price, price_before)  # clamped inside, input untouched

    price_scale = max(1.0, abs(retail), abs(feed_in))
    energy_scale = max(1.0, float(np.abs(quantity).sum()))
    for name in OUTPUT_ROWS:
        scale = energy_scale if name.endswith("energy") else energy_scale * price_scale
        np.testing.assert_allclose(
            actual[name], expected[name], rtol=TOLERANCE, atol=TOLERANCE * scale, err_msg=name
        )
    np.testing.assert_allclose(
        actual["clearing_price"], expected["clearing_price"], rtol=TOLERANCE,
        atol=TOLERANCE * price_scale, equal_nan=True, err_msg="clearing_price",
    )
    np.testing.assert_allclose(
        actual["operator_surplus"], expected["operator_surplus"], rtol=TOLERANCE,
        atol=TOLERANCE * energy_scale * price_scale, err_msg="operator_surplus",
    )


# --------------------------------------------------------------------------------------------
# Hypothesis books
# --------------------------------------------------------------------------------------------


@st.composite
def books(
    draw: st.DrawFn, nonnegative_feed_in: bool
) -> tuple[np.ndarray, np.ndarray, float, float, float]:
    """One environment's book ``(price [N], quantity [N], retail, feed_in, k)``, N in 1..15.

    Prices mostly from a few levels (frequent ties), some reaching outside ``[f, r]``
    (clamping), some continuous; quantities include zeros, tiny (1e-12 kWh) and large (1e4 kWh)
    positions. ``retail >= feed_in``; ``feed_in >= 0`` where ``nonnegative_feed_in``.
    """
    n_agents = draw(st.integers(1, 15))
    price_value = st.one_of(
        st.sampled_from([-1.0, 0.0, 2.0, 3.0, 5.0, 6.0, 10.0, 13.0]),
        st.floats(-2.0, 15.0).map(lambda x: round(x, 2)),
        st.floats(-2.0, 15.0),
    )
    quantity_value = st.one_of(
        st.just(0.0),
        st.sampled_from([-2.0, -1.0, -0.3, -0.2, -0.1, 0.1, 0.2, 0.3, 1.0, 2.0]),
        st.sampled_from([-1e-12, 1e-12, -1e-9, 1e-9]),
        st.sampled_from([-1e4, -1e3, 1e3, 1e4]),
        st.floats(-5.0, 5.0).map(lambda x: round(x, 3)),
        st.floats(-5.0, 5.0),
    )
    price = draw(st.lists(price_value, min_size=n_agents, max_size=n_agents))
    quantity = draw(st.lists(quantity_value, min_size=n_agents, max_size=n_agents))
    lowest_feed_in = 0.0 if nonnegative_feed_in else -2.0
    feed_in = draw(
        st.one_of(
            st.sampled_from([value for value in (-1.0, 0.0, 2.0, 5.0) if value >= lowest_feed_in]),
            st.floats(lowest_feed_in, 5.0),
        )
    )
    retail = feed_in + draw(st.one_of(st.sampled_from([0.0, 3.0, 8.0]), st.floats(0.0, 8.0)))
    k = draw(st.one_of(st.sampled_from([0.0, 0.3, 0.5, 1.0]), st.floats(0.0, 1.0)))
    return np.array(price), np.array(quantity), retail, feed_in, k


@settings(max_examples=60, deadline=None)
@pytest.mark.parametrize("mechanism", MECHANISMS)
@given(data=st.data())
def test_kernel_matches_torch_clear(mechanism: str, data: st.DataObject) -> None:
    price, quantity, retail, feed_in, k = data.draw(books(nonnegative_feed_in=mechanism == "sdr"))
    arrival_rank = np.array(data.draw(st.permutations(range(len(price)))))
    _assert_matches_torch(mechanism, price, quantity, retail, feed_in, k, arrival_rank)


# --------------------------------------------------------------------------------------------
# Fixed cases
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", HAND_CASES, ids=[case[0] for case in HAND_CASES])
def test_hand_computed_cases(case: tuple) -> None:
    """``tests/test_market.py``'s table: mechanism, prices, quantities, k, then the expected
    P2P energy, payments, clearing price and operator surplus."""
    mechanism, prices, quantities, k, p2p, payment, price, surplus = case
    result = clear_one(mechanism, prices, quantities, RETAIL, FEED_IN, k=k)
    np.testing.assert_allclose(result["p2p_energy"], p2p, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(result["payment"], payment, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(result["clearing_price"], price, atol=TOLERANCE, equal_nan=True)
    np.testing.assert_allclose(result["operator_surplus"], surplus, rtol=0, atol=TOLERANCE)
    _assert_matches_torch(
        mechanism, np.array(prices), np.array(quantities), RETAIL, FEED_IN, k
    )


@pytest.mark.parametrize("case", CDA_CASES, ids=[str(case[0]) for case in CDA_CASES])
def test_cda_hand_computed_cases(case: tuple) -> None:
    """``tests/test_market.py``'s continuous double auction in three arrival orders."""
    rank, p2p, p2p_payment, price, _ = case
    result = clear_one("cda", CDA_PRICE, CDA_QUANTITY, RETAIL, FEED_IN, arrival_rank=rank)
    np.testing.assert_allclose(result["p2p_energy"], p2p, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(result["p2p_payment"], p2p_payment, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(result["clearing_price"], price, rtol=0, atol=TOLERANCE)
    with pytest.raises(ValueError, match="needs arrival_rank"):
        clear_one("cda", CDA_PRICE, CDA_QUANTITY, RETAIL, FEED_IN, arrival_rank=[0, 0, 1, 2])


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_one_agent_and_many_agents(mechanism: str) -> None:
    for quantity in (2.0, -2.0, 0.0):
        _assert_matches_torch(mechanism, np.array([7.0]), np.array([quantity]), 10.0, 2.0, 0.5)
    rng = np.random.default_rng(111)
    n_agents = 111
    price = rng.uniform(0.0, 12.0, n_agents)
    quantity = rng.uniform(-3.0, 3.0, n_agents) * (rng.random(n_agents) > 0.1)
    _assert_matches_torch(mechanism, price, quantity, 10.0, 2.0, 0.4)


def test_mechanism_codes_and_unknown_mechanism() -> None:
    assert MECHANISM_CODE == {name: index for index, name in enumerate(MECHANISMS)}
    with pytest.raises(ValueError, match="unknown market mechanism 'vickrey'.*bill_sharing"):
        clear_one("vickrey", [5.0], [1.0], RETAIL, FEED_IN)
    with pytest.raises(ValueError, match="1-D of one length"):
        clear_one("uniform", [5.0, 5.0], [1.0], RETAIL, FEED_IN)
