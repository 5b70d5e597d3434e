"""The canary self-test: make real connections to and from a canary "relay" and wait for Falco to report them.

A canary is a documentation address (RFC 5737 / RFC 3849) that ``tor-sets build --canary ADDR`` adds to the
entry and exit lists. The self-test then proves the whole chain on a live host — rules loaded, Falco watching,
alerts delivered — without touching any real network:

1. :func:`plan_lab` refuses a canary outside 198.51.100.0/24, 203.0.113.0/24 and 2001:db8::/32, anything in
   192.0.2.0/24, and any canary whose lab network (its /24, or /64 for IPv6) overlaps an address or a route of
   the machine (default routes aside: they cover everything and take no part, since the lab has none).
2. :class:`Lab` creates two network namespaces with pyroute2, ``client`` and ``relay``, joined by a veth pair that
   is created inside them (nothing is ever added to the machine's own namespace), puts the canary in ``relay`` and
   a second address of the lab network in ``client``, and adds no default route. Sockets are opened inside the
   namespaces by this very thread (:func:`socket_in_namespace`: ``setns`` in and out around ``socket()``), so Falco
   sees ``socket``, ``connect`` and ``accept4`` of ``tor-sets``, with file descriptors it knows. Namespaces are
   removed on every way out, SIGTERM included.
3. ``outbound``: a server in ``relay`` listens on the canary, a client in ``client`` connects to it (Falco: the
   outbound rule, ``fd.sip`` = canary). ``inbound``: a server in ``client`` accepts a connection made from the
   canary in ``relay`` (Falco: the inbound rule, ``fd.cip`` = canary). Each end's view of the tuple is checked:
   the peer seen is the canary.
4. :func:`wait_for_alerts` reads the sink — a file Falco appends JSON alerts to (:class:`FileSink`), or the
   ``tor-sets enrich --listen`` endpoint's ``GET /alerts`` (:class:`HttpSink`) — until an alert of the right rule
   with the observed addresses and ports arrives for every case, or the timeout passes.

:func:`simulate_alerts` stands in for a live Falco where none runs: it writes the observed connections into a
capture (:mod:`tor_sets.verify.capture`), replays it through a real engine with the rules' expanded conditions and
turns the matches into Falco-JSON alert lines, which :meth:`FileSink.deliver`/:meth:`HttpSink.deliver` hand to the sink.

Exports :class:`HostNetwork`, :class:`LabPlan`, :func:`plan_lab`, :class:`Lab`, :class:`Observed`,
:class:`Expectation`, :func:`expectations`, :func:`alert_matches`, :class:`FileSink`, :class:`HttpSink`,
:func:`open_sink`, :class:`CaseResult`, :func:`wait_for_alerts`, :class:`Report`, :func:`run_selftest`,
:func:`simulate_alerts`, :func:`format_table`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Literal, Protocol

import requests

from tor_sets.engines.base import Engine
from tor_sets.enrich import alert_addresses
from tor_sets.errors import SanityError, TorSetsError
from tor_sets.falco.alerts import alert_json, output_fields
from tor_sets.falco.generate import INBOUND_RULE, OUTBOUND_RELAY_RULE, OUTBOUND_RULE
from tor_sets.falco.load import load_rules
from tor_sets.relays import IPAddress, IPNetwork
from tor_sets.verify.capture import MIN_GAP_NS, Connection, Process, write_capture

__all__ = [
    "CASES",
    "DOCUMENTATION_NETWORKS",
    "SCHEMA",
    "SIMULATED_FIELDS",
    "CaseResult",
    "Expectation",
    "FileSink",
    "HostNetwork",
    "HttpSink",
    "Lab",
    "LabPlan",
    "Observed",
    "Report",
    "Sink",
    "alert_matches",
    "expectations",
    "format_table",
    "open_sink",
    "plan_lab",
    "run_selftest",
    "simulate_alerts",
    "wait_for_alerts",
]

log = logging.getLogger(__name__)

Case = Literal["outbound", "inbound"]
CASES: tuple[Case, ...] = ("outbound", "inbound")

#: where a canary may come from (RFC 5737 TEST-NET-2 and -3, RFC 3849)
DOCUMENTATION_NETWORKS: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("198.51.100.0/24"),
    ipaddress.ip_network("203.0.113.0/24"),
    ipaddress.ip_network("2001:db8::/32"),
)
#: refused outright: the network of the machines this project runs on
FORBIDDEN_NETWORK = ipaddress.ip_network("192.0.2.0/24")

#: the rules each case must fire
CASE_RULES: dict[str, frozenset[str]] = {
    "outbound": frozenset({OUTBOUND_RULE, OUTBOUND_RELAY_RULE}),
    "inbound": frozenset({INBOUND_RULE}),
}

_IFA_F_NODAD = 0x02  # linux/if_addr.h: no duplicate address detection (the lab is alone on its wire)
#: the lab's watcher: removes the namespaces named in argv when the pipe on fd argv[1] ends without "done"
_REAPER = """\
import os, subprocess, sys
fd, names, data = int(sys.argv[1]), sys.argv[2:], b""
while True:
    try:
        chunk = os.read(fd, 64)
    except InterruptedError:
        continue
    if not chunk:
        break
    data += chunk
