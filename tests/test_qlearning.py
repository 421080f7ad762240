"""Tabular Q-learning (agents/qlearning.py): the batched update on hand-computed cases, shared
vs independent tables, the discretisation, training through train.py's entry points
(checkpoint, resume), and learning on a toy battery-arbitrage case with a known optimum."""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from run_records import run_metrics, tensorboard_scalars

import envs
import train
from agents.algorithm import EnvSpec
from agents.checkpoints import load_checkpoint
from agents.evaluation import evaluate_policy, metric_scalars
from agents.policy import load_policy
from agents.qlearning import (
    Discretiser,
    QLearning,
    QLearningConfig,
    step_sizes,
    tabular_update,
)
from agents.run_config import (
    TrainConfig,
    build_run_config,
    eval_env_config,
    evaluation_days,
    make_generator,
)
from envs.config import ConfigError, ObservationConfig
from envs.observations import feature_names

SYNTHETIC = {"community": {"feeder": "synthetic", "n_agents": 4}, "network": {"model": "none"},
             "action": {"type": "discrete"}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_agent(n_agents: int = 2, n_actions: int = 4, **overrides) -> QLearning:
    """A Q-learner with two states (SoC below / above 0.5) and no other feature; every tried
    action counts (``min_visits`` 1) unless overridden."""
    config = QLearningConfig(**{"time_bins": 1, "soc_edges": [0.5], "net_load_edges": [],
                                "tariff_edges": [], "min_visits": 1, **overrides})
    spec = EnvSpec(n_envs=1, n_agents=n_agents, obs_dim=12, state_dim=3 * n_agents + 7,
                   action_type="discrete", n_discrete_actions=n_actions, episode_steps=96,
                   agent_names=tuple(f"a{i}" for i in range(n_agents)),
                   device=torch.device("cpu"),
                   feature_names=tuple(feature_names(ObservationConfig())))
    return QLearning(config, spec, TrainConfig(total_steps=1000), make_generator(0))


def one_step(states, actions, rewards, next_states, terminated):
    """One transition per agent of one environment as ``[T=1, B=1, N]`` tensors."""
    return (torch.tensor([[states]]), torch.tensor([[actions]]),
            torch.tensor([[rewards]], dtype=torch.float32), torch.tensor([[next_states]]),
            torch.tensor([[terminated]]))


# --------------------------------------------------------------------------------------------
# The batched update
# --------------------------------------------------------------------------------------------


def test_batched_update_matches_hand_computation():
    agent = make_agent(learning_rate=0.5, step_size="constant", gamma=0.9)
    agent.q_table[0] = torch.tensor([[0.0, 0.0, 0.4, 0.0], [1.0, 3.0, 2.0, -1.0]])
    agent.q_table[1] = torch.tensor([[0.0, 0.0, 0.0, 0.0], [-0.2, 5.0, 0.0, 0.0]])
    agent.visits.fill_(1)
    agent.visits[0, 1, 1] = 0  # agent 0 never tried action 1 in state 1: not bootstrapped
    before_q, before_visits = agent.q_table.clone(), agent.visits.clone()
    # agent 0: s=0, a=2, r=-1, s'=1, continues; agent 1: s=1, a=0, r=0.5, terminal.
    agent.learn(*one_step([0, 1], [2, 0], [-1.0, 0.5], [1, 1], [False, True]))
    # agent 0: V(s') = max over tried = 2.0 (not the untried 3.0); target = -1 + 0.9 * 2 = 0.8;
    #          Q = 0.4 + 0.5 * (0.8 - 0.4) = 0.6.
    # agent 1: terminal, target = 0.5; Q = -0.2 + 0.5 * (0.5 + 0.2) = 0.15.
    expected = before_q.clone()
    expected[0, 0, 2] = 0.6
    expected[1, 1, 0] = 0.15
    torch.testing.assert_close(agent.q_table, expected)
    expected_visits = before_visits.clone()
    expected_visits[0, 0, 2] += 1
    expected_visits[1, 1, 0] += 1
    assert torch.equal(agent.visits, expected_visits)


def test_only_known_actions_count_in_bootstrap_and_evaluation():
    agent = make_agent(n_agents=1, min_visits=20)
    agent.q_table[0, 0] = torch.tensor([1.0, 9.0, 5.0, 2.0])
    agent.visits[0, 0] = torch.tensor([25, 3, 0, 20])
    obs = torch.zeros(1, 1, 12)
    obs[..., 6] = 1.0  # step 0, SoC 0: state 0
    # actions 1 (3 samples) and 2 (none) do not count: V = 2, greedy = action 3
    assert agent.state_values(torch.tensor([[0]])).item() == 2.0
    assert agent.act(obs, torch.zeros(1, 10), deterministic=True).item() == 3
    agent.visits[0, 0] = torch.tensor([5, 3, 0, 1])  # none has 20: the most-sampled counts
    assert agent.state_values(torch.tensor([[0]])).item() == 1.0
    assert agent.act(obs, torch.zeros(1, 10), deterministic=True).item() == 0
    assert agent.state_values(torch.tensor([[1]])).item() == agent.config.init_q


def test_duplicates_move_like_sequential_updates_towards_their_mean():
    q_table = torch.zeros(1, 1, 2)
    visits = torch.zeros(1, 1, 2, dtype=torch.int64)
    visits[0, 0, 0] = 20  # past the averaging phase of lr = 0.1
    index = torch.zeros(3, dtype=torch.int64)
    errors = tabular_update(q_table, visits, index, index, index,
                            torch.tensor([1.0, 2.0, 6.0]), 0.1, "average")
    # three samples, mean target 3: weight 1 - 0.9 ** 3 = 0.271 -> Q = 0.813
    assert errors.tolist() == [1.0, 2.0, 6.0]
    assert q_table[0, 0, 0].item() == pytest.approx(0.813, abs=1e-6)
    assert visits[0, 0, 0].item() == 23
    # a fresh entry is the plain mean of its first samples (init_q forgotten)
    tabular_update(q_table, visits, index, index, index + 1, torch.tensor([1.0, 2.0, 6.0]),
                   0.1, "average")
    assert q_table[0, 0, 1].item() == pytest.approx(3.0)


def test_step_sizes_equal_sequential_products():
    for rule in ("constant", "average"):
        for learning_rate in (0.05, 0.3, 1.0):
            for before in range(0, 30, 3):
                for count in (1, 2, 7, 40):
                    keep = 1.0
                    for j in range(before + 1, before + count + 1):
                        alpha = learning_rate if rule == "constant" else max(1 / j,
                                                                             learning_rate)
                        keep *= 1.0 - alpha
                    got = step_sizes(torch.tensor([before]), torch.tensor([count]),
                                     learning_rate, rule)
                    assert got.item() == pytest.approx(1.0 - keep, abs=1e-6), (
                        rule, learning_rate, before, count)


def test_update_is_independent_of_sample_order():
    generator = torch.Generator().manual_seed(3)
    table = torch.randint(2, (200,), generator=generator)
    state = torch.randint(5, (200,), generator=generator)
    action = torch.randint(3, (200,), generator=generator)
    target = torch.randn(200, generator=generator)
    results = []
    for order in (torch.arange(200), torch.randperm(200, generator=generator)):
        q_table, visits = torch.zeros(2, 5, 3), torch.zeros(2, 5, 3, dtype=torch.int64)
        tabular_update(q_table, visits, table[order], state[order], action[order],
                       target[order], 0.2, "average")
        results.append(q_table)
    torch.testing.assert_close(results[0], results[1])


def test_backward_peng_returns_over_a_rollout():
    # One agent, T = 2: s0 -a0-> s1 (r=1) -a1-> s0 (r=2, terminal); lambda = 1, gamma = 0.5:
    # learned backwards, step 1's target is 2 and step 0's is 1 + 0.5 * 2 = 2 (Monte Carlo).
    agent = make_agent(n_agents=1, learning_rate=1.0, step_size="constant", gamma=0.5,
                       td_lambda=1.0)
    states = torch.tensor([[[0]], [[1]]])
    actions = torch.tensor([[[0]], [[1]]])
    rewards = torch.tensor([[[1.0]], [[2.0]]])
    next_states = torch.tensor([[[1]], [[0]]])
    terminated = torch.tensor([[[False]], [[True]]])
    agent.learn(states, actions, rewards, next_states, terminated)
    assert agent.q_table[0, 1, 1].item() == pytest.approx(2.0)
    assert agent.q_table[0, 0, 0].item() == pytest.approx(2.0)
    # lambda = 0 on fresh tables: step 0 bootstraps from V(s1) = 2 just learned -> 1 + 1 = 2,
    # and the same with a different reward shows the bootstrap: r=3 -> 3 + 0.5 * 2 = 4.
    agent = make_agent(n_agents=1, learning_rate=1.0, step_size="constant", gamma=0.5,
                       td_lambda=0.0)
    agent.learn(states, actions, torch.tensor([[[3.0]], [[2.0]]]), next_states, terminated)
    assert agent.q_table[0, 0, 0].item() == pytest.approx(4.0)


# --------------------------------------------------------------------------------------------
# Shared and independent tables
# --------------------------------------------------------------------------------------------


def test_independent_tables_learn_and_act_per_agent():
    agent = make_agent(learning_rate=1.0, step_size="constant")
    assert agent.q_table.shape == (2, 2, 4)
    # both agents in state 0 take action 3 with different terminal rewards
    agent.learn(*one_step([0, 0], [3, 3], [1.0, -1.0], [0, 0], [True, True]))
    assert agent.q_table[0, 0, 3].item() == 1.0 and agent.q_table[1, 0, 3].item() == -1.0
    agent.learn(*one_step([0, 0], [1, 1], [0.0, 0.0], [0, 0], [True, True]))
    obs = torch.zeros(1, 2, 12)  # SoC 0 -> state 0 for both agents
    obs[..., 6] = 1.0  # tod_cos = 1: step 0
    # agent 0 prefers action 3 (1 > 0), agent 1 action 1 (0 > -1)
    assert agent.act(obs, torch.zeros(1, 13), deterministic=True).tolist() == [[3, 1]]


def test_shared_table_pools_agents():
    agent = make_agent(shared=True, learning_rate=1.0, step_size="constant")
    assert agent.q_table.shape == (1, 2, 4)
    agent.learn(*one_step([0, 0], [3, 3], [1.0, -2.0], [0, 0], [True, True]))
    # both samples hit one entry: it moves to their mean
    assert agent.q_table[0, 0, 3].item() == pytest.approx(-0.5)
    assert agent.visits[0, 0, 3].item() == 2
    agent.learn(*one_step([0, 1], [1, 2], [0.0, 0.7], [0, 0], [True, True]))
    obs = torch.zeros(1, 2, 12)
    obs[..., 6] = 1.0
    # agents in the same state act alike; in different states they read the same table
    assert agent.act(obs, torch.zeros(1, 13), deterministic=True).tolist() == [[1, 1]]
    obs[0, 1, 2] = 0.8  # agent 1 now in state 1 (SoC >= 0.5)
    assert agent.act(obs, torch.zeros(1, 13), deterministic=True).tolist() == [[1, 2]]


def test_unvisited_state_acts_idle_and_exploration_uses_the_run_generator():
    agent = make_agent(n_actions=25)
    obs = torch.zeros(3, 2, 12)
    obs[..., 6] = 1.0
    assert agent.act(obs, torch.zeros(3, 13), deterministic=True).eq(12).all()
    agent.epsilon = 1.0
    state = agent.generator.get_state()
    first = agent.act(obs, torch.zeros(3, 13))
    agent.generator.set_state(state)
    assert torch.equal(agent.act(obs, torch.zeros(3, 13)), first)


# --------------------------------------------------------------------------------------------
# Discretisation and configuration
# --------------------------------------------------------------------------------------------


def test_discretiser_reads_time_soc_net_load_and_tariff():
    env = envs.make_batched_env(SYNTHETIC, n_envs=3, **{"observation.forecast_steps": 2,
                                                        "observation.include_voltage": True})
    config = QLearningConfig()
    discretiser = Discretiser(config, env.feature_names)
    obs, _ = env.reset(seed=0)
    for _ in range(37):
        obs, *_ = env.step(torch.randint(25, (3, 4), generator=torch.Generator().manual_seed(1)))
    features = discretiser.features(obs)
    assert torch.equal(features["time"], env.step_of_day[:, None].expand(3, 4))
    inverse_capacity = env.tables().inverse_capacity
    torch.testing.assert_close(features["soc"], (env.soc_kwh * inverse_capacity).float())
    index = (env.day * 96 + env.step_of_day) % (96 * 366)
    net = (env.load_kw[index] - env.pv_kw[index]) / env.peak_load_kw
    torch.testing.assert_close(features["net_load"], net.float())
    states = discretiser(obs)
    assert states.dtype == torch.int64 and int(states.max()) < config.n_states()
    # hour 9 (step 37), a bin per edge list; the time index is the outermost
    assert (states // (17 * 5 * 3)).eq(9).all()


def test_bin_edges_put_a_value_on_an_edge_in_the_upper_bin():
    config = QLearningConfig(time_bins=1, soc_edges=[0.3, 0.6], net_load_edges=[],
                             tariff_edges=[])
    discretiser = Discretiser(config, feature_names(ObservationConfig()))
    obs = torch.zeros(5, 12)
    obs[:, 6] = 1.0
    obs[:, 2] = torch.tensor([0.0, 0.29, 0.3, 0.6, 0.9])
    assert discretiser(obs).tolist() == [0, 0, 1, 2, 2]


def test_continuous_actions_are_a_config_error():
    spec = EnvSpec(1, 2, 12, 13, "continuous", 25, 96, ("a", "b"), torch.device("cpu"))
    with pytest.raises(ConfigError, match="env.action.type"):
        QLearning(QLearningConfig(), spec, TrainConfig(), make_generator(0))
    with pytest.raises(ConfigError, match="qlearning.soc_edges"):
        build_run_config({"algo": "qlearning", "qlearning": {"soc_edges": [0.5, 0.2]}})


def test_shipped_config_is_valid_and_discrete():
    config = build_run_config("configs/qlearning.yaml")
    assert config.env.action.type == "discrete"
    assert config.hyperparameters == QLearningConfig()  # the YAML states every default


# --------------------------------------------------------------------------------------------
# Training through train.py's entry points
# --------------------------------------------------------------------------------------------


ITERATION = 4 * 8
"""Env-steps per iteration of the small config: n_envs * rollout_steps."""


def run_config(**qlearning) -> dict:
    """Two episodes per environment, evaluated and checkpointed every 3 iterations."""
    return {"algo": "qlearning", "seed": 5, "name": "test", "env": SYNTHETIC,
            "train": {"total_steps": 4 * 96 * 2, "n_envs": 4, "eval_every": 3 * ITERATION,
                      "eval_episodes": 2, "checkpoint_every": 3 * ITERATION,
                      "torch_threads": 1},
            "qlearning": {"rollout_steps": 8, **qlearning}}


@pytest.mark.slow
@pytest.mark.parametrize("shared", [False, True])
def test_training_checkpoint_and_resume(tmp_path, shared):
    data = run_config(shared=shared)
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert train.main(["--config", str(path), "--logdir", str(tmp_path / "runs"),
                       "--no-progress"]) == 0
    (straight,) = (tmp_path / "runs").iterdir()
    metrics = run_metrics(straight)
    assert metrics["global_step"] == 4 * 96 * 2
    assert all(math.isfinite(value) for value in metrics["final_eval"].values())
    curves = tensorboard_scalars(straight, speed=False)
    for tag in ("losses/td_loss", "losses/q_values", "charts/epsilon",
                "charts/state_coverage"):
        assert len(curves[tag]) == 24 and all(math.isfinite(v) for _, v in curves[tag]), tag
    assert curves["charts/epsilon"][-1][1] == pytest.approx(0.05)

    policy = load_policy(straight)
    env = envs.make_batched_env(eval_env_config(policy.config))
    obs, _ = env.reset(seed=0)
    actions = policy.act(obs, env)
    assert actions.shape == (2, 4) and actions.dtype == torch.int64
    env.step(actions)

    config = build_run_config(data)
    interrupted = train.new_run_dir(tmp_path / "interrupted", config)
    assert train.Trainer(config, interrupted, progress=False).run(
        stop_after_steps=4 * ITERATION) is None
    assert load_checkpoint(interrupted)["global_step"] == 3 * ITERATION
    (interrupted / "config.yaml").write_text(train.dump_run_config(config))
    assert train.main(["--resume", str(interrupted), "--no-progress"]) == 0
    assert run_metrics(interrupted) == metrics
    assert tensorboard_scalars(interrupted, speed=False) == curves
    expected, resumed = (load_checkpoint(run)["algorithm"] for run in (straight, interrupted))
    for key in ("q_table", "visits"):
        assert torch.equal(resumed[key], expected[key]), key
    assert (resumed["epsilon"], resumed["updates"]) == (expected["epsilon"],
                                                        expected["updates"])


# --------------------------------------------------------------------------------------------
# Learning on a toy case with a known optimum
# --------------------------------------------------------------------------------------------

TOU = [0.20] * 6 + [0.28] * 11 + [0.40] * 4 + [0.28] + [0.20] * 2
"""Cheap nights (0.20), day 0.28, expensive evenings 17-21 h (0.40), currency/kWh."""


@pytest.mark.slow
def test_learns_battery_arbitrage_on_time_of_use_tariff(tmp_path):
    """One prosumer with a 3.66 kWh / 1.83 kW battery, no PV, no market, time-of-use tariff.

    Costs on the 20 evaluation test days (seed 1, measured): idle battery 2.969 per day; the
    perfect-foresight optimum (agents.baselines oracle) 2.266; a hand-written plan (idle,
    then discharge at half power 17-21 h) 2.567. After 300k env-steps (about 4 s) the greedy
    policy costs 2.553 (seeds 1-5: 2.525-2.591), 14 % below idle.
    """
    env_config = {
        "community": {"feeder": "synthetic", "n_agents": 1, "battery_share": 1.0,
                      "pv_share": 0.0},
        "network": {"model": "none"}, "market": {"mechanism": "none"},
        "tariff": {"retail_tou": TOU, "feed_in": 0.08},
        # v1 accounting: the known optimum of this toy problem includes emptying the battery
        # by the day's end (with the terminal value on, the start energy is worth the peak
        # price and the learnable margin shrinks to night-to-peak cycling)
        "episode": {"terminal_value": False},
        "action": {"type": "discrete", "battery_levels": 5, "price_levels": 2}}
    config = build_run_config({
        "algo": "qlearning", "seed": 1, "env": env_config,
        "train": {"total_steps": 300_000, "n_envs": 64, "eval_every": 0, "eval_episodes": 20,
                  "checkpoint_every": 0},
        # time and SoC only: without PV the net load carries little, the tariff is the hour's;
        # min_visits 1: one agent and deterministic prices, little noise to guard against
        # (with the default 20 the same run costs 2.646)
        "qlearning": {"net_load_edges": [], "tariff_edges": [], "min_visits": 1}})
    trainer = train.Trainer(config, tmp_path, progress=False)
    learned = trainer.run()["final_eval"]["community_cost"]

    class Idle:
        name, mechanism = "idle", None

        def reset(self, env, seed=None):
            pass

        def act(self, obs, env):
            return torch.full(obs.shape[:2], trainer.algorithm.idle_action)

    eval_config = eval_env_config(config)
    idle = metric_scalars(evaluate_policy(envs.make_batched_env(eval_config), Idle(),
                                          evaluation_days(eval_config, 20), seed=1)[0])
    assert idle["community_cost"] == pytest.approx(2.969, abs=1e-3)
    assert learned < 0.92 * idle["community_cost"], (learned, idle["community_cost"])
