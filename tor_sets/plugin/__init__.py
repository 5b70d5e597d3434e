"""The tor-sets Falco plugin: ``tor.*`` fields from a relay table the plugin reloads by itself.

Instead of address lists inside the rules, the plugin (C, shipped as ``torsets_plugin.c``) looks each socket's
ends up in a binary table and exposes fields such as ``tor.server_is_entry``, ``tor.client_is_exit`` and
``tor.fingerprint``. Refreshing detection means replacing the table file; the rules never change.

What this package exports:

* :func:`table_bytes` (a build → the table file's bytes) and :func:`plugin_rules_text` (a build → the rules
  that use the plugin's fields), the two outputs of ``tor-sets build --format plugin-table|falco-plugin``;
* the table model and codec (:mod:`tor_sets.plugin.table`): :class:`Table`, :class:`TableEntry`,
  :func:`make_table`, :func:`encode`, :func:`decode`;
* :func:`falco_config` (the Falco ``config.d`` drop-in), :func:`compile_plugin` (gcc → ``libtorsets.so``);
* :func:`engine_plugin`: the plugin as an engine loads it for a replay (``Engine.replay(..., plugins=[...])``,
  real Falco or sid's sysdig with ``-H``), for verification and benchmarks (``tor-sets bench``).

Example::

    from tor_sets import build, bundled_snapshot
    from tor_sets.plugin import compile_plugin, plugin_rules_text, table_bytes

    snapshot = bundled_snapshot()
    built = build(snapshot)
    Path("tor.table").write_bytes(table_bytes(built, snapshot))
    Path("tor_plugin_rules.yaml").write_text(plugin_rules_text(built))
    library = compile_plugin(Path("out"))

See docs/plugin.md.
"""

from __future__ import annotations

import re

from tor_sets.build import Built
from tor_sets.plugin.native import compile_plugin, find_include_dir, source_bytes
from tor_sets.plugin.rules import (
    PLUGIN_NAME,
    PLUGIN_VERSION,
    engine_plugin,
    falco_config,
    plugin_rules_file,
    plugin_rules_text,
)
from tor_sets.plugin.table import Table, TableEntry, decode, encode, make_table
from tor_sets.relays import RelaySets, Snapshot

__all__ = [
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
]


def rule_families(built: Built) -> frozenset[int]:
    """The IP versions the build's rules cover, read from its list names (``tor_entry_only_ipv4_addresses``,
    ``tor_ipv6_exit_nodes`` ...); both when the names tell nothing."""
    found = {int(m[1]) for name in built.rules_file.lists() for m in [re.search(r"ipv([46])", name)] if m}
    return frozenset(found) or frozenset({4, 6})


def table_bytes(built: Built, snapshot: Snapshot | None = None) -> bytes:
    """The plugin table for a build: its relay sets with roles, plus fingerprints and nicknames from ``snapshot``.

    The table holds the address families the build's rules cover (``--families``), so that the plugin rules
    flag what the list-based rules of the same build flag.

    Args:
        built: the build (its sets carry exclusions, canaries and the authority/BadExit choices).
        snapshot: the snapshot the build came from; without it the table has roles only (``tor.fingerprint``
            and ``tor.nickname`` then have no value) and no publication time.

    Raises:
        SanityError: the sets are empty, or a relay's fingerprint or nickname is malformed.
    """
    families = rule_families(built)
    sets = built.sets
    if families != {4, 6}:
        sets = RelaySets(
            entry=frozenset(a for a in sets.entry if a.version in families),
            exit=frozenset(a for a in sets.exit if a.version in families),
            relay=frozenset(a for a in sets.relay if a.version in families),
        )
    if snapshot is None:
        return encode(make_table(sets))
    return encode(make_table(sets, snapshot.relays, published=snapshot.relays_published))
