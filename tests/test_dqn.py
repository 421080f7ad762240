"""DQN (agents/dqn.py): double-DQN targets on a hand-made case, target-network updates, the
shared network and the per-agent ensemble, and training through train.py's entry points
(losses, checkpoint, resume with the replay buffer)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from run_records import run_metrics, tensorboard_scalars
from torch import nn

import envs
import train
from agents.algorithm import EnvSpec
from agents.checkpoints import load_checkpoint
from agents.collector import Collector
from agents.dqn import DQN, DQNConfig
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
