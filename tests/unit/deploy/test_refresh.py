"""tor_sets.deploy.refresh, `tor-sets refresh` and `status` without network or engines: guards, validation, state."""

from __future__ import annotations

import dataclasses
import doctest
import json
import re
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import REPO
from tor_sets.build import BuildOptions, build
from tor_sets.cli import main
from tor_sets.cli.flags import with_flags
from tor_sets.deploy.refresh import (
    Deployed,
    Failure,
    Guards,
    RefreshOptions,
    State,
    Stop,
    Stopped,
    check_guards,
    deployment_status,
    read_state,
    refresh,
    validate_rules,
)
from tor_sets.deploy.refresh import guards as guards_module
from tor_sets.deploy.refresh import lock as lock_module
from tor_sets.deploy.refresh import reload as reload_module
from tor_sets.deploy.refresh import run as run_module
from tor_sets.deploy.refresh import state as state_module
from tor_sets.deploy.refresh import validate as validate_module
from tor_sets.deploy.refresh.lock import lock_path
from tor_sets.deploy.refresh.state import legacy_state_path, options_digest, state_dir, state_path
from tor_sets.errors import RuleError, SanityError, StaleDataError, TorSetsError, UsageError
from tor_sets.falco.generate import RulesOptions
from tor_sets.onionoo import obtain
from tor_sets.relays import Role, format_age


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def _doc(folder: Path, bundled_bytes: bytes, published: str, keep: float = 1.0) -> Path:
    doc = json.loads(bundled_bytes)
    doc["relays_published"] = published
    doc["relays"] = doc["relays"][: int(len(doc["relays"]) * keep)]
    path = folder / f"details-{published[:10]}-{keep}.json"
    path.write_text(json.dumps(doc))
    return path


def _options(out: Path, source: Path, **kw: object) -> RefreshOptions:
    return RefreshOptions(output=out, input_path=source, validate="yaml", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "module",
    [guards_module, lock_module, reload_module, run_module, state_module, validate_module],
    ids=lambda m: m.__name__,
)
def test_doctests(module):
    assert doctest.testmod(module).failed == 0


# ---------------------------------------------------------------------------------------------------- guards


def _deployed(relays: int = 9491, **counts: int) -> Deployed:
    base = {"entry_ipv4": 4177, "entry_ipv6": 1921, "exit_ipv4": 1217, "exit_ipv6": 815}
    now = datetime(2026, 3, 1, tzinfo=UTC)
    return Deployed(
        "0" * 64, 1, datetime(2026, 2, 28, 1), relays, {**base, **counts}, "live", "u", "yaml", "d", now, now
    )


@pytest.mark.parametrize(
    ("previous", "guards", "message"),
    [
        (None, Guards(), None),
        (_deployed(), Guards(), None),
        (_deployed(relays=20000), Guards(), r"running relays 20000 -> 9491 \(-53 %\)"),
        (_deployed(exit_ipv6=2000), Guards(), r"^exit IPv6 addresses 2000 -> 815 \(-59 %\) since the last good"),
        (_deployed(exit_ipv6=1600), Guards(), None),  # -49 %
        (_deployed(exit_ipv6=2000), Guards(max_drop=0.6), None),
        (_deployed(exit_ipv6=2000), Guards(max_drop=1.0), None),
        (_deployed(entry_ipv4=9000, exit_ipv4=3000), Guards(), r"entry IPv4 .*, exit IPv4 addresses 3000 -> 1217"),
        (_deployed(), Guards(min_relays=10000), r"^only 9491 running relays in the data \(at least 10000 required"),
    ],
)
def test_guards(bundled, previous, guards, message):
    built = build(bundled)
    if message is None:
        check_guards(bundled, built, guards, previous)
        return
    with pytest.raises(SanityError, match=message) as info:
        check_guards(bundled, built, guards, previous)
    assert info.value.exit_code == 5 and "\n" not in str(info.value)


