"""Community data (envs/data.py): real SimBench feeders, case33bw, synthetic, cache, assets."""

from __future__ import annotations

import errno
import re
import time
import warnings
from dataclasses import replace

import numpy as np
import pytest

import envs.data as data_module
from envs.config import CommunityConfig
from envs.data import (
    CACHE_VERSION,
    STEPS_PER_YEAR,
    CacheWarning,
    FeederData,
    _save,
    build_assets,
    cache_dir,
    day_split,
    load_feeder,
    synthetic_feeder,
)

FEEDER_AGENTS = {"1-LV-rural1--0-sw": 13, "1-LV-semiurb4--0-sw": 41, "1-LV-urban6--0-sw": 111,
                 "case33bw": 32}


@pytest.mark.parametrize(("name", "n_agents"), FEEDER_AGENTS.items())
def test_real_feeders_have_a_year_of_profiles(name, n_agents):
    data = load_feeder(name)
    assert data.load_kw.shape == data.pv_kw_per_kwp.shape == (STEPS_PER_YEAR, n_agents)
    assert np.isfinite(data.load_kw).all() and (data.load_kw >= 0).all()
    assert (data.pv_kw_per_kwp >= 0).all() and 0.4 < data.pv_kw_per_kwp.max() <= 1.0
    # PV produces nothing at midnight and something at noon in June.
    june = 170 * 96
    assert data.pv_kw_per_kwp[june, 0] == 0.0 and data.pv_kw_per_kwp[june + 48, 0] > 0.0
    net = data.net()
    assert len(net.load) == n_agents
    assert not net.sgen.in_service.any()  # agents own all PV


@pytest.mark.slow
def test_rural1_matches_simbench_absolute_profiles():
    import simbench as sb

    data = load_feeder("1-LV-rural1--0-sw")
    net = sb.get_simbench_net("1-LV-rural1--0-sw")
    absolute = sb.get_absolute_values(net, profiles_instead_of_study_cases=True)
    np.testing.assert_allclose(data.load_kw, absolute[("load", "p_mw")].to_numpy() * 1000,
                               rtol=1e-6)
    # Annual consumption of the first load (an agricultural L2-A profile): 17.94 MWh.
    assert data.annual_kwh[0] == pytest.approx(17940, rel=1e-3)


