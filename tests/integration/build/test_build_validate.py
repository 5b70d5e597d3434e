"""``tor-sets build --validate``: real Falco loads the rules before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.falco import container_double, falco_or_skip
from tor_sets.cli import main
from tor_sets.plugin.native import compile_plugin
from tor_sets.plugin.rules import PLUGIN_VERSION

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def falco() -> None:
    falco_or_skip("falco-local")


def test_default_rules_are_validated_by_real_falco(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tor_rules.yaml"
    assert main(["build", "--offline", "--validate", "-o", str(out)]) == 0
    assert "tor-sets: validated by falco-local 0.44.1: Ok\n" in capsys.readouterr().err
    assert out.read_text().startswith("# Tor relay rules for Falco")


def test_a_refused_file_is_not_written_and_the_last_good_one_stays(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tor_rules.yaml"
    out.write_text("last good rules\n")
    argv = ["build", "--offline", "--falco-version", "0.37", "--validate", "falco-local", "-o", str(out)]
    assert main(argv) == 6
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert line.startswith("tor-sets: error: falco-local: LOAD_ERR_COMPILE_OUTPUT (Error compiling output)")
    assert line.endswith("add --load-plugin container=LIBRARY)")
    assert out.read_text() == "last good rules\n"


def test_a_profile_before_0_41_is_judged_by_falco_with_the_container_plugin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    double = container_double(tmp_path)  # TEST SCAFFOLDING: stands in for /usr/share/falco/plugins/libcontainer.so
    out = tmp_path / "tor_rules.yaml"
    argv = ["build", "--offline", "--falco-version", "0.37", "--validate", "--load-plugin"]
    assert main([*argv, f"container={double.library}", "-o", str(out)]) == 0
    assert "validated by falco-local 0.44.1: Ok" in capsys.readouterr().err
    assert "container_id=%container.id" in out.read_text()


def test_auto_hands_a_profile_before_0_41_to_the_sysdig_builds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tor_rules.yaml"
    assert main(["build", "--offline", "--falco-version", "0.37", "--validate", "-o", str(out)]) == 0
    assert "validated by sysdig-modern 0.41.4+repack: Ok" in capsys.readouterr().err


@pytest.mark.parametrize("engine", ["falco-local", "falco"])
def test_plugin_rules_are_validated_with_the_plugin_loaded(
    engine: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In the container too: the engine gets the build's table along with the library (``falco -V`` failed there
    when only the library was copied)."""
    falco_or_skip(engine)
    library = compile_plugin(tmp_path / "lib")
    out = tmp_path / "tor_plugin_rules.yaml"
    argv = ["build", "--offline", "--format", "falco-plugin", "--validate", engine]
    assert main([*argv, "--load-plugin", f"torsets={library}", "-o", str(out)]) == 0
    assert f"validated by {engine} 0.44.1: Ok" in capsys.readouterr().err
    argv = ["build", "--offline", "--format", "falco-plugin", "--validate", engine, "-o", str(out)]
    assert main(argv) == 6  # the file declares the plugin it needs: Falco names it
    err = capsys.readouterr().err
    assert f"Plugin requirement not satisfied, must load one of: torsets (>= {PLUGIN_VERSION})" in err


def test_the_table_is_no_rules_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["build", "--offline", "--format", "plugin-table", "--validate", "-o", str(tmp_path / "t")]
    assert main(argv) == 2
    assert "--validate checks rules" in capsys.readouterr().err
