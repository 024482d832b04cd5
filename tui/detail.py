"""Why an iteration happened and how it was judged: the text of the iteration detail view.

Everything comes from the events of that iteration (kept by :mod:`tui.model_trials`) and the
session's artifacts: the full changes and hypothesis; what the proposer saw (the results and
the running trials it was shown, the guidance in force and where it came from, the active
mechanisms, their prompt additions and vetoes, proposals rejected and re-asked); the verdict
with the acceptance rule and its margin, in noise units where a noise floor exists; where and
how it trained; the end of its training log; and the diff it ran. A plain function from data
to Rich text, tested without a screen.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from rich.text import Text

from core.levels.trace import fmt_value

from .model import outcome_label
from .render import DECISION_STYLES, clock

if TYPE_CHECKING:
    from .model import ViewModel

LOG_TAIL = 20  # training log lines shown


def _section(out: Text, title: str) -> None:
    out.append(f"\n{title}\n", style="bold underline")


def _line(out: Text, label: str, value: str, style: str = "") -> None:
    out.append(f"  {label:<14}", style="bold")
    out.append(f"{value}\n", style=style)


def _iterations(ns: list[int]) -> str:
    return " ".join(f"#{n}" for n in ns) if ns else "none"


def _number(x: Any, digits: int = 6) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) and not isinstance(x, bool) else "—"


SCRIPT_CONTEXT = {"digest": "its digest: the constants with their comments and the lines using each",
                  "full": "the whole best script (cut to its token budget)", "off": "not shown"}


def _script_context(model: "ViewModel") -> str:
    """search.script_context of the session's config (the default when unset)."""
    config = model.state.config if isinstance(model.state.config, dict) else {}
    search = config.get("search") if isinstance(config.get("search"), dict) else {}
    return str(search.get("script_context", "digest"))


def replaced_values(model: "ViewModel", n: int, proposal: Any) -> dict[str, Any]:
    """The parameter values of the best script iteration ``n``'s change was made to: the last keep (or
    the baseline) among the results its proposer saw (parallel trials), else among those recorded before it."""
    shown = set(proposal.saw_results) if proposal is not None and (proposal.saw_results or proposal.saw_running) else None
    values: dict[str, Any] = {}
    for record in model.state.records:  # in the order the verdicts came
        if record.iteration == n:
            break
        if shown is not None and record.iteration not in shown:
            continue
        if record.decision in ("baseline", "keep") and record.values:
            values = record.values
    return values


