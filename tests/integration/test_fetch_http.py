"""The Onionoo client against a real HTTP server on loopback, serving the real shared snapshots."""

from __future__ import annotations

import gzip
import time
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.onionoo_server import free_port
from tor_sets.errors import DocumentError, FetchError, FetchTimeout, StaleDataError
from tor_sets.onionoo import FIELDS, FetchSettings, fetch, obtain

pytestmark = pytest.mark.integration


def settings(server, tmp_path, **kw):
    base = {
        "url": server.url,
        "cache_dir": tmp_path / "cache",
        "retries": 1,
        "backoff_factor": 0.0,
        "read_timeout": 5.0,
        "progress": False,
    }
    base.update(kw)
    return FetchSettings(**base)


def test_200_plain_sends_the_selection_and_parses(onionoo_server, bundled_bytes, tmp_path):
    onionoo_server.reset(body=bundled_bytes)
    result = fetch(settings(onionoo_server, tmp_path))
    assert len(result.snapshot.relays) == 9491 and not result.not_modified
    request = onionoo_server.requests[0]
    query = parse_qs(urlsplit(request["path"]).query)
    assert query["type"] == ["relay"] and query["running"] == ["true"]
    assert query["fields"][0].split(",") == list(FIELDS)
    assert "gzip" in request["Accept-Encoding"] and "If-Modified-Since" not in request


def test_gzip_body_and_real_verbatim_answer(onionoo_server, data_dir, tmp_path):
    body = gzip.decompress(
        (data_dir / "onionoo" / "details-running-fp-oraddr-country-2026-08-22T11.json.gz").read_bytes()
    )
    onionoo_server.reset(body=body, gzip=True)
    result = fetch(settings(onionoo_server, tmp_path))
    assert len(result.snapshot.relays) == 10157


def test_304_with_the_cache(onionoo_server, bundled_bytes, tmp_path):
    onionoo_server.reset(body=bundled_bytes, gzip=True, last_modified=time.time() - 60)
    first = fetch(settings(onionoo_server, tmp_path))
    assert not first.not_modified and (tmp_path / "cache" / "details.json.gz").exists()
    second = fetch(settings(onionoo_server, tmp_path))
    assert second.not_modified
    assert "If-Modified-Since" in onionoo_server.requests[1]
    assert second.snapshot.relays == first.snapshot.relays
    # a different URL is not answered from this cache
    other = settings(onionoo_server, tmp_path, url=onionoo_server.url + "?type=relay")
    assert not fetch(other).not_modified


def test_bad_body_is_refused_and_the_cache_kept(onionoo_server, bundled_bytes, tmp_path):
    onionoo_server.reset(body=bundled_bytes, last_modified=time.time() - 60)
    fetch(settings(onionoo_server, tmp_path))
    cached = (tmp_path / "cache" / "details.json.gz").read_bytes()
    onionoo_server.reset(body=b"<html>maintenance</html>", content_type="text/html")
    with pytest.raises(DocumentError, match="not a JSON document"):
        fetch(settings(onionoo_server, tmp_path))
    assert (tmp_path / "cache" / "details.json.gz").read_bytes() == cached


def test_size_cap_is_enforced_while_streaming(onionoo_server, bundled_bytes, tmp_path):
    onionoo_server.reset(body=bundled_bytes, gzip=True)
    with pytest.raises(FetchError, match="exceeds the size cap of 100000 bytes"):
        fetch(settings(onionoo_server, tmp_path, max_bytes=100_000))


def test_retries_on_503_then_succeeds(onionoo_server, bundled_bytes, tmp_path):
    onionoo_server.reset(body=bundled_bytes, statuses=[503, 503])
    result = fetch(settings(onionoo_server, tmp_path, retries=2))
    assert len(result.snapshot.relays) == 9491 and len(onionoo_server.requests) == 3


@pytest.mark.parametrize("status", [400, 404, 500])
def test_http_errors(onionoo_server, tmp_path, status):
    onionoo_server.reset(status=status, body=b"nope")
    with pytest.raises(FetchError, match=f"HTTP {status}"):
        fetch(settings(onionoo_server, tmp_path, retries=0))


def test_stall_times_out(onionoo_server, bundled_bytes, tmp_path):
    onionoo_server.reset(body=bundled_bytes, stall=3)
    with pytest.raises(FetchTimeout, match="timed out"):
        fetch(settings(onionoo_server, tmp_path, read_timeout=0.5, retries=0))


def test_connection_refused(tmp_path):
    with pytest.raises(FetchError, match="cannot connect"):
        fetch(FetchSettings(url=f"http://127.0.0.1:{free_port()}/details", retries=0, cache_dir=None))


def test_fallback_order_cache_then_bundled(onionoo_server, data_dir, tmp_path):
    body = gzip.decompress((data_dir / "onionoo" / "details-running-guardprob-2026-08-22T15.json.gz").read_bytes())
    onionoo_server.reset(body=body)
    assert obtain(settings=settings(onionoo_server, tmp_path)).origin == "live"
    onionoo_server.reset(status=503)
    cached = obtain(settings=settings(onionoo_server, tmp_path, retries=0))
    assert cached.origin == "cache" and len(cached.snapshot.relays) == 9470
    assert "HTTP 503" in (cached.warning or "") and "2026-08-22 15:00" in (cached.warning or "")
    bundled = obtain(settings=settings(onionoo_server, tmp_path, retries=0, cache_dir=tmp_path / "empty"))
    assert bundled.origin == "bundled" and "2026-02-28 01:00 UTC" in (bundled.warning or "")
    with pytest.raises(FetchError):
        obtain(settings=settings(onionoo_server, tmp_path, retries=0), fallback=False)
    with pytest.raises(StaleDataError, match="older than the allowed"):
        obtain(settings=settings(onionoo_server, tmp_path, retries=0), max_age=timedelta(hours=6))
