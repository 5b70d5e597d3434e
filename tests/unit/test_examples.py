"""The docs' examples of tor-sets' output are what the code writes today (``make examples`` regenerates them)."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import ModuleType

import yaml

from tests.conftest import REPO
from tests.support.scripts import load_script
from tor_sets.falco.generate import OUTBOUND_RULE, TUNING_MACRO


def examples_script() -> ModuleType:
    """scripts/examples.py, the code behind ``make examples``."""
    return load_script("examples")


def copy_docs(tmp_path: Path) -> Path:
    shutil.copy(REPO / "README.md", tmp_path / "README.md")
    shutil.copytree(REPO / "docs", tmp_path / "docs", ignore=shutil.ignore_patterns("*.png", "*.json"))
    return tmp_path


def test_examples_are_current():
    stale = examples_script().stale(REPO)
    assert stale == [], f"stale examples, run `make examples`: {', '.join(map(str, stale))}"


def test_examples_cover_the_rules_the_docs_show():
    script = examples_script()
    wanted = script.expected(REPO)
    assert {
        Path("docs/examples/rules/tor_rules.yaml"),
        Path("docs/examples/configmap.yaml"),
        Path("docs/examples/helm-values.yaml"),
        Path("README.md"),
        Path("docs/tuning.md"),
    } <= set(wanted)
    # the ConfigMap and the chart values carry the example rules file byte for byte
    rules = wanted[Path("docs/examples/rules/tor_rules.yaml")]
    configmap = yaml.safe_load(wanted[Path("docs/examples/configmap.yaml")])
    values = yaml.safe_load(wanted[Path("docs/examples/helm-values.yaml")])
    embedded = {configmap["data"]["tor_rules.yaml"], values["customRules"]["tor_rules.yaml"]}
    assert len(embedded) == 1 and rules.endswith(embedded.pop())
    # the README shows the rule as the full build writes it, tuning hook included
    readme = wanted[Path("README.md")]
    assert f"- rule: {OUTBOUND_RULE}" in readme and f"and not {TUNING_MACRO}" in readme


def test_a_stale_example_or_block_is_found_and_rewritten(tmp_path):
    script = examples_script()
    root = copy_docs(tmp_path)
    assert script.stale(root) == []
    rules = root / "docs/examples/rules/tor_rules.yaml"
    rules.write_text(rules.read_text().replace("maturity_incubating", "maturity_sandbox"))
    readme = root / "README.md"
    readme.write_text(readme.read_text().replace(f"and not {TUNING_MACRO}", ""))
    tuning = root / "docs/examples/rules/tuning-append.yaml"
    tuning.write_text(tuning.read_text() + "# a change to a hand-written example reaches the docs that show it\n")
    assert script.stale(root) == [
        Path("docs/examples/rules/tor_rules.yaml"),
        Path("README.md"),
        Path("docs/tuning.md"),
    ]
    assert "a change to a hand-written example" in script.expected(root)[Path("docs/tuning.md")]
