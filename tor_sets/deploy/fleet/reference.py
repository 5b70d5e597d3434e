"""OCI references: ``[oci://]REGISTRY/REPOSITORY[:TAG|@sha256:DIGEST]``, parsed strictly.

Exports :func:`parse_ref` → :class:`OciRef` and :func:`check_tag`; a bad reference raises
:class:`~tor_sets.errors.ReferenceSyntaxError` (a usage error, exit 2). The registry is always explicit (there is no
implicit Docker Hub) and is ``host[:port]`` only, so that the host judged by the loopback policy is the host
connected to.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from tor_sets.errors import ReferenceSyntaxError

__all__ = ["OciRef", "check_tag", "parse_ref"]

_REPOSITORY = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
# "registry.example.com", "127.0.0.1:5000", "[::1]:5000": a host name, an IPv4 address or a bracketed IPv6 address,
# and a port; nothing else (no user information, no path, no spaces), so the host judged is the host connected to
_REGISTRY = re.compile(
    r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*))(?::(?P<port>[0-9]{1,5}))?"
)


@dataclass(frozen=True, slots=True)
class OciRef:
    """``REGISTRY/REPOSITORY`` with a tag or a digest (exactly one of them is set)."""

    registry: str
    repository: str
    tag: str | None = "latest"
    digest: str | None = None

    @property
    def reference(self) -> str:
        """The tag or digest, as the registry API's ``/manifests/<reference>`` wants it."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        separator = "@" if self.digest else ":"
        return f"{self.registry}/{self.repository}{separator}{self.reference}"


def parse_ref(ref: str) -> OciRef:
    """Parse ``[oci://]REGISTRY/REPOSITORY[:TAG|@sha256:DIGEST]``; the tag defaults to ``latest``.

    The registry is required (there is no implicit Docker Hub): it is the first path component and must be
    ``host[:port]`` with a host name, an IPv4 address or a bracketed IPv6 address, and look like a registry (a dot,
    a port, ``localhost`` or an IPv6 literal). Anything else, notably ``@`` (which HTTP libraries read as user
    information before the real host), is refused.

    Raises:
        ReferenceSyntaxError: the reference does not have that shape.

    >>> str(parse_ref("oci://127.0.0.1:5000/security/tor-rules"))
    '127.0.0.1:5000/security/tor-rules:latest'
    """
    body = ref.removeprefix("oci://")
    if "://" in body:
        raise ReferenceSyntaxError(f"reference {ref!r}: only oci:// references are accepted")
    registry, slash, rest = body.partition("/")
    if "@" in registry:
        raise ReferenceSyntaxError(
            f"reference {ref!r}: the registry part {registry!r} holds '@', and an HTTP client would take what "
            "precedes it for user information and connect to what follows; name the registry as host[:port] "
            "(credentials come from TOR_SETS_REGISTRY_USERNAME/PASSWORD or the Docker configuration)"
        )
    looks_like_host = "." in registry or ":" in registry or registry == "localhost" or registry.startswith("[")
    if not slash or not rest or not looks_like_host:
        raise ReferenceSyntaxError(
            f"reference {ref!r} needs a registry host, e.g. oci://registry.example.com/tor-rules:latest"
        )
    _check_registry(registry, ref)
    digest: str | None = None
    tag: str | None = "latest"
    if "@" in rest:
        rest, _, digest = rest.partition("@")
        tag = None
        if not _DIGEST.fullmatch(digest):
            raise ReferenceSyntaxError(f"reference {ref!r}: the digest must be sha256:<64 hex digits>")
    elif ":" in rest:
        rest, _, tag = rest.rpartition(":")
        if not _TAG.fullmatch(tag):
            raise ReferenceSyntaxError(f"reference {ref!r}: {tag!r} is not a valid tag")
    if not _REPOSITORY.fullmatch(rest):
        raise ReferenceSyntaxError(
            f"reference {ref!r}: {rest!r} is not a valid repository name (lower case, digits, ._-/)"
        )
    return OciRef(registry=registry, repository=rest, tag=tag, digest=digest)


def _check_registry(registry: str, ref: str) -> None:
    match = _REGISTRY.fullmatch(registry)
    problem = None if match else "is not host[:port]"
    if match and match["ipv6"]:
        try:
            ipaddress.IPv6Address(match["ipv6"])
        except ValueError:
            problem = "has an invalid IPv6 address"
    if match and match["port"] and not 0 < int(match["port"]) < 65536:
        problem = "has a port outside 1-65535"
    if problem:
        raise ReferenceSyntaxError(f"reference {ref!r}: the registry {registry!r} {problem}")


def check_tag(tag: str) -> str:
    """Return ``tag`` if a registry accepts it as a tag (letters, digits, ``_``, ``.``, ``-``; at most 128).

    Raises:
        ReferenceSyntaxError: it does not.

    >>> check_tag("1.20260228.100")
    '1.20260228.100'
    """
    if not _TAG.fullmatch(tag):
        raise ReferenceSyntaxError(f"{tag!r} is not a valid tag (letters, digits, '_', '.', '-'; at most 128)")
    return tag
