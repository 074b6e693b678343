"""Scheduling: `cadence` (the DST-safe cron trigger), `plan` (what is due, ready, missed) and
`runtime` (the APScheduler process)."""
