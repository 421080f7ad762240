"""DDPG: deep deterministic policy gradient with independent learners.

Lillicrap, Hunt, Pritzel, Heess, Erez, Tassa, Silver and Wierstra (2016), "Continuous control
with deep reinforcement learning", ICLR, following CleanRL's ``ddpg_continuous_action.py``:

- a deterministic actor mu(o_i) with tanh outputs in the symmetric box [-1, 1]^2, mapped into
  the core's box by ``agents.actions.symmetric_to_env`` (battery = a0 in [-1, 1], price =
  (a1 + 1) / 2 in [0, 1]); the replay buffer and the critic see the symmetric actions;
- a critic Q(o_i, a_i) on the agent's own observation and action (independent learners: the
  other agents are part of the environment);
- target networks for both, updated by Polyak averaging with ``tau`` after every actor update
  (the actor and the targets are updated every ``policy_frequency``-th critic update);
- a replay buffer of env-steps (``agents.buffers.ReplayBuffer``); a gradient step samples
  ``ceil(batch_size / N)`` env-steps uniformly and trains on every agent of each;
- exploration: Gaussian noise of std ``exploration_noise`` on the symmetric action, or an
  Ornstein-Uhlenbeck process (``noise_type: ou``, the paper's choice; its state is reset when
  the episode ends and is part of the checkpoint), clipped to the box; uniformly random
  actions for the first ``learning_starts`` env-steps;
- optional TD3-style target policy smoothing (Fujimoto, van Hoof and Meger 2018, "Addressing
  Function Approximation Error in Actor-Critic Methods"), off by default here.

Parameter sharing: with ``parameter_sharing: true`` (default) one actor and one critic serve
every agent, each fed a one-hot agent id (``agents.networks.AgentMLP``); with ``false`` every
agent has its own actor and critic (``agents.networks.PerAgentMLP``, still one batched call
for all).

Every random draw (initialisation, exploration, replay sampling, smoothing noise) comes from
the run's generator; the checkpoint holds networks, targets, optimisers, the replay buffer,
the update counter and the OU state, so a resumed run reproduces the uninterrupted one.
MADDPG (``agents/maddpg.py``) is this algorithm with a centralised critic.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from agents.actions import RulePrior, symmetric_to_env
from agents.algorithm import Algorithm, EnvSpec
from agents.buffers import ReplayBuffer
from agents.collector import Collector
from agents.imitation import (
    ImitationConfig,
    check_rule_feature,
    clone,
    demonstration_batch,
    demonstrations,
    imitation_loss,
)
from agents.networks import (
    ACTIVATIONS,
    AgentMLP,
    PerAgentMLP,
    adam,
    output_layer,
    polyak_update,
)
from agents.run_config import TrainConfig
from envs.config import ConfigError, check

_NOISE_TYPES = ("gaussian", "ou")
BC_TARGETS = ("replay", "demonstrations")


@dataclass(frozen=True)
class DDPGConfig:
    """DDPG hyperparameters (YAML section ``ddpg``)."""

    buffer_size: int = 50_000
    """Replay capacity in env-steps (every agent of one community at one step)."""
    learning_starts: int = 5_000
    """Env-steps before the first update, acting uniformly at random (with the actor and
    its exploration noise once it has cloned the oracle, ``imitation``)."""
    batch_size: int = 1024
    """Agent-transitions per gradient step (ceil(batch_size / N) env-steps, all agents)."""
    rollout_steps: int = 1
    """Batched core steps per iteration (each is n_envs env-steps)."""
    gradient_steps: int = 1
    """Critic updates per iteration (once learning_starts env-steps are stored)."""
    policy_frequency: int = 2
    """Update the actor and the targets every this many critic updates."""
    bc_alpha: float | None = None
    """TD3+BC (Fujimoto & Gu 2021): the actor maximises ``alpha / mean|Q| * Q(s, pi(s)) -
    (pi(s) - a)^2`` with ``a`` the replayed action, which keeps it near the actions it was
    collected with (a clone fine-tuned rather than unlearnt; 2.5 in the paper). null = plain
    DDPG. ``bc_target`` chooses what ``a`` is."""
    bc_target: str = "replay"
    """What the actor regresses with ``bc_alpha``: ``replay`` = the replayed actions
    (TD3+BC; they drift with the policy that collected them), ``demonstrations`` = the
    cloned oracle demonstrations (``imitation``, which must be on), a fixed anchor: every
    actor update adds the cloning loss (``agents.imitation.imitation_loss``: squared error of
    the core's battery and price actions, summed over both, of the actor as it acts, residual
    included) on a minibatch of ``ceil(batch_size / N)`` demonstration steps of every agent
    to ``-bc_alpha / mean|Q| * Q``. The demonstrations are derived data, kept on the
    algorithm's device and not in the checkpoint: a resumed run loads them again from the
    cache of ``agents.imitation.oracle_demonstrations`` (or solves them again)."""
    actor_delay: int = 0
    """Critic updates before the first actor update: the critic first learns the value of
    the actor it is given, so that an untrained critic's gradient does not undo a cloned
    (``imitation``) or residual actor. 0 = update the actor from the start."""
    gamma: float = 0.99
    """Discount per 15-minute step."""
    n_step: int = 1
    """Critic targets from the rewards of the next ``n_step`` steps of the same environment
    before bootstrapping (96 = the rest of the day: Monte-Carlo returns of a one-day episode,
    which price the end-of-day value of stored energy without relying on the critic)."""
    tau: float = 0.005
    """Polyak factor of the target networks: target <- (1 - tau) target + tau online."""
    actor_lr: float = 3e-4
    """Adam learning rate of the actor."""
    critic_lr: float = 1e-3
    """Adam learning rate of the critic."""
    exploration_noise: float = 0.1
    """Std of the Gaussian exploration noise (or sigma of the OU process), symmetric units."""
    noise_type: str = "gaussian"
    """Exploration noise: gaussian (independent per step) or ou (Ornstein-Uhlenbeck)."""
    ou_theta: float = 0.15
    """Mean reversion per step of the OU process (used with noise_type: ou)."""
    target_policy_noise: float = 0.0
    """Std of the smoothing noise on target actions (TD3; 0 = plain DDPG)."""
    target_noise_clip: float = 0.5
    """Clip of the target smoothing noise, symmetric units."""
    max_grad_norm: float | None = None
    """Gradient-norm clip of actor and critic, each separately (null = no clipping)."""
    learn_price: bool = True
    """Learn the price part of the action. False: every agent bids and asks at the tariff
    midpoint, as the rule-based traders do (the price held there in acting, exploration,
    random warm-up and target actions), and only the battery is learned (``mappo.learn_price``
    explains why)."""
    residual: bool = False
    """Act as a residual on the rule in the observation (needs ``env.observation.rule``): the
    actor's output is added to the rule's battery action before the tanh, so the untrained
    actor (output near zero) is the rule (``agents.actions.RulePrior``)."""
    imitation: ImitationConfig = field(default_factory=ImitationConfig)
    """Behaviour-clone the perfect-foresight optimum before the first rollout
    (``imitation.days`` > 0; ``agents.imitation``): the actor, and its target, start from
    the clone."""
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden layer widths of actor and critic."""
    activation: str = "relu"
    """Hidden activation: tanh, relu or elu."""
    parameter_sharing: bool = True
    """One actor and critic for all agents (true) or one per agent (false)."""
    agent_id: bool = True
    """Give shared networks a one-hot agent id (ignored without parameter sharing)."""

    def __post_init__(self) -> None:
        for name in ("buffer_size", "batch_size", "rollout_steps", "gradient_steps",
                     "policy_frequency"):
            check(getattr(self, name) >= 1, name, ">= 1", getattr(self, name))
        check(self.learning_starts >= 0, "learning_starts", ">= 0", self.learning_starts)
        check(self.actor_delay >= 0, "actor_delay", ">= 0", self.actor_delay)
        check(1 <= self.n_step <= 960, "n_step", "an integer in [1, 960]", self.n_step)
        check(self.bc_alpha is None or self.bc_alpha > 0.0, "bc_alpha", "> 0 or null",
              self.bc_alpha)
        check(self.bc_target in BC_TARGETS, "bc_target", f"one of {BC_TARGETS}",
              self.bc_target)
        if self.bc_target == "demonstrations":
            check(self.imitation.days > 0, "bc_target",
                  "'replay' unless imitation.days > 0 (demonstrations to regress)",
                  self.bc_target)
            check(self.bc_alpha is not None, "bc_target",
                  "'replay' unless bc_alpha is set (the weight of Q against the regression)",
                  self.bc_target)
        check(0.0 < self.gamma <= 1.0, "gamma", "a value in (0, 1]", self.gamma)
        check(0.0 < self.tau <= 1.0, "tau", "a value in (0, 1]", self.tau)
        for name in ("actor_lr", "critic_lr"):
            check(getattr(self, name) > 0.0, name, "> 0", getattr(self, name))
        for name in ("exploration_noise", "target_policy_noise", "target_noise_clip"):
            check(getattr(self, name) >= 0.0, name, ">= 0", getattr(self, name))
        check(self.noise_type in _NOISE_TYPES, "noise_type", f"one of {_NOISE_TYPES}",
              self.noise_type)
        check(0.0 < self.ou_theta <= 1.0, "ou_theta", "a value in (0, 1]", self.ou_theta)
        check(self.max_grad_norm is None or self.max_grad_norm > 0.0, "max_grad_norm",
              "> 0 or null", self.max_grad_norm)
        check(len(self.hidden_sizes) >= 1 and min(self.hidden_sizes) >= 1, "hidden_sizes",
              "a non-empty list of positive widths", self.hidden_sizes)
        check(self.activation in ACTIVATIONS, "activation", f"one of {tuple(ACTIVATIONS)}",
              self.activation)


