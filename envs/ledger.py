"""A tamper-evident trade ledger: every step's orders, bilateral trades and payments in SQLite,
each row chained to the previous one by SHA-256.

    python -m envs.ledger verify PATH [--expect-head HEX]  # exit 0 intact, 1 tampered,
                                                           # 2 not a readable ledger
    python -m envs.ledger export PATH --out DIR [--force]  # one CSV per table

Written by :class:`LedgerWriter`, switched on by ``evaluate.py --ledger DIR`` (one file per
evaluated policy and mechanism, through ``agents.evaluation.evaluate_policy``'s ``recorder``)
and ``envs.make_env(..., ledger=PATH)`` (the PettingZoo env writes every step; ``close()``
seals the file). Off by default, and nothing is computed when off.

Tables (one SQLite file, :data:`SCHEMA_VERSION` 1; money in the tariffs' currency, energy in
kWh of the 15-minute step, prices in currency/kWh; ``agent``, ``buyer``, ``seller`` index the
header's ``agent_names``; ``episode`` numbers the ledger's episodes from 0, ``step`` counts the
steps inside an episode from 0):

=============  ===========================================================================
``header``     one row: ``format`` (``peergrid-ledger``), ``schema_version``, ``created_at``
               (UTC, ISO 8601), ``seed``, ``mechanism``, ``k``, ``agent_names``, ``config``
               (``envs.config.to_dict`` as JSON), ``meta`` (JSON: policy, days, ...), ``hash``
``episodes``   one row per episode: ``episode``, ``day`` (start day of the year), ``seed``
               (the environment's seed, -1 when none was given)
``markets``    one row per episode and step: ``day``, ``step_of_day``, ``retail_price``,
               ``feed_in_price``, ``clearing_price`` (NULL when nothing traded),
               ``operator_surplus``, ``p2p_volume_kwh``
``orders``     one row per agent and step: ``side`` (``buy``, ``sell`` or ``none``), ``price``
               (the posted bid or ask), ``quantity_kwh`` (>= 0, the net position's size)
``trades``     one row per bilateral trade: ``buyer``, ``seller``, ``quantity_kwh``,
               ``buyer_price``, ``seller_price``, ``buyer_payment`` (= quantity x buyer price),
               ``seller_revenue`` (= quantity x seller price); pairs from
               ``envs.market.bilateral_trades`` (the order book's matching for the auctions,
               the fills of ``cda`` replayed from the ``arrival_rank`` info, pro rata for
               the pool-priced mechanisms); pairs below 1e-12 of the step's
               volume are left out
``payments``   one row per agent and step, the env's infos: ``p2p_energy_kwh``,
               ``grid_energy_kwh`` (> 0 bought/imported), ``p2p_payment``, ``grid_payment``
               (> 0 paid, < 0 earned)
``seal``       one row written by ``close()``: ``n_rows``, ``head`` (the last row's hash),
               ``closed_at``, ``hash``
=============  ===========================================================================

Every table but ``header`` and ``seal`` starts with ``seq``, the row's place in one chain over
all tables (0, 1, 2, ...: each step writes its markets, orders, trades, then payments rows),
and ends with ``hash``.

Hashing. The canonical bytes of a row are a table code (one unsigned byte: episodes 1, markets
2, orders 3, trades 4, payments 5) followed by every column but ``hash`` in table order, each
as little-endian int64 (integers; ``side`` as +1 buy, -1 sell, 0 none) or IEEE-754 float64
(reals; NULL as the NaN ``0x7FF8000000000000``). ``hash = SHA-256(previous hash || canonical
bytes)`` over the raw 32-byte digests, stored as 64 hex digits; the previous hash of row 0 is
the header's. The header's hash is SHA-256 of the UTF-8 JSON array (``separators=(",", ":")``,
ASCII) ``[format, schema_version, created_at, seed, mechanism, k, agent_names, config,
meta]``, the last three as their stored JSON text; the seal's is SHA-256 of ``head`` (raw) ||
the JSON array ``[n_rows, closed_at]``.

Verification (:func:`verify`) recomputes the chain in ``seq`` order and names every row that
was altered (its content or hash no longer chain), deleted (a ``seq`` missing, or fewer rows
than sealed) or inserted (a ``seq`` held twice, or rows beyond the seal), and checks the header
and seal. A chain can be recomputed by whoever rewrites the whole file; keep the head hash
(``evaluate.py`` writes it into ``results.json``) and pass it as ``--expect-head``.
"""

from __future__ import annotations

