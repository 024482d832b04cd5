"""The noise-floor store: floors of val_bpb keyed by a fingerprint of script, corpus and hardware.

A floor measured for one script, corpus and machine is never applied to another: the
acceptance rules and the report look it up by the same fingerprint it was stored under.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from core.record import events as ev
from core.record.layout import write_atomic
from core.record.session import SessionReader
from core.services.script import TrainScript
from core.services.seeds import seed_params, with_seed

STORE_VERSION = 1
MIN_RUNS = 2


@dataclass(frozen=True)
class NoiseFloor:
    fingerprint: str
    std: float  # sample standard deviation of val_bpb over seeds: σ
    mad: float
    mean: float
    runs: int
    seeds: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    hardware: str = ""
    script_sha256: str = ""
    dataset_id: str = ""
    session: str = ""  # the session that measured it
    measured_at: float = 0.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "NoiseFloor":
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


class NoiseStore:
    """Noise floors by fingerprint in one small JSON file (the latest measurement wins)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def floors(self) -> dict[str, NoiseFloor]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ValueError(f"{self.path}: unreadable noise store: {exc}") from exc
        return {fp: NoiseFloor.from_dict(d) for fp, d in data.get("floors", {}).items()}

    def get(self, fingerprint: str) -> NoiseFloor | None:
        return self.floors().get(fingerprint)

    def put(self, floor: NoiseFloor) -> None:
        floors = self.floors()  # re-read so a floor saved meanwhile by another process is kept
        floors[floor.fingerprint] = floor
        body = {"version": STORE_VERSION, "floors": {fp: asdict(f) for fp, f in sorted(floors.items())}}
        write_atomic(self.path, json.dumps(body, indent=1) + "\n")


# --- the fingerprint -------------------------------------------------------------------


def script_digest(text: str) -> str:
    """sha256 of the script as evaluated, with seed constants normalised (the seed is not the script)."""
    try:
        script = TrainScript.parse(text)
        if seed_params(script):
            text = with_seed(text, 0)
    except ValueError:
        pass  # not parseable as a train script: hash it as it is
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def dataset_id(data: dict[str, Any]) -> str:
    """The corpus a session trained on, from SessionStarted.data."""
    return str(data.get("dataset_id") or data.get("content_sha256") or data.get("source") or "none")


def hardware_description(devices: Sequence[str]) -> str:
    """GPU names for GPU runs (CUDA_VISIBLE_DEVICES values), else the CPU model and core count."""
    if not devices:
        return f"cpu: {_cpu_model()} x{os.cpu_count() or 1}"
    names = _gpu_names()
    wanted = [names.get(d.strip(), "") for dev in devices for d in dev.split(",")]
    if not all(wanted):
        return "gpu: unknown model"
    return "gpu: " + " + ".join(sorted(set(wanted)))


@functools.lru_cache(maxsize=1)
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@functools.lru_cache(maxsize=1)
def _gpu_names() -> dict[str, str]:
    """index and UUID -> name, from nvidia-smi (empty when it is missing or fails)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {}
    try:
        out = subprocess.run([exe, "--query-gpu=index,uuid,name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return {}
    names: dict[str, str] = {}
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        parts = [p.strip() for p in line.split(",", 2)]
        if len(parts) == 3:
            names[parts[0]] = names[parts[1]] = parts[2]
    return names


def fingerprint(script_sha256: str, dataset: str, hardware: str) -> str:
    key = json.dumps({"script": script_sha256, "dataset": dataset, "hardware": hardware}, sort_keys=True)
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Identity:
    """What a noise floor depends on, for one run's baseline on one machine."""

    script_sha256: str
    dataset_id: str
    hardware: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.script_sha256, self.dataset_id, self.hardware)


def identity(baseline_text: str, data: dict[str, Any], devices: Sequence[str]) -> Identity:
    return Identity(script_digest(baseline_text), dataset_id(data), hardware_description(devices))


def is_noise_session(path: Path) -> bool:
    return any(isinstance(e, ev.NoiseStarted) for e in SessionReader(path).events(tolerant=True))
