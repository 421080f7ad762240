"""Tabular Q-learning on a discretised observation and the core's discrete action grid.

Watkins and Dayan (1992), "Q-learning", Machine Learning 8, with Peng's Q(lambda) returns
(Peng and Williams 1996, "Incremental multi-step Q-learning", Machine Learning 22) computed
backwards over each rollout, as in the episodic backward update of Lee, Sung and Choi (2019,
"Sample-efficient deep reinforcement learning via episodic backward update", NeurIPS).

State: each agent's local observation (``envs.observations``) is reduced to four features,
each cut into bins, combined into one index
``((time * n_soc + soc) * n_net_load + net_load) * n_tariff + tariff``:

==========  ===========================================================  ===================
feature     value (from the observation)                                 bins (config)
==========  ===========================================================  ===================
time        step of day 0..95, from atan2(tod_sin, tod_cos)              ``time_bins`` equal
                                                                         slices of the day
soc         state of charge / capacity (0 without a battery)             ``soc_edges``
net_load    (load - pv) / own peak load of the step being traded         ``net_load_edges``
            (> 0: the agent needs energy, < 0: it has a surplus)
tariff      retail price / the day's highest retail price                ``tariff_edges``
==========  ===========================================================  ===================

A feature with edges ``[e_1, ..., e_k]`` has ``k + 1`` bins: bin 0 is ``x < e_1``, bin j is
``e_j <= x < e_{j+1}``, bin k is ``x >= e_k``; an empty list ignores the feature (one bin).
The defaults (``configs/qlearning.yaml``): hourly time, SoC in 0.05 steps between 0.125 and
0.875 (finer than one 15-minute step at half power; coarser SoC bins alias states whose
stored energy differs by more than the gaps between actions, and learning fails), net load
in five bins around 0, tariff in three: 24 x 17 x 5 x 3 = 6,120 states.

Actions: the core's discrete grid (``env.action.type: discrete``; other types are a
ConfigError), index ``battery_level * price_levels + price_level``.

Tables: ``q_table [T, S, A]`` with ``T = N`` independent tables (``shared: false``: agent i
reads and writes table i) or ``T = 1`` table shared by all agents (``shared: true``: every
agent's experience updates the same table and agents in the same discretised state act
alike; agents without a battery just stay in SoC bin 0).

Update (one iteration): the environments are stepped ``rollout_steps`` times with
epsilon-greedy actions, then the rollout is learned from its last step back to its first, one
tensor operation per step over all ``B * N`` transitions (no loop over envs or agents). The
target of step t is Peng's return
``G_t = r_t + gamma * (1 - d_t) * ((1 - lambda) * V(s_{t+1}) + lambda * G_{t+1})`` with
``V(s) = max_a Q(s, a)`` over the known actions of ``s`` (below; ``init_q`` in a state never
visited) read after the later steps were learned, and ``G = V`` past the rollout's end;
``lambda = 0`` is one-step Q-learning. Going backwards, a reward reaches the start of the day
in one iteration instead of one step per iteration.

Known actions: those with at least ``min_visits`` samples in the state (the most-sampled ones
where none has that many). The max over 25 entries of which some rest on a handful of noisy
samples is biased upwards, and the bias compounds through the bootstrap (the "maximisation
bias" that double Q-learning addresses, van Hasselt 2010): on the default community the
greedy policy got worse the longer it trained with ``min_visits: 1`` (savings on test days
17 -> 5 per day over 1M env-steps) and held at 17-18 with 20.

Within a step, an entry ``(table, s, a)`` hit by ``k`` transitions moves towards the mean of
their ``k`` targets by ``1 - prod_j (1 - alpha_j)``, what ``k`` sequential updates with the
per-sample step sizes ``alpha_j`` would do (:func:`step_sizes`): ``alpha_j = learning_rate``
(``step_size: constant``) or ``max(1 / j, learning_rate)`` at the entry's j-th sample
(``average``, the default: the plain mean of its first samples, so ``init_q`` is forgotten at
the first one). The result does not depend on the order of environments or agents.

Exploration: epsilon-greedy, epsilon decayed linearly from ``epsilon_start`` to
``epsilon_end`` over ``exploration_fraction * train.total_steps`` env-steps (CleanRL's
schedule); ties go to the first maximum of all entries (untried ones hold ``init_q``).
Deterministic actions (evaluation) are greedy over the known actions of the state, and the
middle action of the grid (battery idle, middle price: :meth:`QLearning.idle_action_index`)
in a state never visited.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from agents.algorithm import Algorithm, EnvSpec, epsilon_greedy, linear_schedule
from agents.collector import Collector
from agents.run_config import TrainConfig
from envs.config import ConfigError, check
from envs.data import STEPS_PER_DAY

STEP_SIZE_RULES = ("constant", "average")


@dataclass(frozen=True)
class QLearningConfig:
    """Tabular Q-learning hyperparameters (YAML section ``qlearning``)."""

    rollout_steps: int = 96
    """Steps of every environment per iteration; then the rollout is learned backwards."""
    learning_rate: float = 0.05
    """Per-sample step size (the floor of the average rule)."""
    step_size: str = "average"
    """Per-sample step sizes: constant (learning_rate) or average (max(1/j, learning_rate))."""
    td_lambda: float = 0.7
    """Lambda of Peng's Q(lambda) returns (0: one-step Q-learning targets)."""
    gamma: float = 1.0
    """Discount per 15-minute step (1 is fine: a day ends after 96 steps, time is observed)."""
    epsilon_start: float = 1.0
    """Exploration probability at the start of training."""
    epsilon_end: float = 0.05
    """Exploration probability after the decay."""
    exploration_fraction: float = 0.5
    """Fraction of train.total_steps over which epsilon decays linearly to epsilon_end."""
    shared: bool = False
    """One Q-table for all agents (true) or one table per agent (false)."""
    min_visits: int = 20
    """Samples an action needs in a state before its value counts in the greedy choice of
    evaluation and in bootstrapped targets (the most-sampled actions count if none has)."""
    init_q: float = 0.0
    """Value of entries before their first sample (and of never-visited next states)."""
    time_bins: int = 24
    """Equal slices of the day for the time-of-day feature (1 ignores time of day)."""
    soc_edges: list[float] = field(default_factory=lambda: [
        round(0.125 + 0.05 * i, 3) for i in range(16)])
    """Bin edges of the state of charge, fraction of capacity (empty: ignored)."""
    net_load_edges: list[float] = field(default_factory=lambda: [-0.3, -0.05, 0.05, 0.3])
    """Bin edges of (load - pv) / own peak load of the step being traded (empty: ignored)."""
    tariff_edges: list[float] = field(default_factory=lambda: [0.6, 0.85])
    """Bin edges of retail / the day's highest retail price (empty: ignored)."""

    def __post_init__(self) -> None:
        check(self.rollout_steps >= 1, "rollout_steps", ">= 1", self.rollout_steps)
        check(0.0 < self.learning_rate <= 1.0, "learning_rate", "a value in (0, 1]",
              self.learning_rate)
        check(self.step_size in STEP_SIZE_RULES, "step_size", f"one of {STEP_SIZE_RULES}",
              self.step_size)
        check(0.0 <= self.td_lambda <= 1.0, "td_lambda", "a value in [0, 1]", self.td_lambda)
        check(0.0 <= self.gamma <= 1.0, "gamma", "a value in [0, 1]", self.gamma)
        for name in ("epsilon_start", "epsilon_end"):
            check(0.0 <= getattr(self, name) <= 1.0, name, "a probability in [0, 1]",
                  getattr(self, name))
        check(0.0 < self.exploration_fraction <= 1.0, "exploration_fraction",
              "a fraction in (0, 1]", self.exploration_fraction)
        check(self.min_visits >= 1, "min_visits", ">= 1", self.min_visits)
        check(math.isfinite(self.init_q), "init_q", "a finite number", self.init_q)
        check(1 <= self.time_bins <= STEPS_PER_DAY, "time_bins",
              f"an integer in [1, {STEPS_PER_DAY}]", self.time_bins)
        for name in ("soc_edges", "net_load_edges", "tariff_edges"):
            edges = getattr(self, name)
            check(all(a < b for a, b in zip(edges, edges[1:], strict=False)), name,
                  "a strictly increasing list of numbers (possibly empty)", edges)

    def n_states(self) -> int:
        """Number of discretised states: the product of every feature's bin count."""
        return (self.time_bins * (len(self.soc_edges) + 1) * (len(self.net_load_edges) + 1)
                * (len(self.tariff_edges) + 1))


