"""deploy/Dockerfile builds with no registry and its container keeps rules fresh as a non-root user.

The base image is made here: ``debootstrap --variant=minbase --include=python3,python3-venv bookworm`` into
``${XDG_CACHE_HOME:-~/.cache}/tor-sets/image/bookworm-root`` (once; reruns reuse it), imported with ``docker import``.
The wheels the image installs (tor-sets' dependencies and the setuptools that builds tor-sets) are downloaded once
from PyPI with pip into the same cache; tor-sets itself is built from this tree on every run, offline. dockerd is
started through the engines installer when no daemon answers, and stopped afterwards if this module started it.
Containers run with ``--network none``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tor_sets import provision as setup
from tor_sets.deploy.refresh import read_state
from tor_sets.engines import docker as _docker
from tor_sets.errors import EngineError
from tor_sets.provision import steps as install_steps
from tor_sets.provision.docker import import_root

pytestmark = pytest.mark.integration

BASE_IMAGE = "tor-sets/bookworm-python:local"
IMAGE = "tor-sets:test"
UID = 10001
WAIT_S = 120.0


def image_cache() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/tor-sets/image``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    folder = Path(base) / "tor-sets" / "image"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _run(argv: list[str], *, timeout: float = 600, **kw: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kw)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv[:4])}... failed ({done.returncode}): {done.stderr[-2000:]}")
    return done


def bookworm_root() -> Path:
    """The cached bookworm root with python3 and python3-venv, made atomically on first use."""
    cache = image_cache()
    root = cache / "bookworm-root"
    if (root / "usr/bin/python3").exists():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bookworm-root.tmp-", dir=cache))
    try:
        tmp.chmod(0o755)
        _run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv", "bookworm", str(tmp)], timeout=1800)
        install_steps.require_unmounted(tmp, "finish")
        for leftover in (tmp / "var/cache/apt/archives").glob("*.deb"):
            leftover.unlink()
        os.rename(tmp, root)
    except BaseException:
        install_steps.discard(tmp)
        raise
    return root


def wheels() -> Path:
    """tor-sets' dependencies and a setuptools that can build it, downloaded once per dependency list."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    wanted = [*project["build-system"]["requires"], *project["project"]["dependencies"]]
    key = hashlib.sha256("\n".join(sorted(wanted)).encode()).hexdigest()[:12]
    folder = image_cache() / f"wheels-{key}"
    if (folder / "complete").exists():
        return folder
    tmp = Path(tempfile.mkdtemp(prefix=f"{folder.name}.tmp-", dir=image_cache()))
    try:
        _run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--dest", str(tmp), *wanted])
        (tmp / "complete").write_text("\n".join(wanted) + "\n")
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def build_context(target: Path) -> Path:
    """A build context: deploy/Dockerfile and wheels/ (the dependencies and a tor-sets wheel built offline)."""
    source = target / "src"
    source.mkdir(parents=True)
    shutil.copytree(REPO / "tor_sets", source / "tor_sets", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    cached = wheels()
    context = target / "context"
    (context / "wheels").mkdir(parents=True)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index", "--find-links", str(cached),
          "--wheel-dir", str(context / "wheels"), str(source)])  # fmt: skip
    for wheel in cached.glob("*.whl"):
        if not wheel.name.startswith("setuptools-"):
            shutil.copy(wheel, context / "wheels" / wheel.name)
    shutil.copy(REPO / "deploy" / "Dockerfile", context / "Dockerfile")
    return context


