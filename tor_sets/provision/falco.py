"""Real Falco on this machine: the official image when it can be pulled, else built from the pinned upstream source.

Exports :func:`install` (``tor-sets engines install falco``), :func:`find_sources`, :class:`Sources` and the build
recipe's constants. What is installed is read with :func:`tor_sets.engines.paths.falco_installed`.

From source (docs/engines.md tells the story; every trap below was met on these machines):

1. **build root**: a Debian trixie root (debootstrap, then the compilers, cmake and the libraries Falco links
   against from Debian, plus clang/bpftool/libbpf for the modern eBPF probe, and the headers of
   ``libvalijson-dev`` unpacked with ``dpkg-deb -x`` so that Qt, Poco and MariaDB are not dragged in). Cached
   under ``ENGINES/falco/build-root``, keyed by its package list; rebuilt when the list changes.
2. **sources**: the three ``git archive`` tarballs (``falco-V.tar.gz``, ``libs-V.tar.gz``, ``driver-V.tar.gz``)
   from the folder given with ``--falco-source`` or ``$TOR_SETS_FALCO_SOURCE``; the libs and driver versions are
   the ones Falco's own cmake files pin. Two patches: drop ``add_dependencies(falco container)`` (it downloads the
   container plugin) and set the libs/driver version strings that a tarball cannot tell cmake.
3. **configure** and 4. **compile**: cmake with every download switched off (http_output on, with Debian's
   libcurl, as in the official image), then ``make falco``, both under
   ``unshare --net`` so that a forgotten download fails loudly instead of hanging.
5. **runtime root**: the stripped binary, its ``ldd`` closure and loader, the release's ``falco.yaml`` with a
   drop-in for containers, and a tiny ``setrlimit`` shim for live capture (see :data:`MEMLOCK_SHIM`). About 43 MB.
6. **image**: ``docker import`` of the runtime root as ``tor-sets/falco:V`` (labelled with the build key).

Everything is keyed by the sha256 of the three tarballs and :data:`RECIPE`: a warm install checks and returns in
seconds; changed sources rebuild. Logs go to ``ENGINES/falco/V/logs/STEP.log``, and a failed step names itself
and its log.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tor_sets.engines import docker as _docker
from tor_sets.engines.paths import (
    DEFAULT_FALCO_VERSION,
    FALCO_IMAGE_REPO,
    FALCO_OFFICIAL_REPO,
    FALCO_SOURCE_ENV,
    FalcoInstall,
    falco_dir,
    falco_installed,
)
from tor_sets.engines.process import run_process
from tor_sets.errors import EngineError, EngineUnavailable
from tor_sets.provision import steps
from tor_sets.provision.docker import import_root
from tor_sets.provision.steps import Step

__all__ = [
    "BUILD_PACKAGES",
    "RECIPE",
    "Sources",
    "find_sources",
    "install",
    "install_times",
]

log = logging.getLogger(__name__)

#: bump when the build below changes in a way that changes the result (part of every cache key)
RECIPE = "tor-sets-falco-build-2"
#: Debian release of the build root (the host's bookworm has too old a glibc for this Falco)
SUITE = "trixie"
#: what the build root gets beyond the minimal base
BUILD_PACKAGES: tuple[str, ...] = (
    "cmake",
    "g++",
    "make",
    "pkg-config",
    "file",
    "binutils",
    "libyaml-cpp-dev",
    "nlohmann-json3-dev",
    "libcxxopts-dev",
    "libtbb-dev",
    "libjsoncpp-dev",
    "libre2-dev",
    "uthash-dev",
    "libelf-dev",
    "zlib1g-dev",
    "clang",
    "llvm",
    "bpftool",
    "libbpf-dev",
    "libcurl4-openssl-dev",
)
#: headers only: the package itself would pull in Qt5, Poco and MariaDB
HEADER_PACKAGES: tuple[str, ...] = ("libvalijson-dev",)
#: libs' cmake sets several of these back to ON as cache defaults: each is spelled out
_UNBUNDLED = ("TBB", "JSONCPP", "VALIJSON", "RE2", "UTHASH", "ZLIB", "CXXOPTS", "NLOHMANN_JSON", "YAMLCPP", "LIBELF")
CMAKE_FLAGS: tuple[str, ...] = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DUSE_BUNDLED_DEPS=OFF",
    "-DMINIMAL_BUILD=ON",
    "-DBUILD_HTTP_OUTPUT=ON",  # with Debian's libcurl: alerts can be POSTed (tor-sets enrich --listen takes them)
    "-DBUILD_DRIVER=OFF",
    "-DBUILD_LIBSCAP_GVISOR=OFF",
    "-DENABLE_DKMS=OFF",
    "-DCREATE_TEST_TARGETS=OFF",
    "-DBUILD_FALCO_UNIT_TESTS=OFF",
    "-DBUILD_LIBSCAP_EXAMPLES=OFF",
    "-DBUILD_LIBSINSP_EXAMPLES=OFF",
    "-DADD_FALCOCTL_DEPENDENCY=OFF",
    "-DUSE_DYNAMIC_LIBELF=ON",
    "-DUSE_SHARED_LIBELF=ON",
    *(f"-DUSE_BUNDLED_{name}=OFF" for name in (*_UNBUNDLED, "BS_THREADPOOL")),
    # the modern eBPF probe: libs' option switches it on even in a minimal build
    "-DBUILD_LIBSCAP_MODERN_BPF=ON",
    "-DUSE_BUNDLED_LIBBPF=OFF",
    "-DMODERN_CLANG_EXE=/usr/bin/clang",
    "-DMODERN_BPFTOOL_EXE=/usr/sbin/bpftool",
)
#: the C source of the live-capture shim shipped beside this module
MEMLOCK_SHIM = "memlock_shim.c"
#: the image's config drop-in: no syslog in a container, no config watching in a one-shot run
IMAGE_DROP_IN = """\
# tor-sets: a container has no /dev/log, and a replay needs no config watching
log_syslog: false
syslog_output:
  enabled: false
