"""Where relay data comes from: live, else the cached download, else the bundled snapshot, with a warning.

Exports :class:`Obtained`, :func:`obtain` and :func:`age`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tor_sets.errors import DocumentError, FetchError, StaleDataError
from tor_sets.onionoo.cache import cached_snapshot
from tor_sets.onionoo.document import bundled_snapshot, check_not_future, read_snapshot
from tor_sets.onionoo.http import FetchSettings, fetch
from tor_sets.relays import Snapshot, format_age

__all__ = [
    "Obtained",
    "age",
    "obtain",
]

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------- fallback


@dataclass(frozen=True, slots=True)
class Obtained:
    """A snapshot and how it was obtained: ``file``, ``live``, ``not-modified``, ``cache`` or ``bundled``."""

    snapshot: Snapshot
    origin: str
    warning: str | None = None


def age(snapshot: Snapshot, now: datetime | None = None) -> timedelta:
    """How old the snapshot's data is."""
    now = now or datetime.now(UTC).replace(tzinfo=None)
    return now - snapshot.relays_published


def obtain(
    *,
    input_path: Path | None = None,
    settings: FetchSettings | None = None,
    offline: bool = False,
    fallback: bool = True,
    max_age: timedelta | None = None,
) -> Obtained:
    """Get the best relay data available.

    With ``input_path`` the file is read (within the settings' ``max_bytes`` and ``max_relays``) and nothing else
    is tried. Otherwise the live directory is fetched;
    when that fails (and ``fallback`` is allowed) the last cached download is used, then the bundled snapshot,
    with a warning naming the data's date.

    Raises:
        FetchError, DocumentError: fetching failed and no fallback was allowed, or the input file is unusable
            (dated in the future included).
        StaleDataError: the data obtained is older than ``max_age``.
    """
    settings = settings or FetchSettings()
    if input_path is not None:
        snapshot = read_snapshot(input_path, max_bytes=settings.max_bytes, max_relays=settings.max_relays)
        check_not_future(snapshot)
        result = Obtained(snapshot, "file")
    else:
        result = _obtain_live_or_fallback(settings, offline=offline, fallback=fallback)
    if max_age is not None and age(result.snapshot) > max_age:
        raise StaleDataError(
            f"relay data from {result.snapshot.relays_published:%Y-%m-%d %H:%M} UTC ({result.origin}) is "
            f"older than the allowed {format_age(max_age)}"
        )
    return result


def _obtain_live_or_fallback(settings: FetchSettings, *, offline: bool, fallback: bool) -> Obtained:
    failure = "offline mode"
    if not offline:
        try:
            fetched = fetch(settings)
        except (FetchError, DocumentError) as exc:
            if not fallback:
                raise
            failure = str(exc)
        else:
            return Obtained(fetched.snapshot, "not-modified" if fetched.not_modified else "live")
    cached = cached_snapshot(settings.cache_dir) if settings.cache_dir is not None else None
    snapshot, origin = (cached, "cache") if cached is not None else (bundled_snapshot(), "bundled")
    warning = (
        f"live relay data unavailable ({failure}); using the {origin} snapshot of "
        f"{snapshot.relays_published:%Y-%m-%d %H:%M} UTC, {format_age(age(snapshot))} old"
    )
    return Obtained(snapshot, origin, warning)
