"""Small torch building blocks shared by the algorithms: MLPs initialised from the run's own
generator, and running mean/std normalisers.

Nothing here touches torch's global random state: layers are built with
:func:`torch.nn.utils.skip_init` and initialised with an explicit ``torch.Generator``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn


class _SigmoidTanh(torch.autograd.Function):
    """``tanh(x) = 2 sigmoid(2x) - 1``, with tanh's own backward ``grad (1 - y^2)``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        y = torch.mul(x, 2.0).sigmoid_().mul_(2.0).sub_(1.0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


class Tanh(nn.Module):
    """The hidden tanh of the algorithms' networks, computed as ``2 sigmoid(2x) - 1``: the
    same function to float32 rounding (within 1.8e-7 of the exact tanh, against 6e-8 for
    ``torch.tanh``), 3-4x faster on the CPU, where torch's float32 ``tanh`` costs about
    3.5 ns an element on one thread (glibc-speed, against 0.6 ns for ``sigmoid``: it was a
    fifth of MAPPO's training time; README "Where training time goes"). Its backward is
    ``torch.tanh``'s, ``grad (1 - y^2)``. Other devices use ``torch.tanh``. No parameters, so
    checkpoints of ``nn.Tanh`` networks load unchanged."""

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu":
            return torch.tanh(x)
        return _SigmoidTanh.apply(x)


ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": Tanh, "relu": nn.ReLU, "elu": nn.ELU}


FUSED_ADAM_DEVICES = ("cpu", "cuda")
"""Devices whose Adam steps run fused (``torch.optim.Adam(fused=True)``): one kernel over all
parameters instead of a Python loop of small ops per parameter."""


def adam(params: Any, lr: float, eps: float = 1e-8) -> torch.optim.Adam:
    """Every algorithm's Adam: ``params`` (tensors, or param-group dicts) with ``lr`` and
    ``eps``, fused where the parameters' device has it (:data:`FUSED_ADAM_DEVICES`). The same
    update as the per-parameter loop up to the last bits of float rounding, in a fraction of
    the time for these small networks (README, "What would make training 2x faster")."""
    groups = list(params)
    tensors = [p for group in groups for p in (group["params"] if isinstance(group, dict)
                                                 else [group])]
    fused = bool(tensors) and all(p.device.type in FUSED_ADAM_DEVICES for p in tensors)
    return torch.optim.Adam(groups, lr=lr, eps=eps, fused=fused or None)


def linear(in_features: int, out_features: int, gain: float, generator: torch.Generator,
           device: torch.device | str = "cpu") -> nn.Linear:
    """A linear layer with orthogonal weights of ``gain`` and zero bias (Saxe et al. 2014,
    "Exact solutions to the nonlinear dynamics of learning in deep linear neural networks"),
    drawn from ``generator``."""
    layer = torch.nn.utils.skip_init(nn.Linear, in_features, out_features, device=device)
    with torch.no_grad():
        nn.init.orthogonal_(layer.weight, gain=gain, generator=generator)
        layer.bias.zero_()
    return layer


def mlp(in_features: int, hidden_sizes: list[int] | tuple[int, ...], out_features: int,
        activation: str, generator: torch.Generator, output_gain: float = 1.0,
        device: torch.device | str = "cpu") -> nn.Sequential:
    """``in -> hidden... -> out`` with ``activation`` between layers; hidden layers get gain
    sqrt(2), the output layer ``output_gain`` (CleanRL's PPO initialisation)."""
    layers: list[nn.Module] = []
    size = in_features
    for hidden in hidden_sizes:
        layers += [linear(size, hidden, math.sqrt(2.0), generator, device),
                   ACTIVATIONS[activation]()]
        size = hidden
    layers.append(linear(size, out_features, output_gain, generator, device))
    return nn.Sequential(*layers)


class AgentMLP(nn.Module):
    """An MLP on ``(features, agent id)`` shared by all agents: exactly an :func:`mlp` on
    ``[features, one_hot(agent)]``, with the one-hot part of the first layer kept as a table
    ``[N, hidden]`` so no one-hot tensor is built.

    ``forward(x [..., N, in], agent=None)`` applies agent i to ``x[..., i, :]``;
    ``forward(x [M, in], agent [M])`` applies the agents given per row.
    """

    def __init__(self, in_features: int, n_agents: int, hidden_sizes: list[int] | tuple[int, ...],
                 out_features: int, activation: str, generator: torch.Generator,
                 output_gain: float = 1.0, use_agent_id: bool = True,
                 device: torch.device | str = "cpu") -> None:
        super().__init__()
        n_ids = n_agents if use_agent_id else 0
        full = mlp(in_features + n_ids, hidden_sizes, out_features, activation, generator,
                   output_gain, device)
        first = full[0]
        self.input = torch.nn.utils.skip_init(nn.Linear, in_features, first.out_features,
                                              device=device)
        with torch.no_grad():
            self.input.weight.copy_(first.weight[:, :in_features])
            self.input.bias.copy_(first.bias)
        self.agent_table = nn.Parameter(first.weight[:, in_features:].T.detach().clone(),
                                        requires_grad=use_agent_id)
        self.body = full[1:]

    def forward(self, x: Tensor, agent: Tensor | None = None) -> Tensor:
        hidden = self.input(x)
        if self.agent_table.shape[0]:
            # index_select: the rows of agent_table[agent], and a backward (index_add_) that
            # is faster on CPU than advanced indexing's accumulating index_put_, equal sums
            hidden = hidden + (self.agent_table if agent is None
                               else self.agent_table.index_select(0, agent))
        return self.body(hidden)


