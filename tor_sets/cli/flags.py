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
    "lock_timeout": "--lock-timeout",
    "max_age": "--max-age",
    "max_drop": "--max-drop",
    "min_relays": "--min-relays",
    "plain_http": "--plain-http",
    "reload.pid": "--reload-pid",
}
# a field as a word of its own: not inside a path, a URL, a dotted name or an assignment
_OPTION_FIELD = re.compile(r"(?<![\w./=-])(" + "|".join(map(re.escape, OPTION_FLAGS)) + r")(?![\w/=-])")


def with_flags(message: str) -> str:
    """A library message as the command line shows it: each option field it names replaced by its flag.

    >>> with_flags("only 0 running relays in the data (at least 5000 required, min_relays)")
    'only 0 running relays in the data (at least 5000 required, --min-relays)'
    >>> with_flags("cannot read /srv/min_relays/x.json")
    'cannot read /srv/min_relays/x.json'
    """
    return _OPTION_FIELD.sub(lambda match: OPTION_FLAGS[match[1]], message)
