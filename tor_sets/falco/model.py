"""A model of a Falco rules file: lists, macros, rules and the profile of the Falco versions they target.

Exports :class:`FalcoList`, :class:`Macro`, :class:`Rule`, :class:`RulesFile`, :class:`Profile`,
:func:`profile_for` and :data:`PRIORITIES`. Emission (model → YAML) lives in :mod:`tor_sets.falco.emit`.

Falco rules files: https://falco.org/docs/concepts/rules/ . ``required_engine_version`` by Falco release is taken
from Falco's own changelog (0.32 → 12 ... 0.37 → 0.31.0, semver since 0.37).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CURRENT_FALCO",
    "PRIORITIES",
    "FalcoList",
    "Item",
    "Macro",
    "Profile",
    "Rule",
    "RulesFile",
    "profile_for",
]

#: the oldest Falco the default rules target: the first release whose container fields come from a plugin
CURRENT_FALCO = "0.41"

PRIORITIES = ("EMERGENCY", "ALERT", "CRITICAL", "ERROR", "WARNING", "NOTICE", "INFORMATIONAL", "DEBUG")


@dataclass(frozen=True, slots=True)
class FalcoList:
    name: str
    items: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Macro:
    name: str
    condition: str


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    desc: str
    condition: str
    output: str
    priority: str
    tags: tuple[str, ...] = ()
    enabled: bool = True


Item = FalcoList | Macro | Rule


@dataclass(frozen=True, slots=True)
class RulesFile:
    """A whole rules file: header comment lines (without ``#``) and items in order.

    Attributes:
        header: comment lines, without ``#``.
        required_engine_version: the engine version the rules need (None: not declared).
        items: lists, macros and rules, in order.
        required_plugins: ``(name, minimum version)`` of each plugin whose fields the rules use: Falco then says
            which plugin is missing instead of failing on an unknown field.
    """

    header: tuple[str, ...]
    required_engine_version: str | None
    items: tuple[Item, ...]
    required_plugins: tuple[tuple[str, str], ...] = ()

    def lists(self) -> dict[str, FalcoList]:
        return {i.name: i for i in self.items if isinstance(i, FalcoList)}

    def macros(self) -> dict[str, Macro]:
        return {i.name: i for i in self.items if isinstance(i, Macro)}

    def rules(self) -> dict[str, Rule]:
        return {i.name: i for i in self.items if isinstance(i, Rule)}


#: Falco release → required_engine_version (falco-facts; semver form from 0.37)
_ENGINE_VERSIONS = {
    (0, 32): "12",
    (0, 33): "13",
    (0, 34): "15",
    (0, 35): "17",
    (0, 36): "26",
    (0, 37): "0.31.0",
    (0, 38): "0.40.0",
    (0, 39): "0.43.0",
    (0, 40): "0.46.0",
    (0, 41): "0.50.0",
    (0, 42): "0.57.0",
    (0, 43): "0.58.0",
    (0, 44): "0.62.0",
}


@dataclass(frozen=True, slots=True)
class Profile:
    """What the target Falco versions accept.

    Attributes:
        name: ``current`` (Falco 0.32 and later) or ``legacy`` (before 0.32, libs of 2022 and older).
        falco_version: the oldest Falco version the rules must load on.
        required_engine_version: the value to declare, or None.
        ipv6_networks: the engine parses IPv6 CIDR values (libs 0.7 / Falco 0.32 on).
        container_fields: ``container.*`` fields are built into the engine (before Falco 0.41); from 0.41 on they
            come from the container plugin, which Falco appends to every output by itself
            (``append_output: suggested_output``), so a rule that names them would not load without the plugin
            and would print them twice with it.
    """

    name: str
    falco_version: str
    required_engine_version: str | None
    ipv6_networks: bool
    container_fields: bool = False


def profile_for(falco_version: str) -> Profile:
    """The profile for the oldest Falco version the rules must load on (``"0.37"``, ``"0.31.1"``, ``"legacy"``).

    >>> profile_for("0.37").required_engine_version, profile_for("0.36.2").required_engine_version
    ('0.31.0', '26')
    >>> profile_for("0.31").name, profile_for("legacy").ipv6_networks
    ('legacy', False)
    >>> profile_for("0.40").container_fields, profile_for("0.41").container_fields
    (True, False)
    """
    if falco_version in ("legacy", "current"):
        falco_version = "0.31" if falco_version == "legacy" else CURRENT_FALCO
    try:
        major, minor = (int(p) for p in falco_version.split(".")[:2])
    except ValueError:
        raise ValueError(f"not a Falco version: {falco_version!r} (expected e.g. 0.37, 0.42.1 or legacy)") from None
    if (major, minor) < (0, 32):
        return Profile("legacy", falco_version, None, ipv6_networks=False, container_fields=True)
    known = max(v for v in _ENGINE_VERSIONS if v <= (major, minor))
    return Profile(
        "current", falco_version, _ENGINE_VERSIONS[known], ipv6_networks=True, container_fields=(major, minor) < (0, 41)
    )
