"""MAPPO: multi-agent PPO with a shared decentralised actor and a centralised critic.

Yu, Velu, Vinitsky, Gao, Wang, Bayen and Wu (2022), "The Surprising Effectiveness of PPO in
Cooperative Multi-Agent Games", NeurIPS Datasets and Benchmarks. On top of PPO (Schulman et
al. 2017, "Proximal Policy Optimization Algorithms") with GAE (Schulman et al. 2016):

- one actor shared by all agents, acting on each agent's local observation (plus a one-hot
  agent id), so execution is decentralised;
- one centralised critic on the global state (``envs.core``'s state: every agent's load, PV
  and SoC, time and tariffs) with one output head per agent, so it gives one value per agent
  at the cost of one forward pass per environment;
- value normalisation by running mean/std of the returns (the paper's PopArt-lite);
- clipped surrogate objective, clipped value loss, entropy bonus, per-network gradient-norm
  clipping, advantage normalisation per minibatch. The actor's minibatches are drawn from
  the ``T * B * N`` agent-steps of a rollout, the critic's from its ``T * B`` env-steps
  (all agents' values of an env-step come from one forward pass); each pass of an epoch
  visits every sample once.

Actions: continuous actions are a diagonal Gaussian over two unbounded outputs mapped into the
core's box by ``agents.actions.squash_actions`` (``tanh``: battery = tanh(u0), price =
(tanh(u1) + 1) / 2; the tanh Jacobian depends on u only, so it cancels in the PPO ratio and is
left out of the log-probability); the deterministic action is the squashed mean. Discrete
actions are a categorical over ``battery_levels * price_levels``; deterministic = argmax.

Shapes: rollouts are ``[T, B, N, ...]`` (``agents.buffers.RolloutBuffer``); every step of the
rollout is one batched call of actor, critic and core: no Python loop over envs or agents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from agents.actions import RulePrior, squash_actions
from agents.algorithm import Algorithm, EnvSpec
from agents.buffers import RolloutBuffer, generalized_advantages
from agents.collector import Collector
from agents.imitation import ImitationConfig, check_rule_feature, clone
from agents.networks import ACTIVATIONS, AgentMLP, RunningMeanStd, adam, mlp, output_layer
from agents.run_config import TrainConfig
from envs.config import ConfigError, check

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass(frozen=True)
class MAPPOConfig:
    """MAPPO hyperparameters (YAML section ``mappo``)."""

    rollout_steps: int = 96
    """Steps of every environment per rollout (T); a rollout is T * n_envs * N agent-steps.
    96 = one day: all environments start their days together, so a rollout is one episode of
    the default one-day length (``env.episode.length_days``)."""
    update_epochs: int = 4
    """Passes over each rollout."""
    n_minibatches: int = 4
    """Minibatches per pass: T * n_envs * N / n_minibatches agent-steps for the actor,
    T * n_envs / n_minibatches env-steps for the critic."""
    gamma: float = 1.0
    """Discount per 15-minute step (1: the undiscounted cost of the day, the objective)."""
    gae_lambda: float = 1.0
    """Lambda of generalised advantage estimation. 1 (Monte-Carlo returns of the day): with
    bootstrapped advantages an early, wrong critic undervalues stored energy and PPO settles
    on "always discharge" (see tests/test_mappo.py's arbitrage test)."""
    clip_coef: float = 0.2
    """PPO ratio clip (also the value clip, in normalised units)."""
    clip_value_loss: bool = True
    """Clip the value update around the rollout's values (Yu et al. 2022)."""
    ent_coef: float = 0.0
    """Weight of the entropy bonus."""
    vf_coef: float = 1.0
    """Weight of the value loss."""
    actor_lr: float = 3e-4
    """Adam learning rate of the actor."""
    critic_lr: float = 1e-3
    """Adam learning rate of the critic."""
    anneal_lr: bool = True
    """Decay both learning rates linearly to 0 over train.total_steps."""
    max_grad_norm: float = 0.5
    """Gradient-norm clip, applied to actor and critic separately."""
    norm_advantages: bool = True
    """Normalise advantages to zero mean, unit std in each minibatch."""
    value_norm: bool = True
    """Critic predicts returns normalised by their running mean/std (PopArt-lite)."""
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden layer widths of actor and critic."""
    activation: str = "tanh"
    """Hidden activation: tanh, relu or elu."""
    agent_id: bool = True
    """Append a one-hot agent id to the actor's observation."""
    init_log_std: float = -0.5
    """Initial log standard deviation of the Gaussian policy (continuous actions)."""
    action_squash: str = "tanh"
    """Map of Gaussian samples into the action box: tanh or clip."""
    target_kl: float | None = None
    """Stop an update's epochs early once the approximate KL exceeds this (null = never)."""
    critic_warmup_steps: int = 0
    """Env-steps at the start of training whose PPO updates train the critic only: with
    Monte-Carlo advantages an untrained critic's baseline is noise, and the first actor
    updates would drag a cloned (``imitation``) or residual actor away from where it starts.
    0 = update both from the start."""
    imitation: ImitationConfig = field(default_factory=ImitationConfig)
    """Behaviour-clone the perfect-foresight optimum before PPO (``imitation.days`` > 0,
    continuous actions; ``agents.imitation``): the actor regresses the oracle's battery actions
    once, before the first rollout, then PPO fine-tunes it."""
    learn_price: bool = True
    """Learn the price part of the action (continuous actions). False: every agent bids and
    asks at the tariff midpoint, as the rule-based traders do (the price's mean is held
    there, without exploration noise or gradient), and only the battery is learned. With
    each agent rewarded by its own bill, a learned price shades bids and asks apart, fewer
    orders cross and the community trades less (README, leaderboard)."""
    residual: bool = False
    """Act as a residual on the rule in the observation (continuous actions; needs
    ``env.observation.rule``): the Gaussian's mean is the rule's battery action (before the
    squash) plus the actor's output, which starts near zero, so the untrained policy is the
    rule and training learns corrections (Johannink et al. 2019, "Residual Reinforcement
    Learning for Robot Control"; as the CityLearn winners, Kumar et al. 2022)."""

    def __post_init__(self) -> None:
        for name in ("rollout_steps", "update_epochs", "n_minibatches"):
            check(getattr(self, name) >= 1, name, ">= 1", getattr(self, name))
        check(0.0 < self.gamma <= 1.0, "gamma", "a value in (0, 1]", self.gamma)
        check(0.0 <= self.gae_lambda <= 1.0, "gae_lambda", "a value in [0, 1]", self.gae_lambda)
        check(self.clip_coef > 0.0, "clip_coef", "> 0", self.clip_coef)
        for name in ("ent_coef", "vf_coef"):
            check(getattr(self, name) >= 0.0, name, ">= 0", getattr(self, name))
        for name in ("actor_lr", "critic_lr", "max_grad_norm"):
            check(getattr(self, name) > 0.0, name, "> 0", getattr(self, name))
        check(len(self.hidden_sizes) >= 1 and min(self.hidden_sizes) >= 1, "hidden_sizes",
              "a non-empty list of positive widths", self.hidden_sizes)
        check(self.activation in ACTIVATIONS, "activation", f"one of {tuple(ACTIVATIONS)}",
              self.activation)
        check(self.action_squash in ("tanh", "clip"), "action_squash", "tanh or clip",
              self.action_squash)
        check(self.target_kl is None or self.target_kl > 0.0, "target_kl", "> 0 or null",
              self.target_kl)
        check(self.critic_warmup_steps >= 0, "critic_warmup_steps", ">= 0",
              self.critic_warmup_steps)


class MAPPO(Algorithm):
    """Shared actor, centralised per-agent critic, PPO updates (see module docstring)."""

    name = "mappo"
    Config = MAPPOConfig
    checkpoint_attributes = ("actor", "critic", "log_std", "optimizer", "value_normalizer")

    def __init__(self, config: MAPPOConfig, spec: EnvSpec, train: TrainConfig,
                 generator: torch.Generator) -> None:
        super().__init__(config, spec, train, generator)
        n, device = spec.n_agents, self.device
        self.continuous = spec.action_type == "continuous"
        n_outputs = spec.action_dim if self.continuous else spec.n_discrete_actions
        self.prior = (RulePrior(spec, config.action_squash, "mappo.residual")
                      if config.residual else None)
        if not config.learn_price and not self.continuous:
            raise ConfigError("config key 'mappo.learn_price': got false; allowed: false only "
                              "with continuous actions (env.action.type=continuous)")
        self.learned_dims = 1 if self.continuous and not config.learn_price else n_outputs
        """Action dimensions the policy learns: the battery only with ``learn_price`` false."""
        self.actor = AgentMLP(spec.obs_dim, n, config.hidden_sizes, n_outputs,
                              config.activation, generator, output_gain=0.01,
                              use_agent_id=config.agent_id, device=device)
        if self.prior is not None:  # the untrained policy is exactly the rule
            torch.nn.init.zeros_(output_layer(self.actor)[0])
        self.critic = mlp(spec.state_dim, config.hidden_sizes, n, config.activation,
                          generator, output_gain=1.0, device=device)
        self.log_std = nn.ParameterDict({"log_std": nn.Parameter(
            torch.full((spec.action_dim,), config.init_log_std, device=device),
            requires_grad=self.continuous)})
        actor_params = [p for p in self.actor.parameters() if p.requires_grad]
        if self.continuous:
            actor_params += list(self.log_std.parameters())
        self.optimizer = adam([
            {"params": actor_params, "lr": config.actor_lr, "name": "actor"},
            {"params": list(self.critic.parameters()), "lr": config.critic_lr,
             "name": "critic"}], lr=config.actor_lr, eps=1e-5)
        self.value_normalizer = RunningMeanStd(device=device)
        self.imitated = False
        """Whether the actor has cloned the oracle (``imitation``; not repeated on resume)."""
        check_rule_feature(config.imitation, spec.feature_names, f"{self.name}.imitation")
        if config.imitation.days and not self.continuous:
            raise ConfigError("config key 'mappo.imitation.days': allowed: 0 with discrete "
                              "actions (cloning needs env.action.type=continuous)")
        action_shape = (spec.action_dim,) if self.continuous else ()
        self.buffer = RolloutBuffer(
            config.rollout_steps, spec.n_envs, n, spec.obs_dim, spec.state_dim, action_shape,
            torch.float32 if self.continuous else torch.int64, device=device)

    # ----------------------------------------------------------------------------------------
    # Distributions
    # ----------------------------------------------------------------------------------------

    def _value(self, state: Tensor) -> Tensor:
        """Every agent's value ``[..., N]`` of ``state [..., S]``, in return units."""
        value = self.critic(state.to(torch.float32))
        return self.value_normalizer.denormalize(value) if self.config.value_norm else value

    def _log_prob_entropy(self, output: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        """Log-probability of ``action`` (raw Gaussian sample or index) and entropy."""
        if self.continuous:
            log_std = self.log_std["log_std"][:self.learned_dims]
            z = (action - output)[..., :self.learned_dims] * torch.exp(-log_std)
            log_prob = (-0.5 * z.square()).sum(-1) - (log_std + _LOG_SQRT_2PI).sum()
            entropy = (0.5 + _LOG_SQRT_2PI + log_std).sum().expand_as(log_prob)
            return log_prob, entropy
        log_p = torch.log_softmax(output, dim=-1)
        log_prob = log_p.gather(-1, action[..., None]).squeeze(-1)
        entropy = -(log_p.exp() * log_p).sum(-1)
        return log_prob, entropy

    def _sample(self, output: Tensor) -> tuple[Tensor, Tensor]:
        """A sample (raw Gaussian or index) from the run's generator and its log-prob."""
        if self.continuous:
            noise = torch.randn(output.shape, generator=self.generator, device=output.device)
            if self.learned_dims < output.shape[-1]:  # learn_price false: no price noise
                noise[..., self.learned_dims:] = 0.0
            action = output + torch.exp(self.log_std["log_std"]) * noise
            log_prob = (-0.5 * noise[..., :self.learned_dims].square()).sum(-1) - (
                self.log_std["log_std"][:self.learned_dims] + _LOG_SQRT_2PI).sum()
            return action, log_prob
        uniform = torch.rand(output.shape, generator=self.generator, device=output.device)
        action = torch.argmax(output - torch.log(-torch.log(uniform.clamp_min(1e-20))), dim=-1)
        return action, self._log_prob_entropy(output, action)[0]  # Gumbel-max sample

    def _to_env(self, action: Tensor) -> Tensor:
        return squash_actions(action, self.config.action_squash) if self.continuous else action

    def _policy_output(self, obs: Tensor, agent: Tensor | None = None) -> Tensor:
        """The actor's distribution parameters for ``obs`` (plus the rule's action when
        ``residual``): Gaussian means before the squash, or logits."""
        obs = obs.to(torch.float32)
        output = self.actor(obs, agent)
        if self.learned_dims < output.shape[-1]:  # the price's mean at the midpoint
            output = torch.cat([output[..., :self.learned_dims],
                                torch.zeros_like(output[..., self.learned_dims:])], dim=-1)
        return output if self.prior is None else output + self.prior(obs)

    @torch.no_grad()
    def act(self, obs: Tensor, state: Tensor, deterministic: bool = False) -> Tensor:
        output = self._policy_output(obs)
        if deterministic:
            action = output if self.continuous else output.argmax(-1)
        else:
            action, _ = self._sample(output)
        return self._to_env(action)

    # ----------------------------------------------------------------------------------------
    # Training
    # ----------------------------------------------------------------------------------------

    def residual_network(self) -> nn.Module | None:
        """The actor, when ``residual`` (its output is added to the rule's action)."""
        return None if self.prior is None else self.actor

    def state_dict(self, experience: bool = True) -> dict[str, Any]:
        return {**super().state_dict(experience), "imitated": self.imitated}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.imitated = bool(state.get("imitated", False))

    def imitate(self, env_config: Any) -> float:
        """Behaviour cloning of the oracle (``imitation`` settings, ``agents.imitation``);
        returns the last epoch's mean squared error in action units."""
        loss = clone(lambda obs: self._to_env(self._policy_output(obs)),
                     self.actor.parameters(), self.config.imitation, env_config,
                     self.generator, self.device,
                     self.train_config.eval_reference)
        self.imitated = True
        return loss

    def iterate(self, collector: Collector) -> dict[str, float]:
        config, buffer = self.config, self.buffer
        scalars_before: dict[str, float] = {}
        if config.imitation.days and not self.imitated:
            scalars_before["losses/imitation_loss"] = self.imitate(collector.env.config)
        progress = collector.global_step / self.train_config.total_steps
        fraction = max(1.0 - progress, 0.0) if config.anneal_lr else 1.0
        for group in self.optimizer.param_groups:
            base = config.actor_lr if group["name"] == "actor" else config.critic_lr
            group["lr"] = base * fraction

        with torch.no_grad():
            for t in range(config.rollout_steps):
                obs, state = collector.obs, collector.state
                action, log_prob = self._sample(self._policy_output(obs))
                value = self._value(state)
                transition = collector.step(self._to_env(action))
                reward = transition.reward.to(torch.float32)
                if bool(transition.truncated.any()):  # bootstrap cut episodes in the reward
                    cut = transition.truncated[:, None].to(reward.dtype)
                    reward = reward + config.gamma * self._value(transition.next_state) * cut
                buffer.store(t, obs, state, action, log_prob, value, reward,
                             transition.terminated)
            advantages, returns = generalized_advantages(
                buffer.rewards, buffer.values, buffer.terminated, self._value(collector.state),
                config.gamma, config.gae_lambda)
        train_actor = collector.global_step > config.critic_warmup_steps
        scalars = {**scalars_before, **self._update(advantages, returns, train_actor)}
        scalars["charts/learning_rate"] = config.actor_lr * fraction
        if self.continuous:
            scalars["charts/action_std"] = float(self.log_std["log_std"].detach().exp().mean())
        return scalars

    def _update(self, advantages: Tensor, returns: Tensor, train_actor: bool = True
                ) -> dict[str, float]:
        """PPO epochs; the actor's minibatches are agent-steps, the critic's env-steps.
        ``train_actor=False``: the critic's loss only (``critic_warmup_steps``)."""
        config, buffer = self.config, self.buffer
        n = self.spec.n_agents
        obs = buffer.obs.reshape(-1, buffer.obs.shape[-1])  # [M, O], M = T * B * N
        actions = buffer.actions.reshape(-1, *buffer.actions.shape[3:])
        old_log_prob = buffer.log_probs.reshape(-1)
        advantages = advantages.reshape(-1)
        state = buffer.state.reshape(-1, buffer.state.shape[-1])  # [E, S], E = T * B
        returns = returns.reshape(-1, n)  # [E, N]
        old_values = buffer.values.reshape(-1, n)
        if config.value_norm:
            self.value_normalizer.update(returns)
            target = self.value_normalizer.normalize(returns)
            old_prediction = self.value_normalizer.normalize(old_values)
        else:
            target, old_prediction = returns, old_values
        agent_steps, env_steps = obs.shape[0], state.shape[0]
        agent_batch = -(-agent_steps // config.n_minibatches)
        env_batch = -(-env_steps // config.n_minibatches)
        sums = {"policy_loss": 0.0, "value_loss": 0.0, "entropy": 0.0, "approx_kl": 0.0,
                "clipfrac": 0.0}
        updates = 0
        for _ in range(config.update_epochs):
            agent_order = torch.randperm(agent_steps, generator=self.generator,
                                         device=self.device)
            env_order = torch.randperm(env_steps, generator=self.generator, device=self.device)
            epoch_kl = 0.0
            # index_select gathers the same rows as advanced indexing, ~4x faster on CPU.
            for agent_index, env_index in zip(agent_order.split(agent_batch),
                                              env_order.split(env_batch), strict=True):
                output = self._policy_output(obs.index_select(0, agent_index), agent_index % n)
                log_prob, entropy = self._log_prob_entropy(
                    output, actions.index_select(0, agent_index))
                log_ratio = log_prob - old_log_prob.index_select(0, agent_index)
                ratio = log_ratio.exp()
                advantage = advantages.index_select(0, agent_index)
                if config.norm_advantages:
                    advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
                clipped = ratio.clamp(1.0 - config.clip_coef, 1.0 + config.clip_coef)
                policy_loss = torch.max(-advantage * ratio, -advantage * clipped).mean()

                prediction = self.critic(state.index_select(0, env_index))  # [b, N], normalised
                env_target = target.index_select(0, env_index)
                value_error = (prediction - env_target).square()
                if config.clip_value_loss:
                    old = old_prediction.index_select(0, env_index)
                    clipped_prediction = old + (prediction - old).clamp(-config.clip_coef,
                                                                        config.clip_coef)
                    value_error = torch.max(value_error,
                                            (clipped_prediction - env_target).square())
                value_loss = 0.5 * value_error.mean()
                entropy_mean = entropy.mean()
                loss = config.vf_coef * value_loss
                if train_actor:
                    loss = loss + policy_loss - config.ent_coef * entropy_mean

                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                for group in self.optimizer.param_groups:
                    nn.utils.clip_grad_norm_(group["params"], config.max_grad_norm)
                self.optimizer.step()

                with torch.no_grad():
                    approx_kl = float(((ratio - 1.0) - log_ratio).mean())  # Schulman's k3
                    epoch_kl += approx_kl
                    sums["policy_loss"] += float(policy_loss)
                    sums["value_loss"] += float(value_loss)
                    sums["entropy"] += float(entropy_mean)
                    sums["approx_kl"] += approx_kl
                    sums["clipfrac"] += float(((ratio - 1.0).abs() > config.clip_coef)
                                              .float().mean())
                updates += 1
            if config.target_kl is not None and epoch_kl / config.n_minibatches > config.target_kl:
                break
        scalars = {f"losses/{key}": value / updates for key, value in sums.items()}
        variance = float(returns.var())
        if variance > 0.0:
            scalars["losses/explained_variance"] = 1.0 - float((returns - old_values).var()
                                                               ) / variance
        return scalars


ALGORITHM = MAPPO
