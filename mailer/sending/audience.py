"""Who an issue goes to: every active subscriber, narrowed by issue.toml's `list` and `segment` (AND); why a
freeze found nobody (`empty_audience_reason`).

`build`, `preview` and `send` call `audience_size` before anything is sent: it checks the segment's
attribute names against those in use (`citty` is a typo, named with its column) and counts.
"""

from __future__ import annotations

import difflib

from ..content.briefs import read_text
from ..content.issue import ISSUE_FILE, Issue, key_line, segment_error
from ..store import Connection, Store
from ..segments import SegmentError, check_fields


def check_segment(store: Store, issue: Issue) -> None:
    """Raise SourceError (issue.toml:LINE, the column, the segment) when the issue's segment names an
    attribute no subscriber has. Nothing to check without a segment."""
    if issue.segment is None:
        return
    try:
        check_fields(issue.segment, store.attribute_names())
    except SegmentError as exc:
        toml = issue.folder / ISSUE_FILE
        raise segment_error(toml, key_line(read_text(toml), "segment"), exc) from None


def audience_size(store: Store, issue: Issue) -> int:
    """Active subscribers a send of `issue` would freeze now (its list and segment). Raises
    SourceError for a segment naming an unknown attribute."""
    check_segment(store, issue)
    with store.connect() as conn:
        return store.count_unfrozen(conn, None, issue.list_name, issue.segment)


def describe(issue: Issue, count: int) -> str:
    """"12 active subscribers (list 'vip', segment: language = "en")", for build, preview and send."""
    narrowed = [f"list {issue.list_name!r}"] if issue.list_name else []
    if issue.segment is not None:
        narrowed.append(f"segment: {issue.segment.text}")
    people = f"{count} active subscriber{'' if count == 1 else 's'}"
    return f"{people} ({', '.join(narrowed)})" if narrowed else people


def empty_audience_reason(store: Store, conn: Connection, issue: Issue) -> str:
    """Why a freeze found nobody, in the editor's terms (list name, segment, statuses, a near miss)."""
    by_status = store.audience(conn, issue.list_name)
    where = f"{issue.folder / 'issue.toml'}"
    breakdown = ", ".join(f"{count} {status}" for status, count in sorted(by_status.items()))
    if issue.segment is not None and by_status.get("active"):
        among = f"the {by_status['active']} active subscribers" + (f" of list {issue.list_name!r}" if issue.list_name else "")
        return f"segment {issue.segment.text!r} ({where}) matches none of {among}"
    if issue.list_name:
        if not by_status:
            names = store.list_names(conn)
            near = difflib.get_close_matches(issue.list_name, names, n=1)
            hint = (f"did you mean {near[0]!r}? " if near else "") + (
                f"lists with members: {', '.join(names)}" if names else "no list has members yet")
            return f"list {issue.list_name!r} ({where}) has no members; {hint}"
        return f"list {issue.list_name!r} ({where}) has no active subscriber ({breakdown})"
    if not by_status:
        return "there are no subscribers yet (`mailer subscribers add` or `import`)"
    return f"there is no active subscriber ({breakdown})"
