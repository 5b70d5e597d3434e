"""tor_sets.falco.load: reading rules files the way Falco does (items, appends, overrides, exceptions)."""

from __future__ import annotations

import dataclasses
import textwrap
import time
from pathlib import Path

import pytest

from tor_sets.errors import RuleError
from tor_sets.falco.load import LoadedRule, RequiredPlugin, load_rules


def rules(text: str) -> str:
    return textwrap.dedent(text)


def rule_item(name: str, condition: str, **extra: str) -> str:
    lines = [f"- rule: {name}", "  desc: test rule", f"  condition: {condition}", "  output: seen %fd.name"]
    lines.append("  priority: WARNING")
    lines += [f"  {key}: {value}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


def test_2022_tool_format() -> None:
    # What falco_tor_rule_creator (2022) writes to /etc/falco/rules.d: one quoted address per item.
    text = rules(
        """\
        - list: tor_ipv4_entry_nodes
          items: ['"1.2.3.4"', '"5.6.7.8"', '"9.10.11.12"']

        - rule: Connection to tor entry node
          desc: Detect outbound connections to tor entry nodes
          condition: evt.type = connect and evt.dir = < and fd.rip in (tor_ipv4_entry_nodes)
          output: >
            Connection to tor entry node detected (command=%proc.cmdline connection=%fd.name)
          priority: WARNING
          tags: [network, tor]
        """
    )
    loaded = load_rules(text)
    assert loaded.lists == {"tor_ipv4_entry_nodes": ('"1.2.3.4"', '"5.6.7.8"', '"9.10.11.12"')}
    assert loaded.rules["Connection to tor entry node"] == LoadedRule(
        name="Connection to tor entry node",
        condition="evt.type = connect and evt.dir = < and fd.rip in (tor_ipv4_entry_nodes)",
        expanded='evt.type = connect and evt.dir = < and fd.rip in ("1.2.3.4", "5.6.7.8", "9.10.11.12")',
        output="Connection to tor entry node detected (command=%proc.cmdline connection=%fd.name)",
        priority="Warning",
        tags=("network", "tor"),
        enabled=True,
        source="syscall",
        desc="Detect outbound connections to tor entry nodes",
    )
    assert loaded.rules["Connection to tor entry node"].complete
    assert loaded.warnings == ()


def test_2022_tool_empty_list_is_rejected_like_falco() -> None:
    # The 2022 tool writes an empty list as 'items:' (null), which makes Falco reject the whole file.
    text = "- list: tor_ipv4_entry_nodes\n  items:\n"
    with pytest.raises(RuleError, match=r"list 'tor_ipv4_entry_nodes': 'items' is empty \(YAML null\).*items: \[\]"):
        load_rules(text)


UPSTREAM = rules(
    """\
    # An excerpt modelled on falco_rules.yaml (falcosecurity/rules).
    - required_engine_version: 0.31.0

    - required_plugin_versions:
      - name: container
        version: 0.2.0
        alternatives:
          - name: k8smeta
            version: 0.1.0

    - list: rfc_1918_addresses
      items: ['"10.0.0.0/8"', '"172.16.0.0/12"', '"192.168.0.0/16"']

    - macro: outbound
      condition: >
        (((evt.type = connect and evt.dir=<) or
          (evt.type in (sendto,sendmsg) and evt.dir=< and
           fd.l4proto != tcp and fd.connected=false and fd.name_changed=true)) and
         (fd.typechar = 4 or fd.typechar = 6) and
         (fd.ip != "0.0.0.0" and fd.net != "127.0.0.0/8" and not fd.snet in (rfc_1918_addresses)) and
         (evt.rawres >= 0 or evt.res = EINPROGRESS))

    - macro: container
      condition: (container.id != host)

    - list: allowed_outbound_destination_ipaddrs
      items: ['"127.0.0.1"', '"8.8.8.8"']

    - list: allowed_outbound_destination_networks
      items: ['"127.0.0.1/8"']

    - rule: Unexpected outbound connection destination
      desc: Detect any outbound connection to a destination outside of an allowed set of ips or networks
      condition: >
        outbound and not
        ((fd.sip in (allowed_outbound_destination_ipaddrs)) or
         (fd.snet in (allowed_outbound_destination_networks)))
      enabled: false
      output: >
        Disallowed outbound connection destination | connection=%fd.name lport=%fd.lport rport=%fd.rport
        process=%proc.name command=%proc.cmdline container_id=%container.id
      priority: NOTICE
      tags: [maturity_sandbox, host, container, network, mitre_command_and_control, TA0011]

    - list: shell_binaries
      items: [ash, bash, csh, ksh, sh, tcsh, zsh, dash]

    - macro: spawned_process
      condition: (evt.type in (execve, execveat) and evt.dir=<)

    - rule: Run shell untrusted
      desc: an attempt to spawn a shell below a non-shell application
      condition: >
        spawned_process
        and proc.name in (shell_binaries)
        and container
      exceptions:
        - name: proc_name_pname
          fields: [proc.name, proc.pname]
          values:
            - [bash, sshd]
        - name: known_parents
          fields: proc.pname
          comps: in
          values: [cron, "my app"]
      output: Shell spawned (shell=%proc.name parent=%proc.pname cmdline=%proc.cmdline)
      priority: DEBUG
      tags: [maturity_stable, host, container, process, shell, mitre_execution, T1059.004]
    """
)

OUTBOUND = (
    "((((evt.type = connect and evt.dir=<) or\n"
    "  (evt.type in (sendto,sendmsg) and evt.dir=< and\n"
    "   fd.l4proto != tcp and fd.connected=false and fd.name_changed=true)) and\n"
    " (fd.typechar = 4 or fd.typechar = 6) and\n"
    ' (fd.ip != "0.0.0.0" and fd.net != "127.0.0.0/8" and not fd.snet in '
    '("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")) and\n'
    " (evt.rawres >= 0 or evt.res = EINPROGRESS)))"
)


def test_upstream_excerpt() -> None:
    loaded = load_rules(UPSTREAM)
    assert loaded.required_engine_version == "0.31.0"
    assert loaded.required_plugin_versions == (RequiredPlugin("container", "0.2.0", (("k8smeta", "0.1.0"),)),)
    assert list(loaded.rules) == ["Unexpected outbound connection destination", "Run shell untrusted"]

    unexpected = loaded.rules["Unexpected outbound connection destination"]
    assert unexpected.expanded == (
        OUTBOUND + ' and not ((fd.sip in ("127.0.0.1", "8.8.8.8")) or\n (fd.snet in ("127.0.0.1/8")))'
    )
    assert not unexpected.enabled
    assert unexpected.priority == "Notice"
    assert unexpected.output.startswith("Disallowed outbound connection destination | connection=%fd.name")
    assert "mitre_command_and_control" in unexpected.tags

    shell = loaded.rules["Run shell untrusted"]
    assert shell.expanded == (
        "(((evt.type in (execve, execveat) and evt.dir=<))"
        " and proc.name in (ash, bash, csh, ksh, sh, tcsh, zsh, dash)"
        " and ((container.id != host)))"
        " and not (( proc.name = bash and  proc.pname = sshd))"
        ' and not (proc.pname in (cron, "my app"))'
    )
    assert shell.priority == "Debug"
    assert shell.complete and unexpected.complete
    assert loaded.warnings == (
        "<rules text>: rule 'Unexpected outbound connection destination': disabled (enabled: false); "
        "Falco loads it but never matches it",
    )


def test_local_file_overrides_upstream_in_load_order(tmp_path: Path) -> None:
    upstream = tmp_path / "falco_rules.yaml"
    upstream.write_text(UPSTREAM)
    local = tmp_path / "falco_rules.local.yaml"
    local.write_text(
        rules(
            """\
            - list: allowed_outbound_destination_ipaddrs
              items: ['"1.1.1.1"']
              override:
                items: append
            - rule: Unexpected outbound connection destination
              enabled: true
              override:
                enabled: replace
            """
        )
    )
    loaded = load_rules(upstream, local)
    unexpected = loaded.rules["Unexpected outbound connection destination"]
    assert unexpected.enabled
    assert 'fd.sip in ("127.0.0.1", "8.8.8.8", "1.1.1.1")' in unexpected.expanded
    assert loaded.warnings == ()
    # the other order appends to a list that does not exist yet
    with pytest.raises(RuleError, match=r"falco_rules\.local\.yaml: list 'allowed_outbound_") as info:
        load_rules(local, upstream)
    assert info.value.path == str(local)


def test_rules_keep_file_order_and_redefinition_keeps_position() -> None:
    text = rule_item("one", "evt.type = connect") + rule_item("two", "evt.type = accept")
    text += rule_item("one", "evt.type = accept4")
    loaded = load_rules(text)
    assert list(loaded.rules) == ["one", "two"]
    assert loaded.rules["one"].expanded == "evt.type = accept4"


def test_nested_lists() -> None:
    text = rules(
        """\
        - list: v4
          items: ['"1.2.3.4"']
        - list: v6
          items: ['"2001:db8::1"']
        - list: all_nodes
          items: [v4, v6, '"9.9.9.9"', later]
        - list: later
          items: [x]
        - list: everything
          items: [all_nodes]
        """
    )
    loaded = load_rules(text + rule_item("r", "fd.rip in (everything)"))
    # a list defined after the one that names it stays a plain value, as in Falco
    assert loaded.lists["all_nodes"] == ('"1.2.3.4"', '"2001:db8::1"', '"9.9.9.9"', "later")
    assert loaded.lists["everything"] == loaded.lists["all_nodes"]
    assert loaded.rules["r"].expanded == 'fd.rip in ("1.2.3.4", "2001:db8::1", "9.9.9.9", later)'
    # two levels of nesting are expanded, with a warning that current Falco expands only one
    assert any("list 'everything': item 'all_nodes'" in warning for warning in loaded.warnings)


def test_macros_within_macros_and_visibility() -> None:
    text = rules(
        """\
        - macro: connect_exit
          condition: evt.type = connect and evt.dir = <
        - macro: ok
          condition: evt.rawres >= 0 or evt.res = EINPROGRESS
        - macro: good_connect
          condition: connect_exit and (ok)
        - macro: uses_later
          condition: defined_later
        - macro: defined_later
          condition: proc.name = x
        """
    )
    loaded = load_rules(text + rule_item("r", "good_connect and uses_later"))
    assert loaded.rules["r"].expanded == (
        "((evt.type = connect and evt.dir = <) and ((evt.rawres >= 0 or evt.res = EINPROGRESS))) and ((proc.name = x))"
    )
    assert loaded.macros["good_connect"] == "connect_exit and (ok)"
    assert loaded.warnings == (
        "<rules text>: macro 'uses_later': uses macro 'defined_later', which is defined after it "
        "(Falco rejects this: undefined macro)",
    )


def test_unknown_macro_is_reported_and_kept() -> None:
    text = "- macro: m\n  condition: evt.type = connect and not in_house\n"
    loaded = load_rules(text + rule_item("r", "m and fd.rip exists"))
    rule = loaded.rules["r"]
    assert rule.expanded == "(evt.type = connect and not in_house) and fd.rip exists"
    assert rule.unresolved == ("in_house",)
    assert not rule.complete
    assert loaded.warnings == (
        "<rules text>: macro 'm': unknown macro 'in_house'; kept as written",
        "<rules text>: rule 'r': expansion incomplete: cannot resolve 'in_house'",
    )


def test_legacy_append() -> None:
    text = rules(
        """\
        - list: nodes
          items: ['"1.2.3.4"']
        - list: nodes
          items: ['"5.6.7.8"']
          append: true
        - macro: m
          condition: evt.type = connect
        - macro: m
          condition: or evt.type = accept
          append: true
        """
    )
    text += rule_item("r", "m and fd.rip in (nodes)")
    text += "- rule: r\n  condition: and proc.name != tor\n  append: true\n"
    loaded = load_rules(text)
    assert loaded.lists["nodes"] == ('"1.2.3.4"', '"5.6.7.8"')
    assert loaded.macros["m"] == "evt.type = connect or evt.type = accept"
    assert loaded.rules["r"].condition == "m and fd.rip in (nodes) and proc.name != tor"
    assert loaded.rules["r"].expanded == (
        '(evt.type = connect or evt.type = accept) and fd.rip in ("1.2.3.4", "5.6.7.8") and proc.name != tor'
    )
    assert sum("'append: true' is deprecated" in warning for warning in loaded.warnings) == 3


def test_override_lists_and_macros() -> None:
    text = rules(
        """\
        - list: nodes
          items: [a, b]
        - list: nodes
          items: [c]
          override:
            items: append
        - list: replaced
          items: [x]
        - list: replaced
          items: [y]
          override:
            items: replace
        - macro: m
          condition: evt.type = connect
        - macro: m
          condition: and evt.dir = <
          override:
            condition: append
        - macro: r
          condition: evt.type = connect
        - macro: r
          condition: evt.type = accept
          override:
            condition: replace
        """
    )
    loaded = load_rules(text)
    assert loaded.lists == {"nodes": ("a", "b", "c"), "replaced": ("y",)}
    assert loaded.macros == {"m": "evt.type = connect and evt.dir = <", "r": "evt.type = accept"}
    assert loaded.warnings == ()


def test_override_rules() -> None:
    text = rule_item("r", "evt.type = connect", tags="[network, old]", enabled="false")
    text += rules(
        """\
        - rule: r
          condition: and fd.rip exists
          output: extra=%proc.name
          tags: [tor]
          override:
            condition: append
            output: append
            tags: append
        - rule: r
          priority: critical
          enabled: true
          desc: replaced description
          override:
            priority: replace
            enabled: replace
            desc: replace
        """
    )
    rule = load_rules(text).rules["r"]
    assert rule.condition == "evt.type = connect and fd.rip exists"
    assert rule.output == "seen %fd.name extra=%proc.name"
    assert rule.tags == ("network", "old", "tor")
    assert rule.priority == "Critical"
    assert rule.enabled
    assert rule.desc == "replaced description"

    replaced = load_rules(
        text
        + "- rule: r\n  condition: evt.type = accept\n  tags: [x]\n  override: {condition: replace, tags: replace}\n"
    ).rules["r"]
    assert replaced.expanded == "evt.type = accept"
    assert replaced.tags == ("x",)


def test_enabled_only_item_toggles_an_earlier_rule() -> None:
    loaded = load_rules(rule_item("r", "evt.type = connect") + "- rule: r\n  enabled: false\n")
    assert not loaded.rules["r"].enabled
    assert any("only 'enabled' is deprecated" in warning for warning in loaded.warnings)
    assert any("disabled (enabled: false)" in warning for warning in loaded.warnings)


def test_exceptions() -> None:
    text = rule_item("r", "evt.type = connect and fd.rip in (nodes)")
    text = "- list: nodes\n  items: ['\"1.2.3.4\"']\n- list: ports\n  items: [80, 443]\n" + text
    text += rules(
        """\
          exceptions:
            - name: by_proc_and_port
              fields: [proc.name, fd.rport]
              comps: [=, in]
              values:
                - [tor, ports]
                - ["my app", [9001, 9030]]
            - name: by_parent
              fields: proc.pname
              values: [systemd, cron]
            - name: nothing_yet
              fields: [proc.name]
        - rule: r
          exceptions:
            - name: by_parent
              values: [init]
            - name: by_user
              fields: [user.name, proc.name]
              comps: [=, pmatch]
              values: [[root, shells]]
          override:
            exceptions: append
        - list: shells
          items: [bash, sh]
        """
    )
    rule = load_rules(text).rules["r"]
    assert rule.expanded == (
        '(evt.type = connect and fd.rip in ("1.2.3.4"))'
        " and not (( proc.name = tor and  fd.rport in (80, 443)) or"
        ' ( proc.name = "my app" and  fd.rport in (9001, 9030)))'
        " and not (proc.pname in (systemd, cron, init))"
        " and not (( user.name = root and  proc.name pmatch (bash, sh)))"
    )
    assert rule.complete


def test_exceptions_legacy_append_adds_values() -> None:
    text = rule_item("r", "evt.type = connect")
    text += "  exceptions:\n    - name: e\n      fields: proc.name\n      values: [a]\n"
    text += "- rule: r\n  append: true\n  exceptions:\n    - name: e\n      values: [b]\n"
    rule = load_rules(text).rules["r"]
    assert rule.expanded == "(evt.type = connect) and not (proc.name in (a, b))"
    with pytest.raises(RuleError, match="rule 'r': exception 'e': with a single field"):
        load_rules(text + "- rule: r\n  append: true\n  exceptions:\n    - name: e\n      values: [[c]]\n")


@pytest.mark.parametrize(
    ("exceptions", "message"),
    [
        ("[{name: e, fields: [a.b, c.d], comps: [=], values: []}]", "equal length"),
        ("[{name: e, fields: [a.b], comps: [like], values: []}]", "'like' is not a supported"),
        ("[{name: e, fields: a.b, comps: '=', values: []}]", "one of in, pmatch, intersects"),
        ("[{name: e, values: []}]", "missing 'fields'"),
        ("[{name: e, fields: a.b}, {name: e, fields: c.d}]", "unique"),
        ("{name: e}", "must be a sequence"),
        ("[{name: e, fields: [a.b, c.d], values: [[x]]}]", "one entry per field"),
        ("[{name: e, fields: a.b, values: [[x]]}]", "with a single field, each value must be a value"),
    ],
)
def test_exception_errors(exceptions: str, message: str) -> None:
    with pytest.raises(RuleError, match=message):
        load_rules(rule_item("r", "evt.type = connect", exceptions=exceptions))


def test_priority_is_case_insensitive_and_info_is_informational() -> None:
    text = rule_item("a", "evt.type = connect").replace("WARNING", "info")
    text += rule_item("b", "evt.type = connect").replace("WARNING", "Emergency")
    loaded = load_rules(text)
    assert [rule.priority for rule in loaded.rules.values()] == ["Informational", "Emergency"]


def test_scalars_are_kept_as_written() -> None:
    # yaml-cpp hands Falco the text; PyYAML's defaults would turn these into 31, 8, True, 1000.0 and a date.
    loaded = load_rules("- list: l\n  items: [0x1F, 010, yes, 1e3, 2022-08-17, 1.2.3.4, 2001:db8::1]\n")
    assert loaded.lists["l"] == ("0x1F", "010", "yes", "1e3", "2022-08-17", "1.2.3.4", "2001:db8::1")


def test_engine_version_keeps_the_highest() -> None:
    loaded = load_rules("- required_engine_version: 12\n", "- required_engine_version: 0.31.0\n")
    assert loaded.required_engine_version == "0.31.0"
    assert load_rules(
        "- required_engine_version: 0.58.0\n", "- required_engine_version: 26\n"
    ).required_engine_version == ("0.58.0")


def test_unknown_top_level_item_is_a_warning() -> None:
    loaded = load_rules("- something_new: 1\n")
    assert loaded.warnings == ("<rules text>: item 1: unknown top-level item (something_new); ignored",)


def test_empty_and_null_documents() -> None:
    loaded = load_rules("", "# only a comment\n", "---\n- list: l\n  items: []\n---\n")
    assert loaded.lists == {"l": ()}
    assert loaded.rules == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- list: l\n  items: [a\n", r"<rules text>: invalid YAML at line \d+, column \d+"),
        ("- list: l\n  items: a\n", "'items' must be a sequence, not a scalar"),
        ("- list: l\n  items: {a: b}\n", "'items' must be a sequence, not a mapping"),
        ("- list: l\n  items: [a, [b]]\n", "'items' entry 2 must be a single value, not a sequence"),
        ("- list: l\n  items:\n    - a\n    -\n", "'items' entry 2 must be a single value, not a null"),
        ("- list: l\n", "list 'l': missing 'items'"),
        ("- list: 'a b'\n  items: []\n", "invalid list name"),
        ("- macro: 1m\n  condition: evt.type = connect\n", "invalid macro name"),
        ("- macro: m\n", "macro 'm': missing 'condition'"),
        ("- list: l\n  items: [a]\n  append: true\n", "list 'l': cannot append to a list that is not defined"),
        ("- list: l\n  items: [a]\n  override: {items: append}\n", "cannot append to a list"),
        ("- macro: m\n  condition: x.y = 1\n  append: true\n", "macro 'm': cannot append to a macro"),
        ("- rule: r\n  condition: and x.y = 1\n  append: true\n", "rule 'r': cannot append to a rule"),
        ("- rule: r\n  condition: x.y = 1\n  override: {condition: append}\n", "cannot append to a rule"),
        ("- rule: r\n  priority: debug\n  override: {priority: replace}\n", "cannot replace keys of a rule"),
        ("- rule: r\n  enabled: false\n", "cannot enable or disable a rule that is not defined"),
        ("- rule: r\n  desc: d\n  output: o\n  priority: warning\n", "rule 'r': missing 'condition'"),
        ("- rule: r\n  desc: d\n  condition: x.y = 1\n  priority: warning\n", "rule 'r': missing 'output'"),
        ("- rule: r\n  desc: d\n  condition: x.y = 1\n  output: o\n", "rule 'r': missing 'priority'"),
        ("- rule: r\n  desc: d\n  condition:\n  output: o\n  priority: warning\n", "'condition' is empty"),
        ("- rule: r\n  desc: d\n  condition: x.y = 1\n  output: o\n  priority: loud\n", "invalid priority 'loud'"),
        ("- rule: r\n  condition: x.y = 1\n  output: o\n  override: {condition: append}\n", "unexpected key 'output'"),
        ("- rule: r\n  override: {condition: append}\n", "'condition' is not defined"),
        ("- rule: r\n  priority: debug\n  override: {priority: append}\n", "'priority' cannot be appended to"),
        ("- rule: r\n  condition: x\n  override: {condition: merge}\n", "invalid override operation 'merge'"),
        ("- list: l\n  items: [a]\n  append: true\n  override: {items: append}\n", "cannot be used together"),
        ("- list: l\n  items: []\n  append: maybe\n", "'append' must be true or false"),
        ("list: l\n", "must be a YAML sequence"),
        ("- just a string\n", "item 1 must be a mapping, not a scalar"),
        ("- required_engine_version: latest\n", "cannot parse 'latest'"),
        ("- required_plugin_versions: [{name: container}]\n", "missing 'version'"),
    ],
)
def test_load_errors(text: str, message: str) -> None:
    with pytest.raises(RuleError, match=message):
        load_rules(text)


