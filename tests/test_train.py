"""train.py and agents/run_config.py: config loading and errors, run folder, TensorBoard tags,
determinism, and resume == uninterrupted (short MAPPO runs on a 4-agent synthetic community)."""

from __future__ import annotations

import importlib.util
import io
import json
import math
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from run_records import assert_same, run_metrics, tensorboard_scalars
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train
from agents import registry
from agents.checkpoints import load_checkpoint
from agents.collector import Transition
from agents.run_config import build_run_config
from envs.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]

ITERATION = 8 * 16
"""Env-steps per MAPPO iteration of the small config: n_envs * rollout_steps."""


def small_config() -> dict:
    """Two episodes per environment (2 * 96 steps), evaluated and checkpointed every 4
    iterations."""
    return {
        "algo": "mappo", "seed": 3, "name": "test",
        "env": {"community": {"feeder": "synthetic", "n_agents": 4},
                "network": {"model": "none"}},
        "train": {"total_steps": 8 * 96 * 2, "n_envs": 8, "eval_every": 4 * ITERATION,
                  "eval_episodes": 4, "checkpoint_every": 4 * ITERATION, "torch_threads": 1},
        "mappo": {"rollout_steps": 16, "hidden_sizes": [32, 32], "update_epochs": 2,
                  "n_minibatches": 2},
    }


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def only_run(logdir: Path) -> Path:
    (run_dir,) = [p for p in logdir.iterdir() if p.is_dir()]
    return run_dir


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """One uninterrupted run through the command line."""
    tmp = tmp_path_factory.mktemp("reference")
    config = write_config(tmp / "small.yaml", small_config())
    assert train.main(["--config", str(config), "--logdir", str(tmp / "runs"),
                       "--no-progress"]) == 0
    return only_run(tmp / "runs")


# ------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------


def test_default_config_builds():
    config = build_run_config(ROOT / "configs" / "mappo.yaml")
    assert config.algo == "mappo" and config.env.community.feeder == "1-LV-rural1--0-sw"
    assert config.env.n_envs == config.train.n_envs and config.env.seed == config.seed


