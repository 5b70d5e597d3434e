"""Enrichment without network: the relay index, alert lines (Falco and falcosidekick), streams and the CLI."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import socket
import sys
from datetime import datetime
from ipaddress import ip_address

import pytest

from tor_sets.cli import main
from tor_sets.errors import SanityError, TorSetsError, UsageError
from tor_sets.falco.generate import INBOUND_RULE, OUTBOUND_RULE
from tor_sets.relays import Relay, Role, Snapshot
from tor_sets.runtime.enrich import (
    Enricher,
    RelayIndex,
    ServerSettings,
    canonical_address,
    enrich_stream,
    parse_listen,
)
from tor_sets.runtime.enrich.limits import ConnectionTable, Throttle

PUBLISHED = datetime(2026, 2, 28, 1, 0)


def make_relay(fingerprint: str, **overrides: object) -> Relay:
    values: dict[str, object] = {
        "fingerprint": fingerprint * 40 if len(fingerprint) == 1 else fingerprint,
        "nickname": "relay" + fingerprint,
        "or_addresses": (),
        "flags": frozenset({"Running", "Valid"}),
    }
    values.update(overrides)
    return Relay(**values)  # type: ignore[arg-type]


GUARD = make_relay(
    "A",
    or_addresses=(ip_address("198.51.100.1"), ip_address("2001:db8::1")),
    flags=frozenset({"Guard", "Running", "Stable"}),
    country="de",
    as_number="AS24940",
    first_seen=datetime(2021, 8, 22, 19, 0),
)
EXIT = make_relay(
    "B",
    or_addresses=(ip_address("198.51.100.2"),),
    exit_addresses=(ip_address("198.51.100.3"),),
    flags=frozenset({"Exit", "Running"}),
)
BAD_EXIT = make_relay("C", or_addresses=(ip_address("198.51.100.4"),), flags=frozenset({"Exit", "BadExit"}))
AUTHORITY = make_relay("D", or_addresses=(ip_address("198.51.100.5"),), flags=frozenset({"Authority", "Running"}))
MIDDLE = make_relay("E", or_addresses=(ip_address("198.51.100.6"),), exit_addresses=(ip_address("198.51.100.7"),))
GONE = make_relay("F", or_addresses=(ip_address("198.51.100.8"),), running=False, flags=frozenset({"Guard"}))
SHARING = make_relay("9", or_addresses=(ip_address("198.51.100.1"),), flags=frozenset({"Running"}))
SNAPSHOT = Snapshot(PUBLISHED, (GUARD, EXIT, BAD_EXIT, AUTHORITY, MIDDLE, GONE, SHARING), source="test")


@pytest.fixture(scope="module")
def index() -> RelayIndex:
    return RelayIndex.from_snapshot(SNAPSHOT)


def falco_alert(rule: str = OUTBOUND_RULE, sip: str = "198.51.100.1", cip: str = "10.0.0.5") -> dict[str, object]:
    """An alert as Falco 0.42 writes it with json_output: true."""
    return {
        "hostname": "node-1",
        "output": f"12:00:00.000000001: Warning Outbound connection to a Tor entry relay | fd_sip={sip} fd_cip={cip}",
        "output_fields": {"evt.time": 1767268800000000001, "fd.cip": cip, "fd.sip": sip, "proc.name": "curl"},
        "priority": "Warning",
        "rule": rule,
        "source": "syscall",
        "tags": ["network", "tor"],
        "time": "2026-01-01T12:00:00.000000001Z",
    }


def line(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


# -- the index ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("198.51.100.1", [("9" * 40, ["relay"]), ("A" * 40, ["entry", "relay"])]),  # sorted by fingerprint
        ("2001:db8::1", [("A" * 40, ["entry", "relay"])]),
        ("198.51.100.2", [("B" * 40, ["exit", "relay"])]),
        ("198.51.100.3", [("B" * 40, ["exit", "relay"])]),  # exit address: exit, not entry
        ("198.51.100.4", [("C" * 40, ["relay"])]),  # BadExit left out of exit, as classify does
        ("198.51.100.5", [("D" * 40, ["entry", "relay"])]),  # authorities count as entry
        ("198.51.100.6", [("E" * 40, ["relay"])]),
        ("198.51.100.7", [("E" * 40, ["relay"])]),
        ("198.51.100.8", []),  # not running
        ("198.51.100.9", []),
    ],
)
def test_roles_follow_classify(index: RelayIndex, address: str, expected: list[tuple[str, list[str]]]) -> None:
    got = [(r.fingerprint, [role.value for role in r.roles]) for r in index.lookup(address)]
    assert got == expected


def test_index_options_follow_classify() -> None:
    index = RelayIndex.from_snapshot(SNAPSHOT, include_authorities=False, include_bad_exits=True)
    assert index.lookup("198.51.100.5")[0].roles == (Role.RELAY,)
    assert index.lookup("198.51.100.4")[0].roles == (Role.EXIT, Role.RELAY)


@pytest.mark.parametrize(
    "form",
    [
        "2001:DB8::1",
        "2001:0db8:0000:0000:0000:0000:0000:0001",
        "[2001:db8::1]",
        "2001:db8::1%eth0",
        ip_address("2001:db8::1"),
    ],
)
def test_lookup_accepts_every_form_of_an_address(index: RelayIndex, form: object) -> None:
    assert [r.fingerprint for r in index.lookup(form)] == ["A" * 40]  # type: ignore[arg-type]


def test_lookup_of_ipv4_mapped_and_garbage(index: RelayIndex) -> None:
    assert index.lookup("::ffff:198.51.100.2")[0].fingerprint == "B" * 40
    assert index.lookup(ip_address("::ffff:198.51.100.2"))[0].fingerprint == "B" * 40
    for junk in ("", "<NA>", "198.51.100", "999.1.1.1", "x" * 10_000, "198.51.100.1/32"):
        assert index.lookup(junk) == ()


def test_record_json_and_index_facts(index: RelayIndex) -> None:
    (_, record) = index.lookup("198.51.100.1")
    assert record.to_json() == {
        "fingerprint": "A" * 40,
        "nickname": "relayA",
        "flags": ["Guard", "Running", "Stable"],
        "roles": ["entry", "relay"],
        "first_seen": "2021-08-22T19:00:00Z",
        "country": "de",
        "as_number": "AS24940",
    }
    assert index.relay_count == 6 and len(index) == 8 and index.relays_published == PUBLISHED


def test_canonical_address() -> None:
    assert canonical_address(" 198.51.100.1 ") == "198.51.100.1"
    assert canonical_address("::FFFF:198.51.100.7") == "198.51.100.7"
    assert canonical_address("fe80::1%2") == "fe80::1"
    assert canonical_address("<NA>") is None


def test_index_of_the_real_10k_snapshot(data_dir) -> None:
    from tor_sets.onionoo import read_snapshot

    snapshot = read_snapshot(data_dir / "onionoo" / "details-running-fp-oraddr-country-2026-08-22T11.json.gz")
    index = RelayIndex.from_snapshot(snapshot)
    assert index.relay_count == 10_157
    relay = snapshot.relays[0]
    for address in relay.or_addresses:
        assert relay.fingerprint in {r.fingerprint for r in index.lookup(str(address))}


# -- alert lines --------------------------------------------------------------------------------------------------


def test_falco_alert_gets_a_tor_object(index: RelayIndex) -> None:
    result = Enricher(index).enrich_line(line(falco_alert()))
    assert result.kind == "enriched" and result.data.endswith(b"\n") and result.data.count(b"\n") == 1
    doc = json.loads(result.data)
    assert {k: v for k, v in doc.items() if k != "tor"} == falco_alert()
    assert doc["tor"]["relays_published"] == "2026-02-28T01:00:00Z"
    (peer,) = doc["tor"]["peers"]
    assert peer["address"] == "198.51.100.1" and peer["fields"] == ["fd.sip"] and peer["canary"] is False
    assert [r["fingerprint"] for r in peer["relays"]] == ["9" * 40, "A" * 40]
    assert list(doc)[-1] == "tor"  # Falco's keys keep their order


def test_falcosidekick_payload_is_enriched(index: RelayIndex) -> None:
    # falcosidekick's FalcoPayload (types/types.go): uuid, output, priority, rule, time, output_fields, source,
    # tags, hostname; custom fields land in output_fields
    payload = {
        "uuid": "0e6a5ed7-39d3-4c5a-bb45-0a4e5a16c3a3",
        "output": "Inbound connection from a Tor exit relay | fd_sip=10.0.0.5 fd_cip=198.51.100.3",
        "priority": "Warning",
        "rule": INBOUND_RULE,
        "time": "2026-01-01T12:00:00.000000001Z",
        "output_fields": {"fd.sip": "10.0.0.5", "fd.cip": "198.51.100.3", "environment": "prod"},
        "source": "syscall",
        "tags": ["tor"],
        "hostname": "node-1",
    }
    doc = json.loads(Enricher(index).enrich_line(line(payload)).data)
    assert doc["uuid"] == payload["uuid"]
    (peer,) = doc["tor"]["peers"]
    assert peer["fields"] == ["fd.cip"] and peer["relays"][0]["roles"] == ["exit", "relay"]


@pytest.mark.parametrize(
    ("connection", "peer_field"),
    [
        ("10.0.0.5:40112->198.51.100.1:443", "fd.sip"),
        ("198.51.100.3:5151->10.0.0.5:443", "fd.cip"),
        ("2001:db8::5:40112->2001:db8::1:9001", "fd.sip"),  # the port is the last colon-group
    ],
)
def test_without_output_fields_the_connection_in_the_text_is_read(index, connection, peer_field) -> None:
    """``json_include_output_fields_property: false``: only the output text of this version's rules is there."""
    alert = {
        "output": f"12:00:00.000000001: Warning Outbound connection to a Tor entry relay | connection={connection} "
        "fd_proto=tcp evt_type=connect evt_res=EINPROGRESS user=root process=curl",
        "priority": "Warning",
        "rule": OUTBOUND_RULE,
    }
    peers = json.loads(Enricher(index).enrich_line(line(alert)).data)["tor"]["peers"]
    assert [peer["fields"] for peer in peers if peer["relays"]] == [[peer_field]], peers


