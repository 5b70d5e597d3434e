"""The self-test's lab: two network namespaces joined by a veth pair, and real connections made in them.

Exports :class:`Lab`, :func:`socket_in_namespace`, the connections it makes (:class:`Observed`, :class:`Refused`),
and the cases (:data:`CASES`).

:class:`Lab` creates two network namespaces with pyroute2, ``client`` and ``relay``, joined by a veth pair that is
created inside them (nothing is ever added to the machine's own namespace), puts the canary in ``relay`` and a
second address of the lab network in ``client``, and adds no default route. Sockets are opened inside the
namespaces by this very thread (:func:`socket_in_namespace`: ``setns`` in and out around ``socket()``), so Falco
sees ``socket``, ``connect`` and ``accept4`` of ``tor-sets``, with file descriptors it knows. Namespaces are removed
on every way out, SIGTERM included, and after SIGKILL by a watcher process (the reaper).

``outbound``: a server in ``relay`` listens on the canary, a client in ``client`` connects to it (Falco: the
outbound rule, ``fd.sip`` = canary). ``inbound``: a server in ``client`` accepts a connection made from the canary in
``relay`` (Falco: the inbound rule, ``fd.cip`` = canary). Each end's view of the tuple is checked: the peer seen is
the canary.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Literal

from tor_sets.errors import TorSetsError
from tor_sets.relays import IPAddress
from tor_sets.runtime.selftest.plan import LabPlan, iproute_class

__all__ = ["CASES", "Case", "Lab", "Observed", "Refused", "socket_in_namespace"]

log = logging.getLogger(__name__)

Case = Literal["outbound", "inbound"]
CASES: tuple[Case, ...] = ("outbound", "inbound")

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


def _netns_module() -> Any:
    """pyroute2's ``netns`` module, imported when first needed (see :func:`~.plan.iproute_class`)."""
    try:
        from pyroute2 import netns
    except ImportError as exc:  # pragma: no cover
        raise TorSetsError("the self-test needs pyroute2: pip install 'tor-sets[selftest]'") from exc
    return netns


def _endpoint(address: IPAddress, port: int) -> str:
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def _connection(client: IPAddress, client_port: int, server: IPAddress, server_port: int) -> str:
    return f"{_endpoint(client, client_port)} -> {_endpoint(server, server_port)}"


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

    @property
    def connection(self) -> str:
        """``CLIENT:PORT -> SERVER:PORT`` (IPv6 in brackets)."""
        return _connection(self.client, self.client_port, self.server, self.server_port)

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

    @property
    def connection(self) -> str:
        """``CLIENT:PORT -> SERVER:PORT`` (IPv6 in brackets)."""
        return _connection(self.client, self.client_port, self.server, self.server_port)


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
        iproute = iproute_class()
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
                with contextlib.suppress(Exception), iproute_class()(netns=self.plan.client_ns, flags=0) as ipr:
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
