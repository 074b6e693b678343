"""An authoritative DNS server on loopback for `mailer doctor`'s tests (dnslib's server in a thread).

`DnsZone({"example.org": [("TXT", "v=spf1 -all"), ("A", "127.0.0.2")], ...}, silent={"slow.example.org"})`
answers UDP on 127.0.0.1 at `.address` ("127.0.0.1:PORT"): names it holds get their records of the
asked type (none: NOERROR with no answer), other names NXDOMAIN, names in `silent` no reply at all
(the client times out). TXT values longer than 255 bytes are split into strings as a zone file would.
Records can be changed between lookups (`zone.records[name] = [...]`).
"""

from __future__ import annotations

import threading

from dnslib import AAAA, CNAME, MX, QTYPE, RCODE, RR, TXT, A, DNSError
from dnslib.server import BaseResolver, DNSServer


class _QuietLogger:
    def __getattr__(self, name):  # noqa: ANN001, ANN204
        return lambda *args, **kwargs: None


class _Resolver(BaseResolver):
    def __init__(self, zone: "DnsZone") -> None:
        self.zone = zone

    def resolve(self, request, handler):  # noqa: ANN001, ANN201
        name = str(request.q.qname).rstrip(".").lower()
        qtype = QTYPE[request.q.qtype]
        self.zone.queries.append((name, qtype))
        if name in self.zone.silent:
            raise DNSError("dropped on purpose")  # the handler sends nothing: a timeout for the client
        reply = request.reply()
        if name not in self.zone.records:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for owner, rtype, value in self.zone.answers(name, qtype):
            if rtype == "TXT":
                raw = value.encode("utf-8")
                rdata = TXT([raw[i:i + 255] for i in range(0, len(raw), 255)] or [b""])
            elif rtype == "A":
                rdata = A(value)
            elif rtype == "AAAA":
                rdata = AAAA(value)
            elif rtype == "MX":
                preference, _, host = value.partition(" ")
                rdata = MX(host, int(preference))
            else:
                rdata = CNAME(value)
            reply.add_answer(RR(owner, getattr(QTYPE, rtype), rdata=rdata, ttl=60))
        return reply


class DnsZone:
    def __init__(self, records: dict[str, list[tuple[str, str]]], silent: set[str] | frozenset[str] = frozenset()) -> None:
        self.records = {name.lower(): list(entries) for name, entries in records.items()}
        self.silent = set(silent)
        self.queries: list[tuple[str, str]] = []
        self._server = DNSServer(_Resolver(self), address="127.0.0.1", port=0, logger=_QuietLogger())
        self.port = self._server.server.server_address[1]
        self.address = f"127.0.0.1:{self.port}"

    def answers(self, name: str, qtype: str, depth: int = 0):
        """(owner, type, value) for `name`: its records of `qtype`, or its CNAME followed (as a
        recursive resolver answers)."""
        out = []
        for rtype, value in self.records.get(name, []):
            if rtype == qtype:
                out.append((name, rtype, value))
            elif rtype == "CNAME" and qtype != "CNAME" and depth < 8:
                out.append((name, rtype, value))
                out.extend(self.answers(value.rstrip(".").lower(), qtype, depth + 1))
        return out

    def __enter__(self) -> "DnsZone":
        self._thread = threading.Thread(target=self._server.server.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.server.shutdown()
        self._server.server.server_close()
        self._thread.join(timeout=5)
