"""`tor-sets build` through main(): flags, outputs, errors, and the last good file left alone."""

from __future__ import annotations

import pytest
import yaml

from tests.support.onionoo_server import free_port
from tor_sets.cli import main


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def test_build_offline_writes_the_bundled_rules(tmp_path, capsys):
    out = tmp_path / "tor_rules.yaml"
    assert main(["build", "--offline", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "WARNING: live relay data unavailable (offline mode); using the bundled snapshot of 2026-02-28" in err
    assert "WARNING: WARNING" not in err
    assert f"wrote {out}" in err and "6620 list items" in err
    assert main(["build", "--offline", "-o", str(out)]) == 0
    assert f"unchanged {out}" in capsys.readouterr().err


def test_build_to_stdout_with_options(data_dir, capsys):
    code = main(
        [
            "build",
            "--input",
            str(data_dir / "onionoo" / "details-fullschema-limit2-2021-09-30.json"),
            "--rules",
            "outbound",
            "--roles",
            "entry",
            "--families",
            "ipv4",
            "--priority",
            "notice",
            "--tags",
            "a,b",
            "-o",
            "-",
        ]
    )
    assert code == 0
    items = yaml.safe_load(capsys.readouterr().out)
    (rule,) = [i for i in items if "rule" in i]
    assert rule["priority"] == "NOTICE" and rule["tags"] == ["a", "b"]
    assert [i["items"] for i in items if i.get("list") == "tor_entry_ipv4_addresses"] == [["165.22.200.169"]]


@pytest.mark.parametrize(
    "argv",
    [
        ["--rules", "sideways"],
        ["--priority", "loud"],
        ["--families", "ipv5"],
        ["--expand-below", "1"],
        ["--canary", "not-an-ip"],
        ["--max-age", "soon"],
    ],
)
def test_bad_flags_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["build", "--offline", *argv])
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_failures_leave_the_last_good_rules_untouched(tmp_path, capsys, data_dir):
    out = tmp_path / "tor_rules.yaml"
    assert main(["build", "--offline", "-o", str(out)]) == 0
    good = out.read_bytes()
    url = f"http://127.0.0.1:{free_port()}/details"
    assert main(["build", "--url", url, "--no-fallback", "-o", str(out)]) == 4
    assert "tor-sets: error: cannot connect to" in capsys.readouterr().err
    assert main(["build", "--offline", "--max-age", "6h", "-o", str(out)]) == 7
    assert "older than the allowed 6.0 h" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": "9.0"}')
    assert main(["build", "--input", str(bad), "-o", str(out)]) == 4
    assert "major version 8" in capsys.readouterr().err
    assert main(["build", "--offline", "--exclude", "0.0.0.0/0", "--exclude", "::/0", "-o", str(out)]) == 5
    assert main(["build", "--offline", "--canary", "8.8.8.8", "-o", str(out)]) == 2
    assert "not a documentation address" in capsys.readouterr().err
    assert out.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "xdg") == ["bad.json", "tor_rules.yaml"]


def test_legacy_and_2022_names(tmp_path):
    out = tmp_path / "legacy.yaml"
    assert main(["build", "--offline", "--falco-version", "0.31", "--list-names", "2022", "-o", str(out)]) == 0
    items = yaml.safe_load(out.read_text())
    names = {i["list"] for i in items if "list" in i}
    assert {"tor_ipv4_entry_nodes", "tor_ipv6_entry_nodes", "tor_ipv4_exit_nodes", "tor_ipv6_exit_nodes"} <= names
    assert not any("required_engine_version" in i for i in items)
    assert not any(":" in v and "/" in v for i in items if "list" in i for v in i["items"])


def test_2022_files_are_the_old_tools_four_files_from_the_same_relays(tmp_path, capsys):
    """``--format 2022-files``: the baseline the docs compare with, one file per role and family, in a folder."""
    from tor_sets.build import BuildOptions, build
    from tor_sets.falco import render_2022
    from tor_sets.onionoo import bundled_snapshot

    folder = tmp_path / "tor-2022"
    assert main(["build", "--offline", "--format", "2022-files", "-o", str(folder)]) == 0
    expected = render_2022(build(bundled_snapshot(), BuildOptions()).sets)
    assert {p.name: p.read_text() for p in folder.iterdir()} == expected
    for text in expected.values():
        assert yaml.safe_load(text)  # each file is YAML Falco reads
    assert "the 2022 tool's files from the same 9491 relays" in capsys.readouterr().err
    assert main(["build", "--offline", "--format", "2022-files", "-o", "-"]) == 2
    (tmp_path / "file").write_text("x")
    assert main(["build", "--offline", "--format", "2022-files", "-o", str(tmp_path / "file")]) == 2
    assert (tmp_path / "file").read_text() == "x"
    assert "is not one" in capsys.readouterr().err