def test_counts_under_the_floor_are_not_compared(bundled):
    few = dataclasses.replace(bundled, relays=bundled.relays[:20])
    built = build(few, BuildOptions(rules=RulesOptions(rules=frozenset({"outbound"}), roles=frozenset({Role.ENTRY}))))
    new = built.sets.counts()
    assert 0 < new["entry_ipv4"] < 19 and new["exit_ipv6"] < 19
    below = _deployed(relays=20, entry_ipv4=19, entry_ipv6=19, exit_ipv4=19, exit_ipv6=19)
    check_guards(few, built, Guards(min_relays=0, max_drop=0.01), below)
    above = _deployed(relays=20, entry_ipv4=100, entry_ipv6=19, exit_ipv4=19, exit_ipv6=19)
    with pytest.raises(SanityError, match=r"^entry IPv4 addresses 100 -> \d+ \(-\d+ %\) since"):
        check_guards(few, built, Guards(min_relays=0, max_drop=0.01), above)


# ---------------------------------------------------------------------------------------------------- validation


def test_validate_yaml_accepts_built_rules_and_none_does_nothing(bundled):
    text = build(bundled).text
    assert validate_rules(text, "yaml") == "yaml"
    assert validate_rules("not: [rules", "none") == "none"
    with pytest.raises(UsageError, match="validate must be one of"):
        validate_rules(text, "maybe")


GOOD_RULE = "- rule: r\n  desc: d\n  condition: evt.type = connect\n  output: o\n  priority: WARNING\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- list: [unclosed\n", r"not valid YAML"),
        ("rule: r\n", r"not a YAML sequence of items"),
        ("", r"not a YAML sequence of items"),
        ("- just a string\n", r"item 1 of the new rules is not a mapping"),
        ("- list: l\n  items:\n" + GOOD_RULE, r"list 'l': 'items' is not a sequence"),
        ("- rule: r\n  desc: d\n  condition: evt.type = connect\n  priority: WARNING\n", r"rule 'r': missing output"),
        ("- list: l\n  items: [a]\n", r"holds no rule"),
        (GOOD_RULE.replace("evt.type = connect", "tor_macro_missing and evt.type = connect"), r"cannot resolve"),
        (GOOD_RULE.replace("evt.type = connect", "evt.type = = ("), r"the new rules failed validation"),
    ],
)
def test_validate_yaml_refuses(text, message):
    with pytest.raises(RuleError, match=message) as info:
        validate_rules(text, "yaml")
    assert info.value.exit_code == 6
    assert str(info.value).startswith("the new rules failed validation: ")


# ---------------------------------------------------------------------------------------------------- state


def test_state_round_trip_and_broken_states(tmp_path):
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    state = State("/r/tor_rules.yaml", _deployed(), Failure(at, 4, "HTTP 503"), reload_pending=True)
    path = tmp_path / "s.json"
    path.write_text(state.to_json())
    assert read_state(path) == state
    doc = json.loads(path.read_text())
    assert doc["schema"] == 1 and list(doc) == sorted(doc)
    assert read_state(tmp_path / "missing.json") is None
    for broken in ("{", "[]", '{"schema": 99, "rules": "x"}', '{"schema": 1, "rules": "x", "deployed": {}}'):
        path.write_text(broken)
        with pytest.raises(TorSetsError, match="unreadable state file"):
            read_state(path)


def test_options_digest_is_stable_across_processes_and_follows_the_options():
    options = BuildOptions(rules=RulesOptions(roles=frozenset({Role.ENTRY, Role.EXIT, Role.RELAY})))
    code = (
        "from tor_sets.build import BuildOptions; from tor_sets.falco.generate import RulesOptions; "
        "from tor_sets.relays import Role; from tor_sets.deploy.refresh.state import options_digest; "
        "print(options_digest(BuildOptions(rules=RulesOptions(roles=frozenset({Role.ENTRY, Role.EXIT, Role.RELAY})))))"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            env={"PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2", "3")
    }
    assert digests == {options_digest(options)}
    assert options_digest(BuildOptions(rules=RulesOptions(priority="NOTICE"))) != options_digest(BuildOptions())


