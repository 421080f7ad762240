"""The shared battery in the evaluation: its per-day metrics (envs.metrics, evaluate.py's
tables) and ``evaluate.py --storage-sweep`` (shared battery against home batteries)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

import evaluate
from agents.baselines import make_policy
from agents.evaluation import chunk_seed
from envs import metrics
from envs.config import env_config
from envs.core import BatchedP2PEnv
from envs.data import load_feeder
from envs.storage import AGENT_INFO, ENV_INFO

CONFIG = {"community": {"feeder": "synthetic", "n_agents": 5, "battery_share": 0.6},
          "network": {"model": "none"}}
VIRTUAL = {**CONFIG, "storage": {"mode": "virtual", "capacity_kwh": 30.0, "power_kw": 15.0,
                                 "subscription_kwh": 5.0}}
DAYS = [40, 170]
"""A winter and a summer day."""


def _write(tmp_path: Path, config: dict, name: str = "env.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def _rollout(config: dict, day: int, policy: str = "self_consumption"):
    """One episode of ``policy`` in a one-env core: its step infos and the accumulator's
    totals (reset as ``agents.evaluation.evaluate_policy`` resets, seed 0)."""
    cfg = env_config(config, n_envs=1)
    community = cfg.community
    data = load_feeder(community.feeder, n_agents=community.n_agents, seed=community.seed)
    env = BatchedP2PEnv(cfg, data)
    agent = make_policy(policy)
    obs, _ = env.reset(seed=0, days=[day])
    agent.reset(env, seed=chunk_seed(0, 0))
    accumulator = metrics.EpisodeAccumulator(env.n_envs, env.n_agents, device=env.device)
    infos, totals = [], None
    for _ in range(env.episode_steps):
        obs, reward, _, _, info = env.step(agent.act(obs, env))
        infos.append({k: v.detach().double().clone() for k, v in info.items()
                      if isinstance(v, torch.Tensor)})
        totals = accumulator.update(info, reward)
    assert totals is not None
    return cfg, env, infos, totals


# --------------------------------------------------------------------------------------------
# The shared battery's metrics
# --------------------------------------------------------------------------------------------


def test_storage_metrics_are_the_sums_of_the_step_infos():
    cfg, _, infos, totals = _rollout(VIRTUAL, DAYS[1])
    assert all(key in infos[0] for key in (*AGENT_INFO, *ENV_INFO))
    usable = metrics.storage_usable_kwh(cfg.storage)
    assert usable == pytest.approx(0.8 * 30.0)
    summary = {k: float(v[0]) for k, v in metrics.evaluation_summary(totals, usable).items()}

    def total(key: str, reduce) -> float:
        return sum(float(reduce(info[key][0])) for info in infos)

    throughput = total("storage_energy_kwh", abs)
    assert throughput > 1.0  # a sunny day: the battery is used
    assert summary["storage_throughput_kwh"] == pytest.approx(throughput, rel=1e-9)
    assert summary["storage_cycles"] == pytest.approx(throughput / (2 * 0.8 * 30.0))
    assert summary["storage_stored_kwh"] == pytest.approx(total("storage_stored_kwh", sum))
    assert summary["storage_drawn_kwh"] == pytest.approx(total("storage_drawn_kwh", sum))
    assert summary["storage_loss_kwh"] == pytest.approx(total("storage_loss_kwh", float))
    assert summary["storage_cost"] == pytest.approx(total("storage_cost", float))
    assert summary["storage_payout"] == pytest.approx(total("storage_payout", sum))
    assert summary["storage_p2p_kwh"] == pytest.approx(total("storage_p2p_kwh", abs))
    assert summary["storage_stored_kwh"] > 0.0
    # Without the usable capacity the cycles are undefined, the sums are still there.
    plain = metrics.evaluation_summary(totals)
    assert math.isnan(float(plain["storage_cycles"][0]))
    assert float(plain["storage_throughput_kwh"][0]) == pytest.approx(throughput)


def test_the_shared_battery_balances_its_energy():
    """Cells: change = AC flow - conversion loss; AC side: the members' net store
    (sum s_i - sum d_i) = AC flow - the battery's own grid exchange (virtual mode)."""
    _, env, infos, _ = _rollout(VIRTUAL, DAYS[1])
    start = env.storage.initial_kwh
    flow = sum(float(info["storage_energy_kwh"][0]) for info in infos)
    loss = sum(float(info["storage_loss_kwh"][0]) for info in infos)
    end = float(infos[-1]["storage_soc_kwh"][0])
    assert end - start == pytest.approx(flow - loss, abs=1e-4)  # float32 core
    for info in infos:
        members = float(info["storage_stored_kwh"][0].sum() - info["storage_drawn_kwh"][0].sum())
        ac = float(info["storage_energy_kwh"][0] - info["storage_grid_kwh"][0])
        assert members == pytest.approx(ac, abs=1e-5)
        assert float(info["storage_loss_kwh"][0]) >= -1e-9


