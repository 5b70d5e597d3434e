"""The OCI registry client: push and pull falcoctl artifacts, with the policy on where bytes and credentials go.

Exports :func:`push_artifact` → :class:`PublishResult`, :func:`pull_artifact` → :class:`PulledArtifact`,
:func:`push_target` (a reference to push to, checked against the loopback policy).

Registry traffic goes through ``oras.provider.Registry`` (blob uploads) with tor-sets' own requests: a timeout on
every request, errors raised at once as :class:`~tor_sets.errors.RegistryError` instead of oras' retries with
back-off, the manifest sent as the exact bytes whose digest is returned, plain HTTP only to loopback (also for
redirects, upload locations and token services), and credentials (:mod:`~tor_sets.deploy.fleet.credentials`) only
to the registry's own host or to a token service that passes the same policy. Pulling checks every digest, as
falcoctl's puller does.
"""

from __future__ import annotations

import functools
import io
import ipaddress
import json
import logging
import re
import tarfile
import tempfile
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import urllib3

from tor_sets.deploy.fleet.artifact import (
    MEDIA_TYPES,
    OCI_INDEX_MEDIA_TYPE,
    OCI_MANIFEST_MEDIA_TYPE,
    Artifact,
    blob_descriptor,
    blob_digest,
    one_line,
)
from tor_sets.deploy.fleet.credentials import RegistryCredentials, registry_credentials
from tor_sets.deploy.fleet.reference import OciRef, check_tag, parse_ref
from tor_sets.errors import ReferenceSyntaxError, RegistryError
from tor_sets.urls import redact_url

__all__ = ["PublishResult", "PulledArtifact", "pull_artifact", "push_artifact", "push_target"]

log = logging.getLogger(__name__)

_TIMEOUT = (10.0, 120.0)  # seconds: connect, read
_LOOPBACK_NAMES = frozenset({"localhost"})


# --- hosts and the plain-HTTP policy -------------------------------------------------------------------------


def _host(registry: str) -> str:
    # "[::1]:5000" -> "::1", "127.0.0.1:5000" -> "127.0.0.1", "::1" -> "::1"
    if registry.startswith("["):
        return registry[1:].partition("]")[0]
    return registry.partition(":")[0] if registry.count(":") == 1 else registry


def _is_loopback(registry: str) -> bool:
    """Whether ``registry`` (``host[:port]``) is ``localhost`` or a loopback address (127.0.0.0/8, ``::1``)."""
    host = _host(registry).lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _same_host(a: str, b: str) -> bool:
    """Whether two host names or address literals (brackets optional) name the same host, textually."""
    first, second = _host(a).lower(), _host(b).lower()
    try:
        return ipaddress.ip_address(first) == ipaddress.ip_address(second)
    except ValueError:
        return first == second


def _use_plain_http(registry: str, plain_http: bool | None) -> bool:
    """Whether to talk plain HTTP to ``registry``: as asked (``None``: exactly when it is on loopback).

    Raises:
        RegistryError: plain HTTP asked for a registry that is not on loopback.
    """
    loopback = _is_loopback(registry)
    if plain_http and not loopback:
        raise RegistryError(
            f"plain HTTP is allowed only for a loopback registry (127.0.0.0/8, ::1, localhost), not {registry}",
            registry=registry,
        )
    return loopback if plain_http is None else plain_http


# --- the registry client -------------------------------------------------------------------------------------

_MAX_REDIRECTS = 3
# 'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull"'
_CHALLENGE_PARAM = re.compile(r'(?P<key>[A-Za-z][\w-]*)\s*=\s*(?:"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<bare>[^\s,]*))')


class _Session(requests.Session):
    """A session that puts a timeout on every request."""

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", _TIMEOUT)
        if kwargs["timeout"] is None:
            kwargs["timeout"] = _TIMEOUT
        return super().request(method, url, *args, **kwargs)


