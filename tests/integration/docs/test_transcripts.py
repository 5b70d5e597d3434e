"""The docs' transcripts of real Falco, the sysdig builds and the live self-test are what they print today.

Runs each command again (``make docs`` writes them) and compares, ignoring only what varies by nature (ages,
timings, ports, dates): a changed count, verdict or rule name fails here.
"""

from __future__ import annotations

import os

import pytest

from tests.support.engines import engine_or_skip
from tests.unit.test_transcripts import transcripts_script

pytestmark = pytest.mark.integration

SCRIPT = transcripts_script()
NEEDING = SCRIPT.chosen(cheap=False)
ENGINES = {"falco": ("falco-local",), "engines": ("falco-local", "falco", "sysdig-modern", "sysdig-legacy")}


def test_some_transcripts_need_engines():
    assert NEEDING, "no transcript needs an engine: the tests below check nothing"


@pytest.mark.parametrize("transcript", NEEDING, ids=[t.where for t in NEEDING])
def test_the_transcript_is_current(transcript):
    if "root" in transcript.needs and os.geteuid() != 0:
        pytest.skip(f"{transcript.where} needs root")
    for need in transcript.needs:
        for engine in ENGINES.get(need, ()):
            engine_or_skip(engine)
    assert SCRIPT.stale([transcript]) == []
