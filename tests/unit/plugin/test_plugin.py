"""The plugin's Python side: table codec, plugin rules, falco.yaml snippet, command line (no engine, no compiler)."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import random
import re
import struct
import threading
import zlib
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import REPO
from tor_sets.build import BuildOptions, build
from tor_sets.cli import main
from tor_sets.errors import SanityError, TorSetsError, UsageError
from tor_sets.falco.generate import INBOUND_RULE, OUTBOUND_RELAY_RULE, OUTBOUND_RULE, RulesOptions
from tor_sets.falco.load import load_rules
from tor_sets.plugin import engine_plugin, falco_config, plugin_rules_text, rule_families, source_bytes, table_bytes
from tor_sets.plugin.rules import (
    DEFAULT_CONFIG_NAME,
    EVENT_SCHEMA_VERSION,
    FIELDS,
    METRICS,
    MIN_ENGINE_VERSION,
    PLUGIN_NAME,
    PLUGIN_VERSION,
    REQUIRED_API_VERSION,
    ROLE_CONDITIONS,
)
from tor_sets.plugin.table import (
    ENTRY,
    EXIT,
    HEADER_SIZE,
    MAX_BYTES,
    RELAY,
    Table,
    TableEntry,
    decode,
    encode,
    make_table,
    read_table,
    role_names,
    write_table,
)
from tor_sets.relays import Relay, RelaySets, Role, Snapshot

ip = ipaddress.ip_address


def relay(fp: str, nick: str, *addresses: str, flags: str = "", exits: tuple[str, ...] = ()) -> Relay:
    return Relay(
        fp * 40 if len(fp) == 1 else fp,
        nick,
        or_addresses=tuple(ip(a) for a in addresses),
        exit_addresses=tuple(ip(a) for a in exits),
        flags=frozenset(flags.split()),
    )


GUARD = relay("A", "Guard1", "198.51.100.1", "2001:db8::1", flags="Guard Running")
EXIT_ = relay("B", "Exit1", "198.51.100.2", flags="Exit Running", exits=("198.51.100.3",))
BOTH = relay("C", "Both1", "198.51.100.4", flags="Guard Exit Running")
MIDDLE = relay("D", "Middle1", "198.51.100.5", flags="Running")
SHARED_MIDDLE = relay("0", "aaa", "198.51.100.1", flags="Running")  # lower fingerprint, but no role there
RELAYS = [GUARD, EXIT_, BOTH, MIDDLE, SHARED_MIDDLE]


def sets_of(relays: list[Relay]) -> RelaySets:
    from tor_sets.relays import classify

    return classify(relays)


# ---------------------------------------------------------------------------------------------------- table


def test_make_table_roles_and_owners() -> None:
    table = make_table(sets_of(RELAYS), RELAYS)
    by = {str(e.address): e for e in table.entries}
    assert by["198.51.100.1"] == TableEntry(ip("198.51.100.1"), ENTRY | RELAY, "A" * 40, "Guard1")  # role wins
    assert by["198.51.100.3"] == TableEntry(ip("198.51.100.3"), EXIT | RELAY, "B" * 40, "Exit1")  # exit address
    assert by["198.51.100.4"].roles == ENTRY | EXIT | RELAY
    assert by["198.51.100.5"].roles == RELAY
    assert by["2001:db8::1"].fingerprint == "A" * 40
    assert [str(e.address) for e in table.entries][-1] == "2001:db8::1"  # IPv4 first, then IPv6


def test_shared_address_without_role_goes_to_lowest_fingerprint() -> None:
    twin = relay("1", "twin", "198.51.100.5", flags="Running")
    table = make_table(sets_of([MIDDLE, twin]), [MIDDLE, twin])
    assert table.get(ip("198.51.100.5")).fingerprint == "1" * 40  # type: ignore[union-attr]


def test_encode_is_deterministic_and_round_trips() -> None:
    sets = sets_of(RELAYS)
    shuffled = RELAYS[:]
    random.Random(1).shuffle(shuffled)
    data = encode(make_table(sets, RELAYS, published=None))
    assert data == encode(make_table(sets, shuffled))
    assert decode(data) == make_table(sets, RELAYS)


def test_header_layout() -> None:
    table = make_table(sets_of(RELAYS), RELAYS)
    data = encode(dataclasses.replace(table, published=1_772_240_400))
    magic, version, size, flags, n4, n6, nrelays, crc, payload, published = struct.unpack_from("<8sHHIIIIIQq", data)
    assert (magic, version, size, flags) == (b"TORSETS\0", 1, HEADER_SIZE, 0)
    assert (n4, n6, nrelays) == (5, 1, 4)  # the shared-address middle relay explains no address: no record
    assert payload == len(data) - HEADER_SIZE == 5 * 12 + 1 * 24 + 4 * 64
    assert crc == zlib.crc32(data[HEADER_SIZE:])
    assert published == 1_772_240_400
    assert data[48:64] == bytes(16)
    # the first IPv4 record: 198.51.100.1 as a number, roles, index of relay A (records sorted by fingerprint)
    assert struct.unpack_from("<III", data, HEADER_SIZE) == (int(ip("198.51.100.1")), ENTRY | RELAY, 0)


def test_canary_has_roles_but_no_relay() -> None:
    sets = sets_of(RELAYS).with_extra([ip("203.0.113.9")], [Role.ENTRY, Role.EXIT, Role.RELAY])
    entry = decode(encode(make_table(sets, RELAYS))).get(ip("203.0.113.9"))
    assert entry == TableEntry(ip("203.0.113.9"), ENTRY | EXIT | RELAY)


def test_ipv4_mapped_lookup() -> None:
    table = make_table(sets_of(RELAYS), RELAYS)
    assert table.get(ip("::ffff:198.51.100.2")) == table.get(ip("198.51.100.2"))
    assert table.get(ip("192.0.2.1")) is None


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (relay("a", "x", "198.51.100.1"), "fingerprint"),
        (relay("A", "bad nick", "198.51.100.1"), "nickname"),
        (relay("A", "x" * 20, "198.51.100.1"), "nickname"),
        (relay("A", "caf\u00e9", "198.51.100.1"), "nickname"),
    ],
)
def test_relay_text_is_checked(bad: Relay, message: str) -> None:
    with pytest.raises(SanityError, match=message):
        make_table(sets_of([bad]), [bad])


def test_empty_sets_are_refused() -> None:
    with pytest.raises(SanityError, match="empty"):
        make_table(RelaySets())


def _good() -> bytes:
    return encode(make_table(sets_of(RELAYS), RELAYS))


def _refresh_crc(data: bytearray) -> bytes:
    struct.pack_into("<I", data, 28, zlib.crc32(bytes(data[HEADER_SIZE:])))
    return bytes(data)


def _swap_first_two_v4(data: bytes) -> bytes:
    out = bytearray(data)
    out[64:76], out[76:88] = data[76:88], data[64:76]
    return _refresh_crc(out)


def _set_u32(offset: int, value: int) -> object:
    def mutate(data: bytes) -> bytes:
        out = bytearray(data)
        struct.pack_into("<I", out, offset, value)
        return _refresh_crc(out)

    return mutate


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d[:10], "shorter than the header"),
        (lambda d: b"X" + d[1:], "bad magic"),
        (lambda d: d[:8] + b"\x02\x00" + d[10:], "unsupported table version"),
        (lambda d: d[:-1], "size mismatch"),
        (lambda d: d + b"\0", "size mismatch"),
        (lambda d: d[:-1] + bytes([d[-1] ^ 1]), "checksum"),
        (_swap_first_two_v4, "out of order"),
        (_set_u32(HEADER_SIZE + 4, 0), "bad roles"),
        (_set_u32(HEADER_SIZE + 4, 8), "bad roles"),
        (_set_u32(HEADER_SIZE + 8, 5), "relay index"),
        (_set_u32(HEADER_SIZE + 5 * 12 + 24 + 41, 0x00207878), "relay record"),  # "xx " nickname
    ],
)
def test_decode_rejects_what_the_plugin_rejects(mutate: object, message: str) -> None:
    with pytest.raises(TorSetsError, match=message):
        decode(mutate(_good()))  # type: ignore[operator]


addresses = st.one_of(
    st.integers(1, 2**32 - 1).map(ipaddress.IPv4Address), st.integers(1, 2**128 - 1).map(ipaddress.IPv6Address)
)


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        addresses,
        st.tuples(st.integers(1, 7), st.sampled_from(["", "A" * 40, "0123456789ABCDEF" * 2 + "01234567"])),
        min_size=1,
        max_size=40,
    ),
    st.integers(0, 2**40),
)
def test_round_trip_property(entries: dict, published: int) -> None:  # type: ignore[type-arg]
    nick = {"": "", "A" * 40: "alpha", "0123456789ABCDEF" * 2 + "01234567": ""}
    table = Table(
        tuple(
            TableEntry(a, roles, fp, nick[fp])
            for a, (roles, fp) in sorted(entries.items(), key=lambda kv: (kv[0].version, int(kv[0])))
        ),
        published,
    )
    data = encode(table)
    assert decode(data) == table
    for address in entries:
        assert decode(data).get(address) == table.get(address)


def test_role_names() -> None:
    assert role_names(ENTRY | EXIT | RELAY) == "entry,exit"
    assert role_names(0) == "none"


def test_write_table_is_atomic_and_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "tor.table"
    assert write_table(path, b"one") is True
    inode = path.stat().st_ino
    assert write_table(path, b"one") is False
    assert write_table(path, b"two") is True
    assert path.read_bytes() == b"two" and path.stat().st_ino != inode  # a new file: the plugin notices
    assert [p.name for p in path.parent.iterdir()] == ["tor.table"]


def test_table_bytes_from_the_bundled_snapshot(bundled: Snapshot) -> None:
    built = build(bundled)
    table = decode(table_bytes(built, bundled))
    counts = built.sets.counts()
    assert table.counts()["ipv4"] == counts["relay_ipv4"] and table.counts()["ipv6"] == counts["relay_ipv6"]
    assert {e.address for e in table.entries if e.roles & ENTRY} == built.sets.entry
    assert {e.address for e in table.entries if e.roles & EXIT} == built.sets.exit
    assert all(e.fingerprint for e in table.entries)
    assert table.published == int(bundled.relays_published.replace(tzinfo=__import__("datetime").UTC).timestamp())
    roles_only = decode(table_bytes(built))
    assert [(e.address, e.roles) for e in roles_only.entries] == [(e.address, e.roles) for e in table.entries]
    assert not any(e.fingerprint for e in roles_only.entries) and roles_only.published == 0


def test_table_follows_build_options(bundled: Snapshot) -> None:
    excluded = next(a for a in build(bundled).sets.entry if a.version == 4)
    options = BuildOptions(exclude=(ipaddress.ip_network(f"{excluded}/32"),), canaries=(ip("192.0.2.77"),))
    table = decode(table_bytes(build(bundled, options), bundled))
    assert table.get(excluded) is None
    assert table.get(ip("192.0.2.77")) == TableEntry(ip("192.0.2.77"), ENTRY | EXIT | RELAY)


@pytest.mark.parametrize("list_names", ["tor-sets", "2022"])
@pytest.mark.parametrize(("families", "versions"), [({4}, {4}), ({6}, {6}), ({4, 6}, {4, 6})])
def test_table_covers_the_families_of_the_rules(
    bundled: Snapshot, list_names: str, families: set[int], versions: set[int]
) -> None:
    options = BuildOptions(rules=RulesOptions(families=frozenset(families), list_names=list_names))  # type: ignore[arg-type]
    built = build(bundled, options)
    assert rule_families(built) == versions
    assert {e.address.version for e in decode(table_bytes(built, bundled)).entries} == versions


# ---------------------------------------------------------------------------------------------------- rules


def test_plugin_rules_mirror_the_list_rules(bundled: Snapshot) -> None:
    built = build(bundled)
    text = plugin_rules_text(built)
    assert text == plugin_rules_text(build(bundled))  # deterministic
    plugin = load_rules(text)
    lists = load_rules(built.text)
    assert list(plugin.rules) == list(lists.rules) == [OUTBOUND_RULE, INBOUND_RULE]
    assert not plugin.lists and not plugin.warnings
    assert [(p.name, p.version) for p in plugin.required_plugin_versions] == [(PLUGIN_NAME, PLUGIN_VERSION)]
    assert plugin.required_engine_version == "0.50.0"  # the list rules' (Falco 0.41), above the plugin's
    assert MIN_ENGINE_VERSION == "0.43.0"
    outbound, inbound = plugin.rules[OUTBOUND_RULE], plugin.rules[INBOUND_RULE]
    # the tuning macro, (never_true) by default, is the same as the list rules'
    untuned = " and not ((((evt.num=0))))"
    assert outbound.expanded == (
        "evt.type = connect and (tor.server_is_entry = true) and (evt.rawres >= 0 or evt.res = EINPROGRESS)" + untuned
    )
    assert inbound.expanded == (
        "evt.type in (accept, accept4) and (tor.client_is_exit = true) and evt.rawres >= 0" + untuned
    )
    for name in plugin.rules:
        mine, theirs = plugin.rules[name], lists.rules[name]
        assert (mine.condition, mine.priority, mine.tags, mine.desc) == (
            theirs.condition,
            theirs.priority,
            theirs.tags,
            theirs.desc,
        )
        assert mine.output.startswith(theirs.output) and "%tor.fingerprint" in mine.output
    assert len(text) < 5000 < len(built.text)


def test_plugin_rules_for_other_options(bundled: Snapshot) -> None:
    options = BuildOptions(
        rules=RulesOptions(rules=frozenset({"outbound"}), roles=frozenset({Role.RELAY}), priority="NOTICE")
    )
    ruleset = load_rules(plugin_rules_text(build(bundled, options)))
    assert list(ruleset.rules) == [OUTBOUND_RELAY_RULE]
    assert "(tor.server_is_relay = true)" in ruleset.rules[OUTBOUND_RELAY_RULE].expanded
    assert ruleset.rules[OUTBOUND_RELAY_RULE].priority == "Notice"
    legacy = build(bundled, BuildOptions(rules=RulesOptions(falco_version="0.42")))
    assert load_rules(plugin_rules_text(legacy)).required_engine_version == "0.57.0"


def test_plugin_fields_match_the_c_source() -> None:
    source = source_bytes().decode()
    assert f'#define TORSETS_VERSION "{PLUGIN_VERSION}"' in source
    assert f'#define TORSETS_NAME "{PLUGIN_NAME}"' in source
    assert f'#define TORSETS_REQUIRED_API "{REQUIRED_API_VERSION}"' in source
    assert f'#define TORSETS_EVENT_SCHEMA "{EVENT_SCHEMA_VERSION}"' in source
    assert "#define TABLE_MAX_BYTES (64u * 1024u * 1024u)" in source and MAX_BYTES == 64 * 1024 * 1024
    assert re.findall(r'\\"name\\":\\"(tor\.[a-z_]+)\\"', source) == list(FIELDS)
    assert re.findall(r'set_metric\(&metrics_out\[\d\], "([a-z_]+)"', source) == list(METRICS)
    used = {f for condition in ROLE_CONDITIONS.values() for f in re.findall(r"tor\.[a-z_]+", condition)}
    assert used <= set(FIELDS)


def test_no_plugin_field_is_a_suggested_output() -> None:
    """Issue 12: with addOutput, Falco's default append_output adds the field to every syscall rule's alert."""
    assert "addOutput" not in source_bytes().decode()


def test_plugin_rules_print_each_field_once(bundled: Snapshot) -> None:
    for rule in load_rules(plugin_rules_text(build(bundled))).rules.values():
        fields = re.findall(r"%([a-z0-9_.]+)", rule.output)
        assert len(fields) == len(set(fields)), rule.output
        assert {f for f in fields if f.startswith("tor.")} == {"tor.remote_role", "tor.fingerprint", "tor.nickname"}


def test_falco_config() -> None:
    """A config.d drop-in: only torsets in load_plugins (Falco appends it to the container drop-in's list)."""
    document = yaml.safe_load(falco_config(library="/opt/libtorsets.so", table="/t", check_interval_s=0.5))
    assert document == {
        "load_plugins": ["torsets"],
        "plugins": [
            {
                "name": "torsets",
                "library_path": "/opt/libtorsets.so",
                "init_config": {"table": "/t", "check_interval_s": 0.5},
            }
        ],
    }
    with pytest.raises(UsageError, match="check_interval_s must not be negative"):
        falco_config(check_interval_s=-1)


def test_engine_plugin_is_what_a_replay_loads() -> None:
    """The plugin as an engine stages it: the table is a file the engine copies where it can read it."""
    plugin = engine_plugin(Path("/opt/libtorsets.so"), Path("/t"), check_interval_s=2)
    assert (plugin.name, plugin.library, plugin.files) == (PLUGIN_NAME, Path("/opt/libtorsets.so"), ("table",))
    assert json.dumps(dict(plugin.init_config)) == '{"table": "/t", "check_interval_s": 2}'
    assert dict(engine_plugin(Path("lib.so"), Path("/t")).init_config) == {"table": "/t"}  # the plugin's default
    with pytest.raises(UsageError, match="check_interval_s must not be negative"):
        engine_plugin(Path("lib.so"), Path("/t"), check_interval_s=-0.5)


# ---------------------------------------------------------------------------------------------------- CLI


def test_cli_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugin", "config", "-o", "-", "--table", "/var/lib/tor.table", "--check-interval", "10"]) == 0
    document = yaml.safe_load(capsys.readouterr().out)
    assert document["plugins"][0]["init_config"] == {"table": "/var/lib/tor.table", "check_interval_s": 10}


def test_cli_config_writes_a_drop_in(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    drop_in = tmp_path / "config.d" / DEFAULT_CONFIG_NAME
    assert main(["plugin", "config", "-o", str(drop_in), "--table", "/t"]) == 0
    assert drop_in.read_text() == falco_config(table="/t")
    captured = capsys.readouterr()
    assert captured.out == "" and f"wrote {drop_in}" in captured.err
    assert main(["plugin", "config", "-o", str(drop_in), "--table", "/t"]) == 0
    assert f"unchanged {drop_in}" in capsys.readouterr().err
    assert [p.name for p in drop_in.parent.iterdir()] == [DEFAULT_CONFIG_NAME]  # no temporary file left
    monkeypatch.chdir(tmp_path)
    assert main(["plugin", "config"]) == 0  # default: the drop-in's name in the current folder
    assert yaml.safe_load((tmp_path / DEFAULT_CONFIG_NAME).read_text())["load_plugins"] == ["torsets"]


def test_drop_in_merges_the_way_falco_044_does(tmp_path: Path) -> None:
    """Falco 0.44.1 (userspace/engine/yaml_helper.h, include_config_file, default strategy append): a drop-in's
    sequences are appended to falco.yaml's, files of config.d in name order. Replayed here on the release's own
    files (falco.yaml's load_plugins [] and plugins [container]; config/falco.container_plugin.yaml)."""
    main_config = {"load_plugins": [], "plugins": [{"name": "container", "library_path": "libcontainer.so"}]}
    drop_ins = {
        "falco.container_plugin.yaml": "load_plugins: [container]\n",
        DEFAULT_CONFIG_NAME: falco_config(),
    }
    merged = dict(main_config)
    for name in sorted(drop_ins):
        for key, value in yaml.safe_load(drop_ins[name]).items():
            merged[key] = [*merged.get(key, []), *value] if isinstance(value, list) else value
    assert merged["load_plugins"] == ["container", "torsets"]  # each once: Falco refuses a plugin loaded twice
    assert [p["name"] for p in merged["plugins"]] == ["container", "torsets"]


def test_cli_table_and_inspect(tmp_path: Path, capsys: pytest.CaptureFixture[str], bundled: Snapshot) -> None:
    out = tmp_path / "tor.table"
    assert main(["plugin", "table", "--offline", "-o", str(out)]) == 0
    assert out.read_bytes() == table_bytes(build(bundled), bundled)
    assert "wrote" in capsys.readouterr().err
    assert main(["plugin", "table", "--offline", "-o", str(out)]) == 0
    assert "unchanged" in capsys.readouterr().err
    address = str(min(e.address for e in decode(out.read_bytes()).entries if e.address.version == 4))
    assert main(["plugin", "inspect", str(out), "--lookup", address, "--lookup", "192.0.2.1"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["addresses"] == len(decode(out.read_bytes()).entries)
    assert document["relays_published"] == "2026-02-28T01:00:00Z"
    assert document["lookup"]["192.0.2.1"] is None
    assert re.fullmatch(r"[0-9A-F]{40}", document["lookup"][address]["fingerprint"])


def test_decode_refuses_more_than_the_limit() -> None:
    with pytest.raises(TorSetsError, match=f"more than the {MAX_BYTES}-byte limit"):
        decode(_good() + bytes(MAX_BYTES))


def test_read_table_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    """Issue 13.1, the Python reader (``plugin inspect``): a FIFO is refused before it is opened."""
    fifo = tmp_path / "tor.table"
    os.mkfifo(fifo)
    outcome: list[BaseException | bytes] = []

    def read() -> None:
        try:
            outcome.append(read_table(fifo))
        except TorSetsError as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # blocked in open(): a writer releases it, then the test fails
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(10)
        pytest.fail("read_table blocked on a FIFO")
    assert isinstance(outcome[0], TorSetsError) and "is not a regular file" in str(outcome[0])


def test_read_table_refuses_a_huge_sparse_file(tmp_path: Path) -> None:
    huge = tmp_path / "tor.table"
    with open(huge, "wb") as out:
        out.truncate(MAX_BYTES + 1)
    with pytest.raises(TorSetsError, match=f"{MAX_BYTES + 1} bytes, more than the {MAX_BYTES}-byte limit"):
        read_table(huge)
    good = tmp_path / "good.table"
    good.write_bytes(_good())
    assert read_table(good) == _good()


def test_cli_inspect_refuses_a_huge_file_unread(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    huge = tmp_path / "tor.table"
    with open(huge, "wb") as out:
        out.truncate(MAX_BYTES + 1)
    assert main(["plugin", "inspect", str(huge)]) == 3
    assert capsys.readouterr().err == (
        f"tor-sets: error: {huge} has {MAX_BYTES + 1} bytes, more than the {MAX_BYTES}-byte limit of a table\n"
    )


def test_cli_inspect_bad_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.table"
    bad.write_bytes(b"garbage")
    assert main(["plugin", "inspect", str(bad)]) == 3
    assert "not a tor-sets table" in capsys.readouterr().err


def test_cli_build_without_header(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugin", "build", "-o", str(tmp_path), "--include", str(tmp_path)]) == 3
    assert "has no plugin/plugin_api.h" in capsys.readouterr().err


def test_docs_state_the_measured_table_size_and_the_limit(bundled: Snapshot) -> None:
    """docs/plugin.md names the size of the bundled snapshot's table and the limit: both must stay true."""
    docs = (REPO / "docs" / "plugin.md").read_text()
    stated = re.search(r"The bundled snapshot gives a table of ([\d,]+) bytes", docs)
    assert stated is not None
    assert int(stated[1].replace(",", "")) == len(table_bytes(build(bundled), bundled))
    assert f"more than the {MAX_BYTES}-byte limit" in docs and f"({MAX_BYTES:,} bytes)" in docs
