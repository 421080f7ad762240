"""Network-use fees and loss charges on P2P trades, with locality-aware matching.

A uniform-price or pool market clears volumes, not bilateral trades; to charge fees that grow
with the electrical distance between buyer and seller, the cleared P2P volumes are first
matched into a bilateral plan ``T [B, N_buyers=N, N_sellers=N]`` (kWh from seller j to
buyer i) whose marginals are exactly the cleared volumes:

    sum_j T_ij = bought_i,   sum_i T_ij = sold_j.

The plan is the entropy-regularised optimal transport between buyers and sellers with cost
``d_ij`` (the electrical distance of ``envs.network.electrical_distance``, normalised by its
largest value), computed by Sinkhorn's matrix scaling (Cuturi 2013, "Sinkhorn distances:
lightspeed computation of optimal transport", NeurIPS): ``T = diag(u) exp(-d / tau) diag(v)``.
``tau -> inf`` gives the proportional "pool" plan (every buyer buys from every seller in
proportion to their sales); a small ``tau`` prefers electrically close partners, as Piclo's
matching does. Batched over environments, no Python loop over agents.

Charges, paid by the buyer (the side that takes energy off the network), currency:

    fee_i  = sum_j T_ij * (flat_fee + distance_fee * d_ij / max d),
    loss_i = loss_factor * bought_i * retail

(the loss charge prices the network losses a P2P trade causes at the retail price). Fees go
to the network operator: they are not part of the P2P budget, which stays balanced.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sinkhorn_plan(bought: Tensor, sold: Tensor, distance: Tensor, temperature: float,
                  iterations: int = 50) -> Tensor:
    """Bilateral plan ``T [B, N, N]`` (buyer i, seller j) with row sums ``bought [B, N]`` and
    column sums ``sold [B, N]`` (kWh, equal totals per environment), preferring small
    ``distance [N, N]`` (normalised to max 1) with strength ``1 / temperature``.

    ``iterations`` Sinkhorn scalings, then the rounding of Altschuler, Weed and Rigollet
    (2017, "Near-linear time approximation algorithms for optimal transport via Sinkhorn
    iteration", Algorithm 2): where the scalings have not converged (a low temperature, few
    iterations) the plan is moved onto the exact marginals, so every buyer's plan sums to
    what it bought and every seller's to what it sold; a converged plan is left as it is."""
    kernel = torch.exp(-distance / max(temperature, 1e-6))  # [N, N]
    total = bought.sum(dim=1, keepdim=True)
    tiny = torch.finfo(bought.dtype).tiny
    row = bought / total.clamp_min(tiny)
    col = sold / total.clamp_min(tiny)
    v = torch.ones_like(col)
    for _ in range(iterations):
        u = row / (v @ kernel.T).clamp_min(tiny)
        v = col / (u @ kernel).clamp_min(tiny)
    plan = u[:, :, None] * kernel[None] * v[:, None, :]
    plan = plan * (row / plan.sum(2).clamp_min(tiny)).clamp(max=1.0)[:, :, None]
    plan = plan * (col / plan.sum(1).clamp_min(tiny)).clamp(max=1.0)[:, None, :]
    row_error = (row - plan.sum(2)).clamp_min(0.0)  # what rows and columns still lack
    col_error = (col - plan.sum(1)).clamp_min(0.0)
    plan = plan + row_error[:, :, None] * col_error[:, None, :] / row_error.sum(
        1, keepdim=True)[:, :, None].clamp_min(tiny)
    return plan * total[:, :, None]


def p2p_charges(bought: Tensor, sold: Tensor, distance: Tensor | None, retail: Tensor,
                flat_fee: float, distance_fee: float, loss_factor: float,
                temperature: float) -> tuple[Tensor, Tensor, Tensor | None]:
    """Network fee and loss charge of each buyer, ``[B, N]`` each, and the matched plan
    (None when only flat charges are asked for, which need no plan).

    ``bought``/``sold`` [B, N]: P2P kWh bought and sold (>= 0); ``distance`` [N, N];
    ``retail`` [B]: currency/kWh.
    """
    loss = loss_factor * bought * retail[:, None]
    if distance_fee == 0.0 or distance is None:
        return flat_fee * bought, loss, None
    scale = distance.max().clamp_min(torch.finfo(distance.dtype).tiny)
    normalised = distance / scale
    plan = sinkhorn_plan(bought, sold, normalised, temperature)
    unit_fee = flat_fee + distance_fee * normalised  # [N, N]
    fee = (plan * unit_fee[None]).sum(dim=2)
    return fee, loss, plan
