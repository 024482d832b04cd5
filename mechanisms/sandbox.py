"""The mechanism sandbox's public surface, one import for callers: validate, check, isolate.

The parts live along their seams:

- :mod:`mechanisms.policy` — the static check of a module's syntax tree;
- :mod:`mechanisms.contract` — the written contract of what hooks receive and return;
- :mod:`mechanisms.isolation` — the operating system's wall (rlimits, Landlock, seccomp);
- :mod:`mechanisms.worker` / :mod:`mechanisms.worker_client` — the isolated worker process
  and the engine's asynchronous side of its line-delimited JSON protocol;
- :mod:`mechanisms.validator` — parse, policy, import and dry run, with the report;
- :mod:`mechanisms.tripwire` — audit hooks inside the worker that make attempts visible.

Generated code never runs in the caller's process.
"""
from __future__ import annotations

from mechanisms.contract import ContractError, check, safe_name
from mechanisms.isolation import LEVELS, Availability, availability, refusal
from mechanisms.policy import check_policy, module_refusal
from mechanisms.validator import STEPS, Step, ValidationReport, validate, validate_async
from mechanisms.worker_client import HookError, Worker, WorkerFailed, open_mechanism


__all__ = ["LEVELS", "STEPS", "Availability", "ContractError", "HookError", "Step",
           "ValidationReport", "Worker", "WorkerFailed", "availability", "check", "check_policy",
           "module_refusal", "open_mechanism", "refusal", "safe_name", "validate", "validate_async"]
