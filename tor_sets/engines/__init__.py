"""Real rule engines that replay capture files.

Exports the engine classes, the values they return (:class:`Match`, :class:`Run`, :class:`Alert`),
:data:`ENGINES` (a plain dict from name to class), :func:`get_engine` and :func:`auto` (the best engine
present). Setting engines up is :mod:`tor_sets.engines.install`'s job.

>>> sorted(ENGINES)
['falco-docker', 'sysdig-legacy', 'sysdig-modern', 'sysdig-modern-docker']
"""

from __future__ import annotations

from tor_sets.engines.base import DEFAULT_FIELDS, Engine, Match, Run
from tor_sets.engines.falco import Alert, FalcoDocker
from tor_sets.engines.sysdig import SysdigLegacy, SysdigModern, SysdigModernDocker
from tor_sets.errors import EngineUnavailable

__all__ = [
    "DEFAULT_FIELDS",
    "ENGINES",
    "PREFERENCE",
    "Alert",
    "Engine",
    "FalcoDocker",
    "Match",
    "Run",
    "SysdigLegacy",
    "SysdigModern",
    "SysdigModernDocker",
    "auto",
    "get_engine",
]

ENGINES: dict[str, type[Engine]] = {
    SysdigModern.name: SysdigModern,
    SysdigModernDocker.name: SysdigModernDocker,
    FalcoDocker.name: FalcoDocker,
    SysdigLegacy.name: SysdigLegacy,
}

#: the order :func:`auto` tries: current libs first (chroot is the fastest), the 2022 engine last
PREFERENCE: tuple[str, ...] = ("sysdig-modern", "sysdig-modern-docker", "falco-docker", "sysdig-legacy")


def get_engine(name: str) -> Engine:
    """An engine by name, with its default settings.

    Raises:
        EngineUnavailable: no engine has that name.
    """
    try:
        cls = ENGINES[name]
    except KeyError:
        known = ", ".join(sorted(ENGINES))
        raise EngineUnavailable(f"unknown engine {name!r} (known: {known})", engine=name) from None
    return cls()


def auto() -> Engine:
    """The best engine present, in the order of :data:`PREFERENCE`.

    Raises:
        EngineUnavailable: none is present; the message carries each engine's reason.
    """
    reasons = []
    for name in PREFERENCE:
        engine = get_engine(name)
        try:
            engine.check()
        except EngineUnavailable as exc:
            reasons.append(str(exc))
            continue
        return engine
    raise EngineUnavailable("no engine available: " + "; ".join(reasons))
