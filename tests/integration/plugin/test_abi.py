"""The plugin's C ABI, driven by ctypes as a plugin framework would, without an engine.

Needs gcc and the plugin API header (the host's libfalcosecurity0-dev or the modern engine's sid root), hence an
integration test. The same scenarios also run against a build with AddressSanitizer and UndefinedBehaviorSanitizer
(any finding aborts the run): malformed events, tables replaced, corrupt and missing, a FIFO and a huge sparse file
at the table path, valid tables swapped while extraction runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.support import plugin_abi
from tor_sets.errors import TorSetsError
from tor_sets.plugin.native import compile_plugin, find_include_dir
from tor_sets.plugin.rules import (
    EVENT_SCHEMA_VERSION,
    FIELDS,
    METRICS,
    PLUGIN_NAME,
    PLUGIN_VERSION,
    REQUIRED_API_VERSION,
)
from tor_sets.plugin.table import encode

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def include_dir() -> Path:
    try:
        return find_include_dir()
    except TorSetsError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory, include_dir: Path) -> plugin_abi.Plugin:
    return plugin_abi.Plugin(compile_plugin(tmp_path_factory.mktemp("abi"), include_dir=include_dir))


def test_identity_fields_and_event_types(plugin: plugin_abi.Plugin, tmp_path: Path) -> None:
    assert plugin.text("get_name") == PLUGIN_NAME
    assert plugin.text("get_version") == PLUGIN_VERSION
    assert plugin.text("get_required_api_version") == REQUIRED_API_VERSION == "3.6.0"
    assert json.loads(plugin.text("get_extract_event_sources")) == ["syscall"]
    assert tuple(f["name"] for f in plugin.fields) == FIELDS
    # no field is a suggested output: Falco's default append_output would add it to every syscall rule's alert
    assert not [f["name"] for f in plugin.fields if f.get("addOutput")]
    table = tmp_path / "tor.table"
    table.write_bytes(encode(plugin_abi.TABLE_V1))
    state = plugin.init(plugin_abi.config(table))
    try:
        assert plugin.event_types(state) == [23, 247, 249, 389]
    finally:
        state.close()
    assert plugin.event_types(None) == []  # without a state: no filter, extraction ignores unknown types
    schema_type = plugin_abi.ctypes.c_int(-1)
    schema = json.loads(plugin.lib.plugin_get_init_schema(plugin_abi.ctypes.byref(schema_type)))
    assert schema_type.value == 1 and schema["required"] == ["table"]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("", "must be a JSON object"),
        ("[]", "must be a JSON object"),
        ("{}", '"table"'),
        ('{"table": ""}', '"table"'),
        ('{"table": "/x", "interval": 5}', 'unknown key "interval"'),
        ('{"table": "/x", "check_interval_s": -1}', "check_interval_s"),
        ('{"table": "/x", "check_interval_s": "5"}', "expected a number"),
        ('{"table": "/x"} trailing', "trailing characters"),
        ('{"table": "/x\\ud800"}', "surrogate"),
        ('{"table": "/nonexistent/t\\u00e9.table"}', "cannot open /nonexistent/t\u00e9.table"),
    ],
)
def test_init_rejects_bad_configs(plugin: plugin_abi.Plugin, config: str, message: str) -> None:
    state = plugin.init(config)
    try:
        assert state.rc == plugin_abi.FAILURE
        assert message in state.last_error
    finally:
        state.close()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[:-1], "size mismatch"),
        (lambda b: b"XORSETS\0" + b[8:], "bad magic"),
        (lambda b: b[:8] + b"\x02" + b[9:], "unsupported table version"),
        (lambda b: b[:64] + bytes([b[64] ^ 1]) + b[65:], "checksum mismatch"),
        (lambda b: b[:30], "shorter than the header"),
    ],
)
def test_init_rejects_bad_tables(plugin: plugin_abi.Plugin, tmp_path: Path, mutate: object, message: str) -> None:
    path = tmp_path / "bad.table"
    path.write_bytes(mutate(encode(plugin_abi.TABLE_V1)))  # type: ignore[operator]
    state = plugin.init(plugin_abi.config(path))
    try:
        assert state.rc == plugin_abi.FAILURE
        assert message in state.last_error
    finally:
        state.close()


def test_required_event_schema_version(plugin: plugin_abi.Plugin, tmp_path: Path) -> None:
    """Live capture in Falco 0.42+ (libs check_required_schema_version) needs major 4 and a minor <= the running one."""
    table = tmp_path / "tor.table"
    table.write_bytes(encode(plugin_abi.TABLE_V1))
    state = plugin.init(plugin_abi.config(table))
    try:
        for handle in (None, state.handle):
            declared = plugin.lib.plugin_get_required_event_schema_version(handle).decode()
            assert declared == EVENT_SCHEMA_VERSION
            major, minor, patch = (int(part) for part in re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", declared).groups())  # type: ignore[union-attr]
            assert major == 4 and (minor, patch) <= (5, 1)  # Falco 0.44.1 runs schema 4.5.1
    finally:
        state.close()


def test_metrics(plugin: plugin_abi.Plugin, tmp_path: Path) -> None:
    table = tmp_path / "tor.table"
    table.write_bytes(encode(plugin_abi.TABLE_V1))
    state = plugin.init(plugin_abi.config(table))
    try:
        metrics = state.metrics()
        assert tuple(metrics) == METRICS
        assert metrics["table_loads"] == (plugin_abi.METRIC_MONOTONIC, 1)
        assert metrics["table_rejects"] == (plugin_abi.METRIC_MONOTONIC, 0)
        assert metrics["table_age_s"][0] == plugin_abi.METRIC_NON_MONOTONIC
        assert metrics["table_age_s"][1] >= time.time() - plugin_abi.TABLE_V1.published - 60
    finally:
        state.close()
    # a table without publication time has no age
    table.write_bytes(encode(dataclasses.replace(plugin_abi.TABLE_V1, published=0)))
    state = plugin.init(plugin_abi.config(table))
    try:
        assert tuple(state.metrics()) == ("table_loads", "table_rejects")
    finally:
        state.close()
    count = plugin_abi.ctypes.c_uint32(99)
    assert not plugin.lib.plugin_get_metrics(None, plugin_abi.ctypes.byref(count)) and count.value == 0


@pytest.fixture(scope="module")
def state(plugin: plugin_abi.Plugin, tmp_path_factory: pytest.TempPathFactory):
    """One plugin state on TABLE_V1, its start and metrics checked, shared by the extraction cases."""
    started, _ = plugin_abi.started(plugin, tmp_path_factory.mktemp("extraction"), plugin_abi.require)
    yield started
    started.close()


@pytest.mark.parametrize(
    ("event", "right"),
    [(make, right) for _, make, right in plugin_abi.EXTRACTIONS],
    ids=[what for what, _, _ in plugin_abi.EXTRACTIONS],
)
def test_extraction(state: plugin_abi.State, event, right) -> None:
    got = state.extract(event())
    assert right(got), got


def test_reloads_of_corrupt_good_and_missing_tables(plugin: plugin_abi.Plugin, tmp_path: Path) -> None:
    plugin_abi.reload_scenario(plugin, tmp_path, plugin_abi.require)


def test_a_fifo_at_the_table_path_never_blocks(plugin: plugin_abi.Plugin, tmp_path: Path) -> None:
    """Issue 13.1: at init, refused at once; swapped in, the loaded table stays, one complaint, no blocked call."""
    plugin_abi.fifo_scenario(plugin, tmp_path, plugin_abi.require)


def test_a_table_over_the_size_limit_is_refused_unread(plugin: plugin_abi.Plugin, tmp_path: Path) -> None:
    """Issue 13.2: a sparse file one byte over 64 MiB is refused from its size; the peak RSS does not grow."""
    plugin_abi.size_limit_scenario(plugin, tmp_path, plugin_abi.require)


def test_a_valid_table_swapped_under_load(plugin: plugin_abi.Plugin, tmp_path: Path) -> None:
    """Issue 13.2: 3 MB tables replaced six times while extraction runs; loads happen on the loader thread."""
    plugin_abi.swap_under_load_scenario(plugin, tmp_path, plugin_abi.require)


@pytest.mark.parametrize(
    ("sanitizers", "runtime_name", "options"),
    [
        (
            "address,undefined",
            "libasan.so",
            {
                "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",  # CPython itself does not free everything at exit
                "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
            },
        ),
        # the loader thread against extraction, metrics and last error: any data race aborts the run
        ("thread", "libtsan.so", {"TSAN_OPTIONS": "halt_on_error=1"}),
    ],
    ids=["asan-ubsan", "tsan"],
)
def test_under_sanitizers(
    include_dir: Path, tmp_path: Path, sanitizers: str, runtime_name: str, options: dict[str, str]
) -> None:
    runtime = subprocess.run(["gcc", f"-print-file-name={runtime_name}"], capture_output=True, text=True, check=False)
    library_path = Path(runtime.stdout.strip())
    if runtime.returncode != 0 or not library_path.is_absolute() or not library_path.exists():
        pytest.skip(f"gcc has no {runtime_name} runtime here")
    library = compile_plugin(
        tmp_path / "build",
        include_dir=include_dir,
        extra_flags=("-O1", f"-fsanitize={sanitizers}", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"),
    )
    workdir = tmp_path / "run"
    workdir.mkdir()
    env = {**os.environ, "LD_PRELOAD": str(library_path.resolve()), **options}
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.plugin_abi", str(library), str(workdir)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    failed = json.loads(done.stdout.strip().splitlines()[-1])  # every scenario's failed checks, each named
    assert not failed, "\n".join(failed)


@pytest.mark.parametrize("level", ["-O0", "-O3"])
def test_compiles_cleanly_with_strict_warnings(include_dir: Path, tmp_path: Path, level: str) -> None:
    strict = ("-Wpedantic", "-Wshadow", "-Wformat=2", "-Wcast-qual", "-Wconversion", "-Wno-sign-conversion")
    compile_plugin(tmp_path, include_dir=include_dir, extra_flags=(level, *strict, "-Wmissing-prototypes"))
