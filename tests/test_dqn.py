"""DQN (agents/dqn.py): double-DQN targets on a hand-made case, target-network updates, the
shared network and the per-agent ensemble, learning from demonstrations (DQfD: the level
mapping, the large-margin loss, pretraining, config errors), and training through train.py's
entry points (losses, checkpoint, resume with the replay buffer, with demonstrations too)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from run_records import assert_same, run_metrics, tensorboard_scalars
from torch import nn

import envs
import train
from agents import imitation
from agents.algorithm import EnvSpec
from agents.checkpoints import load_checkpoint
from agents.collector import Collector
from agents.dqn import DQN, DQNConfig, demonstrated_actions, margin_loss
from agents.networks import PerAgentMLP, mlp
from agents.policy import load_policy
from agents.run_config import TrainConfig, build_run_config, eval_env_config, make_generator
from envs.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]

SYNTHETIC = {"community": {"feeder": "synthetic", "n_agents": 4}, "network": {"model": "none"},
             "action": {"type": "discrete"}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_dqn(n_agents: int = 2, n_actions: int = 3, **overrides) -> DQN:
    spec = EnvSpec(n_envs=1, n_agents=n_agents, obs_dim=12, state_dim=3 * n_agents + 7,
                   action_type="discrete", n_discrete_actions=n_actions, episode_steps=96,
                   agent_names=tuple(f"a{i}" for i in range(n_agents)),
                   device=torch.device("cpu"))
    config = DQNConfig(**{"hidden_sizes": [8], "buffer_size": 16, **overrides})
    return DQN(config, spec, TrainConfig(total_steps=1000), make_generator(0))


class Fixed(nn.Module):
    """A 'network' returning preset action values ``[M, N, A]`` whatever the input."""

    def __init__(self, values: torch.Tensor) -> None:
        super().__init__()
        self.values = values

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.values


# --------------------------------------------------------------------------------------------
# Targets and target network
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("double_q", [True, False])
def test_td_targets(double_q):
    agent = make_dqn(gamma=0.5, double_q=double_q)
    # one env-step, two agents, three actions
    agent.q_network = Fixed(torch.tensor([[[0.0, 9.0, 1.0], [5.0, 0.0, 0.0]]]))
    agent.target_network = Fixed(torch.tensor([[[4.0, 2.0, 8.0], [1.0, 7.0, 3.0]]]))
    batch = {"next_obs": torch.zeros(1, 2, 12), "rewards": torch.tensor([[1.0, -1.0]]),
             "terminated": torch.tensor([False])}
    target = agent.td_targets(batch)
    # double: online argmax (1, 0) evaluated by the target net (2, 1); plain: target max (8, 7)
    expected = [1 + 0.5 * 2, -1 + 0.5 * 1] if double_q else [1 + 0.5 * 8, -1 + 0.5 * 7]
    torch.testing.assert_close(target, torch.tensor([expected]))
    batch["terminated"] = torch.tensor([True])
    torch.testing.assert_close(agent.td_targets(batch), torch.tensor([[1.0, -1.0]]))


def test_n_step_targets_use_the_batch_discount():
    """With ``n_step`` the batch's ``rewards`` are already the steps' discounted sum and its
    ``discount`` (``gamma ** steps``, 0 after the episode's end) weighs the bootstrap."""
    agent = make_dqn(gamma=0.5, n_step=3, double_q=False)
    agent.q_network = Fixed(torch.tensor([[[0.0, 9.0, 1.0], [5.0, 0.0, 0.0]]] * 2))
    agent.target_network = Fixed(torch.tensor([[[4.0, 2.0, 8.0], [1.0, 7.0, 3.0]]] * 2))
    batch = {"next_obs": torch.zeros(2, 2, 12), "rewards": torch.tensor([[1.0, -1.0]] * 2),
             "terminated": torch.tensor([False, True]), "discount": torch.tensor([0.125, 0.0])}
    torch.testing.assert_close(agent.td_targets(batch), torch.tensor(
        [[1 + 0.125 * 8, -1 + 0.125 * 7], [1.0, -1.0]]))


def test_n_step_gradient_steps_sample_n_step_returns(monkeypatch):
    """``n_step`` > 1 draws its minibatches with ``ReplayBuffer.sample_n_step`` (stride: the
    environments per collector step), 1 with ``sample``."""
    calls = []
    for n_step in (1, 4):
        agent = make_dqn(n_step=n_step)
        monkeypatch.setattr(agent.replay_buffer, "sample",
                            lambda *args: calls.append(("sample", args[2:])) or _batch())
        monkeypatch.setattr(agent.replay_buffer, "sample_n_step",
                            lambda *args: calls.append(("n_step", args[2:])) or _batch(True))
        agent._gradient_step()
    assert calls == [("sample", ()), ("n_step", (4, 0.99, 1))]


def _batch(n_step: bool = False) -> dict[str, torch.Tensor]:
    batch = {"obs": torch.zeros(3, 2, 12), "next_obs": torch.zeros(3, 2, 12),
             "actions": torch.zeros(3, 2, dtype=torch.long), "rewards": torch.zeros(3, 2),
             "terminated": torch.zeros(3, dtype=torch.bool)}
    if n_step:
        batch["discount"] = torch.full((3,), 0.5)
    return batch


@pytest.mark.parametrize("tau", [1.0, 0.25])
def test_target_network_copy_and_polyak(tau):
    agent = make_dqn(tau=tau)
    old = [p.detach().clone() for p in agent.target_network.parameters()]
    with torch.no_grad():
        for parameter in agent.q_network.parameters():
            parameter.add_(1.0)
    agent.update_target()
    for before, target, online in zip(old, agent.target_network.parameters(),
                                      agent.q_network.parameters(), strict=True):
        torch.testing.assert_close(target, before + tau * (online - before))


def test_gradient_steps_update_the_target_every_frequency():
    env = envs.make_batched_env(SYNTHETIC, n_envs=8)
    agent = DQN(DQNConfig(hidden_sizes=[8], batch_size=4, target_network_frequency=3),
                EnvSpec.from_env(env), TrainConfig(total_steps=1000), make_generator(0))
    collector = Collector(env, seed=0)
    agent.replay_buffer.add(collector.step(agent.act(collector.obs, collector.state)))
    first = [p.detach().clone() for p in agent.target_network.parameters()]
    for step in range(1, 7):
        agent._gradient_step()
        target = list(agent.target_network.parameters())
        unchanged = all(torch.equal(a, b) for a, b in zip(first, target, strict=True))
        synced = all(torch.equal(a, b) for a, b in zip(agent.q_network.parameters(), target,
                                                       strict=True))
        assert unchanged == (step < 3) and synced == (step in (3, 6)), step
    assert agent.gradient_steps == 6


# --------------------------------------------------------------------------------------------
# Shared network and per-agent ensemble
# --------------------------------------------------------------------------------------------


def test_ensemble_equals_one_mlp_per_agent():
    ensemble = PerAgentMLP(5, 3, [8, 8], 4, "relu", torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)
    members = [mlp(5, [8, 8], 4, "relu", generator) for _ in range(3)]
    x = torch.randn(7, 2, 3, 5, generator=generator)
    expected = torch.stack([members[i](x[..., i, :]) for i in range(3)], dim=-2)
    torch.testing.assert_close(ensemble(x), expected)


def test_independent_networks_learn_only_from_their_agent():
    agent = make_dqn(shared=False)
    assert isinstance(agent.q_network, PerAgentMLP)
    before = [p.detach().clone() for p in agent.q_network.parameters()]
    q = agent.q_network(torch.randn(5, 2, 12))
    q[:, 0].sum().backward()  # a loss on agent 0 only
    agent.optimizer.step()
    for old, new in zip(before, agent.q_network.parameters(), strict=True):
        assert not torch.equal(old[0], new[0])  # member 0 moved
        assert torch.equal(old[1], new[1])  # member 1 did not


def test_shared_network_tells_agents_apart_by_id():
    agent = make_dqn(shared=True, agent_id=True)
    obs = torch.randn(4, 1, 12).expand(4, 2, 12)  # both agents see the same observation
    q = agent.q_values(obs)
    assert q.shape == (4, 2, 3)
    with torch.no_grad():  # ids start orthogonal-initialised, make the difference visible
        agent.q_network.agent_table.add_(torch.tensor([[1.0], [-1.0]]))
    q = agent.q_values(obs)
    assert not torch.allclose(q[:, 0], q[:, 1])
    blind = make_dqn(shared=True, agent_id=False)
    q = blind.q_values(obs)
    torch.testing.assert_close(q[:, 0], q[:, 1])
    n_shared = sum(p.numel() for p in agent.q_network.parameters())
    n_ensemble = sum(p.numel() for p in make_dqn(shared=False).q_network.parameters())
    assert n_ensemble > n_shared


def test_act_greedy_and_epsilon_from_the_run_generator():
    agent = make_dqn(n_actions=25)
    obs = torch.randn(6, 2, 12, generator=torch.Generator().manual_seed(1))
    greedy = agent.act(obs, torch.zeros(6, 11), deterministic=True)
    assert torch.equal(greedy, agent.q_values(obs).argmax(-1))
    agent.epsilon = 0.0
    assert torch.equal(agent.act(obs, torch.zeros(6, 11)), greedy)
    agent.epsilon = 1.0
    state = agent.generator.get_state()
    first = agent.act(obs, torch.zeros(6, 11))
    assert not torch.equal(first, greedy)
    agent.generator.set_state(state)
    assert torch.equal(agent.act(obs, torch.zeros(6, 11)), first)
    assert agent.epsilon_at(0) == 1.0 and agent.epsilon_at(300) == pytest.approx(0.05)


def test_config_errors():
    spec = EnvSpec(1, 2, 12, 13, "continuous", 25, 96, ("a", "b"), torch.device("cpu"))
    with pytest.raises(ConfigError, match="env.action.type"):
        DQN(DQNConfig(), spec, TrainConfig(), make_generator(0))
    with pytest.raises(ConfigError, match="dqn.tau"):
        build_run_config({"algo": "dqn", "dqn": {"tau": 0.0}})


def test_shipped_config_is_valid_and_discrete():
    config = build_run_config(ROOT / "configs" / "dqn.yaml")
    assert config.env.action.type == "discrete"
    assert config.hyperparameters == DQNConfig()  # the YAML states every default


def test_shipped_imitation_config():
    """configs/dqn_imitation.yaml: DQfD pretraining and the margin loss in every update, on
    a grid whose price levels hold the midpoint the demonstrations bid."""
    config = build_run_config(ROOT / "configs" / "dqn_imitation.yaml")
    hyperparameters = config.hyperparameters
    assert config.env.action.type == "discrete" and config.env.observation.rule != "none"
    assert hyperparameters.imitation.days == 60 and hyperparameters.demo_weight > 0
    assert hyperparameters.imitation.tie_break == "rule"
    assert config.env.action.price_levels % 2 == 1  # 0.5 is a level


# --------------------------------------------------------------------------------------------
# Learning from demonstrations (DQfD)
# --------------------------------------------------------------------------------------------


def test_demonstrated_actions_are_the_nearest_levels():
    """Battery levels -1, -0.5, 0, 0.5, 1 and price levels 0, 0.5, 1: index = battery level
    * 3 + 1 (the midpoint); a fraction halfway between two levels goes to the even index."""
    battery = torch.tensor([[-1.0, -0.8, -0.3, 0.0], [0.2, 0.3, 0.25, 1.0]])
    expected = torch.tensor([[0 * 3 + 1, 0 * 3 + 1, 1 * 3 + 1, 2 * 3 + 1],
                             [2 * 3 + 1, 3 * 3 + 1, 2 * 3 + 1, 4 * 3 + 1]])
    assert torch.equal(demonstrated_actions(battery, 5, 3), expected)
    # 21 battery levels (steps of 0.1): 0.33 -> 0.3 (level 13), -0.96 -> -1.0 (level 0);
    # 4 price levels 0, 1/3, 2/3, 1: the midpoint is halfway between 1 and 2, the even one
    assert torch.equal(demonstrated_actions(torch.tensor([0.33, -0.96]), 21, 4),
                       torch.tensor([13 * 4 + 2, 0 * 4 + 2]))
    # what the discrete core decodes is the nearest level
    env = envs.make_batched_env({**SYNTHETIC, "action": {"type": "discrete",
                                                         "battery_levels": 5,
                                                         "price_levels": 3}}, n_envs=2)
    decoded_battery, decoded_price = env.decode_actions(expected)
    torch.testing.assert_close(decoded_battery, torch.tensor(
        [[-1.0, -1.0, -0.5, 0.0], [0.0, 0.5, 0.0, 1.0]], dtype=decoded_battery.dtype))
    torch.testing.assert_close(decoded_price, torch.full_like(decoded_price, 0.5))


def test_margin_loss_hand_case():
    q = torch.tensor([[1.0, 3.0, 2.0], [0.0, 0.5, 0.0]])
    # row 0: a_E = 1 leads by 1 >= 0.8: 0; row 1: a_E = 2: max(0.8, 1.3, 0) - 0 = 1.3
    torch.testing.assert_close(margin_loss(q, torch.tensor([1, 2]), 0.8),
                               torch.tensor((0.0 + 1.3) / 2))
    # a_E = 0 in row 0: max(1, 3.8, 2.8) - 1 = 2.8
    torch.testing.assert_close(margin_loss(q[:1], torch.tensor([0]), 0.8), torch.tensor(2.8))


LEVELS = {"type": "discrete", "battery_levels": 5, "price_levels": 3}


def synthetic_demonstrations(monkeypatch, env, days: int = 3) -> tuple[torch.Tensor, ...]:
    """Stand-in for the oracle's demonstrations (no LP): the observations of ``days``
    episodes of ``env`` with noise, and a battery fraction that depends on them (so that one
    action everywhere cannot match)."""
    generator = torch.Generator().manual_seed(3)
    obs, _ = env.reset(seed=0)
    rows = obs[0].to(torch.float32).expand(days * 96, *obs.shape[1:]).clone()
    rows = rows + torch.randn(rows.shape, generator=generator)
    battery = torch.tanh(2.0 * rows[..., 0] - rows[..., 1])
    demo_obs = rows.reshape(days, 96, *rows.shape[1:])
    demo_battery = battery.reshape(days, 96, -1)
    calls = []

    def fake(config, n_days, oracle="oracle", tie_break="none"):
        calls.append(n_days)
        return demo_obs, demo_battery

    monkeypatch.setattr(imitation, "oracle_demonstrations", fake)
    return rows, battery, calls


def build_dqfd(monkeypatch, **overrides) -> tuple[DQN, Collector, torch.Tensor, torch.Tensor]:
    env = envs.make_batched_env({**SYNTHETIC, "action": LEVELS}, n_envs=1)
    config = DQNConfig(**{"hidden_sizes": [64, 64], "learning_starts": 10_000,
                          "imitation": imitation.ImitationConfig(days=3, epochs=200, lr=3e-3),
                          **overrides})
    algorithm = DQN(config, EnvSpec.from_env(env), TrainConfig(total_steps=100_000),
                    make_generator(0))
    obs, battery, _ = synthetic_demonstrations(monkeypatch, env)
    return algorithm, Collector(env, seed=0), obs, battery


def test_pretraining_makes_the_greedy_action_the_demonstrated_one(monkeypatch):
    """DQfD pretraining (before the first rollout) on synthetic demonstrations: afterwards
    the greedy action is the demonstrated discrete action (nearest battery level, midpoint
    price) on the demonstrated observations, which the untrained network's is not; the
    target network is the pretrained one, and pretraining is not repeated."""
    algorithm, collector, obs, battery = build_dqfd(monkeypatch)
    demonstrated = demonstrated_actions(battery, 5, 3)
    assert len(demonstrated.unique()) >= 4

    def agreement() -> float:
        greedy = algorithm.act(obs, None, deterministic=True)
        return float((greedy == demonstrated).to(torch.float32).mean())

    before = agreement()
    scalars = algorithm.iterate(collector)
    assert algorithm.imitated and math.isfinite(scalars["losses/imitation_loss"])
    after = agreement()
    assert before < 0.5 and after > 0.98, (before, after)
    assert scalars["charts/demonstration_agreement"] == pytest.approx(after)
    for online, target in zip(algorithm.q_network.parameters(),
                              algorithm.target_network.parameters(), strict=True):
        assert torch.equal(online, target)
    assert algorithm.state_dict()["counters"]["imitated"]
    weights = [p.detach().clone() for p in algorithm.q_network.parameters()]
    algorithm.iterate(collector)  # before learning_starts: no pretraining, no update
    assert all(torch.equal(a, b) for a, b in zip(weights, algorithm.q_network.parameters(),
                                                 strict=True))


def test_demo_weight_adds_the_margin_loss_to_td_updates(monkeypatch):
    """With ``demo_weight`` every TD update also takes the margin loss on a demonstration
    minibatch (logged as losses/margin_loss), which keeps the greedy policy on the
    demonstrations through TD updates that, alone, move it off them."""
    def agreement_after_updates(demo_weight: float) -> tuple[float, dict]:
        algorithm, collector, obs, battery = build_dqfd(
            monkeypatch, learning_starts=0, demo_weight=demo_weight, epsilon_start=1.0,
            epsilon_end=1.0, learning_rate=3e-3, target_network_frequency=10, batch_size=32)
        demonstrated = demonstrated_actions(battery, 5, 3)
        for _ in range(200):
            scalars = algorithm.iterate(collector)
        greedy = algorithm.act(obs, None, deterministic=True)
        return float((greedy == demonstrated).to(torch.float32).mean()), scalars

    anchored, scalars = agreement_after_updates(1.0)
    assert math.isfinite(scalars["losses/margin_loss"])
    free, free_scalars = agreement_after_updates(0.0)
    assert "losses/margin_loss" not in free_scalars
    assert anchored > 0.9 and free < anchored - 0.2, (anchored, free)


def test_demonstration_settings_name_the_key():
    def config(**section) -> dict:
        return {"algo": "dqn", "env": SYNTHETIC, "dqn": section}

    with pytest.raises(ConfigError, match=r"'dqn\.demo_weight'.*imitation\.days"):
        build_run_config(config(demo_weight=1.0))
    with pytest.raises(ConfigError, match=r"'dqn\.demo_weight'"):
        build_run_config(config(demo_weight=-0.1, imitation={"days": 2}))
    with pytest.raises(ConfigError, match=r"'dqn\.margin'"):
        build_run_config(config(margin=0.0, imitation={"days": 2}))
    with pytest.raises(ConfigError, match=r"'dqn\.imitation\.epochs'"):
        build_run_config(config(imitation={"days": 2, "epochs": 0}))
    built = build_run_config(config(demo_weight=0.5, imitation={"days": 2}))
    assert built.hyperparameters.demo_weight == 0.5
    # tie_break: rule needs a rule in the observation
    rule = build_run_config(config(imitation={"days": 2, "tie_break": "rule"}))
    env = envs.make_batched_env(rule.env)
    with pytest.raises(ConfigError, match=r"'dqn\.imitation\.tie_break'"):
        DQN(rule.hyperparameters, EnvSpec.from_env(env), rule.train, make_generator(0))


# --------------------------------------------------------------------------------------------
# Training through train.py's entry points
# --------------------------------------------------------------------------------------------

ITERATION = 4 * 2
"""Env-steps per iteration of the small config: n_envs * train_frequency."""


def run_config(**dqn) -> dict:
    """Two episodes per environment; the buffer (200 env-steps) wraps; evaluated and
    checkpointed every 40 iterations."""
    return {"algo": "dqn", "seed": 2, "name": "test", "env": SYNTHETIC,
            "train": {"total_steps": 4 * 96 * 2, "n_envs": 4, "eval_every": 40 * ITERATION,
                      "eval_episodes": 2, "checkpoint_every": 40 * ITERATION,
                      "torch_threads": 1},
            "dqn": {"buffer_size": 200, "batch_size": 8, "learning_starts": 64,
                    "train_frequency": 2, "gradient_steps": 2, "target_network_frequency": 10,
                    "hidden_sizes": [16, 16], **dqn}}


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [{}, {"shared": False, "tau": 0.1, "double_q": False}])
def test_training_checkpoint_and_resume(tmp_path, overrides):
    data = run_config(**overrides)
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert train.main(["--config", str(path), "--logdir", str(tmp_path / "runs"),
                       "--no-progress"]) == 0
    (straight,) = (tmp_path / "runs").iterdir()
    metrics = run_metrics(straight)
    assert metrics["global_step"] == 4 * 96 * 2
    assert all(math.isfinite(value) for value in metrics["final_eval"].values())
    curves = tensorboard_scalars(straight, speed=False)
    # losses from the first iteration past learning_starts (64 env-steps) on
    for tag in ("losses/td_loss", "losses/q_values"):
        assert curves[tag][0][0] == 64 and len(curves[tag]) == 96 - 7, tag
        assert all(math.isfinite(value) for _, value in curves[tag]), tag
    assert len(curves["charts/epsilon"]) == 96

    policy = load_policy(straight)
    env = envs.make_batched_env(eval_env_config(policy.config))
    obs, _ = env.reset(seed=0)
    actions = policy.act(obs, env)
    assert actions.shape == (2, 4) and actions.dtype == torch.int64
    env.step(actions)

    config = build_run_config(data)
    interrupted = train.new_run_dir(tmp_path / "interrupted", config)
    assert train.Trainer(config, interrupted, progress=False).run(
        stop_after_steps=45 * ITERATION) is None
    checkpoint = load_checkpoint(interrupted)
    assert checkpoint["global_step"] == 40 * ITERATION
    assert checkpoint["algorithm"]["replay_buffer"]["size"] == 200  # wrapped, all of it saved
    (interrupted / "config.yaml").write_text(train.dump_run_config(config))
    assert train.main(["--resume", str(interrupted), "--no-progress"]) == 0
    assert run_metrics(interrupted) == metrics
    assert tensorboard_scalars(interrupted, speed=False) == curves
    expected, resumed = (load_checkpoint(run)["algorithm"] for run in (straight, interrupted))
    for name in ("q_network", "target_network"):
        for key, value in expected[name].items():
            assert torch.equal(resumed[name][key], value), (name, key)
    assert resumed["counters"] == expected["counters"]