def test_cache_is_fast_and_rebuilt_when_corrupt(tmp_path, monkeypatch):
    monkeypatch.setenv("PEERGRID_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    first = load_feeder("synthetic", n_agents=3, seed=1)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1
    start = time.perf_counter()
    again = load_feeder("synthetic", n_agents=3, seed=1)
    assert time.perf_counter() - start < 1.0
    np.testing.assert_array_equal(first.load_kw, again.load_kw)
    files[0].write_bytes(b"not a zip file")
    with pytest.warns(CacheWarning, match="rebuilding"):
        rebuilt = load_feeder("synthetic", n_agents=3, seed=1)
    np.testing.assert_array_equal(first.load_kw, rebuilt.load_kw)


def _flip_byte(payload: bytes) -> bytes:
    damaged = bytearray(payload)
    damaged[len(damaged) // 3] ^= 0xFF  # inside the compressed profiles
    return bytes(damaged)


def _with_nan(array: np.ndarray) -> np.ndarray:
    array = array.copy()
    array[1234, 1] = np.nan
    return array


@pytest.mark.parametrize("damage", [
    lambda payload, data: payload[: len(payload) // 2],  # partial copy, full disk
    lambda payload, data: _flip_byte(payload),
    lambda payload, data: b"",
    lambda payload, data: replace(data, load_kw=data.load_kw[:1000]),  # stale shape
    lambda payload, data: replace(data, pv_kw_per_kwp=data.pv_kw_per_kwp[:, :2]),
    lambda payload, data: replace(data, load_kvar=data.load_kvar.astype(np.float64)),
    lambda payload, data: replace(data, load_kw=_with_nan(data.load_kw)),
    lambda payload, data: replace(data, pv_kw_per_kwp=np.full_like(data.pv_kw_per_kwp, np.inf)),
    lambda payload, data: replace(data, agent_names=("house_0",)),
    lambda payload, data: replace(data, name="1-LV-rural1--0-sw"),
], ids=["truncated", "byte-flipped", "empty", "short-year", "too-few-agents", "float64", "nan",
        "inf", "agent-names", "other-feeder"])
def test_damaged_or_stale_cache_is_rebuilt_with_a_warning(tmp_path, monkeypatch, damage):
    monkeypatch.setenv("PEERGRID_CACHE", str(tmp_path))
    good = load_feeder("synthetic", n_agents=3, seed=1)
    (path,) = tmp_path.glob("*.npz")
    damaged = damage(path.read_bytes(), good)
    if isinstance(damaged, FeederData):
        _save(path, damaged)
    else:
        path.write_bytes(damaged)
    with pytest.warns(CacheWarning, match=re.escape(f"'{path}'")):
        rebuilt = load_feeder("synthetic", n_agents=3, seed=1)
    for key in ("load_kw", "load_kvar", "pv_kw_per_kwp"):
        np.testing.assert_array_equal(getattr(rebuilt, key), getattr(good, key))
    assert rebuilt.agent_names == good.agent_names
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt file is read back without a warning
        again = load_feeder("synthetic", n_agents=3, seed=1)
    np.testing.assert_array_equal(again.load_kw, good.load_kw)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left


@pytest.mark.slow
def test_truncated_simbench_cache_is_rebuilt_offline(tmp_path, monkeypatch):
    """The reported fault: ``truncate -s 1000000`` of a SimBench feeder's cache, then
    ``make_env`` (here its data loader) failed with BadZipFile until the file was deleted."""
    monkeypatch.setenv("PEERGRID_CACHE", str(tmp_path))
    name = "1-LV-rural1--0-sw"
    good = load_feeder(name, use_cache=False)
    path = tmp_path / f"{name}.v{CACHE_VERSION}.npz"
    _save(path, good)
    with path.open("r+b") as handle:
        handle.truncate(1_000_000)
    with pytest.warns(CacheWarning, match=r"BadZipFile.*rebuilding"):
        rebuilt = load_feeder(name)
    np.testing.assert_array_equal(rebuilt.load_kw, good.load_kw)
    assert rebuilt.net_json == good.net_json
    assert path.stat().st_size > 1_000_000


def test_unwritable_cache_warns_and_returns_the_data(tmp_path, monkeypatch):
    monkeypatch.setenv("PEERGRID_CACHE", str(tmp_path))

    def disk_full(path, payload):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(data_module, "atomic_write_bytes", disk_full)
    with pytest.warns(CacheWarning, match="could not be written.*No space left"):
        data = load_feeder("synthetic", n_agents=2, seed=0)
    assert data.load_kw.shape == (STEPS_PER_YEAR, 2)
    assert not any(tmp_path.iterdir())


def test_synthetic_is_seeded_and_sized():
    a, b, c = synthetic_feeder(4, seed=0), synthetic_feeder(4, seed=0), synthetic_feeder(4, seed=1)
    np.testing.assert_array_equal(a.load_kw, b.load_kw)
    assert not np.array_equal(a.load_kw, c.load_kw)
    assert 1500 < a.annual_kwh.mean() < 7000
    summer, winter = 172 * 96, 355 * 96
    assert a.pv_kw_per_kwp[summer:summer + 96].sum() > 2 * a.pv_kw_per_kwp[winter:winter + 96].sum()
    assert a.net().load.shape[0] == 4


def test_assets_follow_penetration_and_consumption():
    data = load_feeder("1-LV-rural1--0-sw")
    config = CommunityConfig(pv_share=0.5, battery_share=0.25, pv_kwp_per_mwh=2.0,
                             battery_kwh_per_mwh=1.5, battery_c_rate=0.4, seed=3)
    assets = build_assets(data, config)
    assert (assets.pv_kwp > 0).sum() == round(0.5 * 13)
    assert (assets.battery_kwh > 0).sum() == round(0.25 * 13)
    has = assets.pv_kwp > 0
    np.testing.assert_allclose(assets.pv_kwp[has], 2.0 * data.annual_kwh[has] / 1000, rtol=1e-5)
    np.testing.assert_allclose(assets.battery_kw, 0.4 * assets.battery_kwh, rtol=1e-6)
    again = build_assets(data, config)
    np.testing.assert_array_equal(assets.pv_kwp, again.pv_kwp)


def test_day_split():
    train, test = day_split(7)
    assert len(train) + len(test) == 366 and set(train).isdisjoint(test)
    assert test[:3].tolist() == [6, 13, 20]
    assert len(day_split(0)[1]) == 0


def test_unknown_feeder_and_misplaced_n_agents():
    with pytest.raises(ValueError, match="unknown feeder 'mars'"):
        load_feeder("mars")
    with pytest.raises(ValueError, match="n_agents is set only for the synthetic"):
        load_feeder("case33bw", n_agents=3)


def test_each_net_is_a_fresh_copy_of_the_feeder():
    """FeederData.net parses the feeder's JSON once per process and hands out copies: a net
    changed by one user (a battery load added, a result table written) leaves the next one
    equal to the parsed JSON."""
    import pandapower as pp

    data = load_feeder("1-LV-rural1--0-sw")
    first = data.net()
    first.load.loc[first.load.index[0], "p_mw"] += 1.0
    pp.create_load(first, bus=int(first.bus.index[0]), p_mw=0.5)
    second = data.net()
    parsed = pp.from_json_string(data.net_json)
    assert len(second.load) == len(parsed.load) == len(first.load) - 1
    assert second.load.equals(parsed.load) and second.line.equals(parsed.line)
    assert second is not data.net()
