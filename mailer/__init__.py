"""mailer: brief files in, a responsive newsletter out, sent exactly once to a managed list."""

__version__ = "0.1.0"