# --------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------


def agent_network(in_features: int, n_agents: int, out_features: int, config: DDPGConfig,
                  generator: torch.Generator, output_gain: float,
                  device: torch.device | str) -> nn.Module:
    """The per-agent network of ``config``: shared (:class:`~agents.networks.AgentMLP`, with
    an agent id if ``config.agent_id``) or independent (``agents.networks.PerAgentMLP``);
    either maps ``[..., N, in_features]`` to ``[..., N, out_features]``."""
    if config.parameter_sharing:
        return AgentMLP(in_features, n_agents, config.hidden_sizes, out_features,
                        config.activation, generator, output_gain=output_gain,
                        use_agent_id=config.agent_id, device=device)
    return PerAgentMLP(in_features, n_agents, config.hidden_sizes, out_features,
                       config.activation, generator, output_gain=output_gain, device=device)



def frozen_copy(module: nn.Module) -> nn.Module:
    """A target network: a copy of ``module`` that takes no gradients."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


# --------------------------------------------------------------------------------------------
# Algorithm
# --------------------------------------------------------------------------------------------


class DDPG(Algorithm):
    """Deterministic actor, critic Q(o_i, a_i), targets, replay (see module docstring).

    :class:`agents.maddpg.MADDPG` reuses the rollout and the update and only replaces the
    critic (:meth:`_build_critic`, :meth:`_q_values`).
    """

    name = "ddpg"
    Config = DDPGConfig
    checkpoint_attributes = ("actor", "critic", "target_actor", "target_critic",
                             "actor_optimizer", "critic_optimizer", "buffer")
    experience_attributes = ("buffer",)

    def __init__(self, config: DDPGConfig, spec: EnvSpec, train: TrainConfig,
                 generator: torch.Generator) -> None:
        super().__init__(config, spec, train, generator)
        if spec.action_type != "continuous":
            raise ConfigError(f"algo {self.name} needs env.action.type=continuous, got "
                              f"{spec.action_type!r}")
        check_rule_feature(config.imitation, spec.feature_names, f"{self.name}.imitation")
        n, a, device = spec.n_agents, spec.action_dim, self.device
        self.prior = (RulePrior(spec, "tanh", f"{self.name}.residual") if config.residual
                      else None)
        self.actor = agent_network(spec.obs_dim, n, a, config, generator, output_gain=0.01,
                                   device=device)
        if self.prior is not None:  # the untrained actor is exactly the rule
            with torch.no_grad():
                output_layer(self.actor)[0].zero_()
        self.critic = self._build_critic()
        self.target_actor = frozen_copy(self.actor)
        self.target_critic = frozen_copy(self.critic)
        self.actor_optimizer = adam(
            [p for p in self.actor.parameters() if p.requires_grad], lr=config.actor_lr)
        self.critic_optimizer = adam(
            [p for p in self.critic.parameters() if p.requires_grad], lr=config.critic_lr)
        self.buffer = ReplayBuffer(config.buffer_size, n, spec.obs_dim, spec.state_dim, (a,),
                                   torch.float32, device=device)
        self.imitated = False
        """Whether the actor has cloned the oracle (``imitation``; not repeated on resume)."""
        self.demonstrations: tuple[Tensor, Tensor] | None = None
        """The cloned demonstrations ``(obs [S, N, O], battery [S, N])`` on the device, which
        the actor regresses with ``bc_target: demonstrations`` (loaded by :meth:`iterate`,
        not checkpointed)."""
        self.n_updates = 0
        """Critic updates so far (the actor is updated every policy_frequency-th)."""
        self.ou_state = torch.zeros(spec.n_envs, n, a, device=device)
        """Ornstein-Uhlenbeck noise of the training environments, [B, N, action_dim]."""

    def _build_critic(self) -> nn.Module:
        """Q(o_i, a_i) per agent: ``[..., N, obs_dim + action_dim] -> [..., N, 1]``."""
        spec = self.spec
        return agent_network(spec.obs_dim + spec.action_dim, spec.n_agents, 1, self.config,
                             self.generator, output_gain=1.0, device=self.device)

    def _q_values(self, critic: nn.Module, state: Tensor, obs: Tensor, actions: Tensor,
                  own_actions: Tensor | None = None) -> Tensor:
        """Every agent's Q ``[M, N]`` for ``obs [M, N, O]`` and symmetric ``actions
        [M, N, A]`` (and ``state [M, S]``, unused by DDPG). With ``own_actions``, agent i's Q
        is taken at ``own_actions[:, i]`` and the others' actions of ``actions`` (the same
        for DDPG, whose Q_i sees a_i only)."""
        action = actions if own_actions is None else own_actions
        return critic(torch.cat([obs, action], dim=-1)).squeeze(-1)

    # ----------------------------------------------------------------------------------------
    # Acting
    # ----------------------------------------------------------------------------------------

    def residual_network(self) -> nn.Module | None:
        """The actor, when ``residual`` (its output is added to the rule's action)."""
        return None if self.prior is None else self.actor

    def _policy(self, actor: nn.Module, obs: Tensor) -> Tensor:
        """Symmetric actions ``[..., N, A]`` in [-1, 1] of ``actor`` (plus the rule's action
        before the tanh when ``residual``)."""
        obs = obs.to(torch.float32)
        output = actor(obs)
        return self._held(torch.tanh(output if self.prior is None else output + self.prior(obs)))

    def _env_policy(self, obs: Tensor) -> Tensor:
        """The actor's actions in the core's units ``[..., N, 2]`` (battery in [-1, 1], price in
        [0, 1]; residual included): what cloning regresses onto the demonstrations."""
        return symmetric_to_env(self._policy(self.actor, obs))

    def _held(self, action: Tensor) -> Tensor:
        """``action`` (symmetric) with the price at the midpoint (0) unless ``learn_price``."""
        if self.config.learn_price:
            return action
        return torch.cat([action[..., :1], torch.zeros_like(action[..., 1:])], dim=-1)

    def _normal(self, shape: torch.Size | tuple[int, ...]) -> Tensor:
        return torch.randn(shape, generator=self.generator, device=self.device)

    @torch.no_grad()
    def act(self, obs: Tensor, state: Tensor, deterministic: bool = False) -> Tensor:
        action = self._policy(self.actor, obs)
        if not deterministic:
            action = self._held(action + self.config.exploration_noise
                                * self._normal(action.shape))
        return symmetric_to_env(action)

    @torch.no_grad()
    def _explore(self, obs: Tensor, random: bool) -> Tensor:
        """Symmetric exploration actions for the training environments."""
        shape = (*obs.shape[:-1], self.spec.action_dim)
        if random:
            return self._held(2.0 * torch.rand(shape, generator=self.generator,
                                               device=self.device) - 1.0)
        config = self.config
        noise = self._normal(shape)
        if config.noise_type == "ou":
            self.ou_state = (1.0 - config.ou_theta) * self.ou_state + (
                config.exploration_noise * noise)
            noise = self.ou_state
        else:
            noise = config.exploration_noise * noise
        return self._held((self._policy(self.actor, obs) + noise).clamp(-1.0, 1.0))

    # ----------------------------------------------------------------------------------------
    # Training
    # ----------------------------------------------------------------------------------------

    def imitate(self, env_config: Any) -> float:
        """Behaviour cloning of the oracle (``imitation`` settings, ``agents.imitation``) into
        the actor and its target; returns the last epoch's mean squared error."""
        loss = clone(self._env_policy, self.actor.parameters(), self.config.imitation, env_config,
                     self.generator, self.device,
                     self.train_config.eval_reference)
        self.target_actor.load_state_dict(self.actor.state_dict())
        self.imitated = True
        return loss

    def iterate(self, collector: Collector) -> dict[str, float]:
        config = self.config
        cloned = {}
        if config.imitation.days and not self.imitated:
            cloned["losses/imitation_loss"] = self.imitate(collector.env.config)
        if config.bc_target == "demonstrations" and self.demonstrations is None:
            self.demonstrations = demonstrations(config.imitation, collector.env.config,
                                                 self.device,
                                                 self.train_config.eval_reference)
        for _ in range(config.rollout_steps):
            # a cloned actor explores around itself from the start, not uniformly at random
            random = collector.global_step < config.learning_starts and not self.imitated
            action = self._explore(collector.obs, random)
            transition = collector.step(symmetric_to_env(action))
            self.buffer.add(dataclasses.replace(transition, action=action))
            if config.noise_type == "ou":
                done = transition.terminated | transition.truncated
                self.ou_state = self.ou_state * (~done).to(self.ou_state.dtype)[:, None, None]
        if collector.global_step < config.learning_starts:
            return cloned
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for _ in range(config.gradient_steps):
            for key, value in self._update().items():
                sums[key] = sums.get(key, 0.0) + value
                counts[key] = counts.get(key, 0) + 1
        return {**cloned, **{f"losses/{key}": sums[key] / counts[key] for key in sums}}

    def _update(self) -> dict[str, float]:
        """One critic update, and an actor and target update every policy_frequency-th."""
        config = self.config
        env_steps = math.ceil(config.batch_size / self.spec.n_agents)
        if config.n_step > 1:
            batch = self.buffer.sample_n_step(env_steps, self.generator, config.n_step,
                                              config.gamma, self.spec.n_envs)
        else:
            batch = self.buffer.sample(env_steps, self.generator)
        obs, state, actions = batch["obs"], batch["state"], batch["actions"]
        with torch.no_grad():
            next_actions = self._policy(self.target_actor, batch["next_obs"])
            if config.target_policy_noise > 0.0:
                smoothing = (config.target_policy_noise * self._normal(next_actions.shape)
                             ).clamp(-config.target_noise_clip, config.target_noise_clip)
                next_actions = self._held((next_actions + smoothing).clamp(-1.0, 1.0))
            next_q = self._q_values(self.target_critic, batch["next_state"], batch["next_obs"],
                                    next_actions)
            if "discount" in batch:  # n-step: the sum's discount, 0 after the episode's end
                discount = batch["discount"].to(next_q.dtype)[:, None]
            else:
                discount = config.gamma * (~batch["terminated"]).to(next_q.dtype)[:, None]
            target = batch["rewards"] + discount * next_q
        q_values = self._q_values(self.critic, state, obs, actions)
        critic_loss = (q_values - target).square().mean()
        self._step(self.critic_optimizer, critic_loss, self.critic)
        self.n_updates += 1
        scalars = {"critic_loss": float(critic_loss.detach()),
                   "q_values": float(q_values.detach().mean())}
        if self.n_updates % config.policy_frequency == 0:
            if self.n_updates > config.actor_delay:
                trainable = [p for p in self.critic.parameters() if p.requires_grad]
                for parameter in trainable:  # the actor's gradient only flows through the critic
                    parameter.requires_grad_(False)
                policy_actions = self._policy(self.actor, obs)
                q_policy = self._q_values(self.critic, state, obs, actions,
                                          own_actions=policy_actions)
                if config.bc_alpha is None:
                    actor_loss = -q_policy.mean()
                else:  # TD3+BC: Q scaled to unit magnitude, plus a regression
                    scale = config.bc_alpha / q_policy.detach().abs().mean().clamp_min(1e-8)
                    if config.bc_target == "demonstrations":
                        bc_loss = self._demonstration_loss(env_steps)
                        scalars["bc_loss"] = float(bc_loss.detach())
                    else:  # onto the replayed actions
                        bc_loss = (policy_actions - actions).square().mean()
                    actor_loss = -scale * q_policy.mean() + bc_loss
                self._step(self.actor_optimizer, actor_loss, self.actor)
                for parameter in trainable:
                    parameter.requires_grad_(True)
                polyak_update(self.actor, self.target_actor, config.tau)
                scalars["actor_loss"] = float(actor_loss.detach())
            polyak_update(self.critic, self.target_critic, config.tau)
        return scalars

    def _demonstration_loss(self, rows: int) -> Tensor:
        """The cloning loss (``agents.imitation.imitation_loss``) of the actor on ``rows``
        demonstration steps (every agent) drawn uniformly with the run's generator."""
        if self.demonstrations is None:
            raise RuntimeError("bc_target: demonstrations needs the demonstrations loaded "
                               "(DDPG.iterate loads them)")
        obs, battery = demonstration_batch(self.demonstrations, rows, self.generator)
        return imitation_loss(self._env_policy(obs), battery)

    def _step(self, optimizer: torch.optim.Optimizer, loss: Tensor, network: nn.Module
              ) -> None:
        """Backpropagate ``loss`` and step ``optimizer`` (``network``'s gradient clipped)."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(network.parameters(), self.config.max_grad_norm)
        optimizer.step()

    # ----------------------------------------------------------------------------------------
    # Checkpoint
    # ----------------------------------------------------------------------------------------

    def state_dict(self, experience: bool = True) -> dict[str, Any]:
        return {**super().state_dict(experience), "n_updates": self.n_updates,
                "ou_state": self.ou_state.clone(), "imitated": self.imitated}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.n_updates = int(state["n_updates"])
        self.imitated = bool(state.get("imitated", False))
        if state["ou_state"].shape == self.ou_state.shape:  # else: acting with another B
            self.ou_state = state["ou_state"].to(self.device)


ALGORITHM = DDPG
