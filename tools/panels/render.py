"""Render what an operator sees: key panels of the shipped dashboard, from Prometheus data.

Grafana cannot run on our CI, so this draws the dashboard's key panels as one SVG from the
query_range results that `tests/prometheus/test_alerts_live.py` writes (`panels.json`), with
the faults of that run (`alerts.json`) as shaded bands, and prints the alert table of
docs/operations.md from the same run. Standard library only.

    python tools/panels/render.py svg DIR docs/img/panels.svg   # DIR holds panels.json, alerts.json
    python tools/panels/render.py table DIR                      # the Markdown table

`DIR` is `$PROMETHEUS_BED_OUT` of a run of the live test:

    PROMETHEUS_BED_OUT=.cache/prometheus-bed .venv/bin/python -m pytest tests/prometheus
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
from pathlib import Path
from typing import Any

# (dashboard panel title, which of its queries, what the chart calls it)
KEY_PANELS = [
    ("Records delivered by entity", 0, "Records delivered by entity (per s)"),
    ("API requests by outcome", 0, "API requests by outcome (per s)"),
    ("Dead letters by reason", 0, "Dead letters by reason (per s)"),
    ("Age of the last commit", 0, "Age of the last commit (s)"),
    ("Token refreshes by outcome", 0, "Token refreshes by outcome"),
    ("Source polls by outcome", 0, "Source polls by outcome"),
]
COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
WIDTH, PANEL_W, PANEL_H, COLS = 1200, 580, 230, 2
MARGIN_L, MARGIN_T, PLOT_H = 48, 30, 150
STYLE = (
    ".title{font-size:13px;font-weight:bold;fill:#333}.axis{font-size:10px;fill:#666}"
    ".legend{font-size:10px;fill:#333}.note{font-size:11px;fill:#333}"
    ".band{font-size:9px;fill:#d62728}"
)


def _legend(metric: dict[str, str]) -> str:
    labels = {k: v for k, v in metric.items() if k not in ("job", "instance", "__name__")}
    return ", ".join(labels.values()) or "the connector"


def _series(panel: dict[str, Any]) -> list[tuple[str, list[tuple[float, float]]]]:
    found = []
    for s in panel["result"]:
        points = [(float(t), float(v)) for t, v in s["values"] if math.isfinite(float(v))]
        if points and any(v != 0 for _, v in points):
            found.append((_legend(s["metric"]), points))
    return sorted(found)


def _nice(top: float) -> float:
    if top <= 0:
        return 1.0
    exp = 10.0 ** math.floor(math.log10(top))
    return next(m * exp for m in (1, 2, 2.5, 5, 10) if m * exp >= top)


def _panel(
    x0: float, y0: float, *, title: str, series: list[tuple[str, list[tuple[float, float]]]],
    start: float, end: float, faults: list[dict[str, Any]],
) -> list[str]:  # fmt: skip
    plot_w = PANEL_W - MARGIN_L - 10
    top = _nice(max((v for _, pts in series for _, v in pts), default=1.0))

    def x(t: float) -> float:
        return x0 + MARGIN_L + (t - start) / (end - start) * plot_w

    def y(v: float) -> float:
        return y0 + MARGIN_T + PLOT_H - v / top * PLOT_H

    out = [
        (
            f'<rect x="{x0}" y="{y0}" width="{PANEL_W}" height="{PANEL_H}" fill="#ffffff" '
            'stroke="#d0d0d0"/>'
        ),
        f'<text x="{x0 + 8}" y="{y0 + 18}" class="title">{html.escape(title)}</text>',
    ]
    for n, fault in enumerate(faults, start=1):
        if "began" not in fault:
            continue
        left, right = x(max(fault["began"], start)), x(min(fault["ended"], end))
        label_y = y0 + MARGIN_T + 10 + 9 * ((n - 1) % 3)  # faults that begin together stay apart
        out.append(
            f'<rect x="{left:.1f}" y="{y0 + MARGIN_T}" width="{max(right - left, 1):.1f}" '
            f'height="{PLOT_H}" fill="#d62728" fill-opacity="0.08"/>'
            f'<text x="{left + 2:.1f}" y="{label_y}" class="band">{n}</text>'
        )
    for frac in (0, 0.5, 1):
        yy = y(top * frac)
        out.append(
            f'<line x1="{x0 + MARGIN_L}" y1="{yy:.1f}" x2="{x0 + MARGIN_L + plot_w}" '
            f'y2="{yy:.1f}" stroke="#eeeeee"/>'
        )
        out.append(
            f'<text x="{x0 + MARGIN_L - 4}" y="{yy + 4:.1f}" class="axis" '
            f'text-anchor="end">{top * frac:g}</text>'
        )
    for minute in range(int((end - start) // 60) + 1):
        xx = x(start + minute * 60)
        out.append(
            f'<text x="{xx:.1f}" y="{y0 + MARGIN_T + PLOT_H + 14}" class="axis" '
            f'text-anchor="middle">{minute} min</text>'
        )
    legend_x = x0 + MARGIN_L
    for i, (name, points) in enumerate(series[: len(COLOURS)]):
        colour = COLOURS[i]
        path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.4"/>')
        out.append(
            f'<rect x="{legend_x:.1f}" y="{y0 + PANEL_H - 22}" width="10" height="10" '
            f'fill="{colour}"/><text x="{legend_x + 13:.1f}" y="{y0 + PANEL_H - 13}" '
            f'class="legend">{html.escape(name)}</text>'
        )
        legend_x += 22 + 6.2 * len(name)
    if not series:
        out.append(
            f'<text x="{x0 + PANEL_W / 2}" y="{y0 + MARGIN_T + PLOT_H / 2}" class="axis" '
            'text-anchor="middle">no data</text>'
        )
    return out


def render_svg(data: dict[str, Any], faults: list[dict[str, Any]]) -> str:
    """The key panels as one SVG document."""
    start, end = float(data["start"]), float(data["end"])
    rows = math.ceil(len(KEY_PANELS) / COLS)
    height = 40 + rows * (PANEL_H + 12) + 20 + 16 * len(faults)
    out = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
            f'viewBox="0 0 {WIDTH} {height}" font-family="Helvetica, Arial, sans-serif">'
        ),
        f"<style>{STYLE}</style>",
        f'<rect width="{WIDTH}" height="{height}" fill="#f7f7f7"/>',
        (
            '<text x="16" y="24" class="title">building-twin-connector: key panels of the '
            "Grafana dashboard, from Prometheus during the alert test (shaded: a fault "
            "injected; numbered as below)</text>"
        ),
    ]
    for i, (title, index, caption) in enumerate(KEY_PANELS):
        queries = data["panels"].get(title)
        if queries is None:
            raise SystemExit(f"panels.json has no panel {title!r}: is it still on the dashboard?")
        x0 = 10 + (i % COLS) * (PANEL_W + 10)
        y0 = 40 + (i // COLS) * (PANEL_H + 12)
        out += _panel(
            x0, y0, title=caption, series=_series(queries[index]), start=start, end=end,
            faults=faults,
        )  # fmt: skip
    y = 40 + rows * (PANEL_H + 12) + 10
    for n, fault in enumerate(faults, start=1):
        when = f"at {(fault['began'] - start) / 60:.1f} min: " if "began" in fault else ""
        out.append(
            f'<text x="16" y="{y + 16 * n}" class="note">{n}. {when}'
            f"{html.escape(fault['fault'])} → {html.escape(fault['alert'])} fired after "
            f"{fault['to_firing']:.0f} s, resolved {fault['to_resolved']:.0f} s after the "
            "fault ended</text>"
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def render_table(faults: list[dict[str, Any]]) -> str:
    """The Markdown table of docs/operations.md, "Alerts, as tested"."""
    lines = [
        "| alert | fault injected in the test | fault → firing | recovery → resolved |",
        "|---|---|---:|---:|",
    ]
    lines += [
        f"| {f['alert']} | {f['fault']} | {f['to_firing']:.1f} s | {f['to_resolved']:.1f} s |"
        for f in faults
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    svg = sub.add_parser("svg", help="draw the key panels")
    svg.add_argument("data", type=Path, help="directory with panels.json and alerts.json")
    svg.add_argument("out", type=Path, help="the SVG to write")
    table = sub.add_parser("table", help="print the alert table")
    table.add_argument("data", type=Path, help="directory with alerts.json")
    args = parser.parse_args(argv)
    try:
        # in the order they were injected (lanes of the test run side by side)
        faults = sorted(
            json.loads((args.data / "alerts.json").read_text()), key=lambda f: f.get("began", 0)
        )
        if args.what == "table":
            sys.stdout.write(render_table(faults))
            return 0
        data = json.loads((args.data / "panels.json").read_text())
    except FileNotFoundError as exc:
        parser.error(
            f"{exc.filename} is missing: run the live test with PROMETHEUS_BED_OUT={args.data}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render_svg(data, faults))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
