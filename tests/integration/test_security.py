"""Client API security on real node processes: TLS, mutual TLS, token auth with prefix roles,
leader forwarding and the HTTP gateway with auth on (raftreg/api/auth/).

Two module-scoped clusters: a one-node cluster with plain TLS, and a three-node cluster with
mutual TLS and auth (the hardest path for node-internal calls: a follower forwards lease
keepalives to the leader over mutual TLS with the cluster-internal credential).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterator

import aiohttp
import pytest

from raftreg.api.auth import token_sha256
from raftreg.cli import run as cli_run
from raftreg.client import GrpcRegistryClient
from raftreg.common.types import Compare, CompareResult, CompareTarget, Put, Range, Txn
from raftreg.errors import (
    PermissionDenied,
    RegistryError,
    Unauthenticated,
    Unavailable,
)
from raftreg.testing import ProcessCluster
from raftreg.testing.certs import CertFiles, make_certs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

TOKENS = {"root": "root-secret-token", "rw": "rw-secret-token", "ro": "ro-secret-token"}

AUTH_FILE = """
[[role]]
name = "services-rw"
read = ["/services/", "/config/"]
write = ["/services/"]

[[role]]
name = "services-ro"
read = ["/services/"]

[[user]]
name = "root"
token_sha256 = "{root}"
roles = ["root"]

[[user]]
name = "rw"
token_sha256 = "{rw}"
roles = ["services-rw"]

[[user]]
name = "ro"
token_sha256 = "{ro}"
roles = ["services-ro"]
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[CertFiles, CertFiles]:
    root = tmp_path_factory.mktemp("pki")
    return make_certs(root / "ca"), make_certs(root / "other-ca")


def wait_ready(c: ProcessCluster, **security: str) -> None:
    """Until every node names the same leader (ProcessCluster.wait_leader speaks plaintext
    without a token, so it cannot see these clusters)."""

    async def poll() -> None:
        deadline = time.monotonic() + 30
        async with GrpcRegistryClient(c.endpoints, timeout=1.0, **security) as cl:
            while True:
                try:
                    sts = [await cl.status(ep) for ep in c.endpoints]
                    if sts[0].leader and len({s.leader for s in sts}) == 1:
                        return
                except RegistryError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no leader; logs in {c.root}")
                await asyncio.sleep(0.05)

    asyncio.run(poll())


@pytest.fixture(scope="module")
def tls_cluster(
    tmp_path_factory: pytest.TempPathFactory, pki: tuple[CertFiles, CertFiles]
) -> Iterator[ProcessCluster]:
    ca, _ = pki
    with ProcessCluster(tmp_path_factory.mktemp("tls") / "cluster", size=1,
                        tls_cert_file=str(ca.server_cert),
                        tls_key_file=str(ca.server_key)) as c:
        c.start()
        wait_ready(c, ca_file=str(ca.ca))
        yield c


@pytest.fixture(scope="module")
def secure_cluster(
    tmp_path_factory: pytest.TempPathFactory, pki: tuple[CertFiles, CertFiles]
) -> Iterator[ProcessCluster]:
    ca, _ = pki
    root = tmp_path_factory.mktemp("secure")
    (root / "auth.toml").write_text(AUTH_FILE.format(
        **{name: token_sha256(t) for name, t in TOKENS.items()}))
    with ProcessCluster(root / "cluster", size=3,
                        tls_cert_file=str(ca.server_cert), tls_key_file=str(ca.server_key),
                        tls_client_ca_file=str(ca.ca), tls_ca_file=str(ca.ca),
                        auth_file="../auth.toml") as c:  # relative to cluster.toml
        c.start()
        wait_ready(c, token=TOKENS["root"], **mtls(ca))
        yield c


def mtls(ca: CertFiles) -> dict[str, str]:
    return {"ca_file": str(ca.ca), "cert_file": str(ca.client_cert),
            "key_file": str(ca.client_key)}


def client(c: ProcessCluster, ca: CertFiles, user: str | None, *,
           endpoints: list[str] | None = None, timeout: float = 3.0) -> GrpcRegistryClient:
    return GrpcRegistryClient(endpoints or c.endpoints, timeout=timeout,
                              token=TOKENS[user] if user else "", **mtls(ca))