@pytest.mark.parametrize(("override", "named"), [
    ("train.total_stepz=3", "train.total_stepz"),
    ("mappo.learning_rate=0.1", "mappo.learning_rate"),
    ("env.market.mechanizm=mmr", "env.market.mechanizm"),
    ("train.n_envs=many", "train.n_envs"),
    ("mappo.gamma=1.5", "mappo.gamma"),
    ("algo=ppo2", "algo"),
    ("dqn.lr=1", "dqn"),
])
def test_bad_override_names_the_key(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        build_run_config(ROOT / "configs" / "mappo.yaml", [override])


@pytest.mark.parametrize(("overrides", "named"), [
    (["train.eval_episodes=-1"], "train.eval_episodes"),
    (["train.eval_episodes=0"], "train.eval_every"),  # mappo.yaml evaluates every 50,000
    (["train.eval_episodes=0", "train.eval_every=10"], "train.eval_every"),
])
def test_no_evaluations_needs_no_evaluation_interval(overrides, named):
    """train.eval_episodes=0 (no evaluations) with an eval_every that would run some is one
    error naming eval_every, not an interval silently ignored."""
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        build_run_config(ROOT / "configs" / "mappo.yaml", overrides)
    assert build_run_config(ROOT / "configs" / "mappo.yaml", [
        "train.eval_episodes=0", "train.eval_every=0"]).train.eval_episodes == 0


def test_bad_override_on_the_command_line(tmp_path, capsys):
    code = train.main(["--logdir", str(tmp_path), "train.eval_evry=5"])
    assert code == 2
    assert "train.eval_evry" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # failed before creating a run folder


def test_env_base_file_merged_with_inline_keys():
    data = small_config()
    data["env"] = {"base": "configs/env/synthetic.yaml", "community": {"n_agents": 3},
                   "market": {"mechanism": "mmr"}}
    config = build_run_config(data, ["env.market.k=0.3"])
    assert config.env.community.feeder == "synthetic" and config.env.community.n_agents == 3
    assert config.env.market.mechanism == "mmr" and config.env.market.k == 0.3
    data["env"] = "configs/env/synthetic.yaml"  # a path alone
    assert build_run_config(data).env.community.n_agents == 10


def test_env_keys_owned_by_the_run_are_rejected_inline():
    data = small_config()
    data["env"]["n_envs"] = 3
    with pytest.raises(ConfigError, match=r"env\.n_envs.*train\.n_envs"):
        build_run_config(data)


def test_registry_lists_mappo():
    assert "mappo" in registry.names()
    assert registry.get("mappo").name == "mappo"


# ------------------------------------------------------------------------------------------
# A run
# ------------------------------------------------------------------------------------------


def test_run_folder_contents(reference_run):
    assert reference_run.name.startswith("test__mappo__3__")
    for name in ("config.yaml", "checkpoint_latest.pt", "checkpoint_best.pt", "metrics.json"):
        assert (reference_run / name).is_file(), name
    assert not list(reference_run.glob("*.tmp"))
    logged = build_run_config(reference_run / "config.yaml")
    assert logged == build_run_config(small_config())  # the logged config is what ran
    metrics = json.loads((reference_run / "metrics.json").read_text())
    assert metrics["global_step"] == small_config()["train"]["total_steps"]
    assert math.isfinite(metrics["final_eval"]["episodic_return"])
    assert load_checkpoint(reference_run)["global_step"] == metrics["global_step"]


def test_event_file_tags(reference_run):
    tags = set(tensorboard_scalars(reference_run))
    shared = {f"charts/{name}" for name in (
        "episodic_return", "community_cost", "savings_vs_no_p2p", "clearing_price",
        "p2p_volume", "self_sufficiency", "voltage_violations", "SPS")}
    evaluation = {f"eval/{name}" for name in ("episodic_return", "community_cost",
                                              "savings_vs_no_p2p", "oracle_share",
                                              "gain_vs_best_rule")}
    losses = {f"losses/{name}" for name in ("policy_loss", "value_loss", "entropy",
                                            "approx_kl")}
    assert shared | evaluation | losses <= tags, sorted(shared | evaluation | losses - tags)
    events = EventAccumulator(str(reference_run))
    events.Reload()
    assert "hyperparameters/text_summary" in events.Tags()["tensors"]  # add_text


def test_eval_references_follow_the_task():
    assert build_run_config(small_config()).train.eval_reference == "oracle"
    data = {**small_config(), "env": {"task": "Grid-Rebound"}}
    assert build_run_config(data).train.eval_reference == "oracle_network"
    data = {**small_config(), "env": {"task": "Grid-Rebound"}}
    assert build_run_config(data, ["train.eval_reference=none"]).train.eval_reference == "none"
    with pytest.raises(ConfigError, match="train.eval_reference"):
        build_run_config(small_config(), ["train.eval_reference=best"])


@pytest.mark.slow
def test_reference_scalars_score_the_references_themselves(tmp_path, monkeypatch):
    """The best rule scored against the references gains exactly 0 on it, no_p2p captures 0
    of the oracle's savings, the oracle all of them; a second call reads the cache."""
    import evaluate
    from agents.leaderboard import best_rule

    monkeypatch.setenv("PEERGRID_CACHE", str(tmp_path))
    config = build_run_config(small_config())
    env_config = train.eval_env_config(config)
    days = train.evaluation_days(env_config, 4)
    references = train.evaluation_references(env_config, days, 3, "oracle")
    assert len(references["oracle_savings"]) == len(days)
    name, cost = best_rule(references["rule_costs"])
    evaluator = evaluate.Evaluator(env_config, days, seed=3)
    rule = train.reference_scalars(evaluator.run(name).totals, references)
    assert rule["gain_vs_best_rule"] == pytest.approx(0.0, abs=1e-9)
    assert train.reference_scalars(evaluator.run("no_p2p").totals,
                                   references)["oracle_share"] == pytest.approx(0.0, abs=1e-6)
    oracle = train.reference_scalars(evaluator.run("oracle").totals, references)
    assert oracle["oracle_share"] == pytest.approx(1.0, abs=1e-9)
    assert oracle["gain_vs_best_rule"] >= -1e-6  # the oracle bounds every rule
    assert 0.0 < rule["oracle_share"] <= 1.0 + 1e-6
    (cached,) = (tmp_path / "references").iterdir()
    monkeypatch.setattr(evaluate.Evaluator, "run", None)  # evaluating again would fail
    assert train.evaluation_references(env_config, days, 3, "oracle") == references
    cached.write_text("{ damaged")
    monkeypatch.undo()
    monkeypatch.setenv("PEERGRID_CACHE", str(tmp_path))
    assert train.evaluation_references(env_config, days, 3, "oracle") == references


@pytest.mark.slow
def test_a_discrete_run_is_compared_with_the_rules_of_the_task(tmp_path, monkeypatch):
    """The references of a run with discrete actions are the continuous task's, as the
    leaderboard's: its rules are not rounded to the run's action grid (on a 3-level grid the
    rules cost more, which made a discrete learner look better than it is)."""
    import evaluate
    from agents.leaderboard import best_rule

    monkeypatch.setenv("PEERGRID_CACHE", str(tmp_path))
    continuous = train.eval_env_config(build_run_config(small_config()))
    discrete = train.eval_env_config(build_run_config(
        small_config(), ["env.action.type=discrete", "env.action.battery_levels=3",
                         "env.action.price_levels=2"]))
    assert discrete.action.type == "discrete"
    days = train.evaluation_days(continuous, 3)
    references = train.evaluation_references(discrete, days, 3, "oracle")
    assert references == train.evaluation_references(continuous, days, 3, "oracle")
    name, cost = best_rule(references["rule_costs"])
    on_grid = float(evaluate.Evaluator(discrete, days, seed=3).run(name)
                    .per_day["community_cost"].mean())
    assert abs(on_grid - cost) > 1e-3  # the grid changes what the rule pays


def test_same_seed_same_curves(reference_run, tmp_path):
    config = write_config(tmp_path / "small.yaml", small_config())
    assert train.main(["--config", str(config), "--logdir", str(tmp_path / "runs"),
                       "--no-progress"]) == 0
    again = only_run(tmp_path / "runs")
    assert tensorboard_scalars(reference_run, speed=False) == tensorboard_scalars(
        again, speed=False)
    assert run_metrics(reference_run) == run_metrics(again)


def test_resume_equals_uninterrupted(reference_run, tmp_path):
    config = build_run_config(small_config())
    run_dir = train.new_run_dir(tmp_path, config)
    # interrupted one iteration after its checkpoint at 4 iterations
    assert train.Trainer(config, run_dir, progress=False).run(
        stop_after_steps=5 * ITERATION) is None
    assert load_checkpoint(run_dir)["global_step"] == 4 * ITERATION
    assert not (run_dir / "metrics.json").exists()
    assert train.main(["--resume", str(run_dir), "--no-progress"]) == 0

    assert run_metrics(reference_run) == run_metrics(run_dir)
    expected = load_checkpoint(reference_run)["algorithm"]
    resumed = load_checkpoint(run_dir)["algorithm"]
    for name in ("actor", "critic", "log_std"):
        for key, value in expected[name].items():
            torch.testing.assert_close(resumed[name][key], value, rtol=0, atol=0)
    # events after the checkpoint were purged and logged again
    assert tensorboard_scalars(reference_run, speed=False) == tensorboard_scalars(
        run_dir, speed=False)


def test_resume_rejects_overrides(reference_run, capsys):
    assert train.main(["--resume", str(reference_run), "seed=4"]) == 2
    assert "--resume" in capsys.readouterr().err


@pytest.mark.parametrize("damage", [b"", b"not a checkpoint", None])
def test_resume_from_a_damaged_checkpoint_is_a_clear_error(reference_run, tmp_path, damage,
                                                           capsys):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(reference_run, run_dir)
    path = run_dir / "checkpoint_latest.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3] if damage is None else damage)
    assert train.main(["--resume", str(run_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint_latest.pt" in err and "Traceback" not in err


def test_checkpoint_by_wall_clock_time(tmp_path):
    """With checkpoint_every 0, checkpoint_minutes still writes checkpoint_latest.pt, so a
    run killed early can be resumed; stale temporaries of a killed writer are removed."""
    data = small_config()
    data["train"].update(checkpoint_every=0, checkpoint_minutes=1e-9)
    config = build_run_config(data)
    run_dir = train.new_run_dir(tmp_path, config)
    stale = run_dir / ".checkpoint_latest.pt.x1y2.tmp"
    stale.write_bytes(b"partial")
    assert train.Trainer(config, run_dir, progress=False).run(
        stop_after_steps=2 * ITERATION) is None
    assert not stale.exists()
    assert load_checkpoint(run_dir)["global_step"] == 2 * ITERATION


@pytest.mark.parametrize("eval_every", [4 * ITERATION, 0])
def test_the_final_checkpoint_is_written_once(tmp_path, monkeypatch, eval_every):
    """The iteration that ends a run writes no periodic checkpoint_latest.pt: the final one,
    with the final evaluation's state, follows at once (an off-policy run's buffers make a
    write seconds to minutes; with train.keep_buffers=false the final one drops them)."""
    data = small_config()  # 12 iterations, checkpoints after the 4th and 8th, and the final
    data["train"]["eval_every"] = eval_every
    config = build_run_config(data)
    run_dir = train.new_run_dir(tmp_path, config)
    written = []
    real_save = train.save_checkpoint

    def counting_save(checkpoint, path):
        if Path(path).name == "checkpoint_latest.pt":
            written.append(checkpoint["trainer"]["last_eval_step"])
        return real_save(checkpoint, path)

    monkeypatch.setattr(train, "save_checkpoint", counting_save)
    train.Trainer(config, run_dir, progress=False).run()
    assert written[:-1] == ([4 * ITERATION, 8 * ITERATION] if eval_every else [0, 0])
    final = 12 * ITERATION
    assert written[-1] == final  # the file holds the final evaluation's state
    assert load_checkpoint(run_dir)["trainer"]["last_eval_step"] == final


def test_one_process_per_run_folder(tmp_path):
    config = build_run_config(small_config())
    run_dir = train.new_run_dir(tmp_path, config)
    first = train.Trainer(config, run_dir, progress=False)
    with pytest.raises(ConfigError, match="in use"):
        train.Trainer(config, run_dir, progress=False)
    first.release()
    train.Trainer(config, run_dir, progress=False).release()


def test_racing_run_folders_are_distinct(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    config = build_run_config(small_config())
    with ThreadPoolExecutor(8) as pool:
        folders = list(pool.map(lambda _: train.new_run_dir(tmp_path, config), range(16)))
    assert len(set(folders)) == 16 and all((f / "config.yaml").is_file() for f in folders)


@pytest.mark.parametrize("override", ["name=../../escape", "name=a/b", "name=..", "seed=-1",
                                      f"seed={2**64}"])
def test_run_name_and_seed_are_checked(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"'{key}'"):
        build_run_config(small_config(), [override])


def test_unsupported_action_type_leaves_no_run_folder(tmp_path, capsys):
    code = train.main(["--config", str(ROOT / "configs" / "ddpg.yaml"), "--logdir",
                       str(tmp_path), "env.action.type=discrete", "--no-progress"])
    assert code == 2
    assert "discrete" in capsys.readouterr().err
    assert not any(p for p in tmp_path.iterdir() if p.is_dir())


def test_replay_buffer_wraps_samples_and_restores():
    from agents.buffers import ReplayBuffer

    buffer = ReplayBuffer(5, n_agents=2, obs_dim=3, state_dim=4, action_shape=(2,),
                          action_dtype=torch.float32)

    def transition(value: float) -> Transition:
        b = 3
        return Transition(torch.full((b, 2, 3), value), torch.full((b, 4), value),
                          torch.full((b, 2, 2), value), torch.full((b, 2), value),
                          torch.full((b, 2, 3), value + 1), torch.full((b, 4), value + 1),
                          torch.zeros(b, dtype=torch.bool), torch.zeros(b, dtype=torch.bool),
                          {})

    buffer.add(transition(1.0))
    buffer.add(transition(2.0))  # 6 env-steps into 5 slots: the oldest is overwritten
    assert len(buffer) == 5 and buffer.position == 1
    assert buffer.rewards[:, 0].tolist() == [2.0, 1.0, 1.0, 2.0, 2.0]
    copy = ReplayBuffer(5, 2, 3, 4, (2,), torch.float32)
    copy.load_state_dict(buffer.state_dict())
    first = buffer.sample(4, torch.Generator().manual_seed(0))
    second = copy.sample(4, torch.Generator().manual_seed(0))
    for key, value in first.items():
        assert torch.equal(value, second[key]), key
    assert torch.equal(first["next_obs"][:, 0, 0], first["obs"][:, 0, 0] + 1)


def test_replay_buffer_n_step_returns_by_hand(monkeypatch):
    """Two environments, one agent, rewards 10 * step + env; environment 0's episode ends at
    step 1. From env 1's step 0, three steps sum 1 + g * 11 + g^2 * 21 and bootstrap from
    step 2's next state with g^3; from env 0's step 0 the sum stops at its episode's end;
    from step 2 only the stored steps count (2 of 3)."""
    from agents.buffers import ReplayBuffer

    gamma, b = 0.5, 2
    buffer = ReplayBuffer(16, n_agents=1, obs_dim=1, state_dim=1, action_shape=(1,),
                          action_dtype=torch.float32)
    for step in range(4):
        reward = torch.tensor([[10.0 * step], [10.0 * step + 1]])
        value = torch.tensor([[[step * 1.0]], [[step * 1.0]]])
        buffer.add(Transition(value, value[:, 0], value, reward, value + 1, value[:, 0] + 1,
                              torch.tensor([step == 1, False]), torch.zeros(b, dtype=torch.bool),
                              {}))

    slots = torch.tensor([1, 0, 4, 5])  # env 1 step 0, env 0 step 0, env 0 step 2, env 1 step 2
    monkeypatch.setattr(torch, "randint", lambda *args, **kwargs: slots)  # the start slots
    batch = buffer.sample_n_step(4, torch.Generator(), n_step=3, gamma=gamma, stride=b)
    expected = [1 + gamma * 11 + gamma**2 * 21, 0 + gamma * 10, 20 + gamma * 30,
                21 + gamma * 31]
    assert batch["rewards"][:, 0].tolist() == pytest.approx(expected)
    assert batch["discount"].tolist() == pytest.approx([gamma**3, 0.0, gamma**2, gamma**2])
    assert batch["next_obs"][:, 0, 0].tolist() == [3.0, 2.0, 4.0, 4.0]  # after the last step
    assert batch["obs"][:, 0, 0].tolist() == [0.0, 0.0, 2.0, 2.0]


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[1].glob("configs/*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_algorithm_config_builds(path):
    """Each configs/<algo>.yaml (or configs/<algo>_<variant>.yaml) names a registered
    algorithm and validates as shipped."""
    from agents import registry

    config = build_run_config(path)
    assert path.stem == config.algo or path.stem.startswith(f"{config.algo}_")
    assert config.algo in registry.names()


def test_overrides_may_stand_between_options():
    """``key=value`` overrides before, between and after options all reach the run (argparse's
    plain ``parse_args`` refused an override after an option that followed another override;
    the leaderboard's parser: tests/test_leaderboard.py)."""
    import evaluate
    from agents import sweep

    args = train.parse_args(["seed=3", "--no-progress", "train.total_steps=10", "--task", "Flat",
                             "name=x"])
    assert args.overrides == ["seed=3", "train.total_steps=10", "name=x"]
    assert args.no_progress and args.task == "Flat"
    args = evaluate.parse_args(["community.n_agents=4", "--no-plots", "market.k=0.3"])
    assert args.overrides == ["community.n_agents=4", "market.k=0.3"] and args.no_plots
    args = sweep.parse_args(["seed=1", "--seeds", "0-1", "train.n_envs=8"])
    assert args.overrides == ["seed=1", "train.n_envs=8"]


def test_a_checkpoint_that_cannot_be_written_ends_the_run_with_one_message(tmp_path, capsys,
                                                                          monkeypatch):
    """A full disk while writing checkpoint_latest.pt: one error naming the file and how to
    resume, exit code 2, no traceback."""
    from agents import checkpoints

    real_save = checkpoints.atomic_save

    def full_disk(obj, path):
        if Path(path).name == "checkpoint_latest.pt":
            raise OSError(28, "No space left on device")
        return real_save(obj, path)

    monkeypatch.setattr(checkpoints, "atomic_save", full_disk)
    config = write_config(tmp_path / "small.yaml", small_config())
    assert train.main(["--config", str(config), "--logdir", str(tmp_path / "runs"),
                       "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "cannot write the checkpoint" in err and "Traceback" not in err
    assert f"python train.py --resume {only_run(tmp_path / 'runs')}" in err


# ------------------------------------------------------------------------------------------
# Evaluations during training do not change what is trained
# ------------------------------------------------------------------------------------------

UPDATES_FROM_THE_START = {"mappo": {"rollout_steps": 16}, "qlearning": {"rollout_steps": 16},
                          "ddpg": {"learning_starts": 64}, "maddpg": {"learning_starts": 64},
                          "dqn": {"learning_starts": 64}, "sb3_td3": {"learning_starts": 64},
                          "sb3_dqn": {"learning_starts": 64}}
"""Sections that make the learners update several times within the short runs below."""

DISCRETE = ("dqn", "qlearning", "sb3_dqn")
"""The learners that act on the discrete action grid."""


def _zip_members(data: bytes) -> dict[str, object]:
    """The files of a stable-baselines3 model zip (``SB3Algorithm.state_dict``'s ``model``),
    the ``.pth`` ones as loaded tensors, without time stamps (the zip's, and ``start_time``
    in ``data``: when training started) and the classes it names."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members: dict[str, object] = {
            name: torch.load(io.BytesIO(archive.read(name)), weights_only=True)
            if name.endswith(".pth") else archive.read(name) for name in archive.namelist()}
    # SB3 stores objects in data as {":type:", ":serialized:" (a pickle), ...}; pickling a
    # class the first time adds __slotnames__ to it, so the second run's description of the
    # policy and replay buffer classes differs: compare everything but those classes
    members["data"] = {key: value for key, value in json.loads(members["data"]).items()
                       if key != "start_time" and not (isinstance(value, dict) and value.get(
                           ":type:") == "<class 'abc.ABCMeta'>")}
    return members


@pytest.mark.parametrize("algo", registry.names())
def test_evaluations_do_not_change_what_is_trained(tmp_path, monkeypatch, algo):
    """A run that evaluates every 2 iterations ends in the same state, bit for bit (networks,
    optimisers, replay buffers, generator, collector), and with the same final evaluation, as
    one that evaluates only before and after training, and in the same state as one that never
    evaluates (train.eval_episodes=0: no evaluation env, no checkpoint_best.pt, empty
    final_eval): evaluations use their own environments and no random stream of training. The
    leaderboard relies on it (its cells train with train.eval_every=0 and
    train.eval_episodes=0, not record settings: benchmarks/leaderboard.py)."""
    if algo.startswith("sb3_"):
        pytest.importorskip("stable_baselines3")
    calls = []
    real_evaluate = train.Trainer.evaluate

    def counting_evaluate(self):
        calls.append(self.collector.global_step)
        return real_evaluate(self)

    monkeypatch.setattr(train.Trainer, "evaluate", counting_evaluate)
    states, finals = [], []
    for eval_every, episodes in ((2 * ITERATION, 2), (0, 2), (0, 0)):
        data = {"algo": algo, "seed": 5, "name": "evals",
                "env": {"community": {"feeder": "synthetic", "n_agents": 4},
                        "network": {"model": "none"},
                        "action": {"type": "discrete" if algo in DISCRETE else "continuous"}},
                "train": {"total_steps": 8 * ITERATION, "n_envs": 8, "eval_every": eval_every,
                          "eval_episodes": episodes, "checkpoint_every": 0,
                          "torch_threads": 1},
                **({algo: UPDATES_FROM_THE_START[algo]} if algo in UPDATES_FROM_THE_START
                   else {})}
        config = build_run_config(data)
        run_dir = train.new_run_dir(tmp_path / f"{eval_every}_{episodes}", config)
        calls.clear()
        trainer = train.Trainer(config, run_dir, progress=False)
        metrics = trainer.run()
        final = metrics["global_step"]
        if episodes:
            # before and after training, and in the first run at least twice in between
            assert calls[0] == 0 and calls[-1] == final >= 8 * ITERATION, calls
            assert len(calls) >= 4 if eval_every else len(calls) == 2, calls
            assert (run_dir / "checkpoint_best.pt").is_file()
        else:
            assert calls == [] and trainer.eval_env is None
            assert metrics["final_eval"] == {} == metrics["best_eval"]
            assert not (run_dir / "checkpoint_best.pt").exists()
            assert "no evaluation (train.eval_episodes=0)" in train.summary_text(
                run_dir, metrics, tmp_path)
        checkpoint = load_checkpoint(run_dir)
        state = {key: checkpoint[key] for key in ("algorithm", "collector", "generator",
                                                  "global_step")}
        if isinstance(state["algorithm"].get("model"), bytes):  # stable-baselines3's zip
            state["algorithm"]["model"] = _zip_members(state["algorithm"]["model"])
        states.append(state)
        finals.append(metrics["final_eval"])
    assert_same(states[0], states[1])
    assert_same(states[0], states[2])
    assert finals[0] == finals[1]


@pytest.mark.parametrize("algo", registry.names())
def test_train_profile_times_every_algorithm(tmp_path, algo):
    """``benchmarks/train_profile.py`` times the parts of a run of every registered
    algorithm (the SB3 baselines through their model's ``train`` and acting calls), the run
    still writes its checkpoint (SB3 pickles its model and replay buffer, which must not
    hold the timing wrappers), and undoing the wrappers leaves the classes as they were."""
    if algo.startswith("sb3_"):
        pytest.importorskip("stable_baselines3")
    spec = importlib.util.spec_from_file_location("train_profile_cli",
                                                  ROOT / "benchmarks" / "train_profile.py")
    profile = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(profile)
    data = {"algo": algo, "seed": 5, "name": "profile",
            "env": {"community": {"feeder": "synthetic", "n_agents": 4},
                    "network": {"model": "none"},
                    "action": {"type": "discrete" if algo in DISCRETE else "continuous"}},
            "train": {"total_steps": 4 * ITERATION, "n_envs": 8, "eval_every": 0,
                      "eval_episodes": 2, "checkpoint_every": 0, "torch_threads": 1},
            **({algo: UPDATES_FROM_THE_START[algo]} if algo in UPDATES_FROM_THE_START
               else {})}
    config = build_run_config(data)
    run_dir = train.new_run_dir(tmp_path, config)
    trainer = train.Trainer(config, run_dir, progress=False)
    model = getattr(trainer.algorithm, "model", None)
    before = dict(vars(type(model))) if model is not None else {}
    timer = profile.Timer()
    profile.instrument(trainer, timer)
    try:
        trainer.run()
    finally:
        timer.restore()
    assert timer.calls["update"] > 0 and timer.seconds["update"] > 0.0
    assert timer.seconds["policy (forward, sampling)"] > 0.0
    assert timer.calls["env step (core)"] >= 4 * ITERATION // 8
    assert (run_dir / "checkpoint_latest.pt").is_file()
    assert not hasattr(trainer.env.step, "__wrapped__")
    if model is not None:
        assert dict(vars(type(model))) == before
