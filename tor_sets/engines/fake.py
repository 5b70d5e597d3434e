"""A fake engine for tests: it runs nothing, and its replays answer from a function given at construction.

Exports :class:`FakeEngine`. Like httpx's ``MockTransport`` or pySigma's test backend, it stands where a real engine
stands (:class:`~tor_sets.engines.base.Engine`), so that what sits above the seam (verification's judging, the
validators' choices) can be tested without root, engines or Docker. It is TEST SUPPORT shipped with the library for
users' tests too; it is not in :data:`tor_sets.engines.ENGINES`, so no command line reaches it.

The function takes the capture and the loaded rules and returns, per rule, the events it matched, as timestamps
(or :class:`~tor_sets.engines.base.Match` values)::

    def hits(capture: Path, rules: RuleSet) -> Mapping[str, Iterable[int | Match]]:
        return {"Outbound Connection to Tor Entry Relay": [1_772_240_400_000_001_000]}

    verdict = verify([rules_path], scenario, FakeEngine(hits))

The replay is what a real engine returns (:class:`~tor_sets.engines.base.Replay`): an entry for every enabled
syscall rule of the files (empty when the function names none), Falco's ``rule_matching: first`` applied when asked
for, and the rules given in ``problems`` reported as ones the engine cannot evaluate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from tor_sets.engines.base import (
    DEFAULT_FIELDS,
    NA,
    Engine,
    Match,
    Plugin,
    Replay,
    Run,
    Validation,
    check_rule_matching,
    first_match_only,
)
from tor_sets.errors import EngineError, EngineUnavailable, RuleError

if TYPE_CHECKING:
    from tor_sets.falco.load import RuleSet

__all__ = ["FakeEngine", "FakeReplay", "Hits"]

#: what the function behind a :class:`FakeEngine` answers: per rule, the events it matched
Hits: TypeAlias = Callable[[Path, "RuleSet"], Mapping[str, Iterable[int | Match]]]


@dataclass(frozen=True, slots=True)
class FakeReplay:
    """One replay a :class:`FakeEngine` was asked for, as it was asked.

    Attributes:
        rules: the rules files, in load order.
        plugins: the plugins to load.
        rule_matching: ``all`` or ``first``.
        fields: the fields asked for.
    """

    rules: tuple[Path, ...]
    plugins: tuple[Plugin, ...]
    rule_matching: str
    fields: tuple[str, ...]


class FakeEngine(Engine):
    """An engine whose replays answer from ``hits``; for tests.

    Args:
        hits: the capture and the loaded rules → per rule, the events it matched (timestamps or matches). Rules it
            does not name matched nothing; naming a rule the files do not hold is an error (as a typo would be).
        problems: rules this engine "cannot evaluate", and why (:attr:`Replay.problems`); they get no hits.
        version: what :meth:`version` reports.
        unavailable: when given, :meth:`check` raises :class:`EngineUnavailable` with this reason.

    Attributes:
        replays: every replay asked for, in order (:class:`FakeReplay`).
    """

    name = "fake"
    description = "a fake engine for tests: replays answer from a function (not installable)"

    def __init__(
        self,
        hits: Hits = lambda capture, rules: {},
        *,
        problems: Mapping[str, str] | None = None,
        version: str = "0.0.0-fake",
        unavailable: str | None = None,
    ) -> None:
        self._hits = hits
        self._problems = dict(problems or {})
        self._version = version
        self._unavailable = unavailable
        self.replays: list[FakeReplay] = []

    def check(self) -> None:
        """Raises EngineUnavailable when made unavailable."""
        if self._unavailable is not None:
            raise EngineUnavailable(f"{self.name}: {self._unavailable}", engine=self.name)

    def version(self) -> str:
        self.check()
        return self._version

    def filter(
        self, capture: Path, condition: str, fields: Sequence[str] = DEFAULT_FIELDS, *, timeout: float = 300
    ) -> Run:
        """Not supported: the fake answers per rule (:meth:`replay`), not per condition.

        Raises:
            EngineUnavailable: always.
        """
        raise EngineUnavailable(f"{self.name}: replays rules files only, not bare conditions", engine=self.name)

    def compile(self, condition: str, *, timeout: float = 60) -> None:
        """Accept every condition (the fake parses nothing)."""
        self.check()

    def replay(
        self,
        capture: Path,
        rules: Sequence[Path],
        *,
        fields: Sequence[str] = DEFAULT_FIELDS,
        plugins: Sequence[Plugin] = (),
        rule_matching: str = "all",
        timeout: float = 600,
    ) -> Replay:
        """Load ``rules`` with tor-sets' loader and answer from the function; see :meth:`Engine.replay`.

        Raises:
            RuleError: the rules do not load, or ``rule_matching`` is unknown.
            EngineError: the function names a rule the files do not hold.
        """
        from tor_sets.falco.load import load_rules  # the loader sits above the engines in the package

        self.check()
        check_rule_matching(rule_matching)
        fields = tuple(fields)
        self.replays.append(FakeReplay(tuple(rules), tuple(plugins), rule_matching, fields))
        ruleset = load_rules(*rules)
        order = [r.name for r in ruleset.syscall_rules]
        answer = self._hits(capture, ruleset)
        unknown = sorted(set(answer) - set(order))
        if unknown:
            raise EngineError(f"{self.name}: hits name rules the files do not hold: {unknown}", engine=self.name)
        empty = dict.fromkeys(fields, NA)
        hits: dict[str, tuple[Match, ...]] = {}
        for name in order:
            if name in self._problems:
                continue
            matches = (m if isinstance(m, Match) else Match(m, NA, empty) for m in answer.get(name, ()))
            hits[name] = tuple(sorted(matches, key=lambda m: m.ts_ns))
        if rule_matching == "first":
            hits = first_match_only(hits, list(hits))
        problems = {name: why for name, why in self._problems.items() if name in order}
        return Replay(self.name, hits, problems)

    def validate(
        self, rules: Sequence[Path], *, plugins: Sequence[Plugin] = (), timeout: float = 120
    ) -> tuple[Validation, ...]:
        """tor-sets' loader alone: the files load or not, all with the same verdict (as on the sysdig engines)."""
        from tor_sets.falco.load import load_rules  # the loader sits above the engines in the package

        self.check()
        try:
            ruleset = load_rules(*rules)
        except RuleError as exc:
            return tuple(Validation(path, False, (), str(exc)) for path in rules)
        return tuple(Validation(path, True, tuple(ruleset.warnings), "Ok") for path in rules)
