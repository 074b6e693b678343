"""Stable names for the scheduler's persisted job store (the runtime lives in `mailer.scheduling.runtime`).

APScheduler stores each job as a textual reference (`mailer.scheduler:send_due_issue`,
`mailer.scheduler:run_cadence`, `mailer.scheduler:poll_bounce_mailbox`) and pickles its trigger by class path (`mailer.scheduler.CadenceTrigger`
in stores written before the trigger moved). Rows written by any earlier version must keep loading
after an upgrade, so these names stay here; new jobs are written with the same references.
"""

from .scheduling.cadence import CadenceTrigger
from .scheduling.runtime import poll_bounce_mailbox, run_cadence, send_due_issue

__all__ = ["CadenceTrigger", "poll_bounce_mailbox", "run_cadence", "send_due_issue"]