async def roles(c: ProcessCluster, ca: CertFiles) -> tuple[str, list[str]]:
    """(the leader's endpoint, the others'), once exactly one node says it leads (the status
    calls are separate: one made during an election sees none)."""
    deadline = time.monotonic() + 10
    async with client(c, ca, "root") as root:
        while True:
            sts = {ep: await root.status(ep) for ep in c.endpoints}
            leaders = [ep for ep, s in sts.items() if s.is_leader]
            if len(leaders) == 1:
                break
            assert time.monotonic() < deadline, f"no single leader: {leaders}"
            await asyncio.sleep(0.05)
    return leaders[0], [ep for ep in c.endpoints if ep != leaders[0]]


async def explained(call: Callable[[], Awaitable[object]], why: str) -> Unavailable:
    """The `Unavailable` that `call()` fails with, once its message carries the explanation
    matching `why`. The explanation comes from the client's background TLS probe of the
    endpoint (raftreg.client.endpoint_pool); until the probe has answered, the same failure is
    reported without it, so the call is repeated (bounded) rather than expected to win that race."""
    deadline = time.monotonic() + 20
    while True:
        with pytest.raises(Unavailable) as err:
            await call()
        if re.search(why, str(err.value)) or time.monotonic() > deadline:
            return err.value
        await asyncio.sleep(0.05)


# --- TLS -----------------------------------------------------------------------------------------


async def test_tls_needs_the_ca(tls_cluster: ProcessCluster,
                                pki: tuple[CertFiles, CertFiles]) -> None:
    ca, other = pki
    ep = tls_cluster.endpoints[0]
    async with GrpcRegistryClient([ep], timeout=1.0) as plain:
        e = await explained(lambda: plain.put("/tls/a", "1"), "requires TLS")
        assert "requires TLS" in str(e), e
    async with GrpcRegistryClient([ep], timeout=1.0, ca_file=str(other.ca)) as wrong:
        e = await explained(lambda: wrong.get("/tls/a"), r"not trusted.*--cacert")
        assert re.search(r"not trusted.*--cacert", str(e)), e
    async with GrpcRegistryClient([f"https://{ep}"], ca_file=str(ca.ca)) as good:
        await good.put("/tls/a", "1")
        assert [kv.value for kv in (await good.get("/tls/a")).kvs] == [b"1"]
        async with await good.watch("/tls/", prefix=True) as w:  # a stream over TLS
            await good.put("/tls/b", "2")
            batch = await anext(w)
            assert [e.kv.key for e in batch.events] == [b"/tls/b"]


def test_cli_tls_flags(tls_cluster: ProcessCluster, pki: tuple[CertFiles, CertFiles]) -> None:
    ca, _ = pki
    out, err = io.StringIO(), io.StringIO()
    ep = tls_cluster.endpoints[0]
    assert cli_run(["--endpoints", ep, "--cacert", str(ca.ca), "put", "/tls/cli", "v"],
                   stdout=out, stderr=err) == 0, err.getvalue()
    assert cli_run(["--endpoints", ep, "--cacert", str(ca.ca), "get", "/tls/cli"],
                   stdout=out, stderr=err) == 0, err.getvalue()
    assert out.getvalue().splitlines()[-2:] == ["/tls/cli", "v"]
    # 3 s per attempt: the explanation comes from a background probe that must answer
    # within the command's retry budget (a new client each run, so nothing is cached).
    assert cli_run(["--endpoints", ep, "--timeout", "3", "get", "/tls/cli"],
                   stdout=out, stderr=err) == 1
    assert "requires TLS" in err.getvalue()


# --- mutual TLS ----------------------------------------------------------------------------------


async def test_mutual_tls_refuses_clients_without_a_good_certificate(
    secure_cluster: ProcessCluster, pki: tuple[CertFiles, CertFiles]
) -> None:
    ca, other = pki
    eps = secure_cluster.endpoints
    async with GrpcRegistryClient(eps, timeout=1.0, ca_file=str(ca.ca),
                                  token=TOKENS["root"]) as no_cert:
        e = await explained(lambda: no_cert.get("/services/"), "requires a client certificate")
        assert "requires a client certificate" in str(e), e
    async with GrpcRegistryClient(eps, timeout=1.0, ca_file=str(ca.ca), token=TOKENS["root"],
                                  cert_file=str(other.client_cert),
                                  key_file=str(other.client_key)) as foreign:
        e = await explained(lambda: foreign.get("/services/"), "refused the client certificate")
        assert "refused the client certificate" in str(e), e


# --- authentication and authorization ------------------------------------------------------------


async def test_no_token_is_unauthenticated_and_changes_nothing(
    secure_cluster: ProcessCluster, pki: tuple[CertFiles, CertFiles]
) -> None:
    ca, _ = pki
    async with client(secure_cluster, ca, None) as anon, client(secure_cluster, ca, "root") as root:
        with pytest.raises(Unauthenticated, match="no bearer token"):
            await anon.put("/services/anon", "x")
        with pytest.raises(Unauthenticated):
            await anon.get("/services/anon")
        with pytest.raises(Unauthenticated):
            await anon.status()
        assert (await root.get("/services/anon")).kvs == ()
    async with GrpcRegistryClient(secure_cluster.endpoints, token="not-a-user",
                                  **mtls(ca)) as bad:
        with pytest.raises(Unauthenticated, match="invalid token"):
            await bad.put("/services/anon", "x")
        # concurrent calls (the endpoint's Batch stream) each report the refusal, never an
        # unknown outcome
        results = await asyncio.gather(*(bad.put(f"/services/anon{i}", "x") for i in range(8)),
                                       return_exceptions=True)
        assert all(isinstance(r, Unauthenticated) for r in results), results


async def test_read_only_user_cannot_write(
    secure_cluster: ProcessCluster, pki: tuple[CertFiles, CertFiles]
) -> None:
    ca, _ = pki
    async with client(secure_cluster, ca, "ro") as ro, client(secure_cluster, ca, "root") as root:
        await root.put("/services/ro/a", "orig")
        assert [kv.value for kv in (await ro.get("/services/ro/a")).kvs] == [b"orig"]
        with pytest.raises(PermissionDenied, match="user 'ro' may not write key"):
            await ro.put("/services/ro/a", "changed")
        with pytest.raises(PermissionDenied):
            await ro.delete("/services/ro/", prefix=True)
        with pytest.raises(PermissionDenied):
            await ro.txn(Txn(success=(Put(b"/services/ro/a", b"changed"),)))
        with pytest.raises(PermissionDenied, match="leases need some write permission"):
            await ro.lease_grant(10)
        after = (await root.get("/services/ro/a")).kvs
        assert [(kv.value, kv.version) for kv in after] == [(b"orig", 1)]


async def test_users_cannot_read_outside_their_prefixes(
    secure_cluster: ProcessCluster, pki: tuple[CertFiles, CertFiles]
) -> None:
    ca, _ = pki
    async with client(secure_cluster, ca, "rw") as rw, client(secure_cluster, ca, "root") as root:
        await root.put("/secret/a", "s")
        with pytest.raises(PermissionDenied, match="may not read key '/secret/a'"):
            await rw.get("/secret/a")
        with pytest.raises(PermissionDenied, match="may not read every key"):
            await rw.get("/services/", range_end="\0")
        with pytest.raises(PermissionDenied, match="may not read"):  # a compare is a read
            await rw.txn(Txn(
                compare=(Compare(b"/secret/a", CompareTarget.VALUE, CompareResult.EQUAL, b"s"),),
                success=(Put(b"/services/rw/leak", b"yes"),)))
        with pytest.raises(PermissionDenied, match="may not read"):
            await rw.txn(Txn(success=(Range(b"/secret/a"),)))
        assert (await root.get("/services/rw/leak")).kvs == ()
        # Watches: a refused create ends only that watch; the stream and others carry on.
        async with await rw.watch("/services/rw/", prefix=True) as allowed:
            with pytest.raises(PermissionDenied, match="permission denied"):
                async with await rw.watch("/secret/", prefix=True) as refused:
                    await anext(refused)
            await rw.put("/services/rw/w", "1")
            batch = await anext(allowed)
            assert [ev.kv.key for ev in batch.events] == [b"/services/rw/w"]


