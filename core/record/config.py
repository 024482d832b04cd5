"""Experiment configuration: one TOML file -> typed, validated, frozen msgspec structs.

The sections declare their types, choices (``Literal``) and ranges (``msgspec.Meta``);
msgspec checks them. Every problem is reported with the file, the line (where it can be
found), the key and what was expected; unknown keys are errors, not silently ignored, so
a typo never quietly runs the wrong experiment. Every float key is bounded on both sides,
so none can be NaN or infinite. ``endpoint.api_key_env`` must be a variable's name: a value
that looks like a key is refused without being repeated anywhere. Over ~500 lines because
every section, its bounds, the cross-field checks and the TOML error mapping belong together.
"""
from __future__ import annotations

import math
import re
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Optional, Union

import msgspec

from core.record import layout, registry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

# The choices come from the registry (core/record/registry.py), where each is declared once.
GROUPS: dict[str, tuple[str, ...]] = {g.name: g.levels for g in registry.GROUPS}  # group -> its levels
LEVELS = registry.LEVELS
GroupName = Literal[registry.group_names()]  # type: ignore[valid-type]
ExecutorName = Literal[registry.names("executor")]  # type: ignore[valid-type] # built-ins, then plugins
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
BASELINE_SCRIPT = PACKAGE_ROOT / "baseline" / "train.py"
SURROGATE_SCRIPT = PACKAGE_ROOT / "baseline" / "surrogate.py"


class ConfigError(ValueError):
    """A configuration problem; ``str()`` is the message shown to the user."""


def _range(ge: float | None = None, le: float | None = None) -> msgspec.Meta:
    return msgspec.Meta(ge=ge, le=le)


# Every float key has both bounds: a NaN fails every bound and an infinity the upper one,
# so no key can be non-finite (grace_s = nan removed the training deadline; time_s = inf crashed).
DAY_S = 86_400.0
Seconds = Annotated[float, _range(1, 7 * DAY_S)]


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class EndpointConfig(_Section):
    provider: Literal["openai", "offline"] = "offline"
    base_url: str = ""
    model: str = ""
    api_key_env: str = ""  # the NAME of the environment variable holding the key, never the key
    stream: bool = True
    json_mode: bool = True
    # response_format: "auto" sends a JSON schema, stepping down to json_object, then plain text, on refusal.
    structured: Literal["auto", "json_schema", "json_object", "off"] = "auto"
    timeout_s: Annotated[float, _range(1, DAY_S)] = 180.0
    max_retries: Annotated[int, _range(0, 20)] = 4
    # Outages: a call that fails past its retries waits, probing up to every probe_max_s, never burning iterations.
    probe_max_s: Annotated[float, _range(1, DAY_S)] = 60.0
    unusable_replies: Annotated[int, _range(1, 1000)] = 3  # unusable replies in a row that pause a call the same way
    max_reply_bytes: Annotated[int, _range(1024, 1_000_000_000)] = 4_000_000  # a longer reply is cut, an error
    temperature: Optional[Annotated[float, _range(0, 2)]] = None
    max_tokens: Optional[Annotated[int, _range(16, 10_000_000)]] = None
    # The model's context in tokens: each level's prompt is trimmed to fit it (unset: history_tokens decides).
    context_tokens: Optional[Annotated[int, _range(1024, 10_000_000)]] = None
    # Offer each float parameter as an enum of valid values (for servers, like llama.cpp, that ignore
    # a number's minimum/maximum in the schema).
    float_grid: bool = False
    # US dollars per million tokens for this model (the budget's $ and `bilevel report`'s cost columns).
    # Either one set: this model's price, over the [prices] table (core/record/pricing.py).
    price_in_per_m: Optional[Annotated[float, _range(0, 1e6)]] = None
    price_out_per_m: Optional[Annotated[float, _range(0, 1e6)]] = None


class ModelPrice(_Section):
    """US dollars per million tokens of one model (a [prices] entry, by model-name pattern)."""

    input: Annotated[float, _range(0, 1e6)] = 0.0
    output: Annotated[float, _range(0, 1e6)] = 0.0


