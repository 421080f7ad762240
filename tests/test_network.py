"""Tests for envs/network.py: the batched Z-bus power flow against pandapower ``runpp``,
sensitivities, penalty sharing, electrical distance and summaries.

Accuracy acceptance (per feeder, 200 seeded scenarios from every load at peak with no PV to
heavy PV export): max |vm error| <= 1e-3 p.u., line and trafo loading error <= 1 percentage
point, total losses within 2 %.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable

import numpy as np
import pandapower as pp
import pandapower.networks as pn
import pytest
import simbench
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envs.network import (
    BatchedPowerFlow,
    GridSensitivity,
    PowerFlowResult,
    electrical_distance,
    network_penalty,
    network_summary,
    run_ac,
)

SIMBENCH_FEEDERS = ("1-LV-rural1--0-sw", "1-LV-semiurb4--0-sw", "1-LV-urban6--0-sw")
FEEDERS = (*SIMBENCH_FEEDERS, "case33bw")
N_SCENARIOS = 200
PV_MULTIPLE = 3.0  # rooftop PV export up to 3x the load's peak consumption
VM_TOLERANCE_PU = 1e-3
LOADING_TOLERANCE_PERCENT = 1.0
LOSSES_RELATIVE_TOLERANCE = 0.02


def load_net(name: str) -> pp.pandapowerNet:
    if name == "case33bw":
        return pn.case33bw()
    return simbench.get_simbench_net(name)


def peak_and_tan_phi(net: pp.pandapowerNet) -> tuple[np.ndarray, np.ndarray]:
    """Each load's peak consumption (kW) and q/p ratio (its power factor)."""
    peak_kw = net.load["p_mw"].to_numpy() * 1000.0
    q_kvar = net.load["q_mvar"].to_numpy() * 1000.0
    tan_phi = np.divide(q_kvar, peak_kw, out=np.zeros_like(peak_kw), where=peak_kw > 0)
    return peak_kw, tan_phi


