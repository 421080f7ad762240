"""Shared community storage (``storage``, ``envs.storage``): hand-computed virtual-account
steps, the battery's physics, energy and money balances in the core under both modes and
several mechanisms, the battery at its bus in the power flow (against pandapower), the
operator agent in the PettingZoo env, state round trips, and every bad input."""

from __future__ import annotations

import math

import numpy as np
import pandapower as pp
import pytest
import torch

from envs import make_batched_env, make_env
from envs.config import ConfigError, StorageConfig, env_config
from envs.core import STATE_KEYS, STORAGE_STATE_KEYS, BatchedP2PEnv
from envs.data import load_feeder
from envs.network import run_ac
from envs.storage import BATTERY_AGENT, OPERATOR_FEATURES, SharedStorage, storage_bus

SYNTHETIC = {"community.feeder": "synthetic", "community.n_agents": 6,
             "network.model": "none", "compile": False}


def shared(**overrides) -> SharedStorage:
    config = StorageConfig(**{"mode": "virtual", **overrides})
    return SharedStorage(config, ("a", "b"), torch.device("cpu"), torch.float64)


def t(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# -------------------------------------------------------------------------------------------
# Hand-computed virtual steps
# -------------------------------------------------------------------------------------------


def test_virtual_step_by_hand() -> None:
    """a has 3 kWh surplus and an empty account, b a 2 kWh deficit and 1 kWh in its account:
    a stores 3, b draws 1; the battery's net is +2 kWh into the cells, bought at AC as
    2 / 0.95 (the loss 2 / 0.95 - 2 from the grid); positions become 0 and 1."""
    battery = shared(subscription_kwh=5.0)
    flows = battery.virtual_step(t([-3.0, 2.0]), t(10.0 + 1.0), t([0.0, 1.0]),
                                 torch.tensor([40]), torch.tensor([False]), t(0.08))
    assert flows.stored_kwh.tolist() == [[3.0, 0.0]]
    assert flows.drawn_kwh.tolist() == [[0.0, 1.0]]
    assert flows.position_kwh.tolist() == [[0.0, 1.0]]
    assert flows.account_kwh.tolist() == [[3.0, 0.0]]
    assert flows.soc_kwh.item() == pytest.approx(13.0)
    assert flows.energy_kwh.item() == pytest.approx(2.0 / 0.95)
    assert flows.grid_kwh.item() == pytest.approx(2.0 / 0.95 - 2.0)
    assert flows.loss_kwh.item() == pytest.approx(2.0 / 0.95 * 0.05)
    # throughput allocation: a moved 3 kWh, b 1 kWh
    throughput = shared(subscription_kwh=5.0, cost_allocation="throughput")
    share = throughput.allocate(t(4.0), flows)
    assert share.tolist() == [[3.0, 1.0]]
    assert battery.allocate(t(4.0), flows).tolist() == [[2.0, 2.0]]


def test_virtual_step_limits_and_window() -> None:
    """Accounts cap storing; the power limit scales every store by one factor; outside
    draw_hours nothing is drawn; a settlement pays the balance at the leftover price."""
    battery = shared(subscription_kwh=[4.0, 10.0], power_kw=8.0, draw_hours=[15.0, 24.0])
    floor = 10.0
    # 4 - 1 = 3 kWh room for a, 10 for b; both offer 6: stores 3 and 6 = 9 > 8 * 0.25 * 0.95
    flows = battery.virtual_step(t([-6.0, -6.0]), t(floor + 1.0), t([1.0, 0.0]),
                                 torch.tensor([0]), torch.tensor([False]), t(0.08))
    limit = 8.0 * 0.25 * 0.95
    assert flows.stored_kwh.sum().item() == pytest.approx(limit)
    assert (flows.stored_kwh[0, 0] / flows.stored_kwh[0, 1]).item() == pytest.approx(0.5)
    assert flows.energy_kwh.item() == pytest.approx(8.0 * 0.25)
    # 10:00 is outside [15, 24): a deficit is not covered from the account
    flows = battery.virtual_step(t([2.0, 0.0]), t(floor + 1.0), t([1.0, 0.0]),
                                 torch.tensor([40]), torch.tensor([True]), t(0.1))
    assert flows.drawn_kwh.sum().item() == 0.0
    assert flows.payout.tolist() == [[pytest.approx(0.1), 0.0]]
    assert flows.account_kwh.tolist() == [[0.0, 0.0]]
    # 16:00: drawn, at most the balance
    flows = battery.virtual_step(t([2.0, 0.0]), t(floor + 1.0), t([1.0, 0.0]),
                                 torch.tensor([64]), torch.tensor([False]), t(0.1))
    assert flows.drawn_kwh.tolist() == [[1.0, 0.0]]
    assert flows.energy_kwh.item() == pytest.approx(-1.0 * 0.95)
    assert flows.grid_kwh.item() == pytest.approx(1.0 - 0.95)


def test_virtual_pool_is_released_and_sold() -> None:
    """Energy the operator owns (cells above floor + balances) is released as fast as the
    power limit allows and exported (negative grid exchange)."""
    battery = shared(power_kw=4.0)
    flows = battery.virtual_step(t([0.0, 0.0]), t(10.0 + 5.0), t([0.0, 0.0]),
                                 torch.tensor([0]), torch.tensor([False]), t(0.08))
    released = 4.0 * 0.25 / 0.95
    assert flows.soc_kwh.item() == pytest.approx(15.0 - released)
    assert flows.energy_kwh.item() == pytest.approx(-1.0)
    assert flows.grid_kwh.item() == pytest.approx(-1.0)


# -------------------------------------------------------------------------------------------
# The core: invariants over random actions
# -------------------------------------------------------------------------------------------


def run_random(overrides: dict, steps: int = 96 * 2, n_envs: int = 4, seed: int = 0):
    env = make_batched_env(None, n_envs=n_envs, **{**SYNTHETIC, **overrides})
    env.reset(seed=seed)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        action = torch.rand(n_envs, env.n_agents, 2, generator=generator)
        action[..., 0] = action[..., 0] * 2 - 1
        soc_before = env.storage_soc_kwh.clone()
        accounts_before = env.storage_account_kwh.clone()
        _, reward, _, _, info = env.step(action)
        yield env, soc_before, accounts_before, reward, info


@pytest.mark.parametrize("mode,mechanism", [
    ("virtual", "uniform"), ("virtual", "mmr"), ("market", "uniform"),
    ("market", "pay_as_bid"), ("market", "cda"), ("market", "bill_sharing")])
def test_core_balances(mode: str, mechanism: str) -> None:
    """Energy: the community's grid exchange equals the members' physical net plus the
    battery's AC flow. Money: the battery's bill is split exactly; members' costs sum to
    the community's. Physics: power and SoC limits; virtual accounts within [0, size] and
    the cells holding floor + balances + the operator's pool."""
    config = StorageConfig(mode=mode)
    floor, ceiling = config.soc_min * config.capacity_kwh, config.soc_max * config.capacity_kwh
    step_kwh = config.power_kw * 0.25
    moved = 0.0
    for _env, soc_before, _accounts, reward, info in run_random(
            {"storage.mode": mode, "market.mechanism": mechanism,
             "storage.draw_hours": [12.0, 24.0]}):
        physical = info["load_kwh"] - info["pv_kwh"] + info["battery_energy_kwh"]
        grid = info["grid_import_kwh"] - info["grid_export_kwh"]
        q = info["storage_energy_kwh"]
        torch.testing.assert_close(grid, physical.sum(1) + q, atol=2e-4, rtol=0)
        torch.testing.assert_close(info["storage_cost_share"].sum(1), info["storage_cost"],
                                   atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(info["cost"].sum(1), info["community_cost"], atol=1e-4,
                                   rtol=1e-5)
        torch.testing.assert_close(reward, -info["cost"])
        assert bool((q.abs() <= step_kwh + 1e-5).all())
        soc = info["storage_soc_kwh"]
        assert bool(((soc >= floor - 1e-4) & (soc <= ceiling + 1e-4)).all())
        if mode == "market":
            cells = 0.95 * q.clamp_min(0) - (-q).clamp_min(0) / 0.95
            torch.testing.assert_close(soc - soc_before, cells, atol=1e-4, rtol=0)
            assert float(info["storage_stored_kwh"].abs().sum()) == 0.0
            # the battery's P2P trades are the counterpart of the members'
            torch.testing.assert_close(info["p2p_energy_kwh"].sum(1) + info["storage_p2p_kwh"],
                                       torch.zeros_like(q), atol=1e-4, rtol=0)
        else:
            accounts = info["storage_account_kwh"]
            assert bool((accounts >= -1e-6).all() and (accounts <= 8.0 + 1e-4).all())
            pool = soc - floor - accounts.sum(1)
            assert bool((pool >= -1e-3).all())
            stored, drawn = info["storage_stored_kwh"], info["storage_drawn_kwh"]
            surplus = (-physical).clamp_min(0)
            deficit = physical.clamp_min(0)
            assert bool((stored <= surplus + 1e-5).all() and (drawn <= deficit + 1e-5).all())
            hour = info["step_of_day"] / 4
            assert float(drawn[hour < 12].abs().sum()) == 0.0
            torch.testing.assert_close(info["net_energy_kwh"], physical + stored - drawn,
                                       atol=1e-5, rtol=0)
            moved += float((stored + drawn).sum())
            payout = info["storage_payout"]
            last = info["step_of_day"] == 95
            assert float(payout[~last].abs().sum()) == 0.0
            assert float(accounts[last].abs().sum()) == 0.0
    if mode == "virtual":
        assert moved > 1.0  # the accounts were used


def test_virtual_storage_lowers_the_self_consumption_bill() -> None:
    """A community of PV homes without home batteries, each storing its midday surplus in a
    virtual account and drawing it in the evening, pays less than without the battery when
    the feed-in price is far below retail (for the same no-op policy), over 8 summer days."""
    overrides = {**SYNTHETIC, "community.battery_share": 0.0, "community.pv_share": 1.0,
                 "market.mechanism": "none", "storage.capacity_kwh": 60.0,
                 "storage.power_kw": 30.0, "storage.subscription_kwh": 8.0}
    costs = {}
    for mode in ("none", "virtual"):
        env = make_batched_env(None, n_envs=8, **overrides, **{"storage.mode": mode})
        env.reset(seed=3, days=[150 + d for d in range(8)])
        total = torch.zeros(8)
        for _ in range(96):
            _, _, _, _, info = env.step(torch.zeros(8, env.n_agents, 2))
            total += info["community_cost"]
        costs[mode] = total
    # each day no worse than a few cents (a day without an evening draw pays the losses and
    # wear of what it stored), and much better over the days
    assert bool((costs["virtual"] <= costs["none"] + 0.05).all()), costs
    assert float((costs["none"] - costs["virtual"]).sum()) > 2.0, costs


def test_market_rule_charges_from_the_members_surplus() -> None:
    """The community_self_consumption operator charges when the members' net position is a
    surplus and discharges into a deficit; idle never moves."""
    for _env, _, _, _, info in run_random({"storage.mode": "market"}, steps=96):
        members = info["net_energy_kwh"].sum(1)
        q = info["storage_energy_kwh"]
        assert bool((q * members <= 1e-6).all())
    for _env, _, _, _, info in run_random({"storage.mode": "market", "storage.rule": "idle"},
                                         steps=20):
        assert float(info["storage_energy_kwh"].abs().sum()) == 0.0


def test_capacity_cost_and_terminal_credit() -> None:
    """The capacity cost is charged in 96 parts a day; with an idle battery in market mode
    and no terminal value the bill is exactly that (plus nothing)."""
    env = make_batched_env(None, n_envs=2, **SYNTHETIC, **{
        "storage.mode": "market", "storage.rule": "idle", "storage.capacity_cost": 0.096,
        "storage.capacity_kwh": 50.0, "episode.terminal_value": False})
    env.reset(seed=0)
    total = torch.zeros(2, dtype=torch.float64)
    for _ in range(96):
        _, _, _, _, info = env.step(torch.zeros(2, env.n_agents, 2))
        total += info["storage_cost"].double()
    torch.testing.assert_close(total, torch.full((2,), 0.096 * 50.0, dtype=torch.float64),
                               atol=1e-5, rtol=0)


def test_state_round_trip_and_keys() -> None:
    """get_state has the storage keys with a shared battery (and only then); a restored
    core steps exactly as the original."""
    env = make_batched_env(None, n_envs=2, **SYNTHETIC, **{"storage.mode": "virtual"})
    assert env.state_keys == STATE_KEYS + STORAGE_STATE_KEYS
    assert make_batched_env(None, n_envs=1, **SYNTHETIC).state_keys == STATE_KEYS
    env.reset(seed=1)
    action = torch.full((2, env.n_agents, 2), 0.3)
    for _ in range(60):
        env.step(action)
    state = env.get_state()
    twin = make_batched_env(None, n_envs=2, **SYNTHETIC, **{"storage.mode": "virtual"})
    twin.set_state(state)
    for _ in range(50):
        a = env.step(action)
        b = twin.step(action)
        torch.testing.assert_close(a[1], b[1], atol=0, rtol=0)
        torch.testing.assert_close(a[4]["storage_account_kwh"], b[4]["storage_account_kwh"],
                                   atol=0, rtol=0)
    missing = {k: v for k, v in state.items() if k != "storage_account_kwh"}
    with pytest.raises(ValueError, match="storage_account_kwh"):
        twin.set_state(missing)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["virtual", "market"])
def test_compiled_equals_eager(mode: str) -> None:
    """The compiled core (``compile`` true) gives the eager core's numbers with a shared
    battery, to float rounding."""
    results = []
    for compiled in (False, True):
        env = make_batched_env(None, n_envs=4, **{**SYNTHETIC, "compile": compiled,
                                                  "storage.mode": mode})
        env.reset(seed=2)
        rewards = []
        for step in range(40):
            action = torch.full((4, env.n_agents, 2), 0.5)
            action[..., 0] = math.sin(step / 5)
            rewards.append(env.step(action)[1])
        if compiled:  # every stage really ran compiled
            assert env.compiled is not None and env.compiled.eager_stages == {}
        results.append(torch.stack(rewards))
    torch.testing.assert_close(results[0], results[1], atol=1e-4, rtol=1e-4)


# -------------------------------------------------------------------------------------------
# The power flow: the battery at its bus
# -------------------------------------------------------------------------------------------


def test_battery_in_the_power_flow_matches_pandapower() -> None:
    """With a shared battery the Z-bus model has one more load at the battery's bus; its
    voltages equal pandapower's runpp on the feeder with that load, and a charging battery
    lowers the voltage at its bus."""
    config = env_config(None, **{"storage.mode": "market", "compile": False,
                                 "storage.power_kw": 200.0, "storage.capacity_kwh": 400.0,
                                 "storage.bus": 5})
    env = BatchedP2PEnv(config)
    network = env.network
    net = network.net
    assert net.load.name.iloc[-1] == BATTERY_AGENT and int(net.load.bus.iloc[-1]) == 5
    n = env.n_agents
    generator = torch.Generator().manual_seed(0)
    p = torch.rand(3, n + 1, generator=generator, dtype=torch.float64) * 4
    p[:, n] = torch.tensor([0.0, 150.0, -150.0], dtype=torch.float64)
    q = torch.zeros_like(p)
    zbus = network.model.solve(p.float(), q.float())
    exact = run_ac(net, p, q)
    bus_column = list(network.model.bus_index).index(5)
    torch.testing.assert_close(zbus.vm_pu.double(), exact.vm_pu, atol=2e-5, rtol=0)
    vm = exact.vm_pu[:, bus_column]
    assert vm[1] < vm[0] < vm[2]
    # the agents' voltages do not include the battery's column
    env.reset(seed=0)
    env.step(torch.zeros(1, n, 2))
    assert env.last_voltage.shape == (1, n)


def test_default_bus_is_the_transformer_low_voltage_side() -> None:
    data = load_feeder("1-LV-rural1--0-sw")
    net = data.net()
    assert storage_bus(StorageConfig(mode="virtual"), net) == int(net.trafo.lv_bus.iloc[0])
    name = str(net.bus.name.iloc[3])
    assert storage_bus(StorageConfig(mode="virtual", bus=name), net) == int(net.bus.index[3])
    check = pp.runpp  # pandapower is the ground truth used above
    assert callable(check)


# -------------------------------------------------------------------------------------------
# The operator agent in the PettingZoo env
# -------------------------------------------------------------------------------------------


def test_operator_agent_in_pettingzoo() -> None:
    """``storage.operator`` agent: the PettingZoo env has the agent community_battery with
    its own spaces; its reward is minus the battery's bill; its action drives the battery
    (charging at full power when the cells have room)."""
    env = make_env(None, **{"storage.mode": "market", "storage.operator": "agent",
                            "compile": False})
    assert env.possible_agents[-1] == BATTERY_AGENT
    assert env.observation_space(BATTERY_AGENT).shape == (len(OPERATOR_FEATURES),)
    obs, infos = env.reset(seed=0)
    assert obs[BATTERY_AGENT].shape == (len(OPERATOR_FEATURES),)
    assert obs[BATTERY_AGENT][0] == pytest.approx(0.5)  # initial_soc
    actions = {agent: np.array([0.0, 0.5], np.float32) for agent in env.possible_agents}
    actions[BATTERY_AGENT] = np.array([1.0, 1.0], np.float32)
    obs, rewards, _, _, infos = env.step(actions)
    info = infos["prosumer_0"]
    assert info["storage_energy_kwh"] == pytest.approx(50.0 * 0.25, rel=1e-5)
    assert rewards[BATTERY_AGENT] == pytest.approx(-info["storage_cost"], rel=1e-5)
    shares = sum(infos[a]["storage_cost_share"] for a in env.prosumers)
    assert shares == pytest.approx(info["storage_cost"], rel=1e-4, abs=1e-6)
    with pytest.raises(ValueError, match=BATTERY_AGENT):
        env.step({agent: np.array([0.0, 0.5]) for agent in env.prosumers})
    with pytest.raises(ValueError, match=BATTERY_AGENT):
        env.step({**actions, BATTERY_AGENT: np.array([0.0, 0.5, 1.0])})


def test_operator_agent_is_refused_by_batched_users() -> None:
    from agents.run_config import build_run_config

    with pytest.raises(ConfigError, match="storage.operator"):
        build_run_config({"algo": "mappo", "env": {"storage": {
            "mode": "market", "operator": "agent"}}})
    env = make_batched_env(None, n_envs=1, **SYNTHETIC, **{
        "storage.mode": "market", "storage.operator": "agent"})
    env.reset(seed=0)
    with pytest.raises(ValueError, match="storage_actions"):
        env.step(torch.zeros(1, env.n_agents, 2))
    with pytest.raises(ValueError, match=r"allowed: finite"):
        env.step(torch.zeros(1, env.n_agents, 2), torch.tensor([[2.0, 0.5]]))
    plain = make_batched_env(None, n_envs=1, **SYNTHETIC, **{"storage.mode": "virtual"})
    plain.reset(seed=0)
    with pytest.raises(ValueError, match="pass none"):
        plain.step(torch.zeros(1, plain.n_agents, 2), torch.zeros(1, 2))


# -------------------------------------------------------------------------------------------
# Bad input
# -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides,match", [
    ({"storage.capacity_kwh": 0}, "storage.capacity_kwh"),
    ({"storage.capacity_kwh": -5}, "storage.capacity_kwh"),
    ({"storage.power_kw": 0}, "storage.power_kw"),
    ({"storage.draw_hours": [25, 26]}, "storage.draw_hours"),
    ({"storage.draw_hours": [20, 15]}, "storage.draw_hours"),
    ({"storage.draw_hours": [15]}, "storage.draw_hours"),
    ({"storage.subscription_kwh": 0}, "storage.subscription_kwh"),
    ({"storage.mode": "shared"}, "storage.mode"),
    ({"storage.soc_min": 0.9, "storage.soc_max": 0.5}, "storage.soc_min"),
    ({"storage.mode": "market", "storage.cost_allocation": "throughput"},
     "storage.cost_allocation"),
    ({"storage.leftover_price": -1}, "storage.leftover_price"),
    ({"storage.settle": "week"}, "storage.settle"),
    ({"storage.members": []}, "storage.members"),
    ({"storage.bus": -1}, "storage.bus"),
])
def test_bad_config(overrides: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        env_config(None, **overrides)


@pytest.mark.parametrize("overrides,match", [
    ({"storage.mode": "virtual", "storage.bus": 99999}, "storage.bus"),
    ({"storage.mode": "virtual", "storage.bus": "no such bus"}, "storage.bus"),
    ({"storage.mode": "virtual", "storage.members": ["nobody"]}, "storage.members"),
    ({"storage.mode": "virtual", "storage.subscription_kwh": [1.0, 2.0]},
     "storage.subscription_kwh"),
])
def test_bad_config_on_the_feeder(overrides: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_batched_env(None, n_envs=1, **{"compile": False, **overrides})


def test_bus_is_checked_without_a_network_model() -> None:
    """network.model none: the bus is still checked against the feeder (nothing ignored)."""
    with pytest.raises(ConfigError, match="storage.bus"):
        make_batched_env(None, n_envs=1, **SYNTHETIC, **{"storage.mode": "virtual",
                                                         "storage.bus": 99999})


def test_ledger_refuses_a_market_battery(tmp_path) -> None:
    with pytest.raises(ConfigError, match="storage.mode"):
        make_env(None, ledger=tmp_path / "l.sqlite", **{"storage.mode": "market"})


def test_numba_engine_refuses_storage() -> None:
    with pytest.raises(ValueError, match="storage"):
        make_env(None, engine="numba", **{"storage.mode": "virtual"})
    assert make_env(None, **{"storage.mode": "virtual"}).engine_name == "torch"


def test_rule_is_idle_without_a_market() -> None:
    """Under market.mechanism none a market-mode battery has nobody to trade with: the rule
    keeps it idle (it would otherwise buy at retail what the members export at feed-in)."""
    for _env, _, _, _, info in run_random({"storage.mode": "market",
                                           "market.mechanism": "none"}, steps=40):
        assert float(info["storage_energy_kwh"].abs().sum()) == 0.0


def test_allocative_efficiency_counts_the_market_battery() -> None:
    """The battery's orders are part of what the market could match: allocative efficiency
    stays within [0, 1] with a market-mode battery."""
    from envs.metrics import EpisodeAccumulator, allocative_efficiency

    env = make_batched_env(None, n_envs=2, **SYNTHETIC, **{"storage.mode": "market"})
    env.reset(seed=4, days=[160, 161])
    accumulator = EpisodeAccumulator(2, env.n_agents)
    totals = None
    for _ in range(96):
        _, reward, _, _, info = env.step(torch.zeros(2, env.n_agents, 2))
        totals = accumulator.update(info, reward) or totals
    assert totals is not None
    efficiency = allocative_efficiency(totals)
    assert bool(((efficiency >= 0) & (efficiency <= 1 + 1e-6)).all()), efficiency
