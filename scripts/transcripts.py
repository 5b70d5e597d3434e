"""The command transcripts the docs show: ``make docs`` runs the commands and writes their real output into the docs;
``--check`` compares (tests/unit/test_transcripts.py for the transcripts that need nothing, tests/integration/docs/
test_transcripts.py for those that need real engines, root or the kernel probe).

A transcript is a fenced ``console`` block right after a ``<!-- transcript ... -->`` line in ``README.md`` or
``docs/*.md``. Its ``$ `` lines are the commands, as the reader types them; everything else in the block is their
output, rewritten by every run. The commands run one after the other in one scratch folder (so the paths shown
are the relative ones), ``tor-sets`` being this checkout's; in the output this checkout's path reads
``<checkout>`` and the machine's name ``<host>``, so that no machine's paths reach the docs.
The marker line may say, as ``name=value`` words:

- ``needs=falco,root``: what the commands need beyond Python (``falco``: an installed Falco; ``engines``: every
  engine; ``root``). A transcript with needs is checked by the integration tests.
- ``setup="COMMAND"`` (repeatable): run first, output not shown (a failure stops ``make docs``).
- ``copy=PATH`` (repeatable): a file of this repository copied into the scratch folder, under its own name.
- ``background="COMMAND"``: started before the commands (a service they talk to), stopped at the end.
- ``port=N``: the port the reader sees; each run uses a free loopback port in its place (in every command), and
  shows N again in the output.
- ``keep=N``: of a longer output, the first N lines, ``...`` and the last line (the verdict, as a rule); ``cut=N``:
  longer lines shown as their first N-1 characters and ``…``.

A command may end with ``> FILE`` (stdout into the file). One whose exit status is not 0 is followed by ``$ echo
$?`` and the status, as a shell would show it. Comparing ignores what differs from run to run by nature (ages in
days, timings, rates, ports, dates, process ids), never counts, names or verdicts.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tor_sets.engines.paths import cache_dir as engines_cache_dir

ROOT = Path(__file__).resolve().parent.parent
#: this checkout's command: the console script beside the interpreter (so that a process shows as ``tor-sets``,
#: whichever name the interpreter was started by), else the module
_SCRIPT = Path(sys.executable).parent / "tor-sets"
TOR_SETS = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "tor_sets"]
_BLOCK = re.compile(r"^<!-- transcript(?P<options>[^\n]*?) -->\n```console\n(?P<body>.*?)^```$", re.M | re.S)
_LISTS = ("setup", "copy")


@dataclass(frozen=True)
class Transcript:
    """One block: its commands and what its marker line says (see the module's docstring)."""

    commands: tuple[str, ...]
    needs: tuple[str, ...] = ()
    setup: tuple[str, ...] = ()
    copy: tuple[str, ...] = ()
    background: str = ""
    port: int | None = None
    keep: int | None = None
    cut: int | None = None
    where: str = field(default="", compare=False)

    @classmethod
    def parse(cls, options: str, body: str, where: str = "") -> Transcript:
        values: dict[str, list[str]] = {}
        for word in shlex.split(options):
            name, sep, value = word.partition("=")
            if not sep or name not in ("needs", "setup", "copy", "background", "port", "keep", "cut"):
                raise SystemExit(f"{where}: transcript option {word!r} is not NAME=VALUE of a known name")
            values.setdefault(name, []).append(value)
        commands = tuple(line[2:] for line in body.splitlines() if line.startswith("$ ") and line != "$ echo $?")
        if not commands:
            raise SystemExit(f"{where}: a transcript block without a '$ ' command line")

        def one(name: str) -> str | None:
            return values[name][-1] if name in values else None

        keep, cut, port = one("keep"), one("cut"), one("port")
        return cls(
            commands=commands,
            needs=tuple(need for value in values.get("needs", []) for need in value.split(",") if need),
            setup=tuple(values.get("setup", [])),
            copy=tuple(values.get("copy", [])),
            background=one("background") or "",
            port=int(port) if port else None,
            keep=int(keep) if keep else None,
            cut=int(cut) if cut else None,
            where=where,
        )


#: what differs between two honest runs: replaced by a placeholder on both sides before comparing
_VOLATILE = (
    (re.compile(r"\b\d+ days? old"), "N days old"),
    (re.compile(r"(\d+ days)(?= —|$)", re.M), "N days"),
    (re.compile(r"-?\d+(?:\.\d+)? (?:µs|ms|s|min|h)\b"), "T"),
    (re.compile(r'"(\w+_(?:s|ms|per_s))": -?\d+(?:\.\d+)?'), r'"\1": N'),
    (re.compile(r"\b(?:127\.0\.0\.1|198\.51\.100\.\d+|203\.0\.113\.\d+|\[[0-9a-f:]+\]):\d+"), "HOST:PORT"),
    (re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d(?::\d\d)?(?:\.\d+)?Z?( UTC)?"), "DATE"),
    (re.compile(r"\b\d\d:\d\d:\d\d\.\d{9}\b"), "TIME"),
    (re.compile(r"\b[0-9a-f]{64}\b"), "SHA256"),
    (re.compile(r"\b(pid|pid=|\"proc\.pid\": ?)\d+"), r"\1N"),
    (re.compile(r'("(?:evt\.time|fd\.[cslr]port|proc\.pid|proc\.ppid)": ?)\d+'), r"\1N"),
    (re.compile(r'("hostname": ?)"[^"]*"'), r'\1"HOST"'),
    (re.compile(r"-[0-9a-f]{8}\.(state\.json|lock)\b"), r"-KEY.\1"),
)


def normalise(text: str) -> str:
    """``text`` with what varies from run to run replaced, and trailing blanks removed.

    >>> normalise("2026-02-28 01:00 UTC, 275 days old; 4.6 ms to 127.0.0.1:39927")
    'DATE, N days old; T to HOST:PORT'
    """
    for pattern, placeholder in _VOLATILE:
        text = pattern.sub(placeholder, text)
    return "\n".join(line.rstrip() for line in text.splitlines()).strip() + "\n"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _argv(command: str, ports: tuple[int, int] | None) -> tuple[list[str], str | None]:
    """The argv of a shown command (``tor-sets`` being this checkout's, the shown port the free one) and the file
    its stdout goes to, if any."""
    if ports is not None:
        command = re.sub(rf"(?<=:){ports[0]}\b", str(ports[1]), command)
    words = shlex.split(command)
    target = None
    if len(words) >= 2 and words[-2] == ">":
        words, target = words[:-2], words[-1]
    if words[0] == "tor-sets":
        words = [*TOR_SETS, *words[1:]]
    return words, target


@contextmanager
def _background(command: str, ports: tuple[int, int] | None, cwd: str, env: dict[str, str]) -> Iterator[None]:
    if not command:
        yield
        return
    if ports is None:
        raise SystemExit(f"background command without port=N: {command}")
    port = ports[1]
    argv, _ = _argv(command, ports)
    process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None:
                    raise SystemExit(f"background command exited ({process.returncode}): {command}") from None
                time.sleep(0.1)
        yield
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run(transcript: Transcript) -> str:
    """Run the commands in a fresh scratch folder; the block's text (``$ command`` then its output)."""
    out: list[str] = []
    ports = (transcript.port, _free_port()) if transcript.port else None
    with tempfile.TemporaryDirectory(prefix="tor-sets-docs-") as scratch:
        # a download cache of its own (what `make rules` cached on this machine would change the shown data),
        # beside the engines this machine installed
        cache = Path(scratch) / ".cache"
        (cache / "tor-sets").mkdir(parents=True)
        (cache / "tor-sets" / "engines").symlink_to(engines_cache_dir())
        env = {
            **os.environ,
            "COLUMNS": "120",
            "TOR_SETS_STATE_DIR": str(Path(scratch) / ".state"),
            "XDG_CACHE_HOME": str(cache),
        }
        env.pop("TOR_SETS_SESSION", None)
        for path in transcript.copy:
            shutil.copy(ROOT / path, Path(scratch) / Path(path).name)

        def execute(command: str) -> subprocess.CompletedProcess[str]:
            argv, target = _argv(command, ports)
            stdout = open(Path(scratch) / target, "w") if target else subprocess.PIPE  # noqa: SIM115
            try:
                done = subprocess.run(
                    argv, cwd=scratch, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True, check=False
                )
            finally:
                if target:
                    stdout.close()  # type: ignore[union-attr]
            return done

        for command in transcript.setup:
            done = execute(command)
            if done.returncode != 0:
                raise SystemExit(
                    f"{transcript.where}: set-up command failed ({done.returncode}): {command}\n{done.stderr}"
                )
        with _background(transcript.background, ports, scratch, env):
            for command in transcript.commands:
                done = execute(command)
                shown = (done.stderr + (done.stdout or "")).replace(f"{scratch}/", "").replace(scratch, ".")
                shown = shown.replace(str(ROOT), "<checkout>").replace(
                    f'"hostname":"{socket.gethostname()}"', '"hostname":"<host>"'
                )
                if ports is not None:
                    shown = re.sub(rf"(?<=:){ports[1]}\b", str(ports[0]), shown)
                lines = shown.rstrip("\n").splitlines()
                if transcript.cut is not None:
                    lines = [
                        line if len(line) <= transcript.cut else line[: transcript.cut - 1] + "…" for line in lines
                    ]
                if transcript.keep is not None and len(lines) > transcript.keep:
                    lines = [*lines[: transcript.keep], "...", lines[-1]]
                out.append(f"$ {command}")
                out.extend(lines)
                if done.returncode != 0:
                    out.extend(["$ echo $?", str(done.returncode)])
    return "\n".join(out) + "\n"


def blocks(root: Path = ROOT) -> dict[Path, list[tuple[Transcript, str]]]:
    """Every transcript block of the docs: file → [(transcript, text as shown)]."""
    found: dict[Path, list[tuple[Transcript, str]]] = {}
    for document in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        text = document.read_text(encoding="utf-8")
        for match in _BLOCK.finditer(text):
            where = f"{document.relative_to(root)}:{text.count(chr(10), 0, match.start()) + 1}"
            transcript = Transcript.parse(match["options"], match["body"], where)
            found.setdefault(document, []).append((transcript, match["body"]))
    return found


def chosen(cheap: bool | None, root: Path = ROOT) -> list[Transcript]:
    """The transcripts of the docs: all (``cheap`` None), those needing nothing (True), or those needing something."""
    every = [transcript for found in blocks(root).values() for transcript, _ in found]
    return [t for t in every if cheap is None or (not t.needs) == cheap]


def stale(transcripts: Sequence[Transcript], root: Path = ROOT) -> list[str]:
    """Where the shown output of ``transcripts`` no longer matches a fresh run (ignoring what varies by nature)."""
    problems = []
    wanted = set(transcripts)
    for found in blocks(root).values():
        for transcript, body in found:
            if transcript not in wanted:
                continue
            shown, fresh = normalise(body), normalise(run(transcript))
            if shown != fresh:
                diff = difflib.unified_diff(shown.splitlines(), fresh.splitlines(), "shown", "now", n=0, lineterm="")
                problems.append(
                    f"{transcript.where}: transcript of `{transcript.commands[0]}` is stale:\n"
                    + "\n".join(list(diff)[2:12])
                )
    return problems


def write(transcripts: Sequence[Transcript], root: Path = ROOT) -> list[Path]:
    """Run ``transcripts`` and write their output into the documents that show them."""
    wanted = set(transcripts)
    written = []
    for document in blocks(root):
        text = document.read_text(encoding="utf-8")

        def replace(match: re.Match[str]) -> str:
            transcript = Transcript.parse(match["options"], match["body"])
            if transcript not in wanted:
                return match[0]
            return f"<!-- transcript{match['options']} -->\n```console\n{run(transcript)}```"

        new = _BLOCK.sub(replace, text)
        if new != text:
            document.write_text(new, encoding="utf-8")
            written.append(document)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a block is stale")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--cheap", action="store_true", help="only the transcripts that need nothing")
    which.add_argument("--needing", action="store_true", help="only the transcripts that need engines or root")
    parser.add_argument("--grep", default="", help="only the transcripts whose commands contain this text")
    args = parser.parse_args(argv)
    transcripts = [
        t
        for t in chosen(True if args.cheap else False if args.needing else None)
        if any(args.grep in command for command in t.commands)
    ]
    if args.check:
        problems = stale(transcripts)
        for problem in problems:
            print(f"{problem} (run `make docs`)", file=sys.stderr)
        return 1 if problems else 0
    for document in write(transcripts):
        print(f"wrote {document.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