def test_the_evaluation_reports_the_shared_battery_only_when_it_is_on(tmp_path, capsys):
    args = ["--policies", "no_p2p,self_consumption", "--days", ",".join(map(str, DAYS)),
            "--batch-size", "2", "--no-plots", "--no-progress"]
    plain, shared = tmp_path / "plain", tmp_path / "shared"
    assert evaluate.main([*args, "--config", str(_write(tmp_path, CONFIG)),
                          "--out", str(plain)]) == 0
    assert "Shared battery" not in capsys.readouterr().out
    report = json.loads((plain / "results.json").read_text())
    for row in report["results"]:
        assert not [key for key in row if key.startswith("storage_")]
    for values in report["per_day"].values():
        assert not [key for key in values if key.startswith("storage_")]
    assert "storage_" not in (plain / "results.csv").read_text()

    assert evaluate.main([*args, "--config", str(_write(tmp_path, VIRTUAL, "v.yaml")),
                          "--out", str(shared)]) == 0
    printed = capsys.readouterr().out
    assert "## Shared battery (storage.mode virtual, 30 kWh, 15 kW)" in printed
    rows = {row["policy"]: row for row in json.loads(
        (shared / "results.json").read_text())["results"]}
    for key in metrics.STORAGE_METRICS:
        assert f"{key}_mean" in rows["self_consumption"]
    _, _, infos, _ = _rollout(VIRTUAL, DAYS[1])
    per_day = json.loads((shared / "results.json").read_text())["per_day"]
    throughput = sum(float(info["storage_energy_kwh"][0].abs()) for info in infos)
    assert per_day["self_consumption@uniform"]["storage_throughput_kwh"][1] == pytest.approx(
        throughput)
    with (shared / "results.csv").open() as handle:
        assert "storage_cycles_mean" in next(csv.DictReader(handle))


# --------------------------------------------------------------------------------------------
# --storage-sweep
# --------------------------------------------------------------------------------------------


def test_sweep_configs_size_both_layouts():
    cfg = env_config(CONFIG)
    data = load_feeder("synthetic", n_agents=5, seed=0)
    per_unit = evaluate.home_kwh_per_unit(cfg, data)
    assert per_unit == pytest.approx(data.annual_kwh.sum() / 1000.0, rel=1e-5)
    shared = evaluate.sweep_config(cfg, "shared", 40.0, per_unit, 5)
    assert shared.storage.mode == "virtual" and shared.storage.capacity_kwh == 40.0
    assert shared.storage.power_kw == pytest.approx(40.0 * cfg.community.battery_c_rate)
    assert shared.community.battery_share == 0.0
    assert shared.storage.subscription_kwh == pytest.approx(0.8 * 40.0 / 5)
    home = evaluate.sweep_config(cfg, "home", 40.0, per_unit, 5)
    assert home.storage.mode == "none" and home.community.battery_share == 1.0
    env = BatchedP2PEnv(env_config(home, n_envs=1), data)
    assert float(env.capacity_kwh.double().sum()) == pytest.approx(40.0, rel=1e-5)
    assert bool((env.capacity_kwh > 0).all())
    assert evaluate.sweep_config(cfg, "shared", 0.0, per_unit, 5).storage.mode == "none"
    market = env_config(CONFIG, **{"storage.mode": "market"})
    assert evaluate.sweep_config(market, "shared", 40.0, per_unit, 5).storage.mode == "market"


def test_home_equivalent_interpolates_the_home_curve():
    sizes, home = [0.0, 10.0, 20.0], [1.0, 1.0, 3.0]
    assert evaluate.home_equivalent(2.0, sizes, home) == (15.0, "15.0")
    assert evaluate.home_equivalent(0.5, sizes, home) == (0.0, "0.0")
    capacity, text = evaluate.home_equivalent(4.0, sizes, home)
    assert math.isnan(capacity) and text == "> max"
    assert evaluate.home_equivalent(2.0, [5.0, 10.0], [2.5, 3.0]) == (5.0, "<= 5")


