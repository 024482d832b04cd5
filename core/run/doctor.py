"""`bilevel doctor`: what this machine and config can do, checked one line at a time."""
from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
import sys
from pathlib import Path

from core.record.config import Config
from core.run.check import Check


def _torch_report() -> list[Check]:
    if importlib.util.find_spec("torch") is None:
        return [Check("torch", False, "not installed: pip install 'bilevel-autoresearch[train]'")]
    # A subprocess keeps a broken CUDA driver from taking doctor down with it.
    code = ("import torch;print(torch.__version__);print(torch.cuda.is_available());"
            "print(';'.join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return [Check("torch", False, "importing torch took over 120 s")]
    if out.returncode != 0:
        return [Check("torch", False, f"import failed: {out.stderr.strip().splitlines()[-1:]}")]
    version, cuda, names = (out.stdout.strip().splitlines() + ["", "", ""])[:3]
    checks = [Check("torch", True, version)]
    if cuda == "True":
        checks.append(Check("CUDA", True, names.replace(";", ", ")))
    else:
        checks.append(Check("CUDA", False, ("no CUDA device: a script that needs one cannot run here (the bundled train.py "
                                              "runs on the CPU with the cpu-tiny preset)"),
                            warning=True))
    return checks


def _data_dir(cfg: Config | None) -> Path:
    from baseline.prepare import data_root

    source = cfg.data.source if cfg else "stdlib"
    name = cfg.data.name if cfg and cfg.data.name else (source if source in ("stdlib", "climbmix") else Path(source).name)
    return data_root() / name


def _data_check(cfg: Config | None) -> Check:
    source = cfg.data.source if cfg else "stdlib"
    if source == "none":
        return Check("data", True, "the script finds its own data (data.source = none)")
    try:
        from baseline.prepare import data_ready
    except ImportError as exc:
        return Check("data", False, f"cannot check: {exc}")
    path = _data_dir(cfg)
    if data_ready(path):
        return Check("data", True, f"prepared at {path}")
    return Check("data", False, f"not prepared at {path}: run `bilevel prepare` (or it is built on first run)",
                 warning=True)


async def _endpoint_checks(cfg: Config) -> list[Check]:
    """The key, the model list, the context the server states, and the chat call the engine makes before a
    baseline (short where the context is known, else as long as our longest prompt), which also shows the
    response_format the endpoint accepts."""
    from core.levels.inner import longest_prompt_tokens
    from core.levels.preflight import PROBE_MAX_TOKENS, needed_context_tokens
    from core.services.endpoint_context import server_context
    from core.services.llm import PROBE_SCHEMA, LLMClient, LLMError, context_exceeded, probe_messages

    e = cfg.endpoint
    if e.api_key_env and not os.environ.get(e.api_key_env):
        return [Check("endpoint", False, f"environment variable {e.api_key_env} is not set")]
    client = LLMClient(e.base_url, e.model, api_key_env=e.api_key_env or None, timeout_s=min(e.timeout_s, 60.0),
                       max_retries=1, stream=e.stream, json_mode=e.json_mode, structured=e.structured)
    needed = needed_context_tokens(cfg)
    try:
        try:
            models: list[str] | None = await client.list_models()
            listing = ""
        except LLMError as exc:
            models, listing = None, str(exc)
        stated = await server_context(client)
        long_call = stated is None and not e.context_tokens
        tokens = longest_prompt_tokens(cfg) if long_call else 0
        try:
            await client.chat(probe_messages(tokens, "" if long_call else "A short check."), json=True,
                              schema=PROBE_SCHEMA, max_tokens=PROBE_MAX_TOKENS, stream=False)
            chat_error = None
        except LLMError as exc:
            chat_error = exc
    finally:
        await client.aclose()
    checks = []
    if models is not None:
        checks.append(Check("endpoint", True, f"{e.base_url} answers ({len(models)} models)"))
    if stated is not None:
        checks.append(Check("context", stated.tokens >= needed, f"{stated.tokens} tokens ({stated.source}); this "
                                                               f"run needs about {needed} at the least"))
    elif e.context_tokens:
        checks.append(Check("context", e.context_tokens >= needed, f"{e.context_tokens} tokens (configured; the "
                                                                  f"server does not say); needs about {needed}"))
    if chat_error is not None:
        if context_exceeded(chat_error):
            checks.append(Check("chat", False, f"a prompt of about {tokens} tokens does not fit the model's "
                                               f"context: {chat_error}"))
        else:
            checks.append(Check("chat", False, f"{e.model!r}: {chat_error}"))
        if models is None:
            checks.append(Check("endpoint", False, f"{e.base_url}: {listing}"))
        return checks
    checks.append(Check("chat", True, f"{e.model!r} answers a prompt of about {tokens} tokens" if long_call
                        else f"{e.model!r} answers a short prompt"))
    plain = client.structured_mode == "off"  # replies are parsed from free text: small models fail more often
    checks.append(Check("structured", not plain, f"response_format in force: {client.structured_mode} "
                                                 f"({client.structured_reason})", warning=plain))
    if models is not None and e.model not in models:
        listed = ", ".join(models[:8]) or "none listed"
        # The server answered the chat under this name, so it is only a warning.
        checks.append(Check("model", False, f"{e.model!r} is not listed by the endpoint (it lists: {listed}), "
                                            "but it answers to it", warning=True))
    elif models is not None:
        checks.append(Check("model", True, e.model))
    return checks + _schema_checks(cfg)


def _schema_checks(cfg: Config) -> list[Check]:
    """The JSON schema each level sends, compactly: what a decoder can enforce, and where it cannot."""
    from core.levels.reply_schemas import compact, critique_schema, proposal_schema, strategy_schema
    from core.run.script_doctor import constant_schema

    schema = constant_schema(cfg)
    if schema is None:
        return []
    levels = cfg.search.active_levels
    shown = [("Level 1", proposal_schema(schema, [], max_changes=cfg.search.max_changes,
                                         float_grid=cfg.endpoint.float_grid))]
    if "strategy" in levels:
        shown.append(("Level 1.5", strategy_schema(["CANDIDATE"], [])))
    if "research" in levels:
        shown.append(("Level 2 critique", critique_schema([])))
    checks = [Check("schema", True, f"{name}: {compact(s)}") for name, s in shown]
    floats = [n for n, p in schema.items() if p.kind == "float" and not p.locked]
    if floats and not cfg.endpoint.float_grid:
        checks.append(Check("schema", False, f"float bounds ({', '.join(floats)}) are sent as minimum/maximum, which "
                                            "llama.cpp does not enforce (we check them): endpoint.float_grid = true "
                                            "sends a grid of valid values instead", warning=True))
    return checks


async def _isolation_check(cfg: Config | None) -> Check:
    """Which wall generated mechanisms get here, proven by starting one worker behind it."""
    from mechanisms.sandbox.isolation import availability, refusal
    from mechanisms.sandbox.worker_client import Worker, WorkerFailed

    found = availability()
    configured = cfg.level2.isolation if cfg else "strict"
    refused = refusal(configured, found)
    if refused:
        return Check("isolation", False, f"available: {found.describe()}; {refused}", warning=True)
    try:
        worker = await Worker.start(level=configured, timeout_s=20.0)
    except WorkerFailed as exc:
        return Check("isolation", False, f"level2.isolation = {configured}: a worker could not start: {exc}")
    await worker.close()
    detail = f"in force: {worker.level} (worker start {worker.start_s:.2f} s); available: {found.describe()}"
    return Check("isolation", True, detail, warning=configured != "strict")


def _code_scope_check(cfg: Config | None) -> Check:
    """Whether the training wall edited code needs stands here (search.scope = "code"), proven by a probe run."""
    from core.services.code_run import wall_refusal

    wanted = cfg is not None and cfg.search.scope == "code"
    refused = wall_refusal(cfg.script.python or sys.executable if cfg else sys.executable)
    if refused:
        return Check("code scope", not wanted, refused, warning=not wanted)
    return Check("code scope", True, "the training wall stands here (user, network and PID namespaces, Landlock, "
                                     "seccomp)" + ("" if wanted else ': search.scope = "code" can run'))


async def run_checks(cfg: Config | None) -> list[Check]:
    checks = [Check("python", sys.version_info >= (3, 10), f"{platform.python_version()} ({sys.executable})")]
    checks += _torch_report()
    checks.append(await _isolation_check(cfg))
    checks.append(_code_scope_check(cfg))
    from core.run.script_doctor import data_epochs_check, script_checks

    checks += script_checks(cfg)
    checks.append(_data_check(cfg))
    if (cfg.data.source if cfg else "stdlib") != "none" and (epochs := data_epochs_check(cfg, _data_dir(cfg))):
        checks.append(epochs)
    if cfg is not None:
        from core.run.noise_doctor import noise_check

        checks.append(noise_check(cfg))
    if cfg is None:
        checks.append(Check("endpoint", True, "no config given: skipped", warning=True))
    elif cfg.offline:
        checks.append(Check("endpoint", True, "offline provider: no LLM needed"))
    else:
        checks += await _endpoint_checks(cfg)
    return checks
