"""Real rule engines that replay capture files.

One seam: :meth:`Engine.replay` takes a capture and rules files and returns, per rule, the events it matched
(:class:`Replay`). Real Falco runs the files as they are (:class:`FalcoLocal`, :class:`FalcoContainer`); the
sysdig builds (:class:`SysdigModern`, :class:`SysdigModernDocker`, :class:`SysdigLegacy`) expand each rule with
tor-sets' own loader and stay as the second opinion and the 2022 engine. Exports the engine classes, the values
they return (:class:`Match`, :class:`Run`, :class:`Replay`), :class:`Plugin`, :data:`ENGINES` (a plain dict from
name to class), :func:`get_engine` and :func:`auto` (the best engine present). :class:`FakeEngine` (:mod:`.fake`)
is a test double whose replays answer from a function; it is not in :data:`ENGINES`. Setting engines up is
:mod:`tor_sets.provision`'s job.

>>> sorted(ENGINES)
['falco', 'falco-local', 'sysdig-legacy', 'sysdig-modern', 'sysdig-modern-docker']
"""

from __future__ import annotations

from tor_sets.engines.base import DEFAULT_FIELDS, Engine, Match, Plugin, Replay, Run
from tor_sets.engines.fake import FakeEngine
from tor_sets.engines.falco import FalcoContainer, FalcoEngine, FalcoLocal
from tor_sets.engines.sysdig import SysdigLegacy, SysdigModern, SysdigModernDocker
from tor_sets.errors import EngineUnavailable

__all__ = [
    "DEFAULT_FIELDS",
    "ENGINES",
    "PREFERENCE",
    "Engine",
    "FakeEngine",
    "FalcoContainer",
    "FalcoEngine",
    "FalcoLocal",
    "Match",
    "Plugin",
    "Replay",
    "Run",
    "SysdigLegacy",
    "SysdigModern",
    "SysdigModernDocker",
    "auto",
    "get_engine",
]

ENGINES: dict[str, type[Engine]] = {
    FalcoLocal.name: FalcoLocal,
    FalcoContainer.name: FalcoContainer,
    SysdigModern.name: SysdigModern,
    SysdigModernDocker.name: SysdigModernDocker,
    SysdigLegacy.name: SysdigLegacy,
}

#: the order :func:`auto` tries: real Falco first (run directly, then in its container), then the sysdig builds of
#: current libs (the second opinion), the 2022 engine last
PREFERENCE: tuple[str, ...] = ("falco-local", "falco", "sysdig-modern", "sysdig-modern-docker", "sysdig-legacy")


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
