"""The enrich endpoint over real HTTP on loopback: a real client posts, a real receiving server gets the forwards.

Everything listens on 127.0.0.1 only. The command-line test runs ``tor-sets enrich --listen`` as a process and
stops it with SIGTERM.
"""

from __future__ import annotations

import concurrent.futures
import http.server
import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.onionoo_server import free_port
from tor_sets.errors import SanityError
from tor_sets.falco.generate import INBOUND_RULE, OUTBOUND_RULE
from tor_sets.relays import Relay, Snapshot
from tor_sets.runtime.enrich import Enricher, EnrichServer, RelayIndex, ServerSettings

pytestmark = pytest.mark.integration

GUARD = Relay(
    "A" * 40,
    "guard1",
    (ip_address("198.51.100.1"),),
    flags=frozenset({"Guard", "Running"}),
    country="de",
    as_number="AS24940",
)
EXIT = Relay("B" * 40, "exit1", (ip_address("2001:db8::2"),), flags=frozenset({"Exit", "Running"}))
INDEX = RelayIndex.from_snapshot(Snapshot(datetime(2026, 2, 28, 1), (GUARD, EXIT)))


def falco_alert(rule: str = OUTBOUND_RULE, sip: str = "198.51.100.1", cip: str = "10.0.0.5") -> bytes:
    doc = {
        "hostname": "node-1",
        "output": "12:00:00.000000001: Warning Outbound connection to a Tor entry relay | ...",
        "output_fields": {"evt.time": 1767268800000000001, "fd.cip": cip, "fd.sip": sip},
        "priority": "Warning",
        "rule": rule,
        "source": "syscall",
        "tags": ["tor"],
        "time": "2026-01-01T12:00:00.000000001Z",
    }
    return json.dumps(doc, separators=(",", ":")).encode()


class Receiver:
    """A real HTTP server on loopback standing in for falcosidekick: records each POST body."""

    def __init__(self, status: int = 200, delay: float = 0.0, location: str | None = None) -> None:
        self.bodies: list[bytes] = []
        self.content_types: list[str] = []
        self.authorizations: list[str] = []
        self.status = status
        self.delay = delay
        self.location = location
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(receiver.delay)
                receiver.bodies.append(body)
                receiver.content_types.append(self.headers.get("Content-Type", ""))
                receiver.authorizations.append(self.headers.get("Authorization", ""))
                try:
                    self.send_response(receiver.status)
                    if receiver.location is not None:
                        self.send_header("Location", receiver.location)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/falco"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while len(self.bodies) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.bodies


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def serve(forward: str | None, **settings: Any) -> EnrichServer:
    return EnrichServer(Enricher(INDEX), ServerSettings(forward=forward, **settings)).start()


def test_post_enrich_forward(receiver: Receiver) -> None:
    server = serve(receiver.url)
    try:
        reply = requests.post(server.url + "/", data=falco_alert(), timeout=5)
        assert reply.status_code == 200
        assert reply.json() == {"enriched": 1, "lines": 1, "malformed": 0, "passed": 0}
        other = b'{"rule":"Terminal shell in container","output_fields":{"fd.sip":"198.51.100.1"}}'
        assert requests.post(server.url + "/any/path", data=other, timeout=5).json()["passed"] == 1
        forwarded = receiver.wait_for(2)
    finally:
        server.stop()
    first = json.loads(forwarded[0])
    assert first["tor"]["peers"][0]["relays"][0]["nickname"] == "guard1"
    assert forwarded[1] == other  # other alerts travel byte for byte
    assert receiver.content_types == ["application/json", "application/json"]
    assert server.stats() == {"enriched": 1, "passed": 1, "malformed": 0, "forwarded": 2}


