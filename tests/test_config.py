"""Config loading (envs/config.py): YAML, overrides, strict errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from envs.config import ConfigError, EnvConfig, build_config, env_config, to_dict

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
    (["observation.include_voltage=3"], "config key 'observation.include_voltage': got 3; "
                                        "allowed: true or false"),
    (["market.k=high"], "config key 'market.k': got 'high'; allowed: a number"),
    (["market=3"], "config key 'market': got 3; allowed: a mapping"),
    (["n_envs"], "expected key=value"),
])
def test_errors_name_the_key_and_what_is_allowed(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        build_config(EnvConfig, None, overrides)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_config(EnvConfig, tmp_path / "missing.yaml")
