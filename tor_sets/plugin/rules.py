"""Falco rules and configuration for the tor-sets plugin.

Exports :func:`plugin_rules_file` (the rules model), :func:`plugin_rules_text` (its YAML, with
``required_plugin_versions``), :func:`falco_config` (the ``config.d`` drop-in that loads the plugin),
:func:`engine_plugin` (the plugin as an engine replay loads it) and the plugin's identity: :data:`PLUGIN_NAME`,
:data:`PLUGIN_VERSION`, :data:`REQUIRED_API_VERSION`, :data:`EVENT_SCHEMA_VERSION`, its fields :data:`FIELDS` and
metrics :data:`METRICS`.

The plugin rules mirror the list-based ones of :func:`tor_sets.falco.generate.generate` item by item: the same
rule names (so verification labels and users' exceptions keep working), the same tuning macros (users' tuning
files work with either), and role macros of the same names whose conditions ask the plugin instead of an address
list::

    - macro: tor_entry_relay_server
      condition: tor.server_is_entry = true
    - rule: Outbound Connection to Tor Entry Relay
      condition: evt.type = connect and tor_entry_relay_server and (evt.rawres >= 0 or evt.res = EINPROGRESS)
        and not user_known_tor_connections

The relay addresses live in the plugin's table (:mod:`tor_sets.plugin.table`), which the plugin reloads when
the file is replaced: refreshing detection never touches the rules. Load either these rules or the list-based
ones, not both (they define the same names).

Falco configuration: https://falco.org/docs/plugins/usage/ (``load_plugins``, ``plugins``) and ``config_files``
in Falco's falco.yaml (drop-ins in ``/etc/falco/config.d``, lists appended since Falco 0.41); rules files:
https://falco.org/docs/reference/rules/ (``required_plugin_versions``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from tor_sets.build import Built
from tor_sets.engines.base import Plugin
from tor_sets.errors import SanityError, UsageError
from tor_sets.falco.emit import render
from tor_sets.falco.generate import INBOUND_RULE, OUTBOUND_RELAY_RULE, OUTBOUND_RULE, tuning_macros
from tor_sets.falco.model import Item, Macro, Rule, RulesFile
from tor_sets.relays import Role

__all__ = [
    "DEFAULT_CHECK_INTERVAL_S",
    "DEFAULT_CONFIG_NAME",
    "DEFAULT_LIBRARY",
    "DEFAULT_TABLE",
    "EVENT_SCHEMA_VERSION",
    "FIELDS",
    "METRICS",
    "MIN_ENGINE_VERSION",
    "PLUGIN_NAME",
    "PLUGIN_VERSION",
    "REQUIRED_API_VERSION",
    "ROLE_CONDITIONS",
    "engine_plugin",
    "falco_config",
    "plugin_rules_file",
    "plugin_rules_text",
]

#: the plugin's name (``plugin_get_name``), as ``load_plugins`` and ``required_plugin_versions`` spell it
PLUGIN_NAME = "torsets"
#: the plugin's version (``plugin_get_version``); ``torsets_plugin.c`` must say the same
PLUGIN_VERSION = "0.2.0"
#: ``plugin_get_required_api_version``: the first plugin API whose framework calls ``plugin_get_metrics``
REQUIRED_API_VERSION = "3.6.0"
#: ``plugin_get_required_event_schema_version``: the lowest event schema 4.x (Falco 0.42, the first to check it)
EVENT_SCHEMA_VERSION = "4.0.0"
DEFAULT_LIBRARY = "/usr/share/falco/plugins/libtorsets.so"
DEFAULT_TABLE = "/etc/falco/tor.table"
DEFAULT_CHECK_INTERVAL_S = 5.0
#: the file name of the drop-in in Falco's ``config.d`` (after upstream's ``falco.container_plugin.yaml``)
DEFAULT_CONFIG_NAME = "falco.torsets_plugin.yaml"
#: the plugin needs plugin API 3.6.0 (Falco 0.39, engine version 0.43.0) or later
MIN_ENGINE_VERSION = "0.43.0"

#: the plugin's fields in the order ``plugin_get_fields`` lists them (their ids)
FIELDS: tuple[str, ...] = (
    "tor.server_role",
    "tor.client_role",
    "tor.remote_role",
    "tor.server_is_entry",
    "tor.server_is_exit",
    "tor.server_is_relay",
    "tor.client_is_entry",
    "tor.client_is_exit",
    "tor.client_is_relay",
    "tor.is_relay",
    "tor.fingerprint",
    "tor.nickname",
)
#: the plugin's metrics (``plugin_get_metrics``); Falco names them ``plugins.torsets.NAME``
METRICS: tuple[str, ...] = ("table_loads", "table_rejects", "table_age_s")
#: role macro name → the plugin condition that replaces its address lists
ROLE_CONDITIONS: dict[str, str] = {
    "tor_entry_relay_server": "tor.server_is_entry = true",
    "tor_relay_server": "tor.server_is_relay = true",
    "tor_exit_relay_client": "tor.client_is_exit = true",
}
_ROLE_OF_RULE = {OUTBOUND_RULE: Role.ENTRY, OUTBOUND_RELAY_RULE: Role.RELAY, INBOUND_RULE: Role.EXIT}
_ROLE_MACRO = {Role.ENTRY: "tor_entry_relay_server", Role.RELAY: "tor_relay_server", Role.EXIT: "tor_exit_relay_client"}
_PLUGIN_OUTPUT = " tor_role=%tor.remote_role tor_fingerprint=%tor.fingerprint tor_nickname=%tor.nickname"
_CONFIG_HEADER = (
    "# tor-sets plugin: tor.* fields for syscall events. A Falco config.d drop-in: Falco 0.41+ appends its\n"
    "# load_plugins and plugins to those of falco.yaml and of the other drop-ins (container keeps loading).\n"
    "# Do not also list torsets in falco.yaml. See docs/plugin.md of tor-sets.\n"
)
_SEMVER = re.compile(r"(\d+)\.(\d+)\.(\d+)")


def _engine_version(built_version: str | None) -> str:
    """The larger of the build's ``required_engine_version`` and what the plugin needs."""
    floor = tuple(int(p) for p in MIN_ENGINE_VERSION.split("."))
    match = _SEMVER.fullmatch(built_version or "")
    if match and tuple(int(p) for p in match.groups()) > floor:
        return built_version or MIN_ENGINE_VERSION
    return MIN_ENGINE_VERSION


