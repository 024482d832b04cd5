"""Validation of LLM-generated search mechanisms before activation, and a runtime guard.

A generated mechanism is one Python module defining one :class:`~mechanisms.base.Mechanism`
subclass. :func:`validate` checks it in four steps, stopping at the first failure and
recording why, so the reason can go back to the LLM for a repair:

1. **parse** — ``ast.parse``; a syntax error gives line, column and message.
2. **policy** — a static check of the syntax tree (:func:`check_policy`, rules below).
3. **import** — in a separate Python process with a time limit; the process is killed
   when it overruns, so a module that hangs at import cannot hang the engine. A missing
   package is reported by name.
4. **dry run** — in that same process: instantiate the class, call ``on_attach`` and then
   every hook against the recorded trace, each call under ``hook_timeout_s``, checking
   what each hook returns (see :mod:`mechanisms._dryrun`).

Nothing falls back silently: :func:`load_mechanism` either returns an instance of the
module's mechanism class or raises :class:`MechanismLoadError` with the reason.

Policy rules (the static layer; it stops mistakes and the obvious escapes, while the
runtime guard below is the layer that holds when the static one is outwitted):

- imports: the standard library, ``mechanisms`` / ``mechanisms.base``, and the config's
  ``level2.allow_imports`` (an explicit allow-list entry wins over everything below).
  Installed third-party packages that are not allow-listed are refused; packages that
  are not installed at all are left to the import step, which names them as missing.
- forbidden standard-library modules: process control and IPC (subprocess,
  multiprocessing, concurrent, pty, signal, ...), networking (socket, ssl, http, urllib,
  asyncio, ...), interpreter internals (ctypes, importlib, gc, inspect, builtins, pickle,
  marshal, ...), file-system mutation (shutil, tempfile, sqlite3, ...), and threads
  (threading, _thread): a thread started by a hook escapes both the hook's time limit
  and the runtime guard, which marks threads. Every private ``_module`` is refused too.
- forbidden names: eval, exec, compile, __import__, breakpoint, input, globals, and
  ``open`` other than called directly with a literal read-only mode.
- forbidden calls: os.system/popen/exec*/spawn*/fork*/kill*, os file-system mutation
  (remove, unlink, rename, replace, mkdir, makedirs, ...), sys.modules/_getframe/settrace,
  and Path-style write methods (write_text, write_bytes, unlink, rename, touch, mkdir, ...).
- dunder and frame escapes: attributes such as __subclasses__, __globals__, __builtins__,
  __code__, __getattribute__, __mro__, f_globals, tb_frame — also inside string literals.
- ``getattr``/``setattr``/``delattr`` need a literal attribute name: a computed name is
  how the dunder rule is dodged, and a mechanism can keep dynamic data in a dict.
- exactly one class deriving from ``Mechanism`` at the module's top level.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable, Iterator, Optional

from mechanisms.base import Mechanism

STEPS = ("parse", "policy", "import", "dry_run")

#: Prefix of every protocol line the dry-run child writes; a per-run nonce follows it.
PROTOCOL_MARK = "@@bilevel-dryrun@@"

# --- policy tables --------------------------------------------------------------------

PROJECT_MODULES = ("mechanisms", "mechanisms.base")

FORBIDDEN_MODULES = frozenset({
    # processes, IPC and signals
    "subprocess", "multiprocessing", "concurrent", "pty", "tty", "termios", "signal", "pipes",
    "fcntl", "resource", "mmap", "posix", "nt", "msvcrt", "winreg",
    # threads escape the per-thread runtime guard and the hook time limit
    "threading",
    # networking
    "socket", "socketserver", "ssl", "select", "selectors", "asyncio", "asyncore", "asynchat",
    "http", "urllib", "ftplib", "smtplib", "smtpd", "telnetlib", "poplib", "imaplib", "nntplib",
    "xmlrpc", "wsgiref", "webbrowser",
    # interpreter internals and code loading
    "ctypes", "importlib", "imp", "pkgutil", "runpy", "zipimport", "code", "codeop", "builtins",
    "gc", "inspect", "pdb", "bdb", "trace", "faulthandler", "site", "sysconfig", "ensurepip",
    "venv", "distutils", "idlelib", "tkinter", "turtle", "turtledemo",
    # serialisation that runs code
    "pickle", "pickletools", "marshal", "shelve", "copyreg",
    # file-system mutation
    "shutil", "tempfile", "sqlite3", "dbm",
})

FORBIDDEN_NAMES = frozenset({
    "eval", "exec", "compile", "__import__", "breakpoint", "input", "globals",
    "__builtins__", "__loader__", "__spec__",
})

FORBIDDEN_QUALNAMES = frozenset({
    "os.system", "os.popen", "os.remove", "os.unlink", "os.rmdir", "os.removedirs", "os.rename",
    "os.renames", "os.replace", "os.makedirs", "os.mkdir", "os.mkfifo", "os.mknod", "os.fdopen",
    "os.write", "os.writev", "os.pwrite", "os.truncate", "os.ftruncate", "os.chmod", "os.lchmod",
    "os.chown", "os.lchown", "os.symlink", "os.link", "os.chdir", "os.chroot", "os.putenv",
    "os.unsetenv", "os._exit", "os.abort", "os.setuid", "os.setgid", "os.nice", "os.startfile",
    "os.utime", "os.dup2", "os.pipe", "os.openpty",
    "sys.modules", "sys._getframe", "sys.settrace", "sys.setprofile", "sys.addaudithook",
    "sys.setrecursionlimit", "sys.setswitchinterval", "sys.stdin", "sys.meta_path", "sys.path_hooks",
    "pathlib.Path.write_text", "pathlib.Path.write_bytes", "pathlib.Path.unlink", "pathlib.Path.rename",
    "pathlib.Path.replace", "pathlib.Path.touch", "pathlib.Path.mkdir", "pathlib.Path.rmdir",
})
FORBIDDEN_QUALPREFIXES = ("os.exec", "os.spawn", "os.posix_spawn", "os.fork", "os.kill", "os.open")

#: Method names that write to the file system whatever the object (pathlib-style).
WRITE_METHODS = frozenset({
    "write_text", "write_bytes", "unlink", "rename", "touch", "mkdir", "rmdir", "symlink_to",
    "hardlink_to", "link_to", "chmod", "lchmod",
})

#: Module-level functions that take (file, mode, ...) like the ``open`` builtin.
OPEN_FUNCTIONS = frozenset({"io.open", "codecs.open", "gzip.open", "bz2.open", "lzma.open", "tarfile.open"})

ESCAPE_ATTRS = frozenset({
    "__subclasses__", "__globals__", "__builtins__", "__code__", "__closure__", "__getattribute__",
    "__bases__", "__base__", "__mro__", "__loader__", "__spec__", "__import__", "__reduce__",
    "__reduce_ex__", "f_globals", "f_locals", "f_builtins", "f_back", "f_code", "tb_frame",
    "gi_frame", "cr_frame", "ag_frame", "gi_code", "cr_code",
})
_ESCAPE_DUNDERS = tuple(sorted(a for a in ESCAPE_ATTRS if a.startswith("__")))

_WRITE_MODE_CHARS = frozenset("wax+")
_MODE_CHARS = frozenset("rwxabt+U")


class MechanismLoadError(Exception):
    """A validated mechanism module could not be loaded; the message says why."""


# --- the report -------------------------------------------------------------------------

@dataclass
class Step:
    name: str
    ok: bool
    detail: str
    seconds: float = 0.0


@dataclass
class ValidationReport:
    ok: bool
    steps: list[Step]
    class_name: Optional[str] = None
    hooks: list[str] = field(default_factory=list)
    missing_packages: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    #: The module file the import and dry run used (absent when parse or policy failed).
    module_path: Optional[str] = None

    def failure(self) -> str:
        """The first failing step's reason as one paragraph, fit to send back for a repair."""
        for step in self.steps:
            if not step.ok:
                return f"The mechanism failed the {step.name.replace('_', ' ')} check: {step.detail}"
        return ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_markdown(self) -> str:
        verdict = "passed" if self.ok else "FAILED"
        title = f"### Mechanism validation {verdict}"
        if self.class_name:
            title += f": `{self.class_name}`"
        lines = [title, "", "| step | result | seconds | detail |", "|---|---|---|---|"]
        for step in self.steps:
            detail = step.detail.replace("|", "\\|").replace("\n", "<br>")
            lines.append(f"| {step.name} | {'ok' if step.ok else 'failed'} | {step.seconds:.2f} | {detail} |")
        if self.hooks:
            lines += ["", "Hooks: " + ", ".join(f"`{h}`" for h in self.hooks)]
        if self.missing_packages:
            lines += ["", "Missing packages: " + ", ".join(f"`{p}`" for p in self.missing_packages)]
        if self.violations:
            lines += ["", "Policy violations:"] + [f"- {v}" for v in self.violations]
        return "\n".join(lines) + "\n"


