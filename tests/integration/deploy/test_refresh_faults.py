"""`tor-sets refresh` against every upstream fault and hostile document we could think of, on a real loopback server.

Each case starts from the same last good deployment (the bundled snapshot, served live, validated and written), then
serves the fault and runs one refresh through ``main()``. For a failure: the documented exit code, exactly one line
``tor-sets: error: ...`` naming the cause, the rules file byte for byte as it was, the failure recorded in the state,
and no temp file left. For a hostile but parseable document: the rules are written, and none of the hostile content
reached them.

Set ``TOR_SETS_FAULT_TABLE=FILE`` to write the table of real messages that docs/operations.md shows.
"""

from __future__ import annotations

import functools
import gzip
import ipaddress
import json
import os
import re
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.onionoo_server import free_port
from tor_sets.cli import main
from tor_sets.cli.flags import OPTION_FLAGS, with_flags
from tor_sets.deploy.refresh import read_state
from tor_sets.deploy.refresh.state import state_path
from tor_sets.falco.load import load_rules

pytestmark = pytest.mark.integration

SEED_LAST_MODIFIED = 1772240400.0  # 2026-02-28 01:00 UTC, the bundled snapshot's relays_published
NEWER = "2026-03-01 00:00:00"
TABLE: list[tuple[str, int, str]] = []


# ---------------------------------------------------------------------------------------------------- documents


def _doc(bundled_bytes: bytes) -> dict[str, Any]:
    return json.loads(bundled_bytes)


