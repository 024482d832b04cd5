"""The product's wall-clock promises: each deadline, timeout and cache answers within its bound.

The unit tests prove what happens (the run is killed, the call times out, the hook is named,
the data comes from the cache); how long it takes depends on the machine's load, so the
bounds those tests used to assert live here. Each check runs the real thing (a training
subprocess, the mechanism validator's child process, the LLM client against the scripted
OpenAI-protocol server on 127.0.0.1, the data preparation) and prints its time against its
target. Exits 1 when any target is missed. Run: ``python bench/bench_deadlines.py``
(``--only trainer,sandbox,llm,prepare`` picks checks).
"""
from __future__ import annotations

import argparse
import asyncio
import email.utils
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SCRIPTS = REPO / "tests" / "fixtures" / "scripts"
MECHANISMS = REPO / "tests" / "fixtures" / "mechanisms"
HI = [{"role": "user", "content": "hi"}]


@dataclass
class Check:
    name: str
    seconds: float
    low: float  # the least it may take (a deadline that fires early is as wrong as a late one)
    high: float
    ok_detail: str  # what the run did, so a fast wrong answer is not a pass

    @property
    def passed(self) -> bool:
        return self.ok_detail == "" and self.low <= self.seconds < self.high


async def timed(work: Callable[[], Awaitable[str]]) -> tuple[float, str]:
    started = time.monotonic()
    problem = await work()
    return time.monotonic() - started, problem


# --- the trainer: deadlines, cancel, children left behind -----------------------------------------

async def trainer_checks(folder: Path) -> list[Check]:
    from core.services import trainer
    from core.services.trainer import run_training

    async def hang_past_deadline() -> str:
        result = await run_training(SCRIPTS / "hang.py", cwd=folder, budget_s=1.0, grace_s=1.0)
        return "" if result.outcome == "timeout" else f"outcome {result.outcome}"

    async def cancel_a_hang() -> str:
        cancel = asyncio.Event()
        result = await run_training(SCRIPTS / "hang.py", cwd=folder, budget_s=20.0, grace_s=5.0, cancel=cancel,
                                    on_line=lambda stream, line: cancel.set() if line == "started" else None)
        return "" if result.outcome == "cancelled" else f"outcome {result.outcome}"

    async def child_holds_stdout() -> str:
        result = await run_training(SCRIPTS / "leaves_child.py", cwd=folder, budget_s=20.0, grace_s=5.0)
        return "" if result.outcome == "ok" else f"outcome {result.outcome}"

    checks = []
    for name, work, low, high in (
            ("trainer: a hanging run killed at budget + grace (2 s)", hang_past_deadline,
             2.0, 2.0 + trainer.TERM_GRACE_S),
            ("trainer: cancel stops a hanging run", cancel_a_hang, 0.0, 5.0),
            ("trainer: a child holding stdout does not hold the run", child_holds_stdout, 0.0, 10.0)):
        seconds, problem = await timed(work)
        checks.append(Check(name, seconds, low, high, problem))
    return checks


# --- the mechanism validator: hook and import timeouts ----------------------------------------------

IMPORT_TIMEOUT_S = 5.0
HOOK_TIMEOUT_S = 0.5


async def sandbox_checks(folder: Path) -> list[Check]:
    import json
    import textwrap

    from mechanisms.sandbox import validate

    trace = json.loads((MECHANISMS / "trace.json").read_text())
    swallows = ('"""Generated search mechanism."""\nfrom mechanisms.base import Mechanism\n\n\n'
                "class Probe(Mechanism):\n    def observe(self, state, result):\n"
                + textwrap.indent("while True:\n    try:\n        while True:\n            pass\n"
                                  "    except BaseException:\n        pass", " " * 8) + "\n")

    def failing_at(source: str, step: str, needle: str, workdir: Path) -> Callable[[], Awaitable[str]]:
        async def work() -> str:
            workdir.mkdir()
            report = await asyncio.to_thread(validate, source, import_timeout_s=IMPORT_TIMEOUT_S,
                                             hook_timeout_s=HOOK_TIMEOUT_S, workdir=workdir,
                                             records=trace["records"], schema=trace["schema"])
            failed = next((s.name for s in report.steps if not s.ok), None)
            return "" if failed == step and needle in report.failure() else f"failed at {failed}: {report.failure()}"
        return work

    checks = []
    for name, work, low, high in (
            ("sandbox: a hook that never returns", failing_at((MECHANISMS / "hook_hangs.py").read_text(), "dry_run",
                                                              "observe did not return", folder / "hangs"),
             0.0, IMPORT_TIMEOUT_S),
            ("sandbox: a hook that swallows the alarm", failing_at(swallows, "dry_run", "observe did not return",
                                                                   folder / "swallows"), 0.0, IMPORT_TIMEOUT_S),
            ("sandbox: an import that hangs, killed at the import timeout (5 s)",
             failing_at((MECHANISMS / "import_hangs.py").read_text(), "import", "did not finish within 5 s",
                        folder / "import"), IMPORT_TIMEOUT_S, IMPORT_TIMEOUT_S + 3)):
        seconds, problem = await timed(work)
        checks.append(Check(name, seconds, low, high, problem))
    return checks


