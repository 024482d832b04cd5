"""The typed change: proposal events carry a tagged ParamChange (a CodeEdit sits beside it), logs written
before it (``changes`` as a plain name -> value mapping) still replay and resume, and the product keeps
no untyped change or enum-value string comparison."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from core.engine.engine import Engine
from core.record import events as ev
from core.record.change import NO_CHANGE, CodeEdit, EditBlock, ParamChange, as_change
from core.record.session import SessionReader
from core.record.state import fold
from tests.conftest import fast_config, run_engine

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("core", "tui", "mechanisms", "baseline")
PLAIN_DATA = ("mechanisms",)  # the worker's side speaks plain dicts by contract (mechanisms/contract.py)
# A change typed as a plain mapping (a field, a parameter, a proposer's return), and an enum's value compared
# with a string: neither may come back.
UNTYPED = re.compile(r"\bchanges\b\s*:\s*(dict|Mapping)\[str, Any\]"
                     r"|\bdef \w*changes\(.*\)\s*->\s*(dict|Mapping)\[str, Any\]"
                     r"|tuple\[(dict|Mapping)\[str, Any\], str\]")
VALUE_COMPARE = re.compile(r"\.value\s*[!=]=\s*[\"']|[\"']\s*[!=]=\s*\w[\w.]*\.value\b")


def _old_shape(path: Path) -> int:
    """Rewrite a session's log as a writer before the typed change wrote it; returns the lines changed."""
    log = path / "events.jsonl"
    lines, rewritten = [], 0
    for line in log.read_text().splitlines():
        data = json.loads(line)
        if isinstance(data.get("changes"), dict) and data["changes"].get("kind") == "params":
            data["changes"] = data["changes"]["params"]
            rewritten += 1
        lines.append(json.dumps(data, separators=(",", ":")))
    log.write_text("\n".join(lines) + "\n")
    return rewritten


def _events(path: Path) -> list[ev.Event]:
    return list(SessionReader(path).events())


async def test_a_log_written_with_plain_changes_replays_and_resumes(tmp_path: Path):
    engine, _ = await run_engine(fast_config(tmp_path, **{"budget.iterations": 2}))
    path = engine.dir
    typed = fold(_events(path))
    assert _old_shape(path) >= 4  # the proposals and verdicts of two iterations, the baseline's verdict
    assert '"changes":{"' in (path / "events.jsonl").read_text()  # a non-empty old mapping is really there

    old = fold(_events(path))
    assert old.records == typed.records  # replay reads the old shape as the same typed changes
    assert all(type(r.changes) is ParamChange for r in old.records)
    assert any(r.changes.params for r in old.records)

    resumed = Engine.resume(path, {"budget.iterations": 4})
    assert resumed.state.records == typed.records
    await resumed.run()
    state = fold(_events(path))
    assert state.status == "completed" and [r.iteration for r in state.records] == [0, 1, 2, 3, 4]
    assert state.records[:3] == typed.records
    new_lines = (path / "events.jsonl").read_text().splitlines()[-40:]
    assert any('"changes":{"kind":"params"' in line for line in new_lines)  # the resumed run writes the tagged shape


def test_a_change_round_trips_tagged_and_an_old_mapping_decodes_as_a_param_change():
    made = ev.ProposalMade(iteration=3, changes=ParamChange(params={"LR": 0.02, "WINDOW": "SSSL"}))
    line = ev.encode(made)
    assert b'"changes":{"kind":"params","params":{"LR":0.02,"WINDOW":"SSSL"}}' in line
    assert ev.decode(line) == made
    old = b'{"type":"proposal_made","seq":4,"iteration":3,"changes":{"LR":0.02,"WINDOW":"SSSL"}}'
    assert ev.decode(old).changes == made.changes
    empty = ev.decode(b'{"type":"iteration_finished","iteration":0,"decision":"baseline","changes":{}}')
    assert empty.changes == NO_CHANGE
    # a parameter named like the tag is still an old mapping, not a tagged change
    assert ev.decode(b'{"type":"proposal_rejected","changes":{"kind":1,"LR":0.1}}').changes == ParamChange(
        params={"kind": 1, "LR": 0.1})


def test_a_code_edit_rides_the_same_field_beside_constant_changes():
    edit = CodeEdit(params={"LR": 0.02}, edits=[EditBlock(find="x = 1\n", replace="x = 2\n")])
    finished = ev.IterationFinished(iteration=1, decision="discard", changes=edit)
    back = ev.decode(ev.encode(finished))
    assert back.changes == edit and type(back.changes) is CodeEdit and back.changes.params == {"LR": 0.02}
    assert as_change(ev.to_dict(finished)["changes"]) == edit


def test_a_malformed_tagged_change_is_a_decode_error_naming_the_field():
    with pytest.raises(ev.EventDecodeError, match="changes"):
        ev.decode(b'{"type":"proposal_made","changes":{"kind":"params","params":[1,2]}}')


@pytest.mark.parametrize("event", [ev.ParamFrozen(name="LR", source="someone"),  # type: ignore[arg-type]
                                   ev.GuidanceChanged(source="llm"),  # type: ignore[arg-type]
                                   ev.StrategyDecision(source="tpe"),  # type: ignore[arg-type]
                                   ev.ResearchStarted(source="cmaes")])  # type: ignore[arg-type]
def test_a_source_outside_its_fixed_set_is_refused_when_written(event: ev.Event):
    with pytest.raises(ev.EventEncodeError, match="source"):
        ev.encode(event)


def _product_sources() -> list[tuple[Path, str]]:
    return [(p, p.read_text()) for top in PRODUCT for p in sorted((ROOT / top).rglob("*.py"))]


def test_no_untyped_change_and_no_enum_value_string_comparison_remain_in_the_product():
    found = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
             for p, text in _product_sources() for n, line in enumerate(text.splitlines(), 1)
             if (UNTYPED.search(line) and p.relative_to(ROOT).parts[0] not in PLAIN_DATA)
             or VALUE_COMPARE.search(line)]
    assert found == [], "\n".join(found)
    assert not any(re.search(r"\bclass Outcome\(", text) for _, text in _product_sources())


def test_the_grep_finds_what_it_forbids():
    # the patterns above must match the shapes they forbid, or the test above cannot fail
    for line in ("    changes: dict[str, Any]", "def to_changes(dims) -> dict[str, Any]:",
                 "                attempt: int) -> tuple[dict[str, Any], str]: ..."):
        assert UNTYPED.search(line), line
    assert VALUE_COMPARE.search('if result.outcome.value == "ok":')
    assert VALUE_COMPARE.search("if 'cancelled' != run.result.outcome.value:")
    assert not VALUE_COMPARE.search("and node.left.value == 2")  # an AST constant, not an enum