def test_several_lines_in_one_body_and_pretty_json(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    server = serve(receiver.url)
    try:
        body = b"\n".join([falco_alert(), b"oops", falco_alert(INBOUND_RULE, sip="10.0.0.5", cip="2001:db8::2"), b""])
        with caplog.at_level(logging.WARNING, logger="tor_sets"):
            reply = requests.post(server.url, data=body, timeout=5)
        assert reply.json() == {"enriched": 2, "lines": 3, "malformed": 1, "passed": 0}
        assert "line 2 skipped: not JSON" in caplog.text
        pretty = json.dumps(json.loads(falco_alert()), indent=2).encode()
        assert requests.post(server.url, data=pretty, timeout=5).json()["enriched"] == 1
        forwarded = receiver.wait_for(3)
    finally:
        server.stop()
    assert [json.loads(b)["rule"] for b in forwarded] == [OUTBOUND_RULE, INBOUND_RULE, OUTBOUND_RULE]
    assert all(b"\n" not in b for b in forwarded)  # one compact alert per forward


def test_bad_requests_are_refused_and_the_server_lives_on(receiver: Receiver) -> None:
    server = serve(receiver.url, max_body=2048)
    try:
        assert requests.post(server.url, data=b"garbage\n[1]", timeout=5).status_code == 400
        big = requests.post(server.url, data=b"x" * 4096, timeout=5)
        assert big.status_code == 413 and "2048" in big.json()["error"]

        def chunks() -> Iterator[bytes]:
            yield falco_alert()

        assert requests.post(server.url, data=chunks(), timeout=5).status_code == 411  # chunked: no length
        with socket.create_connection(server.address, timeout=5) as sock:  # a lying Content-Length
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + falco_alert()[:20])
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(100).startswith(b"HTTP/1.1 400")
        assert requests.get(server.url + "/healthz", timeout=5).text == "ok\n"
        assert requests.get(server.url + "/nothing", timeout=5).status_code == 404
        assert requests.post(server.url, data=falco_alert(), timeout=5).status_code == 200
        assert len(receiver.wait_for(1)) == 1
    finally:
        server.stop()
    assert server.stats()["too_large"] == 1


def test_recent_alerts_for_the_selftest() -> None:
    server = serve(None, keep=2)
    try:
        for sip in ("198.51.100.1", "198.51.100.9", "2001:db8::2"):
            requests.post(server.url, data=falco_alert(sip=sip), timeout=5)
        requests.post(server.url, data=b'{"rule":"other"}', timeout=5)
        doc = requests.get(server.url + "/alerts", timeout=5).json()
        assert doc["next"] == 3 and [a["output_fields"]["fd.sip"] for a in doc["alerts"]] == [
            "198.51.100.9",
            "2001:db8::2",
        ]
        assert requests.get(server.url + "/alerts?after=3", timeout=5).json() == {"next": 3, "alerts": []}
    finally:
        server.stop()


@pytest.mark.parametrize("how", ["refused", "error status", "timeout"])
def test_forward_failures_are_logged_not_fatal(how: str, caplog: pytest.LogCaptureFixture) -> None:
    with Receiver(status=500 if how == "error status" else 200, delay=1.5 if how == "timeout" else 0) as rec:
        target = f"http://127.0.0.1:{free_port()}/" if how == "refused" else rec.url
        server = serve(target, forward_timeout=0.5)
        try:
            with caplog.at_level(logging.WARNING, logger="tor_sets"):
                for _ in range(3):
                    assert requests.post(server.url, data=falco_alert(), timeout=5).status_code == 200
                deadline = time.monotonic() + 10
                while server.stats().get("forward_failed", 0) < 3 and time.monotonic() < deadline:
                    time.sleep(0.05)
            assert requests.get(server.url + "/healthz", timeout=5).status_code == 200
        finally:
            server.stop(drain_timeout=3)
    assert server.stats()["forward_failed"] == 3
    assert caplog.text.count("forwarding to") == 1  # rate-limited: one line, not one per failure
    expected = {"refused": "ConnectionError", "error status": "HTTP 500", "timeout": "Timeout"}[how]
    assert expected in caplog.text


def test_a_full_queue_drops_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with Receiver(delay=0.5) as rec:
        server = serve(rec.url, queue_size=1)
        try:
            with caplog.at_level(logging.WARNING, logger="tor_sets"):
                for _ in range(4):
                    requests.post(server.url, data=falco_alert(), timeout=5)
        finally:
            server.stop(drain_timeout=5)
    assert server.stats()["dropped"] >= 1 and "forward queue full" in caplog.text


def test_a_flood_on_a_full_queue_is_summarised(caplog: pytest.LogCaptureFixture) -> None:
    with Receiver(delay=0.3) as rec, caplog.at_level(logging.WARNING, logger="tor_sets"):
        server = serve(rec.url, queue_size=1)
        try:
            reply = requests.post(server.url, data=b"\n".join([falco_alert()] * 200), timeout=10)
            assert reply.json()["enriched"] == 200
        finally:
            server.stop(drain_timeout=5)
    dropped = server.stats()["dropped"]
    messages = [record.getMessage() for record in caplog.records]
    assert dropped >= 190 and sum("forward queue full" in m for m in messages) == 5
    assert f"enrich: {dropped - 5} more alert(s) dropped on a full forward queue in the last " in caplog.text