# --- issue 14.7: the summary line and the `# addresses:` header count only what the file holds --------------------

_ROLE_OF_MACRO = {"tor_entry_relay_server": "entry", "tor_exit_relay_client": "exit", "tor_relay_server": "relay"}


def held_by_the_file(items: list[dict]) -> dict[str, int]:
    """Addresses per role and family, counted from the file's own lists: those each role macro reads (an address
    item counts one, a network its size; every address is in one list of a macro)."""
    import ipaddress
    import re

    lists = {i["list"]: i["items"] for i in items if "list" in i}
    counts: dict[str, int] = {}
    for item in items:
        role = _ROLE_OF_MACRO.get(item.get("macro", ""))
        if role is None:
            continue
        for name in re.findall(r"\b\w+\b", item["condition"]):
            for value in lists.get(name, []):
                network = ipaddress.ip_network(value)
                key = f"{role}_ipv{network.version}"
                counts[key] = counts.get(key, 0) + network.num_addresses
    return counts


@pytest.mark.parametrize(
    "options",
    [
        [],
        ["--families", "ipv4"],
        ["--families", "ipv6"],
        ["--rules", "outbound"],
        ["--rules", "inbound"],
        ["--roles", "entry,exit,relay"],
        ["--rules", "outbound", "--roles", "relay"],
        ["--list-names", "2022", "--families", "ipv4"],
        ["--falco-version", "0.31", "--rules", "inbound"],
    ],
)
def test_the_summary_and_the_header_count_what_the_file_holds(options, tmp_path, capsys):
    out = tmp_path / "tor_rules.yaml"
    assert main(["build", "--offline", *options, "-o", str(out)]) == 0
    text = out.read_text()
    items = yaml.safe_load(text)
    held = held_by_the_file(items)
    # the header, e.g. "# addresses: entry_ipv4 4177, exit_ipv4 1217"
    (header,) = [line for line in text.splitlines() if line.startswith("# addresses: ")]
    assert header == "# addresses: " + ", ".join(f"{k} {held[k]}" for k in sorted(held, key=_role_order))
    # the summary: list items and networks of the lists written, then the addresses per role and family
    err = capsys.readouterr().err.splitlines()
    lists = [i["items"] for i in items if "list" in i]
    networks = sum(1 for values in lists for v in values if "/" in v)
    assert f"bytes, {sum(map(len, lists))} list items ({networks} networks) from 9491 relays" in err[-2]
    by_role: dict[str, list[str]] = {}
    for key in sorted(held, key=_role_order):
        role, family = key.split("_ipv")
        by_role.setdefault(role, []).append(f"{held[key]} IPv{family}")
    assert err[-1] == "tor-sets: " + ", ".join(f"{role}: {' + '.join(parts)}" for role, parts in by_role.items())
    if "--families" in options:
        other = "ipv6" if "ipv4" in options else "ipv4"
        assert other not in header and f"IPv{other[-1]}" not in err[-1]


def _role_order(key: str) -> tuple[int, str]:
    return (["entry", "exit", "relay"].index(key.split("_")[0]), key)


def test_plugin_rules_and_the_table_count_what_they_hold(tmp_path, capsys):
    from tor_sets.plugin.table import decode

    rules = tmp_path / "tor_plugin_rules.yaml"
    assert main(["build", "--offline", "--format", "falco-plugin", "-o", str(rules)]) == 0
    err = capsys.readouterr().err.splitlines()
    items = yaml.safe_load(rules.read_text())
    assert not [i for i in items if "list" in i] and "# addresses:" not in rules.read_text()
    count = sum(1 for i in items if "rule" in i)
    assert f"bytes, {count} rules on the plugin's tor.* fields (no lists: see its table) from 9491 relays" in err[-1]
    assert "list items" not in "".join(err)

    table_path = tmp_path / "tor.table"
    assert main(["build", "--offline", "--format", "plugin-table", "--families", "ipv6", "-o", str(table_path)]) == 0
    err = capsys.readouterr().err.splitlines()
    table = decode(table_path.read_bytes())
    assert f"bytes, a table of {len(table.entries)} addresses from 9491 relays" in err[-2]
    assert all(e.address.version == 6 for e in table.entries)
    entry = sum(1 for e in table.entries if e.roles & 1)
    exit_ = sum(1 for e in table.entries if e.roles & 2)
    assert err[-1] == f"tor-sets: entry: {entry} IPv6, exit: {exit_} IPv6, relay: {len(table.entries)} IPv6"
