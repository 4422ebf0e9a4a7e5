"""Pictures of a bench report, as plain SVG (no plotting library needed):
one per measure with a baseline (credsync's figure beside the baseline's,
the target marked), and how the cold reconcile, the floor and peak RSS grow
with N. Written next to report.md by bench.py; `figures.py REPORT.json`
redraws them from a saved report.
"""

from __future__ import annotations

import html
import json
import re
import sys
from pathlib import Path

WIDTH = 640
CREDSYNC = "#2b6cb0"
BASELINE = "#a0aec0"
TARGET = "#c53030"


def _svg(width: int, height: int, body: list[str], title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">\n'
            f'<title>{html.escape(title)}</title>\n<rect width="100%" height="100%" fill="white"/>\n'
            + "\n".join(body) + "\n</svg>\n")


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    return f"{value:.1f} {unit}".strip()


def _target_value(target: str, baseline: float | None) -> float | None:
    """A number the target line can be drawn at: `<= 1.5 s`, `<= 48 MiB`,
    `<= 1.3x floor` (times the baseline)."""
    m = re.search(r"<=\s*([0-9.]+)\s*(x)?", target or "")
    if not m:
        return None
    value = float(m.group(1))
    if m.group(2):
        return value * baseline if baseline else None
    return value


def bars(row: dict) -> str | None:
    """credsync's figure and the baseline's as two bars; the target as a line."""
    value, baseline = _number(row.get("value")), _number(row.get("baseline_value"))
    if value is None or baseline is None or row.get("unit") not in ("s", "MiB"):
        return None
    unit = row["unit"]
    target = _target_value(row.get("target", ""), baseline)
    top = max(v for v in (value, baseline, target) if v is not None) * 1.15 or 1
    left, right, height = 170, 40, 150
    scale = (WIDTH - left - right) / top
    body = [f'<text x="10" y="20" font-weight="bold">{html.escape(row["id"])}: {html.escape(row["measure"])}'
            f'{" (N=" + str(row["n"]) + ")" if row.get("n") else ""}</text>']
    for i, (label, v, color) in enumerate((("credsync", value, CREDSYNC),
                                          (row.get("baseline") or "baseline", baseline, BASELINE))):
        y = 40 + i * 45
        short = label if len(label) <= 26 else label[:25] + "…"
        body.append(f'<text x="10" y="{y + 18}">{html.escape(short)}</text>')
        body.append(f'<rect x="{left}" y="{y}" width="{max(v * scale, 1):.1f}" height="28" fill="{color}"/>')
        body.append(f'<text x="{left + v * scale + 5:.1f}" y="{y + 18}">{html.escape(_fmt(v, unit))}</text>')
    if target is not None:
        x = left + target * scale
        body.append(f'<line x1="{x:.1f}" y1="32" x2="{x:.1f}" y2="125" stroke="{TARGET}" stroke-dasharray="4 3"/>')
        body.append(f'<text x="{x + 4:.1f}" y="138" fill="{TARGET}">target {html.escape(row["target"])}</text>')
    verdict = {True: "PASS", False: "FAIL", None: ""}[row.get("pass")]
    body.append(f'<text x="{WIDTH - 10}" y="20" text-anchor="end" font-weight="bold" '
                f'fill="{"#2f855a" if row.get("pass") else TARGET}">{verdict}</text>')
    return _svg(WIDTH, height, body, row["measure"])


def scaling(points: dict[str, list[tuple[int, float]]], title: str, unit: str) -> str:
    """Lines over N (log scale) for each named series."""
    left, right, top_pad, bottom = 70, 150, 40, 50
    height = 320
    ns = sorted({n for series in points.values() for n, _ in series})
    values = [v for series in points.values() for _, v in series]
    if len(ns) < 2 or not values:
        return _svg(WIDTH, 60, [f'<text x="10" y="30">{html.escape(title)}: not enough points</text>'], title)
    import math
    lo, hi = math.log10(ns[0]), math.log10(ns[-1])
    vmax = max(values) * 1.1
    plot_w, plot_h = WIDTH - left - right, height - top_pad - bottom

    def xy(n, v):
        return (left + (math.log10(n) - lo) / (hi - lo) * plot_w, top_pad + plot_h - v / vmax * plot_h)

    body = [f'<text x="10" y="20" font-weight="bold">{html.escape(title)}</text>',
            f'<line x1="{left}" y1="{top_pad + plot_h}" x2="{left + plot_w}" y2="{top_pad + plot_h}" stroke="black"/>',
            f'<line x1="{left}" y1="{top_pad}" x2="{left}" y2="{top_pad + plot_h}" stroke="black"/>']
    for n in ns:
        x, _ = xy(n, 0)
        body.append(f'<text x="{x:.1f}" y="{top_pad + plot_h + 16}" text-anchor="middle">{n:,}</text>')
    body.append(f'<text x="{left + plot_w / 2}" y="{height - 10}" text-anchor="middle">N items (log scale)</text>')
    for frac in (0, 0.5, 1):
        v = vmax * frac
        _, y = xy(ns[0], v)
        body.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{html.escape(_fmt(v, unit))}</text>')
    colors = [CREDSYNC, BASELINE, "#dd6b20", "#38a169"]
    for i, (name, series) in enumerate(points.items()):
        series = sorted(series)
        color = colors[i % len(colors)]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(n, v) for n, v in series))
        body.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for n, v in series:
            x, y = xy(n, v)
            body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>')
        body.append(f'<rect x="{left + plot_w + 15}" y="{top_pad + i * 20}" width="12" height="12" fill="{color}"/>')
        body.append(f'<text x="{left + plot_w + 32}" y="{top_pad + i * 20 + 10}">{html.escape(name)}</text>')
    return _svg(WIDTH, height, body, title)


def cold_points(report: dict) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {"credsync sync (cold)": [], "emulator floor": []}
    for row in report.get("rows", []):
        m = re.fullmatch(r"1-(\d+)-floor", row["id"])
        if m and _number(row.get("value")) and _number(row.get("baseline_value")):
            series["credsync sync (cold)"].append((int(m.group(1)), row["value"]))
            series["emulator floor"].append((int(m.group(1)), row["baseline_value"]))
    big = report.get("big") or {}
    if big.get("plain"):
        series["credsync sync (cold)"].append((big["n"], big["plain"]["wall_s"]))
    return series


def rss_points(report: dict) -> dict[str, list[tuple[int, float]]]:
    out: list[tuple[int, float]] = []
    for key in ("big", "huge"):
        group = report.get(key) or {}
        runs = [group[k]["peak_rss_mib"] for k in ("plain", "snapshot_first", "restart", "one_key") if k in group]
        if runs:
            out.append((group["n"], max(runs)))
    for n, runs in (report.get("cold") or {}).items():
        out.append((int(n), max(r["credsync"]["peak_rss_mib"] for r in runs)))
    return {"credsync sync, peak RSS": sorted(out)}


def write(report: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for row in report.get("rows", []):
        svg = bars(row)
        if svg:
            path = out / f"{row['id']}.svg"
            path.write_text(svg)
            written.append(path)
    for name, svg in (("scaling-cold.svg", scaling(cold_points(report), "Cold full reconcile vs N", "s")),
                      ("scaling-rss.svg", scaling(rss_points(report), "Peak RSS vs N", "MiB"))):
        (out / name).write_text(svg)
        written.append(out / name)
    return written


if __name__ == "__main__":
    source = Path(sys.argv[1] if len(sys.argv) > 1 else "target/bench/report.json")
    paths = write(json.loads(source.read_text()), source.parent / "figures")
    print("\n".join(str(p) for p in paths))
