"""Unit tests of the engine registry and the installer's decisions (no root, apt, debootstrap or Docker used)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from tor_sets import engines
from tor_sets import provision as setup
from tor_sets.engines import paths
from tor_sets.engines.base import Engine
from tor_sets.errors import EngineError, EngineUnavailable
from tor_sets.provision import docker as docker_part
from tor_sets.provision import steps as install_steps
from tor_sets.provision import sysdig as sysdig_part

DPKG_STATUS = """\
Package: sysdig
Status: install ok installed
Priority: optional
Section: admin
Installed-Size: 2461
Maintainer: Debian Security Tools <team+pkg-security@tracker.debian.org>
Architecture: amd64
Version: 0.41.4+repack-1
Depends: libc6 (>= 2.38), libfalcosecurity0t64 (>= 0.23.2)
Description: system-level exploration and troubleshooting tool

Package: libfalcosecurity0-dev
Status: install ok installed
Version: 0.23.2+repack-1
"""


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("TOR_SETS_ENGINE_ROOT", raising=False)
    return tmp_path / "cache" / "tor-sets" / "engines"


def test_paths_follow_xdg_and_the_override(private_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert paths.cache_dir() == private_cache
    assert paths.modern_root() == private_cache / "sid-root"
    monkeypatch.setenv("TOR_SETS_ENGINE_ROOT", "/srv/root")
    assert paths.modern_root() == Path("/srv/root")


def test_registry_is_a_plain_dict_of_classes() -> None:
    assert set(engines.ENGINES) == {"falco-local", "falco", "sysdig-modern", "sysdig-modern-docker", "sysdig-legacy"}
    for name, cls in engines.ENGINES.items():
        assert cls.name == name and cls.description
    assert isinstance(engines.get_engine("sysdig-legacy"), engines.SysdigLegacy)
    with pytest.raises(EngineUnavailable, match="unknown engine 'nope'"):
        engines.get_engine("nope")


def test_auto_prefers_real_falco_then_modern(monkeypatch: pytest.MonkeyPatch) -> None:
    present = {"sysdig-legacy", "sysdig-modern-docker"}

    def check(self: Engine) -> None:
        if self.name not in present:
            raise EngineUnavailable(f"{self.name}: missing")

    for cls in engines.ENGINES.values():
        monkeypatch.setattr(cls, "check", check)
    assert engines.auto().name == "sysdig-modern-docker"
    present.add("sysdig-modern")
    assert engines.auto().name == "sysdig-modern"
    present.add("falco")
    assert engines.auto().name == "falco"
    present.add("falco-local")
    assert engines.auto().name == "falco-local"
    present.clear()
    with pytest.raises(EngineUnavailable, match="no engine available: falco-local: missing; falco: missing; "):
        engines.auto()


def test_modern_engine_names_the_install_command(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable, match=r"run `tor-sets engines install modern` as root"):
        engines.SysdigModern(tmp_path / "absent").check()


def test_legacy_engine_names_the_install_command(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable, match=r"run `tor-sets engines install legacy` as root"):
        engines.SysdigLegacy(tmp_path / "sysdig").check()


def test_root_sysdig_version_reads_dpkg(tmp_path: Path) -> None:
    (tmp_path / "var/lib/dpkg").mkdir(parents=True)
    (tmp_path / "var/lib/dpkg/status").write_text(DPKG_STATUS)
    assert sysdig_part.root_sysdig_version(tmp_path) == "0.41.4"
    (tmp_path / "var/lib/dpkg/status").write_text(DPKG_STATUS.replace("install ok installed", "deinstall ok", 1))
    with pytest.raises(EngineError, match="no installed sysdig package"):
        sysdig_part.root_sysdig_version(tmp_path)


def test_mounts_under_finds_nested_mounts_deepest_first() -> None:
    found = install_steps.mounts_under(Path("/"))
    assert "/" in found
    assert found == sorted(found, key=len, reverse=True)
    assert install_steps.mounts_under(Path("/nonexistent-tor-sets-path")) == []


def test_install_rejects_unknown_parts() -> None:
    with pytest.raises(EngineUnavailable, match="unknown engine part 'falcon'"):
        setup.install(["falcon"])


def test_install_skips_what_is_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sysdig = tmp_path / "sysdig"
    sysdig.write_text("#!/bin/sh\n")
    sysdig.chmod(0o755)
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/sysdig").write_text("")
    monkeypatch.setattr(paths, "LEGACY_SYSDIG", sysdig)
    monkeypatch.setattr(install_steps, "run", _forbidden)
    steps = setup.install(["legacy", "modern"], root=root)
    assert [(s.part, s.name, s.done) for s in steps] == [("legacy", "sysdig", False), ("modern", "sid root", False)]


def _forbidden(argv: Sequence[str], what: str, **kwargs: object) -> str:
    raise AssertionError(f"nothing should run, got {argv}")


class Recorder:
    """Stands in for ``steps.run``: records commands, fails those matching ``fail_on`` (once each)."""

    def __init__(self, fail_on: Sequence[str] = ()) -> None:
        self.calls: list[list[str]] = []
        self.fail_on = list(fail_on)

    def __call__(self, argv: Sequence[str], what: str, **kwargs: object) -> str:
        self.calls.append(list(argv))
        text = " ".join(argv)
        for pattern in self.fail_on:
            if pattern in text:
                self.fail_on.remove(pattern)
                raise EngineError(f"{what} failed (exit 100): E: Unable to locate package")
        if argv[0] == "debootstrap":
            target = Path(argv[-1])
            (target / "usr/bin").mkdir(parents=True)
            (target / "etc").mkdir()
        if argv[0] == "chroot" and "install" in argv:
            (Path(argv[1]) / "usr/bin/sysdig").write_text("")
        return ""


@pytest.fixture
def as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)


@pytest.mark.usefixtures("as_root")
def test_apt_updates_only_when_lists_are_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder()
    monkeypatch.setattr(install_steps, "run", rec)
    monkeypatch.setattr(install_steps, "_apt_lists_empty", lambda: False)
    install_steps.apt_install(["sysdig"], "legacy")
    assert rec.calls == [["apt-get", "install", "-y", "sysdig"]]
    rec.calls.clear()
    monkeypatch.setattr(install_steps, "_apt_lists_empty", lambda: True)
    install_steps.apt_install(["sysdig"], "legacy")
    assert rec.calls == [["apt-get", "update"], ["apt-get", "install", "-y", "sysdig"]]


@pytest.mark.usefixtures("as_root")
def test_apt_updates_and_retries_after_a_failed_install(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder(fail_on=["apt-get install"])
    monkeypatch.setattr(install_steps, "run", rec)
    monkeypatch.setattr(install_steps, "_apt_lists_empty", lambda: False)
    install_steps.apt_install(["docker.io"], "docker")
    assert rec.calls == [
        ["apt-get", "install", "-y", "docker.io"],
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "docker.io"],
    ]


def test_steps_that_need_root_say_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(paths, "LEGACY_SYSDIG", tmp_path / "absent")
    with pytest.raises(EngineUnavailable, match=r"legacy needs root: run `tor-sets engines install` as root"):
        setup.install(["legacy"])


@pytest.mark.usefixtures("as_root")
def test_modern_builds_beside_the_final_root_and_renames(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    rec = Recorder()
    monkeypatch.setattr(install_steps, "run", rec)
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/sbin/{name}")
    monkeypatch.setattr(sysdig_part, "root_sysdig_version", lambda root: "0.41.4")
    root = tmp_path / "engines" / "sid-root"
    (step,) = setup.install(["modern"], root=root)
    assert step.done and (root / "usr/bin/sysdig").exists()
    debootstrap, apt, clean = rec.calls
    tmp = Path(debootstrap[-1])
    assert debootstrap[:3] == ["debootstrap", "--variant=minbase", "sid"]
    assert tmp.parent == root.parent and tmp.name.startswith("sid-root.tmp-")
    assert apt == [
        "chroot",
        str(tmp),
        "apt-get",
        "install",
        "-y",
        "--no-install-recommends",
        "sysdig",
        "libfalcosecurity0-dev",
    ]
    assert clean == ["chroot", str(tmp), "apt-get", "clean"]
    assert sorted(p.name for p in root.parent.iterdir()) == ["sid-root"]


@pytest.mark.usefixtures("as_root")
def test_modern_never_leaves_a_half_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(install_steps, "run", Recorder(fail_on=["apt-get install"]))
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/sbin/{name}")
    root = tmp_path / "engines" / "sid-root"
    with pytest.raises(EngineError, match="apt-get install in the root failed"):
        setup.install(["modern"], root=root)
    assert list(root.parent.iterdir()) == []


@pytest.mark.usefixtures("as_root")
def test_modern_clears_leftovers_of_an_interrupted_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(install_steps, "run", Recorder())
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/sbin/{name}")
    monkeypatch.setattr(sysdig_part, "root_sysdig_version", lambda root: "0.41.4")
    root = tmp_path / "engines" / "sid-root"
    (root.parent / "sid-root.tmp-dead/usr").mkdir(parents=True)
    setup.install(["modern"], root=root)
    assert sorted(p.name for p in root.parent.iterdir()) == ["sid-root"]


def test_a_stray_root_folder_without_sysdig_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "sid-root"
    root.mkdir()
    with pytest.raises(EngineError, match="exists but holds no sysdig"):
        setup.install(["modern"], root=root)


def test_docker_state_ignores_a_pid_that_is_not_dockerd(private_cache: Path) -> None:
    state = private_cache / "docker" / docker_part.STATE_FILE
    state.parent.mkdir(parents=True)
    doc = {"pid": os.getpid(), "data_root": "/d", "log": "/l", "started_at": 1.0, "started_by": "tor-sets"}
    state.write_text(json.dumps(doc))
    assert setup.docker_state() is None
    assert setup.stop_docker() is None  # never signals a process that is not our dockerd
    assert not state.exists()


def test_a_fifo_as_the_dockerd_state_is_neither_read_nor_replaced(private_cache: Path) -> None:
    import stat
    import threading

    state = private_cache / "docker" / docker_part.STATE_FILE
    state.parent.mkdir(parents=True)
    os.mkfifo(state)
    found: list[object] = []
    reader = threading.Thread(target=lambda: found.append(setup.docker_state()), daemon=True)
    reader.start()
    reader.join(30)  # a bound on the wait: reading the state must not block on the FIFO
    assert not reader.is_alive() and found == [None]
    with pytest.raises(EngineError, match=r"cannot write the dockerd state .*: it is a FIFO, not a regular file$"):
        docker_part._write_state(setup.DockerState(os.getpid(), "/d", "/l", 1.0))
    assert stat.S_ISFIFO(os.lstat(state).st_mode)


def test_stop_docker_without_state_does_nothing() -> None:
    assert setup.stop_docker() is None