async def test_batched_operations_are_refused_one_by_one(
    secure_cluster: ProcessCluster, pki: tuple[CertFiles, CertFiles]
) -> None:
    ca, _ = pki
    async with client(secure_cluster, ca, "rw") as rw, client(secure_cluster, ca, "root") as root:
        # Concurrent calls share the endpoint's Batch stream (raftreg.client.kvmux).
        results = await asyncio.gather(
            *(rw.put(f"/services/batch/{i}", "v") for i in range(6)),
            *(rw.put(f"/config/batch/{i}", "v") for i in range(3)),
            return_exceptions=True)
        assert all(not isinstance(r, BaseException) for r in results[:6]), results
        assert all(isinstance(r, PermissionDenied) for r in results[6:]), results
        assert (await root.get("/services/batch/", prefix=True, count_only=True)).count == 6
        assert (await root.get("/config/batch/", prefix=True, count_only=True)).count == 0


async def test_root_only_operations(
    secure_cluster: ProcessCluster, pki: tuple[CertFiles, CertFiles]
) -> None:
    ca, _ = pki
    async with client(secure_cluster, ca, "rw") as rw, client(secure_cluster, ca, "root") as root:
        rev = (await root.put("/services/compact", "1")).revision
        with pytest.raises(PermissionDenied, match="root"):
            await rw.compact(rev)
        with pytest.raises(PermissionDenied, match="root"):
            await rw.snapshot()
        await root.compact(rev)
        blob = await root.snapshot()
        assert len(blob) > 0
        assert (await root.status()).compact_revision >= rev


async def test_lease_calls_through_a_follower(
    secure_cluster: ProcessCluster, pki: tuple[CertFiles, CertFiles]
) -> None:
    """A follower forwards keepalives over the shared stream (internal credential) and
    time-to-live with the caller's token, both over mutual TLS."""
    ca, _ = pki
    _, followers = await roles(secure_cluster, ca)
    async with client(secure_cluster, ca, "rw", endpoints=followers[:1]) as rw, \
            client(secure_cluster, ca, "ro", endpoints=followers[:1]) as ro:
        lease = await rw.lease_grant(30)
        await rw.put("/services/leased", "x", lease=lease.id)
        assert await rw.lease_keepalive_once(lease.id) == 30
        ttl = await rw.lease_time_to_live(lease.id, keys=True)
        assert ttl.granted_ttl == 30 and ttl.keys == (b"/services/leased",)
        with pytest.raises(PermissionDenied):
            await ro.lease_keepalive_once(lease.id)
        renewed = asyncio.Event()  # the client's long-lived keepalive stream, via the follower
        rw.keepalive_manager().keep(lease.id, 30, on_renew=lambda i, t: renewed.set())
        await asyncio.wait_for(renewed.wait(), 10)
        rw.keepalive_manager().forget(lease.id)
        await rw.lease_revoke(lease.id)
        assert (await rw.get("/services/leased")).kvs == ()


async def test_revoking_a_lease_needs_write_on_its_keys(
    secure_cluster: ProcessCluster, pki: tuple[CertFiles, CertFiles]
) -> None:
    ca, _ = pki
    async with client(secure_cluster, ca, "rw") as rw, client(secure_cluster, ca, "root") as root:
        lease = await rw.lease_grant(30)
        await root.put("/config/leased", "x", lease=lease.id)  # root attaches a key rw can't write
        with pytest.raises(PermissionDenied, match="may not write key '/config/leased'"):
            await rw.lease_revoke(lease.id)
        assert [kv.value for kv in (await root.get("/config/leased")).kvs] == [b"x"]
        await root.lease_revoke(lease.id)


# --- the HTTP gateway ----------------------------------------------------------------------------


