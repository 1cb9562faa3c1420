"""Phase marks in host time, and the attribution of each finding to the phase and cycle it fell in.

A phase is open from the moment its action starts until the next phase starts (its dwell included),
so traffic an action triggers late still belongs to it. Capture timestamps from a phone's own clock
(on-device tcpdump, PCAPdroid) are moved to host time with the clock offset measured after boot.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from harness.analyzer.model import Finding
from harness.profile import PHASES


@dataclass(slots=True)
class PhaseMark:
    """One phase of one cycle, in host epoch seconds."""

    name: str
    cycle: int
    start: float
    end: float | None = None  # None while it runs

    def to_json(self) -> dict[str, object]:
        return {"phase": self.name, "cycle": self.cycle, "start": self.start, "end": self.end}


class Timeline:
    """The ordered phases of one recording."""

    def __init__(self) -> None:
        self.marks: list[PhaseMark] = []

    @contextmanager
    def phase(self, name: str, cycle: int = 1) -> Iterator[PhaseMark]:
        """`with timeline.phase("screen-on"):` marks the phase from entry to exit (host clock)."""
        if name not in PHASES:
            raise ValueError(f"unknown phase {name!r}: expected one of {', '.join(PHASES)}")
        mark = PhaseMark(name, cycle, time.time())
        if self.marks and self.marks[-1].end is None:
            self.marks[-1].end = mark.start
        self.marks.append(mark)
        try:
            yield mark
        finally:
            mark.end = time.time()

    def locate(self, when: float | None) -> PhaseMark | None:
        """The phase that was running at `when`, else the last one begun before it, else None."""
        if when is None:
            return None
        found = None
        for mark in self.marks:
            if mark.start <= when:
                found = mark
            else:
                break
        return found

    def attribute(self, findings: Iterable[Finding], offsets: Sequence[tuple[float, float]] = ()) -> None:
        """Set `phase` and `cycle` of every finding with a time.

        `offsets` are (host time from which it holds, capture clock minus host clock), oldest first:
        a phone's clock is measured again after every boot, and may have jumped (NTP) in between.
        """
        for finding in findings:
            mark = self.locate(None if finding.time is None else to_host(finding.time, offsets))
            if mark is not None:
                finding.phase, finding.cycle = mark.name, mark.cycle

    def to_json(self) -> list[dict[str, object]]:
        return [mark.to_json() for mark in self.marks]


def to_host(capture_time: float, offsets: Sequence[tuple[float, float]]) -> float:
    """A capture timestamp in host time: the offset of the latest segment the packet falls in."""
    if not offsets:
        return capture_time
    host = capture_time - offsets[0][1]
    for since, offset in offsets[1:]:
        if capture_time - offset >= since:
            host = capture_time - offset
    return host
