"""Bad input at the boundaries (PettingZoo env on both engines, the core's reset, the SB3
VecEnv): one ValueError naming what is wrong and what is allowed, raised before any state
changes, the same on both engines; plus a short run of benchmarks/fuzz.py."""

from __future__ import annotations

import functools
import importlib.util
import re
import sys
import warnings
from collections import OrderedDict
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest
import torch

import envs
from envs.config import SEED_MAX
from envs.single.engine import SingleEnvEngine

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"community": {"feeder": "synthetic", "n_agents": 4}, "network": {"model": "none"}}
ENGINES = ("numba", "torch")
SEED_RANGE = f"allowed: None or an integer in [0, {SEED_MAX}]"


@functools.cache
def _env(engine: str, action_type: str = "continuous"):
    """One env per engine and action type for the whole module (each test resets it)."""
    return envs.make_env({**SMALL, "action": {"type": action_type}}, engine=engine)


def env_at_step(engine: str, steps: int = 3, action_type: str = "continuous"):
    """The module's env reset on day 40 and stepped ``steps`` times with fixed actions."""
    env = _env(engine, action_type)
    env.reset(seed=0, options={"day": 40})
    for _ in range(steps):
        env.step(valid_actions(env))
    return env


def valid_actions(env) -> dict:
    if env.config.action.type == "discrete":
        return {agent: 12 for agent in env.possible_agents}
    return {agent: np.array([0.5, 0.5], np.float32) for agent in env.possible_agents}


def error_of(call) -> str:
    """The message of the ValueError ``call`` raises (any other exception fails)."""
    with pytest.raises(ValueError) as caught:
        call()
    return str(caught.value)


def same_error_on_both_engines(call, steps: int = 3, action_type: str = "continuous") -> str:
    """Run ``call(env)`` on both engines at the same point of an episode: the same
    ValueError, the state unchanged, and the next step continues the episode."""
    messages = []
    for engine in ENGINES:
        env = env_at_step(engine, steps, action_type)
        before = env.state()
        messages.append(error_of(lambda env=env: call(env)))
        np.testing.assert_array_equal(env.state(), before)
        _, _, _, _, infos = env.step(valid_actions(env))
        assert (infos["prosumer_0"]["day"], infos["prosumer_0"]["step_of_day"]) == (40, steps)
    assert messages[0] == messages[1]
    return messages[0]


# --------------------------------------------------------------------------------------------
# PettingZoo step
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("actions", [
    [np.zeros(2)] * 4, None, np.zeros((4, 2)), (0.0, 0.5), "prosumer_0", 0,
    {"prosumer_0", "prosumer_1"}])
def test_step_needs_a_dict_of_every_agent(actions):
    message = same_error_on_both_engines(lambda env: env.step(actions))
    assert message.startswith("actions: got ")
    assert "allowed: a dict mapping every agent ('prosumer_0' ... 'prosumer_3') to its" in message


@pytest.mark.parametrize(("broken", "match"), [
    (lambda a: {k: v for k, v in a.items() if k != "prosumer_2"}, r"missing \['prosumer_2'\]"),
    (lambda a: {**a, "prosumer_9": a["prosumer_0"]}, r"unknown \['prosumer_9'\]"),
    (lambda a: {**a, 0: a["prosumer_0"]}, r"unknown \[0\]"),
    (lambda a: {}, r"missing \['prosumer_0', 'prosumer_1', 'prosumer_2', 'prosumer_3'\]"),
])
def test_missing_and_unknown_agents(broken, match):
    message = same_error_on_both_engines(
        lambda env: env.step(broken(valid_actions(env))))
    assert message.startswith("actions must have one entry per live agent")
    assert re.search(match, message)


CONTINUOUS_TYPES = {
    "complex array": np.array([0.1 + 1j, 0.5]),
    "complex scalar": 0.5 + 0j,
    "complex in list": [0.1, 0.5 + 0j],
    "str": "0.5",
    "str list": ["0.1", "0.5"],
    "bool": True,
    "bool array": np.array([True, False]),
    "bool in list": [True, 0.5],
    "bool tensor": torch.tensor([True, False]),
    "None": None,
    "None in list": [None, 0.5],
    "object": object(),
    "dict": {"battery": 0.1},
    "int beyond int64": [2**70, 0],
}


