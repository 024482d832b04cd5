"""Headless output: one readable line per event (streamed tokens and progress summarised).

Every event is cleaned first (:func:`core.record.safe_events.safe_event`): text from an LLM,
a mechanism or a log shows its control and invisible characters escaped, and a newline in a
field never starts a line that could read as another event.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable, TextIO

from core.analysis.evidence_text import FORMATS as EVIDENCE_FORMATS
from core.analysis.spend_text import FORMATS as SPEND_FORMATS, pause_line
from core.record import events as ev
from core.record.change import Change
from core.record.safe_events import safe_event
from core.record.safe_text import safe_line
from core.levels.trace import fmt_bpb, fmt_value


def _changes(change: Change) -> str:
    params = ", ".join(f"{k}={fmt_value(v)}" for k, v in change.params.items())
    edits = getattr(change, "edits", [])
    code = f"{len(edits)} code edit{'s' if len(edits) != 1 else ''}" if edits else ""
    return ", ".join(p for p in (code, params) if p) or "(no change)"


def _finished(e: ev.IterationFinished) -> str:
    label = "baseline" if e.decision == "baseline" else e.decision.upper()
    parts = [f"#{e.iteration} {label}"]
    if e.iteration:
        parts.append(_changes(e.changes))
    if e.val_bpb is not None:
        score = f"val_bpb {e.val_bpb:.6f}"
        if e.best_before is not None and e.decision != "baseline":
            score += f" (Δ {e.val_bpb - e.best_before:+.6f} vs best {e.best_before:.6f})"
        parts.append(score)
    elif e.reason:
        parts.append(e.reason[:200])
    margin = _margin(e)
    if margin:
        parts.append(margin)
    if e.mechanisms:
        parts.append("mechanisms " + ", ".join(f"{n}:{sum(c.values())} calls" for n, c in e.mechanisms.items()))
    parts.append(f"{e.duration_s:.1f}s")
    return " | ".join(parts)


def _margin(e: ev.IterationFinished) -> str:
    """The margin over the best in noise units when a floor is known; the confirmation runs."""
    a = e.acceptance or {}
    bits = []
    confirm = a.get("confirm") or {}
    if confirm.get("mean") is not None:
        runs = ", ".join(f"{v:.6f}" for v in confirm.get("values", []) if v is not None)
        bits.append(f"confirmed mean {confirm['mean']:.6f} ({runs})" if e.decision == "keep"
                    else f"not confirmed: mean {confirm['mean']:.6f} ({runs})")
    elif confirm:
        bits.append("confirmation run failed")
    sigmas = confirm.get("margin_sigma", a.get("margin_sigma"))
    margin = confirm.get("margin", a.get("margin"))
    if a.get("noise_std") and sigmas is not None and margin is not None and margin > 0:  # improvements only
        bits.append(f"margin {margin:+.6f} = {sigmas:+.1f}σ (σ {a['noise_std']:.6f}, need > {a.get('threshold', 0):.6f})")
    return "; ".join(bits)


def _noise_measured(e: ev.NoiseMeasured) -> str:
    if e.std is None:
        return "noise: no floor measured"
    return (f"noise floor σ = {e.std:.6f} (MAD {e.mad:.6f}, mean {e.mean:.6f}, {len(e.values)} runs"
            f"{f', {e.failed} failed' if e.failed else ''}) for fingerprint {e.fingerprint} [{e.hardware}]"
            f" — saved in {e.store}")


_FORMATS: dict[type, Callable[[ev.Event], str | None]] = {
    ev.SessionStarted: lambda e: (f"session {e.session}: {e.name} — provider {e.provider}"
                                  f"{' (offline: no LLM)' if e.provider == 'offline' else ' model ' + e.model}, "
                                  f"group {e.group}, levels {'+'.join(e.levels)}"
                                  f"{' — SURROGATE workload: val_bpb is a response surface, nothing is trained' if e.surrogate else ''}"),
    ev.ScriptInspected: lambda e: "; ".join(filter(None, [
        f"script: {Path(e.script).name} imports {', '.join(e.constants) or 'helpers'} from "
        f"{', '.join(m + '.py' for m in e.modules)}; each run gets a copy of its folder"
        + (" with " + ", ".join(f"{k} = {v}" for k, v in e.set_per_run.items()) if e.set_per_run else "")
        if e.modules else "",
        ("locked: " + ", ".join(f"{k} ({v})" for k, v in e.locked.items())) if e.locked else "",
        f"seed: {e.seed_note}" if e.seed_note else ""])) or None,
    ev.RunResumed: lambda e: f"resumed at iteration {e.next_iteration}",
    ev.RunFinished: lambda e: (f"run {e.status}: {e.reason} — {e.iterations} iterations, baseline "
                               f"{fmt_bpb(e.baseline_val_bpb)}, best {fmt_bpb(e.best_val_bpb)}"),
    ev.IterationStarted: lambda e: f"#{e.iteration} started{' (baseline)' if e.iteration == 0 else ''}",
    ev.ProposalMade: lambda e: f"#{e.iteration} proposal ({e.source}, attempt {e.attempt}): {_changes(e.changes)}"
                               + (f" — {e.hypothesis[:160]}" if e.hypothesis else ""),
    ev.ProposalRejected: lambda e: f"#{e.iteration} proposal rejected ({e.kind}, attempt {e.attempt}): {e.reason[:300]}",
    ev.TrainingStarted: lambda e: f"#{e.iteration} training on {e.slot} for {e.budget_s:g}s",
    ev.TrainingFinished: lambda e: (f"#{e.iteration} training {e.outcome} in {e.duration_s:.1f}s"
                                    + (f": val_bpb {e.val_bpb:.6f}" if e.val_bpb is not None else f": {e.reason[:200]}")),
    ev.TrustedEvaluation: lambda e: (f"#{e.iteration} trusted evaluation: "
                                     + (f"val_bpb {e.val_bpb:.6f} (causal)" if e.val_bpb is not None else e.reason[:200])
                                     + (f"; the script claimed {e.script_val_bpb:.6f}, not counted"
                                        if e.script_val_bpb is not None else "")),
    ev.IterationFinished: _finished,
    ev.IterationInterrupted: lambda e: f"#{e.iteration} interrupted: {e.reason}",
    ev.LLMResponse: lambda e: (f"LLM {e.level} reply: {e.prompt_tokens}+{e.completion_tokens} tokens in {e.duration_s:.1f}s"
                               + (f" (finish_reason {e.finish_reason})" if e.finish_reason not in ("", "stop") else "")
                               if e.ok else f"LLM {e.level} call failed: {e.error}"),
    ev.LLMRetry: lambda e: f"LLM {e.level} attempt {e.attempt} failed ({e.kind}); retrying in {e.delay_s:.1f}s: {e.error[:200]}",
    ev.EndpointDown: lambda e: (f"LLM {e.level}: endpoint {'unreachable' if e.cause == 'unreachable' else 'unusable'} "
                                f"since {time.strftime('%H:%M:%S', time.localtime(e.ts))}; the run waits for it "
                                f"(stop to end; resume continues): {e.reason[:200]}"),
    ev.EndpointProbe: lambda e: (f"LLM {e.level}: endpoint still down"
                                 + (f" (probe {e.probe}: {e.error[:160]})" if e.probe else "")
                                 + f"; next probe in {e.delay_s:.1f}s"),
    ev.EndpointUp: lambda e: f"LLM {e.level}: endpoint back after {e.down_s:.1f}s and {e.probes} probe(s); the run goes on",
    ev.EndpointWaitEnded: lambda e: f"LLM {e.level}: stopped waiting for the endpoint: {e.reason}",
    ev.StructuredOutput: lambda e: f"LLM replies: response_format {e.mode} ({e.reason[:200]})",
    ev.EndpointChecked: lambda e: (f"endpoint checked in {e.duration_s:.1f}s: context "
                                   + (f"{e.context_tokens} tokens ({e.source})" if e.context_tokens else "unknown")
                                   + (f"; {e.note[:200]}" if e.note else "")),
    ev.ReplyRejected: lambda e: f"{e.level} reply rejected ({e.kind}, attempt {e.attempt}): {e.reason[:300]}",
    ev.GuidanceChanged: lambda e: f"guidance ({e.source}): {e.guidance[:200]}",
    ev.ParamFrozen: lambda e: f"froze {e.name}{' ' + e.direction if e.direction else ''} ({e.source}): {e.reason}",
    ev.ParamUnfrozen: lambda e: (f"unfroze {e.name}{' ' + e.direction if e.direction else ''} ({e.source}): "
                                 f"{e.reason}"),
    ev.PauseRequested: lambda e: "pausing at the next iteration boundary…" + (f" ({e.reason})" if e.reason else ""),
    ev.Paused: pause_line,
    ev.Unpaused: lambda e: "resumed" + (f": {e.reason}" if e.reason else ""),
    ev.CommandReceived: lambda e: f"command {e.command} {'ok' if e.ok else 'refused: ' + e.error}",
    ev.MechanismActivated: lambda e: f"mechanism {e.name} activated ({e.origin}; hooks {', '.join(e.hooks)})",
    ev.MechanismDeactivated: lambda e: f"mechanism {e.name} DEACTIVATED: {e.reason}",
    ev.MechanismEffect: lambda e: f"#{e.iteration} mechanism {e.name} {e.effect}: {e.detail[:200]}",
    ev.NoiseStarted: lambda e: (f"noise: {e.runs} runs of the unchanged baseline, seeds {', '.join(map(str, e.seeds))}; "
                                f"fingerprint {e.fingerprint} [{e.hardware}; dataset {e.dataset_id}]"
                                + (f"\nnoise: the seed is fixed: {e.seed_note}" if e.seed_note else "")),
    ev.NoiseRunFinished: lambda e: (f"noise run {e.run + 1} (seed {e.seed}): "
                                    + (f"val_bpb {e.val_bpb:.6f}" if e.val_bpb is not None else f"{e.outcome} {e.reason[:200]}")),
    ev.NoiseMeasured: _noise_measured,
    ev.AcceptanceConfigured: lambda e: f"acceptance: {e.description}" + (
        f"\nacceptance: confirmation runs cannot change the seed: {e.seed_note}" if e.seed_note and e.confirm else ""),
    ev.ConfirmationStarted: lambda e: (f"#{e.iteration} candidate val_bpb {fmt_bpb(e.first_val_bpb)} beats best "
                                       f"{fmt_bpb(e.best)}: confirming with seed {e.seed}"),
    ev.TrainingOutput: lambda e: f"#{e.iteration} [{e.stream}] {e.line}" if e.stream == "stderr" else None,
    ev.StrategyDecision: lambda e: (f"Level 1.5 cycle {e.cycle} ({e.source}): froze {', '.join(e.freeze) or 'nothing'}, "
                                    f"unfroze {', '.join(e.unfreeze) or 'nothing'}; candidates "
                                    f"{', '.join(e.candidates) or 'none'}"
                                    + (f"; refused {e.refused}" if e.refused else "")
                                    + (f"; error: {e.error}" if e.error else "")),
    ev.ResearchStarted: lambda e: f"Level 2 research {e.research_id} started ({e.source}) after iteration {e.after_iteration}",
    ev.MechanismValidated: lambda e: (f"Level 2 {e.research_id} validation of {e.name} (attempt {e.attempt}): "
                                      + ("passed" if e.ok else f"FAILED — {e.failure[:300]}")),
    ev.MechanismPending: lambda e: f"Level 2 {e.research_id}: {e.name} waits for approval (bilevel attach SESSION, then press v)",
    ev.PrescreenStarted: lambda e: (f"Level 2 {e.research_id} pre-screen of {e.name} on the surrogate: {e.repeats} x "
                                    f"{e.iterations} paired searches ({e.proposer} proposer, {e.mode})"),
    ev.MechanismPrescreened: lambda e: f"Level 2 {e.research_id} pre-screen of {e.name}: {e.verdict}: {e.reason[:300]}"
                                       + (f"; side effects {e.side_effects}" if e.side_effects else "")
                                       + (f"; {e.wall_s:.1f}s" if e.wall_s else ""),
    ev.ResearchFinished: lambda e: f"Level 2 {e.research_id} {e.outcome}: {e.name} {e.reason[:200]}".rstrip(),
}

# Formats that quote their text with repr (which escapes it) read the event as it came, and their whole
# line is cleaned: cleaning the field first would show its escapes twice (\\n).
_QUOTING_FORMATS: dict[type, Callable[[ev.Event], str]] = {
    # its newlines folded to spaces first: a quoted summary showed them as a raw \n
    ev.ResearchRound: lambda e: f"Level 2 {e.research_id} {e.round}: {' '.join(e.summary.split())[:160]!r}",
}
_FORMATS.update(EVIDENCE_FORMATS)  # the evidence loop's events (core/analysis/evidence_text.py)
_FORMATS.update(SPEND_FORMATS)  # the run's limits: estimate, warnings, caps (core/analysis/spend_text.py)


class HeadlessPrinter:
    """An engine subscriber writing lines to a stream; progress at most every few seconds."""

    def __init__(self, out: TextIO | None = None, progress_every_s: float = 5.0) -> None:
        self.out = out or sys.stdout
        self.progress_every_s = progress_every_s
        self._last_progress = 0.0

    def __call__(self, event: ev.Event) -> None:
        line = self.format(event)
        if line:
            self.out.write(line + "\n")
            self.out.flush()

    def format(self, event: ev.Event) -> str | None:
        quoting = _QUOTING_FORMATS.get(type(event))
        if quoting is not None:
            return safe_line(quoting(event))
        event = safe_event(event)
        if isinstance(event, ev.TrainingProgress):
            now = time.monotonic()
            if now - self._last_progress < self.progress_every_s:
                return None
            self._last_progress = now
            if event.step is None:  # "starting": no step yet
                return f"#{event.iteration} {event.phase or 'training'}"
            bits = [f"#{event.iteration} step {event.step}"]
            if event.percent is not None:
                bits.append(f"{event.percent:.0f}%")
            if event.loss is not None:
                bits.append(f"loss {event.loss:.4f}")
            if event.tok_per_s is not None:
                bits.append(f"{event.tok_per_s:,.0f} tok/s")
            return " ".join(bits)
        fmt = _FORMATS.get(type(event))
        return fmt(event) if fmt else None
