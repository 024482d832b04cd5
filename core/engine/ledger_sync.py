"""A session's mechanisms into the ledger (core/record/ledger.py), from its events.

The engine writes each mechanism and its pre-screen as soon as the pre-screen is recorded, and
every mechanism's record in the session when the run finishes; `bilevel mechanisms --import
SESSION` rebuilds the same rows from a session folder. Both read the one fold
(core/record/state.py), so live and rebuilt rows cannot disagree. A ledger that cannot be written
(a full disk, a locked file past the busy timeout) is logged and never stops a run.
"""
from __future__ import annotations

import inspect
import sqlite3
from pathlib import Path
from typing import Any, Callable

import mechanisms
from mechanisms.sandbox.fingerprint import source_key

from core.record import events as ev
from core.record import layout
from core.record.config import is_surrogate
from core.record.ledger import Ledger, MechanismRow, PrescreenRow, SessionRow
from core.record.session import SessionReader
from core.record.attribution import keeps_held
from core.record.state import MechanismUse, RunState, fold

Rows = tuple[list[MechanismRow], list[PrescreenRow], list[SessionRow]]


def _builtin_source(name: str) -> str:
    cls = mechanisms.BUILTINS.get(name)
    return inspect.getsource(inspect.getmodule(cls)) if cls is not None else ""


def _source(read_artifact: Callable[[str], str], artifact: str, name: str, origin: str) -> str:
    if artifact:
        try:
            return read_artifact(artifact)
        except (OSError, ValueError):
            pass
    return _builtin_source(name) if origin != "generated" else ""


def origin_of(name: str, text: str) -> str:
    """"builtin" when the source is a built-in's own module, else "generated"."""
    return "builtin" if name in mechanisms.BUILTINS and text == _builtin_source(name) else "generated"


def prescreen_row(session: str, e: ev.MechanismPrescreened) -> PrescreenRow:
    return PrescreenRow(session, e.research_id, e.source_key, e.name, e.verdict, e.mode, e.effect, e.ci_low,
                        e.ci_high, e.p_value, e.repeats, e.iterations, e.proposer, e.workload, dict(e.side_effects),
                        e.reason, e.wall_s)


def audit_text(state: RunState, use: MechanismUse) -> str | None:
    """"2 of 3 keeps held": the audit's verdict on the keeps while it was active; None until an audit finished."""
    held = keeps_held(state, use)
    if held.held is None or not held.keeps:
        return None
    return f"{held.text()} keeps held"


def rows_from_state(state: RunState, read_artifact: Callable[[str], str], session: str) -> Rows:
    """Every validated, pre-screened or activated mechanism of a session, its pre-screens and its record."""
    found: dict[str, MechanismRow] = {}  # source key -> row
    key_of: dict[str, str] = {}  # name in this session -> source key

    def add(name: str, artifact: str, key: str = "") -> None:
        text = _source(read_artifact, artifact, name, "builtin" if not artifact else "generated")
        key = key or (source_key(text) or "" if text else "")
        if not key:
            return  # no source to fingerprint: nothing the ledger could recognise again
        key_of[name] = key
        found.setdefault(key, MechanismRow(key, name, origin_of(name, text), session, text))

    for p in state.prescreens.values():
        add(p.name, p.source, p.source_key)
    for name, use in state.mechanism_history.items():
        if name not in key_of:
            add(name, use.artifact)
    screens = [prescreen_row(session, p) for p in state.prescreens.values() if p.source_key]
    records = [SessionRow(session, key_of[name], name, is_surrogate(state.config), len(use.iterations),
                          use.effects["prompt"], use.effects["vetoed"], use.effects["modified"], use.effects["overrode"],
                          use.kept_while_active, use.deactivation_reason, audit_text(state, use))
               for name, use in state.mechanism_history.items() if name in key_of]
    return list(found.values()), screens, records


def import_session(session_dir: Path, ledger: Ledger) -> Rows:
    """Rebuild a session's rows from its folder (a damaged log: what can be read of it) and write them."""
    events = list(SessionReader(session_dir).events(tolerant=True))
    state = fold(events)
    rows = rows_from_state(state, lambda rel: layout.read_artifact(session_dir, rel), state.session or session_dir.name)
    ledger.record(*rows)
    return rows


class LedgerWriter:
    """An engine subscriber: writes the ledger at pre-screen time and at the end of the run."""

    def __init__(self, session_dir: Path, state: Callable[[], RunState], log: Callable[[str], None],
                 path: Path | None = None) -> None:
        self.dir, self._state, self.log, self.path = Path(session_dir), state, log, path

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.MechanismPrescreened) and event.source_key:
            state = self._state()
            text = _source(self._read, event.source, event.name, "builtin")
            mech = MechanismRow(event.source_key, event.name, origin_of(event.name, text),
                                state.session or self.dir.name, text)
            self._write([mech], [prescreen_row(state.session or self.dir.name, event)], [])
        elif isinstance(event, ev.RunFinished):
            state = self._state()
            rows = rows_from_state(state, self._read, state.session or self.dir.name)
            if any(rows):
                self._write(*rows)

    def _read(self, rel: str) -> str:
        return layout.read_artifact(self.dir, rel)

    def _write(self, *rows: Any) -> None:
        try:
            with Ledger(self.path) as ledger:
                ledger.record(*rows)
        except (sqlite3.Error, OSError) as exc:
            self.log(f"the mechanism ledger could not be written: {exc}")
