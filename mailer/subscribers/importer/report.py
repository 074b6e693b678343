"""What an import did: the counts, the rejected rows, how the file was read, and the summary."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ...errors import MailerError
from .encoding import plural

MAX_KEPT_REJECTIONS = 10_000


class ImportStopped(MailerError):
    """The import stopped after writing part of the file; the message says what was written."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Rejection:
    line: int
    value: str
    reason: str


@dataclass
class LayoutInfo:
    """What the parser decided about the file's columns (sent before its rows)."""

    format_label: str = ""
    delimiter: str = ","
    attributes: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    has_header: bool = True
    status_note: str = ""


@dataclass
class ParseStats:
    """Values the parser could not use, by kind: count and first example (sent after the rows)."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, tuple[int, str]] = field(default_factory=dict)
    empty_attributes: list[str] = field(default_factory=list)  # attribute columns with no value on any row

    def note(self, kind: str, line: int, value: str) -> None:
        self.counts[kind] += 1
        self.examples.setdefault(kind, (line, value[:80]))

    def warnings(self) -> list[str]:
        what = {"timezone": ("time zone", "not an IANA name such as Europe/Paris; left unset (MAILER_TIMEZONE applies: local-time sends)"),
                "language": ("language", "left empty"),
                "created_at": ("sign-up date", "not a date; the import date is used")}
        out = []
        for kind, count in sorted(self.counts.items()):
            label, consequence = what[kind]
            line, value = self.examples[kind]
            out.append(f"{label} not understood on {plural(count, 'row')} (first: line {line}, {value!r}): "
                       f"{consequence}")
        return out


@dataclass
class ImportReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    resubscribed: int = 0
    activated: int = 0  # pending people the file says are subscribed, made active
    added_as: Counter = field(default_factory=Counter)        # new people whose status is not active
    suppressed_now: Counter = field(default_factory=Counter)  # existing people the file suppressed
    kept: Counter = field(default_factory=Counter)            # people left as they were: status (or "erased") → n
    rejections: list[Rejection] = field(default_factory=list)
    dry_run: bool = False
    encoding: str = ""
    format_label: str = ""
    delimiter: str = ","
    attributes: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    empty_columns: list[str] = field(default_factory=list)
    status_note: str = ""
    warnings: list[str] = field(default_factory=list)
    written_batches: int = 0
    has_header: bool = False

    @property
    def rows(self) -> int:
        """Data rows accounted for (blank lines are no rows)."""
        return self.added + self.updated + self.unchanged + self.rejected + sum(self.kept.values())

    @property
    def suppressed_kept(self) -> int:
        return sum(self.kept.values())

    def add(self, other: "ImportReport") -> None:
        """Add the counts of `other` (a batch) to these."""
        for name in ("added", "updated", "unchanged", "rejected", "resubscribed", "activated"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("added_as", "suppressed_now", "kept"):
            getattr(self, name).update(getattr(other, name))

    def reject(self, item: Rejection) -> None:
        """Count every rejection; keep the first MAX_KEPT_REJECTIONS (memory stays flat on a bad file)."""
        self.rejected += 1
        if len(self.rejections) < MAX_KEPT_REJECTIONS:
            self.rejections.append(item)

    def counts_line(self) -> str:
        """`added 120, updated 3, unchanged 40, rejected 3; 1 more left unsubscribed (…)`."""
        def detail(counter: Counter, prefix: str) -> str:
            parts = [f"{n} {prefix}{status}" for status, n in sorted(counter.items())]
            return f" ({', '.join(parts)})" if parts else ""

        updated_details = Counter({f"now {status}": n for status, n in self.suppressed_now.items()})
        if self.resubscribed:
            updated_details["resubscribed"] = self.resubscribed
        if self.activated:
            updated_details["now active"] = self.activated
        if self.dry_run:
            text = (f"would add {self.added}{detail(self.added_as, 'as ')}, would update {self.updated}"
                    f"{detail(updated_details, '')}, unchanged {self.unchanged}, rejected {self.rejected}")
        else:
            text = (f"added {self.added}{detail(self.added_as, 'as ')}, updated {self.updated}"
                    f"{detail(updated_details, '')}, unchanged {self.unchanged}, rejected {self.rejected}")
        kept = sum(self.kept.values())
        if kept:
            if len(self.kept) == 1:
                text += f"; {kept} more left {next(iter(self.kept))}"
            else:
                text += f"; {kept} more left as they were: " + ", ".join(
                    f"{n} {status}" for status, n in sorted(self.kept.items()))
            text += " (an import never re-activates anyone)"
        return text + (" — dry run: nothing written" if self.dry_run else "")

    def summary(self) -> str:
        """The counts line, then how the file was read, how statuses were decided when a column or
        the file's kind said so, the attribute columns it filled (and those empty on every row, which
        store nothing) and any warnings."""
        lines = [self.counts_line()]
        read_as = [self.format_label or "generic CSV", self.encoding, f"delimiter {self.delimiter!r}"]
        lines.append("read as " + ", ".join(part for part in read_as if part))
        if self.status_note:
            lines.append(self.status_note)
        if self.attributes:
            lines.append("other columns kept as attributes: " + ", ".join(self.attributes))
        if self.empty_columns:
            lines.append("empty columns, not stored: " + ", ".join(self.empty_columns))
        if self.ignored:
            lines.append("columns ignored: " + ", ".join(self.ignored))
        lines.extend(f"warning: {warning}" for warning in self.warnings)
        return "\n".join(lines)