def test_other_lines_pass_byte_for_byte(index: RelayIndex) -> None:
    enricher = Enricher(index)
    raws = [
        b'{ "rule" : "Terminal shell in container",  "output_fields": {"fd.sip": "198.51.100.1"}, "x": "\\u00e9" }\n',
        '{"rule":"Read sensitive file","output":"caf\u00e9 \u2028"}\r\n'.encode(),
        b'{"no":"rule key"}\n',
        b'{"rule":"Outbound Connection to Tor Entry Relay ","output_fields":{}}\n',  # not exactly the name
    ]
    for raw in raws:
        result = enricher.enrich_line(raw)
        assert (result.kind, result.data) == ("passed", raw)
    assert enricher.enrich_line(b'{"rule":"x"}').data == b'{"rule":"x"}\n'  # a last line without newline


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"Events detected: 5\n", "not JSON"),
        (b'{"rule": "x",\n', "not JSON"),
        (b"[1, 2]\n", "a JSON list, not an object"),
        (b'"text"\n', "a JSON str, not an object"),
        (b'{"rule":"\xff\xfe"}\n', "not JSON"),
        (b'{"rule":"x","n":NaN}\n', "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000 + b"\n", "not JSON"),
    ],
)
def test_malformed_lines_are_reported_not_raised(index: RelayIndex, raw: bytes, reason: str) -> None:
    result = Enricher(index).enrich_line(raw)
    assert result.kind == "malformed" and result.reason.startswith(reason) and result.data == b""


