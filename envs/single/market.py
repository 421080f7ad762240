"""P2P market clearing of ``envs.market.clear`` for one environment, as numba kernels (float64).

:func:`clear_into` clears one market step of ``N`` agents into a preallocated ``[5, N]`` array;
:func:`clear_one` wraps it for tests and Python callers. Every rule (clamping into
``[feed_in, retail]``, the efficient double-auction allocation with pro-rata rationing at the
marginal price, the per-segment prices of ``pay_as_bid`` with tie groups merged, McAfee's (1992)
trade reduction with the grid as outside option, the mid-market rate and bill sharing of Long et
al. (2017), the supply-demand ratio of Liu et al. (2017), the continuous double auction of
Guerrero et al. (2019) in a given arrival order, NaN ``clearing_price`` where nothing traded) is
the one stated in the docstring of ``envs.market.clear``; each helper here names the
torch function it mirrors and performs the same float64 operations in the same order, except:

* full sums over agents (``Tensor.sum``) are sequential here, vectorised in torch: results
  differ by rounding, ~1e-16 of the traded volume;
* ties in the bid and ask sorts keep agent order, as in ``envs.market`` (both sort stably).
  The rules merge ties by value, so only at a knife edge, where a tie group's cumulative
  demand (or supply) equals the other side's volume up to rounding, can the last ulp of a sum
  decide whether the marginal price is that group's or the next one's.

Units: quantities in kWh (> 0 buys, < 0 sells), prices in currency/kWh, payments in currency.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from envs.market import MCAFEE_TOLERANCE, MECHANISMS

__all__ = ["MECHANISM_CODE", "OUTPUT_ROWS", "clear_into", "clear_one"]

MECHANISM_CODE: dict[str, int] = {name: code for code, name in enumerate(MECHANISMS)}
"""Integer code of each mechanism name of ``envs.market.MECHANISMS`` (its index there)."""

OUTPUT_ROWS: tuple[str, ...] = (
    "p2p_energy",
    "grid_energy",
    "payment",
    "p2p_payment",
    "grid_payment",
)
"""Rows of the ``out [5, N]`` array of :func:`clear_into` (fields of ``ClearingResult``)."""

_NONE = MECHANISM_CODE["none"]
_UNIFORM = MECHANISM_CODE["uniform"]
_PAY_AS_BID = MECHANISM_CODE["pay_as_bid"]
_MCAFEE = MECHANISM_CODE["mcafee"]
_MMR = MECHANISM_CODE["mmr"]
_SDR = MECHANISM_CODE["sdr"]
_CDA = MECHANISM_CODE["cda"]

_INSERTION_SORT_MAX = 32
"""Sorts of up to this many agents use an insertion sort (no allocation), longer a merge sort."""

# Rows of the float64 scratch array of ``clear_into`` ([rows, N]).
_PRICE, _DEMAND, _SUPPLY = 0, 1, 2
_SORTED_BID, _SORTED_ASK, _CUMULATIVE_DEMAND, _CUMULATIVE_SUPPLY = 3, 4, 5, 6
_N_PRICE_FREE_ROWS, _N_AUCTION_ROWS, _N_PAY_AS_BID_ROWS = 3, 7, 17  # pay_as_bid: 7-16 its own

# Rows of ``out`` hold the P2P outcome while a mechanism runs, then the final results.
_BOUGHT, _SOLD, _BUYER_COST, _SELLER_REVENUE = 0, 1, 3, 4


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


@njit(cache=True)
def _safe_divide(numerator, denominator):
    """Mirrors ``envs.market._safe_divide`` for scalars: ``numerator / denominator`` or 0."""
    if denominator > 0.0:
        return numerator / denominator
    return 0.0


@njit(cache=True)
def _clamp_unit(value):
    """``value`` clamped into ``[0, 1]`` (``Tensor.clamp(0.0, 1.0)``)."""
    return min(max(value, 0.0), 1.0)


@njit(cache=True)
def _stable_argsort(keys, order):
    """Write into ``order [N]`` (int64) the agent indices sorting ``keys [N]`` ascending.

    Stable: equal keys keep agent order, as ``envs.market``'s ``torch.sort(..., stable=True)``.
    """
    n_agents = keys.shape[0]
    if n_agents > _INSERTION_SORT_MAX:
        order[:] = np.argsort(keys, kind="mergesort")
        return
    for agent in range(n_agents):
        key = keys[agent]
        position = agent
        while position > 0 and keys[order[position - 1]] > key:
            order[position] = order[position - 1]
            position -= 1
        order[position] = agent


@njit(cache=True)
def _cumsum_into(values, cumulative):
    """Sequential cumulative sum of ``values [N]`` into ``cumulative [N]`` (as ``Tensor.cumsum``
    on CPU)."""
    total = 0.0
    for index in range(values.shape[0]):
        total += values[index]
        cumulative[index] = total


@njit(cache=True)
def _searchsorted_left(sorted_values, value):
    """Number of entries of the nondecreasing ``sorted_values`` below ``value``
    (``torch.searchsorted(..., right=False)``)."""
    low = 0
    high = sorted_values.shape[0]
    while low < high:
        middle = (low + high) // 2
        if sorted_values[middle] < value:
            low = middle + 1
        else:
            high = middle
    return low


@njit(cache=True)
def _pro_rata(demand, supply, bought, sold):
    """Mirrors ``envs.market._pro_rata``: split ``M = min(S, D)`` pro rata (Long et al. 2017).

    Writes ``bought [N]`` and ``sold [N]`` in kWh (they may alias ``demand`` and ``supply``) and
    returns the matched energy ``M`` in kWh.
    """
    total_demand = 0.0
    total_supply = 0.0
    for agent in range(demand.shape[0]):
        total_demand += demand[agent]
        total_supply += supply[agent]
    matched = min(total_demand, total_supply)
    buyer_share = _clamp_unit(_safe_divide(matched, total_demand))
    seller_share = _clamp_unit(_safe_divide(matched, total_supply))
    for agent in range(demand.shape[0]):
        bought[agent] = demand[agent] * buyer_share
        sold[agent] = supply[agent] * seller_share
    return matched


@njit(cache=True)
def _fill_with_marginal_rationing(offered, price, active, marginal_price, buyers, target_volume,
                                  accepted):
    """Mirrors ``envs.market._fill_with_marginal_rationing``.

    Agents with ``offered [N] > 0`` (kWh) are inside when their ``price`` [N] beats
    ``marginal_price`` (above it for ``buyers``, below it for sellers) and at the margin when
    equal; inside agents are filled, marginal ones share the rest of ``target_volume`` (kWh) pro
    rata. Nobody trades unless ``active``. Writes ``accepted [N]`` kWh.
    """
    n_agents = offered.shape[0]
    inside_volume = 0.0
    margin_volume = 0.0
    if active:
        for agent in range(n_agents):
            if offered[agent] > 0.0:
                if price[agent] == marginal_price:
                    margin_volume += offered[agent]
                elif (price[agent] > marginal_price) == buyers:
                    inside_volume += offered[agent]
    share = _clamp_unit(_safe_divide(target_volume - inside_volume, margin_volume))
    for agent in range(n_agents):
        if not active or offered[agent] <= 0.0:
            accepted[agent] = 0.0
        elif price[agent] == marginal_price:
            accepted[agent] = offered[agent] * share
        elif (price[agent] > marginal_price) == buyers:
            accepted[agent] = offered[agent]
        else:
            accepted[agent] = 0.0


# --------------------------------------------------------------------------------------------
# Double auctions
# --------------------------------------------------------------------------------------------


@njit(cache=True)
def _efficient_allocation(scratch, orders, bought, sold):
    """Mirrors ``envs.market._efficient_allocation``.

    Reads the clamped prices, demand and supply rows of ``scratch``; writes the sorted bids
    (descending, -inf for non-buyers) and asks (ascending, +inf for non-sellers), their
    cumulative demand and supply (kWh), the agent orders ``orders[0]`` (buyers) and
    ``orders[1]`` (sellers), and ``bought [N]``, ``sold [N]`` in kWh.

    Returns ``(volume, marginal_bid, marginal_ask)``: kWh traded, lowest accepted bid and
    highest accepted ask (currency/kWh).
    """
    price = scratch[_PRICE]
    demand = scratch[_DEMAND]
    supply = scratch[_SUPPLY]
    sorted_bid = scratch[_SORTED_BID]
    sorted_ask = scratch[_SORTED_ASK]
    cumulative_demand = scratch[_CUMULATIVE_DEMAND]
    cumulative_supply = scratch[_CUMULATIVE_SUPPLY]
    buyer_order = orders[0]
    seller_order = orders[1]
    n_agents = price.shape[0]

    # Sort keys: bids descending as negated bids ascending (exact), both stable.
    for agent in range(n_agents):
        sorted_bid[agent] = -price[agent] if demand[agent] > 0.0 else math.inf
        sorted_ask[agent] = price[agent] if supply[agent] > 0.0 else math.inf
    _stable_argsort(sorted_bid, buyer_order)
    _stable_argsort(sorted_ask, seller_order)
    demand_total = 0.0
    supply_total = 0.0
    for position in range(n_agents):
        buyer = buyer_order[position]
        seller = seller_order[position]
        sorted_bid[position] = price[buyer] if demand[buyer] > 0.0 else -math.inf
        sorted_ask[position] = price[seller] if supply[seller] > 0.0 else math.inf
        demand_total += demand[buyer]
        supply_total += supply[seller]
        cumulative_demand[position] = demand_total
        cumulative_supply[position] = supply_total

    # Q = max_j min(D_j, S(b_j)); S(b) is the supply of the asks <= b. Bids descend, so the
    # number of such asks only shrinks along j.
    volume = -math.inf
    n_asks_below_bid = n_agents
    for position in range(n_agents):
        bid = sorted_bid[position]
        while n_asks_below_bid > 0 and sorted_ask[n_asks_below_bid - 1] > bid:
            n_asks_below_bid -= 1
        supply_below_bid = 0.0
        if n_asks_below_bid > 0:
            supply_below_bid = cumulative_supply[n_asks_below_bid - 1]
        volume = max(volume, min(cumulative_demand[position], supply_below_bid))
    traded = volume > 0.0

    marginal_buyer = min(_searchsorted_left(cumulative_demand, volume), n_agents - 1)
    marginal_seller = min(_searchsorted_left(cumulative_supply, volume), n_agents - 1)
    marginal_bid = sorted_bid[marginal_buyer]
    marginal_ask = sorted_ask[marginal_seller]
    _fill_with_marginal_rationing(demand, price, traded, marginal_bid, True, volume, bought)
    _fill_with_marginal_rationing(supply, price, traded, marginal_ask, False, volume, sold)
    return volume, marginal_bid, marginal_ask


@njit(cache=True)
def _settle(out, buyer_price, seller_price):
    """Buyers pay ``buyer_price`` and sellers receive ``seller_price`` (currency/kWh) for the
    P2P energy in ``out``'s bought and sold rows."""
    for agent in range(out.shape[1]):
        out[_BUYER_COST, agent] = out[_BOUGHT, agent] * buyer_price
        out[_SELLER_REVENUE, agent] = out[_SOLD, agent] * seller_price