# --- step 2: the static policy -------------------------------------------------------------

@dataclass(frozen=True)
class Violation:
    rule: str
    line: int
    snippet: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.rule}: {self.message} — `{self.snippet}`"


def check_policy(source: str, allow_imports: Iterable[str] = ()) -> list[str]:
    """Policy violations of a module's source, one string each (rule, line, snippet)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        return [f"line {exc.lineno or 0}: syntax: {exc.msg}"]
    return [str(v) for v in _policy_violations(tree, source, tuple(allow_imports))]


def _policy_violations(tree: ast.Module, source: str, allow: tuple[str, ...]) -> list[Violation]:
    checker = _PolicyChecker(source, allow)
    checker.collect_aliases(tree)
    checker.visit(tree)
    checker.check_mechanism_classes(tree)
    return sorted(dict.fromkeys(checker.found), key=lambda v: v.line)  # one report per (rule, line, message)


def _is_allowed_by_config(dotted: str, allow: tuple[str, ...]) -> bool:
    return any(dotted == a or dotted.startswith(a + ".") for a in allow)


def _is_installed(top: str) -> bool:
    try:
        return importlib.util.find_spec(top) is not None  # a top-level name: nothing is executed
    except (ImportError, ValueError):
        return False


def module_refusal(dotted: str, allow: tuple[str, ...] = ()) -> Optional[str]:
    """Why importing ``dotted`` is refused, or None when it may be imported."""
    top = dotted.split(".")[0]
    if _is_allowed_by_config(dotted, allow) or dotted in PROJECT_MODULES:
        return None
    if top == "mechanisms":
        return "only mechanisms.base may be imported from the project"
    if top.startswith("_") and top != "__future__":
        return f"private interpreter module '{top}' is not allowed"
    if top in FORBIDDEN_MODULES:
        return f"module '{top}' is not allowed in a search mechanism"
    if top in sys.stdlib_module_names:
        return None
    if _is_installed(top):
        return (f"'{top}' is neither in the standard library nor in level2.allow_imports "
                "(add it there to allow it)")
    return None  # not installed: the import step reports it as a missing package


def _is_forbidden_qualname(q: str) -> bool:
    return q in FORBIDDEN_QUALNAMES or q.startswith(FORBIDDEN_QUALPREFIXES)


class _PolicyChecker(ast.NodeVisitor):
    def __init__(self, source: str, allow: tuple[str, ...]) -> None:
        self.source = source
        self.lines = source.splitlines()
        self.allow = allow
        self.aliases: dict[str, str] = {}  # local name -> dotted name it was imported as
        self.found: list[Violation] = []
        self._called_open: set[int] = set()  # ids of `open` Name nodes that are called directly

    # --- helpers ---

    def flag(self, node: ast.AST, rule: str, message: str) -> None:
        line = getattr(node, "lineno", 1)
        snippet = ast.get_source_segment(self.source, node) or ""
        snippet = snippet.splitlines()[0] if snippet else (self.lines[line - 1] if 0 < line <= len(self.lines) else "")
        snippet = snippet.strip()
        if len(snippet) > 80:
            snippet = snippet[:77] + "..."
        self.found.append(Violation(rule, line, snippet, message))

    def collect_aliases(self, tree: ast.AST) -> None:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname:
                        self.aliases[a.asname] = a.name
                    else:
                        top = a.name.split(".")[0]
                        self.aliases[top] = top
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for a in node.names:
                    if a.name != "*":
                        self.aliases[a.asname or a.name] = f"{node.module}.{a.name}"

    def qualname(self, node: ast.AST) -> Optional[str]:
        """The dotted name an expression like ``os.path.join`` refers to, if rooted in an import."""
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self.qualname(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    # --- imports ---

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            reason = module_refusal(a.name, self.allow)
            if reason:
                self.flag(node, "forbidden-import", reason)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            self.flag(node, "relative-import", "relative imports are not allowed; import mechanisms.base")
            return
        module = node.module or ""
        reason = module_refusal(module, self.allow)
        if reason:
            self.flag(node, "forbidden-import", reason)
            return
        for a in node.names:
            if a.name == "*":
                if module != "mechanisms.base":
                    self.flag(node, "star-import", "import names explicitly")
                continue
            dotted = f"{module}.{a.name}"
            if module == "mechanisms" and a.name != "base":
                self.flag(node, "forbidden-import", "only mechanisms.base may be imported from the project")
            elif _is_forbidden_qualname(dotted):
                self.flag(node, "forbidden-call", f"'{dotted}' is not allowed in a search mechanism")

    # --- names, attributes, literals ---

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in FORBIDDEN_NAMES:
            self.flag(node, "forbidden-name", f"'{node.id}' is not allowed in a search mechanism")
        elif node.id == "open" and id(node) not in self._called_open:
            self.flag(node, "open-reference", "call open() directly with a literal read-only mode")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr in ESCAPE_ATTRS:
            self.flag(node, "dunder-escape", f"attribute '{node.attr}' reaches interpreter internals")
        else:
            q = self.qualname(node)
            if q and _is_forbidden_qualname(q):
                self.flag(node, "forbidden-call", f"'{q}' is not allowed in a search mechanism")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and any(d in node.value for d in _ESCAPE_DUNDERS):
            self.flag(node, "dunder-escape", "string names an interpreter internal")

    # --- calls ---

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id == "open":
            self._called_open.add(id(func))
            self._check_open_mode(node, 1)
        elif isinstance(func, ast.Name) and func.id in ("getattr", "setattr", "delattr"):
            self._check_attribute_name(node, func.id)
        elif isinstance(func, ast.Attribute):
            q = self.qualname(func)
            if q in OPEN_FUNCTIONS:
                self._check_open_mode(node, 1)
            elif func.attr == "open" and q is None:
                self._check_method_open_mode(node)
            elif func.attr in WRITE_METHODS and not (q and _is_forbidden_qualname(q)):
                self.flag(node, "filesystem-write", f".{func.attr}() writes to the file system")
        self.generic_visit(node)

    def _mode_arg(self, node: ast.Call, index: int) -> tuple[bool, Optional[ast.expr]]:
        """(found, expression) of the mode argument; ``**kwargs`` counts as an unknown mode."""
        for kw in node.keywords:
            if kw.arg == "mode":
                return True, kw.value
            if kw.arg is None:
                return True, None
        if any(isinstance(a, ast.Starred) for a in node.args):
            return True, None
        if len(node.args) > index:
            return True, node.args[index]
        return False, None

    def _check_mode_literal(self, node: ast.Call, mode: Optional[ast.expr]) -> None:
        if not (isinstance(mode, ast.Constant) and isinstance(mode.value, str)):
            self.flag(node, "open-mode", "open() needs a literal read-only mode such as 'r'")
        elif _WRITE_MODE_CHARS & set(mode.value):
            self.flag(node, "open-for-write", f"opening a file with mode {mode.value!r} writes to the file system")

    def _check_open_mode(self, node: ast.Call, index: int) -> None:
        found, mode = self._mode_arg(node, index)
        if found:
            self._check_mode_literal(node, mode)

    def _check_method_open_mode(self, node: ast.Call) -> None:
        # obj.open(mode) (pathlib) or obj.open(name, mode) (zipfile): the first literal that looks like a mode
        for kw in node.keywords:
            if kw.arg in ("mode", None):
                self._check_mode_literal(node, kw.value if kw.arg else None)
                return
        for arg in node.args[:2]:
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value \
                    and set(arg.value) <= _MODE_CHARS:
                self._check_mode_literal(node, arg)
                return

    def _check_attribute_name(self, node: ast.Call, fn: str) -> None:
        name = node.args[1] if len(node.args) > 1 else None
        if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
            self.flag(node, "dynamic-attribute", f"{fn}() needs a literal attribute name; keep dynamic data in a dict")
        elif name.value in ESCAPE_ATTRS:
            self.flag(node, "dunder-escape", f"attribute '{name.value}' reaches interpreter internals")

    # --- the mechanism class ---

    def check_mechanism_classes(self, tree: ast.Module) -> None:
        mechanism_names: set[str] = set()
        found: list[ast.ClassDef] = []
        for node in tree.body:
            if not isinstance(node, ast.ClassDef):
                continue
            for base in node.bases:
                if self.qualname(base) == "mechanisms.base.Mechanism" or (
                        isinstance(base, ast.Name) and base.id in mechanism_names):
                    mechanism_names.add(node.name)
                    found.append(node)
                    break
        if not found:
            self.flag(tree.body[0] if tree.body else tree, "mechanism-class",
                      "define exactly one class deriving from mechanisms.base.Mechanism; found none")
        elif len(found) > 1:
            names = ", ".join(c.name for c in found)
            self.flag(found[1], "mechanism-class",
                      f"define exactly one class deriving from Mechanism; found {len(found)} ({names})")


def import_dependencies(source: str) -> None:
    """Import the modules a policy-approved source imports, before its own code runs.

    They are trusted code (standard library or allow-listed), and some do at import what
    the runtime guard refuses to mechanism code (numpy sets environment variables, torch
    loads libraries through ctypes), so they are imported outside the guard.
    ModuleNotFoundError propagates: it names a missing package.
    """
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for a in node.names:
                importlib.import_module(a.name)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level and node.module != "__future__":
            module = importlib.import_module(node.module)
            for a in node.names:
                if a.name != "*" and not hasattr(module, a.name):
                    try:  # `from package import submodule`
                        importlib.import_module(f"{node.module}.{a.name}")
                    except ModuleNotFoundError as exc:
                        if exc.name != f"{node.module}.{a.name}":
                            raise


# --- steps 3 and 4: import and dry run in a child process -------------------------------------

_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
# sys.path[0] becomes the folder holding this package, not the child's working folder,
# so a generated module cannot import its neighbours in the artifacts folder.
_CHILD_BOOT = "import sys; sys.path[0] = sys.argv[1]; from mechanisms._dryrun import main; raise SystemExit(main())"
_SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL")
_STDERR_TAIL = 4000


def validate(source: str, *, records: list[dict], schema: dict[str, dict], allow_imports: Iterable[str] = (),
             import_timeout_s: float = 20.0, hook_timeout_s: float = 2.0, workdir: Path,
             module_name: Optional[str] = None, dry_run_timeout_s: Optional[float] = None) -> ValidationReport:
    """Check generated mechanism code in four steps; see the module docstring.

    The module is written to ``workdir/<module_name>.py`` (default: a name from the source's
    hash). ``dry_run_timeout_s`` bounds all hook calls together (default: ``import_timeout_s``).
    Synchronous and thread-safe: call it through ``asyncio.to_thread`` from an event loop.
    """
    allow = tuple(allow_imports)
    steps: list[Step] = []
    report = ValidationReport(ok=False, steps=steps)

    started = time.monotonic()
    try:
        tree = ast.parse(source, filename="<mechanism>")
        compile(tree, "<mechanism>", "exec", dont_inherit=True)  # errors only the compiler sees, e.g. __future__
    except SyntaxError as exc:
        where = f"line {exc.lineno}, column {exc.offset}" if exc.lineno else "unknown position"
        text = f" in `{exc.text.strip()}`" if exc.text and exc.text.strip() else ""
        steps.append(Step("parse", False, f"syntax error at {where}: {exc.msg}{text}", time.monotonic() - started))
        return report
    steps.append(Step("parse", True, f"{len(source.splitlines())} lines", time.monotonic() - started))

    started = time.monotonic()
    found = _policy_violations(tree, source, allow)
    if found:
        report.violations = [str(v) for v in found]
        listing = "; ".join(report.violations)
        steps.append(Step("policy", False, f"{len(found)} policy violation(s): {listing}", time.monotonic() - started))
        return report
    steps.append(Step("policy", True, "no violations", time.monotonic() - started))

    name = module_name or "mechanism_" + hashlib.sha256(source.encode("utf-8")).hexdigest()[:12]
    try:
        _check_module_name(name)
    except MechanismLoadError as exc:
        raise ValueError(str(exc)) from None
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"{name}.py"
    _write_atomic(path, source)
    report.module_path = str(path)
    budget = dry_run_timeout_s if dry_run_timeout_s is not None else import_timeout_s
    _run_child(report, path, name, records, schema, import_timeout_s, hook_timeout_s, budget)
    report.ok = len(report.steps) == len(STEPS) and all(s.ok for s in report.steps)
    return report


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _child_env() -> dict[str, str]:
    # The child needs the engine's Python environment, not its API keys.
    env = {k: v for k, v in os.environ.items() if not any(m in k.upper() for m in _SECRET_MARKERS)}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


class _Child:
    """The dry-run process: protocol events arrive on a queue; stderr is kept as a tail."""

    def __init__(self, payload: dict[str, Any], cwd: Path) -> None:
        self.nonce = payload["nonce"]
        self.events: "queue.Queue[Optional[dict[str, Any]]]" = queue.Queue()
        self._stderr = bytearray()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD_BOOT, _PACKAGE_ROOT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, cwd=cwd, env=_child_env(), start_new_session=True)
        data = json.dumps(payload, default=str).encode("utf-8")
        self._threads = [
            threading.Thread(target=self._feed, args=(data,), daemon=True, name="dryrun-stdin"),
            threading.Thread(target=self._read_events, daemon=True, name="dryrun-stdout"),
            threading.Thread(target=self._read_stderr, daemon=True, name="dryrun-stderr"),
        ]
        for t in self._threads:
            t.start()

    def _feed(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.close()
        except OSError:
            pass  # the child died early; its exit is reported by the reader

    def _read_events(self) -> None:
        assert self.proc.stdout is not None
        prefix = f"{PROTOCOL_MARK}{self.nonce} ".encode()
        for line in self.proc.stdout:
            if line.startswith(prefix):
                try:
                    self.events.put(json.loads(line[len(prefix):].decode("utf-8")))
                except ValueError:
                    continue
        self.events.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for chunk in iter(lambda: self.proc.stderr.read(4096), b""):  # type: ignore[union-attr]
            self._stderr += chunk
            del self._stderr[:-_STDERR_TAIL]

    def next_event(self, deadline: float) -> "dict[str, Any] | None | str":
        """The next event; None when the child closed its output; "timeout" past the deadline."""
        try:
            return self.events.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return "timeout"

    def stderr_tail(self) -> str:
        return self._stderr.decode("utf-8", "replace").strip()[-1500:]

    def finish(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                self.kill()
        for t in self._threads:
            t.join(timeout=2.0)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    def kill(self) -> None:
        if self.proc.poll() is not None:
            return  # already reaped: its pid may belong to someone else now
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, AttributeError):
            self.proc.kill()
        self.proc.wait()


def _run_child(report: ValidationReport, path: Path, module_name: str, records: list[dict],
               schema: dict[str, dict], import_timeout_s: float, hook_timeout_s: float, budget_s: float) -> None:
    scratch = Path(tempfile.mkdtemp(prefix=f".{module_name}-", dir=path.parent))
    payload = {"nonce": secrets.token_hex(8), "path": str(path), "module_name": module_name,
               "records": records, "schema": schema, "hook_timeout_s": hook_timeout_s,
               "write_root": str(scratch)}
    started = time.monotonic()
    child = _Child(payload, scratch)
    try:
        imported_at = _import_phase(report, child, started, import_timeout_s)
        if imported_at is not None:
            _dry_run_phase(report, child, imported_at, hook_timeout_s, budget_s)
    finally:
        child.finish()
        shutil.rmtree(scratch, ignore_errors=True)


def _died(child: _Child) -> str:
    rc = child.proc.wait()
    tail = child.stderr_tail()
    return f"the check process exited unexpectedly (exit code {rc})" + (f": {tail}" if tail else "")


def _import_phase(report: ValidationReport, child: _Child, started: float, timeout_s: float) -> Optional[float]:
    """Wait for the child's import verdict; returns when the dry run began, or None on failure."""
    event = child.next_event(started + timeout_s)
    elapsed = time.monotonic() - started
    if event == "timeout":
        child.kill()
        report.steps.append(Step("import", False, (
            f"importing the module did not finish within {timeout_s:g} s and its process was killed; "
            "top-level code must not loop or block"), elapsed))
        return None
    if not isinstance(event, dict):
        report.steps.append(Step("import", False, _died(child), elapsed))
        return None
    if event.get("event") == "import_failed":
        if event.get("missing"):
            report.missing_packages = [event["missing"]]
        report.steps.append(Step("import", False, event.get("detail", "import failed"), elapsed))
        return None
    report.class_name = event.get("class_name")
    report.hooks = list(event.get("hooks", []))
    report.steps.append(Step("import", True, (
        f"class {report.class_name} overrides {', '.join(report.hooks)}"), elapsed))
    return time.monotonic()


