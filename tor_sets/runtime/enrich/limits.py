"""What keeps the enrich endpoint bounded against slow and hostile clients and floods of bad input.

Exports :class:`RequestReader` (a connection's reads sharing one deadline per request), :class:`ConnectionTable`
(at most N connections; a new one pushes out the one that has waited longest for its request), :func:`hang_up`,
and :class:`Throttle` (one kind of warning, rate-limited and summarised per interval). The endpoint that uses them
is :class:`tor_sets.runtime.enrich.server.EnrichServer`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["ConnectionTable", "RequestReader", "Throttle", "hang_up"]

log = logging.getLogger(__name__)


class Throttle:
    """One kind of warning, rate-limited: the first ``burst`` of an interval are logged, the rest only counted,
    and the count is logged in one summary line once the interval is over (by the next warning of the kind or by
    :meth:`flush`, which the server calls several times a second and at its end).

    An interval opens with the first warning after the previous one closed, so a quiet endpoint logs nothing.

    >>> throttle = Throttle("%d more in the last %.1f s", burst=2, interval=10.0)
    >>> [throttle.warn("line %d", n, now=float(n)) for n in range(5)]  # logs "line 0" and "line 1"
    [True, True, False, False, False]
    >>> throttle.flush(now=9.0), throttle.flush(now=12.0)  # the second logs "3 more in the last 12.0 s"
    (0, 3)
    """

    def __init__(self, summary: str, *, burst: int, interval: float) -> None:
        self.summary = summary
        self.burst = burst
        self.interval = interval
        self._lock = threading.Lock()
        self._opened: float | None = None
        self._logged = 0
        self._held = 0

    def warn(self, message: str, *args: object, now: float | None = None) -> bool:
        """Log ``message % args`` unless this interval's ``burst`` is spent; return whether it was logged."""
        with self._lock:
            now = time.monotonic() if now is None else now
            self._close(now, force=False)
            if self._opened is None:
                self._opened = now
            if self._logged < self.burst:
                self._logged += 1
                log.warning(message, *args)
                return True
            self._held += 1
            return False

    def flush(self, *, now: float | None = None, force: bool = False) -> int:
        """Close the interval if it is over (or ``force``): log the summary; return the count it gave (0: none)."""
        with self._lock:
            return self._close(time.monotonic() if now is None else now, force)

    def _close(self, now: float, force: bool) -> int:
        if self._opened is None or (not force and now - self._opened < self.interval):
            return 0
        held = self._held
        if held:
            log.warning(self.summary, held, now - self._opened)
        self._opened, self._logged, self._held = None, 0, 0
        return held


class ConnectionTable:
    """The connections being served (at most ``limit``) and since when each has waited for its request.

    A connection *waits* from the moment the server starts reading a request on it (its accept, or the end of
    the previous answer on a keep-alive connection) until the request is read whole; it is *busy* while that
    request is answered. When all places are taken, :meth:`admit` makes room by pushing out the connection that
    has waited longest: a client that trickles its request, or sits idle, loses its place to a prompt one.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._waiting_since: dict[socket.socket, float | None] = {}  # None: busy
        self._stopping = False

    def admit(self, conn: socket.socket, now: float) -> tuple[bool, tuple[socket.socket, float] | None]:
        """Take ``conn`` in, waiting since ``now``.

        Returns:
            Whether it was taken (not when every place is busy), and the connection pushed out to make room
            with the seconds it had waited, if any; the caller hangs that one up.
        """
        with self._lock:
            pushed = None
            if len(self._waiting_since) >= self.limit:
                waiting = [(since, c) for c, since in self._waiting_since.items() if since is not None]
                if not waiting:
                    return False, None
                since, oldest = min(waiting, key=lambda item: item[0])
                del self._waiting_since[oldest]
                pushed = (oldest, now - since)
            self._waiting_since[conn] = now
            return True, pushed

    def waiting(self, conn: socket.socket, now: float) -> bool:
        """``conn`` waits for its next request from ``now`` on; False: it was pushed out or the server stops."""
        with self._lock:
            if self._stopping or conn not in self._waiting_since:
                return False
            self._waiting_since[conn] = now
            return True

    def busy(self, conn: socket.socket) -> None:
        """``conn`` has sent its request whole and is being answered."""
        with self._lock:
            if conn in self._waiting_since:
                self._waiting_since[conn] = None

    def remove(self, conn: socket.socket) -> None:
        """``conn`` is closed."""
        with self._lock:
            self._waiting_since.pop(conn, None)

    def stop(self) -> list[socket.socket]:
        """No more requests (see :meth:`waiting`): remove and return every waiting connection."""
        with self._lock:
            self._stopping = True
            waiting = [c for c, since in self._waiting_since.items() if since is not None]
            for conn in waiting:
                del self._waiting_since[conn]
            return waiting


def hang_up(conn: socket.socket) -> None:
    """End a connection that another thread may be reading: its read returns at once with end of file."""
    with contextlib.suppress(OSError):  # already gone
        conn.shutdown(socket.SHUT_RDWR)


class RequestReader(io.RawIOBase):
    """A connection's socket as a raw stream whose reads share one deadline per request (see :meth:`start`).

    A per-read timeout lets a client keep a connection for ever by sending a byte before each read times out;
    here every read only gets what is left of the request's time.
    """

    def __init__(self, conn: socket.socket) -> None:
        super().__init__()
        self._conn = conn
        self._deadline = float("inf")
        self.received = 0
        self.expired = False

    def start(self, timeout: float) -> None:
        """A new request: it must arrive whole within ``timeout`` seconds from now."""
        self._deadline = time.monotonic() + timeout
        self.received = 0
        self.expired = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        left = self._deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError("the request took longer than its deadline")
            self._conn.settimeout(left)
            count = self._conn.recv_into(buffer)
        except TimeoutError:
            self.expired = True
            raise
        self.received += count
        return count
