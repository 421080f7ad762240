"""Fuzz and soak test of peergrid's input boundary and of its step invariants.

Fuzz: random malformed input is thrown at both PettingZoo engines (``numba`` and ``torch``,
the torch one in float64 so that the two step in lockstep) and at the stable-baselines3 VecEnv:
actions of the wrong container, agents, types, shapes and values, bad seeds and reset options,
and config overrides. Each case is built to be rejected, to be accepted, or either (a random
config value). A rejected case must raise one ValueError (``envs.ConfigError`` for a config)
before any state changes, the same error on both engines; an accepted one must give both
engines the same step, which then passes the invariants below.

Soak: random valid steps on both engines (a Z-bus network with P2P fees, continuous actions;
no network, discrete actions) and on the VecEnv, each step checked from its infos
(``envs.info_schema``): finite observations, rewards and infos; the episode clock (day and
step); energy balance (net = load - PV + battery = P2P + grid, P2P sums to 0, volumes); budget
balance (P2P payments sum to the operator's surplus, >= 0); grid payments at the tariffs;
cost = payment + degradation + penalty + fee + terminal value = -reward / reward_scale; the
community sums; posted prices within [feed-in, retail].

    python benchmarks/fuzz.py [--cases 500] [--steps 2000] [--seed 0] [--network zbus]

Prints the failures, then the count of cases (rejected, accepted) and failures per kind; exits
1 on any unexpected exception, disagreement between the engines or broken invariant.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

import envs
from envs.config import MECHANISM_NAMES, SEED_MAX, ConfigError, EnvConfig, to_dict
from envs.info_schema import AGENT_INFO, ENV_INFO, NETWORK_INFO

SMALL = {"community": {"feeder": "synthetic", "n_agents": 4}, "network": {"model": "none"}}
"""The fuzzed community: 4 synthetic prosumers without a network (cheap to build)."""

REJECT, ACCEPT, EITHER = "reject", "accept", "either"
ENGINES = ("numba", "torch")
STEPS_PER_DAY = 96
RTOL_FLOAT64 = 1e-8
"""Tolerance of the invariants, relative to max(1, the largest magnitude compared)."""
RTOL_FLOAT32 = 2e-5


# --------------------------------------------------------------------------------------------
# Bookkeeping
# --------------------------------------------------------------------------------------------


@dataclass
class Report:
    """Counts of cases per kind and the failures found."""

    counts: dict[str, Counter] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def count(self, kind: str, outcome: str, n: int = 1) -> None:
        self.counts.setdefault(kind, Counter())[outcome] += n

    def fail(self, kind: str, label: str, problem: str) -> None:
        self.count(kind, "failures")
        self.failures.append(f"{kind} [{label}]: {problem[:400]}")


@dataclass
class Outcome:
    """What one call did to one environment."""

    error: Exception | None
    result: Any
    warnings: tuple[str, ...]
    state_kept: bool
    """Whether the environment's state after the call equals the state before."""

    @property
    def error_text(self) -> str | None:
        return None if self.error is None else f"{type(self.error).__name__}: {self.error}"


def attempt(call: Callable[[], Any], snapshot: Callable[[], Any]) -> Outcome:
    """Run ``call``, recording its result or exception, its warnings and whether the state
    (``snapshot()``) changed."""
    before = snapshot()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result, error = call(), None
        except Exception as exc:  # classified by judge()
            result, error = None, exc
    return Outcome(error, result, tuple(f"{w.category.__name__}: {w.message}" for w in caught),
                   _equal(snapshot(), before))


def _equal(a: tuple, b: tuple) -> bool:
    """Whether two snapshots (tuples of arrays and of other values) are equal, NaN too."""
    return len(a) == len(b) and all(
        np.array_equal(x, y, equal_nan=x.dtype.kind == "f") if isinstance(x, np.ndarray)
        else x == y for x, y in zip(a, b, strict=True))


def judge(report: Report, kind: str, label: str, expect: str, outcomes: list[Outcome],
          names: tuple[str, ...], error_type: type[Exception] = ValueError) -> bool:
    """Record one case run on one or more environments; True when all accepted it.

    Fails on: an exception other than ``error_type``, a state changed by a rejected call,
    environments that disagree (error type and message, warnings), a case meant to be
    rejected that was accepted (silently converted) and the other way round."""
    problems = []
    for name, outcome in zip(names, outcomes, strict=True):
        if outcome.error is not None and not isinstance(outcome.error, error_type):
            problems.append(f"{name}: unexpected {outcome.error_text}")
        if outcome.error is not None and not outcome.state_kept:
            problems.append(f"{name}: state changed before the error {outcome.error_text}")
    errors = [outcome.error_text for outcome in outcomes]
    if len(set(errors)) > 1:
        problems.append(f"engines disagree: {dict(zip(names, errors, strict=True))}")
    if len({outcome.warnings for outcome in outcomes}) > 1:
        problems.append(f"warnings differ: {[o.warnings for o in outcomes]}")
    rejected = errors[0] is not None
    if expect == REJECT and not rejected:
        problems.append("accepted, expected a ValueError")
    if expect == ACCEPT and rejected:
        problems.append(f"rejected valid input: {errors[0]}")
    report.count(kind, "rejected" if rejected else "accepted")
    for problem in problems:
        report.fail(kind, label, problem)
    return all(outcome.error is None for outcome in outcomes)


