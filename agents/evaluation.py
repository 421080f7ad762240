"""Evaluating a policy: the one rollout behind ``train.py``'s ``eval/*`` curves,
``evaluate.py``'s tables, the benchmarks and the tests.

:func:`evaluate_policy` plays one deterministic episode per given day with any
:class:`agents.policy.Policy` in a batched core; :func:`metric_scalars` turns episode totals
into the ``charts/`` and ``eval/`` scalars (means of ``envs.metrics.summary``). A
:class:`StepRecorder` (``envs.ledger.LedgerWriter``) sees every step of the rollout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from agents.policy import Policy
from envs import metrics

__all__ = ["StepRecorder", "chunk_seed", "evaluate_policy", "metric_scalars"]


class StepRecorder(Protocol):
    """What :func:`evaluate_policy` tells a recorder (``envs.ledger.LedgerWriter``)."""

    def start_episodes(self, episodes: Sequence[int], days: Sequence[int],
                       seeds: Sequence[int | None]) -> None:
        """Episodes ``episodes`` (positions in the evaluated days) begin on ``days`` with the
        environments' ``seeds``."""

    def record_step(self, info: Mapping[str, Tensor], episodes: Sequence[int],
                    step: int) -> None:
        """The step ``info`` of the batch (``[B, N]`` / ``[B]`` tensors); environment ``b``
        plays episode ``episodes[b]``, environments beyond ``len(episodes)`` are padding;
        ``step`` is the index of the step in the episode."""


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
    for name in ("v_min_pu", "v_max_pu"):
        value = metrics.network_info(info, name)
        step[name] = float("nan") if value is None else float(value[b])
    return step


@torch.no_grad()
def evaluate_policy(env: Any, policy: Policy, days: list[int] | np.ndarray, seed: int = 0,
                    record_day: int | None = None, progress: Any = None,
                    recorder: StepRecorder | None = None
                    ) -> tuple[metrics.EpisodeTotals, dict[str, np.ndarray] | None]:
    """Run ``policy`` for one episode starting on each of ``days`` in ``env`` (each
    ``env.episode_steps`` steps: ``episode.length_days`` days from its start day),
    ``env.n_envs`` episodes at a time (the last batch padded by repeating its last day;
    padding is dropped). Totals are per episode (``envs.metrics.per_day`` makes them per
    day).

    Batch ``c`` resets the env with ``seed + c * n_envs`` (environment b of it gets one more
    per b, ``envs.core``) and the policy with :func:`chunk_seed` ``(seed, c)``; hence results
    are deterministic for a given seed and batch size. ``record_day``: position in ``days``
    whose per-step trajectory is returned (community load and PV kW, SoC per agent kWh, prices
    currency/kWh, volumes kWh, extreme voltages p.u.), as numpy arrays over the
    episode's ``env.episode_steps`` steps.
    ``progress``: anything with ``update(n)`` (a tqdm bar), advanced by the days done.
    ``recorder``: a :class:`StepRecorder` told of every batch's episodes (numbered by their
    position in ``days``, padding left out) and of every step (None: nothing is done).

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
        episodes = list(range(start, start + len(chunk_days)))
        if recorder is not None:
            recorder.start_episodes(episodes, chunk_days,
                                    [seed + start + b for b in range(len(chunk_days))])
        steps, totals = [], None
        for step in range(env.episode_steps):
            obs, reward, _, _, info = env.step(policy.act(obs, env))
            if recorder is not None:
                recorder.record_step(info, episodes, step)
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


_TAG_NAMES = {"p2p_volume_kwh": "p2p_volume"}


def metric_scalars(totals: metrics.EpisodeTotals) -> dict[str, float]:
    """Mean over the finished episodes of every ``envs.metrics.summary`` metric, keyed by
    its TensorBoard name (``episodic_return`` is the mean per agent; metrics undefined in
    every episode, e.g. the clearing price without trades, are left out)."""
    scalars = {}
    for key, values in metrics.summary(totals).items():
        values = values[~torch.isnan(values)]
        if values.numel():
            scalars[_TAG_NAMES.get(key, key)] = float(values.double().mean())
    return scalars
