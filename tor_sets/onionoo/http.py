"""Fetching a details document over HTTP: timeouts, retries, a total deadline, size caps, conditional GET.

Exports :class:`FetchSettings`, :class:`FetchResult` and :func:`fetch`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import socket
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, cast

import requests
import urllib3
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.response import BaseHTTPResponse
from urllib3.util.retry import Retry

from tor_sets import __version__
from tor_sets.errors import FetchError, FetchTimeout
from tor_sets.onionoo.cache import _cached_last_modified, _store_cache, cached_snapshot, default_cache_dir
from tor_sets.onionoo.document import (
    MAX_BYTES,
    MAX_RELAYS,
    _document_bytes,
    _memory_is_a_document_error,
    check_not_future,
    parse_document,
)
from tor_sets.relays import Snapshot
from tor_sets.urls import redact_url

if TYPE_CHECKING:  # urllib3 defines its connection protocols for type checkers only
    from urllib3._base_connection import BaseHTTPConnection, BaseHTTPSConnection

__all__ = [
    "DEFAULT_DEADLINE",
    "DEFAULT_URL",
    "FIELDS",
    "FetchResult",
    "FetchSettings",
    "Progress",
    "fetch",
]

log = logging.getLogger(__name__)

DEFAULT_URL = "https://onionoo.torproject.org/details"
#: the relay fields tor-sets reads; everything else is left on the server
FIELDS = (
    "fingerprint",
    "nickname",
    "or_addresses",
    "exit_addresses",
    "flags",
    "running",
    "country",
    "as",
    "first_seen",
    "last_seen",
)

#: seconds one fetch may take in all, retries included (``FetchSettings.deadline``), on top of the per-read timeout,
#: which a server trickling a byte at a time never trips
DEFAULT_DEADLINE = 300.0


#: ``progress(received, total, done)``: bytes on the wire so far, the expected total (None: unknown), the end
Progress = Callable[[int, int | None, bool], None]


@dataclass(frozen=True, slots=True)
class FetchSettings:
    """How to fetch the details document.

    Attributes:
        url: the details endpoint; the query (``type=relay&running=true&fields=...``) is added unless the URL
            already has one. A ``user:password@`` in it is sent as HTTP Basic credentials and never written or
            logged (:func:`~tor_sets.urls.redact_url`).
        connect_timeout, read_timeout: seconds; the read timeout bounds every wait for data, so a server that
            stalls fails instead of hanging.
        retries: retries on connection errors, 429 and 5xx, with exponential backoff.
        max_bytes: cap on the document after every decompression layer, enforced while streaming and inflating.
        cache_dir: where the last good download and its ``Last-Modified`` are kept (None: no cache).
        progress: called with the bytes received so far and the expected total (None when unknown), as the body
            arrives, and once more with ``done=True`` at its end; the library never draws anything itself.
        deadline: seconds the whole fetch may take, retries and their backoff included; when it passes, the
            fetch's connections are shut down, wherever they are (a server trickling a byte at a time never trips
            the read timeout).
        max_relays: most relays the document may list.
    """

    url: str = DEFAULT_URL
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    retries: int = 3
    backoff_factor: float = 1.0
    max_bytes: int = MAX_BYTES
    cache_dir: Path | None = field(default_factory=default_cache_dir)
    progress: Progress | None = None
    deadline: float = DEFAULT_DEADLINE
    max_relays: int = MAX_RELAYS

    @property
    def request_url(self) -> str:
        if "?" in self.url:
            return self.url
        return f"{self.url}?type=relay&running=true&fields={','.join(FIELDS)}"


@dataclass(frozen=True, slots=True)
class FetchResult:
    """What a fetch brought: a snapshot, and whether the server said nothing changed (304)."""

    snapshot: Snapshot
    not_modified: bool
    last_modified: str | None


# ---------------------------------------------------------------------------------------------------- the deadline


class _DeadlinePassed(Exception):
    """Raised inside urllib3 (opening a connection, a retry's backoff) once the fetch's deadline has passed."""


class _Deadline:
    """The total deadline of one fetch: when it passes, every connection the fetch opened is shut down.

    A per-read timeout never fires against a server that sends a byte just often enough. A watchdog thread that
    shuts the sockets down ends any read at once, wherever it is (status line, headers or body); a connection
    opened or a retry backoff begun after the deadline raises :class:`_DeadlinePassed`. Used as a context manager
    around one fetch; the session's pools report each connection through :meth:`track`.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.passed = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._connections: list[object] = []
        self._watchdog = threading.Thread(target=self._watch, name="tor-sets-fetch-deadline", daemon=True)

    def __enter__(self) -> _Deadline:
        self._watchdog.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._done.set()
        self._watchdog.join()

    def track(self, connection: object) -> None:
        """Watch ``connection`` (opened, not yet connected); refuse it once the deadline has passed."""
        if self.passed.is_set():
            raise _DeadlinePassed
        with self._lock:
            self._connections.append(connection)

    def _watch(self) -> None:
        if self._done.wait(self.seconds):
            return
        self.passed.set()
        while True:  # and again every 0.1 s: a connection may have been connecting at the deadline
            with self._lock:
                sockets = [getattr(c, "sock", None) for c in self._connections]
            for sock in sockets:
                if isinstance(sock, socket.socket):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)  # a blocked recv returns at once
            if self._done.wait(0.1):
                return