# --------------------------------------------------------------------------------------------
# Step invariants
# --------------------------------------------------------------------------------------------


def community_info(infos: list[dict[str, float]]) -> tuple[dict[str, Any], list[str]]:
    """One community's per-agent info dicts as arrays ``[N]`` (agent keys) and floats
    (community keys), and problems if the community keys differ between its agents."""
    info: dict[str, Any] = {key: np.array([row[key] for row in infos]) for key in AGENT_INFO}
    problems = []
    for key in ENV_INFO + NETWORK_INFO:
        column = np.array([row[key] for row in infos])
        if not np.array_equal(column, np.full_like(column, column[0]), equal_nan=True):
            problems.append(f"community info {key!r} differs between agents: {column}")
        info[key] = float(column[0])
    return info, problems


def invariants(info: dict[str, Any], rewards: np.ndarray, obs: np.ndarray,
               config: EnvConfig, clock: tuple[int, int] | None, rtol: float) -> list[str]:
    """The problems of one community's step (see the module doc); ``clock`` = the expected
    (day, step_of_day), or None when unknown."""
    problems: list[str] = []

    def close(name: str, actual: Any, expected: Any, scale: float = 0.0) -> None:
        actual, expected = np.asarray(actual, float), np.asarray(expected, float)
        scale = max(1.0, scale, float(np.max(np.abs(actual))), float(np.max(np.abs(expected))))
        if not np.all(np.abs(actual - expected) <= rtol * scale):
            problems.append(f"{name}: {actual.tolist()} != {expected.tolist()}")

    def at_least(name: str, value: Any, bound: Any) -> None:
        value = np.asarray(value, float)
        scale = max(1.0, float(np.max(np.abs(value))))
        if not np.all(value >= np.asarray(bound, float) - rtol * scale):
            problems.append(f"{name}: {value.tolist()} below {np.asarray(bound).tolist()}")

    if not np.isfinite(obs).all():
        problems.append("non-finite observation")
    if not np.isfinite(rewards).all():
        problems.append(f"non-finite reward {rewards.tolist()}")
    for key in AGENT_INFO:
        if not np.isfinite(info[key]).all():
            problems.append(f"non-finite info {key!r}: {info[key].tolist()}")
    for key in ENV_INFO:
        if key != "clearing_price" and not math.isfinite(info[key]):
            problems.append(f"non-finite info {key!r}")
    network = config.network.model != "none"
    for key in NETWORK_INFO:
        if not network and not math.isnan(info[key]):
            problems.append(f"network info {key!r} is {info[key]} without a network")
    if network and info["network_converged"] == 1.0:
        for key in NETWORK_INFO:
            if not math.isfinite(info[key]):
                problems.append(f"non-finite network info {key!r} of a converged power flow")
        at_least("v_max_pu >= v_min_pu", info["v_max_pu"], info["v_min_pu"])
    if clock is not None and (info["day"], info["step_of_day"]) != clock:
        problems.append(f"clock (day, step) is {(info['day'], info['step_of_day'])}, expected "
                        f"{clock}")

    p2p, grid, net = info["p2p_energy_kwh"], info["grid_energy_kwh"], info["net_energy_kwh"]
    close("net = load - PV + battery", net,
          info["load_kwh"] - info["pv_kwh"] + info["battery_energy_kwh"])
    close("P2P + grid = net", p2p + grid, net)
    close("P2P sums to 0", p2p.sum(), 0.0, scale=float(np.abs(p2p).sum()))
    close("p2p_volume_kwh", info["p2p_volume_kwh"], np.maximum(p2p, 0).sum())
    close("grid_import_kwh", info["grid_import_kwh"], np.maximum(grid, 0).sum())
    close("grid_export_kwh", info["grid_export_kwh"], np.maximum(-grid, 0).sum())
    if math.isnan(info["clearing_price"]):
        close("no clearing price, no P2P volume", info["p2p_volume_kwh"], 0.0)

    retail, feed_in = info["retail_price"], info["feed_in_price"]
    close("payment = P2P + grid payment", info["payment"],
          info["p2p_payment"] + info["grid_payment"])
    close("grid payment at the tariffs", info["grid_payment"],
          retail * np.maximum(grid, 0) + feed_in * np.minimum(grid, 0))
    close("budget balance: P2P payments sum to the operator surplus",
          info["p2p_payment"].sum(), info["operator_surplus"],
          scale=float(np.abs(info["p2p_payment"]).sum()))
    at_least("operator_surplus", info["operator_surplus"], 0.0)
    cost = (info["payment"] + info["degradation_cost"] + info["network_penalty"]
            + info["network_fee"] + info["terminal_value_cost"])
    close("cost = payment + degradation + penalty + fee + terminal value", info["cost"], cost)
    close("reward = -cost * reward_scale", rewards, -info["cost"] * config.reward_scale)
    close("community_cost", info["community_cost"], info["cost"].sum())
    close("network_fee_revenue", info["network_fee_revenue"], info["network_fee"].sum())
    close("degradation on throughput", info["degradation_cost"],
          config.battery.degradation_cost * np.abs(info["battery_energy_kwh"]))
    at_least("network_penalty", info["network_penalty"], 0.0)
    at_least("network_fee", info["network_fee"], 0.0)
    at_least("soc_kwh", info["soc_kwh"], 0.0)
    at_least("posted price >= feed-in", info["price"], feed_in)
    at_least("posted price <= retail", -info["price"], -retail)
    if info["step_of_day"] != STEPS_PER_DAY - 1:
        close("terminal value only on the last step", info["terminal_value_cost"], 0.0)
    return problems


