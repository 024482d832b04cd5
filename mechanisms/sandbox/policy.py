"""The static layer of the mechanism sandbox: a policy check of generated code's syntax tree.

It stops mistakes and the obvious escapes before any line runs, and its reasons go back
to the LLM for a repair; the wall that holds when it is outwitted is the operating
system's, around the worker process (:mod:`mechanisms.sandbox.isolation`). Rules:

- imports: the standard library, ``mechanisms`` / ``mechanisms.base``, and the config's
  ``level2.allow_imports`` (an explicit allow-list entry wins over everything below).
  Installed third-party packages that are not allow-listed are refused; packages that
  are not installed at all are left to the import step, which names them as missing.
- forbidden standard-library modules: process control and IPC (subprocess,
  multiprocessing, concurrent, pty, signal, ...), networking (socket, ssl, http, urllib,
  asyncio, ...), interpreter internals (ctypes, importlib, gc, inspect, builtins, pickle,
  marshal, ...), file-system mutation (shutil, tempfile, sqlite3, ...), and threads
  (threading, _thread): a thread started by a hook escapes both the hook's time limit
  and the worker's tripwire, which marks threads. Every private ``_module`` is refused too.
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
import importlib.util
import sys
from dataclasses import dataclass
from typing import Iterable, Optional

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
    "gi_frame", "cr_frame", "ag_frame", "gi_code", "cr_code", "__del__",
})
_ESCAPE_DUNDERS = tuple(sorted(a for a in ESCAPE_ATTRS if a.startswith("__")))

_WRITE_MODE_CHARS = frozenset("wax+")
_MODE_CHARS = frozenset("rwxabt+U")


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
