"""From one host to a fleet: hand the rules file to many Falco nodes.

Three routes, described for operators in ``docs/fleet.md``:

* :func:`render_configmap` — a Kubernetes ConfigMap holding the rules file (``tor-sets build --format configmap``);
* :func:`render_helm_values` — values for the Falco Helm chart's ``customRules`` (``--format helm-values``);
* :func:`publish` and :func:`pull` — a falcoctl *rulesfile* OCI artifact that ``falcoctl artifact follow`` installs
  on every node, and the way back to check what a registry serves.

Also exported: :func:`render` (a format by name, one of :data:`RENDER_FORMATS`), :func:`check_configmap_name`,
:func:`check_namespace`, :func:`read_header` → :class:`RulesHeader`, :func:`default_annotations`, :func:`date_tag`,
:func:`parse_ref` → :class:`OciRef`, :func:`rulesfile_layer`, :func:`rulesfile_config`, :func:`engine_requirement`,
:func:`registry_credentials` → :class:`RegistryCredentials`, :class:`PublishResult`, :class:`PulledArtifact` and
:class:`RegistryError`.

The artifact has the layout falcoctl pushes and pulls (falcosecurity/falcoctl, ``pkg/oci/constants.go``,
``pkg/oci/types.go``, ``pkg/oci/puller/puller.go``): an OCI image manifest whose config blob has media type
``application/vnd.cncf.falco.rulesfile.config.v1+json`` and holds ``{"name": ..., "requirements": [{"name":
"engine_version_semver", "version": "0.31.0"}]}`` (Go's ``omitempty``: no empty ``version`` or ``dependencies``), and
one layer ``application/vnd.cncf.falco.rulesfile.layer.v1+tar.gz``, a tar.gz with the rules file at its root. The
layer carries ``org.opencontainers.image.title``: falcoctl saves the blob under that name before extracting it.
Every byte is a function of the rules file and the annotations, so publishing the same rules twice gives the same
digest.

Registry traffic goes through ``oras.provider.Registry`` (blob uploads, token authentication) with three changes:
a timeout on every request, errors raised at once as :class:`RegistryError` instead of oras' retries with
back-off, and the manifest sent as the exact bytes whose digest is returned.
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
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
import yaml

from tor_sets.errors import RuleError, TorSetsError

__all__ = [
    "ANNOTATION_DATA_SOURCE",
    "ANNOTATION_RELAYS_PUBLISHED",
    "ANNOTATION_TOOL_VERSION",
    "CONFIGMAP_MAX_BYTES",
    "ENGINE_REQUIREMENT",
    "OCI_MANIFEST_MEDIA_TYPE",
    "RENDER_FORMATS",
    "RULESFILE_CONFIG_MEDIA_TYPE",
    "RULESFILE_LAYER_MEDIA_TYPE",
    "OciRef",
    "PublishResult",
    "PulledArtifact",
    "RegistryCredentials",
    "RegistryError",
    "RulesHeader",
    "check_configmap_name",
    "check_namespace",
    "date_tag",
    "default_annotations",
    "engine_requirement",
    "parse_ref",
    "publish",
    "pull",
    "read_header",
    "registry_credentials",
    "render",
    "render_configmap",
    "render_helm_values",
    "rulesfile_config",
    "rulesfile_layer",
]

log = logging.getLogger(__name__)

RULESFILE_CONFIG_MEDIA_TYPE = "application/vnd.cncf.falco.rulesfile.config.v1+json"
RULESFILE_LAYER_MEDIA_TYPE = "application/vnd.cncf.falco.rulesfile.layer.v1+tar.gz"
OCI_MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
#: the requirement falcoctl checks against the running Falco's ``/versions`` before installing a rulesfile
ENGINE_REQUIREMENT = "engine_version_semver"

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
    it also becomes ``org.opencontainers.image.source`` when it is a URL. The header's tool version wins over
    ``tool_version`` (the version that wrote the file is the one that matters).

    Args:
        header: the rules file's header.
        filename: the rules file's name, used as the title.
        tool_version: this tool's version, used when the header names none.

    Returns:
        Annotations by key; absent facts are left out, not written empty.
    """
    annotations = {ANNOTATION_TITLE: filename}
    if header.relays_published is not None:
        published = header.relays_published.astimezone(UTC)
        annotations[ANNOTATION_CREATED] = published.strftime("%Y-%m-%dT%H:%M:%SZ")
        annotations[ANNOTATION_VERSION] = date_tag(published)
        annotations[ANNOTATION_RELAYS_PUBLISHED] = published.strftime("%Y-%m-%dT%H:%M:%SZ")
    if header.source is not None:
        annotations[ANNOTATION_DATA_SOURCE] = header.source
        if header.source.startswith(("https://", "http://")):
            annotations[ANNOTATION_SOURCE] = header.source
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


