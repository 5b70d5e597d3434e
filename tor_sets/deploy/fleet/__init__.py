"""From one host to a fleet: hand the rules file, or the plugin and its relay table, to many Falco nodes.

Three routes, described for operators in ``docs/fleet.md``:

* :func:`render_configmap` — a Kubernetes ConfigMap holding the rules file (``tor-sets build --format configmap``);
* :func:`render_helm_values` — values for the Falco Helm chart's ``customRules`` (``--format helm-values``);
  :func:`render_manifest` renders either by name (one of :data:`MANIFEST_FORMATS`);
* falcoctl OCI artifacts that ``falcoctl artifact install`` / ``follow`` put on every node: :func:`publish_rules`
  (a rulesfile), :func:`publish_plugin` (the plugin library, one image per platform) and :func:`publish_asset` (the
  plugin's relay table), built by :func:`rulesfile_artifact`, :func:`plugin_artifact`, :func:`asset_artifact` and
  pushed by :func:`push_artifact`; :func:`pull_artifact` is the way back; :func:`index_entry`, :func:`parse_index`
  and :func:`merge_index` write falcoctl's ``index.yaml`` so that ``falcoctl artifact install tor-rules`` works by
  name. :func:`data_version`, :func:`check_version`, :func:`date_tag` and :func:`default_annotations` make an
  artifact's version, tags and annotations from the rules file's header
  (:func:`tor_sets.falco.header.read_header`).

One module per job: ``kubernetes`` (the manifests), ``artifact`` (falcoctl's artifacts, byte for byte, pure),
``index`` (falcoctl's index), ``reference`` (OCI references), ``credentials`` (where registry credentials come
from), ``registry`` (the client: push, pull, and where bytes and credentials may go) and ``publish`` (a file to an
artifact in a registry). Registry failures raise :class:`~tor_sets.errors.RegistryError`; a bad reference
:class:`~tor_sets.errors.ReferenceSyntaxError` (a usage error).
"""

from __future__ import annotations

from tor_sets.deploy.fleet.artifact import (
    RULES_MAJOR,
    Artifact,
    asset_artifact,
    check_version,
    data_version,
    date_tag,
    default_annotations,
    plugin_artifact,
    rulesfile_artifact,
)
from tor_sets.deploy.fleet.index import IndexEntry, index_entry, merge_index, parse_index
from tor_sets.deploy.fleet.kubernetes import MANIFEST_FORMATS, render_configmap, render_helm_values, render_manifest
from tor_sets.deploy.fleet.publish import publish_asset, publish_plugin, publish_rules
from tor_sets.deploy.fleet.reference import OciRef, parse_ref
from tor_sets.deploy.fleet.registry import PublishResult, PulledArtifact, pull_artifact, push_artifact

__all__ = [
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
]
