"""A seeded, fault-injecting reverse proxy on 127.0.0.1, for testing S3 clients' retries.

    python -m tools.s3_server                                   # endpoint http://127.0.0.1:PORT
    python -m tools.fault_proxy --target http://127.0.0.1:PORT --fault-rate 0.1 --seed 1
    AWS_ENDPOINT_URL=http://127.0.0.1:PROXYPORT shards verify s3://bucket/shards

Every request is forwarded to ``--target``; a fraction ``--fault-rate`` of the
GETs (``--methods``) is answered with a fault instead, chosen by a seeded RNG in
arrival order.  Fault kinds:

    slowdown  503 SlowDown (S3's throttling answer)
    internal  500 InternalError
    reset     the connection is reset (RST) before any response
    truncate  the real headers (full Content-Length), half the body, then the connection closes
    short     a lying server: half the body with a Content-Length to match
    stall     no answer for ``stall_s`` seconds, then a reset (client read timeouts)
    denied    403 AccessDenied (a permanent error)

``--fail PATTERN=KIND`` answers every such request (of ``--methods``) whose path
contains PATTERN with KIND, for "one object fails permanently" tests.  Importable::

    proxy, endpoint = start(target, fault_rate=0.1, seed=1)
    ...; proxy.counts  # Counter: fault kind -> faults injected; proxy.requests: method -> seen
    proxy.log     # [(method, path, Range header, fault kind or None)] in arrival order
    proxy.stop()
"""
from __future__ import annotations

import argparse
import http.client
import random
import socket
import struct
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOST = "127.0.0.1"
DEFAULT_KINDS = ("slowdown", "internal", "reset", "truncate")
ALL_KINDS = DEFAULT_KINDS + ("short", "stall", "denied")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailers", "transfer-encoding", "upgrade", "expect", "content-length"}
ERRORS = {
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
    "internal": (500, "InternalError", "We encountered an internal error. Please try again."),
    "denied": (403, "AccessDenied", "Access Denied"),
}