class ScriptConfig(_Section):
    path: str = ""  # empty: the bundled baseline/train.py
    preset: Literal["reference", "cpu-tiny", "surrogate"] = "reference"
    python: str = ""  # interpreter for training runs; empty: this one


class DataConfig(_Section):
    source: str = "stdlib"  # "stdlib", a folder of text/parquet files, or "none" (the script finds its own data)
    name: str = ""
    max_bytes: Optional[Annotated[int, _range(1024)]] = None
    vocab_size: Optional[Annotated[int, _range(257, 65535)]] = None


Usd = Annotated[float, _range(0, 1e9)]
Tokens = Annotated[int, _range(0, 10**15)]
Hours = Annotated[float, _range(0, 1e7)]


class SpendCap(_Section):
    """Caps on what one part of a run spends (unset: no cap); 50 % and 80 % warn, 100 % pauses the run."""

    max_usd: Optional[Usd] = None  # US dollars of LLM calls, at the price table's price
    max_tokens: Optional[Tokens] = None  # LLM tokens, prompt and completion
    max_gpu_hours: Optional[Hours] = None  # training device-hours (summed run durations × devices of the slot)


class BudgetConfig(_Section):
    time_s: Seconds = 300.0  # training budget per run
    grace_s: Optional[Annotated[float, _range(0, DAY_S)]] = None  # start-up, compile, eval
    iterations: Annotated[int, _range(0, 100000)] = 30
    # The whole run's caps (core/engine/limits.py); per part below: [budget.inner], [budget.strategy],
    # [budget.research] (LLM calls; Level 1's training too) and [budget.audit] (calibration and audit runs).
    max_usd: Optional[Usd] = None
    max_tokens: Optional[Tokens] = None
    max_gpu_hours: Optional[Hours] = None
    inner: SpendCap = SpendCap()
    strategy: SpendCap = SpendCap()
    research: SpendCap = SpendCap()
    audit: SpendCap = SpendCap()
    # The stuck-loop rule: this many finished iterations in a row with no keep pause the run (0: off).
    stuck_after: Annotated[int, _range(0, 100000)] = 20

    def cap(self, scope: str) -> "SpendCap":
        """The caps of one scope: "total", or a part (inner, strategy, research, audit)."""
        if scope == "total":
            return SpendCap(max_usd=self.max_usd, max_tokens=self.max_tokens, max_gpu_hours=self.max_gpu_hours)
        return getattr(self, scope)

    @property
    def deadline_grace_s(self) -> float:
        return self.grace_s if self.grace_s is not None else max(60.0, 0.5 * self.time_s)


class SearchConfig(_Section):
    group: GroupName = "A"
    # The Level 1 proposer by its registry name (a plugin's too); empty: the group's (the LLM, or offline
    # mode's perturbation, unless the group names a classical sampler).
    proposer: str = ""
    levels: tuple[str, ...] = ()  # overrides group when given
    outer_period: Annotated[int, _range(1, 100000)] = 5  # K: Level 1.5 every K iterations
    research_period: Annotated[int, _range(1, 100000)] = 2  # M: Level 2 every M outer cycles
    min_delta: Annotated[float, _range(0, 10)] = 0.0  # in val_bpb (bits per byte)
    locked: tuple[str, ...] = ("DEPTH", "ASPECT_RATIO")
    bounds: dict[str, dict[str, Any]] = {}
    guidance: str = ""
    seed: int = 0
    max_reasks: Annotated[int, _range(0, 20)] = 3
    history_tokens: Annotated[int, _range(200)] = 6000
    max_changes: Annotated[int, _range(1, 50)] = 3  # the most parameter changes one proposal may make
    # What Level 1 sees of the best train.py: all of it (within its budget), the constants' digest, or nothing.
    script_context: Literal["full", "digest", "off"] = "digest"
    # What Level 1 may change: the top-level constants (the paper's setting), or the code too (exact-text
    # edits beside constant changes, trained behind the training wall, scored by the trusted evaluation).
    scope: Literal["constants", "code"] = "constants"
    max_edits: Annotated[int, _range(1, 20)] = 4  # the most find/replace blocks one code proposal may carry
    mechanisms: tuple[str, ...] = ()  # built-in mechanisms active from the start

    @property
    def active_levels(self) -> tuple[str, ...]:
        return self.levels or GROUPS[self.group]

    @property
    def sampler(self) -> str:
        """The classical Level 1 sampler of this group, or "" when the LLM (or offline) proposes."""
        return registry.group(self.group).proposer

    @property
    def active_mechanisms(self) -> tuple[str, ...]:
        """Built-ins active from the start: the configured ones and the group's own."""
        return tuple(dict.fromkeys(self.mechanisms + registry.group(self.group).mechanisms))