watch_config_files: false
"""
_NO_RULES = "# tor-sets' Falco image ships no default rules: pass yours with -r or mount them into /etc/falco/rules.d\n"


@dataclass(frozen=True, slots=True)
class Sources:
    """The three tarballs a build uses, and the key of everything built from them.

    Attributes:
        falco, libs, driver: the tarballs.
        version, libs_version, driver_version: what they hold.
        key: sha256 over the tarballs' sha256 and :data:`RECIPE` (first 16 hex digits).
    """

    falco: Path
    libs: Path
    driver: Path
    version: str
    libs_version: str
    driver_version: str
    key: str


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pinned(falco: Path, module: str, variable: str) -> str:
    """A version that Falco's cmake module pins: ``set(VARIABLE "x")`` inside ``if(NOT VARIABLE)``."""
    with tarfile.open(falco) as archive:
        member = next((m for m in archive.getmembers() if m.name.endswith(f"cmake/modules/{module}")), None)
        handle = archive.extractfile(member) if member is not None else None
        if handle is None:
            raise EngineUnavailable(f"falco: {falco} holds no cmake/modules/{module}: not a Falco source tarball")
        text = handle.read().decode("utf-8", errors="replace")
    found: list[str] = re.findall(rf'set\({variable} "([^"]+)"\)', text)
    pinned = [v for v in found if v != "0.0.0-local"]
    if not pinned:
        raise EngineUnavailable(f"falco: cannot tell which {variable} {falco.name} pins")
    return pinned[0]


