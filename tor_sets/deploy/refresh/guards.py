"""The sanity guards a refresh applies before new rules replace the last good ones, each a pure function.

Exports :class:`Guards` (the limits) and:

* :func:`check_guards`: too few running relays (``min_relays``), or the relay count or an entry/exit address count
  fell too far since the last good state (``max_drop``): :class:`~tor_sets.errors.SanityError`;
* :func:`rollback_reason`: the data obtained is older than the deployed data (it is never deployed);
* :func:`future_reason`: the state's deployed data is dated in the future (left by a version that accepted such
  data; it would make every genuine document look like a rollback, so it is ignored);
* :func:`stale_reason`: the newest good data is older than ``max_age``.

Messages name the option fields (``min_relays``, ``max_drop``, ``max_age``); the command line shows its flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from tor_sets.build import Built
from tor_sets.deploy.refresh.state import Deployed
from tor_sets.errors import SanityError
from tor_sets.onionoo import MAX_CLOCK_SKEW
from tor_sets.relays import Snapshot, format_age

__all__ = ["Guards", "check_guards", "future_reason", "rollback_reason", "stale_reason"]

#: counts below this in the last good state are not compared by the drop guard (3 → 1 is noise, not an outage)
_DROP_FLOOR = 20
#: the counts the drop guard compares, with the words used in its message
_GUARDED_COUNTS = (
    ("relays", "running relays"),
    ("entry_ipv4", "entry IPv4 addresses"),
    ("entry_ipv6", "entry IPv6 addresses"),
    ("exit_ipv4", "exit IPv4 addresses"),
    ("exit_ipv6", "exit IPv6 addresses"),
)


@dataclass(frozen=True, slots=True)
class Guards:
    """Sanity limits a new rules file must meet before it replaces the last good one.

    Attributes:
        min_relays: fewest running relays a document may list (the network has about 9,500-10,200; a document
            with far fewer is a broken or truncated answer, not a shrunken network).
        max_drop: largest allowed fall, as a fraction, of the relay count and of each entry/exit address count
            (per IP version) against the last good state; 1.0 switches the check off.
    """

    min_relays: int = 5000
    max_drop: float = 0.5


def check_guards(snapshot: Snapshot, built: Built | None, guards: Guards, previous: Deployed | None) -> None:
    """Refuse data that would make rules silently stop detecting.

    Args:
        snapshot: the new data.
        built: the rules built from it (None: only the relay count is checked).
        guards: the limits.
        previous: the last good state to compare counts with (None: no drop check).

    Raises:
        SanityError: too few relays, or counts fell by more than ``guards.max_drop``.

    >>> from datetime import datetime
    >>> check_guards(Snapshot(datetime(2026, 1, 1), ()), None, Guards(min_relays=10), None)
    Traceback (most recent call last):
    ...
    tor_sets.errors.SanityError: only 0 running relays in the data (at least 10 required, min_relays)
    """
    relays = len(snapshot.relays)
    if relays < guards.min_relays:
        raise SanityError(
            f"only {relays} running relays in the data (at least {guards.min_relays} required, min_relays)"
        )
    if built is None or previous is None or guards.max_drop >= 1.0:
        return
    new = {"relays": relays, **built.sets.counts()}
    old = {"relays": previous.relays, **previous.counts}
    falls = []
    for key, words in _GUARDED_COUNTS:
        before, after = old.get(key, 0), new.get(key, 0)
        if before >= _DROP_FLOOR and after < before * (1 - guards.max_drop):
            falls.append(f"{words} {before} -> {after} (-{(before - after) * 100 / before:.0f} %)")
    if falls:
        raise SanityError(
            f"{', '.join(falls)} since the last good refresh (data of "
            f"{previous.relays_published:%Y-%m-%d %H:%M} UTC): more than the allowed drop of "
            f"{guards.max_drop * 100:g} % (max_drop)"
        )


def rollback_reason(published: datetime, origin: str, deployed: Deployed) -> str | None:
    """Why data published at ``published`` must not replace ``deployed``: it is older (None when it is not).

    >>> print(rollback_reason(datetime(2026, 2, 1), "live", _example(datetime(2026, 3, 1))))
    the relay data obtained (live, of 2026-02-01 00:00 UTC) is older than the deployed data of 2026-03-01 00:00 UTC; keeping the deployed rules
    """  # noqa: E501
    if published >= deployed.relays_published:
        return None
    return (
        f"the relay data obtained ({origin}, of {published:%Y-%m-%d %H:%M} UTC) is older than "
        f"the deployed data of {deployed.relays_published:%Y-%m-%d %H:%M} UTC; keeping the deployed rules"
    )


def future_reason(deployed: Deployed, now: datetime) -> str | None:
    """Why the state's ``deployed`` data cannot be trusted: dated more than the allowed clock skew after ``now``.

    Such a state was left by a version that accepted future-dated data; kept, it would refuse every genuine
    document as a rollback, forever.

    >>> print(future_reason(_example(datetime(2099, 1, 1)), datetime(2026, 3, 1)))
    the state records relay data of 2099-01-01 00:00 UTC, in the future; ignoring it for the rollback and drop checks
    >>> future_reason(_example(datetime(2026, 3, 1, 0, 59)), datetime(2026, 3, 1)) is None
    True
    """
    if deployed.relays_published - now.replace(tzinfo=None) <= MAX_CLOCK_SKEW:
        return None
    return (
        f"the state records relay data of {deployed.relays_published:%Y-%m-%d %H:%M} UTC, in the future; "
        "ignoring it for the rollback and drop checks"
    )


def stale_reason(deployed: Deployed | None, max_age: timedelta | None, now: datetime) -> str | None:
    """Why the newest good data is too old: older than ``max_age`` at ``now`` (None when fresh or unchecked).

    >>> print(stale_reason(_example(datetime(2026, 3, 1)), timedelta(hours=6), datetime(2026, 3, 1, 7)))
    the newest good relay data (of 2026-03-01 00:00 UTC) is 7.0 h old, older than the allowed 6.0 h (max_age)
    """
    if max_age is None or deployed is None:
        return None
    age = now.replace(tzinfo=None) - deployed.relays_published
    if age <= max_age:
        return None
    return (
        f"the newest good relay data (of {deployed.relays_published:%Y-%m-%d %H:%M} UTC) is {format_age(age)} "
        f"old, older than the allowed {format_age(max_age)} (max_age)"
    )


def _example(published: datetime) -> Deployed:
    """A deployed state of data published at ``published``, for the examples above."""
    return Deployed("0" * 64, 1, published, 9491, {}, "live", "", "yaml", "", published, published)
