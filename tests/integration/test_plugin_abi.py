"""The plugin's C ABI, driven by ctypes as a plugin framework would, without an engine.

Needs gcc and the plugin API header (the host's libfalcosecurity0-dev or the modern engine's sid root), hence an
integration test. The same scenario also runs against a build with AddressSanitizer and UndefinedBehaviorSanitizer
(any finding aborts the run): malformed events, tables replaced, corrupt and missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import plugin_abi
from tor_sets.errors import TorSetsError
from tor_sets.plugin.native import compile_plugin, find_include_dir
from tor_sets.plugin.rules import FIELDS, PLUGIN_NAME, PLUGIN_VERSION
from tor_sets.plugin.table import encode

pytestmark = pytest.mark.integration

REPO = Path(__file__).parent.parent.parent


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
    assert plugin.text("get_required_api_version") == "3.3.0"
    assert json.loads(plugin.text("get_extract_event_sources")) == ["syscall"]
    assert tuple(f["name"] for f in plugin.fields) == FIELDS
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


def test_extraction_and_reloads(plugin: plugin_abi.Plugin, tmp_path: Path) -> None:
    assert plugin_abi.run_scenario(plugin, tmp_path) == []


def test_under_address_and_undefined_behaviour_sanitizers(include_dir: Path, tmp_path: Path) -> None:
    runtime = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True, check=False)
    libasan = Path(runtime.stdout.strip())
    if runtime.returncode != 0 or not libasan.is_absolute() or not libasan.exists():
        pytest.skip("gcc has no AddressSanitizer runtime here")
    library = compile_plugin(
        tmp_path / "asan",
        include_dir=include_dir,
        extra_flags=("-O1", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"),
    )
    env = {
        **os.environ,
        "LD_PRELOAD": str(libasan.resolve()),
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",  # CPython itself does not free everything at exit
        "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.plugin_abi", str(library), str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize("level", ["-O0", "-O3"])
def test_compiles_cleanly_with_strict_warnings(include_dir: Path, tmp_path: Path, level: str) -> None:
    strict = ("-Wpedantic", "-Wshadow", "-Wformat=2", "-Wcast-qual", "-Wconversion", "-Wno-sign-conversion")
    compile_plugin(tmp_path, include_dir=include_dir, extra_flags=(level, *strict, "-Wmissing-prototypes"))
