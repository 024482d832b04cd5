"""Experiment configuration: one TOML file -> typed, validated, frozen dataclasses.

Every problem is reported with the file, the line (where it can be found), the key and
what was expected; unknown keys are errors, not silently ignored, so a typo never
quietly runs the wrong experiment.
"""
from __future__ import annotations

import dataclasses
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

GROUPS: dict[str, tuple[str, ...]] = {
    "A": ("inner",),
    "B": ("inner", "strategy"),
    "C": ("inner", "strategy", "research"),
    "D": ("inner", "research"),
    # Classical search at Level 1 (Optuna samplers instead of the LLM; core/levels/classical.py).
    "tpe": ("inner",),
    "cmaes": ("inner",),
    "sobol": ("inner",),  # quasi-random: the neutral baseline
    # The LLM groups with CMA-ES's next suggestion in each prompt (mechanisms/cmaes_hint.py).
    "A+cmaes": ("inner",),
    "C+cmaes": ("inner", "strategy", "research"),
}
CLASSICAL_GROUPS: dict[str, str] = {"tpe": "tpe", "cmaes": "cmaes", "sobol": "sobol"}  # group -> sampler
GROUP_MECHANISMS: dict[str, tuple[str, ...]] = {"A+cmaes": ("cmaes_hint",), "C+cmaes": ("cmaes_hint",)}
LEVELS = ("inner", "strategy", "research")
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
BASELINE_SCRIPT = PACKAGE_ROOT / "baseline" / "train.py"
SURROGATE_SCRIPT = PACKAGE_ROOT / "baseline" / "surrogate.py"


class ConfigError(ValueError):
    """A configuration problem; ``str()`` is the message shown to the user."""


def _meta(**kw: Any) -> dict[str, Any]:
    return {"metadata": kw}


@dataclass(frozen=True)
class EndpointConfig:
    provider: str = field(default="offline", **_meta(choices=("openai", "offline")))
    base_url: str = ""
    model: str = ""
    api_key_env: str = ""  # the NAME of the environment variable holding the key, never the key
    stream: bool = True
    json_mode: bool = True
    timeout_s: float = field(default=180.0, **_meta(min=1))
    max_retries: int = field(default=4, **_meta(min=0, max=20))
    temperature: typing.Optional[float] = field(default=None, **_meta(min=0, max=2))
    max_tokens: typing.Optional[int] = field(default=None, **_meta(min=16))
    # US dollars per million tokens for this model, for the cost columns of `bilevel report`.
    price_in_per_m: typing.Optional[float] = field(default=None, **_meta(min=0))
    price_out_per_m: typing.Optional[float] = field(default=None, **_meta(min=0))


@dataclass(frozen=True)
class ScriptConfig:
    path: str = ""  # empty: the bundled baseline/train.py
    preset: str = field(default="reference", **_meta(choices=("reference", "cpu-tiny", "surrogate")))
    python: str = ""  # interpreter for training runs; empty: this one


@dataclass(frozen=True)
class DataConfig:
    source: str = "stdlib"  # "stdlib", a folder of text/parquet files, or "none" (the script finds its own data)
    name: str = ""
    max_bytes: typing.Optional[int] = field(default=None, **_meta(min=1024))
    vocab_size: typing.Optional[int] = field(default=None, **_meta(min=257, max=65535))


@dataclass(frozen=True)
class BudgetConfig:
    time_s: float = field(default=300.0, **_meta(min=1))  # training budget per run
    grace_s: typing.Optional[float] = field(default=None, **_meta(min=0))  # start-up, compile, eval
    iterations: int = field(default=30, **_meta(min=0, max=100000))

    @property
    def deadline_grace_s(self) -> float:
        return self.grace_s if self.grace_s is not None else max(60.0, 0.5 * self.time_s)


