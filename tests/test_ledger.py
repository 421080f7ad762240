"""The tamper-evident trade ledger (envs/ledger.py) and the bilateral matching behind it
(envs.market.bilateral_trades): sums against the env's infos, tamper detection, bad files,
the command line and the hooks in evaluate.py and the PettingZoo env."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import envs
import evaluate
from agents.baselines import make_policy
from agents.evaluation import evaluate_policy
from envs import ledger, market
from envs.ledger import LedgerError, LedgerWriter

CONFIG = {"community": {"feeder": "synthetic", "n_agents": 7, "pv_share": 0.6,
                        "battery_share": 0.4},
          "network": {"model": "none"}}
DAYS = [40, 150, 250]  # two batches of two: the second is padded


class InfoRecorder:
    """Forwards to a ledger and keeps what the env's infos say, per episode and agent."""

    def __init__(self, writer: LedgerWriter) -> None:
        self.writer = writer
        self.p2p_payment: dict[int, np.ndarray] = {}
        self.grid_payment: dict[int, np.ndarray] = {}
        self.surplus: dict[int, float] = {}

    def start_episodes(self, episodes, days, seeds):
        self.writer.start_episodes(episodes, days, seeds)

    def record_step(self, info, episodes, step):
        self.writer.record_step(info, episodes, step)
        for b, episode in enumerate(episodes):
            for name, store in (("p2p_payment", self.p2p_payment),
                                ("grid_payment", self.grid_payment)):
                store[episode] = store.get(episode, 0.0) + info[name][b].double().numpy()
            self.surplus[episode] = (self.surplus.get(episode, 0.0)
                                     + float(info["operator_surplus"][b]))


def _evaluate_with_ledger(path: Path, mechanism: str, days=DAYS) -> InfoRecorder:
    env = envs.make_batched_env(CONFIG, n_envs=2, **{"market.mechanism": mechanism})
    recorder = InfoRecorder(LedgerWriter(path, env.config, env.agent_names, seed=3,
                                         meta={"policy": "zi"}))
    evaluate_policy(env, make_policy("zi"), days, seed=3, recorder=recorder)
    recorder.writer.close()
    return recorder


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("mechanism", market.MECHANISMS)
def test_ledger_of_an_evaluation_sums_to_the_infos(tmp_path, mechanism):
    path = tmp_path / "run.ledger.sqlite"
    recorder = _evaluate_with_ledger(path, mechanism)
    report = ledger.verify(path)
    assert report.ok and report.sealed, report.problems
    tables = ledger.read_tables(path)
    header = tables["header"].iloc[0]
    assert header["mechanism"] == mechanism and header["seed"] == 3
    assert json.loads(header["config"])["market"]["mechanism"] == mechanism
    assert list(tables["episodes"]["day"]) == DAYS  # padding left out
    payments, trades = tables["payments"], tables["trades"]
    n_agents = 7
    assert len(payments) == len(tables["orders"]) == len(DAYS) * 96 * n_agents
    assert tables["seal"]["n_rows"].iloc[0] == report.n_rows == sum(
        len(tables[t]) for t in ledger.TABLES)

    # Payments per agent and episode are the infos', and so are the totals.
    for column, store in (("p2p_payment", recorder.p2p_payment),
                          ("grid_payment", recorder.grid_payment)):
        summed = payments.groupby(["episode", "agent"])[column].sum().unstack().to_numpy()
        expected = np.stack([store[e] for e in range(len(DAYS))])
        np.testing.assert_allclose(summed, expected, rtol=1e-9, atol=1e-9)

    # Bilateral trades: energy and money balance per agent and step, surplus per step.
    if mechanism == "none":
        assert trades.empty
        return
    assert len(trades) > 0
    keys = ["episode", "step"]
    bought = payments.assign(kwh=payments.p2p_energy_kwh.clip(lower=0))
    sold = payments.assign(kwh=(-payments.p2p_energy_kwh).clip(lower=0))
    for side, frame, sign in (("buyer", bought, 1.0), ("seller", sold, -1.0)):
        money = "buyer_payment" if side == "buyer" else "seller_revenue"
        traded = trades.groupby([*keys, side])[["quantity_kwh", money]].sum()
        traded.index = traded.index.set_names([*keys, "agent"])
        merged = frame.set_index([*keys, "agent"]).join(traded, how="left").fillna(0.0)
        np.testing.assert_allclose(merged["quantity_kwh"], merged["kwh"], atol=2e-5)
        own = merged["p2p_payment"] * sign
        np.testing.assert_allclose(merged[money], own.where(merged["kwh"] > 0, 0.0),
                                   atol=1e-5)
    margin = (trades.buyer_payment - trades.seller_revenue).groupby(trades.episode).sum()
    surplus = np.array([recorder.surplus.get(e, 0.0) for e in margin.index])
    np.testing.assert_allclose(margin.to_numpy(), surplus, atol=1e-5)
    if mechanism != "mcafee":
        assert (trades.buyer_price == trades.seller_price).all()


