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

Learning from demonstrations (DQfD: Hester et al. 2018, "Deep Q-learning from
demonstrations", AAAI), with ``imitation.days`` > 0: before the first rollout the network is
pretrained on the perfect-foresight optimum's demonstrations (``agents.imitation``, the
section shared with MAPPO, DDPG and MADDPG) with DQfD's large-margin loss
``max_a [Q(s, a) + l(a_E, a)] - Q(s, a_E)``, ``l = margin`` for ``a != a_E`` and 0 for the
demonstrated action ``a_E``, for ``imitation.epochs`` passes (its own Adam, ``imitation.lr``,
``imitation.minibatch`` agent-steps per step; the target network then copies it), so that
the greedy action is the demonstrated one by at least ``margin``. The demonstrations are
continuous (battery fraction, the price at the tariff midpoint); ``a_E`` is the grid action
nearest to them (:func:`demonstrated_actions`: nearest battery level, nearest price level,
halfway values to the even level index: the actions the demonstrations' replay played in
the discrete core). With ``demo_weight`` > 0 every TD update adds ``demo_weight`` times
the margin loss on a minibatch of ``batch_size`` demonstration env-steps (every agent)
drawn with the run's generator: DQfD's supervised term, which keeps the greedy policy on the
demonstrations where the TD targets alone would drift off. DQfD's n-step return loss on the
demonstrations is not used (the demonstrations carry no rewards); its n-step TD loss on the
agent's own replay is ``n_step``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agents.actions import discrete_actions
from agents.algorithm import Algorithm, EnvSpec, epsilon_greedy, linear_schedule
from agents.buffers import ReplayBuffer
from agents.collector import Collector
from agents.imitation import (
    MIDPOINT,
    ImitationConfig,
    check_rule_feature,
    clone,
    demonstration_batch,
    demonstrations,
)
from agents.networks import ACTIVATIONS, AgentMLP, PerAgentMLP, adam, polyak_update
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
    imitation: ImitationConfig = field(default_factory=ImitationConfig)
    """Pretrain on the perfect-foresight optimum's demonstrations before the first rollout
    (``imitation.days`` > 0; ``agents.imitation``) with the large-margin loss (DQfD, module
    docstring); the target network starts from the pretrained one."""
    margin: float = 0.8
    """DQfD's margin ``l(a_E, a)`` for actions other than the demonstrated one: the greedy
    action's lead in Q that the supervised loss asks for (0.8 in the paper, with rewards
    clipped to [-1, 1]; the rewards here are euros per step)."""
    demo_weight: float = 0.0
    """Weight (DQfD's lambda) of the large-margin loss on a minibatch of demonstrations added
    to every TD update; 0 = the demonstrations only pretrain. Needs ``imitation.days`` > 0.
    The demonstrations are derived data, not in the checkpoint: a resumed run loads them
    again from the cache of ``agents.imitation.oracle_demonstrations``."""

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
        check(self.margin > 0.0, "margin", "> 0", self.margin)
        check(self.demo_weight >= 0.0, "demo_weight", ">= 0", self.demo_weight)
        if self.demo_weight > 0.0:
            check(self.imitation.days > 0, "demo_weight",
                  "0 unless imitation.days > 0 (demonstrations to learn from)",
                  self.demo_weight)


def demonstrated_actions(battery: Tensor, battery_levels: int, price_levels: int) -> Tensor:
    """The discrete actions ``[...]`` (int64) DQN is taught for the demonstrated battery
    fractions ``battery [...]``: the nearest battery level and the price level nearest to the
    tariff midpoint the demonstrations bid (``agents.actions.discrete_actions``; halfway
    values go to the even level index). These are the actions the replay of the optimum
    played in a discrete core (``agents.imitation``'s replay goes through
    ``agents.actions.env_actions``), so each demonstrated observation follows its action."""
    return discrete_actions(battery, torch.full_like(battery, MIDPOINT), battery_levels,
                            price_levels)


