"""Community data: real SimBench feeders and profiles, pandapower's case33bw, and a synthetic
community; cached in a compact file on first use.

A feeder's data are the arrays the environment needs for a whole year of 15-minute steps
(SimBench's 2016: 366 days x 96 = 35,136 steps) and the pandapower net for the network model:

- ``load_kw [T, N]``: each agent's active load, kW (SimBench's absolute load profiles);
- ``load_kvar [T, N]``: each agent's reactive load, kvar;
- ``pv_kw_per_kwp [T, N]``: the PV profile assigned to each agent, kW per kWp installed;
- ``net_json``: the pandapower net as JSON (the feeder's own generators are set out of
  service: every agent's PV is part of its net position).

One agent per load of the pandapower net (agent i is ``net.load`` row i). Loading a SimBench
grid takes seconds, so the arrays and the net are cached under :func:`cache_dir` (a user cache
folder, rebuilt with a warning when damaged or stale: see :func:`load_feeder`) and read back
in milliseconds; files are written atomically (``envs.files``).

Who owns PV and a battery is drawn per config (:func:`build_assets`), seeded, and sized from
each agent's annual consumption; this is cheap and never cached.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from envs.config import DAYS_PER_YEAR, CommunityConfig
from envs.files import atomic_write_bytes

STEPS_PER_DAY = 96
STEP_HOURS = 0.25
STEPS_PER_YEAR = STEPS_PER_DAY * DAYS_PER_YEAR
START_WEEKDAY = 4
"""2016-01-01, the first day of SimBench's profiles, was a Friday (Monday = 0)."""

CACHE_VERSION = 1
SYNTHETIC_DEFAULT_AGENTS = 10


class CacheWarning(UserWarning):
    """A data cache file was damaged or stale (and is rebuilt) or could not be written."""


# Household and commercial SimBench profiles given to case33bw's loads, in turn.
CASE33BW_LOAD_PROFILES = ("H0-A", "H0-B", "G1-A", "H0-C", "G4-A", "H0-G", "G0-A", "H0-L")
PV_PROFILES_DEFAULT = ("PV5", "PV6", "PV8")


