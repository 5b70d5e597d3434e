"""The tor-sets Falco plugin, proven on sid's real sysdig 0.41.4 (libs 0.23.2, plugin API 3.12).

1. A labelled scenario from the bundled snapshot's relay sets (outbound connects to entry relays with results
   0, -115 and -111; inbound accept/accept4 from exit relays; IPv4, IPv6 and IPv4-mapped IPv6; negatives:
   non-Tor public addresses, loopback, exit-only relays outbound, entry-only relays inbound, relays of neither
   role) is replayed with the plugin loaded (``sysdig -H``), once per plugin rule, with the rule's expanded
   condition as the filter. Every expected alert must fire, nothing else may, ``tor.fingerprint`` must name a
   relay at that address that holds the role, and the list-based rules must flag exactly the same events.
2. Hot reload in one sysdig process. The capture is streamed into a FIFO that sysdig replays: phase 1 is written,
   the test waits until sysdig has printed phase 1's last alert, replaces the table file (with a corrupt table,
   then a FIFO, then a sparse file over the size limit, then a table holding new relays), waits longer than the
   plugin's check interval, then writes the next phase. Because each phase only exists after the swap, which
   table judged it is certain, not a matter of timing. A block of non-Tor filler connections follows each marker
   so that the marker is not held back in the engine's read buffer (measured: sysdig lags the writer by about
   8 KiB). Every wait is bounded, so a plugin that blocks fails the test instead of hanging it.
3. A FIFO or a file over the size limit at the table path at start: sysdig fails at once with the plugin's reason.
4. Real Falco 0.44.1 replays the labelled scenario of ``tor-sets verify`` with the plugin and its rules loaded:
   every expected alert fires and nothing else, as on sysdig, connection by connection.
"""

from __future__ import annotations

import dataclasses
import io
import ipaddress
import json
import os
import queue
import select
import shutil
import stat
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.support.engines import engine_or_skip
from tests.support.scap_reader import read_blocks
from tor_sets.build import Built, build
from tor_sets.engines.base import temporary_workspace
from tor_sets.engines.process import run_process
from tor_sets.engines.sysdig import SYSDIG_INSIDE, SysdigModern
from tor_sets.errors import TorSetsError
from tor_sets.falco.generate import INBOUND_RULE, OUTBOUND_RULE
from tor_sets.falco.load import load_rules
from tor_sets.files import atomic_write
from tor_sets.onionoo import bundled_snapshot
from tor_sets.plugin import compile_plugin, engine_plugin, plugin_rules_text, table_bytes
from tor_sets.plugin.table import ENTRY, EXIT, MAX_BYTES, decode, write_table
from tor_sets.relays import IPAddress, Relay, Snapshot
from tor_sets.verify.bench import rules_condition
from tor_sets.verify.capture import BlockType, Connection, Interface, Process, write_capture

pytestmark = pytest.mark.integration

HOST4 = ipaddress.IPv4Address("10.0.0.5")
HOST6 = ipaddress.IPv6Address("2001:db8::5")
PID = 4242
T0 = 1_700_000_000_000_000_000
FIELDS = ("evt.type", "evt.rawres", "fd.cip", "fd.sip", "tor.fingerprint", "tor.nickname", "tor.remote_role")
PROCESSES = [Process(PID, "curl", "/usr/bin/curl", ("https://example.org",))]
INTERFACES = [Interface("eth0", HOST4, 24), Interface("eth0", HOST6, 64)]


@pytest.fixture(scope="module")
def engine() -> SysdigModern:
    modern = engine_or_skip("sysdig-modern")
    assert isinstance(modern, SysdigModern)
    return modern


def init_config(table: str, check_interval_s: float) -> str:
    """The plugin's init_config for a sysdig command line made by hand (``-H LIBRARY:CONFIG``)."""
    return json.dumps({"table": table, "check_interval_s": check_interval_s}, separators=(",", ":"))


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, engine: SysdigModern) -> Path:
    try:
        return compile_plugin(tmp_path_factory.mktemp("plugin"))
    except TorSetsError as exc:
        pytest.skip(f"cannot build the plugin here: {exc}")


@pytest.fixture(scope="module")
def snapshot() -> Snapshot:
    return bundled_snapshot()


