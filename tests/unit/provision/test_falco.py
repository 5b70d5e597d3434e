"""Unit tests of the Falco install's decisions (no build, no Docker): sources, the closure, failures named."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from tor_sets.engines.paths import FalcoInstall, falco_installed
from tor_sets.errors import EngineError, EngineUnavailable
from tor_sets.provision import falco, steps


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "tor-sets" / "engines"


def tarball(path: Path, top: str, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


LIBS_CMAKE = 'if(NOT FALCOSECURITY_LIBS_VERSION)\n\tset(FALCOSECURITY_LIBS_VERSION "0.25.4")\nendif()\n'
DRIVER_CMAKE = 'set(DRIVER_VERSION "0.0.0-local")\nif(NOT DRIVER_VERSION)\n\tset(DRIVER_VERSION "10.2.0+driver")\n'


def sources(folder: Path, *, libs: bool = True, driver: bool = True, version: str = "0.44.1") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tarball(
        folder / f"falco-{version}.tar.gz",
        f"falco-{version}",
        {"cmake/modules/falcosecurity-libs.cmake": LIBS_CMAKE, "cmake/modules/driver.cmake": DRIVER_CMAKE},
    )
    if libs:
        tarball(folder / "libs-0.25.4.tar.gz", "libs-0.25.4", {"README.md": "libs"})
    if driver:
        tarball(folder / "driver-10.2.0+driver.tar.gz", "driver-10.2.0", {"driver/API_VERSION": "10.1.0"})
    return folder


def test_sources_are_the_versions_falco_pins(tmp_path: Path) -> None:
    found = falco.find_sources(sources(tmp_path / "src"))
    assert (found.version, found.libs_version, found.driver_version) == ("0.44.1", "0.25.4", "10.2.0+driver")
    assert len(found.key) == 16
    assert falco.find_sources(tmp_path / "src").key == found.key  # keyed by the bytes: stable
    (tmp_path / "src/libs-0.25.4.tar.gz").write_bytes(b"other bytes")
    assert falco.find_sources(tmp_path / "src").key != found.key  # changed sources rebuild


def test_the_newest_falco_of_a_folder_unless_one_is_named(tmp_path: Path) -> None:
    folder = sources(tmp_path / "src")
    sources(folder, version="0.43.0")
    assert falco.find_sources(folder).version == "0.44.1"
    assert falco.find_sources(folder, "0.43.0").version == "0.43.0"
    with pytest.raises(EngineUnavailable, match=r"no falco-0\.40\.0\.tar\.gz in .* \(found: 0\.43\.0, 0\.44\.1\)"):
        falco.find_sources(folder, "0.40.0")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"libs": False}, r"Falco 0\.44\.1 pins falcosecurity/libs 0\.25\.4; put libs-0\.25\.4\.tar\.gz"),
        ({"driver": False}, r"pins the driver/ folder of falcosecurity/libs 10\.2\.0\+driver; put driver-10"),
    ],
)
def test_a_missing_source_says_where_to_put_it(tmp_path: Path, kwargs: dict[str, bool], message: str) -> None:
    with pytest.raises(EngineUnavailable, match=message):
        falco.find_sources(sources(tmp_path / "src", **kwargs))


def test_no_source_folder_names_the_option_and_the_variable(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable, match=r"pass --falco-source DIR or set TOR_SETS_FALCO_SOURCE"):
        falco.find_sources(tmp_path / "absent")
    with pytest.raises(EngineUnavailable, match=r"nothing installed and no source given: pass --falco-source"):
        falco.install(None, pull=False, image=False)


LDD = """\
\tlinux-vdso.so.1 (0x00007ffd5a7e1000)
\tlibcurl.so.4 => /lib/x86_64-linux-gnu/libcurl.so.4 (0x00007f0782bb7000)
\tlibbpf.so.1 => /usr/lib/x86_64-linux-gnu/libbpf.so.1 (0x00007f0782b4e000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f0782cb8000)
"""


def test_the_closure_is_every_library_and_the_loader() -> None:
    assert falco._closure(LDD) == [
        "/lib/x86_64-linux-gnu/libcurl.so.4",
        "/usr/lib/x86_64-linux-gnu/libbpf.so.1",
        "/lib64/ld-linux-x86-64.so.2",
    ]
    with pytest.raises(EngineError, match="misses a library: libnope.so.1 => not found"):
        falco._closure("\tlibnope.so.1 => not found\n")
    assert len(falco._closure(LDD * 40)) == 120  # all of it, however long (ldd of Falco lists ~80 libraries)


def test_links_resolve_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/lib/x86_64-linux-gnu").mkdir(parents=True)
    (root / "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2").write_text("loader")
    (root / "lib").symlink_to("usr/lib")
    (root / "usr/lib64").mkdir()
    # an absolute link: followed inside the root, never on this machine
    (root / "usr/lib64/ld-linux-x86-64.so.2").symlink_to("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    (root / "lib64").symlink_to("usr/lib64")
    assert falco._resolve(root, "/lib64/ld-linux-x86-64.so.2").read_text() == "loader"
    assert falco._merged("/lib/x86_64-linux-gnu/libz.so.1") == "usr/lib/x86_64-linux-gnu/libz.so.1"
    assert falco._merged("/usr/lib/x86_64-linux-gnu/libz.so.1") == "usr/lib/x86_64-linux-gnu/libz.so.1"


def test_a_failed_step_names_itself_and_its_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log_file = tmp_path / "compile.log"

    def action() -> tuple[bool, str]:
        steps.run(
            ["sh", "-c", "echo building; echo 'error: no such header' >&2; exit 2"], "make falco", log_file=log_file
        )
        return True, "never"

    with pytest.raises(EngineError) as info:
        steps.step("falco", "compile", action)
    message = str(info.value)
    assert message.startswith("falco: step 'compile' failed after 0 s: make falco failed (exit 2): ")
    assert "error: no such header" in message and message.endswith(f"(log: {log_file})")
    assert "building" in log_file.read_text()


def test_a_warm_install_runs_nothing(private_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = sources(tmp_path / "src")
    key = falco.find_sources(folder).key
    runtime = private_cache / "falco/0.44.1/runtime"
    (runtime / "usr/bin").mkdir(parents=True)
    (runtime / "usr/bin/falco").write_bytes(b"")
    manifest = {"version": "0.44.1", "key": key, "origin": "source"}
    (runtime / FalcoInstall.MANIFEST).write_text(json.dumps(manifest))

    def forbidden(argv: Sequence[str], what: str, **kwargs: object) -> str:
        raise AssertionError(f"a warm install ran {argv}")

    monkeypatch.setattr(steps, "run", forbidden)
    (done,) = falco.install(folder, pull=True, image=False)
    assert (done.name, done.done) == ("runtime root", False)
    installed = falco_installed()
    assert installed is not None and installed.key == key and installed.origin == "source"


def test_building_needs_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(EngineUnavailable, match=r"falco: building Falco needs root"):
        falco.install(sources(tmp_path / "src"), pull=False, image=False)
