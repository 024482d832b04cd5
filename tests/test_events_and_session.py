"""The event vocabulary and the session store: the contract between engine, UI and replay."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest

from core.record import events as ev
from core.record.session import SessionError, SessionReader, SessionWriter, find_session, new_session_dir
from core.record.state import fold


def test_every_event_type_round_trips_through_json():
    for name, cls in ev.event_types().items():
        event = cls(seq=7, ts=1.5)
        back = ev.from_json(ev.to_json(event))
        assert type(back) is cls and back == event, name


def test_nan_and_inf_round_trip_exactly_as_floats():
    event = ev.TrainingProgress(seq=4, ts=2.0, iteration=1, loss=float("nan"), tok_per_s=float("inf"),
                                remaining_s=float("-inf"))
    line = ev.to_json(event)
    back = ev.from_json(line)
    assert math.isnan(back.loss) and back.tok_per_s == math.inf and back.remaining_s == -math.inf
    assert json.loads(line)["loss"] != json.loads(line)["loss"]  # Python's json reads the NaN token as a float too


def test_nonfinite_floats_inside_nested_payloads_round_trip():
    event = ev.IterationFinished(iteration=2, decision="crash", changes={"LR": float("inf")},
                                 values={"LR": float("inf"), "NAME": "nan"},
                                 acceptance={"runs": [1.0, float("nan")], "margin": None})
    back = ev.from_json(ev.to_json(event))
    assert back.changes.params == {"LR": math.inf} and back.values["NAME"] == "nan"  # a string stays a string
    assert back.acceptance["runs"][0] == 1.0 and math.isnan(back.acceptance["runs"][1])
    assert back.acceptance["margin"] is None
    metrics = ev.from_json(ev.to_json(ev.TrainingFinished(iteration=2, outcome="diverged",
                                                         metrics={"loss": float("nan")}))).metrics
    assert math.isnan(metrics["loss"]) and isinstance(metrics["loss"], float)


def test_old_lines_with_nan_strings_in_float_fields_read_back_as_floats():
    old = ('{"seq": 9, "ts": 1.0, "type": "training_finished", "iteration": 3, "outcome": "diverged", '
           '"val_bpb": null, "metrics": {"val_bpb": "nan", "loss": "inf"}, "duration_s": 4.0}')
    e = ev.from_json(old)
    assert math.isnan(e.metrics["val_bpb"]) and e.metrics["loss"] == math.inf
    p = ev.from_json('{"seq": 2, "ts": 1.0, "type": "training_progress", "iteration": 1, "loss": "-inf"}')
    assert p.loss == -math.inf
    n = ev.from_json('{"seq": 3, "ts": 1.0, "type": "noise_measured", "values": [0.9, "nan"], "std": "nan"}')
    assert n.values[0] == 0.9 and math.isnan(n.values[1]) and math.isnan(n.std)


@pytest.mark.parametrize("line, field", [
    ('{"seq": 1, "ts": 0, "type": "training_progress", "iteration": 1, "loss": "fast"}', "$.loss"),
    ('{"seq": 1, "ts": 0, "type": "iteration_finished", "iteration": "two"}', "$.iteration"),
    ('{"seq": 1, "ts": 0, "type": "iteration_finished", "decision": "maybe"}', "$.decision"),
    ('{"seq": 1, "ts": 0, "type": "training_finished", "metrics": {"val_bpb": "low"}}', "$.metrics"),
    ('{"seq": "one", "ts": 0, "type": "from_the_future"}', "$.seq"),
    ('{"seq": 1, "ts": 0, "type": "llm_delta", "kind": "shouting"}', "$.kind"),
])
def test_a_wrong_typed_field_is_a_decode_error_naming_it(line, field):
    with pytest.raises(ev.EventDecodeError, match=re.escape(field)):
        ev.from_json(line)


def test_a_wrong_typed_field_is_refused_with_its_line_number(tmp_path):
    w = SessionWriter(tmp_path)
    w.append(ev.GuidanceChanged(guidance="kept"))
    w.close()
    with open(tmp_path / "events.jsonl", "a") as fh:
        fh.write('{"seq": 2, "ts": 1, "type": "training_progress", "iteration": 1, "loss": "fast"}\n')
        fh.write(ev.to_json(ev.GuidanceChanged(seq=3, guidance="after")) + "\n")
    with pytest.raises(SessionError, match=r"events\.jsonl:2: .*\$\.loss"):
        list(SessionReader(tmp_path).events())


def test_an_event_outside_its_fixed_values_is_refused_before_it_is_written():
    with pytest.raises(ev.EventEncodeError, match="decision"):
        ev.to_json(ev.IterationFinished(iteration=1, decision="maybe"))  # type: ignore[arg-type]


def test_an_unknown_event_is_written_back_as_it_was_read():
    line = '{"seq":3,"ts":1.0,"type":"from_the_future","x":{"deep":[1,2]}}'
    assert json.loads(ev.to_json(ev.from_json(line))) == json.loads(line)


def test_events_are_frozen():
    e = ev.GuidanceChanged(guidance="g")
    with pytest.raises((AttributeError, TypeError)):
        e.guidance = "other"  # type: ignore[misc]


def test_unknown_event_type_is_kept_not_dropped():
    e = ev.from_json('{"seq": 3, "ts": 1.0, "type": "from_the_future", "x": 1}')
    assert isinstance(e, ev.UnknownEvent) and e.name == "from_the_future" and e.data == {"x": 1}


def test_unknown_fields_are_ignored():
    e = ev.from_json('{"seq": 1, "ts": 0, "type": "guidance_changed", "guidance": "g", "new_field": 5}')
    assert e == ev.GuidanceChanged(seq=1, ts=0.0, guidance="g")


def test_writer_stamps_increasing_sequence_numbers(tmp_path):
    w = SessionWriter(tmp_path)
    a = w.append(ev.GuidanceChanged(guidance="a"))
    b = w.append(ev.GuidanceChanged(guidance="b"))
    w.close()
    assert (a.seq, b.seq) == (1, 2) and b.ts >= a.ts
    assert [e.seq for e in SessionReader(tmp_path).events()] == [1, 2]


def test_truncated_last_line_is_tolerated_and_repaired_on_append(tmp_path):
    w = SessionWriter(tmp_path)
    w.append(ev.GuidanceChanged(guidance="kept"))
    w.close()
    with open(tmp_path / "events.jsonl", "a") as fh:
        fh.write('{"seq": 2, "ts": 1, "type": "guidance_ch')  # the writer died mid-line
    assert [e.guidance for e in SessionReader(tmp_path).events()] == ["kept"]
    w = SessionWriter(tmp_path)
    stamped = w.append(ev.GuidanceChanged(guidance="next"))
    w.close()
    assert stamped.seq == 2
    assert [e.guidance for e in SessionReader(tmp_path).events()] == ["kept", "next"]


def test_corrupt_line_in_the_middle_is_an_error_with_its_line_number(tmp_path):
    (tmp_path / "events.jsonl").write_text('{"seq":1,"ts":0,"type":"paused"}\nnot json\n{"seq":3,"ts":0,"type":"paused"}\n')
    with pytest.raises(SessionError, match=r"events.jsonl:2"):
        list(SessionReader(tmp_path).events())


def test_events_survive_kill_9_of_the_writer(tmp_path):
    code = (
        "import os, sys; sys.path.insert(0, %r)\n"
        "from core.record.session import SessionWriter; from core.record import events as ev\n"
        "w = SessionWriter(%r)\n"
        "for i in range(50): w.append(ev.TrainingProgress(iteration=1, step=i))\n"
        "os.kill(os.getpid(), 9)\n"
    ) % (os.getcwd(), str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode == -9
    assert [e.step for e in SessionReader(tmp_path).events()] == list(range(50))


def test_artifacts_are_written_atomically_and_referenced_relatively(tmp_path):
    w = SessionWriter(tmp_path)
    rel = w.artifact("iterations/0001/train.py", "X = 1\n")
    w.close()
    assert rel == "artifacts/iterations/0001/train.py"
    assert (tmp_path / rel).read_text() == "X = 1\n"
    assert not [p for p in (tmp_path / "artifacts/iterations/0001").iterdir() if p.name.startswith(".")]


def test_new_session_dirs_never_collide(tmp_path):
    a = new_session_dir(tmp_path, "my run", now=0)
    b = new_session_dir(tmp_path, "my run", now=0)
    assert a != b and a.name.endswith("my-run") and b.name.endswith("my-run-2")


def test_find_session_by_prefix_and_clear_error(tmp_path):
    d = new_session_dir(tmp_path, "alpha", now=0)
    SessionWriter(d).close()
    (d / "events.jsonl").write_text("")
    assert find_session(d.name[:10], tmp_path) == d
    with pytest.raises(SessionError, match="no session"):
        find_session("nope", tmp_path)


def test_fold_tracks_best_and_never_takes_a_discarded_config():
    events = [
        ev.SessionStarted(session="s", script="artifacts/baseline/train.py",
                          schema={"LR": {"kind": "float", "value": 0.1}}),
        ev.IterationFinished(iteration=0, decision="baseline", val_bpb=2.0, script="b", values={"LR": 0.1}),
        ev.IterationFinished(iteration=1, decision="keep", val_bpb=1.9, best_before=2.0, script="k1",
                             values={"LR": 0.2}, changes={"LR": 0.2}),
        ev.IterationFinished(iteration=2, decision="discard", val_bpb=1.95, best_before=1.9, script="d2",
                             values={"LR": 0.3}, changes={"LR": 0.3}),
        ev.IterationFinished(iteration=3, decision="crash", outcome="crash", best_before=1.9, script="c3",
                             values={"LR": 9.0}, changes={"LR": 9.0}),
    ]
    s = fold(events)
    assert s.best_val_bpb == 1.9 and s.best_script == "k1" and s.best_values == {"LR": 0.2}
    assert s.baseline_val_bpb == 2.0 and s.next_iteration == 4
    assert [r.decision for r in s.records] == ["baseline", "keep", "discard", "crash"]
    assert s.records[3].val_bpb is None  # a crash is never a number


def test_interrupted_iteration_is_rerun_with_the_same_number():
    s = fold([
        ev.SessionStarted(session="s"),
        ev.IterationFinished(iteration=0, decision="baseline", val_bpb=2.0),
        ev.IterationStarted(iteration=1),
    ])
    assert s.running == 1
    s.apply(ev.IterationInterrupted(iteration=1))
    assert s.running is None and s.next_iteration == 1 and s.interrupted == [1]
