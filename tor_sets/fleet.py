"""From one host to a fleet: hand the rules file, or the plugin and its relay table, to many Falco nodes.

Three routes, described for operators in ``docs/fleet.md``:

* :func:`render_configmap` — a Kubernetes ConfigMap holding the rules file (``tor-sets build --format configmap``);
* :func:`render_helm_values` — values for the Falco Helm chart's ``customRules`` (``--format helm-values``);
* falcoctl OCI artifacts that ``falcoctl artifact install`` / ``follow`` put on every node: :func:`publish` (a
  rulesfile), :func:`publish_plugin` (the plugin library, one image per platform) and :func:`publish_asset` (the
  plugin's relay table), built by :func:`rulesfile_artifact`, :func:`plugin_artifact`, :func:`asset_artifact`
  and pushed by :func:`push`; :func:`pull` is the way back; :func:`index_entry`, :func:`parse_index` and
  :func:`merge_index` write falcoctl's ``index.yaml`` so that ``falcoctl artifact install tor-rules`` works by name.

Also exported: :func:`render` (a format by name, one of :data:`RENDER_FORMATS`), :func:`check_configmap_name`,
:func:`check_namespace`, :func:`read_header` → :class:`RulesHeader`, :func:`default_annotations`, :func:`date_tag`,
:func:`data_version`, :func:`floating_tags`, :func:`check_version`, :func:`parse_ref` → :class:`OciRef`,
:func:`file_layer`, :func:`artifact_config`, :func:`rulesfile_config`, :func:`plugin_dependencies` →
:class:`Dependency`, :func:`engine_requirement`, :func:`read_plugin` → :class:`PluginLibrary`,
:class:`PluginIdentity`, :func:`elf_platform`, :func:`registry_credentials` → :class:`RegistryCredentials`,
:class:`Artifact`, :class:`Image`, :class:`IndexEntry`, :class:`PublishResult`, :class:`PulledArtifact`,
:class:`RegistryError` and :class:`ReferenceSyntaxError`.

The artifacts have the layout falcoctl pushes and pulls (falcosecurity/falcoctl, ``pkg/oci/constants.go``,
``pkg/oci/types.go``, ``pkg/oci/pusher/pusher.go``, ``pkg/oci/puller/puller.go``): an OCI image manifest whose
config blob (media type ``application/vnd.cncf.falco.<type>.config.v1+json``) holds falcoctl's ``ArtifactConfig``
(``{"name", "version", "dependencies", "requirements"}``, Go's ``omitempty``), and one layer
``application/vnd.cncf.falco.<type>.layer.v1+tar.gz``, a tar.gz with the file at its root, annotated with
``org.opencontainers.image.title`` (falcoctl saves the blob under that name before extracting it). A plugin is an
OCI image index with one such manifest per platform. Every byte is a function of the inputs, so publishing the
same file twice gives the same digest. The version falcoctl insists on (``cmd/artifact/install``: "empty version
... config may be corrupted") grows with the data (:func:`data_version`), and the floating tags ``MAJOR`` and
``MAJOR.MINOR`` let ``falcoctl artifact follow REPO:1`` follow it.

Registry traffic goes through ``oras.provider.Registry`` (blob uploads) with tor-sets' own requests: a timeout on
every request, errors raised at once as :class:`RegistryError` instead of oras' retries with back-off, the
manifest sent as the exact bytes whose digest is returned, plain HTTP only to loopback (also for redirects, upload
locations and token services), and credentials only to the registry's own host or to a token service that passes
the same policy.
"""

from __future__ import annotations

import base64
import binascii
import functools
import gzip
import hashlib
import io
import ipaddress
import json
import logging
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
import urllib3
import yaml

from tor_sets.errors import RuleError, TorSetsError, UsageError
from tor_sets.urls import redact_url

__all__ = [
    "ANNOTATION_DATA_SOURCE",
    "ANNOTATION_RELAYS_PUBLISHED",
    "ANNOTATION_TOOL_VERSION",
    "ARTIFACT_TYPES",
    "ASSET_CONFIG_MEDIA_TYPE",
    "ASSET_LAYER_MEDIA_TYPE",
    "CONFIGMAP_MAX_BYTES",
    "ENGINE_REQUIREMENT",
    "INDEX_DESCRIPTIONS",
    "MEDIA_TYPES",
    "OCI_INDEX_MEDIA_TYPE",
    "OCI_MANIFEST_MEDIA_TYPE",
    "PLUGIN_API_REQUIREMENT",
    "PLUGIN_CONFIG_MEDIA_TYPE",
    "PLUGIN_LAYER_MEDIA_TYPE",
    "RENDER_FORMATS",
    "RULESFILE_CONFIG_MEDIA_TYPE",
    "RULESFILE_LAYER_MEDIA_TYPE",
    "RULES_MAJOR",
    "Artifact",
    "Dependency",
    "Image",
    "IndexEntry",
    "OciRef",
    "PluginIdentity",
    "PluginLibrary",
    "PublishResult",
    "PulledArtifact",
    "ReferenceSyntaxError",
    "RegistryCredentials",
    "RegistryError",
    "RulesHeader",
    "artifact_config",
    "asset_artifact",
    "check_configmap_name",
    "check_namespace",
    "check_version",
    "data_version",
    "date_tag",
    "default_annotations",
    "elf_platform",
    "engine_requirement",
    "file_layer",
    "floating_tags",
    "index_entry",
    "merge_index",
    "parse_index",
    "parse_ref",
    "plugin_artifact",
    "plugin_dependencies",
    "publish",
    "publish_asset",
    "publish_plugin",
    "pull",
    "push",
    "read_header",
    "read_plugin",
    "registry_credentials",
    "render",
    "render_configmap",
    "render_helm_values",
    "rulesfile_artifact",
    "rulesfile_config",
]

log = logging.getLogger(__name__)

# falcosecurity/falcoctl, pkg/oci/constants.go
RULESFILE_CONFIG_MEDIA_TYPE = "application/vnd.cncf.falco.rulesfile.config.v1+json"
RULESFILE_LAYER_MEDIA_TYPE = "application/vnd.cncf.falco.rulesfile.layer.v1+tar.gz"
PLUGIN_CONFIG_MEDIA_TYPE = "application/vnd.cncf.falco.plugin.config.v1+json"
PLUGIN_LAYER_MEDIA_TYPE = "application/vnd.cncf.falco.plugin.layer.v1+tar.gz"
ASSET_CONFIG_MEDIA_TYPE = "application/vnd.cncf.falco.asset.config.v1+json"
ASSET_LAYER_MEDIA_TYPE = "application/vnd.cncf.falco.asset.layer.v1+tar.gz"
OCI_MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
#: the requirements falcoctl checks against the running Falco's ``/versions`` before installing
ENGINE_REQUIREMENT = "engine_version_semver"
PLUGIN_API_REQUIREMENT = "plugin_api_version"
#: the major version of a rules artifact's data version: raise it when the rules change in a way followers of
#: the previous major must not receive
RULES_MAJOR = 1

ANNOTATION_CREATED = "org.opencontainers.image.created"
ANNOTATION_VERSION = "org.opencontainers.image.version"
ANNOTATION_TITLE = "org.opencontainers.image.title"
ANNOTATION_SOURCE = "org.opencontainers.image.source"
ANNOTATION_RELAYS_PUBLISHED = "tor-sets.relays_published"
ANNOTATION_TOOL_VERSION = "tor-sets.version"
ANNOTATION_DATA_SOURCE = "tor-sets.data_source"

#: what Kubernetes accepts for a whole ConfigMap object (etcd's request limit)
CONFIGMAP_MAX_BYTES = 1024 * 1024
RENDER_FORMATS = ("configmap", "helm-values")

_TIMEOUT = (10.0, 120.0)  # seconds: connect, read
_LOOPBACK_NAMES = frozenset({"localhost"})


class RegistryError(TorSetsError):
    """An OCI registry could not be reached, refused the request, or holds something that is not our artifact."""

    def __init__(self, message: str, *, registry: str | None = None) -> None:
        super().__init__(message)
        self.registry = registry


# --- the rules file's header ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RulesHeader:
    """What the comment lines at the top of a generated rules file say; each field is ``None`` when absent."""

    source: str | None = None
    relays_published: datetime | None = None
    tool_version: str | None = None


_HEADER_SOURCE = re.compile(r"#\s*source:\s*(?P<value>\S.*?)\s*$")
_HEADER_PUBLISHED = re.compile(r"#\s*relays_published:\s*(?P<value>\S.*?)\s*$")
_HEADER_TOOL = re.compile(r"#\s*(?:generated by\s+)?tor-sets\s+v?(?P<value>\d[\w.+-]*)\s*$")


def read_header(text: str) -> RulesHeader:
    """Read the leading comment block of a rules file, leniently.

    Only lines before the first YAML content are read; lines that do not match are ignored, and a date that does not
    parse counts as absent. Times without a zone are Onionoo's, which are UTC.

    Args:
        text: the rules file.

    Returns:
        The header fields found.

    >>> h = read_header("# source: https://onionoo.example/details\\n# relays_published: 2026-02-28 01:00:00 UTC\\n"
    ...                 "# tor-sets 0.1.0\\n- list: x\\n  items: []\\n")
    >>> h.relays_published.isoformat(), h.tool_version
    ('2026-02-28T01:00:00+00:00', '0.1.0')
    >>> read_header("- list: x\\n# tor-sets 9.9\\n")
    RulesHeader(source=None, relays_published=None, tool_version=None)
    """
    source: str | None = None
    published: datetime | None = None
    tool: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if not line.startswith("#"):
            break
        # "# source: https://onionoo.torproject.org/details?..."
        if (match := _HEADER_SOURCE.match(line)) and source is None:
            source = match["value"]
        # "# relays_published: 2026-02-28 01:00:00 UTC"
        elif (match := _HEADER_PUBLISHED.match(line)) and published is None:
            published = _parse_time(match["value"])
        # "# tor-sets 0.1.0" or "# generated by tor-sets 0.1.0"
        elif (match := _HEADER_TOOL.match(line)) and tool is None:
            tool = match["value"]
    return RulesHeader(source=source, relays_published=published, tool_version=tool)


