"""The database schema (SQLAlchemy Core), shared by SQLite and PostgreSQL.

Migrations in `mailer/store/migrations/versions/` must create exactly these tables:
`tests/test_schema_drift.py` runs them all on an empty SQLite file and a fresh PostgreSQL schema and
compares the result with this MetaData (Alembic's `compare_metadata`).
"""

from __future__ import annotations

from sqlalchemy import (JSON, BigInteger, Boolean, Column, DateTime, Float, ForeignKey, Index, Integer, MetaData,
                        String, Table, Text, UniqueConstraint, text, true)

# BIGINT on PostgreSQL, but INTEGER on SQLite so the column is a rowid alias (autoincrement).
BigId = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData(naming_convention={
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})

DELIVERY_STATUSES = ("queued", "sending", "sent", "failed", "skipped")
ISSUE_STATUSES = ("draft", "sending", "paused", "sent")

subscribers = Table(
    "subscribers", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("email", String(320), nullable=False, unique=True, doc="normalised: trimmed, lower-cased"),
    Column("email_given", String(320), nullable=False, doc="as the person or the import gave it"),
    Column("name", String(200), nullable=False, default=""),
    Column("language", String(16), nullable=False, default=""),
    Column("status", String(16), nullable=False),
    Column("source", String(64), nullable=False, default=""),
    Column("attributes", JSON, nullable=False, default=dict),
    Column("import_digest", String(32), nullable=True, doc="digest of the last imported row, to skip unchanged rows"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("confirmed_at", DateTime(timezone=True), nullable=True),
    Column("unsubscribed_at", DateTime(timezone=True), nullable=True),
)
Index("ix_subscribers_status_id", subscribers.c.status, subscribers.c.id)

subscriber_events = Table(
    "subscriber_events", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("subscriber_id", BigId, ForeignKey("subscribers.id", ondelete="CASCADE"), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("kind", String(32), nullable=False, doc="created, status, updated, imported, erased…"),
    Column("old_status", String(16), nullable=True),
    Column("new_status", String(16), nullable=True),
    Column("source", String(64), nullable=False, default="", doc="cli, import, web, webhook, send…"),
    Column("reason", Text, nullable=False, default=""),
    Column("issue_id", BigInteger, nullable=True,
           doc="the issue a change came from (an unsubscribe link's or a bounce's issue), for reports"),
)
Index("ix_subscriber_events_subscriber", subscriber_events.c.subscriber_id, subscriber_events.c.id)

list_members = Table(
    "list_members", metadata,
    Column("list_name", String(100), primary_key=True),
    Column("subscriber_id", BigId, ForeignKey("subscribers.id", ondelete="CASCADE"), primary_key=True),
)
Index("ix_list_members_subscriber", list_members.c.subscriber_id)

issues = Table(
    "issues", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("slug", String(200), nullable=False, unique=True),
    Column("subject", Text, nullable=False),
    Column("list_name", String(100), nullable=True),
    Column("status", String(16), nullable=False, default="draft"),
    Column("frozen_at", DateTime(timezone=True), nullable=True),
    Column("max_subscriber_id", BigInteger, nullable=True, doc="the freeze watermark (listmonk's max-id)"),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("paused_reason", Text, nullable=True),
    Column("web_html", Text, nullable=True, doc="the web version, without personal values"),
    Column("issue_date", String(10), nullable=True),
    Column("rate_next_at", Float, nullable=True, doc="the rate limit's schedule, shared by every worker (epoch s)"),
    Column("public", Boolean, nullable=False, server_default=true(),
           doc="listed in /archive and served at /issues/SLUG (issue.toml `archive`, else: not sent to a list)"),
    Column("send_local", String(32), nullable=True,
           doc="a local-time send: the wall time (ISO, no offset) each recipient gets it at in their zone"),
    Column("released_before", DateTime(timezone=True), nullable=True,
           doc="rows due at or before this are claimable however late (--release-missed, --now)"),
)

deliveries = Table(
    "deliveries", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("issue_id", BigId, ForeignKey("issues.id", ondelete="CASCADE"), nullable=False),
    Column("subscriber_id", BigId, ForeignKey("subscribers.id", ondelete="CASCADE"), nullable=False),
    Column("status", String(16), nullable=False, default="queued"),
    Column("attempts", Integer, nullable=False, default=0),
    Column("provider_message_id", String(200), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("claimed_by", String(120), nullable=True),
    Column("claimed_at", DateTime(timezone=True), nullable=True),
    Column("sent_at", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("due_at", DateTime(timezone=True), nullable=True,
           doc="a local-time send's release instant for this recipient (NULL: claimable at once)"),
    Column("due_zone", String(64), nullable=True, doc="the IANA zone due_at was computed in"),
    UniqueConstraint("issue_id", "subscriber_id", name="uq_deliveries_issue_subscriber"),
)
# On PostgreSQL these two references of `deliveries` are kept by set-based triggers (revision 0009:
# a freeze checks its rows as one set instead of two foreign-key probes per row), not by foreign keys;
# a schema comparison there leaves them out. SQLite keeps them as declared.
POSTGRESQL_TRIGGER_REFERENCES = frozenset({"fk_deliveries_issue_id_issues", "fk_deliveries_subscriber_id_subscribers"})

editions = Table(
    "editions", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("issue_id", BigId, ForeignKey("issues.id", ondelete="CASCADE"), nullable=False),
    Column("number", Integer, nullable=False, doc="1 for the content frozen by the first send, +1 per `--rebuild`"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("reason", String(16), nullable=False, doc="send (the first freeze), rebuild, or migrated (a send "
                                                      "started before editions were stored: frozen at its resume)"),
    Column("subject", Text, nullable=False, doc="as sent (typeset)"),
    Column("html", Text, nullable=False, doc="compiled HTML with its slot markers"),
    Column("text", Text, nullable=False, doc="the text part with its slot markers"),
    Column("greeting", Text, nullable=False, doc="the greeting pattern ({name}); '' = none"),
    Column("headers", JSON, nullable=False, doc="the settings behind the headers that do not vary per recipient "
                                               "(From, Reply-To, List-Id): name, from_address, reply_to, list_id"),
    Column("template", String(200), nullable=False),
    Column("mailer_version", String(32), nullable=False),
    Column("content_hash", String(64), nullable=False, doc="SHA-256 of what is sent (edition.content_hash)"),
    Column("sent_before", Integer, nullable=False, default=0,
           doc="deliveries already sent (with earlier editions) when this edition was made"),
    Column("language", String(16), nullable=False, default="", server_default="",
           doc="the fixed strings' language of html/text/greeting (the default variant); '' before revision 0006"),
    Column("forced_language", String(16), nullable=True, doc="issue.toml `language` when it forces one"),
    Column("segment", Text, nullable=True, doc="issue.toml `segment` as written (the frozen audience's definition; "
                                               "`--include-new` draws newcomers with it)"),
    Column("segment_zone", String(64), nullable=True, doc="the zone the segment's dates were read in (MAILER_TIMEZONE)"),
    Column("variants", JSON, nullable=False, default=dict, server_default="{}",
           doc="the other languages' {language: {html, text, greeting}} (render.render_variants)"),
    UniqueConstraint("issue_id", "number", name="uq_editions_issue_number"),
)

# partial indexes (revision 0009): only the rows a send looks for, so recording a row as sent writes no
# entry in them. A query can use one only when its WHERE says the same status as a literal (the
# `QUEUED_ROW` / `CLAIMED_ROW` / `SENT_ROW` conditions of `common.py`), not as a bound parameter.
_QUEUED_ONLY = text("status = 'queued'")
_SENDING_ONLY = text("status = 'sending'")
_SENT_ONLY = text("status = 'sent'")
# a local-time send's queued rows, by release instant (revision 0010: an ordinary send's rows, due_at
# NULL, are not in it; `waves.released` says `due_at IS NOT NULL` so its queries can use it)
_QUEUED_AND_DUE = text("status = 'queued' AND due_at IS NOT NULL")
Index("ix_deliveries_queued", deliveries.c.issue_id, deliveries.c.id,
      postgresql_where=_QUEUED_ONLY, sqlite_where=_QUEUED_ONLY)
Index("ix_deliveries_subscriber", deliveries.c.subscriber_id)
Index("ix_deliveries_queued_due", deliveries.c.issue_id, deliveries.c.due_at, deliveries.c.id,
      postgresql_where=_QUEUED_AND_DUE, sqlite_where=_QUEUED_AND_DUE)
Index("ix_deliveries_sending", deliveries.c.claimed_by, postgresql_where=_SENDING_ONLY, sqlite_where=_SENDING_ONLY)
Index("ix_deliveries_sent", deliveries.c.issue_id, postgresql_where=_SENT_ONLY, sqlite_where=_SENT_ONLY)

provider_events = Table(
    "provider_events", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("provider", String(32), nullable=False),
    Column("provider_event_id", String(200), nullable=False),
    Column("kind", String(32), nullable=False, doc="normalised: delivered, bounced, complained, unsubscribed, dropped, …"),
    Column("email", String(320), nullable=False, default=""),
    Column("subscriber_id", BigInteger, nullable=True),
    Column("issue_id", BigInteger, nullable=True),
    Column("occurred_at", DateTime(timezone=True), nullable=True),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("reason", Text, nullable=False, default=""),
    Column("payload", JSON, nullable=False, doc="the raw event, as received"),
    UniqueConstraint("provider", "provider_event_id", name="uq_provider_events_provider_event"),
)
Index("ix_provider_events_subscriber", provider_events.c.subscriber_id)


# Click tracking (content/tracking.py): each edition's tracked URLs, stored with the edition (a
# `--rebuild` makes a new edition with its own positions 1…; clicks on an older edition's links
# keep resolving to that edition's URLs). Position 0 is the open pixel and has no row here.
links = Table(
    "links", metadata,
    Column("edition_id", BigId, ForeignKey("editions.id", ondelete="CASCADE"), primary_key=True),
    Column("position", Integer, primary_key=True, autoincrement=False),
    Column("url", Text, nullable=False),
)

# One row per delivery (edition, subscriber) and link position: `clicks` = every follow, the row
# itself = one unique click. Erased with the person (ON DELETE CASCADE, and `Store.purge`).
link_clicks = Table(
    "link_clicks", metadata,
    Column("edition_id", BigId, ForeignKey("editions.id", ondelete="CASCADE"), primary_key=True),
    Column("subscriber_id", BigId, ForeignKey("subscribers.id", ondelete="CASCADE"), primary_key=True),
    Column("position", Integer, primary_key=True, autoincrement=False, doc="0 = the open pixel"),
    Column("clicks", Integer, nullable=False, default=1, doc="follows by the reader (not scanner_hits)"),
    Column("scanner_hits", Integer, nullable=False, default=0, server_default="0",
           doc="fetches by a known link scanner or bot (sending/scanners.py): never clicks"),
    Column("first_at", DateTime(timezone=True), nullable=False),
    Column("last_at", DateTime(timezone=True), nullable=False),
)
Index("ix_subscriber_events_issue", subscriber_events.c.issue_id)