@njit(cache=True)
def _uniform(scratch, orders, k, out):
    """Mirrors ``envs.market._uniform``: everyone trades at ``a_m + k (b_m - a_m)``.

    Returns ``(clearing_price, operator_surplus)``.
    """
    bought = out[_BOUGHT]
    sold = out[_SOLD]
    volume, bid, ask = _efficient_allocation(scratch, orders, bought, sold)
    unit_price = ask + k * (bid - ask) if volume > 0.0 else 0.0
    _settle(out, unit_price, unit_price)
    clearing_price = unit_price if volume > 0.0 else math.nan
    return clearing_price, 0.0


@njit(cache=True)
def _step_curve_integral(unit_price, cumulative_volume, cumulative_value, point, segment):
    """Mirrors ``envs.market._step_curve_integral`` at one ``point`` (kWh).

    The step curve has segment prices ``unit_price [N]`` (currency/kWh), cumulative lengths
    ``cumulative_volume [N]`` (kWh) and running integral ``cumulative_value [N]`` (currency);
    beyond the end the last segment's price is extrapolated. ``segment`` is a starting guess
    for ``searchsorted(cumulative_volume, point)`` (any value in ``[0, N]``; the search walks
    from it, so nearby successive points are cheap).

    Returns ``(integral in currency, the searchsorted position)``.
    """
    n_segments = unit_price.shape[0]
    while segment < n_segments and cumulative_volume[segment] < point:
        segment += 1
    while segment > 0 and cumulative_volume[segment - 1] >= point:
        segment -= 1
    clamped = min(segment, n_segments - 1)
    volume_before = 0.0
    value_before = 0.0
    if clamped > 0:
        volume_before = cumulative_volume[clamped - 1]
        value_before = cumulative_value[clamped - 1]
    return value_before + unit_price[clamped] * (point - volume_before), segment


