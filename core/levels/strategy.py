"""Level 1.5: every K inner iterations, re-aim the search (freeze, unfreeze, guidance).

The paper's freeze rule lives here, in code: a parameter proposed k times (default 3,
rejected proposals included) with zero net improvement becomes a freeze candidate. The
rule is authoritative: its candidates are frozen unless the LLM gives a reason to keep
one (recorded). The LLM may also unfreeze and writes guidance; the engine applies its
answer within limits (at most N new freezes a cycle, at least a minimum of active
parameters, locked parameters never touched) and records each decision with its reason.
A reply that is not a Level 1.5 answer (none of its fields, the prompt's placeholders
echoed, a Level 1 proposal) is rejected with its reason and re-asked within
``search.max_reasks``. Offline, the rule alone decides.

``strategy.freeze = "direction"`` freezes a direction instead of a parameter: a change's
direction (core/services/schema.py) is "up" or "down" for a number and "→VALUE" for a
choice, read against the best configuration it was proposed from. A direction trained k
times with zero net improvement is a candidate, named "NAME up", "NAME →SL"; freezing it
leaves the parameter's other directions open (three failed increases of the batch size
freeze "up", never the halving). A direction whose freeze would leave the parameter no
direction to move in freezes the whole parameter. Parameters with no direction (tuples,
free strings) follow the paper's rule. Unlike the paper's rule, which also counts proposals
that were rejected before training, the direction rule counts trained iterations only: a
rejected proposal has no result to judge its direction by.
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field, replace
from string import Template
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from core.record import events as ev
from core.levels.context import RunContext
from core.services.llm import LLMError, extract_json
from core.levels.trace import TRAINED, ParamStats, fmt_bpb, history_text, param_stats, tally
from core.services.schema import closed, direction_of
from . import prompts
from .budget import estimate_tokens, fit_messages, prompt_budget, reply_tokens
from .echo import echo_problem
from .reply_schemas import strategy_schema

if TYPE_CHECKING:
    from core.services.script import ParamSpec


def freeze_candidates(stats: Mapping[str, ParamStats], *, k: int, locked: Iterable[str],
                      frozen: Iterable[str]) -> list[str]:
    """Parameters (or freeze keys, "NAME up") proposed at least k times with zero net improvement, most-proposed
    first; ``frozen`` names the parameters and keys frozen already."""
    skip = set(locked) | set(frozen)
    found = [s for s in stats.values() if s.name not in skip and split_key(s.name)[0] not in skip
             and s.proposed >= k and s.net_improvement <= 0.0]
    return [s.name for s in sorted(found, key=lambda s: (-s.proposed, s.name))]


def freeze_key(name: str, direction: str = "") -> str:
    """What a freeze is called in a cycle's lists: ``NAME`` (the whole parameter) or ``NAME up``."""
    return f"{name} {direction}" if direction else name


def split_key(key: str) -> tuple[str, str]:
    """(parameter, direction) of a freeze key; parameter names have no spaces."""
    name, _, direction = key.partition(" ")
    return name, direction


def frozen_keys(frozen: Iterable[str], frozen_directions: Mapping[str, Iterable[str]]) -> list[str]:
    """Every freeze in force as keys: whole parameters, then each frozen direction."""
    return sorted(frozen) + sorted(freeze_key(n, d) for n, ds in frozen_directions.items() for d in ds)


def direction_stats(records: Iterable[Any], schema: Mapping[str, "ParamSpec"]) -> dict[str, ParamStats]:
    """Per freeze key: trained iterations that moved the parameter that way from the best before them.

    A parameter with no direction (a tuple, a free string) is counted under its own name.
    """
    stats: dict[str, ParamStats] = {}
    best: dict[str, Any] = {}
    for r in records:
        if r.decision == "baseline":
            best = dict(r.values)
            continue
        if r.iteration == 0 or r.decision not in TRAINED:
            continue
        for name, value in r.changes.params.items():
            spec = schema.get(name)
            if spec is None:
                continue
            key = freeze_key(name, direction_of(spec, best.get(name, spec.value), value))
            tally(stats.setdefault(key, ParamStats(key)), r, value)
        if r.decision == "keep" and r.values:
            best = dict(r.values)
    for s in stats.values():
        s.asked = s.trained = s.proposed
    return stats