def test_storage_sweep_writes_one_row_per_policy_layout_and_size(tmp_path, capsys):
    out = tmp_path / "sweep"
    code = evaluate.main(["--config", str(_write(tmp_path, CONFIG)), "--storage-sweep",
                          "20,0,8", "--policies", "no_p2p,self_consumption", "--days",
                          ",".join(map(str, DAYS)), "--batch-size", "2", "--no-progress",
                          "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "## Storage sweep" in printed and "### self_consumption" in printed
    for name in ("storage_sweep.csv", "storage_sweep.md", "storage_sweep.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    assert not (out / "results.json").exists()
    with (out / "storage_sweep.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    keys = [(r["policy"], r["layout"], float(r["capacity_kwh"])) for r in rows]
    assert sorted(keys) == sorted((p, layout, s) for p in ("no_p2p", "self_consumption")
                                  for layout in ("shared", "home") for s in (0.0, 8.0, 20.0))
    by = {key: row for key, row in zip(keys, rows, strict=True)}
    for policy in ("no_p2p", "self_consumption"):
        zero_shared, zero_home = by[(policy, "shared", 0.0)], by[(policy, "home", 0.0)]
        assert float(zero_shared["savings_mean"]) == float(zero_home["savings_mean"])
        assert float(zero_shared["savings_std"]) == float(zero_home["savings_std"])
        for size in (8.0, 20.0):
            assert float(by[(policy, "home", size)]["installed_kwh"]) == pytest.approx(
                size, rel=1e-5)
            assert by[(policy, "shared", size)]["home_equivalent"] != ""
            assert float(by[(policy, "shared", size)]["storage_cycles_mean"]) >= 0.0
    # no_p2p never touches home batteries (it saves nothing with them); the shared battery
    # (virtual accounts) is used before the market, whatever the policy.
    assert float(by[("no_p2p", "home", 20.0)]["savings_mean"]) == pytest.approx(0.0, abs=1e-9)
    assert float(by[("no_p2p", "shared", 20.0)]["throughput_kwh_mean"]) > 0.0
    assert float(by[("self_consumption", "home", 20.0)]["throughput_kwh_mean"]) > 0.0
    assert int(rows[0]["days"]) == len(DAYS)

    code = evaluate.main(["--config", str(_write(tmp_path, CONFIG)), "--storage-sweep", "0,5",
                          "--policies", "no_p2p", "--days", str(DAYS[0]), "--no-progress",
                          "--no-plots", "--out", str(tmp_path / "bare")])
    assert code == 0
    assert not (tmp_path / "bare" / "storage_sweep.png").exists()
    assert (tmp_path / "bare" / "storage_sweep.csv").is_file()


@pytest.mark.parametrize("sizes", ["0,-5", "0,abc", "10,10", ",", "1e9", "nan"])
def test_a_bad_size_list_exits_2_naming_the_option(sizes, tmp_path, capsys):
    code = evaluate.main(["--config", str(_write(tmp_path, CONFIG)), "--storage-sweep", sizes,
                          "--policies", "no_p2p", "--days", str(DAYS[0]), "--no-progress",
                          "--out", str(tmp_path / "out")])
    assert code == 2
    error = capsys.readouterr().err
    assert "--storage-sweep" in error
    assert error.count("error:") == 1
    assert not (tmp_path / "out").exists()


def test_oracle_reports_the_shared_battery_use() -> None:
    """The P2P oracle plans the shared battery: its throughput and losses are reported
    (losses = the efficiencies applied to the planned flows), its accounts and bill are not
    (NaN: a central plan has none)."""

    from agents.baselines import make_oracle
    from envs import make_batched_env

    env = make_batched_env(None, n_envs=1, **{
        "community.feeder": "synthetic", "community.n_agents": 4, "network.model": "none",
        "storage.mode": "market", "compile": False})
    totals, results = make_oracle("oracle").evaluate(env, [170])
    charge, discharge = results[0].shared_charge_kwh, results[0].shared_discharge_kwh
    assert float(totals.env["storage_throughput_kwh"][0]) == pytest.approx(
        float(charge.sum() + discharge.sum()))
    assert float(totals.env["storage_loss_kwh"][0]) == pytest.approx(
        float(charge.sum() * 0.05 + discharge.sum() * (1 / 0.95 - 1)))
    assert float(totals.env["storage_throughput_kwh"][0]) > 0.0
    assert math.isnan(float(totals.env["storage_cost"][0]))