@njit(cache=True)
def _mean_counterpart_price(own_sorted_price, own_volume, own_cumulative, other_unit_price,
                            other_cumulative_volume, other_cumulative_value, mean_price):
    """Mirrors ``mean_counterpart_price`` inside ``envs.market._pay_as_bid``.

    For each tie group of ``own_sorted_price [N]`` (runs of equal values, as
    ``envs.market._tie_group_bounds``) spanning ``[low, high]`` kWh on the volume axis, writes
    into ``mean_price [N]`` the other side's mean price over that interval (currency/kWh), 0 for
    an empty interval.
    """
    n_agents = own_sorted_price.shape[0]
    segment = 0
    first = 0
    while first < n_agents:
        last = first
        while last + 1 < n_agents and own_sorted_price[last + 1] == own_sorted_price[last]:
            last += 1
        group_low = own_cumulative[first] - own_volume[first]
        group_high = own_cumulative[last]
        group_mean = 0.0
        if group_high - group_low > 0.0:  # _safe_divide's zero otherwise
            value_high, segment = _step_curve_integral(
                other_unit_price, other_cumulative_volume, other_cumulative_value, group_high,
                segment,
            )
            value_low, segment = _step_curve_integral(
                other_unit_price, other_cumulative_volume, other_cumulative_value, group_low,
                segment,
            )
            group_mean = (value_high - value_low) / (group_high - group_low)
        for position in range(first, last + 1):
            mean_price[position] = group_mean
        first = last + 1


