"""The Reports page's charts as inline SVG, drawn server-side with pygal (no JavaScript, no CDN).

pygal is a maintained SVG charting library; we only make its output fit a strict page: its
`<script>` (configuration for optional JS tooltips) is removed, and each chart gets `role="img"` with
a `<title>` and `<desc>` (WCAG 1.1.1; the page shows the same figures as a table beside it).

Colours are the page's CSS custom properties (`--chart-text`, `--chart-strong`, `--chart-guide`,
`--chart-bar`, defined with the public pages' palette in `templates/web/_palette.css.j2`), so the
charts follow the reader's light or dark scheme like the rest of the page. Every label is in the
page's language (`content/i18n.py`).

Shapes: `deliveries_chart(timeline, language, zone_label)` and `growth_chart(points, language)` → str
(an `<svg>` element); `interval_labels(timeline, language)` → one distinct label per interval.
"""

from __future__ import annotations

import html
import re
import uuid
from datetime import date

import pygal
from pygal.style import Style

from ..content import i18n
from ..sending.report import Timeline

_SCRIPT = re.compile(r"<script\b.*?</script>", re.DOTALL | re.IGNORECASE)
_STYLE = Style(background="transparent", plot_background="transparent", foreground="var(--chart-text)",
               foreground_strong="var(--chart-strong)", foreground_subtle="var(--chart-guide)",
               colors=("var(--chart-bar)",), font_family="system-ui, sans-serif", label_font_size=12,
               major_label_font_size=12, title_font_size=15)
MAX_LABELS = 12


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
    every = max(1, -(-len(labels) // MAX_LABELS))  # at most MAX_LABELS labels shown
    longest = max((len(label) for label in labels), default=0)
    chart = kind(js=[], disable_xml_declaration=True, style=_STYLE, show_legend=False, width=640, height=280,
                 explicit_size=False, title=title, x_label_rotation=30 if longest > 8 else 0,
                 show_minor_x_labels=False, truncate_label=-1, print_values=False, tooltip_border_radius=0,
                 include_x_axis=True, show_dots=len(values) <= 40, x_labels_major_every=every,
                 max_scale=6, min_scale=2)
    chart.x_labels = labels
    chart.add(series, values)
    return chart.render(is_unicode=True)


def step_text(step: int, language: str) -> str:
    """An interval's length as a reader says it: `5 s`, `10 min`, `6 h`, `1 day`, `7 jours`."""
    strings = i18n.strings(language)
    for unit, seconds in (("h", 3600), ("min", 60)):
        if step < 86400 and step >= seconds and step % seconds == 0:
            return strings[f"reports_unit_{unit}"].format(n=step // seconds)
    if step >= 86400 and step % 86400 == 0:
        days = step // 86400
        return strings["reports_unit_day" if days == 1 else "reports_unit_days"].format(n=days)
    return strings["reports_unit_s"].format(n=step)


def interval_labels(timeline: Timeline, language: str) -> list[str]:
    """One label per interval of `timeline`, on its wall clock: `HH:MM:SS` for intervals under a minute,
    `HH:MM` under a day, a short date from a day on; the date is added to times when the intervals
    span more than one day, the year to dates when they span more than one year. Distinct by
    construction: intervals are aligned on multiples of their length on one fixed offset."""
    local = [timeline.local(index) for index in range(len(timeline.starts))]
    days = {moment.date() for moment in local}
    years = {moment.year for moment in local}
    out = []
    for moment in local:
        if timeline.step >= 86400:
            out.append(i18n.short_date(moment.date(), language, year=len(years) > 1))
            continue
        clock = moment.strftime("%H:%M:%S" if timeline.step < 60 else "%H:%M")
        out.append(f"{i18n.short_date(moment.date(), language, year=len(years) > 1)} {clock}"
                   if len(days) > 1 else clock)
    return out


def offset_label(timeline: Timeline, zone_name: str) -> str:
    """`Europe/Paris, UTC+01:00`: the wall clock the chart's labels are on."""
    minutes = int(timeline.offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    return f"{zone_name}, UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def deliveries_chart(timeline: Timeline, language: str, zone_name: str = "UTC") -> str:
    """Messages sent in each interval of the send (bars), from the ledger's `sent_at`."""
    strings = i18n.strings(language)
    labels = interval_labels(timeline, language)
    values = list(timeline.counts)
    if not values:
        title, desc = strings["reports_deliveries"], strings["reports_deliveries_none"]
    else:
        zone = offset_label(timeline, zone_name)
        title = strings["reports_deliveries_per"].format(step=step_text(timeline.step, language), zone=zone)
        desc = strings["reports_deliveries_desc"].format(count=sum(values), start=labels[0], end=labels[-1], zone=zone)
    return _accessible(_chart(pygal.Bar, title, labels, values, strings["reports_sent_in"]), title, desc)


def growth_chart(points: list[tuple[date, int]], language: str) -> str:
    """Active subscribers at the end of each week, from the events table."""
    strings = i18n.strings(language)
    years = {monday.year for monday, _ in points}
    labels = [i18n.short_date(monday, language, year=len(years) > 1) for monday, _ in points]
    values = [count for _, count in points]
    title = strings["reports_growth_title"]
    desc = (strings["reports_growth_desc"].format(first=values[0], start=labels[0], last=values[-1], end=labels[-1])
            if points else strings["reports_growth_none"])
    return _accessible(_chart(pygal.Bar, title, labels, values, strings["reports_active"]), title, desc)