def _registry_complaint(response: requests.Response) -> str:
    """``CODE: message`` from the registry's error document, or the HTTP status."""
    try:
        errors = response.json().get("errors") or []
        first = errors[0]
        return one_line(f"{first.get('code', 'ERROR')}: {first.get('message', '')}".rstrip(": "))
    except (ValueError, AttributeError, IndexError, TypeError):
        return f"HTTP {response.status_code} {response.reason or ''}".strip()


def _connection_reason(exc: BaseException) -> str:
    # requests nests the socket error several layers deep: "... [Errno 111] Connection refused'))"
    # ... or an SSL error: "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)"
    match = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(exc)) or re.search(r"\[SSL: \w+\] ([^'\"(]+)", str(exc))
    return match[1].strip() if match else type(exc).__name__


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    """The scheme and parameters of a ``WWW-Authenticate`` challenge.

    >>> _challenge('Bearer realm="https://auth.example/token",service="reg",scope="repository:a:pull"')[1]["scope"]
    'repository:a:pull'
    """
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m["key"].lower(): m["quoted"] if m["quoted"] is not None else m["bare"] for m in _CHALLENGE_PARAM.finditer(rest)
    }
    return scheme.lower(), {k: v.replace('\\"', '"') for k, v in params.items()}


def _authority(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port of ``url`` as the HTTP library will connect; the port ``None`` when it is the
    scheme's default."""
    parsed = urllib3.util.parse_url(url)
    default = {"http": 80, "https": 443}.get(parsed.scheme or "")
    host = _host(parsed.host or "").lower()
    return parsed.scheme or "", host, None if parsed.port in (None, default) else parsed.port


@functools.cache
def _registry_class() -> type[Any]:
    try:
        import oras.provider
    except ImportError as exc:
        raise RegistryError("publishing needs the 'oras' package: pip install 'tor-sets[fleet]'") from exc

    class _Registry(oras.provider.Registry):  # type: ignore[misc]
        """oras' registry client (blob uploads) with tor-sets' own requests: a timeout on each, one attempt,
        errors as :class:`RegistryError`, plain HTTP only to loopback, credentials only to the registry's own
        host and to a token service that passes the same policy."""

        session: requests.Session

        def __init__(self, registry: str, *, plain_http: bool, credentials: RegistryCredentials | None) -> None:
            super().__init__(hostname=registry, insecure=plain_http)
            session = _Session()
            session.cookies = self.session.cookies  # keeps oras' "accept no cookies" policy
            session.trust_env = not _is_loopback(registry)  # no proxy for a registry on this machine
            self.session = session
            self._credentials = credentials
            self._challenge = ""
            self._token = ""
            self._own = _authority(f"{self.prefix}://{registry}/")

        def _authorization(self) -> dict[str, str]:
            if self._challenge == "basic" and self._credentials is not None:
                return {"Authorization": f"Basic {self._credentials.basic}"}
            return {"Authorization": f"Bearer {self._token}"} if self._challenge == "bearer" and self._token else {}

        def _check_url(self, url: str) -> None:
            """Refuse a URL the registry handed us (a redirect, an upload location) that would leave loopback in
            clear or hide its host behind user information."""
            try:
                parsed = urllib3.util.parse_url(url)
            except urllib3.exceptions.LocationParseError as exc:
                raise RegistryError(f"registry {self.hostname} sent an unusable URL", registry=self.hostname) from exc
            if parsed.scheme not in ("http", "https") or not parsed.host or parsed.auth:
                raise RegistryError(
                    f"registry {self.hostname} sent tor-sets to {redact_url(url)!r}: refused (only http(s) URLs "
                    "without user information)",
                    registry=self.hostname,
                )
            if parsed.scheme == "http" and not _is_loopback(parsed.host):
                raise RegistryError(
                    f"registry {self.hostname} sent tor-sets to {redact_url(url)} over plain HTTP: refused (plain "
                    "HTTP only on loopback)",
                    registry=self.hostname,
                )

        def _send(
            self, method: str, url: str, *, headers: Mapping[str, str], subject: str = "", **kwargs: Any
        ) -> requests.Response:
            """One request; redirects of reads are followed here (at most three), each hop checked, and the
            credentials dropped when a hop changes host. ``subject`` names the server in messages (default: the
            registry)."""
            via = "" if subject else f" over {self.prefix}"
            subject = subject or f"registry {self.hostname}"
            sent = dict(headers)
            for _ in range(_MAX_REDIRECTS + 1):
                self._check_url(url)
                response = self._request(method, url, subject, via, headers=sent, allow_redirects=False, **kwargs)
                if not (response.is_redirect and method in ("GET", "HEAD")):
                    return response
                response.close()
                target = urllib.parse.urljoin(url, response.headers["Location"])
                if _authority(target) != _authority(url):
                    sent = {k: v for k, v in sent.items() if k.lower() != "authorization"}
                url = target
            raise RegistryError(f"{subject} redirected more than {_MAX_REDIRECTS} times", registry=self.hostname)

        def _request(self, method: str, url: str, subject: str, via: str, **kwargs: Any) -> requests.Response:
            try:
                response: requests.Response = self.session.request(method, url, **kwargs)
            except requests.exceptions.SSLError as exc:
                hint = "; a plain-HTTP registry on loopback needs plain_http" if _is_loopback(self.hostname) else ""
                raise RegistryError(
                    f"TLS with {subject} failed ({_connection_reason(exc)}){hint}", registry=self.hostname
                ) from exc
            except requests.Timeout as exc:
                raise RegistryError(
                    f"{subject} did not answer within {_TIMEOUT[1]:.0f} s", registry=self.hostname
                ) from exc
            except requests.ConnectionError as exc:
                raise RegistryError(
                    f"cannot reach {subject}{via}: {_connection_reason(exc)}", registry=self.hostname
                ) from exc
            return response

        def do_request(
            self,
            url: str,
            method: str = "GET",
            data: Any = None,
            headers: dict[str, str] | None = None,
            json: Any = None,
            stream: bool = False,
        ) -> requests.Response:
            own = _authority(url) == self._own
            options = {"data": data, "json": json, "stream": stream}
            sent = {**(headers or {}), **(self._authorization() if own else {})}
            response = self._send(method, url, headers=sent, **options)
            if response.status_code == 401 and own:
                self._authenticate(response)
                sent = {**(headers or {}), **self._authorization()}
                response = self._send(method, url, headers=sent, **options)
                if response.status_code == 401:
                    raise RegistryError(
                        f"registry {self.hostname} rejected the credentials ({_registry_complaint(response)})",
                        registry=self.hostname,
                    )
            if response.status_code == 403:
                raise RegistryError(
                    f"registry {self.hostname} denied access ({_registry_complaint(response)})", registry=self.hostname
                )
            return response

        def _authenticate(self, response: requests.Response) -> None:
            scheme, params = _challenge(response.headers.get("Www-Authenticate", ""))
            if scheme == "basic":
                if self._credentials is None:
                    raise RegistryError(
                        f"registry {self.hostname} needs credentials: set TOR_SETS_REGISTRY_USERNAME and "
                        "TOR_SETS_REGISTRY_PASSWORD or log in with docker login",
                        registry=self.hostname,
                    )
                self._challenge = "basic"
                return
            if scheme == "bearer" and (token := self._bearer_token(params)):
                self._token = token
                self._challenge = "bearer"
                return
            raise RegistryError(
                f"registry {self.hostname} needs credentials that were not accepted or not given",
                registry=self.hostname,
            )

        def _check_realm(self, realm: str) -> None:
            """The token service gets the credentials: over plain HTTP only on the registry's own loopback host."""
            try:
                parsed = urllib3.util.parse_url(realm)
            except urllib3.exceptions.LocationParseError:
                parsed = urllib3.util.Url()
            if parsed.scheme not in ("http", "https") or not parsed.host or parsed.auth:
                raise RegistryError(
                    f"registry {self.hostname} sent a token service that is not an http(s) URL without user "
                    f"information: {redact_url(realm)!r}",
                    registry=self.hostname,
                )
            if parsed.scheme == "http" and not (_is_loopback(parsed.host) and _same_host(parsed.host, self.hostname)):
                raise RegistryError(
                    f"registry {self.hostname} sent its token service to {realm} over plain HTTP: refused, "
                    "credentials go over plain HTTP only to the registry's own loopback host",
                    registry=self.hostname,
                )

        def _bearer_token(self, params: Mapping[str, str]) -> str | None:
            """A token from the challenge's realm: anonymous without credentials, else for Basic credentials."""
            realm = params.get("realm", "")
            self._check_realm(realm)
            query = {key: params[key] for key in ("service", "scope") if params.get(key)}
            headers = {"Accept": "application/json"}
            if self._credentials is not None:
                headers["Authorization"] = f"Basic {self._credentials.basic}"
            subject = f"the token service of registry {self.hostname} at {realm}"
            response = self._send("GET", realm, headers=headers, params=query, subject=subject)
            if response.status_code != 200:
                log.debug("%s answered HTTP %d", subject, response.status_code)
                return None
            try:
                answer = response.json()
                token = answer.get("token") or answer.get("access_token")
            except (ValueError, AttributeError) as exc:
                raise RegistryError(f"{subject} did not answer a JSON token", registry=self.hostname) from exc
            return token if isinstance(token, str) and token else None

        def url(self, target: OciRef, path: str) -> str:
            return f"{self.prefix}://{target.registry}/v2/{target.repository}/{path}"

        def push_blob(self, target: OciRef, blob: bytes, media_type: str, folder: Path) -> None:
            descriptor = blob_descriptor(media_type, blob)
            path = folder / descriptor["digest"].replace(":", "-")
            path.write_bytes(blob)
            container = self.get_container("placeholder")  # set field by field: no guessing of the registry
            container.registry = target.registry
            container.namespace, _, container.repository = target.repository.rpartition("/")
            container.tag = target.reference
            try:
                response: requests.Response = self.upload_blob(str(path), container, descriptor)
            except ValueError as exc:  # oras: no upload location in the registry's answer
                raise RegistryError(
                    f"registry {self.hostname} did not start a blob upload for {target.repository}",
                    registry=self.hostname,
                ) from exc
            if response.status_code not in (200, 201, 202):
                raise RegistryError(
                    f"registry {self.hostname} refused a {media_type} blob: {_registry_complaint(response)}",
                    registry=self.hostname,
                )

        def push_manifest(self, target: OciRef, reference: str, body: bytes, media_type: str) -> None:
            digest = blob_digest(body)
            response = self.do_request(
                self.url(target, f"manifests/{reference}"), "PUT", data=body, headers={"Content-Type": media_type}
            )
            if response.status_code not in (200, 201):
                raise RegistryError(
                    f"registry {self.hostname} refused the manifest for {reference}: {_registry_complaint(response)}",
                    registry=self.hostname,
                )
            answered = response.headers.get("Docker-Content-Digest")
            if answered and answered != digest:
                raise RegistryError(
                    f"registry {self.hostname} stored the manifest as {answered}, expected {digest}",
                    registry=self.hostname,
                )

        def fetch(self, url: str, what: str, accept: str | None = None) -> requests.Response:
            response = self.do_request(url, "GET", headers={"Accept": accept} if accept else {})
            if response.status_code != 200:
                raise RegistryError(
                    f"registry {self.hostname} has no {what}: {_registry_complaint(response)}", registry=self.hostname
                )
            return response

    return _Registry


def _client(registry: str, plain_http: bool | None) -> Any:
    insecure = _use_plain_http(registry, plain_http)
    return _registry_class()(registry, plain_http=insecure, credentials=registry_credentials(registry))


# --- push and pull -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What was pushed: the root digest (manifest, or the plugin's index), the primary reference, every tag set
    on it, and the artifact's type, name and version."""

    digest: str
    ref: str
    tags: tuple[str, ...]
    kind: str = "rulesfile"
    name: str = ""
    version: str = ""


@dataclass(frozen=True, slots=True)
class PulledArtifact:
    """A falcoctl artifact read back from a registry, checked against its digests.

    ``digest`` is the root's (what the tag points at); for a plugin, ``index`` is the image index and
    ``manifest`` the chosen platform's manifest.
    """

    kind: str
    content: bytes
    filename: str
    manifest: Mapping[str, Any]
    config: Mapping[str, Any]
    digest: str
    index: Mapping[str, Any] | None = None


def push_target(ref: str, plain_http: bool | None) -> OciRef:
    """The reference ``ref`` to push to, checked before anything is read: a tag, and plain HTTP only to loopback.

    Raises:
        ReferenceSyntaxError: a bad reference, or a digest instead of a tag.
        RegistryError: plain HTTP to a host that is not on loopback.
    """
    target = parse_ref(ref)
    if target.digest is not None:
        raise ReferenceSyntaxError(f"reference {ref!r}: publish to a tag, not a digest")
    _use_plain_http(target.registry, plain_http)  # refuse before reading anything
    return target


def push_artifact(
    ref: str,
    artifact: Artifact,
    *,
    extra_tags: Sequence[str] = (),
    floating: bool = True,
    plain_http: bool | None = None,
) -> PublishResult:
    """Push ``artifact`` to ``ref`` and set its tags (see :meth:`Artifact.tags`).

    Blobs first, then each platform's manifest by digest (for a plugin), then the root under each tag: a tag
    only ever points at a complete artifact, and a failure leaves the tags where they were.

    Args:
        ref: ``[oci://]REGISTRY/REPOSITORY[:TAG]`` (tag ``latest`` when absent).
        artifact: what to push (:func:`rulesfile_artifact`, :func:`asset_artifact`, :func:`plugin_artifact`).
        extra_tags: more tags, e.g. the data's date for rollbacks.
        floating: also set ``MAJOR`` and ``MAJOR.MINOR`` of the version.
        plain_http: ``True`` for plain HTTP (loopback registries only), ``False`` for HTTPS, ``None`` for plain
            HTTP exactly when the registry is on loopback.

    Raises:
        ReferenceSyntaxError: a bad reference or tag.
        RegistryError: plain HTTP to a remote host, or the registry failed or refused.
    """
    target = push_target(ref, plain_http)
    tags = artifact.tags(target.reference, extra_tags, floating=floating)
    for tag in tags:
        check_tag(tag)
    root_type, root = artifact.root()
    client = _client(target.registry, plain_http)
    with tempfile.TemporaryDirectory(prefix="tor-sets-publish-") as folder:
        for image in artifact.images:
            config_type, layer_type = MEDIA_TYPES[image.kind]
            client.push_blob(target, image.layer, layer_type, Path(folder))
            client.push_blob(target, image.config, config_type, Path(folder))
    if root_type == OCI_INDEX_MEDIA_TYPE:
        for image in artifact.images:
            manifest = image.manifest()
            client.push_manifest(target, blob_digest(manifest), manifest, OCI_MANIFEST_MEDIA_TYPE)
    for tag in tags:
        client.push_manifest(target, tag, root, root_type)
    digest = blob_digest(root)
    log.debug("pushed %s %s %s as %s with tags %s", artifact.kind, artifact.name, artifact.version, digest, tags)
    return PublishResult(digest, str(target), tags, artifact.kind, artifact.name, artifact.version)


_ACCEPT = f"{OCI_MANIFEST_MEDIA_TYPE}, {OCI_INDEX_MEDIA_TYPE}"
_LAYER_KINDS = {layer: kind for kind, (_, layer) in MEDIA_TYPES.items()}


def pull_artifact(
    ref: str, *, plain_http: bool | None = None, platform: tuple[str, str] = ("linux", "amd64")
) -> PulledArtifact:
    """Fetch a falcoctl artifact and the file inside it, as falcoctl's puller does, checking every digest.

    An image index (a plugin) is resolved to the manifest of ``platform``, like ``pkg/oci/puller/puller.go``;
    the artifact's type comes from its first layer's media type, the file name from the layer's title.

    Args:
        ref: ``[oci://]REGISTRY/REPOSITORY[:TAG|@sha256:DIGEST]``.
        plain_http: as for :func:`push`.
        platform: ``(os, architecture)`` for a plugin, Go's names.

    Returns:
        The file's bytes and name, the manifest, the config, the root digest and, for a plugin, the index.

    Raises:
        RegistryError: the registry failed, or the artifact is not a falcoctl artifact.
    """
    target = parse_ref(ref)
    client = _client(target.registry, plain_http)
    response = client.fetch(client.url(target, f"manifests/{target.reference}"), f"manifest {target}", _ACCEPT)
    body = response.content
    digest = blob_digest(body)
    if target.digest is not None and digest != target.digest:
        raise RegistryError(f"manifest of {target} has digest {digest}", registry=target.registry)
    document = _json_object(body, f"the manifest of {target}", target)
    index: Mapping[str, Any] | None = None
    if document.get("mediaType") == OCI_INDEX_MEDIA_TYPE:
        index = document
        wanted = [
            m
            for m in index.get("manifests") or []
            if isinstance(m, dict)
            and (m.get("platform") or {}).get("os") == platform[0]
            and (m.get("platform") or {}).get("architecture") == platform[1]
        ]
        if not wanted:
            raise RegistryError(f"{target} has no manifest for {'/'.join(platform)}", registry=target.registry)
        inner = str(wanted[0].get("digest", ""))
        body = client.fetch(
            client.url(target, f"manifests/{inner}"), f"manifest {inner}", OCI_MANIFEST_MEDIA_TYPE
        ).content
        if blob_digest(body) != inner:
            raise RegistryError(f"manifest {inner} of {target} does not match its digest", registry=target.registry)
        document = _json_object(body, f"manifest {inner} of {target}", target)
    try:
        config_descriptor = document["config"]
        (layer,) = document["layers"]
        kind = _LAYER_KINDS[layer["mediaType"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise RegistryError(f"{target} is not a falcoctl artifact", registry=target.registry) from exc
    if config_descriptor.get("mediaType") != MEDIA_TYPES[kind][0]:
        raise RegistryError(f"{target} is not a falcoctl {kind} artifact", registry=target.registry)
    config = _json_object(_fetch_blob(client, target, config_descriptor), f"the config of {target}", target)
    filename, content = _single_file(_fetch_blob(client, target, layer), str(target))
    return PulledArtifact(kind, content, filename, document, config, digest, index)


def _json_object(body: bytes, what: str, target: OciRef) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise RegistryError(f"{what} is not JSON", registry=target.registry) from exc
    if not isinstance(document, dict):
        raise RegistryError(f"{what} is not a JSON object", registry=target.registry)
    return document


def _fetch_blob(client: Any, target: OciRef, descriptor: Mapping[str, Any]) -> bytes:
    wanted = str(descriptor.get("digest", ""))
    blob: bytes = client.fetch(client.url(target, f"blobs/{wanted}"), f"blob {wanted}").content
    if blob_digest(blob) != wanted:
        raise RegistryError(f"blob {wanted} of {target} does not match its digest", registry=target.registry)
    return blob


def _single_file(layer: bytes, where: str) -> tuple[str, bytes]:
    try:
        with tarfile.open(fileobj=io.BytesIO(layer), mode="r:gz") as tar:
            members = tar.getmembers()
            if len(members) != 1 or not members[0].isfile():
                raise RegistryError(f"the layer of {where} should hold exactly one file")
            member = members[0]
            if member.name.startswith("/") or ".." in member.name.split("/"):
                raise RegistryError(f"the layer of {where} names an unsafe path {member.name!r}")
            stream = tar.extractfile(member)
            if stream is None:
                raise RegistryError(f"the layer of {where} cannot be read")
            return member.name, stream.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise RegistryError(f"the layer of {where} is not a readable tar.gz") from exc
