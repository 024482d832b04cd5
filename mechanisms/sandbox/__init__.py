"""The mechanism sandbox: the wall between generated code and the engine. One import for callers.

The parts live along their seams:

- :mod:`mechanisms.sandbox.policy` — the static check of a module's syntax tree;
- :mod:`mechanisms.sandbox.isolation` — the operating system's wall (rlimits, Landlock, seccomp);
- :mod:`mechanisms.sandbox.worker` / :mod:`mechanisms.sandbox.worker_client` — the isolated worker
  process and the engine's asynchronous side of its line-delimited JSON protocol;
- :mod:`mechanisms.sandbox.trace` — a recorded trace folded into the states the hooks see;
- :mod:`mechanisms.sandbox.validator` — parse, policy, import and dry run, with the report;
- :mod:`mechanisms.sandbox.fingerprint` — a module's behaviour on fixed probes, for duplicates;
- :mod:`mechanisms.sandbox.tripwire` — audit hooks inside the worker that make attempts visible.

The written contract of what hooks return stays beside the plug-in surface
(:mod:`mechanisms.contract`). This package imports only the standard library, the plug-in
surface and its own modules. Generated code never runs in the caller's process.

The names below load on first use, so the worker (``mechanisms.sandbox.worker``) starts
without importing asyncio and the validator.
"""
from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "ContractError": "mechanisms.contract", "check": "mechanisms.contract", "safe_name": "mechanisms.contract",
    "LEVELS": "mechanisms.sandbox.isolation", "Availability": "mechanisms.sandbox.isolation",
    "availability": "mechanisms.sandbox.isolation", "refusal": "mechanisms.sandbox.isolation",
    "check_policy": "mechanisms.sandbox.policy", "module_refusal": "mechanisms.sandbox.policy",
    "STEPS": "mechanisms.sandbox.validator", "Step": "mechanisms.sandbox.validator",
    "ValidationReport": "mechanisms.sandbox.validator", "validate": "mechanisms.sandbox.validator",
    "validate_async": "mechanisms.sandbox.validator",
    "HookError": "mechanisms.sandbox.worker_client", "Worker": "mechanisms.sandbox.worker_client",
    "WorkerFailed": "mechanisms.sandbox.worker_client", "open_mechanism": "mechanisms.sandbox.worker_client",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'mechanisms.sandbox' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


__all__ = sorted(_WHERE)
