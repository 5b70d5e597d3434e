"""The command transcripts the docs show are what the commands print today (``make docs`` regenerates them).

Here the transcripts that need nothing but Python; tests/integration/docs/test_transcripts.py checks those that
need real engines or root.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from types import ModuleType

from tests.conftest import REPO
from tests.support.scripts import load_script


def transcripts_script() -> ModuleType:
    """scripts/transcripts.py, the code behind ``make docs``."""
    return load_script("transcripts")


def test_the_transcripts_that_need_nothing_are_current():
    script = transcripts_script()
    cheap = script.chosen(cheap=True)
    assert cheap, "no transcript runs without engines: this test would check nothing"
    assert script.stale(cheap) == []


def test_every_console_block_of_the_docs_is_a_transcript():
    """A console block typed by hand would drift: each one follows a transcript marker."""
    for document in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        lines = document.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines):
            if line == "```console":
                assert number and lines[number - 1].startswith("<!-- transcript"), f"{document.name}:{number + 1}"


def test_no_document_shows_this_checkouts_path():
    """Transcripts write ``<checkout>`` for it: a machine's paths in the docs would make them stale elsewhere."""
    for document in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        assert str(REPO) not in document.read_text(encoding="utf-8"), document.name


def test_a_changed_count_is_stale_but_a_changed_age_is_not(tmp_path: Path):
    script = transcripts_script()
    shutil.copy(REPO / "README.md", tmp_path / "README.md")
    (tmp_path / "docs").mkdir()
    readme = (tmp_path / "README.md").read_text()
    assert "6620 list items" in readme and "days old" in readme
    aged, ages = re.subn(r"\b\d+ days old", "9 days old", readme)
    assert ages  # the age really changed: else the comparison below would prove nothing
    (tmp_path / "README.md").write_text(aged)
    cheap = script.chosen(cheap=True, root=tmp_path)
    assert script.stale(cheap, root=tmp_path) == []
    (tmp_path / "README.md").write_text(aged.replace("6620 list items", "6621 list items", 1))
    [problem] = script.stale(cheap, root=tmp_path)
    assert "transcript of `tor-sets build --offline -o tor_rules.yaml` is stale" in problem
    script.write(cheap, root=tmp_path)
    assert script.stale(cheap, root=tmp_path) == []
    assert "6620 list items" in (tmp_path / "README.md").read_text()


def test_options_of_the_marker_and_the_exit_status(tmp_path: Path):
    script = transcripts_script()
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text(
        '<!-- transcript setup="tor-sets build --offline -o r.yaml" keep=1 -->\n'
        "```console\n$ tor-sets status r.yaml --state nowhere.json\n```\n"
    )
    [transcript] = script.chosen(None, root=tmp_path)
    assert transcript.setup == ("tor-sets build --offline -o r.yaml",) and transcript.keep == 1
    text = script.run(transcript)
    lines = text.splitlines()
    assert lines[0] == "$ tor-sets status r.yaml --state nowhere.json"
    assert lines[2:] == ["...", lines[-3], "$ echo $?", "1"], text


def test_normalise_hides_only_what_varies_by_nature():
    script = transcripts_script()
    assert script.normalise("12 days old, 3.5 ms, 127.0.0.1:4000, 2026-11-30 07:27 UTC") == (
        "N days old, T, HOST:PORT, DATE\n"
    )
    assert script.normalise("4177 IPv4 + 1921 IPv6, 588 alerts") == "4177 IPv4 + 1921 IPv6, 588 alerts\n"