import argparse
import datetime as _datetime
import hashlib
import json
import math
import sqlite3
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from envs import market
from envs.config import ConfigError, EnvConfig, to_dict
from envs.files import plain_json
from envs.info_schema import ARRIVAL_RANK

__all__ = ["FORMAT", "SCHEMA_VERSION", "TABLES", "LedgerError", "LedgerWriter", "Problem",
           "VerifyReport", "export_csv", "main", "read_tables", "verify"]

FORMAT = "peergrid-ledger"
"""The header's ``format``: what makes an SQLite file a peergrid ledger."""
SCHEMA_VERSION = 1
"""Version of the tables and the canonical serialisation (module docstring)."""

TABLES: dict[str, tuple[tuple[str, str], ...]] = {
    "episodes": (("seq", "i"), ("episode", "i"), ("day", "i"), ("seed", "i")),
    "markets": (("seq", "i"), ("episode", "i"), ("step", "i"), ("day", "i"),
                ("step_of_day", "i"), ("retail_price", "f"), ("feed_in_price", "f"),
                ("clearing_price", "f"), ("operator_surplus", "f"), ("p2p_volume_kwh", "f")),
    "orders": (("seq", "i"), ("episode", "i"), ("step", "i"), ("agent", "i"), ("side", "s"),
               ("price", "f"), ("quantity_kwh", "f")),
    "trades": (("seq", "i"), ("episode", "i"), ("step", "i"), ("buyer", "i"), ("seller", "i"),
               ("quantity_kwh", "f"), ("buyer_price", "f"), ("seller_price", "f"),
               ("buyer_payment", "f"), ("seller_revenue", "f")),
    "payments": (("seq", "i"), ("episode", "i"), ("step", "i"), ("agent", "i"),
                 ("p2p_energy_kwh", "f"), ("grid_energy_kwh", "f"), ("p2p_payment", "f"),
                 ("grid_payment", "f")),
}
"""The chained tables: column name and kind (``i`` int64, ``f`` float64, ``s`` side) in
canonical order, ``hash`` after them."""

TABLE_CODES = {name: code for code, name in enumerate(TABLES, start=1)}
"""First byte of a row's canonical bytes."""
SIDES = {"buy": 1, "sell": -1, "none": 0}
"""``orders.side`` and its code in the canonical bytes."""
HEADER_COLUMNS = ("format", "schema_version", "created_at", "seed", "mechanism", "k",
                  "agent_names", "config", "meta")
MIN_TRADE_SHARE = 1e-12
"""Pairs trading less than this share of their step's P2P volume are not written (float
rounding of the matching)."""
COMMIT_ROWS = 200_000
"""Rows written between commits."""
MAX_PRINTED = 20
"""Problems the ``verify`` command prints (all are in :func:`verify`'s report)."""
_SIDE_NAMES = {code: name for name, code in SIDES.items()}
_SQLITE_MAGIC = b"SQLite format 3\x00"
_NAN = np.float64(np.nan)


class LedgerError(Exception):
    """A file that cannot be read as a ledger: missing, not SQLite, truncated or damaged, or
    an SQLite database without the ledger's tables."""


# --------------------------------------------------------------------------------------------
# Canonical bytes and the chain (one implementation for the writer and the verifier)
# --------------------------------------------------------------------------------------------


def _row_dtype(table: str) -> np.dtype:
    """The packed little-endian record of ``table``'s canonical bytes."""
    fields = [("table", "u1")] + [(name, "<f8" if kind == "f" else "<i8")
                                  for name, kind in TABLES[table]]
    return np.dtype(fields)


_ROW_DTYPES = {table: _row_dtype(table) for table in TABLES}


def canonical_rows(table: str, columns: Mapping[str, np.ndarray]) -> bytes:
    """The canonical bytes of ``len`` rows of ``table``, concatenated (each
    ``_ROW_DTYPES[table].itemsize`` bytes); ``columns`` maps every column but ``hash`` to a
    numpy array (``side`` as codes, floats with NaN for NULL)."""
    n_rows = len(columns["seq"])
    records = np.empty(n_rows, _ROW_DTYPES[table])
    records["table"] = TABLE_CODES[table]
    for name, kind in TABLES[table]:
        values = columns[name]
        if kind == "f":
            values = np.asarray(values, np.float64)
            values = np.where(np.isnan(values), _NAN, values)  # one NaN bit pattern
        records[name] = values
    return records.tobytes()


def _chain(previous: bytes, rows: bytes, width: int) -> list[bytes]:
    """The raw SHA-256 digests of consecutive rows of ``width`` bytes chained from
    ``previous``."""
    sha256 = hashlib.sha256
    digests = []
    append = digests.append
    for offset in range(0, len(rows), width):
        previous = sha256(previous + rows[offset:offset + width]).digest()
        append(previous)
    return digests


