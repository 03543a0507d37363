"""Test and benchmark support: real node processes on loopback (`ProcessCluster`)."""

from raftreg.testing.cluster import ProcessCluster, free_ports

__all__ = ["ProcessCluster", "free_ports"]
