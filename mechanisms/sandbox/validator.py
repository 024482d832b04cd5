"""Validation of an LLM-generated search mechanism before activation.

A generated mechanism is one Python module defining one
:class:`~mechanisms.base.Mechanism` subclass. :func:`validate_async` checks it in four
steps, stopping at the first failure and recording why, so the reason can go back to
the LLM for a repair:

1. **parse** — ``ast.parse`` and ``compile``; a syntax error gives line, column and message.
2. **policy** — the static check of :mod:`mechanisms.sandbox.policy`.
3. **import** — in an isolated worker (:mod:`mechanisms.sandbox.worker_client`) under a time
   limit; the worker is killed when it overruns. A missing package is reported by name.
   Where the configured isolation is not available, this step fails saying what is missing.
4. **dry run** — in that same worker: the class was instantiated at import; ``on_attach``
   and then every hook are called against the recorded trace, each under
   ``hook_timeout_s``, and every value is checked against :mod:`mechanisms.contract`.

The report keeps the module's source key and, after a passing dry run (unless ``probe`` is
off), its behaviour on the fixed probes of :mod:`mechanisms.sandbox.fingerprint`, run in the same
worker on a fresh instance each, so the caller can refuse a mechanism identical to one
already active. Probes that cannot finish leave no behaviour and a note; they fail nothing.

Replay: ``on_attach`` sees the leading baseline record(s); then, for each later record,
the hooks see the trace before it, as the inner loop would. A synthetic baseline and
iteration are added when the trace lacks them, so every hook is called at least once.
"""
from __future__ import annotations

import ast
import asyncio
import hashlib
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from mechanisms.base import SearchState
from mechanisms.contract import ContractError, check, safe_name, state_to_wire
from mechanisms.sandbox.fingerprint import Behaviour, ProbeFailed, probe_worker, source_key
from mechanisms.sandbox.isolation import refusal
from mechanisms.sandbox.policy import _policy_violations
from mechanisms.sandbox.trace import TRAINED, hook_result, replay_state
from mechanisms.sandbox.worker_client import HookError, Worker, WorkerFailed, open_mechanism

STEPS = ("parse", "policy", "import", "dry_run")
PROMPT = ("You are tuning the hyperparameters of train.py. Propose one change as JSON with "
          "'changes' and 'hypothesis'. (A dry-run prompt used to check a search mechanism.)")


@dataclass
class Step:
    name: str
    ok: bool
    detail: str
    seconds: float = 0.0


@dataclass
class ValidationReport:
    ok: bool
    steps: list[Step]
    class_name: Optional[str] = None  # sanitised (see mechanisms.contract.safe_name)
    hooks: list[str] = field(default_factory=list)
    missing_packages: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    #: The module file the import and dry run used (absent when parse or policy failed).
    module_path: Optional[str] = None
    isolation: str = ""  # the wall the worker ran behind
    source_key: Optional[str] = None  # see mechanisms.sandbox.fingerprint.source_key
    behaviour: Optional[Behaviour] = None  # the hooks' answers to the probes (after a passing dry run)
    behaviour_note: str = ""  # why there is no behaviour, when the probes could not finish

    def failure(self) -> str:
        """The first failing step's reason as one paragraph, fit to send back for a repair."""
        for step in self.steps:
            if not step.ok:
                return f"The mechanism failed the {step.name.replace('_', ' ')} check: {step.detail}"
        return ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_markdown(self) -> str:
        verdict = "passed" if self.ok else "FAILED"
        title = f"### Mechanism validation {verdict}"
        if self.class_name:
            title += f": `{self.class_name}`"
        lines = [title, "", "| step | result | seconds | detail |", "|---|---|---|---|"]
        for step in self.steps:
            detail = step.detail.replace("|", "\\|").replace("\n", "<br>")
            lines.append(f"| {step.name} | {'ok' if step.ok else 'failed'} | {step.seconds:.2f} | {detail} |")
        if self.isolation:
            lines += ["", f"Isolation: {self.isolation}"]
        if self.hooks:
            lines += ["", "Hooks: " + ", ".join(f"`{h}`" for h in self.hooks)]
        if self.behaviour is not None:
            b = self.behaviour
            lines += ["", f"Behaviour fingerprint: {len(b.digests)} probes, {b.calls} hook calls (probe set "
                          f"`{b.probe_set}`)"]
        elif self.behaviour_note:
            lines += ["", f"Behaviour fingerprint: none ({self.behaviour_note})"]
        if self.missing_packages:
            lines += ["", "Missing packages: " + ", ".join(f"`{p}`" for p in self.missing_packages)]
        if self.violations:
            lines += ["", "Policy violations:"] + [f"- {v}" for v in self.violations]
        return "\n".join(lines) + "\n"


