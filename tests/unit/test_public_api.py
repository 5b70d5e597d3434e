"""Each package's public surface is exactly the names listed here (as httpx's tests/test_exported_members.py).

A name added to or dropped from a package's ``__all__`` fails here until this table says so; every name listed must
exist. The order of ``__all__`` is ruff's to check (RUF022).
"""

from __future__ import annotations

import importlib

import pytest

#: package -> the names its ``__all__`` exports
EXPORTS: dict[str, set[str]] = {
    # -- deploy ----------------------------------------------------------------------------------------------------
    # --- deploy ------------------------------------------------------------------------------------------------
    "tor_sets.deploy": set(),
    "tor_sets.deploy.refresh": {
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
    },
    "tor_sets.deploy.fleet": {
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
    },
    "tor_sets.falco.header": {"RulesHeader", "header_lines", "read_header"},
    # -- runtime ---------------------------------------------------------------------------------------------------
    "tor_sets.runtime": set(),
    "tor_sets.runtime.enrich": {
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
    },
    "tor_sets.runtime.selftest": {
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
    },
}


@pytest.mark.parametrize("package", sorted(EXPORTS))
def test_exported_names(package: str) -> None:
    module = importlib.import_module(package)
    assert set(module.__all__) == EXPORTS[package]
    assert len(module.__all__) == len(EXPORTS[package]), "a name is listed twice"
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []
