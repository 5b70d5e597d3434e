"""Real Falco loads every rules file and example tor-sets writes, without a warning, and the tuning hook works.

``falco -V`` (:meth:`FalcoLocal.validate`) judges each file: the default build, every ``--falco-version`` profile,
the rule, role, family and list-name options, each rules-bearing ``--format``, the examples under docs/examples,
and the users' tuning files of docs/tuning.md loaded after the generated rules. Outputs of the profiles before
Falco 0.41 name ``container.*`` fields, which Falco 0.41 and later get from the container plugin: those files need
the plugin (here its TEST SCAFFOLDING double, tests/support/falco.py) and must not load without it, which is why
the default profile does not name them. Replays of small captures show the tuning examples silence what they say
and nothing else, and what Falco's default ``rule_matching: first`` does beside falcosecurity/rules' own rules.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from tests.conftest import DATA, REPO
from tests.support.falco import container_double, falco_or_skip
from tor_sets.build import build
from tor_sets.cli import main
from tor_sets.engines import Plugin
from tor_sets.engines.falco import FalcoEngine
from tor_sets.falco.generate import INBOUND_RULE, OUTBOUND_RULE
from tor_sets.relays import Relay, Snapshot
from tor_sets.verify.capture import Connection, Process, write_capture
from tor_sets.verify.scenarios import HOST_V4, INTERFACES, PROCESSES, START_NS

pytestmark = pytest.mark.integration

BUNDLED = REPO / "tor_sets" / "data" / "details-derived-guard-exit-2026-02-28.json.gz"
EXAMPLES = REPO / "docs" / "examples"
#: falcosecurity/rules' stable and incubating files (tests/data/PROVENANCE.md)
FALCO_RULES = DATA / "rules" / "falco_rules.yaml"
INCUBATING_RULES = DATA / "rules" / "falco-incubating_rules.yaml"
TUNING = ("tuning-append.yaml", "tuning-replace.yaml", "tuning-exceptions.yaml")
#: profiles whose outputs name container fields (before the container plugin, Falco 0.41)
CONTAINER_PROFILES = ("legacy", "0.32", "0.33", "0.34", "0.35", "0.36", "0.37", "0.38", "0.39", "0.40")
PLUGIN_PROFILES = ("0.41", "0.42", "0.43", "0.44")


@pytest.fixture(scope="module")
def falco() -> FalcoEngine:
    return falco_or_skip("falco-local")


@pytest.fixture(scope="module")
def double(tmp_path_factory: pytest.TempPathFactory) -> Plugin:
    """TEST SCAFFOLDING: the container-plugin double."""
    return container_double(tmp_path_factory.mktemp("plugins"))


def plugins_for(container: bool, double: Plugin) -> tuple[Plugin, ...]:
    return (double,) if container else ()


def cli_build(tmp_path: Path, *args: str, fmt: str = "falco") -> str:
    """What ``tor-sets build --format FMT ARGS`` writes for the bundled snapshot."""
    out = tmp_path / f"built-{fmt}.yaml"
    assert main(["build", "--input", str(BUNDLED), "--format", fmt, "-o", str(out), *args]) == 0
    return out.read_text()


def embedded_rules(text: str) -> str | None:
    """The rules file inside a ConfigMap or chart values document; None for anything else."""
    document = yaml.safe_load(text)
    if not isinstance(document, dict):
        return None
    holder = document.get("data") if document.get("kind") == "ConfigMap" else document.get("customRules")
    if not isinstance(holder, dict):
        return None
    (rules,) = holder.values()
    return str(rules)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def assert_loads(falco: FalcoEngine, paths: list[Path], plugins: tuple[Plugin, ...], what: str) -> None:
    """Falco loads every file, and says nothing about any of them."""
    results = falco.validate(paths, plugins=plugins)
    problems = [f"{r.path.name}: {r.message}" for r in results if not r.ok or r.warnings]
    loaded = "with the container plugin (double)" if plugins else "without the container plugin"
    assert not problems, f"{what}, {loaded}: falco -V says: " + " | ".join(problems)


@pytest.mark.parametrize("container", [False, True], ids=["alone", "with-container-plugin"])
def test_default_build_loads_without_a_warning(falco, double, tmp_path, container):
    path = write(tmp_path, "tor_rules.yaml", cli_build(tmp_path))
    assert_loads(falco, [path], plugins_for(container, double), "the default build")


@pytest.mark.parametrize("profile", PLUGIN_PROFILES + CONTAINER_PROFILES)
def test_each_profile_loads_and_only_the_container_profiles_need_the_plugin(falco, double, tmp_path, profile):
    text = cli_build(tmp_path, "--falco-version", profile)
    path = write(tmp_path, "tor_rules.yaml", text)
    assert_loads(falco, [path], (double,), f"--falco-version {profile}")
    (alone,) = falco.validate([path])
    if profile in PLUGIN_PROFILES:
        assert "%container." not in text
        assert alone.ok and not alone.warnings, f"--falco-version {profile} without the plugin: {alone.message}"
    else:
        # Falco 0.41 and later have no container fields of their own: this file needs the plugin
        assert "container_id=%container.id container_name=%container.name" in text
        assert not alone.ok, f"--falco-version {profile} loaded without the container plugin"
        assert "LOAD_ERR_COMPILE_OUTPUT" in alone.message, alone.message


@pytest.mark.parametrize(
    "args",
    [
        ("--rules", "outbound"),
        ("--rules", "inbound"),
        ("--roles", "entry,exit,relay"),
        ("--rules", "outbound", "--roles", "relay"),
        ("--families", "ipv4"),
        ("--families", "ipv6"),
        ("--list-names", "2022"),
        ("--list-names", "2022", "--rules", "outbound"),
    ],
    ids=lambda args: " ".join(args),
)
@pytest.mark.parametrize("container", [False, True], ids=["alone", "with-container-plugin"])
def test_each_option_loads_without_a_warning(falco, double, tmp_path, args, container):
    path = write(tmp_path, "tor_rules.yaml", cli_build(tmp_path, *args))
    assert_loads(falco, [path], plugins_for(container, double), " ".join(args))


@pytest.mark.parametrize("fmt", ["falco", "configmap", "helm-values"])
@pytest.mark.parametrize("container", [False, True], ids=["alone", "with-container-plugin"])
def test_each_rules_format_carries_rules_that_load(falco, double, tmp_path, fmt, container):
    text = cli_build(tmp_path, fmt=fmt)
    rules = text if fmt == "falco" else embedded_rules(text)
    assert rules is not None and rules == cli_build(tmp_path)
    path = write(tmp_path, "tor_rules.yaml", rules)
    assert_loads(falco, [path], plugins_for(container, double), f"--format {fmt}")


def example_rules() -> dict[str, str]:
    """Every rules file the examples show: generated rules files, and the rules inside ConfigMaps and chart values."""
    found = {}
    for path in sorted(EXAMPLES.glob("**/*.yaml")):
        text = path.read_text()
        name = str(path.relative_to(EXAMPLES))
        if isinstance(yaml.safe_load(text), list) and path.name not in TUNING:
            found[name] = text
        elif (rules := embedded_rules(text)) is not None:
            found[name] = rules
    return found


def test_the_examples_with_rules_are_all_checked():
    assert sorted(example_rules()) == ["configmap.yaml", "helm-values.yaml", "rules/tor_rules.yaml"]
    assert sorted(p.name for p in (EXAMPLES / "rules").glob("tuning-*.yaml")) == sorted(TUNING)


@pytest.mark.parametrize("name", sorted(example_rules()))
@pytest.mark.parametrize("container", [False, True], ids=["alone", "with-container-plugin"])
def test_each_example_loads_without_a_warning(falco, double, tmp_path, name, container):
    path = write(tmp_path, "tor_rules.yaml", example_rules()[name])
    assert_loads(falco, [path], plugins_for(container, double), f"docs/examples/{name}")


@pytest.mark.parametrize("tuning", TUNING)
@pytest.mark.parametrize("container", [False, True], ids=["alone", "with-container-plugin"])
def test_each_tuning_example_loads_after_the_rules(falco, double, tuning, container):
    files = [EXAMPLES / "rules" / "tor_rules.yaml", EXAMPLES / "rules" / tuning]
    if tuning != "tuning-replace.yaml":
        assert_loads(falco, files, plugins_for(container, double), tuning)
        return
    # replacing the macro leaves never_true unread when no other file reads it (falcosecurity/rules' files do, see
    # the next test): Falco loads everything and warns about that one macro
    results = falco.validate(files, plugins=plugins_for(container, double))
    assert all(r.ok for r in results), [r.message for r in results]
    warnings = [w for r in results for w in r.warnings]
    assert len(warnings) == 1 and warnings[0].startswith("LOAD_UNUSED_MACRO"), warnings


@pytest.mark.parametrize("tuning", TUNING)
def test_each_tuning_example_loads_after_the_upstream_rules_and_ours(falco, double, tuning):
    files = [FALCO_RULES, INCUBATING_RULES, EXAMPLES / "rules" / "tor_rules.yaml", EXAMPLES / "rules" / tuning]
    assert_loads(falco, files, (double,), f"falcosecurity/rules, then ours, then {tuning}")


def test_a_tuning_file_loaded_before_the_rules_is_refused(falco):
    tuning, rules = EXAMPLES / "rules" / "tuning-append.yaml", EXAMPLES / "rules" / "tor_rules.yaml"
    first, second = falco.validate([tuning, rules])
    assert not first.ok and second.ok
    assert "no macro by that name already exists" in first.message, first.message


@pytest.mark.parametrize("ours_first", [False, True], ids=["upstream-first", "ours-first"])
def test_the_upstream_rules_load_beside_ours_and_never_true_is_the_same(falco, double, tmp_path, ours_first):
    # both files define never_true; the later definition replaces the earlier one, and the two are the same
    ours = write(tmp_path, "tor_rules.yaml", cli_build(tmp_path))
    upstream = [FALCO_RULES, INCUBATING_RULES]
    files = [ours, *upstream] if ours_first else [*upstream, ours]
    assert_loads(falco, files, (double,), "falcosecurity/rules and ours")


# --------------------------------------------------------------------------------------------------- replays

ENTRY = ipaddress.ip_address("185.220.101.1")
EXIT = ipaddress.ip_address("185.220.102.9")
CURL, TOR, NGINX, PYTHON = (p.pid for p in PROCESSES)  # curl, /usr/bin/tor, /usr/sbin/nginx, python3


@pytest.fixture(scope="module")
def tuning_case(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Rules for one entry and one exit relay, and a capture of four connections to and from them: the Tor daemon
    and curl connect to the entry relay, nginx (port 443) and python3 (port 8000) accept from the exit relay."""
    folder = tmp_path_factory.mktemp("tuning")
    snapshot = Snapshot(
        datetime(2026, 2, 28, 1),
        (
            Relay("A" * 40, or_addresses=(ENTRY,), flags=frozenset({"Guard"})),
            Relay("B" * 40, or_addresses=(EXIT,), flags=frozenset({"Exit"})),
        ),
        source="test",
    )
    rules = write(folder, "tor_rules.yaml", build(snapshot).text)
    connections = [
        Connection("connect", HOST_V4, 40001, ENTRY, 9001, START_NS + 1_000, TOR),
        Connection("connect", HOST_V4, 40002, ENTRY, 443, START_NS + 2_000, CURL, result=-115),
        Connection("accept4", EXIT, 50001, HOST_V4, 443, START_NS + 3_000, NGINX),
        Connection("accept", EXIT, 50002, HOST_V4, 8000, START_NS + 4_000, PYTHON),
    ]
    capture = folder / "tuning.scap"
    write_capture(capture, connections, processes=PROCESSES, interfaces=INTERFACES)
    return rules, capture


