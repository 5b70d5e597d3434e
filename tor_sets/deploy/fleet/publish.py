"""Publish a file as a falcoctl artifact: a rules file, the plugin's libraries, or the plugin's relay table.

Exports :func:`publish_rules`, :func:`publish_plugin` and :func:`publish_asset` (read the file, build the artifact
with :mod:`~tor_sets.deploy.fleet.artifact`, push it with :func:`~tor_sets.deploy.fleet.registry.push_artifact`),
and :func:`read_plugin` → :class:`~tor_sets.deploy.fleet.artifact.PluginLibrary` with :func:`elf_platform` (what a
plugin library is built for and says about itself). A bad reference or plain HTTP to a remote registry is refused
before any file is read.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from tor_sets.deploy.fleet.artifact import (
    PluginIdentity,
    PluginLibrary,
    asset_artifact,
    is_semver,
    one_line,
    plugin_artifact,
    rulesfile_artifact,
)
from tor_sets.deploy.fleet.registry import PublishResult, push_artifact, push_target
from tor_sets.errors import RuleError, UsageError

__all__ = ["elf_platform", "publish_asset", "publish_plugin", "publish_rules", "read_plugin"]


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise RuleError(f"cannot read {what} {path}: {exc.strerror or exc}", path=str(path)) from exc


def publish_rules(
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
    """Push ``rules`` to ``ref`` as a falcoctl rulesfile artifact.

    See :func:`~tor_sets.deploy.fleet.artifact.rulesfile_artifact` and
    :func:`~tor_sets.deploy.fleet.registry.push_artifact`.

    Args:
        ref: ``[oci://]REGISTRY/REPOSITORY[:TAG]``.
        rules: the rules file; its name is the one falcoctl installs.
        version: ``MAJOR.MINOR.PATCH``; :func:`data_version` of the file's ``relays_published`` grows with the data.
        engine_version: the required engine version; ``None`` reads the file's ``required_engine_version``.
        annotations: manifest annotations (see :func:`default_annotations`).
        name: the artifact's name (default: the repository's last path component, as falcoctl does).
        extra_tags: more tags, e.g. the data's date for rollbacks.
        floating: also tag ``MAJOR`` and ``MAJOR.MINOR``.
        plain_http: as for :func:`~tor_sets.deploy.fleet.registry.push_artifact`.

    Raises:
        ReferenceSyntaxError: a bad reference or tag.
        RegistryError: plain HTTP to a remote host, a bad engine version, or the registry failed or refused.
        RuleError: the rules file cannot be read or is not a rules file.
        UsageError: a bad version.
    """
    target = push_target(ref, plain_http)
    content = _read(rules, "rules file")
    artifact = rulesfile_artifact(
        content,
        rules.name,
        name=name or target.repository.rpartition("/")[2],
        version=version,
        engine_version=engine_version,
        annotations=annotations,
    )
    return push_artifact(ref, artifact, extra_tags=extra_tags, floating=floating, plain_http=plain_http)


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
    target = push_target(ref, plain_http)
    artifact = asset_artifact(
        _read(path, "asset"),
        path.name,
        name=name or target.repository.rpartition("/")[2],
        version=version,
        annotations=annotations,
    )
    return push_artifact(ref, artifact, extra_tags=extra_tags, floating=floating, plain_http=plain_http)


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
    push_target(ref, plain_http)
    artifact = plugin_artifact([read_plugin(path) for path in libraries], annotations)
    return push_artifact(ref, artifact, extra_tags=extra_tags, floating=floating, plain_http=plain_http)


# --- plugin libraries ----------------------------------------------------------------------------------------

#: ELF ``e_machine`` → Go's architecture name, for the architectures Falco is built for
_ELF_MACHINES = {0x3E: "amd64", 0xB7: "arm64"}
#: what falcoctl accepts as an artifact name
_PLUGIN_NAME = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*")

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
        raise UsageError(f"cannot load plugin library {path} on this machine: {one_line(reason, 200)}")
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
        if not is_semver(value):
            raise UsageError(f"plugin library {path} has {what} {value!r}, not MAJOR.MINOR.PATCH")
    return PluginLibrary(data, path.name, platform, identity)
