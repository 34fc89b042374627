"""Shift schedules: which corruption (and severity) each frame of one camera carries.

A schedule is a list of segments; each segment is ``length`` consecutive frames of one
domain at one severity. Builders cover the three shapes users ask for: a fixed period N,
an explicit list of segments, and random lengths. Randomness comes only from the
generator passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Segment:
    """``length`` consecutive frames of ``domain`` at ``severity`` (severity is ignored for 'clean')."""

    domain: str
    length: int
    severity: int = 5

    def __post_init__(self) -> None:
        if self.length < 1:
            raise ValueError(f"segment length must be >= 1, got {self.length}")
        if not 1 <= self.severity <= 5:
            raise ValueError(f"severity must be in 1..5, got {self.severity}")


@dataclass(frozen=True)
class Schedule:
    """An ordered list of segments for one camera."""

    segments: tuple[Segment, ...]

    def __len__(self) -> int:
        return sum(s.length for s in self.segments)

    def per_frame(self) -> list[tuple[str, int]]:
        """(domain, severity) of every frame, in order."""
        return [(s.domain, s.severity) for s in self.segments for _ in range(s.length)]

    def boundaries(self) -> list[int]:
        """Frame indices where a new segment starts (the first segment's 0 excluded)."""
        return np.cumsum([s.length for s in self.segments])[:-1].tolist()


def _next_domain(domains: list[str], previous: str | None, rng: np.random.Generator) -> str:
    """A domain drawn uniformly, never equal to the previous one (when there is a choice)."""
    choices = [d for d in domains if d != previous] or domains
    return choices[int(rng.integers(len(choices)))]


def _severity(severity: int | tuple[int, ...], rng: np.random.Generator) -> int:
    if isinstance(severity, int):
        return severity
    return int(severity[int(rng.integers(len(severity)))])


def periodic(domains: list[str], period: int, frames: int, rng: np.random.Generator,
             severity: int | tuple[int, ...] = 5) -> Schedule:
    """The domain changes every ``period`` frames; a tuple of severities draws one per segment."""
    if period < 1 or frames < 1:
        raise ValueError(f"period and frames must be >= 1, got period={period}, frames={frames}")
    return random_lengths(domains, period, period, frames, rng, severity)


def random_lengths(domains: list[str], min_len: int, max_len: int, frames: int, rng: np.random.Generator,
                   severity: int | tuple[int, ...] = 5) -> Schedule:
    """Segments of lengths uniform in [min_len, max_len]; the last one is cut to fit ``frames``."""
    if not domains:
        raise ValueError("a schedule needs at least one domain")
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got {min_len}, {max_len}")
    segments, total, previous = [], 0, None
    while total < frames:
        length = min(int(rng.integers(min_len, max_len + 1)), frames - total)
        previous = _next_domain(list(domains), previous, rng)
        segments.append(Segment(previous, length, _severity(severity, rng)))
        total += length
    return Schedule(tuple(segments))


def explicit(segments: list[tuple[str, int] | tuple[str, int, int]]) -> Schedule:
    """From ``[(domain, length), (domain, length, severity), ...]``."""
    return Schedule(tuple(Segment(*s) for s in segments))
