"""Which fast tests `make test-fast` leaves to `make test`: read pytest's `--durations=0` report on
standard input and write `tests/measured_slow.txt` (setup + call + teardown ≥ THRESHOLD seconds), keeping
in each test file its cheapest test so that every file still has one test in the fast run.
Run through `make fast-list`; the list only moves tests between `make test-fast` and `make test`
(`make test` and CI run every test)."""

from __future__ import annotations

import collections
import re
import sys

THRESHOLD = 0.1  # seconds of one test's setup + call + teardown, as measured by the run that made the list
LINE = re.compile(r"\s*([\d.]+)s (setup|call|teardown)\s+(\S+)")


def main() -> None:
    spent: collections.Counter[str] = collections.Counter()
    for line in sys.stdin:
        found = LINE.match(line)
        if found:
            spent[found.group(3)] += float(found.group(1))
    by_file: dict[str, list[str]] = collections.defaultdict(list)
    for test in spent:
        by_file[test.split("::")[0]].append(test)
    slow = set()
    for tests in by_file.values():
        over = [t for t in tests if spent[t] >= THRESHOLD]
        if len(over) == len(tests):  # the file would have no fast test left: keep its cheapest
            over.remove(min(tests, key=spent.__getitem__))
        slow.update(over)
    print(f"# {len(slow)} tests measured at >= {THRESHOLD} s each in a `make test-fast` run (tests/slow_list.py);")
    print("# `make test-fast` leaves them to `make test`, which runs every test. Regenerate: `make fast-list`.")
    for test in sorted(slow):
        print(test)


if __name__ == "__main__":
    main()