# --------------------------------------------------------------------------------------------
# The PettingZoo engines in lockstep
# --------------------------------------------------------------------------------------------


class Pair:
    """The numba and the float64 torch engine of one config, given the same input; both
    must answer the same (:func:`judge`) and, once accepted, step the same."""

    def __init__(self, config: dict[str, Any] | EnvConfig) -> None:
        self.envs = [envs.make_env(config, engine="numba"),
                     envs.make_env(config, engine="torch", dtype="float64")]
        self.config = self.envs[0].config
        self.agents = self.envs[0].possible_agents
        self.discrete = self.config.action.type == "discrete"
        self.n_actions = self.envs[0].action_space(self.agents[0]).n if self.discrete else 0
        self.clock: tuple[int, int] | None = None  # (day, next step_of_day)

    def run(self, call: Callable[[Any], Any]) -> list[Outcome]:
        return [attempt(lambda env=env: call(env),
                        lambda env=env: (env.state(), tuple(env.agents)))
                for env in self.envs]

    def valid_actions(self, rng: np.random.Generator) -> dict[str, Any]:
        """Random valid actions as float32 arrays (continuous) or int64 (discrete): mostly
        uniform, sometimes at the bounds or the same for all agents (stressing the grid)."""
        n = len(self.agents)
        if self.discrete:
            values = rng.integers(0, self.n_actions, n)
            return {agent: np.int64(value) for agent, value in zip(self.agents, values,
                                                                   strict=True)}
        style = rng.random()
        if style < 0.6:
            actions = np.stack([rng.uniform(-1, 1, n), rng.uniform(0, 1, n)], axis=1)
        elif style < 0.8:
            actions = np.stack([rng.choice([-1.0, 0.0, 1.0], n), rng.choice([0.0, 1.0], n)],
                               axis=1)
        else:
            actions = np.tile([rng.choice([-1.0, 1.0]), rng.uniform(0, 1)], (n, 1))
        return {agent: row.astype(np.float32) for agent, row in zip(self.agents, actions,
                                                                   strict=True)}

    def reset(self, rng: np.random.Generator, report: Report, kind: str) -> None:
        """A valid reset of both engines (random seed, sometimes a fixed day)."""
        options = {"day": int(rng.integers(0, 366))} if rng.random() < 0.3 else None
        seed = int(rng.integers(0, 2**31))
        outcomes = self.run(lambda env: env.reset(seed=seed, options=options))
        if judge(report, kind, f"reset seed={seed} options={options}", ACCEPT, outcomes,
                 ENGINES):
            self.after_reset(outcomes, report, kind, "reset", options)

    def after_reset(self, outcomes: list[Outcome], report: Report, kind: str, label: str,
                    options: Any) -> None:
        (obs_a, infos_a), (obs_b, infos_b) = (outcome.result for outcome in outcomes)
        for problem in _compare(obs_a, obs_b, infos_a, infos_b):
            report.fail(kind, label, f"engines disagree after reset: {problem}")
        day = infos_a[self.agents[0]]["day"]
        requested = None if options is None else options.get("day")
        if requested is not None and day != requested:
            report.fail(kind, label, f"reset on day {day}, requested {requested}")
        self.clock = (int(day), 0)

    def after_step(self, outcomes: list[Outcome], report: Report, kind: str, label: str,
                   rng: np.random.Generator) -> None:
        """Check an accepted step: same on both engines, invariants, clock; reset at the end
        of the day."""
        results = [outcome.result for outcome in outcomes]
        (obs_a, rew_a, term_a, trunc_a, infos_a), (obs_b, rew_b, term_b, trunc_b, infos_b) = (
            results)
        problems = _compare(obs_a, obs_b, infos_a, infos_b)
        if not np.allclose(list(rew_a.values()), list(rew_b.values()), rtol=1e-6, atol=1e-9):
            problems.append(f"rewards {rew_a} != {rew_b}")
        if (term_a, trunc_a) != (term_b, trunc_b):
            problems.append(f"terminations {term_a} != {term_b}")
        for problem in problems:
            report.fail(kind, label, f"engines disagree: {problem}")
        for engine, (obs, rewards, _, _, infos) in zip(ENGINES, results, strict=True):
            info, problems = community_info([infos[agent] for agent in self.agents])
            problems += invariants(info, np.array([rewards[a] for a in self.agents]),
                                   np.stack([obs[a] for a in self.agents]), self.config,
                                   self.clock, RTOL_FLOAT64)
            for problem in problems:
                report.fail(kind, label, f"{engine}: {problem}")
        if self.clock is not None:
            self.clock = (self.clock[0], self.clock[1] + 1)
        if all(term_a.values()):
            if self.envs[0].agents or self.envs[1].agents:
                report.fail(kind, label, "agents left after the episode ended")
            self.reset(rng, report, kind)