def _dry_run_phase(report: ValidationReport, child: _Child, started: float, hook_timeout_s: float,
                   budget_s: float) -> None:
    # The child stops a runaway hook itself (SIGALRM); this deadline catches one that cannot be
    # interrupted, e.g. a long computation inside a C function.
    grace = max(1.0, hook_timeout_s)
    overall = started + budget_s
    deadline = overall
    hook, call = "__init__", 0
    while True:
        event = child.next_event(min(deadline, overall))
        elapsed = time.monotonic() - started
        if event == "timeout":
            child.kill()
            if time.monotonic() >= overall:
                detail = (f"the dry run did not finish within {budget_s:g} s (at {hook}, call {call}); "
                          "hooks must be fast")
            else:
                detail = f"{hook} did not return within {hook_timeout_s:g} s (call {call}) and was killed"
            report.steps.append(Step("dry_run", False, detail, elapsed))
            return
        if not isinstance(event, dict):
            report.steps.append(Step("dry_run", False, f"{_died(child)} (during {hook}, call {call})", elapsed))
            return
        kind = event.get("event")
        if kind == "hook":
            hook, call = event.get("hook", "?"), int(event.get("call", 0))
            deadline = time.monotonic() + hook_timeout_s + grace
        elif kind == "done":
            report.steps.append(Step("dry_run", bool(event.get("ok")), event.get("detail", ""), elapsed))
            return


