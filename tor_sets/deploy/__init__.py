"""After the build: keep a deployed rules file fresh on one host, and hand rules to a fleet.

Two subpackages, each with its own entry points:

* :mod:`tor_sets.deploy.refresh` — one host: :func:`~tor_sets.deploy.refresh.refresh` (fetch → build → guard →
  validate → atomic swap → reload → state, under a lock), the loop :func:`~tor_sets.deploy.refresh.run_every`, and
  :func:`~tor_sets.deploy.refresh.deployment_status` (``tor-sets refresh``, ``tor-sets status``);
* :mod:`tor_sets.deploy.fleet` — many nodes: Kubernetes manifests and falcoctl OCI artifacts
  (``tor-sets build --format configmap``, ``tor-sets publish``).

This package itself exports nothing; import from the subpackage.
"""

from __future__ import annotations

__all__: list[str] = []