def _compare(obs_a: dict, obs_b: dict, infos_a: dict, infos_b: dict) -> list[str]:
    problems = []
    for agent in obs_a:
        if not np.allclose(obs_a[agent], obs_b[agent], rtol=1e-6, atol=1e-7):
            problems.append(f"observation of {agent}: {obs_a[agent]} != {obs_b[agent]}")
        a, b = infos_a[agent], infos_b[agent]
        if list(a) != list(b) or not np.allclose(list(a.values()), list(b.values()), rtol=1e-6,
                                                 atol=1e-9, equal_nan=True):
            problems.append(f"infos of {agent} differ")
    return problems


# --------------------------------------------------------------------------------------------
# Malformed and valid input
# --------------------------------------------------------------------------------------------

# Each maker takes the run's generator and returns one action of one agent.
BAD_CONTINUOUS: dict[str, Callable[[np.random.Generator], Any]] = {
    "complex array": lambda rng: np.array([0.1 + 1j, 0.5]),
    "complex scalar": lambda rng: 0.5 + 0j,
    "complex in list": lambda rng: [0.1, 0.5 + 0j],
    "complex tensor": lambda rng: torch.tensor([0.1 + 0.5j, 0.5]),
    "str": lambda rng: "0.5",
    "str list": lambda rng: ["0.1", "0.5"],
    "bytes": lambda rng: b"ab",
    "bool": lambda rng: bool(rng.integers(2)),
    "numpy bool": lambda rng: np.bool_(True),
    "bool array": lambda rng: np.array([True, False]),
    "bool in list": lambda rng: [True, 0.5],
    "bool tensor": lambda rng: torch.tensor([True, False]),
    "None": lambda rng: None,
    "None in list": lambda rng: [None, 0.5],
    "object": lambda rng: object(),
    "dict": lambda rng: {"battery": 0.1, "price": 0.5},
    "set": lambda rng: {0.1, 0.5},
    "NaN": lambda rng: np.roll(np.array([np.nan, 0.5]), int(rng.integers(2))),
    "inf": lambda rng: [float(rng.choice([-np.inf, np.inf])), 0.5],
    "battery out of range": lambda rng: [float(rng.choice([-1, 1]) * rng.uniform(1.001, 1e6)),
                                         0.5],
    "price out of range": lambda rng: [0.0, float(rng.choice([-rng.uniform(0.001, 10),
                                                              1 + rng.uniform(0.001, 10)]))],
    "huge float": lambda rng: np.array([1e300, 0.5]),
    "int beyond int64": lambda rng: [2**70, 0],
    "uint64": lambda rng: np.array([2**63, 0], dtype=np.uint64),
    "scalar": lambda rng: 0.5,
    "shape (1,)": lambda rng: [0.5],
    "shape (3,)": lambda rng: np.zeros(3),
    "shape (1, 2)": lambda rng: np.zeros((1, 2)),
    "shape (2, 2)": lambda rng: np.zeros((2, 2)),
    "empty": lambda rng: [],
    "ragged": lambda rng: [0.1, [0.5]],
}
GOOD_CONTINUOUS: dict[str, Callable[[np.random.Generator], Any]] = {
    "float32 array": lambda rng: np.array([rng.uniform(-1, 1), rng.uniform(0, 1)], np.float32),
    "float64 array": lambda rng: np.array([rng.uniform(-1, 1), rng.uniform(0, 1)]),
    "float16 array": lambda rng: np.array([rng.uniform(-1, 1), rng.uniform(0, 1)], np.float16),
    "list of floats": lambda rng: [float(rng.uniform(-1, 1)), float(rng.uniform(0, 1))],
    "tuple": lambda rng: (float(rng.uniform(-1, 1)), float(rng.uniform(0, 1))),
    "ints": lambda rng: [int(rng.integers(-1, 2)), int(rng.integers(0, 2))],
    "int array": lambda rng: np.array([int(rng.integers(-1, 2)), int(rng.integers(0, 2))]),
    "numpy scalars": lambda rng: [np.float32(rng.uniform(-1, 1)), np.int8(1)],
    "float tensor": lambda rng: torch.tensor([rng.uniform(-1, 1), rng.uniform(0, 1)]),
    "bounds within tolerance": lambda rng: [1.0 + 5e-7, -5e-7],
}
BAD_DISCRETE: dict[str, Callable[[np.random.Generator], Any]] = {
    "non-integral float": lambda rng: float(rng.integers(0, 20)) + 0.5,
    "NaN": lambda rng: math.nan,
    "inf": lambda rng: float(rng.choice([-np.inf, np.inf])),
    "negative": lambda rng: -int(rng.integers(1, 100)),
    "too large": lambda rng: 25 + int(rng.integers(0, 100)),
    "int beyond int64": lambda rng: 2**70,
    "int just beyond int64": lambda rng: 2**63,
    "uint64 beyond int64": lambda rng: np.uint64(2**63),
    "float 1e30": lambda rng: 1e30,
    "bool": lambda rng: bool(rng.integers(2)),
    "numpy bool": lambda rng: np.bool_(True),
    "bool tensor": lambda rng: torch.tensor(True),
    "complex": lambda rng: 3 + 0j,
    "complex tensor": lambda rng: torch.tensor(3 + 0j),
    "non-integral tensor": lambda rng: torch.tensor(2.5),
    "str": lambda rng: "3",
    "None": lambda rng: None,
    "object": lambda rng: object(),
    "dict": lambda rng: {"action": 3},
    "list": lambda rng: [3],
    "array shape (1,)": lambda rng: np.array([3]),
    "tuple": lambda rng: (3, 4),
}
GOOD_DISCRETE: dict[str, Callable[[np.random.Generator], Any]] = {
    "int": lambda rng: int(rng.integers(0, 25)),
    "numpy int8": lambda rng: np.int8(rng.integers(0, 25)),
    "numpy uint8": lambda rng: np.uint8(rng.integers(0, 25)),
    "numpy uint64": lambda rng: np.uint64(rng.integers(0, 25)),
    "numpy int64": lambda rng: np.int64(rng.integers(0, 25)),
    "0-d array": lambda rng: np.array(rng.integers(0, 25)),
    "integral float": lambda rng: float(rng.integers(0, 25)),
    "integral float32": lambda rng: np.float32(rng.integers(0, 25)),
    "int tensor": lambda rng: torch.tensor(int(rng.integers(0, 25))),
}


