"""Real-shaped bounce mailbox messages, generated from templates (MTA styles observed in the wild).

Each `make_*` returns the raw bytes of one message a bounce mailbox receives. `original` is the
message as it left us (the bytes the SMTP sink or the outbox captured), `envelope_to` where the
report was delivered (our VERP address, or the plain bounce address when a relay lost it).

Styles: Postfix DSN (text/rfc822-headers), Gmail DSN (message/rfc822, 550-5.1.1 continuation lines),
Microsoft/Exchange Online DSN ("Undeliverable:", 5.1.10 RESOLVER.ADR.RecipientNotFound, base64 text
parts), Exim's plain-text bounce (X-Failed-Recipients, original inline, no DSN), a Postfix delay
warning, RFC 5965 ARF reports as Yahoo's and AOL's feedback loops send them (recipient redacted),
an out-of-office auto-reply, a DSN whose delivery-status part is broken, and garbage.
"""

from __future__ import annotations

import base64
import random
from email.utils import formatdate, make_msgid

# status → (SMTP reply code, Postfix wording, Gmail wording, Exchange wording)
STATUS_TEXT = {
    "5.1.1": ("550", "Recipient address rejected: User unknown in virtual mailbox table",
              "The email account that you tried to reach does not exist. Please try\n 550-5.1.1 double-checking the "
              "recipient's email address for typos or\n 550-5.1.1 unnecessary spaces. For more information, go to\n 550 5.1.1 "
              " https://support.google.com/mail/?p=NoSuchUser", "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"),
    "5.2.2": ("552", "Requested mail action aborted: exceeded storage allocation",
              "The recipient's inbox is out of storage space. Please direct the\n 552-5.2.2 recipient to\n 552 5.2.2 "
              " https://support.google.com/mail/?p=OverQuotaPerm", "STOREDRV.Deliver.Exception:QuotaExceededException; mailbox full"),
    "4.2.2": ("452", "Mailbox full, try again later",
              "The recipient's inbox is out of storage space and inbound mail\n 452-4.2.2 is currently being rejected. Please "
              "try again later.\n 452 4.2.2  https://support.google.com/mail/?p=OverQuotaTemp", "Mailbox full; retry later"),
    "5.1.10": ("550", "User unknown", "The email account that you tried to reach does not exist.",
               "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"),
    "5.7.1": ("550", "Message rejected due to local policy", "Our system has detected that this message is likely "
              "unsolicited mail.", "Service unavailable, Client host blocked using Spamhaus"),
}
CRLF_FREE = "\n"


def _headers_of(original: bytes) -> str:
    head = original.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    return head.decode("utf-8", "replace")


def _boundary(rng: random.Random) -> str:
    return f"{rng.getrandbits(64):016x}.{rng.randint(1000000000, 1999999999)}/mx.example.net"


def _date(rng: random.Random) -> str:
    return formatdate(1795000000 + rng.randint(0, 10_000_000), usegmt=True)


