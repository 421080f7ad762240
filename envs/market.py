"""Market clearing for peer-to-peer (P2P) energy trading: pure, batched torch functions.

Every 15-minute step each agent ``i`` of each environment ``b`` submits a net position
``quantity[b, i]`` in kWh (> 0 buys, < 0 sells, 0 inactive) and a ``price[b, i]`` in
currency/kWh (a bid for a buyer, an ask for a seller). :func:`clear` matches them inside the
community; whatever is not matched is settled with the grid, imports at the retail price ``r``
and exports at the feed-in price ``f`` (currency/kWh, ``f <= r``).

=================  ===============================================  ==========  ================
mechanism          P2P price                                        uses bids   operator surplus
=================  ===============================================  ==========  ================
``none``           no P2P trade, everything with the grid           no          0
``uniform``        one k-weighted price of the marginal bid/ask     yes         0
``pay_as_bid``     discriminatory k-double auction, per segment     yes         0
``mcafee``         McAfee (1992) trade reduction                    yes         >= 0
``mmr``            mid-market rate (r + f) / 2                      no          0
``sdr``            supply-demand ratio price (Liu et al. 2017)      no          0
``bill_sharing``   community grid bill shared pro rata (price 0)    no          0
``cda``            continuous double auction: each trade at the     yes         0
                   resting order's price (Guerrero et al. 2019)
=================  ===============================================  ==========  ================

Conventions
-----------
* Shapes: ``B`` environments, ``N`` agents; every per-agent tensor is ``[B, N]``, every
  per-environment tensor is ``[B]``. Everything runs in the dtype and on the device of
  ``price`` with batched sort / cumsum / searchsorted / gather, ``O(N log N)`` per environment
  and no Python loop over environments or agents.
* Prices are clamped into ``[feed_in, retail]`` before clearing: no buyer needs to pay more
  than the grid asks and no seller needs to accept less than the grid pays.
* Demand ``D`` of an environment is the sum of positive quantities, supply ``S`` the sum of
  the magnitudes of negative ones (both kWh).
* The auctions (``uniform``, ``pay_as_bid``, ``mcafee``) trade where bid >= ask. When several
  agents on one side sit at the marginal price they are rationed pro rata to their quantity,
  so the outcome does not depend on the order of the agents.
* The continuous double auction (``cda``) is the one mechanism whose outcome depends on the
  order in which the orders arrive: :func:`clear` takes it as ``arrival_rank`` (the env draws
  it per step from its own counter-based stream, ``envs.rng.STREAM_CDA_ARRIVAL``), and loops
  over the ``N`` arrivals, vectorised over the ``B`` environments (``O(N^2)`` per
  environment).

Who sold to whom: :func:`bilateral_trades` splits a step's outcome into buyer-seller pairs
(the order book's matching for the auctions, pro rata for the pool-priced mechanisms), for
the trade ledger (``envs.ledger``); tested in ``tests/test_ledger.py``.

Invariants (checked in ``tests/test_market.py``)
------------------------------------------------
For every mechanism: ``p2p_energy + grid_energy == quantity``; ``p2p_energy`` has the sign of
``quantity`` and ``|p2p_energy| <= |quantity|``; P2P energy sums to zero per environment;
``sum(p2p_payment) == operator_surplus``; zero-quantity agents get zero everything; no buyer
pays more than ``r`` per kWh on average. Every mechanism except ``bill_sharing`` also
guarantees that no seller earns less than ``f`` per kWh on average (bill sharing pays sellers
between 0 and ``f``, nothing when the community is a net importer; see :func:`clear`). The three
auctions and ``cda`` are individually rational: a buyer pays at most its (clamped) bid per P2P
kWh, a seller receives at least its (clamped) ask.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MECHANISMS", "ClearingResult", "clear"]
# bilateral_trades, BilateralTrades and AUCTIONS (below) are public too; tests/test_market.py
# pins __all__ to the three names above.

MECHANISMS: tuple[str, ...] = (
    "none",
    "uniform",
    "pay_as_bid",
    "mcafee",
    "mmr",
    "sdr",
    "bill_sharing",
    "cda",
)
"""Names accepted by :func:`clear`."""

AUCTIONS: tuple[str, ...] = ("uniform", "pay_as_bid", "mcafee")

MCAFEE_TOLERANCE = 2e-6
"""Relative rounding tolerance of ``mcafee``'s test of its candidate price against the
marginal levels (times ``max(|retail|, |feed_in|, 1)``, currency/kWh): a few float32 ulps of
a price, far below any economic difference. Both engines use it."""
"""The mechanisms that match bids with asks; :func:`bilateral_trades` pairs their buyers and
sellers on the order book, the other (pool-priced) mechanisms pro rata (``cda`` replays its
arrivals)."""


@dataclass(frozen=True)
class ClearingResult:
    """Outcome of one market step for ``B`` environments of ``N`` agents.

    Energies are signed kWh with the convention of ``quantity`` (> 0 bought, < 0 sold);
    payments are currency, > 0 when the agent pays and < 0 when it earns.
    """

    p2p_energy: Tensor
    """``[B, N]`` kWh traded with peers."""
    grid_energy: Tensor
    """``[B, N]`` kWh settled with the grid; ``p2p_energy + grid_energy == quantity``."""
    payment: Tensor
    """``[B, N]`` total money paid, ``p2p_payment + grid_payment``."""
    p2p_payment: Tensor
    """``[B, N]`` money paid for P2P energy (negative for sellers)."""
    grid_payment: Tensor
    """``[B, N]`` ``retail * max(grid_energy, 0) + feed_in * min(grid_energy, 0)``."""
    clearing_price: Tensor
    """``[B]`` currency/kWh: P2P money paid by buyers per P2P kWh bought (the single price of
    the uniform mechanisms, the volume-weighted mean of discriminatory ones); NaN where nothing
    traded."""
    operator_surplus: Tensor
    """``[B]`` currency kept by the market operator, ``p2p_payment.sum(-1)``; zero except for
    McAfee's trade reduction, where it is >= 0."""


class _P2POutcome(NamedTuple):
    """What a mechanism decides; :func:`clear` adds the grid settlement."""

    bought: Tensor  # [B, N] kWh >= 0 bought from peers
    sold: Tensor  # [B, N] kWh >= 0 sold to peers
    buyer_cost: Tensor  # [B, N] currency paid for ``bought``
    seller_revenue: Tensor  # [B, N] currency received for ``sold``
    clearing_price: Tensor  # [B] currency/kWh, NaN where nothing traded
    operator_surplus: Tensor  # [B] currency


