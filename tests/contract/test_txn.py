"""Transactions: one contract for every backend (see conftest)."""

from __future__ import annotations

import pytest

from raftreg.client import RegistryClient
from raftreg.common.types import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRange,
    DeleteResult,
    Put,
    PutResult,
    Range,
    RangeResult,
    Txn,
    TxnResult,
)
from raftreg.errors import InvalidArgument

pytestmark = pytest.mark.slow


def cmp(key: str, target: CompareTarget, result: CompareResult, operand: bytes | int) -> Compare:
    return Compare(key.encode(), target, result, operand)


async def test_value_compare_picks_the_branch(registry: RegistryClient, prefix: str) -> None:
    k = prefix + "k"
    await registry.put(k, "v1")
    t = Txn(
        compare=(cmp(k, CompareTarget.VALUE, CompareResult.EQUAL, b"v1"),),
        success=(Put(k.encode(), b"v2"), Range(k.encode())),
        failure=(Range(k.encode()),),
    )
    r = await registry.txn(t)
    assert r.succeeded
    put, rng = r.responses
    assert isinstance(put, PutResult) and isinstance(rng, RangeResult)
    assert put.revision == r.revision and rng.kvs[0].value == b"v2"
    r = await registry.txn(t)  # now the value is v2: failure branch, nothing written
    assert not r.succeeded
    (rng,) = r.responses
    assert isinstance(rng, RangeResult) and rng.kvs[0].value == b"v2"
    assert r.revision == put.revision


async def test_create_if_absent_with_version_zero(registry: RegistryClient, prefix: str) -> None:
    k = prefix + "lock"

    def create(owner: bytes) -> Txn:
        return Txn(
            compare=(cmp(k, CompareTarget.VERSION, CompareResult.EQUAL, 0),),
            success=(Put(k.encode(), owner),),
        )

    assert (await registry.txn(create(b"a"))).succeeded
    assert not (await registry.txn(create(b"b"))).succeeded
    (kv,) = (await registry.get(k)).kvs
    assert kv.value == b"a"


async def test_revision_and_lease_compares(registry: RegistryClient, prefix: str) -> None:
    k = prefix + "k"
    p = await registry.put(k, "x")
    ok = await registry.txn(Txn(compare=(
        cmp(k, CompareTarget.MOD, CompareResult.EQUAL, p.revision),
        cmp(k, CompareTarget.CREATE, CompareResult.LESS, p.revision + 1),
        cmp(k, CompareTarget.LEASE, CompareResult.EQUAL, 0),
        cmp(k, CompareTarget.VERSION, CompareResult.GREATER, 0),
        cmp(k, CompareTarget.VALUE, CompareResult.NOT_EQUAL, b"y"),
    )))
    assert ok.succeeded and ok.responses == ()
    stale = await registry.txn(Txn(
        compare=(cmp(k, CompareTarget.MOD, CompareResult.GREATER, p.revision),),
    ))
    assert not stale.succeeded


async def test_a_compare_over_a_range_holds_for_every_key(
    registry: RegistryClient, prefix: str
) -> None:
    for k in "ab":
        await registry.put(prefix + k, "same")
    every = Compare(prefix.encode(), CompareTarget.VALUE, CompareResult.EQUAL, b"same",
                    range_end=(prefix[:-1] + "0").encode())
    assert (await registry.txn(Txn(compare=(every,)))).succeeded
    await registry.put(prefix + "b", "other")
    assert not (await registry.txn(Txn(compare=(every,)))).succeeded


async def test_delete_and_nested_txn_results(registry: RegistryClient, prefix: str) -> None:
    k = prefix + "k"
    await registry.put(k, "v")
    inner = Txn(compare=(cmp(k, CompareTarget.VALUE, CompareResult.EQUAL, b"v"),),
                success=(Range(k.encode()),))
    r = await registry.txn(Txn(success=(inner, DeleteRange(k.encode(), prev_kv=True))))
    assert r.succeeded
    nested, deleted = r.responses
    assert isinstance(nested, TxnResult) and nested.succeeded
    (rng,) = nested.responses
    assert isinstance(rng, RangeResult) and rng.kvs[0].value == b"v"
    assert isinstance(deleted, DeleteResult) and deleted.deleted == 1
    assert deleted.prev_kvs[0].value == b"v"
    assert (await registry.get(k)).count == 0


async def test_writing_one_key_twice_in_a_txn_is_invalid(
    registry: RegistryClient, prefix: str
) -> None:
    k = (prefix + "k").encode()
    with pytest.raises(InvalidArgument):
        await registry.txn(Txn(success=(Put(k, b"1"), Put(k, b"2"))))
    assert (await registry.get(k)).count == 0


async def test_all_writes_of_a_txn_share_one_revision(
    registry: RegistryClient, prefix: str
) -> None:
    r = await registry.txn(Txn(success=tuple(Put(f"{prefix}{i}".encode(), b"x")
                                             for i in range(3))))
    got = await registry.get(prefix, prefix=True)
    assert {kv.mod_revision for kv in got.kvs} == {r.revision}