class StrategyConfig(_Section):
    freeze_after: Annotated[int, _range(1)] = 3  # k: proposals with no net gain
    # paper: freeze the whole parameter; direction: freeze only the direction that failed (up, down, → a choice).
    # The default is the paper's: no difference resolved on the surrogate (bench/RESULTS.md, issue 25's study)
    freeze: Literal["paper", "direction"] = "paper"
    max_new_freezes: Annotated[int, _range(0)] = 2
    min_active: Annotated[int, _range(1)] = 3


class Level2Config(_Section):
    approval: Literal["auto", "manual"] = "auto"
    allow_imports: tuple[str, ...] = ()
    hook_timeout_s: Annotated[float, _range(0.01, 3600)] = 2.0
    import_timeout_s: Annotated[float, _range(1, 3600)] = 20.0
    max_repairs: Annotated[int, _range(0, 10)] = 2
    # The wall around generated code: strict (Landlock + seccomp + rlimits) or the explicit weaker "process".
    isolation: Literal["strict", "process"] = "strict"
    worker_env: tuple[str, ...] = ()  # environment variables the mechanism worker may see
    # Evidence before activation (core/engine/prescreen.py): paired short searches on the surrogate,
    # with and without the mechanism. "gate": one whose whole CI is harm is not activated; "report":
    # recorded only; "off": none. Runs wherever the surrogate has the session's parameters.
    prescreen: Literal["off", "report", "gate"] = "gate"
    # 10 × 20: a mechanism that vetoes every smaller batch is refused on 8 of 8 session seeds, a tabu
    # on repeats passes on 8 of 8; 5 × 12 refused the harmful one on 5 of 8 (bench/bench_prescreen_power.py)
    prescreen_repeats: Annotated[int, _range(2, 64)] = 10  # k paired searches (seeds)
    prescreen_iterations: Annotated[int, _range(1, 1000)] = 20  # iterations of each
    # ledger mechanisms (by name) to start with: validated again, pre-screened, activated before #1
    seed: tuple[str, ...] = ()


class AcceptanceConfig(_Section):
    """When a change counts as an improvement (search.min_delta is the absolute floor)."""

    # "default": once σ is known (calibrated, stored by `bilevel noise`, or declared by the script) a keep
    # must beat the best by k·σ, else any improvement; "paper": any improvement, always (the paper's rule).
    rule: Literal["default", "paper"] = "default"
    k: Annotated[float, _range(0, 100)] = 2.0  # the default rule's margin, in σ
    calibrate: Annotated[int, _range(0, 1000)] = 0  # n ≥ 2: the baseline on n more seeds before the search
    noise_sigma: Annotated[float, _range(0, 100)] = 0.0  # > 0: beat best by this many stored noise-floor σ
    confirm: bool = False  # re-run a candidate new best with another seed; keep it only if the mean wins
    allow_seed_tuning: bool = False  # let the search change seed constants (SEED = 42) in the script
    noise_store: str = ""  # where noise floors are kept; empty: <sessions_dir>/noise.json
    # A val_bpb outside (min_val_bpb, max_val_bpb] is no measurement: the run is a crash, "invalid metric".
    min_val_bpb: Annotated[float, _range(0, 100)] = 0.0
    max_val_bpb: Optional[Annotated[float, _range(0, 100)]] = None  # none: no upper bound

    @property
    def valid_val_bpb(self) -> tuple[float, float]:
        return (self.min_val_bpb, self.max_val_bpb if self.max_val_bpb is not None else float("inf"))


