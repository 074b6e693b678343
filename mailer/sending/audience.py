"""Who an issue goes to: every active subscriber, narrowed by issue.toml's `list` and `segment` (AND).

`build`, `preview` and `send` call `audience_size` before anything is sent: it checks the segment's
attribute names against those in use (`citty` is a typo, named with its column) and counts.
"""

from __future__ import annotations

from ..content.briefs import read_text
from ..content.issue import ISSUE_FILE, Issue, key_line, segment_error
from ..store import Store
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

