"""Test ports are reserved across processes: a CI run beside a fault soak must never hand a
port to one test while another run's node, down for a moment, still owns it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from raftreg.testing import ports
from raftreg.testing.ports import free_ports, release_ports


def test_a_reserved_port_is_not_handed_out_again_until_released() -> None:
    first = free_ports(50)
    try:
        assert len(set(first)) == 50
        assert all(p < ports._ephemeral_floor() for p in first)
        again = free_ports(200)
        try:
            assert not set(first) & set(again)
        finally:
            release_ports(again)
    finally:
        release_ports(first)
    # released: this process may reserve them again (no other process holds them)
    assert all(ports._reservations.try_take(p) for p in first)
    release_ports(first)


_CHILD = """
import sys
from raftreg.testing.ports import free_ports
print(*free_ports(20), flush=True)
sys.stdin.read()  # hold the reservation until the parent closes stdin
"""


@pytest.mark.slow
def test_another_process_reservation_holds_until_it_exits() -> None:
    child = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdin is not None
        theirs = [int(p) for p in child.stdout.readline().split()]
        assert len(theirs) == 20
        assert not any(ports._reservations.try_take(p) for p in theirs)
        child.stdin.close()
        assert child.wait(timeout=30) == 0
        # the kernel dropped the dead process's locks
        assert all(ports._reservations.try_take(p) for p in theirs)
        release_ports(theirs)
    finally:
        child.kill()
        child.wait(timeout=30)
