"""Whether a new mechanism is one already active: the same source, or the same behaviour.

Two keys, neither of which runs generated code in the engine's process:

- :func:`source_key` — a digest of ``ast.dump`` of the module with its docstrings removed,
  so comments, docstrings, whitespace and formatting do not count. The text is parsed,
  never compiled or executed.
- :class:`Behaviour` — what the hooks return on a fixed set of probe traces (:func:`probes`),
  one digest per probe. A generated mechanism is probed in its isolated worker
  (:func:`probe_worker`), the reply of each call decoded by us from the worker's JSON; a
  built-in in this process on a fresh instance (:func:`probe_builtin`), its values put in
  the same wire form. Only text we produced (canonical JSON) is compared, never a value of
  the mechanism's through its own ``__eq__`` or ``__hash__``.

The probes are made to separate mechanisms: several traces (improving, with a crash, a
cancelled run and a rejected proposal on the way; repeating itself; stuck on one
parameter; two-parameter changes near earlier ones; a long run with frozen parameters and
guidance in which every parameter is tried at least twice and the mechanism is attached
late), and after each trace a fixed set of questions: repeats of recent and old changes,
a near-repeat, a new change, a two-parameter change, an empty one, and results better,
worse and level with the best. Each probe starts a fresh instance, so a mechanism's memory
of one probe cannot leak into the next.

:func:`duplicate_of` says which active mechanism a candidate duplicates, in words fit for
the validation report and for the model. Standard library only.
"""
from __future__ import annotations

import ast
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional

from mechanisms.contract import state_from_wire, to_wire
from mechanisms.sandbox.trace import TRAINED, hook_result, replay_state
from mechanisms.sandbox.worker_client import HookError, WorkerFailed

PROMPT = ("You are tuning the hyperparameters of train.py. Propose one change as JSON with "
          "'changes' and 'hypothesis'. (A probe prompt used to fingerprint a search mechanism.)")
_RAISED = {"$raised": True}  # a hook that raised: that it did is behaviour, its traceback (line numbers) is not


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def canonical(value: Any) -> str:
    """JSON text of plain data, the same for equal data however it was built."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=repr)


# --- the source ---------------------------------------------------------------------------------

def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def source_key(source: str) -> Optional[str]:
    """The module's digest with comments, docstrings and formatting left out; None if it does not parse."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    return _digest(ast.dump(_strip_docstrings(tree), annotate_fields=True, include_attributes=False))


# --- the probes ---------------------------------------------------------------------------------

_FACTORS = (1.3, 0.7, 1.6, 0.5, 2.0, 0.4, 1.15, 0.85, 2.5, 0.3)


