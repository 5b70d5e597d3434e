"""The Onionoo client against a real HTTP server on loopback, serving the real shared snapshots."""

from __future__ import annotations

import gzip
import json
import logging
import re
import sys
import threading
import time
import zlib
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.onionoo_server import free_port
from tor_sets.cli import main
from tor_sets.deploy.refresh.state import state_path
from tor_sets.engines.process import run_process
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
        "progress": None,
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


def test_progress_reports_the_bytes_on_the_wire_then_the_end(onionoo_server, bundled_bytes, tmp_path):
    onionoo_server.reset(body=bundled_bytes, gzip=True)
    calls = []
    fetch(settings(onionoo_server, tmp_path, progress=lambda wire, total, done: calls.append((wire, total, done))))
    wires = [wire for wire, _, _ in calls]
    assert len(calls) >= 2 and wires == sorted(wires)
    assert [done for _, _, done in calls] == [False] * (len(calls) - 1) + [True]
    final_wire, total, _ = calls[-1]
    assert total == final_wire and 0 < final_wire < len(bundled_bytes)  # gzip on the wire: fewer bytes than the body


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


# ---------------------------------------------------------------------------------------------------- hostile servers
# Issue 13: gzip bombs past every decompression layer, a static .json.gz mirror, a trickling server, a future date,
# credentials in the URL. Each runs against the loopback server (or a real file), bounded in time.

BOUND_S = 60.0  # how long a fetch may block before the test calls it hung; never reached when things work
NEWER = "2026-03-01 00:00:00"


def _bomb(inflated_mib: int) -> bytes:
    """A gzip file holding a details document padded with ``inflated_mib`` MiB of spaces (~1 kB per MiB)."""
    out = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [out.compress(b'{"version": "8.0", "relays_published": "2026-03-01 00:00:00", "relays": [')]
    spaces = b" " * (1 << 20)
    parts += [out.compress(spaces) for _ in range(inflated_mib)]
    parts += [out.compress(b"]}"), out.flush()]
    return b"".join(parts)


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """306 kB of gzip that inflates to 300 MiB (the issue's figures)."""
    data = _bomb(300)
    assert len(data) < 320_000
    return data


def _bounded(call):
    """Run ``call`` in a thread; return what it raised (or returned), failing if it blocks longer than BOUND_S."""
    result: list[object] = []

    def run() -> None:
        try:
            result.append(call())
        except BaseException as exc:
            result.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(BOUND_S)
    assert not worker.is_alive(), f"still running after {BOUND_S:g} s"
    return result[0]


@pytest.mark.parametrize(
    "served",
    [
        pytest.param({"content_type": "application/gzip"}, id="gzip-body-without-content-encoding"),
        pytest.param({"gzip": True}, id="double-gzip-content-encoding-over-a-gzip-body"),
    ],
)
def test_gzip_inside_the_body_is_capped_while_inflating(onionoo_server, bomb, tmp_path, served):
    onionoo_server.reset(body=bomb, **served)
    if served.get("gzip"):
        assert len(gzip.compress(bomb)) < 1000  # the wire carries under 1 kB
    exc = _bounded(lambda: fetch(settings(onionoo_server, tmp_path)))
    assert isinstance(exc, DocumentError), exc
    assert str(exc) == "the document inflates past the size cap of 67108864 bytes (max_bytes)"
    assert not (tmp_path / "cache").exists()


def test_gzip_inside_gzip_inside_the_body_is_refused(onionoo_server, bundled_bytes, tmp_path):
    onionoo_server.reset(body=gzip.compress(gzip.compress(bundled_bytes)), content_type="application/gzip")
    with pytest.raises(DocumentError, match=r"^gzip inside gzip: not a details document$"):
        fetch(settings(onionoo_server, tmp_path))


CHILD = "import sys; from tor_sets.cli import main; sys.exit(main(sys.argv[1:]))"


def _run_child(argv: list[str], code: str = CHILD) -> tuple[int, str, int]:
    """Run ``tor-sets ARGV`` (through ``code``) in a child; return its exit code, stderr and its own peak RSS in kB.

    Started through the engines' small reaper (:func:`tor_sets.engines.process.run_process`): a child forked from this
    large test process would be charged this process's memory as its peak.
    """
    done = run_process([sys.executable, "-c", code, *argv], engine="tor-sets", timeout=BOUND_S)
    return done.returncode, done.stderr, done.max_rss_kb