if b"done" not in data:
    for name in names:
        subprocess.run(["ip", "netns", "delete", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
"""
_GREETING = b"tor-sets selftest\n"


# ---------------------------------------------------------------------------------------------------------------
# Planning: is the canary safe to use here?
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostNetwork:
    """The machine's own addresses and routes (its initial network namespace).

    Attributes:
        addresses: every interface address, with its prefix (``192.0.2.2/24``).
        routes: every route destination of every table except default routes.
        links: interface names.
    """

    addresses: frozenset[ipaddress.IPv4Interface | ipaddress.IPv6Interface]
    routes: frozenset[IPNetwork]
    links: frozenset[str] = frozenset()

    @classmethod
    def read(cls) -> HostNetwork:
        """Read the namespace this process runs in through netlink.

        Raises:
            TorSetsError: netlink cannot be read (pyroute2 missing, no permission).
        """
        iproute = _iproute_class()
        addresses = set()
        routes: set[IPNetwork] = set()
        links = set()
        try:
            with iproute() as ipr:
                for msg in ipr.get_addr():
                    value = msg.get_attr("IFA_ADDRESS")
                    if value:
                        addresses.add(ipaddress.ip_interface(f"{value.split('%', 1)[0]}/{msg['prefixlen']}"))
                for msg in ipr.get_routes(family=socket.AF_UNSPEC, table=None):
                    if msg["family"] not in (socket.AF_INET, socket.AF_INET6) or msg["dst_len"] == 0:
                        continue
                    dst = msg.get_attr("RTA_DST")
                    if dst:
                        routes.add(ipaddress.ip_network(f"{dst}/{msg['dst_len']}", strict=False))
                for msg in ipr.get_links():
                    name = msg.get_attr("IFLA_IFNAME")
                    if name:
                        links.add(str(name))
        except OSError as exc:
            raise TorSetsError(f"cannot read the machine's addresses and routes: {exc}") from exc
        return cls(frozenset(addresses), frozenset(routes), frozenset(links))

    def conflicts(self, network: IPNetwork) -> list[str]:
        """What of the machine's network overlaps ``network`` (descriptions; empty when nothing does)."""
        found = [
            f"address {a}"
            for a in sorted(self.addresses, key=str)
            if a.version == network.version and a.network.overlaps(network)
        ]
        found += [
            f"route {r}" for r in sorted(self.routes, key=str) if r.version == network.version and r.overlaps(network)
        ]
        return found


@dataclass(frozen=True, slots=True)
class LabPlan:
    """Names and addresses of one lab.

    Attributes:
        canary: the canary, put in the relay namespace.
        client: the client namespace's address, in the same lab network.
        network: the lab network (the canary's /24, or /64 for IPv6).
        client_ns, relay_ns: namespace names (``tor-sets-lab-TOKEN-client`` / ``-relay``).
        client_if, relay_if: the veth ends (``tslTOKENc`` / ``tslTOKENr``, within 15 characters).
        bystander: a second address of the relay namespace that is no canary: connections with it must stay
            silent.
    """

    canary: IPAddress
    client: IPAddress
    network: IPNetwork
    client_ns: str
    relay_ns: str
    client_if: str
    relay_if: str
    bystander: IPAddress | None = None

    @property
    def family(self) -> int:
        """``AF_INET`` or ``AF_INET6``."""
        return socket.AF_INET if self.canary.version == 4 else socket.AF_INET6


def plan_lab(canary: IPAddress | str, *, host: HostNetwork, token: str | None = None) -> LabPlan:
    """Check that ``canary`` is safe to use on this machine and name the lab.

    Args:
        canary: the canary address.
        host: the machine's network (:meth:`HostNetwork.read`).
        token: the lab's unique part (default: 8 random hex digits).

    Raises:
        SanityError: the canary is no documentation address, lies in 192.0.2.0/24, is the network or broadcast
            address of its lab network, or its lab network overlaps an address or route of the machine.

    >>> plan = plan_lab("198.51.100.77", host=HostNetwork(frozenset(), frozenset()), token="0a1b2c3d")
    >>> str(plan.client), str(plan.network), plan.relay_ns, plan.client_if
    ('198.51.100.1', '198.51.100.0/24', 'tor-sets-lab-0a1b2c3d-relay', 'tsl0a1b2c3dc')
    """
    try:
        address = ipaddress.ip_address(canary) if isinstance(canary, str) else canary
    except ValueError:
        raise SanityError(f"canary {canary!r} is not an IP address") from None
    if address.version == 4 and address in FORBIDDEN_NETWORK:
        raise SanityError(f"canary {address} is in {FORBIDDEN_NETWORK}, which this project never uses")
    if not any(address.version == n.version and address in n for n in DOCUMENTATION_NETWORKS):
        allowed = ", ".join(str(n) for n in DOCUMENTATION_NETWORKS)
        raise SanityError(f"canary {address} is not in a documentation range ({allowed})")
    prefix = 24 if address.version == 4 else 64
    network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
    last = network.broadcast_address if address.version == 4 else None
    if address in (network.network_address, last):
        raise SanityError(f"canary {address} is the network or broadcast address of {network}")
    conflicts = host.conflicts(network)
    if conflicts:
        raise SanityError(
            f"canary {address}: its lab network {network} overlaps this machine's " + ", ".join(conflicts[:5])
        )
    client, bystander = _two_free(network, address)
    token = token or secrets.token_hex(4)
    if not re.fullmatch(r"[0-9a-f]{8}", token):
        raise ValueError("token must be 8 lower-case hex digits")
    return LabPlan(
        canary=address,
        client=client,
        network=network,
        client_ns=f"tor-sets-lab-{token}-client",
        relay_ns=f"tor-sets-lab-{token}-relay",
        client_if=f"tsl{token}c",
        relay_if=f"tsl{token}r",
        bystander=bystander,
    )


def _two_free(network: IPNetwork, canary: IPAddress) -> tuple[IPAddress, IPAddress]:
    """The first two addresses of ``network`` after its network address that are not the canary."""
    found = [network.network_address + n for n in range(1, 4) if network.network_address + n != canary]
    return found[0], found[1]


def _iproute_class() -> Any:
    try:
        from pyroute2 import IPRoute
    except ImportError as exc:  # pragma: no cover - pyroute2 is in the selftest extra
        raise TorSetsError("the self-test needs pyroute2: pip install 'tor-sets[selftest]'") from exc
    return IPRoute


def _netns_module() -> Any:
    try:
        from pyroute2 import netns
    except ImportError as exc:  # pragma: no cover
        raise TorSetsError("the self-test needs pyroute2: pip install 'tor-sets[selftest]'") from exc
    return netns


# ---------------------------------------------------------------------------------------------------------------
# The lab
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Observed:
    """One real connection made in the lab, as both of its ends saw it.

    Attributes:
        case: ``outbound`` (client → canary), ``inbound`` (canary → client), or ``bystander-outbound`` /
            ``bystander-inbound`` (the same with the relay namespace's other address, which must stay silent).
        client, client_port: the connecting end.
        server, server_port: the listening end.
        connect_ts_ns: wall clock (ns since the epoch) when ``connect()`` returned.
        accept_ts_ns: wall clock when ``accept()`` returned.
        connect_s: seconds from calling ``connect()`` to the greeting having crossed the connection.
        peer_seen: the canary as the other end saw it (outbound: the client's peer; inbound: the server's).
        connect_result: what the kernel returned from ``connect`` (``-115``, EINPROGRESS: Python connects
            non-blocking when a timeout is set, as here).
        pid: the process that made the syscalls (this one).
    """

    case: str
    client: IPAddress
    client_port: int
    server: IPAddress
    server_port: int
    connect_ts_ns: int
    accept_ts_ns: int
    connect_s: float
    peer_seen: IPAddress
    connect_result: int = -115
    pid: int = 0

    def to_json(self) -> dict[str, object]:
        """The connection as a JSON object."""
        return {
            "case": self.case,
            "client": f"{self.client}",
            "client_port": self.client_port,
            "server": f"{self.server}",
            "server_port": self.server_port,
            "peer_seen": f"{self.peer_seen}",
            "connect_ms": round(self.connect_s * 1000, 3),
        }


@dataclass(frozen=True, slots=True)
class Refused:
    """A connect to the canary that the kernel refused (nothing listened): it must raise no alert.

    Attributes:
        client, client_port: the connecting end.
        server, server_port: the canary and the closed port.
        ts_ns: wall clock when ``connect()`` returned.
        errno: what it returned (ECONNREFUSED).
    """

    client: IPAddress
    client_port: int
    server: IPAddress
    server_port: int
    ts_ns: int
    errno: int


class _Terminated(SystemExit):
    """SIGTERM arrived while a lab existed: unwind through the clean-up."""


_CLONE_NEWNET = 0x40000000  # sched.h
_NETNS_RUN = Path("/run/netns")


def socket_in_namespace(ns: str, family: int, kind: int) -> socket.socket:
    """A socket of the named network namespace, made by ``socket()`` in this very thread.

    The thread enters the namespace (``setns``; it affects only the calling thread), makes the socket and comes back.
    So the kernel event Falco sees is this process's own ``socket()``, and Falco knows the file descriptor (a socket
    made in a forked child and passed over a Unix socket, as :func:`pyroute2.netns.create_socket` does, reaches
    Falco's file-descriptor table late or not at all, and its alerts then name ``<NA>`` or ``<unknown>``).

    Raises:
        OSError: no such namespace, or ``setns`` refused (not root).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/thread-self/ns/net", "rb") as home, open(_NETNS_RUN / ns, "rb") as target:
        if libc.setns(target.fileno(), _CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns into {ns}: {os.strerror(error)}")
        try:
            return socket.socket(family, kind)
        finally:
            if libc.setns(home.fileno(), _CLONE_NEWNET) != 0:  # pragma: no cover - back home cannot fail as root
                error = ctypes.get_errno()
                raise OSError(error, f"setns back from {ns}: {os.strerror(error)}")


class Lab:
    """Two network namespaces joined by a veth pair, for one self-test; a context manager.

    Entering creates everything (and undoes what it did if a step fails); leaving closes every socket, deletes
    the veth and removes both namespaces, also when SIGTERM or SIGINT arrives in between (the main thread's
    handlers are replaced for the duration and raise ``SystemExit(128 + signal)``, at once, or after the clean-up
    when it arrives during it), and even after SIGKILL (a watcher process removes them).

    Args:
        plan: from :func:`plan_lab`.
        timeout: seconds any socket operation may take.
    """

    def __init__(self, plan: LabPlan, *, timeout: float = 5.0) -> None:
        self.plan = plan
        self.timeout = timeout
        self._created: list[str] = []
        self._sockets: list[socket.socket] = []
        self._previous_handlers: dict[int, Any] = {}
        self._signalled: int | None = None
        self._cleaning = False
        self._owner = os.getpid()
        self.setup_s = 0.0
        self._reaper: subprocess.Popen[bytes] | None = None
        self._reaper_fd: int | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        if os.geteuid() != 0:
            raise TorSetsError("the self-test needs root: it creates network namespaces")
        self._owner = os.getpid()
        start = time.perf_counter()
        try:
            self._trap_sigterm()
            self._start_reaper()
            self._build()
        except BaseException:
            self.close()
            raise
        self.setup_s = time.perf_counter() - start
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _start_reaper(self) -> None:
        """Start a watcher that removes the namespaces if this process dies without closing the lab (SIGKILL).

        The watcher runs in a session of its own and waits for the end of a pipe this process holds; when the
        pipe closes without a ``done`` first, it removes the namespaces by name. ``close()`` writes ``done``.
        """
        read_fd, write_fd = os.pipe()
        names = [self.plan.client_ns, self.plan.relay_ns]
        try:
            self._reaper = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _REAPER, str(read_fd), *names],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(read_fd,),
                start_new_session=True,
            )
        finally:
            os.close(read_fd)
        os.set_inheritable(write_fd, False)
        self._reaper_fd = write_fd

    def _stop_reaper(self) -> None:
        fd, self._reaper_fd = self._reaper_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.write(fd, b"done")
            os.close(fd)
        if self._reaper is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._reaper.wait(5)
            self._reaper = None

    def _trap_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: FrameType | None) -> None:
            if os.getpid() != self._owner:
                # a child pyroute2 forked to enter a namespace inherits this handler: it must just end, never
                # unwind the parent's stack copy (which would run the clean-up and remove the namespaces)
                os._exit(128 + signum)
            # remembered, so that close() raises it even when this raise is swallowed: Python ignores exceptions
            # in at-fork callbacks (logging's), and pyroute2 forks to enter a namespace
            self._signalled = signum
            if not self._cleaning:
                raise _Terminated(128 + signum)

        self._previous_handlers = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _build(self) -> None:
        netns = _netns_module()
        iproute = _iproute_class()
        plan = self.plan
        try:
            for name in (plan.client_ns, plan.relay_ns):
                if name in netns.listnetns():
                    raise TorSetsError(f"a namespace named {name} already exists; not touching it")
                self._created.append(name)  # first: a SIGTERM during create must still lead to its removal
                netns.create(name)
            with iproute(netns=plan.client_ns, flags=0) as ipr:
                # both ends are born inside the namespaces: the peer goes straight to the relay namespace
                ipr.link(
                    "add",
                    ifname=plan.client_if,
                    kind="veth",
                    peer={"ifname": plan.relay_if, "net_ns_fd": plan.relay_ns},
                )
            relay_addresses = [plan.canary] + ([plan.bystander] if plan.bystander is not None else [])
            for ns, ifname, addresses in (
                (plan.client_ns, plan.client_if, [plan.client]),
                (plan.relay_ns, plan.relay_if, relay_addresses),
            ):
                with iproute(netns=ns, flags=0) as ipr:
                    (index,) = ipr.link_lookup(ifname=ifname)
                    for address in addresses:
                        ipr.addr(
                            "add",
                            index=index,
                            address=str(address),
                            prefixlen=plan.network.prefixlen,
                            flags=_IFA_F_NODAD,
                        )
                    ipr.link("set", index=index, state="up")
                    (lo,) = ipr.link_lookup(ifname="lo")
                    ipr.link("set", index=lo, state="up")
            for ns, ifname in ((plan.client_ns, plan.client_if), (plan.relay_ns, plan.relay_if)):
                self._wait_up(iproute, ns, ifname)
        except TorSetsError:
            raise
        except Exception as exc:  # OSError, pyroute2's NetlinkError and the errors its children pass back
            raise TorSetsError(f"cannot set up the self-test namespaces: {exc}") from exc

    def _wait_up(self, iproute: Any, ns: str, ifname: str) -> None:
        deadline = time.monotonic() + self.timeout
        with iproute(netns=ns, flags=0) as ipr:
            (index,) = ipr.link_lookup(ifname=ifname)
            while ipr.get_links(index)[0].get_attr("IFLA_OPERSTATE") != "UP":
                if time.monotonic() > deadline:
                    raise TorSetsError(f"{ifname} in {ns} did not come up within {self.timeout:g} s")
                time.sleep(0.01)

    def close(self) -> None:
        """Close every socket, delete the veth, remove the namespaces; idempotent, never raises."""
        if os.getpid() != self._owner:
            return  # a forked child never cleans up its parent's lab
        self._cleaning = True
        try:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()
            self._sockets.clear()
            if self.plan.client_ns in self._created:
                with contextlib.suppress(Exception), _iproute_class()(netns=self.plan.client_ns, flags=0) as ipr:
                    for index in ipr.link_lookup(ifname=self.plan.client_if):
                        ipr.link("del", index=index)
            netns = _netns_module()
            for name in reversed(self._created):
                try:
                    netns.remove(name)
                except FileNotFoundError:
                    pass  # interrupted before it was made
                except OSError as exc:
                    log.warning("selftest: could not remove namespace %s: %s", name, exc)
            self._created.clear()
            self._stop_reaper()
        finally:
            for sig, previous in self._previous_handlers.items():
                signal.signal(sig, previous)
            self._previous_handlers = {}
            self._cleaning = False
        signalled, self._signalled = self._signalled, None
        if signalled is not None:
            raise _Terminated(128 + signalled)

    @property
    def namespaces(self) -> tuple[str, ...]:
        """The lab's namespaces (empty once closed)."""
        return tuple(self._created)

    # -- connections ----------------------------------------------------------------------------------------

    def _socket(self, ns: str) -> socket.socket:
        try:
            sock = socket_in_namespace(ns, self.plan.family, socket.SOCK_STREAM)
        except OSError as exc:
            raise TorSetsError(f"cannot open a socket in {ns}: {exc}") from exc
        self._sockets.append(sock)
        sock.settimeout(self.timeout)
        return sock

    def _connect(
        self,
        case: str,
        *,
        server_ns: str,
        server_ip: IPAddress,
        client_ns: str,
        client_ip: IPAddress,
        port: int,
        expect_peer: IPAddress | None = None,
    ) -> Observed:
        try:
            server = self._socket(server_ns)
            server.bind((str(server_ip), port))
            server.listen(1)
            server_port = server.getsockname()[1]
            client = self._socket(client_ns)
            client.bind((str(client_ip), 0))
            start = time.perf_counter()
            client.connect((str(server_ip), server_port))
            connect_ts = time.time_ns()
            conn, peer = server.accept()
            accept_ts = time.time_ns()
            self._sockets.append(conn)
            conn.settimeout(self.timeout)
            client.sendall(_GREETING)
            greeting = b""
            while len(greeting) < len(_GREETING):
                chunk = conn.recv(64)
                if not chunk:
                    break
                greeting += chunk
            connect_s = time.perf_counter() - start
            client_seen = ipaddress.ip_address(client.getpeername()[0])
            local = client.getsockname()
            accepted_peer = ipaddress.ip_address(peer[0])
        except OSError as exc:
            raise TorSetsError(f"selftest {case}: the connection {client_ip} -> {server_ip} failed: {exc}") from exc
        finally:
            for sock in self._sockets[:]:
                with contextlib.suppress(OSError):
                    sock.close()
            self._sockets.clear()
        if greeting != _GREETING:
            raise TorSetsError(f"selftest {case}: the server did not receive the client's greeting")
        if client_seen != server_ip or accepted_peer != client_ip or (peer[1] != local[1]):
            raise TorSetsError(
                f"selftest {case}: the ends disagree: client sees {client_seen}, server sees {accepted_peer}:{peer[1]}"
            )
        canary_seen = client_seen if case.endswith("outbound") else accepted_peer
        wanted = expect_peer if expect_peer is not None else self.plan.canary
        if canary_seen != wanted:
            raise TorSetsError(f"selftest {case}: the peer seen is {canary_seen}, not {wanted}")
        return Observed(
            case=case,
            client=client_ip,
            client_port=int(local[1]),
            server=server_ip,
            server_port=int(server_port),
            connect_ts_ns=connect_ts,
            accept_ts_ns=accept_ts,
            connect_s=connect_s,
            peer_seen=canary_seen,
            pid=os.getpid(),
        )

    def outbound(self, port: int = 0) -> Observed:
        """A client in the client namespace connects to a server listening on the canary."""
        plan = self.plan
        return self._connect(
            "outbound",
            server_ns=plan.relay_ns,
            server_ip=plan.canary,
            client_ns=plan.client_ns,
            client_ip=plan.client,
            port=port,
        )

    def inbound(self, port: int = 0) -> Observed:
        """The canary connects to a server listening in the client namespace."""
        plan = self.plan
        return self._connect(
            "inbound",
            server_ns=plan.client_ns,
            server_ip=plan.client,
            client_ns=plan.relay_ns,
            client_ip=plan.canary,
            port=port,
        )

    def run(self, cases: Iterable[Case] = CASES, port: int = 0) -> tuple[Observed, ...]:
        """Make one connection per case, in order."""
        return tuple(self.outbound(port) if case == "outbound" else self.inbound(port) for case in cases)

    def bystander(self) -> tuple[Observed, Observed]:
        """An outbound and an inbound connection with the bystander, the relay namespace's other address."""
        plan = self.plan
        if plan.bystander is None:
            raise TorSetsError("this lab has no bystander address")
        out = self._connect(
            "bystander-outbound",
            server_ns=plan.relay_ns,
            server_ip=plan.bystander,
            client_ns=plan.client_ns,
            client_ip=plan.client,
            port=0,
            expect_peer=plan.bystander,
        )
        into = self._connect(
            "bystander-inbound",
            server_ns=plan.client_ns,
            server_ip=plan.client,
            client_ns=plan.relay_ns,
            client_ip=plan.bystander,
            port=0,
            expect_peer=plan.bystander,
        )
        return out, into

    def refused(self) -> Refused:
        """A blocking connect from the client to a canary port nobody listens on: the kernel refuses it at once.

        The port is found by binding and closing a socket on the canary, so nothing listens there.
        """
        plan = self.plan
        try:
            probe = self._socket(plan.relay_ns)
            probe.bind((str(plan.canary), 0))
            port = int(probe.getsockname()[1])
            probe.close()
            client = self._socket(plan.client_ns)
            client.settimeout(None)  # blocking: the refusal comes back from connect() itself, not later
            client.bind((str(plan.client), 0))
            local_port = int(client.getsockname()[1])
            errno_ = client.connect_ex((str(plan.canary), port))
            ts = time.time_ns()
        except OSError as exc:
            raise TorSetsError(f"selftest refused: the probe to {plan.canary} failed: {exc}") from exc
        finally:
            for sock in self._sockets[:]:
                with contextlib.suppress(OSError):
                    sock.close()
            self._sockets.clear()
        if errno_ == 0:
            raise TorSetsError(f"selftest refused: port {port} on {plan.canary} accepted a connection")
        return Refused(plan.client, local_port, plan.canary, port, ts, errno_)


# ---------------------------------------------------------------------------------------------------------------
# Matching alerts
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Expectation:
    """The alert one observed connection must cause.

    Attributes:
        case: the case.
        rules: names of the rules that may report it.
        client, client_port, server, server_port: the tuple the alert must show.
        ts_ns: when the syscall the rule watches happened (connect for outbound, accept for inbound).
    """

    case: str
    rules: frozenset[str]
    client: IPAddress
    client_port: int
    server: IPAddress
    server_port: int
    ts_ns: int


def expectations(observed: Iterable[Observed]) -> tuple[Expectation, ...]:
    """The alert each observed connection must cause."""
    return tuple(
        Expectation(
            case=o.case,
            rules=CASE_RULES.get(o.case, frozenset()),
            client=o.client,
            client_port=o.client_port,
            server=o.server,
            server_port=o.server_port,
            ts_ns=o.connect_ts_ns if o.case.endswith("outbound") else o.accept_ts_ns,
        )
        for o in observed
    )


_NAME_PORTS = re.compile(r":(\d+)->.*:(\d+)$")


def _port(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def alert_matches(expected: Expectation, alert: Mapping[str, Any]) -> bool:
    """Whether ``alert`` (a Falco JSON alert) reports the connection ``expected`` describes.

    The rule must be one of ``expected.rules`` and ``fd.sip``/``fd.cip`` must be the server and client. Ports are
    compared from ``fd.sport``/``fd.cport``, else ``fd.lport``/``fd.rport`` (as a pair), else ``fd.name``, when
    the alert has them.
    """
    if alert.get("rule") not in expected.rules:
        return False
    addresses = alert_addresses(alert)
    if addresses.get("fd.sip") != str(expected.server) or addresses.get("fd.cip") != str(expected.client):
        return False
    fields = alert.get("output_fields")
    fields = fields if isinstance(fields, Mapping) else {}
    wanted = (expected.client_port, expected.server_port)
    sport, cport = _port(fields.get("fd.sport")), _port(fields.get("fd.cport"))
    if sport is not None and cport is not None:
        return (cport, sport) == wanted
    lport, rport = _port(fields.get("fd.lport")), _port(fields.get("fd.rport"))
    if lport is not None and rport is not None:
        return sorted((lport, rport)) == sorted(wanted)
    name = fields.get("fd.name")
    if isinstance(name, str):
        m = _NAME_PORTS.search(name)
        if m:
            return (int(m[1]), int(m[2])) == wanted
    return True


# ---------------------------------------------------------------------------------------------------------------
# Sinks
# ---------------------------------------------------------------------------------------------------------------


class Sink(Protocol):
    """Where Falco's alerts arrive."""

    def mark(self) -> None:
        """Remember where the sink ends now; :meth:`poll` returns only what arrives later."""

    def poll(self) -> list[dict[str, Any]]:
        """The alerts that arrived since the mark or the last poll."""

    def deliver(self, lines: Sequence[bytes]) -> None:
        """Hand alert lines to the sink as Falco would (used by :func:`simulate_alerts`)."""

    def describe(self) -> str:
        """The sink for reports."""


def _alerts_in(lines: Iterable[bytes]) -> list[dict[str, Any]]:
    alerts = []
    for line in lines:
        try:
            doc = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(doc, dict):
            alerts.append(doc)
    return alerts


class FileSink:
    """A file Falco appends JSON alerts to (``file_output`` with ``json_output: true``).

    Reading starts at the end the file had at :meth:`mark`; a file that is replaced (another inode) or truncated
    is read again from its start; a line still being written is kept until its newline arrives.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._inode: int | None = None
        self._partial = b""

    def describe(self) -> str:
        """``file:PATH``."""
        return f"file:{self.path}"

    def mark(self) -> None:
        """Remember the file's current end (nothing yet if it does not exist)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._offset, self._inode = 0, None
        except OSError as exc:
            raise TorSetsError(f"cannot read the sink {self.path}: {exc.strerror or exc}") from exc
        else:
            self._offset, self._inode = st.st_size, st.st_ino
        self._partial = b""

    def poll(self) -> list[dict[str, Any]]:
        """New complete lines since the last call, as alerts (lines that are no JSON object are skipped)."""
        try:
            with self.path.open("rb") as src:
                st = os.fstat(src.fileno())
                if self._inode is not None and (st.st_ino != self._inode or st.st_size < self._offset):
                    self._offset, self._partial = 0, b""
                self._inode = st.st_ino
                src.seek(self._offset)
                data = src.read()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise TorSetsError(f"cannot read the sink {self.path}: {exc.strerror or exc}") from exc
        self._offset += len(data)
        data = self._partial + data
        complete, _, self._partial = data.rpartition(b"\n")
        return _alerts_in(complete.split(b"\n")) if complete else []

    def deliver(self, lines: Sequence[bytes]) -> None:
        """Append lines to the file (one ``write`` each, as Falco's file output does)."""
        try:
            with self.path.open("ab") as out:
                for line in lines:
                    out.write(line if line.endswith(b"\n") else line + b"\n")
                    out.flush()
        except OSError as exc:
            raise TorSetsError(f"cannot write the sink {self.path}: {exc.strerror or exc}") from exc


class HttpSink:
    """A ``tor-sets enrich --listen`` endpoint on loopback: alerts are read from its ``GET /alerts``.

    Args:
        url: ``http://127.0.0.1:PORT`` (or ``[::1]`` / ``localhost``); nothing else is contacted.
        timeout: seconds per request.
    """

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        if parts.scheme != "http" or not parts.port:
            raise SanityError(f"sink URL must be http://HOST:PORT on loopback, got {url!r}")
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise SanityError(f"sink URL must be on loopback (127.0.0.1, ::1, localhost), got {host!r}")
        self.url = f"{parts.scheme}://{parts.netloc}"
        self.timeout = timeout
        self._after = 0
        self._session = requests.Session()

    def describe(self) -> str:
        """The endpoint's URL."""
        return self.url

    def _get(self, after: int) -> dict[str, Any]:
        try:
            response = self._session.get(f"{self.url}/alerts", params={"after": after}, timeout=self.timeout)
            response.raise_for_status()
            doc = response.json()
        except (requests.RequestException, ValueError) as exc:
            raise TorSetsError(f"cannot read alerts from {self.url}/alerts: {exc}") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("next"), int) or not isinstance(doc.get("alerts"), list):
            raise TorSetsError(f"{self.url}/alerts did not answer like tor-sets enrich")
        return doc

    def mark(self) -> None:
        """Remember the number of the endpoint's newest alert."""
        self._after = int(self._get(1 << 62)["next"])

    def poll(self) -> list[dict[str, Any]]:
        """Alerts the endpoint received since the last call."""
        doc = self._get(self._after)
        self._after = int(doc["next"])
        return [a for a in doc["alerts"] if isinstance(a, dict)]

    def deliver(self, lines: Sequence[bytes]) -> None:
        """POST each line, as Falco's ``http_output`` does."""
        for line in lines:
            try:
                response = self._session.post(
                    self.url + "/",
                    data=line.rstrip(b"\n"),
                    headers={"Content-Type": "application/json"},
                    timeout=self.timeout,
                )
                response.raise_for_status()
            except requests.RequestException as exc:
                raise TorSetsError(f"cannot post an alert to {self.url}: {exc}") from exc


def open_sink(spec: str) -> FileSink | HttpSink:
    """``http://...`` → :class:`HttpSink`, anything else → :class:`FileSink`."""
    if spec.startswith(("http://", "https://")):
        return HttpSink(spec)
    return FileSink(Path(spec))


# ---------------------------------------------------------------------------------------------------------------
# Waiting and reporting
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CaseResult:
    """What became of one case.

    Attributes:
        observed: the connection made.
        ok: an alert for it arrived in time.
        rule: the rule of that alert.
        alert_after_s: seconds from the syscall to the alert being read from the sink.
        alert_time: the alert's own ``time``.
    """

    observed: Observed
    ok: bool
    rule: str | None = None
    alert_after_s: float | None = None
    alert_time: str | None = None

    def to_json(self) -> dict[str, object]:
        """The result as a JSON object."""
        return {
            **self.observed.to_json(),
            "ok": self.ok,
            "rule": self.rule,
            "alert_after_s": None if self.alert_after_s is None else round(self.alert_after_s, 3),
            "alert_time": self.alert_time,
        }


def wait_for_alerts(
    sink: Sink,
    observed: Sequence[Observed],
    *,
    timeout: float,
    interval: float = 0.2,
) -> tuple[CaseResult, ...]:
    """Poll ``sink`` until each observed connection has its alert, or ``timeout`` seconds pass.

    Returns:
        One result per connection, in order; ``ok`` False for those whose alert did not arrive.
    """
    wanted = expectations(observed)
    found: dict[int, tuple[dict[str, Any], int]] = {}
    deadline = time.monotonic() + timeout
    while True:
        alerts = sink.poll()
        now_ns = time.time_ns()
        for alert in alerts:
            for number, expected in enumerate(wanted):
                if number not in found and alert_matches(expected, alert):
                    found[number] = (alert, now_ns)
        if len(found) == len(wanted) or time.monotonic() >= deadline:
            break
        time.sleep(min(interval, max(deadline - time.monotonic(), 0)))
    results = []
    for number, (obs, expected) in enumerate(zip(observed, wanted, strict=True)):
        if number not in found:
            results.append(CaseResult(obs, ok=False))
            continue
        alert, seen_ns = found[number]
        alert_time = alert.get("time")
        results.append(
            CaseResult(
                obs,
                ok=True,
                rule=str(alert.get("rule")),
                alert_after_s=max(seen_ns - expected.ts_ns, 0) / 1e9,
                alert_time=alert_time if isinstance(alert_time, str) else None,
            )
        )
    return tuple(results)


#: version of the ``selftest --json`` document
SCHEMA = 1


@dataclass(frozen=True, slots=True)
class Report:
    """The outcome of one self-test.

    Attributes:
        canary: the canary.
        client: the lab client's address.
        sink: where alerts were read.
        timeout_s: how long alerts were waited for.
        setup_s: seconds to create the lab.
        wait_s: seconds spent waiting for alerts.
        cases: one result per case.
        simulated: the alerts came from a replay through ``engine``, not from a live Falco.
        engine: the engine of a simulation.
    """

    canary: IPAddress
    client: IPAddress
    sink: str
    timeout_s: float
    setup_s: float
    wait_s: float
    cases: tuple[CaseResult, ...]
    simulated: bool = False
    engine: str | None = None

    @property
    def ok(self) -> bool:
        """Every case's alert arrived."""
        return bool(self.cases) and all(c.ok for c in self.cases)

    def to_json(self) -> dict[str, object]:
        """The report as one JSON document (``schema`` 1)."""
        return {
            "schema": SCHEMA,
            "ok": self.ok,
            "canary": str(self.canary),
            "client": str(self.client),
            "sink": self.sink,
            "timeout_s": self.timeout_s,
            "setup_s": round(self.setup_s, 3),
            "wait_s": round(self.wait_s, 3),
            "simulated": self.simulated,
            "engine": self.engine,
            "cases": [c.to_json() for c in self.cases],
        }


def format_table(report: Report) -> str:
    """The report as a text table."""
    rows = [("case", "connection", "peer seen", "connect", "alert", "after", "rule")]
    for c in report.cases:
        o = c.observed
        rows.append(
            (
                o.case,
                f"{_endpoint(o.client, o.client_port)} -> {_endpoint(o.server, o.server_port)}",
                str(o.peer_seen),
                f"{o.connect_s * 1000:.2f} ms",
                "PASS" if c.ok else "FAIL",
                "-" if c.alert_after_s is None else f"{c.alert_after_s:.3f} s",
                c.rule or f"(none within {report.timeout_s:g} s)",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    source = f"simulated with {report.engine}" if report.simulated else "live"
    lines.append(
        f"{'PASS' if report.ok else 'FAIL'}: canary {report.canary}, sink {report.sink} ({source}), "
        f"lab set up in {report.setup_s:.3f} s, waited {report.wait_s:.3f} s"
    )
    return "\n".join(lines) + "\n"


def _endpoint(address: IPAddress, port: int) -> str:
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def run_selftest(
    canary: IPAddress | str,
    sink: Sink,
    *,
    cases: Sequence[Case] = CASES,
    timeout: float = 30.0,
    port: int = 0,
    host: HostNetwork | None = None,
    on_connected: Callable[[tuple[Observed, ...]], None] | None = None,
    simulated_by: str | None = None,
) -> Report:
    """Run the self-test: plan, mark the sink, make the connections in a lab, remove the lab, wait for alerts.

    Args:
        canary: the canary (must be in the rules Falco runs: ``tor-sets build --canary``).
        sink: where Falco's alerts arrive.
        cases: which connections to make.
        timeout: seconds to wait for the alerts.
        port: server port in the lab (0: any free one).
        host: the machine's network (default: read now).
        on_connected: called with the connections once the lab is gone and before waiting (a simulation hands
            its alerts to the sink here).
        simulated_by: the engine name of a simulation, for the report.

    Raises:
        SanityError: the canary is not safe here.
        TorSetsError: the lab or a connection failed, or the sink cannot be read.
    """
    if not cases:
        raise SanityError("no case to test")
    plan = plan_lab(canary, host=host if host is not None else HostNetwork.read())
    sink.mark()
    with Lab(plan) as lab:
        observed = lab.run(cases, port)
        setup_s = lab.setup_s
    for o in observed:
        log.info(
            "selftest: %s %s:%d -> %s:%d, peer seen %s",
            o.case,
            o.client,
            o.client_port,
            o.server,
            o.server_port,
            o.peer_seen,
        )
    if on_connected is not None:
        on_connected(observed)
    log.info("selftest: waiting up to %g s for the alerts at %s", timeout, sink.describe())
    start = time.monotonic()
    results = wait_for_alerts(sink, observed, timeout=timeout)
    return Report(
        canary=plan.canary,
        client=plan.client,
        sink=sink.describe(),
        timeout_s=timeout,
        setup_s=setup_s,
        wait_s=time.monotonic() - start,
        cases=results,
        simulated=simulated_by is not None,
        engine=simulated_by,
    )


# ---------------------------------------------------------------------------------------------------------------
# Simulation: a real engine instead of a live Falco
# ---------------------------------------------------------------------------------------------------------------

#: fields a simulation asks the engine for (printable on both sysdig builds); other output fields are null
SIMULATED_FIELDS: tuple[str, ...] = (
    "evt.type",
    "evt.rawres",
    "fd.name",
    "fd.lport",
    "fd.rport",
    "fd.sip",
    "fd.cip",
    "fd.sport",
    "fd.cport",
    "proc.name",
    "proc.pid",
    "proc.cmdline",
    "user.name",
)
_NUMERIC_FIELDS = frozenset({"evt.rawres", "fd.lport", "fd.rport", "fd.sport", "fd.cport", "proc.pid"})


def _connections(observed: Sequence[Observed]) -> list[Connection]:
    """Each observed connection as the kernel saw it: the client's connect, then the server's accept4."""
    events: list[Connection] = []
    for o in observed:
        events.append(
            Connection(
                "connect", o.client, o.client_port, o.server, o.server_port, o.connect_ts_ns, o.pid, o.connect_result
            )
        )
        events.append(Connection("accept4", o.client, o.client_port, o.server, o.server_port, o.accept_ts_ns, o.pid))
    events.sort(key=lambda c: c.ts_ns)
    spaced: list[Connection] = []
    for conn in events:  # the capture writer wants increasing timestamps at least MIN_GAP_NS apart
        if spaced and conn.ts_ns < spaced[-1].ts_ns + 10 * MIN_GAP_NS:
            conn = Connection(
                conn.kind,
                conn.client,
                conn.client_port,
                conn.server,
                conn.server_port,
                spaced[-1].ts_ns + 10 * MIN_GAP_NS,
                conn.pid,
                conn.result,
            )
        spaced.append(conn)
    return spaced


def _this_process(pid: int) -> Process:
    """The capture's view of process ``pid``: its ``comm`` and the arguments it was started with."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text(encoding="utf-8", errors="replace").strip()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", errors="replace").split("\0")
    except OSError:
        comm, argv = "tor-sets", [sys.executable, *sys.argv]
    args = tuple(a for a in argv[1:] if a)
    return Process(pid=pid, comm=comm[:15] or "tor-sets", exe=sys.executable, args=args)


def simulate_alerts(
    observed: Sequence[Observed], rules: Sequence[Path], engine: Engine, *, hostname: str | None = None
) -> list[bytes]:
    """What a Falco running ``rules`` would have written for ``observed``, computed by a real engine.

    The connections become a capture (connect and accept4 exit of each, by this process), which ``engine``
    replays against the rules files (:meth:`~tor_sets.engines.Engine.replay`); every match becomes a JSON alert
    line shaped like Falco's (:func:`tor_sets.falco.alerts.alert_json`; output fields without a value are null).

    Raises:
        CaptureError: the capture cannot be written.
        EngineError, RuleError: the engine failed or rejected the rules.
    """
    hostname = hostname or socket.gethostname()
    loaded = {rule.name: rule for rule in load_rules(*rules).rules.values()}
    fields = tuple(dict.fromkeys([*SIMULATED_FIELDS, *(f for r in loaded.values() for f in output_fields(r.output))]))
    connections = _connections(observed)
    processes = [_this_process(pid) for pid in sorted({c.pid for c in connections})]
    alerts: list[tuple[int, bytes]] = []
    with tempfile.TemporaryDirectory(prefix="tor-sets-selftest-") as tmp:
        capture = Path(tmp) / "selftest.scap"
        write_capture(capture, connections, processes=processes, hostname=hostname)
        replay = engine.replay(capture, rules, fields=fields)
    for name, matches in replay.hits.items():
        rule = loaded[name]
        for match in matches:
            doc = alert_json(
                rule=rule.name,
                priority=rule.priority,
                output=rule.output,
                values=match.fields,
                ts_ns=match.ts_ns,
                hostname=hostname,
                source=rule.source,
                tags=rule.tags,
                numeric=_NUMERIC_FIELDS,
            )
            alerts.append((match.ts_ns, json.dumps(doc, separators=(",", ":")).encode() + b"\n"))
    alerts.sort(key=lambda item: item[0])
    return [line for _, line in alerts]
