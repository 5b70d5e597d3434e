"""tor-sets: Falco rules from the Tor relay directory, verified on real engines.

The library follows the data's way; every step is importable on its own::

    from tor_sets import FetchSettings, obtain, classify, split, build, write_rules

    obtained = obtain(settings=FetchSettings())      # live data, else the cached download, else the bundled snapshot
    sets = classify(obtained.snapshot)               # entry / exit / relay addresses, deduplicated
    built = build(obtained.snapshot)                 # lists, macros and rules as Falco YAML
    write_rules("tor_rules.yaml", built.text)        # atomic; False when unchanged

Each module documents its part (``help(tor_sets.onionoo)``, ``help(tor_sets.falco)``, ...). The source tree's
docs/api.md has a complete example, run by the tests.
"""

from __future__ import annotations

__version__ = "0.1.0"

from tor_sets.build import BuildOptions, Built, build, parse_networks, relay_sets, write_rules
from tor_sets.compact import Compacted, aggregate_lossy, collapse, split
from tor_sets.errors import (
    CaptureError,
    DocumentError,
    EngineError,
    EngineTimeout,
    EngineUnavailable,
    FetchError,
    FetchTimeout,
    RuleError,
    SanityError,
    StaleDataError,
    TorSetsError,
    UsageError,
)
from tor_sets.falco.emit import render
from tor_sets.falco.generate import RulesOptions, generate
from tor_sets.falco.model import FalcoList, Macro, Profile, Rule, RulesFile, profile_for
from tor_sets.onionoo import (
    FetchResult,
    FetchSettings,
    Obtained,
    bundled_snapshot,
    fetch,
    obtain,
    parse_document,
    read_snapshot,
)
from tor_sets.relays import Relay, RelaySets, Role, Snapshot, classify

__all__ = [
    "BuildOptions",
    "Built",
    "CaptureError",
    "Compacted",
    "DocumentError",
    "EngineError",
    "EngineTimeout",
    "EngineUnavailable",
    "FalcoList",
    "FetchError",
    "FetchResult",
    "FetchSettings",
    "FetchTimeout",
    "Macro",
    "Obtained",
    "Profile",
    "Relay",
    "RelaySets",
    "Role",
    "Rule",
    "RuleError",
    "RulesFile",
    "RulesOptions",
    "SanityError",
    "Snapshot",
    "StaleDataError",
    "TorSetsError",
    "UsageError",
    "__version__",
    "aggregate_lossy",
    "build",
    "bundled_snapshot",
    "classify",
    "collapse",
    "fetch",
    "generate",
    "obtain",
    "parse_document",
    "parse_networks",
    "profile_for",
    "read_snapshot",
    "relay_sets",
    "render",
    "split",
    "write_rules",
]
