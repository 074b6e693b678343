"""Who holds a claim on ledger rows, and whether that holder is still alive.

A claimant id is written into `deliveries.claimed_by` when a worker claims rows. It must name the
process in a way a restart cannot reuse: a container's sender is often PID 1, and PID 1 always
exists, so "host + pid" would keep a killed sender's claims alive forever. The id is

    host:pid:start:boot:pidns:nonce[-suffix]

- `start`: the process start time in clock ticks since boot (`/proc/<pid>/stat`, field 22, see
  proc(5)): a new process with the same pid has another start time;
- `boot`: the first 8 hex digits of `/proc/sys/kernel/random/boot_id`: a reboot changes it;
- `pidns`: the inode of `/proc/self/ns/pid`: a pid is only meaningful inside its pid namespace.

`is_alive` answers from the kernel when it can see the claimant (same boot, and either the same pid
namespace or a namespace visible from ours: a process in the host namespace sees every container's
processes and their `NSpid`), and otherwise falls back to the **lease**: a claim whose `claimed_at`
is older than `LEASE` is presumed dead. Live workers renew their claims every `HEARTBEAT`
(dispatch does it between steps and while waiting), so the lease never expires under a live
worker, on this host or another.

Off Linux (no /proc), `start`, `boot` and `pidns` are empty and the same-host check is "the pid
exists", with the lease as above.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path

LEASE = timedelta(minutes=5)      # a claim not renewed for this long is presumed dead
HEARTBEAT = timedelta(seconds=60)  # how often a live worker renews its claims
MAX_HOST = 48                      # claimed_by is 120 characters
INITIAL_PID_NAMESPACE = str(0xEFFFFFFC)


@dataclass(frozen=True)
class Claimant:
    host: str
    pid: int
    start: str = ""   # clock ticks since boot, as text ("" when unknown)
    boot: str = ""    # 8 hex digits of the boot id ("" when unknown)
    pidns: str = ""   # pid namespace inode ("" when unknown)

    @classmethod
    def parse(cls, text: str | None) -> "Claimant | None":
        """The claimant an id names; old ids (host:pid:nonce) give only host and pid; None if unreadable."""
        if not text:
            return None
        parts = text.split(":")
        if len(parts) >= 6 and parts[1].isdigit():
            return cls(parts[0], int(parts[1]), parts[2], parts[3], parts[4])
        if len(parts) >= 2 and parts[1].isdigit():
            return cls(parts[0], int(parts[1]))
        return None


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return ""


def process_start(pid: int | str, proc: str = "/proc") -> str:
    """Start time of a process in clock ticks since boot ("" if unknown or gone), from /proc/<pid>/stat.
    A zombie (state Z: it has exited and only its exit status waits for its parent) counts as gone: a
    sending process killed while its parent has not reaped it yet must not keep its claims."""
    stat = _read(f"{proc}/{pid}/stat")
    # "pid (comm) state ppid …": comm may hold spaces and parentheses, so split after the last ")"
    fields = stat.rpartition(")")[2].split()
    if fields and fields[0] in ("Z", "X"):
        return ""
    return fields[19] if len(fields) > 19 else ""  # field 22 overall; 3rd after comm is index 0


def _pid_namespace(pid: int | str = "self", proc: str = "/proc") -> str:
    try:
        link = os.readlink(f"{proc}/{pid}/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return ""
    return link.partition("[")[2].rstrip("]")


@lru_cache(maxsize=1)
def _boot_id() -> str:
    return _read("/proc/sys/kernel/random/boot_id").replace("-", "")[:8]


@lru_cache(maxsize=1)
def _host() -> str:
    return (socket.gethostname() or "localhost").replace(":", "_")[:MAX_HOST]


_me_cache: dict[int, Claimant] = {}


def me() -> Claimant:
    """This process (recomputed after a fork)."""
    pid = os.getpid()
    found = _me_cache.get(pid)
    if found is None:
        found = Claimant(_host(), pid, process_start("self"), _boot_id(), _pid_namespace())
        _me_cache.clear()
        _me_cache[pid] = found
    return found


# Ids handed out by this process that are still working: a claim with this process's identity but
# not in this set was left by an earlier run in this same process (the scheduler is long-lived).
_live_ids: set[str] = set()
_live_lock = threading.Lock()


def new_id(suffix: str = "") -> str:
    """A fresh claimant id for one worker of this process (see the module docstring); call `release`
    when the worker ends."""
    ident = me()
    text = f"{ident.host}:{ident.pid}:{ident.start}:{ident.boot}:{ident.pidns}:{os.urandom(3).hex()}{suffix}"
    with _live_lock:
        _live_ids.add(text)
    return text


def release(worker: str) -> None:
    with _live_lock:
        _live_ids.discard(worker)


def is_alive(worker: str | None, claimed_at: datetime | None, now: datetime) -> bool:
    """Is the claimant that wrote `worker` still running (so its rows must be left alone)?"""
    other = Claimant.parse(worker)
    if other is None:
        return False
    ident = me()
    lease_alive = claimed_at is not None and now - claimed_at <= LEASE
    if other.host != ident.host:
        return lease_alive
    if other.start and ident.boot and other.boot:
        if other.boot != ident.boot:
            # same host name, another boot: this machine rebooted (or another machine shares the name)
            return lease_alive
        verdict = _same_boot_verdict(other, ident, worker)
        return lease_alive if verdict is None else verdict
    # an old-style id (host:pid:nonce) or no /proc: only "does the pid exist", and the lease
    if other.pid == ident.pid:
        with _live_lock:
            return worker in _live_ids
    try:
        os.kill(other.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return lease_alive


def _same_boot_verdict(other: Claimant, ident: Claimant, worker: str | None) -> bool | None:
    """True/False when the kernel can tell on this boot; None when the claimant is out of our sight."""
    if other.pidns == ident.pidns or not other.pidns:
        if other.pid == ident.pid and other.start == ident.start:
            with _live_lock:
                return worker in _live_ids
        return process_start(other.pid) == other.start
    # another pid namespace: look for a visible process of that namespace whose innermost pid and start
    # time match (a host-namespace process sees every container's processes)
    seen_namespace = False
    for entry in _proc_pids():
        if _pid_namespace(entry) != other.pidns:
            continue
        seen_namespace = True
        if process_start(entry) == other.start and _innermost_pid(entry) == other.pid:
            return True
    if seen_namespace or _is_initial_namespace():
        return False  # the namespace is visible (or we see everything) and the claimant is not in it
    return None


def _proc_pids() -> list[str]:
    try:
        return [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []


def _innermost_pid(pid: str) -> int | None:
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith("NSpid:"):
            values = line.split()[1:]
            return int(values[-1]) if values else None
    return None


def _is_initial_namespace() -> bool:
    """Are we in the host's pid namespace (so every process of this boot is visible to us)? Its inode is
    a kernel constant (PROC_PID_INIT_INO, include/linux/proc_ns.h)."""
    return me().pidns == INITIAL_PID_NAMESPACE