# --- in-process loading -------------------------------------------------------------------------

class _SourceOnlyLoader(importlib.machinery.SourceFileLoader):
    """Loads from source and never writes __pycache__ next to session artifacts."""

    def set_data(self, path: str, data: bytes, *, _mode: int = 0o666) -> None:
        return None


def _check_module_name(name: str) -> None:
    """A generated module must not replace a real module in sys.modules."""
    existing = sys.modules.get(name)
    if not name.isidentifier() or name in sys.stdlib_module_names or name.split(".")[0] in ("mechanisms", "core") \
            or (existing is not None and not isinstance(getattr(existing, "__loader__", None), _SourceOnlyLoader)):
        raise MechanismLoadError(f"{name!r} cannot name a generated mechanism module")


def import_module_file(path: Path, module_name: str) -> ModuleType:
    """Execute a module file under ``module_name`` (no sys.path changes, no relative imports)."""
    loader = _SourceOnlyLoader(module_name, str(path))
    spec = importlib.util.spec_from_file_location(module_name, str(path), loader=loader)
    if spec is None:
        raise MechanismLoadError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    previous = sys.modules.get(module_name)
    sys.modules[module_name] = module  # dataclasses and typing look classes' modules up here
    try:
        loader.exec_module(module)
    except BaseException:
        if previous is None:
            sys.modules.pop(module_name, None)
        else:
            sys.modules[module_name] = previous
        raise
    return module


