"""The mechanism ledger as text: `bilevel mechanisms` (the list) and `bilevel mechanisms show NAME`.

Everything printed from the ledger was written by a model or read from a session folder, so
every control character (escape sequences included) is shown escaped, never sent to the terminal.
"""
from __future__ import annotations

import unicodedata

from core.record.ledger import Ledger, MechanismRow, PrescreenRow, SessionRow

_KEEP = {"\n", "\t"}


def terminal_safe(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every control or format character shown as an escape (\\x1b, \\u202e)."""
    out = []
    for ch in text:
        if keep_newlines and ch in _KEEP:
            out.append(ch)
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def effect_text(p: PrescreenRow) -> str:
    if p.effect is None or p.ci_low is None or p.ci_high is None:
        return p.verdict
    return (f"{p.effect:+.4f} ({p.ci_low:+.4f} to {p.ci_high:+.4f}), p {p.p_value:.2g} "
            f"[{p.verdict}, {p.repeats}x{p.iterations}]")


def render_list(ledger: Ledger) -> str:
    """One line per mechanism: its latest pre-screen's paired effect and CI, and its sessions' totals."""
    lines = []
    for m, screens, sessions in ledger.iter_summary():
        latest = screens[-1] if screens else None
        screened = effect_text(latest) if latest else "not pre-screened"
        lines.append(f"{terminal_safe(m.name)}  {m.source_key[:12]}  {m.origin}  from {terminal_safe(m.origin_session)}\n"
                     f"    pre-screen ({len(screens)}): {terminal_safe(screened)}  (effect on the final best "
                     "with it − without; + is worse)\n"
                     f"    sessions ({len(sessions)}): {_totals(sessions)}")
    if not lines:
        return f"the mechanism ledger ({ledger.path}) is empty"
    return "\n".join(lines)


def _totals(sessions: list[SessionRow]) -> str:
    if not sessions:
        return "never activated"
    total = lambda field: sum(getattr(s, field) for s in sessions)  # noqa: E731
    return (f"{total('iterations_active')} iterations active, {total('shaped')} prompts shaped, "
            f"{total('vetoed')} vetoed, {total('modified')} modified, {total('overrode')} overridden, "
            f"{total('keeps_while_active')} keeps while active")


def render_show(m: MechanismRow, screens: list[PrescreenRow], sessions: list[SessionRow]) -> str:
    """The mechanism's history and its source (escaped)."""
    lines = [f"{terminal_safe(m.name)} ({m.origin}), source key {m.source_key}, "
             f"first validated in {terminal_safe(m.origin_session)}", "", "pre-screens:"]
    lines += [f"  {terminal_safe(p.session)} {terminal_safe(p.research_id)}: {terminal_safe(effect_text(p))}; "
              f"side effects {p.side_effects}; {p.wall_s:.1f}s" for p in screens] or ["  (none)"]
    lines += ["", "sessions:"]
    lines += [f"  {terminal_safe(s.session)}{' (surrogate)' if s.surrogate else ''}: {s.iterations_active} iterations "
              f"active, {s.shaped} shaped, {s.vetoed} vetoed, {s.modified} modified, {s.overrode} overridden, "
              f"{s.keeps_while_active} keeps while active"
              + (f"; deactivated: {terminal_safe(s.deactivated)}" if s.deactivated else "")
              + (f"; audit: {terminal_safe(s.audit_verdict)}" if s.audit_verdict else "")
              for s in sessions] or ["  (never activated)"]
    lines += ["", "source:", terminal_safe(m.source, keep_newlines=True)]
    return "\n".join(lines)