@njit(cache=True)
def _pay_as_bid(scratch, orders, k, out):
    """Mirrors ``envs.market._pay_as_bid``: discriminatory k-double auction (Lin, Pipattanasomporn
    & Rahman 2019), each overlap of a buyer and a seller segment at its own k-price.

    Returns ``(clearing_price, operator_surplus)``.
    """
    bought = out[_BOUGHT]
    sold = out[_SOLD]
    volume, _, _ = _efficient_allocation(scratch, orders, bought, sold)
    sorted_bid = scratch[_SORTED_BID]
    sorted_ask = scratch[_SORTED_ASK]
    bought_sorted = scratch[7]
    sold_sorted = scratch[8]
    accepted_bid = scratch[9]
    accepted_ask = scratch[10]
    cumulative_bought = scratch[11]
    cumulative_sold = scratch[12]
    cumulative_bid_value = scratch[13]
    cumulative_ask_value = scratch[14]
    mean_ask = scratch[15]
    mean_bid = scratch[16]
    buyer_order = orders[0]
    seller_order = orders[1]
    n_agents = bought.shape[0]

    bid_value_total = 0.0
    ask_value_total = 0.0
    for position in range(n_agents):
        bought_sorted[position] = bought[buyer_order[position]]
        sold_sorted[position] = sold[seller_order[position]]
        accepted_bid[position] = sorted_bid[position] if bought_sorted[position] > 0.0 else 0.0
        accepted_ask[position] = sorted_ask[position] if sold_sorted[position] > 0.0 else 0.0
        bid_value_total += accepted_bid[position] * bought_sorted[position]
        ask_value_total += accepted_ask[position] * sold_sorted[position]
        cumulative_bid_value[position] = bid_value_total
        cumulative_ask_value[position] = ask_value_total
    _cumsum_into(bought_sorted, cumulative_bought)
    _cumsum_into(sold_sorted, cumulative_sold)

    _mean_counterpart_price(sorted_bid, bought_sorted, cumulative_bought, accepted_ask,
                            cumulative_sold, cumulative_ask_value, mean_ask)
    _mean_counterpart_price(sorted_ask, sold_sorted, cumulative_sold, accepted_bid,
                            cumulative_bought, cumulative_bid_value, mean_bid)
    total_cost = 0.0
    total_bought = 0.0
    for position in range(n_agents):
        buyer = buyer_order[position]
        seller = seller_order[position]
        out[_BUYER_COST, buyer] = bought_sorted[position] * (
            k * accepted_bid[position] + (1.0 - k) * mean_ask[position]
        )
        out[_SELLER_REVENUE, seller] = sold_sorted[position] * (
            (1.0 - k) * accepted_ask[position] + k * mean_bid[position]
        )
    for agent in range(n_agents):
        total_cost += out[_BUYER_COST, agent]
        total_bought += bought[agent]
    clearing_price = _safe_divide(total_cost, total_bought) if volume > 0.0 else math.nan
    return clearing_price, 0.0