def test_malformed_lines_are_summarised_not_logged_one_by_one(caplog: pytest.LogCaptureFixture) -> None:
    server = serve(None)
    with caplog.at_level(logging.WARNING, logger="tor_sets"):
        try:
            reply = requests.post(server.url, data=b"x\n" * 20_000, timeout=30)
        finally:
            server.stop()
    assert reply.status_code == 400 and reply.json()["malformed"] == 20_000
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 6, messages[:10]  # five lines, then one summary (written at the latest on stop)
    assert messages[4].startswith("enrich: request from 127.0.0.1, line 5 skipped: not JSON")
    assert messages[5].startswith("enrich: 19995 more malformed line(s) skipped in the last ")


def test_the_forwarder_does_not_follow_redirects(caplog: pytest.LogCaptureFixture) -> None:
    with Receiver() as elsewhere, Receiver(status=307, location=elsewhere.url) as target:
        server = serve(target.url)
        with caplog.at_level(logging.WARNING, logger="tor_sets"):
            try:
                assert requests.post(server.url, data=falco_alert(), timeout=5).status_code == 200
                deadline = time.monotonic() + 10
                while not server.stats().keys() & {"forwarded", "forward_failed"} and time.monotonic() < deadline:
                    time.sleep(0.02)
            finally:
                server.stop()
    assert len(target.bodies) == 1 and elsewhere.bodies == []
    assert server.stats().get("forward_failed") == 1 and "forwarded" not in server.stats()
    assert "HTTP 307 (redirects are not followed)" in caplog.text


@pytest.mark.parametrize("how", ["refused", "error status"])
def test_forward_credentials_are_never_logged(how: str, caplog: pytest.LogCaptureFixture) -> None:
    with Receiver(status=500) as rec:
        port = free_port() if how == "refused" else rec.server.server_address[1]
        server = serve(f"http://tor-sets:s3cret@127.0.0.1:{port}/falco", forward_timeout=0.5)
        with caplog.at_level(logging.DEBUG, logger="tor_sets"):
            try:
                for _ in range(2):
                    requests.post(server.url, data=falco_alert(), timeout=5)
                deadline = time.monotonic() + 10
                while server.stats().get("forward_failed", 0) < 2 and time.monotonic() < deadline:
                    time.sleep(0.02)
            finally:
                server.stop()
    assert server.stats()["forward_failed"] == 2
    assert f"forwarding to http://***@127.0.0.1:{port}/falco failed" in caplog.text
    assert "s3cret" not in caplog.text
    if how == "error status":  # the credentials are still sent, in the Authorization header
        assert rec.authorizations == ["Basic dG9yLXNldHM6czNjcmV0"] * 2


def read_reply(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (bounded by the socket's timeout)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    "request_",
    [
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \xb2\r\n\r\n",  # '\xb2' is '²' in Latin-1, the header charset
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",  # int() refuses 5000 digits
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"GET /alerts?after=\xb2 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /alerts?after=%C2%B9 HTTP/1.1\r\nHost: x\r\n\r\n",  # '¹', percent-encoded UTF-8
        b"GET /alerts?after=%EF%BC%91 HTTP/1.1\r\nHost: x\r\n\r\n",  # FULLWIDTH DIGIT ONE (U+FF11)
        b"GET /alerts?after=x HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=[
        "length-superscript",
        "length-5000-digits",
        "length-negative",
        "after-latin1",
        "after-utf8",
        "after-fullwidth",
        "after-word",
    ],
)
def test_numbers_are_ascii_digits_or_a_400(request_: bytes) -> None:
    server = serve(None)
    try:
        with socket.create_connection(server.address, timeout=5) as sock:
            sock.sendall(request_)
            reply = read_reply(sock)
        assert requests.get(server.url + "/healthz", timeout=5).status_code == 200
    finally:
        server.stop()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), reply[:200]
    assert len(body) < 100 and "error" in json.loads(body)


SLOW_HEAD = b"POST / HTTP/1.1\r\nHost: x\r\n"  # a head that never ends: then one more header byte at a time
SLOW_BODY = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"  # then one body byte at a time


