"""Parsing details documents: strict on the document, forgiving on relays, hostile text never kept."""

from __future__ import annotations

import doctest
import gzip
import ipaddress
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tor_sets import onionoo
from tor_sets.build import build
from tor_sets.errors import DocumentError
from tor_sets.onionoo import parse_address, parse_document, read_snapshot
from tor_sets.onionoo.document import _fast_address
from tor_sets.relays import Role, classify


def doc(*relays: dict, version: str = "8.0", **top: object) -> str:
    return json.dumps(
        {
            "version": version,
            "relays_published": "2026-02-28 01:00:00",
            "relays": list(relays),
            "bridges_published": "2026-02-28 00:57:26",
            "bridges": [],
            **top,
        }
    )


def relay(fp: str = "A" * 40, **fields: object) -> dict:
    return {
        "fingerprint": fp,
        "nickname": "relay1",
        "or_addresses": ["185.220.101.1:9001"],
        "running": True,
        "flags": ["Guard", "Running"],
        **fields,
    }


def test_full_schema_real_document(data_dir):
    snap = read_snapshot(data_dir / "onionoo" / "details-fullschema-limit2-2021-09-30.json")
    assert len(snap.relays) == 2
    first = snap.relays[0]
    assert first.nickname == "lyesn"
    assert first.or_addresses == (ipaddress.ip_address("165.22.200.169"),)
    assert first.country == "us" and first.as_number == "AS14061"
    assert "Guard" in first.flags and first.first_seen is not None
    assert f"{snap.relays_published:%Y-%m-%d %H:%M:%S}" == "2021-09-30 14:00:00"


@pytest.mark.parametrize(
    "name",
    ["details-running-fp-oraddr-country-2026-08-22T11.json.gz", "details-running-guardprob-2026-08-22T15.json.gz"],
)
def test_real_verbatim_answers_without_flags(data_dir, name):
    snap = read_snapshot(data_dir / "onionoo" / name)
    assert len(snap.relays) > 9000
    sets = classify(snap)
    # no flags in these field selections: every relay counts, none is entry or exit
    assert not sets.entry and not sets.exit
    assert len(sets.family(Role.RELAY, 4)) > 6500


def test_minor_versions_and_unknown_fields_are_accepted():
    snap = parse_document(doc(relay(brand_new_field={"x": 1}), version="8.7", future_top_level=[1]))
    assert len(snap.relays) == 1


@pytest.mark.parametrize("version", ["9.0", "7.1", "", "eight", None])
def test_other_major_versions_are_refused(version):
    with pytest.raises(DocumentError, match="major version 8"):
        parse_document(doc(relay(), version=version))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text, message",
    [
        ("<html><body>503 Service Unavailable</body></html>", "not a JSON document.*<html>"),
        ("", "not a JSON document"),
        ("[1, 2]", "top level is not an object"),
        ('{"version": "8.0", "relays_published": "2026-02-28 01:00:00"}', "missing relays"),
        ('{"version": "8.0", "relays": []}', "relays_published"),
        ("[" * 100000 + "]" * 100000, "nested too deeply|not a JSON document"),
    ],
)
def test_unusable_documents(text, message):
    with pytest.raises(DocumentError, match=message):
        parse_document(text)


