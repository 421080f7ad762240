"""Batched AC power flow on a low-voltage feeder, network penalties and electrical distances.

Each agent is one row of ``net.load`` (agent ``i`` is row ``i``, in order); its PV and battery
are folded into its net consumption. The feeder's own ``sgen`` and ``storage`` elements are taken
out of service: agents' injections are the only injections. Per step the environment hands over,
for ``B`` environments at once,

* ``p_kw [B, N]``: each agent's net active consumption, kW (negative = net export);
* ``q_kvar [B, N]``: its reactive consumption, kvar.

Formulation: implicit Z-bus fixed point
----------------------------------------
The bus admittance matrix is pandapower's own (``net._ppc["internal"]["Ybus"]`` after one
``runpp``), so branch models (lines as pi sections, transformers as pandapower's T model with
iron losses, tap position and the 150 degree vector-group phase shift), bus shunts and fused
switch buses are exactly pandapower's. With the single slack bus ``s`` (the ``ext_grid``, fixed
``V_s = vm_pu * exp(j va)``) and the non-slack buses ``n``, the bus equations with constant-power
injections ``S_n`` (p.u., generator convention) read ``conj(S_n / V_n) = Y_nn V_n + Y_ns V_s``.
The implicit Z-bus (Gauss) method iterates

    V_n^(k+1) = w + Z conj(S_n / V_n^(k)),   Z = inv(Y_nn),   w = -Z Y_ns V_s,

from ``V_n^(0) = w`` (the no-load voltages, which already carry the slack set-point and the
transformer shift); Chen et al., "Distribution system power flow analysis - a rigid approach",
IEEE Trans. Power Delivery 6(3), 1991. The map is a contraction, so the iteration converges
to the unique high-voltage solution, whenever the loading is small against the feeder's
short-circuit strength (Wang, Bernstein, Le Boudec and Paolone, "Explicit conditions on
existence and uniqueness of load-flow solutions in distribution networks", IEEE Trans. Smart Grid
9(2), 2018; Bazrafshan and Gatsis, "Convergence of the Z-bus method for three-phase distribution
load-flow with ZIP loads", IEEE Trans. Power Systems 33(1), 2018). On LV feeders the contraction
factor is of the order of the voltage drop (a few percent), so a handful of iterations reach
1e-6 p.u.; every environment is checked for its own convergence (``converged [B]``) and keeps
its voltages from the iteration it converged in while the others iterate on (so its result does
not depend on the rest of its batch, up to the round-off of the batched matrix product: the
core's table of the no-P2P penalties, solved a year at a time, is what a batch of environments
is charged, ``envs.core``); the loop stops once all have converged or after
``max_iterations``. No per-environment Python loop.

Two reductions keep it cheap and accurate. (1) Only buses with at least one agent carry an
injection, so the iteration runs on those ``L`` buses alone (``V_L = w_L + Z_LL I_L``); every
other output is affine in the converged injection currents ``I_L = conj(S_L / V_L)``. (2) All
outputs come from one GEMM ``[B, L] @ [L, n + 2m]``: bus voltages ``w + Z[:, L] I_L`` and
branch currents ``I_f = Yf V_0 + (Yf Z[:, L]) I_L`` (same for ``I_t``). Forming ``Yf V`` from
voltages would subtract nearly equal voltages (short LV cables have |y| ~ 1e4 p.u.) and lose up
to 0.2 loading points in float32; the current-distribution factors ``Yf Z`` are O(1) and lose
nothing. Each iteration is one batched complex GEMM ``[B, L] @ [L, L]``.

Why this and not Newton-Raphson: on radial LV feeders Z-bus needs no Jacobian factorisation per
environment (``Z`` is factorised once, at construction), and its cost per iteration is one dense
GEMM, which batches perfectly on CPU and GPU. Why dense ``Z``: feeders have at most a few hundred
buses, and a dense GEMM beats sparse triangular solves at these sizes.

Precision. ``Z``, ``w`` and the output maps are formed in complex128. The iteration runs in
complex64 for ``dtype=torch.float32`` (tolerance 1e-6 p.u., 5-8 iterations) and complex128 for
``torch.float64`` (1e-10 p.u., 8-13 iterations). Measured against pandapower ``runpp`` on 200
scenarios per feeder, from all loads at peak to 3x peak PV export (``tests/test_network.py``),
float32 is within 2e-7 p.u. in voltage, 1e-4 loading points and 3e-5 (relative) in losses on
all four test feeders; float64 within 1e-8 p.u. (pandapower's own tolerance). float32 is 2-3x
faster on CPU, so it is the default.

Output definitions follow pandapower exactly: ``vm_pu``/``va_degree`` for every row of
``net.bus`` (NaN for out-of-service or isolated buses), ``line_loading_percent`` =
``max(i_from_ka, i_to_ka) / (max_i_ka * df * parallel) * 100`` (0 for out-of-service lines),
``trafo_loading_percent`` = ``max(i_hv_ka * vn_hv_kv, i_lv_ka * vn_lv_kv) * sqrt(3) / sn_mva /
(parallel * df) * 100`` (pandapower's ``trafo_loading="current"``), ``losses_kw`` = the sum of
``pl_mw`` over lines and transformers (iron losses included), in kW.

Other contents
--------------
* :func:`run_ac`: ground truth, one pandapower ``runpp`` per environment (slow; tests, audits).
* :meth:`BatchedPowerFlow.sensitivity`: linear voltage and branch-flow sensitivities to each
  agent's injection, exact derivatives of the fixed point at no load or at given operating points.
* :func:`network_penalty`: a step's voltage and loading penalty and each agent's share of it.
* :func:`electrical_distance`: Thevenin-impedance distance between agents' buses.
* :func:`network_summary`: per-environment statistics for ``infos``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandapower as pp
import torch
from pandapower.pypower.idx_brch import F_BUS, T_BUS
from pandapower.pypower.idx_bus import BASE_KV
from torch import Tensor

RUNPP_OPTIONS: dict[str, Any] = {
    "algorithm": "nr",
    "calculate_voltage_angles": True,
    "trafo_model": "t",
    "trafo_loading": "current",
    "check_connectivity": True,
    "numba": False,
}
"""Options of every pandapower ``runpp`` call in this module (model building and ground truth)."""

UNSUPPORTED_ELEMENTS: tuple[str, ...] = (
    "gen",
    "trafo3w",
    "impedance",
    "ward",
    "xward",
    "dcline",
    "motor",
    "asymmetric_load",
    "asymmetric_sgen",
    "svc",
    "ssc",
    "tcsc",
    "vsc",
    "line_dc",
    "source_dc",
    "load_dc",
)
"""pandapower element tables that must have no in-service rows (sgen and storage are switched
off by this module, shunts are part of the admittance matrix)."""

_KW_PER_MW = 1000.0


# --------------------------------------------------------------------------------------------
# Results and sensitivities
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PowerFlowResult:
    """Power-flow results for ``B`` environments, all tensors batch-first.

    ``vm_pu [B, n_bus]``, ``va_degree [B, n_bus]``: bus voltage magnitude (p.u.) and angle
        (degrees), in the order of ``net.bus.index``; NaN for out-of-service or isolated buses and
        for non-converged environments. ``va_degree`` is None from ``solve(angles=False)``.
    ``line_loading_percent [B, n_line]``: pandapower's ``res_line.loading_percent``, %.
    ``trafo_loading_percent [B, n_trafo]``: pandapower's ``res_trafo.loading_percent``, %.
    ``losses_kw [B]``: active losses of all lines and transformers (iron losses included), kW.
    ``converged [B]``: bool, whether the environment's power flow converged.
    ``line_p_from_kw [B, n_line]``: active power entering each line at its from bus, kW.
    ``trafo_p_hv_kw [B, n_trafo]``: active power entering each transformer at its HV side, kW.
    ``iterations``: fixed-point iterations run (batched model), or the most Newton iterations
        of any environment (:func:`run_ac`).
    """

    vm_pu: Tensor
    va_degree: Tensor | None
    line_loading_percent: Tensor
    trafo_loading_percent: Tensor
    losses_kw: Tensor
    converged: Tensor
    line_p_from_kw: Tensor
    trafo_p_hv_kw: Tensor
    iterations: int = 0

    @property
    def branch_loading_percent(self) -> Tensor:
        """Lines then transformers, ``[B, n_line + n_trafo]``, %."""
        return torch.cat([self.line_loading_percent, self.trafo_loading_percent], dim=1)

    @property
    def branch_p_from_kw(self) -> Tensor:
        """Lines (from bus) then transformers (HV side), ``[B, n_line + n_trafo]``, kW."""
        return torch.cat([self.line_p_from_kw, self.trafo_p_hv_kw], dim=1)


@dataclass(frozen=True)
class GridSensitivity:
    """Linear sensitivities of the grid state to each agent's injection.

    Shapes are ``[n_bus, N]`` / ``[n_line + n_trafo, N]`` around one operating point (e.g. no
    load), or with a leading batch dimension ``[B, ...]`` around ``B`` operating points.

    ``voltage_pu_per_kw``: d|V_bus| / d(active injection of agent j), p.u. per kW injected
        (injection = -p_kw, so exporting raises voltage: entries are >= 0 on radial feeders).
    ``voltage_pu_per_kvar``: d|V_bus| / d(reactive injection of agent j), p.u. per kvar.
    ``branch_ptdf``: d(active power entering each line at its from bus, then each transformer at
        its HV side) / d(active injection of agent j), kW per kW (a power transfer distribution
        factor with the slack bus as sink).
    """

    voltage_pu_per_kw: Tensor
    voltage_pu_per_kvar: Tensor
    branch_ptdf: Tensor


# --------------------------------------------------------------------------------------------
# Preparing a pandapower net
# --------------------------------------------------------------------------------------------


def _in_service_count(net: pp.pandapowerNet, element: str) -> int:
    table = getattr(net, element, None) if element in net else None
    if table is None or len(table) == 0:
        return 0
    if "in_service" not in table:
        return len(table)
    return int(table["in_service"].astype(bool).sum())


def check_supported(net: pp.pandapowerNet) -> None:
    """Raise ``ValueError`` if ``net`` has elements the batched model cannot represent.

    Supported: one in-service ``ext_grid`` (the slack), buses, lines, 2-winding transformers,
    bus-bus and line switches, shunts, and at least one load (the agents). ``sgen`` and
    ``storage`` are allowed but ignored (switched off). Anything in
    :data:`UNSUPPORTED_ELEMENTS` that is in service (e.g. a ``gen``, i.e. a PV bus) is an error.
    """
    problems = []
    n_ext_grid = _in_service_count(net, "ext_grid")
    if n_ext_grid != 1:
        problems.append(f"exactly one in-service ext_grid is needed as slack, found {n_ext_grid}")
    for element in UNSUPPORTED_ELEMENTS:
        count = _in_service_count(net, element)
        if count:
            problems.append(f"{count} in-service '{element}' element(s)")
    if len(net.load) == 0:
        problems.append("no loads (each load is an agent)")
    if problems:
        raise ValueError(
            "pandapower net not supported by envs.network: "
            + "; ".join(problems)
            + ". Supported: a single ext_grid slack, lines, 2-winding trafos, switches, shunts,"
            " loads (agents); sgen/storage are switched off."
        )


def agent_net(net: pp.pandapowerNet) -> pp.pandapowerNet:
    """Deep copy of ``net`` as the environment sees it.

    ``sgen`` and ``storage`` out of service; every load in service, constant power (ZIP shares
    zero), ``scaling`` 1, ``p_mw = q_mvar = 0`` (agents write their own values).
    """
    check_supported(net)
    work = copy.deepcopy(net)
    for element in ("sgen", "storage"):
        if element in work and len(work[element]):
            work[element]["in_service"] = False
    load = work.load
    load["in_service"] = True
    load["scaling"] = 1.0
    load["p_mw"] = 0.0
    load["q_mvar"] = 0.0
    for column in ("const_z_percent", "const_i_percent", "const_z_p_percent",
                   "const_i_p_percent", "const_z_q_percent", "const_i_q_percent"):
        if column in load:
            load[column] = 0.0
    return work


# --------------------------------------------------------------------------------------------
# Batched model
# --------------------------------------------------------------------------------------------


class BatchedPowerFlow:
    """Batched implicit Z-bus AC power flow of one feeder (see the module docstring).

    Build with :meth:`from_pandapower`. Public attributes (tensors on ``device``):

    ``n_agent`` (N), ``n_bus``, ``n_line``, ``n_trafo``: sizes (``n_bus = len(net.bus)``).
    ``agent_bus [N]`` (long): position of each agent's bus in ``vm_pu``'s columns.
    ``bus_names``: ``net.bus.name`` as strings (the bus index where a name is missing).
    ``bus_index``, ``line_index``, ``trafo_index``: pandapower indices of the result columns.
    ``base_kv [n_bus]``: each bus's nominal voltage, kV. ``base_mva``: system base, MVA.
    ``dv_dp [N, N]``: d|V| at agent i's bus per kW injected by agent j, at no load, p.u./kW.

    Internally buses are kept in the "layout" ``[slack, non-slack buses in pandapower's
    internal (ppci) order]``; only the ``n_load_bus`` non-slack buses with at least one agent
    take part in the iteration (buses without injection follow affinely from those).
    """

    def __init__(
        self,
        *,
        z_nn: np.ndarray,
        w: np.ndarray,
        v_slack: complex,
        agent_non_slack: np.ndarray,
        bus_layout: np.ndarray,
        branch_from: np.ndarray,
        branch_to: np.ndarray,
        yf: np.ndarray,
        yt: np.ndarray,
        scale_from: np.ndarray,
        scale_to: np.ndarray,
        line_slot: np.ndarray,
        trafo_slot: np.ndarray,
        base_mva: float,
        base_kv: np.ndarray,
        agent_bus: np.ndarray,
        bus_index: list[int],
        bus_names: list[str],
        line_index: list[int],
        trafo_index: list[int],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        max_iterations: int = 50,
        tolerance_pu: float | None = None,
    ) -> None:
        """Use :meth:`from_pandapower`. Arrays are complex128 / float64 / int64 numpy:

        ``z_nn [n, n]``, ``w [n]``: Z-bus and no-load voltages of the ``n`` non-slack buses;
        ``agent_non_slack [N]``: each agent's non-slack bus (-1 at the slack bus);
        ``bus_layout [n_bus]``: layout position of each pandapower bus (``n + 1`` if isolated);
        ``branch_from/to [m]``, ``yf/yt [m, n + 1]``: layout buses and admittance rows of the
        ``m`` monitored (in-service line and trafo) branches; ``scale_from/to [m]``: |I| (p.u.)
        to loading (%); ``line_slot [n_line]``, ``trafo_slot [n_trafo]``: monitored row of each
        line / trafo (``m`` if out of service).
        """
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.device = torch.device(device)
        self.dtype = dtype
        self.complex_dtype = torch.complex64 if dtype == torch.float32 else torch.complex128
        self.max_iterations = int(max_iterations)
        default_tolerance = 1e-6 if dtype == torch.float32 else 1e-10
        self.tolerance_pu = float(tolerance_pu if tolerance_pu is not None else default_tolerance)
        self.base_mva = float(base_mva)
        self.n_agent = len(agent_bus)
        self.n_bus = len(bus_index)
        self.n_line = len(line_index)
        self.n_trafo = len(trafo_index)
        self.bus_index = list(bus_index)
        self.bus_names = list(bus_names)
        self.line_index = list(line_index)
        self.trafo_index = list(trafo_index)
        self.base_kv = torch.as_tensor(base_kv, dtype=dtype, device=self.device)
        self.agent_bus = torch.as_tensor(agent_bus, dtype=torch.long, device=self.device)

        # float64 / complex128 originals, for sensitivities and distances
        self._z_nn = z_nn
        self._w = w
        self._v_slack = complex(v_slack)
        self._agent_non_slack = agent_non_slack
        self._bus_layout = bus_layout
        self._branch_from = branch_from
        self._yf = yf
        self._branch_slot = np.concatenate([line_slot, trafo_slot])

        n_non_slack, n_monitored = z_nn.shape[0], yf.shape[0]
        load_bus = np.unique(agent_non_slack[agent_non_slack >= 0])
        if len(load_bus) == 0:
            raise ValueError("every agent sits at the slack bus: nothing to solve")
        self.n_load_bus = len(load_bus)
        self.n_non_slack = n_non_slack

        ctype, dev = self.complex_dtype, self.device
        # agent consumption (kW / kvar) -> p.u. injection at the load buses (index_add)
        on_grid = np.flatnonzero(agent_non_slack >= 0)
        self._grid_agents = torch.as_tensor(on_grid, dtype=torch.long, device=dev)
        self._agent_load_column = torch.as_tensor(
            np.searchsorted(load_bus, agent_non_slack[on_grid]), dtype=torch.long, device=dev)
        self._all_agents_on_grid = len(on_grid) == self.n_agent
        self._one_agent_per_bus = self._all_agents_on_grid and len(load_bus) == self.n_agent
        # the iteration on the load buses: V_L = w_L + Z_LL I_L
        self._w_load = torch.as_tensor(w[load_bus], dtype=ctype, device=dev)
        self._z_load_t = torch.as_tensor(z_nn[np.ix_(load_bus, load_bus)].T.copy(),
                                         dtype=ctype, device=dev)
        # Outputs as one affine map of the load-bus injection currents I_L = conj(S_L / V_L):
        #   V_n = w + Z[:, L] I_L,   I_f = Yf V = Yf V_0 + (Yf[:, n] Z[:, L]) I_L  (same for I_t)
        # Forming Yf V from voltages would subtract nearly equal voltages (short LV cables have
        # |y| ~ 1e4 p.u.) and lose ~1 % of the current in float32; these current distribution
        # factors are O(1) and lose nothing.
        no_load = np.concatenate([[self._v_slack], w])
        offset = np.concatenate([w, yf @ no_load, yt @ no_load])
        factor = np.concatenate([
            z_nn[:, load_bus], yf[:, 1:] @ z_nn[:, load_bus], yt[:, 1:] @ z_nn[:, load_bus]
        ])
        self._output_offset = torch.as_tensor(offset, dtype=ctype, device=dev)
        self._output_factor_t = torch.as_tensor(factor.T.copy(), dtype=ctype, device=dev)
        self._output_split = (n_non_slack, n_monitored, n_monitored)
        self._v_slack_t = torch.tensor(self._v_slack, dtype=ctype, device=dev)
        self._bus_layout_t = torch.as_tensor(bus_layout, dtype=torch.long, device=dev)
        self._has_missing_bus = bool((bus_layout > n_non_slack).any())
        self._branch_from_t = torch.as_tensor(branch_from, dtype=torch.long, device=dev)
        self._branch_to_t = torch.as_tensor(branch_to, dtype=torch.long, device=dev)
        self._scale_from = torch.as_tensor(scale_from, dtype=dtype, device=dev)
        self._scale_to = torch.as_tensor(scale_to, dtype=dtype, device=dev)
        self._line_slot = torch.as_tensor(line_slot, dtype=torch.long, device=dev)
        self._trafo_slot = torch.as_tensor(trafo_slot, dtype=torch.long, device=dev)
        self._no_load_sensitivity: GridSensitivity | None = None
        self._real_form: RealZbus | None = None

    # ----------------------------------------------------------------------------------------
    @classmethod
    def from_pandapower(
        cls,
        net: pp.pandapowerNet,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        max_iterations: int = 50,
        tolerance_pu: float | None = None,
    ) -> BatchedPowerFlow:
        """Build the model from a pandapower net (the net itself is not modified).

        Runs pandapower ``runpp`` once on :func:`agent_net` ``(net)`` at no load, takes its
        internal admittance matrices (``Ybus``, ``Yf``, ``Yt``) and bus lookup, and checks that
        the Z-bus no-load voltages ``w`` reproduce that power flow to 1e-6 p.u.

        ``dtype``: float32 (complex64 iteration, default) or float64 (complex128 iteration).
        ``max_iterations``: cap on fixed-point iterations per :meth:`solve`.
        ``tolerance_pu``: convergence threshold on the largest change of a voltage's real or
            imaginary part between iterations, p.u. (default 1e-6 for float32, 1e-10 for
            float64).
        """
        work = agent_net(net)
        pp.runpp(work, **RUNPP_OPTIONS)
        internal = work._ppc["internal"]
        ybus = np.asarray(internal["Ybus"].toarray(), dtype=np.complex128)
        yf_all = np.asarray(internal["Yf"].toarray(), dtype=np.complex128)
        yt_all = np.asarray(internal["Yt"].toarray(), dtype=np.complex128)
        ppci_bus = internal["bus"]
        ppci_branch = internal["branch"]
        base_mva = float(internal["baseMVA"])
        n_ppci = ybus.shape[0]
        ref = np.asarray(internal["ref"]).astype(np.int64)
        if len(ref) != 1:
            raise ValueError(f"expected one slack bus, pandapower reports {len(ref)}")
        slack = int(ref[0])
        non_slack = np.setdiff1d(np.arange(n_ppci), [slack])
        v_pandapower = np.asarray(internal["V"], dtype=np.complex128)
        v_slack = v_pandapower[slack]

        y_nn = ybus[np.ix_(non_slack, non_slack)]
        y_ns = ybus[non_slack, slack]
        z_nn = np.linalg.inv(y_nn)
        w = -z_nn @ y_ns * v_slack
        mismatch = float(np.abs(w - v_pandapower[non_slack]).max(initial=0.0))
        if mismatch > 1e-6:
            raise RuntimeError(
                f"Z-bus no-load voltages differ from pandapower by {mismatch:.2e} p.u.; the net "
                "probably contains an element this model does not represent"
            )
        # layout: [slack, non_slack...], plus n_ppci for "no bus" (isolated, out of service)
        layout = np.full(n_ppci + 1, n_ppci, dtype=np.int64)
        layout[slack] = 0
        layout[non_slack] = np.arange(1, n_ppci)
        to_layout = np.argsort(layout[:n_ppci])  # layout position -> ppci bus

        lookup = np.asarray(work._pd2ppc_lookups["bus"], dtype=np.int64)
        bus_index = [int(b) for b in net.bus.index]
        bus_ppci = lookup[np.asarray(bus_index)]
        bus_ppci = np.where((bus_ppci >= 0) & (bus_ppci < n_ppci), bus_ppci, n_ppci)
        bus_layout = layout[bus_ppci]
        bus_position = {b: k for k, b in enumerate(bus_index)}
        agent_bus = np.array([bus_position[int(b)] for b in net.load.bus], dtype=np.int64)
        agent_layout = bus_layout[agent_bus]
        stranded = np.flatnonzero(agent_layout == n_ppci)
        if len(stranded):
            raise ValueError(
                f"loads {net.load.index[stranded].tolist()} sit on out-of-service or isolated "
                "buses; every agent must be connected to the slack"
            )
        agent_non_slack = agent_layout - 1  # -1 at the slack bus

        # monitored branches: in-service lines, then in-service trafos (ppci branch rows)
        branch_lookup = work._pd2ppc_lookups["branch"]
        branch_in_service = np.asarray(internal["branch_is"], dtype=bool)
        ppci_row = np.cumsum(branch_in_service) - 1
        ppci_row[~branch_in_service] = -1
        base_kv_ppci = ppci_bus[:, BASE_KV].real
        rows: list[int] = []
        scale_from: list[float] = []
        scale_to: list[float] = []
        slots: dict[str, np.ndarray] = {}
        sqrt3 = math.sqrt(3.0)
        for element in ("line", "trafo"):
            table = net[element]
            slot = np.full(len(table), -1, dtype=np.int64)
            start, stop = branch_lookup.get(element, (0, 0))
            for k, row in enumerate(ppci_row[start:stop]):
                if row < 0:
                    continue
                slot[k] = len(rows)
                rows.append(int(row))
                # |I| (p.u.) -> kA on each side: base_mva / (sqrt(3) * base_kv)
                ka_from = base_mva / (sqrt3 * base_kv_ppci[int(ppci_branch[row, F_BUS].real)])
                ka_to = base_mva / (sqrt3 * base_kv_ppci[int(ppci_branch[row, T_BUS].real)])
                record = table.iloc[k]
                if element == "line":
                    i_max_ka = record.max_i_ka * record.df * record.parallel
                    scale_from.append(100.0 * ka_from / i_max_ka)
                    scale_to.append(100.0 * ka_to / i_max_ka)
                else:
                    rating_mva = record.sn_mva * record.parallel * record.df
                    scale_from.append(100.0 * ka_from * record.vn_hv_kv * sqrt3 / rating_mva)
                    scale_to.append(100.0 * ka_to * record.vn_lv_kv * sqrt3 / rating_mva)
            slots[element] = slot
        n_monitored = len(rows)
        rows_np = np.asarray(rows, dtype=np.int64)
        line_slot = np.where(slots["line"] < 0, n_monitored, slots["line"])
        trafo_slot = np.where(slots["trafo"] < 0, n_monitored, slots["trafo"])

        bus_names = [
            str(name) if isinstance(name, str) and name else str(index)
            for index, name in zip(net.bus.index, net.bus["name"], strict=True)
        ]
        return cls(
            z_nn=z_nn,
            w=w,
            v_slack=v_slack,
            agent_non_slack=agent_non_slack,
            bus_layout=bus_layout,
            branch_from=layout[ppci_branch[rows_np, F_BUS].real.astype(np.int64)],
            branch_to=layout[ppci_branch[rows_np, T_BUS].real.astype(np.int64)],
            yf=yf_all[rows_np][:, to_layout],
            yt=yt_all[rows_np][:, to_layout],
            scale_from=np.asarray(scale_from, dtype=np.float64),
            scale_to=np.asarray(scale_to, dtype=np.float64),
            line_slot=line_slot,
            trafo_slot=trafo_slot,
            base_mva=base_mva,
            base_kv=net.bus["vn_kv"].to_numpy(dtype=np.float64),
            agent_bus=agent_bus,
            bus_index=bus_index,
            bus_names=bus_names,
            line_index=[int(i) for i in net.line.index],
            trafo_index=[int(i) for i in net.trafo.index],
            device=device,
            dtype=dtype,
            max_iterations=max_iterations,
            tolerance_pu=tolerance_pu,
        )

    # ----------------------------------------------------------------------------------------
    def _injection_pu(self, p_kw: Tensor, q_kvar: Tensor) -> Tensor:
        """Complex injections at the load buses ``[B, n_load_bus]``, p.u. (generator sign)."""
        p_kw = torch.as_tensor(p_kw, dtype=self.dtype, device=self.device)
        q_kvar = torch.as_tensor(q_kvar, dtype=self.dtype, device=self.device)
        if p_kw.dim() == 1:
            p_kw, q_kvar = p_kw.unsqueeze(0), q_kvar.unsqueeze(0)
        if p_kw.shape != q_kvar.shape or p_kw.dim() != 2 or p_kw.shape[1] != self.n_agent:
            raise ValueError(
                f"p_kw {tuple(p_kw.shape)} and q_kvar {tuple(q_kvar.shape)} must both be "
                f"[B, {self.n_agent}]"
            )
        consumption = torch.complex(p_kw, q_kvar) * (-1.0 / (_KW_PER_MW * self.base_mva))
        if not self._all_agents_on_grid:
            consumption = consumption[:, self._grid_agents]
        if self._one_agent_per_bus:
            injection = torch.empty_like(consumption)
            return injection.index_copy_(1, self._agent_load_column, consumption)
        injection = consumption.new_zeros((consumption.shape[0], self.n_load_bus))
        return injection.index_add_(1, self._agent_load_column, consumption)

    def _iterate(self, injection_pu: Tensor) -> tuple[Tensor, Tensor, int]:
        """Z-bus fixed point on the load buses for ``injection_pu [B, n_load_bus]``.

        Returns ``(I_L, converged [B], iterations)``: the injection currents
        ``I_L = conj(S_L / V_L)`` at the last iterate (all outputs are affine in them).
        """
        batch = injection_pu.shape[0]
        injection_conj = injection_pu.conj()
        voltage = self._w_load.expand(batch, -1)
        current = torch.zeros_like(injection_pu)
        change = torch.full((batch,), math.inf, dtype=self.dtype, device=self.device)
        iterations = 0
        some_converged = False
        for iterations in range(1, self.max_iterations + 1):  # noqa: B007 (used after the loop)
            current = injection_conj * voltage.reciprocal().conj()
            updated = torch.addmm(self._w_load, current, self._z_load_t)
            # largest change of a real or imaginary part: no square roots needed
            step = torch.view_as_real(updated - voltage).abs().flatten(1).amax(dim=1)
            if some_converged:  # those keep their voltages (as they would alone)
                running = ~(change < self.tolerance_pu)
                voltage = torch.where(running[:, None], updated, voltage)
                change = torch.where(running, step, change)
            else:
                voltage, change = updated, step
            n_converged = int((change < self.tolerance_pu).sum())
            if n_converged == batch:
                break
            some_converged = n_converged > 0
        # the currents of the converged voltages (one more evaluation, no extra GEMM)
        current = injection_conj * voltage.reciprocal().conj()
        converged = (change < self.tolerance_pu) & torch.isfinite(change)
        return current, converged, iterations

    def _affine_outputs(self, current: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(V_n [B, n_non_slack], I_f [B, m], I_t [B, m])`` from load-bus currents."""
        outputs = torch.addmm(self._output_offset, current, self._output_factor_t)
        voltage, current_from, current_to = torch.split(outputs, self._output_split, dim=1)
        return voltage, current_from, current_to

    def _results(self, current: Tensor, converged: Tensor, iterations: int,
                 angles: bool = True) -> PowerFlowResult:
        """Bus, branch and loss results from the fixed point's load-bus currents."""
        batch = current.shape[0]
        voltage_non_slack, current_from, current_to = self._affine_outputs(current)
        parts = [self._v_slack_t.expand(batch, 1), voltage_non_slack]
        if self._has_missing_bus:
            parts.append(torch.full((batch, 1), complex(math.nan, math.nan),
                                    dtype=self.complex_dtype, device=self.device))
        voltage = torch.cat(parts, dim=1)
        bus_voltage = voltage[:, self._bus_layout_t]
        power_from = voltage[:, self._branch_from_t] * current_from.conj()
        power_to = voltage[:, self._branch_to_t] * current_to.conj()
        loading = torch.maximum(_magnitude(current_from) * self._scale_from,
                                _magnitude(current_to) * self._scale_to)
        to_kw = self.base_mva * _KW_PER_MW
        p_from_kw = power_from.real * to_kw
        losses_kw = (power_from.real + power_to.real).sum(dim=1) * to_kw
        zero = torch.zeros((batch, 1), dtype=self.dtype, device=self.device)
        loading = torch.cat([loading, zero], dim=1)
        p_from_kw = torch.cat([p_from_kw, zero], dim=1)
        vm_pu = _magnitude(bus_voltage)
        va_degree = torch.rad2deg(bus_voltage.angle()) if angles else None
        if not bool(converged.all()):
            diverged = ~converged.unsqueeze(1)
            vm_pu = vm_pu.masked_fill(diverged, math.nan)
            loading = loading.masked_fill(diverged, math.nan)
            p_from_kw = p_from_kw.masked_fill(diverged, math.nan)
            losses_kw = losses_kw.masked_fill(~converged, math.nan)
        if va_degree is not None and (self._has_missing_bus or not bool(converged.all())):
            va_degree = va_degree.masked_fill(torch.isnan(vm_pu), math.nan)
        return PowerFlowResult(
            vm_pu=vm_pu,
            va_degree=va_degree,
            line_loading_percent=loading[:, self._line_slot],
            trafo_loading_percent=loading[:, self._trafo_slot],
            losses_kw=losses_kw,
            converged=converged,
            line_p_from_kw=p_from_kw[:, self._line_slot],
            trafo_p_hv_kw=p_from_kw[:, self._trafo_slot],
            iterations=iterations,
        )

    def solve(self, p_kw: Tensor, q_kvar: Tensor, angles: bool = True) -> PowerFlowResult:
        """AC power flow for ``B`` environments.

        ``p_kw [B, N]`` (or ``[N]``): agents' net active consumption, kW (negative = export).
        ``q_kvar [B, N]`` (or ``[N]``): agents' reactive consumption, kvar.
        ``angles``: compute ``va_degree`` (the environment's step skips it: None).
        Returns a :class:`PowerFlowResult` in the model's dtype; environments that did not
        converge within ``max_iterations`` have ``converged = False`` and NaN results.
        """
        current, converged, iterations = self._iterate(self._injection_pu(p_kw, q_kvar))
        return self._results(current, converged, iterations, angles)

    def real_form(self) -> RealZbus:
        """This model's Z-bus fixed point in real arithmetic (:class:`RealZbus`), for
        ``torch.compile`` (inductor generates no code for complex tensors); cached."""
        if self._real_form is None:
            self._real_form = RealZbus(self)
        return self._real_form

    # ----------------------------------------------------------------------------------------
    def sensitivity(
        self, p_kw: Tensor | None = None, q_kvar: Tensor | None = None
    ) -> GridSensitivity:
        """Linear voltage-magnitude and branch-flow sensitivities to each agent's injection.

        With no arguments: around the no-load point ``V = w`` (cached), shapes ``[n_bus, N]`` and
        ``[n_line + n_trafo, N]``. With ``p_kw, q_kvar [B, N]``: around each environment's
        operating point, shapes ``[B, n_bus, N]`` and ``[B, n_line + n_trafo, N]`` (costs a
        ``[B, 2n, 2n]`` dense solve; meant for analysis and linearised planning, not every step).

        Derivation (exact derivative of the Z-bus fixed point ``V = w + Z conj(S/V)``, Chen et
        al. 1991): differentiating gives ``dV + Z diag(conj(S)/conj(V)^2) conj(dV) =
        Z diag(1/conj(V)) conj(dS)``, a real-linear system solved as a ``2n x 2n`` real system in
        ``(Re dV, Im dV)``; then ``d|V_i| = Re(conj(V_i) dV_i) / |V_i|`` and
        ``dP_from = Re(dV_f conj(I_f) + V_f conj(Y_f dV))``. At no load the system is the
        identity and ``dV/dP_j = Z[:, k_j] / conj(w_k_j)``. Computed in float64, returned in the
        model's dtype. Rows of out-of-service or isolated buses are 0.
        """
        if p_kw is None and q_kvar is None:
            if self._no_load_sensitivity is None:
                voltage = torch.as_tensor(self._w, dtype=torch.complex128).unsqueeze(0)
                linear = self._linearise(voltage, torch.zeros_like(voltage))
                self._no_load_sensitivity = GridSensitivity(*(part[0] for part in linear))
            return self._no_load_sensitivity
        if p_kw is None or q_kvar is None:
            raise ValueError("give both p_kw and q_kvar, or neither")
        injection_load = self._injection_pu(p_kw, q_kvar)
        current, converged, _ = self._iterate(injection_load)
        if not bool(converged.all()):
            raise ValueError("power flow did not converge for some operating points")
        voltage = self._affine_outputs(current)[0].to(torch.complex128).cpu()
        # injections on all non-slack buses (zero where no agent)
        injection = torch.zeros_like(voltage)
        load_bus = torch.as_tensor(np.unique(self._agent_non_slack[self._agent_non_slack >= 0]))
        injection[:, load_bus] = injection_load.to(torch.complex128).cpu()
        return GridSensitivity(*self._linearise(voltage, injection))

    def _linearise(self, voltage: Tensor, injection: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Sensitivities around ``voltage, injection [B, n_non_slack]`` (complex128, CPU)."""
        batch, n = voltage.shape
        z_nn = torch.as_tensor(self._z_nn, dtype=torch.complex128)
        coupling = z_nn.unsqueeze(0) * (injection.conj() / voltage.conj() ** 2).unsqueeze(1)
        identity = torch.eye(n, dtype=torch.float64).expand(batch, n, n)
        system = torch.cat([
            torch.cat([identity + coupling.real, coupling.imag], dim=2),
            torch.cat([coupling.imag, identity - coupling.real], dim=2),
        ], dim=1)
        # right-hand sides: active (column j) then reactive (column N + j) injection of agent j
        positions = torch.as_tensor(self._agent_non_slack, dtype=torch.long)
        per_kw = (positions >= 0).to(torch.float64) / (_KW_PER_MW * self.base_mva)
        columns = positions.clamp_min(0)
        rhs_p = z_nn[:, columns].unsqueeze(0) / voltage[:, columns].conj().unsqueeze(1) * per_kw
        rhs = torch.cat([rhs_p, -1j * rhs_p], dim=2)  # [B, n, 2N]
        solution = torch.linalg.solve(system, torch.cat([rhs.real, rhs.imag], dim=1))
        d_voltage = torch.complex(solution[:, :n], solution[:, n:])
        # layout [slack, non-slack, none]: the slack and "no bus" rows do not move
        zero = torch.zeros((batch, 1, d_voltage.shape[2]), dtype=torch.complex128)
        d_layout = torch.cat([zero, d_voltage, zero], dim=1)
        slack = torch.full((batch, 1), self._v_slack, dtype=torch.complex128)
        v_layout = torch.cat([slack, voltage, slack], dim=1)
        d_magnitude = (v_layout.conj().unsqueeze(2) * d_layout).real / v_layout.abs().unsqueeze(2)
        d_magnitude = d_magnitude[:, torch.as_tensor(self._bus_layout)]
        # active flow into each monitored branch: dP = Re(dV_f conj(I_f) + V_f conj(Yf dV))
        yf = torch.as_tensor(self._yf, dtype=torch.complex128)
        branch_from = torch.as_tensor(self._branch_from)
        d_active = d_layout[:, :-1, : self.n_agent]
        current_from = v_layout[:, :-1] @ yf.T
        d_current = torch.einsum("mk,bkj->bmj", yf, d_active)
        d_power = (d_active[:, branch_from] * current_from.conj().unsqueeze(2)
                   + v_layout[:, branch_from].unsqueeze(2) * d_current.conj()).real
        d_power = torch.cat([d_power, torch.zeros_like(d_power[:, :1])], dim=1)
        # d_power is p.u. of power per kW injected: back to kW per kW
        ptdf = d_power[:, torch.as_tensor(self._branch_slot)] * (self.base_mva * _KW_PER_MW)
        as_model = {"dtype": self.dtype, "device": self.device}
        return (
            d_magnitude[:, :, : self.n_agent].to(**as_model),
            d_magnitude[:, :, self.n_agent:].to(**as_model),
            ptdf.to(**as_model),
        )

    @property
    def dv_dp(self) -> Tensor:
        """``[N, N]``: d|V| at agent i's bus per kW injected by agent j, no load, p.u./kW."""
        return self.sensitivity().voltage_pu_per_kw[self.agent_bus]

    def no_load_voltage(self) -> Tensor:
        """``[n_bus]`` voltage magnitudes with every agent at zero power, p.u."""
        zeros = torch.zeros(1, self.n_agent, dtype=self.dtype, device=self.device)
        return self.solve(zeros, zeros).vm_pu[0]


# --------------------------------------------------------------------------------------------
# Ground truth: pandapower per environment
# --------------------------------------------------------------------------------------------


def run_ac(
    net: pp.pandapowerNet, p_kw: Tensor | np.ndarray, q_kvar: Tensor | np.ndarray
) -> PowerFlowResult:
    """Exact AC power flow: one pandapower ``runpp`` (Newton-Raphson) per environment.

    ``net`` is not modified (a copy from :func:`agent_net` is used: sgens and storage off, the
    agents' loads set to ``p_kw / 1000`` MW and ``q_kvar / 1000`` Mvar). ``p_kw, q_kvar``:
    ``[B, N]`` or ``[N]``, kW / kvar consumption. A run that does not converge gives
    ``converged = False`` and NaN results for that environment; it never raises. Tensors are
    returned in ``p_kw``'s floating dtype (float64 for arrays or integer input), on CPU.
    """
    dtype = p_kw.dtype if isinstance(p_kw, Tensor) and p_kw.is_floating_point() else torch.float64
    p = np.atleast_2d(torch.as_tensor(p_kw).detach().cpu().double().numpy())
    q = np.atleast_2d(torch.as_tensor(q_kvar).detach().cpu().double().numpy())
    work = agent_net(net)
    if p.shape != q.shape or p.shape[1] != len(work.load):
        raise ValueError(f"p_kw {p.shape} and q_kvar {q.shape} must be [B, {len(work.load)}]")
    batch = p.shape[0]
    n_bus, n_line, n_trafo = len(work.bus), len(work.line), len(work.trafo)
    vm = np.full((batch, n_bus), np.nan)
    va = np.full((batch, n_bus), np.nan)
    line_loading = np.full((batch, n_line), np.nan)
    trafo_loading = np.full((batch, n_trafo), np.nan)
    line_p = np.full((batch, n_line), np.nan)
    trafo_p = np.full((batch, n_trafo), np.nan)
    losses = np.full(batch, np.nan)
    converged = np.zeros(batch, dtype=bool)
    iterations = 0
    for env in range(batch):
        work.load["p_mw"] = p[env] / _KW_PER_MW
        work.load["q_mvar"] = q[env] / _KW_PER_MW
        try:
            pp.runpp(work, **RUNPP_OPTIONS)
        except (pp.LoadflowNotConverged, np.linalg.LinAlgError, FloatingPointError):
            continue
        if not work.converged:
            continue
        converged[env] = True
        iterations = max(iterations, int(work._ppc.get("iterations", 0) or 0))
        vm[env] = work.res_bus["vm_pu"].to_numpy()
        va[env] = work.res_bus["va_degree"].to_numpy()
        line_loading[env] = work.res_line["loading_percent"].to_numpy()
        line_p[env] = work.res_line["p_from_mw"].to_numpy() * _KW_PER_MW
        losses[env] = work.res_line["pl_mw"].sum() * _KW_PER_MW
        if n_trafo:
            trafo_loading[env] = work.res_trafo["loading_percent"].to_numpy()
            trafo_p[env] = work.res_trafo["p_hv_mw"].to_numpy() * _KW_PER_MW
            losses[env] += work.res_trafo["pl_mw"].sum() * _KW_PER_MW

    def tensor(array: np.ndarray) -> Tensor:
        return torch.as_tensor(array, dtype=dtype)

    return PowerFlowResult(
        vm_pu=tensor(vm),
        va_degree=tensor(va),
        line_loading_percent=tensor(line_loading),
        trafo_loading_percent=tensor(trafo_loading),
        losses_kw=tensor(losses),
        converged=torch.as_tensor(converged),
        line_p_from_kw=tensor(line_p),
        trafo_p_hv_kw=tensor(trafo_p),
        iterations=iterations,
    )


def _real_matrix(complex_t: Tensor) -> Tensor:
    """``[2 n, 2 m]`` real matrix ``M`` with ``[x.real, x.imag] @ M = [(x @ A).real,
    (x @ A).imag]`` for the complex ``A = complex_t [n, m]``."""
    real, imag = complex_t.real, complex_t.imag
    return torch.cat([torch.cat([real, imag], dim=1), torch.cat([-imag, real], dim=1)], dim=0)


class RealZbus:
    """The Z-bus fixed point of a :class:`BatchedPowerFlow` (:meth:`~BatchedPowerFlow.solve`
    with ``angles=False``) in real arithmetic, as pure tensor functions without
    data-dependent control flow, for ``torch.compile`` (the compiled core,
    ``envs.compiled``). Complex quantities ``[B, n]`` are held as ``[B, 2 n]`` (real parts,
    then imaginary parts); the same equations as the complex solver, equal to float rounding.

    :meth:`iterate` runs a fixed number of the solver's iterations with its freezing rule
    (an environment whose last change was below ``tolerance_pu`` keeps its voltages), so
    calling it until :meth:`all_converged` (or ``max_iterations``) gives each environment
    the voltages the complex solver gives it: the result does not depend on the batch.
    """

    def __init__(self, model: BatchedPowerFlow) -> None:
        self.model = model
        self.tolerance_pu = model.tolerance_pu
        self.n_load_bus = model.n_load_bus
        self.w_load = torch.cat([model._w_load.real, model._w_load.imag])  # [2 L]
        self.z_load = _real_matrix(model._z_load_t)  # [2 L, 2 L]
        self.output_offset = torch.cat([model._output_offset.real,
                                        model._output_offset.imag])  # [2 K]
        self.output_factor = _real_matrix(model._output_factor_t)  # [2 L, 2 K]
        self.n_output = model._output_offset.shape[0]
        self.v_slack = torch.stack([model._v_slack_t.real, model._v_slack_t.imag])  # [2]

    def injection(self, p_kw: Tensor, q_kvar: Tensor) -> Tensor:
        """``[B, 2 L]``: the complex load-bus injections (p.u., generator sign) of
        consumption ``p_kw``, ``q_kvar [B, N]`` (kW, kvar)."""
        model = self.model
        scale = -1.0 / (_KW_PER_MW * model.base_mva)
        p_pu, q_pu = p_kw * scale, q_kvar * scale
        if not model._all_agents_on_grid:
            p_pu, q_pu = p_pu[:, model._grid_agents], q_pu[:, model._grid_agents]
        parts = []
        for part in (p_pu, q_pu):
            bus = part.new_zeros((part.shape[0], model.n_load_bus))
            parts.append(bus.index_add(1, model._agent_load_column, part))
        return torch.cat(parts, dim=1)

    def start(self, injection: Tensor) -> tuple[Tensor, Tensor]:
        """The solver's start: no-load voltages ``[B, 2 L]`` and change ``[B]`` (inf)."""
        batch = injection.shape[0]
        voltage = self.w_load.expand(batch, -1)
        change = torch.full((batch,), math.inf, dtype=injection.dtype, device=injection.device)
        return voltage, change

    def _currents(self, injection: Tensor, voltage: Tensor) -> Tensor:
        """``I = conj(S / V)`` ``[B, 2 L]``."""
        n = self.n_load_bus
        s_re, s_im = injection[:, :n], injection[:, n:]
        v_re, v_im = voltage[:, :n], voltage[:, n:]
        inverse_square = (v_re.square() + v_im.square()).reciprocal()
        return torch.cat([(s_re * v_re + s_im * v_im) * inverse_square,
                          (s_re * v_im - s_im * v_re) * inverse_square], dim=1)

    def iterate(self, injection: Tensor, voltage: Tensor, change: Tensor,
                count: int) -> tuple[Tensor, Tensor]:
        """``count`` fixed-point iterations ``V = w + Z I(V)`` from ``voltage [B, 2 L]`` and
        ``change [B]`` (largest change of a real or imaginary part at the last iteration,
        p.u.); environments already converged keep their voltages and change."""
        for _ in range(count):
            current = self._currents(injection, voltage)
            updated = torch.addmm(self.w_load, current, self.z_load)
            step = (updated - voltage).abs().amax(dim=1)
            running = ~(change < self.tolerance_pu)
            voltage = torch.where(running[:, None], updated, voltage)
            change = torch.where(running, step, change)
        return voltage, change

    def all_converged(self, change: Tensor) -> bool:
        """Whether every environment has converged (one device sync)."""
        return bool((change < self.tolerance_pu).all())

    def result(self, injection: Tensor, voltage: Tensor, change: Tensor,
               iterations: int) -> PowerFlowResult:
        """The :class:`PowerFlowResult` (``va_degree`` None) of the iterate ``voltage``."""
        model = self.model
        batch = voltage.shape[0]
        current = self._currents(injection, voltage)
        outputs = torch.addmm(self.output_offset, current, self.output_factor)
        n_out = self.n_output
        n_non_slack, n_branch, _ = model._output_split
        real, imag = outputs[:, :n_out], outputs[:, n_out:]

        def split(values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            return (values[:, :n_non_slack], values[:, n_non_slack:n_non_slack + n_branch],
                    values[:, n_non_slack + n_branch:])

        (v_re, from_re, to_re), (v_im, from_im, to_im) = split(real), split(imag)
        ones = voltage.new_ones((batch, 1))
        parts_re, parts_im = [ones * self.v_slack[0], v_re], [ones * self.v_slack[1], v_im]
        if model._has_missing_bus:
            parts_re.append(ones * math.nan)
            parts_im.append(ones * math.nan)
        bus_re, bus_im = torch.cat(parts_re, dim=1), torch.cat(parts_im, dim=1)
        converged = (change < self.tolerance_pu) & torch.isfinite(change)
        diverged = ~converged[:, None]
        layout = model._bus_layout_t
        vm_pu = (bus_re[:, layout].square() + bus_im[:, layout].square()).sqrt()
        branch_from, branch_to = model._branch_from_t, model._branch_to_t
        to_kw = model.base_mva * _KW_PER_MW
        power_from = bus_re[:, branch_from] * from_re + bus_im[:, branch_from] * from_im
        power_to = bus_re[:, branch_to] * to_re + bus_im[:, branch_to] * to_im
        loading = torch.maximum((from_re.square() + from_im.square()).sqrt() * model._scale_from,
                                (to_re.square() + to_im.square()).sqrt() * model._scale_to)
        zero = voltage.new_zeros((batch, 1))
        loading = torch.cat([loading, zero], dim=1).masked_fill(diverged, math.nan)
        p_from_kw = torch.cat([power_from * to_kw, zero], dim=1).masked_fill(diverged, math.nan)
        losses_kw = ((power_from + power_to).sum(dim=1) * to_kw).masked_fill(~converged,
                                                                             math.nan)
        return PowerFlowResult(
            vm_pu=vm_pu.masked_fill(diverged, math.nan),
            va_degree=None,
            line_loading_percent=loading[:, model._line_slot],
            trafo_loading_percent=loading[:, model._trafo_slot],
            losses_kw=losses_kw,
            converged=converged,
            line_p_from_kw=p_from_kw[:, model._line_slot],
            trafo_p_hv_kw=p_from_kw[:, model._trafo_slot],
            iterations=iterations,
        )


# --------------------------------------------------------------------------------------------
# Penalties, distances, summaries
# --------------------------------------------------------------------------------------------


def _magnitude(values: Tensor) -> Tensor:
    """``|values|`` of a complex tensor as ``sqrt(re^2 + im^2)`` (several times faster on CPU
    than ``Tensor.abs``, which guards against overflow that p.u. quantities never reach)."""
    return (values.real.square() + values.imag.square()).sqrt()


def _weighted_sum(excess: Tensor, sensitivity: Tensor) -> Tensor:
    """``sum_k excess[b, k] * sensitivity[(b,) k, j]`` -> ``[B, N]``."""
    if sensitivity.dim() == 2:
        return excess @ sensitivity
    return torch.bmm(excess.unsqueeze(1), sensitivity).squeeze(1)


def _share(total: Tensor, weight: Tensor, fallback: Tensor) -> Tensor:
    """Split ``total [B]`` over agents proportionally to ``weight [B, N]``.

    Where all weights of an environment are zero, ``fallback [B, N]`` is used; where that is
    zero too, the total is split equally.
    """
    tiny = torch.finfo(weight.dtype).tiny
    weight_sum = weight.sum(dim=1, keepdim=True)
    fallback_sum = fallback.sum(dim=1, keepdim=True)
    equal = torch.full_like(weight, 1.0 / weight.shape[1])
    fraction = torch.where(
        weight_sum > 0,
        weight / weight_sum.clamp_min(tiny),
        torch.where(fallback_sum > 0, fallback / fallback_sum.clamp_min(tiny), equal),
    )
    return total.unsqueeze(1) * fraction


def network_penalty(
    result: PowerFlowResult,
    p_kw: Tensor,
    sensitivity: GridSensitivity | BatchedPowerFlow,
    v_min: float = 0.95,
    v_max: float = 1.05,
    voltage_penalty: float = 10.0,
    line_penalty: float = 1.0,
    max_loading_percent: float = 100.0,
    divergence_penalty: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """A step's network penalty and each agent's share of it.

    Arguments: ``result`` of ``B`` environments, the agents' consumption ``p_kw [B, N]`` (kW,
    negative = export), and ``sensitivity`` from :meth:`BatchedPowerFlow.sensitivity` (no-load
    ``[n_bus, N]`` or per-environment ``[B, n_bus, N]``; passing the model itself uses its cached
    no-load sensitivity). ``voltage_penalty``: currency per p.u.
    of violation per bus per step; ``line_penalty``: currency per 100 % of overload per branch
    per step; ``divergence_penalty``: currency per step for an environment whose power flow did
    not converge (default ``voltage_penalty * 0.1 * n_bus``, as if every bus were 0.1 p.u.
    outside the band).

    Total per environment (money per step)::

        over_b  = max(vm_b - v_max, 0),  under_b = max(v_min - vm_b, 0)    [p.u., every bus]
        excess_l = max(loading_l - max_loading_percent, 0) / 100          [lines and trafos]
        total = voltage_penalty * (sum_b over_b + sum_b under_b) + line_penalty * sum_l excess_l

    Sharing (each of the three parts is split separately, then summed). With ``x_j = -p_kw_j``
    agent j's injection (kW), ``S_bj >= 0`` its voltage sensitivity at bus b (clamped at 0) and
    ``F_lj`` its PTDF to branch l, agent j's weight is

        overvoltage:   w_j = max(x_j, 0)  * sum_b over_b  * S_bj   (exporters raising voltage)
        undervoltage:  w_j = max(-x_j, 0) * sum_b under_b * S_bj   (importers lowering it)
        overload:      w_j = sum_l excess_l * max(sign(P_l) * F_lj * x_j, 0)

    where ``P_l`` is the branch's active flow at its from (HV) end: an agent pays for an
    overload only if its injection pushes flow in the overloaded direction. Each part is split
    in proportion to ``w_j`` (so shares sum exactly to the part). An agent with zero injection
    has zero weight, hence zero share. Only if every weight of a part is zero (a violation no
    agent drives, e.g. a slack set-point above ``v_max``) the part is split by the fallback
    ``|x_j| * sum_b violation_b * |S_bj|`` (resp. ``|x_j| * sum_l excess_l * |F_lj|``), and only
    if that is zero too (all agents idle) equally. Non-converged environments pay
    ``divergence_penalty`` split by ``|x_j|``. NaN voltages of isolated buses count as no
    violation.

    Returns ``(penalty [B, N], info)``; ``info`` holds ``[B]`` tensors ``overvoltage_penalty``,
    ``undervoltage_penalty``, ``line_penalty``, ``divergence_penalty``, ``total_penalty`` and
    ``voltage_violation_pu`` (sum over buses of the band violation).
    """
    if isinstance(sensitivity, BatchedPowerFlow):
        sensitivity = sensitivity.sensitivity()
    if not isinstance(sensitivity, GridSensitivity):
        raise TypeError("sensitivity must be a GridSensitivity (model.sensitivity()) or the model")
    p_kw = torch.as_tensor(p_kw, dtype=result.vm_pu.dtype, device=result.vm_pu.device)
    if p_kw.dim() == 1:
        p_kw = p_kw.unsqueeze(0)
    injection = -p_kw
    export = injection.clamp_min(0.0)
    imports = (-injection).clamp_min(0.0)
    magnitude = injection.abs()
    converged = result.converged.to(p_kw.device)
    vm = torch.nan_to_num(result.vm_pu, nan=0.5 * (v_min + v_max))
    over = (vm - v_max).clamp_min(0.0)
    under = (v_min - vm).clamp_min(0.0)
    loading = torch.nan_to_num(result.branch_loading_percent, nan=0.0)
    excess = (loading - max_loading_percent).clamp_min(0.0) / 100.0
    flow_sign = torch.sign(torch.nan_to_num(result.branch_p_from_kw, nan=0.0))
    voltage_sensitivity = sensitivity.voltage_pu_per_kw.to(p_kw)
    ptdf = sensitivity.branch_ptdf.to(p_kw)
    raising = voltage_sensitivity.clamp_min(0.0)

    over_total = voltage_penalty * over.sum(dim=1)
    over_exposure = _weighted_sum(over, raising)
    over_share = _share(over_total, export * over_exposure,
                        magnitude * _weighted_sum(over, voltage_sensitivity.abs()))

    under_total = voltage_penalty * under.sum(dim=1)
    under_exposure = _weighted_sum(under, raising)
    under_share = _share(under_total, imports * under_exposure,
                         magnitude * _weighted_sum(under, voltage_sensitivity.abs()))

    # max(sign * F * x, 0) = x+ * (F+ [sign>0] + F- [sign<0]) + x- * (F- [sign>0] + F+ [sign<0])
    excess_forward = excess * (flow_sign > 0)
    excess_backward = excess * (flow_sign < 0)
    ptdf_pos, ptdf_neg = ptdf.clamp_min(0.0), (-ptdf).clamp_min(0.0)
    export_weight = (_weighted_sum(excess_forward, ptdf_pos)
                     + _weighted_sum(excess_backward, ptdf_neg))
    import_weight = (_weighted_sum(excess_forward, ptdf_neg)
                     + _weighted_sum(excess_backward, ptdf_pos))
    line_total = line_penalty * excess.sum(dim=1)
    line_share = _share(line_total, export * export_weight + imports * import_weight,
                        magnitude * _weighted_sum(excess, ptdf.abs()))

    if divergence_penalty is None:
        divergence_penalty = voltage_penalty * 0.1 * result.vm_pu.shape[1]
    diverged = ~converged
    divergence_total = torch.where(diverged, float(divergence_penalty), 0.0).to(p_kw)
    divergence_share = _share(divergence_total, magnitude, torch.zeros_like(magnitude))

    keep = converged.unsqueeze(1)
    zero = torch.zeros_like(over_share)
    penalty = (torch.where(keep, over_share + under_share + line_share, zero) + divergence_share)
    ok = converged.to(p_kw.dtype)
    info = {
        "overvoltage_penalty": over_total * ok,
        "undervoltage_penalty": under_total * ok,
        "line_penalty": line_total * ok,
        "divergence_penalty": divergence_total,
        "total_penalty": (over_total + under_total + line_total) * ok + divergence_total,
        "voltage_violation_pu": (over.sum(dim=1) + under.sum(dim=1)) * ok,
    }
    return penalty, info


def electrical_distance(model: BatchedPowerFlow, in_ohm: bool = False) -> Tensor:
    """Thevenin-impedance distance between agents' buses, ``[N, N]``.

    ``d_ij = |Z_ii + Z_jj - Z_ij - Z_ji|`` (= ``|Z_ii + Z_jj - 2 Z_ij|`` for a symmetric Z),
    with ``Z = inv(Y_nn)`` the bus impedance matrix with the slack bus grounded (Z of the slack
    is 0): the magnitude of the two-point (Thevenin) impedance between buses i and j, i.e. how
    much a current exchanged between them moves their voltages apart. Used as "electrical
    distance" by Cotilla-Sanchez, Hines, Barrows and Blumsack, "Comparing the topological and
    electrical structure of the North American electric power infrastructure", IEEE Systems
    Journal 6(4), 2012. Symmetric, zero on the diagonal and for agents sharing a bus; on a
    radial feeder, the series impedance of the path between the two buses.

    Units: p.u. on the system base (``net.sn_mva`` and each bus's ``vn_kv``), or ohm if
    ``in_ohm`` (needs all agents' buses at one nominal voltage). Model dtype and device.
    """
    positions = model._agent_non_slack
    n_non_slack = model._z_nn.shape[0]
    z_padded = np.zeros((n_non_slack + 1, n_non_slack + 1), dtype=np.complex128)
    z_padded[:n_non_slack, :n_non_slack] = model._z_nn
    index = np.where(positions >= 0, positions, n_non_slack)
    z_agents = z_padded[np.ix_(index, index)]
    diagonal = np.diag(z_agents)
    distance = np.abs(diagonal[:, None] + diagonal[None, :] - z_agents - z_agents.T)
    if in_ohm:
        agent_kv = model.base_kv[model.agent_bus].double().cpu().numpy()
        if not np.allclose(agent_kv, agent_kv[0]):
            raise ValueError("in_ohm needs all agent buses at one nominal voltage")
        distance = distance * agent_kv[0] ** 2 / model.base_mva
    return torch.as_tensor(distance, dtype=model.dtype, device=model.device)


def network_summary(
    result: PowerFlowResult,
    v_min: float = 0.95,
    v_max: float = 1.05,
    max_loading_percent: float = 100.0,
) -> dict[str, Tensor]:
    """Per-environment statistics for ``infos``, each ``[B]``.

    ``v_min_pu``, ``v_max_pu``: extreme bus voltages (isolated buses ignored), p.u. (the
    names of ``envs.info_schema.NETWORK_INFO``);
    ``max_line_loading_percent``, ``max_trafo_loading_percent``: %, 0 if there are none;
    ``n_voltage_violations``: buses outside ``[v_min, v_max]``; ``n_line_violations``: lines
    and transformers above ``max_loading_percent``; ``losses_kw``; ``converged`` (float 0/1).
    Non-converged environments report NaN extremes and losses.
    """
    vm = result.vm_pu
    valid = ~torch.isnan(vm)
    batch = vm.shape[0]
    nan = torch.full((batch,), math.nan, dtype=vm.dtype, device=vm.device)
    vm_min = torch.where(valid, vm, math.inf).amin(dim=1)
    vm_max = torch.where(valid, vm, -math.inf).amax(dim=1)
    converged = result.converged.to(vm.device)

    def max_or_zero(loading: Tensor) -> Tensor:
        if loading.shape[1] == 0:
            return torch.zeros(batch, dtype=vm.dtype, device=vm.device)
        return torch.nan_to_num(loading, nan=0.0).amax(dim=1)

    branch_loading = torch.nan_to_num(result.branch_loading_percent, nan=0.0)
    return {
        "v_min_pu": torch.where(converged, vm_min, nan),
        "v_max_pu": torch.where(converged, vm_max, nan),
        "max_line_loading_percent": torch.where(
            converged, max_or_zero(result.line_loading_percent), nan),
        "max_trafo_loading_percent": torch.where(
            converged, max_or_zero(result.trafo_loading_percent), nan),
        "n_voltage_violations": (valid & ((vm < v_min) | (vm > v_max))).sum(dim=1).to(vm.dtype),
        "n_line_violations": (branch_loading > max_loading_percent).sum(dim=1).to(vm.dtype),
        "losses_kw": result.losses_kw,
        "converged": converged.to(vm.dtype),
    }