def find_sources(folder: Path, version: str | None = None) -> Sources:
    """The tarballs of one Falco release in ``folder``, with the libs and driver it pins.

    Args:
        folder: holds ``falco-V.tar.gz``, ``libs-L.tar.gz`` and ``driver-D.tar.gz`` (``git archive`` of the tags).
        version: which Falco when the folder holds several (default: the newest).

    Raises:
        EngineUnavailable: a tarball is missing; the message names the files and the folder.
    """
    if not folder.is_dir():
        raise EngineUnavailable(
            f"falco: the Falco source folder {folder} does not exist; pass --falco-source DIR or set "
            f"{FALCO_SOURCE_ENV} to a folder holding falco-VERSION.tar.gz, libs-VERSION.tar.gz and "
            "driver-VERSION.tar.gz (git archive tarballs of the upstream tags)"
        )
    found = {
        m[1]: path
        for path in folder.glob("falco-*.tar.gz")
        if (m := re.fullmatch(r"falco-(\d+\.\d+\.\d+)\.tar\.gz", path.name))
    }
    if not found:
        raise EngineUnavailable(f"falco: no falco-VERSION.tar.gz in {folder}")
    if version is None:
        version = max(found, key=lambda v: tuple(int(p) for p in v.split(".")))
    if version not in found:
        raise EngineUnavailable(f"falco: no falco-{version}.tar.gz in {folder} (found: {', '.join(sorted(found))})")
    falco = found[version]
    libs_version = _pinned(falco, "falcosecurity-libs.cmake", "FALCOSECURITY_LIBS_VERSION")
    driver_version = _pinned(falco, "driver.cmake", "DRIVER_VERSION")
    libs = folder / f"libs-{libs_version}.tar.gz"
    driver = folder / f"driver-{driver_version}.tar.gz"
    for path, what in ((libs, "falcosecurity/libs"), (driver, "the driver/ folder of falcosecurity/libs")):
        if not path.is_file():
            raise EngineUnavailable(
                f"falco: Falco {version} pins {what} {path.name[:-7].split('-', 1)[1]}; put {path.name} "
                f"(git archive of that tag) into {folder}"
            )
    digest = hashlib.sha256(RECIPE.encode())
    for path in (falco, libs, driver):
        digest.update(_sha256(path).encode())
    return Sources(falco, libs, driver, version, libs_version, driver_version, digest.hexdigest()[:16])


# --- steps ------------------------------------------------------------------------------------------------------


