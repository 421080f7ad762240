"""DQN: deep Q-learning with experience replay and a target network, on the discrete grid.

Mnih et al. (2015), "Human-level control through deep reinforcement learning", Nature 518:
an action-value network ``Q(o, a)`` trained on minibatches drawn uniformly from a replay
buffer towards ``r + gamma * (1 - d) * Q_target(o', a*)`` with the Huber loss and clipped
gradients, acting epsilon-greedily. With ``double_q`` (van Hasselt, Guez and Silver 2016,
"Deep reinforcement learning with double Q-learning", AAAI) ``a*`` is the online network's
argmax and the target network evaluates it; without it ``a*`` is the target's own argmax.
The target network follows the online one every ``target_network_frequency`` gradient steps,
by a copy (``tau = 1``) or Polyak averaging ``target += tau * (online - target)``.

Agents: each agent learns from its own local observation and reward (independent
Q-learners, decentralised execution). ``shared: true`` (default): one network for all agents
with a one-hot agent id on its input (``agents.networks.AgentMLP``); ``shared: false``: one
network per agent, stored as a batched ensemble (:class:`~agents.networks.PerAgentMLP`, weights
``[N, in, out]``) so all agents still go through one batched matmul per layer.

Shapes and counts: the network maps ``[..., N, obs_dim]`` to ``[..., N, A]`` with
``A = battery_levels * price_levels``. The replay buffer (``agents.buffers.ReplayBuffer``)
holds env-steps (all N agents of one community at one step); ``buffer_size``,
``learning_starts`` and ``batch_size`` count env-steps, so a minibatch is ``batch_size * N``
agent transitions. One iteration is ``train_frequency`` steps of the batched core
(``train_frequency * n_envs`` env-steps) followed by ``gradient_steps`` gradient steps once
``learning_starts`` env-steps were collected. Epsilon decays linearly from
``epsilon_start`` to ``epsilon_end`` over ``exploration_fraction * train.total_steps``
env-steps (CleanRL's schedule). Deterministic actions (evaluation) are ``argmax_a Q``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agents.algorithm import Algorithm, EnvSpec, epsilon_greedy, linear_schedule
from agents.buffers import ReplayBuffer
from agents.collector import Collector
from agents.networks import ACTIVATIONS, AgentMLP, PerAgentMLP, polyak_update
from agents.run_config import TrainConfig
from envs.config import ConfigError, check


@dataclass(frozen=True)
class DQNConfig:
    """DQN hyperparameters (YAML section ``dqn``)."""

    buffer_size: int = 50_000
    """Replay capacity in env-steps (each holds the transitions of all N agents)."""
    learning_rate: float = 5e-4
    """Adam learning rate."""
    gamma: float = 0.99
    """Discount per 15-minute step."""
    n_step: int = 1
    """TD targets from the discounted rewards of the next ``n_step`` steps of the same
    environment, then the target network's value (Sutton 1988; Rainbow, Hessel et al. 2018,
    uses 3): value spreads ``n_step`` steps back per update, where a day is 96 steps. The
    sum stops at the episode's end. 1 = one-step DQN. The steps are replayed as collected,
    without an off-policy correction."""
    tau: float = 1.0
    """Target update: 1 copies the online network, < 1 is Polyak averaging with this weight."""
    target_network_frequency: int = 100
    """Gradient steps between target-network updates."""
    batch_size: int = 128
    """Env-steps per minibatch (batch_size * N agent transitions)."""
    epsilon_start: float = 1.0
    """Exploration probability at the start of training."""
    epsilon_end: float = 0.05
    """Exploration probability after the decay."""
    exploration_fraction: float = 0.3
    """Fraction of train.total_steps over which epsilon decays linearly to epsilon_end."""
    learning_starts: int = 10_000
    """Env-steps collected before the first gradient step."""
    train_frequency: int = 1
    """Steps of the batched core per iteration (each n_envs env-steps)."""
    gradient_steps: int = 1
    """Gradient steps per iteration."""
    double_q: bool = True
    """Double DQN targets: online argmax, target-network value."""
    huber_delta: float = 1.0
    """Threshold of the Huber loss between its quadratic and linear parts."""
    max_grad_norm: float = 10.0
    """Gradient-norm clip."""
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden layer widths of the Q-network."""
    activation: str = "relu"
    """Hidden activation: tanh, relu or elu."""
    shared: bool = True
    """One network for all agents (true) or one per agent as a batched ensemble (false)."""
    agent_id: bool = True
    """Give the shared network a one-hot agent id (ignored when shared is false)."""

    def __post_init__(self) -> None:
        for name in ("buffer_size", "target_network_frequency", "batch_size", "train_frequency",
                     "gradient_steps"):
            check(getattr(self, name) >= 1, name, ">= 1", getattr(self, name))
        check(self.learning_starts >= 0, "learning_starts", ">= 0", self.learning_starts)
        check(self.learning_rate > 0.0, "learning_rate", "> 0", self.learning_rate)
        check(0.0 <= self.gamma <= 1.0, "gamma", "a value in [0, 1]", self.gamma)
        check(1 <= self.n_step <= 960, "n_step", "an integer in [1, 960]", self.n_step)
        check(0.0 < self.tau <= 1.0, "tau", "a value in (0, 1]", self.tau)
        for name in ("epsilon_start", "epsilon_end"):
            check(0.0 <= getattr(self, name) <= 1.0, name, "a probability in [0, 1]",
                  getattr(self, name))
        check(0.0 < self.exploration_fraction <= 1.0, "exploration_fraction",
              "a fraction in (0, 1]", self.exploration_fraction)
        check(self.huber_delta > 0.0, "huber_delta", "> 0", self.huber_delta)
        check(self.max_grad_norm > 0.0, "max_grad_norm", "> 0", self.max_grad_norm)
        check(len(self.hidden_sizes) >= 1 and min(self.hidden_sizes) >= 1, "hidden_sizes",
              "a non-empty list of positive widths", self.hidden_sizes)
        check(self.activation in ACTIVATIONS, "activation", f"one of {tuple(ACTIVATIONS)}",
              self.activation)