@njit(cache=True)
def _mcafee(scratch, orders, retail, feed_in, out):
    """Mirrors ``envs.market._mcafee``: McAfee (1992) trade reduction at the agent level, the
    grid (buying at ``feed_in``, selling at ``retail``) as outside option.

    Returns ``(clearing_price, operator_surplus)``.
    """
    bought = out[_BOUGHT]
    sold = out[_SOLD]
    volume, lowest_bid, highest_ask = _efficient_allocation(scratch, orders, bought, sold)
    price = scratch[_PRICE]
    demand = scratch[_DEMAND]
    supply = scratch[_SUPPLY]
    n_agents = price.shape[0]

    # Agents priced strictly outside the marginal levels are the ones that get nothing.
    excluded_bid = -math.inf
    excluded_ask = math.inf
    for agent in range(n_agents):
        if demand[agent] > 0.0 and price[agent] < lowest_bid:
            excluded_bid = max(excluded_bid, price[agent])
        if supply[agent] > 0.0 and price[agent] > highest_ask:
            excluded_ask = min(excluded_ask, price[agent])
    first_excluded_bid = max(excluded_bid, feed_in)
    first_excluded_ask = min(excluded_ask, retail)
    midpoint = 0.5 * (first_excluded_bid + first_excluded_ask)
    tolerance = MCAFEE_TOLERANCE * max(abs(retail), abs(feed_in), 1.0)
    efficient = (volume > 0.0 and highest_ask <= midpoint + tolerance
                 and midpoint <= lowest_bid + tolerance)
    candidate_price = min(max(midpoint, highest_ask), lowest_bid)

    buyer_price = 0.0
    seller_price = 0.0
    surplus = 0.0
    if efficient:
        buyer_price = candidate_price
        seller_price = candidate_price
    else:
        # Trade reduction: drop the marginal price levels on both sides.
        for agent in range(n_agents):
            kept_buyer = demand[agent] > 0.0 and price[agent] > lowest_bid
            kept_seller = supply[agent] > 0.0 and price[agent] < highest_ask
            bought[agent] = demand[agent] if kept_buyer else 0.0
            sold[agent] = supply[agent] if kept_seller else 0.0
        reduced_volume = _pro_rata(bought, sold, bought, sold)
        if volume > 0.0 and reduced_volume > 0.0:
            buyer_price = lowest_bid
            seller_price = highest_ask
            surplus = (lowest_bid - highest_ask) * reduced_volume
        else:
            bought[:] = 0.0
            sold[:] = 0.0

    _settle(out, buyer_price, seller_price)
    total_bought = 0.0
    for agent in range(n_agents):
        total_bought += bought[agent]
    clearing_price = buyer_price if total_bought > 0.0 else math.nan
    return clearing_price, surplus


