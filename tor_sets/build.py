"""The main job as a library call: snapshot → relay sets → rules text, and the atomic write of a rules file.

Exports :class:`BuildOptions`, :class:`Built`, :func:`build` and :func:`watched_counts` (pure) and
:func:`write_rules` (the only I/O here).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from tor_sets.errors import UsageError
from tor_sets.falco.emit import render
from tor_sets.falco.generate import RulesOptions, generate
from tor_sets.falco.header import header_lines
from tor_sets.falco.model import RulesFile
from tor_sets.files import write_file
from tor_sets.relays import IPAddress, IPNetwork, RelaySets, Role, Snapshot, classify

__all__ = ["BuildOptions", "Built", "build", "watched_counts", "write_rules"]


@dataclass(frozen=True, slots=True)
class BuildOptions:
    """Classification and emission settings of one build.

    Attributes:
        rules: how to emit (see :class:`~tor_sets.falco.generate.RulesOptions`).
        exclude: the user's own ranges, removed from every set.
        include_authorities: count directory authorities as entry relays.
        include_bad_exits: keep BadExit relays in the exit set.
        canaries: documentation-range addresses added to the entry and exit sets (end-to-end self-tests).
    """

    rules: RulesOptions = field(default_factory=RulesOptions)
    exclude: tuple[IPNetwork, ...] = ()
    include_authorities: bool = True
    include_bad_exits: bool = False
    canaries: tuple[IPAddress, ...] = ()


@dataclass(frozen=True, slots=True)
class Built:
    """The result of a build: the sets, the rules model and its text.

    Attributes:
        sets: every relay set of the snapshot (all roles and families), after exclusions and canaries.
        rules_file: the rules model.
        text: its YAML.
        watched: how many addresses the rules' lists hold, per role the rules read and family written
            (``{"entry_ipv4": 4177, ...}``): what the ``# addresses:`` header says.
    """

    sets: RelaySets
    rules_file: RulesFile
    text: str
    watched: Mapping[str, int] = field(default_factory=dict)

    def list_items(self) -> int:
        return sum(len(lst.items) for lst in self.rules_file.lists().values())

    def networks(self) -> int:
        return sum(1 for lst in self.rules_file.lists().values() for i in lst.items if "/" in i)


def relay_sets(snapshot: Snapshot, options: BuildOptions) -> RelaySets:
    """Classify the snapshot, remove the excluded ranges, add the canaries."""
    sets = classify(
        snapshot, include_authorities=options.include_authorities, include_bad_exits=options.include_bad_exits
    ).without(options.exclude)
    if options.canaries:
        sets = sets.with_extra(options.canaries, [Role.ENTRY, Role.EXIT, Role.RELAY])
    return sets


def watched_counts(sets: RelaySets, options: RulesOptions) -> dict[str, int]:
    """How many addresses the rules hold, per role they read and family they cover (``entry_ipv4`` ...): the lists
    hold every address of those roles and families, each exactly once per role (networks are exact).

    >>> from ipaddress import ip_address
    >>> sets = RelaySets(entry=frozenset({ip_address("192.0.2.1"), ip_address("2001:db8::1")}))
    >>> watched_counts(sets, RulesOptions(rules=frozenset({"outbound"}), families=frozenset({4})))
    {'entry_ipv4': 1}
    """
    counts = sets.counts()
    roles = [role for role in Role if role in options.watched_roles]
    return {f"{role.value}_ipv{v}": counts[f"{role.value}_ipv{v}"] for role in roles for v in sorted(options.families)}


def build(snapshot: Snapshot, options: BuildOptions | None = None) -> Built:
    """Build the Falco rules text for a snapshot.

    Raises:
        SanityError: a watched role ended up empty, or a network is too wide.
        ValueError: contradictory options.
    """
    options = options or BuildOptions()
    sets = relay_sets(snapshot, options)
    watched = watched_counts(sets, options.rules)
    rules_options = replace(options.rules, header=header_lines(snapshot, watched))
    rules_file = generate(sets, rules_options)
    return Built(sets=sets, rules_file=rules_file, text=render(rules_file), watched=watched)


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Parse ``--exclude`` values (``10.0.0.0/8``, ``2001:db8::/32``, or a single address)."""
    out = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError as exc:
            raise UsageError(f"not a network: {value!r}") from exc
    return tuple(out)


def write_rules(path: Path | str, text: str | bytes, *, mode: int = 0o644, stream: bool = True) -> bool:
    """Write ``text`` to ``path`` atomically; return False (and touch nothing) when the file already holds it.

    The text goes to a temporary file in the target's folder, is flushed and fsynced, given the old file's mode
    and owner (a new file: ``mode``), then renamed over the target (and the folder fsynced): a reader sees the old
    file or the new one, never a mix, even if this process is killed half-way. A symbolic link is written through.
    ``/dev/stdout``, a character device or a FIFO is written through as a stream (``stream=False`` refuses them);
    a folder, a socket or a block device is refused. See :func:`tor_sets.files.write_file`.

    Raises:
        TorSetsError: the target is refused, or its folder cannot be written.
    """
    data = text.encode() if isinstance(text, str) else text
    return write_file(path, data, mode=mode, stream=stream)
