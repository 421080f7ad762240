"""Perfect-foresight centralised optimum of a prosumer community (the "oracle").

One linear program over every agent and every step of the horizon, solved with HiGHS
through :func:`scipy.optimize.linprog` on sparse constraint matrices. It knows the whole
day in advance and controls every battery, so its cost is a lower bound on the community
cost that any market mechanism or policy can reach on the same day in the environment.

Environment semantics the LP reproduces (all energies in kWh per step of ``dt_h`` hours):

- net position of agent ``i`` at step ``t``:
  ``net[t, i] = load[t, i] - pv[t, i] + curtailment[t, i] + charge[t, i] - discharge[t, i]``
  (positive = consumption from the grid / community);
- state of charge: ``soc[t + 1] = soc[t] + charge_efficiency * charge[t]
  - discharge[t] / discharge_efficiency``, with ``soc_min * capacity <= soc[t + 1] <=
  soc_max * capacity``, ``charge <= max_charge_kw * dt_h``, ``discharge <= max_discharge_kw
  * dt_h``; the initial SoC is given and the terminal SoC is free, with the energy taken
  from the cells charged at ``terminal_price`` and the energy added credited at
  ``terminal_credit_price <= terminal_price`` (0 by default: left-over energy has no value);
- settlement with the grid: imports pay ``retail_price``, exports earn ``feed_in_price``.
  With ``p2p=True`` energy moves freely inside the community (internal payments cancel
  out) and only the community's net position is settled; with ``p2p=False`` each agent
  settles its own net position, which decomposes the LP into one independent problem per
  household (each plans its own battery with perfect foresight, no sharing);
- optional shared battery (:class:`SharedBattery`, ``envs.config.StorageConfig``), p2p only:
  one more battery behind no agent's meter, with AC flows ``charge_s[t]``,
  ``discharge_s[t]`` in ``[0, power_kw * dt_h]``, the same SoC dynamics, bounds and terminal
  value as a home battery and its own degradation cost; the community settles ``sum_i
  net[t, i] + charge_s[t] - discharge_s[t]`` with the grid, and with a network the
  battery's kW is the last injection column (at its own bus);
- community cost = ``sum_t (retail * import - feed_in * export) + degradation_cost *
  (charge + discharge) + sum_i (terminal_price * max(soc[0, i] - soc[T, i], 0) -
  terminal_credit_price * max(soc[T, i] - soc[0, i], 0))``, the last term the environment's
  terminal value (``episode.terminal_value``: a charge for energy taken from the batteries
  over the horizon, a smaller credit for energy added), plus the shared battery's
  degradation and terminal value, priced alike.

Charging and discharging in the same step is not forbidden, which makes the LP a
relaxation of any environment that takes one net battery action per step: the bound stays
valid. With ``retail >= feed_in`` and ``degradation_cost >= 0`` the optimum never does it
except to burn surplus under negative feed-in prices.

LP formulation (every block is ``[T, N]`` unless stated):

=============  =========================================================================
variables      ``charge``, ``discharge`` in ``[0, max_*_kw * dt_h]`` (0 without a
               battery or with ``use_battery=False``); ``soc`` after each step in
               ``[soc_min, soc_max] * capacity``; ``curtailment`` in ``[0, pv]`` (or
               fixed to 0); free ``net``; ``grid_import``, ``grid_export >= 0``
               (``[T]`` with p2p, ``[T, N]`` without). With a network also free
               ``group_power [T, G]`` (kW injected by each group of agents sharing a
               sensitivity column, i.e. a bus) and one slack ``>= 0`` per network row.
               ``soc_deficit``, ``soc_surplus >= 0`` ``[N]``: final SoC below and above
               the initial one. With a shared battery also ``charge_s``,
               ``discharge_s`` ``[T]`` in ``[0, power_kw * dt_h]``, ``soc_s`` ``[T]`` in
               ``[soc_min, soc_max] * capacity``, ``soc_deficit_s``, ``soc_surplus_s >= 0``
               ``[1]``.
equalities     SoC dynamics (home and shared batteries); ``net - charge + discharge -
               curtailment = load - pv``; balance ``import - export = sum_i net`` (p2p;
               ``+ charge_s - discharge_s`` with a shared battery) or ``= net`` (per agent);
               ``group_power[t, g] = sum_(i in g) net[t, i] / dt_h`` (``+ (charge_s -
               discharge_s) / dt_h`` in the shared battery's group);
               ``soc[T - 1] + soc_deficit - soc_surplus = initial SoC`` (and likewise for
               the shared battery).
inequalities   network only: ``v0[t, b] + dv_dp[b] @ p_kw[t] <= v_max`` and ``>= v_min``,
               ``-max <= line_loading0[t, l] + dline_dp[l] @ p_kw[t] <= max``, each
               ``- slack``; ``p_kw[t]`` is ``[N]``, or ``[N + 1]`` with the shared
               battery's kW last; rows that the variable bounds already guarantee are
               dropped.
objective      ``retail . import - feed_in . export + degradation . (charge +
               discharge) + terminal_price . soc_deficit - terminal_credit_price .
               soc_surplus`` (+ the same terms of the shared battery with its own
               degradation cost) (+ ``violation_penalty * slack`` when the limits cannot
               be met).
=============  =========================================================================

The terminal value ``p * max(d, 0) - c * max(-d, 0)`` of a SoC change ``d = initial -
final`` is convex in the final SoC when ``c <= p``, which is what makes the two-variable
split exact: a schedule with both ``soc_deficit`` and ``soc_surplus`` positive costs more
than the same schedule with the smaller of them subtracted from both (or the same when ``c =
p``), so the optimum pays exactly the environment's terminal value.

The network constraints are a first-order (sensitivity) model of the feeder around zero
agent injection, as given by the linearised DistFlow equations of Baran and Wu, "Network
reconfiguration in distribution systems for loss reduction and load balancing", IEEE
Trans. Power Delivery 4(2), 1989, or by the power-flow Jacobian. With a network the LP is
first solved with hard limits. When they cannot be met even with curtailment and batteries
(for instance undervoltage caused by load alone), it is solved again with the slacks
opened at ``NetworkLinearisation.violation_penalty`` per unit of violation, and the total
violation is reported in :attr:`OracleResult.network_slack` instead of failing. The
reported ``cost`` never includes the penalty.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linprog

__all__ = ["BatteryFleet", "NetworkLinearisation", "OracleResult", "SharedBattery",
           "solve_oracle"]

_SOC_BOUND_TOLERANCE_KWH = 1e-9
"""Tolerance on the initial SoC lying inside [soc_min, soc_max] * capacity (kWh)."""


# ---------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class BatteryFleet:
    """Battery parameters of all ``N`` agents.

    Every field accepts a scalar or an array of shape ``[N]``; ``__post_init__`` stores
    them as float64 arrays of shape ``[N]`` (``N = len(capacity_kwh)``) and rejects
    invalid values with a ``ValueError``.
    """

    capacity_kwh: np.ndarray
    """Usable energy capacity (kWh), shape ``[N]``; 0 means the agent has no battery."""
    max_charge_kw: np.ndarray | float
    """Maximum charging power at the AC side (kW)."""
    max_discharge_kw: np.ndarray | float
    """Maximum discharging power at the AC side (kW)."""
    charge_efficiency: np.ndarray | float = 0.95
    """Fraction of AC charging energy stored, in (0, 1]."""
    discharge_efficiency: np.ndarray | float = 0.95
    """Fraction of stored energy delivered at the AC side when discharging, in (0, 1]."""
    soc_min: np.ndarray | float = 0.0
    """Lowest allowed SoC as a fraction of capacity, in [0, 1]."""
    soc_max: np.ndarray | float = 1.0
    """Highest allowed SoC as a fraction of capacity, in [0, 1]."""
    initial_soc_kwh: np.ndarray | float = 0.0
    """SoC at the start of the horizon (kWh); must lie within the SoC bounds."""
    degradation_cost: np.ndarray | float = 0.0
    """Wear cost per kWh of AC throughput, throughput = charge + discharge (currency/kWh)."""

    def __post_init__(self) -> None:
        capacity = np.asarray(self.capacity_kwh, dtype=np.float64)
        if capacity.ndim != 1:
            raise ValueError(f"BatteryFleet.capacity_kwh must have shape [N], got {capacity.shape}")
        n_agents = capacity.shape[0]
        for field in dataclasses.fields(self):
            value = np.asarray(getattr(self, field.name), dtype=np.float64)
            if value.ndim > 1 or (value.ndim == 1 and value.shape[0] != n_agents):
                raise ValueError(
                    f"BatteryFleet.{field.name} must be a scalar or have shape [{n_agents}], "
                    f"got {value.shape}"
                )
            if not np.all(np.isfinite(value)):
                raise ValueError(f"BatteryFleet.{field.name} contains NaN or inf")
            # Frozen dataclass: normalise fields in place once, at construction.
            object.__setattr__(self, field.name, np.broadcast_to(value, (n_agents,)).copy())

        for name in ("capacity_kwh", "max_charge_kw", "max_discharge_kw", "degradation_cost"):
            if np.any(getattr(self, name) < 0):
                raise ValueError(f"BatteryFleet.{name} must be >= 0")
        for name in ("charge_efficiency", "discharge_efficiency"):
            value = getattr(self, name)
            if np.any(value <= 0) or np.any(value > 1):
                raise ValueError(f"BatteryFleet.{name} must lie in (0, 1], got {value}")
        for name in ("soc_min", "soc_max"):
            value = getattr(self, name)
            if np.any(value < 0) or np.any(value > 1):
                raise ValueError(f"BatteryFleet.{name} must lie in [0, 1], got {value}")
        if np.any(self.soc_min > self.soc_max):
            raise ValueError("BatteryFleet.soc_min must be <= soc_max for every agent")
        low, high = self.soc_bounds_kwh()
        outside = (self.initial_soc_kwh < low - _SOC_BOUND_TOLERANCE_KWH) | (
            self.initial_soc_kwh > high + _SOC_BOUND_TOLERANCE_KWH
        )
        if np.any(outside):
            agents = np.flatnonzero(outside).tolist()
            raise ValueError(
                f"BatteryFleet.initial_soc_kwh outside [soc_min, soc_max] * capacity "
                f"for agents {agents}"
            )

    @property
    def n_agents(self) -> int:
        """Number of agents ``N``."""
        return int(self.capacity_kwh.shape[0])

    def soc_bounds_kwh(self) -> tuple[np.ndarray, np.ndarray]:
        """Lowest and highest allowed SoC (kWh), each of shape ``[N]``."""
        return self.soc_min * self.capacity_kwh, self.soc_max * self.capacity_kwh

    def idle(self) -> BatteryFleet:
        """The same fleet with zero power limits: batteries hold their initial SoC."""
        return dataclasses.replace(self, max_charge_kw=0.0, max_discharge_kw=0.0)

    @classmethod
    def none(cls, n_agents: int) -> BatteryFleet:
        """A community of ``n_agents`` agents without any battery."""
        return cls(capacity_kwh=np.zeros(n_agents), max_charge_kw=0.0, max_discharge_kw=0.0)


@dataclass(frozen=True)
class SharedBattery:
    """One battery the whole community shares (``envs.config.StorageConfig``), modelled as a
    home battery is, but not behind any agent's meter: its AC flow enters the community's
    balance (and, with a network, the power flow at its own bus). Scalars only; invalid
    values raise a ``ValueError``."""

    capacity_kwh: float
    """Cell capacity (kWh), > 0; the SoC stays within ``[soc_min, soc_max]`` of it."""
    power_kw: float
    """Charge and discharge power limit at the AC side (kW), >= 0."""
    charge_efficiency: float = 0.95
    """Fraction of AC charging energy stored, in (0, 1]."""
    discharge_efficiency: float = 0.95
    """Fraction of stored energy delivered at the AC side when discharging, in (0, 1]."""
    soc_min: float = 0.0
    """Lowest allowed SoC as a fraction of capacity, in [0, 1]."""
    soc_max: float = 1.0
    """Highest allowed SoC as a fraction of capacity, in [soc_min, 1]."""
    initial_soc_kwh: float = 0.0
    """SoC at the start of the horizon (kWh); must lie within the SoC bounds."""
    degradation_cost: float = 0.0
    """Wear cost per kWh of AC throughput, charge + discharge (currency/kWh), >= 0."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or np.ndim(value) != 0:
                raise ValueError(f"SharedBattery.{field.name} must be a number, got {value!r}")
            value = float(value)
            if not np.isfinite(value):
                raise ValueError(f"SharedBattery.{field.name} must be finite, got {value}")
            object.__setattr__(self, field.name, value)
        if self.capacity_kwh <= 0:
            raise ValueError(f"SharedBattery.capacity_kwh must be > 0, got {self.capacity_kwh}")
        for name in ("power_kw", "degradation_cost"):
            if getattr(self, name) < 0:
                raise ValueError(f"SharedBattery.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("charge_efficiency", "discharge_efficiency"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"SharedBattery.{name} must lie in (0, 1], got {value}")
        for name in ("soc_min", "soc_max"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"SharedBattery.{name} must lie in [0, 1], got {value}")
        if self.soc_min > self.soc_max:
            raise ValueError(f"SharedBattery.soc_min ({self.soc_min}) must be <= soc_max "
                             f"({self.soc_max})")
        low, high = self.soc_bounds_kwh()
        if not (low - _SOC_BOUND_TOLERANCE_KWH <= self.initial_soc_kwh
                <= high + _SOC_BOUND_TOLERANCE_KWH):
            raise ValueError(f"SharedBattery.initial_soc_kwh ({self.initial_soc_kwh}) outside "
                             f"[soc_min, soc_max] * capacity = [{low}, {high}]")

    def soc_bounds_kwh(self) -> tuple[float, float]:
        """Lowest and highest allowed SoC (kWh)."""
        return self.soc_min * self.capacity_kwh, self.soc_max * self.capacity_kwh


@dataclass(frozen=True, eq=False)
class NetworkLinearisation:
    """Linear sensitivity model of the feeder around zero agent injection.

    Agent net consumption in kW is ``p_kw[t] = net_kwh[t] / dt_h`` (shape ``[N]``); with a
    :class:`SharedBattery` the sensitivities have ``N + 1`` columns, the last one the shared
    battery's bus, and ``p_kw[t]`` has the battery's AC power ``(charge - discharge) / dt_h``
    as its last entry. Then

    - bus voltages (p.u.): ``v[t] = v0_pu[t] + dv_dp @ p_kw[t]``, kept within
      ``[v_min, v_max]``;
    - line loadings (percent of rating, signed: positive in the reference direction of
      ``dline_dp``): ``loading[t] = line_loading0 + dline_dp @ p_kw[t]``, kept within
      ``[-line_max_percent, line_max_percent]``, i.e. the magnitude of the flow is limited
      by two linear inequalities.
    """

    v0_pu: np.ndarray
    """Bus voltages at zero agent injection (p.u.), shape ``[T, n_bus]`` or ``[n_bus]``."""
    dv_dp: np.ndarray
    """Voltage change per kW of agent net consumption (p.u./kW), shape ``[n_bus, N]`` (``[n_bus,
    N + 1]`` with a shared battery); typically negative (consumption lowers the voltage)."""
    v_min: np.ndarray | float = 0.95
    """Lowest allowed voltage (p.u.), scalar or ``[n_bus]``."""
    v_max: np.ndarray | float = 1.05
    """Highest allowed voltage (p.u.), scalar or ``[n_bus]``."""
    line_loading0: np.ndarray | None = None
    """Signed line loading at zero agent injection (percent), shape ``[T, n_line]`` or
    ``[n_line]``; zeros when omitted."""
    dline_dp: np.ndarray | None = None
    """Line loading change per kW of agent net consumption (percent/kW), shape
    ``[n_line, N]`` (``[n_line, N + 1]`` with a shared battery); no line constraints when
    omitted."""
    line_max_percent: np.ndarray | float = 100.0
    """Largest allowed loading magnitude (percent), scalar or ``[n_line]``."""
    violation_penalty: float = 1e4
    """Cost of violating the limits when they cannot all be met (currency per p.u. of
    voltage violation per step, and per 100 percent of line overloading per step)."""


@dataclass(frozen=True, eq=False)
class OracleResult:
    """Optimal community schedule over the horizon (``T`` steps, ``N`` agents)."""

    cost: float
    """Total community cost: grid bill plus battery degradation plus terminal value, of the
    home batteries and of the shared battery (currency)."""
    grid_import_kwh: np.ndarray
    """Energy bought from the grid by the community, summed over agents (kWh), ``[T]``."""
    grid_export_kwh: np.ndarray
    """Energy sold to the grid by the community, summed over agents (kWh), ``[T]``."""
    charge_kwh: np.ndarray
    """Battery charging energy at the AC side (kWh), ``[T, N]``."""
    discharge_kwh: np.ndarray
    """Battery discharging energy at the AC side (kWh), ``[T, N]``."""
    soc_kwh: np.ndarray
    """State of charge (kWh), ``[T + 1, N]``; row 0 is the initial SoC."""
    net_kwh: np.ndarray
    """Agent net position ``load - pv + curtailment + charge - discharge`` (kWh),
    ``[T, N]``."""
    curtailment_kwh: np.ndarray
    """PV energy curtailed (kWh), ``[T, N]``; zero unless curtailment is allowed."""
    degradation_cost: float
    """Home batteries' degradation part of ``cost`` (currency); the shared battery's is
    :attr:`shared_degradation_cost`."""
    terminal_value_cost: float
    """Terminal-value part of ``cost``, the sum of :attr:`agent_terminal_value_cost`
    (currency; < 0 when the batteries end fuller than they started)."""
    agent_terminal_value_cost: np.ndarray
    """Each agent's terminal value, ``[N]`` currency: ``terminal_price * max(soc[0, i] -
    soc[T, i], 0) - terminal_credit_price * max(soc[T, i] - soc[0, i], 0)``."""
    status: str
    """HiGHS's message for the final solve."""
    network_slack: float = 0.0
    """Total network violation when the limits cannot all be met: voltage violation summed
    over buses and steps (p.u.) plus line overloading summed over lines and steps (percent
    / 100); 0 when the limits are met or no network is given."""
    voltage_pu: np.ndarray | None = None
    """Linearised bus voltages (p.u.), ``[T, n_bus]``; None without a network."""
    line_loading_percent: np.ndarray | None = None
    """Linearised signed line loadings (percent), ``[T, n_line]``; None without lines."""
    shared_charge_kwh: np.ndarray | None = None
    """Shared battery's charging energy at the AC side (kWh), ``[T]``; None without one."""
    shared_discharge_kwh: np.ndarray | None = None
    """Shared battery's discharging energy at the AC side (kWh), ``[T]``; None without one."""
    shared_soc_kwh: np.ndarray | None = None
    """Shared battery's SoC (kWh), ``[T + 1]``, row 0 the initial SoC; None without one."""
    shared_degradation_cost: float = 0.0
    """Shared battery's degradation part of ``cost`` (currency); 0 without one."""
    shared_terminal_value_cost: float = 0.0
    """Shared battery's terminal value, part of ``cost`` (currency): ``terminal_price *
    max(initial - final SoC, 0) - terminal_credit_price * max(final - initial SoC, 0)``; 0
    without one."""


# ---------------------------------------------------------------------------------------
# LP assembly
# ---------------------------------------------------------------------------------------


class _VariableLayout:
    """Column indices of the LP variables, one contiguous block per variable kind."""

    def __init__(self) -> None:
        self.n_columns = 0

    def add(self, *shape: int) -> np.ndarray:
        """Reserve a block of columns and return their indices with the given shape."""
        size = int(np.prod(shape))
        indices = np.arange(self.n_columns, self.n_columns + size).reshape(shape)
        self.n_columns += size
        return indices


class _SparseRows:
    """Accumulates rows of a sparse constraint matrix ``A x (<=|=) b`` in COO form."""

    def __init__(self) -> None:
        self.n_rows = 0
        self._rows: list[np.ndarray] = []
        self._cols: list[np.ndarray] = []
        self._vals: list[np.ndarray] = []
        self._rhs: list[np.ndarray] = []

    def add_rows(self, rhs: np.ndarray) -> np.ndarray:
        """Append rows with right-hand side ``rhs``; returns their indices, shaped as rhs."""
        rhs = np.asarray(rhs, dtype=np.float64)
        indices = np.arange(self.n_rows, self.n_rows + rhs.size).reshape(rhs.shape)
        self.n_rows += rhs.size
        self._rhs.append(rhs.ravel())
        return indices

    def add_terms(self, rows: np.ndarray, cols: np.ndarray, values: np.ndarray | float) -> None:
        """Add ``values`` at ``(rows, cols)`` (broadcast together)."""
        rows, cols, values = np.broadcast_arrays(rows, cols, np.asarray(values, np.float64))
        keep = values != 0.0
        self._rows.append(rows[keep])
        self._cols.append(cols[keep])
        self._vals.append(values[keep])

    def build(self, n_columns: int) -> tuple[sp.csr_array | None, np.ndarray | None]:
        """The matrix ``[n_rows, n_columns]`` and right-hand side ``[n_rows]``."""
        if self.n_rows == 0:
            return None, None
        matrix = sp.coo_array(
            (np.concatenate(self._vals), (np.concatenate(self._rows), np.concatenate(self._cols))),
            shape=(self.n_rows, n_columns),
        ).tocsr()
        return matrix, np.concatenate(self._rhs)


def _as_float_array(name: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Float64 copy of ``value`` with exactly ``shape``, finite, else ``ValueError``."""
    array = np.asarray(value, dtype=np.float64)
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(array.shape)}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or inf")
    return array


def _broadcast_float_array(
    name: str, value: np.ndarray | float, shapes: tuple[tuple[int, ...], ...]
) -> np.ndarray:
    """``value`` as float64, accepted in any of ``shapes`` (or as a scalar), broadcast to the
    first (the full) shape."""
    array = np.asarray(value, dtype=np.float64)
    if array.ndim > 0 and array.shape not in shapes:
        accepted = " or ".join(str(list(shape)) for shape in shapes)
        raise ValueError(f"{name} must be a scalar or have shape {accepted}, got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or inf")
    return np.broadcast_to(array, shapes[0]).copy()


@dataclass(frozen=True)
class _NetworkArrays:
    """Validated network arrays, broadcast to full shapes."""

    v0_pu: np.ndarray  # [T, n_bus]
    dv_dp: np.ndarray  # [n_bus, N] (N + 1 with a shared battery)
    v_min: np.ndarray  # [n_bus]
    v_max: np.ndarray  # [n_bus]
    line_loading0: np.ndarray  # [T, n_line]
    dline_dp: np.ndarray  # [n_line, N] (N + 1 with a shared battery)
    line_max_percent: np.ndarray  # [n_line]


def _validate_network(network: NetworkLinearisation, n_steps: int, n_agents: int) -> _NetworkArrays:
    """Check ``network`` against ``T = n_steps`` and ``n_agents`` injection columns (``N``, or
    ``N + 1`` with a shared battery); broadcast its arrays."""
    dv_dp = np.asarray(network.dv_dp, dtype=np.float64)
    if dv_dp.ndim != 2 or dv_dp.shape[1] != n_agents:
        raise ValueError(f"network.dv_dp must have shape [n_bus, {n_agents}], got {dv_dp.shape}")
    dv_dp = _as_float_array("network.dv_dp", dv_dp, dv_dp.shape)
    n_bus = dv_dp.shape[0]
    v0 = _broadcast_float_array("network.v0_pu", network.v0_pu, ((n_steps, n_bus), (n_bus,)))
    v_min = _broadcast_float_array("network.v_min", network.v_min, ((n_bus,),))
    v_max = _broadcast_float_array("network.v_max", network.v_max, ((n_bus,),))
    if np.any(v_min > v_max):
        raise ValueError("network.v_min must be <= network.v_max")

    if network.dline_dp is None:
        if network.line_loading0 is not None:
            raise ValueError("network.line_loading0 given without network.dline_dp")
        dline_dp = np.zeros((0, n_agents))
    else:
        dline_dp = np.asarray(network.dline_dp, dtype=np.float64)
        if dline_dp.ndim != 2 or dline_dp.shape[1] != n_agents:
            raise ValueError(
                f"network.dline_dp must have shape [n_line, {n_agents}], got {dline_dp.shape}"
            )
        dline_dp = _as_float_array("network.dline_dp", dline_dp, dline_dp.shape)
    n_line = dline_dp.shape[0]
    loading0 = 0.0 if network.line_loading0 is None else network.line_loading0
    line_loading0 = _broadcast_float_array(
        "network.line_loading0", loading0, ((n_steps, n_line), (n_line,))
    )
    line_max = _broadcast_float_array(
        "network.line_max_percent", network.line_max_percent, ((n_line,),)
    )
    if np.any(line_max < 0):
        raise ValueError("network.line_max_percent must be >= 0")
    if not (np.isfinite(network.violation_penalty) and network.violation_penalty > 0):
        raise ValueError(
            f"network.violation_penalty must be a positive number, got {network.violation_penalty}"
        )
    return _NetworkArrays(v0, dv_dp, v_min, v_max, line_loading0, dline_dp, line_max)


_VOLTAGE_SLACK_WEIGHT = 1.0
"""Weight of one p.u. of voltage violation in the total network violation."""

_LINE_SLACK_WEIGHT = 0.01
"""Weight of one percent of line overloading in the total network violation (so that
the total counts line violations as fractions of the rating)."""


@dataclass(frozen=True)
class _LimitRows:
    """Network rows ``sign * sensitivity[component] @ p_kw[step] <= rhs``, ``[R]`` each.

    They stand for ``lower <= base + sensitivity @ p_kw <= upper`` (``sign = +1`` for the
    upper limit, ``-1`` for the lower one), restricted to the rows that can bind.
    """

    step: np.ndarray
    """Time step of each row, ``[R]``."""
    component: np.ndarray
    """Bus or line of each row, ``[R]``."""
    sign: np.ndarray
    """+1 for an upper limit, -1 for a lower limit, ``[R]``."""
    rhs: np.ndarray
    """Right-hand side, ``upper - base`` or ``base - lower``, ``[R]``."""
    sensitivity: np.ndarray
    """The full sensitivity matrix ``[n_component, N]`` (per kW)."""
    slack_weight: float
    """Weight of this row's slack in the total network violation."""
    unavoidable: bool
    """Whether some row is violated at every point of the box: the limits cannot be met."""


def _limit_rows_that_can_bind(
    base: np.ndarray,
    sensitivity: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    power_low_kw: np.ndarray,
    power_high_kw: np.ndarray,
    *,
    slack_weight: float,
) -> _LimitRows:
    """Rows of ``lower <= base[t] + sensitivity @ p_kw[t] <= upper`` that the variable bounds
    alone do not already guarantee.

    Interval arithmetic over the box ``power_low_kw <= p_kw <= power_high_kw`` (both
    ``[T, N]``) gives the extreme values of each row; a limit that holds at the extreme is
    implied by the bounds and is left out of the LP. This is exact (the feasible set does
    not change) and typically drops most night-time rows, which keeps the dense sensitivity
    rows from dominating the solve time. A limit violated even at the favourable extreme
    can never be met, which flags the problem as infeasible without a solve.

    Args:
        base: Value at zero agent injection, ``[T, n_component]``.
        sensitivity: Change per kW of agent net consumption, ``[n_component, N]``.
        lower: Lowest allowed value, ``[n_component]``.
        upper: Highest allowed value, ``[n_component]``.
        power_low_kw: Lowest possible agent net consumption (kW), ``[T, N]``.
        power_high_kw: Highest possible agent net consumption (kW), ``[T, N]``.
        slack_weight: Weight of the rows' slacks in the total network violation.
    """
    positive, negative = np.maximum(sensitivity, 0.0), np.minimum(sensitivity, 0.0)
    highest = base + power_high_kw @ positive.T + power_low_kw @ negative.T
    lowest = base + power_low_kw @ positive.T + power_high_kw @ negative.T
    upper_steps, upper_components = np.nonzero(highest > upper)
    lower_steps, lower_components = np.nonzero(lowest < lower)
    return _LimitRows(
        step=np.concatenate([upper_steps, lower_steps]),
        component=np.concatenate([upper_components, lower_components]),
        sign=np.concatenate([np.ones(len(upper_steps)), -np.ones(len(lower_steps))]),
        rhs=np.concatenate(
            [
                upper[upper_components] - base[upper_steps, upper_components],
                base[lower_steps, lower_components] - lower[lower_components],
            ]
        ),
        sensitivity=sensitivity,
        slack_weight=slack_weight,
        unavoidable=bool(np.any(lowest > upper) or np.any(highest < lower)),
    )


TIE_BREAK_TOLERANCE = 1e-7
"""Relative cost the tie-break schedule of :func:`solve_oracle` may add to the optimum."""


def _add_soc_dynamics(eq: _SparseRows, soc: np.ndarray, charge: np.ndarray,
                      discharge: np.ndarray, initial_kwh: np.ndarray | float,
                      charge_efficiency: float, discharge_efficiency: float) -> None:
    """SoC rows ``soc[t] - soc[t-1] - eta_c * charge[t] + discharge[t] / eta_d = 0`` for
    variable blocks ``[T, ...]`` (home batteries ``[T, N]``, the shared one ``[T]``), with
    ``soc[-1]``, the constant initial SoC, moved to the right-hand side."""
    rhs = np.zeros(soc.shape)
    rhs[0] = initial_kwh
    rows = eq.add_rows(rhs)
    eq.add_terms(rows, soc, 1.0)
    eq.add_terms(rows[1:], soc[:-1], -1.0)
    eq.add_terms(rows, charge, -charge_efficiency)
    eq.add_terms(rows, discharge, 1.0 / discharge_efficiency)


def solve_oracle(
    load_kwh: np.ndarray,
    pv_kwh: np.ndarray,
    retail_price: np.ndarray,
    feed_in_price: np.ndarray,
    battery: BatteryFleet,
    *,
    p2p: bool = True,
    use_battery: bool = True,
    dt_h: float = 0.25,
    network: NetworkLinearisation | None = None,
    allow_curtailment: bool | None = None,
    terminal_price: float = 0.0,
    terminal_credit_price: float | None = None,
    tie_break: bool = False,
    tie_break_reference_kwh: np.ndarray | None = None,
    shared: SharedBattery | None = None,
) -> OracleResult:
    """Cost-minimal schedule of the whole community with perfect foresight.

    Args:
        load_kwh: Consumption per step (kWh), shape ``[T, N]``, >= 0.
        pv_kwh: PV generation per step (kWh), shape ``[T, N]``, >= 0.
        retail_price: Grid import price (currency/kWh), shape ``[T]``.
        feed_in_price: Grid export price (currency/kWh), shape ``[T]``; may be negative but
            never above ``retail_price`` (the LP would be unbounded).
        battery: Battery parameters of the ``N`` agents.
        p2p: True settles only the community's net position with the grid (free internal
            exchange); False settles each agent's net position separately.
        use_battery: False keeps every battery idle at its initial SoC.
        dt_h: Step length (hours).
        network: Optional linearised voltage/line model; adds network constraints.
        allow_curtailment: Allow PV curtailment ``0 <= curtailment <= pv``. Defaults to
            True with a network and False without one.
        terminal_price: Price of one kWh of cell energy taken over the horizon (currency/kWh,
            finite, >= 0): the cost includes ``terminal_price * max(initial SoC - final SoC,
            0)`` for each agent, as the environment's terminal value
            (``BatchedP2PEnv.terminal_price``). 0 (with the credit) leaves the final SoC
            unvalued.
        terminal_credit_price: Price credited per kWh of cell energy added over the horizon
            (currency/kWh, finite, in ``[0, terminal_price]``): the cost includes ``-
            terminal_credit_price * max(final SoC - initial SoC, 0)`` for each agent
            (``BatchedP2PEnv.terminal_credit_price``). None: ``terminal_price`` (a symmetric
            valuation).
        tie_break: Among the optimal schedules (the LP is degenerate: under a flat tariff
            which hour of the evening a battery covers, and which home's battery covers it,
            cost the same), pick the *greedy* one: a second LP keeps the cost within
            ``TIE_BREAK_TOLERANCE`` (relative) of the optimum and minimises ``sum_t w_t
            (import_t + export_t + 0.1 sum_i |net_t,i|)`` with ``w_t = (T - t) / T``: the
            community exchanges with the grid as early as it can be avoided, and each battery
            serves its own home before the others. A deterministic, reactive-looking optimum
            that a policy can imitate (``agents.imitation``); it costs one more LP.
        tie_break_reference_kwh: With ``tie_break``, pick instead the optimal schedule
            nearest to this battery schedule ``[T, N]`` (AC kWh into each battery per step,
            < 0 discharged; e.g. what a rule does on the day): the second LP minimises
            ``sum |charge - discharge - reference|`` (plus 1 % of the greedy objective for
            the ties left), so that the optimum differs from the rule only where that pays.
        shared: Optional battery shared by the whole community (:class:`SharedBattery`),
            planned with the homes' batteries: its AC flow ``charge_s - discharge_s`` enters
            the community balance, its degradation and terminal value (with the same
            ``terminal_price`` / ``terminal_credit_price``) the cost, and with ``network`` its
            kW the last sensitivity column (``N + 1`` columns needed). Only with ``p2p=True``
            (the community settles its net position); ``use_battery=False`` keeps it idle too.

    Returns:
        The optimal schedule; see :class:`OracleResult`.

    Raises:
        ValueError: Invalid shapes or values, ``retail_price < feed_in_price``, or a
            ``shared`` battery with ``p2p=False`` or with a network of ``N`` columns.
        RuntimeError: HiGHS did not reach an optimal solution (message included).
    """
    load_kwh = np.asarray(load_kwh, dtype=np.float64)
    if load_kwh.ndim != 2:
        raise ValueError(f"load_kwh must have shape [T, N], got {list(load_kwh.shape)}")
    n_steps, n_agents = load_kwh.shape
    if n_steps == 0 or n_agents == 0:
        raise ValueError(f"load_kwh must have T >= 1 and N >= 1, got {list(load_kwh.shape)}")
    load_kwh = _as_float_array("load_kwh", load_kwh, (n_steps, n_agents))
    pv_kwh = _as_float_array("pv_kwh", pv_kwh, (n_steps, n_agents))
    retail_price = _as_float_array("retail_price", retail_price, (n_steps,))
    feed_in_price = _as_float_array("feed_in_price", feed_in_price, (n_steps,))
    if np.any(load_kwh < 0):
        raise ValueError("load_kwh must be >= 0")
    if np.any(pv_kwh < 0):
        raise ValueError("pv_kwh must be >= 0")
    if np.any(retail_price < feed_in_price):
        steps = np.flatnonzero(retail_price < feed_in_price).tolist()
        raise ValueError(
            f"retail_price < feed_in_price at steps {steps}: importing and exporting at "
            "once would earn unbounded money"
        )
    if not isinstance(battery, BatteryFleet):
        raise ValueError(f"battery must be a BatteryFleet, got {type(battery).__name__}")
    if battery.n_agents != n_agents:
        raise ValueError(f"battery has {battery.n_agents} agents, load_kwh has {n_agents}")
    if not (np.isfinite(dt_h) and dt_h > 0):
        raise ValueError(f"dt_h must be a positive number of hours, got {dt_h}")
    if not (np.isfinite(terminal_price) and terminal_price >= 0):
        raise ValueError(f"terminal_price must be a finite price >= 0 currency/kWh, got "
                         f"{terminal_price}")
    if terminal_credit_price is None:
        terminal_credit_price = terminal_price
    if not (np.isfinite(terminal_credit_price) and 0 <= terminal_credit_price <= terminal_price):
        raise ValueError(f"terminal_credit_price must be a finite price in [0, terminal_price "
                         f"= {terminal_price}] currency/kWh (a convex terminal value), got "
                         f"{terminal_credit_price}")
    if shared is not None:
        if not isinstance(shared, SharedBattery):
            raise ValueError(f"shared must be a SharedBattery, got {type(shared).__name__}")
        if not p2p:
            raise ValueError("a shared battery (shared=SharedBattery) needs p2p=True: only a "
                             "community that settles its net position can share it")
    # Injection columns of the network model: the agents, then the shared battery.
    n_columns = n_agents + (shared is not None)
    if network is not None and shared is not None:
        columns = np.shape(network.dv_dp)[-1] if np.ndim(network.dv_dp) == 2 else None
        if columns == n_agents:
            raise ValueError(f"with a shared battery the network's sensitivities need N + 1 = "
                             f"{n_columns} columns (the last one the battery's bus), got "
                             f"{n_agents}")
    net_arrays = None if network is None else _validate_network(network, n_steps, n_columns)
    if allow_curtailment is None:
        allow_curtailment = network is not None

    # --- bounds of the per-agent blocks (kWh), [T, N] -----------------------------------
    battery_on = (battery.capacity_kwh > 0) & use_battery
    charge_max = np.broadcast_to(
        np.where(battery_on, battery.max_charge_kw * dt_h, 0.0), (n_steps, n_agents)
    )
    discharge_max = np.broadcast_to(
        np.where(battery_on, battery.max_discharge_kw * dt_h, 0.0), (n_steps, n_agents)
    )
    curtailment_max = pv_kwh if allow_curtailment else np.zeros_like(pv_kwh)
    shared_on = shared is not None and use_battery and shared.power_kw > 0
    shared_max = shared.power_kw * dt_h if shared_on else 0.0  # kWh per step, both ways
    limit_rows: list[_LimitRows] = []
    if net_arrays is not None:
        # Range of the agents' net consumption (kW) allowed by the variable bounds.
        power_low_kw = (load_kwh - pv_kwh - discharge_max) / dt_h
        power_high_kw = (load_kwh - pv_kwh + curtailment_max + charge_max) / dt_h
        if shared is not None:  # the battery's column: -P .. P (0 when idle)
            shared_kw = np.full((n_steps, 1), shared_max / dt_h)
            power_low_kw = np.hstack([power_low_kw, -shared_kw])
            power_high_kw = np.hstack([power_high_kw, shared_kw])
        limit_rows = [
            _limit_rows_that_can_bind(
                net_arrays.v0_pu,
                net_arrays.dv_dp,
                net_arrays.v_min,
                net_arrays.v_max,
                power_low_kw,
                power_high_kw,
                slack_weight=_VOLTAGE_SLACK_WEIGHT,
            ),
            _limit_rows_that_can_bind(
                net_arrays.line_loading0,
                net_arrays.dline_dp,
                -net_arrays.line_max_percent,
                net_arrays.line_max_percent,
                power_low_kw,
                power_high_kw,
                slack_weight=_LINE_SLACK_WEIGHT,
            ),
        ]

    # --- variables -----------------------------------------------------------------------
    layout = _VariableLayout()
    charge = layout.add(n_steps, n_agents)
    discharge = layout.add(n_steps, n_agents)
    soc = layout.add(n_steps, n_agents)  # soc[t] is the SoC after step t, i.e. soc_kwh[t + 1]
    curtailment = layout.add(n_steps, n_agents)
    net = layout.add(n_steps, n_agents)
    settlement_shape = (n_steps,) if p2p else (n_steps, n_agents)
    grid_import = layout.add(*settlement_shape)
    grid_export = layout.add(*settlement_shape)
    soc_deficit = layout.add(n_agents)  # final SoC below the initial one (kWh)
    soc_surplus = layout.add(n_agents)  # final SoC above the initial one (kWh)
    if shared is not None:
        shared_charge = layout.add(n_steps)
        shared_discharge = layout.add(n_steps)
        shared_soc = layout.add(n_steps)  # shared_soc[t]: after step t
        shared_deficit = layout.add(1)
        shared_surplus = layout.add(1)
    if tie_break:  # |net| = net_above + net_below, for the second (tie-break) objective
        net_above = layout.add(n_steps, n_agents)
        net_below = layout.add(n_steps, n_agents)
        if tie_break_reference_kwh is not None:  # |battery - reference| likewise
            reference_kwh = _as_float_array("tie_break_reference_kwh", tie_break_reference_kwh,
                                            (n_steps, n_agents))
            off_above = layout.add(n_steps, n_agents)
            off_below = layout.add(n_steps, n_agents)
    elif tie_break_reference_kwh is not None:
        raise ValueError("tie_break_reference_kwh needs tie_break=True")
    slacks = [layout.add(len(rows.rhs)) for rows in limit_rows]  # one per network row
    if net_arrays is not None:
        # Agents with identical sensitivity columns (same bus) share one injection
        # variable, which makes the dense network rows shorter. The shared battery is the
        # last column (it may share a group with the agents at its bus).
        all_sensitivities = np.vstack([net_arrays.dv_dp, net_arrays.dline_dp])
        _, group_first_agent, group_of_agent = np.unique(
            all_sensitivities.T, axis=0, return_index=True, return_inverse=True
        )
        group_of_agent = group_of_agent.ravel()
        group_of_shared = int(group_of_agent[-1]) if shared is not None else None
        group_of_agent = group_of_agent[:n_agents]
        group_power = layout.add(n_steps, len(group_first_agent))

    lower = np.zeros(layout.n_columns)
    upper = np.full(layout.n_columns, np.inf)
    upper[charge] = charge_max
    upper[discharge] = discharge_max
    lower[soc], upper[soc] = battery.soc_bounds_kwh()
    upper[curtailment] = curtailment_max
    lower[net] = -np.inf
    if shared is not None:
        upper[shared_charge] = shared_max
        upper[shared_discharge] = shared_max
        lower[shared_soc], upper[shared_soc] = shared.soc_bounds_kwh()
    if net_arrays is not None:
        lower[group_power] = -np.inf

    # --- equality constraints ----------------------------------------------------------
    eq = _SparseRows()
    _add_soc_dynamics(eq, soc, charge, discharge, battery.initial_soc_kwh,
                      battery.charge_efficiency, battery.discharge_efficiency)
    # Net position: net - charge + discharge - curtailment = load - pv.
    rows = eq.add_rows(load_kwh - pv_kwh)
    eq.add_terms(rows, net, 1.0)
    eq.add_terms(rows, charge, -1.0)
    eq.add_terms(rows, discharge, 1.0)
    eq.add_terms(rows, curtailment, -1.0)
    # Grid balance: import - export = sum_i net (p2p) or net (per agent).
    rows = eq.add_rows(np.zeros(settlement_shape))
    eq.add_terms(rows, grid_import, 1.0)
    eq.add_terms(rows, grid_export, -1.0)
    eq.add_terms(rows[:, None] if p2p else rows, net, -1.0)
    if shared is not None:  # ... + charge_s - discharge_s (p2p only)
        eq.add_terms(rows, shared_charge, -1.0)
        eq.add_terms(rows, shared_discharge, 1.0)
        # Shared SoC dynamics and terminal SoC change, as the home batteries'.
        _add_soc_dynamics(eq, shared_soc, shared_charge, shared_discharge,
                          shared.initial_soc_kwh, shared.charge_efficiency,
                          shared.discharge_efficiency)
        rows = eq.add_rows(np.array([shared.initial_soc_kwh]))
        eq.add_terms(rows, shared_soc[-1:], 1.0)
        eq.add_terms(rows, shared_deficit, 1.0)
        eq.add_terms(rows, shared_surplus, -1.0)
    if tie_break:
        rows = eq.add_rows(np.zeros((n_steps, n_agents)))
        eq.add_terms(rows, net, 1.0)
        eq.add_terms(rows, net_above, -1.0)
        eq.add_terms(rows, net_below, 1.0)
        if tie_break_reference_kwh is not None:
            # charge - discharge - above + below = reference
            rows = eq.add_rows(reference_kwh)
            eq.add_terms(rows, charge, 1.0)
            eq.add_terms(rows, discharge, -1.0)
            eq.add_terms(rows, off_above, -1.0)
            eq.add_terms(rows, off_below, 1.0)
    # Terminal SoC change: soc[T - 1] + deficit - surplus = initial SoC.
    rows = eq.add_rows(battery.initial_soc_kwh)
    eq.add_terms(rows, soc[-1], 1.0)
    eq.add_terms(rows, soc_deficit, 1.0)
    eq.add_terms(rows, soc_surplus, -1.0)
    if net_arrays is not None:
        # Group injection (kW): group_power[t, g] - sum_(i in g) net[t, i] / dt_h = 0.
        rows = eq.add_rows(np.zeros((n_steps, len(group_first_agent))))
        eq.add_terms(rows, group_power, 1.0)
        eq.add_terms(rows[:, group_of_agent], net, -1.0 / dt_h)
        if shared is not None:  # ... - (charge_s - discharge_s) / dt_h in the battery's group
            eq.add_terms(rows[:, group_of_shared], shared_charge, -1.0 / dt_h)
            eq.add_terms(rows[:, group_of_shared], shared_discharge, 1.0 / dt_h)
    a_eq, b_eq = eq.build(layout.n_columns)

    # --- network inequalities: sign * sensitivity[k] @ p_kw[t] - slack <= rhs -----------
    ub = _SparseRows()
    for limits, slack in zip(limit_rows, slacks, strict=True):
        rows = ub.add_rows(limits.rhs)
        group_sensitivity = limits.sensitivity[limits.component][:, group_first_agent]
        ub.add_terms(
            rows[:, None], group_power[limits.step], limits.sign[:, None] * group_sensitivity
        )
        ub.add_terms(rows, slack, -1.0)
    a_ub, b_ub = ub.build(layout.n_columns)

    # --- objective: grid bill plus degradation plus terminal value ------------------------
    cost_vector = np.zeros(layout.n_columns)
    price_shape = (n_steps,) if p2p else (n_steps, 1)
    cost_vector[grid_import] = retail_price.reshape(price_shape)
    cost_vector[grid_export] = -feed_in_price.reshape(price_shape)
    cost_vector[charge] = battery.degradation_cost
    cost_vector[discharge] = battery.degradation_cost
    # Energy taken charged, energy added credited (convex: credit <= charge price).
    cost_vector[soc_deficit] = terminal_price
    cost_vector[soc_surplus] = -terminal_credit_price
    if shared is not None:
        cost_vector[shared_charge] = shared.degradation_cost
        cost_vector[shared_discharge] = shared.degradation_cost
        cost_vector[shared_deficit] = terminal_price
        cost_vector[shared_surplus] = -terminal_credit_price
    slack_weights = np.zeros(layout.n_columns)
    for limits, slack in zip(limit_rows, slacks, strict=True):
        slack_weights[slack] = limits.slack_weight

    def solve(objective: np.ndarray, slack_upper: float, method: str,
              cost_row: np.ndarray | None = None, cost_limit: float = 0.0):
        for slack in slacks:
            upper[slack] = slack_upper
        matrix, rhs = a_ub, b_ub
        if cost_row is not None:  # the tie-break LP: keep the cost at the optimum
            row = sp.csr_array(cost_row[None, :])
            matrix = row if a_ub is None else sp.vstack([a_ub, row], format="csr")
            rhs = np.array([cost_limit]) if b_ub is None else np.append(b_ub, cost_limit)
        return linprog(
            objective,
            A_ub=matrix,
            b_ub=rhs,
            A_eq=a_eq,
            b_eq=b_eq,
            bounds=np.column_stack([lower, upper]),
            method=method,
        )

    # Hard network limits first; open the slacks only when the limits cannot be met. The
    # penalised LP has many active slacks on dense rows, where the interior-point method
    # (with crossover to a vertex) is several times faster than simplex.
    limits_unavoidably_violated = any(limits.unavoidable for limits in limit_rows)
    solution = None
    objective, slack_upper = cost_vector, 0.0
    if not limits_unavoidably_violated:
        solution = solve(cost_vector, slack_upper=0.0, method="highs")
    if a_ub is not None and (solution is None or solution.status != 0):
        hard_message = "skipped" if solution is None else solution.message
        objective = cost_vector + network.violation_penalty * slack_weights
        slack_upper = np.inf
        solution = solve(objective, slack_upper=np.inf, method="highs-ipm")
        if solution.status != 0:
            raise RuntimeError(
                f"HiGHS did not find an optimal schedule with network slack: "
                f"{solution.message} (hard limits: {hard_message})"
            )
    if solution.status != 0:
        raise RuntimeError(f"HiGHS did not find an optimal schedule: {solution.message}")
    if tie_break:
        optimum = float(objective @ solution.x)
        weight = (n_steps - np.arange(n_steps)) / n_steps  # [T], earlier steps weigh more
        secondary = np.zeros(layout.n_columns)
        settlement_weight = weight if p2p else weight[:, None]
        secondary[grid_import] = settlement_weight
        secondary[grid_export] = settlement_weight
        secondary[net_above] = 0.1 * weight[:, None]
        secondary[net_below] = 0.1 * weight[:, None]
        if tie_break_reference_kwh is not None:
            secondary *= 0.01
            secondary[off_above] = 1.0
            secondary[off_below] = 1.0
        limit = optimum + TIE_BREAK_TOLERANCE * max(1.0, abs(optimum))
        greedy = solve(secondary, slack_upper=slack_upper, method="highs", cost_row=objective,
                       cost_limit=limit)
        if greedy.status != 0:
            raise RuntimeError(f"HiGHS did not find the tie-break schedule: {greedy.message}")
        solution = greedy

    x = solution.x
    charge_kwh, discharge_kwh = x[charge], x[discharge]
    import_kwh, export_kwh = x[grid_import], x[grid_export]
    if not p2p:
        import_kwh, export_kwh = import_kwh.sum(axis=1), export_kwh.sum(axis=1)
    net_kwh = x[net]
    shared_arrays: dict[str, np.ndarray | float] = {}
    if shared is not None:
        shared_charge_kwh, shared_discharge_kwh = x[shared_charge], x[shared_discharge]
        shared_taken_kwh = shared.initial_soc_kwh - float(x[shared_soc[-1]])
        shared_arrays = {
            "shared_charge_kwh": shared_charge_kwh,
            "shared_discharge_kwh": shared_discharge_kwh,
            "shared_soc_kwh": np.concatenate([[shared.initial_soc_kwh], x[shared_soc]]),
            "shared_degradation_cost": float(
                shared.degradation_cost * np.sum(shared_charge_kwh + shared_discharge_kwh)),
            "shared_terminal_value_cost": float(
                terminal_price * max(shared_taken_kwh, 0.0)
                - terminal_credit_price * max(-shared_taken_kwh, 0.0)),
        }
    voltage_pu = loading_percent = None
    if net_arrays is not None:
        power_kw = net_kwh / dt_h
        if shared is not None:  # the battery's kW, the last column
            power_kw = np.hstack(
                [power_kw, ((shared_charge_kwh - shared_discharge_kwh) / dt_h)[:, None]])
        voltage_pu = net_arrays.v0_pu + power_kw @ net_arrays.dv_dp.T
        if net_arrays.dline_dp.shape[0] > 0:
            loading_percent = net_arrays.line_loading0 + power_kw @ net_arrays.dline_dp.T
    taken_kwh = battery.initial_soc_kwh - x[soc[-1]]
    agent_terminal = (terminal_price * np.maximum(taken_kwh, 0.0)
                      - terminal_credit_price * np.maximum(-taken_kwh, 0.0))
    return OracleResult(
        cost=float(cost_vector @ x),
        grid_import_kwh=import_kwh,
        grid_export_kwh=export_kwh,
        charge_kwh=charge_kwh,
        discharge_kwh=discharge_kwh,
        soc_kwh=np.vstack([battery.initial_soc_kwh[None, :], x[soc]]),
        net_kwh=net_kwh,
        curtailment_kwh=x[curtailment],
        degradation_cost=float(np.sum(battery.degradation_cost * (charge_kwh + discharge_kwh))),
        terminal_value_cost=float(agent_terminal.sum()),
        agent_terminal_value_cost=agent_terminal,
        status=str(solution.message),
        network_slack=float(slack_weights @ x),
        voltage_pu=voltage_pu,
        line_loading_percent=loading_percent,
        **shared_arrays,
    )