@pytest.mark.parametrize("value", CONTINUOUS_TYPES.values(), ids=CONTINUOUS_TYPES.keys())
def test_continuous_actions_of_other_types_are_refused_not_converted(value):
    message = same_error_on_both_engines(
        lambda env: env.step({**valid_actions(env), "prosumer_1": value}))
    assert message.startswith("action of agent 'prosumer_1': got ")
    assert message.endswith("allowed: 2 real numbers (int or float; not bool, complex, str or "
                            "None): battery in [-1, 1], price in [0, 1]")


DISCRETE_VALUES = {
    "bool": True, "numpy bool": np.bool_(False), "complex": 3 + 0j, "str": "3", "None": None,
    "non-integral": 2.5, "NaN": float("nan"), "inf": float("inf"), "1e30": 1e30,
    "int beyond int64": 2**63, "uint64 beyond int64": np.uint64(2**63),
    "bool tensor": torch.tensor(True), "non-integral tensor": torch.tensor(2.5),
}


@pytest.mark.parametrize("value", DISCRETE_VALUES.values(), ids=DISCRETE_VALUES.keys())
def test_discrete_actions_must_be_integers(value):
    message = same_error_on_both_engines(
        lambda env: env.step({**valid_actions(env), "prosumer_1": value}),
        action_type="discrete")
    assert message.startswith("action of agent 'prosumer_1': got ")
    assert message.endswith("allowed: an integer in 0..24 (Python or numpy int, or a float with "
                            "an integral value; not bool)")


@pytest.mark.parametrize(("value", "match"), [
    ([np.nan, 0.5], r"agent 'house_1' \(index 1\) in env 0 is \[nan, 0.5\]"),
    ([0.0, np.inf], r"agent 'house_1' \(index 1\) in env 0 is \[0.0, inf\]"),
    ([1.5, 0.5], r"is \[1.5, 0.5\]; allowed: finite \[battery in \[-1, 1\], price in \[0, 1\]\]"),
    ([0.0, -0.25], r"is \[0.0, -0.25\]; allowed: finite"),
    (np.zeros(3), r"shape of its action space \(2,\); got \{'prosumer_0': \(2,\), "
                  r"'prosumer_1': \(3,\)"),
    (np.zeros((1, 2)), r"'prosumer_1': \(1, 2\)"),
    (0.5, r"'prosumer_1': \(\)"),
    ([0.1, [0.5]], r"'prosumer_1': 'ragged'"),
])
def test_continuous_values_and_shapes(value, match):
    message = same_error_on_both_engines(
        lambda env: env.step({**valid_actions(env), "prosumer_1": value}))
    assert re.search(match, message)


def test_discrete_range_and_shape():
    message = same_error_on_both_engines(
        lambda env: env.step({**valid_actions(env), "prosumer_3": 25}), action_type="discrete")
    assert "agent 'house_3' (index 3) in env 0 is 25; allowed: 0..24" in message
    message = same_error_on_both_engines(
        lambda env: env.step({agent: [3] for agent in env.possible_agents}),
        action_type="discrete")
    assert "shape of its action space (); got {'prosumer_0': (1,)" in message


@pytest.mark.parametrize("action_type", ["continuous", "discrete"])
def test_other_real_number_types_and_mappings_step_the_same(action_type):
    """Python and numpy numbers of any width, lists, tuples, tensors, other mappings and
    another key order are actions, and both engines step them alike."""
    if action_type == "continuous":
        values = [[1, 0], (0.25, 0.75), np.array([-0.5, 0.5], np.float16),
                  torch.tensor([0.5, 1.0])]
    else:
        values = [np.uint64(24), 7.0, np.int8(3), torch.tensor(5)]
    actions = dict(zip(_env("numba").possible_agents, values, strict=True))
    results = []
    for engine in ENGINES:
        env = env_at_step(engine, action_type=action_type)
        for mapping in (actions, MappingProxyType(actions),
                        OrderedDict(reversed(list(actions.items())))):
            obs, rewards, *_ = env.step(mapping)
        results.append((obs, rewards))
    for agent in actions:
        np.testing.assert_allclose(results[0][0][agent], results[1][0][agent], rtol=1e-5)
        assert results[0][1][agent] == pytest.approx(results[1][1][agent], rel=1e-4, abs=1e-7)