def postfix(original: bytes, recipient: str, envelope_to: str, status: str, rng: random.Random,
            action: str = "failed") -> bytes:
    code, text, _, _ = STATUS_TEXT[status]
    host = rng.choice(["mx1.mail.example.net", "smtp.relay.example.com", "mail.provider.example"])
    queue = f"{rng.getrandbits(40):010X}"
    boundary = _boundary(rng)
    delayed = action == "delayed"
    subject = "Delayed Mail (still being retried)" if delayed else "Undelivered Mail Returned to Sender"
    body = ("This is the mail system at host relay.example.org.\n\n"
            + ("####################################################################\n# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\n"
               "####################################################################\n\nYour message could not be delivered "
               "for 4.0 hours.\nIt will be retried until it is 5.0 days old.\n" if delayed else
               "I'm sorry to have to inform you that your message could not\nbe delivered to one or more recipients. "
               "It's attached below.\n\nFor further assistance, please send mail to postmaster.\n\n"
               "If you do so, please include this problem report. You can\ndelete your own text from the attached "
               "returned message.\n\n                   The mail system\n")
            + f"\n<{recipient}>: host {host}[192.0.2.{rng.randint(1, 254)}] said: {code} {status}\n    <{recipient}>: {text} (in reply to RCPT TO command)\n")
    return (f"Return-Path: <>\n"
            f"Delivered-To: {envelope_to}\n"
            f"Received: by relay.example.org (Postfix)\n\tid {queue}; {_date(rng)}\n"
            f"Date: {_date(rng)}\n"
            f"From: MAILER-DAEMON@relay.example.org (Mail Delivery System)\n"
            f"Subject: {subject}\n"
            f"To: {envelope_to}\n"
            f"Auto-Submitted: auto-replied\n"
            f"MIME-Version: 1.0\n"
            f"Content-Type: multipart/report; report-type=delivery-status;\n\tboundary=\"{boundary}\"\n"
            f"Message-Id: <{queue}.{rng.randint(1, 9999)}@relay.example.org>\n\n"
            f"This is a MIME-encapsulated message.\n\n"
            f"--{boundary}\nContent-Description: Notification\nContent-Type: text/plain; charset=us-ascii\n\n{body}\n"
            f"--{boundary}\nContent-Description: Delivery report\nContent-Type: message/delivery-status\n\n"
            f"Reporting-MTA: dns; relay.example.org\nX-Postfix-Queue-ID: {queue}\nX-Postfix-Sender: rfc822; {envelope_to}\n"
            f"Arrival-Date: {_date(rng)}\n\n"
            f"Final-Recipient: rfc822; {recipient}\nOriginal-Recipient: rfc822;{recipient}\nAction: {action}\n"
            f"Status: {status}\nRemote-MTA: dns; {host}\n"
            f"Diagnostic-Code: smtp; {code} {status} <{recipient}>: {text}\n"
            + (f"Will-Retry-Until: {_date(rng)}\n" if delayed else "") +
            f"\n--{boundary}\nContent-Description: Undelivered Message Headers\nContent-Type: text/rfc822-headers\n\n"
            f"{_headers_of(original)}\n\n--{boundary}--\n").encode("utf-8")


def gmail(original: bytes, recipient: str, envelope_to: str, status: str, rng: random.Random) -> bytes:
    code, _, text, _ = STATUS_TEXT[status]
    boundary = f"000000000000{rng.getrandbits(48):012x}"
    inner = f"000000000000{rng.getrandbits(48):012x}"
    mx = rng.choice(["gmail-smtp-in.l.google.com", "alt1.gmail-smtp-in.l.google.com"])
    diagnostic = f"smtp; {code}-{status} {text}"
    original_text = original.replace(b"\r\n", b"\n").decode("utf-8", "replace")
    return (f"Delivered-To: {envelope_to}\n"
            f"Return-Path: <>\n"
            f"Received: from mail-sor-f69.google.com (mail-sor-f69.google.com. [209.85.220.69])\n"
            f"        by mx.example.org for <{envelope_to}>; {_date(rng)}\n"
            f"MIME-Version: 1.0\n"
            f"From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>\n"
            f"To: {envelope_to}\n"
            f"Auto-Submitted: auto-replied\n"
            f"Subject: Delivery Status Notification (Failure)\n"
            f"References: <placeholder@example.org>\n"
            f"Message-ID: <{rng.getrandbits(64):x}.{rng.getrandbits(32):x}.GMR@mx.google.com>\n"
            f"Date: {_date(rng)}\n"
            f"Content-Type: multipart/report; boundary=\"{boundary}\"; report-type=delivery-status\n\n"
            f"--{boundary}\nContent-Type: multipart/related; boundary=\"{inner}\"\n\n"
            f"--{inner}\nContent-Type: text/html; charset=\"UTF-8\"\n\n"
            f"<html><body><h2>Address not found</h2><p>Your message wasn't delivered to <a>{recipient}</a> because the "
            f"address couldn't be found, or is unable to receive mail.</p></body></html>\n"
            f"--{inner}--\n"
            f"--{boundary}\nContent-Type: message/delivery-status\n\n"
            f"Reporting-MTA: dns; googlemail.com\nArrival-Date: {_date(rng)}\n\n"
            f"Final-Recipient: rfc822; {recipient}\nAction: failed\nStatus: {status}\nRemote-MTA: dns; {mx}. "
            f"(142.250.{rng.randint(0, 255)}.{rng.randint(0, 255)}, the server for the domain {recipient.split('@')[1]}.)\n"
            f"Diagnostic-Code: {diagnostic}\nLast-Attempt-Date: {_date(rng)}\n\n"
            f"--{boundary}\nContent-Type: message/rfc822\n\n{original_text}\n--{boundary}--\n").encode("utf-8")