class Discretiser:
    """Maps local observations ``[..., obs_dim]`` to state indices ``[...]`` (int64), as in
    the module docstring."""

    def __init__(self, config: QLearningConfig, feature_names: Sequence[str],
                 device: torch.device | str = "cpu") -> None:
        missing = [name for name in ("load", "pv", "soc", "tod_sin", "tod_cos", "retail")
                   if name not in feature_names]
        if missing:
            raise ConfigError(f"qlearning needs the observation features {missing}; the "
                              f"observation holds {list(feature_names)}")
        self.column = {name: list(feature_names).index(name)
                       for name in ("load", "pv", "soc", "tod_sin", "tod_cos", "retail")}
        self.time_bins = config.time_bins
        self.edges = {name: torch.tensor(getattr(config, f"{name}_edges"), dtype=torch.float32,
                                         device=device)
                      for name in ("soc", "net_load", "tariff")}
        self.n_states = config.n_states()

    def features(self, obs: Tensor) -> dict[str, Tensor]:
        """The raw features of ``obs [..., obs_dim]``: ``time`` (step of day, int64), ``soc``,
        ``net_load`` and ``tariff`` (float32), each ``[...]``."""
        obs = obs.to(torch.float32)
        column = self.column
        angle = torch.atan2(obs[..., column["tod_sin"]], obs[..., column["tod_cos"]])
        step = torch.round(angle * (STEPS_PER_DAY / (2.0 * math.pi))).long() % STEPS_PER_DAY
        return {"time": step, "soc": obs[..., column["soc"]],
                "net_load": obs[..., column["load"]] - obs[..., column["pv"]],
                "tariff": obs[..., column["retail"]]}

    def __call__(self, obs: Tensor) -> Tensor:
        features = self.features(obs)
        state = features["time"] * self.time_bins // STEPS_PER_DAY
        for name in ("soc", "net_load", "tariff"):
            edges = self.edges[name]
            bins = torch.bucketize(features[name].contiguous(), edges, right=True)
            state = state * (edges.numel() + 1) + bins
        return state