def _dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def _newer(doc: dict[str, Any], relays: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {**doc, "relays_published": NEWER, "relays": doc["relays"] if relays is None else relays}


def _guard(doc: dict[str, Any]) -> int:
    return next(i for i, r in enumerate(doc["relays"]) if "Guard" in r.get("flags", []))


def hostile_text(doc: dict[str, Any]) -> bytes:
    relays = [dict(r) for r in doc["relays"]]
    for relay in relays[:50]:
        relay["nickname"] = "x\n- rule: pwned\n  condition: evt.type = open\n  output: pwned\n  priority: EMERGENCY"
        relay["contact"] = "'; ]) or proc.name = bash or (fd.sip in (x"
        relay["flags"] = [*relay.get("flags", []), "] or proc.name = bash", "Guard\n- macro: pwned_macro"]
        relay["platform"] = "- list: tor_entry_ipv4_addresses\n  items: [0.0.0.0]"
    return _dump(_newer(doc, relays))


SPECIAL_OR = [
    "0.0.0.0:1",
    "[::]:1",
    "10.0.0.1:9001",
    "172.16.5.4:9001",
    "192.168.1.1:443",
    "127.0.0.1:9001",
    "[::1]:443",
    "224.0.0.1:9001",
    "[ff02::1]:443",
    "169.254.1.1:9001",
    "[fe80::1]:443",
    "[fd00::1]:443",
    "100.64.0.1:9001",
    "255.255.255.255:9001",
    "[::ffff:8.8.8.8]:443",
]
SPECIAL_EXIT = ["0.0.0.0", "127.0.0.1", "10.1.1.1", "224.0.0.5", "::", "::1", "fc00::1"]


def special_addresses(doc: dict[str, Any]) -> bytes:
    relays = [dict(r) for r in doc["relays"]]
    for relay in relays[:200]:
        relay["or_addresses"] = [*SPECIAL_OR, *relay["or_addresses"]]
        relay["exit_addresses"] = list(SPECIAL_EXIT)
    return _dump(_newer(doc, relays))


MANY = [f"8.{i // 250}.{i % 250}.7" for i in range(5000)]


def many_addresses(doc: dict[str, Any]) -> bytes:
    relays = [dict(r) for r in doc["relays"]]
    relays[_guard(doc)]["or_addresses"] = [f"{a}:9001" for a in MANY]
    return _dump(_newer(doc, relays))


def huge_nickname(doc: dict[str, Any]) -> bytes:
    relays = [dict(r) for r in doc["relays"]]
    relays[0]["nickname"] = "A" * 5_000_000
    return _dump(_newer(doc, relays))


def halved(doc: dict[str, Any]) -> bytes:
    return _dump(_newer(doc, doc["relays"][: len(doc["relays"]) * 2 // 5]))


def gzip_bomb() -> bytes:
    return gzip.compress(b'{"version": "8.0", "relays": [' + b" " * (100 * 1024 * 1024) + b"]}", compresslevel=9)


@functools.cache
def body_bomb() -> bytes:
    """306 kB of gzip inflating to 300 MiB, meant to be served as the body itself (a .json.gz)."""
    out = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [out.compress(b'{"version": "8.0", "relays_published": "2026-03-01 00:00:00", "relays": [')]
    parts += [out.compress(b" " * (1 << 20)) for _ in range(300)]
    return b"".join([*parts, out.compress(b"]}"), out.flush()])


# ---------------------------------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One fault: what the server does, extra flags, and what the user must see."""

    name: str
    server: Callable[[dict[str, Any], bytes], dict[str, Any]]
    code: int
    message: str  # a regex the error line (or, for code 0, stderr) must match
    args: tuple[str, ...] = ()
    url: str | None = None
    check: Callable[[str, str], None] | None = field(default=None)  # (rules text, stderr) for code 0


def _no_hostile_text(text: str, err: str) -> None:
    assert "pwned" not in text and "proc.name = bash" not in text and "0.0.0.0" not in text
    rules = load_rules(text).rules
    assert sorted(rules) == ["Inbound Connection from Tor Exit Relay", "Outbound Connection to Tor Entry Relay"]


def _items(text: str) -> list[str]:
    return [item for entry in yaml.safe_load(text) if "list" in entry for item in entry["items"]]


def _only_global(text: str, err: str) -> None:
    for item in _items(text):
        network = ipaddress.ip_network(item.strip('"'), strict=False)
        assert network.network_address.is_global and not network.network_address.is_multicast, item
    assert "dropped" in err and "unspecified" in err and "private" in err and "loopback" in err


def _at_most_64(text: str, err: str) -> None:
    present = set(_items(text))
    assert 0 < len(present & set(MANY)) <= 64
    assert "4936 too-many-addresses" in err


def _no_nickname(text: str, err: str) -> None:
    assert "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" not in text


CASES = [
    Case("HTTP 500", lambda d, b: {"status": 500, "body": b"Internal error"}, 4, r"HTTP 500"),
    Case("HTTP 503 (maintenance)", lambda d, b: {"status": 503, "body": b"maintenance"}, 4, r"HTTP 503"),
    Case("HTTP 404", lambda d, b: {"status": 404, "body": b"not found"}, 4, r"HTTP 404 Not Found"),
    Case("HTTP 400 (bad query)", lambda d, b: {"status": 400, "body": b"bad request"}, 4, r"HTTP 400 Bad Request"),
    Case(
        "200 with an HTML error page",
        lambda d, b: {"body": b"<html><body>Service unavailable</body></html>", "content_type": "text/html"},
        4,
        r"not a JSON document .*starts with '<html><body>",
    ),
    Case(
        "gzip transfer cut short",
        lambda d, b: {"body": b, "gzip": True, "truncate_to": 20000},
        4,
        r"failed while reading the body: Connection broken: IncompleteRead\(20000 bytes read",
    ),
    Case(
        "truncated .json.gz body",
        lambda d, b: {"body": gzip.compress(b)[:20000], "content_type": "application/gzip"},
        4,
        r"corrupt gzip data",
    ),
    Case("invalid JSON", lambda d, b: {"body": b'{"version": "8.0", "relays": [}'}, 4, r"not a JSON document"),
    Case(
        "wrong major version",
        lambda d, b: {"body": _dump({**d, "version": "9.0"})},
        4,
        r"unsupported Onionoo protocol version '9.0'",
    ),
    Case(
        "empty relays",
        lambda d, b: {"body": _dump(_newer(d, []))},
        5,
        r"only 0 running relays in the data \(at least 5000 required",
    ),
    Case(
        "relay count down by 60 % (default guards)",
        lambda d, b: {"body": halved(d)},
        5,
        r"only 3796 running relays in the data \(at least 5000 required",
    ),
    Case(
        "relay count down by 60 % (--min-relays 1000)",
        lambda d, b: {"body": halved(d)},
        5,
        r"running relays 9491 -> 3796 \(-60 %\).* more than the allowed drop of 50 %",
        args=("--min-relays", "1000"),
    ),
    Case(
        "body over the size cap (--max-bytes 1000000)",
        lambda d, b: {"body": b, "gzip": True},
        4,
        r"exceeds the size cap of 1000000 bytes",
        args=("--max-bytes", "1000000"),
    ),
    Case(
        "gzip bomb: 100 MiB in 100 kB (default 64 MiB cap)",
        lambda d, b: {"body": gzip_bomb(), "headers": {"Content-Encoding": "gzip"}},
        4,
        r"exceeds the size cap of 67108864 bytes",
    ),
    Case(
        "gzip body served without Content-Encoding: 300 MiB in 306 kB",
        lambda d, b: {"body": body_bomb(), "content_type": "application/gzip"},
        4,
        r"^tor-sets: error: the document inflates past the size cap of 67108864 bytes \(--max-bytes\)$",
    ),
    Case(
        "double gzip: Content-Encoding over a gzip body, 715 bytes on the wire",
        lambda d, b: {"body": body_bomb(), "gzip": True},
        4,
        r"^tor-sets: error: the document inflates past the size cap of 67108864 bytes \(--max-bytes\)$",
    ),
    Case(
        "relays_published in 2099",
        lambda d, b: {"body": _dump({**d, "relays_published": "2099-01-01 00:00:00"})},
        4,
        r"relays_published 2099-01-01 00:00 UTC lies \d+ days in the future \(more than the allowed clock skew",
    ),
    Case(
        "more relays than --max-relays 9000",
        lambda d, b: {"body": b},
        4,
        r"^tor-sets: error: the document lists more than 9000 relays \(--max-relays\)$",
        args=("--max-relays", "9000"),
    ),
    Case(
        "server trickles one byte every 2 s (--deadline 3)",
        lambda d, b: {"body": b, "trickle": 2.0},
        4,
        r"gave up fetching .*: no complete answer within the deadline of 3 s \(--deadline\)$",
        args=("--deadline", "3"),
    ),
    Case(
        "server stalls before answering (--timeout 0.5)",
        lambda d, b: {"body": b, "stall": 3},
        4,
        r"timed out fetching",
        args=("--timeout", "0.5"),
    ),
    Case(
        "server stalls in the middle of the body (--timeout 0.5)",
        lambda d, b: {"body": b, "stall_body": 3},
        4,
        r"timed out fetching .* \(the server stalled in the middle of the body\)",
        args=("--timeout", "0.5"),
    ),
    Case("connection refused", lambda d, b: {}, 4, r"cannot connect to http://127.0.0.1:\d+/details", url="refused"),
    Case(
        "deeply nested JSON",
        lambda d, b: {
            "body": b'{"version": "8.0", "relays_published": "2026-03-01 00:00:00", "relays": '
            + b"[" * 100_000
            + b"]" * 100_000
            + b"}"
        },
        4,
        r"JSON nested too deeply",
    ),
    Case(
        "YAML and Falco condition text in nickname, contact, flags, platform",
        lambda d, b: {"body": hostile_text(d)},
        0,
        r"wrote .*tor_rules.yaml",
        check=_no_hostile_text,
    ),
    Case(
        "0.0.0.0:1, [::]:1, private, loopback, multicast, link-local addresses",
        lambda d, b: {"body": special_addresses(d)},
        0,
        r"wrote .*tor_rules.yaml",
        check=_only_global,
    ),
    Case(
        "5,000 addresses on one relay",
        lambda d, b: {"body": many_addresses(d)},
        0,
        r"wrote .*tor_rules.yaml",
        check=_at_most_64,
    ),
    Case(
        "a 5 MB nickname",
        lambda d, b: {"body": huge_nickname(d)},
        0,
        r"wrote .*tor_rules.yaml",
        check=_no_nickname,
    ),
]


# ---------------------------------------------------------------------------------------------------- fixtures


def refresh_argv(out: Path, url: str, cache: Path, *extra: str) -> list[str]:
    return [
        "refresh", "-o", str(out), "--url", url, "--cache-dir", str(cache),
        "--retries", "1", "--backoff", "0", "--timeout", "5", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def seed(_onionoo_server, bundled_bytes, tmp_path_factory) -> Path:
    """A folder holding the last good deployment: rules and download cache (bundled data, served live); its state
    and lock live outside it, in the state folder."""
    folder = tmp_path_factory.mktemp("seed")
    _onionoo_server.reset(body=bundled_bytes, gzip=True, last_modified=SEED_LAST_MODIFIED)
    assert main(refresh_argv(folder / "tor_rules.yaml", _onionoo_server.url, folder / "cache")) == 0
    return folder


@pytest.fixture
def deployed(seed, tmp_path) -> Path:
    """A private copy of the seed; returns its rules file."""
    folder = tmp_path / "rules.d"
    shutil.copytree(seed, folder)
    state_path(folder / "tor_rules.yaml").write_bytes(state_path(seed / "tor_rules.yaml").read_bytes())
    return folder / "tor_rules.yaml"


#: the block of docs/operations.md this module's messages fill (``make docs``) and are compared with (the last test)
DOC = Path(__file__).resolve().parents[3] / "docs" / "operations.md"
_DOC_BLOCK = re.compile(
    r"(<!-- generated by tests/integration/deploy/test_refresh_faults.py -->\n)(.*?)(<!-- end of generated -->)", re.S
)


def fault_table() -> str:
    """The table of what the user sees for each fault, from the messages the tests of this module collected."""
    lines = ["| fault | exit | what the user sees (stderr) |", "| --- | --- | --- |"]
    for name, code, message in TABLE:
        message = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", message)
        message = re.sub(r"(\?type=relay&running=true&fields=)[^\s:]+", r"\1...", message)
        message = re.sub(re.escape(tempfile.gettempdir()) + r"/\S*/rules\.d/", "/etc/falco/rules.d/", message).replace(
            "|", "\\|"
        )
        lines.append(f"| {name} | {code} | `{message}` |")
    return "\n".join(lines) + "\n"


def _comparable(table: str) -> str:
    """What may differ between two honest runs, hidden: ages in days (the data's age grows daily)."""
    return re.sub(r"\b\d+ days old", "N days old", table)


@pytest.fixture(scope="module", autouse=True)
def _fault_table() -> Iterator[None]:
    yield
    target = os.environ.get("TOR_SETS_FAULT_TABLE")
    if target and TABLE:  # make docs: TOR_SETS_FAULT_TABLE=docs/operations.md writes the block
        path = Path(target)
        if path.suffix == ".md":
            text = path.read_text(encoding="utf-8")
            path.write_text(_DOC_BLOCK.sub(lambda m: m[1] + fault_table() + m[3], text, count=1), encoding="utf-8")
        else:
            path.write_text(fault_table())


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in ("tor_rules.yaml", "cache"))


# ---------------------------------------------------------------------------------------------------- tests


def test_the_seed_is_a_validated_live_deployment(seed):
    state = read_state(state_path(seed / "tor_rules.yaml"))
    assert state is not None and state.deployed is not None and state.last_failure is None
    assert state.deployed.origin == "live" and state.deployed.relays == 9491
    assert state.deployed.validated.startswith("engine falco-local 0.44.1")  # real Falco ran `falco -V` on it


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fault(case: Case, onionoo_server, deployed: Path, bundled_bytes, capsys):
    folder = deployed.parent
    before = deployed.read_bytes()
    state_before = read_state(state_path(deployed))
    onionoo_server.reset(**case.server(_doc(bundled_bytes), bundled_bytes))
    url = f"http://127.0.0.1:{free_port()}/details" if case.url == "refused" else onionoo_server.url
    capsys.readouterr()
    code = main(refresh_argv(deployed, url, folder / "cache", *case.args))
    err = capsys.readouterr().err
    assert code == case.code, err
    assert _leftovers(folder) == []
    state = read_state(state_path(deployed))
    assert state is not None and state.deployed is not None
    if case.code == 0:
        assert re.search(case.message, err), err
        text = deployed.read_text()
        assert deployed.read_bytes() != before
        assert case.check is not None
        case.check(text, err)
        assert state.deployed.relays_published.strftime("%Y-%m-%d %H:%M:%S") == NEWER and state.last_failure is None
        summary = next((line for line in err.splitlines() if "dropped" in line), err.splitlines()[-1])
        TABLE.append((case.name, code, summary))
        return
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    (line,) = lines
    assert line.startswith("tor-sets: error: ") and re.search(case.message, line), line
    assert deployed.read_bytes() == before
    assert state_before is not None and state.deployed == state_before.deployed
    assert state.last_failure is not None and state.last_failure.exit_code == case.code
    assert with_flags(state.last_failure.message) == line.removeprefix("tor-sets: error: ")
    assert not any(flag in state.last_failure.message for flag in OPTION_FLAGS.values())  # it names option fields
    TABLE.append((case.name, code, line))


def test_304_is_one_request_and_changes_nothing(onionoo_server, deployed: Path, bundled_bytes, capsys):
    before = deployed.read_bytes()
    state_file = state_path(deployed)
    checked_before = read_state(state_file).deployed.checked_at  # type: ignore[union-attr]
    onionoo_server.reset(body=bundled_bytes, gzip=True, last_modified=SEED_LAST_MODIFIED)
    capsys.readouterr()
    assert main(refresh_argv(deployed, onionoo_server.url, deployed.parent / "cache")) == 0
    err = capsys.readouterr().err
    assert len(onionoo_server.requests) == 1 and "If-Modified-Since" in onionoo_server.requests[0]
    assert "unchanged" in err and "(not-modified) is already deployed" in err
    assert deployed.read_bytes() == before and _leftovers(deployed.parent) == []
    state = read_state(state_file)
    assert state is not None and state.deployed is not None and state.deployed.checked_at >= checked_before
    TABLE.append(("304 Not Modified", 0, err.strip().splitlines()[-1]))


def test_fallback_is_never_silent_and_never_rolls_back(onionoo_server, deployed: Path, capsys, bundled_bytes):
    """A failing upstream with --allow-fallback uses the cache; data older than the deployed data is never written."""
    folder = deployed.parent
    onionoo_server.reset(body=_dump(_newer(_doc(bundled_bytes))))
    assert main(refresh_argv(deployed, onionoo_server.url, folder / "cache")) == 0
    march = deployed.read_bytes()
    onionoo_server.reset(status=503)
    capsys.readouterr()
    assert main(refresh_argv(deployed, onionoo_server.url, folder / "cache")) == 4
    assert deployed.read_bytes() == march
    # the cache holds the March download: with --allow-fallback it is used, and it is what is deployed
    assert main(refresh_argv(deployed, onionoo_server.url, folder / "cache", "--allow-fallback")) == 0
    err = capsys.readouterr().err
    assert "using the cache snapshot of 2026-03-01 00:00 UTC" in err and "unchanged" in err
    # without a cache the fallback is the bundled February snapshot: older than what is deployed, so it stays out
    empty = folder.parent / "empty-cache"
    assert main(refresh_argv(deployed, onionoo_server.url, empty, "--allow-fallback")) == 0
    err = capsys.readouterr().err
    assert "using the bundled snapshot of 2026-02-28 01:00 UTC" in err
    assert "is older than the deployed data of 2026-03-01 00:00 UTC; keeping the deployed rules" in err
    assert deployed.read_bytes() == march
    assert _leftovers(folder) == []
    warning = next(line for line in err.splitlines() if "keeping the deployed rules" in line)
    TABLE.append(("--allow-fallback, upstream down, no cache: the bundled snapshot is older", 0, warning))


def test_max_age_exits_7_after_deploying_or_failing(onionoo_server, deployed: Path, capsys, bundled_bytes):
    folder = deployed.parent
    before = deployed.read_bytes()
    onionoo_server.reset(body=bundled_bytes, gzip=True, last_modified=SEED_LAST_MODIFIED)
    capsys.readouterr()
    assert main(refresh_argv(deployed, onionoo_server.url, folder / "cache", "--max-age", "6h")) == 7
    err = capsys.readouterr().err
    assert re.search(
        r"error: the newest good relay data \(of 2026-02-28 01:00 UTC\) is \d+ days old, older than "
        r"the allowed 6.0 h \(--max-age\)$",
        err.strip(),
    ), err
    onionoo_server.reset(status=503)
    assert main(refresh_argv(deployed, onionoo_server.url, folder / "cache", "--max-age", "6h")) == 7
    err = capsys.readouterr().err.strip()
    assert "older than the allowed 6.0 h (--max-age); this refresh failed: " in err and "HTTP 503" in err
    TABLE.append(("HTTP 503 while the deployed data is older than --max-age 6h", 7, err.splitlines()[-1]))
    assert deployed.read_bytes() == before
    assert main(refresh_argv(deployed, onionoo_server.url, folder / "cache", "--max-age", "3650d")) == 4


def test_validation_failure_exits_6_and_keeps_the_rules(onionoo_server, deployed: Path, capsys, bundled_bytes):
    """sysdig 0.29 (the 2022 engine) rejects IPv6 networks: a real validation failure."""
    from tor_sets.engines import SysdigLegacy

    if not SysdigLegacy().available():
        pytest.skip("sysdig-legacy is not installed (tor-sets engines install legacy)")
    folder = deployed.parent
    before = deployed.read_bytes()
    onionoo_server.reset(body=bundled_bytes, gzip=True)
    capsys.readouterr()
    argv = refresh_argv(
        deployed,
        onionoo_server.url,
        folder / "cache",
        "--expand-below",
        "2",
        "--validate",
        "engine",
        "--engine",
        "sysdig-legacy",
    )
    assert main(argv) == 6
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert re.search(
        r"error: the new rules failed validation on sysdig-legacy: rule '.*': sysdig-legacy: invalid "
        r"condition: .*unrecognized IPv6 address",
        line,
    ), line
    assert deployed.read_bytes() == before and _leftovers(folder) == []
    TABLE.append(("new rules do not load in the engine (IPv6 networks on sysdig 0.29)", 6, line))


def test_edited_file_is_reported_and_replaced(onionoo_server, deployed: Path, capsys, bundled_bytes):
    folder = deployed.parent
    good = deployed.read_bytes()
    deployed.write_bytes(good + b"# a hand edit\n")
    assert main(["status", str(deployed)]) == 1
    out = capsys.readouterr().out
    assert "CHANGED since the last refresh" in out
    onionoo_server.reset(body=bundled_bytes, gzip=True, last_modified=SEED_LAST_MODIFIED)
    assert main(refresh_argv(deployed, onionoo_server.url, folder / "cache")) == 0
    err = capsys.readouterr().err
    assert "was changed since the last refresh (its sha256 differs from the state); replacing it" in err
    assert deployed.read_bytes() == good
    assert main(["status", str(deployed), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["matches_state"] is True and doc["state"]["deployed"]["relays"] == 9491


def test_the_docs_show_these_messages():
    """docs/operations.md shows the messages the tests above saw (``make docs`` rewrites them); runs last."""
    if len({name for name, _, _ in TABLE}) < len(CASES) + 4 or os.environ.get("TOR_SETS_FAULT_TABLE"):
        pytest.skip("only with every fault of this module run, and not while make docs writes the table")
    match = _DOC_BLOCK.search(DOC.read_text(encoding="utf-8"))
    assert match, "docs/operations.md lost its generated fault table"
    assert _comparable(match[2]) == _comparable(fault_table()), "docs/operations.md: stale fault table (make docs)"
