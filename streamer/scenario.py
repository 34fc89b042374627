"""A scenario: cameras, shift schedule, corruptions, frame source, rate, arms and their settings, batching.

One pydantic model, shared by the simulator (what to publish), the worker (which arms,
how to batch) and the report. ``load(path)`` reads YAML or JSON and raises
``ScenarioError`` listing every bad field with its value. ``scenarios/`` holds examples.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from dynbn import schedule as sched
from dynbn.labels import parse_order
from dynbn.corruptions import ALL
from dynbn.domains import CLEAN, DEFAULT_DOMAINS
from dynbn.methods.registry import arm_kwargs

from .arms import available

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "scenarios"


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message lists every problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScheduleSpec(_Strict):
    """``periodic`` (a shift every ``period`` frames), ``random`` lengths, or ``explicit`` segments."""

    kind: Literal["periodic", "random", "explicit"] = "periodic"
    period: int = Field(32, ge=1)
    min_len: int = Field(8, ge=1)
    max_len: int = Field(64, ge=1)
    seed: int | None = None  # random/periodic draws; default: the scenario's seed
    segments: list[tuple[str, int] | tuple[str, int, int]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> "ScheduleSpec":
        if self.kind == "random" and self.min_len > self.max_len:
            raise ValueError(f"min_len {self.min_len} > max_len {self.max_len}")
        if self.kind == "explicit" and not self.segments:
            raise ValueError("an explicit schedule needs segments: [[domain, length], [domain, length, severity], ...]")
        return self


class SourceSpec(_Strict):
    """Where clean frames come from: the CIFAR-10 test split, or a video file (PyAV)."""

    kind: Literal["cifar10", "video"] = "cifar10"
    path: str | None = None  # video file; None: a demo clip synthesised from CIFAR-10 and cached
    split: Literal["test", "train"] = "test"


class BatchSpec(_Strict):
    size: int = Field(64, ge=1, le=4096)
    max_wait_ms: int = Field(50, ge=0, le=60_000)


class FitSpec(_Strict):
    """How the detector and BN table are fitted (training images; cached by model + this config)."""

    domains: Literal["scenario", "all"] = "scenario"
    detector_images: int = Field(100, ge=8)
    table_images: int = Field(256, ge=8)
    # 40: a scenario's detector sees few frames (100 per domain and severity, 12 batches an epoch);
    # the 256/128 detector needs ~20 epochs there to reach its accuracy (10 cost 7-10 points of
    # detection in the default and frequent-shifts scenarios), and 40 cost a few seconds more
    epochs: int = Field(40, ge=1)
    # frames per (corruption, severity) table entry, with the detector's severity head: dynbn_vote
    # normalises with its camera's severity estimate (0: one entry per corruption, no head)
    severity_images: int = Field(256, ge=0)
    seed: int = 0


class Scenario(_Strict):
    """Everything one run needs; see scenarios/default.yaml for a commented example."""

    name: str = "scenario"
    model: str = "resnet20"
    cameras: int = Field(4, ge=1, le=4096)
    frames_per_camera: int = Field(256, ge=1)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    corruptions: list[str] = Field(default_factory=lambda: ["gaussian_noise", "fog", "contrast", "pixelate"], min_length=1)
    severities: list[int] = Field(default_factory=lambda: [5], min_length=1)
    source: SourceSpec = Field(default_factory=SourceSpec)
    labels: str = "iid"  # label order of a camera's frames: iid, dirichlet:DELTA or video:L (dynbn.labels)
    rate_fps: float = Field(0.0, ge=0)  # per camera; 0: as fast as the workers take them
    arms: list[str] = Field(default_factory=lambda: ["source", "dynbn_frame"], min_length=1)
    batch: BatchSpec = Field(default_factory=BatchSpec)
    # arm -> its plain settings, as ``dynbn stream-bench --arms-config`` takes them; {}: every arm's defaults
    arm_settings: dict[str, dict[str, Any]] = Field(default_factory=dict)
    fit: FitSpec = Field(default_factory=FitSpec)
    partitions: int = Field(8, ge=1, le=1024)
    encoding: Literal["raw", "png", "jpeg"] = "raw"
    seed: int = 0

    @field_validator("corruptions")
    @classmethod
    def _corruptions(cls, v: list[str]) -> list[str]:
        bad = [c for c in v if c != CLEAN and c not in ALL]
        if bad:
            raise ValueError(f"unknown corruptions {bad}; valid: {CLEAN}, {', '.join(ALL)}")
        return v

    @field_validator("severities")
    @classmethod
    def _severities(cls, v: list[int]) -> list[int]:
        if any(not 1 <= s <= 5 for s in v):
            raise ValueError(f"severities must be in 1..5, got {v}")
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: str) -> str:
        return str(parse_order(v))  # ValueError naming the value

    @field_validator("arms")
    @classmethod
    def _arms(cls, v: list[str]) -> list[str]:
        bad = [a for a in v if a not in available()]
        if bad or len(set(v)) != len(v):
            raise ValueError(f"arms must be distinct names from {available()}, got {v}")
        return v

    @field_validator("arm_settings")
    @classmethod
    def _arm_settings(cls, v: dict[str, dict[str, Any]], info: ValidationInfo) -> dict[str, dict[str, Any]]:
        arms = info.data.get("arms")
        if arms is None:
            return v  # the arms themselves are invalid (reported there)
        problems = []
        for name, settings in v.items():
            if name not in arms:
                problems.append(f"arm {name!r} has settings but is not one of the scenario's arms {arms}")
                continue
            try:
                arm_kwargs(name, settings)
            except ValueError as exc:  # names the arm and the key
                problems.append(str(exc))
        if problems:
            raise ValueError("; ".join(problems))
        return v

    @model_validator(mode="after")
    def _labels_need_cifar(self) -> "Scenario":
        if self.labels != "iid" and self.source.kind != "cifar10":
            raise ValueError(f"labels {self.labels!r} orders CIFAR-10 frames; a {self.source.kind} source plays in its "
                             "own order: use labels: iid")
        return self

    @model_validator(mode="after")
    def _explicit_domains(self) -> "Scenario":
        for seg in self.schedule.segments:
            if seg[0] != CLEAN and seg[0] not in self.corruptions:
                raise ValueError(f"explicit segment domain {seg[0]!r} is not in corruptions {self.corruptions}")
        return self

    @model_validator(mode="after")
    def _oracle_has_entries(self) -> "Scenario":
        """dynbn_oracle normalises a frame with its true corruption's entry: every streamed one must be fitted."""
        if "dynbn_oracle" in self.arms:
            missing = [c for c in self.corruptions if c not in self.domains()]
            if missing:
                raise ValueError(f"arm 'dynbn_oracle' needs a table entry for every streamed corruption, but the fit "
                                 f"(fit.domains: {self.fit.domains}) lacks {missing}: drop the arm, or fit "
                                 f"domains: scenario")
        return self

    @property
    def camera_ids(self) -> list[str]:
        width = max(2, len(str(self.cameras - 1)))
        return [f"cam{c:0{width}d}" for c in range(self.cameras)]

    @property
    def total_frames(self) -> int:
        return self.cameras * self.frames_per_camera

    def schedule_for(self, camera: int) -> sched.Schedule:
        """The shift schedule of camera index ``camera`` (seeded per camera)."""
        spec, n = self.schedule, self.frames_per_camera
        rng = np.random.default_rng([self.seed if spec.seed is None else spec.seed, camera])
        sev = tuple(self.severities) if len(self.severities) > 1 else self.severities[0]
        if spec.kind == "periodic":
            return sched.periodic(self.corruptions, spec.period, n, rng, sev)
        if spec.kind == "random":
            return sched.random_lengths(self.corruptions, spec.min_len, spec.max_len, n, rng, sev)
        return cut(sched.explicit(list(spec.segments)), n)

    def domains(self) -> list[str]:
        """The fitted domain set: clean plus this scenario's corruptions, or every benchmark domain."""
        if self.fit.domains == "all":
            return list(DEFAULT_DOMAINS)
        return [CLEAN] + [c for c in self.corruptions if c != CLEAN]


