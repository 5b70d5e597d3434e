"""The command line's errors (issue 14, items 1-5): one line, the exit code of the one table, decided before any I/O.

Every command runs through ``main([...])``; the refusals that must come before any fetch point ``--url`` at the
loopback Onionoo server and check that it received no request. The non-root cases run as ``nobody`` in a forked
child (tests/support/nonroot.py), a real unprivileged process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.nonroot import run_as_nobody
from tests.support.onionoo_server import free_port
from tor_sets.cli import main, make_parser
from tor_sets.cli import types as cli_types
from tor_sets.deploy.refresh import deployment_status

CANARY = "198.51.100.77"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one stderr line of a usage error (exit 2 through SystemExit, as argparse exits)."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured.err
    return captured.err.rstrip("\n")


# --- 1, 5: every value checked by argparse, before anything is fetched ----------------------------------------


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["build", "--falco-version", "banana"],
            "tor-sets build: error: argument --falco-version: not a Falco version: 'banana' (expected e.g. 0.37, "
            "0.42.1 or legacy)",
        ),
        (
            ["refresh", "-o", "{tmp}/r.yaml", "--falco-version", "banana"],
            "tor-sets refresh: error: argument --falco-version: not a Falco version: 'banana' (expected e.g. 0.37, "
            "0.42.1 or legacy)",
        ),
        (
            ["verify", "--falco-version", "banana"],
            "tor-sets verify: error: argument --falco-version: not a Falco version: 'banana' (expected e.g. 0.37, "
            "0.42.1 or legacy)",
        ),
        (
            ["build", "--timeout", "-1"],
            "tor-sets build: error: argument --timeout: expected a positive number of seconds, got '-1'",
        ),
        (
            ["plugin", "table", "--timeout", "nan"],
            "tor-sets plugin table: error: argument --timeout: expected a finite number of seconds, got 'nan'",
        ),
        (
            ["build", "--deadline", "inf"],
            "tor-sets build: error: argument --deadline: expected a finite number of seconds, got 'inf'",
        ),
        (
            ["refresh", "-o", "{tmp}/r.yaml", "--lock-timeout", "nan"],
            "tor-sets refresh: error: argument --lock-timeout: expected a finite number of seconds, got 'nan'",
        ),
        (
            ["build", "--exclude", "10.0.0.1/8"],
            "tor-sets build: error: argument --exclude: '10.0.0.1/8' has host bits set (did you mean '10.0.0.0/8'?)",
        ),
        (
            ["verify", "--exclude", "2001:db8::1/32"],
            "tor-sets verify: error: argument --exclude: '2001:db8::1/32' has host bits set (did you mean "
            "'2001:db8::/32'?)",
        ),
        (
            ["build", "--max-bytes", "0"],
            "tor-sets build: error: argument --max-bytes: expected a positive whole number, got '0'",
        ),
        (
            ["build", "--url", "ftp://127.0.0.1/details"],
            "tor-sets build: error: argument --url: expected an http:// or https:// URL, got 'ftp://127.0.0.1/details'",
        ),
        (
            ["refresh", "-o", "{tmp}/r.yaml", "--every", "3s"],
            "tor-sets refresh: error: argument --every: the period must be at least 1 min, got '3s'",
        ),
        (
            ["refresh", "-o", "{tmp}/r.yaml", "--reload-pid", "0"],
            "tor-sets refresh: error: argument --reload-pid: expected a process id (1 or more), got '0'",
        ),
        (
            ["build", "--max-age", "99999999d"],
            "tor-sets build: error: argument --max-age: '99999999d' is longer than ten years",
        ),
        (
            ["verify", "--size", "5"],
            "tor-sets verify: error: argument --size: expected 10 or more connections, got '5'",
        ),
        (
            ["plugin", "config", "--check-interval", "-1"],
            "tor-sets plugin config: error: argument --check-interval: expected a number of seconds, 0 or more, "
            "got '-1'",
        ),
        (
            ["plugin", "inspect", "{tmp}/tor.table", "--lookup", "not-an-ip"],
            "tor-sets plugin inspect: error: argument --lookup: not an IP address: 'not-an-ip'",
        ),
        (
            ["enrich", "--listen", "127.0.0.1:0", "--forward-timeout", "-1"],
            "tor-sets enrich: error: argument --forward-timeout: expected a positive number of seconds, got '-1'",
        ),
        (
            ["bench", "--thresholds", "2,x"],
            "tor-sets bench: error: argument --thresholds: expected comma-separated whole numbers, each 2 or more, "
            "got '2,x'",
        ),
        (
            ["engines", "install", "--falco-version", "latest"],
            "tor-sets engines install: error: argument --falco-version: expected a Falco release such as 0.44.1, "
            "got 'latest'",
        ),
    ],
)
def test_bad_values_are_one_line_and_exit_2_before_any_fetch(argv, line, tmp_path, onionoo_server, capsys):
    (tmp_path / "tor.table").write_bytes(b"")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if argv[0] in ("build", "refresh") or argv[:2] == ["plugin", "table"]:
        argv += ["--url", onionoo_server.url]
    assert usage_error(argv, capsys) == line.replace("{tmp}", str(tmp_path))
    assert onionoo_server.requests == []


# --- 3: usage errors are one line; a misspelt choice gets a suggestion ------------------------------------------


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["build", "--rules", "outbund"],
            "tor-sets build: error: argument --rules: invalid choice: 'outbund' (did you mean 'outbound'?)",
        ),
        (
            ["build", "--roles", "entry,exitt"],
            "tor-sets build: error: argument --roles: invalid choice: 'exitt' (did you mean 'exit'?)",
        ),
        (
            ["build", "--format", "confimap"],
            "tor-sets build: error: argument --format: invalid choice: 'confimap' (did you mean 'configmap'?)",
        ),
        (
            ["build", "--priority", "warn"],
            "tor-sets build: error: argument --priority: invalid choice: 'warn' (did you mean 'warning'?)",
        ),
        (["biuld"], "tor-sets: error: argument COMMAND: invalid choice: 'biuld' (did you mean 'build'?)"),
        (
            ["engines", "install", "bogus"],
            "tor-sets engines install: error: argument PART: invalid choice: 'bogus' (choose from legacy, modern, "
            "docker, falco, bench, all)",
        ),
        (
            ["engines", "install", "modrn"],
            "tor-sets engines install: error: argument PART: invalid choice: 'modrn' (did you mean 'modern'?)",
        ),
        (
            ["verify", "--engine", "falcoo"],
            "tor-sets verify: error: argument --engine: invalid choice: 'falcoo' (did you mean 'falco'?)",
        ),
        (
            ["build", "--validate", "sysdig-modrn"],
            "tor-sets build: error: argument --validate: invalid choice: 'sysdig-modrn' (did you mean "
            "'sysdig-modern'?)",
        ),
        (["refresh"], "tor-sets refresh: error: the following arguments are required: -o/--output"),
        (["build", "--offline", "--no-such-flag"], "tor-sets: error: unrecognized arguments: --no-such-flag"),
    ],
)
def test_usage_errors_are_one_line_with_a_suggestion(argv, line, capsys):
    assert usage_error(argv, capsys) == line


def test_every_subcommand_parser_prints_one_line():
    """Every parser, nested ones included, is the one-line kind and takes -v."""

    def walk(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
        found = [parser]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    found += walk(sub)
        return found

    parsers = walk(make_parser())
    assert len(parsers) > 15
    for parser in parsers:
        assert type(parser).error is not argparse.ArgumentParser.error, parser.prog
        assert "--verbose" in parser._option_string_actions, parser.prog


# --- 5: each subcommand offers exactly the options it uses ---------------------------------------------------


@pytest.mark.parametrize(
    "flag",
    [
        ["--priority", "info"],
        ["--tags", "a"],
        ["--list-names", "2022"],
        ["--expand-below", "8"],
        ["--rules", "inbound"],
        ["--roles", "exit"],
        ["--falco-version", "0.41"],
        ["--allow-wide"],
    ],
)
def test_plugin_table_offers_no_rule_option(flag, onionoo_server, capsys):
    line = usage_error(["plugin", "table", "--url", onionoo_server.url, *flag], capsys)
    assert line == f"tor-sets: error: unrecognized arguments: {' '.join(flag)}"


def test_refresh_has_no_no_fallback_and_its_offline_help_says_what_refresh_does(capsys):
    assert usage_error(["refresh", "-o", "x.yaml", "--no-fallback"], capsys) == (
        "tor-sets: error: unrecognized arguments: --no-fallback"
    )
    with pytest.raises(SystemExit):
        main(["refresh", "--help"])
    refresh_help = " ".join(capsys.readouterr().out.split())
    assert "--offline do not fetch: deploy the cached download, else the bundled snapshot (needs --allow-fallback)" in (
        refresh_help
    )
    with pytest.raises(SystemExit):
        main(["build", "--help"])
    build_help = " ".join(capsys.readouterr().out.split())
    assert "--offline do not fetch: use the cached download, else the bundled snapshot, with a warning" in build_help
    assert "--no-fallback" in build_help


# --- 2: -v only adds detail ---------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_adds_the_traceback_and_keeps_the_exit_code(where, tmp_path, capsys):
    argv = ["build", "--max-age", "6h", "--offline", "-o", str(tmp_path / "r.yaml")]
    argv = ["-v", *argv] if where == "before" else [*argv, "-v"]
    assert main(argv) == 7
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "StaleDataError" in err
    assert err.splitlines()[-1].startswith("tor-sets: error: relay data from 2026-02-28 01:00 UTC (bundled) is older")


def test_verbose_refresh_failure_keeps_the_code_the_state_records(tmp_path, capsys):
    out = tmp_path / "tor_rules.yaml"
    url = f"http://127.0.0.1:{free_port()}/details"
    argv = ["refresh", "-o", str(out), "--url", url, "--retries", "0", "--timeout", "2", "--validate", "yaml"]
    assert main(["-v", *argv]) == 4
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.splitlines()[-1].startswith("tor-sets: error: ")
    found = deployment_status(out, None)
    assert found.state is not None and found.state.last_failure is not None
    assert found.state.last_failure.exit_code == 4


# --- 4: one exit code for a missing or unreadable input file, in every subcommand -------------------------------

#: every option or argument that names an input file, as ``(prog, argparse's name for it)``, with a command line
#: that names a file there (``{file}``)
INPUTS = {
    ("tor-sets build", "--input/-i"): ["build", "--input", "{file}"],
    ("tor-sets build", "--load-plugin"): ["build", "--validate", "--load-plugin", "container={file}"],
    ("tor-sets refresh", "--input/-i"): ["refresh", "-o", "{tmp}/r.yaml", "--input", "{file}"],
    ("tor-sets plugin table", "--input/-i"): ["plugin", "table", "--input", "{file}"],
    ("tor-sets plugin inspect", "FILE"): ["plugin", "inspect", "{file}"],
    ("tor-sets verify", "--rules"): ["verify", "--rules", "{file}"],
    ("tor-sets verify", "--input/-i"): ["verify", "--input", "{file}"],
    ("tor-sets verify", "--before"): ["verify", "--before", "{file}"],
    ("tor-sets verify", "--load-plugin"): ["verify", "--load-plugin", "container={file}"],
    ("tor-sets bench", "--input/-i"): ["bench", "--input", "{file}"],
    ("tor-sets bench", "--from-json"): ["bench", "--from-json", "{file}", "-o", "{tmp}/out"],
    ("tor-sets enrich", "FILE"): ["enrich", "{file}"],
    ("tor-sets enrich", "--input/-i"): ["enrich", "--input", "{file}"],
    ("tor-sets publish", "--rules"): ["publish", "oci://127.0.0.1:1/tor-rules", "--rules", "{file}"],
    ("tor-sets publish", "--plugin"): ["publish", "oci://127.0.0.1:1/torsets", "--plugin", "{file}"],
    ("tor-sets publish", "--table"): ["publish", "oci://127.0.0.1:1/tor-table", "--table", "{file}"],
    ("tor-sets selftest", "--input/-i"): ["selftest", "--live", "--input", "{file}"],
    ("tor-sets selftest", "--simulate"): ["selftest", "--canary", CANARY, "--sink", "x.json", "--simulate", "{file}"],
}


def _input_options() -> set[tuple[str, str]]:
    """Every (prog, name) of the parser whose type reads a file named on the command line."""
    readers = {cli_types.input_file, cli_types.input_file_or_stdin, cli_types.plugin_library}
    found = set()

    def walk(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)
            elif action.type in readers:
                found.add((parser.prog, "/".join(action.option_strings) or str(action.metavar)))

    walk(make_parser())
    return found


def test_the_walk_covers_every_input_file_option():
    assert set(INPUTS) == _input_options()


@pytest.mark.parametrize("kind", ["missing", "directory"])
@pytest.mark.parametrize("where", sorted(INPUTS))
def test_a_missing_input_file_is_exit_2_in_every_subcommand(where, kind, tmp_path, capsys):
    target = tmp_path / "input"
    if kind == "directory":
        target.mkdir()
    argv = [a.replace("{file}", str(target)).replace("{tmp}", str(tmp_path)) for a in INPUTS[where]]
    line = usage_error(argv, capsys)
    prog, name = where
    reason = "No such file or directory" if kind == "missing" else "it is a directory, not a file"
    assert line == f"{prog}: error: argument {name}: cannot read {target}: {reason}"


def test_publishing_the_default_rules_file_when_it_is_missing_is_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["publish", "oci://127.0.0.1:1/tor-rules"]) == 2
    assert capsys.readouterr().err == (
        "tor-sets: error: cannot read rules file tor_rules.yaml: No such file or directory (name one with --rules)\n"
    )


def test_a_malformed_reference_is_exit_2(tmp_path, capsys):
    rules = tmp_path / "tor_rules.yaml"
    rules.write_text("# relays_published: 2026-02-28 01:00:00 UTC\n")
    assert main(["publish", "http://bad", "--rules", str(rules)]) == 2
    assert capsys.readouterr().err == "tor-sets: error: reference 'http://bad': only oci:// references are accepted\n"


def test_the_exit_codes_are_one_table_in_help_and_in_operations_md(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    shown = capsys.readouterr().out
    doc = (Path(__file__).parents[3] / "docs" / "operations.md").read_text()
    table = doc[doc.index("## Exit codes") :]
    for code in ("0", "1", "2", "3", "4", "5", "6", "7", "130"):
        assert f"\n    {code} " in shown, code
        assert f"\n| {code} " in table, code
    assert "an input file named on the command line that is missing" in " ".join(shown.split())
    assert "an input file named on the command line that is missing" in " ".join(table.split())


# --- 1: no I/O error is a traceback -------------------------------------------------------------------------


MAIN = "import sys; from tor_sets.cli import main; sys.exit(main())"


def test_a_broken_pipe_is_one_line_and_exit_3(tmp_path):
    """stdout whose reader is gone (``| head`` that has exited): no traceback, one line, exit 3."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [sys.executable, "-c", MAIN, "build", "--offline", "-o", "-"],
            stdout=write,
            stderr=subprocess.PIPE,
            env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")},
            timeout=120,
            check=False,
        )
    finally:
        os.close(write)
    err = done.stderr.decode()
    assert done.returncode == 3, err
    assert "Traceback" not in err and err.splitlines()[-1] == "tor-sets: error: Broken pipe"