# --- the rulesfile artifact ----------------------------------------------------------------------------------

_ENGINE_LINE = re.compile(r"-\s*required_engine_version\s*:\s*['\"]?(?P<value>[^'\"\s#]+)['\"]?\s*(#.*)?")
_SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)")
_INTEGER = re.compile(r"0|[1-9]\d*")


def engine_requirement(version: str) -> str:
    """The ``engine_version_semver`` requirement falcoctl expects, from a ``required_engine_version`` value.

    An integer ``N`` (Falco before 0.37) becomes ``0.N.0``, as falcosecurity/rules' registry tooling does; a semver
    is kept. falcoctl compares with a strict semver parser, so anything else is refused.

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


def rulesfile_config(name: str, engine_version: str | None) -> bytes:
    """The config blob of a rulesfile artifact, in falcoctl's ``ArtifactConfig`` JSON.

    Args:
        name: the artifact's name (falcoctl uses the repository's last path component).
        engine_version: the required engine version, integer or semver; ``None`` for no requirement.

    Returns:
        Compact JSON, keys in falcoctl's order.

    >>> rulesfile_config("tor-rules", "0.31.0").decode()
    '{"name":"tor-rules","requirements":[{"name":"engine_version_semver","version":"0.31.0"}]}'
    """
    document: dict[str, Any] = {"name": name}
    if engine_version is not None:
        document["requirements"] = [{"name": ENGINE_REQUIREMENT, "version": engine_requirement(engine_version)}]
    return json.dumps(document, separators=(",", ":")).encode()


def rulesfile_layer(rules: bytes, filename: str) -> bytes:
    """The layer blob: a tar.gz holding ``rules`` as ``filename`` at its root, the same bytes for the same input.

    The tar entry has mode 0644, owner 0:0, no owner names and mtime 0 (USTAR, no PAX headers); the gzip header
    has mtime 0 and no file name.

    Args:
        rules: the rules file's bytes.
        filename: the name falcoctl installs the file under (no directory part).

    Returns:
        The compressed archive.
    """
    if "/" in filename or filename in {"", ".", ".."}:
        raise ValueError(f"{filename!r} is not a plain file name")
    entry = tarfile.TarInfo(name=filename)
    entry.size = len(rules)
    entry.mode = 0o644
    entry.mtime = 0
    entry.uid = entry.gid = 0
    entry.uname = entry.gname = ""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(entry, io.BytesIO(rules))
    compressed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, compresslevel=9, mtime=0) as stream:
        stream.write(archive.getvalue())
    return compressed.getvalue()


def _digest(blob: bytes) -> str:
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def _descriptor(media_type: str, blob: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": _digest(blob), "size": len(blob)}


def _manifest(config: bytes, layer: bytes, layer_title: str, annotations: Mapping[str, str]) -> bytes:
    layer_descriptor = _descriptor(RULESFILE_LAYER_MEDIA_TYPE, layer)
    layer_descriptor["annotations"] = {ANNOTATION_TITLE: layer_title}
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST_MEDIA_TYPE,
        "config": _descriptor(RULESFILE_CONFIG_MEDIA_TYPE, config),
        "layers": [layer_descriptor],
    }
    if annotations:
        document["annotations"] = dict(sorted(annotations.items()))
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


# --- references, hosts and credentials -----------------------------------------------------------------------

_REPOSITORY = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")


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

    The registry is required (there is no implicit Docker Hub): it is the first path component and must look like
    a host (a dot, a port, ``localhost`` or an IPv6 literal in brackets).

    Raises:
        RegistryError: the reference does not have that shape.

    >>> str(parse_ref("oci://127.0.0.1:5000/security/tor-rules"))
    '127.0.0.1:5000/security/tor-rules:latest'
    """
    body = ref.removeprefix("oci://")
    if "://" in body:
        raise RegistryError(f"reference {ref!r}: only oci:// references are accepted")
    registry, slash, rest = body.partition("/")
    looks_like_host = "." in registry or ":" in registry or registry == "localhost" or registry.startswith("[")
    if not slash or not rest or not looks_like_host:
        raise RegistryError(
            f"reference {ref!r} needs a registry host, e.g. oci://registry.example.com/tor-rules:latest"
        )
    digest: str | None = None
    tag: str | None = "latest"
    if "@" in rest:
        rest, _, digest = rest.partition("@")
        tag = None
        if not _DIGEST.fullmatch(digest):
            raise RegistryError(f"reference {ref!r}: the digest must be sha256:<64 hex digits>")
    elif ":" in rest:
        rest, _, tag = rest.rpartition(":")
        if not _TAG.fullmatch(tag):
            raise RegistryError(f"reference {ref!r}: {tag!r} is not a valid tag")
    if not _REPOSITORY.fullmatch(rest):
        raise RegistryError(f"reference {ref!r}: {rest!r} is not a valid repository name (lower case, digits, ._-/)")
    return OciRef(registry=registry, repository=rest, tag=tag, digest=digest)


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