class _Build:
    """The state shared by the steps of one install."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources
        self.home = falco_dir(sources.version)
        self.logs = self.home / "logs"
        self.build_root = falco_dir() / "build-root"
        self.work = self.build_root / "src" / sources.key  # inside the root: /src/KEY

    def log_file(self, name: str) -> Path:
        self.logs.mkdir(parents=True, exist_ok=True)
        path = self.logs / f"{name.replace(' ', '-')}.log"
        path.write_bytes(b"")
        return path

    def inside(self, path: Path) -> str:
        """``path`` (under the build root) as the root sees it."""
        return "/" + str(path.relative_to(self.build_root))

    def chroot(
        self, argv: list[str], what: str, log_file: Path, *, offline: bool = False, capture: bool = False
    ) -> str:
        env = {"PATH": steps.CHROOT_PATH, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
        prefix = ["unshare", "--net"] if offline else []
        argv = [*prefix, "chroot", str(self.build_root), *argv]
        return steps.run(argv, what, env=env, log_file=log_file, capture=capture)

    @property
    def compiled_marker(self) -> Path:
        """Written when ``make falco`` finished for this key: a later step that fails does not cost a rebuild."""
        return self.work / ".tor-sets-compiled"

    def compiled(self) -> bool:
        return self.compiled_marker.is_file() and (self.work / "build/userspace/falco/falco").is_file()

    # 1
    def root(self) -> tuple[bool, str]:
        wanted = "\n".join((SUITE, *BUILD_PACKAGES, *HEADER_PACKAGES)) + "\n"
        marker = self.build_root / ".tor-sets-packages"
        if marker.is_file() and marker.read_text() == wanted:
            return False, f"present ({self.build_root})"
        steps.need_root("falco: build root")
        if shutil.which("debootstrap") is None:
            steps.apt_install(["debootstrap"], "falco")
        log_file = self.log_file("build-root")
        self.build_root.parent.mkdir(parents=True, exist_ok=True)
        for stale in [*self.build_root.parent.glob("build-root.tmp-*"), self.build_root]:
            steps.discard(stale)
        tmp = Path(tempfile.mkdtemp(prefix="build-root.tmp-", dir=self.build_root.parent))
        try:
            tmp.chmod(0o755)
            steps.run(["debootstrap", "--variant=minbase", SUITE, str(tmp)], "debootstrap", log_file=log_file)
            steps.require_unmounted(tmp, "finish")
            steps.chroot_apt_install(tmp, BUILD_PACKAGES, "falco", log_file=log_file)
            env = {"PATH": steps.CHROOT_PATH, "DEBIAN_FRONTEND": "noninteractive"}
            script = (
                "cd /tmp && apt-get download "
                + " ".join(HEADER_PACKAGES)
                + " && for d in *.deb; do dpkg-deb -x $d /; done && rm -f *.deb"
            )
            steps.run(["chroot", str(tmp), "sh", "-c", script], "unpack header packages", env=env, log_file=log_file)
            steps.require_unmounted(tmp, "finish")
            (tmp / ".tor-sets-packages").write_text(wanted)
            os.rename(tmp, self.build_root)
        except BaseException:
            steps.discard(tmp)
            raise
        return True, f"Debian {SUITE} with {len(BUILD_PACKAGES) + len(HEADER_PACKAGES)} packages in {self.build_root}"

    # 2
    def unpack(self) -> tuple[bool, str]:
        if self.compiled():
            return False, f"built earlier in {self.work}"
        steps.discard(self.work)
        for name, tarball in (
            ("falco", self.sources.falco),
            ("libs", self.sources.libs),
            ("driver", self.sources.driver),
        ):
            target = self.work / name
            target.mkdir(parents=True)
            steps.run(
                ["tar", "-xzf", str(tarball), "-C", str(target), "--strip-components=1", "--no-same-owner"],
                f"unpack {tarball.name}",
                log_file=self.log_file(f"unpack-{name}"),
            )
        falco = self.work / "falco"
        _patch(falco / "CMakeLists.txt", r"(?m)^\s*add_dependencies\(falco container\)\s*$", "# tor-sets: no download")
        for module, variable, value in (
            ("falcosecurity-libs.cmake", "FALCOSECURITY_LIBS_VERSION", self.sources.libs_version),
            ("driver.cmake", "DRIVER_VERSION", self.sources.driver_version),
        ):
            _patch(
                falco / "cmake/modules" / module, rf'set\({variable} "0\.0\.0-local"\)', f'set({variable} "{value}")'
            )
        (self.work / "empty-rules.yaml").write_text("")
        shutil.copyfile(_shim_source(), self.work / MEMLOCK_SHIM)
        return (
            True,
            f"Falco {self.sources.version}, libs {self.sources.libs_version}, driver {self.sources.driver_version}",
        )

    # 3
    def configure(self) -> tuple[bool, str]:
        if self.compiled():
            return False, "configured earlier"
        build = self.work / "build"
        build.mkdir(exist_ok=True)
        flags = [
            *CMAKE_FLAGS,
            f"-DFALCO_VERSION={self.sources.version}",
            f"-DFALCOSECURITY_RULES_FALCO_PATH={self.inside(self.work / 'empty-rules.yaml')}",
            f"-DFALCOSECURITY_LIBS_SOURCE_DIR={self.inside(self.work / 'libs')}",
            f"-DDRIVER_SOURCE_DIR={self.inside(self.work / 'driver' / 'driver')}",
        ]
        script = f"cd {self.inside(build)} && cmake {' '.join(flags)} {self.inside(self.work / 'falco')}"
        self.chroot(["sh", "-c", script], "cmake", self.log_file("configure"), offline=True)
        return True, "cmake configured, every download off"

    # 4
    def compile(self) -> tuple[bool, str]:
        if self.compiled():
            return False, f"compiled earlier ({self.work / 'build/userspace/falco/falco'})"
        jobs = max(1, len(os.sched_getaffinity(0)))
        script = f"cd {self.inside(self.work / 'build')} && make -j{jobs} falco"
        self.chroot(["sh", "-c", script], "make falco", self.log_file("compile"), offline=True)
        binary = self.work / "build/userspace/falco/falco"
        if not binary.is_file():
            raise EngineError(f"make finished but {binary} is missing (log: {self.logs / 'compile.log'})")
        self.compiled_marker.write_text(self.sources.key + "\n")
        return True, f"{binary.stat().st_size / 1e6:.0f} MB binary with debug information, {jobs} jobs"

    # 5
    def runtime(self) -> tuple[bool, str]:
        log_file = self.log_file("runtime-root")
        binary = self.work / "build/userspace/falco/falco"
        symbols = self.chroot(["sh", "-c", f"nm {self.inside(binary)} | grep -c ' pman_' || true"], "nm", log_file)
        probes = int(symbols.strip().splitlines()[-1] or 0)
        if probes == 0:
            raise EngineError(f"the built falco has no modern eBPF probe (no pman_ symbols; log: {log_file})")
        stripped = self.work / "falco.stripped"
        self.chroot(["strip", "-o", self.inside(stripped), self.inside(binary)], "strip", log_file)
        shim = self.work / "libmemlock_shim.so"
        self.chroot(
            [
                "gcc",
                "-shared",
                "-fPIC",
                "-O2",
                "-Wall",
                "-o",
                self.inside(shim),
                self.inside(self.work / MEMLOCK_SHIM),
                "-ldl",
            ],
            "compile the memlock shim",
            log_file,
        )
        ldd = self.chroot(["ldd", self.inside(stripped)], "ldd", log_file, capture=True)
        runtime = self.home / "runtime"
        tmp = self.home / "runtime.tmp"
        steps.discard(tmp)
        try:
            _make_runtime(self.build_root, tmp, stripped, shim, _closure(ldd), self.work / "falco")
            version = _run_version(tmp)
            if f"Falco version: {self.sources.version}" not in version:
                raise EngineError(f"the runtime root's falco reports {version.splitlines()[:1]} (log: {log_file})")
            sources = (self.sources.falco, self.sources.libs, self.sources.driver)
            _install_runtime(
                tmp,
                runtime,
                version,
                version=self.sources.version,
                key=self.sources.key,
                origin="source",
                libs=self.sources.libs_version,
                driver=self.sources.driver_version,
                sources={p.name: _sha256(p) for p in sources},
            )
        except BaseException:
            steps.discard(tmp)
            raise
        size = sum(f.stat().st_size for f in runtime.rglob("*") if f.is_file() and not f.is_symlink())
        steps.discard(self.work)  # the build tree (GBs) is not needed any more; the build root stays cached
        binary_mb = (runtime / "usr/bin/falco").stat().st_size / 1e6
        return True, f"{runtime} ({size / 1e6:.0f} MB, stripped binary {binary_mb:.1f} MB)"


def _patch(path: Path, pattern: str, replacement: str) -> None:
    text = path.read_text(encoding="utf-8")
    patched, count = re.subn(pattern, replacement, text)
    if count == 0:
        raise EngineError(
            f"cannot patch {path.name}: '{pattern}' not found (a Falco release this recipe does not know)"
        )
    path.write_text(patched, encoding="utf-8")


def _shim_source() -> Path:
    return Path(str(resources.files("tor_sets.provision") / MEMLOCK_SHIM))


def _closure(ldd: str) -> list[str]:
    """Absolute library paths in ``ldd`` output, the loader included.

    Example lines::

        libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f...)
        /lib64/ld-linux-x86-64.so.2 (0x00007f...)
        linux-vdso.so.1 (0x00007ffd...)
    """
    paths = []
    for line in ldd.splitlines():
        found = re.search(r"=>\s*(/\S+)", line) or re.match(r"\s*(/\S+)\s+\(0x", line)
        if found:
            paths.append(found[1])
        elif "=> not found" in line:
            raise EngineError(f"the built falco misses a library: {line.strip()}")
    return paths


def _resolve(root: Path, path: str) -> Path:
    """``path`` inside ``root`` with every symbolic link followed inside ``root`` (absolute targets included)."""
    parts = [p for p in path.split("/") if p]
    current = root
    hops = 0
    while parts:
        part = parts.pop(0)
        candidate = current / part
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                raise EngineError(f"too many symbolic links resolving {path} in {root}")
            target = os.readlink(candidate)
            parts = [p for p in target.split("/") if p] + parts
            if target.startswith("/"):
                current = root
            continue
        current = candidate
    return current


def _merged(path: str) -> str:
    """Where a library of the build root goes in the runtime root (merged /usr: /lib → usr/lib)."""
    for old in ("/lib/", "/lib64/", "/bin/", "/sbin/"):
        if path.startswith(old):
            return "usr" + path
    return path.lstrip("/")


def _make_runtime(
    build_root: Path, runtime: Path, binary: Path, shim: Path, libraries: list[str], falco_src: Path
) -> None:
    """Lay out the runtime root: merged-/usr symlinks, the binary, the libraries, the configuration."""
    (runtime / "usr/bin").mkdir(parents=True)
    for link in ("lib", "lib64", "bin", "sbin"):
        (runtime / "usr" / link).mkdir(exist_ok=True)
        (runtime / link).symlink_to(f"usr/{link}")
    shutil.copy2(binary, runtime / "usr/bin/falco")
    (runtime / "usr/bin/falco").chmod(0o755)
    for library in libraries:
        target = runtime / _merged(library)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(_resolve(build_root, library), target)
    (runtime / "usr/lib/tor-sets").mkdir(parents=True)
    shutil.copy2(shim, runtime / "usr/lib/tor-sets/libmemlock_shim.so")
    etc = runtime / "etc/falco"
    (etc / "config.d").mkdir(parents=True)
    (etc / "rules.d").mkdir()
    shutil.copyfile(falco_src / "falco.yaml", etc / "falco.yaml")
    (etc / "config.d/00-tor-sets-image.yaml").write_text(IMAGE_DROP_IN)
    (etc / "falco_rules.yaml").write_text(_NO_RULES)
    (etc / "falco_rules.local.yaml").write_text(_NO_RULES)
    (runtime / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (runtime / "etc/group").write_text("root:x:0:\n")
    for folder in ("tmp", "root", "proc", "sys", "dev"):
        (runtime / folder).mkdir(exist_ok=True)
    (runtime / "tmp").chmod(0o1777)


def _run_version(runtime: Path) -> str:
    install = FalcoInstall(runtime.parent, runtime)
    return steps.run(install.command(["--version"]), "falco --version")


class _FromImage:
    """The official image as the source of the runtime root and the local image."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.home = falco_dir(version)
        self.official = f"{FALCO_OFFICIAL_REPO}:{version}"
        self.pulled = False
        self.reason = ""

    def pull(self) -> tuple[bool, str]:
        try:
            _docker.require_daemon("falco")
            _docker.pull(self.official, "falco", timeout=900)
        except EngineUnavailable as exc:
            self.reason = str(exc).removeprefix("falco: ")
            return False, f"not pulled ({self.reason[:200]}); building from source"
        self.pulled = True
        return True, f"pulled {self.official}"

    def runtime(self) -> tuple[bool, str]:
        docker = _docker.docker_cli("falco")
        runtime = self.home / "runtime"
        tmp = self.home / "runtime.tmp"
        steps.discard(tmp)
        tmp.mkdir(parents=True)
        name = _docker.container_name()
        log_file = self.home / "logs" / "export.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            steps.run(
                [docker, "create", "--name", name, self.official, "/usr/bin/falco"], "docker create", log_file=log_file
            )
            try:
                script = '"$0" export "$1" | tar -x -C "$2" --no-same-owner'
                steps.run(["sh", "-c", script, docker, name, str(tmp)], "docker export", log_file=log_file)
            finally:
                steps.run([docker, "rm", "-f", name], "docker rm", log_file=log_file)
            version = _run_version(tmp)
            _install_runtime(
                tmp,
                runtime,
                version,
                version=self.version,
                key=f"image-{self.version}",
                origin="image",
                image=self.official,
            )
        except BaseException:
            steps.discard(tmp)
            raise
        return True, f"{runtime} exported from {self.official}"