@pytest.mark.parametrize("where", ["http-gzip-body", "http-double-gzip", "input-json-gz"])
def test_a_bomb_is_refused_in_one_line_without_inflating_it(onionoo_server, bomb, tmp_path, where):
    """The whole command in a child, whose peak RSS wait4 reports (under 256 MiB now; 636 MB before)."""
    argv = ["build", "-o", str(tmp_path / "rules.yaml"), "--cache-dir", str(tmp_path / "cache"), "--no-fallback"]
    if where == "input-json-gz":
        (tmp_path / "details.json.gz").write_bytes(bomb)
        argv += ["--input", str(tmp_path / "details.json.gz")]
    else:
        onionoo_server.reset(body=bomb, **({"gzip": True} if where == "http-double-gzip" else {}))
        argv += ["--url", onionoo_server.url]
    code, err, peak_kb = _run_child(argv)
    assert code == 4, err
    (line,) = err.strip().splitlines()
    assert re.fullmatch(r"tor-sets: error: (.*: )?the document inflates past the size cap of 67108864 bytes.*", line)
    assert peak_kb < 256 * 1024, f"peak RSS {peak_kb} kB"
    assert not (tmp_path / "rules.yaml").exists()


LIMITED = r"""
import resource, sys
from tor_sets.cli import main
import tor_sets.cli.build, tor_sets.onionoo, requests, yaml
pages = int(open("/proc/self/statm").read().split()[0])
limit = pages * resource.getpagesize() + 300 * 1024 * 1024
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.exit(main(sys.argv[1:]))
"""


def test_memory_exhaustion_while_parsing_is_a_clean_error(tmp_path):
    """21 MB of ``[],`` become 7 million lists (~450 MB): in a child limited to 300 MB more, a clean exit 4."""
    doc = tmp_path / "details.json"
    with doc.open("wb") as out:
        out.write(b'{"version": "8.0", "relays_published": "2026-03-01 00:00:00", "relays": [], "x": [')
        out.write(b"[]," * 7_000_000)
        out.write(b"[]]}")
    code, err, _ = _run_child(["build", "--input", str(doc), "-o", str(tmp_path / "rules.yaml")], code=LIMITED)
    assert code == 4, err
    (line,) = err.strip().splitlines()
    assert line.startswith("tor-sets: error: ") and "out of memory" in line, line


def test_a_static_json_gz_mirror_is_cached_decoded_so_a_304_reads_it(onionoo_server, bundled_bytes, tmp_path, capsys):
    """A mirror serving details.json.gz as-is (no Content-Encoding): 200, then 304 answered from the cache."""
    doc = json.loads(bundled_bytes)
    doc["relays_published"] = NEWER
    onionoo_server.reset(
        body=gzip.compress(json.dumps(doc).encode()), content_type="application/gzip", last_modified=time.time() - 60
    )
    cache, out = str(tmp_path / "cache"), str(tmp_path / "r.yaml")
    argv = ["build", "--url", onionoo_server.url, "--cache-dir", cache, "-o", out]
    assert main(argv) == 0
    assert "relays published 2026-03-01 00:00 UTC (live)" in capsys.readouterr().err
    cached = gzip.decompress((tmp_path / "cache" / "details.json.gz").read_bytes())
    assert json.loads(cached)["relays_published"] == NEWER  # one gzip layer, then the document
    first = (tmp_path / "r.yaml").read_bytes()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "If-Modified-Since" in onionoo_server.requests[1]
    assert "relays published 2026-03-01 00:00 UTC (not-modified)" in err and "WARNING" not in err, err
    assert (tmp_path / "r.yaml").read_bytes() == first


def test_a_cache_left_unreadable_is_replaced_instead_of_failing_every_304(
    onionoo_server, bundled_bytes, tmp_path, caplog
):
    """What earlier versions cached from a .json.gz mirror (gzip inside gzip): the next 304 fetches it all again."""
    onionoo_server.reset(
        body=gzip.compress(bundled_bytes), content_type="application/gzip", last_modified=time.time() - 60
    )
    fetch(settings(onionoo_server, tmp_path))
    data = tmp_path / "cache" / "details.json.gz"
    data.write_bytes(gzip.compress(gzip.compress(bundled_bytes)))  # as the old cache held it
    again = fetch(settings(onionoo_server, tmp_path))
    assert not again.not_modified and len(again.snapshot.relays) == 9491
    assert [r.get("If-Modified-Since") is not None for r in onionoo_server.requests] == [False, True, False]
    assert "the cached copy is unreadable; fetching the whole document" in caplog.text
    assert fetch(settings(onionoo_server, tmp_path)).not_modified  # repaired


