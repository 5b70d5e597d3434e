"""Each package's public surface, pinned: its ``__all__`` is exactly these names, sorted, and each one exists.

Sorted as ruff's RUF022 sorts ``__all__``: constants, then classes, then functions, each alphabetically.

As httpx's tests/test_exported_members.py: a name added to or dropped from a package's surface is a decision, made
here as well as in the package. Each package's row is edited by whoever owns the package.
"""

from __future__ import annotations

import importlib

import pytest

EXPORTED: dict[str, list[str]] = {
    "tor_sets.deploy": [],
    "tor_sets.deploy.fleet": [
        "MANIFEST_FORMATS",
        "RULES_MAJOR",
        "Artifact",
        "IndexEntry",
        "OciRef",
        "PublishResult",
        "PulledArtifact",
        "asset_artifact",
        "check_version",
        "data_version",
        "date_tag",
        "default_annotations",
        "index_entry",
        "merge_index",
        "parse_index",
        "parse_ref",
        "plugin_artifact",
        "publish_asset",
        "publish_plugin",
        "publish_rules",
        "pull_artifact",
        "push_artifact",
        "render_configmap",
        "render_helm_values",
        "render_manifest",
        "rulesfile_artifact",
    ],
    "tor_sets.deploy.refresh": [
        "VALIDATIONS",
        "Deployed",
        "DeploymentStatus",
        "Failure",
        "Guards",
        "Outcome",
        "RefreshOptions",
        "Reload",
        "State",
        "Stop",
        "Stopped",
        "check_falco_pid",
        "check_guards",
        "deployment_status",
        "read_state",
        "refresh",
        "run_every",
        "status_document",
        "validate_rules",
    ],
    "tor_sets.falco.header": [
        "RulesHeader",
        "header_lines",
        "read_header",
    ],
    "tor_sets.runtime": [],
    "tor_sets.runtime.enrich": [
        "TOR_RULES",
        "EnrichServer",
        "EnrichSpeed",
        "Enricher",
        "LineResult",
        "RelayIndex",
        "RelayRecord",
        "ServerSettings",
        "StreamStats",
        "alert_addresses",
        "canonical_address",
        "enrich_stream",
        "measure_speed",
        "parse_listen",
    ],
    "tor_sets.runtime.selftest": [
        "CASES",
        "DEFAULT_CANARY",
        "Case",
        "CaseResult",
        "FileSink",
        "HostNetwork",
        "HttpSink",
        "Lab",
        "LabPlan",
        "LiveReport",
        "Observed",
        "Report",
        "Sink",
        "format_live",
        "format_report",
        "open_sink",
        "plan_lab",
        "run_live",
        "run_selftest",
        "simulate_alerts",
        "wait_for_alerts",
    ],
    "tor_sets": [
        "BuildOptions",
        "Built",
        "CaptureError",
        "Compacted",
        "DocumentError",
        "EngineError",
        "EngineTimeout",
        "EngineUnavailable",
        "FalcoList",
        "FetchError",
        "FetchResult",
        "FetchSettings",
        "FetchTimeout",
        "Macro",
        "Obtained",
        "Profile",
        "Relay",
        "RelaySets",
        "Role",
        "Rule",
        "RuleError",
        "RulesFile",
        "RulesOptions",
        "SanityError",
        "Snapshot",
        "StaleDataError",
        "TorSetsError",
        "UsageError",
        "__version__",
        "aggregate_lossy",
        "build",
        "bundled_snapshot",
        "classify",
        "collapse",
        "fetch",
        "generate",
        "obtain",
        "parse_document",
        "parse_networks",
        "profile_for",
        "read_snapshot",
        "relay_sets",
        "render",
        "split",
        "write_rules",
    ],
    "tor_sets.falco": [
        "FalcoList",
        "LoadedRule",
        "Macro",
        "Profile",
        "Rule",
        "RuleSet",
        "RulesFile",
        "RulesOptions",
        "expand_condition",
        "generate",
        "load_rules",
        "profile_for",
        "render",
        "render_2022",
    ],
    "tor_sets.verify": [
        "BenchReport",
        "Encoding",
        "EncodingCost",
        "Expectation",
        "FalcoCost",
        "Labelled",
        "RuleVerdict",
        "Scenario",
        "Verdict",
        "bench_json",
        "disagreements",
        "encodings",
        "falco_cost",
        "format_bench",
        "format_verdicts",
        "judge",
        "make_scenario",
        "outbound_role",
        "pick_validator",
        "read_bench_json",
        "rule_expectation",
        "run_bench",
        "validate_text",
        "verify",
        "write_report",
        "write_scenario",
    ],
    "tor_sets.engines": [
        "DEFAULT_FIELDS",
        "ENGINES",
        "PREFERENCE",
        "Engine",
        "FakeEngine",
        "FalcoContainer",
        "FalcoEngine",
        "FalcoLocal",
        "Match",
        "Plugin",
        "Replay",
        "Run",
        "SysdigLegacy",
        "SysdigModern",
        "SysdigModernDocker",
        "auto",
        "get_engine",
    ],
    "tor_sets.plugin": [
        "PLUGIN_NAME",
        "PLUGIN_VERSION",
        "Table",
        "TableEntry",
        "compile_plugin",
        "decode",
        "encode",
        "engine_plugin",
        "falco_config",
        "find_include_dir",
        "make_table",
        "plugin_rules_file",
        "plugin_rules_text",
        "rule_families",
        "source_bytes",
        "table_bytes",
    ],
    "tor_sets.provision": [
        "EXTRA_PARTS",
        "PARTS",
        "DockerState",
        "EngineStatus",
        "Step",
        "docker_state",
        "engine_status",
        "install",
        "stop_docker",
    ],
}


def ruff_order(name: str) -> tuple[int, str]:
    """RUF022's order: SCREAMING_CASE, then CamelCase, then the rest."""
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)


@pytest.mark.parametrize("package", sorted(EXPORTED))
def test_the_package_exports_exactly_its_entry_points(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__all__ == EXPORTED[package]


@pytest.mark.parametrize("package", sorted(EXPORTED))
def test_the_exported_names_are_sorted_and_exist(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__all__ == sorted(module.__all__, key=ruff_order)
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == [], f"{package} exports names it does not define: {missing}"


def test_the_package_description_has_no_link_a_package_index_cannot_follow():
    """PACKAGE.md is the description on a package index, where README.md's links into docs/ would be dead."""
    import re
    import tomllib

    from tests.conftest import REPO

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    text = (REPO / project["readme"]).read_text()
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert all(re.match(r"https?://", link) for link in links), links
    assert "tor-sets refresh" in text and "docs/" in text