class _Retry(Retry):
    """urllib3's retries, whose backoff ends (raising :class:`_DeadlinePassed`) when the fetch's deadline passes."""

    deadline: _Deadline

    def new(self, **kw: Any) -> Self:
        retry = super().new(**kw)
        retry.deadline = self.deadline
        return retry

    def sleep(self, response: BaseHTTPResponse | None = None) -> None:
        if self.deadline.passed.wait(self.get_backoff_time()):
            raise _DeadlinePassed


class _WatchedHTTPConnectionPool(HTTPConnectionPool):
    """A pool that reports each connection it opens to the fetch's deadline."""

    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadline = deadline

    def _new_conn(self) -> BaseHTTPConnection:
        connection = super()._new_conn()
        self.deadline.track(connection)
        return connection


class _WatchedHTTPSConnectionPool(HTTPSConnectionPool):
    """A pool that reports each connection it opens to the fetch's deadline."""

    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadline = deadline

    def _new_conn(self) -> BaseHTTPSConnection:
        connection = super()._new_conn()
        self.deadline.track(connection)
        return connection


class _Adapter(requests.adapters.HTTPAdapter):
    """requests' adapter, with pools that report their connections to the fetch's deadline."""

    def __init__(self, deadline: _Deadline, **kwargs: Any) -> None:
        self._deadline = deadline  # before super().__init__, which builds the pool manager
        super().__init__(**kwargs)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": cast(
                type[HTTPConnectionPool], functools.partial(_WatchedHTTPConnectionPool, deadline=self._deadline)
            ),
            "https": cast(
                type[HTTPConnectionPool], functools.partial(_WatchedHTTPSConnectionPool, deadline=self._deadline)
            ),
        }


# ---------------------------------------------------------------------------------------------------- one GET


def _session(settings: FetchSettings, deadline: _Deadline) -> requests.Session:
    retry = _Retry(
        total=settings.retries,
        connect=settings.retries,
        read=settings.retries,
        status=settings.retries,
        backoff_factor=settings.backoff_factor,
        backoff_max=30,
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=frozenset({"GET"}),
        respect_retry_after_header=False,
        raise_on_status=False,
    )
    retry.deadline = deadline
    session = requests.Session()
    adapter = _Adapter(deadline, max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers.update(
        {"Accept-Encoding": "gzip", "Accept": "application/json", "User-Agent": f"tor-sets/{__version__}"}
    )
    return session


def _read_body(response: requests.Response, settings: FetchSettings, url: str) -> bytes:
    """The body with its HTTP ``Content-Encoding`` decoded, in steps, failing once past ``settings.max_bytes``."""
    length = response.headers.get("Content-Length")
    total = int(length) if length and length.isdigit() and length.isascii() else None
    progress = settings.progress
    chunks: list[bytes] = []
    size = 0
    wire = 0
    try:
        for chunk in response.raw.stream(65536, decode_content=True):
            size += len(chunk)
            if size > settings.max_bytes:
                raise FetchError(f"response from {url} exceeds the size cap of {settings.max_bytes} bytes", url=url)
            chunks.append(chunk)
            wire = response.raw.tell()
            if progress is not None:
                progress(wire, total, False)
        body = b"".join(chunks)
    except MemoryError as exc:
        raise FetchError(f"out of memory while downloading from {url}", url=url) from exc
    if progress is not None:
        progress(wire, total, True)
    return body


def _get(settings: FetchSettings, deadline: _Deadline, since: str | None) -> tuple[bytes | None, str | None]:
    """One GET, ``If-Modified-Since: since`` when given: the body (None for a 304 to it) and its ``Last-Modified``.

    Raises:
        FetchError: an HTTP error status, an oversize body; requests' and urllib3's own errors pass through.
    """
    url = settings.request_url
    shown = redact_url(url)
    headers = {"If-Modified-Since": since} if since else {}
    with _session(settings, deadline) as session:
        response = session.get(
            url, headers=headers, timeout=(settings.connect_timeout, settings.read_timeout), stream=True
        )
        with response:
            if response.status_code == 304 and since:
                return None, None
            if response.status_code != 200:
                reason = (response.reason or "").strip()[:60]
                raise FetchError(f"HTTP {response.status_code} {reason} from {shown}".strip(), url=shown)
            return _read_body(response, settings, redact_url(settings.url)), response.headers.get("Last-Modified")


def fetch(settings: FetchSettings | None = None) -> FetchResult:
    """Fetch the details document, conditionally when a cached copy of the same URL exists.

    On 304 the cached copy is returned with ``not_modified=True`` (when that copy is unreadable, the document is
    fetched again without condition); on 200 the body is decoded (one gzip layer, as a static ``.json.gz`` mirror
    serves it), parsed, then cached as the document itself.

    Raises:
        FetchTimeout: the server stalled past the read timeout, or the whole fetch passed its deadline.
        FetchError: connection failure, HTTP error status, oversize body.
        DocumentError: the body is not a usable details document: it inflates past the size cap, lists too many
            relays or is dated in the future, for example (the cache is left as it was).
    """
    settings = settings or FetchSettings()
    shown = redact_url(settings.request_url)
    source = redact_url(settings.url)
    cache_dir = settings.cache_dir
    since = _cached_last_modified(cache_dir, shown)
    _resolve(settings.request_url)
    with _Deadline(settings.deadline) as deadline:
        body, last_modified = _get_in_time(settings, deadline, since)
        if body is None:
            assert cache_dir is not None  # a 304 answers our If-Modified-Since, sent only with a cache
            cached = cached_snapshot(cache_dir)  # parsed only now: a 304 is the common case
            if cached is not None:
                # same data as a live answer: same source, so the rules header (and file) stay the same
                return FetchResult(replace(cached, source=source), True, since)
            log.warning("HTTP 304 from %s but the cached copy is unreadable; fetching the whole document", shown)
            body, last_modified = _get_in_time(settings, deadline, None)
    assert body is not None  # without If-Modified-Since, a 304 is an HTTP error like any other
    with _memory_is_a_document_error():
        document = _document_bytes(body, settings.max_bytes)
    snapshot = parse_document(document, source=source, max_bytes=settings.max_bytes, max_relays=settings.max_relays)
    check_not_future(snapshot)
    if cache_dir is not None:
        _store_cache(cache_dir, document, shown, last_modified)
    return FetchResult(snapshot, False, last_modified)


def _get_in_time(settings: FetchSettings, deadline: _Deadline, since: str | None) -> tuple[bytes | None, str | None]:
    """:func:`_get`, with requests' and urllib3's errors translated, and the deadline's cut as a FetchTimeout."""
    shown = redact_url(settings.request_url)
    try:
        answer = _get(settings, deadline, since)
    except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, _DeadlinePassed) as exc:
        if deadline.passed.is_set():
            raise _deadline_error(settings, shown) from exc
        raise _fetch_error(exc, shown, settings.retries) from exc
    if deadline.passed.is_set():  # a body without a length that the watchdog cut short looks complete
        raise _deadline_error(settings, shown)
    return answer


