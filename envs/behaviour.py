"""Behavioural (prospect-theory) prosumers: the value function of their reward and who they are.

A behavioural agent's reward is the prospect-theory value of its money against a reference
point (Tversky & Kahneman 1992, "Advances in prospect theory: cumulative representation of
uncertainty", J. Risk and Uncertainty 5(4), eqs. of Section 2.3; applied to P2P energy
trading by El Rahi et al. 2019, "Managing price uncertainty in prosumer-centric energy
trading: a prospect-theoretic Stackelberg game approach", IEEE Trans. Smart Grid 10(1)):

    V(x) =  x ** alpha                 for x >= 0  (a gain)
    V(x) = -lambda * (-x) ** beta      for x <  0  (a loss)

with ``x = u - R``: ``u`` the agent's money of the step (``u = -cost``, ``cost`` the core's
``info["cost"]``: payment + degradation + network penalty + network fee + terminal value) and
``R`` its reference money of the same step (``behaviour.reference``):

* ``no_p2p`` (default): ``R = -no_p2p_cost``, the agent's own bill of the step without P2P and
  with its battery idle, network penalties of that operation included
  (``envs.metrics.no_p2p_step_cost``, the reference every saving of ``envs.metrics`` is
  measured against), so ``x`` is the agent's saving of the step: a behavioural agent feels
  every step it pays more than its no-P2P bill as a loss;
* ``zero``: ``R = 0``, ``x = -cost``: every payment is a loss, every net income a gain
  (mental accounting of cash flows).

Time scale (``behaviour.time_scale``, :data:`TIME_SCALES`): over what the prospect is framed.

* ``step`` (default): each 15-minute settlement is one prospect (narrow framing); the reward
  of step ``t`` is ``V(x_t) * reward_scale``. Dense, and the core's state is unchanged.
* ``day``: the prospect is the day's money against the day's reference (with ``no_p2p``:
  the day's bill against the day's bill without P2P), ``V`` of Tversky & Kahneman (1992)
  taken of the day's total rather than of each settlement. Each agent carries its running
  money of the day ``S_t = x_0 + ... + x_t`` (``S_{-1} = 0`` at every midnight: at each
  reset and at the midnights inside a multi-day episode), the core's state
  ``behaviour_day_gain`` (``envs.core.STATE_KEYS``), and the reward of step ``t`` is
  ``(V(S_t) - V(S_{t-1})) * reward_scale``. The rewards of a day telescope: they sum to
  ``V(S_95) * reward_scale``, the prospect value of the day's saving (with ``reference``
  no_p2p: the day's no-P2P bill minus the day's bill), while each step still gets the change
  it makes to that value (dense). ``V`` is concave in gains and convex in losses, so this is
  not the sum of the steps' ``V(x_t)``: a loss of one step offsets an earlier gain of the
  same day before it is weighed as a loss (broad framing within the day).

The reward of a behavioural agent is ``V(x) * reward_scale`` (at the day time scale, the
step's change of ``V(S_t)`` times ``reward_scale``); rational (risk-neutral) agents keep
``-cost * reward_scale`` exactly. Scale: ``x`` is money of one step (typically 1e-3 to
1e-1 currency on the shipped feeders); with ``alpha < 1``, ``x ** alpha > x`` for ``x < 1``
(0.01 ** 0.88 = 0.0174), and losses weigh ``lambda`` times more, so behavioural rewards are
larger in magnitude than rational ones and are not money: compare policies by cost and savings
(``envs.metrics``), not by return, when the population is mixed. ``V`` is continuous with a
kink at ``x = 0`` (``V(0) = 0``; its slope is infinite on both sides for exponents below 1).

Who is behavioural (``behaviour.share`` or ``behaviour.agents``): :func:`behavioural_mask`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is not imported here: envs.config reads this module's names
    from torch import Tensor

REFERENCES: tuple[str, ...] = ("no_p2p", "zero")
"""Values of ``behaviour.reference`` (module docstring), in the order of the numba engine's
codes (:data:`REFERENCE_NO_P2P`, :data:`REFERENCE_ZERO`)."""
REFERENCE_NO_P2P, REFERENCE_ZERO = 0, 1

TIME_SCALES: tuple[str, ...] = ("step", "day")
"""Values of ``behaviour.time_scale`` (module docstring): the prospect of one step, or the
running prospect of the day."""

TK_ALPHA = 0.88
"""Tversky & Kahneman (1992)'s median estimate of the gain exponent."""
TK_BETA = 0.88
"""Tversky & Kahneman (1992)'s median estimate of the loss exponent."""
TK_LOSS_AVERSION = 2.25
"""Tversky & Kahneman (1992)'s median estimate of the loss-aversion coefficient lambda."""


def prospect_value(x: Tensor, alpha: float = TK_ALPHA, beta: float = TK_BETA,
                   loss_aversion: float = TK_LOSS_AVERSION) -> Tensor:
    """The prospect-theory value ``V(x)`` of Tversky & Kahneman (1992) (module docstring),
    elementwise on ``x [...]`` (money relative to the reference, currency): ``x ** alpha``
    for gains (``x >= 0``), ``-loss_aversion * (-x) ** beta`` for losses. Same shape and dtype
    as ``x``; ``V(0) = 0``."""
    gain = x.clamp_min(0.0).pow(alpha)
    loss = (-x).clamp_min(0.0).pow(beta)
    return gain - loss_aversion * loss


def behavioural_mask(agent_names: Sequence[str], share: float, agents: Sequence[str] | None,
                     seed: int) -> np.ndarray:
    """Which agents are behavioural, ``[N]`` bool in the order of ``agent_names``.

    ``agents`` (a list of names): exactly those; else ``round(share * N)`` agents drawn
    without replacement by a generator seeded with ``seed`` (its own stream, independent of
    the asset draw of ``envs.data.build_assets``). Unknown names raise ValueError naming
    them (the config cannot check them: the names come with the feeder)."""
    n = len(agent_names)
    mask = np.zeros(n, dtype=bool)
    if agents is not None:
        index = {name: i for i, name in enumerate(agent_names)}
        unknown = [name for name in agents if name not in index]
        if unknown:
            raise ValueError(f"unknown agents {unknown}; this community's agents: "
                             f"{list(agent_names)}")
        mask[[index[name] for name in agents]] = True
        return mask
    digest = hashlib.sha256(repr(("behaviour", int(seed))).encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    mask[rng.permutation(n)[: round(share * n)]] = True
    return mask
