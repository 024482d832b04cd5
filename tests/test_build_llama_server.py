"""The llama-server install step (tests/support/build_llama_server.py) without building llama.cpp:
its cache and skip logic, its refusals, and the whole configure-build-install path on a tiny
CMake project packed the way the sdist packs llama.cpp."""
from __future__ import annotations

import fcntl
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.support import build_llama_server as build

SCRIPT = Path(build.__file__)
ROOT = SCRIPT.parents[2]


def run_script(tmp_path: Path, *args: str, path: str | None = None, **env: str) -> subprocess.CompletedProcess:
    """The script as .ci/run calls it, with its cache in tmp_path/cache and PATH as given."""
    environment = {k: v for k, v in os.environ.items() if k not in (build.ENV_VAR, "CC", "CXX")}
    environment.update(XDG_CACHE_HOME=str(tmp_path / "cache"), PATH=os.environ["PATH"] if path is None else path,
                       **env)
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=environment, capture_output=True,
                          text=True, timeout=120, check=False)


def fake_binary(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\necho 'version: fake'\n")
    path.chmod(0o755)
    return path


def test_the_binary_lives_under_xdg_cache_home_else_home_cache():
    assert build.installed_binary({"XDG_CACHE_HOME": "/x/cache", "HOME": "/h"}) == \
        Path(f"/x/cache/bilevel/llama-server/{build.VERSION}/llama-server")
    assert build.installed_binary({"HOME": "/h"}) == \
        Path(f"/h/.cache/bilevel/llama-server/{build.VERSION}/llama-server")
    # the XDG spec: a relative XDG_CACHE_HOME is ignored
    assert build.installed_binary({"XDG_CACHE_HOME": "rel", "HOME": "/h"}).parts[:3] == ("/", "h", ".cache")


def test_a_second_call_with_the_binary_present_builds_nothing(tmp_path):
    binary = fake_binary(build.installed_binary({"XDG_CACHE_HOME": str(tmp_path / "cache")}))
    empty = tmp_path / "no-tools"
    empty.mkdir()
    done = run_script(tmp_path, path=str(empty))  # no cmake, no compiler: any build attempt would fail
    assert done.returncode == 0, done.stderr
    assert "already built" in done.stdout and str(binary) in done.stdout
    assert sorted(p.name for p in binary.parent.iterdir()) == ["llama-server"]  # nothing downloaded


def test_missing_tools_are_named_and_nothing_is_downloaded(tmp_path):
    empty = tmp_path / "no-tools"
    empty.mkdir()
    done = run_script(tmp_path, "--no-apt", path=str(empty))
    assert done.returncode == build.EXIT_MISSING
    for named in ("cmake", "a C++ compiler", "a C compiler", "ninja or make", "apt-get install cmake g++ ninja-build"):
        assert named in done.stderr
    cache = build.cache_folder({"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert [p.name for p in cache.iterdir()] == ["build.lock"]  # no sdist, no work folder


def test_a_second_build_waits_for_the_first_and_then_finds_its_binary(tmp_path):
    target = build.installed_binary({"XDG_CACHE_HOME": str(tmp_path / "cache")})
    target.parent.mkdir(parents=True)
    environment = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    environment.pop(build.ENV_VAR, None)
    with (target.parent / "build.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first build, still running
        second = subprocess.Popen([sys.executable, str(SCRIPT), "--no-apt"], cwd=ROOT, env=environment,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert "waiting for another build" in second.stdout.readline()
            fake_binary(target)  # the first build installs its binary and lets go
            fcntl.flock(lock, fcntl.LOCK_UN)
            rest = second.stdout.read()
            assert second.wait(timeout=60) == 0 and "already built" in rest
        finally:
            if second.poll() is None:  # it did not wait: no download may outlive the test
                second.kill()
                second.wait()
    assert sorted(p.name for p in target.parent.iterdir()) == ["build.lock", "llama-server"]


def test_apt_get_installs_the_tools_only_for_root_where_apt_get_exists():
    with_apt = {"apt-get": "/usr/bin/apt-get"}.get
    assert build.apt_install_command(with_apt, is_root=True)[-3:] == ["cmake", "g++", "ninja-build"]
    assert build.apt_install_command(with_apt, is_root=False) is None
    assert build.apt_install_command({}.get, is_root=True) is None


def test_a_compiler_named_by_cxx_counts_and_make_stands_in_for_ninja():
    tools = {"cmake": "/b/cmake", "clang-19": "/b/clang-19", "gcc": "/b/gcc", "make": "/b/make"}.get
    assert build.missing_tools(tools, {"CXX": "clang-19"}) == []
    assert build.missing_tools(tools, {}) == ["a C++ compiler (g++ or clang++)"]


def test_a_download_with_the_wrong_hash_is_refused_and_deleted(tmp_path):
    sdist = tmp_path / build.SDIST
    sdist.write_bytes(b"not the sdist")
    with pytest.raises(build.BuildError) as caught:
        build.verify_sdist(sdist)
    assert build.SDIST_SHA256 in str(caught.value)
    assert not sdist.exists()  # the next call downloads again


def test_a_local_sdist_that_is_not_the_pinned_one_is_refused(tmp_path):
    if build.missing_tools():
        pytest.skip("the build tools are missing: the tool check answers first")
    other = tmp_path / build.SDIST
    other.write_bytes(b"another file")
    done = run_script(tmp_path, "--sdist", str(other))
    assert done.returncode == build.EXIT_FAILED and build.SDIST_SHA256 in done.stderr
    assert not build.installed_binary({"XDG_CACHE_HOME": str(tmp_path / "cache")}).exists()


def test_the_named_binary_wins_and_a_wrong_name_is_an_error(tmp_path):
    named = fake_binary(tmp_path / "bin" / "my-llama-server")
    assert build.find_binary({build.ENV_VAR: str(named), "HOME": str(tmp_path)}) == (named, "")
    assert build.find_binary({build.ENV_VAR: "off"}) == (None, f"{build.ENV_VAR}=off")
    found, why = build.find_binary({"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert found is None and "build_llama_server.py" in why
    done = run_script(tmp_path, **{build.ENV_VAR: str(tmp_path / "nowhere")})
    assert done.returncode == build.EXIT_MISSING and "is not an executable file" in done.stderr
    assert run_script(tmp_path, **{build.ENV_VAR: "off"}).returncode == 0


FAKE_CMAKE = """cmake_minimum_required(VERSION 3.14)
project(fake_llama CXX)
set(CMAKE_RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
add_executable(llama-server server.cpp)
add_executable(llama-cli broken.cpp)
"""
FAKE_SERVER = '#include <cstdio>\nint main() { std::puts("version: fake llama-server"); return 0; }\n'


def tarball(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            archive.addfile(info, io.BytesIO(text.encode()))
    return path


def fake_sdist(path: Path) -> Path:
    """A tarball with llama.cpp where the sdist keeps it: a server target and a target that cannot compile."""
    return tarball(path, {f"{build.SOURCE_IN_SDIST}/{name}": text for name, text in (
        ("CMakeLists.txt", FAKE_CMAKE), ("server.cpp", FAKE_SERVER), ("broken.cpp", "this is not C++\n"))})


@pytest.mark.skipif(bool(build.missing_tools()), reason="cmake, a compiler or a build tool is missing")
def test_only_the_server_target_is_built_and_installed_then_the_work_folder_goes(tmp_path):
    target = build.installed_binary({"XDG_CACHE_HOME": str(tmp_path / "cache")})
    target.parent.mkdir(parents=True)
    build.build_and_install(fake_sdist(tmp_path / "fake.tar.gz"), target, jobs=1)
    # llama-cli cannot compile: building everything would have failed
    assert subprocess.run([str(target), "--version"], capture_output=True, text=True, check=False).stdout.strip() == \
        "version: fake llama-server"
    assert sorted(p.name for p in target.parent.iterdir()) == ["llama-server"]
    assert "already built" in run_script(tmp_path, path=str(tmp_path / "none")).stdout


def test_an_archive_without_llama_cpp_is_not_taken_for_the_sdist(tmp_path):
    other = tarball(tmp_path / "other.tar.gz", {"something/else.txt": ""})
    with pytest.raises(build.BuildError, match="not the llama-cpp-python sdist"):
        build.extract_sources(other, tmp_path / "src")


def test_a_path_that_leaves_the_source_folder_is_refused_before_anything_is_written(tmp_path):
    hostile = tarball(tmp_path / "hostile.tar.gz", {f"{build.SOURCE_IN_SDIST}/CMakeLists.txt": "",
                                                    f"{build.SOURCE_IN_SDIST}/../../../../outside.txt": "x"})
    with pytest.raises(build.BuildError, match="would not stay inside"):
        build.extract_sources(hostile, tmp_path / "src")
    assert not (tmp_path / "outside.txt").exists() and not (tmp_path / "src").exists()


def test_ci_runs_the_readmes_test_command_which_builds_the_server_before_pytest():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in (ROOT / "README.md").read_text()
    assert ci.index("tests/support/build_llama_server.py") < ci.index("-m pytest")
