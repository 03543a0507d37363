"""Loopback ports for test servers, reserved across every process on the machine.

A port handed out by `free_ports` is bound for a moment to prove it free, then *reserved*
until `release_ports` (or this process's exit): no other caller of `free_ports`, in this
process or any other (a CI run beside a fault soak or a benchmark), gets it meanwhile. That
matters while its server is down (killed, power cut): the port is unbound then, and without the
reservation another test run could take it, so the restarted server could not bind it.

The reservation is a POSIX record lock on byte `port` of one file per user in the temp
directory: one descriptor for any number of ports, and the kernel drops every lock of a process
that dies, so a crashed run leaves nothing behind.

Ports lie below the kernel's ephemeral range, from which every outgoing connection gets its
local port: a port from bind(0) is an ephemeral one, and while its node is down a client
connection may take it as its local port (seen once under load: "address already in use" on
restart).
"""

from __future__ import annotations

import fcntl
import os
import random
import socket
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

_PORT_FLOOR = 15000
_RESERVED = range(23700, 23900)  # scripts/start-cluster.sh's fixed ports
_rng = random.SystemRandom()  # never the seeded global generator: processes would agree
# per user: a file another user created may not be openable for writing (fs.protected_regular)
_LOCK_FILE = Path(tempfile.gettempdir()) / f"raftreg-test-ports-{os.getuid()}.lock"


def _ephemeral_floor() -> int:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


class _Reservations:
    """This process's reserved ports. Record locks are per process (a process never conflicts
    with its own), so `held` is what keeps two owners in one process apart. The descriptor is
    never closed: closing any descriptor of the file would drop all of this process's locks.
    A fork does not inherit the locks; the child has its own (empty) set."""

    def __init__(self) -> None:
        self.held: set[int] = set()
        self.mutex = threading.Lock()
        self._fd: int | None = None
        self._pid = 0

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
            self._pid = os.getpid()
            self.held = set()
        return self._fd

    def try_take(self, port: int) -> bool:
        """Reserve `port` unless this or another process holds it."""
        if port in self.held:
            return False
        try:
            fcntl.lockf(self._file(), fcntl.LOCK_EX | fcntl.LOCK_NB, 1, port, os.SEEK_SET)
        except OSError:
            return False
        self.held.add(port)
        return True

    def give_back(self, port: int) -> None:
        if port in self.held:
            self.held.discard(port)
            fcntl.lockf(self._file(), fcntl.LOCK_UN, 1, port, os.SEEK_SET)


_reservations = _Reservations()


def free_ports(n: int) -> list[int]:
    """n distinct ports, at random below the ephemeral range, each free a moment ago (all held
    open together, then released) and reserved until `release_ports`."""
    floor, ceiling = _PORT_FLOOR, _ephemeral_floor() - 1
    if ceiling - floor < 2000:  # an unusual ip_local_port_range leaves no room below it
        ceiling = 65535
    socks: list[socket.socket] = []
    taken: list[int] = []
    with _reservations.mutex:
        try:
            for _ in range(n):
                for _attempt in range(500):
                    port = _rng.randint(floor, ceiling)
                    if port in _RESERVED or not _reservations.try_take(port):
                        continue
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    try:
                        s.bind(("127.0.0.1", port))
                    except OSError:
                        s.close()
                        _reservations.give_back(port)
                        continue
                    socks.append(s)
                    taken.append(port)
                    break
                else:
                    for p in taken:
                        _reservations.give_back(p)
                    raise OSError(f"no free, unreserved port found in {floor}..{ceiling}")
            return taken
        finally:
            for s in socks:
                s.close()


def release_ports(ports: Iterable[int]) -> None:
    """End the reservation of ports from `free_ports` (their servers are stopped for good)."""
    with _reservations.mutex:
        for p in ports:
            _reservations.give_back(p)