class _Session(requests.Session):
    """A session that puts a timeout on every request, including oras' token requests."""

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


@functools.cache
def _registry_class() -> type[Any]:
    try:
        import oras.provider
    except ImportError as exc:
        raise RegistryError("publishing needs the 'oras' package: pip install 'tor-sets[fleet]'") from exc

    class _Registry(oras.provider.Registry):  # type: ignore[misc]
        """oras' registry client with timeouts, one attempt per request and errors as :class:`RegistryError`."""

        session: requests.Session

        def __init__(self, registry: str, *, plain_http: bool, credentials: RegistryCredentials | None) -> None:
            super().__init__(hostname=registry, insecure=plain_http)
            session = _Session()
            session.cookies = self.session.cookies  # keeps oras' "accept no cookies" policy
            session.trust_env = not _is_loopback(registry)  # no proxy for a registry on this machine
            self.session = session
            self.auth.session = session
            self._credentials = credentials
            self._challenge = ""
            if credentials is not None:
                self.auth.set_basic_auth(credentials.username, credentials.password)

        def _authorization(self) -> dict[str, str]:
            if self._challenge == "basic" and self._credentials is not None:
                return {"Authorization": f"Basic {self._credentials.basic}"}
            token = getattr(self.auth, "token", None)
            return {"Authorization": f"Bearer {token}"} if self._challenge == "bearer" and token else {}

        def _send(self, method: str, url: str, **kwargs: Any) -> requests.Response:
            try:
                response: requests.Response = self.session.request(method, url, **kwargs)
            except requests.exceptions.SSLError as exc:
                hint = "; a plain-HTTP registry on loopback needs --plain-http" if _is_loopback(self.hostname) else ""
                raise RegistryError(
                    f"TLS with registry {self.hostname} failed ({_connection_reason(exc)}){hint}",
                    registry=self.hostname,
                ) from exc
            except requests.Timeout as exc:
                raise RegistryError(
                    f"registry {self.hostname} did not answer within {_TIMEOUT[1]:.0f} s", registry=self.hostname
                ) from exc
            except requests.ConnectionError as exc:
                raise RegistryError(
                    f"cannot reach registry {self.hostname} over {self.prefix}: {_connection_reason(exc)}",
                    registry=self.hostname,
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
            sent = {**(headers or {}), **self._authorization()}
            options = {"data": data, "json": json, "stream": stream}
            response = self._send(method, url, headers=sent, **options)
            if response.status_code == 401:
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
            challenge = response.headers.get("Www-Authenticate", "")
            scheme = challenge.partition(" ")[0].lower()
            if scheme == "basic":
                if self._credentials is None:
                    raise RegistryError(
                        f"registry {self.hostname} needs credentials: set TOR_SETS_REGISTRY_USERNAME and "
                        "TOR_SETS_REGISTRY_PASSWORD or log in with docker login",
                        registry=self.hostname,
                    )
                self._challenge = "basic"
                return
            if scheme == "bearer":
                _, changed = self.auth.authenticate_request(response, {}, refresh=True)
                if changed:
                    self._challenge = "bearer"
                    return
            raise RegistryError(
                f"registry {self.hostname} needs credentials that were not accepted or not given",
                registry=self.hostname,
            )

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

        def push_manifest(self, target: OciRef, tag: str, manifest: bytes, digest: str) -> None:
            response = self.do_request(
                self.url(target, f"manifests/{tag}"),
                "PUT",
                data=manifest,
                headers={"Content-Type": OCI_MANIFEST_MEDIA_TYPE},
            )
            if response.status_code not in (200, 201):
                raise RegistryError(
                    f"registry {self.hostname} refused the manifest for tag {tag}: {_registry_complaint(response)}",
                    registry=self.hostname,
                )
            answered = response.headers.get("Docker-Content-Digest")
            if answered and answered != digest:
                raise RegistryError(
                    f"registry {self.hostname} stored the manifest as {answered}, expected {digest}",
                    registry=self.hostname,
                )

        def fetch(self, url: str, what: str, accept: str | None = None) -> bytes:
            response = self.do_request(url, "GET", headers={"Accept": accept} if accept else {})
            if response.status_code != 200:
                raise RegistryError(
                    f"registry {self.hostname} has no {what}: {_registry_complaint(response)}", registry=self.hostname
                )
            return response.content

    return _Registry


def _client(registry: str, plain_http: bool | None) -> Any:
    insecure = _use_plain_http(registry, plain_http)
    return _registry_class()(registry, plain_http=insecure, credentials=registry_credentials(registry))


# --- publish and pull ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What :func:`publish` pushed: the manifest digest, the primary reference and every tag set on it."""

    digest: str
    ref: str
    tags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PulledArtifact:
    """A rulesfile artifact read back from a registry, checked against its digests."""

    rules_bytes: bytes
    manifest: Mapping[str, Any]
    config: Mapping[str, Any]
    digest: str
    filename: str


def publish(
    ref: str,
    rules: Path,
    *,
    engine_version: str | None,
    annotations: Mapping[str, str],
    extra_tags: Sequence[str] = (),
    plain_http: bool | None = None,
) -> PublishResult:
    """Push ``rules`` to ``ref`` as a falcoctl rulesfile artifact, and tag it with ``extra_tags`` too.

    Args:
        ref: ``[oci://]REGISTRY/REPOSITORY[:TAG]`` (tag ``latest`` when absent).
        rules: the rules file; its name is the one falcoctl installs.
        engine_version: the required engine version (integer or semver); ``None`` reads the file's
            ``- required_engine_version:`` item, and no requirement is set when there is none.
        annotations: manifest annotations (see :func:`default_annotations`).
        extra_tags: more tags for the same manifest, e.g. the data's date for rollbacks.
        plain_http: ``True`` for plain HTTP (loopback registries only), ``False`` for HTTPS, ``None`` for plain
            HTTP exactly when the registry is on loopback.

    Returns:
        The digest, the primary reference and the tags.

    Raises:
        RegistryError: bad reference or tag, plain HTTP to a remote host, a bad engine version, or the registry
            failed or refused.
        RuleError: the rules file cannot be read.
    """
    target = parse_ref(ref)
    if target.digest is not None:
        raise RegistryError(f"reference {ref!r}: publish to a tag, not a digest")
    tags = list(dict.fromkeys([target.reference, *extra_tags]))
    for tag in tags:
        if not _TAG.fullmatch(tag):
            raise RegistryError(f"{tag!r} is not a valid tag (letters, digits, '_', '.', '-'; at most 128)")
    _use_plain_http(target.registry, plain_http)  # refuse before reading anything
    try:
        content = rules.read_bytes()
    except OSError as exc:
        raise RuleError(f"cannot read rules file {rules}: {exc.strerror or exc}", path=str(rules)) from exc
    if engine_version is None:
        engine_version = _engine_version_in(content.decode("utf-8", errors="replace"))
    config = rulesfile_config(target.repository.rpartition("/")[2], engine_version)
    layer = rulesfile_layer(content, rules.name)
    manifest = _manifest(config, layer, f"{rules.name.partition('.')[0]}.tar.gz", annotations)
    digest = _digest(manifest)

    client = _client(target.registry, plain_http)
    with tempfile.TemporaryDirectory(prefix="tor-sets-publish-") as folder:
        client.push_blob(target, layer, RULESFILE_LAYER_MEDIA_TYPE, Path(folder))
        client.push_blob(target, config, RULESFILE_CONFIG_MEDIA_TYPE, Path(folder))
    for tag in tags:
        client.push_manifest(target, tag, manifest, digest)
    log.debug("pushed %s (%d bytes of rules) as %s with tags %s", target, len(content), digest, ", ".join(tags))
    return PublishResult(digest=digest, ref=str(target), tags=tuple(tags))


def pull(ref: str, *, plain_http: bool | None = None) -> PulledArtifact:
    """Fetch a rulesfile artifact and the rules file inside it, checking every digest on the way.

    Args:
        ref: ``[oci://]REGISTRY/REPOSITORY[:TAG|@sha256:DIGEST]``.
        plain_http: as for :func:`publish`.

    Returns:
        The rules file's bytes, the manifest, the config and the manifest's digest.

    Raises:
        RegistryError: the registry failed, or the artifact is not a falcoctl rulesfile artifact.
    """
    target = parse_ref(ref)
    client = _client(target.registry, plain_http)
    body = client.fetch(
        client.url(target, f"manifests/{target.reference}"), f"manifest {target}", OCI_MANIFEST_MEDIA_TYPE
    )
    digest = _digest(body)
    if target.digest is not None and digest != target.digest:
        raise RegistryError(f"manifest of {target} has digest {digest}", registry=target.registry)
    try:
        manifest = json.loads(body)
        config_descriptor = manifest["config"]
        layers = [d for d in manifest["layers"] if d.get("mediaType") == RULESFILE_LAYER_MEDIA_TYPE]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RegistryError(f"{target} does not hold an OCI image manifest", registry=target.registry) from exc
    if config_descriptor.get("mediaType") != RULESFILE_CONFIG_MEDIA_TYPE or len(layers) != 1:
        raise RegistryError(f"{target} is not a falcoctl rulesfile artifact", registry=target.registry)
    config_bytes = _fetch_blob(client, target, config_descriptor)
    layer_bytes = _fetch_blob(client, target, layers[0])
    try:
        config = json.loads(config_bytes)
    except ValueError as exc:
        raise RegistryError(f"the config of {target} is not JSON", registry=target.registry) from exc
    filename, rules_bytes = _single_file(layer_bytes, str(target))
    return PulledArtifact(rules_bytes=rules_bytes, manifest=manifest, config=config, digest=digest, filename=filename)


def _fetch_blob(client: Any, target: OciRef, descriptor: Mapping[str, Any]) -> bytes:
    wanted = str(descriptor.get("digest", ""))
    blob: bytes = client.fetch(client.url(target, f"blobs/{wanted}"), f"blob {wanted}")
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
