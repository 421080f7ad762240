"""The names of a step's infos, shared by the core's wrappers, the numba engine and the tests.

The batched core (``envs.core.BatchedP2PEnv.step``) returns these keys as tensors (per agent
``[B, N]``, per community ``[B]``; the network ones only with a network model). The numba
engine (``envs.single.engine``) fills its info buffers in the order given here. The PettingZoo
wrapper gives every agent the same flat dict of :data:`INFO_KEYS` at ``reset()`` and at every
``step()``, all floats (NaN where undefined): the per-agent values of that agent and the
per-community values of its community.

Units: energies in kWh of the 15-minute step (> 0 bought, imported or charged), money in the
currency of the tariffs, prices in currency per kWh.

A measurement never shares its name with a setting: the lowest and highest bus voltage of a
step are ``v_min_pu`` and ``v_max_pu``, from ``envs.network.network_summary`` through the
infos to ``envs.metrics``, while ``network.v_min``/``v_max`` are the configured band.

Version history (:data:`SCHEMA_VERSION`):

* 1: the keys below, with the extreme voltages named ``v_min`` and ``v_max``.
* 2: ``v_min`` and ``v_max`` renamed ``v_min_pu`` and ``v_max_pu`` (same values, same place
  in :data:`INFO_KEYS`).
* 3: ``no_p2p_network_penalty`` added (per agent, last of :data:`AGENT_INFO`).
"""

from __future__ import annotations

SCHEMA_VERSION = 3
"""Version of the info keys (see the version history above)."""

AGENT_INFO: tuple[str, ...] = (
    "p2p_energy_kwh", "grid_energy_kwh", "payment", "p2p_payment", "grid_payment",
    "net_energy_kwh", "load_kwh", "pv_kwh", "battery_energy_kwh", "battery_cut_kwh",
    "soc_kwh", "degradation_cost", "network_penalty", "network_fee", "cost", "price",
    "terminal_value_cost", "no_p2p_network_penalty")
"""Per-agent info keys of a step, in the order of the numba engine's agent buffer rows.

``p2p_energy_kwh``, ``grid_energy_kwh``: energy bought (> 0) or sold (< 0) in the market and
with the grid, kWh; ``payment`` = ``p2p_payment`` + ``grid_payment``: what the agent pays in
the market and to the grid (< 0 when it earns); ``net_energy_kwh`` = load - PV + battery
charge, kWh; ``load_kwh``, ``pv_kwh``: kWh of the step; ``battery_energy_kwh``: AC energy into
the battery (< 0 discharged), kWh; ``battery_cut_kwh``: the part of the request beyond the
battery's limits, kWh; ``soc_kwh``: state of charge after the step, kWh;
``degradation_cost``, ``network_penalty`` (the agent's share of network penalties),
``network_fee`` (P2P network fees and loss charges): money; ``cost`` = payment + degradation +
penalty + fee + terminal value, money (the reward is ``-cost * reward_scale``, or for the
behavioural agents of ``behaviour`` its prospect value, ``envs.behaviour``); ``price``: the
posted price, currency per kWh; ``terminal_value_cost``: on the last step of an episode
``terminal_price * max(start - now, 0) - terminal_credit_price * max(now - start, 0)`` (SoC at
the episode's start and now, kWh), money (a charge for energy taken from the battery, a smaller
credit for energy added; 0 on every other step and with
``episode.terminal_value`` false); ``no_p2p_network_penalty``: the agent's share of the
network penalty the no-P2P operation (batteries idle, no market: net = load - PV) would pay
at this step, money, whatever the agents do (the core's precomputed table
``no_p2p_network_penalty``; 0 without a network model): ``envs.metrics`` adds it to the no-P2P
reference bill."""

ENV_INFO: tuple[str, ...] = (
    "network_fee_revenue", "clearing_price", "operator_surplus", "community_cost",
    "p2p_volume_kwh", "grid_import_kwh", "grid_export_kwh", "retail_price", "feed_in_price",
    "day", "step_of_day")
"""Per-community info keys of a step, in the order of the numba engine's env buffer.

``network_fee_revenue``: the network fees paid by all agents, money; ``clearing_price``:
currency per kWh, NaN when nothing traded; ``operator_surplus``: what the market operator
keeps (0 but for ``mcafee``), money; ``community_cost``: the sum of the agents' ``cost``;
``p2p_volume_kwh``, ``grid_import_kwh``, ``grid_export_kwh``: kWh (all >= 0);
``retail_price``, ``feed_in_price``: tariffs of the step, currency per kWh; ``day``: day of
the year of the step (0..365; it advances at midnight inside a multi-day episode,
``episode.length_days``); ``step_of_day``: index of the step just taken (0..95)."""

NETWORK_INFO: tuple[str, ...] = (
    "v_min_pu", "v_max_pu", "max_line_loading", "max_trafo_loading", "voltage_violations",
    "line_violations", "losses_kw", "network_converged")
"""Per-community network info keys, only with a network model (``network.model`` not none).

``v_min_pu``, ``v_max_pu``: the lowest and highest bus voltage of the step (isolated buses
ignored), p.u. (measurements; the allowed band is ``network.v_min``/``v_max``);
``max_line_loading``, ``max_trafo_loading``: %; ``voltage_violations``: buses outside the
voltage band;
``line_violations``: lines and transformers above their rating; ``losses_kw``: kW;
``network_converged``: 1.0 or 0.0 (the extremes and losses are NaN when 0.0)."""

ARRIVAL_RANK = "arrival_rank"
"""A per-agent info key only with ``market.mechanism: cda``, outside :data:`INFO_KEYS` (the
wrappers' flat infos do not carry it): each agent's place in the step's arrival order (int,
0 arrived first), the order the continuous double auction matched in; the trade ledger
(``envs.ledger``) replays the auction's fills from it."""

INFO_KEYS: tuple[str, ...] = AGENT_INFO + ENV_INFO + NETWORK_INFO
"""Keys of every agent's info dict in the PettingZoo env, at reset and at every step, in
this order; the network keys are NaN without a network model."""

DEFINED_AT_RESET: tuple[str, ...] = ("day", "step_of_day")
"""The keys with a value at ``reset()``: ``day`` and ``step_of_day`` = -1 (no step taken
yet); every other key is NaN there."""
