"""Kubernetes manifests holding the rules file: a ConfigMap, or values for the Falco Helm chart's ``customRules``.

Exports :func:`render_configmap` (``tor-sets build --format configmap``), :func:`render_helm_values`
(``--format helm-values``) and :func:`render_manifest` (a format by name, one of :data:`MANIFEST_FORMATS`). The
rules are a YAML literal block that loads back byte for byte; ``docs/fleet.md`` shows how to mount them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import yaml

from tor_sets.errors import UsageError

__all__ = ["MANIFEST_FORMATS", "render_configmap", "render_helm_values", "render_manifest"]

log = logging.getLogger(__name__)

#: what Kubernetes accepts for a whole ConfigMap object (etcd's request limit)
_CONFIGMAP_MAX_BYTES = 1024 * 1024
#: the formats of :func:`render_manifest` (``tor-sets build --format``)
MANIFEST_FORMATS = ("configmap", "helm-values")

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


def _check_configmap_name(name: str) -> None:
    """Refuse ``name`` unless Kubernetes accepts it as a ConfigMap name (a DNS subdomain).

    Raises:
        UsageError: it does not.
    """
    if len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
        raise UsageError(f"ConfigMap name {name!r} is not a DNS subdomain (lower case, digits, '-', '.')")


def _check_namespace(namespace: str) -> None:
    """Refuse ``namespace`` unless Kubernetes accepts it (a DNS label).

    Raises:
        UsageError: it does not.
    """
    if len(namespace) > 63 or not _DNS_LABEL.fullmatch(namespace):
        raise UsageError(f"namespace {namespace!r} is not a DNS label (lower case, digits, '-')")


def _check_filename(filename: str) -> None:
    if not _CONFIGMAP_KEY.fullmatch(filename) or filename in {".", ".."}:
        raise UsageError(f"file name {filename!r} is not a valid ConfigMap key (letters, digits, '-', '_', '.')")


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
        (1 MiB, etcd's request limit) is still rendered, with a warning logged.

    Raises:
        UsageError: ``name``, ``namespace`` or ``filename`` is not a valid Kubernetes name or key.

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
    _check_configmap_name(name)
    _check_namespace(namespace)
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
    if size > _CONFIGMAP_MAX_BYTES:
        log.warning(
            "the ConfigMap is %d bytes, Kubernetes refuses objects over %d: publish an OCI artifact instead",
            size,
            _CONFIGMAP_MAX_BYTES,
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
        UsageError: ``filename`` is not a valid ConfigMap key.

    >>> print(render_helm_values("- macro: tor_sets_outbound\\n  condition: evt.type = connect\\n"), end="")
    customRules:
      tor_rules.yaml: |
        - macro: tor_sets_outbound
          condition: evt.type = connect
    """
    _check_filename(filename)
    return _dump({"customRules": {filename: _Literal(rules_text)}})


def render_manifest(
    fmt: str,
    rules_text: str,
    *,
    filename: str = "tor_rules.yaml",
    name: str = "tor-sets-rules",
    namespace: str = "falco",
) -> str:
    """Render ``rules_text`` in one of :data:`MANIFEST_FORMATS` (for ``tor-sets build --format``).

    Args:
        fmt: ``configmap`` or ``helm-values``.
        rules_text: the rules file.
        filename: the rules file's name inside the ConfigMap or ``customRules``.
        name: the ConfigMap's name (``configmap`` only).
        namespace: the ConfigMap's namespace (``configmap`` only).

    Returns:
        The rendered YAML document.

    Raises:
        UsageError: unknown format, or an invalid name.
    """
    if fmt == "configmap":
        return render_configmap(rules_text, name=name, namespace=namespace, filename=filename)
    if fmt == "helm-values":
        return render_helm_values(rules_text, filename=filename)
    raise UsageError(f"unknown format {fmt!r}; choose one of {', '.join(MANIFEST_FORMATS)}")
