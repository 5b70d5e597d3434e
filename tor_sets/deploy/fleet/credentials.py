"""Where the credentials for a registry come from: the environment, else the Docker client's configuration.

Exports :func:`registry_credentials` → :class:`RegistryCredentials`. Credentials never appear in a message, a log
line or a ``repr``; the registry client (:mod:`tor_sets.deploy.fleet.registry`) decides where they may be sent.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tor_sets.errors import RegistryError

__all__ = ["RegistryCredentials", "registry_credentials"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RegistryCredentials:
    """A user name and password for a registry, and where they were found; the password stays out of ``repr``."""

    username: str
    password: str = field(repr=False)
    origin: str = ""

    @property
    def basic(self) -> str:
        return base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


def registry_credentials(registry: str, environ: Mapping[str, str] | None = None) -> RegistryCredentials | None:
    """The credentials for ``registry``: environment first, then the Docker client's configuration.

    Looked up in order: ``TOR_SETS_REGISTRY_USERNAME`` and ``TOR_SETS_REGISTRY_PASSWORD``; the ``auths`` entry for
    the registry in ``$DOCKER_CONFIG/config.json`` (or ``~/.docker/config.json``), inline ``auth`` or
    ``username``/``password``; its ``credHelpers`` entry or ``credsStore`` (``docker-credential-NAME get``).
    Credentials never appear in a message, a log line or a ``repr``.

    Args:
        registry: ``host[:port]`` as in the reference.
        environ: the environment (``os.environ`` when ``None``).

    Returns:
        The credentials, or ``None`` for anonymous access.

    Raises:
        RegistryError: only one of the two variables is set, or the Docker configuration is not JSON.
    """
    env = os.environ if environ is None else environ
    username = env.get("TOR_SETS_REGISTRY_USERNAME", "")
    password = env.get("TOR_SETS_REGISTRY_PASSWORD", "")
    if username and password:
        return RegistryCredentials(username, password, "TOR_SETS_REGISTRY_USERNAME/PASSWORD")
    if username or password:
        raise RegistryError("set both TOR_SETS_REGISTRY_USERNAME and TOR_SETS_REGISTRY_PASSWORD, or neither")
    folder = env.get("DOCKER_CONFIG")
    path = Path(folder) / "config.json" if folder else Path(env.get("HOME", str(Path.home()))) / ".docker/config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RegistryError(f"cannot read the Docker configuration {path}: not readable JSON") from exc
    if not isinstance(config, dict):
        raise RegistryError(f"cannot read the Docker configuration {path}: not a JSON object")
    auths = config.get("auths") or {}
    for key, entry in auths.items() if isinstance(auths, dict) else ():
        if _auth_key_host(key) == registry and isinstance(entry, dict):
            found = _inline_credentials(entry, str(path))
            if found is not None:
                return found
    helpers = config.get("credHelpers") or {}
    helper = helpers.get(registry) if isinstance(helpers, dict) else None
    helper = helper or config.get("credsStore")
    if isinstance(helper, str) and helper:
        return _helper_credentials(helper, registry)
    return None


def _auth_key_host(key: str) -> str:
    # "registry.example.com", "https://registry.example.com", "https://index.docker.io/v1/"
    return key.removeprefix("https://").removeprefix("http://").partition("/")[0]


def _inline_credentials(entry: Mapping[str, Any], origin: str) -> RegistryCredentials | None:
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            username, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise RegistryError(f"the 'auth' entry in {origin} is not base64 of user:password") from exc
        if username and password:
            return RegistryCredentials(username, password, origin)
    plain_user, plain_password = entry.get("username"), entry.get("password")
    if isinstance(plain_user, str) and isinstance(plain_password, str) and plain_user and plain_password:
        return RegistryCredentials(plain_user, plain_password, origin)
    return None


def _helper_credentials(helper: str, registry: str) -> RegistryCredentials | None:
    binary = f"docker-credential-{helper}"
    try:
        done = subprocess.run([binary, "get"], input=registry.encode(), capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        log.debug("credential helper %s is unavailable; trying without credentials", binary)
        return None
    if done.returncode != 0:
        log.debug("credential helper %s has nothing for %s", binary, registry)
        return None
    try:
        payload = json.loads(done.stdout)
        return RegistryCredentials(str(payload["Username"]), str(payload["Secret"]), binary)
    except (ValueError, KeyError, TypeError):
        log.debug("credential helper %s answered something that is not its JSON", binary)
        return None