def _header_hash(header: Sequence[Any]) -> bytes:
    text = json.dumps(list(header), separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).digest()


def _seal_hash(head: bytes, n_rows: int, closed_at: str) -> bytes:
    text = json.dumps([n_rows, closed_at], separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(head + text.encode("utf-8")).digest()


def _schema_sql() -> list[str]:
    statements = [
        "CREATE TABLE header (format TEXT NOT NULL, schema_version INTEGER NOT NULL, "
        "created_at TEXT NOT NULL, seed INTEGER, mechanism TEXT NOT NULL, k REAL NOT NULL, "
        "agent_names TEXT NOT NULL, config TEXT NOT NULL, meta TEXT NOT NULL, "
        "hash TEXT NOT NULL)",
        "CREATE TABLE seal (n_rows INTEGER NOT NULL, head TEXT NOT NULL, "
        "closed_at TEXT NOT NULL, hash TEXT NOT NULL)",
    ]
    types = {"i": "INTEGER", "f": "REAL", "s": "TEXT"}
    for table, columns in TABLES.items():
        body = ", ".join(f"{name} {types[kind]}" for name, kind in columns)
        statements.append(f"CREATE TABLE {table} ({body}, hash TEXT NOT NULL)")
    return statements


def _now() -> str:
    return _datetime.datetime.now(_datetime.UTC).isoformat(timespec="microseconds")


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


_AGENT_KEYS = ("price", "net_energy_kwh", "p2p_energy_kwh", "grid_energy_kwh", "p2p_payment",
               "grid_payment")
_ENV_KEYS = ("retail_price", "feed_in_price", "clearing_price", "operator_surplus",
             "p2p_volume_kwh", "day", "step_of_day")
INFO_KEYS_READ = _AGENT_KEYS + _ENV_KEYS
"""The step info keys (``envs.info_schema``) the ledger reads; with ``cda`` also
``arrival_rank`` (``envs.info_schema.ARRIVAL_RANK``)."""


class LedgerWriter:
    """Writes one ledger file; see the module docstring for the tables and the hashing.

    Args:
        path: the SQLite file to create (its folder is created).
        config: the env config that runs (its mechanism, ``k`` and agents; stored whole).
        agent_names: the env's agents in index order (``env.agent_names``).
        seed: the run's seed for the header (None: none, e.g. seeds per episode).
        meta: JSON-able facts about the run (policy, days, ...), stored in the header.
        overwrite: replace an existing file at ``path``; otherwise it is an error.

    Use :meth:`start_episodes` when episodes begin, :meth:`record_step` after every step and
    :meth:`close` at the end (or use it as a context manager); an unclosed ledger has no seal
    and fails verification. Rows are committed every :data:`COMMIT_ROWS` rows and at close.
    """

    def __init__(self, path: str | Path, config: EnvConfig, agent_names: Sequence[str],
                 seed: int | None = None, meta: Mapping[str, Any] | None = None,
                 overwrite: bool = False) -> None:
        if config.storage.mode == "market":
            raise ConfigError(
                "config key 'storage.mode': got 'market'; allowed with a ledger: 'none' or "
                "'virtual' (the ledger records the agents' trades; a shared battery trading in "
                "the market is not one of its agents)")
        path = Path(path)
        if path.exists() and not path.is_file():
            raise ValueError(f"ledger {path}: exists and is not a file")
        if path.exists() and not overwrite:
            raise ValueError(f"ledger {path} exists already; choose a new path or remove it "
                             f"(a ledger is never appended to)")
        path.parent.mkdir(parents=True, exist_ok=True)
        # A journal left beside an old file would be rolled back into the new one.
        for stale in (path, path.with_name(path.name + "-journal")):
            if stale.exists():
                stale.unlink()
        self.path = path
        self.mechanism = config.market.mechanism
        self.k = float(config.market.k)
        self.agent_names = [str(name) for name in agent_names]
        self.n_rows = 0
        self._pending = 0
        self._closed = False
        self._connection = sqlite3.connect(path, isolation_level=None)
        self._connection.execute("PRAGMA synchronous=NORMAL")
        self._connection.execute("BEGIN")
        for statement in _schema_sql():
            self._connection.execute(statement)
        header = [FORMAT, SCHEMA_VERSION, _now(), None if seed is None else int(seed),
                  self.mechanism, self.k, json.dumps(self.agent_names),
                  json.dumps(plain_json(to_dict(config)), sort_keys=True),
                  json.dumps(plain_json(dict(meta or {})), sort_keys=True)]
        self._head = _header_hash(header)
        self._connection.execute(f"INSERT INTO header VALUES ({', '.join('?' * 10)})",
                                 [*header, self._head.hex()])
        # SQLite before 3.32 binds at most 999 variables per statement.
        self._rows_per_insert = {table: 999 // (len(columns) + 1)
                                 for table, columns in TABLES.items()}
        self._inserts = {
            table: f"INSERT INTO {table} VALUES " + ", ".join(
                ["(" + ", ".join("?" * (len(columns) + 1)) + ")"]
                * self._rows_per_insert[table])
            for table, columns in TABLES.items()}

    @property
    def head(self) -> str:
        """The hash of the last row written (hex): the ledger's fingerprint so far."""
        return self._head.hex()

    def _write(self, table: str, columns: dict[str, np.ndarray]) -> None:
        n_rows = len(next(iter(columns.values())))
        if n_rows == 0:
            return
        columns = {"seq": np.arange(self.n_rows, self.n_rows + n_rows), **columns}
        digests = _chain(self._head, canonical_rows(table, columns),
                         _ROW_DTYPES[table].itemsize)
        self._head = digests[-1]
        self.n_rows += n_rows
        values = []
        for name, kind in TABLES[table]:
            column = columns[name]
            if kind == "s":
                values.append([_SIDE_NAMES[code] for code in column.tolist()])
            elif kind == "f":  # NaN is stored as NULL (SQLite has no NaN)
                column = np.asarray(column, np.float64)
                listed = column.tolist()
                if np.isnan(column).any():
                    listed = [None if math.isnan(v) else v for v in listed]
                values.append(listed)
            else:
                values.append(np.asarray(column, np.int64).tolist())
        values.append([digest.hex() for digest in digests])
        # Multi-row INSERTs: about 40% faster than executemany's one row per statement.
        width = len(values)
        flat = [value for row in zip(*values, strict=True) for value in row]
        per = self._rows_per_insert[table]
        full = n_rows - n_rows % per
        statement = self._inserts[table]
        for start in range(0, full * width, per * width):
            self._connection.execute(statement, flat[start:start + per * width])
        if full < n_rows:
            placeholders = "(" + ", ".join("?" * width) + ")"
            self._connection.execute(
                f"INSERT INTO {table} VALUES " + ", ".join([placeholders] * (n_rows - full)),
                flat[full * width:])
        self._pending += n_rows
        if self._pending >= COMMIT_ROWS:
            self._connection.execute("COMMIT")
            self._connection.execute("BEGIN")
            self._pending = 0

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"ledger {self.path} is closed")

    def start_episodes(self, episodes: Sequence[int], days: Sequence[int],
                       seeds: Sequence[int | None]) -> None:
        """Record that episodes ``episodes`` begin on ``days`` (day of the year) with the
        environments' ``seeds`` (None: not given)."""
        self._check_open()
        self._write("episodes", {
            "episode": np.asarray(episodes, np.int64), "day": np.asarray(days, np.int64),
            "seed": np.asarray([-1 if s is None else int(s) for s in seeds], np.int64)})

    def record_step(self, info: Mapping[str, Any], episodes: Sequence[int], step: int,
                    batched: bool = True) -> None:
        """Write one step: ``info`` holds the step infos :data:`INFO_KEYS_READ` of a batch
        (``[B, N]`` per agent, ``[B]`` per community: tensors or arrays; ``batched=False``:
        one community's ``[N]`` arrays and numbers, as the PettingZoo engines give them);
        environment ``b`` of the batch is episode ``episodes[b]`` (environments beyond
        ``len(episodes)``, padding, are skipped); ``step`` is the step's index in its
        episode."""
        self._check_open()
        n_envs = len(episodes)
        device = info["price"].device if isinstance(info["price"], torch.Tensor) else None
        values: dict[str, torch.Tensor] = {}
        for key in INFO_KEYS_READ:
            value = torch.as_tensor(info[key], device=device)
            values[key] = (value[None] if not batched else value)[:n_envs]
        if not values["price"].is_floating_point():
            raise ValueError("the ledger needs floating point prices")
        arrival_rank = None
        if self.mechanism == "cda":  # the auction's fills are replayed in its arrival order
            rank = torch.as_tensor(info[ARRIVAL_RANK], device=device)
            arrival_rank = (rank[None] if not batched else rank)[:n_envs]
        trades = market.bilateral_trades(
            self.mechanism, values["price"], values["p2p_energy_kwh"], values["p2p_payment"],
            values["clearing_price"], values["operator_surplus"], values["retail_price"],
            values["feed_in_price"], k=self.k, arrival_rank=arrival_rank)
        volume = trades.quantity.sum((1, 2))
        keep = trades.quantity > (MIN_TRADE_SHARE * volume)[:, None, None]
        env, buyer, seller = (index.cpu().numpy() for index in keep.nonzero(as_tuple=True))
        quantity = trades.quantity[keep].cpu().numpy()
        buyer_price = trades.buyer_price[keep].cpu().numpy()
        seller_price = trades.seller_price[keep].cpu().numpy()
        host = {key: value.double().cpu().numpy() for key, value in values.items()}

        episode = np.asarray(episodes, np.int64)
        n_agents = host["price"].shape[1]
        steps = np.full(n_envs, int(step), np.int64)
        self._write("markets", {
            "episode": episode, "step": steps, "day": host["day"].astype(np.int64),
            "step_of_day": host["step_of_day"].astype(np.int64),
            "retail_price": host["retail_price"], "feed_in_price": host["feed_in_price"],
            "clearing_price": host["clearing_price"],
            "operator_surplus": host["operator_surplus"],
            "p2p_volume_kwh": host["p2p_volume_kwh"]})
        agent_episode = np.repeat(episode, n_agents)
        agent_steps = np.full(n_envs * n_agents, int(step), np.int64)
        agent = np.tile(np.arange(n_agents, dtype=np.int64), n_envs)
        net = host["net_energy_kwh"].reshape(-1)
        self._write("orders", {
            "episode": agent_episode, "step": agent_steps, "agent": agent,
            "side": np.sign(net).astype(np.int64), "price": host["price"].reshape(-1),
            "quantity_kwh": np.abs(net)})
        self._write("trades", {
            "episode": episode[env], "step": np.full(len(env), int(step), np.int64),
            "buyer": buyer.astype(np.int64), "seller": seller.astype(np.int64),
            "quantity_kwh": quantity, "buyer_price": buyer_price,
            "seller_price": seller_price, "buyer_payment": quantity * buyer_price,
            "seller_revenue": quantity * seller_price})
        self._write("payments", {
            "episode": agent_episode, "step": agent_steps, "agent": agent,
            "p2p_energy_kwh": host["p2p_energy_kwh"].reshape(-1),
            "grid_energy_kwh": host["grid_energy_kwh"].reshape(-1),
            "p2p_payment": host["p2p_payment"].reshape(-1),
            "grid_payment": host["grid_payment"].reshape(-1)})

    def close(self) -> str:
        """Seal and close the ledger (again: nothing); returns the head hash (hex)."""
        if not self._closed:
            closed_at = _now()
            self._connection.execute(
                "INSERT INTO seal VALUES (?, ?, ?, ?)",
                (self.n_rows, self._head.hex(), closed_at,
                 _seal_hash(self._head, self.n_rows, closed_at).hex()))
            self._connection.execute("COMMIT")
            self._connection.close()
            self._closed = True
        return self.head

    def __enter__(self) -> LedgerWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError(f"a LedgerWriter ({self.path}) cannot be pickled: it holds an open "
                        f"SQLite file")