# ---------------------------------------------------------------------------------------------------- stop


def test_stop_raises_between_steps_and_waits_inside_critical_sections():
    stop = Stop()
    stop.checkpoint()
    with stop.critical():
        stop.handle(signal.SIGTERM)  # recorded, not raised
        assert stop.requested
    with pytest.raises(Stopped) as info:
        stop.checkpoint()
    assert info.value.signum == signal.SIGTERM
    with pytest.raises(Stopped):
        Stop().handle(signal.SIGINT)
    assert not isinstance(Stopped(15), Exception)  # no `except Exception` on the way swallows it


# ---------------------------------------------------------------------------------------------------- refresh


def test_write_unchanged_kept_and_options_change(tmp_path, bundled_bytes):
    out = tmp_path / "rules.d" / "tor_rules.yaml"
    march = _doc(tmp_path, bundled_bytes, "2026-03-01 00:00:00")
    first = refresh(_options(out, march))
    assert first.action == "wrote" and first.validated == "yaml" and first.reloaded is None
    deployed = first.state.deployed
    assert deployed is not None and deployed.origin == "file" and deployed.relays == 9491
    assert deployed.counts["exit_ipv4"] == 1217 and deployed.source == str(march)
    assert first.state.rules == str(out.absolute())
    again = refresh(_options(out, march))
    assert again.action == "unchanged" and again.validated is None
    assert again.state.deployed is not None and again.state.deployed.changed_at == deployed.changed_at
    february = _doc(tmp_path, bundled_bytes, "2026-02-01 00:00:00")
    kept = refresh(_options(out, february))
    assert kept.action == "kept" and "older than the deployed data of 2026-03-01 00:00 UTC" in kept.warnings[0]
    text = out.read_text()
    assert "relays_published: 2026-03-01 00:00:00 UTC" in text
    notice = refresh(_options(out, march, build=BuildOptions(rules=RulesOptions(priority="NOTICE"))))
    assert notice.action == "wrote" and "priority: NOTICE" in out.read_text()
    # state and lock live outside the rules folder, which Falco before 0.41 loads whole
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith("tor_rules")) == ["tor_rules.yaml"]
    assert state_path(out).is_file() and lock_path(out).is_file() and state_path(out).parent == state_dir()


def test_stale_is_reported_not_hidden(tmp_path, bundled_bytes):
    out = tmp_path / "tor_rules.yaml"
    march = _doc(tmp_path, bundled_bytes, "2026-03-01 00:00:00")
    now = datetime(2026, 3, 1, 7, tzinfo=UTC)
    fresh = refresh(_options(out, march, max_age=timedelta(hours=8)), now=lambda: now)
    assert fresh.stale is None
    stale = refresh(_options(out, march, max_age=timedelta(hours=6)), now=lambda: now)
    assert stale.action == "unchanged"
    assert stale.stale == (
        "the newest good relay data (of 2026-03-01 00:00 UTC) is 7.0 h old, older than the allowed 6.0 h (max_age)"
    )


def test_an_unreadable_state_is_replaced_with_a_warning(tmp_path, bundled_bytes, capsys):
    out = tmp_path / "tor_rules.yaml"
    march = _doc(tmp_path, bundled_bytes, "2026-03-01 00:00:00")
    state_path(out).parent.mkdir(parents=True, exist_ok=True)
    state_path(out).write_text("{not json")
    assert main(["refresh", "-o", str(out), "--input", str(march), "--validate", "yaml"]) == 0
    assert "unreadable state file" in capsys.readouterr().err
    assert read_state(state_path(out)) is not None