def _parse_time(value: str) -> datetime | None:
    # "2026-02-28 01:00:00 UTC", "2026-02-28 01:00:00", "2026-02-28T01:00:00Z"
    value = value.removesuffix("UTC").strip()
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def date_tag(published: datetime) -> str:
    """The registry tag naming the relay data's date, so an older artifact stays reachable for a rollback.

    >>> date_tag(datetime(2026, 2, 28, 1, 0, tzinfo=UTC))
    '2026-02-28T0100'
    """
    return published.astimezone(UTC).strftime("%Y-%m-%dT%H%M")


def default_annotations(header: RulesHeader, *, filename: str, tool_version: str | None) -> dict[str, str]:
    """Manifest annotations derived from the rules file alone, so that republishing it gives the same digest.

    ``created`` is the data's publication time, not the wall clock. The header's ``source`` is the relay data's;
    it also becomes ``org.opencontainers.image.source`` when it is a URL, in both cases without the user
    information a URL may carry. The header's tool version wins over ``tool_version`` (the version that wrote the
    file is the one that matters). ``org.opencontainers.image.version`` is the artifact's version, added when the
    artifact is built.

    Args:
        header: the rules file's header.
        filename: the rules file's name, used as the title.
        tool_version: this tool's version, used when the header names none.

    Returns:
        Annotations by key; absent facts are left out, not written empty.
    """
    annotations = {ANNOTATION_TITLE: filename}
    if header.relays_published is not None:
        published = header.relays_published.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        annotations[ANNOTATION_CREATED] = published
        annotations[ANNOTATION_RELAYS_PUBLISHED] = published
    if header.source is not None:
        source = redact_url(header.source)
        annotations[ANNOTATION_DATA_SOURCE] = source
        if source.startswith(("https://", "http://")):
            annotations[ANNOTATION_SOURCE] = source
    version = header.tool_version or tool_version
    if version:
        annotations[ANNOTATION_TOOL_VERSION] = version
    return annotations


# --- Kubernetes and Helm renderers ---------------------------------------------------------------------------

_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_CONFIGMAP_KEY = re.compile(r"[-._a-zA-Z0-9]+")


class _Literal(str):
    """A string that the dumper writes as a YAML literal block (``|``), so rules stay readable."""

    __slots__ = ()


class _Dumper(yaml.SafeDumper):
    pass


def _represent_literal(dumper: yaml.SafeDumper, data: _Literal) -> yaml.ScalarNode:
    # PyYAML falls back to a double-quoted scalar when a literal block cannot hold the text exactly (a line with
    # trailing spaces, a tab, a carriage return): still the same bytes after loading, only less readable.
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(data), style="|")


_Dumper.add_representer(_Literal, _represent_literal)


def _dump(document: Mapping[str, Any]) -> str:
    return str(yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False))


def check_configmap_name(name: str) -> str:
    """Return ``name`` if Kubernetes accepts it as a ConfigMap name (a DNS subdomain).

    Raises:
        ValueError: it does not.
    """
    if len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
        raise ValueError(f"ConfigMap name {name!r} is not a DNS subdomain (lower case, digits, '-', '.')")
    return name


def check_namespace(namespace: str) -> str:
    """Return ``namespace`` if Kubernetes accepts it (a DNS label).

    Raises:
        ValueError: it does not.
    """
    if len(namespace) > 63 or not _DNS_LABEL.fullmatch(namespace):
        raise ValueError(f"namespace {namespace!r} is not a DNS label (lower case, digits, '-')")
    return namespace


def _check_filename(filename: str) -> None:
    if not _CONFIGMAP_KEY.fullmatch(filename) or filename in {".", ".."}:
        raise ValueError(f"file name {filename!r} is not a valid ConfigMap key (letters, digits, '-', '_', '.')")


def render_configmap(
    rules_text: str,
    *,
    name: str = "tor-sets-rules",
    namespace: str = "falco",
    filename: str = "tor_rules.yaml",
    labels: Mapping[str, str] | None = None,
) -> str:
    """A Kubernetes ConfigMap manifest whose ``data[filename]`` is exactly ``rules_text``.

    Args:
        rules_text: the rules file.
        name: the ConfigMap's name.
        namespace: its namespace (Falco's).
        filename: the key, which becomes the file name where the ConfigMap is mounted.
        labels: labels added to (or overriding) ``app.kubernetes.io/name`` and ``app.kubernetes.io/managed-by``.

    Returns:
        One YAML document; the rules are a literal block. A ConfigMap over Kubernetes' size limit
        (:data:`CONFIGMAP_MAX_BYTES`) is still rendered, with a warning logged.

    Raises:
        ValueError: ``name``, ``namespace`` or ``filename`` is not a valid Kubernetes name or key.

    >>> print(render_configmap("- list: tor_sets_entry_ipv4\\n  items: []\\n"), end="")
    apiVersion: v1
    kind: ConfigMap
    metadata:
      name: tor-sets-rules
      namespace: falco
      labels:
        app.kubernetes.io/name: tor-sets
        app.kubernetes.io/managed-by: tor-sets
    data:
      tor_rules.yaml: |
        - list: tor_sets_entry_ipv4
          items: []
    """
    check_configmap_name(name)
    check_namespace(namespace)
    _check_filename(filename)
    all_labels = {"app.kubernetes.io/name": "tor-sets", "app.kubernetes.io/managed-by": "tor-sets"}
    all_labels.update(labels or {})
    document = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": all_labels},
        "data": {filename: _Literal(rules_text)},
    }
    text = _dump(document)
    size = len(text.encode())
    if size > CONFIGMAP_MAX_BYTES:
        log.warning(
            "the ConfigMap is %d bytes, Kubernetes refuses objects over %d: publish an OCI artifact instead",
            size,
            CONFIGMAP_MAX_BYTES,
        )
    return text


def render_helm_values(rules_text: str, *, filename: str = "tor_rules.yaml") -> str:
    """Values for the Falco Helm chart: ``customRules: {filename: rules_text}``.

    The chart turns ``customRules`` into a ConfigMap mounted at ``/etc/falco/rules.d``, which its default
    ``falco.rules_files`` loads.

    Args:
        rules_text: the rules file.
        filename: the file name under ``/etc/falco/rules.d``.

    Returns:
        One YAML document to pass with ``helm upgrade -f``.

    Raises:
        ValueError: ``filename`` is not a valid ConfigMap key.

    >>> print(render_helm_values("- macro: tor_sets_outbound\\n  condition: evt.type = connect\\n"), end="")
    customRules:
      tor_rules.yaml: |
        - macro: tor_sets_outbound
          condition: evt.type = connect
    """
    _check_filename(filename)
    return _dump({"customRules": {filename: _Literal(rules_text)}})


def render(
    fmt: str,
    rules_text: str,
    *,
    filename: str = "tor_rules.yaml",
    name: str = "tor-sets-rules",
    namespace: str = "falco",
) -> str:
    """Render ``rules_text`` in one of :data:`RENDER_FORMATS` (for ``tor-sets build --format``).

    Args:
        fmt: ``configmap`` or ``helm-values``.
        rules_text: the rules file.
        filename: the rules file's name inside the ConfigMap or ``customRules``.
        name: the ConfigMap's name (``configmap`` only).
        namespace: the ConfigMap's namespace (``configmap`` only).

    Returns:
        The rendered YAML document.

    Raises:
        ValueError: unknown format, or an invalid name.
    """
    if fmt == "configmap":
        return render_configmap(rules_text, name=name, namespace=namespace, filename=filename)
    if fmt == "helm-values":
        return render_helm_values(rules_text, filename=filename)
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(RENDER_FORMATS)}")


# --- versions, configs and layers ----------------------------------------------------------------------------

_ENGINE_LINE = re.compile(r"-\s*required_engine_version\s*:\s*['\"]?(?P<value>[^'\"\s#]+)['\"]?\s*(#.*)?")
_SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)")
_INTEGER = re.compile(r"0|[1-9]\d*")


def data_version(published: datetime, major: int = RULES_MAJOR) -> str:
    """The artifact version of relay data published at ``published``: ``MAJOR.YYYYMMDD.HHMM``, no leading zeros.

    It grows with the data, and it is a strict semver (falcoctl parses it with blang/semver, which refuses leading
    zeros), so ``falcoctl artifact follow REPO:MAJOR`` follows every new publication of the same major.

    >>> data_version(datetime(2026, 2, 28, 1, 0, tzinfo=UTC)), data_version(datetime(2026, 3, 1, tzinfo=UTC), 2)
    ('1.20260228.100', '2.20260301.0')

    Raises:
        ValueError: ``major`` is negative.
    """
    if major < 0:
        raise ValueError(f"major version {major} is negative")
    at = published.astimezone(UTC)
    return f"{major}.{at:%Y%m%d}.{at.hour * 100 + at.minute}"


