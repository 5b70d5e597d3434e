"""The exception tree of tor-sets.

Every error the library raises on purpose derives from :class:`TorSetsError`; only the command line
(:func:`tor_sets.cli.main`) catches it and turns it into one line on stderr and an exit code::

    TorSetsError
    ├── FetchError          the relay directory could not be fetched (url, cause)
    │   └── FetchTimeout    ... because the server stalled past the timeout
    ├── DocumentError       the document is not a usable Onionoo details document (field, fingerprint)
    ├── SanityError         the data would make bad rules (empty set, shrink past a guard, too-wide network)
    ├── StaleDataError      the newest good data is older than the allowed age
    ├── UsageError          options that contradict each other or name impossible values
    ├── RuleError           a rules file cannot be read, expanded or validated (path)
    ├── CaptureError        a capture file cannot be written or read
    └── EngineError         a rule engine failed (engine, return code, stderr tail)
        ├── EngineUnavailable   the engine is not installed or cannot run here
        └── EngineTimeout       the engine did not finish in time

Foreign errors are translated once, at the boundary where they occur, and raised ``from`` the original.
"""

from __future__ import annotations

__all__ = [
    "CaptureError",
    "DocumentError",
    "EngineError",
    "EngineTimeout",
    "EngineUnavailable",
    "FetchError",
    "FetchTimeout",
    "RuleError",
    "SanityError",
    "StaleDataError",
    "TorSetsError",
    "UsageError",
]


class TorSetsError(Exception):
    """Root of every error tor-sets raises on purpose."""

    #: exit code of the command line for this kind of failure (see ``tor-sets --help``)
    exit_code: int = 3


class FetchError(TorSetsError):
    """The relay directory could not be fetched."""

    exit_code = 4

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class FetchTimeout(FetchError):
    """The server did not answer within the timeout."""


class DocumentError(TorSetsError):
    """The document is not a usable Onionoo details document."""

    exit_code = 4

    def __init__(self, message: str, *, field: str | None = None, fingerprint: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.fingerprint = fingerprint


class SanityError(TorSetsError):
    """The data would produce rules that silently stop detecting (empty, shrunk, too wide)."""

    exit_code = 5


class StaleDataError(TorSetsError):
    """The newest good relay data is older than the allowed maximum age."""

    exit_code = 7


class UsageError(TorSetsError):
    """Options that contradict each other or name impossible values (like a bad flag: exit 2)."""

    exit_code = 2


class RuleError(TorSetsError):
    """A rules file cannot be read, expanded or validated."""

    exit_code = 6

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class CaptureError(TorSetsError):
    """A capture file cannot be written or read."""


class EngineError(TorSetsError):
    """A rule engine failed."""

    def __init__(
        self, message: str, *, engine: str | None = None, returncode: int | None = None, stderr: str = ""
    ) -> None:
        super().__init__(message)
        self.engine = engine
        self.returncode = returncode
        self.stderr = stderr


class EngineUnavailable(EngineError):
    """The engine is not installed or cannot run on this machine."""


class EngineTimeout(EngineError):
    """The engine did not finish in time."""