# --- the LLM client: timeouts and Retry-After ------------------------------------------------------------

async def llm_checks(folder: Path) -> list[Check]:
    from core.services.llm import LLMClient, LLMError
    from tests.support.openai_server import Reply, ScriptedOpenAI

    def client(server: ScriptedOpenAI, **options: object) -> LLMClient:
        settings: dict = {"backoff_base_s": 0.001, "backoff_max_s": 0.01, "max_retries": 2, "timeout_s": 5.0}
        settings.update(options)
        return LLMClient(server.base_url, "test-model", **settings)

    def times_out(server: ScriptedOpenAI, reply: Reply, options: dict, **chat: object) -> Callable[[], Awaitable[str]]:
        async def work() -> str:
            server.enqueue(reply)
            try:
                async with client(server, **options) as c:
                    result = await c.chat(HI, **chat)
            except LLMError as err:
                return "" if err.kind == "timeout" else f"error {err.kind}"
            return f"answered {result.content!r}"
        return work

    def retry_after_capped(server: ScriptedOpenAI) -> Callable[[], Awaitable[str]]:
        async def work() -> str:
            far = email.utils.formatdate(time.time() + 3600, usegmt=True)
            server.enqueue(Reply(status=503, headers={"Retry-After": far}), "ok")
            async with client(server, backoff_max_s=0.2) as c:
                result = await c.chat(HI)
            return "" if result.content == "ok" else f"answered {result.content!r}"
        return work

    checks = []
    with ScriptedOpenAI() as server:
        server.enqueue("warm")  # the first call's imports and connection are not a deadline's
        async with client(server) as c:
            await c.chat(HI)
        for name, work, low, high in (
                ("llm: a Retry-After an hour away waits backoff_max (0.2 s)", retry_after_capped(server), 0.2, 2.0),
                ("llm: keep-alives do not defeat the overall timeout (0.4 s)",
                 times_out(server, Reply(content="too late", keepalive=True, delay_s=5.0),
                           {"timeout_s": 0.4, "max_retries": 0}), 0.4, 2.0),
                ("llm: a call's own timeout (0.3 s) overrides the client's (60 s)",
                 times_out(server, Reply(content="slow", delay_s=3.0), {"timeout_s": 60, "max_retries": 0},
                           timeout_s=0.3), 0.3, 2.0)):
            seconds, problem = await timed(work)
            checks.append(Check(name, seconds, low, high, problem))
    return checks


# --- data preparation: a second prepare comes from the cache ---------------------------------------

async def prepare_checks(folder: Path) -> list[Check]:
    import baseline.prepare as prep

    options = dict(root=folder / "data", max_bytes=2_000_000, vocab_size=512)
    await asyncio.to_thread(prep.prepare, "stdlib", **options, log=lambda message: None)  # the first build
    messages: list[str] = []

    async def again() -> str:
        await asyncio.to_thread(prep.prepare, "stdlib", **options, log=messages.append)
        return "" if any("cached" in m for m in messages) else f"not from the cache: {messages}"

    seconds, problem = await timed(again)
    return [Check("prepare: the second prepare is served from the cache", seconds, 0.0, 1.0, problem)]


CHECKS = {"trainer": trainer_checks, "sandbox": sandbox_checks, "llm": llm_checks, "prepare": prepare_checks}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(CHECKS), help="comma-separated: " + ", ".join(CHECKS))
    args = parser.parse_args(argv)
    results: list[Check] = []
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.only.split(","):
            folder = Path(tmp) / key
            folder.mkdir()
            results += asyncio.run(CHECKS[key](folder))
    for c in results:
        verdict = "ok  " if c.passed else "MISS"
        print(f"{verdict} {c.seconds:6.2f} s  (target {c.low:g}–{c.high:g} s)  {c.name}"
              + (f"  [{c.ok_detail}]" if c.ok_detail else ""))
    missed = [c for c in results if not c.passed]
    print(f"{len(results) - len(missed)} of {len(results)} within target")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
