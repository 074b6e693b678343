"""The Reports page's charts as inline SVG, drawn server-side with pygal (no JavaScript, no CDN).

pygal is a maintained SVG charting library; we only make its output fit a strict page: its
`<script>` (configuration for optional JS tooltips) is removed, and each chart gets `role="img"` with
a `<title>` and `<desc>` (WCAG 1.1.1; the page shows the same figures as a table beside it).

Shapes: `deliveries_chart(points)` and `growth_chart(points)` → str (an `<svg>` element).
"""

from __future__ import annotations

import html
import re
import uuid
from datetime import date, datetime

import pygal
from pygal.style import Style

_SCRIPT = re.compile(r"<script\b.*?</script>", re.DOTALL | re.IGNORECASE)
_STYLE = Style(background="transparent", plot_background="transparent", foreground="#222",
               foreground_strong="#111", foreground_subtle="#767676", colors=("#1d5fa8",),
               font_family="system-ui, sans-serif", label_font_size=12, title_font_size=15)


def _accessible(svg: str, title: str, desc: str) -> str:
    ident = f"chart-{uuid.uuid4().hex[:8]}"
    svg = _SCRIPT.sub("", svg)
    head = (f'<svg role="img" aria-labelledby="{ident}-t {ident}-d" '
            f'focusable="false"')
    svg = svg.replace("<svg", head, 1)
    close = svg.index(">") + 1
    return (svg[:close] + f'<title id="{ident}-t">{html.escape(title)}</title>'
            f'<desc id="{ident}-d">{html.escape(desc)}</desc>' + svg[close:])


def _chart(kind, title: str, labels: list[str], values: list[int], series: str):  # noqa: ANN001
    chart = kind(js=[], disable_xml_declaration=True, style=_STYLE, show_legend=False, width=640, height=280,
                 explicit_size=False, title=title, x_label_rotation=0, show_minor_x_labels=False,
                 truncate_label=-1, print_values=False, tooltip_border_radius=0, include_x_axis=True,
                 show_dots=len(values) <= 40, x_labels_major_every=max(1, len(labels) // 6),
                 max_scale=6, min_scale=2)
    chart.x_labels = labels
    chart.add(series, values)
    return chart.render(is_unicode=True)


def deliveries_chart(points: list[tuple[datetime, int]], *, zone_label: str = "UTC") -> str:
    """Messages sent by each moment of the send (cumulative), from the ledger's `sent_at`."""
    labels = [moment.strftime("%H:%M:%S") for moment, _ in points]
    values = [count for _, count in points]
    title = "Deliveries during the send"
    if not points:
        desc = "Nothing has been sent yet."
    else:
        desc = (f"{values[-1]} messages sent between {points[0][0]:%Y-%m-%d %H:%M:%S} and "
                f"{points[-1][0]:%H:%M:%S} {zone_label}.")
    return _accessible(_chart(pygal.Line, title, labels, values, "sent"), title, desc)


def growth_chart(points: list[tuple[date, int]]) -> str:
    """Active subscribers at the end of each week, from the events table."""
    labels = [monday.isoformat() for monday, _ in points]
    values = [count for _, count in points]
    title = "List growth: active subscribers per week"
    desc = (f"From {values[0]} active subscribers in the week of {labels[0]} to {values[-1]} in the week of "
            f"{labels[-1]}." if points else "No subscribers yet.")
    return _accessible(_chart(pygal.Bar, title, labels, values, "active"), title, desc)
