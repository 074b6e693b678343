"""the ledger's indexes hold only the rows a send looks for: queued rows (claims), claimed rows (the
heartbeat, stale-claim recovery), sent rows by issue (is an issue partly sent: its public page)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01

Replaces `ix_deliveries_issue_status_id` and `ix_deliveries_issue_status_due` (every row of every issue,
whatever its status: each claim and each record moved the row to a new place in both) by partial indexes:
`ix_deliveries_queued` (issue_id, id) and `ix_deliveries_queued_due` (issue_id, due_at, id) over queued
rows, `ix_deliveries_sending` (claimed_by) over claimed rows, which the heartbeat (`renew_claims`)
read with a scan of the whole table before, and `ix_deliveries_sent` (issue_id) over sent rows. A claim
or a record still writes a new entry in the primary key, the (issue_id, subscriber_id) key and the
subscriber index: PostgreSQL cannot update a row in place (HOT) when a column an index names changes,
and a partial index's predicate names `status`. So no fillfactor either (measured: the same server CPU
per claim and record at 100 and at 50); the heartbeat, which changes `claimed_at` only, could use one. Both engines have partial indexes (SQLite since 3.8.0).

PostgreSQL only: the references of `deliveries` (issue_id -> issues, subscriber_id -> subscribers, ON
DELETE CASCADE) are kept by triggers that check a statement's rows as one set instead of the two
foreign-key checks per row, which were half of a freeze's time (one `SELECT … FOR KEY SHARE` per row
and reference: 400,000 for 200,000 recipients). The same guarantees, shown by tests/test_ledger.py on
both engines: a row naming a missing issue or subscriber is refused (SQLSTATE 23503, the whole
statement); deleting an issue or a subscriber deletes its rows; a parent's id referred to cannot change.
Concurrent writers: a DELETE of issues or subscribers first takes `deliveries` in SHARE mode, so it waits
for every transaction writing the ledger (a freeze in progress) and they wait for it; the insert's check
runs after its rows and sees what was committed before it. SQLite keeps its foreign keys (a check there
is one B-tree probe in the same process).
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

_QUEUED = sa.text("status = 'queued'")
_SENDING = sa.text("status = 'sending'")
_SENT = sa.text("status = 'sent'")


_PG_REFERENCES = [
    "ALTER TABLE deliveries DROP CONSTRAINT fk_deliveries_issue_id_issues",
    "ALTER TABLE deliveries DROP CONSTRAINT fk_deliveries_subscriber_id_subscribers",
    # the rows a statement inserted, checked as one set (a transition table, one anti-join per reference)
    """CREATE FUNCTION deliveries_check_references() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
    DECLARE
        missing text;
    BEGIN
        SELECT format('issue_id=%s', n.issue_id) INTO missing FROM new_rows n
            WHERE NOT EXISTS (SELECT FROM issues i WHERE i.id = n.issue_id) LIMIT 1;
        IF missing IS NULL THEN
            SELECT format('subscriber_id=%s', n.subscriber_id) INTO missing FROM new_rows n
                WHERE NOT EXISTS (SELECT FROM subscribers s WHERE s.id = n.subscriber_id) LIMIT 1;
        END IF;
        IF missing IS NOT NULL THEN
            RAISE foreign_key_violation USING MESSAGE = format(
                'insert or update on table "deliveries" violates its reference: (%s) is not present', missing);
        END IF;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER deliveries_references_inserted AFTER INSERT ON deliveries
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION deliveries_check_references()""",
    # an UPDATE that changes a reference (nothing in mailer does): checked row by row, as a foreign key would
    """CREATE FUNCTION deliveries_check_changed_reference() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
    BEGIN
        IF NOT EXISTS (SELECT FROM issues WHERE id = NEW.issue_id FOR KEY SHARE) THEN
            RAISE foreign_key_violation USING MESSAGE = format(
                'insert or update on table "deliveries" violates its reference: (issue_id=%s) is not present',
                NEW.issue_id);
        END IF;
        IF NOT EXISTS (SELECT FROM subscribers WHERE id = NEW.subscriber_id FOR KEY SHARE) THEN
            RAISE foreign_key_violation USING MESSAGE = format(
                'insert or update on table "deliveries" violates its reference: (subscriber_id=%s) is not present',
                NEW.subscriber_id);
        END IF;
        RETURN NEW;
    END $$""",
    """CREATE TRIGGER deliveries_references_changed BEFORE UPDATE OF issue_id, subscriber_id ON deliveries
    FOR EACH ROW WHEN (OLD.issue_id IS DISTINCT FROM NEW.issue_id OR OLD.subscriber_id IS DISTINCT FROM NEW.subscriber_id)
    EXECUTE FUNCTION deliveries_check_changed_reference()""",
    # a parent's DELETE (or change of id) first waits for every transaction writing the ledger, and holds
    # them off until it commits: no row can be added for a parent going away
    """CREATE FUNCTION deliveries_hold_writers() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
    BEGIN
        LOCK TABLE deliveries IN SHARE MODE;
        IF TG_OP = 'TRUNCATE' AND EXISTS (SELECT FROM deliveries) THEN
            RAISE feature_not_supported USING MESSAGE = format(
                'cannot truncate table "%s": table "deliveries" refers to it (truncate "deliveries" first)',
                TG_TABLE_NAME);
        END IF;
        IF TG_OP = 'UPDATE' AND EXISTS (SELECT FROM deliveries WHERE CASE TG_TABLE_NAME
                WHEN 'issues' THEN issue_id ELSE subscriber_id END = OLD.id) THEN
            RAISE foreign_key_violation USING MESSAGE = format(
                'update on table "%s" violates the reference from table "deliveries": (id=%s) is still referred to',
                TG_TABLE_NAME, OLD.id);
        END IF;
        RETURN CASE TG_LEVEL WHEN 'ROW' THEN NEW END;
    END $$""",
    # ON DELETE CASCADE, for the whole statement's parents at once
    """CREATE FUNCTION deliveries_cascade() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
    BEGIN
        IF TG_TABLE_NAME = 'issues' THEN
            DELETE FROM deliveries WHERE issue_id IN (SELECT id FROM old_rows);
        ELSE
            DELETE FROM deliveries WHERE subscriber_id IN (SELECT id FROM old_rows);
        END IF;
        RETURN NULL;
    END $$""",
]
for _parent in ("issues", "subscribers"):
    _PG_REFERENCES += [
        f"""CREATE TRIGGER deliveries_parent_deleting BEFORE DELETE OR TRUNCATE ON {_parent}
        FOR EACH STATEMENT EXECUTE FUNCTION deliveries_hold_writers()""",
        f"""CREATE TRIGGER deliveries_parent_id_changed BEFORE UPDATE OF id ON {_parent}
        FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id) EXECUTE FUNCTION deliveries_hold_writers()""",
        f"""CREATE TRIGGER deliveries_parent_deleted AFTER DELETE ON {_parent}
        REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION deliveries_cascade()""",
    ]
_PG_REFERENCES_DOWN = [
    *(f"DROP TRIGGER {name} ON {parent}" for parent in ("issues", "subscribers")
      for name in ("deliveries_parent_deleting", "deliveries_parent_id_changed", "deliveries_parent_deleted")),
    "DROP TRIGGER deliveries_references_changed ON deliveries",
    "DROP TRIGGER deliveries_references_inserted ON deliveries",
    *(f"DROP FUNCTION {name}()" for name in ("deliveries_cascade", "deliveries_hold_writers",
                                             "deliveries_check_changed_reference", "deliveries_check_references")),
    "ALTER TABLE deliveries ADD CONSTRAINT fk_deliveries_issue_id_issues FOREIGN KEY (issue_id) "
    "REFERENCES issues (id) ON DELETE CASCADE",
    "ALTER TABLE deliveries ADD CONSTRAINT fk_deliveries_subscriber_id_subscribers FOREIGN KEY (subscriber_id) "
    "REFERENCES subscribers (id) ON DELETE CASCADE",
]


def upgrade() -> None:
    op.drop_index('ix_deliveries_issue_status_id', table_name='deliveries')
    op.drop_index('ix_deliveries_issue_status_due', table_name='deliveries')
    op.create_index('ix_deliveries_queued', 'deliveries', ['issue_id', 'id'],
                    postgresql_where=_QUEUED, sqlite_where=_QUEUED)
    op.create_index('ix_deliveries_queued_due', 'deliveries', ['issue_id', 'due_at', 'id'],
                    postgresql_where=_QUEUED, sqlite_where=_QUEUED)
    op.create_index('ix_deliveries_sending', 'deliveries', ['claimed_by'],
                    postgresql_where=_SENDING, sqlite_where=_SENDING)
    op.create_index('ix_deliveries_sent', 'deliveries', ['issue_id'], postgresql_where=_SENT, sqlite_where=_SENT)
    if op.get_bind().dialect.name == "postgresql":
        for statement in _PG_REFERENCES:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in _PG_REFERENCES_DOWN:
            op.execute(statement)
    op.drop_index('ix_deliveries_sent', table_name='deliveries')
    op.drop_index('ix_deliveries_sending', table_name='deliveries')
    op.drop_index('ix_deliveries_queued_due', table_name='deliveries')
    op.drop_index('ix_deliveries_queued', table_name='deliveries')
    op.create_index('ix_deliveries_issue_status_due', 'deliveries', ['issue_id', 'status', 'due_at', 'id'])
    op.create_index('ix_deliveries_issue_status_id', 'deliveries', ['issue_id', 'status', 'id'])
