"""The command line (`mailer`): click commands over the library; errors become one line and an exit code.

`main` — the group and the small commands; `sending`, `people`, `schedule`, `bounces`, `deliverability`
(`dkim keygen`, `doctor`) — the other commands
(importing them registers them on `main`).
"""

from . import bounces, deliverability, people, schedule, sending  # noqa: F401 - registers their commands
from .main import main

__all__ = ["main"]
