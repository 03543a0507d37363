"""`ConfigCenter`: read, publish, inspect the history of, and roll back a service's config.

Everything goes through the `RegistryClient` protocol, so it works on every backend.

Contracts:
- `publish` writes all its changes in ONE Txn: a published version is exactly one revision,
  and readers (and watchers) see all of it or none of it. With `expect_revision=E` the Txn
  succeeds only if the service's config is the same as at revision E (no key under the prefix
  was put, created or deleted after E); otherwise `FailedPrecondition` and nothing changes.
- `history` lists every revision that changed the service's config, oldest first, up to the
  revision current when it was called, from the store's MVCC history. History below the
  store's compaction point is gone: the answer then says so (`compacted`, `oldest_revision`)
  instead of failing. It never waits longer than `history_timeout`.
- `rollback(service, R)` makes the config equal to what it was at revision R, in one Txn that
  succeeds only if the config did not change since it was read; a compacted or future R raises
  the registry's `Compacted` / `FutureRevision`.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, overload

from raftreg.client.protocol import RegistryClient
from raftreg.client.resumable_watch import ALL_KEYS, WatchBatch
from raftreg.common.keys import prefix_range_end
from raftreg.common.types import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRange,
    Event,
    EventType,
    KeyValue,
    Put,
    Txn,
)
from raftreg.configcenter.layout import (
    BadValue,
    check_name,
    config_key,
    config_prefix,
    decode_value,
    encode_value,
    name_of,
)
from raftreg.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument


class _Delete(enum.Enum):
    DELETE = "DELETE"

    def __repr__(self) -> str:
        return "DELETE"


DELETE: Literal[_Delete.DELETE] = _Delete.DELETE
"""The value that removes a setting in `ConfigCenter.publish`."""

ConfigChange = Any  # a JSON value, or DELETE


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ConfigEntry:
    """One stored setting. `value` is the decoded JSON value, or a `BadValue` (with the raw
    text and the reason) when the stored text is not JSON."""

    name: str
    value: Any
    mod_revision: int
    version: int

    @property
    def valid(self) -> bool:
        return not isinstance(self.value, BadValue)


@dataclass(frozen=True, slots=True)
class ConfigSnapshot:
    """A service's config as of `revision`: every stored setting by name."""

    service: str
    revision: int
    entries: Mapping[str, ConfigEntry] = field(default_factory=_empty)

    @property
    def values(self) -> Mapping[str, Any]:
        """name -> decoded value, for the settings whose value is JSON."""
        return MappingProxyType({n: e.value for n, e in self.entries.items() if e.valid})

    @property
    def invalid(self) -> Mapping[str, str]:
        """name -> reason, for the settings whose value (or name) cannot be read."""
        return MappingProxyType(
            {n: e.value.reason for n, e in self.entries.items() if isinstance(e.value, BadValue)}
        )


@dataclass(frozen=True, slots=True)
class Version:
    """One revision that changed a service's config: `puts` maps each name written to its new
    value (a `BadValue` when the written text is not JSON), `deletes` the names removed."""

    revision: int
    puts: Mapping[str, Any] = field(default_factory=_empty)
    deletes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class History:
    """The versions of a service's config, oldest first, up to `revision` (the revision
    current when asked). `oldest_revision` is the first revision whose changes are known; when
    `compacted`, changes before it have been discarded by compaction. Iterates, indexes and
    has a length like the sequence of its `versions`."""

    service: str
    revision: int
    oldest_revision: int
    compacted: bool
    versions: tuple[Version, ...] = ()

    def __iter__(self) -> Iterator[Version]:
        return iter(self.versions)

    def __len__(self) -> int:
        return len(self.versions)

    @overload
    def __getitem__(self, i: int) -> Version: ...

    @overload
    def __getitem__(self, i: slice) -> tuple[Version, ...]: ...

    def __getitem__(self, i: int | slice) -> Version | tuple[Version, ...]:
        return self.versions[i]