@pytest.mark.parametrize("mechanism", market.MECHANISMS)
@pytest.mark.parametrize("ties", [True, False])
def test_bilateral_trades_balance_energy_and_money(mechanism, ties):
    generator = torch.Generator().manual_seed(7)
    shape = (64, 9)
    quantity = torch.randn(shape, generator=generator, dtype=torch.float64)
    quantity[torch.rand(shape, generator=generator) < 0.15] = 0.0
    if ties:  # many agents on one price level
        price = 0.08 + 0.05 * torch.randint(0, 5, shape, generator=generator).double()
    else:
        price = 0.05 + 0.3 * torch.rand(shape, generator=generator, dtype=torch.float64)
    retail, feed_in = torch.full((64,), 0.3).double(), torch.full((64,), 0.08).double()
    arrival = {"arrival_rank": _random_rank(shape, 8)} if mechanism == "cda" else {}
    cleared = market.clear(mechanism, price, quantity, retail, feed_in, k=0.3, **arrival)
    pairs = market.bilateral_trades(mechanism, price, cleared.p2p_energy, cleared.p2p_payment,
                                    cleared.clearing_price, cleared.operator_surplus, retail,
                                    feed_in, k=0.3, **arrival)
    bought = cleared.p2p_energy.clamp(min=0.0)
    sold = (-cleared.p2p_energy).clamp(min=0.0)
    assert (pairs.quantity >= 0).all()
    torch.testing.assert_close(pairs.quantity.sum(2), bought, atol=1e-12, rtol=0)
    torch.testing.assert_close(pairs.quantity.sum(1), sold, atol=1e-12, rtol=0)
    paid = (pairs.quantity * pairs.buyer_price).sum(2)
    received = (pairs.quantity * pairs.seller_price).sum(1)
    torch.testing.assert_close(torch.where(bought > 0, paid, 0.0),
                               cleared.p2p_payment.clamp(min=0.0), atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.where(sold > 0, received, 0.0),
                               (-cleared.p2p_payment).clamp(min=0.0), atol=1e-12, rtol=0)
    margin = (pairs.quantity * (pairs.buyer_price - pairs.seller_price)).sum((1, 2))
    torch.testing.assert_close(margin, cleared.operator_surplus, atol=1e-12, rtol=0)
    if mechanism in ("uniform", "pay_as_bid", "cda"):
        # The order book's matching: a pair trades only if the bid covers the ask.
        clamped = price.clamp(0.08, 0.3)
        traded = pairs.quantity > 0
        assert (clamped[:, :, None] >= clamped[:, None, :])[traded].all()
    if mechanism == "cda":  # each pair at the bid or the ask, whichever rested
        clamped = torch.minimum(torch.maximum(price, feed_in[:, None]), retail[:, None])
        bid, ask = clamped[:, :, None].expand_as(traded), clamped[:, None, :].expand_as(traded)
        at_bid_or_ask = (pairs.buyer_price == bid) | (pairs.buyer_price == ask)
        assert at_bid_or_ask[traded].all()


