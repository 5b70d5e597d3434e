"""A real HTTP server on loopback that plays Onionoo for the client's tests.

Each test sets what the next requests get (status, body, gzip, Last-Modified, a stall, a cut connection, a trickle)
and reads back what the client sent (headers, query). The server runs in a thread for the whole test session.
"""

from __future__ import annotations

import gzip
import http.server
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate, parsedate_to_datetime


@dataclass
class Behaviour:
    status: int = 200
    body: bytes = b""
    gzip: bool = False
    content_type: str = "application/json"
    last_modified: float | None = None  # epoch seconds; honours If-Modified-Since when set
    stall: float = 0.0  # seconds to sleep before answering
    stall_body: float = 0.0  # seconds to sleep after the headers and half the body, then send the rest
    truncate_to: int | None = None  # send only this many body bytes, then close
    trickle: float = 0.0  # send the body one byte every `trickle` seconds (each wait far below the read timeout)
    trickle_head: bool = False  # with `trickle`: the status line and headers too
    headers: dict[str, str] = field(default_factory=dict)
    statuses: list[int] = field(default_factory=list)  # statuses for the first requests, then `status`


class _QuietServer(http.server.ThreadingHTTPServer):
    """A client that hangs up (size cap, timeout, a killed process) is expected here, not an error to print."""

    def handle_error(self, request: object, client_address: object) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class OnionooServer:
    def __init__(self) -> None:
        self.behaviour = Behaviour()
        self.requests: list[dict[str, str]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                try:
                    self._answer()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client hung up (size cap, timeout): expected in tests

            def _answer(self) -> None:
                b = server.behaviour
                server.requests.append({"path": self.path, **{k: v for k, v in self.headers.items()}})
                if b.stall:
                    time.sleep(b.stall)
                status = b.statuses.pop(0) if b.statuses else b.status
                since = self.headers.get("If-Modified-Since")
                if status == 200 and b.last_modified is not None and since:
                    try:
                        if parsedate_to_datetime(since).timestamp() >= int(b.last_modified):
                            status = 304
                    except (TypeError, ValueError):
                        pass
                body = b.body if status == 200 else (b.body if status >= 400 else b"")
                if b.gzip and status == 200:
                    body = gzip.compress(body)
                if b.trickle:
                    self._trickle(status, body, b)
                    return
                self.send_response(status)
                self.send_header("Content-Type", b.content_type)
                if b.gzip and status == 200:
                    self.send_header("Content-Encoding", "gzip")
                if b.last_modified is not None:
                    self.send_header("Last-Modified", formatdate(b.last_modified, usegmt=True))
                for k, v in b.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if b.truncate_to is not None:
                    self.wfile.write(body[: b.truncate_to])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if b.stall_body:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    time.sleep(b.stall_body)
                    body = body[len(body) // 2 :]
                self.wfile.write(body)

            def _trickle(self, status: int, body: bytes, b: Behaviour) -> None:
                head = (
                    f"HTTP/1.1 {status} {self.responses[status][0]}\r\nContent-Type: {b.content_type}\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode()
                start = 0 if b.trickle_head else len(head)
                raw = head + body
                self.close_connection = True
                self.wfile.write(raw[:start])
                for i in range(start, len(raw)):
                    time.sleep(b.trickle)
                    self.wfile.write(raw[i : i + 1])  # raises once the client has hung up

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/details"

    def reset(self, **kwargs: object) -> Behaviour:
        self.behaviour = Behaviour(**kwargs)  # type: ignore[arg-type]
        self.requests.clear()
        return self.behaviour

    def start(self) -> OnionooServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