def random_scenarios(net: pp.pandapowerNet, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``[n, N]`` consumption (kW, kvar) spanning peak load to heavy PV export.

    Scenario 0: every load at peak, no PV; scenario 1: every agent exporting PV_MULTIPLE x its
    peak; the rest: a common level ~ U(-PV_MULTIPLE, 1) plus a per-agent spread ~ U(-1, 1),
    clipped to [-PV_MULTIPLE, 1], times the peak. Reactive power follows the load's q/p ratio.
    """
    rng = np.random.default_rng(seed)
    peak_kw, tan_phi = peak_and_tan_phi(net)
    level = rng.uniform(-PV_MULTIPLE, 1.0, size=(n, 1))
    spread = rng.uniform(-1.0, 1.0, size=(n, len(peak_kw)))
    factor = np.clip(level + spread, -PV_MULTIPLE, 1.0)
    factor[0], factor[1] = 1.0, -PV_MULTIPLE
    p_kw = factor * peak_kw
    return p_kw, p_kw * tan_phi


@pytest.fixture(scope="module")
def nets() -> Callable[[str], pp.pandapowerNet]:
    """Feeders by name, each loaded once per module (SimBench takes ~3 s a net)."""
    cache: dict[str, pp.pandapowerNet] = {}

    def get(name: str) -> pp.pandapowerNet:
        if name not in cache:
            cache[name] = load_net(name)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def references(nets):
    """``(p_kw, q_kvar, run_ac result)`` per feeder: N_SCENARIOS pandapower runs, once."""
    cache: dict[str, tuple[np.ndarray, np.ndarray, PowerFlowResult]] = {}

    def get(name: str) -> tuple[np.ndarray, np.ndarray, PowerFlowResult]:
        if name not in cache:
            p_kw, q_kvar = random_scenarios(nets(name), N_SCENARIOS, seed=zlib.crc32(name.encode()))
            cache[name] = (p_kw, q_kvar, run_ac(nets(name), p_kw, q_kvar))
        return cache[name]

    return get


@pytest.fixture(scope="module")
def rural_model(nets) -> BatchedPowerFlow:
    return BatchedPowerFlow.from_pandapower(nets("1-LV-rural1--0-sw"), dtype=torch.float64)


def max_errors(model_result: PowerFlowResult, reference: PowerFlowResult) -> dict[str, float]:
    def worst(a: torch.Tensor, b: torch.Tensor) -> float:
        if a.numel() == 0:
            return 0.0
        difference = (a.double() - b.double()).abs()
        assert torch.equal(torch.isnan(a), torch.isnan(b)), "NaN patterns differ"
        return float(difference.nan_to_num(0.0).max())

    return {
        "vm_pu": worst(model_result.vm_pu, reference.vm_pu),
        "va_degree": worst(model_result.va_degree, reference.va_degree),
        "line_loading_percent": worst(
            model_result.line_loading_percent, reference.line_loading_percent),
        "trafo_loading_percent": worst(
            model_result.trafo_loading_percent, reference.trafo_loading_percent),
        "losses_relative": float(
            ((model_result.losses_kw.double() - reference.losses_kw) / reference.losses_kw)
            .abs().max()),
    }


# --------------------------------------------------------------------------------------------
# Accuracy against pandapower
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("feeder", FEEDERS)
def test_matches_runpp_on_random_scenarios(feeder, dtype, nets, references):
    p_kw, q_kvar, reference = references(feeder)
    assert bool(reference.converged.all()), "pandapower must converge on every test scenario"
    model = BatchedPowerFlow.from_pandapower(nets(feeder), dtype=dtype)
    result = model.solve(torch.as_tensor(p_kw, dtype=dtype), torch.as_tensor(q_kvar, dtype=dtype))
    assert result.vm_pu.dtype == dtype and result.losses_kw.dtype == dtype
    assert bool(result.converged.all())
    errors = max_errors(result, reference)
    print(f"{feeder} {dtype}: {errors}, iterations {result.iterations}")
    assert errors["vm_pu"] <= VM_TOLERANCE_PU
    assert errors["line_loading_percent"] <= LOADING_TOLERANCE_PERCENT
    assert errors["trafo_loading_percent"] <= LOADING_TOLERANCE_PERCENT
    assert errors["losses_relative"] <= LOSSES_RELATIVE_TOLERANCE
    assert errors["va_degree"] <= 0.05
    # the scenarios really span the feeder's range (undervoltage or overload, and overvoltage)
    assert float(reference.vm_pu.nan_to_num(0).max()) > 1.05


def test_case33bw_base_load_matches_published_values(nets):
    net = nets("case33bw")
    model = BatchedPowerFlow.from_pandapower(net, dtype=torch.float32)
    p_kw = torch.as_tensor(net.load["p_mw"].to_numpy() * 1000.0, dtype=torch.float32)
    q_kvar = torch.as_tensor(net.load["q_mvar"].to_numpy() * 1000.0, dtype=torch.float32)
    result = model.solve(p_kw, q_kvar)
    assert abs(float(result.vm_pu.min()) - 0.9131) <= VM_TOLERANCE_PU
    assert int(result.vm_pu[0].argmin()) == 17  # bus 18 in the paper's 1-based numbering
    assert abs(float(result.losses_kw[0]) - 202.7) <= LOSSES_RELATIVE_TOLERANCE * 202.7
    assert abs(float(result.losses_kw[0]) - 202.7) <= 0.1  # in fact much closer


def test_agent_bus_and_bus_names(nets):
    net = nets("1-LV-urban6--0-sw")
    model = BatchedPowerFlow.from_pandapower(net)
    assert model.n_agent == len(net.load) == 111
    assert model.n_bus == len(net.bus)
    expected = [list(net.bus.index).index(bus) for bus in net.load["bus"]]
    assert model.agent_bus.tolist() == expected
    assert model.bus_names == [str(name) for name in net.bus["name"]]
    assert model.n_load_bus == net.load["bus"].nunique()


# --------------------------------------------------------------------------------------------
# Batching, dtypes, convergence
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_batched_equals_single_row(dtype, nets):
    net = nets("1-LV-semiurb4--0-sw")
    model = BatchedPowerFlow.from_pandapower(net, dtype=dtype)
    p_kw, q_kvar = random_scenarios(net, 16, seed=3)
    batched = model.solve(torch.as_tensor(p_kw, dtype=dtype), torch.as_tensor(q_kvar, dtype=dtype))
    tolerance = 1e-5 if dtype == torch.float32 else 1e-9
    for row in (0, 1, 7, 15):
        single = model.solve(torch.as_tensor(p_kw[row], dtype=dtype),
                             torch.as_tensor(q_kvar[row], dtype=dtype))
        assert single.vm_pu.shape == (1, model.n_bus)
        torch.testing.assert_close(single.vm_pu[0], batched.vm_pu[row], atol=tolerance, rtol=0)
        torch.testing.assert_close(single.line_loading_percent[0],
                                   batched.line_loading_percent[row], atol=100 * tolerance, rtol=0)
        torch.testing.assert_close(single.losses_kw[0], batched.losses_kw[row],
                                   atol=0, rtol=100 * tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_a_rows_result_does_not_depend_on_its_batch(dtype, nets):
    """An environment that has converged keeps its voltages while the rest of its batch
    iterates on: light rows solved alone (3-4 iterations) and beside a heavy one (7-11) give
    the same bits (so the core's year-long table of the no-P2P penalties equals what the
    environments are charged)."""
    net = nets("1-LV-semiurb4--0-sw")
    model = BatchedPowerFlow.from_pandapower(net, dtype=dtype)
    p_kw, _ = random_scenarios(net, 16, seed=5)
    light = 0.1 * torch.as_tensor(p_kw, dtype=dtype)
    heavy = 3.0 * light.abs().amax(dim=0, keepdim=True) * -10.0  # every home exporting
    alone = model.solve(light, 0.1 * light, angles=False)
    mixed = model.solve(torch.cat([light, heavy]), 0.1 * torch.cat([light, heavy]),
                        angles=False)
    assert mixed.iterations > alone.iterations
    assert torch.equal(alone.vm_pu, mixed.vm_pu[:16])
    assert torch.equal(alone.line_loading_percent, mixed.line_loading_percent[:16])


def test_float32_and_float64_agree(nets):
    net = nets("1-LV-rural1--0-sw")
    p_kw, q_kvar = random_scenarios(net, 32, seed=5)
    single = BatchedPowerFlow.from_pandapower(net, dtype=torch.float32).solve(
        torch.as_tensor(p_kw, dtype=torch.float32), torch.as_tensor(q_kvar, dtype=torch.float32))
    double = BatchedPowerFlow.from_pandapower(net, dtype=torch.float64).solve(
        torch.as_tensor(p_kw), torch.as_tensor(q_kvar))
    assert single.vm_pu.dtype == torch.float32 and double.vm_pu.dtype == torch.float64
    torch.testing.assert_close(single.vm_pu.double(), double.vm_pu, atol=1e-5, rtol=0)


def test_rejects_bad_shapes_and_dtypes(nets):
    model = BatchedPowerFlow.from_pandapower(nets("1-LV-rural1--0-sw"))
    with pytest.raises(ValueError, match="must both be"):
        model.solve(torch.zeros(4, model.n_agent + 1), torch.zeros(4, model.n_agent + 1))
    with pytest.raises(ValueError, match="dtype"):
        BatchedPowerFlow.from_pandapower(nets("1-LV-rural1--0-sw"), dtype=torch.float16)


def test_nonconvergence_is_reported_not_raised(nets):
    net = nets("1-LV-rural1--0-sw")
    peak_kw, tan_phi = peak_and_tan_phi(net)
    p_kw = np.stack([peak_kw, 1000.0 * peak_kw])  # a normal row and an absurd load
    q_kvar = p_kw * tan_phi
    reference = run_ac(net, p_kw, q_kvar)
    assert reference.converged.tolist() == [True, False]
    assert bool(torch.isnan(reference.vm_pu[1]).all()) and bool(reference.losses_kw[1].isnan())
    assert not bool(torch.isnan(reference.vm_pu[0]).any())
    model = BatchedPowerFlow.from_pandapower(net)
    result = model.solve(torch.as_tensor(p_kw, dtype=torch.float32),
                         torch.as_tensor(q_kvar, dtype=torch.float32))
    assert result.converged.tolist() == [True, False]
    assert bool(torch.isnan(result.vm_pu[1]).all())
    assert not bool(torch.isnan(result.vm_pu[0]).any())


def test_run_ac_leaves_the_net_untouched(nets):
    net = nets("1-LV-rural1--0-sw")
    before = net.load["p_mw"].copy(), net.sgen["in_service"].copy()
    run_ac(net, np.zeros((1, len(net.load))), np.zeros((1, len(net.load))))
    BatchedPowerFlow.from_pandapower(net)
    assert net.load["p_mw"].equals(before[0]) and net.sgen["in_service"].equals(before[1])


# --------------------------------------------------------------------------------------------
# Custom nets: unsupported elements, isolated buses, hand-checkable impedances
# --------------------------------------------------------------------------------------------


def three_bus_line_net() -> pp.pandapowerNet:
    """ext_grid - bus0 -(line0, 1 km)- bus1 -(line1, 0.5 km)- bus2 at 0.4 kV, loads at 1, 2."""
    net = pp.create_empty_network(sn_mva=1.0)
    buses = [pp.create_bus(net, vn_kv=0.4, name=f"b{k}") for k in range(3)]
    pp.create_ext_grid(net, buses[0], vm_pu=1.0)
    for (start, end), length in zip([(0, 1), (1, 2)], [1.0, 0.5], strict=True):
        pp.create_line_from_parameters(
            net, buses[start], buses[end], length_km=length, r_ohm_per_km=0.1,
            x_ohm_per_km=0.05, c_nf_per_km=0.0, max_i_ka=0.2)
    pp.create_load(net, buses[1], p_mw=0.01)
    pp.create_load(net, buses[2], p_mw=0.01)
    return net


def test_unsupported_elements_raise_clear_errors():
    net = three_bus_line_net()
    pp.create_gen(net, 2, p_mw=0.01, vm_pu=1.0)
    with pytest.raises(ValueError, match="'gen'"):
        BatchedPowerFlow.from_pandapower(net)
    net.gen["in_service"] = False  # out-of-service elements are fine
    BatchedPowerFlow.from_pandapower(net)
    pp.create_ext_grid(net, 1, vm_pu=1.0)
    with pytest.raises(ValueError, match="ext_grid"):
        BatchedPowerFlow.from_pandapower(net)


def test_isolated_bus_gives_nan_and_stranded_agent_raises():
    net = three_bus_line_net()
    isolated = pp.create_bus(net, vn_kv=0.4)
    model = BatchedPowerFlow.from_pandapower(net, dtype=torch.float64)
    p_kw = torch.tensor([[5.0, -8.0]], dtype=torch.float64)
    result = model.solve(p_kw, 0.3 * p_kw)
    reference = run_ac(net, p_kw, 0.3 * p_kw)
    assert bool(torch.isnan(result.vm_pu[0, isolated])) and bool(
        torch.isnan(reference.vm_pu[0, isolated]))
    torch.testing.assert_close(result.vm_pu, reference.vm_pu, atol=1e-8, rtol=0, equal_nan=True)
    pp.create_load(net, isolated, p_mw=0.01)
    with pytest.raises(ValueError, match="isolated"):
        BatchedPowerFlow.from_pandapower(net)


def test_electrical_distance_hand_check():
    net = three_bus_line_net()
    model = BatchedPowerFlow.from_pandapower(net, dtype=torch.float64)
    line1_ohm = 0.5 * abs(complex(0.1, 0.05))
    line0_ohm = 1.0 * abs(complex(0.1, 0.05))
    distance_ohm = electrical_distance(model, in_ohm=True)
    torch.testing.assert_close(distance_ohm, torch.tensor(
        [[0.0, line1_ohm], [line1_ohm, 0.0]], dtype=torch.float64), atol=1e-12, rtol=1e-9)
    base_ohm = 0.4**2 / 1.0
    torch.testing.assert_close(electrical_distance(model), distance_ohm / base_ohm)
    # an agent at the slack bus is one line0 away from bus 1
    pp.create_load(net, 0, p_mw=0.01)
    distance = electrical_distance(BatchedPowerFlow.from_pandapower(net, dtype=torch.float64),
                                   in_ohm=True)
    assert abs(float(distance[2, 0]) - line0_ohm) < 1e-9


def test_electrical_distance_properties(nets):
    net = nets("1-LV-urban6--0-sw")
    model = BatchedPowerFlow.from_pandapower(net)
    distance = electrical_distance(model)
    assert distance.shape == (model.n_agent, model.n_agent) and distance.dtype == torch.float32
    torch.testing.assert_close(distance, distance.T, atol=1e-6, rtol=1e-4)
    same_bus = model.agent_bus[:, None] == model.agent_bus[None, :]
    assert bool((distance[same_bus] < 1e-6).all())
    assert bool((distance[~same_bus] > 0).all())


# --------------------------------------------------------------------------------------------
# Sensitivities
# --------------------------------------------------------------------------------------------


def test_no_load_sensitivity_matches_finite_differences(nets):
    net = nets("1-LV-rural1--0-sw")
    model = BatchedPowerFlow.from_pandapower(net, dtype=torch.float64)
    sensitivity = model.sensitivity()
    assert sensitivity.voltage_pu_per_kw.shape == (model.n_bus, model.n_agent)
    assert sensitivity.branch_ptdf.shape == (model.n_line + model.n_trafo, model.n_agent)
    step_kw = 1e-3
    injections = -step_kw * torch.eye(model.n_agent, dtype=torch.float64)  # agent j exports
    zero = torch.zeros(1, model.n_agent, dtype=torch.float64)
    base = model.solve(zero, zero)
    stepped = model.solve(injections, torch.zeros_like(injections))
    finite_voltage = ((stepped.vm_pu - base.vm_pu) / step_kw).T  # [n_bus, N]
    torch.testing.assert_close(sensitivity.voltage_pu_per_kw, finite_voltage,
                               atol=1e-8, rtol=1e-3)
    finite_ptdf = ((stepped.branch_p_from_kw - base.branch_p_from_kw) / step_kw).T
    torch.testing.assert_close(sensitivity.branch_ptdf, finite_ptdf, atol=1e-5, rtol=1e-3)
    # exporting raises every agent's voltage; the transformer carries (almost) all of it back
    assert bool((model.dv_dp > 0).all())
    assert model.dv_dp.shape == (model.n_agent, model.n_agent)
    assert bool((sensitivity.branch_ptdf[-1] < -0.95).all())


def test_operating_point_sensitivity_matches_finite_differences(nets):
    net = nets("1-LV-semiurb4--0-sw")
    model = BatchedPowerFlow.from_pandapower(net, dtype=torch.float64)
    p_kw, q_kvar = (torch.as_tensor(a) for a in random_scenarios(net, 2, seed=11))
    sensitivity = model.sensitivity(p_kw, q_kvar)
    assert sensitivity.voltage_pu_per_kw.shape == (2, model.n_bus, model.n_agent)
    step = 1e-2
    for agent in (0, 17, 40):
        plus, minus = p_kw.clone(), p_kw.clone()
        plus[:, agent] -= step  # more injection
        minus[:, agent] += step
        up, down = model.solve(plus, q_kvar), model.solve(minus, q_kvar)
        finite = (up.vm_pu - down.vm_pu) / (2 * step)
        torch.testing.assert_close(sensitivity.voltage_pu_per_kw[:, :, agent], finite,
                                   atol=1e-8, rtol=1e-3)
        q_plus, q_minus = q_kvar.clone(), q_kvar.clone()
        q_plus[:, agent] -= step
        q_minus[:, agent] += step
        finite_q = (model.solve(p_kw, q_plus).vm_pu - model.solve(p_kw, q_minus).vm_pu) / (
            2 * step)
        torch.testing.assert_close(sensitivity.voltage_pu_per_kvar[:, :, agent], finite_q,
                                   atol=1e-8, rtol=1e-3)
        finite_flow = (up.branch_p_from_kw - down.branch_p_from_kw) / (2 * step)
        torch.testing.assert_close(sensitivity.branch_ptdf[:, :, agent], finite_flow,
                                   atol=1e-5, rtol=1e-3)


# --------------------------------------------------------------------------------------------
# Penalties and summaries
# --------------------------------------------------------------------------------------------


def synthetic_result(vm: list[float], loading: list[float], p_from: list[float]) -> PowerFlowResult:
    vm_t = torch.tensor([vm], dtype=torch.float64)
    line = torch.tensor([loading], dtype=torch.float64)
    empty = torch.zeros((1, 0), dtype=torch.float64)
    return PowerFlowResult(
        vm_pu=vm_t, va_degree=torch.zeros_like(vm_t), line_loading_percent=line,
        trafo_loading_percent=empty, losses_kw=torch.zeros(1, dtype=torch.float64),
        converged=torch.tensor([True]), line_p_from_kw=torch.tensor([p_from], dtype=torch.float64),
        trafo_p_hv_kw=empty)


def test_penalty_hand_checkable_overvoltage():
    # three buses, two agents; buses 1 and 2 above v_max = 1.05 by 0.01 and 0.03 p.u.
    result = synthetic_result([1.0, 1.06, 1.08], [50.0], [0.0])
    sensitivity = GridSensitivity(
        voltage_pu_per_kw=torch.tensor([[0.0, 0.0], [1e-4, 1e-4], [1e-4, 2e-4]],
                                       dtype=torch.float64),
        voltage_pu_per_kvar=torch.zeros(3, 2, dtype=torch.float64),
        branch_ptdf=torch.tensor([[-1.0, -1.0]], dtype=torch.float64))
    p_kw = torch.tensor([[-2.0, -1.0]], dtype=torch.float64)  # both export
    penalty, info = network_penalty(result, p_kw, sensitivity, voltage_penalty=10.0)
    # total = 10 * (0.01 + 0.03) = 0.4; weights: agent 0: 2 * (0.01e-4 + 0.03e-4) = 8e-6,
    # agent 1: 1 * (0.01e-4 + 0.03 * 2e-4) = 7e-6
    expected = torch.tensor([[0.4 * 8 / 15, 0.4 * 7 / 15]], dtype=torch.float64)
    torch.testing.assert_close(penalty, expected)
    torch.testing.assert_close(info["total_penalty"], torch.tensor([0.4], dtype=torch.float64))
    torch.testing.assert_close(info["voltage_violation_pu"],
                               torch.tensor([0.04], dtype=torch.float64))
    # an importer does not pay for overvoltage
    penalty, _ = network_penalty(result, torch.tensor([[-2.0, 3.0]], dtype=torch.float64),
                                 sensitivity, voltage_penalty=10.0)
    torch.testing.assert_close(penalty, torch.tensor([[0.4, 0.0]], dtype=torch.float64))


def test_penalty_hand_checkable_overload_direction():
    # one line at 150 % with reverse flow (export): only injections pushing that way pay
    result = synthetic_result([1.0, 1.0, 1.0, 1.0], [150.0], [-100.0])
    sensitivity = GridSensitivity(
        voltage_pu_per_kw=torch.zeros(4, 3, dtype=torch.float64),
        voltage_pu_per_kvar=torch.zeros(4, 3, dtype=torch.float64),
        branch_ptdf=torch.tensor([[-1.0, -1.0, 0.0]], dtype=torch.float64))
    p_kw = torch.tensor([[-10.0, 5.0, -20.0]], dtype=torch.float64)
    penalty, info = network_penalty(result, p_kw, sensitivity, line_penalty=2.0)
    torch.testing.assert_close(penalty, torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(info["line_penalty"], torch.tensor([1.0], dtype=torch.float64))


def test_no_violation_means_no_penalty(nets):
    net = nets("1-LV-rural1--0-sw")
    model = BatchedPowerFlow.from_pandapower(net)
    peak_kw, tan_phi = peak_and_tan_phi(net)
    p_kw = torch.as_tensor(np.stack([0.5 * peak_kw, -0.3 * peak_kw]), dtype=torch.float32)
    result = model.solve(p_kw, p_kw * torch.as_tensor(tan_phi, dtype=torch.float32))
    summary = network_summary(result)
    assert bool((summary["n_voltage_violations"] == 0).all())
    assert bool((summary["n_line_violations"] == 0).all())
    penalty, info = network_penalty(result, p_kw, model)  # the model: its no-load sensitivity
    assert bool((penalty == 0).all()) and bool((info["total_penalty"] == 0).all())
    with pytest.raises(TypeError, match="GridSensitivity"):
        network_penalty(result, p_kw, model.dv_dp)


@pytest.mark.parametrize("feeder", ["1-LV-rural1--0-sw", "1-LV-urban6--0-sw"])
def test_penalty_shares_sum_to_total_and_idle_agents_pay_nothing(feeder, nets):
    net = nets(feeder)
    model = BatchedPowerFlow.from_pandapower(net, dtype=torch.float64)
    peak_kw, tan_phi = peak_and_tan_phi(net)
    p_np, _ = random_scenarios(net, 64, seed=21)
    p_np[:, 0] = 0.0  # agent 0 idle in every scenario
    p_np[2] = -PV_MULTIPLE * peak_kw  # heavy export: overvoltage
    p_np[3] = PV_MULTIPLE * peak_kw  # heavy import: undervoltage, overloads
    p_np[2:4, 0] = 0.0
    p_kw = torch.as_tensor(p_np)
    result = model.solve(p_kw, p_kw * torch.as_tensor(tan_phi))
    assert bool(result.converged.all())
    # a tight lower band so that the (stiff) rural feeder sees undervoltage too
    band = {"v_min": 1.0, "v_max": 1.05}
    for sensitivity in (model.sensitivity(), model.sensitivity(p_kw, p_kw * 0.3)):
        penalty, info = network_penalty(result, p_kw, sensitivity, **band)
        assert bool((penalty >= 0).all())
        torch.testing.assert_close(penalty.sum(dim=1), info["total_penalty"])
        assert bool((penalty[:, 0] == 0).all())
        assert float(info["overvoltage_penalty"][2]) > 0
        assert float(info["undervoltage_penalty"][3]) > 0
        if feeder == "1-LV-urban6--0-sw":
            assert float(info["line_penalty"][3]) > 0
        # overvoltage from heavy export is paid by exporters only
        assert float(penalty[2].sum()) > 0 and bool((penalty[2][p_kw[2] >= 0] == 0).all())
        # undervoltage and import-driven overloads are paid by importers only
        assert bool((penalty[3][p_kw[3] <= 0] == 0).all())


def test_penalty_when_not_converged():
    result = synthetic_result([float("nan")] * 3, [float("nan")], [float("nan")])
    result = dataclasses.replace(result, converged=torch.tensor([False]))
    sensitivity = GridSensitivity(torch.ones(3, 2, dtype=torch.float64),
                                  torch.ones(3, 2, dtype=torch.float64),
                                  torch.ones(1, 2, dtype=torch.float64))
    p_kw = torch.tensor([[300.0, -100.0]], dtype=torch.float64)
    penalty, info = network_penalty(result, p_kw, sensitivity, voltage_penalty=10.0)
    torch.testing.assert_close(info["total_penalty"], torch.tensor([3.0], dtype=torch.float64))
    torch.testing.assert_close(penalty, torch.tensor([[2.25, 0.75]], dtype=torch.float64))
    assert not bool(torch.isnan(penalty).any())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    factors=st.lists(st.floats(-3.0, 3.0), min_size=13, max_size=13),
    idle=st.sets(st.integers(0, 12), max_size=12),
)
def test_penalty_invariants_property(factors, idle, nets, rural_model):
    net = nets("1-LV-rural1--0-sw")
    model = rural_model
    peak_kw, tan_phi = peak_and_tan_phi(net)
    p_np = np.asarray(factors) * peak_kw
    p_np[list(idle)] = 0.0
    p_kw = torch.as_tensor(p_np[None])
    result = model.solve(p_kw, p_kw * torch.as_tensor(tan_phi))
    penalty, info = network_penalty(result, p_kw, model.sensitivity(), v_min=0.98, v_max=1.03,
                                    max_loading_percent=30.0)
    torch.testing.assert_close(penalty.sum(dim=1), info["total_penalty"])
    assert bool((penalty >= 0).all())
    assert bool((penalty[0, list(idle)] == 0).all())


def test_network_summary(nets):
    net = nets("1-LV-urban6--0-sw")
    model = BatchedPowerFlow.from_pandapower(net)
    peak_kw, tan_phi = peak_and_tan_phi(net)
    p_kw = torch.as_tensor(np.stack([peak_kw, -PV_MULTIPLE * peak_kw, 1000 * peak_kw]),
                           dtype=torch.float32)
    result = model.solve(p_kw, p_kw * torch.as_tensor(tan_phi, dtype=torch.float32))
    summary = network_summary(result, v_min=0.95, v_max=1.05)
    assert set(summary) >= {"v_min_pu", "v_max_pu", "max_line_loading_percent",
                            "n_voltage_violations", "n_line_violations", "losses_kw"}
    assert all(value.shape == (3,) for value in summary.values())
    torch.testing.assert_close(summary["v_min_pu"][:2], result.vm_pu[:2].amin(dim=1))
    torch.testing.assert_close(summary["v_max_pu"][:2], result.vm_pu[:2].amax(dim=1))
    torch.testing.assert_close(summary["max_line_loading_percent"][:2],
                               result.line_loading_percent[:2].amax(dim=1))
    expected_violations = ((result.vm_pu > 1.05) | (result.vm_pu < 0.95)).sum(dim=1)
    assert summary["n_voltage_violations"][:2].tolist() == expected_violations[:2].tolist()
    assert float(summary["n_voltage_violations"][1]) > 0  # heavy export: overvoltage
    assert summary["converged"].tolist() == [1.0, 1.0, 0.0]
    assert bool(summary["v_min_pu"][2].isnan())


# --------------------------------------------------------------------------------------------
# The network inside the core (envs/grid.py)
# --------------------------------------------------------------------------------------------


def test_core_zbus_matches_core_ac_mode():
    """The same day stepped with network.model zbus and ac reports the same voltages."""
    import envs

    config = {"community": {"feeder": "synthetic", "n_agents": 6, "pv_share": 1.0,
                            "pv_kwp_per_mwh": 3.0}}
    results = {}
    for model in ("zbus", "ac"):
        env = envs.make_batched_env({**config, "network": {"model": model}}, n_envs=2,
                                    dtype="float64")
        env.reset(seed=0, days=[172, 173])
        env.step_of_day[:] = 44  # late morning: PV export
        actions = torch.zeros(2, env.n_agents, 2, dtype=torch.float64)
        infos = [env.step(actions)[4] for _ in range(4)]
        results[model] = {key: torch.stack([info[key] for info in infos])
                          for key in ("v_min_pu", "v_max_pu", "losses_kw", "network_penalty")}
    for key in ("v_min_pu", "v_max_pu"):
        torch.testing.assert_close(results["zbus"][key], results["ac"][key], atol=1e-6, rtol=0)
    torch.testing.assert_close(results["zbus"]["losses_kw"], results["ac"]["losses_kw"],
                               rtol=1e-3, atol=1e-6)
    assert float(results["zbus"]["v_max_pu"].max()) > float(results["zbus"]["v_min_pu"].min())


def test_core_reports_and_penalises_overvoltage():
    import envs

    config = {"community": {"feeder": "synthetic", "n_agents": 6, "pv_share": 0.5,
                            "pv_kwp_per_mwh": 40.0},
              "network": {"v_max": 1.03, "voltage_penalty": 100.0},
              "observation": {"include_voltage": True}}
    env = envs.make_batched_env(config, n_envs=1, dtype="float64")
    env.reset(seed=0, days=[172])
    env.step_of_day[:] = 48  # noon in June
    obs, _, _, _, info = env.step(torch.zeros(1, env.n_agents, 2, dtype=torch.float64))
    assert float(info["v_max_pu"][0]) > 1.03 and float(info["voltage_violations"][0]) > 0
    penalty = info["network_penalty"][0]
    exporting = info["net_energy_kwh"][0] < 0
    assert float(penalty.sum()) > 0
    assert bool((penalty[~exporting] == 0).all()) and bool((penalty[exporting] > 0).all())
    # The own-voltage feature is (V - 1) * 10 of the step just taken.
    voltage = obs[0, :, env.feature_names.index("voltage")] / 10 + 1
    assert bool((voltage > 1.0).all())


def test_voltage_profile_plot_script(tmp_path):
    from envs import network_plots

    out = tmp_path / "profile.png"
    network_plots.main(["--day", "172", "--out", str(out), "community.feeder=synthetic",
                        "community.n_agents=4", "community.pv_kwp_per_mwh=5"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    voltages, distance, _ = network_plots.voltage_day(
        {"community": {"feeder": "synthetic", "n_agents": 4}}, 172)
    assert voltages.shape == (96, 4 + 2) and distance.shape == (6,)
    assert distance.max() == pytest.approx(0.06)  # two cables of 2 x 30 m
