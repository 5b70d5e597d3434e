"""Option fields and flags: library messages name option fields (``min_relays``), the command line its flags.

Exports :data:`OPTION_FLAGS` and :func:`with_flags` (issue 15.4: the library never names a flag).
"""

from __future__ import annotations

import re

__all__ = ["OPTION_FLAGS", "with_flags"]

#: the option fields library messages name, and the flag that sets each (issue 15.4: the library names fields,
#: the command line names its flags)
OPTION_FLAGS = {
    "allow_fallback": "--allow-fallback",
    "deadline": "--deadline",
    "lock_timeout": "--lock-timeout",
    "max_age": "--max-age",
    "max_bytes": "--max-bytes",
    "max_drop": "--max-drop",
    "max_relays": "--max-relays",
    "min_relays": "--min-relays",
    "plain_http": "--plain-http",
    "reload.pid": "--reload-pid",
}
# a field as a word of its own: not inside a path, a URL, a dotted name or an assignment; a field that is a plain
# English word too ("deadline") only where messages name fields: alone in parentheses
_COMPOUND = [f for f in OPTION_FLAGS if "_" in f or "." in f]
_PLAIN = [f for f in OPTION_FLAGS if f not in _COMPOUND]
_OPTION_FIELD = re.compile(
    r"(?<![\w./=-])(" + "|".join(map(re.escape, _COMPOUND)) + r")(?![\w/=-])"
    r"|(?<=\()(" + "|".join(map(re.escape, _PLAIN)) + r")(?=\))"
)


def with_flags(message: str) -> str:
    """A library message as the command line shows it: each option field it names replaced by its flag.

    >>> with_flags("only 0 running relays in the data (at least 5000 required, min_relays)")
    'only 0 running relays in the data (at least 5000 required, --min-relays)'
    >>> with_flags("cannot read /srv/min_relays/x.json")
    'cannot read /srv/min_relays/x.json'
    >>> with_flags("no complete answer within the deadline of 3 s (deadline)")
    'no complete answer within the deadline of 3 s (--deadline)'
    """
    return _OPTION_FIELD.sub(lambda match: OPTION_FLAGS[match[1] or match[2]], message)