def validate(source: str, **kw: Any) -> ValidationReport:
    """:func:`validate_async` for callers without an event loop (a thread, a script)."""
    return asyncio.run(validate_async(source, **kw))


async def validate_async(source: str, *, records: list[dict], schema: dict[str, dict],
                         allow_imports: Iterable[str] = (), import_timeout_s: float = 20.0,
                         hook_timeout_s: float = 2.0, workdir: Path, module_name: Optional[str] = None,
                         dry_run_timeout_s: Optional[float] = None, isolation: str = "strict",
                         worker_env: Iterable[str] = (), probe: bool = True) -> ValidationReport:
    """Check generated mechanism code in four steps; see the module docstring.

    The module is written to ``workdir/<module_name>.py`` (default: a name from the source's
    hash). ``dry_run_timeout_s`` bounds all hook calls together (default: ``import_timeout_s``).
    ``probe``: fingerprint its behaviour after a passing dry run (a caller with nothing to
    compare it with skips that).
    """
    allow = tuple(allow_imports)
    steps: list[Step] = []
    report = ValidationReport(ok=False, steps=steps)

    started = time.monotonic()
    try:
        tree = ast.parse(source, filename="<mechanism>")
        compile(tree, "<mechanism>", "exec", dont_inherit=True)  # errors only the compiler sees, e.g. __future__
    except SyntaxError as exc:
        where = f"line {exc.lineno}, column {exc.offset}" if exc.lineno else "unknown position"
        text = f" in `{exc.text.strip()[:200]}`" if exc.text and exc.text.strip() else ""
        steps.append(Step("parse", False, f"syntax error at {where}: {exc.msg}{text}", time.monotonic() - started))
        return report
    steps.append(Step("parse", True, f"{len(source.splitlines())} lines", time.monotonic() - started))
    report.source_key = source_key(source)

    started = time.monotonic()
    found = _policy_violations(tree, source, allow)
    if found:
        report.violations = [str(v) for v in found]
        listing = "; ".join(report.violations)
        steps.append(Step("policy", False, f"{len(found)} policy violation(s): {listing}", time.monotonic() - started))
        return report
    steps.append(Step("policy", True, "no violations", time.monotonic() - started))

    name = safe_name(module_name or "mechanism_" + hashlib.sha256(source.encode("utf-8")).hexdigest()[:12])
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"{name}.py"
    _write_atomic(path, source)
    report.module_path = str(path)

    started = time.monotonic()
    refused = refusal(isolation)
    if refused:
        steps.append(Step("import", False, refused, 0.0))
        return report
    try:
        worker, info = await open_mechanism(source, f"bilevel_mechanism_{name}", level=isolation,
                                            allow_imports=allow, env_names=worker_env,
                                            import_timeout_s=import_timeout_s)
    except WorkerFailed as exc:
        detail = str(exc)
        if "did not finish" in detail:
            detail += "; top-level code must not loop or block"
        steps.append(Step("import", False, detail, time.monotonic() - started))
        return report
    report.isolation = worker.level
    if not info["ok"]:
        if info.get("missing"):
            report.missing_packages = [safe_name(info["missing"].replace(".", "_"), "?")]
            info["error"] = (f"missing package '{report.missing_packages[0]}': it is not installed in the engine's "
                             "Python environment; use the standard library instead, or install it and add it to "
                             "level2.allow_imports")
        steps.append(Step("import", False, info["error"], time.monotonic() - started))
        return report
    report.class_name = safe_name(info["class_name"])
    report.hooks = list(info["hooks"])
    steps.append(Step("import", True, f"class {report.class_name} overrides {', '.join(report.hooks)} "
                                      f"(worker: {worker.level})", time.monotonic() - started))
    started = time.monotonic()
    replay = Replay(worker, records, schema, hook_timeout_s)
    budget = dry_run_timeout_s if dry_run_timeout_s is not None else import_timeout_s
    try:
        try:
            detail = await asyncio.wait_for(replay.run(), budget)
            ok = True
        except DryRunFailed as exc:
            detail, ok = str(exc), False
        except asyncio.TimeoutError:
            detail, ok = (f"the dry run did not finish within {budget:g} s (at {replay.current}); hooks must be "
                          "fast"), False
        steps.append(Step("dry_run", ok, detail, time.monotonic() - started))
        if ok and probe:
            report.behaviour, report.behaviour_note = await _probe(worker, source, f"bilevel_mechanism_{name}",
                                                                   schema, hook_timeout_s, import_timeout_s, budget)
    finally:
        await worker.close()
    report.ok = len(steps) == len(STEPS) and all(s.ok for s in steps)
    return report


