"""mailer: brief files in, a responsive newsletter out, sent to a managed list: nobody skipped, a
graceful stop repeats nobody, a crash may repeat only what was in flight (see README, "Sending")."""

__version__ = "0.1.0"