def test_cli_refresh_state_option_and_drop_guard(tmp_path, bundled_bytes, capsys):
    out = tmp_path / "tor_rules.yaml"
    state_file = tmp_path / "var" / "state.json"
    march = _doc(tmp_path, bundled_bytes, "2026-03-01 00:00:00")
    lock = tmp_path / "var" / "refresh.lock"
    argv = ["refresh", "-o", str(out), "--validate", "yaml", "--state", str(state_file), "--lock", str(lock)]
    assert main([*argv, "--input", str(march)]) == 0
    assert state_file.exists() and lock.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("tor_rules")) == ["tor_rules.yaml"]
    assert main(["status", str(out), "--state", str(state_file)]) == 0
    smaller = _doc(tmp_path, bundled_bytes, "2026-03-02 00:00:00", keep=0.45)
    good = out.read_bytes()
    capsys.readouterr()
    assert main([*argv, "--input", str(smaller), "--min-relays", "100"]) == 5
    assert "more than the allowed drop of 50 % (--max-drop)" in capsys.readouterr().err
    assert main([*argv, "--input", str(smaller), "--min-relays", "100", "--max-drop", "70"]) == 0
    assert out.read_bytes() != good


# ---------------------------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    "argv",
    [
        ["-o", "-"],
        ["-o", "x.yaml", "--offline"],
        ["-o", "x.yaml", "--allow-fallback", "--no-fallback"],
        ["-o", "x.yaml", "--reload-pid", "1", "--reload-cmd", "true"],
        ["-o", "x.yaml", "--reload-cmd", "'unclosed"],
        ["-o", "x.yaml", "--max-drop", "150"],
        ["-o", "x.yaml", "--every", "0s"],
        ["-o", "x.yaml", "--validate", "maybe"],
        ["-o", "x.yaml", "--validate", "yaml", "--engine", "sysdig-modern"],
        ["-o", "x.yaml", "--lock-timeout", "-1"],
        [],
    ],
)
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["refresh", *argv])
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["refresh", "--help"])
    out = capsys.readouterr().out
    for line in (
        "0    the rules were updated",
        "4    upstream failure",
        "5    a sanity guard tripped",
        "6    validation failure",
        "7    stale",
        "--allow-fallback",
        "--reload-cmd",
        "--every",
    ):
        assert line in out
    with pytest.raises(SystemExit):
        main(["status", "--help"])
    assert "1  it is missing, differs from the state" in capsys.readouterr().out


