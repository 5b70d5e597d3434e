"""The download progress bar: drawn by the command line on stderr, and only on a terminal.

Exports :func:`download_bar`, a ``progress`` callback for :class:`tor_sets.onionoo.FetchSettings`.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tor_sets.onionoo.http import Progress

__all__ = ["download_bar"]


def download_bar(stream: TextIO | None = None, *, width: int = 30, every_s: float = 0.1) -> Progress | None:
    """A callback drawing ``downloading [#####.....] 1.2 MB`` on ``stream`` (stderr), or None off a terminal."""
    out = stream if stream is not None else sys.stderr
    if not out.isatty():
        return None
    last = [0.0]

    def show(received: int, total: int | None, done: bool) -> None:
        now = time.monotonic()
        if not done and now - last[0] < every_s:
            return
        last[0] = now
        if total:
            filled = min(width, received * width // total)
            out.write(f"\rdownloading [{'#' * filled}{'.' * (width - filled)}] {received / 1e6:6.1f} MB")
        else:
            out.write(f"\rdownloading {received / 1e6:6.1f} MB")
        out.write("\n" if done else "")
        out.flush()

    return show
