"""The timeline of a scope as an inline SVG: accesses per hour against the baseline.

No script, no external reference; every text is escaped, though all of it
is ours (times and counts).
"""

from html import escape

from services.scoping import Scope

WIDTH, HEIGHT = 760, 240
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 16, 44
ACCESS, REFUSED, BASELINE, START = "#3b6ea5", "#c8553d", "#555555", "#b00020"


def _time(scope: Scope, index: int) -> str:
    return scope.timeline.buckets[index].start.strftime("%Y-%m-%d %H:%MZ")


def timeline_svg(scope: Scope) -> str:
    t = scope.timeline
    per = "hour" if t.bucket_seconds == 3600 else "day"
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    n = max(1, len(t.buckets))
    top = max(1.0, t.baseline_peak, t.baseline_mean, *(b.accesses + b.refused for b in t.buckets))
    bar = plot_w / n

    def y(value: float) -> float:
        return TOP + plot_h - value / top * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="timeline-title">',
        f'<title id="timeline-title">Accesses per {per} against the baseline</title>',
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#f7f7f7"/>',
    ]
    for i, b in enumerate(t.buckets):
        x = LEFT + i * bar
        label = escape(f"{_time(scope, i)}: {b.accesses} disclosed, {b.refused} refused")
        parts.append(f"<g><title>{label}</title>")
        if b.accesses:
            parts.append(
                f'<rect x="{x:.1f}" y="{y(b.accesses):.1f}" width="{max(bar - 1, 1):.1f}" '
                f'height="{plot_h - (y(b.accesses) - TOP):.1f}" fill="{ACCESS}"/>'
            )
        if b.refused:
            parts.append(
                f'<rect x="{x:.1f}" y="{y(b.accesses + b.refused):.1f}" '
                f'width="{max(bar - 1, 1):.1f}" height="{b.refused / top * plot_h:.1f}" '
                f'fill="{REFUSED}"/>'
            )
        parts.append("</g>")
    for value, dash, name in (
        (t.baseline_mean, "6 4", "baseline mean"),
        (t.baseline_peak, "2 3", "baseline peak"),
    ):
        if value:
            parts.append(
                f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
                f'stroke="{BASELINE}" stroke-dasharray="{dash}"><title>{escape(name)}: '
                f"{value:g} per {per}</title></line>"
            )
    start = scope.anomaly.start
    if start is not None and t.buckets:
        index = sum(b.start <= start.at for b in t.buckets) - 1
        x = LEFT + max(index, 0) * bar + bar / 2
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{TOP + plot_h}" stroke="{START}" '
            f'stroke-width="2"><title>anomaly start: entry {start.sequence}</title></line>'
        )
    axis_y = TOP + plot_h + 16
    parts += [
        f'<text x="{LEFT - 6}" y="{TOP + 10}" text-anchor="end" font-size="11">{top:g}</text>',
        f'<text x="{LEFT - 6}" y="{TOP + plot_h}" text-anchor="end" font-size="11">0</text>',
    ]
    if t.buckets:
        parts += [
            f'<text x="{LEFT}" y="{axis_y}" font-size="11">{escape(_time(scope, 0))}</text>',
            f'<text x="{LEFT + plot_w}" y="{axis_y}" text-anchor="end" font-size="11">'
            f"{escape(_time(scope, len(t.buckets) - 1))}</text>",
        ]
    legend = (
        f"blue: disclosed, red: refused, per {per}; dashed: baseline mean, dotted: baseline "
        "peak; red line: anomaly start"
    )
    parts.append(
        f'<text x="{LEFT}" y="{HEIGHT - 8}" font-size="11" fill="{BASELINE}">'
        f"{escape(legend)}</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts)
