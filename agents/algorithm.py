"""The base of peergrid's learning algorithms: :class:`Algorithm`, the :class:`EnvSpec` it is
built for, and the exploration schedules several algorithms share. ``train.py`` drives any
algorithm through this contract.

Contract of an algorithm module ``agents/<algo>.py``
-----------------------------------------------------
It defines one :class:`Algorithm` subclass, exposes it as the module attribute ``ALGORITHM``,
and is named in ``agents/registry.py`` (one line). The subclass provides:

- ``name``: the registry name, also the YAML section holding its hyperparameters;
- ``Config``: a frozen ``@dataclass`` of every hyperparameter, each with a default and a
  one-line docstring (validated by ``envs.config.from_dict``: unknown keys are errors);
- ``__init__(config, spec, train, generator)``: build networks and optimisers for the
  environment described by ``spec`` (:class:`EnvSpec`); every random draw (initialisation,
  exploration, minibatch order, replay sampling) comes from ``generator``, the run's own
  ``torch.Generator`` (never torch's global RNG: build layers with ``agents.networks``);
- ``act(obs [B, N, obs_dim], state [B, state_dim], deterministic) -> actions``: actions the
  core accepts: continuous ``[B, N, 2]`` with battery in [-1, 1] and price in [0, 1] (map
  with ``agents.actions.squash_actions`` or ``symmetric_to_env``), discrete ``[B, N]`` int64;
  ``deterministic=True`` is used for evaluation, on a core whose B differs from training's,
  so ``act`` must work for any B and must not touch training state;
- ``iterate(collector) -> dict[str, float]``: one training iteration: step the environments
  through ``collector.step(actions)`` as many times as the algorithm wants (its rollout or
  its update interval), update, and return scalars keyed by their full TensorBoard tag
  (``losses/value_loss``, ``charts/learning_rate``, ...). ``train.py`` logs them at
  ``collector.global_step``, logs the episode metrics the collector saw, evaluates and
  checkpoints between iterations, and stops once ``train.total_steps`` is reached;
- ``checkpoint_attributes``: names of attributes with ``state_dict``/``load_state_dict``
  (modules, optimisers, normalisers, replay buffers) that make up the algorithm's state.
  Override :meth:`Algorithm.state_dict` / :meth:`Algorithm.load_state_dict` if more is
  needed. Everything that influences later iterations must be in it: a resumed run has to
  reproduce the uninterrupted one exactly.

What it gets: :class:`EnvSpec` (sizes, action type), :class:`TrainConfig` (``total_steps``
for schedules), the run's generator, and a :class:`Collector` whose ``step`` returns a
:class:`Transition` (obs, state, actions, reward, next_obs/next_state with the final
observation where an episode ended, terminated, truncated) and keeps ``obs``, ``state``,
``global_step`` (env-steps) and the episode metrics. Shared pieces: ``agents.networks``
(MLPs initialised from a generator, :class:`~agents.networks.RunningMeanStd`),
``agents.buffers`` (on-policy rollout buffer with GAE, replay buffer). Off-policy algorithms
call ``collector.step`` a few times per ``iterate`` and add each transition to a
``ReplayBuffer``; a library with its own loop (stable-baselines3) is driven through a
``VecEnv`` whose ``step_wait`` calls ``collector.step`` (layout as in
``envs.sb3_vec_env``), ``model.learn`` running a fixed number of steps per ``iterate``.

Evaluation (``agents.evaluation.evaluate_policy``) sees a trained algorithm through
``agents.policy.TrainedPolicy``, which calls ``act(obs, state, deterministic=True)``.

The run config it is built from is in ``agents.run_config``; checkpoints in
``agents.checkpoints``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from agents.collector import Collector
from agents.run_config import TrainConfig

__all__ = ["Algorithm", "EnvSpec", "epsilon_greedy", "linear_schedule"]


@dataclass(frozen=True)
class EnvSpec:
    """What an algorithm needs to know about the batched core."""

    n_envs: int
    n_agents: int
    obs_dim: int
    state_dim: int
    action_type: str
    """``continuous`` (``[B, N, action_dim]``) or ``discrete`` (``[B, N]`` indices)."""
    n_discrete_actions: int
    """Size of the discrete action set (battery_levels * price_levels)."""
    episode_steps: int
    agent_names: tuple[str, ...]
    device: torch.device
    feature_names: tuple[str, ...] = ()
    """Name of each of the ``obs_dim`` observation features (``envs.observations``)."""
    action_dim: int = 2
    """Continuous action size: [battery fraction in [-1, 1], price fraction in [0, 1]]."""

    @classmethod
    def from_env(cls, env: Any) -> EnvSpec:
        return cls(env.n_envs, env.n_agents, env.obs_dim, env.state_dim,
                   env.config.action.type, env.n_discrete_actions, env.episode_steps,
                   tuple(env.agent_names), env.device, tuple(env.feature_names))


def linear_schedule(start: float, end: float, duration: float, step: float) -> float:
    """``start`` moving linearly to ``end`` over ``duration`` steps, then ``end``."""
    return start + (end - start) * min(step / max(duration, 1e-9), 1.0)


def epsilon_greedy(greedy: Tensor, n_actions: int, epsilon: float,
                   generator: torch.Generator) -> Tensor:
    """``greedy`` actions (any shape, int64), each replaced with probability ``epsilon`` by
    a uniform random one of ``n_actions``; all draws from ``generator``."""
    device = generator.device
    explore = torch.rand(greedy.shape, generator=generator, device=device)
    random_action = torch.randint(n_actions, greedy.shape, generator=generator, device=device)
    return torch.where(explore.to(greedy.device) < epsilon, random_action.to(greedy.device),
                       greedy)


class Algorithm(abc.ABC):
    """Base of the learning algorithms (the contract is in the module docstring)."""

    name: ClassVar[str]
    """Registry name and YAML section of the hyperparameters."""
    Config: ClassVar[type]
    """Frozen dataclass of the hyperparameters."""
    checkpoint_attributes: ClassVar[tuple[str, ...]] = ()
    """Attributes with ``state_dict``/``load_state_dict`` saved in checkpoints."""
    experience_attributes: ClassVar[tuple[str, ...]] = ()
    """Those of :attr:`checkpoint_attributes` that hold collected experience (replay
    buffers): needed to resume training, not to act, so left out of ``state_dict(experience=
    False)`` (``train.py``'s ``checkpoint_best.pt``); loading such a state leaves them as
    they are."""

    def __init__(self, config: Any, spec: EnvSpec, train: TrainConfig,
                 generator: torch.Generator) -> None:
        self.config = config
        self.spec = spec
        self.train_config = train
        self.generator = generator
        self.device = torch.device(train.device)

    @abc.abstractmethod
    def act(self, obs: Tensor, state: Tensor, deterministic: bool = False) -> Tensor:
        """Actions for ``obs [B, N, obs_dim]`` (and ``state [B, state_dim]``) in the core's
        format; ``deterministic`` for evaluation."""

    @abc.abstractmethod
    def iterate(self, collector: Collector) -> dict[str, float]:
        """Collect experience through ``collector`` and update; return scalars by tag."""

    def residual_network(self) -> nn.Module | None:
        """The network whose output a residual policy adds to a rule's action
        (``agents.actions.RulePrior``), an ``agents.networks.AgentMLP`` or ``PerAgentMLP``;
        ``None`` for a policy that is no residual (the default). ``train.py`` scales its
        output (``agents.networks.scale_output``) for ``train.validation_residual_scales``."""
        return None

    def state_dict(self, experience: bool = True) -> dict[str, Any]:
        """The algorithm's state; ``experience=False`` leaves out
        :attr:`experience_attributes` (a state to act from, not to resume)."""
        return {name: getattr(self, name).state_dict() for name in self.checkpoint_attributes
                if experience or name not in self.experience_attributes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self.checkpoint_attributes:
            if name in self.experience_attributes and name not in state:
                continue  # a state to act from: the replay buffer stays as it is
            getattr(self, name).load_state_dict(state[name])
