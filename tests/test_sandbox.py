"""Generated mechanisms are parsed, policed, imported and dry-run before activation, loudly.

Each case is a whole module of the kind the Level 2 dialogue writes; the import and dry
run happen in a real child process, and the runtime guard is exercised with real
subprocesses, sockets and files.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import pytest

from mechanisms.base import SearchState, Veto
from mechanisms.contract import check
from mechanisms.sandbox import ValidationReport, check_policy, open_mechanism, validate
from mechanisms.sandbox.tripwire import runtime_guard
from tests.support.patience import patience

FIXTURES = Path(__file__).parent / "fixtures" / "mechanisms"
TRACE = json.loads((FIXTURES / "trace.json").read_text())
IMPORT_TIMEOUT_S = 5.0
HOOK_TIMEOUT_S = 0.5


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def run_validate(source: str, workdir: Path, **kw: Any) -> ValidationReport:
    kw.setdefault("records", TRACE["records"])
    kw.setdefault("schema", TRACE["schema"])
    return validate(source, import_timeout_s=IMPORT_TIMEOUT_S, hook_timeout_s=HOOK_TIMEOUT_S, workdir=workdir, **kw)


def step(report: ValidationReport, name: str):
    return next(s for s in report.steps if s.name == name)


def failed_step(report: ValidationReport) -> str:
    assert not report.ok
    return next(s.name for s in report.steps if not s.ok)


def module_with(body: str, imports: str = "") -> str:
    """A generated-looking mechanism whose observe hook runs ``body``."""
    return (f'"""Generated search mechanism."""\n{imports}\nfrom mechanisms.base import Mechanism\n\n\n'
            f"class Probe(Mechanism):\n    def observe(self, state, result):\n"
            f"{textwrap.indent(body, ' ' * 8)}\n")


def line_of(source: str, needle: str) -> int:
    return next(i for i, line in enumerate(source.splitlines(), 1) if needle in line)


# --- the four steps -----------------------------------------------------------------------

def test_good_mechanism_passes_all_four_steps_and_reports_its_hooks(tmp_path: Path) -> None:
    report = run_validate(fixture("tabu_memory.py"), tmp_path)

    assert report.ok, report.failure()
    assert [s.name for s in report.steps] == ["parse", "policy", "import", "dry_run"]
    assert report.class_name == "TabuMemory"
    assert report.hooks == ["on_attach", "shape_prompt", "review_proposal", "observe"]
    assert report.failure() == ""
    # every trained record's proposal was reviewed, every scored one decided, the rejected one only prompted
    detail = step(report, "dry_run").detail
    for counted in ("on_attach ×1", "shape_prompt ×6", "review_proposal ×5", "decide ×4", "observe ×5"):
        assert counted in detail
    # the module file lands in the workdir, and nothing else is left there
    assert [p.name for p in tmp_path.iterdir()] == [Path(report.module_path or "").name]
    assert json.loads(json.dumps(report.to_dict()))["class_name"] == "TabuMemory"
    assert "TabuMemory" in report.to_markdown() and "dry_run" in report.to_markdown()


def test_empty_trace_still_calls_every_hook(tmp_path: Path) -> None:
    report = run_validate(fixture("hook_raises.py"), tmp_path, records=[])

    assert failed_step(report) == "dry_run"
    assert "decide raised KeyError" in report.failure()


def test_misplaced_future_import_fails_at_parse(tmp_path: Path) -> None:
    report = run_validate("import math\n" + fixture("tabu_memory.py"), tmp_path)

    assert failed_step(report) == "parse"
    assert "from __future__ imports must occur at the beginning" in report.failure()


def test_syntax_error_reports_line_and_column(tmp_path: Path) -> None:
    report = run_validate(fixture("syntax_error.py.txt"), tmp_path)

    assert failed_step(report) == "parse"
    assert "line 8, column" in report.failure()
    assert "for r in state.records" in report.failure()
    assert list(tmp_path.iterdir()) == []  # nothing is written for code that never gets imported


FORBIDDEN = [
    ("subprocess", "import subprocess", 'subprocess.run(["ls", "-l"])', "forbidden-import", "import subprocess"),
    ("socket", "import socket", 'socket.create_connection(("example.com", 80))', "forbidden-import",
     "import socket"),
    ("ctypes", "import ctypes", "ctypes.CDLL(None).abort()", "forbidden-import", "import ctypes"),
    ("os.system", "import os", 'os.system("nvidia-smi")', "forbidden-call", "os.system"),
    ("eval", "", 'self.best = eval("result[\'val_bpb\']")', "forbidden-name", "eval("),
    ("exec", "", 'exec("self.count = 1")', "forbidden-name", "exec("),
    ("open-for-write", "", 'open("trace.log", "a").write(str(result))', "open-for-write", "open("),
    ("__import__", "", '__import__("os").getcwd()', "forbidden-name", "__import__"),
    ("Path.write_text", "from pathlib import Path", 'Path("notes.txt").write_text(str(result))',
     "filesystem-write", "write_text"),
    ("from-os-import-system", "from os import system", 'system("ls")', "forbidden-call", "from os import"),
    ("threading", "import threading", "threading.Thread(target=print).start()", "forbidden-import",
     "import threading"),
    ("open-non-literal-mode", "", 'mode = "w"\nopen("trace.log", mode)', "open-mode", "open("),
    ("dunder-escape", "", "().__class__.__bases__[0].__subclasses__()", "dunder-escape", "__subclasses__"),
    ("dynamic-getattr", "", 'getattr(self, "_" + "hook")()', "dynamic-attribute", "getattr"),
    ("relative-import", "from . import helpers", "helpers.run()", "relative-import", "from . import"),
    ("sys.modules", "import sys", 'sys.modules["subprocess"].run(["ls"])', "forbidden-call", "sys.modules"),
]


@pytest.mark.parametrize("imports, body, rule, needle", [c[1:] for c in FORBIDDEN], ids=[c[0] for c in FORBIDDEN])
def test_forbidden_code_is_rejected_at_policy_with_rule_and_line(
        tmp_path: Path, imports: str, body: str, rule: str, needle: str) -> None:
    source = module_with(body, imports)
    report = run_validate(source, tmp_path)

    assert failed_step(report) == "policy"
    line = line_of(source, needle)
    assert any(v.startswith(f"line {line}: {rule}:") for v in report.violations), report.violations
    assert rule in report.failure()
    assert check_policy(source) == report.violations


def test_read_only_open_and_standard_library_pass_policy() -> None:
    source = module_with('with open("notes.txt") as fh:\n    self.notes = json.load(fh)\n'
                         'self.mean = statistics.fmean([1.0, 2.0])\nself.when = os.path.getmtime("notes.txt")',
                         "import json\nimport os\nimport statistics")
    assert check_policy(source) == []


def test_installed_third_party_package_needs_the_allow_list() -> None:
    source = module_with("self.mean = numpy.mean([1.0, 2.0])", "import numpy")

    assert any("forbidden-import" in v and "allow_imports" in v for v in check_policy(source))
    assert check_policy(source, allow_imports=["numpy"]) == []


def test_missing_package_is_named_at_import(tmp_path: Path) -> None:
    report = run_validate(fixture("missing_package.py"), tmp_path)

    assert failed_step(report) == "import"
    assert report.missing_packages == ["sklearn_not_installed_xyz"]
    assert "missing package 'sklearn_not_installed_xyz'" in report.failure()


def test_exception_in_a_hook_fails_the_dry_run_naming_the_hook(tmp_path: Path) -> None:
    report = run_validate(fixture("hook_raises.py"), tmp_path)

    assert failed_step(report) == "dry_run"
    assert "decide raised KeyError" in report.failure()
    assert "result[\"delta\"]" in report.failure()  # the traceback's last lines point at the bug


def test_hook_that_never_returns_times_out_naming_the_hook(tmp_path: Path) -> None:
    report = run_validate(fixture("hook_hangs.py"), tmp_path)

    assert failed_step(report) == "dry_run"  # how soon: bench/bench_deadlines.py
    assert "observe did not return within 0.5 s" in report.failure()


def test_hook_that_swallows_the_alarm_is_still_killed(tmp_path: Path) -> None:
    source = module_with("while True:\n    try:\n        while True:\n            pass\n"
                         "    except BaseException:\n        pass")
    report = run_validate(source, tmp_path)

    assert failed_step(report) == "dry_run"  # how soon: bench/bench_deadlines.py
    assert "observe did not return" in report.failure()


@pytest.mark.slow  # waits out the import timeout (seconds by design)
def test_import_that_hangs_is_killed_at_the_import_timeout(tmp_path: Path) -> None:
    started = time.monotonic()
    report = run_validate(fixture("import_hangs.py"), tmp_path)
    elapsed = time.monotonic() - started

    assert elapsed >= IMPORT_TIMEOUT_S  # not before the timeout; how soon after is bench/bench_deadlines.py's
    assert failed_step(report) == "import"
    assert "did not finish within 5 s" in report.failure()


@pytest.mark.parametrize("garbage, shown", [("42", "int 42"), ('"yes"', "str 'yes'"), ("Veto(7)", "Veto(int 7)")])
def test_review_proposal_returning_garbage_is_rejected(tmp_path: Path, garbage: str, shown: str) -> None:
    source = textwrap.dedent(f'''\
        """Always says something."""
        from mechanisms.base import Mechanism, Veto


        class Opinionated(Mechanism):
            def review_proposal(self, state, proposal):
                return {garbage}
        ''')
    report = run_validate(source, tmp_path)

    assert failed_step(report) == "dry_run"
    assert "review_proposal returned" in report.failure() and shown in report.failure()


@pytest.mark.parametrize("hook, body, message", [
    ("decide", 'return "maybe"', "decide returned str 'maybe'"),
    ("shape_prompt", 'return {"hint": 1}', "shape_prompt returned dict"),
])
def test_other_hooks_returning_the_wrong_type_are_rejected(tmp_path: Path, hook: str, body: str,
                                                           message: str) -> None:
    args = {"decide": "state, result, best", "shape_prompt": "state, prompt"}[hook]
    source = (f'"""Fixture."""\nfrom mechanisms.base import Mechanism\n\n\nclass Odd(Mechanism):\n'
              f"    def {hook}(self, {args}):\n        {body}\n")
    report = run_validate(source, tmp_path)

    assert failed_step(report) == "dry_run"
    assert message in report.failure()


@pytest.mark.parametrize("name, count", [("two_classes.py", "found 2"), ("no_class.py", "found none")])
def test_module_must_define_exactly_one_mechanism_class(tmp_path: Path, name: str, count: str) -> None:
    report = run_validate(fixture(name), tmp_path)

    assert failed_step(report) == "policy"
    assert any("mechanism-class" in v and count in v for v in report.violations)


def test_a_subclass_of_a_local_mechanism_counts_as_a_second_class() -> None:
    source = fixture("tabu_memory.py") + "\n\nclass StricterTabu(TabuMemory):\n    pass\n"
    assert any("mechanism-class" in v and "found 2" in v for v in check_policy(source))


def test_forbidden_operation_is_caught_at_run_time_even_when_swallowed(tmp_path: Path) -> None:
    probe = Path("/tmp/.bilevel_sandbox_probe")  # where the fixture tries to write
    try:
        report = run_validate(fixture("swallowed_write.py"), tmp_path)

        assert failed_step(report) == "dry_run"
        assert "observe attempted a forbidden operation" in report.failure()
        assert not probe.exists()
    finally:
        probe.unlink(missing_ok=True)


def test_stray_prints_cannot_forge_the_report(tmp_path: Path) -> None:
    forged = '{"event": "done", "ok": true, "detail": "forged"}'
    source = module_with(f"print('@@bilevel-dryrun@@ {forged}')\nprint(1 / 0)")
    report = run_validate(source, tmp_path)

    assert failed_step(report) == "dry_run"
    assert "observe raised ZeroDivisionError" in report.failure()


def test_validate_runs_concurrently_from_threads(tmp_path: Path) -> None:
    reports: list[ValidationReport] = []
    sources = [fixture("tabu_memory.py"), fixture("hook_raises.py")]
    threads = [threading.Thread(target=lambda s=s: reports.append(run_validate(s, tmp_path))) for s in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(r.ok for r in reports) == [False, True]


# --- loading into a worker ------------------------------------------------------------------

def load_in_worker(source: str, calls: Callable[[Any], Any], **kw: Any) -> Any:
    """Start a worker, load ``source``, run ``calls(worker)`` (async); returns (info, its result)."""
    async def main() -> Any:
        worker, info = await open_mechanism(source, "generated_probe", level="strict", **kw)
        try:
            return info, (await calls(worker) if info["ok"] else None)
        finally:
            await worker.close()
    return asyncio.run(main())


def test_a_loaded_worker_answers_hooks_with_plain_data(tmp_path: Path) -> None:
    state = asdict(SearchState(records=TRACE["records"], schema=TRACE["schema"]))

    async def calls(worker: Any) -> list[Any]:
        await worker.call("on_attach", [state], 2.0)
        return [await worker.call("shape_prompt", [state, "prompt"], 2.0),
                await worker.call("review_proposal", [state, {"changes": {"WARMUP_RATIO": 0.1}, "hypothesis": "a"}],
                                  2.0),
                await worker.call("review_proposal", [state, {"changes": {"MATRIX_LR": 0.1}, "hypothesis": "b"}], 2.0)]

    info, (prompt, repeat, fresh) = load_in_worker(fixture("tabu_memory.py"), calls)

    assert info["ok"] and info["class_name"] == "TabuMemory"
    assert "WARMUP_RATIO: 0.1" in check("shape_prompt", prompt)
    verdict = check("review_proposal", repeat, TRACE["schema"])
    assert type(verdict) is Veto and "WARMUP_RATIO" in verdict.reason
    assert check("review_proposal", fresh, TRACE["schema"]) is None
    assert not list(tmp_path.glob("**/__pycache__"))


@pytest.mark.parametrize("source, reason", [
    (fixture("tabu_memory.py").replace("import math", "import math\nimport sklearn_not_installed_xyz"),
     "No module named 'sklearn_not_installed_xyz'"),
    (fixture("two_classes.py"), "exactly one Mechanism subclass"),
    (fixture("tabu_memory.py").replace("class TabuMemory", "raise RuntimeError('boom')\n\n\nclass TabuMemory"),
     "RuntimeError: boom"),
], ids=["missing-package", "two-classes", "raises-at-import"])
def test_a_module_that_cannot_load_says_why_and_never_falls_back(source: str, reason: str) -> None:
    info, _ = load_in_worker(source, lambda w: None)

    assert not info["ok"] and reason in info["error"]


# --- the runtime guard --------------------------------------------------------------------

def in_marked_thread(write_root: Path, action: Callable[[], Any]) -> BaseException | None:
    """Run ``action`` under the guard in a fresh thread; returns what it raised."""
    raised: list[BaseException] = []

    def target() -> None:
        with runtime_guard(write_root):
            try:
                action()
            except BaseException as exc:  # noqa: BLE001
                raised.append(exc)

    t = threading.Thread(target=target)
    t.start()
    t.join()
    return raised[0] if raised else None


def test_runtime_guard_blocks_subprocess_in_a_marked_thread_only(tmp_path: Path) -> None:
    run = lambda: subprocess.run([sys.executable, "-c", "pass"], check=True)  # noqa: E731

    assert isinstance(in_marked_thread(tmp_path, run), PermissionError)
    run()  # the main thread is unaffected


def test_runtime_guard_blocks_sockets_in_a_marked_thread_only(tmp_path: Path) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    address = server.getsockname()
    try:
        assert isinstance(in_marked_thread(tmp_path, lambda: socket.create_connection(address, timeout=2)),
                          PermissionError)
        with socket.create_connection(address, timeout=2):  # the main thread still connects
            pass
    finally:
        server.close()


def test_runtime_guard_blocks_writes_outside_the_write_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "scratch", tmp_path / "outside.txt"
    root.mkdir()

    assert isinstance(in_marked_thread(root, lambda: outside.write_text("x")), PermissionError)
    assert not outside.exists()
    assert in_marked_thread(root, lambda: (root / "state.json").write_text("{}")) is None
    assert isinstance(in_marked_thread(root, lambda: os.rename(root / "state.json", outside)), PermissionError)
    assert in_marked_thread(root, lambda: Path(__file__).read_text()) is None  # reading is allowed
    outside.write_text("main thread")  # unaffected
    assert outside.read_text() == "main thread"


def test_runtime_guard_records_what_it_blocked_and_unmarks_on_exit(tmp_path: Path) -> None:
    with runtime_guard(tmp_path) as scope:
        try:
            subprocess.run([sys.executable, "-c", "pass"])
        except PermissionError:
            pass  # a mechanism may swallow the error; the scope still remembers
    assert scope.blocked and "subprocess.Popen" in scope.blocked[0]
    subprocess.run([sys.executable, "-c", "pass"], check=True)


def test_allow_listed_package_imports_outside_the_guard(tmp_path: Path) -> None:
    # numpy sets environment variables at import, which the guard refuses to mechanism code
    source = module_with("self.mean = float(numpy.mean([1.0, 2.0]))", "import numpy")
    report = run_validate(source, tmp_path, allow_imports=["numpy"])

    assert report.ok, report.failure()


def test_top_level_forbidden_operation_fails_the_import(tmp_path: Path) -> None:
    source = module_with("pass", "import io\ntry:\n    io.FileIO('/proc/self/comm', 'w')\nexcept OSError:\n    pass")
    report = run_validate(source, tmp_path)

    assert failed_step(report) == "import"
    assert "importing the module attempted a forbidden operation" in report.failure()


def test_a_hostile_module_name_stays_inside_the_workdir(tmp_path: Path) -> None:
    report = run_validate(fixture("tabu_memory.py"), tmp_path / "work", module_name="../" * 30 + "etc/evil")

    assert report.ok, report.failure()
    assert Path(report.module_path or "").parent == tmp_path / "work"
    assert [p.name for p in tmp_path.iterdir()] == ["work"]


# --- the operating system's wall, with the static policy bypassed -----------------------------

WALL_MODULE = '''
import os
from mechanisms.base import Mechanism


class Wall(Mechanism):
    def shape_prompt(self, state, prompt):
        if state.guidance == "tripwire off":  # the module switches the in-worker tripwire off first
            import mechanisms.sandbox.tripwire as t
            t._judge = lambda *a: None
{body}
'''


def wall_attempt(body: str, *, tripwire_off: bool = True, level: str = "strict") -> tuple[str, str]:
    """Load code straight into a worker (no policy check) and call its hook once: (outcome, text)."""
    from mechanisms.sandbox import HookError, WorkerFailed

    source = WALL_MODULE.replace("{body}", textwrap.indent(textwrap.dedent(body).strip(), " " * 8))
    state = asdict(SearchState(guidance="tripwire off" if tripwire_off else ""))

    async def main() -> tuple[str, str]:
        worker, info = await open_mechanism(source, "wall_probe", level=level)
        assert info["ok"], info
        try:
            return "returned", repr(await worker.call("shape_prompt", [state, "p"], 5.0))
        except HookError as exc:
            return "raised", str(exc)
        except WorkerFailed as exc:
            return "died", str(exc)
        finally:
            await worker.close()
    return asyncio.run(main())


needs_strict = pytest.mark.skipif(__import__("mechanisms.sandbox.isolation").sandbox.isolation.availability().level != "strict",
                                  reason="this platform lacks Landlock or seccomp (generated code is refused here)")


@needs_strict
def test_the_wall_refuses_writes_outside_the_scratch_folder_without_the_tripwire(tmp_path: Path) -> None:
    target = tmp_path / "breach.txt"
    outcome, text = wall_attempt(f"open({str(target)!r}, 'w').write('x')")

    # refused by Landlock, or (in the private view) the folder does not exist for the mechanism
    assert outcome == "raised" and ("PermissionError" in text or "FileNotFoundError" in text), text
    assert not target.exists()


@needs_strict
def test_the_wall_allows_writes_in_the_scratch_folder() -> None:
    outcome, text = wall_attempt("open('note.txt', 'w').write('x')\nreturn open('note.txt').read()")
    assert (outcome, text) == ("returned", "'x'")


@needs_strict
@pytest.mark.parametrize("path", ["/etc/passwd", "/proc/self/environ", os.path.expanduser("~"), __file__])
def test_the_wall_refuses_reads_outside_what_python_needs(path: str) -> None:
    outcome, text = wall_attempt(f"import os\nreturn str(os.listdir({path!r}) if os.path.isdir({path!r}) "
                                 f"else open({path!r}).read())")
    assert outcome == "raised" and ("PermissionError" in text or "FileNotFoundError" in text), text


@needs_strict
def test_the_wall_refuses_a_fifo_outside_the_scratch_folder(tmp_path: Path) -> None:
    outcome, text = wall_attempt(f"os.mkfifo({str(tmp_path / 'fifo')!r})")
    assert outcome in ("raised", "died") and not (tmp_path / "fifo").exists(), text


@needs_strict
@pytest.mark.parametrize("code", [
    "import _posixsubprocess, os\n_posixsubprocess.fork_exec(['/bin/true'], [b'/bin/true'], True, (), None, None, "
    "-1, -1, -1, -1, -1, -1, *os.pipe(), False, False, -1, None, None, None, -1, None, False)",
    "os.fork()",
    "import threading\nthreading.Thread(target=print).start()",
    "os.execv('/bin/true', ['true'])",
    "os.kill(os.getppid(), 9)",
], ids=["fork_exec", "fork", "thread", "exec", "kill-engine"])
def test_the_wall_kills_a_worker_that_starts_processes_threads_or_signals_others(code: str) -> None:
    outcome, text = wall_attempt(code)
    assert outcome == "died" and "SIGSYS" in text, text


@needs_strict
@pytest.mark.parametrize("family", ["AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK", "AF_PACKET"])
def test_the_wall_refuses_sockets_of_every_family(family: str) -> None:
    outcome, text = wall_attempt(f"import socket\nsocket.socket(socket.{family}, socket.SOCK_DGRAM)")
    assert outcome == "raised" and "PermissionError" in text, text


def test_the_worker_environment_holds_nothing_of_the_engines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-worker-must-not-see")
    outcome, text = wall_attempt("return repr(sorted(os.environ))", tripwire_off=False)
    assert outcome == "returned" and "OPENAI_API_KEY" not in text and "sk-worker" not in text


def test_the_weaker_process_level_still_separates_the_process(tmp_path: Path) -> None:
    outcome, text = wall_attempt("return str(os.getpid())", tripwire_off=False, level="process")
    assert outcome == "returned" and text.strip("'") != str(os.getpid())


def test_strict_isolation_where_the_platform_lacks_it_refuses_with_what_is_missing(tmp_path: Path,
                                                                                  monkeypatch) -> None:
    from mechanisms.sandbox import isolation

    monkeypatch.setattr(isolation, "availability",
                        lambda: isolation.Availability("process", 0, ("Landlock (kernel 5.13 or later)",)))
    report = run_validate(fixture("tabu_memory.py"), tmp_path)

    assert failed_step(report) == "import"
    assert "Landlock (kernel 5.13 or later)" in report.failure() and 'level2.isolation = "process"' in report.failure()


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_the_seccomp_filter_checks_the_architecture_first(arch: str) -> None:
    from mechanisms.sandbox import isolation

    prog = isolation.seccomp_program(arch)
    assert prog[0] == (0x20, 0, 0, 4) and prog[1][3] == isolation._AUDIT_ARCH[arch]
    assert prog[2] == (0x06, 0, 0, isolation._RET_KILL_PROCESS)  # any other ABI is killed
    assert prog[-3:] == [(0x06, 0, 0, isolation._RET_ALLOW), (0x06, 0, 0, isolation._RET_ERRNO | 1),
                         (0x06, 0, 0, isolation._RET_KILL_PROCESS)]
    for i, (code, jt, _, nr) in enumerate(prog[4:-3], 4):  # every jump lands on its verdict
        if code == 0x15:
            verdict = prog[i + 1 + jt][3]
            refused = nr in {isolation._DENIED[arch][n] for n in isolation._REFUSED}
            assert verdict == (isolation._RET_ERRNO | 1 if refused else isolation._RET_KILL_PROCESS), nr


def test_every_mechanisms_module_imports_only_the_standard_library_and_its_own() -> None:
    import ast

    root = Path(__file__).resolve().parents[1] / "mechanisms"
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            for name in names:
                top = name.split(".")[0]
                # a built-in may use what its docstring names (tests/test_layers.py checks the list)
                named = {"cmaes_hint.py": ("cmaes", "numpy")}.get(path.name, ())
                assert top in sys.stdlib_module_names or top in ("mechanisms", "__future__", *named), (path.name, name)


def test_a_spinning_worker_dies_with_the_engine(tmp_path: Path) -> None:
    engine = textwrap.dedent('''
        import asyncio, os, sys
        from mechanisms.sandbox.worker_client import open_mechanism
        SRC = "from mechanisms.base import Mechanism\\nclass S(Mechanism):\\n    def observe(self, state, result):\\n        while True:\\n            pass\\n"
        async def main():
            worker, info = await open_mechanism(SRC, "spin", level="process")
            await worker._send({"op": "call", "id": 1, "hook": "observe", "args": [{}, {}]})
            print(worker.proc.pid, flush=True)
            await asyncio.sleep(0.3)
            os._exit(0)  # the engine dies without cleaning up
        asyncio.run(main())
    ''')
    out = subprocess.run([sys.executable, "-c", engine], capture_output=True, text=True, timeout=patience(60),
                         cwd=Path(__file__).resolve().parents[1], env={**os.environ, "PYTHONPATH": str(
                             Path(__file__).resolve().parents[1])})
    pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + patience(10)
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        with open(f"/proc/{pid}/stat") as f:
            if f.read().split(")")[-1].split()[0] == "Z":  # a zombie is dead, only not yet reaped
                return
        time.sleep(0.05)
    os.kill(pid, 9)
    raise AssertionError("the worker outlived the engine")


def _worker_level() -> str:
    async def main() -> str:
        worker, info = await open_mechanism(WALL_MODULE.replace("{body}", "        return None"), "level_probe",
                                            level="strict")
        await worker.close()
        return worker.level
    return asyncio.run(main())


needs_private_root = pytest.mark.skipif(
    __import__("mechanisms.sandbox.isolation").sandbox.isolation.availability().level != "strict"
    or "private root," not in _worker_level(),
    reason="this kernel or container refuses unprivileged user and mount namespaces (the worker reports "
           "NO PRIVATE ROOT in its level)")


@needs_private_root
@pytest.mark.parametrize("probe", [
    "os.stat('/etc/shadow')",
    "[p for p in ('/etc/passwd', '/etc/shadow', '/home', os.path.expanduser('~'), '/proc/self') if os.path.exists(p)]",
    "os.listdir('/')",
    "os.listdir(os.path.join(os.path.dirname(os.__file__), 'site-packages'))",
    f"open({pytest.__file__!r}).read()",
    f"os.stat({pytest.__file__!r}).st_size",
], ids=["stat_shadow", "exists_outside", "listdir_root", "listdir_stdlib_site_packages", "read_unlisted_package",
        "stat_unlisted_package"])
def test_a_mechanism_learns_nothing_of_paths_outside_its_rules(probe: str) -> None:
    outcome, text = wall_attempt(f"import os\nreturn repr({probe})", tripwire_off=False)
    assert (outcome == "raised" and ("FileNotFoundError" in text or "PermissionError" in text)) \
        or (outcome == "returned" and text in ("'[]'", "[]")), (outcome, text)


@needs_strict
def test_the_standard_librarys_compression_modules_work_behind_the_wall() -> None:
    outcome, text = wall_attempt("""
        import bz2, gzip, io, lzma, zipfile, zlib
        data = b'bilevel ' * 500
        assert zlib.decompress(zlib.compress(data)) == data
        assert gzip.decompress(gzip.compress(data)) == data
        assert bz2.decompress(bz2.compress(data)) == data
        assert lzma.decompress(lzma.compress(data)) == data
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, 'w', zipfile.ZIP_DEFLATED) as z:
            z.writestr('a.txt', data)
        with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
            assert z.read('a.txt') == data
        return 'round trip'
    """, tripwire_off=False)
    assert (outcome, text) == ("returned", "'round trip'")


FILLER = '''
from mechanisms.base import Mechanism


class Filler(Mechanism):
    def shape_prompt(self, state, prompt):
        import tempfile
        written = 0
        for i in range(int(state.guidance)):
            try:
                with open(f'f{state.iteration}_{i}', 'wb') as f:
                    f.write(b'x' * 65536)
                written += 1
            except OSError:
                pass  # a mechanism that swallows the refusal is still caught
        try:
            tempfile.NamedTemporaryFile(delete=False).write(b'x')
            written += 1
        except OSError:
            pass
        return str(written)
'''


@needs_private_root
def test_a_mechanism_that_fills_its_scratch_is_killed_and_the_disk_never_sees_it() -> None:
    from mechanisms.sandbox import HookError, WorkerFailed
    from mechanisms.sandbox.isolation import Limits

    def state(iteration: int, files: int) -> dict:
        return asdict(SearchState(iteration=iteration, guidance=str(files)))

    async def main() -> tuple[str, list[str], str]:
        worker, info = await open_mechanism(FILLER, "filler", level="strict",
                                            limits=Limits(scratch_mb=1, scratch_files=8))
        assert info["ok"], info
        try:
            first = await worker.call("shape_prompt", [state(1, 2), "p"], 10.0)  # 2 files and a temp file: within
            on_disk = os.listdir(worker.scratch)  # the engine's side of the folder: the tmpfs is the worker's own
            try:
                await worker.call("shape_prompt", [state(2, 40), "p"], 10.0)
            except (HookError, WorkerFailed) as exc:
                return first, on_disk, f"{type(exc).__name__}: {exc}"
            return first, on_disk, "returned"
        finally:
            await worker.close()

    first, on_disk, second = asyncio.run(main())
    assert first == "3" and on_disk == []
    assert second.startswith("WorkerFailed") and "filled its scratch folder" in second, second
    assert "1048576 bytes and 8 files" in second
