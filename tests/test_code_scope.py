"""search.scope = "code": edit blocks checked before anything runs, the reply's schema, the training wall, the causality check.

The runs through the real engine (the hostile-edit corpus, a kept edit replayed and resumed) are
tests/test_code_scope_runs.py's, in the slow lane.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.levels.code_library import LIBRARY
from core.levels.inner import InnerLoop, parse_proposal
from core.levels.offline import OfflineProposer
from core.levels.reply_schemas import proposal_schema
from core.record import events as ev
from core.record.change import CodeEdit, EditBlock, ParamChange, as_change
from core.services import code_run
from core.services.code_edit import apply_edits, has_protocol, protected_spans, protocol_names
from core.services.schema import infer_schema
from core.services.script import ProposalError, TrainScript
from mechanisms.sandbox.isolation import TRAINING_ALLOWED, _DENIED, seccomp_program
from tests.conftest import fast_config
from tests.support.run_context import FakeRunContext

ROOT = Path(__file__).resolve().parents[1]
TRAIN = (ROOT / "baseline" / "train.py").read_text(encoding="utf-8")

# The stand-in script with a protocol region, for the levels on a bare context (its score reads the constants).
SMALL = '''import math
import os

LR = 0.04  # learning rate
WARMDOWN_RATIO = 0.5
PATTERN = "SSSL"
DEPTH = 4
TIME_BUDGET = 1


def schedule(step):
    return 1.0


# >>> protocol: the evaluation
def evaluate(x):
    return x
# <<< protocol

val = 1.0 + 0.05 * math.log(LR / 0.02) ** 2 + 0.2 * (WARMDOWN_RATIO - 0.3) ** 2
print("---")
print(f"val_bpb: {evaluate(val):.6f}")
'''


def edit(find: str, replace: str) -> EditBlock:
    return EditBlock(find=find, replace=replace)


def problems(text: str, *edits: EditBlock) -> list[str]:
    with pytest.raises(ProposalError) as caught:
        apply_edits(text, list(edits))
    return caught.value.errors


# --- the edit blocks ---------------------------------------------------------------------------


def test_every_library_edit_applies_to_baseline_train_and_says_where_it_comes_from() -> None:
    for known in LIBRARY:
        edited = apply_edits(TRAIN, known.edit.edits)
        assert edited != TRAIN and TrainScript.parse(edited).values() == TrainScript.parse(TRAIN).values()
        assert known.source


def test_an_edit_is_written_exactly_where_its_find_text_is() -> None:
    out = apply_edits(SMALL, [edit("    return 1.0\n", "    return 0.5 if step > 10 else 1.0\n")])
    assert out == SMALL.replace("    return 1.0\n", "    return 0.5 if step > 10 else 1.0\n")


def test_a_find_that_matches_nothing_or_twice_is_refused_with_the_reason() -> None:
    assert "matches nothing" in problems(SMALL, edit("return 2.0", "return 3.0"))[0]
    twice = problems(SMALL, edit("return", "return  "))[0]
    assert "matches 2 places" in twice
    assert "overlaps edit 1" in problems(SMALL, edit("def schedule(step):", "def schedule(s):"),
                                         edit("schedule(step):\n    return", "schedule(step):\n    pass\n    return"))[0]


def test_an_edit_of_the_protocol_or_a_constant_is_refused() -> None:
    assert "the protected protocol" in problems(SMALL, edit("    return x\n", "    return x * 0.5\n"))[0]
    assert "the constant LR" in problems(SMALL, edit("LR = 0.04", "LR = 0.03"))[0]
    # the real script: its evaluation and its loader
    assert "the protected protocol" in problems(TRAIN, edit("return (nats / (math.log(2) * nbytes)).item()",
                                                           "return 0.5"))[0]
    assert "the protected protocol" in problems(TRAIN, edit('val=(np.zeros(0, dtype=np.uint16) if scored_elsewhere',
                                                           'val=(np.zeros(0, dtype=np.uint16) if True'))[0]
    assert "protocol marker" in problems(SMALL, edit("def schedule(step):", "# <<< protocol\ndef schedule(step):"))[0]


def test_an_edit_that_rebinds_a_protocol_name_breaks_the_parse_or_imports_a_missing_module_is_refused() -> None:
    assert "evaluate" in protocol_names(SMALL) and "evaluate_bpb" in protocol_names(TRAIN)
    rebound = problems(SMALL, edit("def schedule(step):", "def evaluate(x):\n    return 0.1\n\n\ndef schedule(step):"))
    assert "binds evaluate again" in rebound[0]
    assert "does not parse" in problems(SMALL, edit("    return 1.0\n", "    return (1.0\n"))[0]
    missing = problems(SMALL, edit("import os\n", "import os\nimport no_such_module_xyz\n"))
    assert "no_such_module_xyz, which is not installed" in missing[0]
    apply_edits(SMALL, [edit("import os\n", "import os\nimport json\n")])  # the standard library is installed


def test_only_a_script_that_marks_its_protocol_can_be_searched_in_code_scope() -> None:
    assert has_protocol(TRAIN) and has_protocol(SMALL)
    assert not has_protocol(SMALL.replace("# >>> protocol", "# protocol"))
    spans = [p.what for p in protected_spans(TRAIN) if p.what.startswith("the protected protocol")]
    assert len(spans) == 3  # the loader, the evaluation with the export, the summary


# --- the reply ---------------------------------------------------------------------------------


def test_the_code_scope_reply_schema_carries_edit_blocks_and_may_change_no_constant() -> None:
    schema = infer_schema(TrainScript.parse(SMALL), locked={"DEPTH"})
    plain = proposal_schema(schema, set())
    assert "edits" not in plain["properties"] and plain["properties"]["changes"]["minItems"] == 1
    code = proposal_schema(schema, set(), max_edits=3)
    assert code["required"] == ["changes", "edits", "hypothesis"]
    assert code["properties"]["changes"]["minItems"] == 0 and code["properties"]["edits"]["maxItems"] == 3
    change, hypothesis = parse_proposal(json.dumps({"changes": [{"name": "LR", "value": 0.03}],
                                                    "edits": [{"find": "a", "replace": "b"}], "hypothesis": "h"}))
    assert change == CodeEdit(params={"LR": 0.03}, edits=[edit("a", "b")]) and hypothesis == "h"
    assert isinstance(parse_proposal(json.dumps({"changes": [], "edits": [], "hypothesis": "h"}))[0], ParamChange)
    with pytest.raises(ValueError, match="each edit must be"):
        parse_proposal(json.dumps({"changes": [], "edits": [{"find": "a"}], "hypothesis": "h"}))
    # the typed change round-trips through an event's plain data
    assert as_change({"kind": "code", "params": {}, "edits": [{"find": "a", "replace": "b"}]}) == CodeEdit(
        edits=[edit("a", "b")])


def _llm_cfg(tmp_path: Path, scope: str):
    return fast_config(tmp_path, **{"endpoint.provider": "openai", "endpoint.base_url": "http://127.0.0.1:9/v1",
                                    "endpoint.model": "m", "search.scope": scope, "search.max_reasks": 2})


def _reply(edits: list[dict], changes: list | None = None, hypothesis: str = "a schedule that decays") -> str:
    return json.dumps({"changes": changes or [], "edits": edits, "hypothesis": hypothesis})


async def test_a_bad_edit_is_rejected_with_its_reason_and_reasked_then_a_good_one_is_trained(tmp_path: Path) -> None:
    good = {"find": "    return 1.0\n", "replace": "    return 0.9\n"}
    replies = [_reply([{"find": "    return x\n", "replace": "    return 0.1\n"}]),  # the protocol
               _reply([{"find": "return 7", "replace": "return 8"}]),  # nothing
               _reply([good], [{"name": "LR", "value": 0.03}])]
    ctx = FakeRunContext(_llm_cfg(tmp_path, "code"), SMALL, replies=replies)
    inner = InnerLoop(ctx)
    await inner.run_baseline()
    await inner.run_iteration(1)
    rejected = [e for e in ctx.events if isinstance(e, ev.ProposalRejected)]
    assert [r.kind for r in rejected] == ["invalid", "invalid"]
    assert "the protected protocol" in rejected[0].reason and "matches nothing" in rejected[1].reason
    # the re-ask told the model why
    assert "the protected protocol" in ctx.prompts[1][-1]["content"]
    assert "matches nothing" in ctx.prompts[2][-1]["content"]
    # the code-scope prompt shows the whole script and the rules of edits
    first = ctx.prompts[0][-1]["content"]
    assert '"edits"' in first and "def schedule(step):" in first
    finished = [e for e in ctx.events if isinstance(e, ev.IterationFinished)][-1]
    assert finished.decision in ("keep", "discard") and isinstance(finished.changes, CodeEdit)
    trained = ctx.artifacts[finished.script]
    assert "    return 0.9\n" in trained and "LR = 0.03" in trained


async def test_a_code_edit_is_refused_in_constants_scope(tmp_path: Path) -> None:
    replies = [_reply([{"find": "    return 1.0\n", "replace": "    return 0.9\n"}])] * 3
    ctx = FakeRunContext(_llm_cfg(tmp_path, "constants"), SMALL, replies=replies)
    inner = InnerLoop(ctx)
    await inner.run_baseline()
    await inner.run_iteration(1)
    rejected = [e for e in ctx.events if isinstance(e, ev.ProposalRejected)]
    assert rejected and all('search.scope = "code"' in r.reason for r in rejected)
    assert [e for e in ctx.events if isinstance(e, ev.IterationFinished)][-1].decision == "rejected"


def test_offline_code_scope_draws_untried_library_edits_on_odd_iterations() -> None:
    schema = infer_schema(TrainScript.parse(SMALL), locked={"DEPTH"})
    values = TrainScript.parse(SMALL).values()
    proposer = OfflineProposer(seed=0, scope="code")
    first, why = proposer.propose(schema, values, set(), 1, 1)
    assert isinstance(first, CodeEdit) and "library" in why
    assert not isinstance(proposer.propose(schema, values, set(), 2, 1)[0], CodeEdit)

    class Tried:
        def __init__(self, change: CodeEdit) -> None:
            self.changes = change
    every = [Tried(k.edit) for k in LIBRARY]
    assert not isinstance(proposer.propose(schema, values, set(), 3, 1, every)[0], CodeEdit)  # none left
    assert not isinstance(OfflineProposer(seed=0).propose(schema, values, set(), 1, 1)[0], CodeEdit)


# --- the wall and the evaluation ------------------------------------------------------------------


def test_the_training_seccomp_filter_lets_threads_and_programs_through_and_nothing_else_new() -> None:
    arch = "x86_64"
    worker, training = seccomp_program(arch), seccomp_program(arch, TRAINING_ALLOWED)
    numbers = lambda prog: {k for op, _, _, k in prog if op == 0x15}  # noqa: E731 - the compared syscall numbers
    assert _DENIED[arch]["clone"] in numbers(worker) and _DENIED[arch]["clone"] not in numbers(training)
    assert _DENIED[arch]["ptrace"] in numbers(training) and _DENIED[arch]["socket"] in numbers(training)
    assert _DENIED[arch]["mount"] in numbers(training) and _DENIED[arch]["unshare"] in numbers(training)


WALL = code_run.wall_refusal()


@pytest.mark.skipif(WALL is not None, reason=f"no training wall here: {WALL}")
def test_the_training_wall_allows_its_run_folder_and_refuses_reads_writes_network_and_escapes(tmp_path: Path) -> None:
    run, outside = tmp_path / "run", tmp_path / "outside"
    run.mkdir()
    outside.mkdir()
    (outside / "val.bin").write_text("held out")
    probe = f'''
import os, socket, subprocess
open({str(run / "ok")!r}, "w").write("x")
def attempt(name, fn):
    try:
        fn()
        print(name, "ALLOWED")
    except Exception as exc:
        print(name, "refused", type(exc).__name__)
attempt("read", lambda: open({str(outside / "val.bin")!r}).read())
attempt("write", lambda: open({str(outside / "x")!r}, "w"))
attempt("socket", lambda: socket.create_connection(("127.0.0.1", 9), timeout=1))
print("child", subprocess.run(["/bin/echo", "hi"], capture_output=True, text=True).stdout.strip())
print("pid", os.getpid())
'''
    argv = [*code_run.wall_command(sys.executable, [], [str(run)]), sys.executable, "-c", probe]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env={"PATH": os.defpath})
    assert done.returncode == 0, done.stderr
    said = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert said["read"].startswith("refused") and said["write"].startswith("refused")
    assert said["socket"].startswith("refused")
    assert said["child"] == "hi" and said["pid"] == "1"  # processes run, inside a PID namespace of its own
    assert (run / "ok").read_text() == "x" and sorted(p.name for p in outside.iterdir()) == ["val.bin"]
    assert "training wall: user, network and PID namespaces" in done.stderr


def test_the_causality_check_catches_a_model_that_sees_the_next_token() -> None:
    torch = pytest.importorskip("torch")
    from baseline.trusted_eval import causality_problem

    class Causal(torch.nn.Module):
        def forward(self, idx):  # each position: a running mean of the embeddings so far
            e = torch.nn.functional.one_hot(idx, 16).float()
            return e.cumsum(1) / torch.arange(1, idx.size(1) + 1).view(1, -1, 1)

    class Peeks(Causal):
        def forward(self, idx):
            out = super().forward(idx)
            return out + torch.roll(out, -1, dims=1)  # position t adds position t+1's

    cpu = torch.device("cpu")
    assert causality_problem(Causal(), 16, 2, 32, cpu, 1e-5) == ""
    assert "not causal" in causality_problem(Peeks(), 16, 2, 32, cpu, 1e-5)


# --- downstream ---------------------------------------------------------------------------------


def _session_with_a_code_keep() -> list[ev.Event]:
    values = TrainScript.parse(SMALL).values()
    code = CodeEdit(edits=[edit("    return 1.0\n", "    return 0.9\n")])
    params = ParamChange(params={"LR": 0.03})
    return [
        ev.SessionStarted(session="s", name="t", config={"search": {"scope": "code"}}, script="artifacts/baseline/train.py"),
        ev.IterationFinished(iteration=0, decision="baseline", val_bpb=1.1, best_after=1.1, values=values),
        ev.IterationFinished(iteration=1, decision="keep", changes=code, val_bpb=1.0, best_before=1.1, best_after=1.0,
                             values=values, outcome="ok"),
        ev.IterationFinished(iteration=2, decision="keep", changes=params, val_bpb=0.9, best_before=1.0,
                             best_after=0.9, values={**values, "LR": 0.03}, outcome="ok"),
    ]


def test_the_audit_leaves_a_code_keep_out_by_its_edits() -> None:
    from core.engine.audit import build_script, plan
    from core.record.state import fold

    state = fold(_session_with_a_code_keep())
    planned = plan(state, audit=1, repeats=2, seed=0, trigger="end", allowance=None, budget_s=1.0)
    assert isinstance(planned, ev.AuditPlanned)
    assert planned.superseded == [] and sorted(planned.keeps) == [1, 2]
    by = {r.config: r for r in planned.runs}
    assert by["baseline"].edits == [] and by["best"].edits == [edit("    return 1.0\n", "    return 0.9\n")]
    assert by["without #1"].edits == [] and by["without #1"].values["LR"] == 0.03
    assert by["without #2"].edits == by["best"].edits and by["without #2"].values["LR"] == 0.04
    best = build_script(SMALL, by["best"].edits, by["best"].values)
    assert "    return 0.9\n" in best and "LR = 0.03" in best


def test_the_trace_the_report_and_the_export_say_which_keeps_were_code() -> None:
    from core.analysis.report import change_cell
    from core.levels.trace import record_line
    from core.record.state import fold
    from tui.render import changes_text

    state = fold(_session_with_a_code_keep())
    code, params = state.records[1], state.records[2]
    assert "code: `return 1.0` → `return 0.9`" in record_line(code)
    assert change_cell(code.changes) == "code: 1 edit" and change_cell(params.changes) == '{"LR": 0.03}'
    assert changes_text(code.changes) == "code ×1"
    optuna = pytest.importorskip("optuna")
    from core.analysis.export import trials_for
    trials = trials_for(state)
    assert [t.user_attrs["code_edits"] for t in trials] == [0, 1, 0]
    assert [t.user_attrs["code_in_force"] for t in trials] == [False, True, True]
    assert all(isinstance(t, optuna.trial.FrozenTrial) for t in trials)


def test_mechanisms_read_a_code_proposals_edit_blocks_beside_its_constants() -> None:
    from core.engine.mechanism_host import proposal_data
    from core.levels.proposal import Proposal

    code = Proposal(CodeEdit(params={"LR": 0.03}, edits=[edit("a", "b")]), "h", "llm", 1)
    assert proposal_data(code) == {"changes": {"LR": 0.03}, "hypothesis": "h",
                                   "edits": [{"find": "a", "replace": "b"}]}
    assert proposal_data(Proposal(ParamChange(params={"LR": 0.03}), "h", "llm", 1)) == {
        "changes": {"LR": 0.03}, "hypothesis": "h"}


def test_a_repeat_is_the_same_script_never_constants_across_a_kept_code_edit() -> None:
    from core.levels.inner import repeat_of

    class R:
        def __init__(self, decision: str, values: dict, changes) -> None:
            self.decision, self.values, self.changes, self.iteration = decision, values, changes, 0
    v = {"LR": 0.03}
    code = CodeEdit(edits=[edit("a", "b")])
    discarded = R("discard", v, ParamChange(params=v))
    assert repeat_of(v, [discarded]) is discarded
    assert repeat_of(v, [discarded], code) is None  # an edit with these values is another script
    assert repeat_of(v, [R("discard", v, code)], code) is not None
    assert repeat_of(v, [discarded, R("keep", v, code)]) is None  # tried against the code before the keep


async def test_the_evaluation_refuses_a_model_file_the_script_made_a_link(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("not a model")
    run = code_run.CodeRun(tmp_path / "run", ())
    run.folder.mkdir()
    run.model.symlink_to(secret)
    found = await code_run.evaluate(run, python=sys.executable, data_dir=tmp_path, constants={}, timeout_s=5)
    assert found.val_bpb is None and "as a plain file" in found.reason
