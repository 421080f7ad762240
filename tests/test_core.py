"""The batched core (envs/core.py): batching, balances, bounds, episodes and bad input."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import envs
from envs import observations, rng, rules
from envs.config import ConfigError
from envs.core import STATE_KEYS
from envs.data import STEPS_PER_DAY, day_split


def random_actions(env, generator: torch.Generator) -> torch.Tensor:
    b, n = env.n_envs, env.n_agents
    battery = torch.rand(b, n, generator=generator) * 2 - 1
    price = torch.rand(b, n, generator=generator)
    return torch.stack([battery, price], dim=-1)


def rollout(env, actions: list[torch.Tensor], seed: int):
    obs, _ = env.reset(seed=seed)
    trace = {"obs": [obs], "reward": [], "cost": [], "soc": [], "price": []}
    for action in actions:
        obs, reward, terminated, _, info = env.step(action)
        trace["obs"].append(obs)
        trace["reward"].append(reward)
        trace["cost"].append(info["community_cost"])
        trace["soc"].append(info["soc_kwh"])
        trace["price"].append(info["clearing_price"])
        if "arrival_rank" in info:  # cda
            trace.setdefault("arrival_rank", []).append(info["arrival_rank"].double())
    return {key: torch.stack(value) for key, value in trace.items()}


@pytest.mark.parametrize(("network", "mechanism"), [("none", "uniform"), ("zbus", "uniform"),
                                                    ("none", "cda")])
def test_batched_equals_single(network, mechanism):
    """B environments together give the trajectories of B single environments (seed + b);
    under cda also the same arrival orders."""
    b = 3
    config = {"community": {"feeder": "synthetic", "n_agents": 5, "pv_share": 0.6,
                            "battery_share": 0.6},
              "network": {"model": network}, "observation": {"forecast_noise": 0.05},
              "market": {"mechanism": mechanism}}
    batched = envs.make_batched_env(config, n_envs=b, dtype="float64")
    generator = torch.Generator().manual_seed(0)
    steps = STEPS_PER_DAY + 10  # crosses an automatic reset
    actions = [random_actions(batched, generator) for _ in range(steps)]
    together = rollout(batched, actions, seed=7)
    for i in range(b):
        single = envs.make_batched_env(config, n_envs=1, dtype="float64")
        alone = rollout(single, [a[i:i + 1] for a in actions], seed=7 + i)
        for key in together:
            torch.testing.assert_close(together[key][:, i:i + 1], alone[key], equal_nan=True,
                                       rtol=1e-10, atol=1e-10)


def test_cda_arrival_order_is_drawn_per_episode_and_step():
    """Under cda each step's arrival order is ``envs.rng.random_rank`` of the env's seed at
    the step's counter (episode, step of the episode): reproducible from the seed, new at
    every step and in every episode."""
    config = {"community": {"feeder": "synthetic", "n_agents": 12}, "network": {"model": "none"},
              "market": {"mechanism": "cda"}, "episode": {"length_days": 2}}
    env = envs.make_batched_env(config, n_envs=2)
    generator = torch.Generator().manual_seed(1)
    ranks = []
    env.reset(seed=40)
    for step in range(2 * STEPS_PER_DAY + 2):  # into the second day, then a new episode
        _, _, _, _, info = env.step(random_actions(env, generator))
        episode, step_of_episode = (1, step) if step < 2 * STEPS_PER_DAY else (2, step - 192)
        counter = torch.full((2,), rng.forecast_noise_counter(episode, step_of_episode))
        expected = rng.random_rank(torch.tensor([40, 41]), counter, rng.STREAM_CDA_ARRIVAL, 12)
        assert torch.equal(info["arrival_rank"], expected), step
        ranks.append(info["arrival_rank"])
    orders = {tuple(rank[0].tolist()) for rank in ranks}
    assert len(orders) == len(ranks)  # 12! orders: no repeat in 194 steps
    assert not torch.equal(ranks[0][0], ranks[0][1])  # environments draw their own


def test_energy_and_money_balances(synthetic_config):
    env = envs.make_batched_env({**synthetic_config, "market": {"mechanism": "uniform"}},
                                n_envs=8, dtype="float64")
    env.reset(seed=1)
    generator = torch.Generator().manual_seed(1)
    dt = env.dt_h
    for _ in range(40):
        soc_before = env.soc_kwh.clone()
        _, reward, _, _, info = env.step(random_actions(env, generator))
        net = info["load_kwh"] - info["pv_kwh"] + info["battery_energy_kwh"]
        torch.testing.assert_close(info["net_energy_kwh"], net)
        torch.testing.assert_close(info["p2p_energy_kwh"] + info["grid_energy_kwh"], net)
        torch.testing.assert_close(info["p2p_energy_kwh"].sum(1), torch.zeros(8, dtype=net.dtype),
                                   atol=1e-9, rtol=0)
        # Payments: P2P money nets to the operator's surplus; grid money at the tariffs.
        torch.testing.assert_close(info["p2p_payment"].sum(1), info["operator_surplus"])
        grid = info["grid_energy_kwh"]
        expected_grid = (info["retail_price"][:, None] * grid.clamp_min(0)
                         + info["feed_in_price"][:, None] * grid.clamp_max(0))
        torch.testing.assert_close(info["grid_payment"], expected_grid)
        cost = (info["payment"] + info["degradation_cost"] + info["network_penalty"]
                + info["network_fee"] + info["terminal_value_cost"])
        torch.testing.assert_close(reward, -cost)
        torch.testing.assert_close(info["community_cost"], cost.sum(1))
        # Battery: within bounds, degradation on throughput, SoC dynamics.
        cap = env.capacity_kwh
        assert bool((env.soc_kwh >= 0.1 * cap - 1e-9).all())
        assert bool((env.soc_kwh <= 0.9 * cap + 1e-9).all())
        energy = info["battery_energy_kwh"]
        assert bool((energy.abs() <= env.battery_kw * dt + 1e-9).all())
        expected_soc = soc_before + torch.where(energy > 0, 0.95 * energy, energy / 0.95)
        torch.testing.assert_close(info["soc_kwh"], expected_soc)
        torch.testing.assert_close(info["degradation_cost"], 0.02 * energy.abs())


def test_no_battery_requests_are_cut_and_reported(synthetic_config):
    env = envs.make_batched_env(synthetic_config, n_envs=2)
    env.reset(seed=0)
    actions = torch.zeros(2, env.n_agents, 2)
    actions[..., 0] = 1.0
    _, _, _, _, info = env.step(actions)
    no_battery = env.capacity_kwh == 0
    assert bool(no_battery.any()) and bool((~no_battery).any())
    assert bool((info["battery_energy_kwh"][:, no_battery] == 0).all())
    assert bool((info["battery_cut_kwh"][:, no_battery] == 0).all())  # power limit is 0 too
    assert bool((info["battery_energy_kwh"][:, ~no_battery] > 0).all())


def test_no_p2p_costs_match_hand_computed_grid_bill(synthetic_config):
    """With mechanism none and idle batteries each agent pays its own grid bill."""
    env = envs.make_batched_env({**synthetic_config, "market": {"mechanism": "none"},
                                 "tariff": {"retail": 0.3, "feed_in": 0.1}}, dtype="float64")
    env.reset(seed=3)
    day = int(env.day[0])
    actions = torch.zeros(1, env.n_agents, 2)
    total = 0.0
    for _ in range(STEPS_PER_DAY):
        _, reward, terminated, _, _ = env.step(actions)
        total += float(reward.sum())
    assert bool(terminated[0])
    sl = slice(day * 96, day * 96 + 96)
    net = (env.load_kw[sl] - env.pv_kw[sl]).numpy() * 0.25
    expected = (0.3 * np.clip(net, 0, None) + 0.1 * np.clip(net, None, 0)).sum()
    assert abs(-total - expected) < 1e-9


def test_episode_length_autoreset_and_day_split(synthetic_config):
    env = envs.make_batched_env(synthetic_config, n_envs=16)
    obs, info = env.reset(seed=0)
    train, test = day_split(7)
    assert set(info["day"].tolist()) <= set(train.tolist())
    actions = torch.zeros(16, env.n_agents, 2)
    for t in range(STEPS_PER_DAY):
        obs, _, terminated, truncated, info = env.step(actions)
        assert bool(terminated.all()) == (t == STEPS_PER_DAY - 1)
        assert not bool(truncated.any())
    assert "final_observation" in info and info["final_observation"].shape == obs.shape
    assert bool((env.step_of_day == 0).all())
    tests = envs.make_batched_env({**synthetic_config, "episode": {"days": "test"}}, n_envs=32)
    _, info = tests.reset(seed=0)
    assert set(info["day"].tolist()) <= set(test.tolist())


def test_multi_day_episodes_run_on_over_the_following_days(synthetic_config):
    """Three-day episodes: the day advances at midnight (365 wraps to 0) and the weekday and
    time of day of the observations follow it, the SoC carries over, the terminal value is
    charged on the episode's last step only (against the SoC at its start), the episode ends
    after 3 * 96 steps and the accumulator's totals carry the start day. Start days drawn
    from the test split; the following days need not be test days."""
    from envs.metrics import EpisodeAccumulator

    config = {**synthetic_config, "episode": {"length_days": 3, "days": "test"}}
    env = envs.make_batched_env(config, n_envs=2, dtype="float64")
    assert env.episode_steps == 3 * STEPS_PER_DAY
    _, info = env.reset(seed=0)
    assert set(info["day"].tolist()) <= set(day_split(7)[1].tolist())
    env.reset(seed=1, days=[100, 364])
    names = env.feature_names
    dow, tod = names.index("dow_sin"), names.index("tod_sin")
    generator = torch.Generator().manual_seed(3)
    accumulator = EpisodeAccumulator(2, env.n_agents)
    start = 0.5 * env.capacity_kwh
    days, soc = [], env.soc_kwh.clone()
    for t in range(env.episode_steps):
        last = t == env.episode_steps - 1
        obs, reward, terminated, truncated, info = env.step(random_actions(env, generator))
        assert bool(terminated.all()) == last and not bool(truncated.any()), t
        days.append(info["day"].tolist())
        # The SoC moves on from the last step's by the step's battery energy, across
        # midnight too (no reset in between).
        energy = info["battery_energy_kwh"]
        battery = env.config.battery
        moved = (battery.charge_efficiency * energy.clamp_min(0.0)
                 - (-energy).clamp_min(0.0) / battery.discharge_efficiency)
        torch.testing.assert_close(info["soc_kwh"], soc + moved, rtol=0, atol=1e-12)
        soc = info["soc_kwh"]
        taken = start - info["soc_kwh"]
        value = torch.where(taken > 0, DEFAULT_TERMINAL_PRICE * taken,
                            DEFAULT_TERMINAL_CREDIT_PRICE * taken)
        expected = value if last else torch.zeros_like(value)
        torch.testing.assert_close(info["terminal_value_cost"], expected, rtol=0, atol=1e-12)
        if t == STEPS_PER_DAY - 1:  # midnight: the next day's first step is observed
            assert env.step_of_day.tolist() == [0, 0] and env.day.tolist() == [101, 365]
            for b, day in enumerate((101, 365)):
                weekday = (day + 4) % 7  # day 0 (2016-01-01) was a Friday
                assert float(obs[b, 0, dow]) == pytest.approx(np.sin(2 * np.pi * weekday / 7))
                assert float(obs[b, 0, tod]) == pytest.approx(0.0, abs=1e-12)
        totals = accumulator.update(info, reward)
        assert (totals is not None) == last
    assert [d[0] for d in days] == [100] * 96 + [101] * 96 + [102] * 96
    assert [d[1] for d in days] == [364] * 96 + [365] * 96 + [0] * 96
    assert totals.day.tolist() == [100, 364]
    assert env.step_of_day.tolist() == [0, 0] and env.day_of_episode.tolist() == [0, 0]
    torch.testing.assert_close(env.soc_kwh, start.expand(2, -1))  # reset after the episode


def test_reset_env_index_resets_only_those(synthetic_config):
    env = envs.make_batched_env(synthetic_config, n_envs=3)
    env.reset(seed=0)
    for _ in range(5):
        env.step(torch.zeros(3, env.n_agents, 2))
    env.reset(env_index=[1])
    assert env.step_of_day.tolist() == [5, 0, 5]


def test_observation_layout_and_forecasts(synthetic_config):
    config = {**synthetic_config, "observation": {"forecast_steps": 2, "include_voltage": True}}
    env = envs.make_batched_env(config, n_envs=2)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (2, env.n_agents, env.obs_dim) == (2, 6, 17)
    assert env.feature_names[:6] == ["load", "pv", "load_t+1", "pv_t+1", "load_t+2", "pv_t+2"]
    index = env.day * 96
    expected_next_load = env.load_kw[index + 1] / env.peak_load_kw
    torch.testing.assert_close(obs[..., 2], expected_next_load)
    assert env.state().shape == (2, env.state_dim) == (2, 3 * 6 + 7)


def test_observation_columns_follow_the_shared_layout(synthetic_config):
    """Every feature sits at the column envs.observations.layout gives it, the shared block
    in the order of SHARED_FEATURES (the same block ends the global state)."""
    config = {**synthetic_config, "observation": {"forecast_steps": 1, "include_voltage": True,
                                                  "rule": "self_consumption"}}
    env = envs.make_batched_env(config, n_envs=2, dtype="float64")
    env.reset(seed=0)
    for _ in range(30):
        obs, *_ = env.step(random_actions(env, torch.Generator().manual_seed(3)).double())
    layout = observations.layout(env.config.observation)
    assert layout.obs_dim == env.obs_dim and layout.rule_battery == env.obs_dim - 1
    tables = env.tables()
    torch.testing.assert_close(obs[..., layout.soc], env.soc_kwh * tables.inverse_capacity)
    torch.testing.assert_close(obs[..., layout.battery_size], tables.sizes[:, 1].expand(2, -1))
    torch.testing.assert_close(obs[..., layout.voltage], (env.last_voltage - 1.0) * 10.0)
    shared = obs[:, 0, layout.shared:layout.shared + observations.N_SHARED_FEATURES]
    named = dict(zip(observations.SHARED_FEATURES, shared.T, strict=True))
    torch.testing.assert_close(named["last_price"], env.last_price / env.price_scale)
    torch.testing.assert_close(named["retail"], env.retail_price[env.step_of_day]
                               / env.price_scale)
    torch.testing.assert_close(named["tod_cos"], torch.cos(2 * torch.pi * env.step_of_day / 96)
                               .double())
    torch.testing.assert_close(env.state()[:, -observations.N_SHARED_FEATURES:], shared)


def test_community_features_are_the_communitys_net_load_and_soc(synthetic_config):
    """observation.community: after the shared block, the community's net load of the traded
    step and each forecast step (sum of load - PV over homes / sum of peak loads, true values
    even with forecast noise), then stored kWh / capacity kWh over all homes; the same for
    every agent; nothing else moves."""
    base = {**synthetic_config, "observation": {"forecast_steps": 2, "forecast_noise": 0.1}}
    config = {**base, "observation": {**base["observation"], "community": True}}
    env = envs.make_batched_env(config, n_envs=2, dtype="float64")
    plain = envs.make_batched_env(base, n_envs=2, dtype="float64")
    env.reset(seed=1)
    plain.reset(seed=1)
    generator = torch.Generator().manual_seed(2)
    for _ in range(95):  # across midnight: the forecasts wrap into the next day
        action = random_actions(env, generator).double()
        obs, *_ = env.step(action)
        plain_obs, *_ = plain.step(action)
    layout = observations.layout(env.config.observation)
    names = env.feature_names
    assert names[layout.community:layout.community + 4] == [
        "community_net", "community_net_t+1", "community_net_t+2", "community_soc"]
    assert env.obs_dim == plain.obs_dim + 4
    for s in range(3):
        index = (env.day * 96 + env.step_of_day + s) % (365 * 96)
        net = (env.load_kw[index] - env.pv_kw[index]).sum(dim=1) / env.peak_load_kw.sum()
        torch.testing.assert_close(obs[:, :, layout.community + s], net[:, None].expand(2, 6))
    soc = env.soc_kwh.sum(dim=1) / env.capacity_kwh.sum()
    assert float(soc.min()) > 0.0
    torch.testing.assert_close(obs[:, :, layout.community + 3], soc[:, None].expand(2, 6))
    community = list(range(layout.community, layout.community + 4))
    rest = [c for c in range(env.obs_dim) if c not in community]
    torch.testing.assert_close(obs[..., rest], plain_obs, rtol=0, atol=0)


def test_state_round_trip_continues_the_same_episodes(synthetic_config):
    """get_state holds everything that changes: a fresh core given it steps on exactly as the
    original does, across the end of the day (terminal value, automatic reset, new start day
    and forecast noise drawn from the restored counters)."""
    config = {**synthetic_config, "observation": {"forecast_noise": 0.1}}
    env = envs.make_batched_env(config, n_envs=3, dtype="float64")
    env.reset(seed=5)
    generator = torch.Generator().manual_seed(0)
    for _ in range(90):
        env.step(random_actions(env, generator).double())
    state = env.get_state()
    assert tuple(state) == STATE_KEYS and state["seeded"] is True
    actions = [random_actions(env, generator).double() for _ in range(12)]
    original = [env.step(action) for action in actions]
    twin = envs.make_batched_env(config, n_envs=3, dtype="float64")
    twin.set_state(state)
    for action, (obs, reward, terminated, _, info) in zip(actions, original, strict=True):
        twin_obs, twin_reward, twin_terminated, _, twin_info = twin.step(action)
        torch.testing.assert_close(twin_obs, obs, rtol=0, atol=0)
        torch.testing.assert_close(twin_reward, reward, rtol=0, atol=0)
        assert torch.equal(twin_terminated, terminated)
        torch.testing.assert_close(twin_info["terminal_value_cost"], info["terminal_value_cost"])
    assert any(bool(step[2].any()) for step in original)  # the day's end was crossed
    state["soc_kwh"][0, 0] = -1.0  # get_state is a copy
    assert float(env.soc_kwh[0, 0]) != -1.0


@pytest.mark.parametrize("change, message", [
    ({"seeded": None}, "'seeded'"),
    ({"soc_kwh": torch.zeros(2, 6)}, "'soc_kwh': got shape \\[2, 6\\]"),
    ({"day": torch.tensor([1.0, 2.0, 3.0])}, "'day'.*integer"),
    ({"day": torch.tensor([1, 2, 366])}, "'day': got \\[1, 2, 366\\]"),
    ({"last_price": torch.tensor([0.1, float("nan"), 0.1])}, "'last_price': got non-finite"),
    ({"extra": 1}, "exactly \\['env_seed'"),
])
def test_bad_state_names_the_key_and_changes_nothing(synthetic_config, change, message):
    env = envs.make_batched_env(synthetic_config, n_envs=3)
    env.reset(seed=0)
    env.step(torch.zeros(3, env.n_agents, 2))
    before = env.get_state()
    with pytest.raises(ValueError, match=message):
        env.set_state({**env.get_state(), **change})
    with pytest.raises(ValueError, match="exactly"):
        env.set_state({key: value for key, value in before.items() if key != "seeded"})
    for key, value in env.get_state().items():
        assert torch.equal(torch.as_tensor(value), torch.as_tensor(before[key])), key


def test_forecast_noise_is_seeded(synthetic_config):
    config = {**synthetic_config, "observation": {"forecast_noise": 0.2}}
    exact = envs.make_batched_env(synthetic_config).reset(seed=4)[0]
    first = envs.make_batched_env(config).reset(seed=4)[0]
    second = envs.make_batched_env(config).reset(seed=4)[0]
    torch.testing.assert_close(first, second)
    assert not torch.allclose(first[..., 0], exact[..., 0])


@pytest.mark.parametrize("rule", ["self_consumption", "time_of_use", "community_self_consumption",
                                  "community_time_of_use"])
def test_rule_feature_is_the_rules_battery_fraction(synthetic_config, rule):
    tariff = {"retail_tou": [0.12] * 6 + [0.28] * 11 + [0.50] * 4 + [0.28] + [0.12] * 2}
    config = {**synthetic_config, "tariff": tariff, "observation": {
        "rule": rule, "include_voltage": True, "forecast_noise": 0.3}}
    env = envs.make_batched_env(config, n_envs=2)
    plain = envs.make_batched_env({**synthetic_config, "tariff": tariff}, n_envs=2)
    assert env.feature_names == [*plain.feature_names, "voltage", "rule_battery"]
    assert env.obs_dim == plain.obs_dim + 2 == 14
    obs, _ = env.reset(seed=0)
    generator = torch.Generator().manual_seed(0)
    for step in range(40):  # through the cheap night block into the hold hours
        expected = rules.rule_fraction(rule, env)  # true load and PV, never noisy
        torch.testing.assert_close(obs[..., -1], expected)
        assert bool((obs[..., -1].abs() <= 1.0).all()), step
        obs, *_ = env.step(random_actions(env, generator))
    torch.testing.assert_close(rules.rule_fraction("self_consumption", env),
                               rules.self_consumption_fraction(env))


def test_discrete_actions_decode_to_grid(synthetic_config):
    config = {**synthetic_config, "action": {"type": "discrete", "battery_levels": 3,
                                             "price_levels": 4}}
    env = envs.make_batched_env(config)
    env.reset(seed=0)
    actions = torch.tensor([[0, 3, 4, 7, 8, 11]])
    battery, price = env.decode_actions(actions)
    assert battery.tolist() == [[-1.0, -1.0, 0.0, 0.0, 1.0, 1.0]]
    torch.testing.assert_close(price, torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"index 1\) in env 0 is 12; allowed: 0..11"):
        env.step(torch.tensor([[0, 12, 0, 0, 0, 0]]))


def test_bad_actions_name_the_agent(synthetic_config):
    env = envs.make_batched_env(synthetic_config, n_envs=2)
    env.reset(seed=0)
    actions = torch.zeros(2, env.n_agents, 2)
    actions[1, 3, 0] = float("nan")
    with pytest.raises(ValueError, match=r"'house_3' \(index 3\) in env 1"):
        env.step(actions)
    with pytest.raises(ValueError, match=r"shape \[n_envs, n_agents, 2\] = \[2, 6, 2\]"):
        env.step(torch.zeros(2, env.n_agents))
    actions = torch.zeros(2, env.n_agents, 2)
    actions[0, 0, 1] = -0.5
    with pytest.raises(ValueError, match="price in \\[0, 1\\]"):
        env.step(actions)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"market": {"mechanism": "vickrey"}}, "market.mechanism"),
    ({"market": {"speed": 1}}, "unknown config key 'market.speed'"),
    ({"battery": {"charge_efficiency": 1.5}}, "battery.charge_efficiency"),
    ({"n_envs": "many"}, "config key 'n_envs'"),
    ({"tariff": {"retail": 0.05, "feed_in": 0.1}}, "tariff.retail"),
    ({"community": {"n_agents": 4}}, "community.n_agents"),
    ({"episode": {"terminal_price": -0.1}}, "episode.terminal_price"),
    ({"episode": {"terminal_price": float("nan")}}, "episode.terminal_price"),
    ({"episode": {"terminal_price": float("inf")}}, "episode.terminal_price"),
    ({"episode": {"terminal_value": False, "terminal_price": 0.2}}, "episode.terminal_price"),
    ({"episode": {"terminal_value": "yes"}}, "episode.terminal_value"),
    ({"episode": {"terminal_credit_price": -0.01}}, "episode.terminal_credit_price"),
    ({"episode": {"terminal_credit_price": float("nan")}}, "episode.terminal_credit_price"),
    ({"episode": {"terminal_credit_price": float("inf")}}, "episode.terminal_credit_price"),
    ({"episode": {"terminal_value": False, "terminal_credit_price": 0.0}},
     "episode.terminal_credit_price"),
    # Above the charge price: explicit, or the default rule's 0.95 x (0.30 - 0.02) = 0.266.
    ({"episode": {"terminal_price": 0.2, "terminal_credit_price": 0.21}},
     "episode.terminal_credit_price"),
    ({"episode": {"terminal_credit_price": 0.27}}, "episode.terminal_credit_price"),
])
def test_bad_config_fails_at_construction(overrides, message):
    with pytest.raises(ConfigError, match=message):
        envs.make_batched_env(None, **overrides)


def test_time_of_use_tariff_reaches_observation_and_prices(synthetic_config):
    retail = [0.2] * 17 + [0.5] * 4 + [0.2] * 3
    env = envs.make_batched_env({**synthetic_config, "tariff": {"retail_tou": retail}})
    env.reset(seed=0)
    assert env.retail_price[17 * 4].item() == pytest.approx(0.5)
    assert env.retail_price[0].item() == pytest.approx(0.2)
    obs = env.observe()
    retail_feature = env.feature_names.index("retail")
    assert obs[0, 0, retail_feature].item() == pytest.approx(0.2 / 0.5)


# --------------------------------------------------------------------------------------------
# Terminal value (episode.terminal_value)
# --------------------------------------------------------------------------------------------

DEFAULT_TERMINAL_PRICE = 0.95 * (0.30 - 0.02)
"""The default rule under the default flat tariff: discharge efficiency x (retail -
degradation cost), currency per kWh of cell energy."""
DEFAULT_TERMINAL_CREDIT_PRICE = 0.08
"""The default credit rule under the default tariff: the lowest hourly feed-in price."""


def test_terminal_value_is_charged_once_per_episode_on_its_last_step(synthetic_config):
    """Across staggered automatic resets, every episode pays terminal_price * (SoC at start -
    SoC at end) when it ends below its start, and is credited terminal_credit_price * (SoC at
    end - SoC at start) when above, exactly once, on its last step, in cost, community cost,
    reward and the episode totals; every other step pays nothing."""
    from envs.metrics import EpisodeAccumulator

    env = envs.make_batched_env(synthetic_config, n_envs=3, dtype="float64")
    assert env.terminal_price == pytest.approx(DEFAULT_TERMINAL_PRICE)
    assert env.terminal_credit_price == pytest.approx(DEFAULT_TERMINAL_CREDIT_PRICE)
    signs = set()
    env.reset(seed=2)
    generator = torch.Generator().manual_seed(2)
    for _ in range(17):
        env.step(random_actions(env, generator))
    env.reset(env_index=[1])  # env 1 now ends its days 17 steps after the others
    accumulator = EpisodeAccumulator(3, env.n_agents)
    start = 0.5 * env.capacity_kwh
    charged = torch.zeros(3, dtype=torch.long)
    finished = 0
    for _ in range(4 * STEPS_PER_DAY):
        last = env.step_of_day == STEPS_PER_DAY - 1
        _, reward, terminated, _, info = env.step(random_actions(env, generator))
        assert torch.equal(terminated, last)
        terminal = info["terminal_value_cost"]
        taken = start - info["soc_kwh"]
        value = torch.where(taken > 0, DEFAULT_TERMINAL_PRICE * taken,
                            DEFAULT_TERMINAL_CREDIT_PRICE * taken)
        expected = torch.where(last[:, None], value, torch.zeros_like(terminal))
        torch.testing.assert_close(terminal, expected, rtol=0, atol=1e-12)
        charged += (terminal != 0).any(1).long()
        signs.update(torch.sign(terminal[terminal != 0]).tolist())
        cost = (info["payment"] + info["degradation_cost"] + info["network_penalty"]
                + info["network_fee"] + terminal)
        torch.testing.assert_close(info["cost"], cost, rtol=0, atol=1e-12)
        torch.testing.assert_close(reward, -cost, rtol=0, atol=1e-12)
        torch.testing.assert_close(info["community_cost"], cost.sum(1))
        totals = accumulator.update(info, reward)
        if totals is not None:
            finished += len(totals)
            torch.testing.assert_close(totals.agent["terminal_value_cost"],
                                       terminal[info["done"]], rtol=0, atol=1e-12)
    assert charged.tolist() == [4, 4, 4]
    assert finished == 12
    assert signs == {-1.0, 1.0}  # both the charge and the credit were exercised


def _v1_rollout(overrides: dict) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Rewards and infos of two days and 7 steps of seeded random actions (3 envs)."""
    config = {"community": {"feeder": "synthetic", "n_agents": 6, "pv_share": 0.6,
                            "battery_share": 0.6}, "network": {"model": "none"}, **overrides}
    env = envs.make_batched_env(config, n_envs=3, dtype="float64")
    env.reset(seed=5)
    generator = torch.Generator().manual_seed(0)
    rewards, infos = [], []
    for _ in range(2 * STEPS_PER_DAY + 7):
        battery = torch.rand(3, env.n_agents, generator=generator, dtype=torch.float64) * 2 - 1
        price = torch.rand(3, env.n_agents, generator=generator, dtype=torch.float64)
        _, reward, _, _, info = env.step(torch.stack([battery, price], -1))
        rewards.append(reward)
        infos.append(info)
    return rewards, infos