def check_version(version: str) -> str:
    """Return ``version`` if it is ``MAJOR.MINOR.PATCH`` without leading zeros (a strict semver that is also a tag).

    Raises:
        UsageError: it is not.
    """
    if not _SEMVER.fullmatch(version):
        raise UsageError(f"version {version!r} is not MAJOR.MINOR.PATCH (digits, no leading zeros)")
    return version


def floating_tags(version: str) -> tuple[str, str]:
    """``MAJOR`` and ``MAJOR.MINOR`` of ``version``: the tags ``falcoctl registry push --add-floating-tags`` adds
    next to the version itself (falcosecurity/falcoctl, ``cmd/registry/push/push.go``).

    >>> floating_tags("1.20260228.100")
    ('1', '1.20260228')
    """
    major, minor, _ = check_version(version).split(".")
    return major, f"{major}.{minor}"


def engine_requirement(version: str) -> str:
    """The ``engine_version_semver`` requirement falcoctl expects, from a ``required_engine_version`` value.

    An integer ``N`` (Falco before 0.37) becomes ``0.N.0``, as falcoctl's ``registry push`` does; a semver is kept.
    falcoctl compares with a strict semver parser, so anything else is refused.

    >>> engine_requirement("26"), engine_requirement("0.31.0")
    ('0.26.0', '0.31.0')

    Raises:
        RegistryError: the value is neither an integer nor ``MAJOR.MINOR.PATCH``.
    """
    if _INTEGER.fullmatch(version):
        return f"0.{int(version)}.0"
    if _SEMVER.fullmatch(version):
        return version
    raise RegistryError(f"engine version {version!r} is neither an integer nor MAJOR.MINOR.PATCH")


def _engine_version_in(rules_text: str) -> str | None:
    for line in rules_text.splitlines():
        # "- required_engine_version: 0.31.0"
        if match := _ENGINE_LINE.fullmatch(line.strip()):
            return match["value"]
    return None


@dataclass(frozen=True, slots=True)
class Dependency:
    """An artifact a rulesfile needs (falcoctl's ``ArtifactDependency``): a plugin by name and minimum version,
    or one of its ``alternatives``."""

    name: str
    version: str
    alternatives: tuple[Dependency, ...] = ()

    def as_json(self) -> dict[str, Any]:
        """falcoctl's JSON: ``name``, ``version``, ``alternatives`` only when there are some (``omitempty``)."""
        document: dict[str, Any] = {"name": self.name, "version": self.version}
        if self.alternatives:
            document["alternatives"] = [{"name": a.name, "version": a.version} for a in self.alternatives]
        return document


_PLAIN_LOADER: Any = getattr(yaml, "CBaseLoader", yaml.BaseLoader)  # every scalar a string: "1.10" stays "1.10"


def plugin_dependencies(rules_text: str, *, where: str = "the rules file") -> tuple[Dependency, ...]:
    """The rules file's ``required_plugin_versions``, as falcoctl's ``registry push`` copies them into the config.

    falcoctl reads the first item holding ``required_plugin_versions`` and keeps its entries as they are
    (``cmd/registry/push/push.go``, ``rulesConfigLayer``). Versions are read as text, never as numbers.

    Args:
        rules_text: the rules file.
        where: the file's name, for messages.

    Returns:
        The dependencies in the file's order; none when the file names no plugin.

    Raises:
        RuleError: the file is not a YAML list, or an entry lacks a name or version.

    >>> plugin_dependencies("- required_plugin_versions:\\n  - name: torsets\\n    version: 0.1.0\\n- list: a\\n")
    (Dependency(name='torsets', version='0.1.0', alternatives=()),)
    """
    try:
        document = yaml.load(rules_text, Loader=_PLAIN_LOADER)  # BaseLoader: strings, lists and maps only
    except yaml.YAMLError as exc:
        raise RuleError(f"{where} is not YAML: {_one_line(str(exc), 200)}", path=where) from exc
    if document is None:
        return ()
    if not isinstance(document, list):
        raise RuleError(f"{where} is not a Falco rules file (a YAML list)", path=where)
    for item in document:
        if isinstance(item, dict) and "required_plugin_versions" in item:
            entries = item["required_plugin_versions"]
            if not isinstance(entries, list):
                raise RuleError(f"required_plugin_versions in {where} is not a list", path=where)
            return tuple(_dependency(entry, where) for entry in entries)
    return ()


def _dependency(entry: object, where: str, *, nested: bool = False) -> Dependency:
    # {"name": "torsets", "version": "0.1.0", "alternatives": [{"name": "...", "version": "..."}]}
    if not isinstance(entry, dict):
        raise RuleError(f"required_plugin_versions in {where} holds {entry!r}, not a name and version", path=where)
    name, version, alternatives = entry.get("name"), entry.get("version"), entry.get("alternatives") or []
    if not isinstance(name, str) or not name or not isinstance(version, str) or not version:
        raise RuleError(f"required_plugin_versions in {where} has an entry without name or version", path=where)
    if not isinstance(alternatives, list) or (nested and alternatives):
        raise RuleError(f"required_plugin_versions in {where}: alternatives of {name} are not a list", path=where)
    return Dependency(name, version, tuple(_dependency(a, where, nested=True) for a in alternatives))


def artifact_config(
    name: str,
    version: str,
    *,
    dependencies: Sequence[Dependency] = (),
    requirements: Mapping[str, str] | None = None,
) -> bytes:
    """The config blob of a falcoctl artifact, in falcoctl's ``ArtifactConfig`` JSON (``pkg/oci/types.go``).

    Keys in the struct's order, empty ones left out (``omitempty``); requirements sorted by name, as
    ``ArtifactConfig.SetRequirement`` keeps them.

    >>> artifact_config("torsets", "0.1.0", requirements={"plugin_api_version": "3.3.0"}).decode()
    '{"name":"torsets","version":"0.1.0","requirements":[{"name":"plugin_api_version","version":"3.3.0"}]}'
    """
    document: dict[str, Any] = {"name": name, "version": check_version(version)}
    if dependencies:
        document["dependencies"] = [d.as_json() for d in dependencies]
    if requirements:
        document["requirements"] = [{"name": k, "version": v} for k, v in sorted(requirements.items())]
    return json.dumps(document, separators=(",", ":")).encode()


def rulesfile_config(
    name: str, version: str, *, engine_version: str | None, dependencies: Sequence[Dependency] = ()
) -> bytes:
    """The config blob of a rulesfile artifact: name, version, the plugins it needs, the engine it needs.

    Args:
        name: the artifact's name (falcoctl uses the repository's last path component).
        version: the artifact's version, ``MAJOR.MINOR.PATCH``.
        engine_version: the required engine version, integer or semver; ``None`` for no requirement.
        dependencies: the rules file's ``required_plugin_versions``.

    >>> rulesfile_config("tor-rules", "1.20260228.100", engine_version="0.31.0").decode()
    '{"name":"tor-rules","version":"1.20260228.100","requirements":[{"name":"engine_version_semver","version":"0.31.0"}]}'
    """
    requirements = {ENGINE_REQUIREMENT: engine_requirement(engine_version)} if engine_version is not None else None
    return artifact_config(name, version, dependencies=dependencies, requirements=requirements)


def file_layer(data: bytes, filename: str, *, mode: int = 0o644) -> bytes:
    """A layer blob: a tar.gz holding ``data`` as ``filename`` at its root, the same bytes for the same input.

    The tar entry has ``mode``, owner 0:0, no owner names and mtime 0 (USTAR, no PAX headers); the gzip header
    has mtime 0 and no file name. falcoctl extracts it into the folder of the artifact's type
    (``internal/utils/extract.go``: regular files only, no ``..``).

    Args:
        data: the file's bytes.
        filename: the name falcoctl installs the file under (no directory part).
        mode: the file's permission bits (0644; 0755 for a plugin library).

    Returns:
        The compressed archive.

    Raises:
        ValueError: ``filename`` is not a plain file name.
    """
    if "/" in filename or filename in {"", ".", ".."} or ".." in filename:
        raise ValueError(f"{filename!r} is not a plain file name")
    entry = tarfile.TarInfo(name=filename)
    entry.size = len(data)
    entry.mode = mode
    entry.mtime = 0
    entry.uid = entry.gid = 0
    entry.uname = entry.gname = ""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(entry, io.BytesIO(data))
    compressed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, compresslevel=9, mtime=0) as stream:
        stream.write(archive.getvalue())
    return compressed.getvalue()


# --- artifacts: images, manifests and the plugin's index -----------------------------------------------------

#: falcoctl's artifact types and their (config, layer) media types, ``pkg/oci/constants.go``
MEDIA_TYPES: dict[str, tuple[str, str]] = {
    "rulesfile": (RULESFILE_CONFIG_MEDIA_TYPE, RULESFILE_LAYER_MEDIA_TYPE),
    "plugin": (PLUGIN_CONFIG_MEDIA_TYPE, PLUGIN_LAYER_MEDIA_TYPE),
    "asset": (ASSET_CONFIG_MEDIA_TYPE, ASSET_LAYER_MEDIA_TYPE),
}
ARTIFACT_TYPES = tuple(MEDIA_TYPES)


