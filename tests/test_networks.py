"""agents.networks.adam: every algorithm's Adam, fused where torch has it."""

from __future__ import annotations

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
