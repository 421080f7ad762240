"""Observation and global-state layouts of the batched core.

Local observation of agent i, float32 ``[B, N, obs_dim]``, in this order:

=====================  ===========================================================
feature                meaning (normalised)
=====================  ===========================================================
load                   own load of the step being traded, kW / own peak load
pv                     own PV of that step, kW / own peak load
forecast (2 x k)       own load and PV of the next k steps (``forecast_steps``)
soc                    state of charge / capacity (0 without a battery)
pv_size                installed kWp / own peak load
battery_size           capacity kWh / own peak load
time of day (2)        sin, cos of 2 pi (step of day) / 96
day of week (2)        sin, cos of 2 pi weekday / 7
retail, feed_in        this step's tariffs / highest retail price of the day
last_price             last clearing price / highest retail (tariff midpoint when no
                       trade happened)
community (optional,   ``observation.community``: the community's net load (load - PV
k + 2)                 summed over the homes, kW) of the step being traded and of the next
                       k forecast steps / the sum of the homes' peak loads, then the
                       community's SoC (stored kWh / capacity kWh over all homes, 0 without
                       batteries); true values, the same for every agent
voltage (optional)     own bus voltage of the last step, (V - 1 p.u.) * 10
rule_battery           the battery fraction in [-1, 1] (> 0 charges) that the rule
(optional)             ``observation.rule`` (``self_consumption`` or ``time_of_use``,
                       ``envs.rules``) takes on this step, from the true load, PV and
                       SoC (never noisy); always the last feature
=====================  ===========================================================

Load, PV and forecasts carry multiplicative Gaussian noise when ``forecast_noise`` > 0.

Global state ``[B, 3 N + 7]`` for centralised critics: every agent's (true) load, PV and
SoC fraction, then the 7 :data:`SHARED_FEATURES`: time of day (2), day of week (2), retail,
feed-in and last price.

This module is the one definition of both layouts: the batched core (``envs.core``) and the
numba engine (``envs.single.engine``) place every feature at the columns given here
(:func:`layout`, the ``SHARED_*`` indices), and ``feature_names`` is built from the same
tuples.
"""

from __future__ import annotations

from typing import NamedTuple

from envs.config import ObservationConfig

PROFILE_FEATURES: tuple[str, ...] = ("load", "pv")
"""The pair observed for the step being traded and for each forecast step ``s``, at columns
``len(PROFILE_FEATURES) * s + c`` (``s = 0`` now, ``c`` the index here)."""
AGENT_FEATURES: tuple[str, ...] = ("soc", "pv_size", "battery_size")
"""The agent's own features after the profile block."""
SHARED_FEATURES: tuple[str, ...] = ("tod_sin", "tod_cos", "dow_sin", "dow_cos", "retail",
                                    "feed_in", "last_price")
"""The community's features, the same for every agent, after :data:`AGENT_FEATURES` (and
last in the global state)."""
STEP_TABLE_FEATURES: tuple[str, ...] = ("tod_sin", "tod_cos", "retail", "feed_in")
"""The columns of the core's ``step_table [96, 4]`` (``envs.core.CoreTables``): the shared
features that depend on the step of the day only."""
WEEKDAY_TABLE_FEATURES: tuple[str, ...] = ("dow_sin", "dow_cos")
"""The columns of the core's ``weekday_table [7, 2]``."""

N_PROFILE_FEATURES = len(PROFILE_FEATURES)
N_SHARED_FEATURES = len(SHARED_FEATURES)
SHARED_FROM_STEP_TABLE: tuple[int, ...] = tuple(SHARED_FEATURES.index(name)
                                                for name in STEP_TABLE_FEATURES)
"""Index in :data:`SHARED_FEATURES` of each column of the step table."""
SHARED_FROM_WEEKDAY_TABLE: tuple[int, ...] = tuple(SHARED_FEATURES.index(name)
                                                   for name in WEEKDAY_TABLE_FEATURES)
"""Index in :data:`SHARED_FEATURES` of each column of the weekday table."""
SHARED_LAST_PRICE = SHARED_FEATURES.index("last_price")
"""Index of the last clearing price in :data:`SHARED_FEATURES`."""
COMMUNITY_NET = "community_net"
"""Name of the community's net load feature (``_t+s`` appended for forecast step ``s``)."""
COMMUNITY_SOC = "community_soc"
"""Name of the community's SoC feature, after the net loads."""


class ObservationLayout(NamedTuple):
    """Columns of the local observation of one config (-1: the feature is absent)."""

    soc: int
    pv_size: int
    battery_size: int
    shared: int
    """First of the :data:`N_SHARED_FEATURES` shared features."""
    community: int
    """First of the ``forecast_steps + 2`` community features (net loads, then SoC)."""
    voltage: int
    rule_battery: int
    obs_dim: int


def feature_names(config: ObservationConfig) -> list[str]:
    """Names of the local observation's features, in order."""
    names = list(PROFILE_FEATURES)
    for step in range(1, config.forecast_steps + 1):
        names += [f"{name}_t+{step}" for name in PROFILE_FEATURES]
    names += [*AGENT_FEATURES, *SHARED_FEATURES]
    if config.community:
        names.append(COMMUNITY_NET)
        names += [f"{COMMUNITY_NET}_t+{step}" for step in range(1, config.forecast_steps + 1)]
        names.append(COMMUNITY_SOC)
    if config.include_voltage:
        names.append("voltage")
    if config.rule != "none":
        names.append("rule_battery")
    return names


def layout(config: ObservationConfig) -> ObservationLayout:
    """The columns of :func:`feature_names`' features."""
    names = feature_names(config)

    def column(name: str) -> int:
        return names.index(name) if name in names else -1

    return ObservationLayout(
        soc=column("soc"), pv_size=column("pv_size"), battery_size=column("battery_size"),
        shared=column(SHARED_FEATURES[0]), community=column(COMMUNITY_NET),
        voltage=column("voltage"),
        rule_battery=column("rule_battery"), obs_dim=len(names))


def obs_dim(config: ObservationConfig) -> int:
    """Length of each agent's local observation."""
    return len(feature_names(config))


def state_dim(n_agents: int) -> int:
    """Length of the global state: load, PV and SoC fraction of every agent, then the shared
    features."""
    return 3 * n_agents + N_SHARED_FEATURES