@pytest.mark.parametrize(
    "tuning, silenced",
    [
        (None, set()),
        ("tuning-append.yaml", {"tor"}),
        ("tuning-replace.yaml", {"nginx"}),
        ("tuning-exceptions.yaml", {"tor", "nginx"}),
    ],
)
def test_each_tuning_example_silences_what_it_says_and_nothing_else(falco, tuning_case, tuning, silenced):
    rules, capture = tuning_case
    files = [rules] if tuning is None else [rules, EXAMPLES / "rules" / tuning]
    alerts, _ = falco.alerts(capture, files)
    fired = sorted((a.output_fields["proc.name"], a.rule) for a in alerts)
    untuned = [("curl", OUTBOUND_RULE), ("nginx", INBOUND_RULE), ("python3", INBOUND_RULE), ("tor", OUTBOUND_RULE)]
    assert fired == [(name, rule) for name, rule in untuned if name not in silenced], tuning


def test_alerts_name_each_field_once_with_the_container_plugin(falco, double, tuning_case):
    # Falco's default append_output (suggested_output: true) appends the container plugin's fields to every alert
    rules, capture = tuning_case
    alerts, _ = falco.alerts(capture, [rules], plugins=(double,), extra={"append_output": [{"suggested_output": True}]})
    assert len(alerts) == 4
    for alert in alerts:
        keys = [word.split("=", 1)[0] for word in alert.output.split("|", 1)[1].split() if "=" in word]
        assert len(keys) == len(set(keys)), alert.output
        assert "container_id" in keys and "container_name" in keys, alert.output


