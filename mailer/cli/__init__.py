"""The command line (`mailer`): click commands over the library; errors become one line and an exit code."""

from .main import main

__all__ = ["main"]
