"""The rules files of the 2022 tool this project replaces (falco_tor_rule_creator), for comparison only.

Exports :func:`render_2022`: the same relay sets written the way that tool writes them — one file per role and
family, one quoted address per list item (``- '"1.2.3.4"'``), rules on ``evt.type = accept`` / ``evt.type =
connect`` with ``evt.dir = <`` and ``fd.rip in (list)``. The benchmark measures this encoding as the baseline, and
``tor-sets verify --rules`` shows what such files miss (``accept4``; failed connects alert). Items are sorted here
(the tool's order was random between runs), which changes no size and no match.
"""

from __future__ import annotations

from collections.abc import Sequence

from tor_sets.relays import RelaySets, Role

__all__ = ["render_2022"]

_HEADER = """
#########################
# TOR Node Rule
#########################

# This rule is auto-generated and should not be edited manually!
# Rule checks for communication with known TOR relay nodes.

---"""

_ROLES = {
    Role.ENTRY: ("entry", "Connection to TOR IPv{v} Network Entry Node", ("egress",)),
    Role.EXIT: ("exit", "Connection to TOR IPv{v} Network Exit Node", ("ingress",)),
}


def _file(
    list_name: str, rule_name: str, directions: Sequence[str], items: Sequence[str], severity: str, tags: Sequence[str]
) -> str:
    parts = [_HEADER, f'\n- list: "{list_name}"\n  items:\n']
    parts.extend(f"  - '\"{item}\"'\n" for item in items)
    parts.append("  append: false\n")
    for direction in directions:
        evt, output = (
            ("accept", "Detected connection from known TOR Node to pod or host.")
            if direction == "ingress"
            else ("connect", "Detected connection to known TOR Node from pod or host.")
        )
        parts.append(
            f'\n- rule: "{rule_name} ({direction})"\n'
            '  desc: "Connections detected in pod or host. The rule was triggered by addresses known to be TOR Nodes"\n'
            f'  condition: "evt.type = {evt} and evt.dir = < and fd.rip in ({list_name})"\n'
            f'  output: "{output} %proc.cmdline %evt.args"\n'
            f'  priority: "{severity}"\n'
            "  tags:\n"
            '  - "network"\n'
        )
        parts.extend(f'  - "{tag}"\n' for tag in tags)
        parts.append('  source: "syscall"\n  append: false\n\n')
    return "".join(parts)


def render_2022(sets: RelaySets, *, severity: str = "warning", tags: Sequence[str] = ()) -> dict[str, str]:
    """The 2022 tool's files for entry and exit, IPv4 and IPv6: ``{file name: text}``.

    >>> from ipaddress import ip_address
    >>> files = render_2022(RelaySets(entry=frozenset({ip_address("185.220.101.1")}), exit=frozenset()))
    >>> sorted(files)
    ['tor_ipv4_entry_nodes_rules.yaml', 'tor_ipv4_exit_nodes_rules.yaml', 'tor_ipv6_entry_nodes_rules.yaml', \
'tor_ipv6_exit_nodes_rules.yaml']
    >>> "  - '\\"185.220.101.1\\"'" in files['tor_ipv4_entry_nodes_rules.yaml']
    True
    """
    files = {}
    for role, (word, rule_name, directions) in _ROLES.items():
        for version in (4, 6):
            items = [str(a) for a in sorted(sets.family(role, version), key=int)]
            list_name = f"tor_ipv{version}_{word}_nodes"
            files[f"{list_name}_rules.yaml"] = _file(
                list_name, rule_name.format(v=version), directions, items, severity, tags
            )
    return files