class _Allocation(NamedTuple):
    """Welfare-maximising double-auction allocation, from :func:`_efficient_allocation`."""

    bought: Tensor  # [B, N] kWh
    sold: Tensor  # [B, N] kWh
    volume: Tensor  # [B] kWh traded
    marginal_bid: Tensor  # [B] lowest accepted bid (currency/kWh)
    marginal_ask: Tensor  # [B] highest accepted ask (currency/kWh)
    buyer_order: Tensor  # [B, N] agent indices, bids descending (non-buyers last)
    seller_order: Tensor  # [B, N] agent indices, asks ascending (non-sellers last)
    sorted_bid: Tensor  # [B, N] bids in ``buyer_order``, -inf for non-buyers
    sorted_ask: Tensor  # [B, N] asks in ``seller_order``, +inf for non-sellers


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def clear(
    mechanism: str,
    price: Tensor,
    quantity: Tensor,
    retail_price: float | Tensor,
    feed_in_price: float | Tensor,
    k: float = 0.5,
    arrival_rank: Tensor | None = None,
) -> ClearingResult:
    """Clear one P2P market step for ``B`` environments at once.

    Args:
        mechanism: one of :data:`MECHANISMS`.
        price: ``[B, N]`` bid (buyers) or ask (sellers) in currency/kWh; clamped into
            ``[feed_in_price, retail_price]``. Ignored by ``none``, ``mmr``, ``sdr`` and
            ``bill_sharing``.
        quantity: ``[B, N]`` net position in kWh, > 0 buys, < 0 sells, 0 inactive.
        retail_price: grid import price ``r`` in currency/kWh, a number or a ``[B]`` tensor.
        feed_in_price: grid export price ``f`` in currency/kWh, a number or a ``[B]`` tensor,
            ``f <= r``; ``sdr`` also needs ``f >= 0``.
        k: weight of the bid in the k-double auction price ``ask + k * (bid - ask)``,
            in ``[0, 1]``; used by ``uniform`` and ``pay_as_bid``.
        arrival_rank: ``[B, N]`` integer position of each agent's order in the step's
            arrival sequence (0 arrives first), a permutation of ``0..N-1`` in every
            environment; needed by ``cda`` only (ignored by the others).

    Returns:
        A :class:`ClearingResult`.

    Mechanisms (``S`` supply and ``D`` demand in kWh, ``M = min(S, D)``):

    * ``none``: no P2P; everything with the grid.
    * ``uniform``: uniform-price k-double auction. Bids sorted descending and asks ascending
      form step demand and supply curves; the traded volume is the largest ``Q`` with
      inverse demand >= inverse supply on ``[0, Q]`` (maximal gains from trade). With
      ``b_m`` the lowest accepted bid and ``a_m`` the highest accepted ask, everyone trades at
      ``a_m + k * (b_m - a_m)``; agents strictly inside the margin are filled, agents at
      ``b_m`` (or ``a_m``) share the rest of ``Q`` pro rata.
    * ``pay_as_bid``: discriminatory k-double auction, the rule of the "discriminatory
      k-double auction" compared with the uniform one by Lin, Pipattanasomporn & Rahman
      (2019), "Comparative analysis of auction mechanisms and bidding strategies for P2P
      solar transactive energy markets", Applied Energy 255, generalised to divisible
      quantities. Same allocation as ``uniform``. The accepted bids (descending) and asks
      (ascending) are laid out on the volume axis ``[0, Q]``; every overlap of a buyer
      segment with bid ``b`` and a seller segment with ask ``a`` trades at
      ``a + k * (b - a)``. Hence a buyer pays ``k * b + (1 - k) * (mean ask over its
      segment)`` per kWh and a seller receives ``(1 - k) * a + k * (mean bid over its
      segment)``. Agents tied at one price are merged into one segment and pay (receive) its
      mean price, so the outcome does not depend on agent order (up to float rounding in the
      cumulative sums). Strictly budget-balanced.
    * ``mcafee``: McAfee (1992), "A dominant strategy double auction", J. Econ. Theory 56,
      generalised to divisible quantities at the agent level. From the ``uniform``
      allocation take ``b_K = b_m`` and ``s_K = a_m``; ``b_{K+1}`` is the highest bid of a
      buyer that gets nothing, or ``f`` when there is none (the grid buys at ``f``), and
      ``s_{K+1}`` the lowest ask of a seller that gets nothing, or ``r`` (the grid sells at
      ``r``). If ``p0 = (b_{K+1} + s_{K+1}) / 2`` lies in ``[s_K, b_K]`` the efficient
      allocation trades at ``p0``. Otherwise all buyers bidding ``b_K`` and all sellers
      asking ``s_K`` are excluded, the others trade ``min(D', S')`` (the longer side rationed
      pro rata), buyers pay ``b_K`` and sellers receive ``s_K``; the difference is
      ``operator_surplus >= 0``. Individually rational and weakly budget-balanced; McAfee's
      dominant-strategy truthfulness is proven for unit demand only and is not claimed for
      divisible quantities.
    * ``mmr``: mid-market rate, Long et al. (2017), "Peer-to-peer energy trading in a
      community microgrid", IEEE PES General Meeting: matched energy ``M`` is priced at
      ``(r + f) / 2``; buyers get ``M / D`` of their demand P2P, sellers ``M / S`` of their
      supply; the rest goes to the grid.
    * ``sdr``: supply-demand ratio, Liu et al. (2017), "Energy sharing model for an energy
      hub of prosumers ... ", IEEE Trans. Power Systems 32(5). ``SDR = S / D``. If
      ``SDR < 1`` the selling price is ``r f / ((r - f) SDR + f)``; all supply is sold P2P at
      it and buyers get ``SDR`` of their demand P2P at it and the rest from the grid at
      ``r``, so a buyer's mean price is the paper's buying price ``p_sell SDR + r (1 - SDR)``.
      If ``SDR >= 1`` both prices are ``f``: buyers get all demand P2P at ``f``, sellers sell
      ``D / S`` of their supply P2P and the rest to the grid, all at ``f``.
    * ``bill_sharing``: bill sharing, Long et al. (2017), in the per-step form of Zhou et al.
      (2018), "Evaluation of peer-to-peer energy sharing mechanisms based on a multiagent
      simulation framework", Applied Energy 222: the community settles its net position with
      the grid; a net import cost ``r (D - S)`` is shared by buyers in proportion to their
      demand (buying price ``r max(D - S, 0) / D``) and a net export revenue ``f (S - D)``
      by sellers in proportion to their supply (selling price ``f max(S - D, 0) / S``);
      energy shared inside the community is free. This is implemented, exactly, as P2P
      trade of ``M`` at price 0 with the ``mmr`` pro-rata split, plus the usual grid
      settlement of each agent's remainder, so ``grid_payment`` keeps its definition. Sellers
      in a net-importing step earn nothing (below ``f``): the "no seller earns below
      feed-in" bound does not hold for this mechanism. ``clearing_price`` is 0 where P2P
      energy was shared.
    * ``cda``: continuous double auction, the rule of the energy CDA of Guerrero, Chapman &
      Verbic (2019), "Decentralized P2P energy trading under network constraints in a
      low-voltage network", IEEE Trans. Smart Grid 10(5), with divisible quantities and no
      network check. The orders arrive one by one in the order ``arrival_rank``; an arriving
      bid (ask) trades at once with the resting asks (bids) that cross it, best price first
      and, at one price, the earliest first (price-time priority), each trade at the resting
      order's price; whatever is left of it rests until the step closes, and then settles
      with the grid like every other mechanism's remainder. A buyer pays at most its bid
      and a seller receives at least its ask per kWh; strictly budget-balanced;
      ``clearing_price`` is the volume-weighted mean P2P price. The outcome depends on the
      arrival order (an early order is a price maker, a late one a price taker).

    Raises:
        ValueError: unknown mechanism; ``price`` or ``quantity`` not a 2-D floating tensor,
            their shapes differ, or they hold NaN/inf; a tariff tensor not of shape ``[B]``
            (or a scalar), or non-finite; ``retail_price < feed_in_price``; ``k`` outside
            ``[0, 1]``; ``sdr`` with ``feed_in_price < 0``; ``cda`` without an
            ``arrival_rank`` that is a ``[B, N]`` permutation of ``0..N-1`` per environment.
    """
    if mechanism not in MECHANISMS:
        raise ValueError(f"unknown market mechanism {mechanism!r}; expected one of {MECHANISMS}")
    _check_agent_tensors(price, quantity)
    retail = _tariff_tensor("retail_price", retail_price, price)
    feed_in = _tariff_tensor("feed_in_price", feed_in_price, price)
    if bool((retail < feed_in).any()):
        raise ValueError("retail_price must be >= feed_in_price in every environment")
    if mechanism == "sdr" and bool((feed_in < 0).any()):
        raise ValueError("mechanism 'sdr' needs feed_in_price >= 0 (Liu et al. 2017 pricing)")
    if isinstance(k, bool) or not isinstance(k, numbers.Real) or not 0.0 <= k <= 1.0:
        raise ValueError(f"k must be a number in [0, 1], got {k!r}")
    if mechanism == "cda":
        arrival_rank = _checked_arrival_rank(arrival_rank, price)
    return clear_unchecked(mechanism, price, quantity, retail, feed_in, float(k), arrival_rank)