@pytest.fixture(scope="module")
def built(snapshot: Snapshot) -> Built:
    return build(snapshot)


# ---------------------------------------------------------------------------------------------------- scenario


@dataclasses.dataclass(frozen=True)
class Case:
    """One labelled connection: what it is and which rule must fire on it (None: no rule)."""

    label: str
    connection: Connection
    rule: str | None


def _pick(addresses: frozenset[IPAddress], version: int, count: int) -> list[IPAddress]:
    chosen = sorted((a for a in addresses if a.version == version), key=int)
    step = max(1, len(chosen) // count)
    return chosen[::step][:count]


def _scenario(built: Built) -> list[Case]:
    sets = built.sets
    entry_only = sets.entry - sets.exit
    exit_only = sets.exit - sets.entry
    both = sets.entry & sets.exit
    neither = sets.relay - sets.entry - sets.exit
    public4 = [ipaddress.IPv4Address(a) for a in ("9.9.9.9", "1.1.1.1", "8.8.4.4", "193.0.14.129")]
    public6 = [ipaddress.IPv6Address(a) for a in ("2620:fe::fe", "2001:4860:4860::8888")]
    assert not (set(public4) | set(public6)) & sets.relay
    cases: list[tuple[str, str, IPAddress, IPAddress, int, str | None]] = []
    # (label, kind, client, server, result, rule)
    for v, host in ((4, HOST4), (6, HOST6)):
        for address in _pick(entry_only, v, 6) + _pick(both, v, 3):
            for result in (0, -115):
                cases.append((f"connect entry v{v} res {result}", "connect", host, address, result, OUTBOUND_RULE))
            cases.append((f"failed connect entry v{v}", "connect", host, address, -111, None))
        for address in _pick(exit_only, v, 4) + _pick(neither, v, 3):
            cases.append((f"connect non-entry relay v{v}", "connect", host, address, 0, None))
        for address in _pick(exit_only, v, 4) + _pick(both, v, 3):
            for kind in ("accept", "accept4"):
                cases.append((f"{kind} from exit v{v}", kind, address, host, 4, INBOUND_RULE))
        for address in _pick(entry_only, v, 4) + _pick(neither, v, 3):
            cases.append((f"accept4 from non-exit relay v{v}", "accept4", address, host, 4, None))
    for address in _pick(exit_only, 4, 3):
        mapped = ipaddress.IPv6Address(f"::ffff:{address}")
        cases.append(
            (
                "accept4 from exit, IPv4-mapped",
                "accept4",
                mapped,
                ipaddress.IPv6Address("::ffff:10.0.0.5"),
                4,
                INBOUND_RULE,
            )
        )
    for address in public4:
        cases.append(("connect public v4", "connect", HOST4, address, 0, None))
        cases.append(("accept4 public v4", "accept4", address, HOST4, 4, None))
    for address in public6:
        cases.append(("connect public v6", "connect", HOST6, address, 0, None))
        cases.append(("accept public v6", "accept", address, HOST6, 4, None))
    loop4, loop6 = ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1")
    cases.append(("connect loopback v4", "connect", loop4, loop4, 0, None))
    cases.append(("connect loopback v6", "connect", loop6, loop6, 0, None))
    cases.append(("accept loopback v4", "accept4", loop4, loop4, 4, None))
    out = []
    for i, (label, kind, client, server, result, rule) in enumerate(cases):
        connection = Connection(
            kind,  # type: ignore[arg-type]
            client,
            30000 + i if kind == "connect" else 40000 + i,
            server,
            443 if kind == "connect" else 8080,
            T0 + (i + 1) * 1000,
            PID,
            result if kind == "connect" else 0,
        )
        out.append(Case(label, connection, rule))
    return out


def _relay_end(connection: Connection) -> IPAddress:
    remote = connection.server if connection.kind == "connect" else connection.client
    if isinstance(remote, ipaddress.IPv6Address) and remote.ipv4_mapped is not None:
        return remote.ipv4_mapped
    return remote


def test_plugin_rules_fire_exactly_on_tor_connections(
    engine: SysdigModern, library: Path, snapshot: Snapshot, built: Built, tmp_path: Path
) -> None:
    cases = _scenario(built)
    capture = tmp_path / "scenario.scap"
    write_capture(capture, [c.connection for c in cases], processes=PROCESSES, interfaces=INTERFACES)
    table_path = tmp_path / "tor.table"
    table_path.write_bytes(table_bytes(built, snapshot))
    table = decode(table_path.read_bytes())
    plugin = engine_plugin(library, table_path, check_interval_s=5)
    plugin_rules = load_rules(plugin_rules_text(built)).rules
    list_rules = load_rules(built.text).rules
    assert set(plugin_rules) == set(list_rules) == {OUTBOUND_RULE, INBOUND_RULE}
    relays_at: dict[IPAddress, list[Relay]] = {}
    for relay in snapshot.relays:
        for address in {*relay.or_addresses, *relay.exit_addresses}:
            relays_at.setdefault(address, []).append(relay)

    by_ts = {c.connection.ts_ns: c for c in cases}
    for name, rule in plugin_rules.items():
        expected = {c.connection.ts_ns for c in cases if c.rule == name}
        assert expected, name
        run = engine.filter(capture, rule.expanded, FIELDS, plugins=[plugin])
        fired = {m.ts_ns for m in run.matches}
        missed = sorted(by_ts[ts].label for ts in expected - fired)
        false_alarms = sorted(by_ts[ts].label if ts in by_ts else str(ts) for ts in fired - expected)
        assert not missed, f"{name}: missed {missed}"
        assert not false_alarms, f"{name}: false alarms {false_alarms}"
        role = ENTRY if name == OUTBOUND_RULE else EXIT
        flag = "Guard" if role == ENTRY else "Exit"
        for match in run.matches:
            relay_address = _relay_end(by_ts[match.ts_ns].connection)
            fingerprint = match.fields["tor.fingerprint"]
            entry = table.get(relay_address)
            assert entry is not None and entry.roles & role
            assert fingerprint == entry.fingerprint, by_ts[match.ts_ns].label
            owners = [r for r in relays_at[relay_address] if flag in r.flags or "Authority" in r.flags]
            assert fingerprint in {r.fingerprint for r in owners}, (
                f"{fingerprint} does not hold {flag} at {relay_address}"
            )
            assert match.fields["tor.remote_role"] in (
                ("entry", "entry,exit") if role == ENTRY else ("exit", "entry,exit")
            )
        # the plugin rule and the list-based rule of the same name flag exactly the same events
        lists = engine.filter(capture, list_rules[name].expanded, ("evt.type",))
        assert {m.ts_ns for m in lists.matches} == fired, name


def test_real_falco_fires_the_plugin_rules_exactly_on_the_labelled_connections(
    library: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``tor-sets verify --load-plugin torsets=LIB``: a table of the same relays, the plugin's rules, real Falco."""
    from tests.support.falco import falco_or_skip
    from tor_sets.cli import main

    falco_or_skip("falco-local")
    argv = ["verify", "--engine", "falco-local", "--engine", "sysdig-modern", "--load-plugin", f"torsets={library}"]
    assert main([*argv, "--keep", str(tmp_path / "kept"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] and [v["engine"] for v in doc["verdicts"]] == ["falco-local", "sysdig-modern"]
    for verdict in doc["verdicts"]:
        rules = {r["rule"]: r for r in verdict["rules"]}
        assert set(rules) == {OUTBOUND_RULE, INBOUND_RULE}
        for rule in rules.values():
            assert rule["expected"] > 300 and rule["fired"] == rule["expected"] and rule["false_alarms"] == 0, rule
    kept = tmp_path / "kept"
    assert "tor.server_is_entry" in (kept / "tor_plugin_rules.yaml").read_text()
    assert decode((kept / "tor.table").read_bytes()).counts()["ipv4"] > 1000  # the table the plugin answered


def test_plugin_refuses_a_bad_table_at_start(engine: SysdigModern, library: Path, tmp_path: Path, built: Built) -> None:
    capture = tmp_path / "one.scap"
    write_capture(
        capture,
        [Connection("connect", HOST4, 1234, min(a for a in built.sets.entry if a.version == 4), 443, T0 + 1000, PID)],
        processes=PROCESSES,
    )
    bad = tmp_path / "bad.table"
    bad.write_bytes(table_bytes(built)[:-7])
    with pytest.raises(TorSetsError, match="bad table .*size mismatch"):
        engine.filter(capture, "tor.is_relay = true", plugins=[engine_plugin(library, bad, check_interval_s=5)])


def _make_fifo(path: Path) -> None:
    os.mkfifo(path)


def _make_sparse(path: Path) -> None:
    with open(path, "wb") as out:
        out.truncate(MAX_BYTES + 1)


@pytest.mark.parametrize(
    ("make", "message"),
    [(_make_fifo, "is not a regular file"), (_make_sparse, f"more than the {MAX_BYTES}-byte limit")],
    ids=["fifo", "over-size-limit"],
)
def test_plugin_refuses_a_fifo_or_huge_table_at_start(
    engine: SysdigModern, library: Path, tmp_path: Path, built: Built, make: object, message: str
) -> None:
    """Issue 13: plugin_init must neither block on a FIFO nor read a huge file; sysdig stops with the reason."""
    capture = tmp_path / "one.scap"
    write_capture(
        capture,
        [Connection("connect", HOST4, 1234, min(a for a in built.sets.entry if a.version == 4), 443, T0 + 1000, PID)],
        processes=PROCESSES,
    )
    with temporary_workspace(engine.root / "tmp", lambda host: "/tmp/" + host.name) as ws:
        shutil.copyfile(library, ws.host / "libtorsets.so")
        shutil.copyfile(capture, ws.host / "capture.scap")
        make(ws.host / "tor.table")  # type: ignore[operator]
        argv = [
            shutil.which("chroot") or "chroot",
            str(engine.root),
            SYSDIG_INSIDE,
            "-H",
            f"{ws.path('libtorsets.so')}:{init_config(ws.path('tor.table'), 0.2)}",
            "-r",
            ws.path("capture.scap"),
            "evt.num = 0",
        ]
        done = run_process(argv, engine=engine.name, timeout=60)  # a blocked plugin_init: EngineTimeout, a failure
    assert done.returncode != 0
    assert message in done.stdout + done.stderr
    assert done.max_rss_kb < MAX_BYTES // 1024  # the huge file was not read (sysdig alone: about 15 MB)


# ---------------------------------------------------------------------------------------------------- hot reload


def _new_addresses(taken: frozenset[IPAddress], count: int) -> list[IPAddress]:
    out: list[IPAddress] = []
    candidate = int(ipaddress.IPv4Address("45.9.0.1"))
    while len(out) < count:
        address = ipaddress.IPv4Address(candidate)
        if address not in taken and address.is_global:
            out.append(address)
        candidate += 1
    return out


class _Sysdig:
    """sysdig replaying a FIFO, its match lines collected by a thread."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        self.lines: queue.Queue[str] = queue.Queue()
        self.all: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.all.append(line.rstrip("\n"))
            self.lines.put(line.rstrip("\n"))

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        """Wait for sysdig to end (killing it after ``timeout``); return its exit status and stderr."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=10)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        stderr = self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return self.proc.returncode, stderr

    def wait_for(self, needle: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if needle in line:
                return
        raise AssertionError(f"sysdig never printed {needle!r}; output so far: {self.all[-5:]}")


def _open_fifo_for_writing(path: Path, proc: subprocess.Popen[str], timeout: float = 30) -> int:
    """Open the FIFO once sysdig has opened it for reading (never blocks forever on a dead sysdig)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # stays non-blocking: see _write_bounded
        except OSError as exc:
            if exc.errno != 6 or proc.poll() is not None or time.monotonic() > deadline:  # ENXIO: no reader yet
                raise AssertionError(f"sysdig did not open the FIFO: {exc}") from exc
            time.sleep(0.05)


def _write_bounded(fd: int, data: bytes, timeout: float = 60) -> None:
    """Write all of ``data`` to the non-blocking FIFO ``fd``, failing when sysdig stops reading for ``timeout`` s."""
    view = memoryview(data)
    while view:
        _, ready, _ = select.select([], [fd], [], timeout)
        if not ready:
            raise AssertionError(f"sysdig stopped reading the capture ({len(view)} bytes left): is the plugin blocked?")
        view = view[os.write(fd, view) :]


def _split_points(data: bytes, thresholds: list[int]) -> list[int]:
    """Byte offsets of the first event block at or after each timestamp threshold."""
    offsets = []
    events = [
        (b.offset, struct.unpack_from("<Q", b.body, 2)[0]) for b in read_blocks(data) if b.type == BlockType.EV_V2
    ]
    for threshold in thresholds:
        offsets.append(next(offset for offset, ts in events if ts >= threshold))
    return offsets


def test_plugin_reloads_a_replaced_table_mid_run(
    engine: SysdigModern, library: Path, snapshot: Snapshot, built: Built
) -> None:
    sets = built.sets
    stable = sorted((a for a in sets.entry - sets.exit if a.version == 4), key=int)[0]
    removed_relay = next(
        r
        for r in snapshot.relays
        if r.is_entry
        and not r.is_exit
        and len(r.or_addresses) == 1
        and stable not in r.or_addresses
        and sum(1 for s in snapshot.relays if r.or_addresses[0] in s.or_addresses) == 1
    )
    removed = removed_relay.or_addresses[0]
    guard_address, exit_or, exit_out = _new_addresses(sets.relay, 3)
    new_guard = Relay("A" * 39 + "1", "NewGuard1", or_addresses=(guard_address,), flags=frozenset({"Guard", "Running"}))
    new_exit = Relay(
        "B" * 39 + "2",
        "NewExit2",
        or_addresses=(exit_or,),
        exit_addresses=(exit_out,),
        flags=frozenset({"Exit", "Running"}),
    )
    snapshot_b = dataclasses.replace(
        snapshot, relays=(*[r for r in snapshot.relays if r is not removed_relay], new_guard, new_exit)
    )
    built_b = build(snapshot_b)
    table_a, table_b = table_bytes(built, snapshot), table_bytes(built_b, snapshot_b)
    corrupt = bytearray(table_b)
    corrupt[len(corrupt) // 2] ^= 0xFF  # same size, checksum no longer matches

    ts = iter(range(T0 + 1000, T0 + 10**10, 1000))
    filler_targets = [ipaddress.IPv4Address(int(ipaddress.IPv4Address("9.9.0.1")) + i) for i in range(250)]
    assert not set(filler_targets) & sets.relay

    def out(server: IPAddress, port: int) -> Connection:
        return Connection("connect", HOST4, port, server, 443, next(ts), PID)

    def inbound(kind: str, client: IPAddress, port: int) -> Connection:
        return Connection(kind, client, port, HOST4, 8080, next(ts), PID)  # type: ignore[arg-type]

    def filler() -> list[Connection]:
        return [out(filler_targets[i % len(filler_targets)], 20000 + i % 10000) for i in range(500)]

    def table_a_phase(base: int) -> list[Connection]:
        """Table A in use: the removed relay and the stable one alert, the new relays do not."""
        return [
            out(guard_address, base + 1),
            out(removed, base + 2),
            inbound("accept", exit_out, base + 3),
            out(stable, base + 4),
        ]

    # built in stream order: timestamps come from one increasing counter; phase k uses client ports k000..k999
    phase1 = [out(guard_address, 1001), out(removed, 1002), inbound("accept4", exit_or, 1003), out(stable, 1004)]
    filler1 = filler()
    phase2 = table_a_phase(2000)  # after a corrupt table
    filler2 = filler()
    phase3 = table_a_phase(3000)  # after a FIFO
    filler3 = filler()
    phase4 = table_a_phase(4000)  # after a sparse file over the size limit
    filler4 = filler()
    phase5 = [
        out(guard_address, 5001),
        out(removed, 5002),
        inbound("accept4", exit_or, 5003),
        inbound("accept", exit_out, 5004),
        out(stable, 5005),
    ]
    phases = [phase1, phase2, phase3, phase4, phase5]
    connections = [*phase1, *filler1, *phase2, *filler2, *phase3, *filler3, *phase4, *filler4, *phase5]
    stream = io.BytesIO()
    write_capture(stream, connections, processes=PROCESSES, interfaces=INTERFACES)
    data = stream.getvalue()
    cuts = [0, *_split_points(data, [phase[0].ts_ns - 10 for phase in phases[1:]]), len(data)]
    chunks = [data[cuts[i] : cuts[i + 1]] for i in range(len(phases))]
    interval = 0.2
    condition = rules_condition(plugin_rules_text(built))
    fmt = "*MATCH %evt.rawtime %evt.type %fd.cport %tor.fingerprint %tor.nickname"

    def swap_fifo(path: Path) -> None:
        tmp = path.with_name("fifo.tmp")
        os.mkfifo(tmp)
        os.replace(tmp, path)

    def swap_sparse(path: Path) -> None:
        tmp = path.with_name("sparse.tmp")
        _make_sparse(tmp)
        os.replace(tmp, path)

    # what replaces the table after each phase but the last; atomic_write, not write_table: that one compares
    # with the file in place first, which would block on the FIFO
    swaps = [
        lambda path: atomic_write(path, bytes(corrupt)),
        swap_fifo,
        swap_sparse,
        lambda path: atomic_write(path, table_b),
    ]

    with temporary_workspace(engine.root / "tmp", lambda host: "/tmp/" + host.name) as ws:
        shutil.copyfile(library, ws.host / "libtorsets.so")
        live = ws.host / "tor.table"
        write_table(live, table_a)
        fifo = ws.host / "capture.scap"
        os.mkfifo(fifo)
        assert stat.S_ISFIFO(fifo.stat().st_mode)
        argv = [
            shutil.which("chroot") or "chroot",
            str(engine.root),
            SYSDIG_INSIDE,
            "--unbuffered",
            "--log-level=info",
            "-H",
            f"{ws.path('libtorsets.so')}:{init_config(ws.path('tor.table'), interval)}",
            "-r",
            ws.path("capture.scap"),
            "-p",
            fmt,
            condition,
        ]
        sysdig = _Sysdig(argv)
        try:
            fd = _open_fifo_for_writing(fifo, sysdig.proc)
            try:
                for phase, chunk, swap in zip(phases, chunks, [*swaps, None], strict=True):
                    _write_bounded(fd, chunk)
                    if swap is None:
                        break
                    sysdig.wait_for(f"MATCH {phase[-1].ts_ns} ")  # bounded: a stalled plugin fails here
                    swap(live)
                    time.sleep(5 * interval)
            finally:
                os.close(fd)
        finally:
            returncode, stderr = sysdig.finish()
    assert returncode == 0, stderr[-2000:]

    matches = {}
    for line in sysdig.all:
        if line.startswith("MATCH "):
            _, _ts, evt_type, cport, fingerprint, nickname = line.split(" ")
            matches[int(cport)] = (evt_type, fingerprint, nickname)
    logs = "\n".join(line for line in sysdig.all if "torsets:" in line)

    def phase_ports(k: int) -> set[int]:
        return {port for port in matches if k * 1000 <= port < (k + 1) * 1000}

    stable_fp = decode(table_a).get(stable)
    assert stable_fp is not None
    # phase 1, table A: the new relays are unknown, the removed one is still an entry relay
    assert phase_ports(1) == {1002, 1004}
    assert matches[1002] == ("connect", removed_relay.fingerprint, "<NA>")
    # phases 2-4, a corrupt table, a FIFO, a sparse file over the limit on disk: table A kept, each reason logged once
    for k in (2, 3, 4):
        assert phase_ports(k) == {k * 1000 + 2, k * 1000 + 4}, k
        assert matches[k * 1000 + 2] == ("connect", removed_relay.fingerprint, "<NA>")
    assert logs.count("checksum mismatch") == 1, logs
    assert logs.count("is not a regular file") == 1, logs
    assert logs.count(f"more than the {MAX_BYTES}-byte limit") == 1, logs
    assert logs.count("keeping the loaded table") == 3, logs
    # phase 5, table B: new entry and exit relays (OR and exit address) detected, the removed relay no longer
    assert phase_ports(5) == {5001, 5003, 5004, 5005}
    assert matches[5001] == ("connect", new_guard.fingerprint, "NewGuard1")
    assert matches[5003] == ("accept4", new_exit.fingerprint, "NewExit2")
    assert matches[5004] == ("accept", new_exit.fingerprint, "NewExit2")
    assert matches[5005][1] == stable_fp.fingerprint
    assert "reloaded" in logs