def find_mechanism_class(module: ModuleType) -> type[Mechanism]:
    """The one Mechanism subclass a module defines; MechanismLoadError unless exactly one."""
    classes = [obj for obj in vars(module).values()
               if isinstance(obj, type) and issubclass(obj, Mechanism) and obj is not Mechanism
               and obj.__module__ == module.__name__]
    if len(classes) != 1:
        names = ", ".join(c.__name__ for c in classes) or "none"
        raise MechanismLoadError(f"the module must define exactly one Mechanism subclass; found {names}")
    cls = classes[0]
    if not isinstance(cls.name, str):
        raise MechanismLoadError(f"{cls.__name__}.name must be a string, not {type(cls.name).__name__}")
    if not cls.overridden_hooks():
        raise MechanismLoadError(f"{cls.__name__} overrides none of the hooks, so it would do nothing")
    return cls


def load_mechanism(path: Path, module_name: str, *, allow_imports: Iterable[str] = (),
                   write_root: Optional[Path] = None) -> Mechanism:
    """Load an already validated module file and return an instance of its mechanism class.

    The policy is checked again (the file may have changed since validation), and the
    module's top level and constructor run under :func:`runtime_guard`. Every failure
    raises :class:`MechanismLoadError` with the reason; nothing falls back.
    """
    path = Path(path)
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MechanismLoadError(f"cannot read {path}: {exc}") from exc
    violations = check_policy(source, allow_imports)
    if violations:
        raise MechanismLoadError(f"{path.name} breaks the sandbox policy: " + "; ".join(violations))
    _check_module_name(module_name)
    try:
        import_dependencies(source)
        with runtime_guard(write_root):
            module = import_module_file(path, module_name)
            cls = find_mechanism_class(module)
            return cls()
    except MechanismLoadError:
        raise
    except ModuleNotFoundError as exc:
        raise MechanismLoadError(f"missing package '{exc.name}' while loading {path.name}") from exc
    except BaseException as exc:  # noqa: BLE001 - any failure to load is reported, never swallowed
        raise MechanismLoadError(f"loading {path.name} failed: {type(exc).__name__}: {exc}") from exc