def clear_unchecked(mechanism: str, price: Tensor, quantity: Tensor, retail: Tensor,
                    feed_in: Tensor, k: float, arrival_rank: Tensor | None = None
                    ) -> ClearingResult:
    """:func:`clear` without its input checks, for callers whose inputs are valid by
    construction (the core: prices from the validated tariff, finite quantities, its own
    arrival order); it has no host synchronisation, so ``torch.compile`` traces it without
    graph breaks. ``retail`` and ``feed_in`` are ``[B]`` tensors, ``mechanism`` one of
    :data:`MECHANISMS`, ``arrival_rank`` ``[B, N]`` (``cda`` only)."""
    price = torch.minimum(torch.maximum(price, feed_in[:, None]), retail[:, None])
    demand = quantity.clamp(min=0.0)
    supply = (-quantity).clamp(min=0.0)

    if mechanism == "none":
        outcome = _no_trade(demand)
    elif mechanism == "uniform":
        outcome = _uniform(price, demand, supply, k)
    elif mechanism == "pay_as_bid":
        outcome = _pay_as_bid(price, demand, supply, k)
    elif mechanism == "mcafee":
        outcome = _mcafee(price, demand, supply, retail, feed_in)
    elif mechanism == "mmr":
        outcome = _mid_market_rate(demand, supply, retail, feed_in)
    elif mechanism == "sdr":
        outcome = _supply_demand_ratio(demand, supply, retail, feed_in)
    elif mechanism == "cda":
        outcome = _continuous_double_auction(price, demand, supply, arrival_rank).outcome
    else:
        outcome = _bill_sharing(demand, supply)

    p2p_energy = outcome.bought - outcome.sold
    grid_energy = quantity - p2p_energy
    p2p_payment = outcome.buyer_cost - outcome.seller_revenue
    grid_import_kwh = grid_energy.clamp(min=0.0)
    grid_export_kwh = (-grid_energy).clamp(min=0.0)
    grid_payment = retail[:, None] * grid_import_kwh - feed_in[:, None] * grid_export_kwh
    return ClearingResult(
        p2p_energy=p2p_energy,
        grid_energy=grid_energy,
        payment=p2p_payment + grid_payment,
        p2p_payment=p2p_payment,
        grid_payment=grid_payment,
        clearing_price=outcome.clearing_price,
        operator_surplus=outcome.operator_surplus,
    )


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _check_agent_tensors(price: Tensor, quantity: Tensor) -> None:
    """Raise ValueError unless ``price`` and ``quantity`` are finite floating ``[B, N]`` tensors."""
    for name, value in (("price", price), ("quantity", quantity)):
        if not isinstance(value, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of shape [B, N], got {type(value)}")
        if value.ndim != 2:
            raise ValueError(f"{name} must be 2-D [B, N], got shape {tuple(value.shape)}")
        if not value.is_floating_point():
            raise ValueError(f"{name} must be a floating tensor, got dtype {value.dtype}")
    if price.shape != quantity.shape:
        raise ValueError(
            f"price and quantity must have the same shape [B, N], got "
            f"{tuple(price.shape)} and {tuple(quantity.shape)}"
        )
    if price.shape[1] == 0:
        raise ValueError("need at least one agent (N >= 1)")
    if not bool(torch.isfinite(price).all() & torch.isfinite(quantity).all()):
        raise ValueError("price and quantity must be finite (no NaN or inf)")


def _checked_arrival_rank(arrival_rank: Tensor | None, like: Tensor) -> Tensor:
    """``arrival_rank`` as int64 ``[B, N]`` on ``like``'s device; ValueError unless it is an
    integer-valued tensor of ``like``'s shape holding a permutation of ``0..N-1`` per row."""
    expected = tuple(like.shape)
    if not isinstance(arrival_rank, Tensor) or tuple(arrival_rank.shape) != expected:
        got = tuple(arrival_rank.shape) if isinstance(arrival_rank, Tensor) else arrival_rank
        raise ValueError(f"mechanism 'cda' needs arrival_rank, a tensor of shape [B, N] = "
                         f"{expected} (each agent's place in the arrival order), got {got!r}")
    rank = arrival_rank.to(like.device)
    if rank.is_floating_point() and not bool((rank == rank.round()).all()):
        raise ValueError("arrival_rank must hold integers (a permutation of 0..N-1 per row)")
    rank = rank.long()
    positions = torch.arange(expected[1], device=like.device).expand(expected)
    if not torch.equal(rank.sort(dim=1).values, positions):
        raise ValueError(f"arrival_rank must be a permutation of 0..{expected[1] - 1} in "
                         f"every environment")
    return rank


def _tariff_tensor(name: str, value: float | Tensor, like: Tensor) -> Tensor:
    """Return tariff ``value`` (currency/kWh) as a finite ``[B]`` tensor on ``like``'s device."""
    n_envs = like.shape[0]
    if isinstance(value, Tensor):
        if value.ndim == 0:
            value = value.expand(n_envs)
        elif tuple(value.shape) != (n_envs,):
            raise ValueError(
                f"{name} must be a number or a tensor of shape [B]=({n_envs},), "
                f"got shape {tuple(value.shape)}"
            )
        tariff = value.to(dtype=like.dtype, device=like.device)
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        tariff = torch.full((n_envs,), float(value), dtype=like.dtype, device=like.device)
    else:
        raise ValueError(f"{name} must be a number or a tensor of shape [B], got {type(value)}")
    if not bool(torch.isfinite(tariff).all()):
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return tariff


# --------------------------------------------------------------------------------------------
# Small batched helpers
# --------------------------------------------------------------------------------------------


def _safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator`` where ``denominator > 0``, else 0 (no NaN in gradients)."""
    positive = denominator > 0
    return torch.where(positive, numerator / torch.where(positive, denominator, 1.0), 0.0)


def _nan_where_no_trade(unit_price: Tensor, volume: Tensor) -> Tensor:
    """``[B]`` price, NaN where ``volume`` (kWh) is not positive."""
    return torch.where(volume > 0, unit_price, math.nan)


def _pro_rata(demand: Tensor, supply: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Split matched energy ``M = min(S, D)`` pro rata to demand and supply.

    Returns ``(bought [B, N], sold [B, N], matched [B])`` in kWh: each buyer gets ``M / D``
    of its demand, each seller sells ``M / S`` of its supply (Long et al. 2017).
    """
    total_demand = demand.sum(1)
    total_supply = supply.sum(1)
    matched = torch.minimum(total_demand, total_supply)
    buyer_share = _safe_divide(matched, total_demand).clamp(0.0, 1.0)
    seller_share = _safe_divide(matched, total_supply).clamp(0.0, 1.0)
    return demand * buyer_share[:, None], supply * seller_share[:, None], matched


def _fill_with_marginal_rationing(
    offered: Tensor, inside: Tensor, at_margin: Tensor, target_volume: Tensor
) -> Tensor:
    """Fill ``inside`` agents completely and share the rest pro rata among ``at_margin`` ones.

    Args:
        offered: ``[B, N]`` kWh each agent wants to trade.
        inside: ``[B, N]`` bool, agents strictly better than the marginal price.
        at_margin: ``[B, N]`` bool, agents at the marginal price.
        target_volume: ``[B]`` kWh the side must trade in total.

    Returns:
        ``[B, N]`` kWh accepted, ``<= offered``.
    """
    inside_volume = torch.where(inside, offered, 0.0).sum(1)
    margin_volume = torch.where(at_margin, offered, 0.0).sum(1)
    share = _safe_divide(target_volume - inside_volume, margin_volume).clamp(0.0, 1.0)
    return torch.where(inside, offered, torch.where(at_margin, offered * share[:, None], 0.0))


def _tie_group_bounds(sorted_values: Tensor) -> tuple[Tensor, Tensor]:
    """First and last position of each element's run of equal values in a sorted ``[B, N]``.

    Returns two ``[B, N]`` int64 tensors of positions along dim 1.
    """
    n_agents = sorted_values.shape[1]
    positions = torch.arange(n_agents, device=sorted_values.device).expand_as(sorted_values)
    changes = sorted_values[:, 1:] != sorted_values[:, :-1]
    edge = torch.ones_like(sorted_values[:, :1], dtype=torch.bool)
    starts_run = torch.cat([edge, changes], dim=1)
    ends_run = torch.cat([changes, edge], dim=1)
    start = torch.where(starts_run, positions, 0).cummax(dim=1).values
    end = torch.where(ends_run, positions, n_agents - 1).flip(1).cummin(dim=1).values.flip(1)
    return start, end


def _step_curve_integral(unit_price: Tensor, volume: Tensor, points: Tensor) -> Tensor:
    """Integral ``int_0^q P(x) dx`` of a step price curve, evaluated at each ``q`` in ``points``.

    Args:
        unit_price: ``[B, N]`` currency/kWh of consecutive segments (finite).
        volume: ``[B, N]`` kWh >= 0, segment lengths in the same order.
        points: ``[B, M]`` kWh where the integral is evaluated.

    Returns:
        ``[B, M]`` currency. Points beyond the end extrapolate the last segment's price.
    """
    n_segments = unit_price.shape[1]
    cumulative_volume = volume.cumsum(1)
    cumulative_value = (unit_price * volume).cumsum(1)
    segment = torch.searchsorted(cumulative_volume, points.contiguous()).clamp(max=n_segments - 1)
    volume_before = F.pad(cumulative_volume, (1, 0)).gather(1, segment)
    value_before = F.pad(cumulative_value, (1, 0)).gather(1, segment)
    return value_before + unit_price.gather(1, segment) * (points - volume_before)


def _unsort(sorted_values: Tensor, order: Tensor) -> Tensor:
    """Undo ``values.gather(1, order)``: put ``sorted_values [B, N]`` back in agent order.

    Scattered into zeros, not ``empty_like`` (the same values: ``order`` is a permutation):
    inductor (torch 2.13, CPU) compiled the in-place scatter into an uninitialised buffer to
    NaN when the result fed the P2P fees (``tests/test_compiled.py``)."""
    return torch.zeros_like(sorted_values).scatter(1, order, sorted_values)


# --------------------------------------------------------------------------------------------
# Double auctions
# --------------------------------------------------------------------------------------------


def _efficient_allocation(price: Tensor, demand: Tensor, supply: Tensor) -> _Allocation:
    """Welfare-maximising allocation of a double auction with divisible quantities.

    Bids sorted descending give the inverse demand curve ``P_d(q)``, asks sorted ascending the
    inverse supply curve ``P_s(q)``. The traded volume is ``Q = max_j min(D_j, S(b_j))`` with
    ``D_j`` the cumulative demand down to buyer ``j`` and ``S(b_j)`` the total supply asking
    at most ``b_j``: the largest ``Q`` with ``P_d >= P_s`` on ``[0, Q]``. Agents strictly
    inside the marginal price are filled; those at it are rationed pro rata.

    Args:
        price: ``[B, N]`` clamped bids/asks in currency/kWh.
        demand: ``[B, N]`` kWh >= 0 (0 for non-buyers).
        supply: ``[B, N]`` kWh >= 0 (0 for non-sellers).
    """
    n_agents = price.shape[1]
    bid_key = torch.where(demand > 0, price, -math.inf)
    sorted_bid, buyer_order = torch.sort(bid_key, dim=1, descending=True, stable=True)
    ask_key = torch.where(supply > 0, price, math.inf)
    sorted_ask, seller_order = torch.sort(ask_key, dim=1, stable=True)

    cumulative_demand = demand.gather(1, buyer_order).cumsum(1)
    cumulative_supply = supply.gather(1, seller_order).cumsum(1)
    n_asks_below_bid = torch.searchsorted(sorted_ask, sorted_bid, right=True)
    supply_below_bid = F.pad(cumulative_supply, (1, 0)).gather(1, n_asks_below_bid)
    volume = torch.minimum(cumulative_demand, supply_below_bid).amax(1)
    traded = volume > 0

    marginal_buyer = torch.searchsorted(cumulative_demand, volume[:, None]).clamp(max=n_agents - 1)
    marginal_seller = torch.searchsorted(cumulative_supply, volume[:, None]).clamp(max=n_agents - 1)
    marginal_bid = sorted_bid.gather(1, marginal_buyer).squeeze(1)
    marginal_ask = sorted_ask.gather(1, marginal_seller).squeeze(1)

    is_buyer = (demand > 0) & traded[:, None]
    is_seller = (supply > 0) & traded[:, None]
    bought = _fill_with_marginal_rationing(
        demand,
        is_buyer & (price > marginal_bid[:, None]),
        is_buyer & (price == marginal_bid[:, None]),
        volume,
    )
    sold = _fill_with_marginal_rationing(
        supply,
        is_seller & (price < marginal_ask[:, None]),
        is_seller & (price == marginal_ask[:, None]),
        volume,
    )
    return _Allocation(
        bought=bought,
        sold=sold,
        volume=volume,
        marginal_bid=marginal_bid,
        marginal_ask=marginal_ask,
        buyer_order=buyer_order,
        seller_order=seller_order,
        sorted_bid=sorted_bid,
        sorted_ask=sorted_ask,
    )


def _uniform(price: Tensor, demand: Tensor, supply: Tensor, k: float) -> _P2POutcome:
    """Uniform-price k-double auction: everyone trades at ``a_m + k (b_m - a_m)``."""
    allocation = _efficient_allocation(price, demand, supply)
    traded = allocation.volume > 0
    bid, ask = allocation.marginal_bid, allocation.marginal_ask
    unit_price = torch.where(traded, ask + k * (bid - ask), 0.0)
    return _P2POutcome(
        bought=allocation.bought,
        sold=allocation.sold,
        buyer_cost=allocation.bought * unit_price[:, None],
        seller_revenue=allocation.sold * unit_price[:, None],
        clearing_price=_nan_where_no_trade(unit_price, allocation.volume),
        operator_surplus=torch.zeros_like(allocation.volume),
    )


def _pay_as_bid(price: Tensor, demand: Tensor, supply: Tensor, k: float) -> _P2POutcome:
    """Discriminatory k-double auction (Lin et al. 2019): each matched segment at its own price.

    See :func:`clear` for the rule. The buyer of a tie group spanning ``[lo, hi]`` on the
    volume axis pays ``k b + (1 - k) (F_s(hi) - F_s(lo)) / (hi - lo)`` per kWh with ``F_s``
    the integral of the accepted inverse supply curve; sellers symmetrically.
    """
    allocation = _efficient_allocation(price, demand, supply)
    bought_sorted = allocation.bought.gather(1, allocation.buyer_order)
    sold_sorted = allocation.sold.gather(1, allocation.seller_order)
    accepted_bid = torch.where(bought_sorted > 0, allocation.sorted_bid, 0.0)
    accepted_ask = torch.where(sold_sorted > 0, allocation.sorted_ask, 0.0)

    def mean_counterpart_price(
        own_sorted_price: Tensor,
        own_volume: Tensor,
        other_unit_price: Tensor,
        other_volume: Tensor,
    ) -> Tensor:
        """``[B, N]`` mean price of the other side over each tie group's volume interval."""
        cumulative = own_volume.cumsum(1)
        first, last = _tie_group_bounds(own_sorted_price)
        group_low = (cumulative - own_volume).gather(1, first)
        group_high = cumulative.gather(1, last)
        value = _step_curve_integral(other_unit_price, other_volume, group_high)
        value = value - _step_curve_integral(other_unit_price, other_volume, group_low)
        return _safe_divide(value, group_high - group_low)

    mean_ask = mean_counterpart_price(
        allocation.sorted_bid, bought_sorted, accepted_ask, sold_sorted
    )
    mean_bid = mean_counterpart_price(
        allocation.sorted_ask, sold_sorted, accepted_bid, bought_sorted
    )
    buyer_cost = bought_sorted * (k * accepted_bid + (1.0 - k) * mean_ask)
    seller_revenue = sold_sorted * ((1.0 - k) * accepted_ask + k * mean_bid)
    buyer_cost = _unsort(buyer_cost, allocation.buyer_order)
    seller_revenue = _unsort(seller_revenue, allocation.seller_order)
    volume = allocation.volume
    return _P2POutcome(
        bought=allocation.bought,
        sold=allocation.sold,
        buyer_cost=buyer_cost,
        seller_revenue=seller_revenue,
        clearing_price=_nan_where_no_trade(
            _safe_divide(buyer_cost.sum(1), allocation.bought.sum(1)), volume
        ),
        operator_surplus=torch.zeros_like(volume),
    )


def _mcafee(
    price: Tensor, demand: Tensor, supply: Tensor, retail: Tensor, feed_in: Tensor
) -> _P2POutcome:
    """McAfee (1992) trade-reduction double auction at the agent level; rule in :func:`clear`."""
    allocation = _efficient_allocation(price, demand, supply)
    lowest_bid, highest_ask = allocation.marginal_bid, allocation.marginal_ask
    is_buyer, is_seller = demand > 0, supply > 0

    # Agents priced strictly outside the marginal levels are the ones that get nothing.
    excluded_bid = torch.where(is_buyer & (price < lowest_bid[:, None]), price, -math.inf).amax(1)
    excluded_ask = torch.where(is_seller & (price > highest_ask[:, None]), price, math.inf).amin(1)
    # The grid is the outside option: it always buys at f and sells at r.
    first_excluded_bid = torch.maximum(excluded_bid, feed_in)
    first_excluded_ask = torch.minimum(excluded_ask, retail)
    midpoint = 0.5 * (first_excluded_bid + first_excluded_ask)
    # In exact arithmetic the midpoint can equal both marginal levels (bids and asks at one
    # price, the excluded ones symmetric about it); a rounding error must not then reduce
    # trade. A midpoint within MCAFEE_TOLERANCE of [highest ask, lowest bid] counts as in it
    # and is moved onto it, so no buyer pays above its bid and no seller gets below its ask.
    tolerance = MCAFEE_TOLERANCE * torch.maximum(retail.abs(), feed_in.abs()).clamp_min(1.0)
    efficient = (
        (allocation.volume > 0)
        & (highest_ask <= midpoint + tolerance)
        & (midpoint <= lowest_bid + tolerance)
    )
    candidate_price = torch.minimum(torch.maximum(midpoint, highest_ask), lowest_bid)

    # Trade reduction: drop the marginal price levels on both sides.
    kept_buyer = is_buyer & (price > lowest_bid[:, None])
    kept_seller = is_seller & (price < highest_ask[:, None])
    reduced_bought, reduced_sold, reduced_volume = _pro_rata(
        torch.where(kept_buyer, demand, 0.0), torch.where(kept_seller, supply, 0.0)
    )
    reduced = (~efficient) & (allocation.volume > 0) & (reduced_volume > 0)

    bought = torch.where(
        efficient[:, None], allocation.bought, torch.where(reduced[:, None], reduced_bought, 0.0)
    )
    sold = torch.where(
        efficient[:, None], allocation.sold, torch.where(reduced[:, None], reduced_sold, 0.0)
    )
    buyer_price = torch.where(efficient, candidate_price, torch.where(reduced, lowest_bid, 0.0))
    seller_price = torch.where(efficient, candidate_price, torch.where(reduced, highest_ask, 0.0))
    surplus = torch.where(reduced, (lowest_bid - highest_ask) * reduced_volume, 0.0)
    return _P2POutcome(
        bought=bought,
        sold=sold,
        buyer_cost=bought * buyer_price[:, None],
        seller_revenue=sold * seller_price[:, None],
        clearing_price=_nan_where_no_trade(buyer_price, bought.sum(1)),
        operator_surplus=surplus,
    )


class _ContinuousAuction(NamedTuple):
    """Outcome of :func:`_continuous_double_auction`."""

    outcome: _P2POutcome
    fills: Tensor | None  # [B, N, N] kWh agent i's arriving order took from agent j's


def _continuous_double_auction(
    price: Tensor, demand: Tensor, supply: Tensor, arrival_rank: Tensor,
    with_fills: bool = False,
) -> _ContinuousAuction:
    """Continuous double auction (Guerrero, Chapman & Verbic 2019): rule in :func:`clear`.

    The book: both sides in one priority order, asks ascending and bids descending (the
    signed price ``ask`` or ``-bid``), ties in arrival order (a stable sort of the agents
    taken in arrival order). An arriving order's counterparts are the resting orders of the
    other side that cross its price; it takes their remaining kWh in book order up to its own
    quantity (a cumulative sum over the book with the other entries masked out), each at the
    resting order's price. One Python iteration per arrival, vectorised over environments.

    Args:
        price: ``[B, N]`` clamped bids/asks in currency/kWh.
        demand: ``[B, N]`` kWh >= 0 (0 for non-buyers).
        supply: ``[B, N]`` kWh >= 0 (0 for non-sellers).
        arrival_rank: ``[B, N]`` int64, each agent's place in the arrival order.
        with_fills: also return ``fills [B, N, N]`` (for :func:`bilateral_trades`).
    """
    n_envs, n_agents = price.shape
    arrival_order = arrival_rank.argsort(dim=1)  # [B, N] agent arriving at each place
    signed_price = torch.where(supply > 0, price, -price)
    book_arrival = torch.sort(signed_price.gather(1, arrival_order), dim=1, stable=True).indices
    book_order = arrival_order.gather(1, book_arrival)  # [B, N] agent at each book position
    positions = torch.arange(n_agents, device=price.device).repeat(n_envs, 1)
    book_position = _unsort(positions, book_arrival)  # [B, N] book position of each arrival
    book_price = price.gather(1, book_order)
    book_buys = demand.gather(1, book_order) > 0
    book_sells = supply.gather(1, book_order) > 0
    remaining = (demand + supply).gather(1, book_order)  # kWh each order has left
    traded = torch.zeros_like(price)  # kWh each book entry traded, as either side
    money = torch.zeros_like(price)  # currency each book entry paid or received
    fills = []
    for arrival in range(n_agents):
        position = book_position[:, arrival:arrival + 1]  # [B, 1]
        incoming_price = book_price.gather(1, position)
        incoming_quantity = remaining.gather(1, position)
        incoming_buys = book_buys.gather(1, position)
        crosses = torch.where(incoming_buys, book_sells & (book_price <= incoming_price),
                              book_buys & (book_price >= incoming_price))
        available = torch.where(crosses & (book_arrival < arrival), remaining, 0.0)
        ahead = available.cumsum(1) - available
        fill = torch.minimum(available, (incoming_quantity - ahead).clamp(min=0.0))
        value = fill * book_price
        filled = fill.sum(1, keepdim=True)
        remaining = (remaining - fill).scatter(
            1, position, (incoming_quantity - filled).clamp(min=0.0))
        traded = (traded + fill).scatter_add(1, position, filled)
        money = (money + value).scatter_add(1, position, value.sum(1, keepdim=True))
        if with_fills:
            fills.append(fill)

    bought = _unsort(torch.where(book_buys, traded, 0.0), book_order)
    sold = _unsort(torch.where(book_sells, traded, 0.0), book_order)
    buyer_cost = _unsort(torch.where(book_buys, money, 0.0), book_order)
    seller_revenue = _unsort(torch.where(book_sells, money, 0.0), book_order)
    volume = bought.sum(1)
    outcome = _P2POutcome(
        bought=bought,
        sold=sold,
        buyer_cost=buyer_cost,
        seller_revenue=seller_revenue,
        clearing_price=_nan_where_no_trade(_safe_divide(buyer_cost.sum(1), volume), volume),
        operator_surplus=torch.zeros_like(volume),
    )
    if not with_fills:
        return _ContinuousAuction(outcome, None)
    # fills[b, t, j]: arrival t took from book entry j; to agents on both axes.
    by_arrival = torch.stack(fills, dim=1)
    shape = (n_envs, n_agents, n_agents)
    by_agent = torch.zeros_like(by_arrival).scatter(
        2, book_order[:, None, :].expand(shape), by_arrival)
    by_agent = torch.zeros_like(by_agent).scatter(
        1, arrival_order[:, :, None].expand(shape), by_agent)
    return _ContinuousAuction(outcome, by_agent)


# --------------------------------------------------------------------------------------------
# Price-free sharing mechanisms
# --------------------------------------------------------------------------------------------


def _no_trade(demand: Tensor) -> _P2POutcome:
    """No P2P market: every agent settles with the grid."""
    zeros = torch.zeros_like(demand)
    return _P2POutcome(
        bought=zeros,
        sold=zeros,
        buyer_cost=zeros,
        seller_revenue=zeros,
        clearing_price=torch.full_like(demand[:, 0], math.nan),
        operator_surplus=torch.zeros_like(demand[:, 0]),
    )


def _shared_at_price(demand: Tensor, supply: Tensor, unit_price: Tensor) -> _P2POutcome:
    """Pro-rata split of ``min(S, D)`` traded at one ``[B]`` price in currency/kWh."""
    bought, sold, matched = _pro_rata(demand, supply)
    return _P2POutcome(
        bought=bought,
        sold=sold,
        buyer_cost=bought * unit_price[:, None],
        seller_revenue=sold * unit_price[:, None],
        clearing_price=_nan_where_no_trade(unit_price, matched),
        operator_surplus=torch.zeros_like(matched),
    )


def _mid_market_rate(
    demand: Tensor, supply: Tensor, retail: Tensor, feed_in: Tensor
) -> _P2POutcome:
    """Mid-market rate (Long et al. 2017): matched energy at ``(r + f) / 2``."""
    return _shared_at_price(demand, supply, 0.5 * (retail + feed_in))


def _supply_demand_ratio(
    demand: Tensor, supply: Tensor, retail: Tensor, feed_in: Tensor
) -> _P2POutcome:
    """Supply-demand ratio pricing (Liu et al. 2017, IEEE Trans. Power Systems 32(5)).

    ``SDR = S / D``; for ``SDR < 1`` the P2P (selling) price is ``r f / ((r - f) SDR + f)``,
    otherwise ``f``. The pro-rata split makes a buyer's mean price equal to the paper's
    buying price ``p_sell SDR + r (1 - SDR)``.
    """
    ratio = _safe_divide(supply.sum(1), demand.sum(1))
    denominator = (retail - feed_in) * ratio + feed_in
    shortage_price = torch.where(
        denominator > 0, retail * feed_in / torch.where(denominator > 0, denominator, 1.0), feed_in
    )
    selling_price = torch.where(ratio < 1, shortage_price, feed_in)
    return _shared_at_price(demand, supply, selling_price)


def _bill_sharing(demand: Tensor, supply: Tensor) -> _P2POutcome:
    """Bill sharing (Long et al. 2017; Zhou et al. 2018): shared energy is free; see :func:`clear`.

    Each buyer's grid remainder ``q (D - S) / D`` at ``r`` is its demand share of the
    community import bill, each seller's remainder at ``f`` its supply share of the export
    revenue.
    """
    return _shared_at_price(demand, supply, torch.zeros_like(demand[:, 0]))


# --------------------------------------------------------------------------------------------
# Bilateral trades (who sold to whom), from a step's outcome
# --------------------------------------------------------------------------------------------


class BilateralTrades(NamedTuple):
    """The P2P energy of a step split into buyer-seller pairs, from :func:`bilateral_trades`.

    Every tensor is ``[B, N, N]`` float64, indexed ``[env, buyer, seller]``.
    """

    quantity: Tensor
    """kWh the seller sold to the buyer (>= 0; zero unless the first agent bought and the
    second sold)."""
    buyer_price: Tensor
    """currency/kWh the buyer pays for this pair's energy."""
    seller_price: Tensor
    """currency/kWh the seller receives; equal to ``buyer_price`` except under ``mcafee``'s
    trade reduction, where the operator keeps the difference."""


def bilateral_trades(
    mechanism: str,
    price: Tensor,
    p2p_energy: Tensor,
    p2p_payment: Tensor,
    clearing_price: Tensor,
    operator_surplus: Tensor,
    retail_price: float | Tensor,
    feed_in_price: float | Tensor,
    k: float = 0.5,
    arrival_rank: Tensor | None = None,
) -> BilateralTrades:
    """Split one step's cleared P2P energy into buyer-seller pairs, deterministically.

    A pure function of what :func:`clear` returns (``p2p_energy``, ``p2p_payment``,
    ``clearing_price``, ``operator_surplus``) and its inputs (the posted ``price``, the
    tariffs, ``k``), so it also reads the infos of the core or the numba engine. All ``[B, N]``
    or ``[B]`` as in :func:`clear`; computed in float64 on ``price``'s device, ``O(N^2)`` per
    environment, no Python loop. With ``bought_i`` and ``sold_j`` the kWh an agent bought and
    sold P2P and ``V`` the volume of the environment:

    * pool-priced mechanisms (``mmr``, ``sdr``, ``bill_sharing``): pro rata, seller ``j``
      sells ``bought_i * sold_j / V`` to buyer ``i`` (``V`` the mean of total bought and
      total sold), all at ``clearing_price``;
    * the auctions (:data:`AUCTIONS`): the order book's matching. Accepted bids (descending)
      and asks (ascending) are laid out on the volume axis ``[0, V]``; agents tied at one
      (clamped) price form one segment. The overlap of a buyer segment ``G`` and a seller
      segment ``H`` is shared pro rata inside both: ``q_ij = overlap(G, H) * bought_i /
      vol(G) * sold_j / vol(H)``. Prices: ``uniform`` everyone at ``clearing_price``;
      ``pay_as_bid`` each pair at its segments' k-price ``a_H + k (b_G - a_H)``, which
      reproduces :func:`clear`'s per-agent payments exactly; ``mcafee`` buyers at
      ``clearing_price`` (``p0`` or ``b_K``) and sellers at the sellers' P2P revenue per kWh
      (``p0`` or ``s_K``), the difference being ``operator_surplus``;
    * ``cda``: the auction's own fills, each pair at the resting order's price. They are
      replayed from ``arrival_rank`` (the ``arrival_rank`` info) with each agent's quantity
      cut to its P2P energy: an order's unfilled rest was never reached by a later order,
      so leaving it out changes no fill (up to float rounding);
    * ``none``: no pairs.

    Hence, up to float rounding, ``quantity.sum(2) == bought``, ``quantity.sum(1) == sold``,
    ``(quantity * buyer_price).sum(2)`` is each buyer's ``p2p_payment``,
    ``(quantity * seller_price).sum(1)`` each seller's ``-p2p_payment``, and the pairs'
    price differences sum to ``operator_surplus``.

    Raises:
        ValueError: unknown mechanism, or ``price``/``p2p_energy``/``p2p_payment`` not of
            one ``[B, N]`` shape; ``cda`` without a valid ``arrival_rank`` (see
            :func:`clear`).
    """
    if mechanism not in MECHANISMS:
        raise ValueError(f"unknown market mechanism {mechanism!r}; expected one of {MECHANISMS}")
    if not (price.shape == p2p_energy.shape == p2p_payment.shape and price.ndim == 2):
        raise ValueError(
            f"price, p2p_energy and p2p_payment must share one shape [B, N], got "
            f"{tuple(price.shape)}, {tuple(p2p_energy.shape)} and {tuple(p2p_payment.shape)}"
        )
    retail = _tariff_tensor("retail_price", retail_price, price)
    feed_in = _tariff_tensor("feed_in_price", feed_in_price, price)
    # The clamp of :func:`clear`, in the dtype it ran in, so tied prices stay tied.
    price = torch.minimum(torch.maximum(price, feed_in[:, None]), retail[:, None]).double()
    bought = p2p_energy.double().clamp(min=0.0)
    sold = (-p2p_energy.double()).clamp(min=0.0)
    unit_price = torch.nan_to_num(clearing_price.double(), nan=0.0)
    zeros = torch.zeros(*bought.shape, bought.shape[1], dtype=torch.float64,
                        device=bought.device)
    if mechanism == "none":
        return BilateralTrades(zeros, zeros, zeros.clone())
    if mechanism == "cda":
        rank = _checked_arrival_rank(arrival_rank, price)
        fills = _continuous_double_auction(price, bought, sold, rank, with_fills=True).fills
        # Agent i's order met agent j's either arriving (fills[i, j]) or resting
        # (fills[j, i]), never both; the resting order set the price.
        buyer_seller = bought[:, :, None] > 0
        buyer_seller = buyer_seller & (sold[:, None, :] > 0)
        quantity = torch.where(buyer_seller, fills + fills.transpose(1, 2), 0.0)
        pair_price = torch.where(fills > 0, price[:, None, :], price[:, :, None])
        pair_price = torch.where(quantity > 0, pair_price, 0.0)
        return BilateralTrades(quantity, pair_price, pair_price)
    volume_bought, volume_sold = bought.sum(1), sold.sum(1)
    if mechanism not in AUCTIONS:
        volume = 0.5 * (volume_bought + volume_sold)
        quantity = _safe_divide(bought[:, :, None] * sold[:, None, :], volume[:, None, None])
        pair_price = unit_price[:, None, None].expand_as(quantity)
        return BilateralTrades(quantity, pair_price, pair_price)

    bid = torch.where(bought > 0, price, -math.inf)
    ask = torch.where(sold > 0, price, math.inf)
    # Segment of each agent on the volume axis: [start, start + segment volume].
    buyer_start = torch.where(bid[:, None, :] > bid[:, :, None], bought[:, None, :], 0.0).sum(2)
    buyer_segment = torch.where(bid[:, None, :] == bid[:, :, None], bought[:, None, :], 0.0).sum(2)
    seller_start = torch.where(ask[:, None, :] < ask[:, :, None], sold[:, None, :], 0.0).sum(2)
    seller_segment = torch.where(ask[:, None, :] == ask[:, :, None], sold[:, None, :], 0.0).sum(2)
    overlap = (
        torch.minimum((buyer_start + buyer_segment)[:, :, None],
                      (seller_start + seller_segment)[:, None, :])
        - torch.maximum(buyer_start[:, :, None], seller_start[:, None, :])
    ).clamp(min=0.0)
    quantity = (overlap * _safe_divide(bought, buyer_segment)[:, :, None]
                * _safe_divide(sold, seller_segment)[:, None, :])
    if mechanism == "pay_as_bid":
        pair_price = (1.0 - k) * price[:, None, :] + k * price[:, :, None]
        pair_price = torch.where(quantity > 0, pair_price, 0.0)
        return BilateralTrades(quantity, pair_price, pair_price)
    buyer_price = unit_price[:, None, None].expand_as(quantity)
    if mechanism == "uniform":
        return BilateralTrades(quantity, buyer_price, buyer_price)
    revenue = (-p2p_payment.double()).clamp(min=0.0).sum(1)
    seller_unit = torch.where(operator_surplus.double() != 0,
                              _safe_divide(revenue, volume_sold), unit_price)
    return BilateralTrades(quantity, buyer_price, seller_unit[:, None, None].expand_as(quantity))
