"""Plot a day's voltage profile along the feeder.

    python -m envs.network_plots --config configs/env/default.yaml --day 172 \
        --out results/voltage_profile.png [key=value ...]

Steps one community through the day with every battery idle and every agent posting the tariff
midpoint (the profile then shows what PV and load alone do to the feeder), and draws (left) each
bus's voltage against its distance from the slack bus along the feeder at several hours, with
the allowed band, and (right) the day's lowest and highest bus voltage per step.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import envs
from envs.files import atomic_write


def voltage_day(config: str | dict | None, day: int, overrides: list[str] | None = None
                ) -> tuple[np.ndarray, np.ndarray, object]:
    """Bus voltages ``[96, n_bus]`` (p.u.) of ``day``, each bus's distance from the slack
    (km, ``[n_bus]``), and the core."""
    from envs.config import EnvConfig, build_config

    env_config = build_config(EnvConfig, config, overrides)
    if env_config.network.model == "none":
        raise ValueError("the voltage profile needs network.model zbus or ac")
    core = envs.make_batched_env(env_config, n_envs=1)
    core.reset(seed=env_config.seed, days=[day])
    power_flow = core.network
    actions = torch.zeros(1, core.n_agents, 2, dtype=core.dtype)
    actions[..., 1] = 0.5
    voltages = []
    for _ in range(96):
        index = core.time_index()
        _, _, _, _, info = core.step(actions)
        p_kw = info["net_energy_kwh"] / core.dt_h
        voltages.append(power_flow.solve(p_kw, core.load_kvar[index]).vm_pu[0].cpu().numpy())
    return np.stack(voltages), bus_distance_km(power_flow.net), core


def bus_distance_km(net) -> np.ndarray:
    """Each bus's distance from the external grid's bus along lines, km (transformers count
    as 0 km), in the order of ``net.bus.index``."""
    import pandapower.topology as top

    slack = int(net.ext_grid.bus.iloc[0])
    distance = top.calc_distance_to_bus(net, slack, weight="weight")
    return distance.reindex(net.bus.index).fillna(0.0).to_numpy()


def plot_voltage_profile(voltages: np.ndarray, distance_km: np.ndarray, v_min: float,
                         v_max: float, title: str, out: str | Path) -> Path:
    """Draw the profile figure into the PNG ``out`` (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(distance_km)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    hours = [0, 6, 9, 12, 15, 18, 21]
    colours = plt.cm.viridis(np.linspace(0, 1, len(hours)))
    for hour, colour in zip(hours, colours, strict=True):
        left.plot(distance_km[order], voltages[hour * 4][order], marker="o", ms=3,
                  color=colour, label=f"{hour:02d}:00")
    for axis in (left, right):
        axis.axhline(v_max, color="crimson", ls="--", lw=1)
        axis.axhline(v_min, color="crimson", ls="--", lw=1)
        axis.set_ylabel("voltage (p.u.)")
        axis.grid(alpha=0.3)
    left.set_xlabel("distance from the slack bus (km)")
    left.legend(fontsize=8, ncol=2)
    left.set_title("profile along the feeder")
    time = np.arange(96) / 4
    right.fill_between(time, np.nanmin(voltages, axis=1), np.nanmax(voltages, axis=1),
                       alpha=0.4, label="min-max over buses")
    right.set_xlabel("hour of day")
    right.set_title("range over the day")
    right.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    out = atomic_write(out, lambda file: fig.savefig(file, dpi=110, format="png"))
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Plot a day's voltage profile along the feeder")
    parser.add_argument("--config", default=None, help="env YAML (default: built-in defaults)")
    parser.add_argument("--day", type=int, default=172, help="day of the year, 0..365")
    parser.add_argument("--out", default="results/voltage_profile.png")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)
    voltages, distance, core = voltage_day(args.config, args.day, args.overrides)
    cfg = core.config
    path = plot_voltage_profile(voltages, distance, cfg.network.v_min, cfg.network.v_max,
                                f"{cfg.community.feeder}, day {args.day}, idle batteries",
                                args.out)
    print(f"lowest {np.nanmin(voltages):.4f} p.u., highest {np.nanmax(voltages):.4f} p.u.; "
          f"wrote {path}")


if __name__ == "__main__":
    main()