def _pick(rng: np.random.Generator, makers: dict[str, Callable]) -> tuple[str, Any]:
    name = list(makers)[int(rng.integers(len(makers)))]
    return name, makers[name](rng)


def step_input(pair: Pair, rng: np.random.Generator) -> tuple[str, Any, str]:
    """One random ``step`` input: (label, actions, expectation)."""
    actions = pair.valid_actions(rng)
    agents = pair.agents
    bad, good = ((BAD_DISCRETE, GOOD_DISCRETE) if pair.discrete
                 else (BAD_CONTINUOUS, GOOD_CONTINUOUS))
    choice = rng.random()
    if choice < 0.1:  # not a dict
        containers = {
            "list": lambda: list(actions.values()), "tuple": lambda: tuple(actions.values()),
            "None": lambda: None, "array": lambda: np.array(list(actions.values())),
            "str": lambda: agents[0], "int": lambda: 0, "set": lambda: set(agents),
            "items": lambda: list(actions.items())}
        name = list(containers)[int(rng.integers(len(containers)))]
        return f"container {name}", containers[name](), REJECT
    if choice < 0.2:  # wrong agents
        agent = agents[int(rng.integers(len(agents)))]
        broken = dict(actions)
        what = ["missing", "extra", "renamed", "int key", "empty", "case"][
            int(rng.integers(6))]
        if what == "missing":
            del broken[agent]
        elif what == "extra":
            broken["prosumer_99"] = actions[agent]
        elif what == "renamed":
            broken["house_0"] = broken.pop(agent)
        elif what == "int key":
            broken[0] = actions[agent]
        elif what == "case":
            broken[agent.upper()] = broken.pop(agent)
        else:
            broken = {}
        return f"agents {what}", broken, REJECT
    if choice < 0.3:  # other mappings and orders: valid
        kinds = {"reversed": lambda: dict(reversed(list(actions.items()))),
                 "OrderedDict": lambda: OrderedDict(actions),
                 "MappingProxyType": lambda: MappingProxyType(actions)}
        name = list(kinds)[int(rng.integers(len(kinds)))]
        return f"mapping {name}", kinds[name](), ACCEPT
    if choice < 0.55:  # valid values of other types
        names = []
        for agent in agents:
            if rng.random() < 0.5:
                name, actions[agent] = _pick(rng, good)
                names.append(name)
        return f"valid {sorted(set(names))}", actions, ACCEPT
    # bad values for one or more agents
    count = 1 if rng.random() < 0.7 else int(rng.integers(1, len(agents) + 1))
    names = []
    for index in rng.choice(len(agents), count, replace=False):
        name, actions[agents[index]] = _pick(rng, bad)
        names.append(name)
    return f"bad {sorted(set(names))} x{count}", actions, REJECT