def cache_dir() -> Path:
    """The folder of derived-data caches: ``$PEERGRID_CACHE``, else
    ``$XDG_CACHE_HOME/peergrid``, else ``~/.cache/peergrid``."""
    if os.environ.get("PEERGRID_CACHE"):
        return Path(os.environ["PEERGRID_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "peergrid"


@dataclass(frozen=True)
class FeederData:
    """A year of per-agent profiles of one feeder and its pandapower net (see module doc)."""

    name: str
    load_kw: np.ndarray
    load_kvar: np.ndarray
    pv_kw_per_kwp: np.ndarray
    agent_names: tuple[str, ...]
    net_json: str | None

    @property
    def n_agents(self) -> int:
        return self.load_kw.shape[1]

    @property
    def annual_kwh(self) -> np.ndarray:
        """Each agent's consumption over the year, kWh, shape [N]."""
        return self.load_kw.sum(axis=0) * STEP_HOURS

    def net(self):
        """A fresh pandapower net of the feeder (None for a community without one): a copy of
        the net parsed once per process (parsing takes 0.3 s, a copy 0.01 s; a run builds one
        for its training and one for its evaluation environments)."""
        if self.net_json is None:
            return None
        return copy.deepcopy(_parsed_net(self.net_json))


@functools.lru_cache(maxsize=8)
def _parsed_net(net_json: str):
    import pandapower as pp

    return pp.from_json_string(net_json)


def _cache_path(name: str, n_agents: int | None, seed: int) -> Path:
    key = name if name != "synthetic" else f"synthetic-n{n_agents}-s{seed}"
    return cache_dir() / f"{key}.v{CACHE_VERSION}.npz"


def _save(path: Path, data: FeederData) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        load_kw=data.load_kw,
        load_kvar=data.load_kvar,
        pv_kw_per_kwp=data.pv_kw_per_kwp,
        meta=np.frombuffer(json.dumps({
            "name": data.name,
            "agent_names": list(data.agent_names),
            "net_json": data.net_json,
        }).encode(), dtype=np.uint8),
    )
    atomic_write_bytes(path, buffer.getvalue())


class CacheError(ValueError):
    """A cache file holds something other than what :func:`_save` writes."""


_PROFILE_ARRAYS = ("load_kw", "load_kvar", "pv_kw_per_kwp")


def _load(path: Path, name: str, n_agents: int | None) -> FeederData:
    """Read and validate a cache file written by :func:`_save` for feeder ``name`` (and
    ``n_agents`` of the synthetic community). Raises :class:`CacheError` when an array's
    shape, dtype or values or the metadata are not what the loader expects; a damaged file
    raises whatever ``np.load`` or the decompressor raises."""
    with path.open("rb") as handle, np.load(handle, allow_pickle=False) as archive:
        missing = sorted({*_PROFILE_ARRAYS, "meta"} - set(archive.files))
        if missing:
            raise CacheError(f"missing arrays {missing}")
        meta_bytes = archive["meta"]
        arrays = {key: archive[key] for key in _PROFILE_ARRAYS}
    if meta_bytes.dtype != np.uint8 or meta_bytes.ndim != 1:
        raise CacheError(f"meta has dtype {meta_bytes.dtype} and shape {meta_bytes.shape}, "
                         f"expected uint8 bytes")
    meta = json.loads(meta_bytes.tobytes().decode())
    if not isinstance(meta, dict) or meta.get("name") != name:
        raise CacheError(f"metadata is not that of feeder {name!r}")
    agent_names, net_json = meta.get("agent_names"), meta.get("net_json")
    if not (isinstance(agent_names, list) and agent_names
            and all(isinstance(agent, str) for agent in agent_names)):
        raise CacheError("agent_names is not a non-empty list of names")
    if not (net_json is None or isinstance(net_json, str)):
        raise CacheError("net_json is neither a string nor null")
    expected_agents = len(agent_names) if n_agents is None else n_agents
    for key, array in arrays.items():
        if array.shape != (STEPS_PER_YEAR, expected_agents) or array.dtype != np.float32:
            raise CacheError(f"{key} has shape {array.shape} and dtype {array.dtype}, expected "
                             f"({STEPS_PER_YEAR}, {expected_agents}) float32")
        if not np.isfinite(array).all():
            raise CacheError(f"{key} holds non-finite values")
    if len(agent_names) != expected_agents:
        raise CacheError(f"{len(agent_names)} agent names for {expected_agents} agents")
    return FeederData(name=name, agent_names=tuple(agent_names), net_json=net_json, **arrays)


def load_feeder(name: str, *, n_agents: int | None = None, seed: int = 0,
                use_cache: bool = True) -> FeederData:
    """The year of profiles and the net of feeder ``name`` (see ``envs.config.FEEDERS``).

    ``n_agents`` and ``seed`` shape the ``synthetic`` community only. The result is cached under
    :func:`cache_dir`. A missing cache file is built; one that cannot be read (truncated,
    damaged, empty) or holds arrays of the wrong shape or dtype or non-finite values is rebuilt
    (offline, from SimBench's bundled data or the synthetic generator) with a warning naming
    it. A cache that cannot be written (read-only folder, full disk) is skipped with a
    warning; the data are returned all the same.
    """
    from envs.config import FEEDERS

    if name not in FEEDERS:
        raise ValueError(f"unknown feeder {name!r}; allowed: {', '.join(FEEDERS)}")
    if name == "synthetic":
        n_agents = SYNTHETIC_DEFAULT_AGENTS if n_agents is None else n_agents
    elif n_agents is not None:
        raise ValueError(f"n_agents is set only for the synthetic community, got {n_agents} "
                         f"for feeder {name!r}")
    path = _cache_path(name, n_agents, seed)
    if use_cache and path.is_file():
        try:
            return _load(path, name, n_agents)
        except Exception as error:  # any failure to read a cache file: rebuild it
            reason = f"{type(error).__name__}: {error}"
            warnings.warn(f"data cache file '{path}' is damaged or stale ({reason}); "
                          f"rebuilding it", CacheWarning, stacklevel=2)
    if name == "synthetic":
        data = synthetic_feeder(n_agents, seed=seed)
    elif name == "case33bw":
        data = _case33bw_feeder()
    else:
        data = _simbench_feeder(name)
    if use_cache:
        try:
            _save(path, data)
        except OSError as error:
            warnings.warn(f"data cache file '{path}' could not be written ({error}); "
                          f"continuing without a cache", CacheWarning, stacklevel=2)
    return data


def _disable_own_generation(net) -> None:
    """Take the feeder's generators and storages out of service: agents own all PV."""
    for table in ("sgen", "gen", "storage"):
        if len(net[table]):
            net[table]["in_service"] = False


def _simbench_pv_profiles() -> dict[str, np.ndarray]:
    import simbench as sb

    renewables = sb.get_all_simbench_profiles(0)["renewables"]
    return {name: renewables[name].to_numpy(np.float32) for name in renewables.columns
            if name.startswith("PV")}


def _simbench_feeder(code: str) -> FeederData:
    """One agent per SimBench load, with its absolute load profile, and the PV profile of the
    feeder's own PV plants (cycled over agents)."""
    import pandapower as pp
    import simbench as sb

    net = sb.get_simbench_net(code)
    absolute = sb.get_absolute_values(net, profiles_instead_of_study_cases=True)
    load_kw = absolute[("load", "p_mw")].to_numpy(np.float32) * 1000.0
    load_kvar = absolute[("load", "q_mvar")].to_numpy(np.float32) * 1000.0
    pv_names = sorted(set(net.sgen.profile[net.sgen.profile.str.startswith("PV")])) or list(
        PV_PROFILES_DEFAULT)
    pv = _simbench_pv_profiles()
    n = load_kw.shape[1]
    pv_kw_per_kwp = np.stack([pv[pv_names[i % len(pv_names)]] for i in range(n)], axis=1)
    _disable_own_generation(net)
    del net["profiles"]
    return FeederData(code, load_kw, load_kvar, pv_kw_per_kwp,
                      tuple(str(x) for x in net.load.name), pp.to_json(net))


def _case33bw_feeder() -> FeederData:
    """pandapower's case33bw (Baran & Wu 1989) with SimBench household and commercial load
    profiles scaled so that each load's yearly peak equals its case value, reactive power at
    the case's power factor."""
    import pandapower as pp
    import pandapower.networks as pn
    import simbench as sb

    net = pn.case33bw()
    loads = sb.get_all_simbench_profiles(0)["load"]
    n = len(net.load)
    names = [CASE33BW_LOAD_PROFILES[i % len(CASE33BW_LOAD_PROFILES)] for i in range(n)]
    shape = np.stack([loads[f"{name}_pload"].to_numpy(np.float32) for name in names], axis=1)
    shape = shape / shape.max(axis=0, keepdims=True)
    peak_kw = net.load.p_mw.to_numpy(np.float32) * 1000.0
    q_over_p = (net.load.q_mvar / net.load.p_mw).to_numpy(np.float32)
    load_kw = shape * peak_kw
    pv = _simbench_pv_profiles()
    pv_kw_per_kwp = np.stack([pv[PV_PROFILES_DEFAULT[i % 3]] for i in range(n)], axis=1)
    _disable_own_generation(net)
    return FeederData("case33bw", load_kw, load_kw * q_over_p, pv_kw_per_kwp,
                      tuple(f"load_{i}_bus_{b}" for i, b in enumerate(net.load.bus)),
                      pp.to_json(net))


def synthetic_feeder(n_agents: int, *, seed: int = 0) -> FeederData:
    """A seeded synthetic community of ``n_agents`` households on a small radial LV feeder.

    Load: a daily shape with morning and evening peaks, more in winter, times a per-agent
    annual consumption drawn log-normally around 3,500 kWh, with 15-minute noise. PV: a
    clear-sky shape (a sine between sunrise and sunset, day length and height following the
    season at 50 deg N) times a daily clearness drawn per day (shared by the community) and a
    small per-agent factor. Reactive load at power factor 0.97. The net is a 20/0.4 kV
    transformer feeding two cables of NAYY 4x150 with one bus per agent.
    """
    rng = np.random.default_rng(seed)
    day = np.arange(DAYS_PER_YEAR)
    hour = (np.arange(STEPS_PER_DAY) + 0.5) * STEP_HOURS
    season = np.cos(2 * np.pi * (day - 172) / 365.0)  # +1 at midsummer, -1 at midwinter
    base = (0.35 + 0.25 * np.exp(-((hour - 7.5) ** 2) / 2.0)
            + 0.55 * np.exp(-((hour - 19.0) ** 2) / 4.0))
    daily = (1.0 - 0.15 * season)[:, None, None] * base[None, :, None]
    annual_kwh = rng.lognormal(np.log(3500.0), 0.35, size=n_agents)
    noise = rng.lognormal(0.0, 0.25, size=(DAYS_PER_YEAR, STEPS_PER_DAY, n_agents))
    load = (daily * noise).reshape(STEPS_PER_YEAR, n_agents)
    load_kw = load / (load.sum(axis=0) * STEP_HOURS) * annual_kwh

    day_length = 12.2 + 4.2 * season
    sunrise = 12.5 - day_length / 2
    height = 0.45 + 0.35 * season
    x = (hour[None, :] - sunrise[:, None]) / day_length[:, None]
    clear_sky = np.where((x > 0) & (x < 1), np.sin(np.pi * np.clip(x, 0, 1)) ** 1.3, 0.0)
    clear_sky *= height[:, None]
    clearness = rng.beta(4.0, 2.0, size=DAYS_PER_YEAR)
    pv = clear_sky * clearness[:, None]
    agent_factor = rng.uniform(0.9, 1.05, size=n_agents)
    pv_kw_per_kwp = pv.reshape(STEPS_PER_YEAR, 1) * agent_factor[None, :]

    load_kw = load_kw.astype(np.float32)
    load_kvar = (load_kw * np.tan(np.arccos(0.97))).astype(np.float32)
    return FeederData("synthetic", load_kw, load_kvar, pv_kw_per_kwp.astype(np.float32),
                      tuple(f"house_{i}" for i in range(n_agents)), _synthetic_net(n_agents))


def _synthetic_net(n_agents: int) -> str:
    import pandapower as pp

    net = pp.create_empty_network(name="peergrid synthetic feeder")
    mv = pp.create_bus(net, vn_kv=20.0, name="MV")
    lv = pp.create_bus(net, vn_kv=0.4, name="LV busbar")
    pp.create_ext_grid(net, mv, vm_pu=1.02)
    pp.create_transformer(net, mv, lv, std_type="0.4 MVA 20/0.4 kV")
    last = [lv, lv]
    for i in range(n_agents):
        branch = i % 2
        bus = pp.create_bus(net, vn_kv=0.4, name=f"house_{i}")
        pp.create_line(net, last[branch], bus, length_km=0.03, std_type="NAYY 4x150 SE")
        last[branch] = bus
        pp.create_load(net, bus, p_mw=0.0, q_mvar=0.0, name=f"house_{i}")
    return pp.to_json(net)


@dataclass(frozen=True)
class Assets:
    """Each agent's PV and battery, drawn from the community config.

    Shapes [N]: ``pv_kwp`` (kWp, 0 = none), ``battery_kwh`` (capacity, 0 = none),
    ``battery_kw`` (charge and discharge power limit, kW).
    """

    pv_kwp: np.ndarray
    battery_kwh: np.ndarray
    battery_kw: np.ndarray


def build_assets(data: FeederData, config: CommunityConfig) -> Assets:
    """Draw who has PV and a battery (seeded by ``config.seed``) and size them from each
    agent's annual consumption (kWp = pv_kwp_per_mwh * MWh/yr; kWh likewise, kW = C-rate *
    kWh)."""
    n = data.n_agents
    rng = np.random.default_rng(_stable_seed("assets", config.seed))
    annual_mwh = data.annual_kwh / 1000.0
    has_pv = np.zeros(n, dtype=bool)
    has_pv[rng.permutation(n)[: round(config.pv_share * n)]] = True
    has_battery = np.zeros(n, dtype=bool)
    has_battery[rng.permutation(n)[: round(config.battery_share * n)]] = True
    pv_kwp = np.where(has_pv, config.pv_kwp_per_mwh * annual_mwh, 0.0)
    battery_kwh = np.where(has_battery, config.battery_kwh_per_mwh * annual_mwh, 0.0)
    return Assets(pv_kwp.astype(np.float32), battery_kwh.astype(np.float32),
                  (battery_kwh * config.battery_c_rate).astype(np.float32))


def _stable_seed(*parts: object) -> int:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def day_split(test_every: int) -> tuple[np.ndarray, np.ndarray]:
    """(train days, test days) of the year: day d is a test day when
    d % test_every == test_every - 1 (no test days when test_every == 0)."""
    days = np.arange(DAYS_PER_YEAR)
    if test_every == 0:
        return days, days[:0]
    is_test = days % test_every == test_every - 1
    return days[~is_test], days[is_test]