class AuditConfig(_Section):
    """The keep-chain audit at the end of a run: every keep re-measured by leaving it out, on fresh seeds."""

    enabled: bool = True
    share: Annotated[float, _range(0, 100)] = 0.25  # of the run's own training runs; the largest keeps first
    repeats: Annotated[int, _range(2, 100)] = 3  # fresh seeds per configuration


class RunConfig(_Section):
    sessions_dir: str = "sessions"
    # "auto" (every GPU NVML finds, busy ones skipped), "0,1" (those GPUs), "cpu" (one CPU slot) or
    # "cpu:4" (four CPU slots: tests, benchmarks and CPU users).
    gpus: str = "auto"
    executor: ExecutorName = "local"
    ray_address: str = ""  # a Ray cluster to join; empty: start a local one with the configured slots
    # "async": a proposal is made whenever a slot frees; "batch": batches of batch_size proposals,
    # every one finished before the next batch (deterministic, byte-identical logs).
    schedule: Literal["async", "batch"] = "async"
    batch_size: Annotated[int, _range(0, 4096)] = 0  # q for "batch"; 0: one per slot
    # proposals made ahead of a free slot, "async" only; at most 2: more would be made blind to results
    max_queued: Annotated[int, _range(0, 2)] = 1
    pass_env: tuple[str, ...] = ()  # extra environment variables the training script may see
    # "warm": a script that declares WARM_SAFE runs its iterations in a long-lived worker per slot;
    # "fresh": every iteration is its own process (any other script always is).
    worker: Literal["warm", "fresh"] = "warm"


_INTERNAL = ("base_dir",)


class Config(_Section):
    name: str = "experiment"
    endpoint: EndpointConfig = EndpointConfig()
    script: ScriptConfig = ScriptConfig()
    data: DataConfig = DataConfig()
    budget: BudgetConfig = BudgetConfig()
    search: SearchConfig = SearchConfig()
    strategy: StrategyConfig = StrategyConfig()
    level2: Level2Config = Level2Config()
    acceptance: AcceptanceConfig = AcceptanceConfig()
    audit: AuditConfig = AuditConfig()
    run: RunConfig = RunConfig()
    # Model-name pattern (fnmatch, case-insensitive) -> price; searched before the built-in table.
    prices: dict[str, ModelPrice] = {}
    # An installed plugin's options, a table each: [plugins.NAME]; the keys are the ones the plugin declares
    # (core/record/registry.py: options), checked when the config is loaded (tables checked there too: msgspec's
    # error for a dict value does not name the key).
    plugins: dict[str, Any] = {}
    # Where relative paths resolve from: the config file's folder (internal: never read from a file, not saved).
    base_dir: str = ""

    @property
    def offline(self) -> bool:
        return self.endpoint.provider == "offline"

    @property
    def proposer(self) -> str:
        """Level 1's proposer (a registry name): search.proposer, else the group's, else the LLM (offline: the
        seeded perturbation)."""
        return self.search.proposer or self.search.sampler or ("offline" if self.offline else "llm")

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
        return self._resolve(store) if store else self.sessions_path() / layout.NOISE_STORE_FILE

    def _resolve(self, p: str) -> Path:
        path = Path(p).expanduser()
        return path if path.is_absolute() or not self.base_dir else Path(self.base_dir) / path

    def to_dict(self) -> dict[str, Any]:
        """Plain data that from_dict accepts again (TOML has no null, so unset options are left out)."""
        data = _drop_none(msgspec.to_builtins(self))
        for key in _INTERNAL:
            data.pop(key, None)
        return data


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (tuple, list)):
        return [_drop_none(v) for v in value]  # plain JSON/TOML data: what a session log gives back
    return value


# --- loading and validation ---------------------------------------------------------


def load(path: Path | str, overrides: Mapping[str, Any] | None = None) -> Config:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); "
                          "save the file as UTF-8") from None
    return loads(text, source=str(path), base_dir=str(path.resolve().parent), overrides=overrides)


def loads(text: str, *, source: str = "<config>", base_dir: str = "", overrides: Mapping[str, Any] | None = None) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    apply_overrides(data, overrides or {})
    return from_dict(data, source=source, text=text, base_dir=base_dir)