def test_blank_lines_are_skipped_silently(index: RelayIndex) -> None:
    assert Enricher(index).enrich_line(b"  \r\n").kind == "blank"


def test_output_text_fallback_and_unknown_addresses(index: RelayIndex) -> None:
    alert = falco_alert(sip="198.51.100.2")
    del alert["output_fields"]
    doc = json.loads(Enricher(index).enrich_line(line(alert)).data)
    assert [p["address"] for p in doc["tor"]["peers"]] == ["198.51.100.2"]
    doc = json.loads(Enricher(index).enrich_line(line(falco_alert(sip="203.0.113.9"))).data)
    assert doc["tor"]["peers"] == []  # a rule fired on an address this snapshot does not know
    alert = falco_alert()
    alert["output_fields"] = {"fd.sip": None, "fd.cip": None, "fd.rip": "198.51.100.1", "fd.lip": 5}
    doc = json.loads(Enricher(index).enrich_line(line(alert)).data)
    assert [(p["address"], p["fields"]) for p in doc["tor"]["peers"]] == [("198.51.100.1", ["fd.rip"])]


def test_same_address_in_two_fields_is_one_peer(index: RelayIndex) -> None:
    alert = falco_alert()
    alert["output_fields"] = {"fd.sip": "198.51.100.1", "fd.rip": "198.51.100.1", "fd.cip": "198.51.100.2"}
    doc = json.loads(Enricher(index).enrich_line(line(alert)).data)
    assert [(p["address"], p["fields"]) for p in doc["tor"]["peers"]] == [
        ("198.51.100.1", ["fd.sip", "fd.rip"]),
        ("198.51.100.2", ["fd.cip"]),
    ]


