"""Search mechanisms: the plug-in surface (``base``) and the built-in library.

The built-ins are the three mechanisms the bilevel-autoresearch paper reports, and the
CMA-ES hint of the classical hybrid (which imports numpy and cmaes when it is created,
never on import). Importing this package loads only the standard library and these small
modules, never ``core``.
"""
from __future__ import annotations

from mechanisms.bandit import Bandit
from mechanisms.base import Mechanism
from mechanisms.cmaes_hint import CmaesHint
from mechanisms.orthogonal import Orthogonal
from mechanisms.tabu import Tabu

BUILTINS: dict[str, type[Mechanism]] = {"tabu": Tabu, "bandit": Bandit, "orthogonal": Orthogonal,
                                        "cmaes_hint": CmaesHint}


class UnknownMechanism(ValueError, KeyError):
    """No built-in mechanism has this name (catchable as ValueError or KeyError)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def builtin(name: str) -> Mechanism:
    """A fresh instance of the built-in mechanism ``name``, with its default settings."""
    try:
        cls = BUILTINS[name]
    except (KeyError, TypeError):
        raise UnknownMechanism(
            f"unknown built-in mechanism {name!r}; choose one of: {', '.join(BUILTINS)}") from None
    return cls()


__all__ = ["BUILTINS", "Bandit", "CmaesHint", "Orthogonal", "Tabu", "UnknownMechanism", "builtin"]