@njit(cache=True)
def _continuous_double_auction(scratch, arrival_rank, out):
    """Mirrors ``envs.market._continuous_double_auction`` (Guerrero, Chapman & Verbic 2019):
    the orders arrive in the order ``arrival_rank [N]`` (int64, each agent's place); each
    takes the crossing resting orders of the other side in book order (price, then arrival),
    at their prices, and its rest rests.

    Returns ``(clearing_price, operator_surplus)``.
    """
    n_agents = scratch.shape[1]
    price, demand, supply = scratch[_PRICE], scratch[_DEMAND], scratch[_SUPPLY]
    arrival_order = np.empty(n_agents, dtype=np.int64)
    for agent in range(n_agents):
        arrival_order[arrival_rank[agent]] = agent
    signed_price = np.empty(n_agents)
    for arrival in range(n_agents):
        agent = arrival_order[arrival]
        signed_price[arrival] = price[agent] if supply[agent] > 0.0 else -price[agent]
    book_arrival = np.empty(n_agents, dtype=np.int64)  # arrival place of each book entry
    _stable_argsort(signed_price, book_arrival)
    book_order = np.empty(n_agents, dtype=np.int64)
    book_position = np.empty(n_agents, dtype=np.int64)
    remaining = np.empty(n_agents)
    traded = np.zeros(n_agents)
    money = np.zeros(n_agents)
    for position in range(n_agents):
        agent = arrival_order[book_arrival[position]]
        book_order[position] = agent
        book_position[book_arrival[position]] = position
        remaining[position] = demand[agent] + supply[agent]
    for arrival in range(n_agents):
        incoming = book_position[arrival]
        incoming_agent = book_order[incoming]
        incoming_price = price[incoming_agent]
        incoming_quantity = remaining[incoming]
        incoming_buys = demand[incoming_agent] > 0.0
        cumulative, filled, value_sum = 0.0, 0.0, 0.0
        for position in range(n_agents):
            other = book_order[position]
            if incoming_buys:
                crosses = supply[other] > 0.0 and price[other] <= incoming_price
            else:
                crosses = demand[other] > 0.0 and price[other] >= incoming_price
            available = remaining[position] if crosses and book_arrival[position] < arrival \
                else 0.0
            cumulative += available
            ahead = cumulative - available
            fill = min(available, max(incoming_quantity - ahead, 0.0))
            value = fill * price[other]
            remaining[position] -= fill
            traded[position] += fill
            money[position] += value
            filled += fill
            value_sum += value
        remaining[incoming] = max(incoming_quantity - filled, 0.0)
        traded[incoming] += filled
        money[incoming] += value_sum
    volume, cost = 0.0, 0.0
    for position in range(n_agents):
        agent = book_order[position]
        buys, sells = demand[agent] > 0.0, supply[agent] > 0.0
        out[_BOUGHT, agent] = traded[position] if buys else 0.0
        out[_SOLD, agent] = traded[position] if sells else 0.0
        out[_BUYER_COST, agent] = money[position] if buys else 0.0
        out[_SELLER_REVENUE, agent] = money[position] if sells else 0.0
    for agent in range(n_agents):
        volume += out[_BOUGHT, agent]
        cost += out[_BUYER_COST, agent]
    if volume > 0.0:
        return _safe_divide(cost, volume), 0.0
    return math.nan, 0.0


# --------------------------------------------------------------------------------------------
# Price-free sharing mechanisms
# --------------------------------------------------------------------------------------------


@njit(cache=True)
def _no_trade(out):
    """Mirrors ``envs.market._no_trade``: every agent settles with the grid.

    Returns ``(clearing_price, operator_surplus)`` = ``(nan, 0)``.
    """
    out[_BOUGHT, :] = 0.0
    out[_SOLD, :] = 0.0
    out[_BUYER_COST, :] = 0.0
    out[_SELLER_REVENUE, :] = 0.0
    return math.nan, 0.0


@njit(cache=True)
def _shared_at_price(scratch, unit_price, out):
    """Mirrors ``envs.market._shared_at_price``: ``min(S, D)`` split pro rata, traded at one
    ``unit_price`` (currency/kWh).

    Returns ``(clearing_price, operator_surplus)``.
    """
    bought = out[_BOUGHT]
    sold = out[_SOLD]
    matched = _pro_rata(scratch[_DEMAND], scratch[_SUPPLY], bought, sold)
    _settle(out, unit_price, unit_price)
    clearing_price = unit_price if matched > 0.0 else math.nan
    return clearing_price, 0.0