def test_canary_and_extra_rules_and_flat_output_fields(index: RelayIndex) -> None:
    enricher = Enricher(index, rules={"My Tor rule"}, canaries=["203.0.113.77"], output_fields=True)
    assert enricher.enrich_line(line(falco_alert())).kind == "passed"  # only the rules asked for
    doc = json.loads(enricher.enrich_line(line(falco_alert("My Tor rule", sip="203.0.113.77"))).data)
    assert doc["tor"]["peers"] == [{"address": "203.0.113.77", "fields": ["fd.sip"], "canary": True, "relays": []}]
    assert doc["output_fields"]["tor.canary"] == "true"
    doc = json.loads(enricher.enrich_line(line(falco_alert("My Tor rule"))).data)
    fields = doc["output_fields"]
    assert fields["tor.fingerprint"] == "9" * 40 + "," + "A" * 40
    assert fields["tor.roles"] == "entry,relay" and fields["tor.country"] == "de"
    assert fields["fd.sip"] == "198.51.100.1" and fields["proc.name"] == "curl"


def test_relay_written_text_stays_data() -> None:
    # the parser only admits [A-Za-z0-9]{1,19} nicknames; a Relay built by hand can hold anything
    evil = make_relay(
        "7", nickname='x"},\n{"rule":"fake"}\u2028%proc.name', or_addresses=(ip_address("198.51.100.50"),)
    )
    enricher = Enricher(RelayIndex.from_snapshot(Snapshot(PUBLISHED, (evil,))))
    result = enricher.enrich_line(line(falco_alert(sip="198.51.100.50")))
    assert result.data.count(b"\n") == 1 and result.data.isascii()
    doc = json.loads(result.data)
    assert doc["tor"]["peers"][0]["relays"][0]["nickname"] == evil.nickname
    assert doc["rule"] == OUTBOUND_RULE and doc["output"] == falco_alert(sip="198.51.100.50")["output"]


# -- streams ------------------------------------------------------------------------------------------------------


