"""Retry, failover, routing and error mapping of GrpcRegistryClient against tiny fake servers.

Each test runs real grpc.aio servers on 127.0.0.1 (port 0) with scripted fake servicers; it is a
unit test of the client's behaviour, not of the registry. The client's budget runs on a
`SteppingClock`: only its own retry pauses spend it, so how many attempts a call makes does not
depend on the machine's speed. Per-attempt deadlines are real (gRPC enforces them) and, where a
test's outcome depends on one not expiring, at least a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
import pytest

from raftreg.client import GrpcRegistryClient, SteppingClock, SyncRegistryClient, rpc_error
from raftreg.common.status import COMPACT_KEY, ERROR_KEY, status_for
from raftreg.common.types import Put, Txn
from raftreg.errors import (
    Compacted,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    LeaseNotFound,
    NotApplied,
    NotFound,
    OutcomeUnknown,
    RegistryError,
    Unavailable,
)
from raftreg.pb import raftreg_pb2 as pb
from raftreg.pb import raftreg_pb2_grpc as pbg

pytestmark = pytest.mark.timeout(30)

Step = Callable[[Any], Awaitable[None]]


def abort(code: grpc.StatusCode, details: str = "", error: str | None = None) -> Step:
    """A scripted failure: abort with `code`, and the raftreg-error metadata when given."""

    async def step(context: Any) -> None:
        if error is not None:
            context.set_trailing_metadata(((ERROR_KEY, error),))
        await context.abort(code, details)

    return step


async def hang(context: Any) -> None:
    """Never answer (the client's deadline ends the call; the server cancels this)."""
    await asyncio.Event().wait()


class Script:
    """Per-method scripted behaviour: the next step for each call, or `always` for every call."""

    def __init__(self, steps: list[Step] | None = None, always: Step | None = None) -> None:
        self.steps = list(steps or [])
        self.always = always

    async def run(self, context: Any) -> None:
        if self.always is not None:
            await self.always(context)
        elif self.steps:
            await self.steps.pop(0)(context)


class FakeServer(pbg.KVServicer, pbg.LeaseServicer, pbg.MaintenanceServicer, pbg.ClusterServicer):
    """Records writes' request ids; fails calls as scripted; answers Status/MemberList for a
    cluster described by `member_id`, `leader` and `members` (id -> client URL)."""

    def __init__(self, member_id: int = 1, leader: int = 1) -> None:
        self.member_id = member_id
        self.leader = leader
        self.members: dict[int, str] = {}
        self.script: dict[str, Script] = {}
        self.calls: list[tuple[str, int, int]] = []  # (method, client_id, seq)
        self.data: dict[bytes, bytes] = {}
        self.revision = 1

    def header(self) -> pb.ResponseHeader:
        return pb.ResponseHeader(member_id=self.member_id, revision=self.revision)

    async def _enter(self, method: str, context: Any, rid: pb.RequestId | None = None) -> None:
        self.calls.append((method, rid.client_id if rid else 0, rid.seq if rid else 0))
        if method in self.script:
            await self.script[method].run(context)

    def methods(self) -> list[str]:
        return [m for m, _, _ in self.calls]

    async def Range(self, request: pb.RangeRequest, context: Any) -> pb.RangeResponse:
        await self._enter("Range", context)
        kvs = (
            [pb.KeyValue(key=request.key, value=self.data[request.key])]
            if request.key in self.data
            else []
        )
        return pb.RangeResponse(header=self.header(), kvs=kvs, count=len(kvs))

    async def Put(self, request: pb.PutRequest, context: Any) -> pb.PutResponse:
        await self._enter("Put", context, request.request_id)
        self.revision += 1
        self.data[request.key] = request.value
        return pb.PutResponse(header=self.header())

    async def DeleteRange(
        self, request: pb.DeleteRangeRequest, context: Any
    ) -> pb.DeleteRangeResponse:
        await self._enter("DeleteRange", context, request.request_id)
        return pb.DeleteRangeResponse(header=self.header(), deleted=0)

    async def Txn(self, request: pb.TxnRequest, context: Any) -> pb.TxnResponse:
        await self._enter("Txn", context, request.request_id)
        return pb.TxnResponse(header=self.header(), succeeded=True)

    async def Compact(self, request: pb.CompactionRequest, context: Any) -> pb.CompactionResponse:
        await self._enter("Compact", context)
        return pb.CompactionResponse(header=self.header())

    async def LeaseGrant(
        self, request: pb.LeaseGrantRequest, context: Any
    ) -> pb.LeaseGrantResponse:
        await self._enter("LeaseGrant", context, request.request_id)
        return pb.LeaseGrantResponse(header=self.header(), ID=request.ID or 42, TTL=request.TTL)

    async def LeaseRevoke(
        self, request: pb.LeaseRevokeRequest, context: Any
    ) -> pb.LeaseRevokeResponse:
        await self._enter("LeaseRevoke", context, request.request_id)
        return pb.LeaseRevokeResponse(header=self.header())

    async def LeaseKeepAlive(
        self, request_iterator: Any, context: Any
    ) -> AsyncIterator[pb.LeaseKeepAliveResponse]:
        await self._enter("LeaseKeepAlive", context)
        async for req in request_iterator:
            yield pb.LeaseKeepAliveResponse(
                header=self.header(), ID=req.ID, TTL=9 if req.ID == 42 else 0
            )

    async def LeaseTimeToLive(
        self, request: pb.LeaseTimeToLiveRequest, context: Any
    ) -> pb.LeaseTimeToLiveResponse:
        await self._enter("LeaseTimeToLive", context)
        return pb.LeaseTimeToLiveResponse(
            header=self.header(), ID=request.ID, TTL=7, grantedTTL=10, keys=[b"a"]
        )

    async def LeaseLeases(
        self, request: pb.LeaseLeasesRequest, context: Any
    ) -> pb.LeaseLeasesResponse:
        await self._enter("LeaseLeases", context)
        return pb.LeaseLeasesResponse(header=self.header(), leases=[pb.LeaseStatus(ID=42)])

    async def Status(self, request: pb.StatusRequest, context: Any) -> pb.StatusResponse:
        await self._enter("Status", context)
        return pb.StatusResponse(
            header=self.header(),
            leader=self.leader,
            name=f"n{self.member_id}",
            raftTerm=3,
            keys=len(self.data),
        )

    async def MemberList(
        self, request: pb.MemberListRequest, context: Any
    ) -> pb.MemberListResponse:
        await self._enter("MemberList", context)
        members = [
            pb.Member(ID=i, name=f"n{i}", clientURLs=[url], isLeader=i == self.leader)
            for i, url in sorted(self.members.items())
        ]
        return pb.MemberListResponse(header=self.header(), members=members)

    async def MemberAdd(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "no")

    async def MemberRemove(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "no")


@contextlib.asynccontextmanager
async def serving(*fakes: FakeServer) -> AsyncIterator[list[str]]:
    """Start one grpc.aio server per fake on 127.0.0.1:0; yield their endpoints; stop them all."""
    servers: list[grpc.aio.Server] = []
    endpoints: list[str] = []
    try:
        for fake in fakes:
            server = grpc.aio.server()
            pbg.add_KVServicer_to_server(fake, server)
            pbg.add_LeaseServicer_to_server(fake, server)
            pbg.add_MaintenanceServicer_to_server(fake, server)
            pbg.add_ClusterServicer_to_server(fake, server)
            port = server.add_insecure_port("127.0.0.1:0")
            servers.append(server)
            await server.start()
            endpoints.append(f"127.0.0.1:{port}")
        yield endpoints
    finally:
        for server in servers:
            await server.stop(None)


def client(endpoints: list[str], **kw: Any) -> GrpcRegistryClient:
    opts: dict[str, Any] = {
        "timeout": 1.0,
        "connect_timeout": 1.0,
        "backoff_base": 0.01,
        "backoff_max": 0.05,
        "clock": SteppingClock(),
    }
    opts.update(kw)
    return GrpcRegistryClient(endpoints, **opts)


def closed_port() -> int:
    """A loopback port with nothing listening (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- request identity --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        abort(grpc.StatusCode.UNAVAILABLE, "leader changed", "OutcomeUnknown"),
        abort(grpc.StatusCode.UNAVAILABLE, "connection reset"),
        abort(grpc.StatusCode.UNAVAILABLE, "no leader", "NotApplied"),
        hang,
    ],
    ids=["outcome-unknown", "plain-unavailable", "vouched-not-applied", "deadline"],
)
async def test_retried_write_resends_the_same_request_id(failure: Step) -> None:
    fake = FakeServer()
    fake.script["Put"] = Script([failure])
    async with serving(fake) as eps, client(eps, timeout=0.5) as c:
        r = await c.put("k", "v")
        await c.put("k", "w")
    puts = [(cid, seq) for m, cid, seq in fake.calls if m == "Put"]
    assert len(puts) == 3
    assert puts[0] == puts[1]  # the retry
    assert puts[0][0] == c.client_id != 0
    assert puts[2] == (c.client_id, puts[0][1] + 1)  # the next logical write
    assert r.revision == 2 and fake.data[b"k"] == b"w"


async def test_every_write_kind_carries_a_fresh_request_id() -> None:
    fake = FakeServer()
    async with serving(fake) as eps, client(eps, client_id=77) as c:
        await c.put(b"a", b"1")
        await c.delete("a", prefix=True)
        await c.txn(Txn(success=(Put(b"b", b"2"),)))
        assert (await c.lease_grant(10)).id == 42
        await c.lease_revoke(42)
    writes = [(m, cid, seq) for m, cid, seq in fake.calls if m not in ("Status", "MemberList")]
    assert writes == [
        ("Put", 77, 1),
        ("DeleteRange", 77, 2),
        ("Txn", 77, 3),
        ("LeaseGrant", 77, 4),
        ("LeaseRevoke", 77, 5),
    ]


class HoldingServer(FakeServer):
    """A `FakeServer` that holds the Put with seq `held` until `release` is set."""

    def __init__(self, held: int = 1) -> None:
        super().__init__()
        self.held = held
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def Put(self, request: pb.PutRequest, context: Any) -> pb.PutResponse:
        await self._enter("Put", context, request.request_id)
        if request.request_id.seq == self.held:
            self.holding.set()
            await self.release.wait()
        self.revision += 1
        self.data[request.key] = request.value
        return pb.PutResponse(header=self.header())

    def seqs(self) -> list[int]:
        return sorted(seq for m, _, seq in self.calls if m in ("Put", "LeaseGrant"))


async def test_writes_wait_while_the_oldest_unfinished_write_is_a_window_behind() -> None:
    """With write_window 4 and seq 1 unanswered, seqs 2..4 go out and the next writes wait
    (a 5th seq could make the server refuse a retry of seq 1 as too old); they go, in order,
    once seq 1 is answered."""
    fake = HoldingServer()
    async with serving(fake) as eps, client(eps, client_id=9, write_window=4) as c:
        first = asyncio.create_task(c.put("k", "v"))
        await asyncio.wait_for(fake.holding.wait(), 5)
        later = [asyncio.create_task(c.lease_grant(10)) for _ in range(10)]
        await asyncio.wait_for(asyncio.gather(*later[:3]), 5)
        assert fake.seqs() == [1, 2, 3, 4]
        assert not any(t.done() for t in later[3:])
        assert (c.seq_window.unfinished, c.seq_window.waiting) == (1, 7)
        fake.release.set()
        await asyncio.wait_for(asyncio.gather(first, *later), 5)
        assert fake.seqs() == list(range(1, 12))
        assert c.seq_window.unfinished == 0


async def test_a_cancelled_write_lets_the_waiting_writes_go() -> None:
    fake = HoldingServer()
    async with serving(fake) as eps, client(eps, write_window=2) as c:
        first = asyncio.create_task(c.put("k", "v"))
        await asyncio.wait_for(fake.holding.wait(), 5)
        later = [asyncio.create_task(c.lease_grant(10)) for _ in range(5)]
        await asyncio.wait_for(later[0], 5)
        assert c.seq_window.waiting == 4
        first.cancel()
        await asyncio.wait_for(asyncio.gather(*later), 5)
        assert first.cancelled()
        assert fake.seqs() == [1, 2, 3, 4, 5, 6] and c.seq_window.unfinished == 0


async def test_a_failed_write_ends_its_seq() -> None:
    fake = FakeServer()
    fake.script["Put"] = Script([
        abort(grpc.StatusCode.INVALID_ARGUMENT, "nope", "InvalidArgument"),
        *[abort(grpc.StatusCode.UNAVAILABLE, "leader changed", "OutcomeUnknown")] * 50,
    ])
    opts = {"timeout": 2.0, "retry_budget": 4.0, "backoff_base": 0.5, "backoff_max": 1.0}
    async with serving(fake) as eps, client(eps, write_window=1, **opts) as c:
        with pytest.raises(InvalidArgument):
            await c.put("k", "v")
        with pytest.raises(OutcomeUnknown):
            await c.put("k", "v")  # retried with seq 2 until the budget ends
        assert c.seq_window.unfinished == 0
        fake.script.clear()
        await asyncio.wait_for(c.put("k", "w"), 5)  # window 1: only if seq 2 was released
    assert [seq for m, _, seq in fake.calls if m == "Put"][-1] == 3


async def test_write_window_must_be_positive() -> None:
    with pytest.raises(InvalidArgument, match="write_window"):
        GrpcRegistryClient(["127.0.0.1:1"], write_window=0)


async def test_clients_pick_distinct_random_ids() -> None:
    ids = {GrpcRegistryClient(["127.0.0.1:1"]).client_id for _ in range(20)}
    assert len(ids) == 20 and all(0 < i < 2**63 for i in ids)


# --- what is retried and what is not ----------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "error", "exc"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, "InvalidArgument", InvalidArgument),
        (grpc.StatusCode.NOT_FOUND, "LeaseNotFound", LeaseNotFound),
        (grpc.StatusCode.NOT_FOUND, None, NotFound),
        (grpc.StatusCode.FAILED_PRECONDITION, "FailedPrecondition", FailedPrecondition),
        (grpc.StatusCode.OUT_OF_RANGE, "Compacted", Compacted),
        (grpc.StatusCode.INTERNAL, None, RegistryError),
    ],
)
async def test_non_retryable_errors_raise_at_once(
    code: grpc.StatusCode, error: str | None, exc: type[RegistryError]
) -> None:
    fake = FakeServer()
    fake.script["Put"] = Script(always=abort(code, "nope", error))
    async with serving(fake) as eps, client(eps) as c:
        with pytest.raises(exc, match="nope") as info:
            await c.put("k", "v")
    assert type(info.value) is exc
    assert fake.methods().count("Put") == 1


async def test_write_that_may_have_applied_raises_outcome_unknown_when_budget_ends() -> None:
    fake = FakeServer()
    fake.script["Put"] = Script(
        always=abort(grpc.StatusCode.UNAVAILABLE, "leader changed", "OutcomeUnknown")
    )
    clock = SteppingClock()
    opts = {"timeout": 2.0, "retry_budget": 4.0, "backoff_base": 0.5, "backoff_max": 1.0}
    async with serving(fake) as eps, client(eps, clock=clock, **opts) as c:
        with pytest.raises(OutcomeUnknown, match="outcome unknown"):
            await c.put("k", "v")
    puts = {(cid, seq) for m, cid, seq in fake.calls if m == "Put"}
    assert fake.methods().count("Put") == len(clock.slept) + 1 >= 2 and len(puts) == 1
    # retried until no further attempt fit: a pause (<= 1 s) plus a floor (0.4 s) was missing
    assert 4.0 - 1.0 - 0.4 < clock.now() <= 4.0, clock.slept


@pytest.mark.parametrize(("vouched", "raised"), [
    ("NotApplied", NotApplied),  # refused before proposing, every time: certainly not applied
    ("Unavailable", OutcomeUnknown),  # a plain Unavailable says nothing about the outcome
])
async def test_a_write_failing_every_time_is_not_applied_only_when_the_server_says_so(
    vouched: str, raised: type[Unavailable]
) -> None:
    fake = FakeServer()
    fake.script["Put"] = Script(always=abort(grpc.StatusCode.UNAVAILABLE, "no leader", vouched))
    # Every attempt gets a real deadline of at least 1 s (a tenth of the budget): the fake
    # refuses at once, and an attempt that timed out would (rightly) make the outcome unknown,
    # which is not what this test is about.
    opts = {"timeout": 3.0, "retry_budget": 10.0, "backoff_base": 1.0, "backoff_max": 2.0}
    async with serving(fake) as eps, client(eps, **opts) as c:
        with pytest.raises(Unavailable) as info:
            await c.put("k", "v")
    assert type(info.value) is raised and "no leader" in str(info.value)
    assert fake.methods().count("Put") >= 3


async def test_one_ambiguous_attempt_makes_the_final_failure_outcome_unknown() -> None:
    fake = FakeServer()
    fake.script["Put"] = Script(
        [hang] + [abort(grpc.StatusCode.UNAVAILABLE, "no leader", "NotApplied")] * 100
    )
    opts = {"timeout": 0.3, "retry_budget": 3.0, "backoff_base": 0.5, "backoff_max": 1.0}
    async with serving(fake) as eps, client(eps, **opts) as c:
        with pytest.raises(OutcomeUnknown):
            await c.put("k", "v")
    assert fake.methods().count("Put") >= 2


async def test_read_deadline_is_retried_then_raised() -> None:
    fake = FakeServer()
    fake.script["Range"] = Script(always=hang)
    opts = {"timeout": 0.15, "retry_budget": 0.6, "backoff_base": 0.1, "backoff_max": 0.2}
    async with serving(fake) as eps, client(eps, **opts) as c:
        with pytest.raises(DeadlineExceeded):
            await c.get("k")
    assert fake.methods().count("Range") >= 2


async def test_a_retry_starts_only_with_a_tenth_of_the_budget_left() -> None:
    fake = FakeServer()
    fake.script["Range"] = Script(
        always=abort(grpc.StatusCode.UNAVAILABLE, "no quorum", "Unavailable")
    )
    clock = SteppingClock()
    opts = {"timeout": 5.0, "retry_budget": 1.0, "backoff_base": 0.4, "backoff_max": 0.4}
    async with serving(fake) as eps, client(eps, clock=clock, **opts) as c:
        with pytest.raises(Unavailable):
            await c.get("k")
    # pauses are 0.2-0.4 s; each retry needs its pause plus 0.1 s of budget still left
    assert all(0.2 <= d <= 0.4 for d in clock.slept) and clock.now() + 0.1 <= 1.0
    assert fake.methods().count("Range") == len(clock.slept) + 1
    assert clock.now() + 0.4 + 0.1 > 1.0  # and it went on while one more could fit


async def test_unreachable_endpoint_raises_unavailable_for_writes() -> None:
    async with client([f"127.0.0.1:{closed_port()}"], timeout=0.2, retry_budget=0.4) as c:
        with pytest.raises(Unavailable) as info:
            await c.put("k", "v")
    assert type(info.value) is NotApplied  # never sent: certainly not applied


# --- failover and routing ----------------------------------------------------------------------


async def test_failover_to_the_next_endpoint() -> None:
    bad, good = FakeServer(1, leader=0), FakeServer(2, leader=0)
    bad.script["Range"] = Script(
        always=abort(grpc.StatusCode.UNAVAILABLE, "no quorum", "Unavailable")
    )
    good.data[b"k"] = b"v"
    async with serving(bad, good) as eps, client([f"127.0.0.1:{closed_port()}", *eps]) as c:
        r = await c.get("k")
        assert [kv.value for kv in r.kvs] == [b"v"]
        r = await c.get("k", serializable=True)  # failed endpoints are now tried last
    assert bad.methods().count("Range") == 1
    assert good.methods().count("Range") == 2


async def test_writes_and_linearizable_reads_go_to_the_leader() -> None:
    follower, leader = FakeServer(1, leader=2), FakeServer(2, leader=2)
    async with serving(follower, leader) as eps:
        for f in (follower, leader):
            f.members = {1: f"http://{eps[0]}", 2: f"http://{eps[1]}"}
        async with client(eps) as c:
            await c.put("k", "v")
            await c.get("k")
            await c.get("k", serializable=True)
            assert await c.lease_keepalive_once(42) == 9
            assert await c.lease_keepalive_once(5) == 0
    assert "Put" not in follower.methods()
    assert follower.methods().count("Range") == 1  # the serializable read: first endpoint
    assert leader.methods().count("Put") == 1 and leader.methods().count("Range") == 1
    assert leader.methods().count("LeaseKeepAlive") == 2
    assert follower.methods()[:2] == ["Status", "MemberList"]  # discovery asked the follower


async def test_leader_failure_is_retried_on_another_endpoint() -> None:
    follower, leader = FakeServer(1, leader=2), FakeServer(2, leader=2)
    leader.script["Put"] = Script([abort(grpc.StatusCode.UNAVAILABLE, "stepping down")])
    async with serving(follower, leader) as eps:
        for f in (follower, leader):
            f.members = {1: f"http://{eps[0]}", 2: f"http://{eps[1]}"}
        async with client(eps) as c:
            await c.put("k", "v")
    assert follower.methods().count("Put") == 1  # after the leader failed (it would forward)
    ids = [(cid, seq) for m, cid, seq in follower.calls + leader.calls if m == "Put"]
    assert len(ids) == 2 and ids[0] == ids[1]


# --- other calls -------------------------------------------------------------------------------


async def test_lease_and_cluster_calls() -> None:
    fake = FakeServer(5, leader=5)
    async with serving(fake) as eps:
        fake.members = {5: f"http://{eps[0]}"}
        async with client(eps) as c:
            ttl = await c.lease_time_to_live(42, keys=True)
            assert (ttl.id, ttl.ttl, ttl.granted_ttl, ttl.keys) == (42, 7, 10, (b"a",))
            assert await c.lease_list() == [42]
            members = await c.member_list()
            assert [(m.id, m.name, m.is_leader) for m in members] == [(5, "n5", True)]
            st = await c.status(eps[0])
            assert (st.endpoint, st.member_id, st.leader, st.is_leader, st.raft_term) == (
                eps[0],
                5,
                5,
                True,
                3,
            )
            assert (await c.status()).name == "n5"
            assert await c.compact(1) == 1
        with pytest.raises(FailedPrecondition):
            await c.get("k")


async def test_status_of_a_dead_endpoint_is_one_attempt() -> None:
    async with client([f"127.0.0.1:{closed_port()}"], timeout=0.5) as c:
        with pytest.raises(Unavailable, match="1 attempt"):
            await c.status(c.endpoints[0])


# --- error mapping -----------------------------------------------------------------------------


def _rpc_error(
    code: grpc.StatusCode, details: str, md: tuple[tuple[str, str], ...]
) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*md), details, None)


@pytest.mark.parametrize(
    "err",
    [
        LeaseNotFound("lease 7 not found"),
        Compacted("compacted", 12),
        OutcomeUnknown("leader changed"),
        Unavailable("no leader"),
        NotApplied("not the leader"),
        InvalidArgument("empty key"),
        DeadlineExceeded("slow"),
    ],
)
def test_rpc_error_reverses_the_server_table(err: RegistryError) -> None:
    code, details, md = status_for(err)
    back = rpc_error(_rpc_error(code, details, md))
    assert type(back) is type(err) and str(back) == str(err)
    if isinstance(err, Compacted):
        assert isinstance(back, Compacted) and back.compact_revision == 12


def test_rpc_error_without_raftreg_metadata() -> None:
    e = rpc_error(_rpc_error(grpc.StatusCode.UNAVAILABLE, "failed to connect", ()))
    assert type(e) is Unavailable
    e = rpc_error(_rpc_error(grpc.StatusCode.OUT_OF_RANGE, "", ((COMPACT_KEY, "3"),)))
    assert isinstance(e, Compacted) and str(e) == "OUT_OF_RANGE"


# --- the blocking facade -----------------------------------------------------------------------


def test_sync_client_from_a_script_and_from_threads() -> None:
    """The sync facade runs its own loop; a server runs on another loop in a helper thread."""
    fake = FakeServer()
    ready = threading.Event()
    stop: list[Callable[[], object]] = []
    endpoints: list[str] = []

    def server_thread() -> None:
        async def main() -> None:
            async with serving(fake) as eps:
                endpoints.extend(eps)
                done = asyncio.Event()
                loop = asyncio.get_running_loop()
                stop.append(lambda: loop.call_soon_threadsafe(done.set))
                ready.set()
                await done.wait()

        asyncio.run(main())

    t = threading.Thread(target=server_thread, daemon=True)
    t.start()
    try:
        assert ready.wait(10)
        with SyncRegistryClient(endpoints, timeout=1.0) as c:
            c.put("k", "v")
            assert c.get("k").kvs[0].value == b"v"
            errors: list[BaseException] = []

            def worker(i: int) -> None:
                try:
                    c.put(f"k{i}", str(i))
                except BaseException as e:  # pragma: no cover - reported below
                    errors.append(e)

            threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
            for th in threads:
                th.start()
            for th in threads:
                th.join(10)
            assert errors == []
            assert c.lease_grant(10).id == 42
        with pytest.raises(FailedPrecondition):
            c.get("k")
        c.close()  # idempotent
        seqs = sorted(seq for m, _, seq in fake.calls if m == "Put")
        assert seqs == [1, 2, 3, 4, 5]
    finally:
        if stop:
            stop[0]()
        t.join(10)
        assert not t.is_alive()
