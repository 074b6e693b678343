"""Bounce mailboxes: where the reports are read from, and how a processed one is set aside.

One small interface (`MailboxSource`: `messages()` yields (key, bytes); `set_aside(key)` marks one
processed) over three kinds, picked by `open_source(SOURCE)`:

- a **Maildir** folder (`cur/ new/ tmp/`, stdlib `mailbox.Maildir`): a processed message moves (flag
  Seen) to the folder `Processed` under it, so the inbox keeps only what still needs a look. Folders
  are Maildir++ (Courier's layout, which Dovecot and IMAP clients read): sub-folders are siblings with
  dotted names inside the top Maildir. So for `~/Maildir` it is `~/Maildir/.Processed`, and for a
  folder `~/Maildir/.bounces` (its parent a Maildir, its name starting with a dot) it is
  `~/Maildir/.bounces.Processed` (made with cur/ new/ tmp/ and the `maildirfolder` file, as Dovecot
  makes folders), which IMAP lists as `bounces.Processed` (or `bounces/Processed`);
- an **mbox** file (stdlib `mailbox.mbox`): read only, never rewritten; what was processed is known
  from the store (each message's digest, see `process`);
- **IMAP** (`imapclient`): `imap://user@host[:port]/FOLDER` is IMAPS (TLS from the first byte, port
  993, certificate verified); `imap+starttls://` (port 143) upgrades with STARTTLS; `imap+plain://`
  sends the password in clear and is for a server on loopback only. The password is
  MAILER_IMAP_PASSWORD. A processed message gets the flags `\\Seen` and `$MailerProcessed` (RFC 3501
  keyword; the search skips it next time) and, with `?move=FOLDER` in the URL, is moved there (RFC 6851
  MOVE, or COPY + expunge). Messages are fetched with BODY.PEEK[], so reading marks nothing.

Messages not set aside (unparseable ones) stay exactly where they were. Errors are `MailboxError`:
one line naming the source (never the password).
"""

from __future__ import annotations

import mailbox
import os
import socket
import ssl
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, unquote, urlsplit

from ...errors import MailerError

PROCESSED_FOLDER = "Processed"
PROCESSED_KEYWORD = "$MailerProcessed"
IMAP_SCHEMES = {"imap": ("ssl", 993), "imaps": ("ssl", 993), "imap+starttls": ("starttls", 143),
                "imap+plain": ("plain", 143)}
FETCH_CHUNK = 50


class MailboxError(MailerError):
    """A bounce mailbox that cannot be opened or read (one line, naming it)."""

    exit_code = 2


class MailboxSource(ABC):
    """Messages of one mailbox. Use as a context manager; `messages()` once per opening."""

    kind: str = "mailbox"
    # True when set_aside() really removes or flags the message; False (mbox) when only the store
    # remembers what was processed.
    sets_aside: bool = True

    def __init__(self, label: str) -> None:
        self.label = label

    def check(self) -> None:
        """What can be checked without reading (folder shape, a password to log in with); MailboxError."""

    def open(self) -> None:
        """Connect or check the folder; raises MailboxError."""
        self.check()

    def close(self) -> None:
        """Release the connection or lock."""

    @abstractmethod
    def messages(self) -> Iterator[tuple[object, bytes]]:
        """(key, raw bytes) for each message not yet set aside."""

    def set_aside(self, key: object) -> None:
        """Mark one message processed so `messages()` never yields it again."""

    def __enter__(self) -> "MailboxSource":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MaildirSource(MailboxSource):
    kind = "maildir"

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = path
        self._box: mailbox.Maildir | None = None
        self._done: mailbox.Maildir | None = None

    def check(self) -> None:
        missing = [name for name in ("cur", "new", "tmp") if not (self.path / name).is_dir()]
        if missing:
            raise MailboxError(f"{self.label}: not a Maildir (no {', '.join(missing)}/ folder)")

    def open(self) -> None:
        self.check()
        self._box = mailbox.Maildir(self.path, factory=None, create=False)

    def messages(self) -> Iterator[tuple[object, bytes]]:
        assert self._box is not None
        for key in sorted(self._box.keys()):  # a list taken now: moving messages does not disturb it
            try:
                yield key, self._box.get_bytes(key)
            except (KeyError, FileNotFoundError):  # taken by another reader meanwhile
                continue

    def processed_path(self) -> Path:
        """Where processed messages go: `.Processed` inside a top Maildir; the sibling
        `.NAME.Processed` for a Maildir++ folder `.NAME` (its parent a Maildir)."""
        path = self.path.resolve()
        parent = path.parent
        if path.name.startswith(".") and len(path.name) > 1 and all((parent / name).is_dir()
                                                                    for name in ("cur", "new", "tmp")):
            return parent / f"{path.name}.{PROCESSED_FOLDER}"
        return path / f".{PROCESSED_FOLDER}"

    def _processed_box(self) -> mailbox.Maildir:
        folder = self.processed_path()
        try:
            for name in ("cur", "new", "tmp"):
                (folder / name).mkdir(mode=0o700, parents=True, exist_ok=True)
            (folder / "maildirfolder").touch(exist_ok=True)  # Maildir++: a folder, not a top Maildir
        except OSError as exc:
            raise MailboxError(f"{self.label}: cannot make {folder} for processed messages: "
                               f"{exc.strerror or exc}") from None
        return mailbox.Maildir(folder, factory=None, create=False)

    def set_aside(self, key: object) -> None:
        """Move to the processed folder's `cur/` with the Seen flag (written there first, then removed
        here: a crash in between leaves a copy in both, which the store's digest recognises)."""
        assert self._box is not None
        if self._done is None:
            self._done = self._processed_box()
        try:
            message = self._box.get_message(key)
        except KeyError:
            return
        message.set_subdir("cur")
        message.add_flag("S")
        try:
            self._done.add(message)
            self._box.discard(key)
        except OSError as exc:
            raise MailboxError(f"{self.label}: cannot move a processed message to {self.processed_path()}: "
                               f"{exc.strerror or exc}") from None


