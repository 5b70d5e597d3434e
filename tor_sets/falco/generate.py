"""From relay sets to a Falco rules model: which lists, which macros, which rules.

Exports :class:`RulesOptions`, :class:`Layout` and :func:`generate` (pure: sets and options in, a
:class:`~tor_sets.falco.model.RulesFile` out), and the names of the macros and rules it writes.

Layout. Every address is written once: the addresses watched by the rules are partitioned into cells by the roles
they belong to (entry only, exit only, entry and exit), each cell split by family into single addresses (matched
with ``fd.sip``/``fd.cip``, a hash-set lookup in current engines) and true networks (``fd.snet``/``fd.cnet``, scanned
entry by entry, so kept few; IPv4 and IPv6 networks never share a list). A macro per watched role then reads as what
it means (``tor_entry_relay_server``: the server end of the socket is a Tor entry relay) and references the lists of
every cell holding that role. With ``list_names="2022"`` the lists instead follow the 2022 tool's names
(``tor_ipv4_entry_nodes`` ...), one complete list per role and family, so users' existing exceptions keep working.

Tuning, the way falcosecurity/rules does it (``falco_rules.yaml``: ``user_known_*`` macros defaulting to
``(never_true)``): both rules end with ``and not user_known_tor_connections``, a macro that is ``(never_true)``
here, so users keep the generated file as it is and override the macro (``override: {condition: append}`` or
``replace``), or add ``exceptions`` to the rules, in their own file loaded after it (docs/tuning.md). ``never_true``
is written with upstream's exact definition, so loading ``falco_rules.yaml`` before or after this file replaces
one definition by the same one.

Tags follow upstream's order: maturity, workload (``host``, ``container``), area and topic, then the MITRE tactic and
one MITRE identifier (the technique where there is one; upstream writes a tactic number ``TA...`` only instead of a
technique, never beside it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from tor_sets.compact import DEFAULT_EXPAND_BELOW, Compacted, aggregate_lossy, check_width, collapse, split
from tor_sets.errors import SanityError
from tor_sets.falco.model import (
    CURRENT_FALCO,
    PRIORITIES,
    FalcoList,
    Item,
    Macro,
    Profile,
    Rule,
    RulesFile,
    profile_for,
)
from tor_sets.relays import IPAddress, RelaySets, Role

__all__ = [
    "DEFAULT_TAGS",
    "INBOUND_RULE",
    "NEVER_TRUE",
    "OUTBOUND_RELAY_RULE",
    "OUTBOUND_RULE",
    "TUNING_MACRO",
    "RulesOptions",
    "generate",
    "role_macro",
    "tuning_macros",
]

#: in falcosecurity/rules' order: maturity first (incubating: a relevant threat, a specific use case that not every
#: adopter has, exact by construction and tuned per environment), the workloads (host and containers), the area
#: (network) and the topic (tor, where upstream puts aws, k8s or database), then the MITRE ATT&CK tactic and
#: technique (Proxy: Multi-hop Proxy)
DEFAULT_TAGS = (
    "maturity_incubating",
    "host",
    "container",
    "network",
    "tor",
    "mitre_command_and_control",
    "T1090.003",
)
#: the tuning hook both rules exclude; users override it in their own file (docs/tuning.md)
TUNING_MACRO = "user_known_tor_connections"
#: falcosecurity/rules' placeholder for tuning macros, with upstream's definition (same text, so redefining is moot)
NEVER_TRUE = Macro("never_true", "(evt.num=0)")
OUTBOUND_RULE = "Outbound Connection to Tor Entry Relay"
OUTBOUND_RELAY_RULE = "Outbound Connection to Tor Relay"
INBOUND_RULE = "Inbound Connection from Tor Exit Relay"
#: the result checks come after the address lookup: most connects and accepts are no Tor at all, and the lookup
#: (one hash probe) rejects them before anything else is evaluated (docs/benchmarks.md measures the order). The
#: users' tuning comes last: whatever it costs, it runs only for connections to or from a relay.
OUTBOUND_CONDITION = (
    f"evt.type = connect and {{relay}} and (evt.rawres >= 0 or evt.res = EINPROGRESS) and not {TUNING_MACRO}"
)
INBOUND_CONDITION = f"evt.type in (accept, accept4) and {{relay}} and evt.rawres >= 0 and not {TUNING_MACRO}"
_LEGACY_IPV6_EXPAND_LIMIT = 4096

#: the connection as client -> server, read from the socket tuple. Not ``fd.name``/``fd.lport``/``fd.rport``: which
#: end is local is guessed from the interfaces Falco saw at start, so for a socket in another network namespace (a
#: container, a pod) lport and rport come out swapped, and a socket received over a Unix socket prints
#: ``connection=<unknown>`` (both seen live on Falco 0.44.1, docs/verify.md)
_ENDS = "connection=%fd.cip:%fd.cport->%fd.sip:%fd.sport"
#: the rest in upstream's field style for network rules (falcosecurity/rules falco_rules.yaml)
_PROCESS_FIELDS = (
    "fd_proto=%fd.l4proto evt_type=%evt.type evt_res=%evt.res user=%user.name user_uid=%user.uid "
    "user_loginuid=%user.loginuid process=%proc.name proc_exepath=%proc.exepath parent=%proc.pname "
    "command=%proc.cmdline terminal=%proc.tty"
)
#: before Falco 0.41 the container fields are the engine's own and rules name them; from 0.41 Falco appends them
_CONTAINER_FIELDS = "container_id=%container.id container_name=%container.name"


def tuning_macros() -> tuple[Macro, Macro]:
    """``never_true`` and the tuning macro defaulting to it, in the order Falco needs them (a macro sees only the
    macros before it)."""
    return NEVER_TRUE, Macro(TUNING_MACRO, f"({NEVER_TRUE.name})")


def _output(ends: str, profile: Profile) -> str:
    """The output after ``|`` for a rule whose socket ends are described by ``ends``."""
    parts = [ends, _PROCESS_FIELDS]
    if profile.container_fields:
        parts.append(_CONTAINER_FIELDS)
    return " ".join(parts)


@dataclass(frozen=True, slots=True)
class RulesOptions:
    """What to emit.

    Attributes:
        rules: ``outbound`` (connections to entry relays) and/or ``inbound`` (connections from exit relays).
        roles: roles to write lists for; ``relay`` makes the outbound rule watch every relay instead of entry.
        families: IP versions to cover (4, 6).
        falco_version: the oldest Falco the rules must load on (``0.41``, the default, and later: no container
            fields in outputs; ``0.37``-``0.40``: with them; ``0.31`` or ``legacy``: the legacy profile).
        priority, tags: of both rules.
        expand_below: networks with fewer addresses are written as addresses.
        list_names: ``tor-sets`` (deduplicated cells) or ``2022`` (the 2022 tool's names, one list per role).
        min_prefix_v4, min_prefix_v6: refuse networks wider than these.
        networks_only: write every address as a network (``/32``, ``/128``) in network lists: the smallest
            exact file, and the slowest on current engines (measured in docs/benchmarks.md; for comparison only).
        lossy_budget: opt in to lossy aggregation: nearby addresses merged into covering prefixes while the
            addresses added (false positives) stay within this many per list.
    """

    rules: frozenset[str] = frozenset({"inbound", "outbound"})
    roles: frozenset[Role] = frozenset({Role.ENTRY, Role.EXIT})
    families: frozenset[int] = frozenset({4, 6})
    falco_version: str = CURRENT_FALCO
    priority: str = "WARNING"
    tags: tuple[str, ...] = DEFAULT_TAGS
    expand_below: int = DEFAULT_EXPAND_BELOW
    list_names: Literal["tor-sets", "2022"] = "tor-sets"
    min_prefix_v4: int = 16
    min_prefix_v6: int = 32
    networks_only: bool = False
    lossy_budget: int | None = None
    header: tuple[str, ...] = field(default=())

    @property
    def profile(self) -> Profile:
        return profile_for(self.falco_version)

    @property
    def outbound_role(self) -> Role:
        return Role.RELAY if Role.RELAY in self.roles else Role.ENTRY

    @property
    def watched_roles(self) -> tuple[Role, ...]:
        """The roles the rules read, in the order their macros are written: the outbound rule's, then exit.

        >>> RulesOptions(rules=frozenset({"outbound"})).watched_roles
        (<Role.ENTRY: 'entry'>,)
        """
        wanted = []
        if "outbound" in self.rules:
            wanted.append(self.outbound_role)
        if "inbound" in self.rules:
            wanted.append(Role.EXIT)
        return tuple(wanted)

    def check(self) -> None:
        """Raise ValueError on options that contradict each other."""
        if not self.rules or not self.rules <= {"inbound", "outbound"}:
            raise ValueError("rules must be a non-empty subset of inbound, outbound")
        if not self.families or not self.families <= {4, 6}:
            raise ValueError("families must be a non-empty subset of 4, 6")
        if self.priority.upper() not in PRIORITIES:
            raise ValueError(f"priority must be one of {', '.join(p.lower() for p in PRIORITIES)}")
        if "outbound" in self.rules and not self.roles & {Role.ENTRY, Role.RELAY}:
            raise ValueError("the outbound rule needs the entry (or relay) role")
        if "inbound" in self.rules and Role.EXIT not in self.roles:
            raise ValueError("the inbound rule needs the exit role")
        if self.expand_below < 2:
            raise ValueError("expand_below must be at least 2")


def role_macro(role: Role) -> str:
    """The macro true when the socket's relay end has ``role``: server end for entry/relay, client end for exit."""
    return {
        Role.ENTRY: "tor_entry_relay_server",
        Role.RELAY: "tor_relay_server",
        Role.EXIT: "tor_exit_relay_client",
    }[role]


def _fields(role: Role) -> tuple[str, str]:
    return ("fd.cip", "fd.cnet") if role is Role.EXIT else ("fd.sip", "fd.snet")


@dataclass(frozen=True, slots=True)
class _Cell:
    """Addresses belonging to exactly these roles (among the watched ones), compacted."""

    name: str
    roles: frozenset[Role]
    compacted: Compacted


def _cells(sets: RelaySets, options: RulesOptions) -> list[_Cell]:
    watched = sorted(options.roles, key=list(Role).index)
    # keyed by (version, integer): hashing ipaddress objects is slow, and this runs on every build
    membership: dict[tuple[int, int], tuple[IPAddress, int]] = {}
    for bit, role in enumerate(watched):
        for address in sets.role(role):
            if address.version in options.families:
                key = (address.version, int(address))
                previous = membership.get(key)
                membership[key] = (address, (previous[1] if previous else 0) | 1 << bit)
    by_mask: dict[int, list[IPAddress]] = {}
    for address, mask in membership.values():
        by_mask.setdefault(mask, []).append(address)

    def roles_of(mask: int) -> frozenset[Role]:
        return frozenset(r for bit, r in enumerate(watched) if mask >> bit & 1)

    if options.list_names == "2022":
        # one complete list per role: a cell per role, addresses repeated across roles
        groups = [
            (frozenset({r}), [a for a, mask in membership.values() if mask >> bit & 1]) for bit, r in enumerate(watched)
        ]
    else:
        groups = sorted(
            ((roles_of(mask), addresses) for mask, addresses in by_mask.items()),
            key=lambda kv: [list(Role).index(r) for r in sorted(kv[0], key=list(Role).index)],
        )
    return [
        _Cell(_cell_name(roles, watched, options), roles, _compact(addresses, options)) for roles, addresses in groups
    ]


def _cell_name(roles: frozenset[Role], watched: Sequence[Role], options: RulesOptions) -> str:
    if options.list_names == "2022" or len(watched) == 1:
        return next(iter(roles)).value
    named = [r.value for r in watched if r in roles and (r is not Role.RELAY or roles == {Role.RELAY})]
    return "_and_".join(named) if len(named) > 1 else f"{named[0]}_only"


def _compact(addresses: list[IPAddress], options: RulesOptions) -> Compacted:
    if options.networks_only:
        compacted = Compacted((), tuple(collapse(addresses)))
    elif options.lossy_budget is not None:
        compacted, _ = aggregate_lossy(addresses, budget=options.lossy_budget)
    else:
        compacted = split(addresses, expand_below=options.expand_below)
    check_width(compacted.networks, min_prefix_v4=options.min_prefix_v4, min_prefix_v6=options.min_prefix_v6)
    if options.profile.ipv6_networks or not any(n.version == 6 for n in compacted.networks):
        return compacted
    # legacy engines reject IPv6 CIDR values: write those networks as addresses
    singles = list(compacted.addresses)
    for network in compacted.networks:
        if network.version == 6:
            if network.num_addresses > _LEGACY_IPV6_EXPAND_LIMIT:
                raise SanityError(f"legacy profile cannot express IPv6 network {network} (too many addresses)")
            singles.extend(network)
    return Compacted(
        tuple(sorted(singles, key=lambda a: (a.version, int(a)))),
        tuple(n for n in compacted.networks if n.version == 4),
    )


def _list_name(cell: _Cell, kind: str, version: int, options: RulesOptions) -> str:
    if options.list_names == "2022":
        role = "all" if cell.name == "relay" else cell.name
        suffix = "nodes" if kind == "addresses" else "networks"
        return f"tor_ipv{version}_{role}_{suffix}"
    return f"tor_{cell.name}_ipv{version}_{kind}"


def generate(sets: RelaySets, options: RulesOptions | None = None) -> RulesFile:
    """Build the rules model for ``sets``.

    Raises:
        ValueError: contradictory options.
        SanityError: a watched role has no address at all, or a network is too wide.
    """
    options = options or RulesOptions()
    options.check()
    wanted_roles = options.watched_roles
    # a cell no rule reads (exit-only relays without the inbound rule ...) is left out: Falco warns about a list
    # nothing reads (LOAD_UNUSED_LIST)
    cells = [cell for cell in _cells(sets, options) if cell.roles & set(wanted_roles)]
    # the lists a role macro may read, per cell, kind and family, in a fixed order
    lists_of: dict[tuple[str, str, int], FalcoList] = {}
    for cell in cells:
        for version in sorted(options.families):
            part = cell.compacted.family(version)
            for kind, values in (("addresses", part.addresses), ("networks", part.networks)):
                name = _list_name(cell, kind, version, options)
                lists_of[(cell.name, kind, version)] = FalcoList(name, tuple(str(v) for v in values))
    macros = []
    read: set[str] = set()
    for role in wanted_roles:
        condition, names = _role_condition(role, cells, lists_of, options)
        macros.append(Macro(role_macro(role), condition))
        read.update(names)
    items: list[Item] = [lst for lst in lists_of.values() if lst.name in read]
    items.extend(macros)
    items.extend(tuning_macros())
    items.extend(_rules(options))
    if options.networks_only:
        encoding = "every address written as a network"
    elif options.lossy_budget is not None:
        encoding = f"LOSSY aggregation, up to {options.lossy_budget} non-relay addresses added per list"
    else:
        encoding = f"networks below {options.expand_below} addresses written as addresses"
    header = (
        *options.header,
        f"profile: {options.profile.name} (Falco >= {options.profile.falco_version}); {encoding}",
        f"tuning: keep this file as it is; in a rules file loaded after it, override macro {TUNING_MACRO}",
        "(override: {condition: append}) or add exceptions to the rules",
    )
    return RulesFile(header=header, required_engine_version=options.profile.required_engine_version, items=tuple(items))


def _role_condition(
    role: Role, cells: Sequence[_Cell], lists_of: Mapping[tuple[str, str, int], FalcoList], options: RulesOptions
) -> tuple[str, list[str]]:
    """The condition of the macro for ``role`` and the lists it reads.

    Address lists share one clause (Falco merges them into one set, so an empty one costs nothing and keeps its name
    for users who refer to it); network lists are read only when they hold a network, each family in its own
    clause.
    """
    address_field, network_field = _fields(role)
    relevant = [c for c in cells if role in c.roles]
    families = sorted(options.families)
    address_lists = [lists_of[(c.name, "addresses", v)] for c in relevant for v in families]
    clauses = []
    read: list[str] = []
    if any(lst.items for lst in address_lists):
        read.extend(lst.name for lst in address_lists)
        clauses.append(f"{address_field} in ({', '.join(lst.name for lst in address_lists)})")
    for version in families:
        network_lists = [lists_of[(c.name, "networks", version)] for c in relevant]
        names = [lst.name for lst in network_lists if lst.items]
        if names:
            read.extend(names)
            clauses.append(f"{network_field} in ({', '.join(names)})")
    if not clauses:
        raise SanityError(f"no {role.value} relay address to watch: refusing to write rules that cannot fire")
    return (clauses[0] if len(clauses) == 1 else "(" + " or ".join(clauses) + ")"), read


def _rules(options: RulesOptions) -> list[Item]:
    rules: list[Item] = []
    priority = options.priority.upper()
    if "outbound" in options.rules:
        role = options.outbound_role
        what = "Tor entry relay" if role is Role.ENTRY else "Tor relay"
        rules.append(
            Rule(
                name=OUTBOUND_RULE if role is Role.ENTRY else OUTBOUND_RELAY_RULE,
                desc=f"A process connected to a {what}: the host may be starting to use Tor "
                "(possible exfiltration, C2 over Tor or a compromised workload).",
                condition=OUTBOUND_CONDITION.format(relay=role_macro(role)),
                output=f"Outbound connection to a {what} | {_output(_ENDS, options.profile)}",
                priority=priority,
                tags=options.tags,
            )
        )
    if "inbound" in options.rules:
        rules.append(
            Rule(
                name=INBOUND_RULE,
                desc="A process accepted a connection from a Tor exit relay: someone reached this service through Tor.",
                condition=INBOUND_CONDITION.format(relay=role_macro(Role.EXIT)),
                output=f"Inbound connection from a Tor exit relay | {_output(_ENDS, options.profile)}",
                priority=priority,
                tags=options.tags,
            )
        )
    return rules
