"""falcoctl artifacts: what is pushed for a rules file, the plugin library or its relay table, byte for byte.

Exports the builders :func:`rulesfile_artifact`, :func:`plugin_artifact` and :func:`asset_artifact` →
:class:`Artifact` (one :class:`Image` per platform), their parts :func:`artifact_config`, :func:`rulesfile_config`,
:func:`file_layer`, :func:`plugin_dependencies` → :class:`Dependency` and :func:`engine_requirement`, the plugin's
:class:`PluginLibrary` and :class:`PluginIdentity`, the versions and tags :func:`data_version`,
:func:`check_version`, :func:`floating_tags` and :func:`date_tag`, :func:`default_annotations` (from the rules
file's header), and falcoctl's media types (:data:`MEDIA_TYPES`, :data:`ARTIFACT_TYPES`). Everything here is pure.

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
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import yaml

from tor_sets.errors import RegistryError, RuleError, UsageError
from tor_sets.falco.header import RulesHeader
from tor_sets.urls import redact_url

__all__ = [
    "ARTIFACT_TYPES",
    "MEDIA_TYPES",
    "OCI_INDEX_MEDIA_TYPE",
    "OCI_MANIFEST_MEDIA_TYPE",
    "RULES_MAJOR",
    "Artifact",
    "Dependency",
    "Image",
    "PluginIdentity",
    "PluginLibrary",
    "artifact_config",
    "asset_artifact",
    "blob_descriptor",
    "blob_digest",
    "check_version",
    "data_version",
    "date_tag",
    "default_annotations",
    "engine_requirement",
    "file_layer",
    "floating_tags",
    "is_semver",
    "one_line",
    "plugin_artifact",
    "plugin_dependencies",
    "rulesfile_artifact",
    "rulesfile_config",
]

# falcosecurity/falcoctl, pkg/oci/constants.go
_RULESFILE_CONFIG_MEDIA_TYPE = "application/vnd.cncf.falco.rulesfile.config.v1+json"
_RULESFILE_LAYER_MEDIA_TYPE = "application/vnd.cncf.falco.rulesfile.layer.v1+tar.gz"
_PLUGIN_CONFIG_MEDIA_TYPE = "application/vnd.cncf.falco.plugin.config.v1+json"
_PLUGIN_LAYER_MEDIA_TYPE = "application/vnd.cncf.falco.plugin.layer.v1+tar.gz"
_ASSET_CONFIG_MEDIA_TYPE = "application/vnd.cncf.falco.asset.config.v1+json"
_ASSET_LAYER_MEDIA_TYPE = "application/vnd.cncf.falco.asset.layer.v1+tar.gz"
OCI_MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
#: the requirements falcoctl checks against the running Falco's ``/versions`` before installing
_ENGINE_REQUIREMENT = "engine_version_semver"
_PLUGIN_API_REQUIREMENT = "plugin_api_version"
#: the major version of a rules artifact's data version: raise it when the rules change in a way followers of
#: the previous major must not receive
RULES_MAJOR = 1

_ANNOTATION_CREATED = "org.opencontainers.image.created"
_ANNOTATION_VERSION = "org.opencontainers.image.version"
_ANNOTATION_TITLE = "org.opencontainers.image.title"
_ANNOTATION_SOURCE = "org.opencontainers.image.source"
_ANNOTATION_RELAYS_PUBLISHED = "tor-sets.relays_published"
_ANNOTATION_TOOL_VERSION = "tor-sets.version"
_ANNOTATION_DATA_SOURCE = "tor-sets.data_source"


# --- tags and annotations ------------------------------------------------------------------------------------


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
    annotations = {_ANNOTATION_TITLE: filename}
    if header.relays_published is not None:
        published = header.relays_published.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        annotations[_ANNOTATION_CREATED] = published
        annotations[_ANNOTATION_RELAYS_PUBLISHED] = published
    if header.source is not None:
        source = redact_url(header.source)
        annotations[_ANNOTATION_DATA_SOURCE] = source
        if source.startswith(("https://", "http://")):
            annotations[_ANNOTATION_SOURCE] = source
    version = header.tool_version or tool_version
    if version:
        annotations[_ANNOTATION_TOOL_VERSION] = version
    return annotations


# --- versions, configs and layers ----------------------------------------------------------------------------

_ENGINE_LINE = re.compile(r"-\s*required_engine_version\s*:\s*['\"]?(?P<value>[^'\"\s#]+)['\"]?\s*(#.*)?")
_SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)")
_INTEGER = re.compile(r"0|[1-9]\d*")


def is_semver(version: str) -> bool:
    """Whether ``version`` is ``MAJOR.MINOR.PATCH`` without leading zeros (a strict semver that is also a tag).

    >>> is_semver("1.20260228.100"), is_semver("1.2"), is_semver("01.2.3")
    (True, False, False)
    """
    return _SEMVER.fullmatch(version) is not None


def one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line, white space runs squeezed, cut to ``limit`` characters with an ellipsis.

    >>> one_line("a\\n  b", 3)
    'a b'
    >>> one_line("abcdef", 4)
    'abc…'
    """
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def data_version(published: datetime, major: int = RULES_MAJOR) -> str:
    """The artifact version of relay data published at ``published``: ``MAJOR.YYYYMMDD.HHMM``, no leading zeros.

    It grows with the data, and it is a strict semver (falcoctl parses it with blang/semver, which refuses leading
    zeros), so ``falcoctl artifact follow REPO:MAJOR`` follows every new publication of the same major.

    >>> data_version(datetime(2026, 2, 28, 1, 0, tzinfo=UTC)), data_version(datetime(2026, 3, 1, tzinfo=UTC), 2)
    ('1.20260228.100', '2.20260301.0')

    Raises:
        UsageError: ``major`` is negative.
    """
    if major < 0:
        raise UsageError(f"major version {major} is negative")
    at = published.astimezone(UTC)
    return f"{major}.{at:%Y%m%d}.{at.hour * 100 + at.minute}"