def _digest(blob: bytes) -> str:
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def _descriptor(media_type: str, blob: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": _digest(blob), "size": len(blob)}


def _clean_annotations(annotations: Mapping[str, str]) -> dict[str, str]:
    """Sorted, and without the user information of any URL in a value (a source URL may carry credentials)."""
    return {key: redact_url(value) for key, value in sorted(annotations.items())}


@dataclass(frozen=True, slots=True)
class Image:
    """One OCI image manifest as falcoctl's pusher packs it: a config blob and one layer holding one file."""

    kind: str
    config: bytes
    layer: bytes
    layer_title: str
    annotations: Mapping[str, str]
    #: ``(os, architecture)`` for a plugin, as Go names them (``linux``, ``amd64``); ``None`` otherwise
    platform: tuple[str, str] | None = None

    def manifest(self) -> bytes:
        """The manifest's exact bytes (compact JSON, annotations sorted and redacted)."""
        config_type, layer_type = MEDIA_TYPES[self.kind]
        layer = _descriptor(layer_type, self.layer)
        layer["annotations"] = {ANNOTATION_TITLE: self.layer_title}
        document: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST_MEDIA_TYPE,
            "config": _descriptor(config_type, self.config),
            "layers": [layer],
        }
        if self.annotations:
            document["annotations"] = _clean_annotations(self.annotations)
        return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class Artifact:
    """A falcoctl artifact ready to push: one image (rulesfile, asset) or one per platform behind an index
    (plugin, ``pkg/oci/pusher/pusher.go``)."""

    kind: str
    name: str
    version: str
    images: tuple[Image, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)

    def root(self) -> tuple[str, bytes]:
        """The media type and bytes of what the tags point at: the manifest, or the plugin's image index."""
        if self.kind != "plugin":
            return OCI_MANIFEST_MEDIA_TYPE, self.images[0].manifest()
        manifests = []
        for image in self.images:
            if image.platform is None:
                raise ValueError("every image of a plugin artifact names its platform")
            descriptor = _descriptor(OCI_MANIFEST_MEDIA_TYPE, image.manifest())
            descriptor["platform"] = {"architecture": image.platform[1], "os": image.platform[0]}
            manifests.append(descriptor)
        document: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX_MEDIA_TYPE, "manifests": manifests}
        if self.annotations:
            document["annotations"] = _clean_annotations(self.annotations)
        return OCI_INDEX_MEDIA_TYPE, json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()

    def tags(self, reference_tag: str, extra: Sequence[str] = (), *, floating: bool = True) -> tuple[str, ...]:
        """The tags to set, in the order they are set: the version and ``extra`` (fixed names) first, then the
        reference's tag and the floating ``MAJOR`` and ``MAJOR.MINOR``, which followers watch.

        >>> Artifact("rulesfile", "tor-rules", "1.20260228.100", ()).tags("latest", ["2026-02-28T0100"])
        ('1.20260228.100', '2026-02-28T0100', 'latest', '1', '1.20260228')
        """
        moving = floating_tags(self.version) if floating else ()
        return tuple(dict.fromkeys([self.version, *extra, reference_tag, *moving]))


def _stem_title(filename: str) -> str:
    # falcoctl names the archive after the file's first dot-separated part (internal/utils/compress.go)
    return f"{filename.partition('.')[0] or filename}.tar.gz"


def _data_annotations(annotations: Mapping[str, str], filename: str, version: str) -> dict[str, str]:
    return {ANNOTATION_TITLE: filename, ANNOTATION_VERSION: version, **annotations}


def rulesfile_artifact(
    rules: bytes,
    filename: str,
    *,
    name: str,
    version: str,
    engine_version: str | None,
    annotations: Mapping[str, str] | None = None,
) -> Artifact:
    """A rulesfile artifact: config with name, version, ``dependencies`` (the file's ``required_plugin_versions``)
    and ``requirements`` (the engine version), and one layer holding the rules file.

    Args:
        rules: the rules file's bytes.
        filename: the name falcoctl installs it under.
        name: the artifact's name (what falcoctl's index and dependency resolution know it by).
        version: ``MAJOR.MINOR.PATCH``, e.g. :func:`data_version` of the relay data.
        engine_version: the required engine version; ``None`` reads the file's ``required_engine_version``.
        annotations: manifest annotations (see :func:`default_annotations`); title and version are added.

    Raises:
        RuleError: the file is not a YAML list of rules or its ``required_plugin_versions`` is malformed.
        RegistryError: a bad engine version.
        UsageError: a bad version.
    """
    text = rules.decode("utf-8", errors="replace")
    if engine_version is None:
        engine_version = _engine_version_in(text)
    config = rulesfile_config(
        name,
        version,
        engine_version=engine_version,
        dependencies=plugin_dependencies(text, where=filename),
    )
    image = Image(
        "rulesfile",
        config,
        file_layer(rules, filename),
        _stem_title(filename),
        _data_annotations(annotations or {}, filename, version),
    )
    return Artifact("rulesfile", name, version, (image,))


def asset_artifact(
    data: bytes, filename: str, *, name: str, version: str, annotations: Mapping[str, str] | None = None
) -> Artifact:
    """An asset artifact (a file a plugin reads, e.g. the relay table): config with name and version, one layer.

    falcoctl installs assets into its assets folder (``artifact.follow.assetsDir``) and, as a follower, replaces
    the file when the followed tag moves; Falco itself does not watch it.

    Raises:
        UsageError: a bad version.
    """
    config = artifact_config(name, version)
    image = Image(
        "asset",
        config,
        file_layer(data, filename),
        _stem_title(filename),
        _data_annotations(annotations or {}, filename, version),
    )
    return Artifact("asset", name, version, (image,))


@dataclass(frozen=True, slots=True)
class PluginIdentity:
    """What a plugin library says about itself (``plugin_get_name``, ``plugin_get_version``,
    ``plugin_get_required_api_version``, ``plugin_get_description``)."""

    name: str
    version: str
    required_api_version: str
    description: str = ""


@dataclass(frozen=True, slots=True)
class PluginLibrary:
    """A plugin's shared library: its bytes, file name, platform ``(os, architecture)`` and identity."""

    data: bytes = field(repr=False)
    filename: str
    platform: tuple[str, str]
    identity: PluginIdentity


def plugin_artifact(libraries: Sequence[PluginLibrary], annotations: Mapping[str, str] | None = None) -> Artifact:
    """A plugin artifact: an image index with one image per platform, each with config ``name`` (the name compiled
    into the library), ``version`` and requirement ``plugin_api_version``, and a layer holding the library.

    The configuration is what falcosecurity/plugins' registry tool writes (``build/registry/pkg/oci/configLayer.go``,
    ``pluginConfig``); the index is what falcoctl's pusher writes for plugins (``pkg/oci/pusher/pusher.go``).

    Raises:
        UsageError: no library, two for one platform, libraries that disagree on name, version or API, or
            differently named files (Falco's ``library_path`` names one).
    """
    if not libraries:
        raise UsageError("a plugin artifact needs at least one library")
    first = libraries[0]
    identity = first.identity
    for library in libraries[1:]:
        if library.identity != identity:
            raise UsageError(f"the libraries disagree: {library.identity} and {identity}")
        if library.filename != first.filename:
            raise UsageError(f"the libraries have different names ({library.filename}, {first.filename})")
    platforms = [library.platform for library in libraries]
    if len(set(platforms)) != len(platforms):
        raise UsageError(f"two libraries for the same platform among {', '.join('/'.join(p) for p in platforms)}")
    config = artifact_config(
        identity.name, identity.version, requirements={PLUGIN_API_REQUIREMENT: identity.required_api_version}
    )
    merged = {ANNOTATION_TITLE: first.filename, ANNOTATION_VERSION: identity.version, **(annotations or {})}
    images = tuple(
        Image(
            "plugin",
            config,
            file_layer(lib.data, lib.filename, mode=0o755),
            _stem_title(lib.filename),
            merged,
            lib.platform,
        )
        for lib in sorted(libraries, key=lambda lib: lib.platform)
    )
    return Artifact("plugin", identity.name, identity.version, images, merged)


# --- plugin libraries ----------------------------------------------------------------------------------------

#: ELF ``e_machine`` → Go's architecture name, for the architectures Falco is built for
_ELF_MACHINES = {0x3E: "amd64", 0xB7: "arm64"}

# Runs in a child process: loading a library runs its constructors, and a broken one may crash; the parent only
# reads one line of JSON. The same calls Falco's plugin loader and falcosecurity/plugins' registry tool make.
_IDENTITY_SCRIPT = """
import ctypes, json, sys
lib = ctypes.CDLL(sys.argv[1])
found = {}
for key in ("name", "version", "required_api_version", "description"):
    function = getattr(lib, "plugin_get_" + key)
    function.restype = ctypes.c_char_p
    value = function()
    found[key] = value.decode("utf-8", "replace") if value is not None else None
print(json.dumps(found))
"""


def elf_platform(data: bytes) -> tuple[str, str]:
    """The ``(os, architecture)`` a shared library is built for, from its ELF header, with Go's names.

    >>> elf_platform(b"\\x7fELF\\x02\\x01\\x01" + bytes(9) + b"\\x03\\x00\\x3e\\x00")
    ('linux', 'amd64')

    Raises:
        UsageError: not a little-endian 64-bit ELF file for x86-64 or AArch64.
    """
    # e_ident: magic, class (2: 64-bit), data (1: little-endian), ...; e_type at 16, e_machine at 18 (u16)
    if len(data) < 20 or data[:4] != b"\x7fELF":
        raise UsageError("not an ELF shared library")
    if data[4] != 2 or data[5] != 1:
        raise UsageError("not a little-endian 64-bit ELF library (Falco runs on x86-64 and AArch64)")
    machine = int.from_bytes(data[18:20], "little")
    if machine not in _ELF_MACHINES:
        raise UsageError(f"an ELF library for machine {machine:#x}, not x86-64 or AArch64")
    return "linux", _ELF_MACHINES[machine]