def trickle_until_closed(sock: socket.socket, give_up: float) -> bool:
    """Send a byte every 0.1 s until the server closes the connection (True) or ``give_up`` seconds pass (False)."""
    deadline = time.monotonic() + give_up
    sock.settimeout(0.1)
    while time.monotonic() < deadline:
        try:
            sock.sendall(b"X")
            if sock.recv(4096) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:  # reset, broken pipe: closed too
            return True
    return False


@pytest.mark.parametrize("start", [SLOW_HEAD, SLOW_BODY], ids=["head", "body"])
def test_slow_clients_neither_starve_others_nor_outlive_their_deadline(start: bytes) -> None:
    server = serve(None, max_connections=4, request_timeout=1.5)
    slow: list[socket.socket] = []
    try:
        for _ in range(8):  # twice the connection limit
            slow.append(socket.create_connection(server.address, timeout=5))
            slow[-1].sendall(start)
        with concurrent.futures.ThreadPoolExecutor(len(slow)) as pool:
            closed = [pool.submit(trickle_until_closed, sock, 10.0) for sock in slow]
            reply = requests.post(server.url, data=falco_alert(), timeout=5)
            assert reply.status_code == 200 and reply.json()["enriched"] == 1
            assert [f.result() for f in closed] == [True] * 8  # none still open after 10 s of trickling
    finally:
        for sock in slow:
            sock.close()
        server.stop()
    counts = server.stats()
    assert counts.get("evicted", 0) + counts.get("timed_out", 0) >= 8, counts


def test_stop_does_not_wait_for_a_slow_client() -> None:
    server = serve(None)  # the default request deadline
    with socket.create_connection(server.address, timeout=5) as sock:
        sock.sendall(SLOW_HEAD)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            closed = pool.submit(trickle_until_closed, sock, 10.0)
            time.sleep(0.3)  # the server is reading the slow head now
            stopping = threading.Thread(target=server.stop)
            stopping.start()
            stopping.join(5)
            assert not stopping.is_alive(), "stop() waited for the slow client"
            assert closed.result()


def test_only_loopback_unless_allowed() -> None:
    with pytest.raises(SanityError):
        EnrichServer(Enricher(INDEX), ServerSettings(host="0.0.0.0"))
    server = EnrichServer(Enricher(INDEX), ServerSettings(host="::1")).start()
    try:
        assert server.url.startswith("http://[::1]:")
        assert requests.post(server.url, data=falco_alert(), timeout=5).status_code == 200
    finally:
        server.stop()


def test_the_command_line_endpoint(tmp_path: Path, receiver: Receiver, data_dir: Path) -> None:
    snapshot = data_dir / "onionoo" / "details-fullschema-limit2-2021-09-30.json"
    out = tmp_path / "enriched.json"
    err = (tmp_path / "stderr").open("w+")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tor_sets",
            "enrich",
            "--listen",
            "127.0.0.1:0",
            "--forward",
            receiver.url.replace("http://", "http://tor-sets:s3cret@"),
            "--input",
            str(snapshot),
            "-o",
            str(out),
            "--output-fields",
        ],
        stdout=subprocess.PIPE,
        stderr=err,
    )
    try:
        url = None
        deadline = time.monotonic() + 30
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            err.seek(0)
            for text in err.read().splitlines():
                if "listening on " in text:
                    url = text.split("listening on ", 1)[1].split(",", 1)[0]
            time.sleep(0.05)
        assert url is not None, "the endpoint did not start"
        reply = requests.post(url, data=falco_alert(sip="165.22.200.169"), timeout=5)
        assert reply.json()["enriched"] == 1
        (forwarded,) = receiver.wait_for(1)
        doc = json.loads(forwarded)
        assert doc["output_fields"]["tor.nickname"] == "lyesn" and doc["tor"]["peers"][0]["fields"] == ["fd.sip"]
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0 and stdout == b""  # in listen mode alerts go to -o and the forward only
    assert json.loads(out.read_bytes()) == doc
    err.seek(0)
    log = err.read()
    assert "enrich: stopping" in log and "enriched 1" in log and "forwarded 1" in log
    assert f", forwarding to {receiver.url.replace('http://', 'http://***@')}\n" in log and "s3cret" not in log
    assert receiver.authorizations == ["Basic dG9yLXNldHM6czNjcmV0"]  # the credentials are used, never shown
    err.close()