# --------------------------------------------------------------------------------------------
# Reading and verification
# --------------------------------------------------------------------------------------------


def _open(path: str | Path) -> sqlite3.Connection:
    """A read-only connection to the ledger at ``path``, or :class:`LedgerError` saying why
    it is not one (missing, not SQLite, truncated, not a ledger)."""
    path = Path(path)
    if not path.is_file():
        raise LedgerError(f"{path}: no such file")
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(100)
    if not head.startswith(_SQLITE_MAGIC):
        raise LedgerError(f"{path}: not an SQLite file (a ledger is an SQLite database)")
    if len(head) < 100:
        raise LedgerError(f"{path}: truncated SQLite file ({size} bytes, less than its "
                          f"100-byte header)")
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(head[28:32], "big")
    header_valid = head[24:28] == head[92:96]
    if page_size < 512 or size % page_size or (header_valid and size < pages * page_size):
        expected = f", its header says {pages * page_size}" if header_valid else ""
        raise LedgerError(f"{path}: truncated or damaged SQLite file ({size} bytes{expected})")
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        names = {row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as error:
        raise LedgerError(f"{path}: damaged SQLite file ({error})") from None
    missing = [t for t in ("header", *TABLES, "seal") if t not in names]
    if missing:
        connection.close()
        raise LedgerError(f"{path}: an SQLite database but not a peergrid ledger (no table "
                          f"{', '.join(missing)})")
    return connection


@dataclass(frozen=True)
class Problem:
    """One finding of :func:`verify`."""

    kind: str
    """``header``, ``altered``, ``deleted``, ``inserted`` or ``seal``."""
    message: str
    """What was found, naming the row (table, seq, key columns)."""
    seq: int | None = None
    """The row's (or the first missing row's) place in the chain."""
    table: str | None = None


@dataclass
class VerifyReport:
    """Outcome of :func:`verify`."""

    path: str
    n_rows: int
    """Rows found in the chained tables."""
    head: str | None
    """Hash of the last row (hex), None for an empty chain."""
    sealed: bool
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _column(values: list[Any], kind: str) -> tuple[np.ndarray, np.ndarray]:
    """A column read from SQLite as (canonical numpy array, bad [n] bool: not representable,
    e.g. text in a number column)."""
    n = len(values)
    bad = np.zeros(n, bool)
    if kind == "s":
        codes = np.asarray([SIDES.get(v, 0) if isinstance(v, str) else 0 for v in values],
                           np.int64)
        bad = np.asarray([not (isinstance(v, str) and v in SIDES) for v in values], bool)
        return codes, bad
    dtype = np.float64 if kind == "f" else np.int64
    try:
        if kind == "i" and any(v is None or isinstance(v, float | str | bytes) for v in values):
            raise TypeError
        if kind == "f" and any(isinstance(v, str | bytes) for v in values):
            raise TypeError
        return np.asarray([np.nan if v is None else v for v in values] if kind == "f"
                          else values, dtype), bad
    except (TypeError, ValueError, OverflowError):
        out = np.zeros(n, dtype)
        for i, v in enumerate(values):
            ok = (isinstance(v, int) and not isinstance(v, bool)) if kind == "i" else (
                v is None or isinstance(v, int | float))
            if ok:
                try:
                    out[i] = np.nan if v is None else v
                    continue
                except OverflowError:
                    pass
            bad[i] = True
        return out, bad


def _describe(table: str, values: Sequence[Any]) -> str:
    """``<table> row seq <seq> (<key columns>)`` of a row's column ``values`` (table
    order, without ``hash``)."""
    row = dict(zip([name for name, _ in TABLES[table]], values, strict=True))
    keys = [name for name, _ in TABLES[table][1:4]]
    if table == "trades":
        keys = ["episode", "step", "buyer", "seller"]
    inner = ", ".join(f"{key} {row[key]}" for key in keys if key in row)
    return f"{table} row seq {row['seq']} ({inner})"


def verify(path: str | Path, expect_head: str | None = None) -> VerifyReport:
    """Recompute the ledger's chain; the report lists every row altered, deleted or inserted,
    a header or seal that does not match, and (with ``expect_head``) a head other than the
    one recorded when it was written. Raises :class:`LedgerError` for a file that is not a
    readable ledger."""
    connection = _open(path)
    try:
        return _verify(connection, str(path), expect_head)
    except sqlite3.DatabaseError as error:
        raise LedgerError(f"{path}: damaged SQLite file ({error})") from None
    finally:
        connection.close()


def _verify(connection: sqlite3.Connection, path: str, expect_head: str | None
            ) -> VerifyReport:
    problems: list[Problem] = []
    headers = connection.execute(
        f"SELECT {', '.join(HEADER_COLUMNS)}, hash FROM header").fetchall()
    if len(headers) != 1:
        problems.append(Problem("header", f"the header table has {len(headers)} rows, not 1"))
        head = b""
    else:
        *fields, stored = headers[0]
        if fields[0] != FORMAT:
            raise LedgerError(f"{path}: an SQLite database but not a peergrid ledger (header "
                              f"format {fields[0]!r})")
        if fields[1] != SCHEMA_VERSION:
            raise LedgerError(f"{path}: ledger schema version {fields[1]!r}; this peergrid "
                              f"reads version {SCHEMA_VERSION}")
        head = _header_hash(fields)
        if head.hex() != stored:
            problems.append(Problem("header", "the header was altered (its fields do not match "
                                              "its hash, which starts the chain)"))
            head = _hex_bytes(stored) or head

    # Every chained row, in seq order: (seq, table, canonical bytes, stored hash, row dict).
    rows: list[tuple[int, int, str, bytes, Any, dict[str, Any]]] = []
    for table, columns in TABLES.items():
        names = [name for name, _ in columns]
        fetched = connection.execute(
            f"SELECT rowid, {', '.join(names)}, hash FROM {table}").fetchall()
        if not fetched:
            continue
        transposed = list(zip(*fetched, strict=True))
        arrays, bad = {}, np.zeros(len(fetched), bool)
        for position, (name, kind) in enumerate(columns, start=1):
            arrays[name], bad_column = _column(list(transposed[position]), kind)
            bad |= bad_column
        data = canonical_rows(table, arrays)
        width = _ROW_DTYPES[table].itemsize
        for i, record in enumerate(fetched):
            row = record[1:-1]
            seq = record[1] if isinstance(record[1], int) else -1
            canonical = None if bad[i] else data[i * width:(i + 1) * width]
            rows.append((seq, record[0], table, canonical, record[-1], row))
    rows.sort(key=lambda r: (r[0], TABLE_CODES[r[2]], r[1]))

    seals = connection.execute("SELECT n_rows, head, closed_at, hash FROM seal").fetchall()
    sealed_rows = seals[0][0] if len(seals) == 1 and isinstance(seals[0][0], int) else (
        1 << 62)
    previous: list[bytes] = [head]  # hashes the next row may chain from
    expected = 0
    index = 0
    last_hash: bytes | None = None
    sha256 = hashlib.sha256
    while index < len(rows):
        seq = rows[index][0]
        group = [rows[index]]
        while index + len(group) < len(rows) and rows[index + len(group)][0] == seq:
            group.append(rows[index + len(group)])
        index += len(group)
        if seq < 0:
            for _, rowid, table, *_rest in group:
                problems.append(Problem("altered", f"{table} row rowid {rowid}: its seq is not "
                                                   f"an integer", None, table))
            continue
        if seq > expected:
            missing = f"seq {expected}" if seq == expected + 1 else f"seq {expected}..{seq - 1}"
            problems.append(Problem(
                "deleted", f"row(s) {missing} deleted (the chain jumps from seq {expected - 1} "
                           f"to {_describe(group[0][2], group[0][5])})", expected))
            previous = []  # the next row's predecessor is gone: it cannot be checked
        matches, failures = [], []
        for entry in group:
            _, _, table, canonical, stored, row = entry
            computed = None if canonical is None else [
                sha256(p + canonical).digest() for p in previous]
            if computed is not None and any(c.hex() == stored for c in computed):
                matches.append(entry)
            else:
                failures.append((entry, computed))
        if seq >= sealed_rows:
            pass  # beyond the seal: reported once below
        elif len(group) > 1:
            copies = [(entry, "is a copy of it") for entry in matches[1:]]
            others = [(entry, "does not chain") for entry, _ in (
                failures if matches else failures[1:])]
            for (_, _, table, _, _, row), why in copies + others:
                problems.append(Problem(
                    "inserted", f"{_describe(table, row)} inserted: another row holds seq "
                                f"{seq} and this one {why}", seq, table))
            if not matches:
                (_, _, table, _, _, row), _ = failures[0]
                problems.append(Problem(
                    "altered", f"{_describe(table, row)} altered, or rows inserted at seq "
                               f"{seq}: none of them chains", seq, table))
        elif failures and previous:
            (_, _, table, canonical, stored, row), computed = failures[0]
            problems.append(Problem(
                "altered", f"{_describe(table, row)} altered: its content and hash no longer "
                           f"chain to the row before it (or that row was altered and "
                           f"re-hashed)", seq, table))
        chosen = matches[0] if matches else (failures[0][0] if failures else group[0])
        chosen_computed = [] if matches or not failures else (failures[0][1] or [])
        stored_bytes = _hex_bytes(chosen[4])
        previous = [b for b in [stored_bytes, *chosen_computed] if b is not None]
        last_hash = stored_bytes
        expected = seq + 1

    n_rows = expected
    sealed = len(seals) == 1
    if not seals:
        problems.append(Problem("seal", f"not sealed: the writer did not close the ledger "
                                        f"(rows deleted after seq {n_rows - 1} could not be "
                                        f"detected)"))
    elif len(seals) > 1:
        problems.append(Problem("seal", f"the seal table has {len(seals)} rows, not 1"))
    else:
        sealed_rows, sealed_head, closed_at, stored = seals[0]
        sealed_head_bytes = _hex_bytes(sealed_head)
        if (sealed_head_bytes is None or not isinstance(sealed_rows, int)
                or not isinstance(closed_at, str)
                or _seal_hash(sealed_head_bytes, sealed_rows, closed_at).hex() != stored):
            problems.append(Problem("seal", "the seal was altered (its fields do not match "
                                            "its hash)"))
        elif sealed_rows > n_rows:
            problems.append(Problem("deleted", f"row(s) seq {n_rows}..{sealed_rows - 1} deleted "
                                               f"at the end (the seal records {sealed_rows} "
                                               f"rows)", n_rows))
        elif sealed_rows < n_rows:
            extra = [r for r in rows if r[0] >= sealed_rows]
            first = extra[0] if extra else rows[-1]
            problems.append(Problem("inserted", f"{_describe(first[2], first[5])} and "
                                                f"{n_rows - sealed_rows - 1} more inserted "
                                                f"after the sealed end (seq {sealed_rows - 1})",
                                    first[0], first[2]))
        elif last_hash is not None and sealed_head != last_hash.hex():
            problems.append(Problem("altered", f"the last row (seq {n_rows - 1}) does not "
                                               f"match the seal's head hash", n_rows - 1))
    head_hex = None if last_hash is None else last_hash.hex()
    if expect_head is not None and head_hex != expect_head.strip().lower():
        problems.append(Problem("seal", f"head hash {head_hex} is not the expected "
                                        f"{expect_head}: the ledger was rewritten"))
    return VerifyReport(path, n_rows, head_hex, sealed, problems)


def _hex_bytes(text: Any) -> bytes | None:
    if not isinstance(text, str) or len(text) != 64:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


def read_tables(path: str | Path, tables: Sequence[str] | None = None) -> dict[str, Any]:
    """The ledger's tables as pandas DataFrames (``header``, ``seal`` and the chained ones,
    rows in ``seq`` order; NULL prices as NaN); ``tables`` picks some. Does not verify: use
    :func:`verify` first. Raises :class:`LedgerError` for a file that is not a ledger."""
    import pandas as pd

    names = list(tables) if tables is not None else ["header", *TABLES, "seal"]
    unknown = [t for t in names if t not in ("header", "seal", *TABLES)]
    if unknown:
        raise ValueError(f"unknown ledger table(s) {unknown}; allowed: header, "
                         f"{', '.join(TABLES)}, seal")
    connection = _open(path)
    try:
        return {name: pd.read_sql_query(
            f"SELECT * FROM {name}" + (" ORDER BY seq" if name in TABLES else ""), connection)
            for name in names}
    except sqlite3.DatabaseError as error:
        raise LedgerError(f"{path}: damaged SQLite file ({error})") from None
    finally:
        connection.close()


def export_csv(path: str | Path, out: str | Path, tables: Sequence[str] | None = None
               ) -> list[Path]:
    """Write each table of the ledger at ``path`` to ``out/<table>.csv``; returns the
    paths."""
    from envs.files import atomic_write_text

    out = Path(out)
    written = []
    for name, frame in read_tables(path, tables).items():
        written.append(atomic_write_text(out / f"{name}.csv", frame.to_csv(index=False)))
    return written


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``verify PATH [--expect-head HEX]`` (exit 0 intact, 1 tampered or unsealed, 2 not a
    readable ledger) or ``export PATH --out DIR [--tables a,b] [--force]`` (verifies first;
    ``--force`` exports a ledger that fails verification)."""
    parser = argparse.ArgumentParser(prog="python -m envs.ledger",
                                     description="Verify or export a peergrid trade ledger.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("verify", help="recompute the hash chain")
    check.add_argument("path")
    check.add_argument("--expect-head", default=None,
                       help="the head hash recorded when the ledger was written")
    export = commands.add_parser("export", help="write one CSV per table")
    export.add_argument("path")
    export.add_argument("--out", required=True, help="output folder")
    export.add_argument("--tables", default=None, help="comma list of tables (default: all)")
    export.add_argument("--force", action="store_true",
                        help="export even when verification fails")
    args = parser.parse_args(argv)
    try:
        report = verify(args.path, getattr(args, "expect_head", None))
        if args.command == "verify" or not report.ok:
            for problem in report.problems[:MAX_PRINTED]:
                print(f"{problem.kind}: {problem.message}")
            if len(report.problems) > MAX_PRINTED:
                print(f"... and {len(report.problems) - MAX_PRINTED} more problems")
        if args.command == "verify":
            if report.ok:
                print(f"OK {args.path}: {report.n_rows} rows, chain intact, sealed; head "
                      f"{report.head}")
                return 0
            print(f"TAMPERED {args.path}: {len(report.problems)} problem(s) in "
                  f"{report.n_rows} rows", file=sys.stderr)
            return 1
        if not report.ok and not args.force:
            print(f"error: {args.path} fails verification; not exported (--force exports "
                  f"anyway)", file=sys.stderr)
            return 1
        tables = None if args.tables is None else [
            t.strip() for t in args.tables.split(",") if t.strip()]
        for written in export_csv(args.path, args.out, tables):
            print(f"wrote {written}")
        return 0
    except (LedgerError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