def from_dict(data: Mapping[str, Any], *, source: str = "<config>", text: str = "", base_dir: str = "") -> Config:
    where = _Where(source, text)
    if not isinstance(data, Mapping):
        _fail(where, (), f"expected a table, got {type(data).__name__}")
    data = dict(data)
    for key in _INTERNAL:
        if key in data:
            _fail(where, (key,), f"unknown key (known keys here: {', '.join(_known(Config))})")
    search = data.get("search")
    if isinstance(search, dict) and isinstance(search.get("levels"), str):  # levels = "inner, strategy"
        data["search"] = {**search, "levels": [v.strip() for v in search["levels"].split(",") if v.strip()]}
    try:
        cfg = msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        _explain(exc, data, where)
    cfg = msgspec.structs.replace(cfg, base_dir=base_dir)
    _check_cross_fields(cfg, where)
    return cfg


def with_overrides(cfg: Config, overrides: Mapping[str, Any]) -> Config:
    """A copy of cfg with dotted keys replaced, validated like a file."""
    data = apply_overrides(cfg.to_dict(), overrides)
    return msgspec.structs.replace(from_dict(data, source="<overrides>"), base_dir=cfg.base_dir)


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


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``budget.iterations``) in a config table, in place; returns it."""
    for dotted, value in overrides.items():
        _set_dotted(data, dotted, value)
    return data


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


_SECRET_KEYS = {("endpoint", "api_key_env")}  # a wrong value here may be a key: never repeat it


def _known(cls: type) -> list[str]:
    return [f for f in cls.__struct_fields__ if f not in _INTERNAL]


def _explain(exc: msgspec.ValidationError, data: dict[str, Any], where: _Where) -> typing.NoReturn:
    """A ConfigError for msgspec's verdict, in the user's terms: file:line: key: what was expected."""
    message = str(exc)
    m = re.search(r" - at `\$([^`]*)`$", message)
    path = tuple(p for p in re.split(r"\.|\[\d+\]", m.group(1)) if p) if m else ()
    unknown = re.match(r"Object contains unknown field `([^`]+)`", message)
    tp = _field_type(path)
    if unknown:
        _fail(where, path + (unknown.group(1),), f"unknown key (known keys here: {', '.join(_known(_strip(tp)))})")
    value = _lookup(data, path)
    shown = "a value that is not shown" if path in _SECRET_KEYS else repr(value)
    if isinstance(msgspec.inspect.type_info(tp), msgspec.inspect.StructType):
        _fail(where, path, f"expected a table [{'.'.join(path)}], got {type(value).__name__}")
    if isinstance(value, list) and m and m.group(1).endswith("]"):
        item = re.search(r"\[(\d+)\]$", m.group(1))
        _fail(where, path, f"expected {_type_name(tp)}, got {_lookup_item(value, item)!r} in the list")
    _fail(where, path, _expectation(tp, value, shown))


def _expectation(tp: Any, value: Any, shown: str) -> str:
    info = msgspec.inspect.type_info(tp)
    if isinstance(info, msgspec.inspect.UnionType):
        info = next(t for t in info.types if not isinstance(t, msgspec.inspect.NoneType))
    if isinstance(info, msgspec.inspect.LiteralType):
        return f"expected one of {', '.join(map(repr, info.values))}, got {shown}"
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(info, (msgspec.inspect.FloatType, msgspec.inspect.IntType)) and number:
        if isinstance(info, msgspec.inspect.IntType) and isinstance(value, float):
            return f"expected an integer, got {shown} (float)"
        low, high = info.ge, info.le
        if isinstance(value, float) and not math.isfinite(value):
            return f"expected a finite number between {low:g} and {high:g}, got {shown}"
        if low is not None and value < low:
            return f"expected a value >= {low:g}, got {shown}"
        if high is not None and value > high:
            return f"expected a value <= {high:g}, got {shown}"
    return f"expected {_type_name(tp)}, got {shown} ({type(value).__name__})"


def _field_type(path: tuple[str, ...]) -> Any:
    """The declared type of the key at ``path`` (Config itself for the top level)."""
    tp: Any = Config
    for key in path:
        cls = _strip(tp)
        if not (isinstance(cls, type) and issubclass(cls, msgspec.Struct)) or key not in cls.__struct_fields__:
            break
        tp = typing.get_type_hints(cls, include_extras=True)[key]
    return tp


def _strip(tp: Any) -> Any:
    if typing.get_origin(tp) is Annotated:
        return typing.get_args(tp)[0]
    return tp


def _lookup(data: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _lookup_item(items: list[Any], match: Any) -> Any:
    i = int(match.group(1)) if match else 0
    return items[i] if 0 <= i < len(items) else None


def _type_name(tp: Any) -> str:
    tp = _strip(tp)
    origin = typing.get_origin(tp)
    if origin is Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a table"
    if origin is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(tp)))
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(tp, getattr(tp, "__name__", str(tp)))


def _check_plugins(cfg: Config, where: _Where) -> None:
    """No installed plugin clashes with a built-in or another plugin; each [plugins.NAME] key is one NAME declares."""
    for kind in registry.KINDS:
        for why in registry.refused(kind):
            _fail(where, (), why)
    installed = [e for kind in registry.KINDS for e in registry.plugins(kind)]
    for name, table in cfg.plugins.items():
        if not isinstance(table, dict):
            _fail(where, (registry.PLUGIN_TABLE, name), f"expected a table of the plugin's options, got {table!r}")
        readers = [e for e in installed if e.name == name]
        if not readers:
            known = ", ".join(dict.fromkeys(e.name for e in installed)) or "none installed"
            _fail(where, (registry.PLUGIN_TABLE, name), f"no installed plugin is called {name!r} (plugins: {known}; "
                  "a built-in reads the config's own keys)")
        try:
            declared = {o.key.rsplit(".", 1)[1]: o for e in readers for o in registry.options(e)}
        except registry.PluginError as exc:
            _fail(where, (registry.PLUGIN_TABLE, name), str(exc))
        for key in table:
            if key not in declared:
                which = " and ".join(f"the {e.kind} {name!r} ({e.origin})" for e in readers)
                _fail(where, (registry.PLUGIN_TABLE, name, key), f"{which} has no option {key!r} (its options: "
                      f"{', '.join(declared) or 'none'})")


def _check_cross_fields(cfg: Config, where: _Where) -> None:
    _check_plugins(cfg, where)
    for level in cfg.search.levels:
        if level not in LEVELS:
            _fail(where, ("search", "levels"), f"unknown level {level!r} (levels: {', '.join(LEVELS)})")
    if cfg.search.levels and "inner" not in cfg.search.levels:
        _fail(where, ("search", "levels"), "the inner level (Level 1) is always needed")
    if cfg.search.proposer and cfg.search.proposer not in registry.names("proposer"):
        _fail(where, ("search", "proposer"), f"unknown proposer {cfg.search.proposer!r} (proposers: "
              f"{', '.join(registry.names('proposer'))}; a plugin's appear once its package is installed)")
    if cfg.proposer == "llm" and cfg.offline:
        _fail(where, ("search", "proposer"), 'the LLM proposer needs an endpoint (provider = "openai")')
    if not registry.entry("proposer", cfg.proposer).research and "research" in cfg.search.active_levels:
        chosen = (f"group {cfg.search.group!r} searches" if not cfg.search.proposer
                  else f"proposer {cfg.search.proposer!r} searches")
        _fail(where, ("search", "levels"), f"{chosen} with a classical sampler, whose "
              "proposals no Level 2 mechanism prompt can shape; use levels inner (and strategy) only")
    proposer = registry.entry("proposer", cfg.proposer)
    mechanisms = set(registry.names("mechanism"))
    idle = [m for m in cfg.search.active_mechanisms
            if m in mechanisms and registry.entry("mechanism", m).prompt_only]
    if idle and not proposer.prompted:
        from_group = [m for m in idle if m in registry.group(cfg.search.group).mechanisms]
        reader = proposer.described or f"the proposer {proposer.name!r}"
        _fail(where, ("search", "group") if from_group else ("search", "mechanisms"),
              f"{', '.join(idle)} only adds text to the Level 1 prompt, and Level 1 here proposes with {reader}, "
              "which reads no prompt: it could not act"
              + (f", and group {cfg.search.group!r} would run as a copy of the group without it; run it with "
                 'an LLM endpoint (provider = "openai")' if from_group else '; remove it or use an LLM endpoint'))
    _check_caps(cfg, where)
    if cfg.acceptance.calibrate == 1:
        _fail(where, ("acceptance", "calibrate"), "expected 0 (off) or at least 2 runs: a spread needs two values")
    if cfg.endpoint.provider == "openai":
        if not cfg.endpoint.base_url:
            _fail(where, ("endpoint", "base_url"), 'required when provider = "openai" (e.g. "http://localhost:8000/v1")')
        if not cfg.endpoint.model:
            _fail(where, ("endpoint", "model"), 'required when provider = "openai"')
    if cfg.endpoint.api_key_env and not _looks_like_a_variable_name(cfg.endpoint.api_key_env):
        # never repeat the value: it may be the key itself, pasted into the wrong place
        _fail(where, ("endpoint", "api_key_env"),
              "expected the NAME of an environment variable (upper-case letters, digits and _, e.g. "
              "DEEPSEEK_API_KEY), not the key itself; put the key in that variable (the value is not shown)")
    for name, spec in cfg.search.bounds.items():
        key = ("search", "bounds", name)
        if not isinstance(spec, dict):
            _fail(where, key, "expected a table with min/max or choices")
        extra = set(spec) - {"min", "max", "choices"}
        if extra:
            _fail(where, key, f"unknown key {sorted(extra)[0]!r} (expected min, max, choices)")
        for side in ("min", "max"):
            if side in spec:
                value = spec[side]
                if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                    _fail(where, key + (side,), f"expected a finite number, got {value!r}")
        if "min" in spec and "max" in spec and not spec["min"] < spec["max"]:
            _fail(where, key, f"expected min < max, got min = {spec['min']!r}, max = {spec['max']!r}")
        if "choices" in spec:
            choices = spec["choices"]
            if not isinstance(choices, list) or not choices:
                _fail(where, key + ("choices",), f"expected a non-empty list, got {choices!r}")
            bad = [c for c in choices if isinstance(c, float) and not math.isfinite(c)]
            if bad:
                _fail(where, key + ("choices",), f"expected finite values, got {bad[0]!r}")


# What each part of a run spends: LLM calls (Level 1, 1.5, 2) and training (Level 1, calibration and audit).
# The mechanism pre-screen spends neither (offline proposer, the surrogate evaluated in-process).
CAP_SCOPES = ("inner", "strategy", "research", "audit")
CAP_KEYS = ("max_usd", "max_tokens", "max_gpu_hours")
_SPENDS = {"inner": CAP_KEYS, "strategy": ("max_usd", "max_tokens"), "research": ("max_usd", "max_tokens"),
           "audit": ("max_gpu_hours",)}


def _check_caps(cfg: Config, where: _Where) -> None:
    for scope in CAP_SCOPES:
        cap = getattr(cfg.budget, scope)
        for key in CAP_KEYS:
            if getattr(cap, key) is not None and key not in _SPENDS[scope]:
                what = "trains nothing" if key == "max_gpu_hours" else "calls no LLM"
                _fail(where, ("budget", scope, key), f"[budget.{scope}] {what}: this cap would never be reached "
                      f"(caps it takes: {', '.join(_SPENDS[scope])})")


def spend_limits(cfg: Config) -> dict[str, float]:
    """The caps set and the stuck-loop rule, as [budget] keys ("max_usd", "inner.max_tokens", "stuck_after")."""
    out: dict[str, float] = {}
    for scope in ("total", *CAP_SCOPES):
        cap = cfg.budget.cap(scope)
        for key in CAP_KEYS:
            value = getattr(cap, key)
            if value is not None:
                out[key if scope == "total" else f"{scope}.{key}"] = value
    out["stuck_after"] = cfg.budget.stuck_after
    return out


def limit_overrides(limits: Mapping[str, float]) -> dict[str, Any]:
    """Overrides that put exactly ``limits`` in force: every cap not named is unset."""
    out: dict[str, Any] = {f"budget.{key}": None for key in CAP_KEYS}
    out.update({f"budget.{scope}.{key}": None for scope in CAP_SCOPES for key in CAP_KEYS})
    out.update(limit_settings(limits))
    return out


LIMIT_NAMES = ("stuck_after", *CAP_KEYS, *(f"{scope}.{key}" for scope in CAP_SCOPES for key in CAP_KEYS))


def limit_settings(limits: Mapping[str, Any]) -> dict[str, Any]:
    """[budget] limit keys ("max_usd", "inner.max_tokens", "stuck_after") as overrides; unknown ones refused."""
    out: dict[str, Any] = {}
    for key, value in limits.items():
        if key not in LIMIT_NAMES:
            raise ConfigError(f"budget.{key}: not a limit (limits: {', '.join(LIMIT_NAMES)})")
        # an event's or a command's numbers may be floats: counts go back to integers
        whole = key.endswith(("max_tokens", "stuck_after")) and isinstance(value, float) and value.is_integer()
        out[f"budget.{key}"] = int(value) if whole else value
    return out


# An environment variable's name as people write them; a key (sk-..., mixed case, long runs of
# letters and digits) does not match, and neither does anything with spaces, dashes or dots.
_VARIABLE_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,127}")


def _looks_like_a_variable_name(value: str) -> bool:
    if not _VARIABLE_NAME.fullmatch(value):
        return False
    longest_run = max((len(part) for part in value.split("_")), default=0)
    return longest_run < 32  # one 32+ character word is a token, not a name


# --- presets --------------------------------------------------------------------


# The surrogate bench's search space: the reference rates and decay ×/÷ 2, 2^16–2^21 tokens a step, the
# schedule within what the H100 log tried. Wider bounds put almost every full point a classical sampler
# draws far outside the region the log measured (nothing beats the tuned reference in 30 draws).
SURROGATE_BOUNDS: dict[str, dict[str, Any]] = {
    "TOTAL_BATCH_SIZE": {"min": 2**16, "max": 2**21}, "DEVICE_BATCH_SIZE": {"min": 16, "max": 256},
    "EMBEDDING_LR": {"min": 0.3, "max": 1.2}, "UNEMBEDDING_LR": {"min": 0.002, "max": 0.008},
    "MATRIX_LR": {"min": 0.02, "max": 0.08}, "SCALAR_LR": {"min": 0.25, "max": 1.0},
    "WEIGHT_DECAY": {"min": 0.1, "max": 0.4}, "WARMUP_RATIO": {"min": 0.0, "max": 0.1},
    "WARMDOWN_RATIO": {"min": 0.2, "max": 0.9}, "FINAL_LR_FRAC": {"min": 0.0, "max": 0.2},
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
        # No stuck-loop pause: a demo runs through (and a newcomer's demo never waits unexplained).
        "budget": {"time_s": 4.0, "grace_s": 90.0, "iterations": 4, "stuck_after": 0},
        "run": {"gpus": "cpu"},
    }
    if overrides.get("script.preset") == "surrogate":
        # The surrogate simulates the reference's 300 s, reads no data, and is searched in SURROGATE_BOUNDS.
        data["budget"]["time_s"], data["data"] = 300.0, {"source": "none"}
        data["search"]["bounds"] = {name: dict(b) for name, b in SURROGATE_BOUNDS.items()}
    apply_overrides(data, overrides)
    return from_dict(data, source="<demo>", base_dir=str(Path.cwd()))


def canonical_group(name: str) -> str | None:
    """The group a user typed (case-insensitive: "TPE", "c+CMAES"), or None when there is none."""
    wanted = name.strip().lower()
    return next((g for g in GROUPS if g.lower() == wanted), None)


def is_surrogate(config: Mapping[str, Any]) -> bool:
    """Whether a recorded session config (plain data) ran the surrogate workload."""
    script = config.get("script") if isinstance(config, Mapping) else None
    return isinstance(script, Mapping) and script.get("preset") == "surrogate"
