"""Behavioural (prospect-theory) prosumers: ``envs/behaviour.py``, the ``behaviour`` config
section and the core's rewards (the numba engine's are compared with the core's in
``tests/test_single_engine.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import envs
from envs.behaviour import behavioural_mask, prospect_value
from envs.config import ConfigError, env_config
from envs.data import STEPS_PER_DAY

SYNTHETIC = {"community": {"feeder": "synthetic", "n_agents": 6, "pv_share": 0.7,
                           "battery_share": 0.7}, "network": {"model": "none"}}


def _value(x: list[float], alpha: float = 0.88, beta: float = 0.88,
           loss_aversion: float = 2.25) -> list[float]:
    return prospect_value(torch.tensor(x, dtype=torch.float64), alpha, beta,
                          loss_aversion).tolist()


def test_prospect_value_on_hand_computed_gains_and_losses() -> None:
    # alpha = beta = 0.5: V(4) = 2, V(-4) = -lambda * 2; V(0.25) = 0.5, V(-0.25) = -0.5 lambda.
    assert _value([4.0, -4.0, 0.25, -0.25], 0.5, 0.5, 2.0) == [2.0, -4.0, 0.5, -1.0]
    # Different exponents for gains and losses: V(8) = 8 ** (1/3) = 2, V(-9) = -3 * 9 ** 0.5.
    assert _value([8.0, -9.0], 1 / 3, 0.5, 3.0) == pytest.approx([2.0, -9.0])
    # Tversky & Kahneman's defaults: V(1) = 1, V(-1) = -2.25, V(0.01) = 0.01 ** 0.88.
    assert _value([1.0, -1.0, 0.01]) == pytest.approx([1.0, -2.25, 0.0173780083], rel=1e-9)


def test_prospect_value_kink_at_the_reference() -> None:
    # V(0) = 0 from both sides; with linear exponents the slope jumps from lambda (losses)
    # to 1 (gains) at 0: a loss weighs lambda times a gain of the same size.
    assert _value([0.0, -0.0]) == [0.0, 0.0]
    h = 1e-3
    gain, loss = _value([h, -h], 1.0, 1.0, 2.25)
    assert gain == pytest.approx(h, rel=1e-12)
    assert loss == pytest.approx(-2.25 * h, rel=1e-12)
    # With alpha = beta < 1 the ratio of a loss to the same gain is lambda at every size.
    x = [0.01, 0.1, 1.0, 10.0]
    gains, losses = _value(x), _value([-v for v in x])
    np.testing.assert_allclose(np.array(losses) / np.array(gains), -2.25, rtol=1e-12)
    # Concave in gains, convex in losses: V(2x) < 2 V(x), V(-2x) > 2 V(-x).
    assert _value([2.0])[0] < 2 * _value([1.0])[0]
    assert _value([-2.0])[0] > 2 * _value([-1.0])[0]


@pytest.mark.parametrize(("section", "key"), [
    ({"alpha": 0.0}, "behaviour.alpha"),
    ({"alpha": 1.2}, "behaviour.alpha"),
    ({"beta": -0.5}, "behaviour.beta"),
    ({"loss_aversion": 0.9}, "behaviour.loss_aversion"),
    ({"share": 1.5}, "behaviour.share"),
    ({"share": -0.1}, "behaviour.share"),
    ({"share": 0.5, "agents": ["house_1"]}, "behaviour.agents"),
    ({"agents": ["house_1", "house_1"]}, "behaviour.agents"),
    ({"reference": "day"}, "behaviour.reference"),
    ({"time_scale": "week"}, "behaviour.time_scale"),
    ({"time_scale": None}, "behaviour.time_scale"),
    ({"seed": -1}, "behaviour.seed"),
    ({"lambda": 2.0}, "behaviour.lambda"),
])
def test_bad_behaviour_values_name_the_key(section: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'"):
        env_config({"behaviour": section})


def test_unknown_agent_names_are_a_config_error_naming_the_key() -> None:
    config = env_config({**SYNTHETIC, "behaviour": {"agents": ["house_1", "house_9"]}})
    with pytest.raises(ConfigError, match=r"'behaviour.agents'.*house_9"):
        envs.make_batched_env(config)


def test_behavioural_mask_share_list_and_seed() -> None:
    names = [f"a{i}" for i in range(10)]
    mask = behavioural_mask(names, 0.3, None, seed=0)
    assert mask.sum() == 3
    np.testing.assert_array_equal(mask, behavioural_mask(names, 0.3, None, seed=0))
    draws = {tuple(behavioural_mask(names, 0.3, None, seed=s)) for s in range(5)}
    assert len(draws) > 1  # the seed picks who
    assert behavioural_mask(names, 0.0, None, 0).sum() == 0
    assert behavioural_mask(names, 1.0, None, 0).all()
    np.testing.assert_array_equal(behavioural_mask(names, 0.0, ["a7", "a2"], 0),
                                  np.isin(np.arange(10), [2, 7]))


def _run(config: dict, steps: int = 120) -> list[tuple[torch.Tensor, dict]]:
    """(reward, info) of ``steps`` steps (over an episode's end) of random actions from
    two summer days."""
    env = envs.make_batched_env(config, n_envs=2, dtype="float64")
    env.reset(seed=5, days=[170, 200])  # summer days: PV surplus, some agents earn
    generator = torch.Generator().manual_seed(0)
    out = []
    for _ in range(steps):
        battery = torch.rand(2, env.n_agents, generator=generator, dtype=torch.float64)
        price = torch.rand(2, env.n_agents, generator=generator, dtype=torch.float64)
        _, reward, _, _, info = env.step(torch.stack([2 * battery - 1, price], dim=-1))
        out.append((reward, info))
    return out


@pytest.mark.parametrize("reference", ["no_p2p", "zero"])
def test_mixed_population_rewards(reference: str) -> None:
    """Off: reward = -cost * reward_scale exactly. Mixed: the same dynamics and costs, the
    rational agents' rewards bit-identical to the off env's, the behavioural agents' the
    prospect value of their step's saving (or of -cost) recomputed here in numpy."""
    base = {"reward_scale": 0.5}
    off = _run(base)
    behaviour = {"share": 0.5, "seed": 1, "alpha": 0.7, "beta": 0.9, "loss_aversion": 2.5,
                 "reference": reference}
    mixed = _run({**base, "behaviour": behaviour})
    mask = envs.make_batched_env({**base, "behaviour": behaviour}).behavioural.numpy()
    assert 0 < mask.sum() < len(mask)
    saw_gain = saw_loss = False
    for (reward_off, info_off), (reward, info) in zip(off, mixed, strict=True):
        assert torch.equal(reward_off, -info_off["cost"] * 0.5)
        assert torch.equal(info["cost"], info_off["cost"])
        assert torch.equal(reward[:, ~mask], reward_off[:, ~mask])
        cost = info["cost"].numpy()
        if reference == "no_p2p":
            net = (info["load_kwh"] - info["pv_kwh"]).numpy()
            bill = (info["retail_price"].numpy()[:, None] * np.maximum(net, 0.0)
                    + info["feed_in_price"].numpy()[:, None] * np.minimum(net, 0.0))
            x = bill + info["no_p2p_network_penalty"].numpy() - cost
        else:
            x = -cost
        value = np.where(x >= 0, np.abs(x) ** 0.7, -2.5 * np.abs(x) ** 0.9)
        np.testing.assert_allclose(reward.numpy()[:, mask], 0.5 * value[:, mask], rtol=1e-12,
                                   atol=1e-15)
        saw_gain |= bool((x[:, mask] > 0).any())
        saw_loss |= bool((x[:, mask] < 0).any())
    assert saw_gain and saw_loss


def _savings(info: dict) -> np.ndarray:
    """Each agent's saving of the step against its no-P2P bill, ``[B, N]``, recomputed from
    the infos (``envs.metrics.no_p2p_step_cost`` minus the cost)."""
    net = (info["load_kwh"] - info["pv_kwh"]).numpy()
    bill = (info["retail_price"].numpy()[:, None] * np.maximum(net, 0.0)
            + info["feed_in_price"].numpy()[:, None] * np.minimum(net, 0.0))
    return bill + info["no_p2p_network_penalty"].numpy() - info["cost"].numpy()


def _v(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, np.abs(x) ** 0.7, -2.5 * np.abs(x) ** 0.9)


DAY_BEHAVIOUR = {"share": 0.5, "seed": 1, "alpha": 0.7, "beta": 0.9, "loss_aversion": 2.5,
                 "time_scale": "day"}


def test_day_time_scale_rewards_telescope_to_the_value_of_each_days_saving() -> None:
    """Two-day episodes, then a third day (the automatic reset): each behavioural agent's
    rewards of a day sum to ``V(the day's saving) * reward_scale``, step by step they are
    ``V(S_t) - V(S_{t-1})`` of the running saving (restarted at midnight, also the one inside
    the episode), and the rational agents' rewards are the off env's, bit for bit."""
    base = {"reward_scale": 0.5, "episode": {"length_days": 2}}
    steps = 3 * STEPS_PER_DAY
    off = _run(base, steps)
    mixed = _run({**base, "behaviour": DAY_BEHAVIOUR}, steps)
    mask = envs.make_batched_env({**base, "behaviour": DAY_BEHAVIOUR}).behavioural.numpy()
    assert 0 < mask.sum() < len(mask)
    day_values = []
    for day in range(3):
        running = np.zeros((2, len(mask)))
        rewards = np.zeros((2, len(mask)))
        step_values = np.zeros((2, len(mask)))  # what the step time scale would give
        for t in range(day * STEPS_PER_DAY, (day + 1) * STEPS_PER_DAY):
            (reward_off, info_off), (reward, info) = off[t], mixed[t]
            assert int(info["step_of_day"][0]) == t - day * STEPS_PER_DAY
            assert torch.equal(info["cost"], info_off["cost"])  # same dynamics
            assert torch.equal(reward[:, ~mask], reward_off[:, ~mask])
            before = running
            running = running + _savings(info)
            np.testing.assert_allclose(reward.numpy()[:, mask],
                                       0.5 * (_v(running) - _v(before))[:, mask], rtol=1e-9,
                                       atol=1e-12)
            rewards += reward.numpy()
            step_values += 0.5 * _v(_savings(info))
        np.testing.assert_allclose(rewards[:, mask], 0.5 * _v(running)[:, mask], rtol=1e-9,
                                   atol=1e-12)
        day_values.append(running[:, mask])
        # Not the step time scale's sum of V(x_t): the day's framing really differs.
        assert not np.allclose(rewards[:, mask], step_values[:, mask], rtol=1e-3)
    assert np.any(np.concatenate(day_values) > 0) and np.any(np.concatenate(day_values) < 0)
    assert bool(mixed[2 * STEPS_PER_DAY - 1][1]["done"].all())  # day 3 is a new episode


def test_day_gain_is_state_zeroed_by_resets_and_carried_by_set_state() -> None:
    """``behaviour_day_gain`` is the running saving ``S_t`` (``get_state``), a reset of one
    environment zeroes only its row, and a core given the state mid-day steps on with the
    same rewards."""
    config = {**SYNTHETIC, "behaviour": DAY_BEHAVIOUR}
    env = envs.make_batched_env(config, n_envs=2, dtype="float64")
    env.reset(seed=5, days=[170, 200])
    generator = torch.Generator().manual_seed(0)

    def actions() -> torch.Tensor:
        battery = torch.rand(2, env.n_agents, generator=generator, dtype=torch.float64)
        price = torch.rand(2, env.n_agents, generator=generator, dtype=torch.float64)
        return torch.stack([2 * battery - 1, price], dim=-1)

    running = np.zeros((2, env.n_agents))
    for _ in range(40):
        info = env.step(actions())[4]
        running = running + _savings(info)
    state = env.get_state()
    np.testing.assert_allclose(state["behaviour_day_gain"].numpy(), running, rtol=1e-9,
                               atol=1e-12)
    twin = envs.make_batched_env(config, n_envs=2, dtype="float64")
    twin.set_state(state)
    for _ in range(5):
        step_actions = actions()
        assert torch.equal(twin.step(step_actions)[1], env.step(step_actions)[1])
    env.reset(env_index=0)
    gain = env.get_state()["behaviour_day_gain"]
    assert not gain[0].any() and gain[1].any()


def test_step_time_scale_is_the_default_and_keeps_no_day_gain() -> None:
    """``time_scale: step`` is the default and gives the same rewards bit for bit (each
    ``V(x_t)``, checked in test_mixed_population_rewards); the day gain stays zero."""
    behaviour = {k: v for k, v in DAY_BEHAVIOUR.items() if k != "time_scale"}
    assert env_config({"behaviour": behaviour}).behaviour.time_scale == "step"
    default = _run({"behaviour": behaviour}, 100)
    explicit = _run({"behaviour": {**behaviour, "time_scale": "step"}}, 100)
    for (reward, _), (reward_step, _) in zip(default, explicit, strict=True):
        assert torch.equal(reward, reward_step)
    env = envs.make_batched_env({"behaviour": behaviour}, n_envs=2)
    env.reset(seed=0)
    env.step(torch.zeros(2, env.n_agents, 2))
    assert not env.get_state()["behaviour_day_gain"].any()