def closing_keys(candidates: Iterable[str], schema: Mapping[str, "ParamSpec"]) -> list[str]:
    """The direction candidates whose freeze would leave their parameter no open direction.

    ``schema`` is the current one (best values, directions frozen so far).
    """
    out = []
    for key in candidates:
        name, direction = split_key(key)
        spec = schema.get(name)
        if direction and spec is not None and closed(
                replace(spec, frozen_directions=(*spec.frozen_directions, direction))):
            out.append(key)
    return out


@dataclass
class Plan:
    freeze: list[str] = field(default_factory=list)
    unfreeze: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)


def apply_limits(*, want_freeze: Iterable[str], want_unfreeze: Iterable[str], candidates: Iterable[str],
                 schema: Mapping[str, "ParamSpec"], frozen: Iterable[str], max_new_freezes: int,
                 min_active: int, closing: Iterable[str] = ()) -> Plan:
    """What may actually change this cycle; every refusal carries its reason.

    Names are freeze keys: ``NAME`` or ``NAME direction``; ``frozen`` lists the keys in force.
    A key in ``closing`` would leave its parameter no direction: it freezes the whole parameter.
    """
    plan = Plan()
    frozen_now = set(frozen)
    candidate_set = set(candidates)
    closing_set = set(closing)
    for key in dict.fromkeys(want_unfreeze):
        name, _ = split_key(key)
        if name not in schema:
            plan.refused[key] = "unknown parameter"
        elif schema[name].locked:
            plan.refused[key] = "locked by the configuration: never unfrozen"
        elif key not in frozen_now:
            plan.refused[key] = "not frozen"
        else:
            plan.unfreeze.append(key)
            frozen_now.discard(key)
    active = [n for n, s in schema.items() if not s.locked and n not in frozen_now]
    for key in dict.fromkeys(want_freeze):
        name, direction = split_key(key)
        whole = not direction or key in closing_set
        if name not in schema:
            plan.refused[key] = "unknown parameter"
        elif schema[name].locked:
            plan.refused[key] = "locked by the configuration"
        elif key in frozen_now or name in frozen_now:
            plan.refused[key] = "already frozen"
        elif key in plan.unfreeze:
            plan.refused[key] = "asked to freeze and unfreeze at once"
        elif key not in candidate_set:
            plan.refused[key] = "not a freeze candidate under the rule"
        elif len(plan.freeze) >= max_new_freezes:
            plan.refused[key] = f"limit of {max_new_freezes} new freezes per cycle reached"
        elif whole and len(active) - 1 < min_active:
            plan.refused[key] = f"would leave fewer than {min_active} active parameters"
        elif whole:
            plan.freeze.append(name)
            frozen_now.add(name)
            active.remove(name)
        else:
            plan.freeze.append(key)
            frozen_now.add(key)
    return plan


