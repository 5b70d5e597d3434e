"""What runs beside a live Falco, after the rules are deployed.

* :mod:`tor_sets.runtime.enrich`: adds the relays behind an address to the alerts of tor-sets rules (a file, a
  pipe, or an HTTP hop between Falco and falcosidekick): ``tor-sets enrich``.
* :mod:`tor_sets.runtime.selftest`: proves on a live host that the rules are loaded and alerts delivered, with real
  connections to and from a canary address in throw-away network namespaces: ``tor-sets selftest``.

This package exports nothing itself; each subpackage has its own entry points.
"""

from __future__ import annotations

__all__: list[str] = []