class _Recorder(io.BytesIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushed_at: list[int] = []

    def flush(self) -> None:
        self.flushed_at.append(len(self.getvalue()))


def test_stream_counts_numbers_and_flushes(index: RelayIndex) -> None:
    src = io.BytesIO(
        line(falco_alert()) + b"not json\n" + b'{"rule":"other"}\n' + b"\n" + b"[]\n" + line(falco_alert())[:-1]
    )
    dst = _Recorder()
    seen: list[tuple[int, str]] = []
    stats = enrich_stream(src, dst, Enricher(index), on_malformed=lambda n, why: seen.append((n, why)))
    assert stats.to_json() == {"lines": 6, "enriched": 2, "passed": 1, "malformed": 2}
    assert stats.malformed_lines == [2, 5] and [n for n, _ in seen] == [2, 5]
    out = dst.getvalue().splitlines()
    assert len(out) == 3 and out[1] == b'{"rule":"other"}'
    assert len(dst.flushed_at) == 3  # after every line written


def test_stream_skips_overlong_lines_without_holding_them(index: RelayIndex) -> None:
    src = io.BytesIO(b'{"rule":"other","pad":"' + b"x" * 5000 + b'"}\n' + b'{"rule":"other"}\n')
    dst = io.BytesIO()
    stats = enrich_stream(src, dst, Enricher(index), max_line=1000)
    assert stats.malformed_lines == [1] and dst.getvalue() == b'{"rule":"other"}\n'


# -- settings and parsing -----------------------------------------------------------------------------------------


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:2801") == ("127.0.0.1", 2801)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("2801", "example.org:80", "127.0.0.1:99999", "127.0.0.1:", ":80"):
        with pytest.raises(UsageError):
            parse_listen(bad)


def test_parse_listen_takes_ascii_digits_only() -> None:
    # "²" passes str.isdigit() and int() refuses it; int() reads Arabic-Indic digits; it refuses 5,000 digits
    for bad in ("127.0.0.1:\u00b2", "127.0.0.1:\u0661", "127.0.0.1:" + "9" * 5000):
        with pytest.raises(UsageError, match="expected HOST:PORT"):
            parse_listen(bad)


def test_settings_refuse_remote_and_odd_urls() -> None:
    with pytest.raises(SanityError, match="non-loopback"):
        ServerSettings(host="0.0.0.0").check()
    with pytest.raises(SanityError):
        ServerSettings(host="192.0.2.2").check()
    ServerSettings(host="0.0.0.0", allow_remote=True).check()
    ServerSettings(host="::1", forward="http://127.0.0.1:2801/").check()
    for url in ("file:///etc/passwd", "ftp://127.0.0.1/", "http://", "http://127.0.0.1:0/"):
        with pytest.raises(TorSetsError, match="^forward must be an http:// or https:// URL"):
            ServerSettings(forward=url).check()


@pytest.mark.parametrize(
    ("settings", "error", "field"),
    [
        ({"host": "0.0.0.0"}, SanityError, "allow_remote"),
        ({"forward": "ftp://127.0.0.1/"}, TorSetsError, "forward"),
        ({"max_body": 0}, TorSetsError, "max_body"),
        ({"max_connections": 0}, TorSetsError, "max_connections"),
        ({"request_timeout": 0.0}, TorSetsError, "request_timeout"),
        ({"log_interval": -1.0}, TorSetsError, "log_interval"),
        ({"host": "localhost"}, UsageError, "host"),  # no IP literal: was a bare ValueError from ipaddress
    ],
)
def test_settings_errors_name_the_field_not_a_flag(settings: dict[str, object], error: type, field: str) -> None:
    with pytest.raises(error) as exc:
        ServerSettings(**settings).check()  # type: ignore[arg-type]
    assert field in str(exc.value) and "--" not in str(exc.value)


@pytest.mark.parametrize(
    "url",
    ["ftp://tor-sets:s3cret@127.0.0.1/", "http://tor-sets:s3cret@127.0.0.1:99999/", "http://tor-sets:s3cret@[::1/"],
)
def test_a_refused_forward_url_is_shown_without_credentials(url: str) -> None:
    with pytest.raises(TorSetsError, match="^forward must be") as exc:
        ServerSettings(forward=url).check()
    assert "s3cret" not in str(exc.value) and "***@" in str(exc.value)


@pytest.mark.parametrize(
    "bad", [{"max_connections": 0}, {"request_timeout": 0.0}, {"request_timeout": float("nan")}, {"log_interval": -1.0}]
)
def test_settings_refuse_limits_that_are_not_positive(bad: dict[str, float]) -> None:
    with pytest.raises(TorSetsError, match="must be positive"):
        ServerSettings(**bad).check()  # type: ignore[arg-type]


def test_repeated_warnings_are_summarised_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    throttle = Throttle("%d more in the last %.1f s", burst=2, interval=10.0)
    with caplog.at_level(logging.WARNING, logger="tor_sets"):
        logged = [throttle.warn("line %d", n, now=n * 0.5) for n in range(6)]
        assert throttle.flush(now=9.9) == 0  # the interval is not over
        assert throttle.warn("line %d", 6, now=10.0)  # closes the interval (its summary first), opens a new one
        throttle.warn("line %d", 7, now=11.0)
        throttle.warn("line %d", 8, now=12.0)
        assert throttle.flush(now=13.0, force=True) == 1
        assert throttle.flush(now=30.0) == 0  # nothing held: no line
    assert logged == [True, True, False, False, False, False]
    assert [r.getMessage() for r in caplog.records] == [
        "line 0",
        "line 1",
        "4 more in the last 10.0 s",
        "line 6",
        "line 7",
        "1 more in the last 3.0 s",
    ]


def test_a_full_connection_table_pushes_out_the_one_waiting_longest() -> None:
    with contextlib.ExitStack() as stack:
        a, b, c, d = (stack.enter_context(socket.socket()) for _ in range(4))  # unconnected: only identity matters
        table = ConnectionTable(2)
        assert table.admit(a, now=0.0) == (True, None)
        assert table.admit(b, now=1.0) == (True, None)
        table.busy(a)
        assert table.admit(c, now=5.0) == (True, (b, 4.0))  # a is busy: b, waiting since 1.0, goes
        assert not table.waiting(b, now=6.0)  # b's thread is told to end: it stays out
        table.busy(c)
        assert table.admit(d, now=7.0) == (False, None)  # every place busy
        table.remove(a)
        assert table.admit(d, now=9.0) == (True, None)
        assert table.stop() == [d]  # the server stops: d was waiting, c is busy answering
        assert not table.waiting(c, now=10.0)  # c's answer is done: no next request


# -- the command line ---------------------------------------------------------------------------------------------


@pytest.fixture
def snapshot_file(tmp_path, data_dir):
    return data_dir / "onionoo" / "details-fullschema-limit2-2021-09-30.json"


def test_cli_file_to_file(tmp_path, snapshot_file, capsys) -> None:
    src = tmp_path / "events.json"
    other = b'{"rule":"Terminal shell in container","output":"x"}\n'
    src.write_bytes(line(falco_alert(sip="165.22.200.169")) + b"garbage\n" + other + b"\n{]\n")
    out = tmp_path / "enriched.json"
    assert main(["enrich", str(src), "-o", str(out), "--input", str(snapshot_file)]) == 0
    lines = out.read_bytes().splitlines(keepends=True)
    assert len(lines) == 2 and lines[1] == other
    relay = json.loads(lines[0])["tor"]["peers"][0]["relays"][0]
    assert relay["nickname"] == "lyesn" and relay["as_number"] == "AS14061" and relay["roles"] == ["entry", "relay"]
    err = capsys.readouterr()
    assert err.out == ""
    assert "line 2 skipped: not JSON" in err.err and "line 5 skipped" in err.err
    assert "5 lines: 1 enriched, 1 passed, 2 malformed (lines 2, 5)" in err.err


def test_cli_stdin_to_stdout(monkeypatch, snapshot_file, capsysbinary) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(line(falco_alert(sip="165.22.200.169")) + b'{"rule":"other"}\n'))
    monkeypatch.setattr(sys, "stdin", stdin)
    assert main(["enrich", "-", "--input", str(snapshot_file)]) == 0
    out = capsysbinary.readouterr().out.splitlines()
    assert json.loads(out[0])["tor"]["peers"][0]["relays"][0]["fingerprint"].startswith("000853C5")
    assert out[1] == b'{"rule":"other"}'


