"""Build llama.cpp's own `llama-server` once, from the pinned llama-cpp-python sdist, for the test suite.

Run as ``python tests/support/build_llama_server.py`` (an install step of `.ci/run` and the README's
test command, before pytest). It downloads the sdist with pip, checks its sha256 against the pin,
extracts ``vendor/llama.cpp``, builds only the ``llama-server`` target with cmake (Ninja where
present, else make) and installs the binary as
``$XDG_CACHE_HOME/bilevel/llama-server/<version>/llama-server`` (``~/.cache`` when unset). With that
binary present it does nothing. tests/test_llama_server.py finds it there, or wherever
``BILEVEL_LLAMA_SERVER`` names one; ``BILEVEL_LLAMA_SERVER=off`` skips the build and that suite.

Without cmake, a C/C++ compiler or a build tool it says which are missing and exits 2; as root on a
Debian-like system (apt-get present) it installs them first with
``apt-get install -y cmake g++ ninja-build`` unless ``--no-apt`` is given. A failed download, a
wrong hash or a failed build exits 1; the sources and build folder are kept under
``<cache>/work`` so a second call resumes the build, and removed once the binary is installed.
A call that finds another build running (a lock file in the cache folder) waits for it.

The standard library only: it runs before anything else is importable.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

VERSION = "0.3.36"
SDIST = f"llama_cpp_python-{VERSION}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"  # PyPI's, checked 2026-12-01
SOURCE_IN_SDIST = f"llama_cpp_python-{VERSION}/vendor/llama.cpp"
ENV_VAR = "BILEVEL_LLAMA_SERVER"
# No network at build time (no web UI download, no curl/openssl), no tests or examples: the server only.
CMAKE_FLAGS = ("-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=OFF", "-DLLAMA_BUILD_TESTS=OFF",
               "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_SERVER=ON",
               "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_BUILD_UI=OFF",
               "-DLLAMA_OPENSSL=OFF", "-DLLAMA_CURL=OFF", "-DBUILD_SHARED_LIBS=OFF")
APT_PACKAGES = ("cmake", "g++", "ninja-build")
EXIT_READY, EXIT_FAILED, EXIT_MISSING = 0, 1, 2

Which = Callable[[str], "str | None"]


class BuildError(Exception):
    """A step failed; the message says which and what to do."""


def cache_root(env: Mapping[str, str] = os.environ) -> Path:
    """The tests' cache: $XDG_CACHE_HOME (an absolute one) or ~/.cache, then bilevel/ (real_models.py's too)."""
    xdg = env.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path(env.get("HOME") or Path.home()) / ".cache"
    return base / "bilevel"


def cache_folder(env: Mapping[str, str] = os.environ) -> Path:
    """Where this version's binary lives."""
    return cache_root(env) / "llama-server" / VERSION


def installed_binary(env: Mapping[str, str] = os.environ) -> Path:
    return cache_folder(env) / "llama-server"


def _runnable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_binary(env: Mapping[str, str] = os.environ) -> tuple[Path | None, str]:
    """The llama-server to test, or None with the reason there is none."""
    named = env.get(ENV_VAR, "")
    if named == "off":
        return None, f"{ENV_VAR}=off"
    if named:
        path = Path(named).expanduser()
        return (path, "") if _runnable(path) else (None, f"{ENV_VAR}={named} is not an executable file")
    path = installed_binary(env)
    if _runnable(path):
        return path, ""
    return None, f"no llama-server at {path}: run python tests/support/build_llama_server.py (or set {ENV_VAR})"


def missing_tools(which: Which = shutil.which, env: Mapping[str, str] = os.environ) -> list[str]:
    """The build prerequisites that are not on PATH, as a reader would name them."""
    missing = []
    if not which("cmake"):
        missing.append("cmake")
    if not (env.get("CXX") and which(env["CXX"])) and not any(which(c) for c in ("c++", "g++", "clang++")):
        missing.append("a C++ compiler (g++ or clang++)")
    if not (env.get("CC") and which(env["CC"])) and not any(which(c) for c in ("cc", "gcc", "clang")):
        missing.append("a C compiler (gcc or clang)")
    if not which("ninja") and not which("make"):
        missing.append("ninja or make")
    return missing


