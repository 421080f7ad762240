"""stable-baselines3 baselines: PPO, TD3 and DQN as independent learners with parameter sharing.

Every (environment, agent) pair of the batched core is one SB3 sub-environment
(``envs.sb3_vec_env.SB3VecEnv``: ``num_envs = B * N``, local observations, symmetric
``Box(-1, 1, (2,))`` or ``Discrete`` actions), so one SB3 policy drives every agent and treats
the others as part of the environment (no agent id, no centralised critic). References:
Raffin et al. (2021), "Stable-Baselines3: Reliable Reinforcement Learning Implementations",
JMLR 22(268); PPO (Schulman et al. 2017), TD3 (Fujimoto, van Hoof and Meger 2018), DQN (Mnih
et al. 2015, "Human-level control through deep reinforcement learning").

=============  =========================  ====================================================
registry name  SB3 class                  one iteration (``iterate``)
=============  =========================  ====================================================
``sb3_ppo``    ``stable_baselines3.PPO``  one rollout of ``n_steps`` batched steps, then PPO
                                          epochs (continuous or discrete actions)
``sb3_td3``    ``stable_baselines3.TD3``  ``train_freq`` batched steps, then
                                          ``gradient_steps`` TD3 updates (continuous)
``sb3_dqn``    ``stable_baselines3.DQN``  ``train_freq`` batched steps, then
                                          ``gradient_steps`` DQN updates (discrete)
=============  =========================  ====================================================

How they fit ``agents.algorithm``'s contract:

- ``iterate(collector)`` runs ``model.learn(chunk, reset_num_timesteps=False)`` on an
  ``SB3VecEnv`` whose core is the trainer's :class:`~agents.collector.Collector` (through
  :class:`CollectorCore`), so every step SB3 takes is a ``collector.step``: ``train.py``'s
  episode metrics, ``global_step`` and evaluation work as for any algorithm. SB3's
  ``num_timesteps`` counts agent-steps (``global_step * N``).
- ``act()`` evaluates ``model.predict`` on the ``[B * N, obs_dim]`` local observations.
- ``losses/*`` are SB3's ``train/*`` logger values of the iteration (``train/learning_rate``
  becomes ``charts/learning_rate``, DQN's ``rollout/exploration_rate``
  ``charts/exploration_rate``).
- Step counts in the configs are in env-steps like every peergrid config (``buffer_size``,
  ``learning_starts``, ``target_update_interval`` are multiplied by N for SB3), batch sizes
  in agent-transitions (SB3's ``batch_size``).
- The checkpoint holds ``model.save`` (parameters, optimisers, counters, schedules) and, for
  TD3 and DQN, ``save_replay_buffer``, as bytes.

Randomness. SB3 draws from the *global* generators of torch (policy initialisation, action
sampling), numpy (minibatch order, replay sampling, exploration noise, epsilon-greedy) and
gymnasium's action space (random warm-up actions); none takes a ``torch.Generator``. So every
SB3 call runs inside :func:`global_rng_scope`: the global torch, numpy and Python generators
and the model's action space are seeded from a seed drawn from the run's generator, and the
caller's global states are restored afterwards. SB3's draws are thus a function of the run's
generator, nothing leaks out, and a resumed run reproduces the uninterrupted one exactly (the
resumed model is rebuilt by ``model.load``; its first ``learn`` resets the SB3 env, which
hands back the collector's restored observation, not a new episode). Caveats: this holds on
CPU (on CUDA, SB3's kernels may be non-deterministic), and anything else that uses the global
generators from another thread while SB3 runs would interleave with it.

Not supported by the contract's shape: learning-rate or clip-range schedules of PPO (SB3
computes PPO's progress from each ``learn`` call's own length, so they stay constant);
DQN's epsilon schedule is right (its progress is set to the whole run by a callback). SB3's
DQN draws epsilon once per batched step for all B * N sub-environments (SB3's behaviour).
"""

from __future__ import annotations

import contextlib
import io
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import torch
from stable_baselines3 import DQN, PPO, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.noise import VectorizedActionNoise
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from torch import Tensor, nn

from agents.actions import symmetric_to_env
from agents.algorithm import Algorithm, EnvSpec
from agents.collector import Collector
from agents.run_config import TrainConfig
from envs.config import ConfigError, check
from envs.sb3_vec_env import SB3VecEnv

_ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU}


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------


def _check_network(net_arch: list[int], activation: str) -> None:
    check(len(net_arch) >= 1 and min(net_arch) >= 1, "net_arch",
          "a non-empty list of positive widths", net_arch)
    check(activation in _ACTIVATIONS, "activation", f"one of {tuple(_ACTIVATIONS)}",
          activation)


@dataclass(frozen=True)
class SB3PPOConfig:
    """SB3 PPO hyperparameters (YAML section ``sb3_ppo``)."""

    n_steps: int = 32
    """Steps of every environment per rollout; a rollout is n_steps * n_envs * N agent-steps."""
    n_minibatches: int = 4
    """Minibatches per epoch (SB3's batch_size = rollout agent-steps / n_minibatches)."""
    n_epochs: int = 4
    """Passes over each rollout."""
    gamma: float = 0.99
    """Discount per 15-minute step."""
    gae_lambda: float = 0.95
    """Lambda of generalised advantage estimation."""
    clip_range: float = 0.2
    """PPO ratio clip."""
    normalize_advantage: bool = True
    """Normalise advantages in each minibatch."""
    ent_coef: float = 0.0
    """Weight of the entropy bonus."""
    vf_coef: float = 0.5
    """Weight of the value loss."""
    max_grad_norm: float = 0.5
    """Gradient-norm clip."""
    learning_rate: float = 3e-4
    """Adam learning rate (constant)."""
    target_kl: float | None = None
    """Stop an update's epochs once the approximate KL exceeds this (null = never)."""
    log_std_init: float = -0.5
    """Initial log standard deviation of the Gaussian policy (continuous actions)."""
    net_arch: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden layer widths of policy and value networks (separate networks)."""
    activation: str = "tanh"
    """Hidden activation: tanh, relu or elu."""

    def __post_init__(self) -> None:
        for name in ("n_steps", "n_minibatches", "n_epochs"):
            check(getattr(self, name) >= 1, name, ">= 1", getattr(self, name))
        check(0.0 < self.gamma <= 1.0, "gamma", "a value in (0, 1]", self.gamma)
        check(0.0 <= self.gae_lambda <= 1.0, "gae_lambda", "a value in [0, 1]", self.gae_lambda)
        for name in ("clip_range", "max_grad_norm", "learning_rate"):
            check(getattr(self, name) > 0.0, name, "> 0", getattr(self, name))
        for name in ("ent_coef", "vf_coef"):
            check(getattr(self, name) >= 0.0, name, ">= 0", getattr(self, name))
        check(self.target_kl is None or self.target_kl > 0.0, "target_kl", "> 0 or null",
              self.target_kl)
        _check_network(self.net_arch, self.activation)


@dataclass(frozen=True)
class SB3TD3Config:
    """SB3 TD3 hyperparameters (YAML section ``sb3_td3``)."""

    buffer_size: int = 50_000
    """Replay capacity in env-steps (SB3's buffer_size = buffer_size * N transitions)."""
    learning_starts: int = 5_000
    """Env-steps of uniformly random actions before the first update."""
    batch_size: int = 1024
    """Agent-transitions per gradient step."""
    train_freq: int = 1
    """Batched steps per iteration (each is n_envs env-steps)."""
    gradient_steps: int = 8
    """TD3 updates per iteration."""
    gamma: float = 0.99
    """Discount per 15-minute step."""
    tau: float = 0.005
    """Polyak factor of the target networks."""
    learning_rate: float = 1e-3
    """Adam learning rate of actor and critics (constant)."""
    action_noise: float = 0.1
    """Std of the Gaussian exploration noise, independent per sub-environment and step."""
    policy_delay: int = 2
    """Update the actor and the targets every this many critic updates."""
    target_policy_noise: float = 0.2
    """Std of the smoothing noise on target actions."""
    target_noise_clip: float = 0.5
    """Clip of the target smoothing noise."""
    net_arch: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden layer widths of actor and critics."""
    activation: str = "relu"
    """Hidden activation: tanh, relu or elu."""

    def __post_init__(self) -> None:
        for name in ("buffer_size", "batch_size", "train_freq", "gradient_steps",
                     "policy_delay"):
            check(getattr(self, name) >= 1, name, ">= 1", getattr(self, name))
        check(self.learning_starts >= 0, "learning_starts", ">= 0", self.learning_starts)
        check(0.0 < self.gamma <= 1.0, "gamma", "a value in (0, 1]", self.gamma)
        check(0.0 < self.tau <= 1.0, "tau", "a value in (0, 1]", self.tau)
        check(self.learning_rate > 0.0, "learning_rate", "> 0", self.learning_rate)
        for name in ("action_noise", "target_policy_noise", "target_noise_clip"):
            check(getattr(self, name) >= 0.0, name, ">= 0", getattr(self, name))
        _check_network(self.net_arch, self.activation)


@dataclass(frozen=True)
class SB3DQNConfig:
    """SB3 DQN hyperparameters (YAML section ``sb3_dqn``; needs env.action.type discrete)."""

    buffer_size: int = 50_000
    """Replay capacity in env-steps (SB3's buffer_size = buffer_size * N transitions)."""
    learning_starts: int = 5_000
    """Env-steps of uniformly random actions before the first update."""
    batch_size: int = 1024
    """Agent-transitions per gradient step."""
    train_freq: int = 1
    """Batched steps per iteration (each is n_envs env-steps)."""
    gradient_steps: int = 8
    """DQN updates per iteration."""
    gamma: float = 0.99
    """Discount per 15-minute step."""
    tau: float = 1.0
    """Polyak factor of the target update (1 = hard copy)."""
    target_update_interval: int = 10_000
    """Env-steps between target updates."""
    exploration_fraction: float = 0.3
    """Fraction of train.total_steps over which epsilon decays linearly."""
    exploration_initial_eps: float = 1.0
    """Epsilon at the start."""
    exploration_final_eps: float = 0.05
    """Epsilon after the decay."""
    learning_rate: float = 1e-3
    """Adam learning rate (constant)."""
    max_grad_norm: float = 10.0
    """Gradient-norm clip."""
    net_arch: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden layer widths of the Q-network."""
    activation: str = "relu"
    """Hidden activation: tanh, relu or elu."""

    def __post_init__(self) -> None:
        for name in ("buffer_size", "batch_size", "train_freq", "gradient_steps",
                     "target_update_interval"):
            check(getattr(self, name) >= 1, name, ">= 1", getattr(self, name))
        check(self.learning_starts >= 0, "learning_starts", ">= 0", self.learning_starts)
        check(0.0 < self.gamma <= 1.0, "gamma", "a value in (0, 1]", self.gamma)
        check(0.0 < self.tau <= 1.0, "tau", "a value in (0, 1]", self.tau)
        check(0.0 < self.exploration_fraction <= 1.0, "exploration_fraction",
              "a value in (0, 1]", self.exploration_fraction)
        for name in ("exploration_initial_eps", "exploration_final_eps"):
            check(0.0 <= getattr(self, name) <= 1.0, name, "a value in [0, 1]",
                  getattr(self, name))
        for name in ("learning_rate", "max_grad_norm"):
            check(getattr(self, name) > 0.0, name, "> 0", getattr(self, name))
        _check_network(self.net_arch, self.activation)


# --------------------------------------------------------------------------------------------
# Glue: the collector as SB3's environment, private global randomness, run-long progress
# --------------------------------------------------------------------------------------------


class CollectorCore:
    """What ``envs.sb3_vec_env.SB3VecEnv`` uses of a ``BatchedP2PEnv``, with every step
    taken through the trainer's :class:`~agents.collector.Collector`.

    ``reset`` starts no episode: it returns the collector's current observation (the
    collector reset the core when it was built; SB3 resets at its first ``learn`` and after
    ``load``). Sizes come from the :class:`~agents.algorithm.EnvSpec` until :meth:`bind`.
    """

    def __init__(self, spec: EnvSpec) -> None:
        self.n_envs, self.n_agents, self.obs_dim = spec.n_envs, spec.n_agents, spec.obs_dim
        self.n_discrete_actions = spec.n_discrete_actions
        self.device = spec.device
        self.dtype = torch.float32
        self.config: Any = SimpleNamespace(action=SimpleNamespace(type=spec.action_type))
        self.collector: Collector | None = None

    def bind(self, collector: Collector) -> None:
        """Route the steps through ``collector`` (whose core must match the spec)."""
        env = collector.env
        if (env.n_envs, env.n_agents, env.obs_dim) != (self.n_envs, self.n_agents,
                                                       self.obs_dim):
            raise ValueError(f"collector's core is [{env.n_envs}, {env.n_agents}, "
                             f"{env.obs_dim}], the model's [{self.n_envs}, {self.n_agents}, "
                             f"{self.obs_dim}]")
        self.collector, self.config, self.dtype = collector, env.config, env.dtype

    def _bound(self) -> Collector:
        if self.collector is None:
            raise RuntimeError("the SB3 environment is stepped only inside iterate(collector)")
        return self.collector

    def reset(self, seed: int | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        return self._bound().obs, {}

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Tensor]]:
        collector = self._bound()
        transition = collector.step(actions)
        return (collector.obs, transition.reward, transition.terminated, transition.truncated,
                transition.info)


@contextlib.contextmanager
def global_rng_scope(seed: int, device: torch.device, spaces: tuple[Any, ...] = ()
                     ) -> Iterator[None]:
    """Run the body on torch's (CPU, and ``device`` if CUDA), numpy's and Python's global
    generators and on ``spaces``' generators, all seeded with ``seed``; restore the caller's
    global generator states afterwards."""
    # SB3 draws from numpy's legacy global generator, so that is the one to scope.
    python_state, numpy_state = random.getstate(), np.random.get_state()  # noqa: NPY002
    cuda_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.random.default_generator.manual_seed(seed)
        if cuda_devices:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)  # noqa: NPY002
        for space in spaces:
            space.seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)  # noqa: NPY002


class _RunProgress(BaseCallback):
    """Sets SB3's ``_total_timesteps`` to the whole run at the start of every chunked
    ``learn`` so off-policy schedules (DQN's epsilon) follow ``train.total_steps``."""

    def __init__(self, total_timesteps: int) -> None:
        super().__init__()
        self.total_timesteps = total_timesteps

    def _on_training_start(self) -> None:
        self.model._total_timesteps = self.total_timesteps

    def _on_step(self) -> bool:
        return True


_SCALAR_TAGS = {"train/learning_rate": "charts/learning_rate", "train/std": "charts/action_std",
                "rollout/exploration_rate": "charts/exploration_rate"}
_SKIPPED = {"train/n_updates", "train/clip_range"}
_SEED_HIGH = 2**31 - 1


def _quiet_logger() -> Logger:
    """An SB3 logger with no outputs: ``iterate`` reads its values (``train.py`` writes
    them to TensorBoard). Without one, every ``model.learn`` call (one per iteration) makes
    SB3 configure a logger of its own, which creates an empty ``SB3-<date>`` folder in the
    system's temporary directory: thousands in a run."""
    return Logger(folder=None, output_formats=[])


# --------------------------------------------------------------------------------------------
# Algorithms
# --------------------------------------------------------------------------------------------


class SB3Algorithm(Algorithm):
    """An SB3 model behind the :class:`~agents.algorithm.Algorithm` contract (module
    docstring). Subclasses name the SB3 class, its constructor arguments, the action types it
    supports and the agent-steps of one ``learn`` call."""

    sb3_class: ClassVar[type[BaseAlgorithm]]
    action_types: ClassVar[tuple[str, ...]] = ("continuous", "discrete")

    def __init__(self, config: Any, spec: EnvSpec, train: TrainConfig,
                 generator: torch.Generator) -> None:
        super().__init__(config, spec, train, generator)
        if spec.action_type not in self.action_types:
            raise ConfigError(f"algo {self.name} needs env.action.type in "
                              f"{self.action_types}, got {spec.action_type!r}")
        self.core = CollectorCore(spec)
        self.vec_env = SB3VecEnv(self.core, step_infos=False)  # the trainer reads none
        self._progress = _RunProgress(train.total_steps * spec.n_agents)
        with global_rng_scope(self._draw_seed(), self.device):
            self.model = self.sb3_class(
                "MlpPolicy", self.vec_env, verbose=0, seed=None, device=self.device,
                **self._model_kwargs())
        self.model.set_logger(_quiet_logger())

    def _model_kwargs(self) -> dict[str, Any]:
        raise NotImplementedError

    def _learn_steps(self) -> int:
        """Agent-steps (SB3 timesteps) of one iteration."""
        raise NotImplementedError

    def _draw_seed(self) -> int:
        return int(torch.randint(_SEED_HIGH, (), generator=self.generator,
                                 device=self.generator.device))

    def _scope(self, seed: int) -> contextlib.AbstractContextManager[None]:
        return global_rng_scope(seed, self.device, (self.model.action_space,))

    @torch.no_grad()
    def act(self, obs: Tensor, state: Tensor, deterministic: bool = False) -> Tensor:
        b, n = obs.shape[:2]
        flat = obs.reshape(b * n, -1).to(torch.float32).cpu().numpy()
        with self._scope(self._draw_seed()) if not deterministic else contextlib.nullcontext():
            action, _ = self.model.predict(flat, deterministic=deterministic)
        action = torch.as_tensor(action, device=obs.device)
        if self.spec.action_type == "discrete":
            return action.reshape(b, n).long()
        return symmetric_to_env(action.reshape(b, n, -1).to(torch.float32))

    def iterate(self, collector: Collector) -> dict[str, float]:
        self.core.bind(collector)
        with self._scope(self._draw_seed()):
            self.model.learn(self._learn_steps(), callback=self._progress, log_interval=None,
                             reset_num_timesteps=False, progress_bar=False)
        scalars = {}
        logger = self.model.logger
        for key, value in logger.name_to_value.items():
            if key in _SKIPPED or not (key.startswith("train/") or key in _SCALAR_TAGS):
                continue
            scalars[_SCALAR_TAGS.get(key, "losses/" + key.removeprefix("train/"))] = float(
                value)
        logger.dump()  # no outputs: clears the values, so the next iteration reports its own
        return scalars

    # ----------------------------------------------------------------------------------------
    # Checkpoint: SB3's own files, as bytes
    # ----------------------------------------------------------------------------------------

    def state_dict(self, experience: bool = True) -> dict[str, Any]:
        model_file = io.BytesIO()
        self.model.save(model_file)
        state: dict[str, Any] = {"model": model_file.getvalue(), "replay_buffer": None}
        if experience and isinstance(self.model, OffPolicyAlgorithm):
            buffer_file = io.BytesIO()
            self.model.save_replay_buffer(buffer_file)
            state["replay_buffer"] = buffer_file.getvalue()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with self._scope(0):  # load() initialises a policy before overwriting it
            self.model = self.sb3_class.load(io.BytesIO(state["model"]), env=self.vec_env,
                                             device=self.device, print_system_info=False)
        self.model.set_logger(_quiet_logger())
        if state["replay_buffer"] is not None:
            self.model.load_replay_buffer(io.BytesIO(state["replay_buffer"]))


class SB3PPO(SB3Algorithm):
    """stable-baselines3 PPO, one shared policy for all agents."""

    name = "sb3_ppo"
    Config = SB3PPOConfig
    sb3_class = PPO

    def _model_kwargs(self) -> dict[str, Any]:
        config = self.config
        rollout = config.n_steps * self.vec_env.num_envs
        return {"n_steps": config.n_steps,
                "batch_size": max(rollout // config.n_minibatches, 1),
                "n_epochs": config.n_epochs, "gamma": config.gamma,
                "gae_lambda": config.gae_lambda, "clip_range": config.clip_range,
                "normalize_advantage": config.normalize_advantage, "ent_coef": config.ent_coef,
                "vf_coef": config.vf_coef, "max_grad_norm": config.max_grad_norm,
                "learning_rate": config.learning_rate, "target_kl": config.target_kl,
                "policy_kwargs": {"net_arch": {"pi": list(config.net_arch),
                                               "vf": list(config.net_arch)},
                                  "activation_fn": _ACTIVATIONS[config.activation],
                                  **({"log_std_init": config.log_std_init}
                                     if self.spec.action_type == "continuous" else {})}}

    def _learn_steps(self) -> int:
        return self.config.n_steps * self.vec_env.num_envs


class BatchedNormalNoise(VectorizedActionNoise):
    """TD3's Gaussian exploration noise, independent per sub-environment: the numbers of
    SB3's ``VectorizedActionNoise`` over one ``NormalActionNoise`` per sub-environment (what
    SB3 builds from a single ``NormalActionNoise``), drawn in one ``np.random.normal`` call
    for all ``n_envs`` sub-environments instead of one Python call each. numpy's legacy
    generator draws the same normals in the same order either way, so runs are unchanged to
    the bit (tested); with ``B * N`` sub-environments (1,664 on the default community) the
    per-environment calls were a quarter of ``sb3_td3``'s training time. Gaussian noise has
    no state, so ``reset`` has nothing to do. An instance of ``VectorizedActionNoise``, so
    SB3 does not wrap it again."""

    def __init__(self, action_dim: int, sigma: float, n_envs: int,
                 dtype: Any = np.float32) -> None:
        self._mu = np.zeros((n_envs, action_dim))
        self._sigma = np.full((n_envs, action_dim), float(sigma))
        self._dtype = dtype
        self.n_envs = n_envs

    def __call__(self) -> np.ndarray:
        return np.random.normal(self._mu, self._sigma).astype(self._dtype)  # noqa: NPY002 (SB3's global generator)

    def reset(self, indices: Any = None) -> None:
        pass

    def __repr__(self) -> str:
        return (f"BatchedNormalNoise(sigma={float(self._sigma.flat[0])}, "
                f"n_envs={self.n_envs})")


class SB3TD3(SB3Algorithm):
    """stable-baselines3 TD3, one shared actor and critic pair for all agents."""

    name = "sb3_td3"
    Config = SB3TD3Config
    sb3_class = TD3
    action_types = ("continuous",)

    def _model_kwargs(self) -> dict[str, Any]:
        config, n = self.config, self.spec.n_agents
        return {"buffer_size": config.buffer_size * n,
                "learning_starts": config.learning_starts * n,
                "batch_size": config.batch_size, "train_freq": (config.train_freq, "step"),
                "gradient_steps": config.gradient_steps, "gamma": config.gamma,
                "tau": config.tau, "learning_rate": config.learning_rate,
                "action_noise": BatchedNormalNoise(self.spec.action_dim, config.action_noise,
                                                   self.vec_env.num_envs),
                "policy_delay": config.policy_delay,
                "target_policy_noise": config.target_policy_noise,
                "target_noise_clip": config.target_noise_clip,
                "policy_kwargs": {"net_arch": list(config.net_arch),
                                  "activation_fn": _ACTIVATIONS[config.activation]}}

    def _learn_steps(self) -> int:
        return self.config.train_freq * self.vec_env.num_envs


class SB3DQN(SB3Algorithm):
    """stable-baselines3 DQN on the discrete action grid, one shared Q-network."""

    name = "sb3_dqn"
    Config = SB3DQNConfig
    sb3_class = DQN
    action_types = ("discrete",)

    def _model_kwargs(self) -> dict[str, Any]:
        config, n = self.config, self.spec.n_agents
        return {"buffer_size": config.buffer_size * n,
                "learning_starts": config.learning_starts * n,
                "batch_size": config.batch_size, "train_freq": (config.train_freq, "step"),
                "gradient_steps": config.gradient_steps, "gamma": config.gamma,
                "tau": config.tau, "target_update_interval": config.target_update_interval * n,
                "exploration_fraction": config.exploration_fraction,
                "exploration_initial_eps": config.exploration_initial_eps,
                "exploration_final_eps": config.exploration_final_eps,
                "learning_rate": config.learning_rate, "max_grad_norm": config.max_grad_norm,
                "policy_kwargs": {"net_arch": list(config.net_arch),
                                  "activation_fn": _ACTIVATIONS[config.activation]}}

    def _learn_steps(self) -> int:
        return self.config.train_freq * self.vec_env.num_envs


ALGORITHMS: dict[str, type[SB3Algorithm]] = {cls.name: cls for cls in (SB3PPO, SB3TD3, SB3DQN)}
"""Registry name -> class (registry entries ``"sb3_ppo": "agents.sb3_baselines:SB3PPO"``)."""

ALGORITHM = SB3PPO
"""The module's default algorithm (for a registry entry without ``:Class``)."""
