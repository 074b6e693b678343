"""Subscriber statuses, the suppression ranking and the paused reason of a graceful stop: plain constants (no imports), so the command line
can offer them as choices without loading the database layer. This module is their one owner: import them from here (`tests/test_owners.py`)."""

SUBSCRIBER_STATUSES = ("pending", "active", "unsubscribed", "bounced", "complained")
SUPPRESSED_STATUSES = ("unsubscribed", "bounced", "complained")
# Suppressions only ever go up: a complaint outranks a bounce, which outranks an unsubscribe.
SUPPRESSION_RANK = {"pending": 0, "active": 0, "unsubscribed": 1, "bounced": 2, "complained": 3}
# An erased person's row keeps only this prefix and a hash of the address (see subscribers.erasure.tombstone_key):
# it is nobody's address, so lists and counts leave it out.
TOMBSTONE_PREFIX = "erased:"
# provider_events.provider of what bounce mailboxes report (providers.bounces → subscribers.feedback)
MAILBOX_PROVIDER = "mailbox"
# provider_events.kind of a soft bounce (the message refused for now, the address not in question): a bounce
# mailbox's `soft_bounced` (a failed DSN, 4.x.x) and a webhook's `blocked` (SendGrid's bounce of type
# "blocked"). Each is a `soft_bounce` line of the person's history (subscribers.feedback) and counts in an
# issue's soft bounces (`mailer report`); only the mailbox's count towards MAILER_SOFT_BOUNCE_LIMIT.
SOFT_BOUNCE_KINDS = ("soft_bounced", "blocked")

# The paused reason a graceful stop (SIGTERM, Ctrl-C) leaves on an issue with deliveries left: the send
# loop writes it, the scheduler resumes such a send (any other paused reason holds it for the operator).
STOPPED = "stopped (SIGTERM or Ctrl-C); run the same command to resume"
