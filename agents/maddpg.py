"""MADDPG: DDPG with decentralised actors and a centralised critic.

Lowe, Wu, Tamar, Harb, Abbeel and Mordatch (2017), "Multi-Agent Actor-Critic for Mixed
Cooperative-Competitive Environments", NeurIPS. Every agent i has a deterministic policy
mu_i(o_i) on its local observation (execution stays decentralised) and a critic
Q_i(s, a_1, ..., a_N) that sees the global state (``envs.core``'s ``state()``,
``[B, 3 N + 7]``: every agent's load, PV and SoC, time and tariffs) and every agent's action.
Agent i maximises its own reward: its actor follows dQ_i/da_i at a_i = mu_i(o_i), with the
other agents' actions taken from the replay buffer, as in the paper (general-sum: no agent is
credited with the effect of its action on the others' Q).

Everything else (rollout, exploration noise, replay, target networks with Polyak averaging,
update schedule, checkpoint) is ``agents.ddpg``'s; this module replaces the critic. By
default the critic also uses TD3's target policy smoothing (Fujimoto et al. 2018) and both
networks clip their gradient norm at 0.5 (the value of Lowe et al.'s code).

Critic design for large communities (N = 111 on the urban feeder)
------------------------------------------------------------------
One shared critic network computes all N values Q_1..Q_N of an env-step in one forward pass.
It is exactly an MLP on the concatenation

    x_i = [s (3N+7), a_1 .. a_N (2N), o_i (obs_dim), a_i (2), one_hot(i) (N)]  ->  Q_i,

whose first layer is evaluated block by block instead of building x_i: the state and
joint-action blocks are identical for all agents, so ``W_s s + W_a [a_1..a_N]`` is computed
once per env-step ``[M, H]``; the agent-specific blocks ``W_o o_i + W_own a_i + E_i`` are
``[M, N, H]`` (``E`` is the one-hot id block kept as a table, as in
``agents.networks.AgentMLP``); the hidden layers then run on ``[M, N, H]``. So

- every Q_i sees every agent's action (exactly, not a mean-field summary: swapping two
  agents' actions changes Q) plus its own observation and action in dedicated inputs, which
  lets one shared network tell "my action" from "the others'";
- parameters grow linearly with N: ``H (3N + 7) + H (2N) + H (obs_dim + 2) + H N`` in the
  first layer (6 H per agent) plus an N-independent body; for N = 111 and H = 64 the critic
  has 48,257 parameters (N separate critics on [s, all actions] would hold N times as many);
- compute per env-step is one ``(5N + 7) x H`` product plus N rows through the body.

For the actor update agent i's Q is needed at ``a_i = mu(o_i)`` with the others' buffer
actions. Replacing only slot i of the joint action for row i costs no extra forward: the
joint block is linear, so row i adds ``W_a[i] (mu(o_i) - a_i)`` (one batched einsum) to the
shared pre-activation (:meth:`CentralisedCritic.forward`, ``own_actions``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from agents.ddpg import DDPG, DDPGConfig
from agents.networks import mlp


@dataclass(frozen=True)
class MADDPGConfig(DDPGConfig):
    """MADDPG hyperparameters (YAML section ``maddpg``): DDPG's, with the centralised critic
    and these defaults changed."""

    target_policy_noise: float = 0.2
    """Std of the smoothing noise on the target actions of all agents (TD3; 0 = off)."""
    max_grad_norm: float | None = 0.5
    """Gradient-norm clip of actor and critic, each separately (null = no clipping)."""
    parameter_sharing: bool = True
    """One actor for all agents (true) or one per agent (false); the critic is always shared."""
    agent_id: bool = True
    """One-hot agent id in the shared actor's and in the critic's inputs."""


class CentralisedCritic(nn.Module):
    """Q_i(s, a_1..a_N, o_i, a_i, i) for every agent i in one forward (module docstring).

    ``forward(state [M, S], obs [M, N, O], actions [M, N, A], own_actions=None) -> [M, N]``.
    With ``own_actions [M, N, A]``, Q_i is evaluated with agent i's action replaced by
    ``own_actions[:, i]`` everywhere (own slot and joint slot), the others' kept.
    """

    def __init__(self, state_dim: int, obs_dim: int, n_agents: int, action_dim: int,
                 hidden_sizes: list[int], activation: str, generator: torch.Generator,
                 use_agent_id: bool = True, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.n_agents, self.action_dim = n_agents, action_dim
        joint = n_agents * action_dim
        own = obs_dim + action_dim
        n_ids = n_agents if use_agent_id else 0
        full = mlp(state_dim + joint + own + n_ids, hidden_sizes, 1, activation, generator,
                   output_gain=1.0, device=device)
        weight = full[0].weight.detach()  # [H, in], split into its column blocks
        hidden = weight.shape[0]
        self.state_input = torch.nn.utils.skip_init(nn.Linear, state_dim, hidden,
                                                    device=device)
        self.own_input = torch.nn.utils.skip_init(nn.Linear, own, hidden, bias=False,
                                                  device=device)
        with torch.no_grad():
            self.state_input.weight.copy_(weight[:, :state_dim])
            self.state_input.bias.copy_(full[0].bias)
            self.own_input.weight.copy_(weight[:, state_dim + joint:state_dim + joint + own])
        self.joint_action_weight = nn.Parameter(
            weight[:, state_dim:state_dim + joint].T.reshape(n_agents, action_dim, hidden)
            .clone())
        """First-layer weights of the joint action, ``[N, A, H]`` (agent j's block W_a[j])."""
        self.agent_table = nn.Parameter(weight[:, state_dim + joint + own:].T.clone(),
                                        requires_grad=use_agent_id)
        """First-layer weights of the one-hot agent id, ``[N, H]`` (``[0, H]`` without)."""
        self.body = full[1:]

    def forward(self, state: Tensor, obs: Tensor, actions: Tensor,
                own_actions: Tensor | None = None) -> Tensor:
        m = state.shape[0]
        joint = actions.reshape(m, -1) @ self.joint_action_weight.reshape(
            -1, self.joint_action_weight.shape[-1])
        shared = self.state_input(state) + joint  # [M, H]
        own = actions if own_actions is None else own_actions
        per_agent = self.own_input(torch.cat([obs, own], dim=-1))  # [M, N, H]
        if self.agent_table.shape[0]:
            per_agent = per_agent + self.agent_table
        if own_actions is not None:  # row i: slot i of the joint action holds own_actions_i
            per_agent = per_agent + torch.einsum("mna,nah->mnh", own_actions - actions,
                                                 self.joint_action_weight)
        return self.body(shared[:, None, :] + per_agent).squeeze(-1)


class MADDPG(DDPG):
    """Shared decentralised actors (DDPG's), one centralised critic for all agents."""

    name = "maddpg"
    Config = MADDPGConfig

    def _build_critic(self) -> nn.Module:
        spec, config = self.spec, self.config
        return CentralisedCritic(spec.state_dim, spec.obs_dim, spec.n_agents, spec.action_dim,
                                 config.hidden_sizes, config.activation, self.generator,
                                 use_agent_id=config.agent_id, device=self.device)

    def _q_values(self, critic: nn.Module, state: Tensor, obs: Tensor, actions: Tensor,
                  own_actions: Tensor | None = None) -> Tensor:
        return critic(state.to(torch.float32), obs.to(torch.float32), actions, own_actions)


ALGORITHM = MADDPG