async def _probe(worker: Worker, source: str, module_name: str, schema: dict[str, dict], hook_timeout_s: float,
                 import_timeout_s: float, budget: float) -> tuple[Optional[Behaviour], str]:
    """The module's behaviour on the probes, or None and why not (that does not fail the validation)."""
    try:
        return await asyncio.wait_for(probe_worker(worker, source, module_name, schema, hook_timeout_s=hook_timeout_s,
                                                   import_timeout_s=import_timeout_s), budget), ""
    except ProbeFailed as exc:
        return None, f"the probes could not finish: {exc}"
    except asyncio.TimeoutError:
        return None, f"the probes did not finish within {budget:g} s"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class DryRunFailed(Exception):
    pass


def _with_synthetic(records: list[dict], schema: dict[str, dict]) -> tuple[list[dict], int]:
    """The trace plus a synthetic baseline and a scored iteration where it lacks them."""
    values = {name: spec.get("value") for name, spec in schema.items()}
    out, added = list(records), 0
    if not any(r.get("decision") == "baseline" for r in out):
        out.insert(0, {"iteration": 0, "decision": "baseline", "changes": {}, "hypothesis": "", "val_bpb": 1.0,
                       "best_before": None, "values": values})
        added += 1
    if not any(r.get("decision") in ("keep", "discard") and r.get("val_bpb") is not None for r in out):
        best = replay_state(out, schema, len(out), 0).best_val_bpb or 1.0
        active = [n for n, s in schema.items() if not s.get("locked")]
        changes = {active[0]: values[active[0]]} if active else {}
        out.append({"iteration": max((int(r.get("iteration", 0)) for r in out), default=0) + 1,
                    "decision": "discard", "changes": changes, "hypothesis": "synthetic dry-run proposal",
                    "val_bpb": best + 0.01, "best_before": best, "values": values})
        added += 1
    return out, added


