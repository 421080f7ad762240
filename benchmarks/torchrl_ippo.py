"""IPPO (or MAPPO with ``--centralised-critic``) from TorchRL on peergrid.

An example of peergrid under TorchRL, not one of peergrid's own algorithms (those are in
``agents/``); it is not run in CI. ``--env batched`` (default) steps ``--n-envs``
communities at once through the batched TorchRL env (``envs.make_torchrl_env``, group
``"agents"``); ``--env pettingzoo`` steps one community through TorchRL's
``PettingZooWrapper`` over the PettingZoo env (group ``"prosumer"``). One shared policy for all
agents (TanhNormal over the action box), a per-agent or centralised critic, GAE and clipped PPO.

    python benchmarks/torchrl_ippo.py [--env batched] [--n-envs 10] [--frames 4800]
        [--centralised-critic] [--seed 0]
"""

from __future__ import annotations

import argparse
import math

import torch
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.collectors import Collector
from torchrl.envs.libs.pettingzoo import PettingZooWrapper
from torchrl.modules import MultiAgentMLP, ProbabilisticActor, TanhNormal
from torchrl.objectives import ClipPPOLoss, ValueEstimators

import envs

CONFIG = {"community": {"feeder": "synthetic", "n_agents": 6, "pv_share": 0.5,
                        "battery_share": 0.5}, "network": {"model": "none"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="batched", choices=["batched", "pettingzoo"])
    parser.add_argument("--n-envs", type=int, default=10, help="communities (--env batched)")
    parser.add_argument("--frames", type=int, default=4800, help="env steps in all")
    parser.add_argument("--frames-per-batch", type=int, default=960, help="10 days")
    parser.add_argument("--centralised-critic", action="store_true", help="MAPPO")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)  # TorchRL's modules draw from torch's global generator

    if args.env == "batched":
        env, group = envs.make_torchrl_env(CONFIG, n_envs=args.n_envs, seed=args.seed), "agents"
    else:
        env = PettingZooWrapper(env=envs.make_env(CONFIG), use_mask=False,
                                categorical_actions=False, seed=args.seed)
        group = "prosumer"  # TorchRL groups prosumer_0, prosumer_1, ... under "prosumer"
    n_agents = len(env.group_map[group])
    obs_dim = env.observation_spec[group, "observation"].shape[-1]
    action_spec = env.full_action_spec_unbatched[group, "action"]  # [n_agents, 2]

    policy_net = nn.Sequential(
        MultiAgentMLP(obs_dim, 2 * action_spec.shape[-1], n_agents, centralized=False,
                      share_params=True, depth=2, num_cells=64),
        NormalParamExtractor())
    policy = ProbabilisticActor(
        TensorDictModule(policy_net, in_keys=[(group, "observation")],
                         out_keys=[(group, "loc"), (group, "scale")]),
        spec=action_spec, in_keys=[(group, "loc"), (group, "scale")],
        out_keys=[(group, "action")], distribution_class=TanhNormal,
        distribution_kwargs={"low": action_spec.space.low, "high": action_spec.space.high},
        return_log_prob=True, log_prob_key=(group, "sample_log_prob"))
    critic = TensorDictModule(
        MultiAgentMLP(obs_dim, 1, n_agents, centralized=args.centralised_critic,
                      share_params=True, depth=2, num_cells=64),
        in_keys=[(group, "observation")], out_keys=[(group, "state_value")])

    loss = ClipPPOLoss(actor_network=policy, critic_network=critic, clip_epsilon=0.2,
                       entropy_coeff=1e-3, normalize_advantage=False)
    loss.set_keys(reward=(group, "reward"), action=(group, "action"),
                  sample_log_prob=(group, "sample_log_prob"),
                  value=(group, "state_value"), done=(group, "done"),
                  terminated=(group, "terminated"))
    loss.make_value_estimator(ValueEstimators.GAE, gamma=0.99, lmbda=0.95)
    optimiser = torch.optim.Adam(loss.parameters(), lr=3e-4)

    collector = Collector(env, policy, frames_per_batch=args.frames_per_batch,
                          total_frames=args.frames, auto_register_policy_transforms=False)
    for iteration, batch in enumerate(collector):
        # The env's done is per community ([..., 1]); the loss reads it per agent.
        for key in ("done", "terminated"):
            batch.set(("next", group, key), batch.get(("next", key)).unsqueeze(-1).expand(
                batch.get(("next", group, "reward")).shape))
        with torch.no_grad():
            loss.value_estimator(batch, params=loss.critic_network_params,
                                 target_params=loss.target_critic_network_params)
        for _ in range(4):  # epochs over the whole batch
            terms = loss(batch)
            total = terms["loss_objective"] + terms["loss_critic"] + terms["loss_entropy"]
            optimiser.zero_grad()
            total.backward()
            nn.utils.clip_grad_norm_(loss.parameters(), 1.0)
            optimiser.step()
        info = batch.get(("next", group, "info"))
        days = int(batch.get(("next", "done")).sum())
        cost = info["cost"].sum().item() / max(days, 1)
        price = info["clearing_price"][..., 0]
        traded = price[~price.isnan()]
        print(f"iteration {iteration}: {days} days, community cost/day {cost:.3f}, "
              f"mean clearing price "
              f"{traded.mean().item() if len(traded) else math.nan:.4f}, "
              f"loss {total.item():.4f}")
    collector.shutdown()


if __name__ == "__main__":
    main()
