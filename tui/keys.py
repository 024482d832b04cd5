"""The app's keys: every binding with an id (users remap them in keymap.toml), and the command palette.

``BILEVEL_TUI_DETERMINISTIC=1`` selects the deterministic mode of snapshot tests, which also
ignores the user's keymap.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import platformdirs
from textual.binding import Binding

DETERMINISTIC_ENV = "BILEVEL_TUI_DETERMINISTIC"

BINDINGS = [
    Binding("space", "toggle_pause", "Pause/resume", id="pause"),
    Binding("x", "abort_training", "Abort run", id="abort_training"),
    Binding("s", "stop", "Stop", id="stop", show=False),
    Binding("g", "edit_guidance", "Guidance", id="guidance"),
    Binding("e", "edit_guidance_external", "Guidance in $EDITOR", id="guidance_editor", show=False),
    Binding("f", "freeze", "Freeze", id="freeze"),
    Binding("v", "review_mechanism", "Approve", id="approve"),
    Binding("r", "reload_config", "Reload config", id="reload_config"),
    Binding("a", "audit", "Audit", id="audit", show=False),
    Binding("full_stop", "replay_step", "Step", id="replay.step"),
    Binding("plus,equals_sign", "replay_faster", "Faster", id="replay.faster"),
    Binding("minus", "replay_slower", "Slower", id="replay.slower"),
    Binding("i", "replay_seek", "Seek", id="replay.seek"),
    Binding("z", "toggle_maximize", "Maximise", id="maximize"),
    Binding("l", "toggle_events", "Event log", id="events", show=False),
    Binding("1", "focus_pane('trace')", "Trace", id="pane.trace", show=False),
    Binding("2", "focus_pane('strategy')", "Strategy", id="pane.strategy", show=False),
    Binding("3", "focus_pane('research')", "Research", id="pane.research", show=False),
    Binding("4", "focus_pane('patches')", "Patches", id="pane.patches", show=False),
    Binding("5", "focus_pane('events')", "Events", id="pane.events", show=False),
    Binding("ctrl+left", "resize('columns', -4)", "Narrower", id="resize.left", show=False),
    Binding("ctrl+right", "resize('columns', 4)", "Wider", id="resize.right", show=False),
    Binding("ctrl+up", "resize('rows', -2)", "Shorter", id="resize.up", show=False),
    Binding("ctrl+down", "resize('rows', 2)", "Taller", id="resize.down", show=False),
    Binding("question_mark", "help", "Help", id="help"),
    Binding("q", "quit_app", "Quit", id="quit"),
    Binding("ctrl+q", "quit_app", "Quit", id="quit.hard", show=False, priority=True),
]

# (action, title, help) for the command palette
PALETTE = (
    ("toggle_pause", "Pause / resume", "Pause at the next iteration boundary, or resume"),
    ("abort_training", "Abort the training run", "Cancel the run in progress; the iteration is recorded as cancelled"),
    ("stop", "Stop the run", "Stop after the current iteration; the session stays resumable"),
    ("edit_guidance", "Edit guidance", "Change the guidance the inner loop reads"),
    ("edit_guidance_external", "Edit guidance in $EDITOR", "Open the guidance in your editor"),
    ("freeze", "Freeze / unfreeze a parameter", "Take a parameter out of the search, or put it back"),
    ("review_mechanism", "Review pending mechanism", "Approve or reject a validated mechanism"),
    ("audit", "Keep-chain audit", "Each keep re-measured on fresh seeds: effect, interval, verdict"),
    ("reload_config", "Reload config", "Apply the changed guidance/budget from the config file"),
    ("replay_step", "Replay: step", "Advance to the end of the next iteration"),
    ("replay_faster", "Replay: faster", "1× → 10× → 100× → instant"),
    ("replay_slower", "Replay: slower", "instant → 100× → 10× → 1×"),
    ("replay_seek", "Replay: seek to iteration", "Show the session as it stood after an iteration"),
    ("toggle_maximize", "Maximise / restore pane", "Give the focused pane the whole screen"),
    ("toggle_events", "Show / hide the event log", "The pane with one line per event"),
    ("help", "Help", "Panes and keys"),
    ("quit_app", "Quit", "Leave the app (asks first while a run is active)"),
)


def deterministic_from_env() -> bool:
    return os.environ.get(DETERMINISTIC_ENV, "") not in ("", "0")


def keymap_path() -> Path:
    """$BILEVEL_KEYMAP, else the user config folder's (platformdirs: $XDG_CONFIG_HOME or ~/.config on Linux)."""
    return Path(os.environ.get("BILEVEL_KEYMAP", platformdirs.user_config_path("bilevel") / "keymap.toml"))


def load_keymap(path: Path) -> dict[str, str]:
    """``[keymap]`` binding id -> keys, from a TOML file; empty when absent or unreadable."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    table = data.get("keymap", {})
    return {str(k): str(v) for k, v in table.items()} if isinstance(table, dict) else {}