def test_rule_redefined_with_another_source_is_an_error() -> None:
    text = rule_item("r", "evt.type = connect") + rule_item("r", "ka.verb = get", source="k8s_audit")
    with pytest.raises(RuleError, match="redefined with source 'k8s_audit'"):
        load_rules(text)


def test_condition_syntax_error_names_file_and_rule(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(rule_item("r", "evt.type = connect and (fd.rip exists"))
    with pytest.raises(RuleError, match=r"broken.yaml: rule 'r': cannot parse the condition") as info:
        load_rules(path)
    assert info.value.path == str(path)


def test_cycles_are_errors() -> None:
    macros = "- macro: a\n  condition: b\n- macro: b\n  condition: a\n"
    with pytest.raises(RuleError, match="cycle"):
        load_rules(macros)
    lists = "- list: a\n  items: [x]\n- list: b\n  items: [a]\n- list: a\n  items: [b]\n  append: true\n"
    with pytest.raises(RuleError, match="lists refer to each other in a cycle"):
        load_rules(lists)


def test_missing_file() -> None:
    with pytest.raises(RuleError, match="cannot read the rules file") as info:
        load_rules(Path("/nonexistent/rules.yaml"))
    assert info.value.path == "/nonexistent/rules.yaml"


def test_several_texts_are_named_apart() -> None:
    with pytest.raises(RuleError, match=r"^<rules text 2>: list 'l'"):
        load_rules("- list: k\n  items: []\n", "- list: l\n  items:\n")


def test_values_are_frozen() -> None:
    loaded = load_rules(rule_item("r", "evt.type = connect"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.rules["r"].enabled = False  # type: ignore[misc]
    with pytest.raises(TypeError):
        loaded.rules["x"] = loaded.rules["r"]  # type: ignore[index]


def test_ten_thousand_item_list_expands_every_item_once_and_fast() -> None:
    addresses = [f'"10.{i >> 8 & 255}.{i & 255}.1"' for i in range(10_000)]
    lines = ["- list: tor_ipv4_entry_nodes", "  items:"] + [f"    - '{address}'" for address in addresses]
    text = (
        "\n".join(lines)
        + "\n"
        + rule_item(
            "Connection to tor entry node",
            "evt.type = connect and evt.dir = < and fd.rip in (tor_ipv4_entry_nodes)",
        )
    )
    started = time.perf_counter()
    loaded = load_rules(text)
    elapsed = time.perf_counter() - started
    expanded = loaded.rules["Connection to tor entry node"].expanded
    prefix, _, rest = expanded.partition("fd.rip in (")
    assert prefix == "evt.type = connect and evt.dir = < and "
    assert rest.endswith(")")
    assert rest[:-1].split(", ") == addresses
    assert elapsed < 0.5, f"loading and expanding took {elapsed:.3f} s"


def test_doctests() -> None:
    import doctest

    from tor_sets.falco import load

    assert doctest.testmod(load).failed == 0
