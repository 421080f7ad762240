"""The single-environment RNG and power-flow kernels (envs/single/rng.py, network.py) against
the torch functions they mirror (envs/rng.py, envs/network.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import envs
from envs import rng
from envs.network import network_summary
from envs.single import rng as single_rng
from envs.single.network import grid_arrays, solve_into, summarise_into


@pytest.mark.parametrize("stream", [1, 2, 7])
def test_draws_equal_the_batched_streams_bit_for_bit(stream: int) -> None:
    seeds = torch.tensor([0, 5, -3, 2**40, 2**62 + 11])
    counters = torch.tensor([0, 7, 123_456_789, 3_000, 1])
    shape = (3, 5, 2)
    uniform = rng.uniform(seeds, counters, stream, shape, torch.float64).reshape(5, -1)
    normal = rng.normal(seeds, counters, stream, shape, torch.float64).reshape(5, -1)
    count = uniform.shape[1]
    for b in range(len(seeds)):
        key = np.uint64(single_rng.stream_key(int(seeds[b]), int(counters[b]), stream))
        drawn = [single_rng.uniform_at(key, p) for p in range(count)]
        assert drawn == uniform[b].tolist()
        drawn = [single_rng.normal_at(key, p, count) for p in range(count)]
        np.testing.assert_allclose(drawn, normal[b].numpy(), rtol=0, atol=1e-15)


SUMMARY_KEYS = ("vm_min_pu", "vm_max_pu", "max_line_loading_percent",
                "max_trafo_loading_percent", "n_voltage_violations", "n_line_violations",
                "losses_kw", "converged")


@pytest.mark.parametrize("feeder", ["1-LV-rural1--0-sw", "1-LV-semiurb4--0-sw", "case33bw"])
def test_power_flow_equals_the_batched_model(feeder: str) -> None:
    core = envs.make_batched_env({"community": {"feeder": feeder}}, dtype="float64")
    model = core.network.model
    grid = grid_arrays(model)
    generator = np.random.default_rng(0)
    # Ordinary steps, heavy export, and a load far beyond what the feeder can carry (the
    # fixed point diverges: NaN results, not converged).
    scales = [generator.uniform(-1, 2, core.n_agents), generator.uniform(-8, -4, core.n_agents),
              np.full(core.n_agents, 400.0)]
    for t, scale in zip([100, 20_000, 30_000], scales, strict=True):
        p_kw = core.load_kw[t].numpy() * scale
        q_kvar = core.load_kvar[t].numpy() * np.abs(scale)
        expected = model.solve(torch.tensor(p_kw)[None], torch.tensor(q_kvar)[None],
                               angles=False)
        vm = np.empty(model.n_bus)
        line, trafo = np.empty(model.n_line), np.empty(model.n_trafo)
        line_p, trafo_p = np.empty(model.n_line), np.empty(model.n_trafo)
        losses, converged, _ = solve_into(grid, p_kw, q_kvar, vm, line, trafo, line_p, trafo_p)
        assert converged == bool(expected.converged[0])
        for got, want in [(vm, expected.vm_pu), (line, expected.line_loading_percent),
                          (trafo, expected.trafo_loading_percent),
                          (line_p, expected.line_p_from_kw), (trafo_p, expected.trafo_p_hv_kw),
                          (losses, expected.losses_kw)]:
            np.testing.assert_allclose(got, want[0].numpy(), rtol=1e-9, atol=1e-9,
                                       equal_nan=True)
        summary = np.empty(8)
        flagged = summarise_into(vm, line, trafo, losses, converged, 0.95, 1.05, summary)
        reference = network_summary(expected)
        np.testing.assert_allclose(summary, [float(reference[key][0]) for key in SUMMARY_KEYS],
                                   rtol=1e-9, atol=1e-9, equal_nan=True)
        assert flagged == (summary[4] + summary[5] > 0 or not converged)
    assert not converged  # the last case really diverged
