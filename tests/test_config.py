"""Config loading (envs/config.py): YAML, overrides, strict errors."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from envs.config import (
    MAX_ACTION_LEVELS,
    MAX_AGENTS,
    MAX_ENVS,
    SEED_MAX,
    ConfigError,
    EnvConfig,
    NetworkConfig,
    apply_overrides,
    build_config,
    env_config,
    from_dict,
    parse_yaml,
    to_dict,
)

CONFIGS = sorted(Path(__file__).parents[1].joinpath("configs", "env").glob("*.yaml"))


def test_default_yaml_documents_the_defaults():
    assert build_config(EnvConfig, "configs/env/default.yaml") == EnvConfig()


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_env_config_loads(path):
    config = build_config(EnvConfig, path)
    assert build_config(EnvConfig, to_dict(config)) == config


def test_dotted_overrides_and_yaml_values():
    config = build_config(EnvConfig, None, ["market.mechanism=mmr", "n_envs=8",
                                            "tariff.retail_tou=[" + ",".join(["0.3"] * 24) + "]"])
    assert config.market.mechanism == "mmr" and config.n_envs == 8
    assert config.tariff.hourly()[0] == [0.3] * 24
    assert env_config(None, market={"k": 0.2}, **{"battery.soc_min": 0.05}).battery.soc_min == 0.05


@pytest.mark.parametrize(("overrides", "message"), [
    (["nonsense=1"], "unknown config key 'nonsense'; allowed keys in '<root>'"),
    (["network.model=dc"], "config key 'network.model': got 'dc'; allowed: one of"),
    (["episode.test_every=1"], "config key 'episode.test_every'"),
    (["episode.length_days=0"], "config key 'episode.length_days': got 0; allowed: an "
                                "integer in [1, 10]"),
    (["episode.length_days=11"], "config key 'episode.length_days': got 11"),
    (["episode.length_days=1.5"], "config key 'episode.length_days'"),
    (["observation.include_voltage=3"], "config key 'observation.include_voltage': got 3; "
                                        "allowed: true or false"),
    (["market.k=high"], "config key 'market.k': got 'high'; allowed: a finite number"),
    (["market=3"], "config key 'market': got 3; allowed: a mapping"),
    (["n_envs"], "expected key=value"),
    # A continuous double auction of one agent has no counterpart (two agents are fine).
    (["market.mechanism=cda", "community.feeder=synthetic", "community.n_agents=1"],
     "config key 'market.mechanism': got 'cda'; allowed: a mechanism other than 'cda' for a "
     "community of one agent"),
])
def test_errors_name_the_key_and_what_is_allowed(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        build_config(EnvConfig, None, overrides)


def test_cda_needs_two_agents_and_is_accepted_with_them():
    config = build_config(EnvConfig, None, ["market.mechanism=cda", "community.feeder=synthetic",
                                            "community.n_agents=2"])
    assert config.market.mechanism == "cda" and config.community.n_agents == 2


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_config(EnvConfig, tmp_path / "missing.yaml")


def _raises(message: str):
    return pytest.raises(ConfigError, match=re.escape(message))


# --- Bad numbers: every float is finite -------------------------------------------------------

FLOAT_KEYS = ["community.pv_kwp_per_mwh", "community.battery_kwh_per_mwh",
              "community.battery_c_rate", "battery.degradation_cost", "tariff.retail",
              "tariff.feed_in", "network.voltage_penalty", "network.line_penalty",
              "network.p2p_fee", "network.p2p_distance_fee", "network.matching_temperature",
              "observation.forecast_noise", "reward_scale"]


@pytest.mark.parametrize("text", [".inf", "-.inf", ".nan", "1e400", "1e300", "-2e12"])
@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_non_finite_floats_are_rejected(key, text):
    with _raises(f"config key '{key}': got "):
        build_config(EnvConfig, None, [f"{key}={text}"])
    with _raises("allowed: a finite number"):
        build_config(EnvConfig, None, [f"{key}={text}"])


def test_huge_floats_that_would_overflow_float32_are_rejected():
    """Found by benchmarks/fuzz.py: a C-rate of 1e300 passed the checks and became infinite
    battery power in the float32 tables (NaN rewards in the numba engine)."""
    with _raises("config key 'community.battery_c_rate': got 1e+300; allowed: a finite "
                 "number of magnitude at most 1e+12"):
        build_config(EnvConfig, None, ["community.battery_c_rate=1e300"])
    assert build_config(EnvConfig, None, ["community.battery_c_rate=4.0"])


def test_non_finite_list_items_and_python_values_are_rejected():
    hours = ["0.3"] * 23 + [".inf"]
    with _raises("config key 'tariff.retail_tou[23]': got inf; allowed: a finite number"):
        build_config(EnvConfig, None, ["tariff.retail_tou=[" + ",".join(hours) + "]"])
    with _raises("config key 'reward_scale': got nan; allowed: a finite number"):
        env_config(None, reward_scale=math.nan)
    with _raises("config key 'network.line_penalty': got 10"):  # an int too large for a float
        env_config(None, network={"line_penalty": 10**400})
    # A config object built in Python is checked again when it enters through build_config.
    direct = EnvConfig(network=NetworkConfig(voltage_penalty=math.inf))
    with _raises("config key 'network.voltage_penalty': got inf; allowed: a finite number"):
        build_config(EnvConfig, direct)


@dataclass(frozen=True)
class _AgentLikeConfig:
    """Stands for the agents' configs (TrainConfig, the algorithms' Config): they are built by
    the same from_dict and get the same checks without any code of their own."""

    learning_rate: float = 3e-4
    """A float without a range check of its own."""
    total_steps: int = 1000
    """An integer without a range check of its own."""


@pytest.mark.parametrize(("data", "message"), [
    ({"learning_rate": math.inf}, "config key 'algo.learning_rate': got inf; allowed: a finite"),
    ({"learning_rate": math.nan}, "config key 'algo.learning_rate': got nan; allowed: a finite"),
    ({"total_steps": 2**64}, "config key 'algo.total_steps': got 18446744073709551616; "
                             "allowed: an integer in [-2**63, 2**63 - 1] (int64)"),
    ({"total_steps": 1.5}, "config key 'algo.total_steps': got 1.5; allowed: an integer"),
])
def test_every_config_built_by_from_dict_gets_the_number_checks(data, message):
    with _raises(message):
        from_dict(_AgentLikeConfig, data, prefix="algo.")


def test_integral_floats_are_accepted_for_integers():
    assert from_dict(_AgentLikeConfig, {"total_steps": 1e6}).total_steps == 1_000_000
    assert build_config(EnvConfig, None, ["n_envs=1e1"]).n_envs == 10
    config = apply_overrides({}, ["algo.total_steps=2e5"])
    assert from_dict(_AgentLikeConfig, config["algo"]).total_steps == 200_000


@pytest.mark.parametrize(("overrides", "message"), [
    (["tariff.retail=0", "tariff.feed_in=0"], "config key 'tariff.retail': got [0.0, "),
    (["tariff.retail_tou=[" + ",".join(["0.3"] * 23 + ["0"]) + "]", "tariff.feed_in=0"],
     "allowed: > 0 in every hour"),
    (["tariff.retail=0.3", "tariff.feed_in=0.31"], "allowed: retail >= feed-in in every hour"),
    (["tariff.retail=0.3", "tariff.feed_in=-0.01"], "config key 'tariff.feed_in'"),
])
def test_retail_prices_are_positive_and_at_least_feed_in(overrides, message):
    with _raises(message):
        build_config(EnvConfig, None, overrides)


# --- YAML: errors name the file or override; 3e-4 is a float; no duplicate keys --------------


def test_yaml_syntax_error_in_an_override_names_the_override():
    with _raises("override 'tariff.retail_tou=[0.3,': invalid YAML at line 1, column 6"):
        build_config(EnvConfig, None, ["tariff.retail_tou=[0.3,"])
    with _raises("override 'market={k: 0.1, k: 0.2}': invalid YAML"):
        build_config(EnvConfig, None, ["market={k: 0.1, k: 0.2}"])


@pytest.mark.parametrize(("payload", "message"), [
    (b"market: {mechanism: mmr\n", "invalid YAML at line 2, column 1"),
    (b"market:\n  k: 0.3\n   mechanism: mmr\n", "invalid YAML at line 3"),
    (b"market:\n\tk: 0.3\n", "invalid YAML at line 2"),
    (b"market:\n  mechanism: \xff\xfe\xfa\n", "invalid YAML: "),  # not UTF-8
    (b"market:\n  k: 0.3\n  k: 0.4\n", "line 3, column 3: while constructing a mapping: found "
                                       "duplicate key 'k' (first given on line 2)"),
    (b"n_envs: 2\nmarket: {}\nn_envs: 4\n", "found duplicate key 'n_envs' (first given on line 1)"),
])
def test_broken_yaml_file_names_the_file(tmp_path, payload, message):
    path = tmp_path / "broken.yaml"
    path.write_bytes(payload)
    with _raises(f"config file '{path}': "):
        build_config(EnvConfig, path)
    with _raises(message):
        build_config(EnvConfig, path)


def test_yaml_merge_keys_may_still_be_overridden():
    assert parse_yaml("a: &a {x: 1, y: 2}\nb:\n  <<: *a\n  x: 3\n", "text") == {
        "a": {"x": 1, "y": 2}, "b": {"x": 3, "y": 2}}


@pytest.mark.parametrize(("text", "value"), [
    ("3e-4", 3e-4), ("1.0e5", 1.0e5), ("1e6", 1e6), ("-2E+3", -2000.0), ("1.5e-3", 1.5e-3),
    (".5e1", 5.0), ("1.e+10", 1e10), ("0.3", 0.3), ("1_000", 1000), ("7", 7),
    ("1e", "1e"), ("e5", "e5"), ("cpu", "cpu"), ("1e3x", "1e3x"),
])
def test_exponent_floats_parse_as_numbers(text, value):
    parsed = parse_yaml(f"key: {text}", "text")["key"]
    assert parsed == value and type(parsed) is type(value)


def test_exponent_floats_in_files_and_overrides(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("reward_scale: 3e-4\nnetwork:\n  voltage_penalty: 1.0e5\n")
    config = build_config(EnvConfig, path, ["network.line_penalty=2e1", "market.k=5e-1"])
    assert config.reward_scale == 3e-4 and config.network.voltage_penalty == 1e5
    assert config.network.line_penalty == 20.0 and config.market.k == 0.5


# --- Seeds and sizes --------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "message"), [
    ([f"seed={2**64}"], f"config key 'seed': got {2**64}; allowed: an integer in [-2**63, "),
    ([f"seed={2**63 - 1}"], f"config key 'seed': got {2**63 - 1}; allowed: an integer in "
                            f"[0, {SEED_MAX}]"),
    (["seed=-1"], f"config key 'seed': got -1; allowed: an integer in [0, {SEED_MAX}]"),
    ([f"community.seed={2**64}"], "config key 'community.seed': got "),
    (["community.seed=-5"], "config key 'community.seed': got -5; allowed: an integer in [0, "),
    (["community.feeder=synthetic", "community.n_agents=1e6"],
     f"config key 'community.n_agents': got 1000000; allowed: an integer in [1, {MAX_AGENTS}]"),
    (["community.feeder=synthetic", "community.n_agents=0"],
     "config key 'community.n_agents': got 0; allowed: an integer in [1, "),
    (["n_envs=1e10"], f"config key 'n_envs': got 10000000000; allowed: an integer in "
                      f"[1, {MAX_ENVS}]"),
    (["n_envs=0"], "config key 'n_envs': got 0; allowed: an integer in [1, "),
    (["action.battery_levels=1e9"], "config key 'action.battery_levels': got 1000000000; "
                                    f"allowed: an integer in [2, {MAX_ACTION_LEVELS}]"),
    (["action.price_levels=1000"], "config key 'action.price_levels': got 1000; allowed: an "
                                   "integer in [2, "),
    (["action.price_levels=1"], "config key 'action.price_levels': got 1; allowed: "),
    (["episode.test_every=367"], "config key 'episode.test_every': got 367; allowed: 0 (no "
                                 "test days) or an integer in [2, 366]"),
    (["episode.test_every=-7"], "config key 'episode.test_every': got -7; allowed: "),
    (["episode.days=test", "episode.test_every=0"],
     "config key 'episode.days': got 'test'; allowed: 'train' or 'all' when "
     "episode.test_every is 0"),
])
def test_seeds_and_sizes_out_of_range_name_the_key_and_range(overrides, message):
    with _raises(message):
        build_config(EnvConfig, None, overrides)


def test_largest_allowed_seeds_and_sizes_pass():
    config = build_config(EnvConfig, None, [
        f"seed={SEED_MAX}", f"community.seed={SEED_MAX}", f"n_envs={MAX_ENVS}",
        f"action.battery_levels={MAX_ACTION_LEVELS}", "episode.test_every=366"])
    assert config.seed + config.n_envs < 2**63  # environment b's seed, seed + b, is int64
    assert build_config(EnvConfig, None, ["community.feeder=synthetic",
                                          f"community.n_agents={MAX_AGENTS}"])


def test_absurd_sizes_fail_before_the_env_allocates_anything():
    import envs

    with _raises("config key 'n_envs': got 10000000000"):
        envs.make_batched_env(None, n_envs=1e10)
    with _raises("config key 'community.n_agents': got 1000000"):
        envs.make_batched_env(None, community={"feeder": "synthetic", "n_agents": 10**6})
