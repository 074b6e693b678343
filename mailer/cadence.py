"""Stable class path for pickled triggers: job stores written before the layout change hold
`mailer.cadence.CadenceTrigger` (the trigger now lives in `mailer.scheduling.cadence`)."""

from .scheduling.cadence import CadenceTrigger

__all__ = ["CadenceTrigger"]
