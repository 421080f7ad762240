"""The policy interface evaluation speaks, and loading a trained policy from a run folder.

A policy acts for every agent of every environment of a batched core
(``envs.core.BatchedP2PEnv``) at once:

=====================  ========================================================================
member                 meaning
=====================  ========================================================================
``name``               short name used in tables and file names
``mechanism``          market mechanism the policy must be evaluated under (``None``: the
                       config's); e.g. ``no_p2p`` is the no-market reference, ``"none"``
``reset(env, seed)``   start of a batch of episodes (all environments reset together)
``act(obs, env)``      ``obs [B, N, obs_dim]`` -> actions in the env's action space: continuous
                       ``[B, N, 2]`` (battery fraction in [-1, 1], price fraction in [0, 1])
                       or discrete ``[B, N]`` indices (:func:`env_actions` converts)
=====================  ========================================================================

Policies may read the env (``env.load_kw``, ``env.soc_kwh``, ...) as rule-based traders with
perfect knowledge of the current step do; a learned policy should use ``obs`` only.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from envs import metrics

__all__ = ["Policy", "PolicyLoadError", "env_actions", "evaluate_policy", "load_policy"]


@runtime_checkable
class Policy(Protocol):
    """What ``evaluate.py`` needs from a policy (see the module docstring)."""

    name: str
    mechanism: str | None

    def reset(self, env: Any, seed: int | None = None) -> None:
        """Prepare for a new batch of episodes of ``env``; ``seed`` seeds the policy's own
        generator (never the global one)."""

    def act(self, obs: Tensor, env: Any) -> Tensor:
        """Actions of every agent of every environment, given ``obs [B, N, obs_dim]``."""


class PolicyLoadError(RuntimeError):
    """A checkpoint or run folder cannot be turned into a policy."""


def env_actions(battery_fraction: Tensor, price_fraction: Tensor, env: Any) -> Tensor:
    """Actions in ``env``'s action space from a battery fraction in [-1, 1] (> 0 charges, of
    ``env.battery_kw``) and a price fraction in [0, 1] (of [feed-in, retail]), each ``[B, N]``.

    Continuous: ``[B, N, 2]``. Discrete: the index ``battery_level * price_levels +
    price_level`` of the nearest levels (``envs.core.BatchedP2PEnv.decode_actions``'s grid).
    """
    battery_fraction = battery_fraction.clamp(-1.0, 1.0).to(env.dtype)
    price_fraction = price_fraction.clamp(0.0, 1.0).to(env.dtype)
    action = env.config.action
    if action.type == "continuous":
        return torch.stack([battery_fraction, price_fraction], dim=-1)
    battery_level = torch.round((battery_fraction + 1.0) / 2.0 * (action.battery_levels - 1))
    price_level = torch.round(price_fraction * (action.price_levels - 1))
    return (battery_level.long() * action.price_levels + price_level.long())


def run_folder(path: str | Path) -> Path:
    """The run folder of ``path``: the folder itself, or the folder holding a checkpoint file
    (``runs/<run>/checkpoint_best.pt``)."""
    path = Path(path)
    if path.is_file():
        return path.parent
    if path.is_dir():
        return path
    raise PolicyLoadError(f"no run folder or checkpoint at '{path}'")


def load_policy(path: str | Path) -> Policy:
    """A trained policy from a run folder (``runs/<run>/``, with ``checkpoint_best.pt`` and
    ``config.yaml``) or from a checkpoint file inside one.

    Delegates to ``agents.registry.load_policy_from_run(run_dir[, checkpoint=file name])``
    (the trainer's loader; a checkpoint file given as ``path`` is passed on by name); the
    object it returns needs ``act`` and ``reset`` of :class:`Policy` (``name`` defaults to the
    run folder's name, ``mechanism`` to None). Raises :class:`PolicyLoadError` when the
    path is not a run, when that loader does not exist yet, or when its result is no policy.
    """
    folder = run_folder(path)
    try:
        registry = importlib.import_module("agents.registry")
    except ModuleNotFoundError as error:
        if error.name not in ("agents.registry", "agents"):
            raise
        raise PolicyLoadError(
            f"cannot load the policy of '{folder}': agents/registry.py (the trainer's "
            "load_policy_from_run) does not exist yet") from None
    loader = getattr(registry, "load_policy_from_run", None)
    if loader is None:
        raise PolicyLoadError("agents.registry has no load_policy_from_run(run_dir)")
    path = Path(path)
    policy = loader(folder, checkpoint=path.name) if path.is_file() else loader(folder)
    if not (callable(getattr(policy, "act", None)) and callable(getattr(policy, "reset", None))):
        raise PolicyLoadError(
            f"agents.registry.load_policy_from_run('{folder}') returned a "
            f"{type(policy).__name__} without act(obs, env) and reset(env, seed) "
            "(agents.policy.Policy)")
    if not isinstance(getattr(policy, "name", None), str):
        policy.name = folder.name
    if not hasattr(policy, "mechanism"):
        policy.mechanism = None
    return policy


# --------------------------------------------------------------------------------------------
# Rolling a policy out over fixed days
# --------------------------------------------------------------------------------------------


def chunk_seed(seed: int, chunk: int) -> int:
    """The policy seed of the ``chunk``-th batch of days of an evaluation seeded ``seed``
    (independent streams per batch, derived with numpy's SeedSequence)."""
    return int(np.random.SeedSequence([int(seed), int(chunk)]).generate_state(1)[0])


def _trajectory_step(env: Any, info: dict[str, Tensor], b: int) -> dict[str, Any]:
    """What the day-trajectory plot needs from environment ``b``'s step ``info``."""
    step = {
        "load_kw": float(info["load_kwh"][b].sum()) / env.dt_h,
        "pv_kw": float(info["pv_kwh"][b].sum()) / env.dt_h,
        "soc_kwh": info["soc_kwh"][b].double().cpu().numpy(),
        "clearing_price": float(info["clearing_price"][b]),
        "retail_price": float(info["retail_price"][b]),
        "feed_in_price": float(info["feed_in_price"][b]),
        "p2p_volume_kwh": float(info["p2p_volume_kwh"][b]),
        "grid_import_kwh": float(info["grid_import_kwh"][b]),
        "grid_export_kwh": float(info["grid_export_kwh"][b]),
    }
    for name in ("v_min", "v_max"):
        value = metrics.network_info(info, name)
        step[name] = float("nan") if value is None else float(value[b])
    return step


@torch.inference_mode()
def evaluate_policy(env: Any, policy: Policy, days: list[int] | np.ndarray, seed: int = 0,
                    record_day: int | None = None, progress: Any = None
                    ) -> tuple[metrics.EpisodeTotals, dict[str, np.ndarray] | None]:
    """Run ``policy`` for one episode on each of ``days`` in ``env``, ``env.n_envs`` days at
    a time (the last batch padded by repeating its last day; padding is dropped).

    Batch ``c`` resets the env with ``seed + c * n_envs`` (environment b of it gets one more
    per b, ``envs.core``) and the policy with :func:`chunk_seed` ``(seed, c)``; hence results
    are deterministic for a given seed and batch size. ``record_day``: position in ``days``
    whose per-step trajectory is returned (community load and PV kW, SoC per agent kWh, prices
    currency/kWh, volumes kWh, extreme voltages p.u.), as numpy arrays over the 96 steps.
    ``progress``: anything with ``update(n)`` (a tqdm bar), advanced by the days done.

    Returns ``(totals of len(days) episodes in the order of days, trajectory or None)``.
    """
    days = [int(d) for d in days]
    if not days:
        raise ValueError("evaluate_policy needs at least one day")
    batch = env.n_envs
    parts, trajectory = [], None
    for chunk, start in enumerate(range(0, len(days), batch)):
        chunk_days = days[start:start + batch]
        padded = chunk_days + [chunk_days[-1]] * (batch - len(chunk_days))
        obs, _ = env.reset(seed=seed + start, days=padded)
        policy.reset(env, seed=chunk_seed(seed, chunk))
        accumulator = metrics.EpisodeAccumulator(env.n_envs, env.n_agents, device=env.device)
        record = (record_day - start if record_day is not None
                  and start <= record_day < start + len(chunk_days) else None)
        steps, totals = [], None
        for _ in range(env.episode_steps):
            obs, reward, _, _, info = env.step(policy.act(obs, env))
            if record is not None:
                steps.append(_trajectory_step(env, info, record))
            totals = accumulator.update(info, reward)
        if totals is None or len(totals) != batch:
            raise RuntimeError("episodes did not end together after env.episode_steps steps")
        keep = len(chunk_days)
        parts.append(metrics.EpisodeTotals({k: v[:keep] for k, v in totals.agent.items()},
                                           {k: v[:keep] for k, v in totals.env.items()},
                                           totals.day[:keep]))
        if steps:
            trajectory = {key: np.asarray([s[key] for s in steps]) for key in steps[0]}
            trajectory["day"] = np.asarray(days[record_day])
        if progress is not None:
            progress.update(keep)
    return metrics.concat_totals(parts), trajectory