class PerAgentMLP(nn.Module):
    """N independent MLPs (no parameter sharing) evaluated together: ``forward(x [..., N, in])
    -> [..., N, out]`` applies agent i's network to ``x[..., i, :]`` with one batched matmul
    per layer (weights ``[N, in, out]``, biases ``[N, 1, out]``).

    Agent i's network is initialised exactly as :func:`mlp` would (orthogonal, from the
    generator), agents one after another.
    """

    def __init__(self, in_features: int, n_agents: int, hidden_sizes: list[int] | tuple[int, ...],
                 out_features: int, activation: str, generator: torch.Generator,
                 output_gain: float = 1.0, device: torch.device | str = "cpu") -> None:
        super().__init__()
        members = [mlp(in_features, hidden_sizes, out_features, activation, generator,
                       output_gain, device) for _ in range(n_agents)]
        layers = [[module for module in member if isinstance(module, nn.Linear)]
                  for member in members]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([member[k].weight.detach().T for member in layers]))
            for k in range(len(layers[0])))
        self.biases = nn.ParameterList(
            nn.Parameter(torch.stack([member[k].bias.detach()[None] for member in layers]))
            for k in range(len(layers[0])))
        self.activation = ACTIVATIONS[activation]()

    def forward(self, x: Tensor) -> Tensor:
        batch_shape = x.shape[:-2]
        hidden = x.reshape(-1, *x.shape[-2:]).transpose(0, 1)  # [N, M, in]
        last = len(self.weights) - 1
        for k, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            hidden = torch.baddbmm(bias, hidden, weight)
            if k < last:
                hidden = self.activation(hidden)
        return hidden.transpose(0, 1).reshape(*batch_shape, x.shape[-2], hidden.shape[-1])


def output_layer(network: nn.Module) -> tuple[Tensor, Tensor]:
    """The weights and biases of the output layer of an :class:`AgentMLP` or a
    :class:`PerAgentMLP` (its output is ``hidden @ weight.T + bias``, resp. per agent
    ``hidden @ weight[i] + bias[i]``): what a residual policy zeroes at initialisation and
    :func:`scale_output` scales."""
    if isinstance(network, AgentMLP):
        layer = network.body[-1]
        return layer.weight, layer.bias
    if isinstance(network, PerAgentMLP):
        return network.weights[-1], network.biases[-1]
    raise TypeError(f"output_layer needs an AgentMLP or a PerAgentMLP, got "
                    f"{type(network).__name__}")


@torch.no_grad()
def scale_output(network: nn.Module, scale: float) -> None:
    """Multiply the output of ``network`` (:func:`output_layer`) by ``scale``, in place."""
    for parameter in output_layer(network):
        parameter.mul_(scale)


@torch.no_grad()
def polyak_update(online: nn.Module, target: nn.Module, tau: float) -> None:
    """``target <- (1 - tau) target + tau online``, parameter by parameter (``tau >= 1``
    copies)."""
    for source, destination in zip(online.parameters(), target.parameters(), strict=True):
        if tau >= 1.0:
            destination.copy_(source)
        else:
            destination.lerp_(source, tau)


class RunningMeanStd(nn.Module):
    """Running mean and variance of a stream of batches (Chan et al. 1979 parallel update), in
    float64 buffers so they are saved with ``state_dict``.

    Used as value normalisation ("PopArt-lite", Yu et al. 2022, "The Surprising Effectiveness
    of PPO in Cooperative Multi-Agent Games", Sec. 4.1): the critic predicts normalised
    returns, ``normalize`` maps targets in, ``denormalize`` maps predictions out.
    """

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4,
                 device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64, device=device))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64, device=device))
        self.register_buffer("count", torch.tensor(epsilon, dtype=torch.float64,
                                                   device=device))

    @torch.no_grad()
    def update(self, batch: Tensor) -> None:
        """Fold ``batch [M, *shape]`` into the running statistics."""
        batch = batch.detach().to(torch.float64).reshape(-1, *self.mean.shape)
        batch_mean = batch.mean(dim=0)
        batch_var = batch.var(dim=0, unbiased=False)
        batch_count = batch.shape[0]
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean += delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count + delta.square() * (
            self.count * batch_count / total)
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def normalize(self, value: Tensor) -> Tensor:
        """``(value - mean) / std`` in ``value``'s dtype."""
        std = self.var.clamp_min(1e-8).sqrt()
        return ((value - self.mean.to(value.dtype)) / std.to(value.dtype))

    def denormalize(self, value: Tensor) -> Tensor:
        """``value * std + mean`` in ``value``'s dtype."""
        std = self.var.clamp_min(1e-8).sqrt()
        return value * std.to(value.dtype) + self.mean.to(value.dtype)