def iteration_detail(model: "ViewModel", n: int, read: Callable[[str], str | None]) -> Text:
    """The detail of iteration ``n``: sections of styled text; ``read`` reads an artifact (None if absent)."""
    row = model.row(n)
    trial = model.trial(n)
    out = Text()
    if row is None and trial is None:
        out.append(f"iteration #{n}: nothing recorded yet\n", style="dim")
        return out
    phase = outcome_label(row) if row is not None else "started"  # "out of mem", "timeout": what the crash was
    out.append(f"Iteration #{n}  ", style="bold")
    out.append(phase, style=DECISION_STYLES.get(phase, "bold"))
    started = trial.started if trial is not None else None
    if started is not None:
        where = [f"slot {started.slot}"] if started.slot else []
        if started.node:
            where.append(f"node {started.node}")
        if started.attempt > 1:
            where.append(f"attempt {started.attempt}")
        if where:
            out.append("   " + " · ".join(where), style="dim")
    out.append("\n")

    _section(out, "Changes")
    proposal = trial.proposals[-1] if trial is not None and trial.proposals else None
    changes = (row.changes.params if row is not None else {}) or (proposal.changes.params if proposal is not None else {})
    if n == 0:
        out.append("  the baseline: train.py as given\n")
    elif changes:
        replaced = replaced_values(model, n, proposal)
        schema = model.state.schema
        for name, value in changes.items():
            spec = schema.get(name)
            baseline = spec.get("value") if isinstance(spec, dict) else None
            out.append(f"  {name}", style="bold cyan")
            out.append(f" = {fmt_value(value)}")
            if name in replaced:  # what it changed: the best script's value when it was proposed
                out.append(f"   (was {fmt_value(replaced[name])}"
                           + (f"; baseline {fmt_value(baseline)}" if baseline is not None
                              and fmt_value(baseline) != fmt_value(replaced[name]) else "") + ")", style="dim")
            elif baseline is not None:
                out.append(f"   (was {fmt_value(baseline)}, the baseline)", style="dim")
            out.append("\n")
    else:
        out.append("  none recorded\n", style="dim")
    change = row.changes if row is not None and getattr(row.changes, "edits", None) else (
        proposal.changes if proposal is not None else None)
    edits = getattr(change, "edits", [])
    if n and edits:  # a code proposal (search.scope = "code"): every block, as the model wrote it
        _section(out, f"Code edits ({len(edits)})")
        for k, e in enumerate(edits, 1):
            out.append(f"  edit {k}\n", style="bold cyan")
            for line in e.find.splitlines():
                out.append(f"  - {line}\n", style="red")
            for line in e.replace.splitlines():
                out.append(f"  + {line}\n", style="green")
    hypothesis = (row.hypothesis if row is not None else "") or (proposal.hypothesis if proposal else "")
    if hypothesis:
        _section(out, "Hypothesis")
        out.append(f"  {hypothesis}\n")

    if trial is not None and n > 0:
        _section(out, "What the proposer saw")
        if proposal is not None:
            _line(out, "source", f"{proposal.source}, attempt {proposal.attempt}")
            if proposal.saw_results or proposal.saw_running:
                _line(out, "results of", f"{_iterations(proposal.saw_results)}  ({len(proposal.saw_results)} finished)")
                _line(out, "running", f"{_iterations(proposal.saw_running)}  (result unknown: not to be repeated)")
        _line(out, "guidance", f"{trial.guidance or '(none)'}  [{trial.guidance_source}]")
        if proposal is not None and proposal.source == "llm":
            _line(out, "train.py", SCRIPT_CONTEXT.get(_script_context(model), "(unknown)"))
        _line(out, "mechanisms", ", ".join(trial.mechanisms) or "none active")
        for e in trial.effects:
            _line(out, f"{e.name}", f"{e.hook} → {e.effect}" + (f": {e.detail}" if e.detail else ""),
                  "yellow" if e.effect in ("vetoed", "overrode") else "")
        for r in trial.rejections:
            who = f" by {r.mechanism}" if r.mechanism else ""
            what = ", ".join(f"{k}={fmt_value(v)}" for k, v in r.changes.params.items())
            _line(out, f"attempt {r.attempt}", f"{r.kind}{who}: {r.reason}" + (f"  [{what}]" if what else ""), "yellow")

    verdict = trial.verdict if trial is not None else None
    _section(out, "Verdict")
    if verdict is None:
        out.append("  not judged yet\n" if trial is None or trial.interrupted is None else
                   f"  interrupted: {trial.interrupted.reason} (re-run on resume)\n", style="dim")
    else:
        _line(out, "decision", verdict.decision + (f" — {verdict.reason}" if verdict.reason else ""),
              DECISION_STYLES.get(verdict.decision, ""))
        if verdict.rule:
            _line(out, "rule", verdict.rule)
        if verdict.val_bpb is not None:
            _line(out, "val_bpb", f"{verdict.val_bpb:.6f}  against best {_number(verdict.best_before)}"
                  " (the best when this result arrived)")
        acc = verdict.acceptance
        if acc:
            margin = acc.get("margin")
            sigma = acc.get("margin_sigma")
            if isinstance(margin, (int, float)):
                text = f"{_number(abs(margin))} {'better' if margin > 0 else 'worse'} than the best"
            else:
                text = "—"
            if isinstance(sigma, (int, float)):
                text += f" = {sigma:+.1f}σ (σ {_number(acc.get('noise_std'))})"
            elif margin is not None:
                text += " (no noise floor measured: not in σ)"
            _line(out, "margin", text)
            if acc.get("threshold") is not None:
                _line(out, "needed", f"more than {_number(acc.get('threshold'))} (target {_number(acc.get('target'))})")
            if acc.get("confirm"):
                _line(out, "confirmed by", str(acc["confirm"]))
        if verdict.best_after is not None:
            _line(out, "best after", f"{verdict.best_after:.6f}")
        counts = {name: sum(c.values()) for name, c in verdict.mechanisms.items()}
        if counts:
            _line(out, "hook calls", ", ".join(f"{k} {v}" for k, v in counts.items()))

    _section(out, "Training")
    finished = trial.training if trial is not None else None
    if started is None:
        out.append("  did not train\n", style="dim")
    else:
        _line(out, "budget", f"{clock(started.budget_s)}" + (f", seed {started.seed}" if started.seed is not None else ""))
    if finished is not None:
        _line(out, "outcome", finished.outcome + (f" — {finished.reason}" if finished.reason else "")
              + (f" [{finished.failure}]" if finished.failure else ""),
              "" if finished.outcome == "ok" else "red")
        _line(out, "took", clock(finished.duration_s) + (f" ({finished.worker} worker)" if finished.worker else ""))
        metrics = {k: v for k, v in finished.metrics.items() if k != "val_bpb"}
        if metrics:
            _line(out, "metrics", "  ".join(f"{k} {fmt_value(v)}" for k, v in metrics.items()))
    elif trial is not None and trial.progress is not None:
        p = trial.progress
        bits = [f"{_number(p.percent, 0)}%" if p.percent is not None else "", p.phase or "",
                f"step {p.step}" if p.step is not None else "", f"loss {_number(p.loss, 4)}" if p.loss is not None else ""]
        _line(out, "progress", "  ".join(b for b in bits if b) or "no step yet")
    tail = _log_tail(trial, finished, read)
    if tail:
        _section(out, "Training log (last lines)")
        for stream, line in tail:
            out.append(f"  {line}\n", style="red" if stream == "stderr" else "dim")

    _section(out, "Diff")
    diff = read(row.diff) if row is not None and row.diff else None
    if diff is None and started is not None and started.diff:
        diff = read(started.diff)
    if not diff:
        out.append("  no diff (the baseline, or a proposal that never trained)\n", style="dim")
    else:
        for line in diff.splitlines():
            style = "green" if line.startswith("+") and not line.startswith("+++") else \
                "red" if line.startswith("-") and not line.startswith("---") else \
                "cyan" if line.startswith("@@") else "dim"
            out.append(f"  {line}\n", style=style)
    return out


def _log_tail(trial: Any, finished: Any, read: Callable[[str], str | None]) -> list[tuple[str, str]]:
    """The training log's last lines: the log artifact, else the lines streamed, else the error tail."""
    if finished is not None and finished.log:
        text = read(finished.log)
        if text:
            return [("stdout", line) for line in text.splitlines()[-LOG_TAIL:]]
    lines = list(trial.output)[-LOG_TAIL:] if trial is not None else []
    error_tail = finished.error_tail if finished is not None else ""
    if error_tail:
        seen = {line for _, line in lines}
        lines += [("stderr", line) for line in error_tail.splitlines()[-LOG_TAIL:] if line not in seen]
    return lines