def exchange(original: bytes, recipient: str, envelope_to: str, status: str, rng: random.Random) -> bytes:
    code, _, _, text = STATUS_TEXT[status]
    boundary = f"_{rng.getrandbits(96):024x}_"
    server = f"{rng.choice(['AM0PR', 'BN8PR', 'DB9PR'])}{rng.randint(10, 99)}MB{rng.randint(1000, 9999)}.eurprd0{rng.randint(1, 9)}.prod.outlook.com"
    human = base64.encodebytes(
        (f"Your message to {recipient} couldn't be delivered.\n{recipient.split('@')[0]} wasn't found at "
         f"{recipient.split('@')[1]}.\n\nRemote Server returned '{code} {status} {text}'\n").encode("utf-8")).decode("ascii")
    subject = _headers_of(original).split("Subject:", 1)[-1].split("\n", 1)[0].strip() if "Subject:" in _headers_of(original) else "Lettre"
    return (f"Received: from {server} ([::1]) by {server} with mapi id 15.20.{rng.randint(1000, 9999)}.{rng.randint(10, 99)};\n"
            f" {_date(rng)}\n"
            f"MIME-Version: 1.0\n"
            f"From: postmaster@outlook.com\n"
            f"To: <{envelope_to}>\n"
            f"Date: {_date(rng)}\n"
            f"Content-Type: multipart/report; report-type=delivery-status;\n\tboundary=\"{boundary}\"\n"
            f"X-MS-Exchange-Message-Is-Ndr:\n"
            f"Content-Language: en-US\n"
            f"Message-ID: <{rng.getrandbits(64):x}@{server}>\n"
            f"Subject: Undeliverable: {subject}\n"
            f"Auto-Submitted: auto-replied\n\n"
            f"--{boundary}\nContent-Type: text/plain; charset=\"utf-8\"\nContent-Transfer-Encoding: base64\n\n{human}\n"
            f"--{boundary}\nContent-Type: message/delivery-status\n\n"
            f"Reporting-MTA: dns;{server}\nReceived-From-MTA: dns;relay.example.org\nArrival-Date: {_date(rng)}\n\n"
            f"Original-Recipient: rfc822;{recipient}\nFinal-Recipient: rfc822;{recipient}\nAction: failed\n"
            f"Status: {status}\nDiagnostic-Code: smtp;{code} {status} {text}\n\n"
            f"--{boundary}\nContent-Type: text/rfc822-headers\n\n{_headers_of(original)}\n\n--{boundary}--\n").encode("utf-8")


