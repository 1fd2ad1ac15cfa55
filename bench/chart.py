"""SVG charts of a scenario: requests per rolling minute against the budget, and lag over time.

No plotting library: two stacked line panels drawn as plain SVG, readable in a browser and on
GitHub. Input is what a scenario measured: the emulator's request times (Unix seconds) and
`(seconds, lag)` samples of the connector's `/metrics`.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

__all__ = ["rolling_counts", "write_chart"]

WIDTH, PANEL, MARGIN = 760, 200, 50


def rolling_counts(
    times: Sequence[float], per_seconds: float, *, start: float, step: float = 1.0
) -> list[tuple[float, int]]:
    """(seconds since `start`, requests in the `per_seconds` before it), every `step` s."""
    times = sorted(times)
    if not times:
        return []
    out = []
    t = start + step
    end = times[-1] + step
    while t <= end:
        out.append((t - start, bisect_left(times, t) - bisect_left(times, t - per_seconds)))
        t += step
    return out


def _polyline(points: Sequence[tuple[float, float]], x_max: float, y_max: float, top: int) -> str:
    if not points:
        return ""
    coords = " ".join(
        f"{MARGIN + (x / x_max) * (WIDTH - 2 * MARGIN):.1f},{top + PANEL - (y / y_max) * PANEL:.1f}"
        for x, y in points
    )
    return f'<polyline fill="none" stroke-width="1.5" points="{coords}" '


def _panel(
    title: str,
    series: Sequence[tuple[str, str, Sequence[tuple[float, float]]]],
    *,
    top: int,
    x_max: float,
) -> list[str]:
    y_max = max((y for _, _, pts in series for _, y in pts), default=1.0) * 1.1 or 1.0
    parts = [
        f'<text x="{MARGIN}" y="{top - 8}" font-size="13">{title}</text>',
        (
            f'<rect x="{MARGIN}" y="{top}" width="{WIDTH - 2 * MARGIN}" height="{PANEL}" '
            'fill="none" stroke="#999"/>'
        ),
        (
            f'<text x="{MARGIN - 4}" y="{top + 10}" font-size="10" text-anchor="end">'
            f"{y_max:,.0f}</text>"
        ),
        f'<text x="{MARGIN - 4}" y="{top + PANEL}" font-size="10" text-anchor="end">0</text>',
        (
            f'<text x="{WIDTH - MARGIN}" y="{top + PANEL + 12}" font-size="10" '
            f'text-anchor="end">{x_max:,.0f} s</text>'
        ),
    ]
    for i, (label, colour, points) in enumerate(series):
        line = _polyline(points, x_max, y_max, top)
        if line:
            parts.append(line + f'stroke="{colour}"/>')
        parts.append(
            f'<text x="{WIDTH - MARGIN - 4}" y="{top + 14 + 13 * i}" font-size="11" '
            f'text-anchor="end" fill="{colour}">{label}</text>'
        )
    return parts


def write_chart(
    path: Path,
    title: str,
    *,
    requests: Sequence[tuple[float, int]],
    budget: float,
    lag: Sequence[tuple[float, float]],
) -> None:
    """Write the two-panel SVG: rolling requests per minute (and the budget), lag."""
    x_max = max([x for x, _ in requests] + [x for x, _ in lag] + [1.0])
    budget_line = [(0.0, budget), (x_max, budget)]
    req = [(x, float(y)) for x, y in requests]
    height = 2 * PANEL + 3 * MARGIN
    parts = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
            'font-family="sans-serif">'
        ),
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{MARGIN}" y="18" font-size="15" font-weight="bold">{title}</text>',
    ]
    parts += _panel(
        "API requests in the rolling minute before",
        [("requests", "#1f77b4", req), (f"budget {budget:g}", "#d62728", budget_line)],
        top=MARGIN,
        x_max=x_max,
    )
    parts += _panel(
        "consumer lag (records)", [("lag", "#2ca02c", lag)], top=2 * MARGIN + PANEL, x_max=x_max
    )
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