def margin_loss(q_values: Tensor, actions: Tensor, margin: float) -> Tensor:
    """DQfD's large-margin loss ``max_a [Q(s, a) + l(a_E, a)] - Q(s, a_E)`` averaged over
    agent-steps: ``q_values [..., A]``, demonstrated ``actions [...]`` (int64), ``l = margin``
    for ``a != a_E`` and 0 for ``a_E``; 0 exactly when the demonstrated action leads every
    other by at least ``margin``."""
    index = actions[..., None]
    penalty = torch.full_like(q_values, margin).scatter(-1, index, 0.0)
    return ((q_values + penalty).max(dim=-1).values
            - q_values.gather(-1, index).squeeze(-1)).mean()


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
        check_rule_feature(config.imitation, spec.feature_names, f"{self.name}.imitation")
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
        self.optimizer = adam([p for p in self.q_network.parameters() if p.requires_grad],
                              lr=config.learning_rate)
        self.replay_buffer = ReplayBuffer(config.buffer_size, n, spec.obs_dim, spec.state_dim,
                                          (), torch.int64, device=device)
        self.epsilon = config.epsilon_start
        """Exploration probability of the last training step."""
        self.gradient_steps = 0
        """Gradient steps taken so far (target updates are counted in them)."""
        self.imitated = False
        """Whether the network was pretrained on the demonstrations (not repeated on resume)."""
        self.demonstrations: tuple[Tensor, Tensor] | None = None
        """The demonstrations ``(obs [S, N, O], discrete action [S, N])`` on the device, for
        ``demo_weight`` (loaded by :meth:`iterate`, not checkpointed)."""
        self.action_levels: tuple[int, int] | None = None
        """``(battery_levels, price_levels)`` of the env's grid (set by :meth:`iterate`)."""

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

    def imitate(self, env_config: Any) -> float:
        """DQfD pretraining (module docstring) of the network on the demonstrations
        (``imitation`` settings, ``agents.imitation.clone``'s epochs and minibatches) and a
        copy into the target network; returns the last epoch's mean margin loss."""
        battery_levels, price_levels = self._levels(env_config)
        margin = self.config.margin

        def loss(obs: Tensor, battery: Tensor) -> Tensor:
            actions = demonstrated_actions(battery, battery_levels, price_levels)
            return margin_loss(self.q_values(obs), actions, margin)

        value = clone(None, self.q_network.parameters(), self.config.imitation, env_config,
                      self.generator, self.device, self.train_config.eval_reference,
                      loss_fn=loss)
        self.target_network.load_state_dict(self.q_network.state_dict())
        self.imitated = True
        return value

    def _levels(self, env_config: Any) -> tuple[int, int]:
        self.action_levels = (env_config.action.battery_levels, env_config.action.price_levels)
        return self.action_levels

    def load_demonstrations(self, env_config: Any) -> tuple[Tensor, Tensor]:
        """The demonstrations as ``(obs [S, N, O], discrete action [S, N])`` on the device
        (:func:`demonstrated_actions`), kept for ``demo_weight``."""
        obs, battery = demonstrations(self.config.imitation, env_config, self.device,
                                      self.train_config.eval_reference)
        self.demonstrations = (obs, demonstrated_actions(battery, *self._levels(env_config)))
        return self.demonstrations

    @torch.no_grad()
    def demonstration_agreement(self) -> float:
        """Fraction of demonstrated agent-steps where the greedy action is the demonstrated
        one (logged after pretraining as ``charts/demonstration_agreement``)."""
        if self.demonstrations is None:
            return math.nan
        obs, actions = self.demonstrations
        hits = sum(int((self.q_values(rows).argmax(-1) == target).sum())
                   for rows, target in zip(obs.split(1024), actions.split(1024), strict=True))
        return hits / actions.numel()

    def iterate(self, collector: Collector) -> dict[str, float]:
        config = self.config
        scalars: dict[str, float] = {}
        if config.imitation.days and not self.imitated:
            scalars["losses/imitation_loss"] = self.imitate(collector.env.config)
            self.load_demonstrations(collector.env.config)
            scalars["charts/demonstration_agreement"] = self.demonstration_agreement()
            if config.demo_weight == 0.0:
                self.demonstrations = None  # only pretraining needed them
        if config.demo_weight > 0.0 and self.demonstrations is None:
            self.load_demonstrations(collector.env.config)
        for _ in range(config.train_frequency):
            self.epsilon = self.epsilon_at(collector.global_step)
            transition = collector.step(self.act(collector.obs, collector.state))
            self.replay_buffer.add(transition)
        scalars["charts/epsilon"] = self.epsilon
        if collector.global_step < config.learning_starts:
            return scalars
        sums = {"td_loss": 0.0, "q_values": 0.0}
        if config.demo_weight > 0.0:
            sums["margin_loss"] = 0.0
        for _ in range(config.gradient_steps):
            for key, value in self._gradient_step().items():
                sums[key] += value
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

    def _gradient_step(self) -> dict[str, float]:
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
        td_loss = F.huber_loss(q_taken, target, delta=config.huber_delta)
        scalars = {"td_loss": float(td_loss.detach()), "q_values": float(q_taken.detach().mean())}
        loss = td_loss
        if config.demo_weight > 0.0:
            supervised = self._demonstration_loss(config.batch_size)
            scalars["margin_loss"] = float(supervised.detach())
            loss = loss + config.demo_weight * supervised
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.q_network.parameters(), config.max_grad_norm)
        self.optimizer.step()
        self.gradient_steps += 1
        if self.gradient_steps % config.target_network_frequency == 0:
            self.update_target()
        return scalars

    def _demonstration_loss(self, rows: int) -> Tensor:
        """The large-margin loss on ``rows`` demonstration env-steps (every agent) drawn
        uniformly with the run's generator."""
        if self.demonstrations is None:
            raise RuntimeError("dqn.demo_weight needs the demonstrations loaded (DQN.iterate "
                               "loads them)")
        obs, actions = demonstration_batch(self.demonstrations, rows, self.generator)
        return margin_loss(self.q_values(obs), actions, self.config.margin)

    @torch.no_grad()
    def update_target(self) -> None:
        """Copy (``tau = 1``) or Polyak-average the online network into the target."""
        polyak_update(self.q_network, self.target_network, self.config.tau)

    # ----------------------------------------------------------------------------------------
    # Checkpoints
    # ----------------------------------------------------------------------------------------

    def state_dict(self, experience: bool = True) -> dict[str, Any]:
        state = super().state_dict(experience)
        state["counters"] = {"epsilon": self.epsilon, "gradient_steps": self.gradient_steps,
                             "imitated": self.imitated}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.epsilon = float(state["counters"]["epsilon"])
        self.gradient_steps = int(state["counters"]["gradient_steps"])
        self.imitated = bool(state["counters"].get("imitated", False))


ALGORITHM = DQN
