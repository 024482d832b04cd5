"""A study: the groups × repeats of an ablation as one resumable folder.

Layout::

    sessions/<stamp>-study-<name>/
        study.json   the plan: groups, repeats, the baseline script's hash, and for each
                     member its group, repeat, seed, session folder and full config
        A-r1/ …      one ordinary session per member (events.jsonl, artifacts/)
        report/      what `bilevel report` writes (also at the end of a study)

Every member starts from the same baseline script (its hash is checked before a member
starts) and evaluates its own baseline; repeats differ only in their seed, and repeat r
uses the same seed in every group. Members run back to back, or concurrently when the
config names several GPUs (one member per GPU; :mod:`core.run.study` runs them).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from core.record import config as config_mod
from core.record.config import Config
from core.record import layout
from core.record.layout import STUDY_FILE, write_atomic
from core.record.session import SessionReader, new_session_dir
from core.record.state import RunState, fold

STUDY_VERSION = 1


class StudyError(Exception):
    pass


@dataclass
class Member:
    group: str
    repeat: int  # 1-based
    seed: int
    session: str  # folder name inside the study
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class Study:
    dir: Path
    name: str
    groups: list[str]
    repeats: int
    members: list[Member]
    script: str  # the baseline script every member starts from
    script_sha256: str
    base_dir: str = ""  # where the config's relative paths resolve
    created: float = 0.0
    kind: str = ""  # "scorecard": `bilevel scorecard` planned it, and its report shows the scorecard

    # --- files -----------------------------------------------------------------------

    @classmethod
    def create(cls, plan: Sequence[Config], name: str, root: Path, *, kind: str = "") -> "Study":
        """A new study folder for a run plan (one config per group × repeat, group-major)."""
        if not plan:
            raise StudyError("an empty plan")
        if len({cfg.surrogate for cfg in plan}) > 1:
            raise StudyError("a study never mixes surrogate members (script.preset = \"surrogate\": val_bpb is a "
                             "response surface) with real training runs: run them as two studies")
        script = plan[0].script_path()
        members, counts = [], {}
        for cfg in plan:
            g = cfg.search.group
            counts[g] = counts.get(g, 0) + 1
            members.append(Member(g, counts[g], cfg.search.seed, f"{g}-r{counts[g]}", cfg.to_dict()))
        study = cls(dir=new_session_dir(root, f"study-{name}"), name=name, groups=list(dict.fromkeys(counts)),
                    repeats=max(counts.values()), members=members, script=str(script),
                    script_sha256=_file_sha256(script), base_dir=plan[0].base_dir, created=time.time(), kind=kind)
        study.save()
        return study

    @classmethod
    def load(cls, path: Path) -> "Study":
        path = Path(path)
        file = path / STUDY_FILE if path.is_dir() else path
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise StudyError(f"{file}: not a readable study: {exc}") from exc
        members = [Member(**m) for m in data.get("members", [])]
        return cls(dir=file.parent, name=data.get("name", ""), groups=list(data.get("groups", [])),
                   repeats=int(data.get("repeats", 0)), members=members, script=data.get("script", ""),
                   script_sha256=data.get("script_sha256", ""), base_dir=data.get("base_dir", ""),
                   created=float(data.get("created", 0.0)), kind=str(data.get("kind", "")))

    def save(self) -> None:
        body = {"version": STUDY_VERSION, "name": self.name, "created": self.created, "groups": self.groups,
                "repeats": self.repeats, "script": self.script, "script_sha256": self.script_sha256,
                "base_dir": self.base_dir, "kind": self.kind, "members": [asdict(m) for m in self.members]}
        write_atomic(self.dir / STUDY_FILE, json.dumps(body, indent=1, ensure_ascii=False) + "\n")

    # --- members -----------------------------------------------------------------------

    def session_dir(self, member: Member) -> Path:
        return self.dir / member.session

    def member_config(self, member: Member, overrides: dict[str, Any] | None = None) -> Config:
        cfg = config_mod.from_dict(member.config, source=f"{self.dir / STUDY_FILE} ({member.session})",
                                   base_dir=self.base_dir)
        return config_mod.with_overrides(cfg, overrides) if overrides else cfg

    def state(self, member: Member) -> RunState | None:
        """The member's folded session, or None when it never started."""
        path = self.session_dir(member)
        if not layout.is_session(path):
            return None
        state = fold(SessionReader(path).events())
        return state if state.session else None

    def status(self, member: Member, iterations: int | None = None) -> str:
        """missing | running (or cut short) | stopped | failed | completed (of ``iterations`` if given)."""
        state = self.state(member)
        if state is None:
            return "missing"
        if iterations is None:
            iterations = state.iterations_budget or 0  # a budget changed mid-session counts
        if state.status == "completed" and state.next_iteration > iterations:
            return "completed"
        return state.status

    def sessions(self) -> list[Path]:
        """The members' session folders that exist."""
        return [self.session_dir(m) for m in self.members if layout.is_session(self.session_dir(m))]

    def check_baseline(self) -> None:
        """Refuse to start a member from a baseline script that changed since the study began."""
        path = Path(self.script)
        try:
            digest = _file_sha256(path)
        except OSError as exc:
            raise StudyError(f"the study's baseline script {path} cannot be read: {exc}") from exc
        if digest != self.script_sha256:
            raise StudyError(f"the baseline script {path} changed since this study started (sha256 "
                             f"{self.script_sha256[:12]}… then, {digest[:12]}… now); every repeat must start "
                             "from the same script: restore it, or start a new study")


def is_study(path: Path) -> bool:
    return (Path(path) / STUDY_FILE).is_file()


def find_study(arg: str, sessions_dir: Path | None = None) -> Path | None:
    """A study folder from a path or a name prefix under the sessions folder; None if it is not one."""
    path = Path(arg)
    if is_study(path):
        return path
    root = sessions_dir or Path("sessions")
    if root.is_dir():
        matches = sorted(p for p in root.iterdir() if p.name.startswith(arg) and is_study(p))
        if len(matches) == 1:
            return matches[0]
    return None


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
