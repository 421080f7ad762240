"""A batched TorchRL ``EnvBase`` over the batched core, in the BenchMARL/VMAS multi-agent layout.

One :class:`PeergridTorchRLEnv` holds one :class:`envs.core.BatchedP2PEnv` of B communities of
N prosumers and steps them all with one call of the core (no Python loop over communities or
agents). ``batch_size = [B]``, ``device`` = the core's device; all N agents are one group,
``"agents"`` (TorchRL's ``MarlGroupMapType.ALL_IN_ONE_GROUP``, as ``VmasEnv`` names it):

- ``("agents", "observation")``: ``[B, N, obs_dim]`` float32, the core's local observations
  (``envs.observations``);
- ``("agents", "action")``: continuous ``[B, N, 2]`` float32, battery fraction in [-1, 1] and
  price fraction in [0, 1] (the core's box, as the PettingZoo env's); with ``action.type:
  discrete`` ``[B, N]`` int64 in ``0..battery_levels * price_levels - 1``;
- ``("agents", "reward")``: ``[B, N, 1]`` float32, ``-cost * reward_scale``;
- ``("agents", "info", key)``: ``[B, N]`` float32 for every key of
  ``envs.info_schema.INFO_KEYS`` (a community's values repeated for each of its agents, NaN
  where undefined, at reset all NaN but ``day`` and ``step_of_day`` = -1), only with
  ``step_infos=True``;
- ``"state"``: ``[B, 3 N + 7]`` float32, the global state for centralised critics
  (``BatchedP2PEnv.state``);
- ``"done"``, ``"terminated"``, ``"truncated"``: ``[B, 1]`` bool, per community (all agents of
  a community end together; ``truncated`` is always False: episodes end by their length).

Done keys sit at the root, as ``VmasEnv`` lays them out; a loss that reads them per agent
expands them to ``[B, N, 1]`` (see ``benchmarks/torchrl_ippo.py``).

Episode ends and resets
    The core resets a finished community inside ``step`` and keeps the last observation in
    ``info["final_observation"]``. :meth:`PeergridTorchRLEnv._step` returns that final
    observation (and state) as ``("next", ...)`` with ``done`` True, as TorchRL expects, and
    remembers which communities the core has already restarted; the ``_reset`` that TorchRL
    sends next (``step_and_maybe_reset``, collectors, ``rollout``) with a ``"_reset"`` mask of
    those communities then only reports their new first observation, without drawing a second
    episode. A ``"_reset"`` mask that names communities still running resets just those
    (``BatchedP2PEnv.reset(env_index=...)``): partial resets are exact. ``reset()`` without a
    mask starts new episodes everywhere. Episodes all last ``96 * episode.length_days`` steps,
    so communities started together also end together.

Seeding
    ``set_seed(s)`` (or ``seed=s`` at construction) seeds the core: community b draws from
    seed ``s + b`` (``envs.rng``), so the env reproduces a ``BatchedP2PEnv`` reset with
    ``seed=s`` exactly. A seed is None or an integer in [0, ``envs.config.SEED_MAX``].

Arguments
    ``PeergridTorchRLEnv(core, step_infos=True, seed=None)``, or
    ``envs.make_torchrl_env(config=None, n_envs=None, device=None, step_infos=True,
    seed=None, **overrides)``. ``step_infos=False`` leaves the infos out (faster).
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from envs.config import SEED_MAX
from envs.core import BatchedP2PEnv, checked_seed
from envs.info_schema import AGENT_INFO, INFO_KEYS

GROUP = "agents"
"""The one agent group, as VMAS and BenchMARL name it."""


class PeergridTorchRLEnv(EnvBase):
    """B communities of one :class:`BatchedP2PEnv` as a TorchRL env with ``batch_size [B]``
    (layout and reset semantics in the module docstring)."""

    def __init__(self, core: BatchedP2PEnv, step_infos: bool = True,
                 seed: int | None = None) -> None:
        super().__init__(device=core.device, batch_size=torch.Size([core.n_envs]))
        self.core = core
        self.step_infos = step_infos
        """Whether ``("agents", "info")`` holds :data:`INFO_KEYS` (see module doc)."""
        self.group_map: dict[str, list[str]] = {GROUP: [f"prosumer_{i}" for i in range(
            core.n_agents)]}
        """TorchRL's group map: every agent in the one group ``"agents"``, named as the
        PettingZoo env's ``possible_agents``."""
        b, n = core.n_envs, core.n_agents
        # Communities the core restarted inside the last step, which TorchRL resets next.
        self._restarted = torch.zeros(b, dtype=torch.bool, device=self.device)
        self._info_keys = list(INFO_KEYS)
        self._reset_info = torch.full((b, n, len(INFO_KEYS)), float("nan"),
                                      dtype=torch.float32, device=self.device)
        self._reset_info[..., INFO_KEYS.index("step_of_day")] = -1.0
        self._nan = torch.full((b, n), float("nan"), dtype=torch.float32, device=self.device)
        self._make_specs()
        if seed is not None:
            self.set_seed(seed)

    def _make_specs(self) -> None:
        core, device = self.core, self.device
        b, n = core.n_envs, core.n_agents
        group_observation = Composite(
            observation=Unbounded((b, n, core.obs_dim), dtype=torch.float32, device=device),
            shape=(b, n), device=device)
        if self.step_infos:
            group_observation["info"] = Composite(
                {key: Unbounded((b, n), dtype=torch.float32, device=device)
                 for key in INFO_KEYS}, shape=(b, n), device=device)
        self.observation_spec = Composite(
            {GROUP: group_observation,
             "state": Unbounded((b, core.state_dim), dtype=torch.float32, device=device)},
            shape=(b,), device=device)
        if core.config.action.type == "continuous":
            low = torch.tensor([-1.0, 0.0], device=device).expand(b, n, 2)
            high = torch.ones(b, n, 2, device=device)
            action = Bounded(low, high, (b, n, 2), dtype=torch.float32, device=device)
        else:
            action = Categorical(core.n_discrete_actions, (b, n), dtype=torch.int64,
                                 device=device)
        self.full_action_spec = Composite(
            {GROUP: Composite(action=action, shape=(b, n), device=device)}, shape=(b,),
            device=device)
        self.full_reward_spec = Composite(
            {GROUP: Composite(reward=Unbounded((b, n, 1), dtype=torch.float32, device=device),
                              shape=(b, n), device=device)}, shape=(b,), device=device)
        self.full_done_spec = Composite(
            {key: Categorical(2, (b, 1), dtype=torch.bool, device=device)
             for key in ("done", "terminated", "truncated")}, shape=(b,), device=device)

    # ----------------------------------------------------------------------------------------

    def _set_seed(self, seed: int | None) -> None:
        if seed is not None:
            self.core.seed(checked_seed(seed, SEED_MAX))

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        reset = tensordict.get("_reset", None) if tensordict is not None else None
        if reset is None:
            self.core.reset()
            self._restarted.zero_()
        else:
            reset = reset.reshape(self.core.n_envs).to(self.device)
            fresh = reset & ~self._restarted
            if bool(fresh.any()):
                self.core.reset(env_index=fresh.nonzero().squeeze(-1))
            self._restarted &= ~reset
        group = {"observation": self.core.observe().to(torch.float32)}
        if self.step_infos:
            info = self._reset_info.clone()
            info[..., INFO_KEYS.index("day")] = self.core.day[:, None].to(torch.float32)
            group["info"] = self._info_dict(info)
        done = torch.zeros(self.core.n_envs, 1, dtype=torch.bool, device=self.device)
        return self._output(group, self.core.state(), done, done.clone(), done.clone())

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get((GROUP, "action"))
        obs, reward, terminated, truncated, info = self.core.step(action)
        self._restarted.zero_()
        state = None
        if "final_observation" in info:  # some communities ended: report their last step
            done = info["done"]
            obs = torch.where(done[:, None, None], info["final_observation"], obs)
            state = torch.where(done[:, None], info["final_state"], self.core.state())
            self._restarted |= done
        if state is None:
            state = self.core.state()
        group = {"observation": obs.to(torch.float32),
                 "reward": reward.to(torch.float32).unsqueeze(-1)}
        if self.step_infos:
            group["info"] = self._info_dict(self._step_info(info))
        return self._output(group, state, (terminated | truncated)[:, None],
                            terminated[:, None], truncated[:, None])

    def _step_info(self, info: dict[str, Tensor]) -> Tensor:
        """The core's step ``info`` as ``[B, N, len(INFO_KEYS)]`` float32 in the order of
        :data:`INFO_KEYS`: per-agent values, per-community values repeated over the agents,
        NaN for keys the core did not report (the network ones without a network model)."""
        b, n = self.core.n_envs, self.core.n_agents
        columns = []
        for key in INFO_KEYS:
            value = info.get(key)
            if value is None:
                columns.append(self._nan)
            elif key in AGENT_INFO:
                columns.append(value.to(torch.float32))
            else:
                columns.append(value.to(torch.float32)[:, None].expand(b, n))
        return torch.stack(columns, dim=-1)

    def _info_dict(self, info: Tensor) -> TensorDict:
        return TensorDict(dict(zip(self._info_keys, info.unbind(-1), strict=True)),
                          batch_size=info.shape[:2], device=self.device)

    def _output(self, group: dict, state: Tensor, done: Tensor, terminated: Tensor,
                truncated: Tensor) -> TensorDict:
        b, n = self.core.n_envs, self.core.n_agents
        return TensorDict(
            {GROUP: TensorDict(group, batch_size=(b, n), device=self.device),
             "state": state.to(torch.float32), "done": done, "terminated": terminated,
             "truncated": truncated}, batch_size=self.batch_size, device=self.device)

