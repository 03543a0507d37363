"""Test and benchmark support: real node processes on loopback (`ProcessCluster`)."""

from raftreg.testing.cluster import ProcessCluster
from raftreg.testing.ports import free_ports, release_ports

__all__ = ["ProcessCluster", "free_ports", "release_ports"]
