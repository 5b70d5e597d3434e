"""The enrich endpoint over HTTP: Falco's ``http_output`` or falcosidekick's webhook post alerts to it; it enriches
them, forwards every alert to another URL and keeps the last enriched ones for ``GET /alerts`` (what
``tor-sets selftest --sink http://...`` reads).

Exports :class:`EnrichServer`, :class:`ServerSettings` and :func:`parse_listen`. What bounds slow clients and
repeated warnings is in :mod:`tor_sets.runtime.enrich.limits`.
"""

from __future__ import annotations

import collections
import http.server
import io
import ipaddress
import json
import logging
import queue
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

from tor_sets.errors import SanityError, TorSetsError, UsageError
from tor_sets.runtime.enrich.limits import ConnectionTable, RequestReader, Throttle, hang_up
from tor_sets.runtime.enrich.stream import Enricher, LineResult, StreamStats, reject_constant
from tor_sets.urls import redact_url

__all__ = ["EnrichServer", "ServerSettings", "parse_listen"]

log = logging.getLogger(__name__)


def _ascii_number(text: str, max_digits: int = 20) -> int | None:
    """``text`` as a whole number written in ASCII digits (surrounding blanks allowed), else None.

    ``str.isdigit`` also accepts ``²`` (which ``int`` then refuses) and Arabic-Indic or fullwidth digits (which
    ``int`` reads); ``int`` refuses more than 4,300 digits. None of them reaches ``int`` here.

    >>> _ascii_number(" 42"), _ascii_number("²"), _ascii_number("\\u0661"), _ascii_number("-1"), _ascii_number("9" * 21)
    (42, None, None, None, None)
    """
    text = text.strip(" \t")
    if not 0 < len(text) <= max_digits or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``127.0.0.1:2801``, ``[::1]:2801``, ``localhost:2801``) → (IP literal, port).

    Only IP literals and ``localhost`` are accepted, so that binding never depends on name resolution.

    >>> parse_listen("[::1]:0"), parse_listen("localhost:2801")
    (('::1', 0), ('127.0.0.1', 2801))

    Raises:
        UsageError: not such an address.
    """
    host, sep, port_text = text.strip().rpartition(":")
    port = _ascii_number(port_text, max_digits=5)
    if not sep or port is None or port > 65535:
        raise UsageError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        host = "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise UsageError(f"expected an IP address or localhost as HOST, got {host!r}") from None
    return str(address), port


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """How :class:`EnrichServer` listens and forwards.

    Attributes:
        host: IP literal to bind; must be loopback unless ``allow_remote``.
        port: TCP port (0: any free port).
        forward: URL every alert is POSTed to (one alert per request, like Falco's ``http_output``), or None.
        forward_timeout: seconds for the forward's connect and read each.
        max_body: largest request body accepted (larger: 413).
        queue_size: alerts waiting to be forwarded; more are dropped with a warning.
        keep: enriched alerts kept for ``GET /alerts``.
        allow_remote: allow binding a non-loopback address.
        max_connections: connections served at once. When all are taken, a new connection pushes out the one
            that has waited longest for its request (a slow or idle client); when every one is busy answering,
            the new one is closed at once.
        request_timeout: seconds a client has to send a whole request, head and body, counted from when the
            server starts waiting for it (for an idle keep-alive connection, from the end of the last answer);
            slower clients are disconnected. Also the bound on sending each answer.
        log_interval: seconds over which repeated warnings of one kind (malformed lines, a full forward queue,
            forward failures, slow or surplus connections, refused requests) are summarised: the first few of
            each kind are logged, the rest counted in one line when the interval is over.
    """

    host: str = "127.0.0.1"
    port: int = 0
    forward: str | None = None
    forward_timeout: float = 5.0
    max_body: int = 1024 * 1024
    queue_size: int = 1000
    keep: int = 1000
    allow_remote: bool = False
    max_connections: int = 64
    request_timeout: float = 10.0
    log_interval: float = 10.0

    def check(self) -> None:
        """Check the settings before anything is bound. Messages name the field at fault (``forward``, ...).

        Raises:
            UsageError: a host that is no IP literal, a forward URL that is not HTTP(S) (shown without its
                credentials), a body limit, connection limit, forward or request timeout or log interval that is
                not positive.
            SanityError: a non-loopback address without ``allow_remote``.
        """
        try:
            address = ipaddress.ip_address(self.host)
        except ValueError:
            raise UsageError(f"host must be an IP address, got {self.host!r}") from None
        if not address.is_loopback and not self.allow_remote:
            raise SanityError(f"refusing to listen on non-loopback address {self.host} (allow_remote is off)")
        if self.forward is not None:
            try:
                url = urllib.parse.urlsplit(self.forward)
                valid = url.scheme in ("http", "https") and bool(url.hostname) and url.port != 0
            except ValueError:  # a bad port or IPv6 literal
                valid = False
            if not valid:
                shown = redact_url(self.forward)
                raise UsageError(f"forward must be an http:// or https:// URL, got {shown!r}")
        if self.max_body < 1:
            raise UsageError(f"max_body must be positive, got {self.max_body}")
        if self.max_connections < 1:
            raise UsageError(f"max_connections must be positive, got {self.max_connections}")
        if not 0 < self.forward_timeout < float("inf"):
            raise UsageError(f"forward_timeout must be positive, got {self.forward_timeout}")
        if not self.request_timeout > 0:
            raise UsageError(f"request_timeout must be positive, got {self.request_timeout}")
        if not self.log_interval > 0:
            raise UsageError(f"log_interval must be positive, got {self.log_interval}")


#: the endpoint's repeated warnings, by kind: (lines logged per interval, the one summary line of the rest)
_WARNINGS: dict[str, tuple[int, str]] = {
    "malformed": (5, "enrich: %d more malformed line(s) skipped in the last %.1f s"),
    "dropped": (5, "enrich: %d more alert(s) dropped on a full forward queue in the last %.1f s"),
    "forward_failed": (1, "enrich: %d more forward failure(s) in the last %.1f s"),
    "timed_out": (5, "enrich: %d more client(s) dropped at the request deadline in the last %.1f s"),
    "evicted": (5, "enrich: %d more waiting connection(s) closed to make room in the last %.1f s"),
    "refused": (5, "enrich: %d more new connection(s) closed, all busy, in the last %.1f s"),
    "failed": (5, "enrich: %d more failed request(s) in the last %.1f s"),
    "too_large": (5, "enrich: %d more too large bodies refused in the last %.1f s"),
    "write_failed": (5, "enrich: %d more alert(s) not written in the last %.1f s"),
}


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    app: EnrichServer

    def process_request(self, request: Any, client_address: Any) -> None:
        app = self.app
        admitted, pushed = app._connections.admit(request, time.monotonic())
        if pushed is not None:
            oldest, waited = pushed
            hang_up(oldest)
            app._count("evicted")
            app._warn(
                "evicted",
                "enrich: all %d connections taken; closed the one that had waited %.2f s for its request",
                app.settings.max_connections,
                waited,
            )
        if not admitted:
            app._count("refused")
            app._warn("refused", "enrich: all connections busy; closing a new one from %s", client_address[0])
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            app._connections.remove(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.app._connections.remove(request)

    def service_actions(self) -> None:
        """Called by ``serve_forever`` several times a second: log the summaries of closed intervals."""
        self.app._flush_warnings()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up or stalls is routine: one debug line, not a traceback on stderr."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):
            log.debug("enrich: connection from %s ended: %s", client_address[0], error)
            return
        self.app._warn("failed", "enrich: request from %s failed: %r", client_address[0], error)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tor-sets-enrich"
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the plain socket file: replaced by one whose reads share the request's deadline
        self._reader = RequestReader(self.connection)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        app = self.server.app
        if not app._connections.waiting(self.connection, time.monotonic()):
            self.close_connection = True
            return
        self._reader.start(app.settings.request_timeout)
        super().handle_one_request()
        if self._reader.expired:
            self.close_connection = True
            if self._reader.received:  # not an idle keep-alive connection: a slow client
                app._count("timed_out")
                app._warn(
                    "timed_out",
                    "enrich: dropped a client at %s that took longer than %g s to send its request",
                    self.client_address[0],
                    app.settings.request_timeout,
                )

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("enrich: %s %s", self.address_string(), format % args)

    def _busy(self) -> None:
        """The request is read: the connection cannot be pushed out now, and sending the answer is bounded."""
        self.server.app._connections.busy(self.connection)
        self.connection.settimeout(self.server.app.settings.request_timeout)

    def _reply(self, status: int, body: bytes, content_type: str = "application/json", close: bool = False) -> None:
        self._busy()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._reply(status, json.dumps({"error": message}).encode() + b"\n", close=True)

    def do_POST(self) -> None:
        app = self.server.app
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._error(411, "a Content-Length is required")
            return
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            self._error(411, "a Content-Length is required")
            return
        length = _ascii_number(length_text)
        if length is None:
            self._error(400, "the Content-Length is not a number")
            return
        if length > app.settings.max_body:
            app._count("too_large")
            app._warn(
                "too_large",
                "enrich: refused a %d-byte body from %s (limit %d)",
                length,
                self.client_address[0],
                app.settings.max_body,
            )
            self._error(413, f"body larger than {app.settings.max_body} bytes")
            return
        try:
            body = self.rfile.read(length)
        except OSError:  # the deadline passed (counted by handle_one_request), or the client is gone
            self.close_connection = True
            return
        self._busy()
        if len(body) != length:
            self._error(400, "body shorter than its Content-Length")
            return
        stats = app.handle_body(body, peer=self.client_address[0])
        status = 400 if stats.malformed and not (stats.enriched or stats.passed) else 200
        self._reply(status, json.dumps(stats.to_json(), sort_keys=True).encode() + b"\n")

    def do_GET(self) -> None:
        self._busy()
        try:
            url = urllib.parse.urlsplit(self.path)
        except ValueError:  # e.g. an unclosed "[" taken for an IPv6 host
            self._error(400, "not a valid path")
            return
        if url.path == "/healthz":
            self._reply(200, b"ok\n", "text/plain")
            return
        if url.path != "/alerts":
            self._error(404, "not found")
            return
        if not ipaddress.ip_address(self.client_address[0].split("%", 1)[0]).is_loopback:
            self._error(403, "recent alerts are only served to loopback clients")
            return
        after = _ascii_number(urllib.parse.parse_qs(url.query).get("after", ["0"])[0])
        if after is None:
            self._error(400, "after must be a whole number")
            return
        self._reply(200, self.server.app.recent_json(after))


class EnrichServer:
    """An HTTP endpoint that enriches posted alerts and forwards them.

    ``POST`` (any path): the body is one alert (Falco's ``http_output``, falcosidekick's webhook; pretty-printed
    JSON is fine) or several, one per line; the answer counts them (``{"enriched":1,"lines":1,...}``; 400 when
    nothing in it was a JSON object or the Content-Length is no number, 411 without Content-Length, 413 over the
    size limit). Each alert is forwarded in a request of its own from a bounded queue by one background thread,
    so a slow or dead receiver never blocks Falco; redirects are not followed; failures are logged
    (rate-limited) and counted, never raised.

    ``GET /alerts?after=N`` (loopback clients only): ``{"next": M, "alerts": [...]}``, the enriched alerts
    numbered above N still kept. ``GET /healthz``: ``ok``.

    Against slow clients (see :class:`ServerSettings`): each request must arrive whole within
    ``request_timeout``; when ``max_connections`` are open, a new one pushes out the one that has waited longest
    for its request. Repeated warnings are summarised per ``log_interval``; a forward URL is only ever shown
    without its credentials.

    Args:
        enricher: the enricher.
        settings: where to listen and forward.
        write: called with every output line (enriched or passed), e.g. to append to a file; calls are
            serialised.
    """

    def __init__(
        self, enricher: Enricher, settings: ServerSettings, *, write: Callable[[bytes], None] | None = None
    ) -> None:
        settings.check()
        self.enricher = enricher
        self.settings = settings
        self._write = write
        self._lock = threading.Lock()
        self._connections = ConnectionTable(settings.max_connections)
        self._warnings = {
            kind: Throttle(summary, burst=burst, interval=settings.log_interval)
            for kind, (burst, summary) in _WARNINGS.items()
        }
        self._recent: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=max(settings.keep, 1))
        self._seq = 0
        self._counts: collections.Counter[str] = collections.Counter()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=max(settings.queue_size, 1))
        self._server: _HTTPServer | None = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> EnrichServer:
        """Bind and start serving (and forwarding) in background threads.

        Raises:
            TorSetsError: the address cannot be bound.
        """
        family = socket.AF_INET6 if ipaddress.ip_address(self.settings.host).version == 6 else socket.AF_INET
        server_class = type("_BoundServer", (_HTTPServer,), {"address_family": family})
        try:
            server = server_class((self.settings.host, self.settings.port), _Handler)
        except OSError as exc:
            raise TorSetsError(
                f"cannot listen on {self.settings.host}:{self.settings.port}: {exc.strerror or exc}"
            ) from exc
        server.app = self
        self._server = server
        serve = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="tor-sets-enrich-http", daemon=True
        )
        self._threads = [serve]
        if self.settings.forward is not None:
            self._threads.append(
                threading.Thread(target=self._forward_loop, name="tor-sets-enrich-forward", daemon=True)
            )
        for thread in self._threads:
            thread.start()
        return self

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        if self._server is None:
            raise RuntimeError("server not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the bound endpoint."""
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def stop(self, drain_timeout: float = 5.0) -> None:
        """Stop serving (hanging up on clients still sending a request, letting answers in progress finish), then
        give the forwarder up to ``drain_timeout`` seconds to send what is queued; log the pending summaries."""
        if self._server is None:
            return
        self._server.shutdown()
        for conn in self._connections.stop():
            hang_up(conn)
        self._server.server_close()
        if self.settings.forward is not None:
            deadline = time.monotonic() + drain_timeout
            while True:
                try:
                    self._queue.put(None, timeout=0.1)
                    break
                except queue.Full:
                    if time.monotonic() > deadline:
                        break
            for thread in self._threads[1:]:
                thread.join(max(deadline - time.monotonic(), 0))
            left = self._queue.qsize()
            if left:
                log.warning("enrich: %d alert(s) not forwarded at shutdown", left)
        self._flush_warnings(force=True)
        self._server = None

    def __enter__(self) -> EnrichServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- work -----------------------------------------------------------------------------------------------

    def handle_body(self, body: bytes, *, peer: str = "") -> StreamStats:
        """Enrich, write, keep and queue every alert of one request body; return its counts."""
        stats = StreamStats()
        stripped = body.strip()
        lines: list[bytes]
        if b"\n" in stripped:
            try:
                doc = json.loads(stripped, parse_constant=reject_constant)
            except (ValueError, RecursionError):
                lines = stripped.split(b"\n")
            else:  # one pretty-printed alert
                lines = [json.dumps(doc, separators=(",", ":")).encode()] if isinstance(doc, dict) else [stripped]
        else:
            lines = [stripped]
        for number, line in enumerate(lines, 1):
            result = self.enricher.enrich_line(line)
            stats.add(result.kind)
            if result.kind == "malformed":
                self._warn(
                    "malformed", "enrich: request from %s, line %d skipped: %s", peer or "?", number, result.reason
                )
                continue
            if result.kind == "blank":
                continue
            self._deliver(result)
        with self._lock:
            for kind in ("enriched", "passed", "malformed"):
                self._counts[kind] += getattr(stats, kind)
        return stats

    def _deliver(self, result: LineResult) -> None:
        with self._lock:
            if self._write is not None:
                try:
                    self._write(result.data)
                except OSError as exc:
                    self._counts["write_failed"] += 1
                    self._warn("write_failed", "enrich: cannot write an alert: %s", exc.strerror or exc)
            if result.kind == "enriched":
                self._seq += 1
                self._recent.append((self._seq, result.data.rstrip(b"\n")))
        if self.settings.forward is not None:
            try:
                self._queue.put_nowait(result.data.rstrip(b"\r\n"))
            except queue.Full:
                self._count("dropped")
                self._warn("dropped", "enrich: forward queue full (%d); alert dropped", self.settings.queue_size)

    def recent_json(self, after: int = 0) -> bytes:
        """``{"next": N, "alerts": [...]}`` with the kept enriched alerts numbered above ``after``."""
        with self._lock:
            items = [line for seq, line in self._recent if seq > after]
            following = self._seq
        return b'{"next":%d,"alerts":[' % following + b",".join(items) + b"]}\n"

    def stats(self) -> dict[str, int]:
        """Lifetime counts: enriched, passed, malformed, forwarded, forward_failed, dropped, too_large,
        write_failed, and against slow clients: timed_out (past ``request_timeout``), evicted (pushed out for a
        new connection), refused (every connection busy)."""
        with self._lock:
            return dict(self._counts)

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _warn(self, kind: str, message: str, *args: object) -> None:
        self._warnings[kind].warn(message, *args)

    def _flush_warnings(self, *, force: bool = False) -> None:
        for throttle in self._warnings.values():
            throttle.flush(force=force)

    def _forward_loop(self) -> None:
        session = requests.Session()
        url = self.settings.forward
        assert url is not None
        timeout = (self.settings.forward_timeout, self.settings.forward_timeout)
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                try:
                    response = session.post(
                        url,
                        data=item,
                        headers={"Content-Type": "application/json"},
                        timeout=timeout,
                        allow_redirects=False,  # a 307 would re-POST the alert (and the credentials) elsewhere
                    )
                    response.close()
                except (requests.RequestException, ValueError) as exc:  # urllib3 lets some URL errors through
                    self._forward_failed(f"{type(exc).__name__}: {_root(exc)}")
                    continue
                if 300 <= response.status_code < 400:
                    self._forward_failed(f"HTTP {response.status_code} (redirects are not followed)")
                elif response.status_code >= 400:
                    self._forward_failed(f"HTTP {response.status_code}")
                else:
                    self._count("forwarded")
        finally:
            session.close()

    def _forward_failed(self, why: str) -> None:
        self._count("forward_failed")
        url = self.settings.forward or ""
        self._warn(
            "forward_failed",
            "enrich: forwarding to %s failed (%s); %d failure(s) so far",
            redact_url(url),
            _without_credentials(why, url),
            self.stats().get("forward_failed", 0),
        )


def _root(exc: BaseException) -> str:
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return str(exc)[:200]


def _without_credentials(text: str, url: str) -> str:
    """``text`` (an error message about ``url``) with the userinfo of ``url`` hidden, as written or decoded.

    >>> _without_credentials("Failed to parse: http://u:pa%24s@h:1x/ (pa$s)", "http://u:pa%24s@h:1x/")
    'Failed to parse: http://***@h:1x/ (***)'
    """
    text = text.replace(url, redact_url(url))
    userinfo = url.partition("//")[2].split("/", 1)[0].rpartition("@")[0]
    password = userinfo.partition(":")[2]
    for secret in (userinfo, urllib.parse.unquote(userinfo), password, urllib.parse.unquote(password)):
        if secret:
            text = text.replace(secret, "***")
    return text