class FaultProxy(ThreadingHTTPServer):
    """The proxy server; ``counts`` and ``requests`` are the counters tests read."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, target: str, fault_rate: float = 0.0, seed: int = 0, kinds=DEFAULT_KINDS,
                 fail: dict[str, str] | None = None, methods=("GET",), stall_s: float = 30.0, port: int = 0):
        bad = [k for k in list(kinds) + list((fail or {}).values()) if k not in ALL_KINDS]
        if bad:
            raise ValueError(f"fault kind(s) {bad}: valid kinds are {', '.join(ALL_KINDS)}")
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError(f"fault_rate={fault_rate}: expected a fraction between 0 and 1")
        parts = urlsplit(target)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"target {target!r}: expected http://HOST:PORT of the S3 server")
        self.upstream = (parts.hostname, parts.port or 80)
        self.fault_rate, self.kinds, self.methods = fault_rate, tuple(kinds), {m.upper() for m in methods}
        self.fail = dict(fail or {})
        self.stall_s = stall_s
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.counts: Counter = Counter()
        self.requests: Counter = Counter()
        self.log: list[tuple[str, str, str | None, str | None]] = []  # (method, path, Range, fault)
        super().__init__((HOST, port), _Handler)
        self.thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}"

    @property
    def faults(self) -> int:
        return sum(self.counts.values())

    def handle_error(self, request, client_address):
        # A client that hangs up (after a reset or cut body we caused) is expected, not news.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

    def decide(self, method: str, path: str, range_header: str | None) -> str | None:
        """The fault for this request, or None to forward it (drawn in arrival order)."""
        with self.lock:
            self.requests[method] += 1
            kind = None
            if method in self.methods:
                kind = next((k for pattern, k in self.fail.items() if pattern in path), None)
            if kind is None and method in self.methods and self.fault_rate > 0:
                if self.rng.random() < self.fault_rate:
                    kind = self.rng.choice(self.kinds)
            if kind is not None:
                self.counts[kind] += 1
            self.log.append((method, path, range_header, kind))
            return kind

    def start_background(self) -> "FaultProxy":
        self.thread = threading.Thread(target=self.serve_forever, name="fault-proxy", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect
    disable_nagle_algorithm = True  # headers and body go out in separate writes: no 40 ms delayed-ACK stalls
    server: FaultProxy

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        pass  # one line per request would drown test output

    def do_GET(self):
        self._proxy()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    def _proxy(self) -> None:
        body = self._read_body()
        kind = self.server.decide(self.command, self.path, self.headers.get("Range"))
        if kind in ERRORS:
            return self._send_error(*ERRORS[kind])
        if kind == "reset":
            return self._reset()
        if kind == "stall":
            time.sleep(self.server.stall_s)
            return self._reset()
        status, reason, headers, data = self._forward(body)
        if kind in ("truncate", "short") and len(data) > 1:
            cut = data[: len(data) // 2]
            self._send(status, reason, headers, cut, len(data) if kind == "truncate" else len(cut))
            if kind == "truncate":
                self.close_connection = True  # the client is owed bytes it will never get
            return None
        if kind in ("truncate", "short"):
            return self._reset()  # nothing to cut: fail the request anyway, it was drawn
        length = int(headers.get("content-length", len(data))) if self.command == "HEAD" else len(data)
        self._send(status, reason, headers, data, length)
        return None

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _forward(self, body: bytes):
        conn = http.client.HTTPConnection(*self.server.upstream, timeout=120)
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    conn.putheader(name, value)
            if body or self.command in ("PUT", "POST"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            resp = conn.getresponse()
            data = resp.read()
            headers = {k.lower(): v for k, v in resp.getheaders()}
            return resp.status, resp.reason, headers, data
        finally:
            conn.close()

    def _send(self, status: int, reason: str, headers: dict, data: bytes, length: int) -> None:
        self.send_response_only(status, reason)
        for name, value in headers.items():
            if name not in HOP_BY_HOP and name not in ("date", "server"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.wfile.flush()

    def _send_error(self, status: int, code: str, message: str) -> None:
        xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}'
               f"</Message><Resource>{self.path}</Resource><RequestId>fault-proxy</RequestId></Error>").encode()
        self._send(status, code, {"content-type": "application/xml"}, xml, len(xml))

    def _reset(self) -> None:
        # SO_LINGER 0 makes close() send a RST instead of a FIN: a "connection reset by peer".
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RD)
        except OSError:
            pass  # the client may be gone already
        self.connection.close()


def start(target: str, fault_rate: float = 0.0, seed: int = 0, kinds=DEFAULT_KINDS,
          fail: dict[str, str] | None = None, methods=("GET",), stall_s: float = 30.0, port: int = 0):
    """Start a proxy in a background thread -> (proxy, endpoint); ``proxy.stop()`` ends it."""
    proxy = FaultProxy(target, fault_rate, seed, kinds, fail, methods, stall_s, port).start_background()
    return proxy, proxy.endpoint


def _parse_fail(items: list[str]) -> dict[str, str]:
    fail = {}
    for item in items:
        pattern, sep, kind = item.rpartition("=")
        if not sep or not pattern:
            raise SystemExit(f"--fail {item!r}: expected PATTERN=KIND, KIND one of {', '.join(ALL_KINDS)}")
        fail[pattern] = kind
    return fail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.fault_proxy", description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="http://HOST:PORT of the S3 server")
    parser.add_argument("--fault-rate", type=float, default=0.1, help="fraction of GETs faulted")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default=",".join(DEFAULT_KINDS),
                        help=f"comma-separated fault kinds from: {', '.join(ALL_KINDS)}")
    parser.add_argument("--fail", action="append", default=[], metavar="PATTERN=KIND",
                        help="always fault requests whose path contains PATTERN")
    parser.add_argument("--methods", default="GET", help="comma-separated methods that may be faulted")
    parser.add_argument("--stall-s", type=float, default=30.0)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        proxy, endpoint = start(args.target, args.fault_rate, args.seed, args.kinds.split(","),
                                _parse_fail(args.fail), args.methods.split(","), args.stall_s, args.port)
    except ValueError as exc:
        print(f"fault_proxy: error: {exc}", file=sys.stderr)
        return 2
    print(f"endpoint {endpoint}", flush=True)
    try:
        while True:
            time.sleep(5)
    except KeyboardInterrupt:
        pass
    proxy.stop()
    print(f"faults injected: {dict(proxy.counts)}; requests: {dict(proxy.requests)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