@dataclass(frozen=True)
class SearchConfig:
    group: str = field(default="A", **_meta(choices=tuple(GROUPS)))
    levels: tuple[str, ...] = ()  # overrides group when given
    outer_period: int = field(default=5, **_meta(min=1))  # K: Level 1.5 every K iterations
    research_period: int = field(default=2, **_meta(min=1))  # M: Level 2 every M outer cycles
    min_delta: float = field(default=0.0, **_meta(min=0))
    locked: tuple[str, ...] = ("DEPTH", "ASPECT_RATIO")
    bounds: dict[str, dict[str, Any]] = field(default_factory=dict)
    guidance: str = ""
    seed: int = 0
    max_reasks: int = field(default=3, **_meta(min=0, max=20))
    history_tokens: int = field(default=6000, **_meta(min=200))
    mechanisms: tuple[str, ...] = ()  # built-in mechanisms active from the start

    @property
    def active_levels(self) -> tuple[str, ...]:
        return self.levels or GROUPS[self.group]

    @property
    def sampler(self) -> str:
        """The classical Level 1 sampler of this group, or "" when the LLM (or offline) proposes."""
        return CLASSICAL_GROUPS.get(self.group, "")

    @property
    def active_mechanisms(self) -> tuple[str, ...]:
        """Built-ins active from the start: the configured ones and the group's own."""
        return tuple(dict.fromkeys(self.mechanisms + GROUP_MECHANISMS.get(self.group, ())))


@dataclass(frozen=True)
class StrategyConfig:
    freeze_after: int = field(default=3, **_meta(min=1))  # k: proposals with no net gain
    max_new_freezes: int = field(default=2, **_meta(min=0))
    min_active: int = field(default=3, **_meta(min=1))


@dataclass(frozen=True)
class Level2Config:
    approval: str = field(default="auto", **_meta(choices=("auto", "manual")))
    allow_imports: tuple[str, ...] = ()
    hook_timeout_s: float = field(default=2.0, **_meta(min=0.01))
    import_timeout_s: float = field(default=20.0, **_meta(min=1))
    max_repairs: int = field(default=2, **_meta(min=0, max=10))


@dataclass(frozen=True)
class AcceptanceConfig:
    """When a change counts as an improvement (search.min_delta is the absolute floor)."""

    noise_sigma: float = field(default=0.0, **_meta(min=0))  # > 0: beat best by this many noise-floor σ
    confirm: bool = False  # re-run a candidate new best with another seed; keep it only if the mean wins
    allow_seed_tuning: bool = False  # let the search change seed constants (SEED = 42) in the script
    noise_store: str = ""  # where noise floors are kept; empty: <sessions_dir>/noise.json


@dataclass(frozen=True)
class RunConfig:
    sessions_dir: str = "sessions"
    gpus: str = "auto"  # "auto", "cpu", or a list like "0,1"


@dataclass(frozen=True)
class Config:
    name: str = "experiment"
    endpoint: EndpointConfig = EndpointConfig()
    script: ScriptConfig = ScriptConfig()
    data: DataConfig = DataConfig()
    budget: BudgetConfig = BudgetConfig()
    search: SearchConfig = SearchConfig()
    strategy: StrategyConfig = StrategyConfig()
    level2: Level2Config = Level2Config()
    acceptance: AcceptanceConfig = AcceptanceConfig()
    run: RunConfig = RunConfig()
    # Where relative paths resolve from: the config file's folder (not saved).
    base_dir: str = field(default="", metadata={"internal": True})

    @property
    def offline(self) -> bool:
        return self.endpoint.provider == "offline"

    @property
    def surrogate(self) -> bool:
        """Runs the surrogate workload: nothing is trained, val_bpb is a response surface."""
        return self.script.preset == "surrogate"

    def script_path(self) -> Path:
        if self.script.path:
            return self._resolve(self.script.path)
        return SURROGATE_SCRIPT if self.surrogate else BASELINE_SCRIPT

    def sessions_path(self) -> Path:
        return self._resolve(self.run.sessions_dir)

    def noise_store_path(self) -> Path:
        store = self.acceptance.noise_store
        return self._resolve(store) if store else self.sessions_path() / "noise.json"

    def _resolve(self, p: str) -> Path:
        path = Path(p).expanduser()
        return path if path.is_absolute() or not self.base_dir else Path(self.base_dir) / path

    def to_dict(self) -> dict[str, Any]:
        """Plain data that from_dict accepts again (TOML has no null, so unset options are left out)."""
        data = _drop_none(dataclasses.asdict(self))
        data.pop("base_dir", None)
        return data


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, tuple):
        return list(value)
    return value


# --- loading and validation ---------------------------------------------------------


def load(path: Path | str, overrides: Mapping[str, Any] | None = None) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from exc
    return loads(text, source=str(path), base_dir=str(path.resolve().parent), overrides=overrides)


