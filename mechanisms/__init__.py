"""Search mechanisms: the plug-in surface (``base``) and the built-in library.

The built-ins are the three mechanisms the bilevel-autoresearch paper reports, and the
CMA-ES hint of the classical hybrid (which imports numpy and cmaes when it is created,
never on import). Importing this package loads only the standard library and these small
modules, never ``core``. Installed packages add mechanisms as entry points in the group
``bilevel.mechanisms`` (a class deriving from Mechanism, made with the options it declares,
core/record/registry.py); a built-in's name always means the built-in, and a name two packages
share means neither.
"""
from __future__ import annotations

from importlib import metadata

from mechanisms.bandit import Bandit
from mechanisms.base import Mechanism
from mechanisms.cmaes_hint import CmaesHint
from mechanisms.orthogonal import Orthogonal
from mechanisms.tabu import Tabu

BUILTINS: dict[str, type[Mechanism]] = {"tabu": Tabu, "bandit": Bandit, "orthogonal": Orthogonal,
                                        "cmaes_hint": CmaesHint}

ENTRY_POINT_GROUP = "bilevel.mechanisms"  # core/record/registry.py lists them by the same group


class UnknownMechanism(ValueError, KeyError):
    """No built-in mechanism has this name (catchable as ValueError or KeyError)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def builtin(name: str, **options: object) -> Mechanism:
    """A fresh instance of the built-in mechanism ``name`` (default settings), or an installed plugin's with ``options``."""
    try:
        cls = BUILTINS[name]
    except (KeyError, TypeError):
        points = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
        plugins = {ep.name: ep for ep in points}
        if isinstance(name, str) and sum(ep.name == name for ep in points) > 1:
            raise UnknownMechanism(f"two installed packages provide a mechanism named {name!r}; neither is used") from None
        if not isinstance(name, str) or name not in plugins:
            raise UnknownMechanism(f"unknown built-in mechanism {name!r}; choose one of: "
                                   f"{', '.join([*BUILTINS, *(n for n in plugins if n not in BUILTINS)])}") from None
        return plugins[name].load()(**options)
    return cls()


__all__ = ["BUILTINS", "Bandit", "CmaesHint", "Orthogonal", "Tabu", "UnknownMechanism", "builtin"]