def offline_guidance(stats: Mapping[str, ParamStats], active: Iterable[str]) -> str:
    """The offline guidance sentence: name the least-explored active parameters."""
    counts = sorted(((stats[n].proposed if n in stats else 0, n) for n in active))
    if not counts:
        return "All parameters are frozen or locked; unfreeze one to continue exploring."
    least = counts[: max(1, min(3, (len(counts) + 1) // 2))]  # the less-explored half, at most three
    tried = ", ".join(f"{n} ({c}×)" for c, n in least)
    return f"Explore the least-explored parameters next: {tried}; avoid repeating regions already tried."


class StrategyLevel:
    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    async def run_cycle(self, cycle: int, after_iteration: int) -> None:
        ctx = self.ctx
        cfg = ctx.cfg.strategy
        state = ctx.state
        ctx.emit(ev.StrategyStarted(cycle=cycle, after_iteration=after_iteration))
        stats = with_every_proposal(param_stats(state.records), state.proposal_counts, ctx.schema)
        locked = [n for n, s in ctx.schema.items() if s.locked]
        in_force = frozen_keys(state.frozen, state.frozen_directions)
        current = ctx.current_schema(state.best_values)
        if cfg.freeze == "direction":
            rule_stats = direction_stats(state.records, ctx.schema)
            candidates = freeze_candidates(rule_stats, k=cfg.freeze_after, locked=locked, frozen=in_force)
        else:
            rule_stats = stats
            candidates = freeze_candidates(stats, k=cfg.freeze_after, locked=locked, frozen=state.frozen)
        closing = closing_keys(candidates, current)
        active = [n for n, s in ctx.schema.items() if not s.locked and n not in state.frozen]
        diagnosis = reasoning = error = ""
        kept: dict[str, str] = {}
        attempts = 1
        if ctx.cfg.offline:
            source = "offline"
            want_freeze, want_unfreeze = candidates, []
            guidance = offline_guidance(stats, active)
            what = "direction(s)" if cfg.freeze == "direction" else "parameter(s)"
            diagnosis = (f"{len(candidates)} {what} met the freeze rule (proposed ≥{cfg.freeze_after}× "
                         f"with zero net improvement)")
        else:
            source = "llm"
            reply, attempts = await self._ask(cycle, after_iteration, stats, candidates)
            if isinstance(reply, str):  # an error: the rule's verdict still stands, nothing else changes
                error = reply
                want_freeze, want_unfreeze, guidance = list(candidates), [], ""
            else:
                kept = kept_with_reasons(reply.get("keep"), candidates)
                # The rule is authoritative: a candidate is frozen unless kept with a reason.
                want_freeze = [c for c in candidates if c not in kept] + _names(reply.get("freeze"))
                want_unfreeze = _names(reply.get("unfreeze"))
                guidance = str(reply.get("guidance") or "").strip()
                diagnosis = str(reply.get("diagnosis") or "")
                reasoning = str(reply.get("reasoning") or "")
        plan = apply_limits(want_freeze=want_freeze, want_unfreeze=want_unfreeze, candidates=candidates,
                            schema=ctx.schema, frozen=in_force, max_new_freezes=cfg.max_new_freezes,
                            min_active=cfg.min_active, closing=closing)
        for key in plan.unfreeze:
            name, direction = split_key(key)
            ctx.emit(ev.ParamUnfrozen(name=name, direction=direction, source="strategy",
                                      reason=f"cycle {cycle}: {reasoning or diagnosis}"[:300]))
        for key in plan.freeze:
            name, direction = split_key(key)
            closed_by = next((c for c in closing if split_key(c)[0] == name), "") if not direction else ""
            s = rule_stats.get(closed_by or key) or stats[name]
            what = (f"{closed_by} proposed {s.proposed}×" if closed_by else f"proposed {s.proposed}×")
            tail = "; no other direction is open, so the whole parameter" if closed_by else ""
            ctx.emit(ev.ParamFrozen(name=name, direction=direction, source="strategy",
                                    reason=f"cycle {cycle}: {what} with net gain "
                                           f"{s.net_improvement:+.6f} (rule k={cfg.freeze_after}){tail}"))
        if guidance and guidance != state.guidance:
            if state.guidance_pinned:  # the user pinned theirs: it stands, and the log says what it beat
                ctx.emit(ev.GuidanceNotApplied(cycle=cycle, guidance=guidance,
                                               reason="the user's guidance is pinned; unpin it to let Level 1.5 "
                                                      "rewrite it"))
            else:
                ctx.emit(ev.GuidanceChanged(guidance=guidance, source="strategy", cycle=cycle))
        ctx.emit(ev.StrategyDecision(
            cycle=cycle, source=source, diagnosis=diagnosis, reasoning=reasoning, guidance=guidance,
            candidates=candidates, freeze=plan.freeze, unfreeze=plan.unfreeze, refused=plan.refused,
            stats={n: {"proposed": s.proposed, "kept": s.kept, "net_improvement": s.net_improvement}
                   for n, s in stats.items()},
            error=error, kept=kept, attempts=attempts,
        ))

    async def _ask(self, cycle: int, after_iteration: int, stats: Mapping[str, ParamStats],
                   candidates: list[str]) -> tuple[dict[str, Any] | str, int]:
        """The checked reply (or why there is none) and how many replies were asked for."""
        ctx = self.ctx
        cfg = ctx.cfg
        state = ctx.state
        lines = []
        # The current best values: the proposer starts from them, so the strategy must see them.
        for name, spec in ctx.current_schema(state.best_values).items():
            status = "locked" if spec.locked else "frozen" if name in state.frozen else "active"
            s = stats.get(name)
            tally = (f"proposed {s.asked}× in all ({s.trained}× trained), kept {s.kept}×, "
                     f"net gain {s.net_improvement:+.6f}" if s else "never proposed")
            lines.append(f"- [{status}] {spec.describe()} — {tally}")
        fields = dict(
            cycle=cycle, iteration=after_iteration, baseline_val_bpb=fmt_bpb(state.baseline_val_bpb),
            best_val_bpb=fmt_bpb(state.best_val_bpb), params="\n".join(lines),
            k=cfg.strategy.freeze_after, candidates=(", ".join(candidates) or "(none)") + (
                DIRECTION_NOTE if cfg.strategy.freeze == "direction" else ""), history="",
            guidance=state.guidance or "(none)", max_new_freezes=cfg.strategy.max_new_freezes,
            min_active=cfg.strategy.min_active)
        template = Template(prompts.load("strategy_cycle"))
        budget = prompt_budget(cfg, "strategy")
        history_tokens = cfg.search.history_tokens
        if budget is not None:  # the rest of the prompt first; history_text counts 4 characters a token, we 3
            rest = estimate_tokens(template.substitute(fields) + prompts.load("strategy_system"))
            history_tokens = min(history_tokens, max(200, budget - rest) * 3 // 4)
        user = template.substitute(fields, history=history_text(state.proposals, history_tokens))
        messages = [{"role": "system", "content": prompts.load("strategy_system")}, {"role": "user", "content": user}]
        unfreezable = [k for k in frozen_keys(state.frozen, state.frozen_directions)
                       if split_key(k)[0] in ctx.schema and not ctx.schema[split_key(k)[0]].locked]
        schema = strategy_schema(candidates, unfreezable)
        problem = ""
        attempts = cfg.search.max_reasks + 1
        for attempt in range(1, attempts + 1):
            call_id = uuid.uuid4().hex[:10]
            try:
                result = await ctx.call_llm("strategy", "update", fit_messages(messages, budget),
                                            iteration=after_iteration, json=True,
                                            schema=schema, call_id=call_id,
                                            max_tokens=reply_tokens(cfg, "strategy"))
            except LLMError as exc:
                return f"LLM call failed: {exc}", attempt
            raw = result.content
            if result.finish_reason == "length":
                problem, for_model = ('the reply was cut off (finish_reason "length"): consider a larger max_tokens',
                                      "your reply was cut off at the length limit: answer again, shorter")
                reply = None
            else:
                try:
                    reply = extract_json(raw)
                    problem = strategy_reply_problem(reply)
                except ValueError as exc:
                    reply, problem = None, f"unparseable reply: {exc}"
                for_model = problem.replace("consider a larger max_tokens", "answer more briefly")
            if reply is not None and not problem:
                return reply, attempt
            ctx.emit(ev.ReplyRejected(level="strategy", purpose="update", call_id=call_id, attempt=attempt,
                                      kind="truncated" if "cut off" in problem else "wrong_fields",
                                      reason=problem, raw=raw[:2000]))
            messages.append({"role": "assistant", "content": raw})
            messages.append({"role": "user", "content": f"Your answer could not be used: {for_model}.\n"
                                                        f"{STRATEGY_REASK}"})
        return f"no usable reply after {attempts} attempt(s): {problem}", attempts


# What a direction candidate means, said once in the Level 1.5 prompt (strategy.freeze = "direction").
DIRECTION_NOTE = (' (each candidate is a direction: freezing "NAME up" forbids only increases of NAME, "NAME →V" '
                  'only moving NAME to V; its other directions stay open)')
STRATEGY_FIELDS = ("diagnosis", "freeze", "unfreeze", "keep", "guidance", "reasoning")
# Placeholders small models wrote from older prompts: a reply that repeats them has not answered.
PLACEHOLDERS = ("what the trace shows", "one to three sentences for the proposer", "NAME", "why",
                "reason to keep it active", "...")
STRATEGY_TEMPLATES = ("strategy_system", "strategy_cycle")
WORD = re.compile(r"[^\W\d_]{3,}")  # a word of three letters or more
STRATEGY_REASK = ('Reply with one JSON object and nothing else: {"diagnosis": ..., "freeze": [...], '
                  '"unfreeze": [...], "keep": {...}, "guidance": ..., "reasoning": ...}, written for this trace.')


def strategy_reply_problem(reply: dict[str, Any]) -> str:
    """Why a reply is not a Level 1.5 answer, or "" when it is one."""
    if "changes" in reply and not any(k in reply for k in STRATEGY_FIELDS):
        return ('this is a Level 1 proposal ("changes"), not a Level 1.5 answer: give diagnosis, freeze, '
                'unfreeze, keep, guidance and reasoning')
    if not any(k in reply for k in STRATEGY_FIELDS):
        return f"the reply has none of the fields {', '.join(STRATEGY_FIELDS)}"
    guidance = reply.get("guidance")
    if isinstance(guidance, str) and guidance.strip() and not WORD.search(guidance):
        # SmolLM2-135M wrote the guidance "," on llama-server: it would have reached every Level 1 prompt
        return f"the guidance {guidance.strip()[:40]!r} has no words in it: write a sentence for the proposer, or \"\""
    return echo_problem(_leaves(reply), STRATEGY_TEMPLATES, PLACEHOLDERS)


def _leaves(value: Any, key: str = "") -> list[tuple[str, Any]]:
    """(field, text) for every string in a reply, dict keys included (a key "NAME" is a placeholder too)."""
    if isinstance(value, dict):
        out = [(key or "key", str(k)) for k in value]
        return out + [leaf for k, v in value.items() for leaf in _leaves(v, str(k))]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v, key)]
    return [(key, value)]


def kept_with_reasons(value: Any, candidates: list[str]) -> dict[str, str]:
    """The freeze candidates the LLM keeps active, each with a non-empty reason."""
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v).strip()[:300] for k, v in value.items()
            if str(k) in candidates and isinstance(v, str) and v.strip()}


def with_every_proposal(stats: dict[str, ParamStats], counts: Mapping[str, int],
                        schema: Mapping[str, Any]) -> dict[str, ParamStats]:
    """Stats where `asked` counts every proposal, and the rule's `proposed` counts rejected ones too."""
    for s in stats.values():
        s.trained = s.proposed
    for name, count in counts.items():
        if name not in schema:
            continue  # an unknown name in an invalid proposal is not a parameter
        s = stats.setdefault(name, ParamStats(name))
        s.asked = count
        s.proposed = max(s.proposed, count)
    for s in stats.values():
        s.asked = max(s.asked, s.proposed)
    return stats


def _names(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    return [str(v) for v in value if isinstance(v, (str, int))]