def plugin_rules_file(built: Built) -> RulesFile:
    """The rules model for the plugin, item for item the counterpart of ``built.rules_file``.

    Raises:
        SanityError: the build has no rule the plugin can express.
    """
    source = built.rules_file
    items: list[Item] = []
    wanted = [rule for rule in source.rules().values() if rule.name in _ROLE_OF_RULE]
    if not wanted:
        raise SanityError("the build holds no Tor rule to express with the plugin")
    for role in dict.fromkeys(_ROLE_OF_RULE[rule.name] for rule in wanted):
        name = _ROLE_MACRO[role]
        items.append(Macro(name, ROLE_CONDITIONS[name]))
    items.extend(tuning_macros())  # the rules' conditions exclude the tuning macro, as the list rules' do
    items.extend(
        Rule(
            name=rule.name,
            desc=rule.desc,
            condition=rule.condition,
            output=rule.output + _PLUGIN_OUTPUT,
            priority=rule.priority,
            tags=rule.tags,
            enabled=rule.enabled,
        )
        for rule in wanted
    )
    header = (
        "Tor relay rules for Falco using the tor-sets plugin (tor.* fields); do not edit.",
        "Regenerate with `tor-sets build --format falco-plugin`. The relay addresses are in the plugin's table",
        "(`tor-sets plugin table`), which the plugin reloads when the file is replaced: refreshing detection",
        "needs no rules reload. Load either this file or the list-based rules, not both.",
        *(line for line in source.header if line.startswith(("tor-sets ", "source:", "relays_published:"))),
    )
    return RulesFile(
        header=header, required_engine_version=_engine_version(source.required_engine_version), items=tuple(items)
    )