BAD_SEEDS: dict[str, Callable[[np.random.Generator], Any]] = {
    "negative": lambda rng: -int(rng.integers(1, 2**40)),
    "above SEED_MAX": lambda rng: SEED_MAX + int(rng.integers(1, 2**32)),
    "2**63": lambda rng: 2**63,
    "2**64": lambda rng: 2**64,
    "float": lambda rng: float(rng.integers(0, 100)) + 0.5,
    "integral float": lambda rng: float(rng.integers(0, 100)),
    "numpy float": lambda rng: np.float64(3),
    "str": lambda rng: str(rng.integers(0, 100)),
    "bytes": lambda rng: b"7",
    "bool": lambda rng: bool(rng.integers(2)),
    "numpy bool": lambda rng: np.bool_(False),
    "list": lambda rng: [1],
    "complex": lambda rng: 3 + 0j,
    "0-d array": lambda rng: np.array(3),
    "tensor": lambda rng: torch.tensor(3),
}
GOOD_SEEDS: dict[str, Callable[[np.random.Generator], Any]] = {
    "None": lambda rng: None,
    "0": lambda rng: 0,
    "int": lambda rng: int(rng.integers(0, 2**62)),
    "SEED_MAX": lambda rng: SEED_MAX,
    "numpy int64": lambda rng: np.int64(rng.integers(0, 2**62)),
    "numpy uint64": lambda rng: np.uint64(rng.integers(0, 2**62)),
    "numpy uint8": lambda rng: np.uint8(rng.integers(0, 256)),
}
BAD_OPTIONS: dict[str, Callable[[np.random.Generator], Any]] = {
    "list": lambda rng: [("day", 3)],
    "str": lambda rng: "day",
    "int": lambda rng: 3,
    "tuple": lambda rng: ({"day": 3},),
    "day 366": lambda rng: {"day": 366},
    "day beyond": lambda rng: {"day": int(rng.integers(366, 10**6))},
    "negative day": lambda rng: {"day": -int(rng.integers(1, 1000))},
    "float day": lambda rng: {"day": float(rng.integers(0, 365)) + 0.7},
    "integral float day": lambda rng: {"day": float(rng.integers(0, 365))},
    "numpy float day": lambda rng: {"day": np.float32(3)},
    "str day": lambda rng: {"day": str(rng.integers(0, 365))},
    "bool day": lambda rng: {"day": bool(rng.integers(2))},
    "numpy day 400": lambda rng: {"day": np.int64(400)},
    "huge day": lambda rng: {"day": 2**70},
    "list day": lambda rng: {"day": [3]},
    "complex day": lambda rng: {"day": 3 + 0j},
    "array day": lambda rng: {"day": np.array(3)},
}
GOOD_OPTIONS: dict[str, Callable[[np.random.Generator], Any]] = {
    "None": lambda rng: None,
    "empty": lambda rng: {},
    "day None": lambda rng: {"day": None},
    "day 0": lambda rng: {"day": 0},
    "day 365": lambda rng: {"day": 365},
    "day": lambda rng: {"day": int(rng.integers(0, 366))},
    "numpy int16 day": lambda rng: {"day": np.int16(rng.integers(0, 366))},
    "numpy uint64 day": lambda rng: {"day": np.uint64(rng.integers(0, 366))},
    "MappingProxyType": lambda rng: MappingProxyType({"day": int(rng.integers(0, 366))}),
    # Ignored with a warning, the same on both engines (PettingZoo's API test passes one).
    "unknown key": lambda rng: {"options": 1},
    "day and unknown key": lambda rng: {"day": 3, "bogus": True},
}


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------


def pettingzoo_step_case(pair: Pair, rng: np.random.Generator, report: Report) -> None:
    kind = f"pettingzoo.step.{pair.config.action.type}"
    label, actions, expect = step_input(pair, rng)
    outcomes = pair.run(lambda env: env.step(actions))
    if judge(report, kind, label, expect, outcomes, ENGINES):
        pair.after_step(outcomes, report, kind, label, rng)


def pettingzoo_reset_case(pair: Pair, rng: np.random.Generator, report: Report) -> None:
    kind = "pettingzoo.reset"
    bad_seed, bad_options = rng.random() < 0.4, rng.random() < 0.4
    seed_name, seed = _pick(rng, BAD_SEEDS if bad_seed else GOOD_SEEDS)
    options_name, options = _pick(rng, BAD_OPTIONS if bad_options else GOOD_OPTIONS)
    label = f"seed {seed_name} {seed!r}, options {options_name} {options!r}"
    expect = REJECT if bad_seed or bad_options else ACCEPT
    outcomes = pair.run(lambda env: env.reset(seed=seed, options=options))
    if judge(report, kind, label, expect, outcomes, ENGINES):
        pair.after_reset(outcomes, report, kind, label, options)
    elif pair.clock is not None:  # the episode goes on: a step checks its clock
        pettingzoo_step_case(pair, rng, report)


class Vec:
    """An SB3 VecEnv over the float32 core, with the expected clock of each environment."""

    def __init__(self, config: dict[str, Any], n_envs: int) -> None:
        self.vec = envs.make_vec_env(config, n_envs=n_envs)
        self.core = self.vec.core
        self.discrete = self.core.config.action.type == "discrete"
        self.n_agents = self.core.n_agents
        self.clock: list[tuple[int, int]] = []

    def snapshot(self) -> tuple:
        core = self.core
        return tuple(t.detach().cpu().numpy().copy() for t in (
            core.state(), core.day, core.step_of_day, core.soc_kwh, core.episode_count))

    def reset(self) -> None:
        self.vec.reset()
        self.clock = [(int(day), 0) for day in self.core.day.tolist()]

    def valid_actions(self, rng: np.random.Generator) -> np.ndarray:
        if self.discrete:
            return rng.integers(0, self.core.n_discrete_actions, self.vec.num_envs)
        return rng.uniform(-1, 1, (self.vec.num_envs, 2)).astype(np.float32)

    def step(self, actions: Any, report: Report, kind: str, label: str, expect: str) -> None:
        outcome = attempt(lambda: self.vec.step(actions), self.snapshot)
        if not judge(report, kind, label, expect, [outcome], ("vec",)):
            return
        obs, rewards, dones, infos = outcome.result
        n = self.n_agents
        for b in range(self.core.n_envs):
            rows = slice(b * n, (b + 1) * n)
            info, problems = community_info(infos[rows])
            problems += invariants(info, rewards[rows], obs[rows], self.core.config,
                                   self.clock[b], RTOL_FLOAT32)
            for problem in problems:
                report.fail(kind, label, f"env {b}: {problem}")
            day, step = self.clock[b]
            self.clock[b] = (day, step + 1)
            if dones[b * n]:
                self.clock[b] = (int(self.vec.reset_infos[b * n]["day"]), 0)