def _deadline_error(settings: FetchSettings, url: str) -> FetchTimeout:
    return FetchTimeout(
        f"gave up fetching {url}: no complete answer within the deadline of {settings.deadline:g} s (deadline)",
        url=url,
    )


def _fetch_error(exc: Exception, url: str, retries: int) -> FetchError:
    """What requests or urllib3 raised while fetching ``url`` (redacted), as one FetchError (or FetchTimeout)."""
    if isinstance(exc, requests.exceptions.Timeout):
        return FetchTimeout(f"timed out fetching {url}", url=url)
    if isinstance(exc, requests.exceptions.RetryError):
        return FetchError(f"gave up fetching {url} after {retries} retries", url=url)
    if isinstance(exc, requests.exceptions.ConnectionError):
        if isinstance(exc.__context__, requests.exceptions.ReadTimeout) or "timed out" in str(exc):
            return FetchTimeout(f"timed out fetching {url}", url=url)
        return FetchError(f"cannot connect to {url}: {_root_cause(exc)}", url=url)
    if isinstance(exc, requests.exceptions.RequestException):
        return FetchError(f"fetching {url} failed: {_root_cause(exc)}", url=url)
    if isinstance(exc, urllib3.exceptions.TimeoutError):  # raised while streaming the body
        return FetchTimeout(f"timed out fetching {url} (the server stalled in the middle of the body)", url=url)
    # the connection broke while streaming the body, e.g.
    # ('Connection broken: IncompleteRead(20000 bytes read, 378959 more expected)', IncompleteRead(...))
    reason = exc.args[0] if exc.args and isinstance(exc.args[0], str) else _root_cause(exc)
    return FetchError(f"fetching {url} failed while reading the body: {redact_url(reason)[:200]}", url=url)


def _resolve(url: str) -> None:
    """Fail at once, without retries, when the host name does not resolve (a DNS answer is not a time-out)."""
    try:
        host = urllib.parse.urlsplit(url).hostname
    except ValueError:
        host = None
    if not host:
        shown = f": {redact_url(url)}" if "://" in url else " (it must start with http:// or https://)"
        raise FetchError(f"not an HTTP URL{shown}", url=redact_url(url))
    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchError(
            f"cannot resolve {host}: {getattr(exc, 'strerror', None) or exc}", url=redact_url(url)
        ) from exc


def _root_cause(exc: BaseException) -> str:
    seen: BaseException = exc
    while seen.__cause__ is not None or seen.__context__ is not None:
        nxt = seen.__cause__ or seen.__context__
        assert nxt is not None
        seen = nxt
    text = str(seen) or seen.__class__.__name__
    # urllib3 messages carry object reprs; keep the readable tail
    text = re.sub(r"<[^>]*>: ", "", text)
    return redact_url(text.splitlines()[0][:160])
