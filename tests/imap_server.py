"""A real IMAP server on loopback for tests: Dovecot (Debian `dovecot-imapd`, installed by `.ci/run`)
started in the foreground with a throw-away configuration (its own run/state folders, a static
password, Maildir storage, IMAPS on one port and IMAP + STARTTLS on another, a certificate from
`smtp_server.make_certificates`). Needs root (Dovecot switches to its own users); skipped otherwise,
unless MAILER_REQUIRE_DOVECOT=1 (CI), where its absence is a failure."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from .smtp_server import Certificates, free_port, make_certificates

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
USER, PASSWORD = "bounces", "imap-test-password"

CONFIG = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = 1
default_login_user = dovenull
default_internal_user = dovecot
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
    ssl = yes
  }}
}}
passdb {{
  driver = static
  args = password={password}
}}
userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home={root}/home/%u
}}
mail_location = maildir:~/Maildir
"""


@dataclass
class Dovecot:
    root: Path
    imap_port: int
    imaps_port: int
    certs: Certificates
    process: subprocess.Popen

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _unavailable() -> str | None:
    if not os.path.exists(DOVECOT):
        return "Dovecot is not installed (Debian dovecot-imapd; .ci/run installs it)"
    if os.geteuid() != 0:
        return "Dovecot needs root to switch to its own users"
    return None


def start_dovecot() -> Dovecot:
    why = _unavailable()
    if why:
        if os.environ.get("MAILER_REQUIRE_DOVECOT") == "1":
            pytest.fail(why)
        pytest.skip(why)
    root = Path(tempfile.mkdtemp(prefix="mailer-dovecot-"))
    root.chmod(0o755)  # Dovecot's users must reach the mail home below
    for name in ("run", "state", "home"):
        (root / name).mkdir()
    shutil.chown(root / "home", "dovecot", "dovecot")
    certs = make_certificates(root / "certs")
    imap_port, imaps_port = free_port(), free_port()
    (root / "dovecot.conf").write_text(CONFIG.format(root=root, cert=certs.cert, key=certs.key, imap_port=imap_port,
                                                     imaps_port=imaps_port, password=PASSWORD))
    process = subprocess.Popen([DOVECOT, "-F", "-c", str(root / "dovecot.conf")], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    server = Dovecot(root, imap_port, imaps_port, certs, process)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            error = process.stderr.read().decode(errors="replace")
            shutil.rmtree(root, ignore_errors=True)
            raise RuntimeError(f"dovecot exited: {error}{server.log()}")
        try:
            with socket.create_connection(("127.0.0.1", imaps_port), timeout=0.5):
                return server
        except OSError:
            time.sleep(0.05)
    stop_dovecot(server)
    raise RuntimeError("dovecot did not start listening within 15 s")


def stop_dovecot(server: Dovecot) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
    if server.process.stderr:
        server.process.stderr.close()
    shutil.rmtree(server.root, ignore_errors=True)