def read_plugin(path: Path, *, timeout: float = 30.0) -> PluginLibrary:
    """Read a plugin library: its platform from the ELF header, its identity by loading it in a child process.

    Args:
        path: the library, e.g. ``libtorsets.so`` from ``tor-sets plugin build``.
        timeout: seconds the child process may take.

    Raises:
        UsageError: the file cannot be read, is not a library for this machine's kind, cannot be loaded here, or
            does not export the plugin API's identity functions with a usable name and semver versions.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read plugin library {path}: {exc.strerror or exc}") from exc
    try:
        platform = elf_platform(data)
    except UsageError as exc:
        raise UsageError(f"{path}: {exc}") from exc
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-c", _IDENTITY_SCRIPT, str(path.resolve())],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise UsageError(f"loading plugin library {path} took over {timeout:g} s") from exc
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise UsageError(f"cannot load plugin library {path} on this machine: {_one_line(reason, 200)}")
    try:
        found = json.loads(done.stdout)
        identity = PluginIdentity(
            str(found["name"]),
            str(found["version"]),
            str(found["required_api_version"]),
            str(found["description"] or ""),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"plugin library {path} did not tell its name and versions") from exc
    if not _PLUGIN_NAME.fullmatch(identity.name):
        raise UsageError(f"plugin library {path} is named {identity.name!r}, not a usable artifact name")
    for what, value in (("version", identity.version), ("required API version", identity.required_api_version)):
        if not _SEMVER.fullmatch(value):
            raise UsageError(f"plugin library {path} has {what} {value!r}, not MAJOR.MINOR.PATCH")
    return PluginLibrary(data, path.name, platform, identity)


_PLUGIN_NAME = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*")
# --- references, hosts and credentials -----------------------------------------------------------------------

_REPOSITORY = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
# "registry.example.com", "127.0.0.1:5000", "[::1]:5000": a host name, an IPv4 address or a bracketed IPv6 address,
# and a port; nothing else (no user information, no path, no spaces), so the host judged is the host connected to
_REGISTRY = re.compile(
    r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*))(?::(?P<port>[0-9]{1,5}))?"
)


class ReferenceSyntaxError(RegistryError, UsageError):
    """A reference that is not ``[oci://]REGISTRY/REPOSITORY[:TAG|@DIGEST]``: a usage error (exit 2)."""


@dataclass(frozen=True, slots=True)
class OciRef:
    """``REGISTRY/REPOSITORY`` with a tag or a digest (exactly one of them is set)."""

    registry: str
    repository: str
    tag: str | None = "latest"
    digest: str | None = None

    @property
    def reference(self) -> str:
        """The tag or digest, as the registry API's ``/manifests/<reference>`` wants it."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        separator = "@" if self.digest else ":"
        return f"{self.registry}/{self.repository}{separator}{self.reference}"


def parse_ref(ref: str) -> OciRef:
    """Parse ``[oci://]REGISTRY/REPOSITORY[:TAG|@sha256:DIGEST]``; the tag defaults to ``latest``.

    The registry is required (there is no implicit Docker Hub): it is the first path component and must be
    ``host[:port]`` with a host name, an IPv4 address or a bracketed IPv6 address, and look like a registry (a dot,
    a port, ``localhost`` or an IPv6 literal). Anything else, notably ``@`` (which HTTP libraries read as user
    information before the real host), is refused.

    Raises:
        ReferenceSyntaxError: the reference does not have that shape.

    >>> str(parse_ref("oci://127.0.0.1:5000/security/tor-rules"))
    '127.0.0.1:5000/security/tor-rules:latest'
    """
    body = ref.removeprefix("oci://")
    if "://" in body:
        raise ReferenceSyntaxError(f"reference {ref!r}: only oci:// references are accepted")
    registry, slash, rest = body.partition("/")
    if "@" in registry:
        raise ReferenceSyntaxError(
            f"reference {ref!r}: the registry part {registry!r} holds '@', and an HTTP client would take what "
            "precedes it for user information and connect to what follows; name the registry as host[:port] "
            "(credentials come from TOR_SETS_REGISTRY_USERNAME/PASSWORD or the Docker configuration)"
        )
    looks_like_host = "." in registry or ":" in registry or registry == "localhost" or registry.startswith("[")
    if not slash or not rest or not looks_like_host:
        raise ReferenceSyntaxError(
            f"reference {ref!r} needs a registry host, e.g. oci://registry.example.com/tor-rules:latest"
        )
    _check_registry(registry, ref)
    digest: str | None = None
    tag: str | None = "latest"
    if "@" in rest:
        rest, _, digest = rest.partition("@")
        tag = None
        if not _DIGEST.fullmatch(digest):
            raise ReferenceSyntaxError(f"reference {ref!r}: the digest must be sha256:<64 hex digits>")
    elif ":" in rest:
        rest, _, tag = rest.rpartition(":")
        if not _TAG.fullmatch(tag):
            raise ReferenceSyntaxError(f"reference {ref!r}: {tag!r} is not a valid tag")
    if not _REPOSITORY.fullmatch(rest):
        raise ReferenceSyntaxError(
            f"reference {ref!r}: {rest!r} is not a valid repository name (lower case, digits, ._-/)"
        )
    return OciRef(registry=registry, repository=rest, tag=tag, digest=digest)


def _check_registry(registry: str, ref: str) -> None:
    match = _REGISTRY.fullmatch(registry)
    problem = None if match else "is not host[:port]"
    if match and match["ipv6"]:
        try:
            ipaddress.IPv6Address(match["ipv6"])
        except ValueError:
            problem = "has an invalid IPv6 address"
    if match and match["port"] and not 0 < int(match["port"]) < 65536:
        problem = "has a port outside 1-65535"
    if problem:
        raise ReferenceSyntaxError(f"reference {ref!r}: the registry {registry!r} {problem}")


def _host(registry: str) -> str:
    if registry.startswith("["):
        return registry[1:].partition("]")[0]
    return registry.partition(":")[0] if registry.count(":") == 1 else registry


def _is_loopback(registry: str) -> bool:
    host = _host(registry).lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _same_host(a: str, b: str) -> bool:
    """Whether two host names or address literals (brackets optional) name the same host, textually."""
    first, second = _host(a).lower(), _host(b).lower()
    try:
        return ipaddress.ip_address(first) == ipaddress.ip_address(second)
    except ValueError:
        return first == second


def _use_plain_http(registry: str, plain_http: bool | None) -> bool:
    loopback = _is_loopback(registry)
    if plain_http and not loopback:
        raise RegistryError(
            f"plain HTTP is allowed only for a loopback registry (127.0.0.0/8, ::1, localhost), not {registry}",
            registry=registry,
        )
    return loopback if plain_http is None else plain_http


@dataclass(frozen=True, slots=True)
class RegistryCredentials:
    """A user name and password for a registry, and where they were found; the password stays out of ``repr``."""

    username: str
    password: str = field(repr=False)
    origin: str = ""

    @property
    def basic(self) -> str:
        return base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


def registry_credentials(registry: str, environ: Mapping[str, str] | None = None) -> RegistryCredentials | None:
    """The credentials for ``registry``: environment first, then the Docker client's configuration.

    Looked up in order: ``TOR_SETS_REGISTRY_USERNAME`` and ``TOR_SETS_REGISTRY_PASSWORD``; the ``auths`` entry for
    the registry in ``$DOCKER_CONFIG/config.json`` (or ``~/.docker/config.json``), inline ``auth`` or
    ``username``/``password``; its ``credHelpers`` entry or ``credsStore`` (``docker-credential-NAME get``).
    Credentials never appear in a message, a log line or a ``repr``.

    Args:
        registry: ``host[:port]`` as in the reference.
        environ: the environment (``os.environ`` when ``None``).

    Returns:
        The credentials, or ``None`` for anonymous access.

    Raises:
        RegistryError: only one of the two variables is set, or the Docker configuration is not JSON.
    """
    env = os.environ if environ is None else environ
    username = env.get("TOR_SETS_REGISTRY_USERNAME", "")
    password = env.get("TOR_SETS_REGISTRY_PASSWORD", "")
    if username and password:
        return RegistryCredentials(username, password, "TOR_SETS_REGISTRY_USERNAME/PASSWORD")
    if username or password:
        raise RegistryError("set both TOR_SETS_REGISTRY_USERNAME and TOR_SETS_REGISTRY_PASSWORD, or neither")
    folder = env.get("DOCKER_CONFIG")
    path = Path(folder) / "config.json" if folder else Path(env.get("HOME", str(Path.home()))) / ".docker/config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RegistryError(f"cannot read the Docker configuration {path}: not readable JSON") from exc
    if not isinstance(config, dict):
        raise RegistryError(f"cannot read the Docker configuration {path}: not a JSON object")
    auths = config.get("auths") or {}
    for key, entry in auths.items() if isinstance(auths, dict) else ():
        if _auth_key_host(key) == registry and isinstance(entry, dict):
            found = _inline_credentials(entry, str(path))
            if found is not None:
                return found
    helpers = config.get("credHelpers") or {}
    helper = helpers.get(registry) if isinstance(helpers, dict) else None
    helper = helper or config.get("credsStore")
    if isinstance(helper, str) and helper:
        return _helper_credentials(helper, registry)
    return None


def _auth_key_host(key: str) -> str:
    # "registry.example.com", "https://registry.example.com", "https://index.docker.io/v1/"
    return key.removeprefix("https://").removeprefix("http://").partition("/")[0]


def _inline_credentials(entry: Mapping[str, Any], origin: str) -> RegistryCredentials | None:
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            username, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise RegistryError(f"the 'auth' entry in {origin} is not base64 of user:password") from exc
        if username and password:
            return RegistryCredentials(username, password, origin)
    plain_user, plain_password = entry.get("username"), entry.get("password")
    if isinstance(plain_user, str) and isinstance(plain_password, str) and plain_user and plain_password:
        return RegistryCredentials(plain_user, plain_password, origin)
    return None


def _helper_credentials(helper: str, registry: str) -> RegistryCredentials | None:
    binary = f"docker-credential-{helper}"
    try:
        done = subprocess.run([binary, "get"], input=registry.encode(), capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        log.debug("credential helper %s is unavailable; trying without credentials", binary)
        return None
    if done.returncode != 0:
        log.debug("credential helper %s has nothing for %s", binary, registry)
        return None
    try:
        payload = json.loads(done.stdout)
        return RegistryCredentials(str(payload["Username"]), str(payload["Secret"]), binary)
    except (ValueError, KeyError, TypeError):
        log.debug("credential helper %s answered something that is not its JSON", binary)
        return None


# --- the registry client -------------------------------------------------------------------------------------

_MAX_REDIRECTS = 3
# 'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull"'
_CHALLENGE_PARAM = re.compile(r'(?P<key>[A-Za-z][\w-]*)\s*=\s*(?:"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<bare>[^\s,]*))')


class _Session(requests.Session):
    """A session that puts a timeout on every request."""

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", _TIMEOUT)
        if kwargs["timeout"] is None:
            kwargs["timeout"] = _TIMEOUT
        return super().request(method, url, *args, **kwargs)


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _registry_complaint(response: requests.Response) -> str:
    """``CODE: message`` from the registry's error document, or the HTTP status."""
    try:
        errors = response.json().get("errors") or []
        first = errors[0]
        return _one_line(f"{first.get('code', 'ERROR')}: {first.get('message', '')}".rstrip(": "))
    except (ValueError, AttributeError, IndexError, TypeError):
        return f"HTTP {response.status_code} {response.reason or ''}".strip()


def _connection_reason(exc: BaseException) -> str:
    # requests nests the socket error several layers deep: "... [Errno 111] Connection refused'))"
    # ... or an SSL error: "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)"
    match = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(exc)) or re.search(r"\[SSL: \w+\] ([^'\"(]+)", str(exc))
    return match[1].strip() if match else type(exc).__name__


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    """The scheme and parameters of a ``WWW-Authenticate`` challenge.

    >>> _challenge('Bearer realm="https://auth.example/token",service="reg",scope="repository:a:pull"')[1]["scope"]
    'repository:a:pull'
    """
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m["key"].lower(): m["quoted"] if m["quoted"] is not None else m["bare"] for m in _CHALLENGE_PARAM.finditer(rest)
    }
    return scheme.lower(), {k: v.replace('\\"', '"') for k, v in params.items()}


