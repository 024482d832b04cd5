"""The surrogate evaluated in the engine's process says what the script says when it runs as a process."""
from __future__ import annotations

import asyncio
import difflib
import random
import sys

import pytest

from core.engine.engine import Engine
from core.record import config
from core.record import events as ev
from core.services.script import TrainScript, unified_diff
from core.services.surrogate_run import is_surrogate, run_surrogate, surrogate_result
from core.services.trainer import run_training
from core.services.trial_request import TrialRequest
from tests.conftest import Recorder

SURROGATE = config.SURROGATE_SCRIPT.read_text(encoding="utf-8")
CASES = {"ok": {}, "diverged": {"MATRIX_LR": 0.9}, "config error": {"DEVICE_BATCH_SIZE": 96},
         "oom": {"DEVICE_BATCH_SIZE": 512, "TOTAL_BATCH_SIZE": 2**21}}


def test_only_the_surrogates_own_code_runs_in_process():
    script = TrainScript.parse(SURROGATE)
    assert is_surrogate(SURROGATE) and is_surrogate(script.apply({"MATRIX_LR": 0.03, "WINDOW_PATTERN": "SL"}).text)
    assert not is_surrogate(SURROGATE.replace("def check(hp: dict)", "# edited\ndef check(hp: dict)"))
    assert not is_surrogate(config.BASELINE_SCRIPT.read_text(encoding="utf-8"))
    assert not is_surrogate("def broken(:\n")


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_run_in_process_gives_the_scripts_result_log_and_lines(tmp_path, case):
    text = TrainScript.parse(SURROGATE).apply(CASES[case]).text
    script = tmp_path / "train.py"
    script.write_text(text)

    def request(log: str, seen: list) -> TrialRequest:
        return TrialRequest(attempt=1, cwd=tmp_path, budget_s=300.0, grace_s=30.0, env={"BILEVEL_SEED": "7"},
                            log_path=tmp_path / log, on_line=lambda s, line: seen.append((s, line)),
                            on_progress=lambda p: seen.append(("progress", p)), python=sys.executable)

    as_process, in_process = [], []
    a = asyncio.run(run_training(script, **request("process.log", as_process).training_kwargs()))
    b = asyncio.run(run_surrogate(text, 7, request("inprocess.log", in_process)))
    same = ("outcome", "val_bpb", "metrics", "exit_code", "error_tail", "worker", "failure")
    assert {f: getattr(b, f) for f in same} == {f: getattr(a, f) for f in same}
    assert b.reason.split(" after ")[0] == a.reason.split(" after ")[0]
    assert sorted(map(str, in_process)) == sorted(map(str, as_process))  # two pipes: only their order may differ
    assert sorted((tmp_path / "inprocess.log").read_text().splitlines()) == sorted(
        (tmp_path / "process.log").read_text().splitlines())
    assert surrogate_result(text, 7).val_bpb == a.val_bpb


def _training_events(events: list) -> list:
    kept = (ev.TrainingStarted, ev.TrainingProcess, ev.TrainingProgress, ev.TrainingOutput, ev.TrainingFinished,
            ev.IterationFinished, ev.ProposalMade)
    out = []
    for e in events:
        if isinstance(e, kept):
            d = ev.to_dict(e)
            for volatile in ("seq", "ts", "duration_s", "tag", "script", "log", "reason", "acceptance"):
                d.pop(volatile, None)
            out.append(d)
    return out


@pytest.mark.slow  # five runs of the surrogate as processes
async def test_a_surrogate_session_records_the_events_a_process_run_records(tmp_path):
    # a copy whose code differs by a comment runs as a process: the same surface, the old path
    copy = tmp_path / "surrogate_copy.py"
    copy.write_text(SURROGATE.replace("def check(hp: dict)", "# a copy\ndef check(hp: dict)"))
    logs = []
    for where, extra in (("inproc", {}), ("proc", {"script.path": str(copy)})):
        cfg = config.demo_config(**{"script.preset": "surrogate", "search.group": "A", "budget.iterations": 4,
                                    "audit.enabled": False, "run.sessions_dir": str(tmp_path / where), **extra})
        engine = Engine.create(cfg)
        rec = Recorder()
        engine.subscribe(rec)
        assert (await engine.run()).status == "completed"
        logs.append(_training_events(rec.events))
    assert logs[0] and logs[0] == logs[1]


def whole_text_diff(old: str, new: str) -> str:
    """The diff over the whole text, as script.unified_diff made it before it skipped the untouched lines."""
    out = []
    for line in difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                     fromfile="a/train.py", tofile="b/train.py", n=3):
        out.append(line)
        if not line.endswith("\n"):
            out.append("\n\\ No newline at end of file\n")
    return "".join(out)


def test_an_edited_scripts_parse_is_derived_as_a_full_parse_gives_it():
    rng = random.Random(0)
    for text in (SURROGATE, config.BASELINE_SCRIPT.read_text(encoding="utf-8")):
        current = TrainScript.parse(text)
        for _ in range(60):
            changes = {}
            for name in rng.sample(sorted(current.params), 3):
                p = current.params[name]
                if p.kind == "float":
                    changes[name] = round(p.value * rng.uniform(0.5, 2.0), 5) if p.value else 0.5
                elif p.kind == "int" and not isinstance(p.value, bool):
                    changes[name] = max(1, p.value * 2)
                elif p.kind == "str" and p.choices:
                    changes[name] = rng.choice(p.choices)
                elif p.kind == "tuple" and all(isinstance(v, float) for v in p.value):
                    changes[name] = tuple(round(rng.uniform(0.5, 0.99), 3) for _ in p.value)
            new = current.apply(changes)
            full = TrainScript._parse(new.text)  # noqa: SLF001 - the reference the derivation must equal
            assert new.params == full.params and new._spans == full._spans  # noqa: SLF001
            assert unified_diff(current.text, new.text) == whole_text_diff(current.text, new.text)
            current = new