def vec_step_input(vec: Vec, rng: np.random.Generator) -> tuple[str, Any, str]:
    """One random VecEnv ``step`` input: (label, actions, expectation)."""
    actions = vec.valid_actions(rng)
    m = vec.vec.num_envs
    choice = rng.random()
    if choice < 0.3:
        kinds = {"as is": lambda: actions, "list": lambda: actions.tolist(),
                 "float64": lambda: actions.astype(np.float64),
                 "int": lambda: np.clip(np.round(actions), -1, None).astype(np.int64),
                 "uint8" if vec.discrete else "bounds": (
                     lambda: actions.astype(np.uint8) if vec.discrete
                     else np.sign(actions).astype(np.float32))}
        name = list(kinds)[int(rng.integers(len(kinds)))]
        return f"valid {name}", kinds[name](), ACCEPT
    if choice < 0.6:
        shape = ((m, 1), (m, 2), (m + 1,), (m // 2,), (), (vec.core.n_envs, vec.n_agents))
        if not vec.discrete:
            shape = ((m,), (m, 1), (m, 3), (m * 2,), (), (vec.core.n_envs, vec.n_agents, 2),
                     (m + 1, 2))
        chosen = shape[int(rng.integers(len(shape)))]
        return f"shape {chosen}", np.zeros(chosen, actions.dtype), REJECT
    bad = actions.astype(np.float64)
    index = int(rng.integers(m))
    kinds = {
        "complex": lambda: actions.astype(np.complex128),
        "bool": lambda: actions.astype(bool),
        "str": lambda: actions.astype(str),
        "object": lambda: actions.astype(object),
        "None": lambda: None,
        "ragged list": lambda: actions.tolist()[:-1] + [[0]],
        "NaN": lambda: _set(bad, index, math.nan),
        "inf": lambda: _set(bad, index, math.inf),
        "out of range": lambda: _set(bad, index, (-1.0 if vec.discrete else 1.5)
                                     * rng.uniform(1.0, 100.0)),
        "too large": lambda: _set(bad, index, 10**6),
        "uint64 beyond int64": lambda: np.full(actions.shape, 2**63, np.uint64),
    }
    if vec.discrete:
        kinds["non-integral"] = lambda: _set(bad, index, 2.5)
    name = list(kinds)[int(rng.integers(len(kinds)))]
    return f"bad {name}", kinds[name](), REJECT


def _set(array: np.ndarray, index: int, value: float) -> np.ndarray:
    array = array.copy()
    array[index] = value
    return array


def vec_seed_case(vec: Vec, rng: np.random.Generator, report: Report) -> None:
    bad = rng.random() < 0.6
    name, seed = _pick(rng, BAD_SEEDS if bad else GOOD_SEEDS)
    outcome = attempt(lambda: vec.vec.seed(seed), vec.snapshot)
    if judge(report, "vec.seed", f"{name} {seed!r}", REJECT if bad else ACCEPT, [outcome],
             ("vec",)):
        vec.reset()


CONFIG_VALUES: dict[str, Callable[[np.random.Generator], Any]] = {
    "None": lambda rng: None, "true": lambda rng: True, "false": lambda rng: False,
    "str": lambda rng: "x", "empty str": lambda rng: "", "list": lambda rng: [1],
    "dict": lambda rng: {"a": 1}, "NaN": lambda rng: math.nan, "inf": lambda rng: math.inf,
    "-inf": lambda rng: -math.inf, "-1": lambda rng: -1, "0": lambda rng: 0, "1": lambda rng: 1,
    "2": lambda rng: 2, "0.5": lambda rng: 0.5, "1.5": lambda rng: 1.5, "-0.5": lambda rng: -0.5,
    "1e6": lambda rng: 1e6, "10**30": lambda rng: 10**30, "1e300": lambda rng: 1e300,
    "2**63": lambda rng: 2**63, "numeric str": lambda rng: "1", "object": lambda rng: object(),
}


def config_case(rng: np.random.Generator, report: Report, keys: list[str]) -> None:
    """A random override of the fuzzed config: must build, or raise ConfigError; a config
    that builds is run for a few steps on both engines."""
    kind = "config"
    choice = rng.random()
    if choice < 0.15:
        section = ["", "market.", "battery.", "network.", "community."][int(rng.integers(5))]
        key, value, expect = f"{section}bogus", 1, REJECT
    elif choice < 0.25:
        key = ["market", "battery", "network", "episode"][int(rng.integers(4))]
        value, expect = [3, "x", [1], None][int(rng.integers(4))], REJECT
    else:
        key = keys[int(rng.integers(len(keys)))]
        _, value = _pick(rng, CONFIG_VALUES)
        expect = EITHER
    label = f"{key}={value!r}"
    outcome = attempt(lambda: envs.env_config(SMALL, **{key: value}), lambda: ())
    if not judge(report, kind, label, expect, [outcome], ("config",), ConfigError):
        return
    try:
        pair = Pair(outcome.result)
    except ValueError as error:  # n_envs != 1: the same for both engines
        if "n_envs must be 1" not in str(error):
            report.fail(kind, label, f"valid config refused: {type(error).__name__}: {error}")
        return
    except Exception as error:  # any other is a failure
        report.fail(kind, label, f"building raised {type(error).__name__}: {error}")
        return
    kind = "config.built (reset, 3 steps)"
    pair.reset(rng, report, kind)
    for _ in range(3):
        actions = pair.valid_actions(rng)
        outcomes = pair.run(lambda env, actions=actions: env.step(actions))
        if judge(report, kind, f"{label}: step", ACCEPT, outcomes, ENGINES):
            pair.after_step(outcomes, report, kind, f"{label}: step", rng)


def fuzzed_config_keys() -> list[str]:
    """Every dotted key of the env config but ``device`` (which depends on the machine)."""
    keys = []

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif key != "device":
                keys.append(prefix + key)

    walk(to_dict(envs.env_config(SMALL)), "")
    return keys


# --------------------------------------------------------------------------------------------
# Soak
# --------------------------------------------------------------------------------------------


def soak_configs(rng: np.random.Generator, network: str) -> dict[str, dict[str, Any]]:
    """The soaked communities: continuous actions on the ``network`` model with P2P fees and
    every observation option; discrete actions without a network; random market mechanisms."""
    mechanisms = rng.choice(MECHANISM_NAMES, 2)
    return {
        "continuous": {
            "community": {"feeder": "synthetic", "n_agents": 8},
            "network": {"model": network, "p2p_fee": 0.01, "p2p_loss_factor": 0.05,
                        "p2p_distance_fee": 0.0 if network == "none" else 0.02},
            "observation": {"forecast_steps": 2, "forecast_noise": 0.05,
                            "include_voltage": True, "rule": "time_of_use"},
            "market": {"mechanism": str(mechanisms[0])}},
        "discrete": {
            "community": {"feeder": "synthetic", "n_agents": 6}, "network": {"model": "none"},
            "action": {"type": "discrete"}, "market": {"mechanism": str(mechanisms[1])},
            "reward_scale": 0.5},
    }


def soak(steps: int, network: str, rng: np.random.Generator, report: Report) -> None:
    configs = soak_configs(rng, network)
    for name, config in configs.items():
        kind = f"soak.pettingzoo.{name} ({config['market']['mechanism']})"
        pair = Pair(config)
        pair.reset(rng, report, kind)
        for _ in range(steps):
            actions = pair.valid_actions(rng)
            outcomes = pair.run(lambda env, actions=actions: env.step(actions))
            if judge(report, kind, "valid step", ACCEPT, outcomes, ENGINES):
                pair.after_step(outcomes, report, kind, "valid step", rng)
    config = configs["continuous"]
    vec = Vec(config, n_envs=4)
    vec.vec.seed(int(rng.integers(0, 2**31)))
    vec.reset()
    kind = f"soak.vec ({config['market']['mechanism']})"
    for _ in range(steps):
        vec.step(vec.valid_actions(rng), report, kind, "valid step", ACCEPT)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--cases", type=int, default=500, help="malformed or valid inputs")
    parser.add_argument("--steps", type=int, default=2000,
                        help="soak steps of each soaked environment")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fuzzer's generator")
    parser.add_argument("--network", choices=("zbus", "none"), default="zbus",
                        help="network model of the soaked continuous community (none: faster "
                             "to build, for CI)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cases < 0 or args.steps < 0:
        print("fuzz.py: error: --cases and --steps must be >= 0", file=sys.stderr)
        return 2
    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    report = Report()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add synchronisation
    try:
        pairs = [Pair(SMALL), Pair({**SMALL, "action": {"type": "discrete"}})]
        for pair in pairs:
            pair.reset(rng, report, "setup")
        vecs = [Vec(SMALL, n_envs=2), Vec({**SMALL, "action": {"type": "discrete"}}, 2)]
        for vec in vecs:
            vec.reset()
        keys = fuzzed_config_keys()
        for _ in range(args.cases):
            choice = rng.random()
            if choice < 0.4:
                pair = pairs[int(rng.integers(2))]
                if not pair.envs[0].agents:
                    pair.reset(rng, report, "setup")
                pettingzoo_step_case(pair, rng, report)
            elif choice < 0.6:
                pettingzoo_reset_case(pairs[int(rng.integers(2))], rng, report)
            elif choice < 0.8:
                vec = vecs[int(rng.integers(2))]
                label, actions, expect = vec_step_input(vec, rng)
                vec.step(actions, report, f"vec.step.{vec.core.config.action.type}", label,
                         expect)
            elif choice < 0.85:
                vec_seed_case(vecs[int(rng.integers(2))], rng, report)
            else:
                config_case(rng, report, keys)
        soak(args.steps, args.network, rng, report)
    finally:
        torch.set_num_threads(previous_threads)

    for failure in report.failures[:50]:
        print(f"FAIL {failure}")
    if len(report.failures) > 50:
        print(f"... and {len(report.failures) - 50} more failures")
    print(f"peergrid fuzz: seed {args.seed}, {args.cases} cases, {args.steps} soak steps "
          f"per soaked environment, soak network {args.network} "
          f"({time.perf_counter() - start:.1f} s)")
    columns = ("cases", "rejected", "accepted", "failures")
    print(f"{'kind':<44}" + "".join(f"{column:>10}" for column in columns))
    for kind in sorted(report.counts):
        counts = report.counts[kind]
        counts["cases"] = counts["rejected"] + counts["accepted"]
        print(f"{kind:<44}" + "".join(f"{counts[column]:>10}" for column in columns))
    print(f"total failures: {len(report.failures)}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