def loads(text: str, *, source: str = "<config>", base_dir: str = "", overrides: Mapping[str, Any] | None = None) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    return from_dict(data, source=source, text=text, base_dir=base_dir)


def from_dict(data: Mapping[str, Any], *, source: str = "<config>", text: str = "", base_dir: str = "") -> Config:
    cfg = _build(Config, dict(data), (), _Where(source, text))
    cfg = dataclasses.replace(cfg, base_dir=base_dir)
    _check_cross_fields(cfg, _Where(source, text))
    return cfg


def with_overrides(cfg: Config, overrides: Mapping[str, Any]) -> Config:
    """A copy of cfg with dotted keys replaced, validated like a file."""
    data = cfg.to_dict()
    for dotted, value in overrides.items():
        _set_dotted(data, dotted, value)
    return dataclasses.replace(from_dict(data, source="<overrides>"), base_dir=cfg.base_dir)


def parse_override(assignment: str) -> tuple[str, Any]:
    """``key.path=value`` from the command line; the value is read as TOML, else as a string."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects KEY=VALUE, got {assignment!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.strip(), value


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a table")
        node = nxt
    node[parts[-1]] = value


@dataclass(frozen=True)
class _Where:
    source: str
    text: str

    def locate(self, path: tuple[str, ...]) -> str:
        line = _find_line(self.text, path)
        return f"{self.source}:{line}" if line else self.source


def _find_line(text: str, path: tuple[str, ...]) -> int | None:
    """Best-effort line of a key: the key under its [table] header, or the header itself."""
    if not text or not path:
        return None
    table: tuple[str, ...] = ()
    header_line = None
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        m = re.match(r"^\[\s*([^\[\]]+?)\s*\]", stripped)
        if m:
            table = tuple(p.strip().strip('"') for p in m.group(1).split("."))
            if table == path:
                header_line = n
            continue
        m = re.match(r'^"?([A-Za-z0-9_.-]+)"?\s*=', stripped)
        if m and table + tuple(m.group(1).split(".")) == path:
            return n
    return header_line


def _fail(where: _Where, path: tuple[str, ...], message: str) -> typing.NoReturn:
    key = ".".join(path) or "(top level)"
    raise ConfigError(f"{where.locate(path)}: {key}: {message}")


def _build(cls: type, data: dict[str, Any], path: tuple[str, ...], where: _Where) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(fields)
        _fail(where, path + (unknown[0],), f"unknown key (known keys here: {known})")
    kwargs = {}
    for name, value in data.items():
        f = fields[name]
        kwargs[name] = _convert(hints[name], value, path + (name,), where, f.metadata)
    return cls(**kwargs)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a table"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(tp: Any, value: Any, path: tuple[str, ...], where: _Where, meta: Mapping[str, Any]) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            _fail(where, path, f"expected a table [{'.'.join(path)}], got {type(value).__name__}")
        return _build(tp, value, path, where)
    if origin is typing.Union:
        inner = [a for a in typing.get_args(tp) if a is not type(None)][0]
        return _convert(inner, value, path, where, meta)
    if origin is tuple:
        item = typing.get_args(tp)[0]
        if isinstance(value, str) and item is str and path[-1] == "levels":
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            _fail(where, path, f"expected {_type_name(tp)}, got {value!r}")
        return tuple(_convert(item, v, path, where, {}) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            _fail(where, path, f"expected a table, got {value!r}")
        return dict(value)
    ok = (
        (tp is bool and isinstance(value, bool))
        or (tp is int and isinstance(value, int) and not isinstance(value, bool))
        or (tp is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (tp is str and isinstance(value, str))
    )
    if not ok:
        _fail(where, path, f"expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if tp is float:
        value = float(value)
    if "choices" in meta and value not in meta["choices"]:
        _fail(where, path, f"expected one of {', '.join(map(repr, meta['choices']))}, got {value!r}")
    if "min" in meta and value < meta["min"]:
        _fail(where, path, f"expected a value >= {meta['min']}, got {value!r}")
    if "max" in meta and value > meta["max"]:
        _fail(where, path, f"expected a value <= {meta['max']}, got {value!r}")
    return value


def _check_cross_fields(cfg: Config, where: _Where) -> None:
    for level in cfg.search.levels:
        if level not in LEVELS:
            _fail(where, ("search", "levels"), f"unknown level {level!r} (levels: {', '.join(LEVELS)})")
    if cfg.search.levels and "inner" not in cfg.search.levels:
        _fail(where, ("search", "levels"), "the inner level (Level 1) is always needed")
    if cfg.search.sampler and "research" in cfg.search.active_levels:
        _fail(where, ("search", "levels"), f"group {cfg.search.group!r} searches with a classical sampler, whose "
              "proposals no Level 2 mechanism prompt can shape; use levels inner (and strategy) only")
    if cfg.endpoint.provider == "openai":
        if not cfg.endpoint.base_url:
            _fail(where, ("endpoint", "base_url"), 'required when provider = "openai" (e.g. "http://localhost:8000/v1")')
        if not cfg.endpoint.model:
            _fail(where, ("endpoint", "model"), 'required when provider = "openai"')
    if cfg.endpoint.api_key_env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", cfg.endpoint.api_key_env):
        _fail(where, ("endpoint", "api_key_env"),
              "expected the NAME of an environment variable (e.g. DEEPSEEK_API_KEY), not the key itself")
    for name, spec in cfg.search.bounds.items():
        if not isinstance(spec, dict):
            _fail(where, ("search", "bounds", name), "expected a table with min/max or choices")
        extra = set(spec) - {"min", "max", "choices"}
        if extra:
            _fail(where, ("search", "bounds", name), f"unknown key {sorted(extra)[0]!r} (expected min, max, choices)")


# --- presets --------------------------------------------------------------------


# The surrogate bench's search space: the reference values ×/÷ 8 for the rates, 2^16–2^21 tokens a step.
# (The default bounds, ×/÷ 100, leave 30 iterations of any global search in crash regions.)
SURROGATE_BOUNDS: dict[str, dict[str, Any]] = {
    "TOTAL_BATCH_SIZE": {"min": 2**16, "max": 2**21}, "DEVICE_BATCH_SIZE": {"min": 16, "max": 256},
    "EMBEDDING_LR": {"min": 0.075, "max": 4.8}, "UNEMBEDDING_LR": {"min": 0.0005, "max": 0.032},
    "MATRIX_LR": {"min": 0.005, "max": 0.32}, "SCALAR_LR": {"min": 0.0625, "max": 4.0},
    "WEIGHT_DECAY": {"min": 0.01, "max": 1.0},
}


def demo_config(**overrides: Any) -> Config:
    """The embedded defaults of ``bilevel run --demo``: offline, CPU, a few seconds a run."""
    data: dict[str, Any] = {
        "name": "demo",
        "endpoint": {"provider": "offline"},
        "script": {"preset": "cpu-tiny"},
        "data": {"source": "stdlib", "name": "stdlib-demo", "max_bytes": 3_000_000, "vocab_size": 1024},
        # Shapes that must divide the batch stay put so a short demo spends its runs on training.
        # Outer levels every two iterations, so `--demo --group C` shows all three levels at work.
        "search": {"locked": ["DEPTH", "ASPECT_RATIO", "HEAD_DIM", "MAX_SEQ_LEN"],
                   "outer_period": 2, "research_period": 1},
        "budget": {"time_s": 4.0, "grace_s": 90.0, "iterations": 4},
        "run": {"gpus": "cpu"},
    }
    if overrides.get("script.preset") == "surrogate":
        # The surrogate simulates the reference's 300 s, reads no data, and is searched in SURROGATE_BOUNDS.
        data["budget"]["time_s"], data["data"] = 300.0, {"source": "none"}
        data["search"]["bounds"] = {name: dict(b) for name, b in SURROGATE_BOUNDS.items()}
    for dotted, value in overrides.items():
        _set_dotted(data, dotted, value)
    return from_dict(data, source="<demo>", base_dir=str(Path.cwd()))


def canonical_group(name: str) -> str | None:
    """The group a user typed (case-insensitive: "TPE", "c+CMAES"), or None when there is none."""
    wanted = name.strip().lower()
    return next((g for g in GROUPS if g.lower() == wanted), None)


def is_surrogate(config: Mapping[str, Any]) -> bool:
    """Whether a recorded session config (plain data) ran the surrogate workload."""
    script = config.get("script") if isinstance(config, Mapping) else None
    return isinstance(script, Mapping) and script.get("preset") == "surrogate"
