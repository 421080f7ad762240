"""agents.networks: every algorithm's Adam, fused where torch has it; the hidden tanh."""

from __future__ import annotations

import copy

import pytest
import torch

import envs
from agents import networks, registry
from agents.algorithm import EnvSpec
from agents.run_config import build_run_config, make_generator


def train_steps(fused: bool, monkeypatch, steps: int = 50) -> list[torch.Tensor]:
    """``steps`` Adam steps of a small MLP on a fixed regression, from a fixed start."""
    monkeypatch.setattr(networks, "FUSED_ADAM_DEVICES", ("cpu", "cuda") if fused else ())
    generator = torch.Generator().manual_seed(0)
    net = networks.mlp(6, [16, 16], 2, "tanh", generator)
    optimizer = networks.adam([{"params": list(net[0].parameters()), "lr": 3e-3},
                               {"params": [p for layer in net[1:] for p in layer.parameters()],
                                "lr": 1e-3}], lr=1e-3, eps=1e-5)
    assert optimizer.defaults["fused"] is (True if fused else None)
    x = torch.randn(64, 6, generator=generator)
    y = torch.randn(64, 2, generator=generator)
    for _ in range(steps):
        loss = (net(x) - y).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return [p.detach().clone() for p in net.parameters()]


def test_fused_adam_takes_the_steps_of_the_loop(monkeypatch):
    """The fused update is Adam's (up to float rounding), param groups and their own learning
    rates included; without a fused kernel for the device it falls back to the loop."""
    fused, loop = train_steps(True, monkeypatch), train_steps(False, monkeypatch)
    for a, b in zip(fused, loop, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    moved = [not torch.equal(a, b) for a, b in zip(
        fused, [p.detach() for p in networks.mlp(6, [16, 16], 2, "tanh",
                                                 torch.Generator().manual_seed(0)).parameters()],
        strict=True)]
    assert all(moved)  # 50 steps moved every parameter


@pytest.mark.parametrize("algo", ["mappo", "ddpg", "maddpg", "dqn"])
def test_every_algorithm_steps_a_fused_adam_on_cpu(algo):
    env_keys: dict = {"network": {"model": "none"}}
    if algo == "dqn":
        env_keys["action"] = {"type": "discrete"}
    config = build_run_config({"algo": algo, "env": env_keys})
    env = envs.make_batched_env(config.env)
    algorithm = registry.get(algo)(config.hyperparameters, EnvSpec.from_env(env), config.train,
                                   make_generator(config.seed, config.train.device))
    optimizers = [value for value in vars(algorithm).values()
                  if isinstance(value, torch.optim.Optimizer)]
    assert optimizers
    assert all(optimizer.defaults["fused"] is True for optimizer in optimizers)


def test_tanh_is_torch_tanh_to_float_rounding_with_its_gradient():
    """The hidden tanh (``2 sigmoid(2x) - 1``) against float64 tanh over its whole range,
    saturation and zero included, and its gradient against ``torch.tanh``'s (and a finite
    difference check in float64)."""
    x = torch.cat([torch.linspace(-30.0, 30.0, 200_001), torch.tensor([0.0, 1e-30, -1e-30])])
    y = networks.Tanh()(x)
    assert y.dtype == torch.float32
    assert (y.double() - torch.tanh(x.double())).abs().max() < 2e-7
    assert y[-3:].abs().max() < 1e-7 and y.min() == -1.0 and y.max() == 1.0
    generator = torch.Generator().manual_seed(0)
    x = (3.0 * torch.randn(512, 64, generator=generator)).requires_grad_(True)
    grad = torch.randn(512, 64, generator=generator)
    networks.Tanh()(x).backward(grad)
    reference = x.detach().clone().requires_grad_(True)
    torch.tanh(reference).backward(grad)
    torch.testing.assert_close(x.grad, reference.grad, rtol=0.0, atol=1e-6)
    assert torch.autograd.gradcheck(networks.Tanh(), torch.randn(
        8, dtype=torch.float64, generator=generator).requires_grad_(True))


def test_tanh_networks_match_nn_tanh_networks():
    """An ``mlp`` with ``activation: tanh`` is the one of ``nn.Tanh`` (same parameters, so a
    checkpoint of either loads into the other) to float rounding, outputs and gradients."""
    fast = networks.mlp(10, [64, 64], 3, "tanh", torch.Generator().manual_seed(1))
    assert sum(isinstance(layer, networks.Tanh) for layer in fast) == 2
    exact = torch.nn.Sequential(*[torch.nn.Tanh() if isinstance(layer, networks.Tanh)
                                  else copy.deepcopy(layer) for layer in fast])
    exact.load_state_dict(fast.state_dict())
    x = torch.randn(256, 10, generator=torch.Generator().manual_seed(2))
    fast_out, exact_out = fast(x), exact(x)
    torch.testing.assert_close(fast_out, exact_out, rtol=0.0, atol=1e-6)
    fast_out.square().sum().backward()
    exact_out.square().sum().backward()
    for a, b in zip(fast.parameters(), exact.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)
