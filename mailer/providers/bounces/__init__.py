"""Bounce and complaint mailboxes: `mailer bounces process SOURCE` and the scheduler's poll.

- `verp`: the per-delivery envelope sender `bounces+TOKEN@domain` (SMTP MAIL FROM, outbox Return-Path);
- `reading`: one message → bounce (hard/soft, RFC 3463 status), complaint (RFC 5965 ARF), other or
  unparseable (`flufl.bounce` + RFC 3464 DSN fields);
- `sources`: Maildir, mbox and IMAP behind one small interface;
- `process`: matching a report to its delivery, recording it, suppressing through the status rules.
"""
