"""Each subpackage exports exactly its entry points: ``__all__`` is pinned here, and every name in it exists.

Like httpx's ``tests/test_exported_members.py``: a name added to or dropped from a package's surface is a decision,
made here on purpose. Each helper of the redesign (issue 15) owns the rows of its area.
"""

from __future__ import annotations

import importlib

import pytest

EXPECTED: dict[str, list[str]] = {
    # --- deploy ------------------------------------------------------------------------------------------------
    "tor_sets.deploy": [],
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
    "tor_sets.falco.header": ["RulesHeader", "header_lines", "read_header"],
}


@pytest.mark.parametrize(("package", "names"), EXPECTED.items(), ids=list(EXPECTED))
def test_exported_names(package: str, names: list[str]) -> None:
    module = importlib.import_module(package)
    assert module.__all__ == names
    missing = [name for name in names if not hasattr(module, name)]
    assert missing == []
