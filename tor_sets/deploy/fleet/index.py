"""falcoctl's ``index.yaml``: the entry that lets ``falcoctl artifact install NAME`` find a published artifact.

Exports :func:`index_entry` → :class:`IndexEntry`, :func:`parse_index` and :func:`merge_index`, and
:data:`INDEX_DESCRIPTIONS` (what an entry says about each kind of tor-sets artifact). The format is falcoctl's
(``pkg/index/index/index.go``): a YAML list of entries, unique names, sorted by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from tor_sets.deploy.fleet.artifact import one_line
from tor_sets.deploy.fleet.reference import parse_ref
from tor_sets.deploy.fleet.registry import PublishResult
from tor_sets.errors import UsageError

__all__ = ["INDEX_DESCRIPTIONS", "IndexEntry", "index_entry", "merge_index", "parse_index"]

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
    """The index entry that lets ``falcoctl artifact install NAME`` find what was pushed
    (:func:`~tor_sets.deploy.fleet.registry.push_artifact`).

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
        raise UsageError(f"the index is not YAML: {one_line(str(exc), 200)}") from exc
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