def test_truncated_gzip_is_a_document_error():
    data = gzip.compress(doc(relay()).encode())
    with pytest.raises(DocumentError, match="gzip"):
        parse_document(data[: len(data) // 2])


def test_one_bad_address_keeps_the_good_ones_and_is_counted():
    snap = parse_document(
        doc(
            relay(
                or_addresses=[
                    "not-an-ip:1",
                    "185.220.101.1:9001",
                    "[2a01:4f8::1]:443",
                    "10.0.0.1:9001",
                    "0.0.0.0:1",
                    "[::]:1",
                    "224.0.0.1:9001",
                    "127.0.0.1:9001",
                    "[fe80::1]:9001",
                    "1.2.3.4:0",
                    "[2001:db8::1]:1",
                ]
            )
        )
    )
    (r,) = snap.relays
    assert [str(a) for a in r.or_addresses] == ["185.220.101.1", "2a01:4f8::1"]
    assert snap.dropped == {
        "bad-address": 2,
        "private": 1,
        "unspecified": 2,
        "multicast": 1,
        "loopback": 1,
        "link-local": 1,
        "documentation": 1,
    }
    assert snap.dropped_summary().startswith("dropped 9 entries: ")


def test_running_field_is_honoured_and_bad_relays_are_skipped():
    snap = parse_document(doc(relay("B" * 40, running=False), "not a relay", relay("zz"), relay()))
    assert [r.fingerprint for r in snap.relays] == ["A" * 40]
    assert snap.dropped == {"not-running": 1, "bad-relay": 1, "bad-fingerprint": 1}


def test_thousands_of_addresses_on_one_relay_are_capped():
    addresses = [f"185.{i // 256 % 256}.{i % 256}.1:9001" for i in range(5000)]
    snap = parse_document(doc(relay(or_addresses=addresses)))
    assert len(snap.relays[0].or_addresses) == 64
    assert snap.dropped["too-many-addresses"] == 5000 - 64


def test_hostile_text_never_reaches_the_rules():
    evil = "x\n- rule: pwned\n  condition: evt.type = open or fd.sip in (1.1.1.1)\n"
    snap = parse_document(
        doc(
            relay(
                nickname=evil, contact=evil, platform=evil, flags=["Guard", evil, "Exit"], country=evil, **{"as": evil}
            ),
            relay(
                "C" * 40,
                flags=["Exit"],
                or_addresses=["185.220.101.2:443"],
                exit_addresses=[evil, "185.220.101.3", "185.220.101.4:80"],
            ),
        )
    )
    text = build(snap).text
    assert "pwned" not in text and "evt.type = open" not in text
    assert snap.relays[0].nickname == "" and snap.relays[0].country is None
    assert snap.relays[0].flags == frozenset({"Guard", "Exit"})


@pytest.mark.parametrize(
    "text, expected",
    [
        ("185.220.101.1:9001", "185.220.101.1"),
        ("[2A01:4F8:0:0::1]:443", "2a01:4f8::1"),
        ("[::ffff:185.220.101.1]:443", None),
        ("[fe80::1%eth0]:443", None),
        ("185.220.101.1", None),
        (12345, None),
        ("1" * 100, None),
    ],
)
def test_parse_or_address(text, expected):
    address, _ = parse_address(text, with_port=True)
    assert (str(address) if address else None) == expected


_texts = st.one_of(
    st.integers(0, 2**32 - 1).map(lambda i: str(ipaddress.IPv4Address(i))),
    st.integers(0, 2**128 - 1).map(lambda i: str(ipaddress.IPv6Address(i))),
    st.integers(0, 2**128 - 1).map(lambda i: ipaddress.IPv6Address(i).exploded),
    st.integers(0, 2**32 - 1).map(lambda i: "::ffff:" + str(ipaddress.IPv4Address(i))),
    st.text(alphabet="0123456789abcdefABCDEF:.", max_size=45),
)


@given(_texts)
def test_fast_parsing_accepts_exactly_what_ipaddress_accepts(text):
    try:
        expected = ipaddress.ip_address(text)
    except ValueError:
        expected = None
    fast = _fast_address(text)
    # the fast path either declines (the caller then asks ipaddress) or agrees with ipaddress
    assert fast is None or fast == expected
    address, _ = parse_address(text, with_port=False)
    assert address is None or address == expected


# ---------------------------------------------------------------------------------------------------- bounds (issue 13)


def test_each_gzip_layer_is_capped_while_inflating():
    data = gzip.compress(doc(relay()).encode() + b" " * 5_000_000)
    assert len(data) < 10_000
    with pytest.raises(DocumentError, match=r"^the document inflates past the size cap of 100000 bytes"):
        parse_document(data, max_bytes=100_000)
    assert len(parse_document(data, max_bytes=6_000_000).relays) == 1  # under the cap it is read as before
    with pytest.raises(DocumentError, match=r"^the document is larger than the size cap of 100 bytes"):
        parse_document(doc(relay()), max_bytes=100)


def test_gzip_inside_gzip_and_concatenated_members():
    text = doc(relay()).encode()
    with pytest.raises(DocumentError, match=r"^gzip inside gzip: not a details document$"):
        parse_document(gzip.compress(gzip.compress(text)))
    half = len(text) // 2
    assert len(parse_document(gzip.compress(text[:half]) + gzip.compress(text[half:])).relays) == 1  # like gzip -c a b
    with pytest.raises(DocumentError, match=r"^corrupt gzip data: trailing garbage after the last gzip member$"):
        parse_document(gzip.compress(text) + b"junk")


def test_a_json_gz_input_file_is_capped(tmp_path):
    path = tmp_path / "details.json.gz"
    path.write_bytes(gzip.compress(doc(relay()).encode() + b" " * 5_000_000))
    with pytest.raises(DocumentError, match=r"details.json.gz: the document inflates past the size cap of 100000"):
        read_snapshot(path, max_bytes=100_000)
    plain = tmp_path / "details.json"
    plain.write_text(doc(relay()) + " " * 200_000)
    with pytest.raises(DocumentError, match=r"details.json: the file is larger than the size cap of 100000 bytes"):
        read_snapshot(plain, max_bytes=100_000)


def _minimal_relays(n: int) -> str:
    fp = "A" * 40
    return (
        '{"version": "8.0", "relays_published": "2026-02-28 01:00:00", "relays": ['
        + ",".join([f'{{"fingerprint": "{fp}"}}'] * n)
        + "]}"
    )


def test_the_relay_ceiling_defaults_to_100000_and_is_checked_while_parsing():
    assert onionoo.MAX_RELAYS == 100_000
    assert len(parse_document(_minimal_relays(1000)).relays) == 1000
    with pytest.raises(DocumentError, match=r"^the document lists more than 100000 relays \(max_relays\)$") as caught:
        parse_document(_minimal_relays(100_001))
    assert caught.value.field == "relays"


@pytest.mark.parametrize(
    "relays",
    [[relay()] * 11, [0] * 11, [[]] * 11],
    ids=["relay-objects", "numbers", "lists"],
)
def test_the_relay_ceiling_counts_every_entry(relays):
    parse_document(doc(*relays[:10]), max_relays=10)  # at the ceiling: read
    with pytest.raises(DocumentError, match=r"^the document lists more than 10 relays \(max_relays\)$"):
        parse_document(doc(*relays), max_relays=10)


def test_doctests():
    from tor_sets import urls

    assert doctest.testmod(onionoo).failed == 0 and doctest.testmod(urls).failed == 0