# --------------------------------------------------------------------------------------------
# PettingZoo reset
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("day", [366, -1, 1.7, 3.0, np.float64(3), "3", True, [3],
                                 np.int64(400), 2**70])
def test_reset_day_is_checked_before_the_episode_changes(day):
    message = same_error_on_both_engines(lambda env: env.reset(options={"day": day}))
    assert message == (f"reset option 'day': got {day!r} ({type(day).__name__}); allowed: "
                       f"None or an integer in [0, 365] (day of the year)")


@pytest.mark.parametrize("day", [0, 365, np.int16(7), np.uint64(9), None])
def test_reset_day_accepts_python_and_numpy_integers(day):
    days = []
    for engine in ENGINES:
        _, infos = env_at_step(engine).reset(seed=5, options={"day": day})
        days.append(infos["prosumer_0"]["day"])
    assert days[0] == days[1]
    if day is not None:
        assert days[0] == int(day)


@pytest.mark.parametrize("seed", [2**63, SEED_MAX + 1, -1, 1.5, 3.0, np.float64(3), "7", True,
                                  np.bool_(True), [1], np.array(3), torch.tensor(3)])
def test_seeds_outside_the_integers_in_range_are_refused(seed):
    message = same_error_on_both_engines(lambda env: env.reset(seed=seed))
    assert message == f"seed: got {seed!r}; {SEED_RANGE}"


@pytest.mark.parametrize("seed", [0, SEED_MAX, np.int64(3), np.uint32(5), 2**40])
def test_seeds_in_range_reset_both_engines_alike(seed):
    results = [env_at_step(engine).reset(seed=seed) for engine in ENGINES]
    assert results[0][1]["prosumer_0"]["day"] == results[1][1]["prosumer_0"]["day"]
    for agent, obs in results[0][0].items():
        np.testing.assert_allclose(obs, results[1][0][agent], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("options", [[("day", 3)], "day", 3, ({"day": 3},)])
def test_reset_options_must_be_a_dict(options):
    message = same_error_on_both_engines(lambda env: env.reset(options=options))
    assert message.startswith("reset options: got ")
    assert message.endswith("allowed: None or a dict with the optional keys ('day',)")


@pytest.mark.parametrize("engine", ENGINES)
def test_unknown_reset_options_are_ignored_with_a_warning(engine):
    """PettingZoo's own API test passes ``{"options": 1}``: a warning naming the allowed key,
    and the reset happens."""
    env = env_at_step(engine)
    with pytest.warns(UserWarning, match=r"\['options'\] are not used by peergrid \(it reads "
                                         r"only \('day',\)\)"):
        _, infos = env.reset(options={"options": 1, "day": 12})
    assert infos["prosumer_0"]["day"] == 12.0


# --------------------------------------------------------------------------------------------
# The core's and the numba engine's reset
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("days", "seed"), [
    ([366, 1], None), ([1.7, 1], None), (["3", 1], None), ([True, 1], None), ([1], None),
    (torch.tensor([1.0, 2.0]), None), (5, None), ([1, 2], -1), ([1, 2], 1.5), (None, "7"),
    (None, 2**63 - 1)])
def test_core_reset_checks_seed_and_days_before_any_state_change(days, seed):
    core = envs.make_batched_env(SMALL, n_envs=2)
    core.reset(seed=0, days=[40, 41])
    for _ in range(3):
        core.step(torch.zeros(2, 4, 2))
    before = [t.clone() for t in (core.day, core.step_of_day, core.episode_count,
                                   core.env_seed, core.soc_kwh)]
    message = error_of(lambda: core.reset(seed=seed, days=days))
    assert ("days must be 2 integer day indices in [0, 365]" in message if seed is None
            else message.startswith(f"seed: got {seed!r}; allowed: None or an integer in "
                                    f"[0, {2**63 - 2}]"))
    after = (core.day, core.step_of_day, core.episode_count, core.env_seed, core.soc_kwh)
    for old, new in zip(before, after, strict=True):
        assert torch.equal(old, new)
    _, info = core.reset(days=np.array([7, 8]))  # numpy integers are days
    assert info["day"].tolist() == [7, 8]
    _, info = core.reset(days=[9], env_index=1)
    assert info["day"].tolist() == [7, 9]