def test_cli_without_input_uses_the_bundled_snapshot(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    src = tmp_path / "events.json"
    src.write_bytes(line(falco_alert(sip="152.53.144.50")))
    assert main(["enrich", str(src), "--cache-dir", str(tmp_path / "cache")]) == 0
    captured = capsys.readouterr()
    assert "relay data from the bundled snapshot of 2026-02-28 01:00 UTC" in captured.err
    assert json.loads(captured.out)["tor"]["peers"][0]["relays"][0]["fingerprint"] == (
        "000004ACBB9D29BCBA17256BB35928DDBFC8ABA9"
    )


def test_cli_errors(tmp_path, snapshot_file, capsys) -> None:
    with pytest.raises(SystemExit) as exc:  # a missing input file is a usage error, checked before anything is read
        main(["enrich", str(tmp_path / "missing.json"), "--input", str(snapshot_file)])
    assert exc.value.code == 2
    assert "tor-sets enrich: error: argument FILE: cannot read" in capsys.readouterr().err
    assert main(["enrich", "--forward", "http://127.0.0.1:1/", "--input", str(snapshot_file)]) == 2
    assert "--forward needs --listen" in capsys.readouterr().err
    assert main(["enrich", "--listen", "0.0.0.0:0", "--input", str(snapshot_file)]) == 5
    assert "non-loopback" in capsys.readouterr().err
    for usage in (
        ["--listen", "example.org:80"],
        ["--listen", "127.0.0.1:0", "--max-connections", "\u00b2"],
        ["--listen", "127.0.0.1:0", "--request-timeout", "0"],
        ["--listen", "127.0.0.1:0", "--max-body", "\u00b2k"],
        ["--listen", "127.0.0.1:0", "--forward-timeout", "-1"],
    ):
        with pytest.raises(SystemExit) as exc:
            main(["enrich", *usage])
        assert exc.value.code == 2


def test_cli_errors_name_the_flags(snapshot_file, capsys) -> None:
    # a refused --forward is a usage error, shown without its credentials
    argv = ["enrich", "--listen", "127.0.0.1:0", "--forward", "ftp://tor-sets:s3cret@127.0.0.1/forward"]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--input", str(snapshot_file)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err == (
        "tor-sets enrich: error: argument --forward: expected an http:// or https:// URL, "
        "got 'ftp://***@127.0.0.1/forward'\n"
    )
    # the library names ServerSettings fields (allow_remote); the command line names its flags
    assert main(["enrich", "--listen", "0.0.0.0:0", "--input", str(snapshot_file)]) == 5
    assert "non-loopback address 0.0.0.0 (--allow-remote is off)" in capsys.readouterr().err


def test_cli_bench_prints_one_json_document(data_dir, capsys) -> None:
    snapshot = data_dir / "onionoo" / "details-running-fp-oraddr-country-2026-08-22T11.json.gz"
    assert main(["enrich", "--bench", "--input", str(snapshot)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == 1 and doc["relays"] == 10_157 and doc["lookups"] == 400_000
    assert doc["lookups_per_s"] > 0 and doc["alerts_per_s"] > 0


@pytest.mark.parametrize(
    "module",
    [
        "tor_sets.runtime.enrich",
        "tor_sets.runtime.enrich.index",
        "tor_sets.runtime.enrich.stream",
        "tor_sets.runtime.enrich.server",
        "tor_sets.runtime.enrich.limits",
        "tor_sets.cli.enrich",
    ],
)
def test_doctests(module: str) -> None:
    import doctest
    import importlib

    failures, tried = doctest.testmod(importlib.import_module(module))
    assert failures == 0 and tried > 0
