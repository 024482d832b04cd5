"""The mechanism ledger across sessions: what two sessions found, rebuilt from folders, written concurrently."""
from __future__ import annotations

import multiprocessing
import sqlite3

import pytest

from core import cli
from core.record import config
from core.record import events as ev
from core.record.ledger import Ledger, MechanismRow, PrescreenRow, SessionRow
from tests.conftest import run_engine


def surrogate_group_c(tmp_path, seed):
    return config.demo_config(**{"script.preset": "surrogate", "search.group": "C", "budget.iterations": 6,
                                 "search.seed": seed, "run.sessions_dir": str(tmp_path / "sessions"),
                                 "level2.prescreen_repeats": 3, "level2.prescreen_iterations": 6})


@pytest.mark.slow  # two research sessions, then bilevel mechanisms through the CLI
async def test_bilevel_mechanisms_lists_what_two_sessions_found_with_their_numbers(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BILEVEL_LEDGER", str(tmp_path / "live.sqlite"))
    sessions = []
    for seed in (1, 2):
        engine, rec = await run_engine(surrogate_group_c(tmp_path, seed))
        sessions.append((engine.dir, rec.of(ev.MechanismPrescreened)))
    screened = [p for _, found in sessions for p in found]
    assert len(screened) >= 2 and all(p.verdict == "passed" for p in screened)
    assert cli.main(["mechanisms"]) == 0
    listing = capsys.readouterr().out
    for p in screened:  # each pre-screen's figure is in the list, under its mechanism
        assert p.name in listing
    latest = {p.name: p for p in screened}  # the list shows each mechanism's latest pre-screen
    for p in latest.values():
        assert f"{p.effect:+.4f} ({p.ci_low:+.4f} to {p.ci_high:+.4f})" in listing
    with Ledger() as ledger:
        live = {(s.session, s.name): s for s in ledger.sessions()}
        assert {d.name for d, _ in sessions} == {s.session for s in live.values()}
        assert all(s.iterations_active > 0 and s.surrogate for s in live.values())
        assert len(ledger.prescreens()) == len(screened)
        # and each mechanism's numbers in the two sessions, summed: what it did where it ran
        for m, _, records in ledger.iter_summary():
            if records:
                block = listing.split(m.name, 1)[1]
                assert f"sessions ({len(records)}): {sum(r.iterations_active for r in records)} iterations active, " \
                       f"{sum(r.shaped for r in records)} prompts shaped, {sum(r.vetoed for r in records)} vetoed, " \
                       f"{sum(r.modified for r in records)} modified" in block
    # the same rows, rebuilt from the session folders into an empty ledger
    monkeypatch.setenv("BILEVEL_LEDGER", str(tmp_path / "rebuilt.sqlite"))
    assert cli.main(["mechanisms", "--import", *(str(d) for d, _ in sessions)]) == 0
    assert capsys.readouterr().out == listing
    with Ledger() as ledger:
        assert {(s.session, s.name): s for s in ledger.sessions()} == live
    assert cli.main(["mechanisms", "show", screened[0].name]) == 0
    shown = capsys.readouterr().out
    assert "source:" in shown and "class " in shown and screened[0].source_key in shown


def test_show_escapes_control_characters_in_a_stored_source(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BILEVEL_LEDGER", str(tmp_path / "l.sqlite"))
    with Ledger() as ledger:
        ledger.record([MechanismRow("k" * 16, "evil", "generated", "s1", 'X = "\x1b[2J\x1b]0;pwned\x07"\n')])
    assert cli.main(["mechanisms", "show", "evil"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\\x1b[2J" in out


def test_show_of_an_unknown_name_is_a_usage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BILEVEL_LEDGER", str(tmp_path / "l.sqlite"))
    assert cli.main(["mechanisms", "show", "nothing"]) == cli.EXIT_USAGE
    assert "no mechanism called 'nothing'" in capsys.readouterr().err


def test_an_audit_verdict_survives_a_later_rewrite_of_the_session(tmp_path):
    with Ledger(tmp_path / "l.sqlite") as ledger:
        ledger.record([MechanismRow("key", "m", "generated", "s", "x = 1\n")],
                      sessions=[SessionRow("s", "key", "m", True, 3, 1, 1, 0, 0, 1, audit_verdict="held")])
        ledger.record([], sessions=[SessionRow("s", "key", "m", True, 5, 2, 1, 0, 0, 2)])
        row, = ledger.sessions()
    assert (row.iterations_active, row.audit_verdict) == (5, "held")


WRITES = 60


def _writer(path: str, who: int) -> None:
    with Ledger(path) as ledger:
        for i in range(WRITES):  # one transaction each, interleaved with the other process's
            key = f"{who}-{i}"
            ledger.record([MechanismRow(key, f"m{key}", "generated", f"s{who}", "x = 1\n"), MechanismRow(
                "shared", "shared", "builtin", f"s{who}", "y = 2\n")],
                [PrescreenRow(f"s{who}", f"r{i}", key, f"m{key}", "passed", "gate", 0.0, -0.1, 0.1, 1.0, 5, 12,
                              "offline", "surrogate h100", {}, "", 0.1)],
                [SessionRow(f"s{who}", key, f"m{key}", True, i, 0, 0, 0, 0, 0),
                 SessionRow(f"s{who}", "shared", "shared", True, i, 0, 0, 0, 0, 0)])


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    path = str(tmp_path / "ledger.sqlite")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, who)) for who in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    with Ledger(path) as ledger:
        assert len(ledger.mechanisms()) == 2 * WRITES + 1
        assert len(ledger.prescreens()) == 2 * WRITES
        records = ledger.sessions()
        assert len(records) == 2 * WRITES + 2
        assert {(r.session, r.iterations_active) for r in records if r.source_key == "shared"} == {
            ("s1", WRITES - 1), ("s2", WRITES - 1)}
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