def _random_rank(shape: tuple[int, int], seed: int) -> torch.Tensor:
    """``[B, N]`` a random arrival order per row (the ``arrival_rank`` of ``cda``)."""
    draws = torch.rand(shape, generator=torch.Generator().manual_seed(seed))
    return draws.argsort(1).argsort(1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cda_pairs_replayed_from_p2p_energy_are_the_auctions_fills(dtype):
    """bilateral_trades replays the auction with each quantity cut to its P2P energy: the
    pairs equal the fills of the auction on the full quantities (an order's unfilled rest
    was never reached by a later order), also from float32 infos."""
    generator = torch.Generator().manual_seed(9)
    shape = (128, 11)
    quantity = torch.randn(shape, generator=generator, dtype=torch.float64)
    quantity[torch.rand(shape, generator=generator) < 0.15] = 0.0
    price = 0.08 + 0.04 * torch.randint(0, 6, shape, generator=generator).double()
    price = torch.where(torch.rand(shape, generator=generator) < 0.5, price,
                        0.05 + 0.3 * torch.rand(shape, generator=generator, dtype=torch.float64))
    rank = _random_rank(shape, 10)
    price, quantity = price.to(dtype), quantity.to(dtype)
    cleared = market.clear("cda", price, quantity, 0.3, 0.08, arrival_rank=rank)
    clamped = price.clamp(0.08, 0.3).double()
    fills = market._continuous_double_auction(  # the auction itself, on the full quantities
        clamped, quantity.double().clamp(min=0.0), (-quantity.double()).clamp(min=0.0), rank,
        with_fills=True).fills
    buyer = (quantity > 0)[:, :, None] & (quantity < 0)[:, None, :]
    expected = torch.where(buyer, fills + fills.transpose(1, 2), 0.0)
    pairs = market.bilateral_trades("cda", price, cleared.p2p_energy, cleared.p2p_payment,
                                    cleared.clearing_price, cleared.operator_surplus, 0.3, 0.08,
                                    arrival_rank=rank)
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(pairs.quantity, expected, atol=tolerance, rtol=0)
    assert int((expected > 0).sum()) > 100  # many trades


def test_pool_mechanisms_split_pro_rata():
    quantity = torch.tensor([[2.0, 1.0, -1.0, -3.0]], dtype=torch.float64)
    price = torch.full_like(quantity, 0.2)
    cleared = market.clear("mmr", price, quantity, 0.3, 0.1)
    pairs = market.bilateral_trades("mmr", price, cleared.p2p_energy, cleared.p2p_payment,
                                    cleared.clearing_price, cleared.operator_surplus, 0.3, 0.1)
    # 3 kWh matched: the sellers sell 0.75 and 2.25; seller j gives buyer i
    # bought_i * sold_j / 3, all at the mid-market rate 0.2.
    expected = torch.zeros(4, 4, dtype=torch.float64)
    expected[0, 2], expected[0, 3], expected[1, 2], expected[1, 3] = 0.5, 1.5, 0.25, 0.75
    torch.testing.assert_close(pairs.quantity[0], expected)
    assert float(pairs.buyer_price[0, 0, 2]) == float(pairs.seller_price[0, 0, 2]) == 0.2


# --------------------------------------------------------------------------------------------
# Tampering
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sealed_ledger(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("ledger") / "mcafee.ledger.sqlite"
    _evaluate_with_ledger(path, "mcafee", days=[100, 200])
    return path


@pytest.fixture
def copy(sealed_ledger, tmp_path) -> Path:
    target = tmp_path / "copy.sqlite"
    shutil.copyfile(sealed_ledger, target)
    return target


def _sql(path: Path, statement: str, *args) -> list:
    with sqlite3.connect(path) as connection:
        rows = connection.execute(statement, args).fetchall()
    connection.close()
    return rows


def _middle_seq(path: Path, table: str) -> int:
    seqs = [row[0] for row in _sql(path, f"SELECT seq FROM {table} ORDER BY seq")]
    return seqs[len(seqs) // 2]


ALTERATIONS = {
    "episodes": "day = day + 1",
    "markets": "retail_price = retail_price * 1.0000001",
    "orders": "side = CASE side WHEN 'buy' THEN 'sell' ELSE 'buy' END",
    "trades": "quantity_kwh = quantity_kwh + 0.001",
    "payments": "grid_payment = grid_payment - 0.01",
}


@pytest.mark.parametrize("table", list(ALTERATIONS))
def test_an_altered_row_is_named(copy, table):
    seq = _middle_seq(copy, table)
    _sql(copy, f"UPDATE {table} SET {ALTERATIONS[table]} WHERE seq = ?", seq)
    report = ledger.verify(copy)
    assert [(p.kind, p.table, p.seq) for p in report.problems] == [("altered", table, seq)]
    assert f"{table} row seq {seq}" in report.problems[0].message


def _hash_of(path: Path, seq: int) -> str:
    for table in ledger.TABLES:
        rows = _sql(path, f"SELECT hash FROM {table} WHERE seq = ?", seq)
        if rows:
            return rows[0][0]
    raise KeyError(seq)


def test_an_altered_hash_and_a_rehashed_row_are_detected(copy, sealed_ledger):
    seq = _middle_seq(copy, "payments")
    _sql(copy, "UPDATE payments SET hash = ? WHERE seq = ?", "0" * 64, seq)
    report = ledger.verify(copy)
    assert [(p.kind, p.seq) for p in report.problems] == [("altered", seq)]

    # Alter a row and recompute its own hash: the next row no longer chains to it.
    shutil.copyfile(sealed_ledger, copy)
    (*values, _), = _sql(copy, f"SELECT {_columns('payments')} FROM payments WHERE seq = ?", seq)
    values[-1] += 1.0  # grid_payment
    names = [name for name, _ in ledger.TABLES["payments"]]
    row = ledger.canonical_rows("payments", {n: np.asarray([v]) for n, v in
                                             zip(names, values, strict=True)})
    rehashed = hashlib.sha256(bytes.fromhex(_hash_of(copy, seq - 1)) + row).hexdigest()
    _sql(copy, "UPDATE payments SET grid_payment = ?, hash = ? WHERE seq = ?", values[-1],
         rehashed, seq)
    report = ledger.verify(copy)
    assert [(p.kind, p.seq) for p in report.problems] == [("altered", seq + 1)]
    assert "re-hashed" in report.problems[0].message


@pytest.mark.parametrize("table", ["orders", "trades", "markets"])
def test_a_deleted_row_is_named(copy, table):
    seq = _middle_seq(copy, table)
    _sql(copy, f"DELETE FROM {table} WHERE seq = ?", seq)
    report = ledger.verify(copy)
    assert [(p.kind, p.seq) for p in report.problems] == [("deleted", seq)]
    assert f"seq {seq} deleted" in report.problems[0].message


def test_rows_deleted_at_the_end_are_detected(copy):
    last = _sql(copy, "SELECT MAX(seq) FROM payments")[0][0]
    _sql(copy, "DELETE FROM payments WHERE seq >= ?", last - 2)
    report = ledger.verify(copy)
    assert [(p.kind, p.seq) for p in report.problems] == [("deleted", last - 2)]
    assert f"seq {last - 2}..{last} deleted at the end" in report.problems[0].message


def _columns(table: str) -> str:
    return ", ".join([name for name, _ in ledger.TABLES[table]] + ["hash"])


@pytest.mark.parametrize("how", ["changed copy", "exact copy", "appended"])
def test_an_inserted_row_is_named(copy, how):
    seq = _middle_seq(copy, "trades")
    columns = _columns("trades")
    source = f"SELECT {columns} FROM trades WHERE seq = ?"
    if how == "changed copy":
        _sql(copy, f"INSERT INTO trades ({columns}) SELECT seq, episode, step, buyer, seller, "
                   f"quantity_kwh * 2, buyer_price, seller_price, buyer_payment * 2, "
                   f"seller_revenue * 2, hash FROM trades WHERE seq = ?", seq)
    elif how == "exact copy":
        _sql(copy, f"INSERT INTO trades ({columns}) {source}", seq)
    else:
        end = _sql(copy, "SELECT n_rows FROM seal")[0][0]
        _sql(copy, f"INSERT INTO trades ({columns}) SELECT ?, episode, step, buyer, seller, "
                   f"quantity_kwh, buyer_price, seller_price, buyer_payment, seller_revenue, "
                   f"hash FROM trades WHERE seq = ?", end, seq)
        seq = end
    report = ledger.verify(copy)
    assert [(p.kind, p.table, p.seq) for p in report.problems] == [("inserted", "trades", seq)]
    assert "inserted" in report.problems[0].message


def test_header_seal_and_expected_head(copy, sealed_ledger):
    head = ledger.verify(sealed_ledger).head
    assert ledger.verify(copy, expect_head=head).ok
    assert [p.kind for p in ledger.verify(copy, expect_head="ab" * 32).problems] == ["seal"]
    _sql(copy, "UPDATE header SET seed = 4")
    assert [p.kind for p in ledger.verify(copy).problems] == ["header"]
    shutil.copyfile(sealed_ledger, copy)
    _sql(copy, "DELETE FROM seal")
    report = ledger.verify(copy)
    assert not report.sealed and [p.kind for p in report.problems] == ["seal"]


def test_canonical_bytes_follow_the_documented_layout(sealed_ledger):
    """Recompute the first two rows' hashes from the module docstring's definition."""
    (*header, stored_header), = _sql(sealed_ledger, f"SELECT {', '.join(ledger.HEADER_COLUMNS)}"
                                                    f", hash FROM header")
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=True)
    previous = hashlib.sha256(text.encode()).digest()
    assert previous.hex() == stored_header
    (seq, episode, day, seed, stored), = _sql(sealed_ledger,
                                              f"SELECT {_columns('episodes')} FROM episodes "
                                              f"WHERE seq = 0")
    row = struct.pack("<Bqqqq", 1, seq, episode, day, seed)
    assert hashlib.sha256(previous + row).hexdigest() == stored
    orders = _sql(sealed_ledger, f"SELECT {_columns('orders')} FROM orders ORDER BY seq LIMIT 1")
    seq, episode, step, agent, side, price, quantity, stored = orders[0]
    row_before = _sql(sealed_ledger, "SELECT hash FROM markets WHERE seq = ?", seq - 1)[0][0]
    row = struct.pack("<Bqqqqqdd", 3, seq, episode, step, agent, ledger.SIDES[side], price,
                      quantity)
    assert hashlib.sha256(bytes.fromhex(row_before) + row).hexdigest() == stored


# --------------------------------------------------------------------------------------------
# Files that are not ledgers
# --------------------------------------------------------------------------------------------


def test_files_that_are_not_ledgers_give_one_clear_error(sealed_ledger, tmp_path, capsys):
    truncated = tmp_path / "truncated.sqlite"
    data = sealed_ledger.read_bytes()
    truncated.write_bytes(data[:len(data) // 2])
    cut_odd = tmp_path / "cut.sqlite"
    cut_odd.write_bytes(data[:len(data) - 100])
    other = tmp_path / "other.sqlite"
    _sql(other, "CREATE TABLE results (x REAL)")
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n")
    cases = [(truncated, "truncated"), (cut_odd, "truncated"),
             (other, "not a peergrid ledger"), (text, "not an SQLite file"),
             (tmp_path / "missing.sqlite", "no such file")]
    for path, words in cases:
        with pytest.raises(LedgerError, match=words):
            ledger.verify(path)
        assert ledger.main(["verify", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and words in err[0]
    with pytest.raises(LedgerError, match="not an SQLite file"):
        ledger.read_tables(text)


def test_writer_refuses_an_existing_file_and_writing_after_close(sealed_ledger, tmp_path):
    config = envs.env_config(CONFIG)
    with pytest.raises(ValueError, match="exists already"):
        LedgerWriter(sealed_ledger, config, ["a"])
    writer = LedgerWriter(tmp_path / "new.sqlite", config, ["a"])
    head = writer.close()
    assert writer.close() == head and ledger.verify(tmp_path / "new.sqlite").ok
    with pytest.raises(RuntimeError, match="closed"):
        writer.start_episodes([0], [1], [None])


# --------------------------------------------------------------------------------------------
# Command line and hooks
# --------------------------------------------------------------------------------------------


def test_cli_verify_and_export(sealed_ledger, copy, tmp_path, capsys):
    assert ledger.main(["verify", str(sealed_ledger)]) == 0
    assert "chain intact" in capsys.readouterr().out
    assert ledger.main(["export", str(sealed_ledger), "--out", str(tmp_path / "csv")]) == 0
    tables = ledger.read_tables(sealed_ledger)
    for name, frame in tables.items():
        exported = (tmp_path / "csv" / f"{name}.csv").read_text().splitlines()
        assert len(exported) == len(frame) + 1
    seq = _middle_seq(copy, "trades")
    _sql(copy, "UPDATE trades SET buyer = seller WHERE seq = ?", seq)
    capsys.readouterr()
    assert ledger.main(["verify", str(copy)]) == 1
    assert f"altered: trades row seq {seq}" in capsys.readouterr().out
    assert ledger.main(["export", str(copy), "--out", str(tmp_path / "bad")]) == 1
    assert not (tmp_path / "bad").exists()
    assert ledger.main(["export", str(copy), "--out", str(tmp_path / "bad"), "--force",
                        "--tables", "trades"]) == 0
    assert [p.name for p in (tmp_path / "bad").iterdir()] == ["trades.csv"]


@pytest.mark.usefixtures("one_torch_thread")
def test_evaluate_writes_one_verified_ledger_per_policy(tmp_path, capsys):
    config = tmp_path / "env.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    out = tmp_path / "out"
    assert evaluate.main(["--config", str(config), "--policies", "zi,oracle", "--days", "5",
                          "--no-plots", "--no-progress", "--out", str(out), "--ledger",
                          str(out / "ledgers"), "--mechanisms", "mmr"]) == 0
    report = json.loads((out / "results.json").read_text())
    entries = {(e["policy"], e["mechanism"]): e for e in report["ledgers"]}
    assert set(entries) == {("zi", "uniform"), ("zi", "mmr")}  # the oracle has no market
    for entry in entries.values():
        assert ledger.verify(entry["path"], expect_head=entry["head"]).ok
        assert ledger.verify(entry["path"]).n_rows == entry["rows"]
    assert sorted(p.name for p in (out / "ledgers").iterdir()) == [
        "zi__mmr.ledger.sqlite", "zi__uniform.ledger.sqlite"]


def test_recorder_changes_nothing_in_an_evaluation(tmp_path):
    env = envs.make_batched_env(CONFIG, n_envs=2)
    plain, _ = evaluate_policy(env, make_policy("zi"), [7, 8], seed=1)
    writer = LedgerWriter(tmp_path / "l.sqlite", env.config, env.agent_names)
    recorded, _ = evaluate_policy(env, make_policy("zi"), [7, 8], seed=1, recorder=writer)
    writer.close()
    for key, value in plain.agent.items():
        torch.testing.assert_close(recorded.agent[key], value, equal_nan=True)


@pytest.mark.parametrize(("engine", "mechanism"), [("numba", "pay_as_bid"),
                                                   ("torch", "pay_as_bid"), ("numba", "cda"),
                                                   ("torch", "cda")])
def test_pettingzoo_env_writes_a_ledger(tmp_path, engine, mechanism):
    path = tmp_path / "pz.sqlite"
    env = envs.make_env({**CONFIG, "market": {"mechanism": mechanism}}, engine=engine,
                        ledger=path)
    assert envs.make_env(CONFIG, engine=engine)._ledger is None  # off by default
    paid: dict[str, float] = {}
    for episode in range(2):
        env.reset(seed=10 + episode, options={"day": 30})
        while env.agents:
            actions = {agent: env.action_space(agent).sample() for agent in env.agents}
            *_, infos = env.step(actions)
            for agent, info in infos.items():
                paid[agent] = paid.get(agent, 0.0) + info["p2p_payment"] + info["grid_payment"]
    env.close()
    report = ledger.verify(path)
    assert report.ok, report.problems
    tables = ledger.read_tables(path)
    assert list(tables["episodes"]["seed"]) == [10, 11]
    payments = tables["payments"]
    per_agent = (payments.p2p_payment + payments.grid_payment).groupby(payments.agent).sum()
    names = json.loads(tables["header"]["agent_names"].iloc[0])
    np.testing.assert_allclose(per_agent.to_numpy(), [paid[name] for name in names],
                               rtol=1e-9, atol=1e-9)
    # The trades carry the P2P money (cda: replayed from the arrival_rank info).
    trades = tables["trades"]
    assert len(trades) > 0
    np.testing.assert_allclose(trades.buyer_payment.sum(), payments.p2p_payment.clip(lower=0).sum(),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="exists already"):
        envs.make_env(CONFIG, engine=engine, ledger=path)