def step_sizes(before: Tensor, count: Tensor, learning_rate: float, rule: str) -> Tensor:
    """How far entries that had ``before`` samples move towards the mean target of the
    ``count`` samples they get now (int tensors of one shape; float32 result):
    ``1 - prod_j (1 - alpha_j)`` over ``j = before + 1 .. before + count``.

    ``constant``: ``alpha_j = learning_rate``; ``average``: ``alpha_j = max(1 / j,
    learning_rate)``, whose product telescopes (``prod_{a < j <= b} (j - 1) / j = a / b``)
    up to ``j = floor(1 / learning_rate)``, then continues with the constant factor.
    """
    before = before.to(torch.float64)
    after = before + count.to(torch.float64)
    if rule == "constant":
        return (1.0 - (1.0 - learning_rate) ** (after - before)).to(torch.float32)
    switch = float(math.floor(1.0 / learning_rate))  # 1 / j >= learning_rate up to j = switch
    averaged = torch.where(before < switch, before / torch.clamp(after, max=switch),
                           torch.ones_like(before))
    constant_steps = (after - torch.clamp(before, min=switch)).clamp_min(0.0)
    return (1.0 - averaged * (1.0 - learning_rate) ** constant_steps).to(torch.float32)


def tabular_update(q_table: Tensor, visits: Tensor, table: Tensor, state: Tensor,
                   action: Tensor, target: Tensor, learning_rate: float, rule: str) -> Tensor:
    """Move the entries ``(table, state, action)`` towards ``target`` (all ``[M]``) in place,
    in one tensor operation, and count the samples in ``visits``; returns the errors
    ``target - Q`` before the update ``[M]``.

    An entry hit by ``k`` of the ``M`` samples moves by :func:`step_sizes` times the mean of
    its ``k`` errors (``index_add`` of errors and counts over the distinct entries), so the
    result does not depend on the order of the samples.
    """
    n_states, n_actions = q_table.shape[1:]
    flat_q, flat_visits = q_table.view(-1), visits.view(-1)
    entry = (table * n_states + state) * n_actions + action
    error = target.to(q_table.dtype) - flat_q[entry]
    unique, inverse = torch.unique(entry, return_inverse=True)
    error_sum = torch.zeros(unique.numel(), dtype=q_table.dtype, device=q_table.device)
    error_sum.index_add_(0, inverse, error)
    count = torch.zeros(unique.numel(), dtype=visits.dtype, device=visits.device)
    count.index_add_(0, inverse, torch.ones_like(inverse, dtype=visits.dtype))
    step = step_sizes(flat_visits[unique], count, learning_rate, rule).to(q_table.dtype)
    flat_q.index_add_(0, unique, step * error_sum / count.to(q_table.dtype))
    flat_visits.index_add_(0, unique, count)
    return error