def _image_key(image: str) -> str | None:
    done = run_process(
        [
            _docker.docker_cli("falco"),
            "image",
            "inspect",
            "--format",
            '{{index .Config.Labels "tor-sets.falco.key"}}',
            image,
        ],
        engine="falco",
        timeout=30,
    )
    return done.stdout.strip() if done.returncode == 0 else None


def _image(install: FalcoInstall) -> tuple[bool, str]:
    image = f"{FALCO_IMAGE_REPO}:{install.version}"
    if _image_key(image) == install.key:
        return False, f"present ({image})"
    if install.origin == "image":
        steps.run([_docker.docker_cli("falco"), "tag", f"{FALCO_OFFICIAL_REPO}:{install.version}", image], "docker tag")
        return True, f"tagged {FALCO_OFFICIAL_REPO}:{install.version} as {image}"
    import_root(install.runtime, image, labels={"tor-sets.falco.key": install.key})
    return True, f"imported {install.runtime} as {image}"


def _install_runtime(tmp: Path, runtime: Path, version_output: str, **manifest: object) -> None:
    """Write the manifest (``manifest`` plus what every runtime root records) into ``tmp`` and move it to
    ``runtime``, replacing what was there."""
    manifest |= {
        "binary_sha256": _sha256(tmp / "usr/bin/falco"),
        "modern_bpf": True,
        "falco_version_output": version_output.strip(),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (tmp / FalcoInstall.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    steps.discard(runtime)
    os.rename(tmp, runtime)


#: per release, the seconds each install step took when it last did work (a cold install's figures) and the last
#: install's total (a warm one's): ``ENGINES/falco/V/install-times.json``, read by ``tor-sets bench`` for the docs
INSTALL_TIMES = "install-times.json"


def install_times(version: str) -> dict[str, object] | None:
    """What :data:`INSTALL_TIMES` holds for ``version``: ``{"steps": {name: {"seconds", "at"}}, "last": {"seconds",
    "at", "did"}}``, or None when nothing was recorded."""
    try:
        times = json.loads((falco_dir(version) / INSTALL_TIMES).read_text())
    except (OSError, ValueError):
        return None
    return times if isinstance(times, dict) else None


def _record_times(version: str, done: list[Step], seconds: float) -> None:
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    recorded = install_times(version) or {}
    steps_done = dict(recorded.get("steps") or {})  # type: ignore[call-overload]
    steps_done.update({s.name: {"seconds": round(s.seconds, 1), "at": at} for s in done if s.done})
    last = {"seconds": round(seconds, 1), "at": at, "did": [s.name for s in done if s.done]}
    path = falco_dir(version) / INSTALL_TIMES
    try:
        path.write_text(json.dumps({"steps": steps_done, "last": last}, indent=2, sort_keys=True) + "\n")
    except OSError as exc:  # a figure for the docs, never a reason to fail an install
        log.warning("falco: cannot record the install times in %s: %s", path, exc)


def install(source: Path | None, *, version: str | None = None, pull: bool = True, image: bool = True) -> list[Step]:
    """Install Falco: reuse what the cache holds, else pull the official image, else build from source.

    Args:
        source: the folder of the source tarballs (None: only a Falco already in the cache, or the official image).
        version: the Falco release (default: the newest tarball in ``source``, else the newest installed).
        pull: try ``falcosecurity/falco:VERSION`` before building.
        image: also make the local image ``tor-sets/falco:VERSION`` (the caller makes sure a Docker daemon runs).

    Returns:
        Every step, done or skipped, in order.

    Raises:
        EngineUnavailable: no source and nothing installed; root or a tool missing.
        EngineError: a step failed (its message names the step and its log).
    """
    start = time.monotonic()
    sources = find_sources(source, version) if source is not None else None
    version = sources.version if sources is not None else version
    done: list[Step] = []
    current = falco_installed(version)
    if current is not None and (sources is None or current.key in (sources.key, f"image-{current.version}")):
        done.append(
            steps.step("falco", "runtime root", lambda: (False, f"present ({current.runtime}, {current.origin})"))
        )
    else:
        if current is None and sources is None and version is None:
            raise EngineUnavailable(
                f"falco: nothing installed and no source given: pass --falco-source DIR or set {FALCO_SOURCE_ENV} "
                "(a folder holding falco-VERSION.tar.gz, libs-VERSION.tar.gz and driver-VERSION.tar.gz)"
            )
        wanted = version or DEFAULT_FALCO_VERSION
        from_image = _FromImage(wanted)
        if pull:
            done.append(steps.step("falco", "official image", from_image.pull))
        if from_image.pulled:
            done.append(steps.step("falco", "runtime root", from_image.runtime))
        elif sources is None:
            raise EngineUnavailable(
                f"falco: {from_image.official} cannot be pulled ({from_image.reason or 'pulling is off'}) and no "
                f"source is given: pass --falco-source DIR or set {FALCO_SOURCE_ENV}"
            )
        else:
            steps.need_root("falco: building Falco")
            build = _Build(sources)
            for name, action in (
                ("build root", build.root),
                ("sources", build.unpack),
                ("configure", build.configure),
                ("compile", build.compile),
                ("runtime root", build.runtime),
            ):
                done.append(steps.step("falco", name, action))
    if image:
        present = falco_installed(version)
        if present is None:
            raise EngineError("falco: the runtime root vanished during the install")
        done.append(steps.step("falco", "image", lambda: _image(present)))
    installed = falco_installed(version)
    if installed is not None:
        _record_times(installed.version, done, time.monotonic() - start)
    return done
