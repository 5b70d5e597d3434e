"""Falco rules files, both ways: written from relay sets, and read back the way Falco reads them.

Writing: :mod:`.model` (lists, macros, rules and the profile of the Falco versions they target), :mod:`.generate`
(relay sets → a :class:`RulesFile`, :func:`generate`, :class:`RulesOptions`), :mod:`.emit` (a model → YAML text,
:func:`render`) and :mod:`.legacy2022` (the 2022 tool's four files, :func:`render_2022`, for comparison).

Reading: :mod:`.load` (rules files in Falco's load order → :class:`RuleSet` of :class:`LoadedRule`,
:func:`load_rules`) and :mod:`.expand` (the condition grammar; :func:`expand_condition` writes a condition out as
one self-contained filter). :mod:`.alerts` reads Falco's JSON alerts.

Spec: https://falco.org/docs/concepts/rules/ .
"""

from __future__ import annotations

from tor_sets.falco.emit import render
from tor_sets.falco.expand import expand_condition
from tor_sets.falco.generate import RulesOptions, generate
from tor_sets.falco.legacy2022 import render_2022
from tor_sets.falco.load import LoadedRule, RuleSet, load_rules
from tor_sets.falco.model import FalcoList, Macro, Profile, Rule, RulesFile, profile_for

__all__ = [
    "FalcoList",
    "LoadedRule",
    "Macro",
    "Profile",
    "Rule",
    "RuleSet",
    "RulesFile",
    "RulesOptions",
    "expand_condition",
    "generate",
    "load_rules",
    "profile_for",
    "render",
    "render_2022",
]