def check_version(version: str) -> str:
    """Return ``version`` if it is ``MAJOR.MINOR.PATCH`` without leading zeros (a strict semver that is also a tag).

    Raises:
        UsageError: it is not.
    """
    if not is_semver(version):
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
    if is_semver(version):
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
        raise RuleError(f"{where} is not YAML: {one_line(str(exc), 200)}", path=where) from exc
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
    requirements = {_ENGINE_REQUIREMENT: engine_requirement(engine_version)} if engine_version is not None else None
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
        UsageError: ``filename`` is not a plain file name.
    """
    if "/" in filename or filename in {"", ".", ".."} or ".." in filename:
        raise UsageError(f"{filename!r} is not a plain file name")
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


# --- artifacts: images, manifests and the plugin's image index -----------------------------------------------

#: falcoctl's artifact types and their (config, layer) media types, ``pkg/oci/constants.go``
MEDIA_TYPES: dict[str, tuple[str, str]] = {
    "rulesfile": (_RULESFILE_CONFIG_MEDIA_TYPE, _RULESFILE_LAYER_MEDIA_TYPE),
    "plugin": (_PLUGIN_CONFIG_MEDIA_TYPE, _PLUGIN_LAYER_MEDIA_TYPE),
    "asset": (_ASSET_CONFIG_MEDIA_TYPE, _ASSET_LAYER_MEDIA_TYPE),
}
ARTIFACT_TYPES = tuple(MEDIA_TYPES)


def blob_digest(blob: bytes) -> str:
    """``sha256:<hex>`` of ``blob``, as OCI descriptors name it."""
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def blob_descriptor(media_type: str, blob: bytes) -> dict[str, Any]:
    """The OCI descriptor of ``blob``: media type, digest, size."""
    return {"mediaType": media_type, "digest": blob_digest(blob), "size": len(blob)}


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
        layer = blob_descriptor(layer_type, self.layer)
        layer["annotations"] = {_ANNOTATION_TITLE: self.layer_title}
        document: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST_MEDIA_TYPE,
            "config": blob_descriptor(config_type, self.config),
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
                raise UsageError("every image of a plugin artifact names its platform")
            descriptor = blob_descriptor(OCI_MANIFEST_MEDIA_TYPE, image.manifest())
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
    return {_ANNOTATION_TITLE: filename, _ANNOTATION_VERSION: version, **annotations}


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
        identity.name, identity.version, requirements={_PLUGIN_API_REQUIREMENT: identity.required_api_version}
    )
    merged = {_ANNOTATION_TITLE: first.filename, _ANNOTATION_VERSION: identity.version, **(annotations or {})}
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