SHELL = Process(pid=5001, comm="bash", exe="/usr/bin/bash", args=("-i",))
SSH = Process(pid=5002, comm="ssh", exe="/usr/bin/ssh", args=("-p", "443", "user@relay"))
CURL_PROCESS = Process(pid=5003, comm="curl", exe="/usr/bin/curl", args=("-s", "https://relay/"))


#: (the Tor rules loaded first?, rule_matching, the (process, rule) alerts) for bash, ssh and curl reaching a relay
SHADOWING = [
    # the upstream rules first (the chart's order): the first matching rule hides the Tor rule for bash and ssh
    (
        False,
        "first",
        {
            ("bash", "System procs network activity"),
            ("ssh", "Disallowed SSH Connection Non Standard Port"),
            ("curl", OUTBOUND_RULE),
        },
    ),
    # ours first: the Tor rule hides theirs
    (True, "first", {("bash", OUTBOUND_RULE), ("ssh", OUTBOUND_RULE), ("curl", OUTBOUND_RULE)}),
    # all: every matching rule alerts, whatever the order
    *[
        (
            order,
            "all",
            {
                ("bash", "System procs network activity"),
                ("bash", OUTBOUND_RULE),
                ("ssh", "Disallowed SSH Connection Non Standard Port"),
                ("ssh", OUTBOUND_RULE),
                ("curl", OUTBOUND_RULE),
            },
        )
        for order in (False, True)
    ],
]