def test_terminal_value_off_reproduces_v1_and_on_changes_only_last_steps():
    off_rewards, off_infos = _v1_rollout({"episode": {"terminal_value": False}})
    # Total reward of this rollout measured before the terminal value existed (v1).
    assert float(torch.stack(off_rewards).sum()) == pytest.approx(-86.12617165610288,
                                                                  rel=1e-12)
    assert not any(bool(info["terminal_value_cost"].any()) for info in off_infos)
    on_rewards, on_infos = _v1_rollout({})
    for step, (off, on, info) in enumerate(zip(off_rewards, on_rewards, on_infos,
                                               strict=True)):
        last = step % STEPS_PER_DAY == STEPS_PER_DAY - 1
        assert bool(info["terminal_value_cost"].any()) == last, step
        torch.testing.assert_close(on, off - info["terminal_value_cost"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("length_days", [1, 2])
@pytest.mark.parametrize("tariff", [{}, {"retail_tou": [0.2] * 8 + [0.3] * 10 + [0.4] * 6}])
def test_draining_the_battery_gains_nothing_against_idling(synthetic_config, tariff,
                                                           length_days):
    """Discharging at full power all day never costs an agent less than idling (mechanism
    none: each agent settles with the grid). A kWh taken from the cells reaches the AC side
    as 0.95 kWh, pays degradation on it and displaces an import at retail r_t or is exported
    at feed-in f_t; the terminal value charges 0.95 * (max retail - degradation) back, so

        cost(drain) - cost(idle) = sum_t (max r - r_t) displaced_t + (max r - f_t) exported_t

    (AC kWh), >= 0, and 0 for a battery that only displaces imports at the highest retail
    price. With the option off draining pays (v1). The same over a two-day episode (the
    terminal value at its end only)."""
    config = {**synthetic_config, "market": {"mechanism": "none"}, "tariff": tariff,
              "episode": {"length_days": length_days}}

    def run(battery_fraction: float, **overrides) -> tuple[torch.Tensor, torch.Tensor, Any]:
        env = envs.make_batched_env({**config, **overrides}, dtype="float64")
        env.reset(seed=0, days=[100])
        actions = torch.zeros(1, env.n_agents, 2)
        actions[..., 0] = battery_fraction
        cost = torch.zeros(env.n_agents, dtype=torch.float64)
        grid = []
        for _ in range(env.episode_steps):
            _, _, terminated, _, info = env.step(actions)
            cost += info["cost"][0]
            grid.append(info["grid_energy_kwh"][0])
        assert bool(terminated[0])
        return cost, torch.stack(grid), env

    idle_cost, idle_grid, env = run(0.0)
    drain_cost, drain_grid, _ = run(-1.0)
    peak = env.retail_price.max()
    displaced = idle_grid.clamp_min(0.0) - drain_grid.clamp_min(0.0)  # [T, N] kWh
    exported = (-drain_grid).clamp_min(0.0) - (-idle_grid).clamp_min(0.0)
    retail = env.retail_price.repeat(length_days)[:, None]
    feed_in = env.feed_in_price.repeat(length_days)[:, None]
    expected = ((peak - retail) * displaced + (peak - feed_in) * exported).sum(0)
    torch.testing.assert_close(drain_cost - idle_cost, expected, rtol=0, atol=1e-12)
    has_battery = env.capacity_kwh > 0
    assert bool(has_battery.any()) and bool((expected >= 0.0).all())
    assert bool((displaced[:, has_battery].sum(0) > 0).all())  # the batteries did drain
    # Without the terminal value, draining is free money.
    v1 = {"length_days": length_days, "terminal_value": False}
    idle_v1, _, _ = run(0.0, episode=v1)
    drain_v1, _, _ = run(-1.0, episode=v1)
    torch.testing.assert_close(idle_v1, idle_cost, rtol=0, atol=0)
    assert bool((drain_v1[has_battery] < idle_v1[has_battery]).all())


@pytest.mark.parametrize(("tariff", "episode", "credit"), [
    ({}, {}, DEFAULT_TERMINAL_CREDIT_PRICE),
    ({"feed_in_tou": [0.08] * 10 + [0.05] * 4 + [0.08] * 10}, {}, 0.05),  # lowest hour
    ({"feed_in": 0.29}, {}, DEFAULT_TERMINAL_PRICE),  # capped at the charge price
    ({}, {"terminal_price": 0.05}, 0.05),
    ({}, {"terminal_credit_price": 0.2}, 0.2),  # set
    ({}, {"terminal_value": False}, 0.0),
])
def test_default_terminal_credit_price_rule(synthetic_config, tariff, episode, credit):
    env = envs.make_batched_env({**synthetic_config, "tariff": tariff, "episode": episode})
    assert env.terminal_credit_price == pytest.approx(credit, rel=1e-12)
    assert env.terminal_credit_price <= env.terminal_price


STRONG_TOU = [0.12] * 6 + [0.28] * 11 + [0.50] * 4 + [0.28] + [0.12] * 2
"""Hourly retail of issue 9's strong time-of-use tariff (feed-in flat 0.08)."""


def test_filling_the_battery_at_night_gains_nothing_from_ending_full(synthetic_config):
    """Discharge at full power through the peak (hours 17-20), then charge at full power in
    the cheap night hours 22-23: policy ``full`` until the cells are full, policy ``back``
    only back to its start SoC. Mechanism none, so every extra AC kWh ``full`` charges is
    imported at the night retail price r_t and pays degradation d; its extra cell energy
    (its SoC at the end minus the start) is credited c = the lowest feed-in price:

        cost(full) - cost(back) = sum_t (r_t + d) extra_t - c * (SoC_end - SoC_start)
                               >= (0.12 + d - 0.95 c) * extra > 0,

    since a cell kWh costs 1 / 0.95 AC kWh. Crediting the charge price instead (0.95 x (0.50 -
    0.02) = 0.456, what the symmetric terminal value did) makes ending full pay."""
    config = {**synthetic_config, "market": {"mechanism": "none"},
              "tariff": {"retail_tou": STRONG_TOU, "feed_in": 0.08}}

    def run(fill: bool, **overrides) -> tuple[torch.Tensor, dict[str, torch.Tensor], Any]:
        env = envs.make_batched_env({**config, **overrides}, dtype="float64")
        env.reset(seed=0, days=[100])
        start = env.soc_kwh[0].clone()
        step_kwh = 0.95 * env.battery_kw * env.dt_h  # cell kWh of one step at full power
        cost = torch.zeros(env.n_agents, dtype=torch.float64)
        energy, retail, terminal = [], [], None
        for step in range(STEPS_PER_DAY):
            hour = step // 4
            actions = torch.zeros(1, env.n_agents, 2, dtype=torch.float64)
            if 17 <= hour <= 20:
                actions[..., 0] = -1.0
            elif hour >= 22:
                room = (start - env.soc_kwh[0]).clamp_min(0.0) / step_kwh.clamp_min(1e-12)
                actions[0, :, 0] = 1.0 if fill else room.clamp_max(1.0)
            _, _, _, _, info = env.step(actions)
            cost += info["cost"][0]
            energy.append(info["battery_energy_kwh"][0])
            retail.append(info["retail_price"][0])
            terminal = info["terminal_value_cost"][0]
        end = info["soc_kwh"][0]
        return cost, {"energy": torch.stack(energy), "retail": torch.stack(retail),
                      "start": start, "end": end, "terminal": terminal}, env

    full_cost, full, env = run(True)
    back_cost, back, _ = run(False)
    assert env.terminal_credit_price == pytest.approx(0.08)
    has_battery = env.capacity_kwh > 0
    assert bool(has_battery.any())
    # Same actions up to hour 22; "back" ends at its start SoC, "full" above it.
    torch.testing.assert_close(back["end"], back["start"], rtol=0, atol=1e-9)
    assert bool((full["end"][has_battery] > full["start"][has_battery] + 0.1).all())
    extra = full["energy"] - back["energy"]  # [T, N] AC kWh, only at hours 22-23
    assert bool((extra[:88] == 0).all()) and bool((extra >= 0).all())
    degradation = env.config.battery.degradation_cost
    expected = (((full["retail"][:, None] + degradation) * extra).sum(0)
                - 0.08 * (full["end"] - full["start"]))
    torch.testing.assert_close(full_cost - back_cost, expected, rtol=0, atol=1e-9)
    floor = (0.12 + degradation - 0.95 * 0.08) * extra.sum(0)
    assert bool((expected >= floor - 1e-12).all())
    assert bool((full_cost - back_cost)[has_battery].gt(0.05).all())
    # The symmetric terminal value (credit = charge price) paid for ending full.
    symmetric = {"episode": {"terminal_credit_price": env.terminal_price}}
    full_sym, _, _ = run(True, **symmetric)
    back_sym, _, _ = run(False, **symmetric)
    assert bool((full_sym[has_battery] < back_sym[has_battery]).all())


BINDING = {"community": {"pv_share": 1.0, "pv_kwp_per_mwh": 3.0}, "market": {"mechanism": "none"}}
"""The default feeder (1-LV-rural1, zbus) with 3 kWp of PV per MWh of load in every home: plain
grid operation raises voltages and overloads lines around midday on sunny days."""
SUNNY_DAYS = [150, 172, 200]


def _no_p2p_day(env) -> tuple[Any, list[dict[str, torch.Tensor]]]:
    """Step ``env`` through one day without P2P: batteries idle, midpoint prices; returns the
    accumulator's totals and the step infos."""
    from envs.metrics import EpisodeAccumulator

    accumulator = EpisodeAccumulator(env.n_envs, env.n_agents)
    actions = torch.zeros(env.n_envs, env.n_agents, 2)
    actions[..., 1] = 0.5
    infos, totals = [], None
    for _ in range(STEPS_PER_DAY):
        _, reward, _, _, info = env.step(actions)
        infos.append(info)
        totals = accumulator.update(info, reward)
    return totals, infos


@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-10), ("float32", 5e-5)])
def test_no_p2p_reference_carries_the_penalties_no_p2p_pays(dtype, tolerance):
    """Where plain grid operation violates limits, the no-P2P reference bill carries the
    penalties the no-P2P operation pays (the core's precomputed ``no_p2p_network_penalty``
    table, reported as the step info), agent by agent: the ``no_p2p`` policy saves 0 (to the
    round-off of a batch of 3 against the table's batches of 8192 in the solver's GEMM; the
    solver itself gives a row the same result in any batch, ``tests/test_network.py``)."""
    from envs import metrics

    env = envs.make_batched_env(BINDING, n_envs=len(SUNNY_DAYS), dtype=dtype)
    table = env.tables().no_p2p_network_penalty
    assert table.shape == env.load_kw.shape and table.dtype == env.dtype
    env.reset(seed=0, days=SUNNY_DAYS)
    totals, infos = _no_p2p_day(env)
    for info in infos:
        index = (info["day"] * STEPS_PER_DAY + info["step_of_day"])
        assert torch.equal(info["no_p2p_network_penalty"], table[index])
        torch.testing.assert_close(info["network_penalty"], info["no_p2p_network_penalty"],
                                   rtol=0, atol=tolerance)
    penalties = totals.agent["network_penalty"].sum(1)
    assert bool((penalties > 1.0).all()), penalties  # the limits bind on every day
    torch.testing.assert_close(totals.agent["no_p2p_cost"], totals.agent["cost"], rtol=0,
                               atol=tolerance * STEPS_PER_DAY)
    assert float(metrics.savings_vs_no_p2p(totals).abs().max()) < tolerance * STEPS_PER_DAY