@pytest.mark.parametrize("head", [False, True], ids=["trickled-body", "trickled-headers"])
def test_a_trickling_server_is_cut_at_the_deadline(onionoo_server, bundled_bytes, tmp_path, head):
    """One byte every 2 s never trips the 5 s read timeout; the 3 s deadline ends the fetch."""
    onionoo_server.reset(body=bundled_bytes, trickle=2.0, trickle_head=head)
    exc = _bounded(lambda: fetch(settings(onionoo_server, tmp_path, read_timeout=5.0, deadline=3.0)))
    assert isinstance(exc, FetchTimeout), exc
    assert re.fullmatch(
        r"gave up fetching http://127\.0\.0\.1:\d+/details\?\S+: no complete answer within the deadline of 3 s "
        r"\(deadline\)",
        str(exc),
    ), exc


def test_data_published_in_the_future_is_refused_and_not_cached(onionoo_server, bundled_bytes, tmp_path):
    doc = json.loads(bundled_bytes)
    doc["relays_published"] = "2099-01-01 00:00:00"
    onionoo_server.reset(body=json.dumps(doc).encode())
    with pytest.raises(DocumentError, match=r"^relays_published 2099-01-01 00:00 UTC lies .* in the future"):
        fetch(settings(onionoo_server, tmp_path))
    assert not (tmp_path / "cache" / "details.json.gz").exists()


def test_credentials_in_the_url_are_never_written_or_logged(onionoo_server, bundled_bytes, tmp_path, capsys, caplog):
    """build and refresh (-v: urllib3's debug log too) through 200, 304, 404, a fallback and a time-out."""
    caplog.set_level(logging.DEBUG)
    doc = json.loads(bundled_bytes)
    doc["relays_published"] = NEWER
    onionoo_server.reset(body=json.dumps(doc).encode(), last_modified=time.time() - 60)
    url = onionoo_server.url.replace("http://", "http://reader:s3cr3t-pw@")
    cache = str(tmp_path / "cache")
    rules = tmp_path / "rules.d" / "tor_rules.yaml"
    runs = [
        (["-v", "build", "--url", url, "--cache-dir", cache, "-o", str(tmp_path / "built.yaml")], 0),
        (["-v", "refresh", "-o", str(rules), "--url", url, "--cache-dir", cache, "--validate", "yaml"], 0),
        (["refresh", "-o", str(rules), "--url", url, "--cache-dir", cache, "--validate", "yaml"], 0),  # a 304
    ]
    for argv, expected in runs:
        assert main(argv) == expected
    assert onionoo_server.requests[0]["Authorization"].startswith("Basic ")  # still sent to the server
    onionoo_server.reset(status=404)  # not retried
    failing = [
        (["build", "--url", url, "--cache-dir", cache, "-o", str(tmp_path / "b2.yaml")], 0),  # the cache, warned
        (["build", "--url", url, "--cache-dir", cache, "-o", "-", "--no-fallback"], 4),
        (["refresh", "-o", str(rules), "--url", url, "--cache-dir", cache], 4),
    ]
    for argv, expected in failing:
        assert main(argv) == expected
    onionoo_server.reset(body=bundled_bytes, stall=3)
    stalled = ["refresh", "-o", str(rules), "--url", url, "--cache-dir", cache, "--timeout", "0.5", "--retries", "0"]
    assert main(stalled) == 4
    err = capsys.readouterr().err
    assert "HTTP 404 Not Found from http://***@127.0.0.1" in err and "timed out fetching http://***@127.0.0.1" in err
    assert "s3cr3t" not in err and "reader" not in err
    assert "GET /details" in caplog.text  # urllib3's debug lines were captured
    assert "s3cr3t" not in caplog.text and "reader" not in caplog.text
    with pytest.raises(FetchError) as caught:
        fetch(settings(onionoo_server, tmp_path, url=url, retries=0, read_timeout=0.5))
    assert "s3cr3t" not in str(caught.value) and "s3cr3t" not in str(caught.value.url)
    written = [p for p in tmp_path.rglob("*") if p.is_file()] + [state_path(rules)]  # the state lives outside
    assert {p.name for p in written} >= {"built.yaml", "tor_rules.yaml", state_path(rules).name, "details.meta.json"}
    for path in written:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        assert b"s3cr3t" not in data and b"reader" not in data, path
    assert "source: http://***@127.0.0.1:" in (tmp_path / "built.yaml").read_text()
