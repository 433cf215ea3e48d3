"""What the web UI draws, as pure functions: the metric chart (SVG), the timeline's kinds of
stage change, and small formatting helpers. Everything returned is already HTML-escaped."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from typing import Any

_STAGE_RANK = {"none": 0, "staging": 1, "production": 2}


@dataclass(frozen=True)
class Point:
    version: int
    value: float | None
    stage: str
    champion: bool = False


@dataclass(frozen=True)
class Line:
    """A horizontal rule across the chart: a promotion threshold or a rollback threshold."""

    label: str
    value: float
    kind: str = "threshold"  # or "rollback"


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    span = high - low
    raw = span / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    ticks, value = [], first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _number(value: float) -> str:
    return f"{value:.4g}"


def chart_svg(metric: str, points: Sequence[Point], lines: Sequence[Line], *, width: int = 760,
              height: int = 280) -> str:
    """`metric` per version as a line of points, with threshold lines; versions without a value
    sit on the axis as hollow points."""
    left, right, top, bottom = 56, 24, 18, 40
    values = [p.value for p in points if p.value is not None] + [line.value for line in lines]
    if values:
        low, high = min(values), max(values)
    else:
        low, high = 0.0, 1.0
    pad = (high - low) * 0.12 or max(abs(high) * 0.05, 0.05)
    low, high = low - pad, high + pad
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(index: int) -> float:
        return left + (plot_w / 2 if len(points) == 1 else plot_w * index / (len(points) - 1))

    def y(value: float) -> float:
        return top + plot_h * (1 - (value - low) / (high - low))

    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" preserveAspectRatio="xMidYMid meet" '
             f'role="img" aria-label="{escape(metric)} across versions" data-metric="{escape(metric)}">']
    for tick in _ticks(low, high):
        ty = y(tick)
        parts.append(f'<line class="gridline" x1="{left}" x2="{width - right}" y1="{ty:.1f}" y2="{ty:.1f}"/>'
                     f'<text class="tick" x="{left - 8}" y="{ty + 4:.1f}" text-anchor="end">{_number(tick)}</text>')
    parts.append(f'<line class="axis" x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}"/>')
    for line in lines:
        ly = y(line.value)
        parts.append(f'<g class="{escape(line.kind)}-line"><line class="{escape(line.kind)}" '
                     f'data-threshold="{escape(line.label)}" '
                     f'x1="{left}" x2="{width - right}" y1="{ly:.1f}" y2="{ly:.1f}"/>'
                     f'<text class="line-label" x="{width - right - 4}" y="{ly - 5:.1f}" text-anchor="end">'
                     f'{escape(line.label)}</text></g>')
    measured = [(i, p) for i, p in enumerate(points) if p.value is not None]
    if len(measured) > 1:
        path = " ".join(f"{x(i):.1f},{y(p.value):.1f}" for i, p in measured)  # type: ignore[arg-type]
        parts.append(f'<polyline class="series" points="{path}"/>')
    for index, point in enumerate(points):
        px = x(index)
        parts.append(f'<text class="tick" x="{px:.1f}" y="{height - bottom + 18}" text-anchor="middle">'
                     f'v{point.version}</text>')
        classes = f"point stage-{escape(point.stage)}" + (" champion" if point.champion else "")
        if point.value is None:
            title = f"v{point.version}: no {metric} result yet ({point.stage})"
            parts.append(f'<circle class="{classes} missing" data-version="{point.version}" cx="{px:.1f}" '
                         f'cy="{top + plot_h:.1f}" r="5"><title>{escape(title)}</title></circle>')
            continue
        champion = ", champion" if point.champion else ""
        title = f"v{point.version}: {metric} {_number(point.value)} ({point.stage}{champion})"
        py = y(point.value)
        parts.append(f'<circle class="{classes}" data-version="{point.version}" data-value="{point.value!r}" '
                     f'cx="{px:.1f}" cy="{py:.1f}" r="{7 if point.champion else 6}">'
                     f'<title>{escape(title)}</title></circle>'
                     f'<text class="value" x="{px:.1f}" y="{py - 12:.1f}" text-anchor="middle">'
                     f'{_number(point.value)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def change_kind(change: Mapping[str, Any]) -> str:
    """promotion, demotion, rollback, archive or restore: how the timeline marks a stage change."""
    if change.get("reason") == "rollback":
        return "rollback"
    to_stage, from_stage = change.get("to_stage"), change.get("from_stage") or "none"
    if to_stage == "archived":
        return "archive"
    if from_stage == "archived":
        return "restore"
    if _STAGE_RANK.get(to_stage or "none", 0) >= _STAGE_RANK.get(from_stage, 0):
        return "promotion"
    return "demotion"


def change_text(change: Mapping[str, Any]) -> str:
    kind = change_kind(change)
    version = f"v{change['version']}"
    if kind == "rollback":
        if change.get("to_stage") == "production":
            return f"{version} restored to production (rollback)"
        return f"{version} rolled back out of production"
    if kind == "archive":
        return f"{version} archived ({change.get('reason') or 'archived'})"
    if kind == "restore":
        return f"{version} restored from the archive ({change.get('reason') or 'restored'})"
    return f"{version} {change.get('from_stage') or 'none'} → {change.get('to_stage')} ({change.get('reason') or kind})"


def when(value: datetime | None) -> str:
    if value is None:
        return "–"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def size(value: int | None) -> str:
    if value is None:
        return "–"
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if amount < 1024 or unit == "TiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{value} B"