class DQN(Algorithm):
    """DQN with replay, target network and double-Q targets (see module docstring)."""

    name = "dqn"
    Config = DQNConfig
    checkpoint_attributes = ("q_network", "target_network", "optimizer", "replay_buffer")
    experience_attributes = ("replay_buffer",)

    def __init__(self, config: DQNConfig, spec: EnvSpec, train: TrainConfig,
                 generator: torch.Generator) -> None:
        super().__init__(config, spec, train, generator)
        if spec.action_type != "discrete":
            raise ConfigError(f"config key 'env.action.type': got {spec.action_type!r}; "
                              f"allowed: 'discrete' (dqn acts on the discrete action grid: "
                              f"set env.action.type: discrete)")
        n, device = spec.n_agents, self.device
        if config.shared:
            self.q_network: nn.Module = AgentMLP(
                spec.obs_dim, n, config.hidden_sizes, spec.n_discrete_actions,
                config.activation, generator, use_agent_id=config.agent_id, device=device)
        else:
            self.q_network = PerAgentMLP(spec.obs_dim, n, config.hidden_sizes,
                                         spec.n_discrete_actions, config.activation,
                                         generator, device=device)
        self.target_network = copy.deepcopy(self.q_network)
        self.target_network.requires_grad_(False)
        self.optimizer = torch.optim.Adam(
            [p for p in self.q_network.parameters() if p.requires_grad],
            lr=config.learning_rate)
        self.replay_buffer = ReplayBuffer(config.buffer_size, n, spec.obs_dim, spec.state_dim,
                                          (), torch.int64, device=device)
        self.epsilon = config.epsilon_start
        """Exploration probability of the last training step."""
        self.gradient_steps = 0
        """Gradient steps taken so far (target updates are counted in them)."""

    # ----------------------------------------------------------------------------------------
    # Acting
    # ----------------------------------------------------------------------------------------

    def q_values(self, obs: Tensor) -> Tensor:
        """Online action values ``[..., N, A]`` of ``obs [..., N, obs_dim]``."""
        return self.q_network(obs.to(torch.float32))

    @torch.no_grad()
    def act(self, obs: Tensor, state: Tensor, deterministic: bool = False) -> Tensor:
        greedy = self.q_values(obs).argmax(dim=-1)
        if deterministic:
            return greedy
        return epsilon_greedy(greedy, self.spec.n_discrete_actions, self.epsilon,
                              self.generator)

    # ----------------------------------------------------------------------------------------
    # Training
    # ----------------------------------------------------------------------------------------

    def epsilon_at(self, global_step: int) -> float:
        """Exploration probability after ``global_step`` env-steps (linear decay)."""
        config = self.config
        return linear_schedule(config.epsilon_start, config.epsilon_end,
                               config.exploration_fraction * self.train_config.total_steps,
                               global_step)

    def iterate(self, collector: Collector) -> dict[str, float]:
        config = self.config
        for _ in range(config.train_frequency):
            self.epsilon = self.epsilon_at(collector.global_step)
            transition = collector.step(self.act(collector.obs, collector.state))
            self.replay_buffer.add(transition)
        scalars = {"charts/epsilon": self.epsilon}
        if collector.global_step < config.learning_starts:
            return scalars
        sums = {"td_loss": 0.0, "q_values": 0.0}
        for _ in range(config.gradient_steps):
            loss, q_mean = self._gradient_step()
            sums["td_loss"] += loss
            sums["q_values"] += q_mean
        scalars.update({f"losses/{key}": value / config.gradient_steps
                        for key, value in sums.items()})
        return scalars

    @torch.no_grad()
    def td_targets(self, batch: dict[str, Tensor]) -> Tensor:
        """``r + gamma * (1 - terminated) * Q_target(o', a*)`` for a minibatch, ``[M, N]``;
        with ``n_step`` > 1, ``r`` is the steps' discounted sum and ``gamma ** steps`` (0 after
        the episode's end) the batch's ``discount``."""
        next_obs = batch["next_obs"]
        target_values = self.target_network(next_obs)  # [M, N, A]
        if self.config.double_q:
            best = self.q_network(next_obs).argmax(dim=-1, keepdim=True)
            next_value = target_values.gather(-1, best).squeeze(-1)
        else:
            next_value = target_values.max(dim=-1).values
        if "discount" in batch:
            return batch["rewards"] + batch["discount"].to(next_value.dtype)[:, None] * next_value
        not_done = (~batch["terminated"]).to(next_value.dtype)[:, None]
        return batch["rewards"] + self.config.gamma * not_done * next_value

    def _gradient_step(self) -> tuple[float, float]:
        config = self.config
        if config.n_step > 1:
            batch = self.replay_buffer.sample_n_step(config.batch_size, self.generator,
                                                     config.n_step, config.gamma,
                                                     self.spec.n_envs)
        else:
            batch = self.replay_buffer.sample(config.batch_size, self.generator)
        target = self.td_targets(batch)
        q_taken = self.q_network(batch["obs"]).gather(
            -1, batch["actions"][..., None]).squeeze(-1)  # [M, N]
        loss = F.huber_loss(q_taken, target, delta=config.huber_delta)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.q_network.parameters(), config.max_grad_norm)
        self.optimizer.step()
        self.gradient_steps += 1
        if self.gradient_steps % config.target_network_frequency == 0:
            self.update_target()
        return float(loss.detach()), float(q_taken.detach().mean())

    @torch.no_grad()
    def update_target(self) -> None:
        """Copy (``tau = 1``) or Polyak-average the online network into the target."""
        polyak_update(self.q_network, self.target_network, self.config.tau)

    # ----------------------------------------------------------------------------------------
    # Checkpoints
    # ----------------------------------------------------------------------------------------

    def state_dict(self, experience: bool = True) -> dict[str, Any]:
        state = super().state_dict(experience)
        state["counters"] = {"epsilon": self.epsilon, "gradient_steps": self.gradient_steps}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.epsilon = float(state["counters"]["epsilon"])
        self.gradient_steps = int(state["counters"]["gradient_steps"])


ALGORITHM = DQN