def _variant(spec: Mapping[str, Any], k: int) -> Any:
    """A value of the parameter's kind that differs from its current one for most ``k``."""
    value = spec.get("value")
    choices = spec.get("choices")
    if isinstance(choices, (list, tuple)) and len(choices) > 1:
        at = next((i for i, c in enumerate(choices) if c == value), 0)
        return choices[(at + k) % len(choices)]
    if type(value) is bool:
        return (not value) if k % 2 else value
    if type(value) is int:
        if spec.get("pow2") and value > 0:
            return value * 2 ** (k % 4 + 1) if k % 2 else max(1, value // 2 ** (k % 3 + 1))
        return value + (k if k % 2 else -k) * max(1, abs(value) // 4)
    if type(value) is float:
        return round(value * _FACTORS[k % len(_FACTORS)], 12) if value else 0.1 * k
    return value  # strings and tuples without choices: nothing sensible to vary


def _near(spec: Mapping[str, Any], value: Any) -> Any:
    """A value within a few per cent of ``value`` (a near-repeat), where the kind has one."""
    if type(value) is float:
        return round(value * 1.02, 12)
    if type(value) is int and not spec.get("pow2"):
        return value + 1 if abs(value) > 40 else value
    return value


@dataclass(frozen=True)
class Probe:
    """One probe: a trace replayed through the hooks, then the questions asked of its end."""

    name: str
    records: list[dict]
    frozen: list[str] = field(default_factory=list)
    guidance: str = ""
    attach_at: int = 1  # records the mechanism has seen at on_attach: > 1 is an activation mid-run


def _params(schema: Mapping[str, Mapping[str, Any]]) -> list[str]:
    active = [n for n, s in schema.items() if not s.get("locked")]
    return active or list(schema)


def _trace(schema: Mapping[str, Mapping[str, Any]], steps: Iterable[tuple[dict, str, Optional[float]]],
           first: int = 1) -> list[dict]:
    """Records of a baseline then ``steps`` of (changes, decision, val_bpb), values folded like the loop's."""
    values = {n: s.get("value") for n, s in schema.items()}
    records = [{"iteration": 0, "decision": "baseline", "changes": {}, "hypothesis": "", "val_bpb": 1.0,
                "best_before": None, "values": dict(values)}]
    best = 1.0
    for i, (changes, decision, val_bpb) in enumerate(steps):
        tried = {**values, **changes}
        records.append({"iteration": first + i, "decision": decision, "changes": dict(changes),
                        "hypothesis": f"probe step {i + 1}", "val_bpb": val_bpb, "best_before": best,
                        "values": tried})
        if decision == "keep" and val_bpb is not None:
            values, best = tried, val_bpb
    return records


def probes(schema: Mapping[str, Mapping[str, Any]]) -> list[Probe]:
    """The fixed probe traces for a run's parameter schema (the same schema gives the same probes)."""
    names = _params(schema)

    def p(i: int) -> str:
        return names[i % len(names)]

    def ch(*pairs: tuple[int, int]) -> dict:
        return {p(i): _variant(schema[p(i)], k) for i, k in pairs} if names else {}

    climbing = _trace(schema, [(ch((0, 1)), "keep", 0.98), (ch((1, 1)), "discard", 0.99),
                               (ch((0, 2)), "keep", 0.97), (ch((2, 1)), "crash", None),
                               (ch((1, 2)), "discard", 0.975), (ch((2, 2)), "cancelled", None),
                               (ch((1, 3)), "rejected", None), (ch((0, 3)), "keep", 0.96)])
    repeats = _trace(schema, [(ch((0, 1)), "discard", 1.01), (ch((1, 1)), "discard", 1.02),
                              (ch((0, 1)), "discard", 1.01), (ch((0, 2)), "keep", 0.99)]
                     + [(ch((2, k)), "discard", 0.995 + 0.001 * k) for k in range(1, 6)]
                     + [(ch((1, 1)), "discard", 1.02), (ch((0, 2)), "discard", 0.991)])
    stuck = _trace(schema, [(ch((0, k % 5 + 1)), "discard", 1.0 + 0.002 * (k % 3)) for k in range(10)], first=21)
    near = [ch((0, 1), (1, 1)), {k: _near(schema[k], v) for k, v in ch((0, 1), (1, 1)).items()}]
    multi = _trace(schema, [(near[0], "keep", 0.985), (near[1], "discard", 0.986),
                            (ch((1, 3), (2, 3)), "discard", 0.99), (ch((0, 4)), "crash", None),
                            (ch((2, 4), (0, 5)), "keep", 0.98)])
    # every parameter tried at least twice, so rules over all of them (a bandit's scores) come into play
    n = max(len(names), 1)
    long_run = _trace(schema, [(ch((k % n, k // n + 1)), "keep" if k % 5 == 0 else "discard",
                                0.99 - 0.001 * k if k % 5 == 0 else 1.0 + 0.001 * k)
                               for k in range(max(24, 2 * n + 4))])
    frozen = [p(1)] if len(names) > 1 else []
    return [Probe("empty", _trace(schema, [])), Probe("climbing", climbing), Probe("repeats", repeats),
            Probe("stuck", stuck, frozen=frozen, guidance="Try the schedule parameters instead."),
            Probe("multi", multi), Probe("long", long_run, frozen=frozen, guidance="Lower the learning rates.",
                                         attach_at=len(long_run) - 6)]


def _state(records: list[dict], schema: Mapping[str, Any], upto: int, probe: Probe) -> dict[str, Any]:
    iteration = int(records[upto]["iteration"]) if upto < len(records) else int(records[-1]["iteration"]) + 1
    state = replay_state(records, dict(schema), upto, iteration, fresh=False)  # probe_calls copies it all
    state.frozen, state.guidance = list(probe.frozen), probe.guidance
    return dict(vars(state))


def probe_calls(probe: Probe, schema: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, list[Any]]]:
    """The hook calls of one probe, in wire form, in order: the trace as the loop would make them, then
    the questions asked of its end."""
    records = probe.records
    calls: list[tuple[str, list[Any]]] = [("on_attach", [_state(records, schema, probe.attach_at, probe)])]
    for upto in range(probe.attach_at, len(records)):
        record, state = records[upto], _state(records, schema, upto, probe)
        calls.append(("shape_prompt", [state, f"{PROMPT} Iteration {record['iteration']}."]))
        if record["decision"] not in TRAINED:
            continue
        calls.append(("review_proposal", [state, {"changes": record["changes"], "hypothesis": record["hypothesis"]}]))
        result = hook_result(record)
        if result["val_bpb"] is not None and state["best_val_bpb"] is not None:
            calls.append(("decide", [state, result, state["best_val_bpb"]]))
        calls.append(("observe", [state, result]))
    end = _state(records, schema, len(records), probe)
    calls.append(("shape_prompt", [end, PROMPT]))
    trained = [r for r in records if r["decision"] in TRAINED]
    names = _params(schema)
    questions: list[dict] = []
    if trained:
        questions += [trained[-1]["changes"], trained[0]["changes"],
                      {k: _near(schema[k], v) for k, v in trained[-1]["changes"].items()}]
    if names:
        questions += [{names[0]: _variant(schema[names[0]], 7)},
                      {names[0]: _variant(schema[names[0]], 8), names[-1]: _variant(schema[names[-1]], 9)}]
    questions.append({})
    for changes in questions:
        calls.append(("review_proposal", [end, {"changes": changes, "hypothesis": "probe question"}]))
    best = end["best_val_bpb"] if end["best_val_bpb"] is not None else 1.0
    for val_bpb in (best - 0.01, best + 0.01, best + 0.0001):
        calls.append(("decide", [end, {"outcome": "ok", "val_bpb": round(val_bpb, 12), "metrics": {}}, best]))
    return json.loads(canonical(calls))  # exactly the plain data that crosses the worker's pipe


@dataclass(frozen=True)
class Behaviour:
    """What a mechanism's hooks returned on every probe: one digest per probe, and which probes."""

    probe_set: str  # digest of every call's arguments: fingerprints compare only on the same probes
    digests: tuple[str, ...]
    calls: int


_PLANS: dict[str, tuple[list, str]] = {}  # by schema: the plan and its digest, rebuilt when the schema changes


def probe_set(schema: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, list[tuple[str, list[Any]]]]]:
    """Each probe's name and calls (the same list for the same schema: do not change it)."""
    return _plan(schema)[0]


def _plan(schema: Mapping[str, Mapping[str, Any]]) -> tuple[list, str]:
    key = canonical(schema)
    found = _PLANS.get(key)  # a local: built-ins are probed in a thread, which may clear the cache meanwhile
    if found is None:
        plan = [(probe.name, probe_calls(probe, schema)) for probe in probes(schema)]
        found = (plan, _digest(canonical(plan)))
        if len(_PLANS) >= 8:
            _PLANS.clear()
        _PLANS[key] = found
    return found


class _Answers:
    """One probe's answers, hashed as they come: a mechanism's large replies are never all kept."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def add(self, value: Any) -> None:
        try:
            text = canonical(value)
        except (TypeError, ValueError, RecursionError):
            text = '{"$unhashable":true}'
        self._hash.update(text.encode("utf-8") + b"\n")

    def digest(self) -> str:
        return self._hash.hexdigest()[:16]


class ProbeFailed(Exception):
    """The probes could not be run to the end (the worker died or hung); the message says why."""


async def probe_worker(worker: Any, source: str, module_name: str, schema: Mapping[str, Mapping[str, Any]], *,
                       hook_timeout_s: float, import_timeout_s: float) -> Behaviour:
    """The behaviour of the module in ``worker`` (a :class:`mechanisms.sandbox.worker_client.Worker`): reloaded
    fresh for each probe. ProbeFailed when a load fails or the worker dies; a hook that raises is
    recorded as such."""

    plan, plan_digest = _plan(schema)
    digests = []
    for name, calls in plan:
        try:
            info = await worker.load(source, module_name, import_timeout_s)
        except WorkerFailed as exc:
            raise ProbeFailed(f"reloading it for probe {name!r}: {exc}") from None
        if not info.get("ok"):
            raise ProbeFailed(f"reloading it for probe {name!r} failed: {str(info.get('error'))[:300]}")
        answers = _Answers()
        for hook, args in calls:
            try:
                answers.add(await worker.call(hook, args, hook_timeout_s))  # decoded by us from its JSON
            except HookError:
                answers.add(_RAISED)
            except WorkerFailed as exc:
                raise ProbeFailed(f"probe {name!r}, {hook}: {exc}") from None
        digests.append(answers.digest())
    return Behaviour(plan_digest, tuple(digests), sum(len(calls) for _, calls in plan))


def probe_builtin(make: Callable[[], Any], schema: Mapping[str, Mapping[str, Any]]) -> Behaviour:
    """The behaviour of a built-in (our own code, run here): a fresh instance per probe, its values put in
    wire form as the worker would send them."""
    plan, plan_digest = _plan(schema)
    digests = []
    for _, calls in plan:
        instance = make()
        answers = _Answers()
        for hook, args in calls:
            args = json.loads(canonical(args))  # fresh data per call, as the worker decodes it
            try:
                answers.add(to_wire(hook, getattr(instance, hook)(state_from_wire(args[0]), *args[1:])))
            except Exception:  # noqa: BLE001 - that it raised is part of its behaviour
                answers.add(_RAISED)
        digests.append(answers.digest())
    return Behaviour(plan_digest, tuple(digests), sum(len(calls) for _, calls in plan))


# --- the verdict ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Identity:
    """What a mechanism is, for comparison: its source key and (when it could be probed) its behaviour."""

    source_key: Optional[str]
    behaviour: Optional[Behaviour] = None


def duplicate_of(candidate: Identity, active: Mapping[str, Identity]) -> tuple[str, str]:
    """(name, why) of the first active mechanism the candidate duplicates, or ("", "")."""
    for name, other in active.items():
        if candidate.source_key is not None and candidate.source_key == other.source_key:
            return name, f"identical in source to active mechanism `{name}` (comments, docstrings and formatting aside)"
    for name, other in active.items():
        a, b = candidate.behaviour, other.behaviour
        if a is not None and b is not None and a.probe_set == b.probe_set and a.digests == b.digests:
            return name, (f"identical in behaviour to active mechanism `{name}`: its hooks returned the same on "
                          f"all {len(a.digests)} probes ({a.calls} hook calls)")
    return "", ""