def _dump(document: Any) -> str:
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False, width=118)


def plugin_rules_text(built: Built) -> str:
    """The plugin rules as Falco YAML: header, ``required_engine_version``, ``required_plugin_versions``, items.

    Deterministic: the same build gives the same text.

    Raises:
        SanityError: the build has no rule the plugin can express.
    """
    rules_file = plugin_rules_file(built)
    head = render(RulesFile(rules_file.header, rules_file.required_engine_version, ()))
    plugins = _dump([{"required_plugin_versions": [{"name": PLUGIN_NAME, "version": PLUGIN_VERSION}]}])
    body = render(RulesFile((), None, rules_file.items))
    return head + "\n" + plugins + body


def falco_config(
    *,
    library: str = DEFAULT_LIBRARY,
    table: str = DEFAULT_TABLE,
    check_interval_s: float = DEFAULT_CHECK_INTERVAL_S,
) -> str:
    """The Falco ``config.d`` drop-in that loads the plugin: ``load_plugins: [torsets]`` and its ``plugins`` entry.

    Only ``torsets`` is listed: under Falco's default merge (``append``, Falco 0.41 and later) both lists are
    appended to what ``falco.yaml`` and the other drop-ins hold, so upstream's ``falco.container_plugin.yaml``
    keeps ``container`` loaded; listing ``container`` here as well would load it twice, which Falco refuses.

    Args:
        library: where the plugin's shared library is installed.
        table: where the table is written (``tor-sets build --format plugin-table -o TABLE``).
        check_interval_s: seconds between the plugin's checks for a replaced table.

    Raises:
        UsageError: ``check_interval_s`` is negative.

    >>> print(falco_config(table="/etc/falco/tor.table"), end="")
    # tor-sets plugin: tor.* fields for syscall events. A Falco config.d drop-in: Falco 0.41+ appends its
    # load_plugins and plugins to those of falco.yaml and of the other drop-ins (container keeps loading).
    # Do not also list torsets in falco.yaml. See docs/plugin.md of tor-sets.
    load_plugins:
    - torsets
    plugins:
    - name: torsets
      library_path: /usr/share/falco/plugins/libtorsets.so
      init_config:
        table: /etc/falco/tor.table
        check_interval_s: 5
    """
    interval = _interval(check_interval_s)
    document = {
        "load_plugins": [PLUGIN_NAME],
        "plugins": [
            {
                "name": PLUGIN_NAME,
                "library_path": library,
                "init_config": {"table": table, "check_interval_s": interval},
            }
        ],
    }
    return _CONFIG_HEADER + _dump(document)


def engine_plugin(library: Path, table: Path, *, check_interval_s: float | None = None) -> Plugin:
    """The plugin as an engine loads it for a replay (:meth:`tor_sets.engines.Engine.replay`, ``plugins=``).

    The engine copies the library and the table where it can read them (a chroot, a container) and rewrites
    ``table`` in the ``init_config``.

    >>> engine_plugin(Path("libtorsets.so"), Path("tor.table"), check_interval_s=0.5).init_config
    mappingproxy({'table': 'tor.table', 'check_interval_s': 0.5})

    Args:
        library: the compiled plugin (``tor-sets plugin build``).
        table: the table file.
        check_interval_s: seconds between the plugin's checks for a replaced table (None: the plugin's default).

    Raises:
        UsageError: ``check_interval_s`` is negative.
    """
    config: dict[str, object] = {"table": str(table)}
    if check_interval_s is not None:
        config["check_interval_s"] = _interval(check_interval_s)
    return Plugin(PLUGIN_NAME, library, config, files=("table",))


def _interval(check_interval_s: float) -> float | int:
    """The check interval as the plugin's JSON takes it: whole seconds as an integer.

    Raises:
        UsageError: it is negative.
    """
    if check_interval_s < 0:
        raise UsageError("check_interval_s must not be negative")
    return int(check_interval_s) if float(check_interval_s).is_integer() else check_interval_s