class QLearning(Algorithm):
    """Batched tabular Q-learning with per-agent or shared tables (see module docstring)."""

    name = "qlearning"
    Config = QLearningConfig

    def __init__(self, config: QLearningConfig, spec: EnvSpec, train: TrainConfig,
                 generator: torch.Generator) -> None:
        super().__init__(config, spec, train, generator)
        if spec.action_type != "discrete":
            raise ConfigError(f"config key 'env.action.type': got {spec.action_type!r}; "
                              f"allowed: 'discrete' (qlearning acts on the discrete action "
                              f"grid: set env.action.type: discrete)")
        self.discretiser = Discretiser(config, spec.feature_names, self.device)
        n_tables = 1 if config.shared else spec.n_agents
        shape = (n_tables, config.n_states(), spec.n_discrete_actions)
        self.q_table = torch.full(shape, config.init_q, dtype=torch.float32, device=self.device)
        """Action values ``[tables, states, actions]``."""
        self.visits = torch.zeros(shape, dtype=torch.int64, device=self.device)
        """Samples each entry has been moved towards ``[tables, states, actions]``."""
        agents = torch.arange(spec.n_agents, device=self.device)
        self.agent_table = torch.zeros_like(agents) if config.shared else agents
        """Table of each agent ``[N]``."""
        self.idle_action = self.idle_action_index(spec)
        """Deterministic action in a state never visited."""
        self.epsilon = config.epsilon_start
        """Exploration probability of the last training step."""
        self.updates = 0
        """Rollouts learned so far."""

    @staticmethod
    def idle_action_index(spec: EnvSpec) -> int:
        """The middle action ``A // 2`` of the grid ``battery_levels x price_levels``: battery
        level 0 and the middle price level whenever ``battery_levels`` is odd (the shipped 5),
        since ``(b // 2) * p + p // 2 == (b * p) // 2`` for odd ``b``. ``EnvSpec`` carries
        only ``A``, and this index needs no factorisation of it."""
        return spec.n_discrete_actions // 2

    # ----------------------------------------------------------------------------------------
    # Values and acting
    # ----------------------------------------------------------------------------------------

    def tables_of(self, states: Tensor) -> Tensor:
        """Table index of every agent, shaped like ``states [..., N]``."""
        return self.agent_table.expand(states.shape)

    def known_actions(self, tables: Tensor, states: Tensor) -> Tensor:
        """Actions whose values are trusted in each state ``[..., N, A]`` (bool): those with
        at least ``min_visits`` samples, or the most-sampled ones where none has that many
        (none in a state never visited)."""
        visits = self.visits[tables, states]
        most = visits.max(dim=-1, keepdim=True).values
        return (visits > 0) & (visits >= most.clamp(max=self.config.min_visits))

    def state_values(self, states: Tensor) -> Tensor:
        """``max_a Q`` over the known actions of ``states [..., N]`` (``init_q`` in a state
        never visited), ``[..., N]``."""
        tables = self.tables_of(states)
        values = self.q_table[tables, states]
        known = self.known_actions(tables, states)
        best = values.masked_fill(~known, -math.inf).max(dim=-1).values
        return torch.where(known.any(dim=-1), best, torch.full_like(best, self.config.init_q))

    @torch.no_grad()
    def act(self, obs: Tensor, state: Tensor, deterministic: bool = False) -> Tensor:
        states = self.discretiser(obs)  # [B, N]
        tables = self.tables_of(states)
        values = self.q_table[tables, states]  # [B, N, A]
        if deterministic:
            known = self.known_actions(tables, states)
            greedy = values.masked_fill(~known, -math.inf).argmax(dim=-1)
            return torch.where(known.any(dim=-1), greedy,
                               torch.full_like(greedy, self.idle_action))
        return epsilon_greedy(values.argmax(dim=-1), self.spec.n_discrete_actions,
                              self.epsilon, self.generator)

    # ----------------------------------------------------------------------------------------
    # Training
    # ----------------------------------------------------------------------------------------

    def epsilon_at(self, global_step: int) -> float:
        """Exploration probability after ``global_step`` env-steps."""
        config = self.config
        return linear_schedule(config.epsilon_start, config.epsilon_end,
                               config.exploration_fraction * self.train_config.total_steps,
                               global_step)

    def learn(self, states: Tensor, actions: Tensor, rewards: Tensor, next_states: Tensor,
              terminated: Tensor) -> float:
        """Learn a rollout, all ``[T, B, N]`` (``terminated`` bool: no bootstrap after the
        step), from its last step back to its first; returns the mean squared TD error."""
        config = self.config
        following = None  # Peng's return of step t + 1
        error_square_sum = 0.0
        for t in range(states.shape[0] - 1, -1, -1):
            next_value = self.state_values(next_states[t])
            if following is not None and config.td_lambda > 0.0:
                next_value = (1.0 - config.td_lambda) * next_value + config.td_lambda * following
            target = rewards[t] + config.gamma * (~terminated[t]).to(rewards.dtype) * next_value
            errors = tabular_update(
                self.q_table, self.visits, self.tables_of(states[t]).reshape(-1),
                states[t].reshape(-1), actions[t].reshape(-1), target.reshape(-1),
                config.learning_rate, config.step_size)
            error_square_sum += float(errors.square().sum())
            following = target
        self.updates += 1
        return error_square_sum / states.numel()

    def iterate(self, collector: Collector) -> dict[str, float]:
        steps, n_envs, n_agents = self.config.rollout_steps, self.spec.n_envs, self.spec.n_agents
        options = {"dtype": torch.int64, "device": self.device}
        states = torch.empty(steps, n_envs, n_agents, **options)
        actions = torch.empty(steps, n_envs, n_agents, **options)
        next_states = torch.empty(steps, n_envs, n_agents, **options)
        rewards = torch.empty(steps, n_envs, n_agents, dtype=torch.float32, device=self.device)
        terminated = torch.empty(steps, n_envs, n_agents, dtype=torch.bool, device=self.device)
        for t in range(steps):
            self.epsilon = self.epsilon_at(collector.global_step)
            states[t] = self.discretiser(collector.obs)
            actions[t] = self.act(collector.obs, collector.state)
            transition = collector.step(actions[t])
            next_states[t] = self.discretiser(transition.next_obs)
            rewards[t] = transition.reward
            terminated[t] = transition.terminated[:, None]
        q_taken = self.q_table[self.tables_of(states), states, actions]
        td_loss = self.learn(states, actions, rewards, next_states, terminated)
        visited = self.visits > 0
        return {"losses/td_loss": td_loss,
                "losses/q_values": float(q_taken.mean()),
                "charts/epsilon": self.epsilon,
                "charts/state_coverage": float(visited.any(dim=-1).float().mean()),
                "charts/state_action_coverage": float(visited.float().mean())}

    # ----------------------------------------------------------------------------------------
    # Checkpoints
    # ----------------------------------------------------------------------------------------

    def state_dict(self, experience: bool = True) -> dict[str, Any]:
        # the Q-table is the policy itself: nothing to leave out without experience
        return {"q_table": self.q_table.clone(), "visits": self.visits.clone(),
                "epsilon": self.epsilon, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("q_table", "visits"):
            value, target = state[name], getattr(self, name)
            if value.shape != target.shape:
                raise ValueError(f"checkpoint {name} has shape {list(value.shape)}, this "
                                 f"config needs {list(target.shape)}")
            target.copy_(value)
        self.epsilon = float(state["epsilon"])
        self.updates = int(state["updates"])


ALGORITHM = QLearning
