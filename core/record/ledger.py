"""The mechanism ledger: every validated mechanism and what it did, across sessions, in one SQLite file.

One row per mechanism (keyed by its source fingerprint, mechanisms.sandbox.fingerprint.source_key:
comments and formatting aside, the same code is the same mechanism whatever it is called), one
per pre-screen (its paired effect on the surrogate, with CI and p), and one per session it ran in
(iterations active, proposals it shaped, vetoed or modified, decisions it overrode, keeps while
it was active; the keep-chain audit's verdict is a nullable column until the audit lands).

It lives in the user's data folder (platformdirs' user_data_dir("bilevel"), or $BILEVEL_LEDGER
naming the file) and is shared by every session on the machine, so: WAL mode (readers never
block the writer), a busy timeout (a writer waits for another instead of failing), and every
write one IMMEDIATE transaction of idempotent upserts — writing the same session twice, or
rebuilding it from its folder (`bilevel mechanisms --import`), changes nothing.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

LEDGER_ENV = "BILEVEL_LEDGER"
FILE_NAME = "mechanisms.sqlite"
BUSY_TIMEOUT_MS = 60_000  # sessions write a few rows at a time: a minute of waiting is contention, not a hang

_SCHEMA = """
CREATE TABLE IF NOT EXISTS mechanisms (
    source_key TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    origin TEXT NOT NULL,            -- generated | builtin | config
    origin_session TEXT NOT NULL,    -- the first session that validated it
    source TEXT NOT NULL,
    first_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS prescreens (
    session TEXT NOT NULL,
    research_id TEXT NOT NULL,
    source_key TEXT NOT NULL REFERENCES mechanisms(source_key),
    name TEXT NOT NULL,
    verdict TEXT NOT NULL,           -- passed | harmful | failed | skipped
    mode TEXT NOT NULL,
    effect REAL, ci_low REAL, ci_high REAL, p_value REAL,
    repeats INTEGER NOT NULL, iterations INTEGER NOT NULL,
    proposer TEXT NOT NULL, workload TEXT NOT NULL,
    side_effects TEXT NOT NULL,      -- JSON: vetoed, modified, rejected, crashes, ...
    reason TEXT NOT NULL,
    wall_s REAL NOT NULL,
    PRIMARY KEY (session, research_id)
);
CREATE TABLE IF NOT EXISTS session_records (
    session TEXT NOT NULL,
    source_key TEXT NOT NULL REFERENCES mechanisms(source_key),
    name TEXT NOT NULL,
    surrogate INTEGER NOT NULL,      -- the session ran the surrogate: never mixed with real runs
    iterations_active INTEGER NOT NULL,
    shaped INTEGER NOT NULL, vetoed INTEGER NOT NULL, modified INTEGER NOT NULL, overrode INTEGER NOT NULL,
    keeps_while_active INTEGER NOT NULL,
    deactivated TEXT NOT NULL,       -- why it was switched off, "" if it ran to the end
    audit_verdict TEXT,              -- the keep-chain audit's, once it exists
    PRIMARY KEY (session, source_key)
);
"""


@dataclass(frozen=True)
class MechanismRow:
    source_key: str
    name: str
    origin: str
    origin_session: str
    source: str


@dataclass(frozen=True)
class PrescreenRow:
    session: str
    research_id: str
    source_key: str
    name: str
    verdict: str
    mode: str
    effect: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    repeats: int
    iterations: int
    proposer: str
    workload: str
    side_effects: dict[str, int]
    reason: str
    wall_s: float


@dataclass(frozen=True)
class SessionRow:
    session: str
    source_key: str
    name: str
    surrogate: bool
    iterations_active: int
    shaped: int
    vetoed: int
    modified: int
    overrode: int
    keeps_while_active: int
    deactivated: str = ""
    audit_verdict: str | None = None


def default_path() -> Path:
    """$BILEVEL_LEDGER, else mechanisms.sqlite in the user's data folder."""
    override = os.environ.get(LEDGER_ENV)
    if override:
        return Path(override)
    try:
        from platformdirs import user_data_dir
    except ImportError:  # older installs: the XDG spelling platformdirs gives on Linux
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "bilevel"
    else:
        base = Path(user_data_dir("bilevel"))
    return base / FILE_NAME


class Ledger:
    """The store; open per use (``with Ledger() as ledger:``), safe across processes."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are ours (BEGIN IMMEDIATE), never the module's implicit ones
        self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA foreign_keys = ON")
        with self._write():  # the schema in one transaction: two first sessions create it once
            for statement in filter(str.strip, _SCHEMA.split(";")):
                self._db.execute(statement)

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    class _Tx:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE")  # the write lock now: no upgrade deadlock between two writers
            return self.db

        def __exit__(self, exc_type: Any, *rest: Any) -> None:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")

    def _write(self) -> "Ledger._Tx":
        return Ledger._Tx(self._db)

    # --- writing -------------------------------------------------------------------------------

    def record(self, mechanisms: Sequence[MechanismRow], prescreens: Sequence[PrescreenRow] = (),
               sessions: Sequence[SessionRow] = ()) -> None:
        """Upsert these rows in one transaction (a mechanism keeps its first name, origin and session)."""
        now = time.time()
        with self._write() as db:
            for m in mechanisms:
                db.execute("INSERT INTO mechanisms VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(source_key) DO NOTHING",
                           (m.source_key, m.name, m.origin, m.origin_session, m.source, now))
            for p in prescreens:
                db.execute("INSERT OR REPLACE INTO prescreens VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (p.session, p.research_id, p.source_key, p.name, p.verdict, p.mode, p.effect, p.ci_low,
                            p.ci_high, p.p_value, p.repeats, p.iterations, p.proposer, p.workload,
                            json.dumps(p.side_effects, sort_keys=True), p.reason, p.wall_s))
            for s in sessions:
                # the audit's verdict, once written, survives a later rewrite of the same session's counts
                db.execute("INSERT INTO session_records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                           "ON CONFLICT(session, source_key) DO UPDATE SET name = excluded.name, "
                           "surrogate = excluded.surrogate, iterations_active = excluded.iterations_active, "
                           "shaped = excluded.shaped, vetoed = excluded.vetoed, modified = excluded.modified, "
                           "overrode = excluded.overrode, keeps_while_active = excluded.keeps_while_active, "
                           "deactivated = excluded.deactivated, "
                           "audit_verdict = COALESCE(excluded.audit_verdict, session_records.audit_verdict)",
                           (s.session, s.source_key, s.name, int(s.surrogate), s.iterations_active, s.shaped,
                            s.vetoed, s.modified, s.overrode, s.keeps_while_active, s.deactivated, s.audit_verdict))

    # --- reading -------------------------------------------------------------------------------

    def mechanisms(self) -> list[MechanismRow]:
        rows = self._db.execute("SELECT source_key, name, origin, origin_session, source FROM mechanisms "
                                "ORDER BY name, source_key")
        return [MechanismRow(*r) for r in rows]

    def find(self, name_or_key: str) -> list[MechanismRow]:
        """Mechanisms called ``name_or_key`` (any session's name for it), or whose key starts with it."""
        rows = self._db.execute(
            "SELECT DISTINCT m.source_key, m.name, m.origin, m.origin_session, m.source FROM mechanisms m "
            "LEFT JOIN prescreens p ON p.source_key = m.source_key "
            "LEFT JOIN session_records s ON s.source_key = m.source_key "
            "WHERE m.name = ?1 OR p.name = ?1 OR s.name = ?1 OR m.source_key LIKE ?2 ORDER BY m.first_seen",
            (name_or_key, f"{name_or_key}%"))
        return [MechanismRow(*r) for r in rows]

    def prescreens(self, source_key: str | None = None) -> list[PrescreenRow]:
        sql = "SELECT * FROM prescreens" + (" WHERE source_key = ?" if source_key else "") + " ORDER BY session, research_id"
        return [_prescreen(r) for r in self._db.execute(sql, (source_key,) if source_key else ())]

    def sessions(self, source_key: str | None = None) -> list[SessionRow]:
        sql = "SELECT * FROM session_records" + (" WHERE source_key = ?" if source_key else "") + " ORDER BY session"
        return [SessionRow(*r[:3], bool(r[3]), *r[4:]) for r in self._db.execute(sql, (source_key,) if source_key else ())]

    def iter_summary(self) -> Iterator[tuple[MechanismRow, list[PrescreenRow], list[SessionRow]]]:
        screens, records = self.prescreens(), self.sessions()
        for m in self.mechanisms():
            yield (m, [p for p in screens if p.source_key == m.source_key],
                   [s for s in records if s.source_key == m.source_key])


def _prescreen(r: tuple[Any, ...]) -> PrescreenRow:
    values = list(r)
    values[14] = json.loads(values[14])
    return PrescreenRow(*values)