@pytest.mark.parametrize(
    "ours_first, matching, expected",
    SHADOWING,
    ids=["upstream-first-first", "ours-first-first", "upstream-first-all", "ours-first-all"],
)
def test_rule_matching_first_reports_only_the_first_rule_loaded(
    falco, double, tuning_case, tmp_path, ours_first, matching, expected
):
    # bash, ssh and curl connect to the same entry relay on port 443 (a reverse shell, ssh on a web port, a download)
    rules, _ = tuning_case
    capture = tmp_path / "shadow.scap"
    processes = (SHELL, SSH, CURL_PROCESS)
    connections = [
        Connection("connect", HOST_V4, 41001 + i, ENTRY, 443, START_NS + 1_000 * (i + 1), p.pid)
        for i, p in enumerate(processes)
    ]
    write_capture(capture, connections, processes=processes, interfaces=INTERFACES)
    upstream = [FALCO_RULES, INCUBATING_RULES]
    files = [rules, *upstream] if ours_first else [*upstream, rules]
    alerts, _ = falco.alerts(capture, files, plugins=(double,), rule_matching=matching)
    fired = [(a.output_fields["proc.name"], a.rule) for a in alerts]
    assert len(fired) == len(set(fired)) and set(fired) == expected


def test_tuning_md_shows_these_results():
    """docs/tuning.md's table of ``rule_matching`` is what the test above asserts on real Falco."""
    rows = {}
    for line in (REPO / "docs" / "tuning.md").read_text().splitlines():
        cells = [c.strip().strip("`") for c in line.strip("|").split("|")]
        if len(cells) == 5 and cells[1] in ("first", "all"):
            rows[(cells[0], cells[1])] = dict(zip(("bash", "ssh", "curl"), cells[2:], strict=True))
    assert len(rows) == 3, rows
    for ours_first, matching, expected in SHADOWING:
        order = (
            "either"
            if matching == "all"
            else ("tor_rules.yaml, then upstream" if ours_first else "upstream, then tor_rules.yaml")
        )
        for process, shown in rows[(order, matching)].items():
            fired = {rule for name, rule in expected if name == process}
            if shown == "both rules":
                assert len(fired) == 2 and OUTBOUND_RULE in fired, (order, matching, process)
            else:
                assert fired == {shown}, (order, matching, process)