def apt_install_command(which: Which = shutil.which, is_root: bool | None = None) -> list[str] | None:
    """The apt-get command that installs what is missing, where this process may run it; else None."""
    root = os.geteuid() == 0 if is_root is None else is_root
    if not root or not which("apt-get"):
        return None
    return ["apt-get", "install", "-y", "--no-install-recommends", *APT_PACKAGES]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sdist(path: Path, expected: str = SDIST_SHA256) -> None:
    """Raise BuildError (and delete the file, so the next call downloads again) unless its sha256 is the pin."""
    actual = sha256_of(path)
    if actual != expected:
        path.unlink()
        raise BuildError(f"{path.name} has sha256 {actual}, not the pinned {expected}; it was deleted. "
                         "A second try downloads it again; a second mismatch means the index serves another file.")


def download_sdist(work: Path) -> Path:
    """The pinned sdist in `work`, downloaded with pip unless a verified copy is there."""
    sdist = work / SDIST
    if sdist.is_file():
        try:
            verify_sdist(sdist)
            return sdist
        except BuildError:
            pass  # a torn or foreign download: fetch it again
    command = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
               f"llama-cpp-python=={VERSION}", "-d", str(work)]
    print(f"downloading {SDIST} ({' '.join(command[1:])})", flush=True)
    if subprocess.run(command, check=False).returncode != 0 or not sdist.is_file():
        raise BuildError(f"pip could not download llama-cpp-python=={VERSION} (see its output above)")
    verify_sdist(sdist)
    return sdist


def extract_sources(sdist: Path, into: Path, member_root: str = SOURCE_IN_SDIST) -> Path:
    """Unpack only `member_root` of the sdist into `into`; returns the llama.cpp source folder."""
    source = into / member_root
    if (source / "CMakeLists.txt").is_file():
        return source
    prefix = member_root.rstrip("/") + "/"
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if m.name == member_root or m.name.startswith(prefix)]
        if not members:
            raise BuildError(f"{sdist.name} has no {member_root}/: not the llama-cpp-python sdist")
        for member in members:  # the sdist is pinned, but a tar path never leaves `into`
            if member.name.startswith("/") or ".." in Path(member.name).parts or member.islnk() or member.issym():
                raise BuildError(f"{sdist.name} holds {member.name!r}, which would not stay inside {into}")
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.10.12 / 3.11.4
        archive.extractall(into, members=members, **safe)
    if not (source / "CMakeLists.txt").is_file():
        raise BuildError(f"{member_root}/ in {sdist.name} has no CMakeLists.txt")
    return source


def build_server(source: Path, build: Path, *, jobs: int, which: Which = shutil.which) -> Path:
    """Configure and build the llama-server target; returns the built binary."""
    generator = ["-G", "Ninja"] if which("ninja") else ["-G", "Unix Makefiles"]
    if not (build / "CMakeCache.txt").is_file():
        _run(["cmake", "-S", str(source), "-B", str(build), *generator, *CMAKE_FLAGS], "cmake could not configure")
    _run(["cmake", "--build", str(build), "--target", "llama-server", "-j", str(jobs)], "the build failed")
    built = build / "bin" / "llama-server"
    if not _runnable(built):
        raise BuildError(f"the build finished but left no {built}")
    return built


def install(built: Path, target: Path) -> None:
    """Copy the binary into place atomically: a half-copied file is never taken for a built one."""
    if subprocess.run([str(built), "--version"], capture_output=True, timeout=60, check=False).returncode != 0:
        raise BuildError(f"{built} --version failed: the binary does not run on this machine")
    partial = target.with_name(target.name + ".partial")
    shutil.copy2(built, partial)
    partial.chmod(0o755)
    os.replace(partial, target)


