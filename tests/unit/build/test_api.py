"""The public API: exactly the names exported, and the docs/api.md example runs as written."""

from __future__ import annotations

import re

import tor_sets
from tests.conftest import REPO


def test_public_names_are_sorted_and_exist():
    assert tor_sets.__all__ == sorted(tor_sets.__all__)
    for name in tor_sets.__all__:
        assert hasattr(tor_sets, name), name


def test_api_doc_example_runs(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    text = (REPO / "docs" / "api.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    exec(compile(code, "docs/api.md", "exec"), {})
    out = capsys.readouterr().out
    assert "bundled 2026-02-28 01:00:00 9491 relays" in out
    assert "4177 entry IPv4 addresses" in out
    assert "refused: no entry relay address to watch" in out
