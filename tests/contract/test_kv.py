"""KV and revisions: one contract for every backend (see conftest)."""

from __future__ import annotations

import pytest

from raftreg.client import RegistryClient
from raftreg.common.types import SortOrder, SortTarget
from raftreg.errors import Compacted, FutureRevision, InvalidArgument
from tests.contract.conftest import Backend, backend_differs, eventually

pytestmark = pytest.mark.slow


async def test_put_then_get_returns_value_and_revisions(
    registry: RegistryClient, prefix: str
) -> None:
    r1 = await registry.put(prefix + "k", "v1")
    r2 = await registry.put(prefix + "k", b"v2")
    assert r2.revision == r1.revision + 1
    got = await registry.get(prefix + "k")
    assert got.revision >= r2.revision
    assert got.count == 1
    (kv,) = got.kvs
    assert (kv.key, kv.value, kv.version) == ((prefix + "k").encode(), b"v2", 2)
    assert (kv.create_revision, kv.mod_revision, kv.lease) == (r1.revision, r2.revision, 0)


async def test_put_returns_prev_kv_only_when_asked(registry: RegistryClient, prefix: str) -> None:
    assert (await registry.put(prefix + "k", "a", prev_kv=True)).prev_kv is None
    assert (await registry.put(prefix + "k", "b")).prev_kv is None
    r = await registry.put(prefix + "k", "c", prev_kv=True)
    assert r.prev_kv is not None and r.prev_kv.value == b"b" and r.prev_kv.version == 2


async def test_get_missing_key_is_empty_not_an_error(registry: RegistryClient, prefix: str) -> None:
    r = await registry.get(prefix + "nothing")
    assert r.kvs == () and r.count == 0 and r.revision > 0


async def test_prefix_range_limit_count_keys_only(registry: RegistryClient, prefix: str) -> None:
    for k in ["b", "a", "c", "d"]:
        await registry.put(prefix + k, k * 3)
    await registry.put(prefix[:-1] + "0", "outside")  # sorts right after the prefix range
    r = await registry.get(prefix, prefix=True)
    assert [kv.key for kv in r.kvs] == [(prefix + k).encode() for k in "abcd"]
    assert r.count == 4 and not r.more
    r = await registry.get(prefix, prefix=True, limit=2)
    assert len(r.kvs) == 2 and r.more and r.count == 4
    r = await registry.get(prefix, prefix=True, count_only=True)
    assert r.kvs == () and r.count == 4
    r = await registry.get(prefix, prefix=True, keys_only=True)
    assert all(kv.value == b"" for kv in r.kvs) and len(r.kvs) == 4
    r = await registry.get(prefix + "b", range_end=prefix + "d")
    assert [kv.value for kv in r.kvs] == [b"bbb", b"ccc"]


async def test_sorting_by_target_and_order(registry: RegistryClient, prefix: str) -> None:
    for k, v in [("a", "3"), ("b", "1"), ("c", "2")]:
        await registry.put(prefix + k, v)
    r = await registry.get(prefix, prefix=True, sort_order=SortOrder.DESCEND)
    assert [kv.key[-1:] for kv in r.kvs] == [b"c", b"b", b"a"]
    r = await registry.get(
        prefix, prefix=True, sort_order=SortOrder.ASCEND, sort_target=SortTarget.VALUE
    )
    assert [kv.value for kv in r.kvs] == [b"1", b"2", b"3"]
    r = await registry.get(
        prefix, prefix=True, sort_order=SortOrder.DESCEND, sort_target=SortTarget.MOD
    )
    assert [kv.key[-1:] for kv in r.kvs] == [b"c", b"b", b"a"]


async def test_reads_at_an_old_revision_see_the_old_value(
    registry: RegistryClient, prefix: str
) -> None:
    r1 = await registry.put(prefix + "k", "old")
    await registry.put(prefix + "k", "new")
    await registry.delete(prefix + "k")
    assert (await registry.get(prefix + "k")).kvs == ()
    (kv,) = (await registry.get(prefix + "k", revision=r1.revision)).kvs
    assert kv.value == b"old"


async def test_delete_single_and_prefix_with_prev_kvs(
    registry: RegistryClient, prefix: str
) -> None:
    for k in "abc":
        await registry.put(prefix + k, k)
    d = await registry.delete(prefix + "a", prev_kv=True)
    assert d.deleted == 1 and [kv.value for kv in d.prev_kvs] == [b"a"]
    assert (await registry.delete(prefix + "a")).deleted == 0
    d = await registry.delete(prefix, prefix=True)
    assert d.deleted == 2 and d.prev_kvs == ()
    assert (await registry.get(prefix, prefix=True)).count == 0


async def test_every_write_moves_the_revision_by_one(
    registry: RegistryClient, prefix: str
) -> None:
    revs = [(await registry.put(f"{prefix}{i}", "x")).revision for i in range(5)]
    assert revs == list(range(revs[0], revs[0] + 5))
    d = await registry.delete(prefix, prefix=True)
    assert d.revision == revs[-1] + 1  # one revision for the whole range delete
    noop = await registry.delete(prefix, prefix=True)
    assert noop.revision == d.revision  # deleting nothing is no write


async def test_serializable_get_converges_to_the_write(
    registry: RegistryClient, prefix: str
) -> None:
    w = await registry.put(prefix + "k", "v")

    async def caught_up() -> bool:
        r = await registry.get(prefix + "k", serializable=True)
        return bool(r.kvs) and r.kvs[0].mod_revision == w.revision

    await eventually(caught_up, "a serializable read sees the write")


async def test_str_and_bytes_keys_are_the_same_key(registry: RegistryClient, prefix: str) -> None:
    await registry.put(prefix + "ключ", "значение")
    (kv,) = (await registry.get((prefix + "ключ").encode())).kvs
    assert kv.value.decode() == "значение"


async def test_an_empty_key_is_invalid(registry: RegistryClient) -> None:
    with pytest.raises(InvalidArgument):
        await registry.put(b"", "v")


async def test_a_future_revision_is_refused(registry: RegistryClient, prefix: str) -> None:
    r = await registry.put(prefix + "k", "v")
    with pytest.raises(FutureRevision):
        await registry.get(prefix + "k", revision=r.revision + 1_000_000)


async def test_compaction_makes_old_revisions_unreadable(
    registry: RegistryClient, backend: Backend, prefix: str
) -> None:
    r1 = await registry.put(prefix + "k", "1")
    r2 = await registry.put(prefix + "k", "2")
    assert (await registry.compact(r2.revision)) >= r2.revision
    with pytest.raises(Compacted) as err:
        await registry.get(prefix + "k", revision=r1.revision)
    # raftreg (and memory, the same store) names the compaction point; etcd's error does not
    # carry it.
    assert err.value.compact_revision == backend_differs(
        backend, raftreg=r2.revision, etcd=0, memory=r2.revision)
    (kv,) = (await registry.get(prefix + "k", revision=r2.revision)).kvs
    assert kv.value == b"2"
    with pytest.raises(Compacted):
        await registry.compact(r1.revision)  # below the compaction point