def test_no_p2p_penalty_table_is_zero_where_nothing_binds():
    """Without a network model, and on the default community (where plain grid operation
    violates no limit), the table is 0 and the reference is the tariff bill alone, exactly."""
    from envs.metrics import no_p2p_step_cost

    for overrides in ({"network": {"model": "none"}}, {}):
        env = envs.make_batched_env({**overrides, "market": {"mechanism": "none"}},
                                    n_envs=len(SUNNY_DAYS))
        assert not bool(env.tables().no_p2p_network_penalty.any()), overrides
        env.reset(seed=0, days=SUNNY_DAYS)
        totals, infos = _no_p2p_day(env)
        bill = sum(no_p2p_step_cost(info["load_kwh"], info["pv_kwh"], info["retail_price"],
                                    info["feed_in_price"]).double() for info in infos)
        assert torch.equal(totals.agent["no_p2p_cost"], bill)
        assert torch.equal(totals.agent["no_p2p_cost"], totals.agent["cost"])


def test_ac_no_p2p_penalties_are_the_zbus_models():
    """With ``network.model: ac`` the table comes from the Z-bus model (pandapower's
    equations; runpp for a year of steps would take minutes): the penalties runpp charges the
    no-P2P operation agree with it to its accuracy."""
    env = envs.make_batched_env({**BINDING, "network": {"model": "ac"}}, n_envs=1,
                                dtype="float64")
    zbus = envs.make_batched_env(BINDING, n_envs=1, dtype="float64")
    torch.testing.assert_close(env.no_p2p_network_penalty, zbus.no_p2p_network_penalty)
    env.reset(seed=0, days=[172])
    actions = torch.zeros(1, env.n_agents, 2)
    actions[..., 1] = 0.5
    env.step_of_day.fill_(48)  # midday: the limits bind
    charged = 0.0
    for _ in range(4):
        *_, info = env.step(actions)
        torch.testing.assert_close(info["network_penalty"], info["no_p2p_network_penalty"],
                                   rtol=1e-4, atol=1e-6)
        charged += float(info["network_penalty"].sum())
    assert charged > 0.0