def exim(original: bytes, recipient: str, envelope_to: str, status: str, rng: random.Random) -> bytes:
    code, text, _, _ = STATUS_TEXT[status]
    host = rng.choice(["mx.example.net", "mail.isp.example", "in1.smtp.example.com"])
    permanent = status.startswith("5")
    reason = ("SMTP error from remote mail server after RCPT TO:<{r}>:\n    {code} {status} <{r}>: {text}" if permanent else
              "retry timeout exceeded\n    SMTP error from remote mail server after RCPT TO:<{r}>:\n    {code} {status} {text}")
    original_text = original.replace(b"\r\n", b"\n").decode("utf-8", "replace")
    return (f"Return-path: <>\n"
            f"Envelope-to: {envelope_to}\n"
            f"Delivery-date: {_date(rng)}\n"
            f"Received: from Debian-exim by {host} with local (Exim 4.96)\n\tid 1t{rng.getrandbits(30):x}-00{rng.randint(10, 99)}\n"
            f"\tfor {envelope_to}; {_date(rng)}\n"
            f"X-Failed-Recipients: {recipient}\n"
            f"Auto-Submitted: auto-replied\n"
            f"From: Mail Delivery System <Mailer-Daemon@{host}>\n"
            f"To: {envelope_to}\n"
            f"Content-Type: text/plain; charset=utf-8\n"
            f"Subject: Mail delivery failed: returning message to sender\n"
            f"Message-Id: <E1t{rng.getrandbits(30):x}-00{rng.randint(10, 99)}@{host}>\n"
            f"Date: {_date(rng)}\n\n"
            f"This message was created automatically by mail delivery software.\n\n"
            f"A message that you sent could not be delivered to one or more of its\n"
            f"recipients. This is a permanent error. The following address(es) failed:\n\n"
            f"  {recipient}\n    host {host} [198.51.100.{rng.randint(1, 254)}]\n"
            f"    {reason.format(r=recipient, code=code, status=status, text=text)}\n\n"
            f"------ This is a copy of the message, including all the headers. ------\n\n"
            f"{original_text}").encode("utf-8")


def arf(original: bytes, recipient: str, envelope_from: str, rng: random.Random, style: str,
        feedback_type: str = "abuse") -> bytes:
    """Yahoo's CFL puts the envelope sender in Original-Mail-From; AOL's SComp redacts the
    recipient and keeps the original's headers (Return-Path among them)."""
    boundary = f"----=_Part_{rng.randint(100000, 999999)}_{rng.getrandbits(32)}"
    original_text = original.replace(b"\r\n", b"\n").decode("utf-8", "replace")
    if style == "yahoo":
        sender, agent = "Yahoo! Mail AntiSpam Feedback <feedback@arf.mail.yahoo.com>", "Yahoo!-Mail-Feedback/2.0"
        fields = (f"Feedback-Type: {feedback_type}\nUser-Agent: {agent}\nVersion: 1\nOriginal-Mail-From: <{envelope_from}>\n"
                  f"Original-Rcpt-To: <redacted@yahoo.com>\nArrival-Date: {_date(rng)}\nReported-Domain: example.org\n"
                  f"Source-IP: 192.0.2.{rng.randint(1, 254)}\nAuthentication-Results: mta.mail.yahoo.com; dkim=pass\n")
        redacted = original_text.replace(recipient, "redacted@yahoo.com")
        returned = f"Return-Path: <{envelope_from}>\n{redacted}" if rng.random() < 0.5 else redacted
    else:
        sender, agent = "AOL SComp <scomp@aol.net>", "AOL SComp"
        fields = (f"Feedback-Type: {feedback_type}\nUser-Agent: {agent}\nVersion: 0.1\nReceived-Date: {_date(rng)}\n"
                  f"Source-IP: 192.0.2.{rng.randint(1, 254)}\nReported-Domain: example.org\n"
                  f"Redacted-Address: redacted@\n")
        returned = f"Return-Path: <{envelope_from}>\n" + original_text.replace(recipient, "redacted@aol.com")
    return (f"Return-Path: <{sender.split('<')[1].rstrip('>')}>\n"
            f"From: {sender}\n"
            f"To: fbl@example.org\n"
            f"Subject: Email Feedback Report for IP 192.0.2.{rng.randint(1, 254)}\n"
            f"Date: {_date(rng)}\n"
            f"Message-ID: <{rng.getrandbits(64):x}@feedback.example>\n"
            f"MIME-Version: 1.0\n"
            f"Content-Type: multipart/report; report-type=feedback-report;\n\tboundary=\"{boundary}\"\n\n"
            f"--{boundary}\nContent-Type: text/plain; charset=\"US-ASCII\"\nContent-Transfer-Encoding: 7bit\n\n"
            f"This is an email abuse report for an email message received from IP 192.0.2.1 on {_date(rng)}.\n"
            f"For information, please review the Feedback Loop documentation.\n\n"
            f"--{boundary}\nContent-Type: message/feedback-report\n\n{fields}\n"
            f"--{boundary}\nContent-Type: message/rfc822\nContent-Disposition: inline\n\n{returned}\n"
            f"--{boundary}--\n").encode("utf-8")