async def test_gateway_forwards_the_authorization_header(
    secure_cluster: ProcessCluster, pki: tuple[CertFiles, CertFiles]
) -> None:
    ca, _ = pki
    addr = secure_cluster.http[secure_cluster.names[0]]
    key = base64.b64encode(b"/services/gw").decode()
    secret = base64.b64encode(b"/secret/a").decode()

    async def post(path: str, body: dict[str, str],
                   token: str | None) -> tuple[int, dict[str, object]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s, \
                s.post(f"http://{addr}{path}", data=json.dumps(body), headers=headers) as r:
            return r.status, json.loads(await r.text())

    status, out = await post("/v3/kv/put", {"key": key, "value": key}, None)
    assert status == 401 and out["code"] == 16, out
    status, out = await post("/v3/kv/put", {"key": key, "value": key}, TOKENS["rw"])
    assert status == 200, out
    status, out = await post("/v3/kv/range", {"key": key}, TOKENS["ro"])
    assert status == 200 and out["count"] == "1", out
    status, out = await post("/v3/kv/range", {"key": secret}, TOKENS["rw"])
    assert status == 403 and out["code"] == 7, out
    async with client(secure_cluster, ca, "root") as root:
        assert [kv.value for kv in (await root.get("/services/gw")).kvs] == [b"/services/gw"]


# --- etcd's clients: Authenticate with the token as password, then the "token" metadata -------


def test_etcdctl_users_authenticate_with_their_token_as_password(
    secure_cluster: ProcessCluster, pki: tuple[CertFiles, CertFiles]
) -> None:
    from tests.etcdctl.ctl import Ctl

    ca, _ = pki
    ctl = Ctl(list(secure_cluster.endpoints))
    tls = ("--cacert", str(ca.ca), "--cert", str(ca.client_cert), "--key", str(ca.client_key))

    def as_user(user: str, password: str, *args: str) -> tuple[int, str, str]:
        r = ctl.run(*tls, f"--user={user}:{password}", *args, ok=False)
        return r.code, r.out, r.err

    assert as_user("rw", TOKENS["rw"], "put", "/services/etcdctl", "v")[:2] == (0, "OK\n")
    code, out, _ = as_user("ro", TOKENS["ro"], "get", "/services/etcdctl", "--print-value-only")
    assert (code, out.split()) == (0, ["v"])
    code, _, err = as_user("ro", TOKENS["ro"], "put", "/services/etcdctl", "w")
    assert code != 0 and "etcdserver: permission denied" in err
    code, _, err = as_user("rw", TOKENS["ro"], "get", "/services/etcdctl")  # another's token
    assert code != 0 and "authentication failed, invalid user ID or password" in err
    assert "Authentication Status: true" in as_user("root", TOKENS["root"], "auth", "status")[1]
    r = ctl.run(*tls, "get", "/services/etcdctl", ok=False)  # no credential at all
    assert r.code != 0 and "etcdserver: invalid auth token" in r.err


# --- the dashboard: the gateway's auth, over the node's own TLS client ---------------------------


async def test_dashboard_reads_with_the_pages_token(secure_cluster: ProcessCluster) -> None:
    addr = secure_cluster.http[secure_cluster.names[1]]

    async def get(path: str, token: str | None) -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s, \
                s.get(f"http://{addr}{path}", headers=headers) as r:
            return r.status, await r.text()

    status, page = await get("/ui/", None)  # the page holds no data
    assert status == 200 and "<title>raftreg</title>" in page
    status, out = await get("/ui/api/services", None)
    assert status == 401 and json.loads(out)["code"] == "UNAUTHENTICATED", out
    status, out = await get("/ui/api/services", "not-a-token")
    assert status == 401, out
    status, out = await get("/ui/api/services", TOKENS["ro"])
    assert status == 200 and "instances" in json.loads(out), out
    status, out = await get("/ui/api/config", TOKENS["ro"])  # ro may not read /config/
    assert status == 403 and json.loads(out)["code"] == "PERMISSION_DENIED", out
    status, out = await get("/ui/api/keys?prefix=/secret/", TOKENS["rw"])
    assert status == 403, out
    status, out = await get("/ui/api/cluster", TOKENS["root"])
    members = json.loads(out)["members"]
    assert status == 200 and len(members) == 3 and all(m["healthy"] for m in members), out
