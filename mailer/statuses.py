"""Subscriber statuses and the suppression ranking: plain constants (no imports), so the command line
can offer them as choices without loading the database layer. `schema` re-exports them."""

SUBSCRIBER_STATUSES = ("pending", "active", "unsubscribed", "bounced", "complained")
SUPPRESSED_STATUSES = ("unsubscribed", "bounced", "complained")
# Suppressions only ever go up: a complaint outranks a bounce, which outranks an unsubscribe.
SUPPRESSION_RANK = {"pending": 0, "active": 0, "unsubscribed": 1, "bounced": 2, "complained": 3}
# An erased person's row keeps only this prefix and a hash of the address (see subscribers.tombstone_key):
# it is nobody's address, so lists and counts leave it out.
TOMBSTONE_PREFIX = "erased:"
