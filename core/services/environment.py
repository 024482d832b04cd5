"""The environment a training subprocess gets: an allow-list, never the user's whole environment.

A training script is code the LLM edits, so it must not see the endpoint's API key or any
other credential that happens to be in the engine's environment. It gets PATH, HOME and
the temp folder, locale, CUDA / NVIDIA / NCCL and Python variables, threading knobs of the
numeric libraries, ``BILEVEL_*``, plus the names the config lists (``run.pass_env``).
Names that look like credentials (KEY, TOKEN, SECRET, PASSWORD, CREDENTIAL) pass only
when the config lists them by name, and the endpoint's key variable never does. The
compile cache variables default to our cache folder (``compile_cache_env``).
"""
from __future__ import annotations

import os
import re
from typing import Iterable, Mapping

import platformdirs

EXACT = frozenset({"PATH", "HOME", "USER", "LOGNAME", "SHELL", "TMPDIR", "TEMP", "TMP", "TZ", "LANG", "LANGUAGE",
                   "TERM", "LD_LIBRARY_PATH", "VIRTUAL_ENV", "CONDA_PREFIX", "CONDA_DEFAULT_ENV", "XDG_CACHE_HOME",
                   "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"})
PREFIXES = ("LC_", "CUDA_", "CUDNN_", "NVIDIA_", "NCCL_", "PYTHON", "TORCH", "PYTORCH_", "TRITON_", "BILEVEL_",
            "MKL_", "KMP_", "HIP_", "ROCM_")
_SECRET = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH", re.IGNORECASE)


def allowed(name: str) -> bool:
    """Whether a variable passes the allow-list without being listed in the config."""
    return (name in EXACT or name.startswith(PREFIXES)) and not _SECRET.search(name)


def training_env(overrides: Mapping[str, str] | None = None, *, source: Mapping[str, str] | None = None,
                 listed: Iterable[str] = (), never: Iterable[str] = ()) -> dict[str, str]:
    """The allow-listed part of ``source`` (default: this process's environment), then ``overrides``.

    ``listed`` names more variables to pass (the config's); ``never`` wins over everything
    (the endpoint's key variable).
    """
    src = os.environ if source is None else source
    deny = {n for n in never if n}
    extra = set(listed) - deny
    env = {k: v for k, v in src.items() if k not in deny and (allowed(k) or k in extra)}
    env.update({k: v for k, v in (overrides or {}).items() if k not in deny})
    return env


def compile_cache_env() -> dict[str, str]:
    """Where torch.compile keeps what it compiled: our cache folder beside the data
    (platformdirs' user cache folder, ``~/.cache/bilevel`` on Linux), not a temp folder, so fresh
    runs, warm workers and later sessions reuse the graphs instead of compiling again. A value the
    user set wins (see callers)."""
    folder = platformdirs.user_cache_path("bilevel") / "compile"
    return {"TORCHINDUCTOR_CACHE_DIR": str(folder), "TORCHINDUCTOR_FX_GRAPH_CACHE": "1",
            "TORCHINDUCTOR_AUTOGRAD_CACHE": "1"}


def listed(names: Iterable[str], never: Iterable[str] = ()) -> dict[str, str]:
    """The variables the config lists, from this process's environment (minus ``never``)."""
    deny = set(never)
    return {n: os.environ[n] for n in names if n in os.environ and n not in deny}