@njit(cache=True)
def _mid_market_rate(scratch, retail, feed_in, out):
    """Mirrors ``envs.market._mid_market_rate`` (Long et al. 2017): matched energy at
    ``(r + f) / 2``. Returns ``(clearing_price, operator_surplus)``."""
    return _shared_at_price(scratch, 0.5 * (retail + feed_in), out)


@njit(cache=True)
def _supply_demand_ratio(scratch, retail, feed_in, out):
    """Mirrors ``envs.market._supply_demand_ratio`` (Liu et al. 2017, IEEE Trans. Power Systems
    32(5)): the P2P price is ``r f / ((r - f) SDR + f)`` for ``SDR = S / D < 1``, else ``f``
    (currency/kWh). Returns ``(clearing_price, operator_surplus)``."""
    demand = scratch[_DEMAND]
    supply = scratch[_SUPPLY]
    total_demand = 0.0
    total_supply = 0.0
    for agent in range(demand.shape[0]):
        total_demand += demand[agent]
        total_supply += supply[agent]
    ratio = _safe_divide(total_supply, total_demand)
    denominator = (retail - feed_in) * ratio + feed_in
    shortage_price = retail * feed_in / denominator if denominator > 0.0 else feed_in
    selling_price = shortage_price if ratio < 1.0 else feed_in
    return _shared_at_price(scratch, selling_price, out)


@njit(cache=True)
def _bill_sharing(scratch, out):
    """Mirrors ``envs.market._bill_sharing`` (Long et al. 2017; Zhou et al. 2018): shared energy
    is free, each agent's remainder settles with the grid. Returns
    ``(clearing_price, operator_surplus)``."""
    return _shared_at_price(scratch, 0.0, out)


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


@njit(cache=True)
def clear_into(code, price, quantity, retail, feed_in, k, arrival_rank, out):
    """Clear one P2P market step of one environment; mirrors ``envs.market.clear``.

    Args:
        code: mechanism, ``MECHANISM_CODE[name]``.
        price: ``[N]`` float64 bids/asks in currency/kWh (clamped into ``[feed_in, retail]``
            here; the array itself is not modified).
        quantity: ``[N]`` float64 net positions in kWh, > 0 buys, < 0 sells.
        retail: grid import price ``r`` in currency/kWh.
        feed_in: grid export price ``f <= r`` in currency/kWh (``>= 0`` for ``sdr``).
        k: bid weight of the k-double auctions, in ``[0, 1]``.
        arrival_rank: ``[N]`` int64, each agent's place in the arrival order, a permutation
            of ``0..N-1`` (``cda`` only; any int64 array for the others).
        out: ``[5, N]`` float64, overwritten with the rows of :data:`OUTPUT_ROWS`: P2P and grid
            energy (kWh), total, P2P and grid payment (currency), as in ``ClearingResult``.

    Returns:
        ``(clearing_price, operator_surplus)``: currency/kWh (NaN where nothing traded) and
        currency.

    Nothing is validated here: the caller guarantees finite inputs, ``N >= 1``, matching
    lengths, a known ``code`` and the tariff and ``k`` ranges of ``envs.market.clear``.
    """
    n_agents = price.shape[0]
    if code == _PAY_AS_BID:
        n_rows = _N_PAY_AS_BID_ROWS
    elif code == _UNIFORM or code == _MCAFEE:
        n_rows = _N_AUCTION_ROWS
    else:
        n_rows = _N_PRICE_FREE_ROWS  # cda too: price, demand, supply
    scratch = np.empty((n_rows, n_agents))
    for agent in range(n_agents):
        scratch[_PRICE, agent] = min(max(price[agent], feed_in), retail)
        scratch[_DEMAND, agent] = quantity[agent] if quantity[agent] > 0.0 else 0.0
        scratch[_SUPPLY, agent] = -quantity[agent] if quantity[agent] < 0.0 else 0.0

    if code == _NONE:
        clearing_price, surplus = _no_trade(out)
    elif code == _UNIFORM or code == _PAY_AS_BID or code == _MCAFEE:
        orders = np.empty((2, n_agents), dtype=np.int64)
        if code == _UNIFORM:
            clearing_price, surplus = _uniform(scratch, orders, k, out)
        elif code == _PAY_AS_BID:
            clearing_price, surplus = _pay_as_bid(scratch, orders, k, out)
        else:
            clearing_price, surplus = _mcafee(scratch, orders, retail, feed_in, out)
    elif code == _MMR:
        clearing_price, surplus = _mid_market_rate(scratch, retail, feed_in, out)
    elif code == _SDR:
        clearing_price, surplus = _supply_demand_ratio(scratch, retail, feed_in, out)
    elif code == _CDA:
        clearing_price, surplus = _continuous_double_auction(scratch, arrival_rank, out)
    else:
        clearing_price, surplus = _bill_sharing(scratch, out)

    # Grid settlement of each agent's remainder, as at the end of ``envs.market.clear``.
    for agent in range(n_agents):
        p2p_energy = out[_BOUGHT, agent] - out[_SOLD, agent]
        grid_energy = quantity[agent] - p2p_energy
        p2p_payment = out[_BUYER_COST, agent] - out[_SELLER_REVENUE, agent]
        grid_payment = retail * max(grid_energy, 0.0) - feed_in * max(-grid_energy, 0.0)
        out[0, agent] = p2p_energy
        out[1, agent] = grid_energy
        out[2, agent] = p2p_payment + grid_payment
        out[3, agent] = p2p_payment
        out[4, agent] = grid_payment
    return clearing_price, surplus