class Replay:
    """Drives every hook of a loaded worker over the recorded trace, checking each value."""

    def __init__(self, worker: Worker, records: list[dict], schema: dict[str, dict], hook_timeout_s: float) -> None:
        self.worker = worker
        self.records, self.synthetic = _with_synthetic(records, schema)
        self.schema = schema
        self.timeout_s = hook_timeout_s
        self.calls: dict[str, int] = {}
        self.slowest = (0.0, "")
        self.current = "on_attach, call 1"

    async def call(self, hook: str, *args: Any) -> Any:
        self.calls[hook] = self.calls.get(hook, 0) + 1
        n = sum(self.calls.values())
        self.current = f"{hook}, call {n}"
        wire_args = [state_to_wire(args[0]), *args[1:]]
        started = time.monotonic()
        try:
            value = await self.worker.call(hook, wire_args, self.timeout_s)
        except WorkerFailed as exc:
            text = str(exc).replace(f"{hook} did not finish within", f"{hook} did not return within")
            raise DryRunFailed(f"{text} (call {n})") from None
        except HookError as exc:
            raise DryRunFailed(f"{exc} (call {n})") from None
        elapsed = time.monotonic() - started
        self.slowest = max(self.slowest, (elapsed, hook))
        try:
            return check(hook, value, self.schema)
        except ContractError as exc:
            raise DryRunFailed(f"{exc} (call {n})") from None

    async def run(self) -> str:
        """Replays the trace; returns a summary, or raises DryRunFailed."""
        first = 0
        while first < len(self.records) and self.records[first].get("decision") == "baseline":
            first += 1
        await self.call("on_attach", self.state(first))
        for upto in range(first, len(self.records)):
            await self.iteration(upto, self.records[upto])
        return self.summary(len(self.records) - first)

    def state(self, upto: int) -> SearchState:
        iteration = int(self.records[upto].get("iteration", upto)) if upto < len(self.records) else upto
        return replay_state(self.records, self.schema, upto, iteration)

    async def iteration(self, upto: int, record: dict) -> None:
        await self.call("shape_prompt", self.state(upto), PROMPT)
        decision = record.get("decision")
        if decision not in TRAINED:
            return  # no valid proposal: the loop never reviewed, trained or observed anything
        proposal = {"changes": dict(record.get("changes") or {}), "hypothesis": str(record.get("hypothesis") or "")}
        await self.call("review_proposal", self.state(upto), proposal)
        result = hook_result(record)
        best = self.state(upto).best_val_bpb
        if decision in ("keep", "discard") and result["val_bpb"] is not None and best is not None:
            await self.call("decide", self.state(upto), dict(result), best)
        await self.call("observe", self.state(upto), dict(result))

    def summary(self, iterations: int) -> str:
        counts = ", ".join(f"{hook} ×{n}" for hook, n in self.calls.items())
        synthetic = f" ({self.synthetic} synthetic record(s) added)" if self.synthetic else ""
        slowest = f"; slowest call: {self.slowest[1]} {self.slowest[0]:.3f} s" if self.slowest[1] else ""
        return (f"{sum(self.calls.values())} hook calls over {iterations} replayed iteration(s){synthetic}: "
                f"{counts}{slowest}")


async def probe_source(source: str, module_name: str, schema: dict[str, dict], *, isolation: str = "strict",
                       allow_imports: Iterable[str] = (), worker_env: Iterable[str] = (),
                       import_timeout_s: float = 20.0, hook_timeout_s: float = 2.0) -> tuple[Optional[Behaviour], str]:
    """The behaviour on the probes of a module already validated (an active one), in a worker of its own;
    None and why not when it cannot be probed."""
    refused = refusal(isolation)
    if refused:
        return None, refused
    try:
        worker, info = await open_mechanism(source, module_name, level=isolation, allow_imports=tuple(allow_imports),
                                            env_names=worker_env, import_timeout_s=import_timeout_s)
    except WorkerFailed as exc:
        return None, f"its worker could not load it: {exc}"
    except OSError as exc:  # no process could be started: say so, the comparison goes on by source
        return None, f"its worker could not start: {exc}"
    if not info["ok"]:
        return None, f"its worker could not load it: {info['error'][:300]}"
    try:
        return await _probe(worker, source, module_name, schema, hook_timeout_s, import_timeout_s, import_timeout_s)
    finally:
        await worker.close()