def _authority(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port of ``url`` as the HTTP library will connect; the port ``None`` when it is the
    scheme's default."""
    parsed = urllib3.util.parse_url(url)
    default = {"http": 80, "https": 443}.get(parsed.scheme or "")
    host = _host(parsed.host or "").lower()
    return parsed.scheme or "", host, None if parsed.port in (None, default) else parsed.port


@functools.cache
def _registry_class() -> type[Any]:
    try:
        import oras.provider
    except ImportError as exc:
        raise RegistryError("publishing needs the 'oras' package: pip install 'tor-sets[fleet]'") from exc

    class _Registry(oras.provider.Registry):  # type: ignore[misc]
        """oras' registry client (blob uploads) with tor-sets' own requests: a timeout on each, one attempt,
        errors as :class:`RegistryError`, plain HTTP only to loopback, credentials only to the registry's own
        host and to a token service that passes the same policy."""

        session: requests.Session

        def __init__(self, registry: str, *, plain_http: bool, credentials: RegistryCredentials | None) -> None:
            super().__init__(hostname=registry, insecure=plain_http)
            session = _Session()
            session.cookies = self.session.cookies  # keeps oras' "accept no cookies" policy
            session.trust_env = not _is_loopback(registry)  # no proxy for a registry on this machine
            self.session = session
            self._credentials = credentials
            self._challenge = ""
            self._token = ""
            self._own = _authority(f"{self.prefix}://{registry}/")

        def _authorization(self) -> dict[str, str]:
            if self._challenge == "basic" and self._credentials is not None:
                return {"Authorization": f"Basic {self._credentials.basic}"}
            return {"Authorization": f"Bearer {self._token}"} if self._challenge == "bearer" and self._token else {}

        def _check_url(self, url: str) -> None:
            """Refuse a URL the registry handed us (a redirect, an upload location) that would leave loopback in
            clear or hide its host behind user information."""
            try:
                parsed = urllib3.util.parse_url(url)
            except urllib3.exceptions.LocationParseError as exc:
                raise RegistryError(f"registry {self.hostname} sent an unusable URL", registry=self.hostname) from exc
            if parsed.scheme not in ("http", "https") or not parsed.host or parsed.auth:
                raise RegistryError(
                    f"registry {self.hostname} sent tor-sets to {redact_url(url)!r}: refused (only http(s) URLs "
                    "without user information)",
                    registry=self.hostname,
                )
            if parsed.scheme == "http" and not _is_loopback(parsed.host):
                raise RegistryError(
                    f"registry {self.hostname} sent tor-sets to {redact_url(url)} over plain HTTP: refused (plain "
                    "HTTP only on loopback)",
                    registry=self.hostname,
                )

        def _send(
            self, method: str, url: str, *, headers: Mapping[str, str], subject: str = "", **kwargs: Any
        ) -> requests.Response:
            """One request; redirects of reads are followed here (at most three), each hop checked, and the
            credentials dropped when a hop changes host. ``subject`` names the server in messages (default: the
            registry)."""
            via = "" if subject else f" over {self.prefix}"
            subject = subject or f"registry {self.hostname}"
            sent = dict(headers)
            for _ in range(_MAX_REDIRECTS + 1):
                self._check_url(url)
                response = self._request(method, url, subject, via, headers=sent, allow_redirects=False, **kwargs)
                if not (response.is_redirect and method in ("GET", "HEAD")):
                    return response
                response.close()
                target = urllib.parse.urljoin(url, response.headers["Location"])
                if _authority(target) != _authority(url):
                    sent = {k: v for k, v in sent.items() if k.lower() != "authorization"}
                url = target
            raise RegistryError(f"{subject} redirected more than {_MAX_REDIRECTS} times", registry=self.hostname)

        def _request(self, method: str, url: str, subject: str, via: str, **kwargs: Any) -> requests.Response:
            try:
                response: requests.Response = self.session.request(method, url, **kwargs)
            except requests.exceptions.SSLError as exc:
                hint = "; a plain-HTTP registry on loopback needs --plain-http" if _is_loopback(self.hostname) else ""
                raise RegistryError(
                    f"TLS with {subject} failed ({_connection_reason(exc)}){hint}", registry=self.hostname
                ) from exc
            except requests.Timeout as exc:
                raise RegistryError(
                    f"{subject} did not answer within {_TIMEOUT[1]:.0f} s", registry=self.hostname
                ) from exc
            except requests.ConnectionError as exc:
                raise RegistryError(
                    f"cannot reach {subject}{via}: {_connection_reason(exc)}", registry=self.hostname
                ) from exc
            return response

        def do_request(
            self,
            url: str,
            method: str = "GET",
            data: Any = None,
            headers: dict[str, str] | None = None,
            json: Any = None,
            stream: bool = False,
        ) -> requests.Response:
            own = _authority(url) == self._own
            options = {"data": data, "json": json, "stream": stream}
            sent = {**(headers or {}), **(self._authorization() if own else {})}
            response = self._send(method, url, headers=sent, **options)
            if response.status_code == 401 and own:
                self._authenticate(response)
                sent = {**(headers or {}), **self._authorization()}
                response = self._send(method, url, headers=sent, **options)
                if response.status_code == 401:
                    raise RegistryError(
                        f"registry {self.hostname} rejected the credentials ({_registry_complaint(response)})",
                        registry=self.hostname,
                    )
            if response.status_code == 403:
                raise RegistryError(
                    f"registry {self.hostname} denied access ({_registry_complaint(response)})", registry=self.hostname
                )
            return response

        def _authenticate(self, response: requests.Response) -> None:
            scheme, params = _challenge(response.headers.get("Www-Authenticate", ""))
            if scheme == "basic":
                if self._credentials is None:
                    raise RegistryError(
                        f"registry {self.hostname} needs credentials: set TOR_SETS_REGISTRY_USERNAME and "
                        "TOR_SETS_REGISTRY_PASSWORD or log in with docker login",
                        registry=self.hostname,
                    )
                self._challenge = "basic"
                return
            if scheme == "bearer" and (token := self._bearer_token(params)):
                self._token = token
                self._challenge = "bearer"
                return
            raise RegistryError(
                f"registry {self.hostname} needs credentials that were not accepted or not given",
                registry=self.hostname,
            )

        def _check_realm(self, realm: str) -> None:
            """The token service gets the credentials: over plain HTTP only on the registry's own loopback host."""
            try:
                parsed = urllib3.util.parse_url(realm)
            except urllib3.exceptions.LocationParseError:
                parsed = urllib3.util.Url()
            if parsed.scheme not in ("http", "https") or not parsed.host or parsed.auth:
                raise RegistryError(
                    f"registry {self.hostname} sent a token service that is not an http(s) URL without user "
                    f"information: {redact_url(realm)!r}",
                    registry=self.hostname,
                )
            if parsed.scheme == "http" and not (_is_loopback(parsed.host) and _same_host(parsed.host, self.hostname)):
                raise RegistryError(
                    f"registry {self.hostname} sent its token service to {realm} over plain HTTP: refused, "
                    "credentials go over plain HTTP only to the registry's own loopback host",
                    registry=self.hostname,
                )

        def _bearer_token(self, params: Mapping[str, str]) -> str | None:
            """A token from the challenge's realm: anonymous without credentials, else for Basic credentials."""
            realm = params.get("realm", "")
            self._check_realm(realm)
            query = {key: params[key] for key in ("service", "scope") if params.get(key)}
            headers = {"Accept": "application/json"}
            if self._credentials is not None:
                headers["Authorization"] = f"Basic {self._credentials.basic}"
            subject = f"the token service of registry {self.hostname} at {realm}"
            response = self._send("GET", realm, headers=headers, params=query, subject=subject)
            if response.status_code != 200:
                log.debug("%s answered HTTP %d", subject, response.status_code)
                return None
            try:
                answer = response.json()
                token = answer.get("token") or answer.get("access_token")
            except (ValueError, AttributeError) as exc:
                raise RegistryError(f"{subject} did not answer a JSON token", registry=self.hostname) from exc
            return token if isinstance(token, str) and token else None

        def url(self, target: OciRef, path: str) -> str:
            return f"{self.prefix}://{target.registry}/v2/{target.repository}/{path}"

        def push_blob(self, target: OciRef, blob: bytes, media_type: str, folder: Path) -> None:
            descriptor = _descriptor(media_type, blob)
            path = folder / descriptor["digest"].replace(":", "-")
            path.write_bytes(blob)
            container = self.get_container("placeholder")  # set field by field: no guessing of the registry
            container.registry = target.registry
            container.namespace, _, container.repository = target.repository.rpartition("/")
            container.tag = target.reference
            try:
                response: requests.Response = self.upload_blob(str(path), container, descriptor)
            except ValueError as exc:  # oras: no upload location in the registry's answer
                raise RegistryError(
                    f"registry {self.hostname} did not start a blob upload for {target.repository}",
                    registry=self.hostname,
                ) from exc
            if response.status_code not in (200, 201, 202):
                raise RegistryError(
                    f"registry {self.hostname} refused a {media_type} blob: {_registry_complaint(response)}",
                    registry=self.hostname,
                )

        def push_manifest(self, target: OciRef, reference: str, body: bytes, media_type: str) -> None:
            digest = _digest(body)
            response = self.do_request(
                self.url(target, f"manifests/{reference}"), "PUT", data=body, headers={"Content-Type": media_type}
            )
            if response.status_code not in (200, 201):
                raise RegistryError(
                    f"registry {self.hostname} refused the manifest for {reference}: {_registry_complaint(response)}",
                    registry=self.hostname,
                )
            answered = response.headers.get("Docker-Content-Digest")
            if answered and answered != digest:
                raise RegistryError(
                    f"registry {self.hostname} stored the manifest as {answered}, expected {digest}",
                    registry=self.hostname,
                )

        def fetch(self, url: str, what: str, accept: str | None = None) -> requests.Response:
            response = self.do_request(url, "GET", headers={"Accept": accept} if accept else {})
            if response.status_code != 200:
                raise RegistryError(
                    f"registry {self.hostname} has no {what}: {_registry_complaint(response)}", registry=self.hostname
                )
            return response

    return _Registry


def _client(registry: str, plain_http: bool | None) -> Any:
    insecure = _use_plain_http(registry, plain_http)
    return _registry_class()(registry, plain_http=insecure, credentials=registry_credentials(registry))


# --- publish and pull ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What was pushed: the root digest (manifest, or the plugin's index), the primary reference, every tag set
    on it, and the artifact's type, name and version."""

    digest: str
    ref: str
    tags: tuple[str, ...]
    kind: str = "rulesfile"
    name: str = ""
    version: str = ""


@dataclass(frozen=True, slots=True)
class PulledArtifact:
    """A falcoctl artifact read back from a registry, checked against its digests.

    ``digest`` is the root's (what the tag points at); for a plugin, ``index`` is the image index and
    ``manifest`` the chosen platform's manifest.
    """

    kind: str
    content: bytes
    filename: str
    manifest: Mapping[str, Any]
    config: Mapping[str, Any]
    digest: str
    index: Mapping[str, Any] | None = None


def _target(ref: str, plain_http: bool | None) -> OciRef:
    target = parse_ref(ref)
    if target.digest is not None:
        raise ReferenceSyntaxError(f"reference {ref!r}: publish to a tag, not a digest")
    _use_plain_http(target.registry, plain_http)  # refuse before reading anything
    return target


def push(
    ref: str,
    artifact: Artifact,
    *,
    extra_tags: Sequence[str] = (),
    floating: bool = True,
    plain_http: bool | None = None,
) -> PublishResult:
    """Push ``artifact`` to ``ref`` and set its tags (see :meth:`Artifact.tags`).

    Blobs first, then each platform's manifest by digest (for a plugin), then the root under each tag: a tag
    only ever points at a complete artifact, and a failure leaves the tags where they were.

    Args:
        ref: ``[oci://]REGISTRY/REPOSITORY[:TAG]`` (tag ``latest`` when absent).
        artifact: what to push (:func:`rulesfile_artifact`, :func:`asset_artifact`, :func:`plugin_artifact`).
        extra_tags: more tags, e.g. the data's date for rollbacks.
        floating: also set ``MAJOR`` and ``MAJOR.MINOR`` of the version.
        plain_http: ``True`` for plain HTTP (loopback registries only), ``False`` for HTTPS, ``None`` for plain
            HTTP exactly when the registry is on loopback.

    Raises:
        ReferenceSyntaxError: a bad reference or tag.
        RegistryError: plain HTTP to a remote host, or the registry failed or refused.
    """
    target = _target(ref, plain_http)
    tags = artifact.tags(target.reference, extra_tags, floating=floating)
    for tag in tags:
        if not _TAG.fullmatch(tag):
            raise ReferenceSyntaxError(f"{tag!r} is not a valid tag (letters, digits, '_', '.', '-'; at most 128)")
    root_type, root = artifact.root()
    client = _client(target.registry, plain_http)
    with tempfile.TemporaryDirectory(prefix="tor-sets-publish-") as folder:
        for image in artifact.images:
            config_type, layer_type = MEDIA_TYPES[image.kind]
            client.push_blob(target, image.layer, layer_type, Path(folder))
            client.push_blob(target, image.config, config_type, Path(folder))
    if root_type == OCI_INDEX_MEDIA_TYPE:
        for image in artifact.images:
            manifest = image.manifest()
            client.push_manifest(target, _digest(manifest), manifest, OCI_MANIFEST_MEDIA_TYPE)
    for tag in tags:
        client.push_manifest(target, tag, root, root_type)
    digest = _digest(root)
    log.debug("pushed %s %s %s as %s with tags %s", artifact.kind, artifact.name, artifact.version, digest, tags)
    return PublishResult(digest, str(target), tags, artifact.kind, artifact.name, artifact.version)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise RuleError(f"cannot read {what} {path}: {exc.strerror or exc}", path=str(path)) from exc


def publish(
    ref: str,
    rules: Path,
    *,
    version: str,
    engine_version: str | None = None,
    annotations: Mapping[str, str] | None = None,
    name: str | None = None,
    extra_tags: Sequence[str] = (),
    floating: bool = True,
    plain_http: bool | None = None,
) -> PublishResult:
    """Push ``rules`` to ``ref`` as a falcoctl rulesfile artifact (see :func:`rulesfile_artifact`, :func:`push`).

    Args:
        ref: ``[oci://]REGISTRY/REPOSITORY[:TAG]``.
        rules: the rules file; its name is the one falcoctl installs.
        version: ``MAJOR.MINOR.PATCH``; :func:`data_version` of the file's ``relays_published`` grows with the data.
        engine_version: the required engine version; ``None`` reads the file's ``required_engine_version``.
        annotations: manifest annotations (see :func:`default_annotations`).
        name: the artifact's name (default: the repository's last path component, as falcoctl does).
        extra_tags: more tags, e.g. the data's date for rollbacks.
        floating: also tag ``MAJOR`` and ``MAJOR.MINOR``.
        plain_http: as for :func:`push`.

    Raises:
        ReferenceSyntaxError: a bad reference or tag.
        RegistryError: plain HTTP to a remote host, a bad engine version, or the registry failed or refused.
        RuleError: the rules file cannot be read or is not a rules file.
        UsageError: a bad version.
    """
    target = _target(ref, plain_http)
    content = _read(rules, "rules file")
    artifact = rulesfile_artifact(
        content,
        rules.name,
        name=name or target.repository.rpartition("/")[2],
        version=version,
        engine_version=engine_version,
        annotations=annotations,
    )
    return push(ref, artifact, extra_tags=extra_tags, floating=floating, plain_http=plain_http)


def publish_asset(
    ref: str,
    path: Path,
    *,
    version: str,
    annotations: Mapping[str, str] | None = None,
    name: str | None = None,
    extra_tags: Sequence[str] = (),
    floating: bool = True,
    plain_http: bool | None = None,
) -> PublishResult:
    """Push the file at ``path`` to ``ref`` as a falcoctl asset artifact (see :func:`asset_artifact`)."""
    target = _target(ref, plain_http)
    artifact = asset_artifact(
        _read(path, "asset"),
        path.name,
        name=name or target.repository.rpartition("/")[2],
        version=version,
        annotations=annotations,
    )
    return push(ref, artifact, extra_tags=extra_tags, floating=floating, plain_http=plain_http)


def publish_plugin(
    ref: str,
    libraries: Sequence[Path],
    *,
    annotations: Mapping[str, str] | None = None,
    extra_tags: Sequence[str] = (),
    floating: bool = True,
    plain_http: bool | None = None,
) -> PublishResult:
    """Push plugin libraries (one per platform) to ``ref`` as a falcoctl plugin artifact; name and version are
    the ones compiled into the libraries (see :func:`read_plugin`, :func:`plugin_artifact`)."""
    _target(ref, plain_http)
    artifact = plugin_artifact([read_plugin(path) for path in libraries], annotations)
    return push(ref, artifact, extra_tags=extra_tags, floating=floating, plain_http=plain_http)


_ACCEPT = f"{OCI_MANIFEST_MEDIA_TYPE}, {OCI_INDEX_MEDIA_TYPE}"
_LAYER_KINDS = {layer: kind for kind, (_, layer) in MEDIA_TYPES.items()}


def pull(ref: str, *, plain_http: bool | None = None, platform: tuple[str, str] = ("linux", "amd64")) -> PulledArtifact:
    """Fetch a falcoctl artifact and the file inside it, as falcoctl's puller does, checking every digest.

    An image index (a plugin) is resolved to the manifest of ``platform``, like ``pkg/oci/puller/puller.go``;
    the artifact's type comes from its first layer's media type, the file name from the layer's title.

    Args:
        ref: ``[oci://]REGISTRY/REPOSITORY[:TAG|@sha256:DIGEST]``.
        plain_http: as for :func:`push`.
        platform: ``(os, architecture)`` for a plugin, Go's names.

    Returns:
        The file's bytes and name, the manifest, the config, the root digest and, for a plugin, the index.

    Raises:
        RegistryError: the registry failed, or the artifact is not a falcoctl artifact.
    """
    target = parse_ref(ref)
    client = _client(target.registry, plain_http)
    response = client.fetch(client.url(target, f"manifests/{target.reference}"), f"manifest {target}", _ACCEPT)
    body = response.content
    digest = _digest(body)
    if target.digest is not None and digest != target.digest:
        raise RegistryError(f"manifest of {target} has digest {digest}", registry=target.registry)
    document = _json_object(body, f"the manifest of {target}", target)
    index: Mapping[str, Any] | None = None
    if document.get("mediaType") == OCI_INDEX_MEDIA_TYPE:
        index = document
        wanted = [
            m
            for m in index.get("manifests") or []
            if isinstance(m, dict)
            and (m.get("platform") or {}).get("os") == platform[0]
            and (m.get("platform") or {}).get("architecture") == platform[1]
        ]
        if not wanted:
            raise RegistryError(f"{target} has no manifest for {'/'.join(platform)}", registry=target.registry)
        inner = str(wanted[0].get("digest", ""))
        body = client.fetch(
            client.url(target, f"manifests/{inner}"), f"manifest {inner}", OCI_MANIFEST_MEDIA_TYPE
        ).content
        if _digest(body) != inner:
            raise RegistryError(f"manifest {inner} of {target} does not match its digest", registry=target.registry)
        document = _json_object(body, f"manifest {inner} of {target}", target)
    try:
        config_descriptor = document["config"]
        (layer,) = document["layers"]
        kind = _LAYER_KINDS[layer["mediaType"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise RegistryError(f"{target} is not a falcoctl artifact", registry=target.registry) from exc
    if config_descriptor.get("mediaType") != MEDIA_TYPES[kind][0]:
        raise RegistryError(f"{target} is not a falcoctl {kind} artifact", registry=target.registry)
    config = _json_object(_fetch_blob(client, target, config_descriptor), f"the config of {target}", target)
    filename, content = _single_file(_fetch_blob(client, target, layer), str(target))
    return PulledArtifact(kind, content, filename, document, config, digest, index)


def _json_object(body: bytes, what: str, target: OciRef) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise RegistryError(f"{what} is not JSON", registry=target.registry) from exc
    if not isinstance(document, dict):
        raise RegistryError(f"{what} is not a JSON object", registry=target.registry)
    return document


def _fetch_blob(client: Any, target: OciRef, descriptor: Mapping[str, Any]) -> bytes:
    wanted = str(descriptor.get("digest", ""))
    blob: bytes = client.fetch(client.url(target, f"blobs/{wanted}"), f"blob {wanted}").content
    if _digest(blob) != wanted:
        raise RegistryError(f"blob {wanted} of {target} does not match its digest", registry=target.registry)
    return blob


def _single_file(layer: bytes, where: str) -> tuple[str, bytes]:
    try:
        with tarfile.open(fileobj=io.BytesIO(layer), mode="r:gz") as tar:
            members = tar.getmembers()
            if len(members) != 1 or not members[0].isfile():
                raise RegistryError(f"the layer of {where} should hold exactly one file")
            member = members[0]
            if member.name.startswith("/") or ".." in member.name.split("/"):
                raise RegistryError(f"the layer of {where} names an unsafe path {member.name!r}")
            stream = tar.extractfile(member)
            if stream is None:
                raise RegistryError(f"the layer of {where} cannot be read")
            return member.name, stream.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise RegistryError(f"the layer of {where} is not a readable tar.gz") from exc


# --- falcoctl's index ----------------------------------------------------------------------------------------

#: what an index entry says about each kind of tor-sets artifact
INDEX_DESCRIPTIONS = {
    "rulesfile": "Falco rules for connections to and from Tor relays, from the live relay directory (tor-sets)",
    "plugin": "tor.* fields: Tor relay roles, fingerprints and nicknames of socket ends (tor-sets plugin)",
    "asset": "The Tor relay table the tor-sets plugin reads, refreshed from the live relay directory (tor-sets)",
}


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """An entry of falcoctl's ``index.yaml`` (``pkg/index/index/index.go``, ``Entry``): the mandatory name, type,
    registry and repository, and a description and keywords."""

    name: str
    type: str
    registry: str
    repository: str
    description: str = ""
    keywords: tuple[str, ...] = ()

    def as_yaml(self) -> dict[str, Any]:
        """The entry with falcoctl's keys, in its struct's order."""
        document: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "registry": self.registry,
            "repository": self.repository,
        }
        if self.description:
            document["description"] = self.description
        if self.keywords:
            document["keywords"] = list(self.keywords)
        return document


def index_entry(result: PublishResult, *, description: str | None = None) -> IndexEntry:
    """The index entry that lets ``falcoctl artifact install NAME`` find what :func:`push` pushed.

    falcoctl resolves ``NAME[:TAG]`` to ``REGISTRY/REPOSITORY:TAG`` through the entry named ``NAME``
    (``pkg/index/index/index.go``, ``ResolveReference``), and dependencies the same way, so the entry carries the
    artifact's config name: a plugin's entry is named after the plugin (``torsets``), which is what a rules file's
    ``required_plugin_versions`` names.
    """
    target = parse_ref(result.ref)
    return IndexEntry(
        name=result.name,
        type=result.kind,
        registry=target.registry,
        repository=target.repository,
        description=description if description is not None else INDEX_DESCRIPTIONS.get(result.kind, ""),
        keywords=("tor", "network", "tor-sets"),
    )


def parse_index(text: str | None) -> list[dict[str, Any]]:
    """The entries of a falcoctl ``index.yaml`` (empty for no text), checked as falcoctl's ``Index.ReadBytes`` does.

    Raises:
        UsageError: not a YAML list of entries with unique names.
    """
    if not text or not text.strip():
        return []
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"the index is not YAML: {_one_line(str(exc), 200)}") from exc
    if not isinstance(loaded, list) or not all(isinstance(e, dict) and isinstance(e.get("name"), str) for e in loaded):
        raise UsageError("the index is not a falcoctl index (a YAML list of entries with a name)")
    names = [e["name"] for e in loaded]
    if len(set(names)) != len(names):
        raise UsageError("the index has two entries of the same name, which falcoctl refuses")
    return loaded


def merge_index(existing: str | None, entry: IndexEntry) -> str:
    """An ``index.yaml`` holding ``entry``: ``existing`` with the entry of the same name replaced (or added), sorted
    by name as falcoctl's ``Index.Normalize`` does. Other entries and unknown keys are kept as they are.

    >>> print(merge_index(None, IndexEntry("tor-rules", "rulesfile", "registry.example.com", "sec/tor-rules")), end="")
    - name: tor-rules
      type: rulesfile
      registry: registry.example.com
      repository: sec/tor-rules

    Raises:
        UsageError: ``existing`` is not a falcoctl index (see :func:`parse_index`).
    """
    entries = [e for e in parse_index(existing) if e["name"] != entry.name]
    entries.append(entry.as_yaml())
    entries.sort(key=lambda e: str(e["name"]).encode())
    return str(yaml.safe_dump(entries, sort_keys=False, default_flow_style=False, allow_unicode=True, width=4096))
