"""The command vocabulary: what a viewer (the app, the CLI, a test) may ask of a running engine.

Every command is a frozen ``msgspec.Struct`` with typed arguments in one tagged union
(the tag is the command's name, e.g. ``"set_guidance"``). The engine, the command channel,
the app and every test double use these classes; nothing else lists command names.

On the wire (a command file, the ``args`` of a ``CommandReceived`` event) a command is its
name plus an object of arguments: :func:`to_wire` and :func:`from_wire` convert, checking
every argument's type and refusing unknown ones, so a typo is an error, never ignored.
A command that cannot be read becomes :class:`Unreadable`, which the engine acknowledges
with ``ok = false`` and the reason: nothing a viewer sends is dropped without a word.
"""
from __future__ import annotations

from typing import Any, ClassVar, Union

import msgspec

from core.record.events import all_subclasses


class CommandError(ValueError):
    """A name or arguments that are not a command of this vocabulary; ``str()`` says why."""


class Command(msgspec.Struct, frozen=True, kw_only=True, tag_field="command", forbid_unknown_fields=True):
    command: ClassVar[str] = "command"  # the tag, set on each class below

    def args(self) -> dict[str, Any]:
        """The arguments as plain data (what a command file and the acknowledgement hold)."""
        return to_wire(self)[1]


class Pause(Command, tag="pause"):
    """Pause at the next iteration boundary."""


class Resume(Command, tag="resume"):
    """Resume a paused run (or cancel a pause not yet taken)."""


class Stop(Command, tag="stop"):
    """Stop after the current iteration, or ``now`` (the iteration is interrupted and re-run on resume)."""

    now: bool = False
    reason: str = "stopped by the user"


class AbortTraining(Command, tag="abort_training"):
    """Cancel a training run in progress; its iteration is recorded as cancelled.

    ``iteration`` names the run the user confirmed: a viewer that lags behind the log must not
    cancel the run that started after the one it showed; with trials in parallel it picks one
    of them. None: every training run in progress (on one slot: the run in progress).
    """

    iteration: int | None = None


class SetGuidance(Command, tag="set_guidance"):
    """Replace the guidance the Level 1 LLM reads; ``pinned`` keeps it over Level 1.5's own guidance."""

    guidance: str
    pinned: bool = False


class Freeze(Command, tag="freeze"):
    name: str
    reason: str = "frozen by the user"


class Unfreeze(Command, tag="unfreeze"):
    name: str
    reason: str = "unfrozen by the user"


class ApproveMechanism(Command, tag="approve_mechanism"):
    """Activate a validated mechanism waiting for approval (None: the only one waiting)."""

    research_id: Union[str, None] = None


class RejectMechanism(Command, tag="reject_mechanism"):
    research_id: Union[str, None] = None
    reason: str = "rejected by the user"


class SetBudget(Command, tag="set_budget"):
    """Change the iteration budget; ``time_s`` is accepted only unchanged (it defines the measurement)."""

    iterations: Union[int, None] = None
    time_s: Union[float, None] = None


class SetLimits(Command, tag="set_limits"):
    """Change the spend caps and the stuck-loop rule: [budget] keys ("max_usd", "inner.max_tokens",
    "stuck_after"); None unsets a cap. A raised cap resumes a run its old value paused."""

    limits: dict[str, Union[float, None]]


class Unreadable(msgspec.Struct, frozen=True, kw_only=True):
    """A command that could not be read (a bad file, unknown name, wrong argument): refused with its reason."""

    name: str = ""
    args: dict[str, Any] = {}
    error: str = ""


_REGISTRY: dict[str, type[Command]] = {}
for _cls in all_subclasses(Command):
    _cls.command = _cls.__struct_config__.tag  # type: ignore[misc]
    _REGISTRY[_cls.command] = _cls

AnyCommand = Union[tuple(_REGISTRY.values())]  # type: ignore[valid-type]


def command_types() -> dict[str, type[Command]]:
    """Every command, by name."""
    return dict(_REGISTRY)


def to_wire(cmd: Command) -> tuple[str, dict[str, Any]]:
    data = msgspec.to_builtins(cmd)
    name = data.pop("command")
    return name, data


def from_wire(name: Any, args: Any = None) -> Command:
    """The command ``name`` with ``args``; :class:`CommandError` says what is wrong."""
    if not isinstance(name, str) or not name:
        raise CommandError(f"expected a command name, got {name!r}")
    cls = _REGISTRY.get(name)
    if cls is None:
        raise CommandError(f"unknown command {name!r} (commands: {', '.join(_REGISTRY)})")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise CommandError(f"{name}: the arguments must be an object, got {type(args).__name__}")
    if "command" in args:
        raise CommandError(f"{name}: 'command' is not an argument")
    try:
        return msgspec.convert({**args, "command": name}, cls)
    except msgspec.ValidationError as exc:
        raise CommandError(f"{name}: {exc}".replace("`$.", "`")) from None


def parse(name: Any, args: Any = None) -> Command | Unreadable:
    """Like :func:`from_wire`, but a bad command comes back as :class:`Unreadable` instead of raising."""
    try:
        return from_wire(name, args)
    except CommandError as exc:
        return Unreadable(name=name if isinstance(name, str) else "", args=args if isinstance(args, dict) else {},
                          error=str(exc))
