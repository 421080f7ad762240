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
voltage (optional)     own bus voltage of the last step, (V - 1 p.u.) * 10
rule_battery           the battery fraction in [-1, 1] (> 0 charges) that the rule
(optional)             ``observation.rule`` (``self_consumption`` or ``time_of_use``,
                       ``envs.rules``) takes on this step, from the true load, PV and
                       SoC (never noisy); always the last feature
=====================  ===========================================================

Load, PV and forecasts carry multiplicative Gaussian noise when ``forecast_noise`` > 0.

Global state ``[B, 3 N + 7]`` for centralised critics: every agent's (true) load, PV and
SoC fraction, then time of day (2), day of week (2), retail, feed-in and last price.
"""

from __future__ import annotations

from envs.config import ObservationConfig


def feature_names(config: ObservationConfig) -> list[str]:
    """Names of the local observation's features, in order."""
    names = ["load", "pv"]
    for step in range(1, config.forecast_steps + 1):
        names += [f"load_t+{step}", f"pv_t+{step}"]
    names += ["soc", "pv_size", "battery_size", "tod_sin", "tod_cos", "dow_sin", "dow_cos",
              "retail", "feed_in", "last_price"]
    if config.include_voltage:
        names.append("voltage")
    if config.rule != "none":
        names.append("rule_battery")
    return names


def obs_dim(config: ObservationConfig) -> int:
    """Length of each agent's local observation."""
    return len(feature_names(config))


def state_dim(n_agents: int) -> int:
    """Length of the global state."""
    return 3 * n_agents + 7