def snapshot_of(service: str, revision: int, kvs: Sequence[KeyValue]) -> ConfigSnapshot:
    """The `ConfigSnapshot` of `service` from the key-values under its prefix."""
    prefix = config_prefix(service).encode()
    entries: dict[str, ConfigEntry] = {}
    for kv in kvs:
        name = name_of(prefix, kv.key)
        if isinstance(name, BadValue):
            text = name.raw.decode("utf-8", errors="backslashreplace")
            entries[text] = ConfigEntry(text, name, kv.mod_revision, kv.version)
        else:
            entries[name] = ConfigEntry(name, decode_value(kv.value), kv.mod_revision, kv.version)
    return ConfigSnapshot(service, revision, MappingProxyType(entries))


class ConfigCenter:
    """Config of services over a `RegistryClient`; see the module docstring.

    `history_timeout` bounds one `history` call (seconds; `DeadlineExceeded` past it)."""

    def __init__(self, client: RegistryClient, *, history_timeout: float = 10.0) -> None:
        if history_timeout <= 0:
            raise InvalidArgument("history_timeout must be positive")
        self._client = client
        self._history_timeout = history_timeout

    @property
    def client(self) -> RegistryClient:
        return self._client

    async def get(self, service: str, *, revision: int = 0) -> ConfigSnapshot:
        """The config of `service` now (linearizable), or as of `revision` (0 = now)."""
        res = await self._client.get(config_prefix(service), prefix=True, revision=revision)
        return snapshot_of(service, revision or res.revision, res.kvs)

    async def publish(
        self,
        service: str,
        changes: Mapping[str, ConfigChange],
        *,
        expect_revision: int | None = None,
    ) -> int:
        """Apply `changes` (name -> new JSON value, or `DELETE`) in one Txn; returns the
        revision of the new version (the current revision when nothing changed, e.g. only
        deletes of absent names). `expect_revision`: see the module docstring."""
        if not changes:
            raise InvalidArgument("nothing to publish")
        ops: list[Put | DeleteRange] = []
        for name, value in changes.items():
            key = config_key(service, name).encode()
            if value is DELETE:
                ops.append(DeleteRange(key))
            else:
                ops.append(Put(key, encode_value(value)))
        compares: tuple[Compare, ...] = ()
        if expect_revision is not None:
            compares = await self._unchanged_since(service, expect_revision)
        res = await self._client.txn(Txn(compare=compares, success=tuple(ops)))
        if not res.succeeded:
            raise FailedPrecondition(
                f"config of {service} changed after revision {expect_revision}"
            )
        return res.revision

    async def _unchanged_since(self, service: str, revision: int) -> tuple[Compare, ...]:
        """Compares that hold iff the config of `service` is the same as at `revision`: no key
        under the prefix modified after it, and every key that existed then still exists as
        the same incarnation. Reading at `revision` raises `Compacted` / `FutureRevision`."""
        if revision <= 0:
            raise InvalidArgument("expect_revision must be positive")
        prefix = config_prefix(service).encode()
        then = await self._client.get(prefix, prefix=True, revision=revision)
        return (
            Compare(
                prefix, CompareTarget.MOD, CompareResult.LESS, revision + 1,
                prefix_range_end(prefix),
            ),
            *(
                Compare(kv.key, CompareTarget.CREATE, CompareResult.EQUAL, kv.create_revision)
                for kv in then.kvs
            ),
        )

    async def history(self, service: str, name: str | None = None) -> History:
        """The versions of `service`'s config (only those touching `name` when given), oldest
        first; see the module docstring.

        How: every revision after the compaction point was made by a write that produced at
        least one event (revisions advance only on key changes), so a watch of the whole key
        space from the oldest available revision is guaranteed to reach the revision read
        first; events under the prefix are kept. This does not rely on progress notifications,
        which etcd 3.5.1 may send before an unsynced watcher's events."""
        if name is not None:
            check_name(name)
        prefix = config_prefix(service).encode()
        now = (await self._client.get(prefix, prefix=True, count_only=True)).revision
        try:
            async with asyncio.timeout(self._history_timeout):
                oldest, compacted, versions = await self._collect(service, now)
        except TimeoutError:
            raise DeadlineExceeded(
                f"history of {service} not complete within {self._history_timeout:g}s"
            ) from None
        if name is not None:
            versions = [
                Version(
                    v.revision,
                    MappingProxyType({n: x for n, x in v.puts.items() if n == name}),
                    tuple(d for d in v.deletes if d == name),
                )
                for v in versions
                if name in v.puts or name in v.deletes
            ]
        return History(service, now, oldest, compacted, tuple(versions))

    async def _collect(self, service: str, until: int) -> tuple[int, bool, list[Version]]:
        """(oldest available revision, whether history below it was compacted, versions of
        `service` with revision <= `until`). A store starts at revision 1 with no key: the
        first write is revision 2."""
        start, compacted = 2, False
        versions: list[Version] = []
        while True:
            if start > until:
                return (start if compacted else 1), compacted, versions
            async with await self._client.watch(
                ALL_KEYS, range_end=ALL_KEYS, start_revision=start
            ) as w:
                batch: WatchBatch
                async for batch in w:
                    if batch.compacted:
                        start, compacted = max(batch.compact_revision, start + 1), True
                        versions.clear()
                        break
                    versions += versions_in(
                        service, (e for e in batch.events if e.kv.mod_revision <= until)
                    )
                    if batch.events and batch.events[-1].kv.mod_revision >= until:
                        return (start if compacted else 1), compacted, versions
                else:
                    raise FailedPrecondition("watch ended before the history was complete")

    async def rollback(self, service: str, revision: int) -> int:
        """Make the config of `service` what it was at `revision`; returns the new revision
        (the current one when nothing differs)."""
        if revision <= 0:
            raise InvalidArgument("revision must be positive")
        prefix = config_prefix(service)
        then = await self._client.get(prefix, prefix=True, revision=revision)
        now = await self._client.get(prefix, prefix=True)
        old = {kv.key: kv.value for kv in then.kvs}
        current = {kv.key: kv for kv in now.kvs}
        ops: list[Put | DeleteRange] = [
            Put(k, v) for k, v in old.items() if k not in current or current[k].value != v
        ]
        ops += [DeleteRange(k) for k in current if k not in old]
        if not ops:
            return now.revision
        pb = prefix.encode()
        compares = (
            Compare(pb, CompareTarget.MOD, CompareResult.LESS, now.revision + 1,
                    prefix_range_end(pb)),
            *(
                Compare(kv.key, CompareTarget.CREATE, CompareResult.EQUAL, kv.create_revision)
                for kv in now.kvs
            ),
        )
        res = await self._client.txn(Txn(compare=compares, success=tuple(ops)))
        if not res.succeeded:
            raise FailedPrecondition(
                f"config of {service} changed during the rollback; nothing was changed"
            )
        return res.revision


def versions_in(service: str, events: Iterable[Event]) -> list[Version]:
    """The versions of `service`'s config made by `events` (in revision order; events on
    other keys are ignored), one per revision."""
    prefix = config_prefix(service).encode()
    by_rev: dict[int, tuple[dict[str, Any], list[str]]] = {}
    for e in events:
        if not e.kv.key.startswith(prefix):
            continue
        puts, deletes = by_rev.setdefault(e.kv.mod_revision, ({}, []))
        name = name_of(prefix, e.kv.key)
        text = name if isinstance(name, str) else name.raw.decode("utf-8", "backslashreplace")
        if e.type == EventType.DELETE:
            puts.pop(text, None)
            deletes.append(text)
        else:
            puts[text] = name if isinstance(name, BadValue) else decode_value(e.kv.value)
    return [Version(r, MappingProxyType(p), tuple(d)) for r, (p, d) in by_rev.items()]
