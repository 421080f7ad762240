"""Community data (envs/data.py): real SimBench feeders, case33bw, synthetic, cache, assets."""

from __future__ import annotations

import time

import numpy as np
import pytest

from envs.config import CommunityConfig
from envs.data import (
    STEPS_PER_YEAR,
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
    rebuilt = load_feeder("synthetic", n_agents=3, seed=1)
    np.testing.assert_array_equal(first.load_kw, rebuilt.load_kw)


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