def test_numba_engine_reset_checks_seed_and_day_first():
    engine = SingleEnvEngine(envs.env_config(SMALL))
    engine.reset(seed=0, day=40)
    engine.step(np.zeros((4, 2)))
    before = engine.state()
    for seed, day in [(None, 366), (None, 2.0), (None, True), (-1, None), (2**63, None),
                      (1.5, None), ("7", None)]:
        with pytest.raises(ValueError, match="day indices in \\[0, 365\\]" if day is not None
                           else "seed: got"):
            engine.reset(seed=seed, day=day)
        np.testing.assert_array_equal(engine.state(), before)


# --------------------------------------------------------------------------------------------
# SB3 VecEnv
# --------------------------------------------------------------------------------------------


@functools.cache
def _vec(action_type: str):
    return envs.make_vec_env({**SMALL, "action": {"type": action_type}}, n_envs=2)


@pytest.mark.parametrize("action_type", ["continuous", "discrete"])
def test_vec_env_actions_name_the_expected_shape_and_dtype(action_type):
    vec = _vec(action_type)
    vec.reset()
    core = vec.core
    continuous = action_type == "continuous"
    good = np.zeros((8, 2), np.float32) if continuous else np.zeros(8, np.int64)
    allowed = ("allowed: a numpy array of shape (8, 2) (2 envs x 4 agents), float (or integer) "
               "dtype, values in [-1, 1]" if continuous else
               "allowed: a numpy array of shape (8,) (2 envs x 4 agents), integer (or integral "
               "float) dtype, values in 0..24")
    bad = [np.zeros(16), np.zeros((8, 1)), np.zeros((2, 4, 2)), np.zeros((4, 4)),
           good.astype(complex), good.astype(bool), good.astype(str), None,
           good.tolist()[:-1] + [[0, 0, 0]]]
    vec.step(good)
    before = [t.clone() for t in (core.day, core.step_of_day, core.soc_kwh)]
    for actions in bad:
        message = error_of(lambda actions=actions: vec.step(actions))
        assert message.startswith("SB3VecEnv actions: got ") and message.endswith(allowed)
    out_of_range = good.astype(np.float64)
    out_of_range[5] = 1.5 if continuous else 2.5
    message = error_of(lambda: vec.step(out_of_range))
    assert message.startswith("SB3VecEnv action of sub-environment 5 (env 1, agent 1): got ")
    out_of_range[5] = np.nan
    assert "sub-environment 5" in error_of(lambda: vec.step(out_of_range))
    for old, new in zip(before, (core.day, core.step_of_day, core.soc_kwh), strict=True):
        assert torch.equal(old, new)
    vec.step(good.tolist())  # a list of the right shape is an array
    vec.step(good.astype(np.float64) if continuous else good.astype(np.uint8))
    assert core.step_of_day.tolist() == [3, 3]


def test_vec_env_seed_is_checked():
    vec = _vec("continuous")
    for seed in (-1, 1.5, "7", True, 2**63, SEED_MAX + 1):
        assert error_of(lambda seed=seed: vec.seed(seed)) == f"seed: got {seed!r}; {SEED_RANGE}"
    vec.seed(np.int64(3))
    vec.reset()


# --------------------------------------------------------------------------------------------
# The fuzz script
# --------------------------------------------------------------------------------------------


def test_fuzz_script_short_run_finds_no_failures(capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("fuzz_cli", ROOT / "benchmarks" / "fuzz.py")
    fuzz = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, fuzz)  # its dataclasses look their module up
    spec.loader.exec_module(fuzz)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no stray warnings (casts, overflows) either
        code = fuzz.main(["--cases", "60", "--steps", "40", "--seed", "1", "--network", "none"])
    output = capsys.readouterr().out
    assert code == 0, output
    assert "total failures: 0" in output and "pettingzoo.step.continuous" in output