def clear_one(
    mechanism: str,
    price: np.ndarray,
    quantity: np.ndarray,
    retail: float,
    feed_in: float,
    k: float = 0.5,
    arrival_rank: np.ndarray | None = None,
) -> dict[str, np.ndarray | float]:
    """Clear one environment's market step with :func:`clear_into`, for tests and Python callers.

    Args:
        mechanism: one of ``envs.market.MECHANISMS``.
        price: ``[N]`` bids/asks in currency/kWh (array-like).
        quantity: ``[N]`` net positions in kWh, > 0 buys, < 0 sells (array-like).
        retail: grid import price in currency/kWh.
        feed_in: grid export price in currency/kWh.
        k: bid weight of the k-double auctions, in ``[0, 1]``.
        arrival_rank: ``[N]`` each agent's place in the arrival order (``cda`` only).

    Returns:
        The fields of ``envs.market.ClearingResult`` for one environment: ``[N]`` float64
        arrays for :data:`OUTPUT_ROWS`, floats ``clearing_price`` (currency/kWh, NaN where
        nothing traded) and ``operator_surplus`` (currency).

    Raises:
        ValueError: unknown mechanism; ``price`` and ``quantity`` not 1-D of one length
            ``N >= 1``; ``cda`` without an ``arrival_rank`` that is a permutation of
            ``0..N-1``. Values are not checked (``envs.market.clear`` does that).
    """
    if mechanism not in MECHANISM_CODE:
        raise ValueError(f"unknown market mechanism {mechanism!r}; expected one of {MECHANISMS}")
    price_array = np.ascontiguousarray(price, dtype=np.float64)
    quantity_array = np.ascontiguousarray(quantity, dtype=np.float64)
    if price_array.ndim != 1 or price_array.shape != quantity_array.shape or price_array.size == 0:
        raise ValueError(
            f"price and quantity must be 1-D of one length N >= 1, got shapes "
            f"{price_array.shape} and {quantity_array.shape}"
        )
    n_agents = price_array.shape[0]
    if mechanism == "cda":
        rank = np.asarray(arrival_rank if arrival_rank is not None else [], dtype=np.int64)
        if rank.shape != (n_agents,) or not np.array_equal(np.sort(rank), np.arange(n_agents)):
            raise ValueError(f"mechanism 'cda' needs arrival_rank, a permutation of "
                             f"0..{n_agents - 1}, got {arrival_rank!r}")
    else:
        rank = np.zeros(n_agents, dtype=np.int64)
    out = np.empty((len(OUTPUT_ROWS), n_agents))
    clearing_price, operator_surplus = clear_into(
        MECHANISM_CODE[mechanism], price_array, quantity_array, float(retail), float(feed_in),
        float(k), rank, out,
    )
    result: dict[str, np.ndarray | float] = dict(zip(OUTPUT_ROWS, out, strict=True))
    result["clearing_price"] = float(clearing_price)
    result["operator_surplus"] = float(operator_surplus)
    return result