def test_status_of_missing_built_and_refreshed_files(tmp_path, bundled_bytes, capsys):
    out = tmp_path / "tor_rules.yaml"
    assert main(["status", str(out)]) == 1
    text = capsys.readouterr().out
    assert "(missing)" in text and "no state file" in text
    assert main(["build", "--offline", "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["status", str(out)]) == 1
    assert "relays_published 2026-02-28 01:00 UTC (from the header)" in capsys.readouterr().out
    march = _doc(tmp_path, bundled_bytes, "2026-03-01 00:00:00")
    assert main(["refresh", "-o", str(out), "--input", str(march), "--validate", "yaml"]) == 0
    capsys.readouterr()
    assert main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "file:          intact" in text and "origin file" in text and "validated:     yaml" in text
    assert main(["status", str(out), "--max-age", "6h"]) == 7
    assert "STALE, older than --max-age" in capsys.readouterr().out
    assert main(["status", str(out), "--json", "--max-age", "3650d"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == 1 and doc["stale"] is False and doc["matches_state"] is True
    assert doc["state"]["deployed"]["relays_published"] == "2026-03-01 00:00:00"
    assert list(doc) == sorted(doc)
    found = deployment_status(out)
    assert found.exists and found.matches and found.age is not None


def test_the_loop_ends_with_exit_7_when_the_data_grows_stale(tmp_path, bundled_bytes):
    from tor_sets.deploy.refresh import run_every

    march = _doc(tmp_path, bundled_bytes, "2026-03-01 00:00:00")
    options = _options(tmp_path / "tor_rules.yaml", march, max_age=timedelta(hours=6))
    outcomes: list[object] = []
    with pytest.raises(StaleDataError, match=r"older than the allowed 6.0 h \(max_age\)$") as info:
        run_every(options, timedelta(seconds=0.01), stop=Stop(), iterations=5, on_outcome=outcomes.append)
    assert info.value.exit_code == 7 and len(outcomes) == 1  # deployed, reported, then the loop ended
    assert (tmp_path / "tor_rules.yaml").exists()


# ---------------------------------------------------------------------------------------------------- future dates


def test_data_published_in_the_future_is_refused(tmp_path, bundled_bytes, capsys):
    out = tmp_path / "tor_rules.yaml"
    march = _doc(tmp_path, bundled_bytes, "2026-03-01 00:00:00")
    assert main(["refresh", "-o", str(out), "--input", str(march), "--validate", "yaml"]) == 0
    good = out.read_bytes()
    future = _doc(tmp_path, bundled_bytes, "2099-01-01 00:00:00")
    capsys.readouterr()
    assert main(["refresh", "-o", str(out), "--input", str(future), "--validate", "yaml"]) == 4
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert re.fullmatch(
        r"tor-sets: error: relays_published 2099-01-01 00:00 UTC lies \d+ days in the future \(more than the "
        r"allowed clock skew of 1 h\); refusing the data \(is this host's clock right\?\)",
        line,
    ), line
    assert out.read_bytes() == good
    assert main(["build", "--input", str(future), "-o", str(tmp_path / "b.yaml")]) == 4
    assert not (tmp_path / "b.yaml").exists()


def _future_state(out: Path) -> None:
    """What an earlier version left after accepting a document dated 2099: the deployed data's date in the future."""
    path = state_path(out)
    doc = json.loads(path.read_text())
    doc["deployed"]["relays_published"] = "2099-01-01 00:00:00"
    path.write_text(json.dumps(doc))


def test_a_future_dated_state_is_ignored_with_a_warning_so_refresh_recovers(tmp_path, bundled_bytes, capsys):
    out = tmp_path / "tor_rules.yaml"
    march = _doc(tmp_path, bundled_bytes, "2026-03-01 00:00:00")
    argv = ["refresh", "-o", str(out), "--validate", "yaml"]
    assert main([*argv, "--input", str(march)]) == 0
    _future_state(out)
    assert main(["status", str(out)]) == 1
    report = capsys.readouterr().out
    assert re.search(r"^age: +-\d+ days — ERROR: the deployed data is dated in the future", report, re.M), report
    assert main(["status", str(out), "--json", "--max-age", "6h"]) == 1
    assert json.loads(capsys.readouterr().out)["future"] is True
    april = _doc(tmp_path, bundled_bytes, "2026-04-01 00:00:00")
    assert main([*argv, "--input", str(april)]) == 0
    err = capsys.readouterr().err
    assert (
        "WARNING: the state records relay data of 2099-01-01 00:00 UTC, in the future; ignoring it for the rollback "
        "and drop checks"
    ) in err, err
    assert "wrote" in err
    state = read_state(state_path(out))
    assert state is not None and state.deployed is not None
    assert state.deployed.relays_published == datetime(2026, 4, 1)
    assert main(["status", str(out)]) == 0


def test_a_state_left_beside_the_rules_by_an_older_version_is_moved_out(tmp_path, bundled_bytes, capsys):
    """Issue 14.16: PATH.state.json in the rules folder breaks Falco before 0.41; a refresh moves it, saying so."""
    out = tmp_path / "rules.d" / "tor_rules.yaml"
    march = _doc(tmp_path, bundled_bytes, "2026-03-01 00:00:00")
    argv = ["refresh", "-o", str(out), "--validate", "yaml", "--input", str(march)]
    assert main(argv) == 0
    legacy = legacy_state_path(out)
    state_path(out).rename(legacy)  # where versions before 0.2 kept it
    assert main(["status", str(out)]) == 0  # status finds it there meanwhile
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"moved the refresh state from {legacy} to {state_path(out)}" in err
    assert not legacy.exists() and read_state(state_path(out)) is not None
    assert "unchanged" in err  # the moved state is the memory of the deployment: nothing was rewritten


# ---------------------------------------------------------------------------------------------------- messages


def test_the_library_names_option_fields_and_the_cli_shows_flags(tmp_path, bundled_bytes, capsys):
    """Issue 15.4: a guard's SanityError names ``min_relays``; the error line and ``status`` show ``--min-relays``."""
    march = _doc(tmp_path, bundled_bytes, "2026-03-01 00:00:00")
    out = tmp_path / "tor_rules.yaml"
    with pytest.raises(
        SanityError, match=r"^only 9491 running relays in the data \(at least 10000 required, min_relays\)$"
    ):
        refresh(_options(out, march, guards=Guards(min_relays=10000)))
    state = read_state(state_path(out))
    assert state is not None and state.last_failure is not None
    assert state.last_failure.message.endswith("(at least 10000 required, min_relays)")
    capsys.readouterr()
    assert main(["refresh", "-o", str(out), "--input", str(march), "--validate", "yaml", "--min-relays", "10000"]) == 5
    assert capsys.readouterr().err == (
        "tor-sets: error: only 9491 running relays in the data (at least 10000 required, --min-relays)\n"
    )
    assert main(["status", str(out)]) == 1
    (failure,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("last failure:")]
    assert failure.endswith("exit 5: only 9491 running relays in the data (at least 10000 required, --min-relays)")


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        ("gave up waiting after 0.3 s (lock_timeout)", "gave up waiting after 0.3 s (--lock-timeout)"),
        ("not sending SIGHUP (reload.pid)", "not sending SIGHUP (--reload-pid)"),
        (
            "allowed 6.0 h (max_age); this refresh failed: ... (max_drop)",
            "allowed 6.0 h (--max-age); this refresh failed: ... (--max-drop)",
        ),
        ("cannot read /srv/max_age/min_relays.json: ...", "cannot read /srv/max_age/min_relays.json: ..."),
        ("https://host/x?max_age=1 failed", "https://host/x?max_age=1 failed"),
        ("the_min_relays_field", "the_min_relays_field"),
    ],
)
def test_with_flags_replaces_fields_only(message, shown):
    assert with_flags(message) == shown


def test_offline_without_fallback_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="^offline mode needs allow_fallback"):
        refresh(RefreshOptions(output=tmp_path / "tor_rules.yaml", offline=True, validate="yaml"))


# ---------------------------------------------------------------------------------------------------- ages


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(seconds=42), "42 s"),
        (timedelta(seconds=90), "90 s"),
        (timedelta(minutes=30), "30 min"),
        (timedelta(minutes=90), "1.5 h"),
        (timedelta(hours=47), "47.0 h"),
        (timedelta(days=274), "274 days"),
        (timedelta(days=-26330), "-26330 days"),
    ],
)
def test_one_age_format(delta, text):
    assert format_age(delta) == text


def test_every_age_in_messages_has_the_one_format(tmp_path, bundled_bytes, capsys):
    """The download's age check said "0.5 h" and `status` "90 min" where refresh said "30 min" and "1.5 h"."""
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    doc = _doc(tmp_path, bundled_bytes, f"{now - timedelta(minutes=90):%Y-%m-%d %H:%M:%S}")
    with pytest.raises(StaleDataError, match=r"older than the allowed 30 min$"):
        obtain(input_path=doc, max_age=timedelta(minutes=30))
    out = tmp_path / "tor_rules.yaml"
    assert main(["refresh", "-o", str(out), "--input", str(doc), "--validate", "yaml"]) == 0
    capsys.readouterr()
    assert main(["status", str(out)]) == 0
    (age,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("age:")]
    assert re.fullmatch(r"age: +1\.5 h", age), age