# --- the runtime guard ------------------------------------------------------------------------

@dataclass(eq=False)
class GuardScope:
    """One marked stretch of a thread; ``blocked`` lists what was refused, even if swallowed."""

    write_root: Optional[str]
    blocked: list[str] = field(default_factory=list)


_marks = threading.local()
_install_lock = threading.Lock()
_installed = False

_BLOCKED_EVENTS = frozenset({
    "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
    "os.kill", "os.killpg", "os.startfile", "os.putenv", "os.unsetenv", "os.chdir", "os.chmod", "os.chown",
    "os.chflags", "os.lchflags", "os.link", "os.symlink", "os.setxattr", "os.removexattr",
    "sys.addaudithook", "sys.settrace", "sys.setprofile", "builtins.input", "builtins.breakpoint",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents", "resource.setrlimit", "resource.prlimit",
    "signal.pthread_kill", "pickle.find_class", "webbrowser.open", "sqlite3.connect",
})
_BLOCKED_PREFIXES = ("socket.", "ctypes.", "shutil.", "subprocess.", "http.client.", "urllib.", "ftplib.",
                     "smtplib.", "poplib.", "imaplib.", "nntplib.", "telnetlib.", "sqlite3.", "_winapi.",
                     "winreg.")
# Path-changing events allowed inside the write root: event -> (indices of paths, index of dir_fd args)
_PATH_EVENTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "os.remove": ((0,), (1,)), "os.rmdir": ((0,), (1,)), "os.mkdir": ((0,), (2,)),
    "os.rename": ((0, 1), (2, 3)), "os.utime": ((0,), (3,)), "os.truncate": ((0,), ()),
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def _inside(path: Any, root: Optional[str]) -> bool:
    if root is None or isinstance(path, int):
        return False
    try:
        resolved = os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError):
        return False
    return resolved == root or resolved.startswith(root.rstrip(os.sep) + os.sep)


