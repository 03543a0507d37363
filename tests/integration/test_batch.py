"""KV.Batch on real processes: concurrent client operations share one stream, each is answered
under its own tag with its own result or error, and the unary semantics hold."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from raftreg.client import GrpcRegistryClient
from raftreg.common.types import Compare, CompareResult, CompareTarget, Put, Txn
from raftreg.errors import InvalidArgument, LeaseNotFound
from raftreg.pb import raftreg_pb2 as pb
from raftreg.pb import raftreg_pb2_grpc as pbg
from raftreg.testing import ProcessCluster

pytestmark = pytest.mark.slow


async def test_concurrent_client_operations_are_multiplexed_and_answered_each(
    shared_cluster: ProcessCluster,
) -> None:
    async with GrpcRegistryClient(shared_cluster.endpoints) as client:
        puts = await asyncio.gather(*(client.put(f"batch/{i}", str(i)) for i in range(300)))
        revs = [p.revision for p in puts]
        assert len(set(revs)) == 300, "every put has its own revision"
        got = await client.get("batch/", prefix=True)
        assert {kv.key: kv.value for kv in got.kvs} == {
            f"batch/{i}".encode(): str(i).encode() for i in range(300)
        }
        # Errors answer only their own operation; the others succeed.
        results = await asyncio.gather(
            client.put("batch/ok", "1"),
            client.put("", "empty key"),
            client.put("batch/lease", "x", lease=123456789),
            client.txn(Txn(
                compare=(Compare(b"batch/ok", CompareTarget.VERSION, CompareResult.GREATER, 0),),
                success=(Put(b"batch/txn", b"t"),),
            )),
            client.get("batch/0"),
            return_exceptions=True,
        )
        assert not isinstance(results[0], BaseException)
        assert isinstance(results[1], InvalidArgument)
        assert isinstance(results[2], LeaseNotFound)
        assert not isinstance(results[3], BaseException)
        assert not isinstance(results[4], BaseException)
        assert results[4].kvs[0].value == b"0"


async def test_batch_stream_on_the_wire(shared_cluster: ProcessCluster) -> None:
    """Several operations in one message, answers matched by tag, an unknown op refused."""
    async with grpc.aio.insecure_channel(shared_cluster.client["n2"]) as ch:
        call = pbg.KVStub(ch).Batch()
        await call.write(pb.BatchRequest(ops=[
            pb.TaggedRequest(tag=7, put=pb.PutRequest(key=b"wire/a", value=b"1")),
            pb.TaggedRequest(tag=8, put=pb.PutRequest(key=b"wire/b", value=b"2")),
            pb.TaggedRequest(tag=9),
        ]))
        answers: dict[int, pb.TaggedResponse] = {}
        while len(answers) < 3:
            msg = await asyncio.wait_for(call.read(), 10)
            assert msg is not grpc.aio.EOF
            answers.update({r.tag: r for r in msg.results})
        assert answers[7].WhichOneof("response") == "put"
        assert answers[8].WhichOneof("response") == "put"
        assert answers[9].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        await call.write(pb.BatchRequest(ops=[
            pb.TaggedRequest(tag=10, range=pb.RangeRequest(key=b"wire/", range_end=b"wire0")),
        ]))
        msg = await asyncio.wait_for(call.read(), 10)
        assert [kv.value for kv in msg.results[0].range.kvs] == [b"1", b"2"]
        await call.done_writing()
        assert await asyncio.wait_for(call.read(), 10) is grpc.aio.EOF


@pytest.mark.parametrize("n", [64])
async def test_batch_keeps_request_identity(shared_cluster: ProcessCluster, n: int) -> None:
    """A write re-sent with the same request id through the stream applies once."""
    async with grpc.aio.insecure_channel(shared_cluster.client["n1"]) as ch:
        call = pbg.KVStub(ch).Batch()
        rid = pb.RequestId(client_id=4242, seq=1)
        ops = [pb.TaggedRequest(tag=i, put=pb.PutRequest(key=b"idem", value=b"v", request_id=rid))
               for i in range(1, n + 1)]
        await call.write(pb.BatchRequest(ops=ops))
        answers: dict[int, pb.TaggedResponse] = {}
        while len(answers) < n:
            msg = await asyncio.wait_for(call.read(), 10)
            answers.update({r.tag: r for r in msg.results})
        await call.done_writing()
        assert {r.WhichOneof("response") for r in answers.values()} == {"put"}
        revs = {r.put.header.revision for r in answers.values()}
        assert len(revs) == 1, f"one write, one revision; got {sorted(revs)}"
