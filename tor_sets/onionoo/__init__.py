"""Onionoo ``details`` documents: fetch them, read them, parse them into a :class:`~tor_sets.relays.Snapshot`.

Exports :func:`parse_document` (bytes or text → Snapshot), :func:`read_snapshot` (a JSON or ``.json.gz`` file),
:func:`bundled_snapshot` (the real snapshot shipped in the package), :class:`FetchSettings`, :func:`fetch`
(HTTP with timeouts, retries, a total deadline, a size cap enforced while streaming and ``If-Modified-Since`` from
a cache folder), :func:`obtain` (live data, else the cached download, else the bundled snapshot) and
:func:`check_not_future`.

Bounds on what a hostile server or file can make tor-sets do: :data:`MAX_BYTES` caps the document after every
decompression layer (HTTP ``Content-Encoding``, then a ``.json.gz`` body or file, inflated in steps that stop at
the cap; gzip inside that is refused), :data:`MAX_RELAYS` caps the relays a document may list (counted while the
JSON is parsed), :data:`MAX_CLOCK_SKEW` bounds how far in the future its date may lie, and
:data:`DEFAULT_DEADLINE` bounds a whole fetch, retries included, however slowly the server trickles.

Protocol: https://metrics.torproject.org/onionoo.html (version 8). Everything inside a relay object is written
by whoever runs the relay, so this package (:mod:`.document`) is the only place raw JSON is handled: only addresses that
:mod:`ipaddress` parsed, that are globally routable, leave it.

Modules: :mod:`.document` (parse, bounds), :mod:`.cache` (the download cache), :mod:`.http` (the fetch),
:mod:`.obtain` (live, cached or bundled).
"""

from __future__ import annotations

from tor_sets.onionoo.cache import cached_snapshot, default_cache_dir
from tor_sets.onionoo.document import (
    BUNDLED_SNAPSHOT,
    MAX_BYTES,
    MAX_CLOCK_SKEW,
    MAX_RELAYS,
    address_problem,
    bundled_snapshot,
    check_not_future,
    parse_address,
    parse_document,
    read_snapshot,
)
from tor_sets.onionoo.http import DEFAULT_DEADLINE, DEFAULT_URL, FIELDS, FetchResult, FetchSettings, fetch
from tor_sets.onionoo.obtain import Obtained, obtain

__all__ = [
    "BUNDLED_SNAPSHOT",
    "DEFAULT_DEADLINE",
    "DEFAULT_URL",
    "FIELDS",
    "MAX_BYTES",
    "MAX_CLOCK_SKEW",
    "MAX_RELAYS",
    "FetchResult",
    "FetchSettings",
    "Obtained",
    "address_problem",
    "bundled_snapshot",
    "cached_snapshot",
    "check_not_future",
    "default_cache_dir",
    "fetch",
    "obtain",
    "parse_address",
    "parse_document",
    "read_snapshot",
]