# --- 1: as a non-root user ------------------------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="drops to nobody, which needs root")


def _cache_with_a_download(cache: Path, bundled_bytes: bytes) -> None:
    import gzip

    cache.mkdir(parents=True)
    (cache / "details.json.gz").write_bytes(gzip.compress(bundled_bytes))


@needs_root
@pytest.mark.parametrize("how", ["folder-000", "inside-a-000-folder"])
def test_offline_build_with_an_unreadable_cache_falls_back_as_non_root(how, tmp_path, bundled_bytes):
    parent = tmp_path / "root-only"
    cache = parent / "cache"
    _cache_with_a_download(cache, bundled_bytes)
    (cache if how == "folder-000" else parent).chmod(0o000)
    try:
        ran = run_as_nobody(["build", "--offline", "--cache-dir", str(cache), "-o", "-"], tmp_path)
    finally:
        parent.chmod(0o755)
        cache.chmod(0o755)
    assert ran.code == 0, ran.stderr
    assert "Traceback" not in ran.stderr
    assert "using the bundled snapshot of 2026-02-28 01:00 UTC" in ran.stderr
    assert ran.stdout.startswith("# Tor relay rules for Falco")


@needs_root
@pytest.mark.parametrize(
    "argv",
    [["engines", "list"], ["engines", "list", "--json"], ["engines", "install", "falco"], ["engines", "install"]],
)
def test_engines_as_non_root_is_one_line_not_a_traceback(argv, tmp_path):
    """With root's engine cache (HOME=/root kept by sudo): nothing in it may be read, nothing may be run."""
    cache = tmp_path / "root-cache"
    (cache / "tor-sets" / "engines" / "falco").mkdir(parents=True)
    cache.chmod(0o700)  # root's, as ~/.cache is
    ran = run_as_nobody(argv, tmp_path, env={"XDG_CACHE_HOME": str(cache)})
    assert "Traceback" not in ran.stderr, ran.stderr
    if argv[1] == "list":
        assert ran.code == 0
        if "--json" in argv:
            engines = json.loads(ran.stdout)["engines"]
            assert engines and not any(e["present"] for e in engines)
            assert all(e["reason"].startswith(e["name"] + ": ") for e in engines)
        else:
            assert "cannot read the engine cache" in ran.stdout or "cannot read the engine root" in ran.stdout
    else:
        assert ran.code == 3
        assert ran.stderr.count("\n") == 1 and ran.stderr.startswith("tor-sets: error: ")


@needs_root
def test_an_input_file_nobody_may_read_is_exit_2_as_non_root(tmp_path, bundled_bytes):
    secret = tmp_path / "details.json"
    secret.write_bytes(bundled_bytes)
    secret.chmod(0o600)
    ran = run_as_nobody(["build", "--input", str(secret), "-o", "-"], tmp_path)
    assert ran.code == 2
    assert ran.stderr == f"tor-sets build: error: argument --input/-i: cannot read {secret}: Permission denied\n"
