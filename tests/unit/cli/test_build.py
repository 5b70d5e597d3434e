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