def cut(schedule: sched.Schedule, frames: int) -> sched.Schedule:
    """Repeat a schedule's segments until it covers ``frames``, cutting the last one."""
    out, total = [], 0
    while total < frames:
        for s in schedule.segments:
            if total >= frames:
                break
            out.append(sched.Segment(s.domain, min(s.length, frames - total), s.severity))
            total += out[-1].length
    return sched.Schedule(tuple(out))


def load(path: str | Path) -> Scenario:
    """Read a scenario from YAML or JSON; ScenarioError lists every problem."""
    path = Path(path)
    if not path.is_file():
        raise ScenarioError(f"scenario file not found: {path} (shipped ones: {', '.join(shipped())})")
    try:
        text = path.read_text()
        if not text.strip():
            raw = None  # json.loads would call an empty file invalid JSON
        else:
            raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ScenarioError(f"{path}: not valid YAML/JSON ({exc})") from None
    if raw is None:
        raise ScenarioError(f"{path}: empty scenario file (see {SCENARIO_DIR / 'default.yaml'} for every key)")
    return parse(raw, str(path))


def parse(raw: dict, where: str = "scenario") -> Scenario:
    """Validate a dict as a Scenario; ScenarioError lists every bad field and its value."""
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: expected a mapping at the top level, got {type(raw).__name__}")
    lines = []
    if "vote" in raw:
        lines.append(f"  vote: replaced by arm_settings; write arm_settings: {{dynbn_vote: {{rule: ...}}}} with rule "
                     f"W,M,H[,K] or {{window, margin, hold, clean_discount}} (got vote: {raw['vote']!r:.80})")
        raw = {k: v for k, v in raw.items() if k != "vote"}
    try:
        scn = Scenario.model_validate(raw)
    except ValidationError as exc:
        lines += [f"  {'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']} (got {e.get('input')!r:.80})" for e in exc.errors()]
    if lines:
        raise ScenarioError(f"{where}: {len(lines)} problem(s)\n" + "\n".join(lines))
    return scn


def shipped() -> list[str]:
    """Names of the scenarios in scenarios/."""
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))


def resolve(name_or_path: str | None) -> Path:
    """A path, or the name of a shipped scenario (``default`` when None)."""
    if name_or_path is None:
        return SCENARIO_DIR / "default.yaml"
    path = Path(name_or_path)
    if path.is_file() or path.suffix in (".yaml", ".yml", ".json"):
        return path
    return SCENARIO_DIR / f"{name_or_path}.yaml"
