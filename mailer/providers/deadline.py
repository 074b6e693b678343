"""Total deadlines for network operations, and a stop that cuts them within a fraction of a second.

A socket timeout bounds one read or one write; a server that trickles a byte (or a "250-" line)
every few seconds resets it forever, and a blocked read ignores a stop request. `Watchdog` bounds
the whole operation instead:

- `guard(seconds)` opens a deadline for one operation (an SMTP message, a connection attempt, an
  HTTP request). Sockets `attach`ed to the guard are shut down (`SHUT_RDWR`, which wakes a read or
  write blocked in another thread) when the deadline passes;
- `abort()` (from any thread: dispatch calls it a few seconds after SIGTERM/Ctrl-C) cuts every
  guarded socket at once and makes later guards fail at once;
- `open_connection(guard, host, port)` resolves the name in a helper thread (`getaddrinfo` cannot be
  interrupted) and connects without blocking, so DNS and a blackholed SYN obey the deadline and the
  stop too.

The calling code sees an ordinary `OSError` from its library (smtplib, http.client) and asks the guard
why: `guard.cut` is `"deadline"` or `"stopped"` (None when the failure was the network's own).
One daemon thread per watchdog, started on first use, asleep while nothing is guarded; entering and
leaving a guard costs a lock and a dict update (a few µs per message).

Our own code because no library offers a total deadline across smtplib's and urllib's reads that a
second thread can also trigger; the mechanism (shutdown from another thread) is the socket API's.
"""

from __future__ import annotations

import errno
import select
import socket
import threading
import time
from typing import Any

POLL = 0.1  # seconds: how often the watchdog and the helpers look at deadlines and stops


class Cut(OSError):
    """Raised by the helpers here when the guard's deadline passed or the watchdog was aborted."""


class Guard:
    """One operation's deadline and the sockets it covers. Use as a context manager."""

    __slots__ = ("watchdog", "deadline", "seconds", "sockets", "cut")

    def __init__(self, watchdog: "Watchdog", seconds: float) -> None:
        self.watchdog = watchdog
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.sockets: list[socket.socket] = []
        self.cut: str | None = None  # "deadline" | "stopped" once the watchdog cut this operation

    def __enter__(self) -> "Guard":
        self.watchdog._add(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.watchdog._remove(self)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def attach(self, sock: Any) -> None:
        """Cover `sock` (None is ignored); cut at once if the guard already expired or was stopped."""
        if sock is None:
            return
        with self.watchdog._lock:
            self.sockets.append(sock)
            cut_now = self.cut is not None
        if cut_now:
            _shutdown(sock)

    def check(self) -> None:
        """Raise `Cut` when this operation must stop (deadline passed, or aborted)."""
        if self.watchdog.aborted and self.cut is None:
            self.cut = "stopped"
        elif self.cut is None and time.monotonic() >= self.deadline:
            self.cut = "deadline"
        if self.cut is not None:
            raise Cut(errno.ETIMEDOUT if self.cut == "deadline" else errno.ECANCELED, self.why())

    def interrupted(self) -> str | None:
        """Why the operation failed, if it was this guard's doing: "stopped", "deadline" (cut by the
        watchdog, or a socket timeout that fired at the deadline), else None (the network's own failure)."""
        if self.cut is None and self.remaining() <= POLL:
            self.cut = "deadline"
        return self.cut

    def why(self) -> str:
        if self.cut == "stopped":
            return "cut by a stop request"
        return f"no complete answer within {self.seconds:g} s"

    def timeout(self, per_operation: float | None = None) -> float:
        """A socket timeout that never outlives the deadline (at least 1 ms)."""
        left = max(0.001, self.remaining())
        return min(left, per_operation) if per_operation else left

    def open_connection(self, host: str, port: int, per_operation: float | None = None) -> socket.socket:
        """A connected TCP socket to host:port, attached to this guard; name resolution and connection
        both obey the deadline and the stop. Raises `Cut` or the network's own `OSError`."""
        last_error: OSError | None = None
        for family, kind, proto, _, address in self._resolve(host, port):
            sock = socket.socket(family, kind, proto)
            try:
                self.attach(sock)
                self._connect(sock, address)
                sock.settimeout(self.timeout(per_operation))
                return sock
            except Cut:
                sock.close()
                raise
            except OSError as exc:
                sock.close()
                last_error = exc
        raise last_error or OSError(f"{host}: no address to connect to")

    # ----- helpers ---------------------------------------------------------------------------------
    def _resolve(self, host: str, port: int) -> list:
        try:  # a literal address needs no resolver (and no thread)
            return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
        except socket.gaierror:
            pass
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def resolve() -> None:
            try:
                outcome["ok"] = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
            except OSError as exc:
                outcome["error"] = exc
            done.set()

        threading.Thread(target=resolve, name="mailer-resolve", daemon=True).start()
        while not done.wait(min(POLL, max(0.001, self.remaining()))):
            self.check()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["ok"]

    def _connect(self, sock: socket.socket, address: Any) -> None:
        sock.setblocking(False)
        code = sock.connect_ex(address)
        if code not in (0, errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK):
            raise OSError(code, f"{errno.errorcode.get(code, code)}: {_strerror(code)}")
        while code != 0:
            self.check()
            _, writable, _ = select.select([], [sock], [], min(POLL, max(0.001, self.remaining())))
            if writable:
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise OSError(code, _strerror(code))
                break
        self.check()
        sock.setblocking(True)


class Watchdog:
    """Deadlines and the stop for one backend's operations (see the module docstring)."""

    def __init__(self, name: str = "mailer-watchdog") -> None:
        self.name = name
        self.aborted = False
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._guards: dict[int, Guard] = {}
        self._thread: threading.Thread | None = None
        self._closed = False

    def guard(self, seconds: float) -> Guard:
        return Guard(self, seconds)

    def abort(self) -> None:
        """Cut every guarded operation now, and every later one at once (thread-safe)."""
        with self._lock:
            self.aborted = True
            guards = list(self._guards.values())
            for guard in guards:
                guard.cut = guard.cut or "stopped"
        for guard in guards:
            for sock in list(guard.sockets):
                _shutdown(sock)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wake.notify_all()

    # ----- internals -------------------------------------------------------------------------------
    def _add(self, guard: Guard) -> None:
        with self._lock:
            if self.aborted:
                guard.cut = "stopped"
            self._guards[id(guard)] = guard
            if self._thread is None or not self._thread.is_alive():
                self._closed = False
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            elif len(self._guards) == 1:
                self._wake.notify()

    def _remove(self, guard: Guard) -> None:
        with self._lock:
            self._guards.pop(id(guard), None)
            guard.sockets.clear()

    def _run(self) -> None:
        while True:
            expired: list[Guard] = []
            with self._lock:
                while not self._guards and not self._closed:
                    self._wake.wait()
                if self._closed and not self._guards:
                    return
                now = time.monotonic()
                for guard in self._guards.values():
                    if guard.cut is None and now >= guard.deadline:
                        guard.cut = "deadline"
                        expired.append(guard)
                    elif guard.cut is not None and guard.sockets:
                        expired.append(guard)  # attached after the cut
            for guard in expired:
                for sock in list(guard.sockets):
                    _shutdown(sock)
            time.sleep(POLL)


def _shutdown(sock: Any) -> None:
    """Shut the TCP connection down under whatever wraps it (TLS included): a read or write blocked in
    another thread returns at once. The owner still closes the socket."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except (OSError, TypeError, ValueError):
        pass


def _strerror(code: int) -> str:
    import os

    try:
        return os.strerror(code)
    except ValueError:
        return str(code)