def auto_reply(recipient: str, envelope_to: str, rng: random.Random) -> bytes:
    subject, text = rng.choice([
        ("Absence du bureau", "Bonjour,\n\nJe suis absent jusqu'au 4 janvier, sans accès à mes courriels.\n"
                              "Pour toute urgence, écrivez à accueil@example.net.\n\nCordialement"),
        ("Automatic reply: Le Fil du jeudi", "Thank you for your message. I am out of the office with limited access "
                                             "to email and will reply when I return on Monday."),
    ])
    return (f"Return-Path: <{recipient}>\nDelivered-To: {envelope_to}\nFrom: <{recipient}>\nTo: {envelope_to}\n"
            f"Subject: {subject}\nDate: {_date(rng)}\nMessage-ID: {make_msgid(domain='example.net')}\n"
            f"Auto-Submitted: auto-replied\nX-Autoreply: yes\nMIME-Version: 1.0\n"
            f"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n{text}\n").encode("utf-8")


def broken_dsn(recipient: str, envelope_to: str, rng: random.Random) -> bytes:
    """A delivery-status report whose status part names no recipient (truncated in transit)."""
    boundary = _boundary(rng)
    return (f"From: MAILER-DAEMON@relay.example.org\nTo: {envelope_to}\nSubject: Undelivered Mail\nDate: {_date(rng)}\n"
            f"MIME-Version: 1.0\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"{boundary}\"\n\n"
            f"--{boundary}\nContent-Type: text/plain\n\nSee the report below.\n"
            f"--{boundary}\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; relay.example.org\n\n"
            f"--{boundary}--\n").encode("utf-8")


def garbage(rng: random.Random) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(rng.randint(40, 400))).replace(b":", b"").replace(b"\n", b" ")


def dsn(original: bytes, envelope_to: str, rng: random.Random, *, final_recipient: str, original_recipient: str,
        diagnostic: str, status: str = "5.1.1", human: str = "") -> bytes:
    """A Postfix-shaped DSN whose RFC 3464 fields are given as written (`final_recipient` and
    `original_recipient` with their `rfc822;` type, `diagnostic` with its `smtp;` type), the human
    part `human` (default: the diagnostic), the original's headers returned."""
    boundary = _boundary(rng)
    queue = f"{rng.getrandbits(40):010X}"
    return (f"Return-Path: <>\nDelivered-To: {envelope_to}\nDate: {_date(rng)}\n"
            f"From: MAILER-DAEMON@relay.example.org (Mail Delivery System)\n"
            f"Subject: Undelivered Mail Returned to Sender\nTo: {envelope_to}\nAuto-Submitted: auto-replied\n"
            f"MIME-Version: 1.0\nContent-Type: multipart/report; report-type=delivery-status;\n\tboundary=\"{boundary}\"\n"
            f"Message-Id: <{queue}.{rng.randint(1, 9999)}@relay.example.org>\n\n"
            f"--{boundary}\nContent-Description: Notification\nContent-Type: text/plain; charset=utf-8\n\n"
            f"This is the mail system at host relay.example.org.\n\n{human or diagnostic}\n\n"
            f"--{boundary}\nContent-Description: Delivery report\nContent-Type: message/delivery-status\n\n"
            f"Reporting-MTA: dns; relay.example.org\nArrival-Date: {_date(rng)}\n\n"
            f"Final-Recipient: {final_recipient}\nOriginal-Recipient: {original_recipient}\nAction: failed\n"
            f"Status: {status}\nRemote-MTA: dns; mx.example.net\nDiagnostic-Code: {diagnostic}\n"
            f"\n--{boundary}\nContent-Description: Undelivered Message Headers\nContent-Type: text/rfc822-headers\n\n"
            f"{_headers_of(original)}\n\n--{boundary}--\n").encode("utf-8")