def build_and_install(sdist: Path, target: Path, *, jobs: int, which: Which = shutil.which,
                      member_root: str = SOURCE_IN_SDIST) -> None:
    """From a verified sdist to the installed binary; the work folder beside `target` goes once it is there."""
    work = target.parent / "work"
    source = extract_sources(sdist, work / "src", member_root)
    built = build_server(source, work / "build", jobs=jobs, which=which)
    install(built, target)
    shutil.rmtree(work)


def ensure_tools(no_apt: bool) -> list[str]:
    """Install missing prerequisites with apt-get where allowed; returns what is still missing."""
    missing = missing_tools()
    command = None if no_apt or not missing else apt_install_command()
    if command is not None:
        print(f"missing {', '.join(missing)}: running apt-get update && {' '.join(command)}", flush=True)
        for step in (["apt-get", "update"], command):
            if subprocess.run(step, check=False).returncode != 0:
                break
        missing = missing_tools()
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-apt", action="store_true", help="never install missing tools with apt-get")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel build jobs")
    parser.add_argument("--sdist", type=Path, help="a local copy of the sdist (its sha256 is still checked)")
    args = parser.parse_args(argv)

    named = os.environ.get(ENV_VAR, "")
    if named:
        found, why = find_binary()
        if found is None and named != "off":
            return _say(EXIT_MISSING, f"{why}: point it at a llama-server binary, or unset it to build one")
        print(f"llama-server: {found or 'skipped'} ({ENV_VAR}={named}); nothing to build")
        return EXIT_READY
    target = installed_binary()
    if _runnable(target):
        print(f"llama-server {VERSION} already built: {target}")
        return EXIT_READY
    target.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(target.parent / "build.lock"):
        if _runnable(target):  # another process built it while this one waited
            print(f"llama-server {VERSION} already built: {target}")
            return EXIT_READY
        return _build(target, args)


@contextlib.contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """One build at a time per cache folder: two would share, and tear, one work folder."""
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another build of llama-server to finish ({path} is locked)", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(target: Path, args: argparse.Namespace) -> int:
    if missing := ensure_tools(args.no_apt):
        return _say(EXIT_MISSING, f"cannot build llama-server: missing {', '.join(missing)}. Install them "
                                  f"(Debian/Ubuntu: apt-get install {' '.join(APT_PACKAGES)}; macOS: brew install "
                                  f"cmake ninja), or set {ENV_VAR} to a llama-server binary, or {ENV_VAR}=off to "
                                  "skip the llama-server tests.")
    started = time.monotonic()
    try:
        if args.sdist is not None:
            sdist = args.sdist.resolve()
            if not sdist.is_file():
                return _say(EXIT_MISSING, f"--sdist {args.sdist}: no such file")
            if sha256_of(sdist) != SDIST_SHA256:
                return _say(EXIT_FAILED, f"{args.sdist} is not the pinned {SDIST} (sha256 {SDIST_SHA256})")
        else:
            sdist = download_sdist(target.parent / "work")
        print(f"building llama-server {VERSION} with {args.jobs} jobs (one-off; takes many CPU minutes)", flush=True)
        build_and_install(sdist, target, jobs=args.jobs)
    except BuildError as exc:
        return _say(EXIT_FAILED, f"cannot build llama-server: {exc} (the work so far is kept in "
                                 f"{target.parent / 'work'}; running this again resumes it)")
    print(f"llama-server {VERSION} built in {time.monotonic() - started:.0f} s: {target}")
    return EXIT_READY


def _run(command: list[str], failure: str) -> None:
    print("+ " + " ".join(command), flush=True)
    if subprocess.run(command, check=False).returncode != 0:
        raise BuildError(f"{failure} (command: {' '.join(command)})")


def _say(code: int, message: str) -> int:
    print(message, file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
