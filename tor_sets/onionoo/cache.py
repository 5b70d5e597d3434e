"""The download cache: the last good document (decoded), its ``Last-Modified`` and URL.

Exports :func:`default_cache_dir` and :func:`cached_snapshot`; the fetch reads and stores it (``If-Modified-Since``).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from email.utils import formatdate
from pathlib import Path
from typing import Any

from tor_sets.errors import DocumentError
from tor_sets.files import atomic_write, read_regular
from tor_sets.onionoo.document import check_not_future, parse_document
from tor_sets.relays import Snapshot

__all__ = [
    "cached_snapshot",
    "default_cache_dir",
]

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/tor-sets`` (``~/.cache/tor-sets`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tor-sets"


def _cache_paths(cache_dir: Path) -> tuple[Path, Path]:
    return cache_dir / "details.json.gz", cache_dir / "details.meta.json"


def _read_cache_meta(cache_dir: Path) -> dict[str, Any]:
    _, meta_path = _cache_paths(cache_dir)
    try:
        meta = json.loads(read_regular(meta_path))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _cached_last_modified(cache_dir: Path | None, url: str) -> str | None:
    """The ``Last-Modified`` of the cached download of ``url`` (redacted), when there is one to send back."""
    if cache_dir is None:
        return None
    meta = _read_cache_meta(cache_dir)
    since = meta.get("last_modified")
    if meta.get("url") == url and isinstance(since, str) and _cache_paths(cache_dir)[0].exists():
        return since
    return None


def _store_cache(cache_dir: Path, document: bytes, url: str, last_modified: str | None) -> None:
    """Keep ``document`` (the JSON text, whatever encodings it came in) and where it came from (``url`` redacted)."""
    data_path, meta_path = _cache_paths(cache_dir)
    try:
        atomic_write(data_path, gzip.compress(document, compresslevel=6, mtime=0))
        meta = {"url": url, "last_modified": last_modified, "fetched_at": formatdate(usegmt=True)}
        atomic_write(meta_path, json.dumps(meta, sort_keys=True).encode())
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        log.warning("could not update the download cache in %s: %s%s", cache_dir, where, exc.strerror or exc)


def cached_snapshot(cache_dir: Path) -> Snapshot | None:
    """The last good download kept in ``cache_dir``, or None when there is none (or it is unreadable)."""
    data_path, _ = _cache_paths(cache_dir)
    try:
        snapshot = parse_document(read_regular(data_path), source=f"cache:{data_path}")
        check_not_future(snapshot)
    except FileNotFoundError:
        return None
    except (OSError, DocumentError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        log.warning("ignoring unreadable cached download %s: %s", data_path, reason)
        return None
    return snapshot
