"""Raw raftreg.v1 stubs for integration tests that must see exactly what crosses the wire."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from raftreg.pb import raftreg_pb2 as pb
from raftreg.pb import raftreg_pb2_grpc as pbg


@dataclass
class Wire:
    channel: grpc.Channel
    kv: pbg.KVStub
    maint: pbg.MaintenanceStub
    cluster: pbg.ClusterStub
    lease: pbg.LeaseStub

    def close(self) -> None:
        self.channel.close()

    def revision(self) -> int:
        return int(self.maint.Status(pb.StatusRequest(), timeout=5).header.revision)


def wire(addr: str) -> Wire:
    ch = grpc.insecure_channel(addr)
    return Wire(ch, pbg.KVStub(ch), pbg.MaintenanceStub(ch), pbg.ClusterStub(ch),
                pbg.LeaseStub(ch))