class MboxSource(MailboxSource):
    kind = "mbox"
    sets_aside = False

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = path
        self._box: mailbox.mbox | None = None

    def check(self) -> None:
        try:
            with open(self.path, "rb") as handle:
                head = handle.read(5)
        except OSError as exc:
            raise MailboxError(f"{self.label}: cannot read: {exc.strerror or exc}") from None
        if head and head != b"From ":
            raise MailboxError(f"{self.label}: not an mbox file (it does not start with 'From ')")

    def open(self) -> None:
        self.check()
        self._box = mailbox.mbox(self.path, factory=None, create=False)

    def messages(self) -> Iterator[tuple[object, bytes]]:
        assert self._box is not None
        for key in self._box.keys():
            yield key, self._box.get_bytes(key)

    def close(self) -> None:
        if self._box is not None:
            self._box.close()
            self._box = None


@dataclass(frozen=True)
class ImapLocation:
    security: str          # ssl, starttls, plain
    host: str
    port: int
    username: str
    folder: str
    move_to: str = ""

    @property
    def label(self) -> str:
        scheme = {"ssl": "imap", "starttls": "imap+starttls", "plain": "imap+plain"}[self.security]
        return f"{scheme}://{self.username}@{self.host}:{self.port}/{self.folder}"


def parse_imap_url(url: str) -> ImapLocation:
    """`imap[s|+starttls|+plain]://user@host[:port][/FOLDER][?move=FOLDER]`; MailboxError otherwise.
    The user name may be percent-encoded (`me%40example.org`); a password in the URL is refused."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in IMAP_SCHEMES:
        raise MailboxError(f"{url}: unknown scheme (use imap://, imap+starttls:// or imap+plain://)")
    security, default_port = IMAP_SCHEMES[scheme]
    if parts.password is not None:
        raise MailboxError(f"{scheme}://…@{parts.hostname}: put the password in MAILER_IMAP_PASSWORD, not in the URL")
    if not parts.username or not parts.hostname:
        raise MailboxError(f"{url}: expected {scheme}://user@host[:port]/FOLDER")
    try:
        port = parts.port or default_port
    except ValueError:
        raise MailboxError(f"{url}: invalid port") from None
    folder = unquote(parts.path.lstrip("/")) or "INBOX"
    move_to = (parse_qs(parts.query).get("move") or [""])[0]
    return ImapLocation(security, parts.hostname, port, unquote(parts.username), folder, move_to)


class ImapSource(MailboxSource):
    kind = "imap"

    def __init__(self, location: ImapLocation, password: str, *, ssl_context: ssl.SSLContext | None = None,
                 timeout: float = 30.0) -> None:
        super().__init__(location.label)
        self.location = location
        self.password = password
        self.ssl_context = ssl_context
        self.timeout = timeout
        self._client = None
        self._keyword = True

    def check(self) -> None:
        if not self.password:
            raise MailboxError(f"MAILER_IMAP_PASSWORD is not set (needed to log in to {self.label})")

    def open(self) -> None:
        from imapclient import IMAPClient
        from imapclient.exceptions import IMAPClientError, LoginError
        where = self.label
        self.check()
        context = self.ssl_context or ssl.create_default_context()
        try:
            client = IMAPClient(self.location.host, port=self.location.port, ssl=self.location.security == "ssl",
                                ssl_context=context, timeout=self.timeout)
        except (OSError, socket.timeout, ssl.SSLError, IMAPClientError) as exc:
            raise MailboxError(f"{where}: cannot connect: {_reason(exc)}") from None
        try:
            if self.location.security == "starttls":
                client.starttls(context)
            client.login(self.location.username, self.password)
            answer = client.select_folder(self.location.folder)
        except LoginError:
            _logout(client)
            raise MailboxError(f"{where}: login refused (check the user name and MAILER_IMAP_PASSWORD)") from None
        except (OSError, ssl.SSLError, IMAPClientError) as exc:
            _logout(client)
            raise MailboxError(f"{where}: {_reason(exc)}") from None
        if self.location.move_to:  # before any message is touched: a typo would fail on the first one
            problem = _missing_folder(client, self.location.move_to)
            if problem:
                _logout(client)
                raise MailboxError(f"{where}: {problem}")
        permanent = [flag.decode() if isinstance(flag, bytes) else str(flag)
                     for flag in answer.get(b"PERMANENTFLAGS", ())]
        self._keyword = "\\*" in permanent or PROCESSED_KEYWORD in permanent
        if not self._keyword and not self.location.move_to:
            _logout(client)
            raise MailboxError(f"{where}: the server does not keep the {PROCESSED_KEYWORD} keyword; "
                               f"add ?move=FOLDER to the URL so processed messages are moved")
        self._client = client

    def close(self) -> None:
        if self._client is not None:
            _logout(self._client)
            self._client = None

    def messages(self) -> Iterator[tuple[object, bytes]]:
        from imapclient.exceptions import IMAPClientError
        client = self._client
        try:
            uids = client.search(["UNKEYWORD", PROCESSED_KEYWORD] if self._keyword else ["ALL"])
        except (OSError, IMAPClientError) as exc:
            raise MailboxError(f"{self.label}: search failed: {_reason(exc)}") from None
        for start in range(0, len(uids), FETCH_CHUNK):
            chunk = uids[start:start + FETCH_CHUNK]
            try:
                fetched = client.fetch(chunk, ["BODY.PEEK[]"])
            except (OSError, IMAPClientError) as exc:
                raise MailboxError(f"{self.label}: fetch failed: {_reason(exc)}") from None
            for uid in chunk:
                data = fetched.get(uid, {}).get(b"BODY[]")
                if data is not None:
                    yield uid, bytes(data)

    def set_aside(self, key: object) -> None:
        from imapclient.exceptions import IMAPClientError
        client = self._client
        try:
            flags = [b"\\Seen", PROCESSED_KEYWORD.encode("ascii")] if self._keyword else [b"\\Seen"]
            client.add_flags([key], flags, silent=True)
            if self.location.move_to:
                if client.has_capability("MOVE"):
                    client.move([key], self.location.move_to)
                else:
                    client.copy([key], self.location.move_to)
                    client.delete_messages([key], silent=True)
                    client.uid_expunge([key]) if client.has_capability("UIDPLUS") else client.expunge()
        except (OSError, IMAPClientError) as exc:
            raise MailboxError(f"{self.label}: cannot mark a processed message: {_reason(exc)}") from None


def _missing_folder(client, folder: str) -> str:  # noqa: ANN001
    """Why ?move=FOLDER cannot be used (it does not exist: created by hand, not guessed, so a typo never
    makes a new folder that collects the processed messages), or "" when it exists."""
    from imapclient.exceptions import IMAPClientError
    try:
        listed = client.list_folders()
    except (OSError, IMAPClientError) as exc:
        return f"cannot list folders to check ?move={folder}: {_reason(exc)}"
    names = {name for _, _, name in listed}
    if folder in names or (folder.upper() == "INBOX"):
        return ""
    delimiter = next((d.decode() if isinstance(d, bytes) else d for _, d, _ in listed if d), "")
    wrong = next((sep for sep in "/." if sep != delimiter and sep in folder), "")
    if delimiter and wrong:
        fixed = folder.replace(wrong, delimiter)
        return (f"?move={folder}: this server separates folder levels with '{delimiter}', not '{wrong}'"
                + (f": write ?move={fixed}" if fixed in names else f" (e.g. {fixed}), and create the folder first"))
    return f"?move={folder}: no such folder on the server; create it first (or fix the URL)"


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())[:200]


def _logout(client) -> None:  # noqa: ANN001
    try:
        client.logout()
    except Exception:  # noqa: BLE001 - closing a connection that may already be gone
        try:
            client.shutdown()
        except Exception:  # noqa: BLE001
            pass


def open_source(source: str, *, imap_password: str = "", ssl_context: ssl.SSLContext | None = None) -> MailboxSource:
    """The source SOURCE names (not opened yet): an `imap…://` URL, a Maildir folder, or an mbox file.
    MailboxError naming SOURCE when it is none of these."""
    text = source.strip()
    if "://" in text:
        return ImapSource(parse_imap_url(text), imap_password, ssl_context=ssl_context)
    path = Path(os.path.expanduser(text))
    if path.is_dir():
        return MaildirSource(path)
    if path.is_file():
        return MboxSource(path)
    raise MailboxError(f"{source}: no such Maildir folder or mbox file")


__all__ = ["MailboxSource", "MaildirSource", "MboxSource", "ImapSource", "ImapLocation", "MailboxError",
           "open_source", "parse_imap_url", "PROCESSED_FOLDER", "PROCESSED_KEYWORD"]
