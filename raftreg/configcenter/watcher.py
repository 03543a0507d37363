"""`ConfigWatcher`: a service's typed config, kept current without restart (hot reload).

Contracts:
- The config is followed by a `raftreg.client.mirror.PrefixMirror` of `/config/<service>/`
  (its module docstring holds the registry-side guarantees): `start()` reads the config and
  watches from right after that read, so no change is missed between the two. The initial
  config goes through `parse`; if it is invalid (a value that is not JSON, or `parse` raises),
  `start()` raises `InvalidArgument` with the reason. There is no separate default: a service
  with no settings stored gets `parse({})`, so the parser's defaults are the defaults.
- Every revision that changes the service's prefix is evaluated on its own: the full mapping
  name -> decoded JSON value as of that revision goes through `parse`. Valid: it replaces
  `current` and `revision`; if it differs (`!=`) from the config in force, `on_change(new,
  old)` runs (awaited when it returns an awaitable; `old` is None only for the initial call
  made by `start()`). Invalid: one warning line on the "raftreg.config" logger with the
  revision and the reason; the last good config stays in force and `last_error` says why.
- Changes are applied one at a time, in revision order; `on_change` never overlaps itself. An
  exception from `on_change` after start is logged and does not stop the watcher (the new
  config stays in force; it was valid).
- Registry failures are the mirror's to survive: the client's `Watch` resumes without gap by
  itself; a compacted or failed watch re-lists (retrying with backoff between `retry_delay`
  and `max_retry_delay` seconds), and the re-listed config is evaluated like any change. It
  stops for good only on `stop()` or when the client is closed.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType, TracebackType
from typing import Any, Generic, Self, TypeVar

from raftreg.client.mirror import PrefixMirror
from raftreg.client.protocol import RegistryClient
from raftreg.common.backoff import Backoff
from raftreg.common.types import Event, EventType, KeyValue
from raftreg.configcenter.layout import BadValue, config_prefix, decode_value, name_of
from raftreg.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger("raftreg.config")

T = TypeVar("T")


class _Rejected(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _reason(e: Exception) -> str:
    text = str(e) if isinstance(e, ValueError) and str(e) else f"{type(e).__name__}: {e}"
    return " ".join(text.split())  # one line


class ConfigWatcher(Generic[T]):
    """The config of `service`, parsed by `parse` and kept current; see the module docstring.

    Use as `async with ConfigWatcher(client, "gateway", dataclass_parser(Settings)) as cfg:`
    then read `cfg.current` whenever the setting is needed."""

    def __init__(
        self,
        client: RegistryClient,
        service: str,
        parse: Callable[[Mapping[str, Any]], T],
        on_change: Callable[[T, T | None], Awaitable[None] | None] | None = None,
        *,
        retry_delay: float = 0.1,
        max_retry_delay: float = 5.0,
    ) -> None:
        if not 0 < retry_delay <= max_retry_delay:
            raise InvalidArgument("need 0 < retry_delay <= max_retry_delay")
        self._service = service
        self._prefix = config_prefix(service).encode()
        self._parse = parse
        self._on_change = on_change
        self._mirror = PrefixMirror(
            client, self._prefix, on_snapshot=self._on_snapshot, on_events=self._apply,
            backoff=Backoff(base=retry_delay, max_delay=max_retry_delay, jitter="none"),
            log=log, label=f"config of {service}",
        )
        self._values: dict[str, Any] = {}  # the store's state: name -> value or BadValue
        self._current: T | None = None
        self._started = False
        self._revision = 0
        self._seen = 0
        self._last_error: str | None = None
        self._applying = False  # between accepting a config and on_change returning
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ caller side

    @property
    def service(self) -> str:
        return self._service

    @property
    def current(self) -> T:
        """The config in force (the last valid one). `FailedPrecondition` before `start()`."""
        if not self._started:
            raise FailedPrecondition("config watcher not started")
        return self._current  # type: ignore[return-value]  # set by start()

    @property
    def revision(self) -> int:
        """The revision of the config in force."""
        return self._revision

    @property
    def seen_revision(self) -> int:
        """The last revision evaluated, whether accepted or rejected."""
        return self._seen

    @property
    def last_error(self) -> str | None:
        """Why the newest evaluated revision was rejected; None when it is in force."""
        return self._last_error

    @property
    def running(self) -> bool:
        """True from `start()` until `stop()` or the watcher ended (client closed)."""
        return self._mirror.running

    async def start(self) -> T:
        """Load and parse the config, then watch it; returns the initial config. Raises the
        registry's error when the config cannot be read, `InvalidArgument` when it is invalid,
        and whatever the initial `on_change` raises; the watcher is then not running."""
        if self._started:
            raise FailedPrecondition("config watcher already started")
        try:
            await self._mirror.list_and_start()  # the initial snapshot goes to _on_snapshot
        except BaseException:
            self._started = False  # not running: a later start() may try again
            raise
        self._signal()
        return self._current  # type: ignore[return-value]  # set by _on_snapshot

    async def stop(self) -> None:
        """Stop watching (idempotent); `current` stays readable."""
        if self._mirror.started:  # never started: nothing runs, and start() stays possible
            await self._mirror.close()

    async def wait_for(self, predicate: Callable[[T], bool], timeout: float) -> T:
        """The config in force once `predicate` holds for it and its `on_change` returned;
        `TimeoutError` after `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    changed = self._changed
                    ready = self._started and not self._applying
                    if ready and predicate(self._current):  # type: ignore[arg-type]
                        return self._current  # type: ignore[return-value]
                    await changed.wait()
        except TimeoutError:
            raise TimeoutError(
                f"config of {self._service} did not match within {timeout:g}s "
                f"(revision {self._revision}, last error {self._last_error})"
            ) from None

    async def wait_revision(self, revision: int, timeout: float) -> None:
        """Until `revision` (or a later one) has been evaluated; `TimeoutError` after
        `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                while self._seen < revision:
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(
                f"config of {self._service}: revision {revision} not seen within {timeout:g}s "
                f"(seen {self._seen})"
            ) from None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ internals

    def _signal(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _on_snapshot(self, kvs: tuple[KeyValue, ...], revision: int) -> None:
        """The whole config as of `revision`: the initial one (from `start()`), or a re-list
        evaluated like any change."""
        self._values = {}
        for kv in kvs:
            self._put(kv.key, kv.value)
        if self._started:
            await self._consider(revision)
            return
        try:
            value = self._evaluate()
        except _Rejected as e:
            raise InvalidArgument(
                f"config of {self._service} at revision {revision} is invalid: {e.reason}"
            ) from None
        self._current, self._started = value, True
        self._revision = self._seen = revision
        await self._notify(value, None)

    def _put(self, key: bytes, value: bytes) -> None:
        name = name_of(self._prefix, key)
        if isinstance(name, BadValue):
            self._values[name.raw.decode("utf-8", "backslashreplace")] = name
        else:
            self._values[name] = decode_value(value)

    def _delete(self, key: bytes) -> None:
        name = name_of(self._prefix, key)
        text = name if isinstance(name, str) else name.raw.decode("utf-8", "backslashreplace")
        self._values.pop(text, None)

    def _evaluate(self) -> T:
        bad = [f"{n}: {v.reason}" for n, v in self._values.items() if isinstance(v, BadValue)]
        if bad:
            raise _Rejected("; ".join(bad))
        try:
            return self._parse(MappingProxyType(dict(self._values)))
        except Exception as e:
            raise _Rejected(_reason(e)) from e

    async def _notify(self, new: T, old: T | None) -> None:
        if self._on_change is None:
            return
        result = self._on_change(new, old)
        if inspect.isawaitable(result):
            await result

    async def _consider(self, revision: int) -> None:
        """Evaluate the store's state as of `revision` and apply it if valid."""
        self._applying = True
        try:
            await self._consider_now(revision)
        finally:
            self._applying = False
        self._seen = max(self._seen, revision)
        self._signal()

    async def _consider_now(self, revision: int) -> None:
        try:
            new = self._evaluate()
        except _Rejected as e:
            self._last_error = f"revision {revision}: {e.reason}"
            log.warning(
                "config of %s at revision %d rejected, keeping revision %d: %s",
                self._service, revision, self._revision, e.reason,
            )
        else:
            old = self._current
            self._current, self._revision, self._last_error = new, revision, None
            try:
                changed = new != old
            except Exception:
                changed = True
            if changed:
                try:
                    await self._notify(new, old)
                except Exception:
                    log.exception(
                        "config of %s: on_change failed for revision %d", self._service, revision
                    )

    async def _apply(self, events: tuple[Event, ...], revision: int) -> None:
        """One watch batch: each revision in it is evaluated on its own."""
        rev = 0
        for e in events:
            if rev and e.kv.mod_revision != rev:
                await self._consider(rev)
            rev = e.kv.mod_revision
            if e.type == EventType.DELETE:
                self._delete(e.kv.key)
            else:
                self._put(e.kv.key, e.kv.value)
        if rev:
            await self._consider(rev)