@pytest.mark.slow
def test_resume_with_demonstrations_equals_uninterrupted(tmp_path, monkeypatch):
    """Pretraining on the oracle's demonstrations and ``demo_weight``: the demonstrations are
    not in the checkpoint; the resumed run does not pretrain again and loads the same
    demonstrations (here from the cache the first run wrote), so it ends as the
    uninterrupted run."""
    monkeypatch.setenv("PEERGRID_CACHE", str(tmp_path / "cache"))
    data = run_config(demo_weight=0.5, margin=0.1, epsilon_start=0.1,
                      imitation={"days": 2, "epochs": 2, "tie_break": "rule"})
    data["env"] = {**SYNTHETIC, "observation": {"rule": "time_of_use"}}
    config = build_run_config(data)
    reference = train.new_run_dir(tmp_path / "reference", config)
    train.Trainer(config, reference, progress=False).run()
    curves = tensorboard_scalars(reference, speed=False)
    assert len(curves["losses/imitation_loss"]) == 1
    assert len(curves["losses/margin_loss"]) == 96 - 7

    run_dir = train.new_run_dir(tmp_path / "interrupted", config)
    assert train.Trainer(config, run_dir, progress=False).run(
        stop_after_steps=45 * ITERATION) is None
    checkpoint = load_checkpoint(run_dir)
    assert checkpoint["global_step"] == 40 * ITERATION
    assert checkpoint["algorithm"]["counters"]["imitated"]
    assert train.Trainer(config, run_dir, resume=True, progress=False).run() is not None

    assert run_metrics(reference) == run_metrics(run_dir)
    assert tensorboard_scalars(run_dir, speed=False) == curves
    assert_same(load_checkpoint(reference)["algorithm"], load_checkpoint(run_dir)["algorithm"])