def _opens_for_write(mode: Any, flags: Any) -> bool:
    if isinstance(mode, str):
        return bool(_WRITE_MODE_CHARS & set(mode))
    return isinstance(flags, int) and bool(flags & _WRITE_FLAGS)


def _judge(event: str, args: tuple[Any, ...], root: Optional[str]) -> Optional[str]:
    """Why an audit event is refused in mechanism code, or None."""
    if event in _BLOCKED_EVENTS or event.startswith(_BLOCKED_PREFIXES):
        return f"{event} is not allowed in mechanism code"
    if event == "open":
        path, mode, flags = (tuple(args) + (None, None, None))[:3]
        if _opens_for_write(mode, flags) and not _inside(path, root):
            where = f"outside {root}" if root else "(no writable folder)"
            return f"opening {path!r} for writing {where} is not allowed"
        return None
    spec = _PATH_EVENTS.get(event)
    if spec is not None:
        paths, dir_fds = spec
        if any(i < len(args) and args[i] not in (None, -1) for i in dir_fds) or \
                not all(i < len(args) and _inside(args[i], root) for i in paths):
            shown = ", ".join(repr(args[i]) for i in paths if i < len(args))
            return f"{event}({shown}) outside the writable folder is not allowed"
    return None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    stack = getattr(_marks, "stack", None)
    if not stack or getattr(_marks, "busy", False):
        return
    scope = stack[-1]
    _marks.busy = True  # path resolution below must not re-enter the hook
    try:
        reason = _judge(event, args, scope.write_root)
    finally:
        _marks.busy = False
    if reason:
        scope.blocked.append(reason)
        raise PermissionError(f"mechanism sandbox: {reason}")


def _ensure_audit_hook() -> None:
    global _installed
    with _install_lock:
        if not _installed:
            sys.addaudithook(_audit)  # process-wide and permanent; a no-op for unmarked threads
            _installed = True


@contextmanager
def runtime_guard(write_root: Optional[Path]) -> Iterator[GuardScope]:
    """Mark the current thread as running mechanism code until the block ends.

    While marked, the thread may not start processes, use sockets or ctypes, change the
    process (environment, working folder, audit hooks) or write files outside
    ``write_root`` (None: nowhere); such operations raise PermissionError and are listed
    in the yielded scope's ``blocked``. Other threads are unaffected.
    """
    _ensure_audit_hook()
    root = os.path.realpath(write_root) if write_root is not None else None
    scope = GuardScope(root)
    stack: list[GuardScope] = _marks.__dict__.setdefault("stack", [])
    stack.append(scope)
    try:
        yield scope
    finally:
        stack.remove(scope)
