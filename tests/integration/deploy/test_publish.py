"""Publishing to a real OCI registry: Debian's ``docker-registry`` (CNCF distribution 2.8) on loopback.

Each registry is the plain binary started on a free 127.0.0.1 port with a config file and filesystem storage in a
temporary folder (never the package's systemd service), and stopped after the module. What is pushed is read back
twice: with :func:`tor_sets.deploy.fleet.pull_artifact`, and with plain HTTP GETs of the registry API, as falcoctl
would.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import random
import re
import shutil
import socket
import subprocess
import tarfile
import threading
import time
import urllib.parse
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.support.onionoo_server import free_port
from tor_sets.deploy import fleet
from tor_sets.deploy.fleet.artifact import MEDIA_TYPES
from tor_sets.deploy.fleet.index import INDEX_DESCRIPTIONS
from tor_sets.errors import RegistryError
from tor_sets.falco.header import read_header

pytestmark = pytest.mark.integration

BINARY = "docker-registry"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
PASSWORD = "correct-horse-battery-staple"


# --- the registry ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Registry:
    host: str  # 127.0.0.1:PORT
    log: Path

    def api(self, path: str) -> str:
        return f"http://{self.host}/v2/{path}"


def _start(folder: Path, htpasswd: Path | None = None) -> tuple[Registry, subprocess.Popen[bytes]]:
    binary = shutil.which(BINARY) or (f"/usr/bin/{BINARY}" if Path(f"/usr/bin/{BINARY}").exists() else None)
    if binary is None:
        pytest.skip(f"{BINARY} is not installed (Debian package docker-registry: apt-get install -y docker-registry)")
    for _ in range(3):
        port = free_port()
        config: dict[str, object] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(folder / "storage")}, "delete": {"enabled": True}},
            "http": {"addr": f"127.0.0.1:{port}", "secret": "tor-sets-test"},
        }
        if htpasswd is not None:
            config["auth"] = {"htpasswd": {"realm": "tor-sets-test", "path": str(htpasswd)}}
        config_path = folder / "config.yml"
        config_path.write_text(yaml.safe_dump(config))
        log = folder / "registry.log"
        with log.open("wb") as sink:
            process = subprocess.Popen([binary, "serve", str(config_path)], stdout=sink, stderr=subprocess.STDOUT)
        registry = Registry(host=f"127.0.0.1:{port}", log=log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if requests.get(registry.api(""), timeout=1).status_code in (200, 401):
                    return registry, process
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        _stop(process)  # the port was taken meanwhile, or the binary failed: try another port
    pytest.fail(f"{BINARY} did not answer on loopback; its log: {log.read_text(errors='replace')[-500:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    started, process = _start(tmp_path_factory.mktemp("registry"))
    try:
        yield started
    finally:
        _stop(process)


def _bcrypt(password: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the crypt module is deprecated, and gone in 3.13
        try:
            import crypt
        except ImportError:
            pytest.skip("no crypt module in this Python to write an htpasswd file")
    if crypt.METHOD_BLOWFISH not in crypt.methods:
        pytest.skip("this libc's crypt() has no bcrypt, which the registry's htpasswd needs")
    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))  # cost 4: fast tests


@pytest.fixture(scope="module")
def private_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    folder = tmp_path_factory.mktemp("private-registry")
    htpasswd = folder / "htpasswd"
    htpasswd.write_text(f"alice:{_bcrypt(PASSWORD)}\n")
    started, process = _start(folder, htpasswd)
    try:
        yield started
    finally:
        _stop(process)


@pytest.fixture(autouse=True)
def no_ambient_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Neither the machine's Docker login nor the caller's variables may leak into a test."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    monkeypatch.delenv("TOR_SETS_REGISTRY_USERNAME", raising=False)
    monkeypatch.delenv("TOR_SETS_REGISTRY_PASSWORD", raising=False)


# --- rules files ---------------------------------------------------------------------------------------------


def rules_text(published: str = "2026-02-28 01:00:00", seed: int = 1) -> str:
    """A generated-looking rules file, about 2,500 lines."""
    rng = random.Random(seed)
    v4 = sorted(
        {
            f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
            for _ in range(1800)
        }
    )
    v6 = sorted({f"2a0{rng.randint(0, 9)}:{rng.randint(0, 65535):x}::{rng.randint(1, 65535):x}" for _ in range(700)})
    lines = [
        "# Tor relay rules for Falco, generated by tor-sets; do not edit (regenerate with `tor-sets build`).",
        "# tor-sets 0.1.0",
        "# source: https://onionoo.torproject.org/details?type=relay&running=true",
        f"# relays_published: {published} UTC",
        "",
        "- required_engine_version: 0.31.0",
        "",
        "- list: tor_sets_exit_ipv4",
        "  items:",
        *(f"    - '\"{a}\"'" for a in v4),
        "",
        "- list: tor_sets_exit_ipv6",
        "  items:",
        *(f'    - "{a}"' for a in v6),
        "",
        "- rule: Outbound connection to a Tor exit relay",
        '  desc: "A process connected to a Tor exit relay: see T1090.003"',
        "  condition: evt.type = connect and evt.rawres >= 0 and fd.sip in (tor_sets_exit_ipv4, tor_sets_exit_ipv6)",
        "  output: Tor exit | connection=%fd.name process=%proc.name command=%proc.cmdline",
        "  priority: WARNING",
        "  tags: [network, mitre_command_and_control, T1090.003, TA0011]",
        "",
    ]
    return "\n".join(lines)


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "tor_rules.yaml"
    path.write_text(rules_text())
    return path


def _annotations(path: Path) -> dict[str, str]:
    header = read_header(path.read_text())
    return fleet.default_annotations(header, filename=path.name, tool_version="0.1.0")


def _publish(registry: Registry, path: Path, repository: str, **options: object) -> fleet.PublishResult:
    header = read_header(path.read_text())
    assert header.relays_published is not None
    return fleet.publish_rules(
        f"oci://{registry.host}/{repository}:latest",
        path,
        version=fleet.data_version(header.relays_published),
        annotations=_annotations(path),
        extra_tags=[fleet.date_tag(header.relays_published)],
        **options,  # type: ignore[arg-type]
    )


TAGS_0100 = ("1.20260228.100", "2026-02-28T0100", "latest", "1", "1.20260228")


# --- publish and read back -----------------------------------------------------------------------------------


def test_publish_then_pull(registry: Registry, rules_file: Path) -> None:
    started = time.monotonic()
    result = _publish(registry, rules_file, "security/tor-rules")
    elapsed = time.monotonic() - started
    assert result.ref == f"{registry.host}/security/tor-rules:latest"
    assert result.tags == TAGS_0100
    assert (result.kind, result.name, result.version) == ("rulesfile", "tor-rules", "1.20260228.100")
    assert result.digest.startswith("sha256:") and len(result.digest) == 71
    assert elapsed < 10, f"push took {elapsed:.1f} s"

    for reference in (*TAGS_0100, result.digest):
        separator = "@" if reference.startswith("sha256:") else ":"
        pulled = fleet.pull_artifact(f"oci://{registry.host}/security/tor-rules{separator}{reference}")
        assert pulled.kind == "rulesfile" and pulled.index is None
        assert pulled.content == rules_file.read_bytes()
        assert pulled.filename == "tor_rules.yaml"
        assert pulled.digest == result.digest
        assert pulled.config == {
            "name": "tor-rules",
            "version": "1.20260228.100",
            "requirements": [{"name": "engine_version_semver", "version": "0.31.0"}],
        }
        assert pulled.manifest["annotations"]["org.opencontainers.image.created"] == "2026-02-28T01:00:00Z"


def test_registry_api_serves_falcoctl_layout(registry: Registry, rules_file: Path) -> None:
    result = _publish(registry, rules_file, "api/tor-rules")
    bodies = {}
    for reference in ("latest", "2026-02-28T0100"):
        response = requests.get(registry.api(f"api/tor-rules/manifests/{reference}"), headers={"Accept": OCI_MANIFEST})
        assert response.status_code == 200
        assert response.headers["Content-Type"] == OCI_MANIFEST
        assert response.headers["Docker-Content-Digest"] == result.digest
        assert "sha256:" + hashlib.sha256(response.content).hexdigest() == result.digest
        bodies[reference] = response.content
    assert bodies["latest"] == bodies["2026-02-28T0100"]

    manifest = json.loads(bodies["latest"])
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == OCI_MANIFEST
    assert manifest["config"]["mediaType"] == "application/vnd.cncf.falco.rulesfile.config.v1+json"
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.cncf.falco.rulesfile.layer.v1+tar.gz"
    assert layer["annotations"] == {"org.opencontainers.image.title": "tor_rules.tar.gz"}
    assert manifest["annotations"] == {
        "org.opencontainers.image.created": "2026-02-28T01:00:00Z",
        "org.opencontainers.image.source": "https://onionoo.torproject.org/details?type=relay&running=true",
        "org.opencontainers.image.title": "tor_rules.yaml",
        "org.opencontainers.image.version": "1.20260228.100",
        "tor-sets.data_source": "https://onionoo.torproject.org/details?type=relay&running=true",
        "tor-sets.relays_published": "2026-02-28T01:00:00Z",
        "tor-sets.version": "0.1.0",
    }

    config = requests.get(registry.api(f"api/tor-rules/blobs/{manifest['config']['digest']}"))
    assert config.status_code == 200 and len(config.content) == manifest["config"]["size"]
    assert json.loads(config.content) == {
        "name": "tor-rules",
        "version": "1.20260228.100",
        "requirements": [{"name": "engine_version_semver", "version": "0.31.0"}],
    }

    blob = requests.get(registry.api(f"api/tor-rules/blobs/{layer['digest']}"))
    assert blob.status_code == 200 and len(blob.content) == layer["size"]
    assert "sha256:" + hashlib.sha256(blob.content).hexdigest() == layer["digest"]
    assert blob.content[4:8] == b"\0\0\0\0"  # gzip mtime 0
    with tarfile.open(fileobj=io.BytesIO(blob.content), mode="r:gz") as tar:
        (member,) = tar.getmembers()
        assert member.name == "tor_rules.yaml" and member.isfile() and member.mode == 0o644
        extracted = tar.extractfile(member)
        assert extracted is not None and extracted.read() == rules_file.read_bytes()
    assert gzip.decompress(blob.content).count(b"tor_rules.yaml") == 1

    tags = requests.get(registry.api("api/tor-rules/tags/list")).json()["tags"]
    assert sorted(tags) == sorted(TAGS_0100)


def test_same_rules_same_digest_and_old_dates_stay_reachable(registry: Registry, tmp_path: Path) -> None:
    first = tmp_path / "a" / "tor_rules.yaml"
    first.parent.mkdir()
    first.write_text(rules_text())
    digest = _publish(registry, first, "repeat/tor-rules").digest
    assert _publish(registry, first, "repeat/tor-rules").digest == digest

    copy = tmp_path / "b" / "tor_rules.yaml"  # same bytes, another path and mtime
    copy.parent.mkdir()
    time.sleep(0.01)
    copy.write_bytes(first.read_bytes())
    assert _publish(registry, copy, "repeat/tor-rules").digest == digest

    newer = tmp_path / "c" / "tor_rules.yaml"
    newer.parent.mkdir()
    newer.write_text(rules_text(published="2026-02-28 02:00:00", seed=2))
    header = read_header(newer.read_text())
    assert header.relays_published is not None
    moved = fleet.publish_rules(
        f"{registry.host}/repeat/tor-rules",
        newer,
        version=fleet.data_version(header.relays_published),
        engine_version="26",
        annotations=_annotations(newer),
        extra_tags=[fleet.date_tag(header.relays_published)],
    )
    assert moved.digest != digest
    assert moved.tags == ("1.20260228.200", "2026-02-28T0200", "latest", "1", "1.20260228")
    for moving in ("latest", "1", "1.20260228"):  # what followers watch moved to the new data ...
        assert fleet.pull_artifact(f"{registry.host}/repeat/tor-rules:{moving}").content == newer.read_bytes()
    for fixed in ("2026-02-28T0100", "1.20260228.100"):  # ... and the old data stays reachable for a rollback
        rollback = fleet.pull_artifact(f"{registry.host}/repeat/tor-rules:{fixed}")
        assert rollback.content == first.read_bytes() and rollback.digest == digest
    latest = fleet.pull_artifact(f"{registry.host}/repeat/tor-rules:2026-02-28T0200")
    assert latest.config["requirements"] == [{"name": "engine_version_semver", "version": "0.26.0"}]
    assert latest.config["version"] == "1.20260228.200"


def test_pull_refuses_what_is_not_a_rulesfile(registry: Registry) -> None:
    config = b"{}"
    layer = b"not a tarball"
    for blob in (config, layer):
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        upload = requests.post(registry.api("other/thing/blobs/uploads/"))
        location = upload.headers["Location"]
        separator = "&" if "?" in location else "?"
        url = location if location.startswith("http") else f"http://{registry.host}{location}"
        assert requests.put(f"{url}{separator}digest={digest}", data=blob).status_code == 201
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _sha(config), "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": _sha(layer), "size": 13}],
    }
    response = requests.put(
        registry.api("other/thing/manifests/v1"), data=json.dumps(manifest), headers={"Content-Type": OCI_MANIFEST}
    )
    assert response.status_code == 201
    with pytest.raises(RegistryError, match="is not a falcoctl artifact"):
        fleet.pull_artifact(f"{registry.host}/other/thing:v1")
    with pytest.raises(RegistryError, match="has no manifest") as caught:
        fleet.pull_artifact(f"{registry.host}/other/thing:missing")
    assert "MANIFEST_UNKNOWN" in str(caught.value)


def _sha(blob: bytes) -> str:
    return "sha256:" + hashlib.sha256(blob).hexdigest()


# --- failures that must read as one clear line ---------------------------------------------------------------


def test_wrong_port_is_one_clear_line(rules_file: Path) -> None:
    port = free_port()  # nobody listens there
    started = time.monotonic()
    with pytest.raises(RegistryError) as caught:
        fleet.publish_rules(f"oci://127.0.0.1:{port}/tor-rules:latest", rules_file, version="1.2.3")
    message = str(caught.value)
    assert message == f"cannot reach registry 127.0.0.1:{port} over http: Connection refused"
    assert time.monotonic() - started < 5  # no retries with back-off


def test_https_to_a_plain_http_registry_is_one_clear_line(registry: Registry, rules_file: Path) -> None:
    with pytest.raises(
        RegistryError,
        match=rf"^TLS with registry {registry.host} failed \(wrong version number\); a plain-HTTP registry",
    ) as caught:
        _publish(registry, rules_file, "tls/tor-rules", plain_http=False)
    assert "\n" not in str(caught.value)


def test_plain_http_to_a_remote_registry_is_refused(rules_file: Path) -> None:
    with pytest.raises(RegistryError, match="plain HTTP is allowed only for a loopback registry"):
        fleet.publish_rules(
            "oci://registry.example.com/security/tor-rules:latest",
            rules_file,
            version="1.2.3",
            plain_http=True,
        )


# --- credentials ---------------------------------------------------------------------------------------------


def test_private_registry_without_credentials(private_registry: Registry, rules_file: Path) -> None:
    with pytest.raises(RegistryError, match="needs credentials: set TOR_SETS_REGISTRY_USERNAME"):
        _publish(private_registry, rules_file, "private/tor-rules")


def test_private_registry_with_environment_credentials(
    private_registry: Registry, rules_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOR_SETS_REGISTRY_USERNAME", "alice")
    monkeypatch.setenv("TOR_SETS_REGISTRY_PASSWORD", PASSWORD)
    result = _publish(private_registry, rules_file, "private/tor-rules")
    assert fleet.pull_artifact(f"{private_registry.host}/private/tor-rules:latest").digest == result.digest
    anonymous = requests.get(private_registry.api("private/tor-rules/manifests/latest"))
    assert anonymous.status_code == 401


def test_private_registry_with_docker_config(
    private_registry: Registry, rules_file: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    folder = tmp_path / "docker"
    folder.mkdir()
    token = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    (folder / "config.json").write_text(json.dumps({"auths": {private_registry.host: {"auth": token}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(folder))
    assert _publish(private_registry, rules_file, "docker-config/tor-rules").tags == TAGS_0100


def test_wrong_password_is_reported_without_it(
    private_registry: Registry,
    rules_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    wrong = "wrong-password-do-not-print"
    monkeypatch.setenv("TOR_SETS_REGISTRY_USERNAME", "alice")
    monkeypatch.setenv("TOR_SETS_REGISTRY_PASSWORD", wrong)
    with pytest.raises(RegistryError, match=f"registry {private_registry.host} rejected the credentials") as caught:
        _publish(private_registry, rules_file, "private/tor-rules")
    captured = capfd.readouterr()
    for text in (str(caught.value), repr(caught.value), captured.out, captured.err):
        assert wrong not in text and PASSWORD not in text


# --- the command line ----------------------------------------------------------------------------------------


def _main(argv: list[str]) -> int:
    from tor_sets.cli import main

    return main(argv)


def test_cli_publish(registry: Registry, rules_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = _main(
        [
            "publish",
            f"oci://{registry.host}/cli/tor-rules:latest",
            "--rules",
            str(rules_file),
            "--tag",
            "stable",
            "--annotation",
            "org.opencontainers.image.source=https://git.example.com/tor-sets",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    printed = yaml.safe_load(captured.out)
    assert list(printed) == ["ref", "digest", "type", "name", "version", "tags"]
    assert printed["ref"] == f"{registry.host}/cli/tor-rules:latest"
    assert (printed["type"], printed["name"], printed["version"]) == ("rulesfile", "tor-rules", "1.20260228.100")
    assert printed["tags"] == ["1.20260228.100", "2026-02-28T0100", "stable", "latest", "1", "1.20260228"]
    pulled = fleet.pull_artifact(f"{registry.host}/cli/tor-rules:stable")
    assert pulled.digest == printed["digest"]
    assert pulled.manifest["annotations"]["org.opencontainers.image.source"] == "https://git.example.com/tor-sets"
    assert pulled.content == rules_file.read_bytes()


def test_cli_publish_without_date_tag(registry: Registry, rules_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _main(["publish", f"{registry.host}/cli/undated", "--rules", str(rules_file), "--no-date-tag"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["tags"] == ["1.20260228.100", "latest", "1", "1.20260228"]
    argv = [
        "publish",
        f"{registry.host}/cli/fixed",
        "--rules",
        str(rules_file),
        "--no-floating-tags",
        "--version",
        "2.0.1",
    ]
    assert _main(argv) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["version"] == "2.0.1" and printed["tags"] == ["2.0.1", "2026-02-28T0100", "latest"]


@pytest.mark.parametrize(
    ("ref", "flags", "code", "expected"),
    [
        ("oci://127.0.0.1:{closed}/tor-rules:latest", [], 3, "cannot reach registry 127.0.0.1:{closed} over http"),
        ("oci://registry.example.com/r:latest", ["--plain-http"], 3, "plain HTTP is allowed only for a loopback"),
        ("oci://tor-rules:latest", [], 2, "needs a registry host"),
        ("oci://127.0.0.1:1/tor-rules:latest", ["--version", "1.02.3"], 2, "is not MAJOR.MINOR.PATCH"),
        ("oci://127.0.0.1:1/tor-rules:latest", ["--version", "1.2.3", "--major", "2"], 2, "contradict"),
        ("oci://127.0.0.1:1/tor-rules:latest", ["--tag", "a/b"], 2, "'a/b' is not a valid tag"),
    ],
)
def test_cli_errors_are_one_line(
    rules_file: Path, capsys: pytest.CaptureFixture[str], ref: str, flags: list[str], code: int, expected: str
) -> None:
    closed = str(free_port())
    exit_code = _main(["publish", ref.format(closed=closed), "--rules", str(rules_file), *flags])
    captured = capsys.readouterr()
    assert exit_code == code
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tor-sets: error: ")
    assert expected.format(closed=closed) in lines[0]


def test_cli_missing_rules_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # named on the command line: a usage error, found by argparse before anything else
    with pytest.raises(SystemExit) as caught:
        _main(["publish", "oci://127.0.0.1:1/tor-rules", "--rules", str(tmp_path / "none.yaml")])
    assert caught.value.code == 2
    assert capsys.readouterr().err.startswith("tor-sets publish: error: argument --rules: cannot read")
    # the default, tor_rules.yaml, missing: the same code
    monkeypatch.chdir(tmp_path)
    assert _main(["publish", "oci://127.0.0.1:1/tor-rules"]) == 2
    assert capsys.readouterr().err.startswith("tor-sets: error: cannot read rules file tor_rules.yaml")


# --- bearer tokens, as most hosted registries hand them out ----------------------------------------------------


class _TokenGate(BaseHTTPRequestHandler):
    """Token auth in front of the real registry: ``/token`` trades Basic credentials for a scoped bearer token,
    reads need a ``pull`` token, writes a ``push`` one (so the client must come back for a wider token)."""

    upstream = ""
    issued: list[str] = []  # noqa: RUF012 - shared on purpose: the test reads which scopes were asked for

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _challenge(self, scope: str) -> None:
        host = self.headers["Host"]
        realm = f'Bearer realm="http://{host}/token",service="tor-sets-test",scope="{scope}"'
        self.send_response(401)
        self.send_header("Www-Authenticate", realm)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _token(self) -> None:
        scope = re.search(r"scope=([^&]+)", self.path)
        wanted = f"Basic {base64.b64encode(f'alice:{PASSWORD}'.encode()).decode()}"
        if self.headers.get("Authorization") != wanted or scope is None:
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        granted = urllib.parse.unquote(scope[1])
        self.issued.append(granted)
        body = json.dumps({"token": "tok:" + granted}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _relay(self) -> None:
        if self.path.startswith("/token"):
            self._token()
            return
        match = re.match(r"/v2/(.+?)/(manifests|blobs|tags)/", self.path)
        repository = match[1] if match else ""
        needed = "pull" if self.command in ("GET", "HEAD") else "pull,push"
        token = self.headers.get("Authorization", "").removeprefix("Bearer tok:")
        if self.path != "/v2/" and not token.endswith(f"repository:{repository}:{needed}"):
            self._challenge(f"repository:{repository}:{needed}")
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        forwarded = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "authorization")}
        answer = requests.request(
            self.command, self.upstream + self.path, data=body, headers=forwarded, allow_redirects=False
        )
        self.send_response(answer.status_code)
        for key, value in answer.headers.items():
            if key.lower() in ("content-length", "transfer-encoding", "connection", "date", "server"):
                continue
            if key.lower() == "location":
                value = value.replace(self.upstream, f"http://{self.headers['Host']}")
            self.send_header(key, value)
        content = answer.content if self.command != "HEAD" else b""
        self.send_header("Content-Length", str(len(answer.content) if self.command != "HEAD" else 0))
        self.end_headers()
        self.wfile.write(content)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _relay


@pytest.fixture(scope="module")
def token_registry(registry: Registry) -> Iterator[tuple[Registry, list[str]]]:
    issued: list[str] = []
    handler = type("Gate", (_TokenGate,), {"upstream": f"http://{registry.host}", "issued": issued})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Registry(host=f"127.0.0.1:{server.server_address[1]}", log=registry.log), issued
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_bearer_token_registry(
    token_registry: tuple[Registry, list[str]], rules_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate, issued = token_registry
    with pytest.raises(RegistryError, match="needs credentials that were not accepted or not given"):
        _publish(gate, rules_file, "token/tor-rules")
    monkeypatch.setenv("TOR_SETS_REGISTRY_USERNAME", "alice")
    monkeypatch.setenv("TOR_SETS_REGISTRY_PASSWORD", PASSWORD)
    result = _publish(gate, rules_file, "token/tor-rules")
    assert "repository:token/tor-rules:pull" in issued  # first the read (does the blob exist?) ...
    assert "repository:token/tor-rules:pull,push" in issued  # ... then a wider token for the upload
    pulled = fleet.pull_artifact(f"{gate.host}/token/tor-rules:2026-02-28T0100")
    assert pulled.digest == result.digest and pulled.content == rules_file.read_bytes()


# --- hardening (issue 13, items 11 to 13): nothing leaves loopback, credentials go nowhere else ---------------


class _Recorder:
    """A loopback HTTP server that records every request it gets (method, path, headers) and answers with
    ``answer(handler)``; by default 200 with a bearer token, as a token service would."""

    def __init__(self, address: str = "127.0.0.2", answer: object = None) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def _any(self) -> None:
                recorder.requests.append((self.command, self.path, dict(self.headers.items())))
                if callable(answer):
                    answer(self)
                    return
                body = b'{"token": "stolen"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _any

        self.server = ThreadingHTTPServer((address, 0), Handler)
        self.host = f"{address}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _Recorder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def no_name_lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every host name tor-sets tries to resolve; a name (not an address literal) is refused, so nothing can reach
    a resolver, let alone the host it names, even on code that would try."""
    import ipaddress

    looked_up: list[str] = []
    real = socket.getaddrinfo

    def guarded(host: object, *args: object, **kwargs: object) -> object:
        text = host.decode() if isinstance(host, bytes) else str(host)
        try:
            ipaddress.ip_address(text.strip("[]"))
        except ValueError:
            looked_up.append(text)
            raise socket.gaierror(socket.EAI_NONAME, "name lookups are refused in this test") from None
        return real(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    return looked_up


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tor-sets: error: "), err
    return lines[0]


def test_tls_to_a_plain_http_loopback_registry_names_the_option(
    rules_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 15.4: the library's hint names the option field (``plain_http``), the command line its flag."""
    with _Recorder("127.0.0.1") as plain:
        ref = f"oci://{plain.host}/tor-rules:latest"
        with pytest.raises(
            RegistryError, match=r"^TLS with registry .* failed \(.*\); .* on loopback needs plain_http$"
        ):
            fleet.publish_rules(ref, rules_file, version="1.2.3", plain_http=False)
        assert _main(["publish", ref, "--rules", str(rules_file), "--no-plain-http"]) == 3
    line = _one_error_line(capsys.readouterr().err)
    assert line.endswith("; a plain-HTTP registry on loopback needs --plain-http"), line


def test_userinfo_shaped_registry_is_refused_before_any_connection(
    rules_file: Path, capsys: pytest.CaptureFixture[str], no_name_lookups: list[str]
) -> None:
    """Issue 13, item 11: ``127.0.0.1:5000@host`` looked like loopback, but HTTP libraries read ``127.0.0.1:5000``
    as user information and connect to ``host`` in clear. The trap listens where such a reference would really
    connect (another loopback address); the name lookup guard catches the remote variant."""
    with _Recorder("127.0.0.2") as trap, _Recorder("127.0.0.1") as decoy:
        refs = [
            f"oci://{decoy.host}@registry.example.com/security/tor-rules:latest",
            f"oci://{decoy.host}@{trap.host}/security/tor-rules:latest",
            f"{decoy.host}@{trap.host}/tor-rules",
        ]
        for ref in refs:
            code = _main(["publish", ref, "--rules", str(rules_file)])
            captured = capsys.readouterr()
            line = _one_error_line(captured.err)
            assert code == 2, line
            assert "'@'" in line and "registry" in line, line
            assert captured.out == ""
        with pytest.raises(RegistryError, match="'@'"):
            fleet.pull_artifact(f"oci://{decoy.host}@{trap.host}/security/tor-rules:latest")
    assert trap.requests == [] and decoy.requests == []
    assert no_name_lookups == []


def _bearer_to(realm: str) -> object:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(401)
        handler.send_header("WWW-Authenticate", f'Bearer realm="{realm}",service="tor-sets-test",scope="x:y:pull"')
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return answer


@pytest.mark.parametrize("realm_host", ["127.0.0.2:{trap}", "auth.example.net"])
def test_credentials_never_go_to_a_plain_http_realm_on_another_host(
    rules_file: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    no_name_lookups: list[str],
    realm_host: str,
) -> None:
    """Issue 13, item 12: a registry on loopback may name any token realm; over plain HTTP the Basic credentials
    would cross the network in clear. The trap (another loopback address) records whatever reaches it."""
    monkeypatch.setenv("TOR_SETS_REGISTRY_USERNAME", "alice")
    monkeypatch.setenv("TOR_SETS_REGISTRY_PASSWORD", PASSWORD)
    with _Recorder("127.0.0.2") as trap:
        realm = f"http://{realm_host.format(trap=trap.server.server_address[1])}/token"
        with _Recorder("127.0.0.1", answer=_bearer_to(realm)) as registry:
            code = _main(["publish", f"oci://{registry.host}/security/tor-rules", "--rules", str(rules_file)])
            captured = capsys.readouterr()
        line = _one_error_line(captured.err)
        assert code == 3, line
        assert f"registry {registry.host} sent its token service to {realm}" in line, line
        assert "plain HTTP" in line
        assert all("Authorization" not in headers for _, _, headers in registry.requests)
    assert trap.requests == []
    assert no_name_lookups == []
    assert PASSWORD not in captured.err


def test_unreachable_realm_is_one_registry_error(
    rules_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13, item 12: a realm nobody listens on gave a requests traceback."""
    monkeypatch.setenv("TOR_SETS_REGISTRY_USERNAME", "alice")
    monkeypatch.setenv("TOR_SETS_REGISTRY_PASSWORD", PASSWORD)
    closed = free_port()
    realm = f"http://127.0.0.1:{closed}/token"
    with _Recorder("127.0.0.1", answer=_bearer_to(realm)) as registry:
        code = _main(["publish", f"oci://{registry.host}/security/tor-rules", "--rules", str(rules_file)])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 3
    assert line == (
        f"tor-sets: error: cannot reach the token service of registry {registry.host} at {realm}: Connection refused"
    )


def test_a_token_realm_on_the_registrys_own_loopback_host_still_works(
    token_registry: tuple[Registry, list[str]], rules_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The policy refuses only what would leave the registry's host: the token gate's realm is on it."""
    gate, issued = token_registry
    monkeypatch.setenv("TOR_SETS_REGISTRY_USERNAME", "alice")
    monkeypatch.setenv("TOR_SETS_REGISTRY_PASSWORD", PASSWORD)
    assert _main(["publish", f"oci://{gate.host}/realm/tor-rules", "--rules", str(rules_file)]) == 0
    assert "repository:realm/tor-rules:pull,push" in issued


def test_no_user_information_in_the_pushed_annotations(registry: Registry, tmp_path: Path) -> None:
    """Issue 13, item 13: the rules header names the source URL, which may carry credentials; neither it nor an
    ``--annotation`` URL may reach the registry with them."""
    path = tmp_path / "tor_rules.yaml"
    path.write_text(
        rules_text().replace(
            "# source: https://onionoo.torproject.org/", "# source: https://alice:s3cret-token@onionoo.example/"
        )
    )
    code = _main(
        [
            "publish",
            f"oci://{registry.host}/redact/tor-rules",
            "--rules",
            str(path),
            "--annotation",
            "org.opencontainers.image.url=https://bob:hunter2@git.example/tor-sets",
        ]
    )
    assert code == 0
    body = requests.get(registry.api("redact/tor-rules/manifests/latest"), headers={"Accept": OCI_MANIFEST}).content
    for secret in (b"s3cret-token", b"alice", b"hunter2", b"bob"):
        assert secret not in body
    annotations = json.loads(body)["annotations"]
    assert annotations["tor-sets.data_source"] == "https://***@onionoo.example/details?type=relay&running=true"
    assert annotations["org.opencontainers.image.source"] == annotations["tor-sets.data_source"]
    assert annotations["org.opencontainers.image.url"] == "https://***@git.example/tor-sets"


# --- falcoctl's contract, as its Go code reads and checks artifacts ------------------------------------------
#
# Read in falcosecurity/falcoctl (commit 71a05e34): pkg/oci/constants.go (media types), pkg/oci/types.go
# (ArtifactConfig, omitempty), pkg/oci/puller/puller.go (RawManifest picks an index's manifest by os/architecture,
# Pull takes the type from Layers[0] and the file name from its title, CheckAllowedType), internal/utils/extract.go
# (ExtractTarGz), cmd/artifact/install/install.go (prepareArtifactList: "empty version ... config may be corrupted",
# semver.ParseTolerant), cmd/artifact/install/deps.go (ResolveDeps), internal/follower/follower.go (follow compares
# the tag's digest; checkRequirements), pkg/index/index/index.go (Entry, ReadBytes, ResolveReference), cmd/registry/
# push/push.go (--add-floating-tags, rulesConfigLayer). These helpers do the same with plain HTTP GETs.

CONFIG_KEYS = {"name", "version", "dependencies", "requirements"}  # ArtifactConfig's JSON names
# Falco 0.44.1's /versions (userspace/falco/versions_info.cpp): engine 0.62.0 (userspace/engine/
# falco_engine_version.h), plugin API 3.12.0 (libs 0.25.4, userspace/plugin/plugin_api.h)
FALCO_0_44_VERSIONS = {"engine_version_semver": "0.62.0", "plugin_api_version": "3.12.0", "engine_version": "62"}
_BLANG_STRICT = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?")
_ACCEPT = f"{OCI_MANIFEST}, application/vnd.oci.image.index.v1+json"


def _semver(text: str, *, tolerant: bool = False) -> tuple[int, int, int]:
    """blang/semver's Parse (strict) or ParseTolerant (trims spaces and a leading v, pads missing parts)."""
    if tolerant:
        text = text.strip().removeprefix("v")
        text = ".".join([*text.split("."), "0", "0"][:3]) if text.count(".") < 2 else text
    match = _BLANG_STRICT.fullmatch(text)
    assert match, f"{text!r} is not a semver blang/semver parses"
    return int(match[1]), int(match[2]), int(match[3])


def falcoctl_fetch_reference(registry: Registry, repository: str, reference: str) -> tuple[str, bytes, str]:
    """oras-go's Repository.FetchReference: the media type, the body and the digest the tag points at."""
    response = requests.get(registry.api(f"{repository}/manifests/{reference}"), headers={"Accept": _ACCEPT})
    assert response.status_code == 200, response.text
    digest = "sha256:" + hashlib.sha256(response.content).hexdigest()
    assert response.headers["Docker-Content-Digest"] == digest
    return response.headers["Content-Type"], response.content, digest


def falcoctl_manifest(
    registry: Registry, repository: str, reference: str, os: str = "linux", arch: str = "amd64"
) -> dict[str, Any]:
    """puller.RawManifest: a manifest, or for an image index the manifest whose platform matches os/arch."""
    media_type, body, _ = falcoctl_fetch_reference(registry, repository, reference)
    if media_type == "application/vnd.oci.image.index.v1+json":
        index = json.loads(body)
        found = [m for m in index["manifests"] if m["platform"]["os"] == os and m["platform"]["architecture"] == arch]
        if not found:
            raise LookupError(f"unable to find a manifest matching the given platform: {os}/{arch}")
        media_type, body, digest = falcoctl_fetch_reference(registry, repository, found[0]["digest"])
        assert digest == found[0]["digest"] and len(body) == found[0]["size"]
    assert media_type == OCI_MANIFEST  # pusher: "Always pushed as OCI Image Manifest"
    manifest: dict[str, Any] = json.loads(body)
    assert len(manifest["layers"]) >= 1, "puller: no layers in manifest"
    return manifest


def _blob(registry: Registry, repository: str, descriptor: dict[str, object]) -> bytes:
    blob = requests.get(registry.api(f"{repository}/blobs/{descriptor['digest']}")).content
    assert "sha256:" + hashlib.sha256(blob).hexdigest() == descriptor["digest"] and len(blob) == descriptor["size"]
    return blob


def falcoctl_artifact_config(registry: Registry, repository: str, reference: str) -> dict[str, object]:
    """puller.ArtifactConfig decoded into ArtifactConfig, then install's prepareArtifactList checks."""
    manifest = falcoctl_manifest(registry, repository, reference)
    config = json.loads(_blob(registry, repository, manifest["config"]))
    assert set(config) <= CONFIG_KEYS and all(config[key] for key in config), "omitempty: no empty fields"
    assert isinstance(config["name"], str) and config["name"]
    assert config.get("version"), f"empty version for ref {repository}:{reference}: config may be corrupted"
    _semver(config["version"], tolerant=True)
    for dependency in config.get("dependencies", []):
        assert set(dependency) <= {"name", "version", "alternatives"}
        _semver(dependency["version"], tolerant=True)
    for requirement in config.get("requirements", []):
        assert set(requirement) == {"name", "version"}
    return config


def falcoctl_check_requirements(config: dict[str, object], falco: dict[str, str]) -> None:
    """follower.checkRequirements: every requirement is a key of Falco's /versions, same major, not newer."""
    for requirement in config.get("requirements", []):  # type: ignore[union-attr]
        name, version = requirement["name"], requirement["version"]
        if name not in falco:
            raise ValueError(f"unrecognized key {name}: Falco does not satisfy this requirement")
        have, need = _semver(falco[name]), _semver(version)
        if have[0] != need[0] or have < need:
            raise ValueError(f"incompatible versions, Falco: {falco[name]}, Requirement: {name}:{version}")


def falcoctl_pull(
    registry: Registry, repository: str, reference: str, allowed: tuple[str, ...], os: str = "linux"
) -> tuple[str, dict[str, bytes]]:
    """CheckAllowedType, then Pull (type from Layers[0], file name from its title), then ExtractTarGz."""
    manifest = falcoctl_manifest(registry, repository, reference, os=os)
    layer = manifest["layers"][0]
    kind = {layer_type: kind for kind, (_, layer_type) in MEDIA_TYPES.items()}[layer["mediaType"]]
    if kind not in allowed:
        raise PermissionError(f'cannot download artifact of type "{kind}": type not permitted')
    assert manifest["config"]["mediaType"] == MEDIA_TYPES[kind][0]
    assert layer["annotations"]["org.opencontainers.image.title"].endswith(".tar.gz")
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(_blob(registry, repository, layer)), mode="r:gz") as tar:
        for member in tar.getmembers():
            assert ".." not in member.name, "not allowed relative path in tar archive"
            assert member.isfile(), "link entries are not allowed in artifact archives"
            extracted = tar.extractfile(member)
            assert extracted is not None
            files[member.name] = extracted.read()
            if kind == "plugin":
                assert member.mode & 0o755 == 0o755
    return kind, files


def falcoctl_index(text: str) -> dict[str, dict[str, object]]:
    """index.ReadBytes: a YAML list of entries, unique names; the mandatory fields set."""
    entries = yaml.safe_load(text)
    assert isinstance(entries, list)
    by_name: dict[str, dict[str, object]] = {}
    for entry in entries:
        assert entry["name"] not in by_name, f"duplicate entry found: {entry['name']}"
        assert entry["type"] in ("rulesfile", "plugin", "asset") and entry["registry"] and entry["repository"]
        by_name[entry["name"]] = entry
    assert [e["name"] for e in entries] == sorted(by_name), "Index.Normalize sorts entries by name"
    return by_name


def falcoctl_resolve(index: dict[str, dict[str, object]], name: str) -> str:
    """MergedIndexes.ResolveReference for a name (no registry): NAME[:TAG] → REGISTRY/REPOSITORY:TAG."""
    entry_name, _, tag = name.partition(":")
    entry = index[entry_name]  # "cannot find %s among the configured indexes"
    return f"{entry['registry']}/{entry['repository']}:{tag or 'latest'}"


def _split(ref: str) -> tuple[str, str]:
    rest = ref.partition("/")[2]
    repository, _, tag = rest.rpartition(":")
    return repository, tag


def falcoctl_install(
    registry: Registry, index: dict[str, dict[str, object]], names: list[str]
) -> dict[str, tuple[str, dict[str, object]]]:
    """install.prepareArtifactList + deps.ResolveDeps: config name → (ref, config), dependencies resolved through
    the index as ``NAME:VERSION``, the same major required."""
    found: dict[str, tuple[str, dict[str, object]]] = {}
    todo = [falcoctl_resolve(index, name) for name in names]
    while todo:
        ref = todo.pop(0)
        assert ref.startswith(registry.host + "/")
        config = falcoctl_artifact_config(registry, *_split(ref))
        found[str(config["name"])] = (ref, config)
        for dependency in config.get("dependencies", []):  # type: ignore[union-attr]
            if dependency["name"] in found:
                existing = _semver(str(found[dependency["name"]][1]["version"]), tolerant=True)
                assert existing[0] == _semver(dependency["version"], tolerant=True)[0], "cannot satisfy dependencies"
                continue
            todo.append(falcoctl_resolve(index, f"{dependency['name']}:{dependency['version']}"))
    return found


# --- the list route, as falcoctl installs and follows it -----------------------------------------------------


def test_falcoctl_installs_the_rules_by_name(
    registry: Registry, rules_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    index_path = tmp_path / "index.yaml"
    ref = f"oci://{registry.host}/falcoctl/tor-rules"
    assert _main(["publish", ref, "--rules", str(rules_file), "--index-entry", str(index_path)]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    index = falcoctl_index(index_path.read_text())
    assert index["tor-rules"] == {
        "name": "tor-rules",
        "type": "rulesfile",
        "registry": registry.host,
        "repository": "falcoctl/tor-rules",
        "description": INDEX_DESCRIPTIONS["rulesfile"],
        "keywords": ["tor", "network", "tor-sets"],
    }
    for name in ("tor-rules", "tor-rules:1", "tor-rules:1.20260228"):
        installed = falcoctl_install(registry, index, [name])
        assert list(installed) == ["tor-rules"]
        ref_found, config = installed["tor-rules"]
        assert config == {
            "name": "tor-rules",
            "version": "1.20260228.100",
            "requirements": [{"name": "engine_version_semver", "version": "0.31.0"}],
        }
        assert _semver(str(config["version"])) == (1, 20260228, 100)  # strict: no leading zeros
        falcoctl_check_requirements(config, FALCO_0_44_VERSIONS)
        with pytest.raises(ValueError, match="incompatible versions"):
            falcoctl_check_requirements(config, {"engine_version_semver": "0.30.0"})
        kind, files = falcoctl_pull(registry, *_split(ref_found), allowed=("rulesfile",))
        assert kind == "rulesfile" and files == {"tor_rules.yaml": rules_file.read_bytes()}
        with pytest.raises(PermissionError, match="not permitted"):
            falcoctl_pull(registry, *_split(ref_found), allowed=("plugin",))
        assert falcoctl_fetch_reference(registry, *_split(ref_found))[2] == printed["digest"]


def test_following_the_major_tag_sees_new_data(registry: Registry, tmp_path: Path) -> None:
    """follower.follow installs when the followed tag's digest changes: ``REPO:1`` moves with each publication,
    the version and date tags stay where they were."""
    repository = "follow/tor-rules"
    digests = []
    for hour, seed in (("01:00:00", 1), ("02:00:00", 2), ("02:00:00", 2)):
        path = tmp_path / hour.replace(":", "") / "tor_rules.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(rules_text(published=f"2026-02-28 {hour}", seed=seed))
        assert _main(["publish", f"{registry.host}/{repository}", "--rules", str(path)]) == 0
        digests.append(falcoctl_fetch_reference(registry, repository, "1")[2])
    assert digests[0] != digests[1] == digests[2]  # new data moves the tag; the same data again does not
    assert falcoctl_fetch_reference(registry, repository, "1.20260228.100")[2] == digests[0]
    assert falcoctl_fetch_reference(registry, repository, "1.20260228")[2] == digests[1]
    assert falcoctl_artifact_config(registry, repository, "1")["version"] == "1.20260228.200"


def test_rules_without_a_date_need_a_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tor_rules.yaml"
    path.write_text("- list: a\n  items: []\n")
    assert _main(["publish", "oci://127.0.0.1:1/tor-rules", "--rules", str(path)]) == 2
    assert "pass --version X.Y.Z" in _one_error_line(capsys.readouterr().err)


# --- the plugin route: plugin, plugin rules and relay table --------------------------------------------------


@pytest.fixture(scope="module")
def plugin_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tor_sets.errors import TorSetsError
    from tor_sets.plugin.native import compile_plugin, find_include_dir

    try:
        include = find_include_dir()
    except TorSetsError as exc:
        pytest.skip(str(exc))
    if shutil.which("gcc") is None:
        pytest.skip("no gcc to build the plugin")
    return compile_plugin(tmp_path_factory.mktemp("plugin"), include_dir=include)


@pytest.fixture(scope="module")
def plugin_outputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The plugin rules and the relay table of a build of the bundled snapshot, as `tor-sets build --format
    falco-plugin` and `tor-sets plugin table` write them."""
    from tor_sets import build, bundled_snapshot
    from tor_sets.plugin import plugin_rules_text, table_bytes

    folder = tmp_path_factory.mktemp("plugin-outputs")
    snapshot = bundled_snapshot()
    built = build(snapshot)
    rules = folder / "tor_plugin_rules.yaml"
    rules.write_text(plugin_rules_text(built))
    table = folder / "tor.table"
    table.write_bytes(table_bytes(built, snapshot))
    return rules, table


def test_plugin_route_as_falcoctl_installs_it(
    registry: Registry,
    plugin_library: Path,
    plugin_outputs: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The plugin (index with a linux/amd64 image, config name as compiled into the .so, plugin_api_version), the
    plugin rules (a rulesfile that depends on it) and the table (an asset), found by name through one index, the
    dependency resolved as falcoctl's install does."""
    from tests.support.plugin_abi import Plugin
    from tor_sets.plugin import PLUGIN_VERSION
    from tor_sets.plugin.table import decode

    abi = Plugin(plugin_library)  # the name, version and API the library itself reports
    rules, table = plugin_outputs
    index_path = tmp_path / "index.yaml"
    host = registry.host
    printed = []
    for argv in (
        ["--plugin", str(plugin_library)],
        ["--rules", str(rules)],
        ["--table", str(table)],
    ):
        repository = {"--plugin": "torsets", "--rules": "tor-plugin-rules", "--table": "tor-table"}[argv[0]]
        code = _main(["publish", f"oci://{host}/route/{repository}", *argv, "--index-entry", str(index_path)])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        printed.append(yaml.safe_load(captured.out))
    assert [(p["type"], p["name"], p["version"]) for p in printed] == [
        ("plugin", "torsets", PLUGIN_VERSION),
        ("rulesfile", "tor-plugin-rules", "1.20260228.100"),
        ("asset", "tor-table", "1.20260228.100"),
    ]

    index = falcoctl_index(index_path.read_text())
    assert {name: entry["type"] for name, entry in index.items()} == {
        "tor-plugin-rules": "rulesfile",
        "tor-table": "asset",
        abi.text("get_name"): "plugin",
    }
    installed = falcoctl_install(registry, index, ["tor-plugin-rules", "tor-table:1"])
    assert sorted(installed) == sorted(["tor-plugin-rules", "tor-table", abi.text("get_name")])

    plugin_ref, plugin_config = installed["torsets"]
    assert plugin_ref == f"{host}/route/torsets:{PLUGIN_VERSION}"  # the dependency's version is the tag
    assert plugin_config == {
        "name": abi.text("get_name"),
        "version": abi.text("get_version"),
        "requirements": [{"name": "plugin_api_version", "version": abi.text("get_required_api_version")}],
    }
    falcoctl_check_requirements(plugin_config, FALCO_0_44_VERSIONS)
    assert installed["tor-plugin-rules"][1]["dependencies"] == [{"name": "torsets", "version": PLUGIN_VERSION}]
    assert installed["tor-plugin-rules"][1]["requirements"] == [{"name": "engine_version_semver", "version": "0.50.0"}]
    assert installed["tor-table"][1] == {"name": "tor-table", "version": "1.20260228.100"}
    for _, config in installed.values():
        falcoctl_check_requirements(config, FALCO_0_44_VERSIONS)

    allowed = ("rulesfile", "plugin", "asset")
    expected = {
        "torsets": ("plugin", {"libtorsets.so": plugin_library.read_bytes()}),
        "tor-plugin-rules": ("rulesfile", {"tor_plugin_rules.yaml": rules.read_bytes()}),
        "tor-table": ("asset", {"tor.table": table.read_bytes()}),
    }
    for name, (ref, _) in installed.items():
        assert falcoctl_pull(registry, *_split(ref), allowed=allowed) == expected[name]
    assert decode(table.read_bytes()).published  # what was installed is a table the plugin loads

    # the plugin is an image index: one manifest per platform (platforms.go), chosen by os/architecture
    media_type, body, _ = falcoctl_fetch_reference(registry, "route/torsets", "latest")
    assert media_type == "application/vnd.oci.image.index.v1+json"
    plugin_index = json.loads(body)
    assert [f"{m['platform']['os']}-{m['platform']['architecture']}" for m in plugin_index["manifests"]] == [
        "linux-amd64"
    ]
    with pytest.raises(LookupError, match="linux/arm64"):
        falcoctl_manifest(registry, "route/torsets", "latest", arch="arm64")
    tags = {
        repository: sorted(requests.get(registry.api(f"route/{repository}/tags/list")).json()["tags"])
        for repository in ("torsets", "tor-plugin-rules", "tor-table")
    }
    assert tags == {
        "torsets": sorted([PLUGIN_VERSION, "latest", PLUGIN_VERSION.split(".")[0], PLUGIN_VERSION.rsplit(".", 1)[0]]),
        "tor-plugin-rules": sorted(["1.20260228.100", "2026-02-28T0100", "latest", "1", "1.20260228"]),
        "tor-table": sorted(["1.20260228.100", "2026-02-28T0100", "latest", "1", "1.20260228"]),
    }
    pulled = fleet.pull_artifact(f"{host}/route/torsets:{PLUGIN_VERSION.rsplit('.', 1)[0]}")  # a floating tag
    assert (pulled.kind, pulled.filename, pulled.content) == ("plugin", "libtorsets.so", plugin_library.read_bytes())
    assert pulled.index == plugin_index


def test_a_new_table_moves_the_followed_tag(
    registry: Registry, plugin_outputs: tuple[Path, Path], tmp_path: Path
) -> None:
    """A 30-minute refresh publishes a table; ``tor-table:1`` moves, nothing else is republished."""
    import dataclasses

    from tor_sets.plugin.table import decode, encode

    _, table = plugin_outputs
    assert _main(["publish", f"{registry.host}/refresh/tor-table", "--table", str(table)]) == 0
    before = falcoctl_fetch_reference(registry, "refresh/tor-table", "1")[2]
    later = tmp_path / "tor.table"
    old = decode(table.read_bytes())
    later.write_bytes(encode(dataclasses.replace(old, published=old.published + 1800)))
    assert _main(["publish", f"{registry.host}/refresh/tor-table", "--table", str(later)]) == 0
    after = falcoctl_fetch_reference(registry, "refresh/tor-table", "1")[2]
    assert after != before
    assert falcoctl_artifact_config(registry, "refresh/tor-table", "1")["version"] == "1.20260228.130"
    assert falcoctl_fetch_reference(registry, "refresh/tor-table", "1.20260228.100")[2] == before


def test_a_table_the_plugin_would_refuse_is_not_published(
    registry: Registry, plugin_outputs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, table = plugin_outputs
    broken = tmp_path / "tor.table"
    data = bytearray(table.read_bytes())
    data[-1] ^= 0xFF  # the payload no longer matches its CRC
    broken.write_bytes(bytes(data))
    assert _main(["publish", f"{registry.host}/broken/tor-table", "--table", str(broken)]) == 3
    line = _one_error_line(capsys.readouterr().err)
    assert (
        line
        == f"tor-sets: error: table {broken} is not one the plugin loads: table checksum mismatch: truncated or corrupt"
    )
    assert requests.get(registry.api("broken/tor-table/tags/list")).status_code == 404


def test_index_entry_on_stdout(registry: Registry, rules_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref = f"oci://{registry.host}/stdout/tor-rules"
    assert _main(["publish", ref, "--rules", str(rules_file), "--index-entry", "-"]) == 0
    index = falcoctl_index(capsys.readouterr().out)
    assert falcoctl_resolve(index, "tor-rules") == f"{registry.host}/stdout/tor-rules:latest"
