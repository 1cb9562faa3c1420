"""The pattern keyguard's grid, as `com.android.internal.widget.LockPatternView` reads touches.

Cells are numbered 1-9 row by row (1 2 3 / 4 5 6 / 7 8 9), the way pattern secrets are written.
LockPatternView splits its bounds into 3x3 squares; a touch point hits a cell when it lies in the
centred hit area of that square (`mHitFactor` 0.6 of its width and height), a cell already in the
pattern is never hit again, and moving from one cell to another over a cell not yet used (1 to 3
passes 2, 1 to 9 passes 5) adds that middle cell first (`detectAndAddHit`). Only the points the
input system delivers are tested: `input motionevent` delivers just the ones given, UiAutomator's
`swipe(Point[], steps)` interpolates `steps` points along each segment.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence

HIT_FACTOR = 0.6  # LockPatternView.mHitFactor
MIN_PATTERN_REGISTER_FAIL = 4  # LockPatternUtils: shorter patterns are not counted as an attempt


def _row_col(cell: int) -> tuple[int, int]:
    return (cell - 1) // 3, (cell - 1) % 3


def _cell(row: int, col: int) -> int:
    return row * 3 + col + 1


def middle_cell(a: int, b: int) -> int | None:
    """The cell a straight stroke from `a` to `b` passes over (1->3: 2, 1->9: 5), if any."""
    (ra, ca), (rb, cb) = _row_col(a), _row_col(b)
    dr, dc = rb - ra, cb - ca
    if abs(dr) in (0, 2) and abs(dc) in (0, 2) and (dr, dc) != (0, 0):
        return _cell(ra + dr // 2, ca + dc // 2)
    return None


def check_pattern(text: str) -> str:
    """A pattern secret as digits ("1-4-7-8-9" or "14789" -> "14789"); ValueError when no finger could draw it."""
    digits = re.sub(r"[\s,-]", "", text)
    if not re.fullmatch(r"[1-9]+", digits):
        raise ValueError("expected a pattern: cells 1-9 in drawing order, e.g. \"1-4-7-8-9\"")
    cells = [int(c) for c in digits]
    if len(set(cells)) != len(cells):
        raise ValueError("a pattern uses each cell at most once")
    if len(cells) < MIN_PATTERN_REGISTER_FAIL:
        raise ValueError(f"a pattern connects at least {MIN_PATTERN_REGISTER_FAIL} cells")
    for index in range(1, len(cells)):
        middle = middle_cell(cells[index - 1], cells[index])
        if middle is not None and middle not in cells[:index]:
            raise ValueError(f"a stroke from {cells[index - 1]} to {cells[index]} passes over {middle}, which "
                             f"the keyguard adds: write {cells[index - 1]}-{middle}-{cells[index]}")
    return digits


def hit(box: tuple[int, int, int, int], x: float, y: float) -> int | None:
    """The cell whose hit area holds the screen point (x, y) for a view with bounds `box`, or None."""
    left, top, right, bottom = box
    square_w, square_h = (right - left) / 3, (bottom - top) / 3

    def index(offset: float, square: float) -> int | None:
        size = square * HIT_FACTOR
        start = (square - size) / 2
        for i in range(3):
            if start + square * i <= offset <= start + square * i + size:
                return i
        return None

    row, col = index(y - top, square_h), index(x - left, square_w)
    return None if row is None or col is None else _cell(row, col)


def cells_drawn(box: tuple[int, int, int, int], points: Iterable[tuple[float, float]]) -> list[int]:
    """The pattern LockPatternView records for a gesture's DOWN and MOVE points (UP hits nothing)."""
    pattern: list[int] = []
    for x, y in points:
        cell = hit(box, x, y)
        if cell is None or cell in pattern:
            continue
        if pattern:
            middle = middle_cell(pattern[-1], cell)
            if middle is not None and middle not in pattern:
                pattern.append(middle)
        pattern.append(cell)
    return pattern


def interpolate(points: Sequence[tuple[float, float]], steps: int) -> list[tuple[float, float]]:
    """The DOWN and MOVE points UiAutomator's `swipe(Point[] segments, int segmentSteps)` injects: DOWN at
    the first point, then `steps - 1` integer-truncated MOVEs along each segment (its UP, at the last
    point, is not a hit test for LockPatternView)."""
    steps = max(1, steps)
    out = [points[0]]
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        dx, dy = (x1 - x0) / steps, (y1 - y0) / steps
        out.extend((x0 + int(dx * i), y0 + int(dy * i)) for i in range(1, steps))
    return out


def view_bounds(width: int, height: int) -> tuple[int, int, int, int]:
    """Where the bouncer puts LockPatternView on a `width` x `height` portrait screen (a square in the
    lower half, like a Pixel's [108,1185][972,2049] on 1080x2400)."""
    side = min(width * 4 // 5, height * 9 // 25)
    left = (width - side) // 2
    top = height * 79 // 160
    return left, top, left + side, top + side
