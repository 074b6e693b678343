"""The Reports page's "deliveries during the send" chart over generated sends, from one second to a
month long, in zones with odd offsets and across DST changes: the intervals are chosen from the
send's span, their labels are distinct and at most 12 are shown, and every delivery is counted in
the interval that holds it (oracle: a brute-force search over the intervals).
The rendered SVG (pygal) is parsed with the standard XML parser: the labels a reader sees are these."""

from __future__ import annotations

import random
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from mailer.sending.report import MAX_INTERVALS, bucket_deliveries
from mailer.web import charts

SVG = "{http://www.w3.org/2000/svg}"
ZONES = ("UTC", "Europe/Paris", "Asia/Kathmandu", "America/St_Johns", "Pacific/Chatham", "Australia/Lord_Howe")
SPANS = [1, 2, 3, 7, 30, 59, 61, 119, 300, 1000, 3599, 3601, 4 * 3600, 11 * 3600, 23 * 3600, 25 * 3600,
         2 * 86400, 6 * 86400, 13 * 86400, 30 * 86400]


def shown_x_labels(svg: str) -> list[str]:
    root = ET.fromstring(svg)
    axis = next(g for g in root.iter(f"{SVG}g") if g.get("class", "").split()[:2] == ["axis", "x"])
    return [text.text or "" for text in axis.iter(f"{SVG}text")]


def generated_sends(seed: int = 13):
    rng = random.Random(seed)
    spans = SPANS + [round(10 ** rng.uniform(0, 6.42)) for _ in range(40)]  # 1 s … 30 days, log-uniform
    for number, span in enumerate(spans):
        zone = ZoneInfo(ZONES[number % len(ZONES)])
        if number % 4 == 0:  # around a DST change (Europe/Paris: 2027-03-28, 2027-10-31)
            start = datetime(2027, 10, 30, 23, 30, tzinfo=timezone.utc) - timedelta(seconds=span / 2)
        else:
            start = datetime(2027, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=rng.uniform(0, 365 * 86400))
        count = rng.choice((1, 2, 5, 40, 300))
        offsets = sorted([0.0, float(span)] + [rng.uniform(0, span) for _ in range(max(0, count - 2))])[:max(count, 2)]
        yield zone, [start + timedelta(seconds=offset) for offset in offsets]


@pytest.mark.parametrize("language", ["fr", "en"])
def test_deliveries_chart_intervals_fit_the_span_with_distinct_readable_labels(language):
    checked = 0
    for zone, times in generated_sends():
        timeline = bucket_deliveries(times, zone)
        span = (times[-1] - times[0]).total_seconds()
        where = f"{zone.key}, span {span:.0f} s, step {timeline.step} s"
        assert 1 <= len(timeline.starts) <= MAX_INTERVALS, where
        assert sum(timeline.counts) == len(times), where
        # the oracle: each delivery in the interval [start, start + step) that holds it
        brute = [0] * len(timeline.starts)
        step = timedelta(seconds=timeline.step)
        for moment in times:
            holders = [i for i, start in enumerate(timeline.starts) if start <= moment < start + step]
            assert len(holders) == 1, (where, moment)
            brute[holders[0]] += 1
        assert list(timeline.counts) == brute, where
        # the step is the shortest of the ladder that fits: the one before it would need too many bars
        smaller = [s for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600) if s < timeline.step]
        if smaller and span >= MAX_INTERVALS * smaller[-1]:
            assert timeline.step > smaller[-1], where
        labels = charts.interval_labels(timeline, language)
        assert len(set(labels)) == len(labels), (where, labels)
        shown = shown_x_labels(charts.deliveries_chart(timeline, language, zone.key))
        assert shown == labels and len(shown) <= 12, (where, shown)
        assert all(len(label) <= 20 for label in labels), (where, labels)
        checked += 1
    assert checked == len(SPANS) + 40


def test_a_thirty_second_send_gets_second_labels_and_a_month_long_one_dates():
    start = datetime(2027, 1, 14, 6, 0, 2, tzinfo=timezone.utc)
    short = bucket_deliveries([start + timedelta(seconds=s) for s in range(30)], ZoneInfo("Europe/Paris"))
    assert short.step == 5 and charts.interval_labels(short, "en")[:2] == ["07:00:00", "07:00:05"]
    assert charts.step_text(short.step, "fr") == "5\u00a0s"
    month = bucket_deliveries([start + timedelta(days=d) for d in range(31)], ZoneInfo("Europe/Paris"))
    assert month.step == 7 * 86400
    assert month.local(0).weekday() == 0  # weekly bars start on Mondays
    assert charts.interval_labels(month, "fr")[0] == "11\u00a0janv."
    assert charts.step_text(month.step, "fr") == "7\u00a0jours" and charts.step_text(month.step, "en") == "7 days"
    instant = bucket_deliveries([start, start], ZoneInfo("UTC"))
    assert instant.counts == (2,) and charts.interval_labels(instant, "en") == ["06:00:02"]


def test_growth_chart_shows_at_most_twelve_labels():
    from datetime import date
    points = [(date(2026, 7, 6) + timedelta(weeks=week), week * 3) for week in range(26)]
    shown = shown_x_labels(charts.growth_chart(points, "fr"))
    assert 1 < len(shown) <= 12 and len(set(shown)) == len(shown)


@pytest.mark.parametrize("language", ["fr", "en"])
def test_chart_descriptions_end_with_one_full_stop_whatever_the_month(language):
    """« …la semaine du 30 nov. » — a label that ends with an abbreviation's full stop ends the
    sentence: one full stop, never two, for a last week and a send in every month of the year."""
    from datetime import date
    for month in range(1, 13):
        end = date(2026, month, 1)
        points = [(end - timedelta(weeks=week), 10 + week) for week in range(5, -1, -1)]
        sends = bucket_deliveries([datetime(2026, month, 1, tzinfo=timezone.utc) + timedelta(days=day)
                                   for day in range(40)], ZoneInfo("Europe/Paris"))
        for svg in (charts.growth_chart(points, language), charts.deliveries_chart(sends, language, "Europe/Paris")):
            desc = ET.fromstring(svg).find(".//{http://www.w3.org/2000/svg}desc")
            desc = desc if desc is not None else ET.fromstring(svg).find(".//desc")
            assert desc is not None and desc.text.endswith(".") and ".." not in desc.text, (month, desc.text)