def docker(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return _run([_docker.docker_cli(), *args], timeout=timeout, env={**os.environ, "DOCKER_BUILDKIT": "0"})


@pytest.fixture(scope="module")
def daemon() -> Iterator[None]:
    """A Docker daemon; started through the engines installer if none answers, and then stopped afterwards."""
    if os.geteuid() != 0:
        pytest.skip("building the image needs root (debootstrap, dockerd)")
    for tool in ("docker", "dockerd", "debootstrap"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is missing (apt-get install docker.io debootstrap)")
    started = None
    if not _docker.daemon_running():
        try:
            started = setup.start_docker()
        except EngineError as exc:
            pytest.skip(f"dockerd cannot start here: {exc}")
    yield
    if started is not None:
        assert setup.stop_docker() is not None


@pytest.fixture(scope="module")
def image(daemon, tmp_path_factory) -> str:
    """The image built from deploy/Dockerfile on the local bookworm base."""
    if not _docker.image_present(BASE_IMAGE):
        import_root(bookworm_root(), BASE_IMAGE, exclude=("./tmp/*",))
    previous = subprocess.run(
        [_docker.docker_cli(), "image", "inspect", "--format", "{{.Id}}", IMAGE], capture_output=True, text=True
    ).stdout.strip()
    context = build_context(tmp_path_factory.mktemp("image"))
    docker("build", "--build-arg", f"BASE={BASE_IMAGE}", "-t", IMAGE, str(context))
    current = docker("image", "inspect", "--format", "{{.Id}}", IMAGE).stdout.strip()
    if previous and previous != current:
        subprocess.run([_docker.docker_cli(), "rmi", previous], capture_output=True, check=False)
    return IMAGE


@pytest.fixture
def rules_d(tmp_path) -> Path:
    """A rules folder as a host would mount it, writable by the container's user."""
    folder = tmp_path / "rules.d"
    folder.mkdir()
    os.chown(folder, UID, UID)
    return folder


@pytest.fixture
def container() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        subprocess.run([_docker.docker_cli(), "rm", "-f", name], capture_output=True, check=False)


def test_image_runs_as_non_root_and_writes_the_rules(image, rules_d, tmp_path):
    config = docker("image", "inspect", "--format", "{{.Config.User}} {{json .Config.Cmd}}", image).stdout.strip()
    assert config == f'{UID}:{UID} ["refresh","--every","30m","-o","/rules/tor_rules.yaml"]'
    state_d = tmp_path / "state"  # a volume for the image's TOR_SETS_STATE_DIR, so that state outlives a container
    state_d.mkdir()
    os.chown(state_d, UID, UID)
    mount = ["-v", f"{rules_d}:/rules", "-v", f"{state_d}:/var/lib/tor-sets"]
    run = docker("run", "--rm", "--network", "none", *mount, image,
                 "refresh", "--allow-fallback", "--offline", "-o", "/rules/tor_rules.yaml")  # fmt: skip
    assert "using the bundled snapshot of 2026-02-28 01:00 UTC" in run.stderr
    rules = rules_d / "tor_rules.yaml"
    assert rules.exists() and "relays_published: 2026-02-28 01:00:00 UTC" in rules.read_text()
    assert sorted(p.name for p in rules_d.iterdir()) == ["tor_rules.yaml"]  # nothing else in the rules folder
    (state_file,) = state_d.glob("tor_rules.yaml-*.state.json")
    (lock,) = state_d.glob("tor_rules.yaml-*.lock")
    for path in (rules, state_file, lock):
        assert (path.stat().st_uid, path.stat().st_gid) == (UID, UID), path
    state = read_state(state_file)
    assert state is not None and state.deployed is not None and state.deployed.validated == "yaml"
    status = docker("run", "--rm", "--network", "none", *mount, image, "status", "/rules/tor_rules.yaml")
    assert "file:          intact" in status.stdout


def test_the_default_loop_survives_failures_and_stops_cleanly(image, rules_d, container):
    """The image's own command: no network here, so every run fails (exit 4, logged) and the loop goes on."""
    name = f"tor-sets-test-{uuid.uuid4().hex[:8]}"
    container.append(name)
    docker("run", "-d", "--name", name, "--network", "none", "-v", f"{rules_d}:/rules", image)
    deadline = time.monotonic() + WAIT_S
    logs = ""
    while time.monotonic() < deadline and "next refresh in" not in logs:
        time.sleep(0.2)
        logs = docker("logs", name).stderr
    assert "refresh failed (exit 4): cannot resolve onionoo.torproject.org" in logs, logs
    assert "next refresh in" in logs
    assert docker("inspect", "--format", "{{.State.Running}}", name).stdout.strip() == "true"
    docker("stop", "--time", "60", name)
    assert docker("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() == "0"
    assert "stopped by SIGTERM between steps" in docker("logs", name).stderr
    assert not (rules_d / "tor_rules.yaml").exists()  # a failed refresh never writes the bundled snapshot
