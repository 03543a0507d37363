"""Real example-service processes for tests, fault tests and demos.

`ServiceGroup` (a `raftreg.testing.procs.ProcessGroup`) starts `python -m services.<kind>`
processes against one registry, waits for each one's READY line (bounded), and can SIGTERM,
kill -9, pause, resume and restart them. Each process's stdout and stderr go to
`<root>/<id>.log`; every process dies with the thread that started it (PR_SET_PDEATHSIG) and
`close()` (also on `with` exit) kill -9s whatever is left, so a failed test leaves nothing behind.

The HTTP helpers (`get_json`, `post_json`, `wait_stats`, `send_user_traffic`) talk to the
services' and the gateway's HTTP APIs with aiohttp.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from raftreg.testing.procs import ProcessGroup
from services.runtime import parse_ready

REPO_ROOT = Path(__file__).resolve().parent.parent
KINDS = ("user", "chat", "gateway")


@dataclass(frozen=True, slots=True)
class ServiceProc:
    """A started service process as its READY line described it."""

    kind: str
    id: str
    service: str
    grpc: str
    http: str | None
    pid: int

    @property
    def http_url(self) -> str:
        if self.http is None:
            raise ValueError(f"{self.kind} {self.id} has no HTTP server")
        return f"http://{self.http}"


class ServiceGroup(ProcessGroup):
    """Service processes registered in the registry `registry` (what `--registry` takes: an
    "etcd://..." or "raftreg://..." URL, or endpoints). With `registry=None` the processes
    choose the registry by configuration: `<root>/cluster.toml` (they run in `root`) and the
    RAFTREG_BACKEND / RAFTREG_ENDPOINTS variables of `env` (default: this process's
    environment). Processes are named by instance id."""

    def __init__(
        self, root: Path, registry: str | None, *, env: dict[str, str] | None = None
    ) -> None:
        super().__init__(root)
        self.registry = registry
        base = dict(os.environ if env is None else env)
        path = base.get("PYTHONPATH", "")
        base["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
        base["PYTHONUNBUFFERED"] = "1"
        self._env = base
        self._argv: dict[str, list[str]] = {}
        self._kind: dict[str, str] = {}
        self._log_from: dict[str, int] = {}
        self.ready: dict[str, ServiceProc] = {}

    # ------------------------------------------------------------------ processes

    def launch(self, kind: str, instance_id: str, *args: str) -> None:
        """Start `python -m services.<kind> --id <instance_id> [--registry ...] <args>` without
        waiting; `wait_ready` then waits for it. Instance ids must be unique in the group."""
        if kind not in KINDS:
            raise ValueError(f"unknown service kind {kind!r}; one of {KINDS}")
        self._kind[instance_id] = kind
        registry = ["--registry", self.registry] if self.registry is not None else []
        self._argv[instance_id] = [
            sys.executable, "-m", f"services.{kind}", "--id", instance_id, *registry, *args,
        ]
        self.start(instance_id)

    def start(self, *names: str) -> None:
        """(Re)start the named, previously launched processes with their original arguments."""
        for n in names or tuple(self._argv):
            if self.alive(n):
                continue
            log = self.root / f"{n}.log"
            self._log_from[n] = log.stat().st_size if log.exists() else 0
            self.ready.pop(n, None)
            self.spawn(n, self._argv[n], self._env)

    def wait_ready(self, instance_id: str, timeout: float = 20.0) -> ServiceProc:
        """The READY line of the current run of `instance_id`; raises `TimeoutError` (or
        `RuntimeError` if the process exited first) with the log's tail."""
        deadline = time.monotonic() + timeout
        log = self.root / f"{instance_id}.log"
        while True:
            if log.exists():
                with open(log, "rb") as f:
                    f.seek(self._log_from.get(instance_id, 0))
                    for raw in f.read().decode(errors="replace").splitlines():
                        info = parse_ready(raw)
                        if info is not None:
                            proc = ServiceProc(
                                kind=self._kind[instance_id], id=str(info["id"]),
                                service=str(info["service"]), grpc=str(info["grpc"]),
                                http=info.get("http"), pid=int(info["pid"]),
                            )
                            self.ready[instance_id] = proc
                            return proc
            if not self.alive(instance_id):
                raise RuntimeError(
                    f"{instance_id} exited before READY:\n{self.log_tail(instance_id)}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{instance_id} not READY within {timeout}s:\n{self.log_tail(instance_id)}"
                )
            time.sleep(0.02)

    def start_service(
        self, kind: str, instance_id: str, *args: str, timeout: float = 20.0
    ) -> ServiceProc:
        """`launch` and `wait_ready`."""
        self.launch(kind, instance_id, *args)
        return self.wait_ready(instance_id, timeout)

    def start_many(
        self, specs: Sequence[tuple[str, str, Sequence[str]]], timeout: float = 30.0
    ) -> list[ServiceProc]:
        """Launch every (kind, id, args) at once, then wait for all of them."""
        for kind, iid, args in specs:
            self.launch(kind, iid, *args)
        return [self.wait_ready(iid, timeout) for _, iid, _ in specs]

    def terminate(self, instance_id: str, timeout: float = 10.0) -> int:
        """SIGTERM (the graceful stop: deregister, drain) and wait; returns the exit code.
        kill -9s it and raises `TimeoutError` if it has not exited within `timeout`."""
        p = self.procs[instance_id]
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            return p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(instance_id)
            raise TimeoutError(f"{instance_id} did not exit within {timeout}s of SIGTERM") from None

    def log_tail(self, instance_id: str, lines: int = 30) -> str:
        return "\n".join(self.log_text(instance_id).splitlines()[-lines:])


# ---------------------------------------------------------------------- HTTP helpers


async def get_json(
    session: aiohttp.ClientSession, url: str, *, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """(status, decoded JSON body) of GET `url`."""
    async with session.get(url, headers=headers) as r:
        return r.status, json.loads(await r.text())


async def post_json(session: aiohttp.ClientSession, url: str, doc: Any) -> tuple[int, Any]:
    async with session.post(url, json=doc) as r:
        return r.status, json.loads(await r.text())


async def wait_stats(
    session: aiohttp.ClientSession,
    gateway_url: str,
    predicate: Callable[[dict[str, Any]], bool],
    timeout: float = 15.0,
) -> dict[str, Any]:
    """Poll the gateway's /stats until `predicate(stats)` holds; `TimeoutError` (with the last
    stats) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            status, last = await get_json(session, f"{gateway_url}/stats")
            if status == 200 and predicate(last):
                return dict(last)
        except aiohttp.ClientError as e:
            last = repr(e)
        if time.monotonic() > deadline:
            raise TimeoutError(f"gateway stats did not match within {timeout}s: {last}")
        await asyncio.sleep(0.05)


def instance_ids(stats: dict[str, Any]) -> set[str]:
    """The ids of the live user instances in a gateway /stats answer."""
    return {str(i["id"]) for i in stats["instances"]}


@dataclass(slots=True)
class Traffic:
    """Outcome of `send_user_traffic`: successful answers per `served_by`, failures per HTTP
    status (0 = no HTTP answer)."""

    served: collections.Counter[str] = field(default_factory=collections.Counter)
    failed: collections.Counter[int] = field(default_factory=collections.Counter)
    seconds: float = 0.0

    @property
    def ok(self) -> int:
        return sum(self.served.values())

    @property
    def failures(self) -> int:
        return sum(self.failed.values())


async def send_user_traffic(
    session: aiohttp.ClientSession,
    gateway_url: str,
    n: int,
    *,
    concurrency: int = 8,
    key: str | None = None,
    user_ids: Sequence[int] = (1, 2, 3, 4, 5),
) -> Traffic:
    """`n` GET /user?id=.. requests through the gateway, `concurrency` at a time, cycling over
    `user_ids`; with `key`, every request carries it as its balancing key."""
    out = Traffic()
    headers = {"X-Route-Key": key} if key is not None else None
    next_i = 0
    t0 = time.monotonic()

    async def worker() -> None:
        nonlocal next_i
        while next_i < n:
            i = next_i
            next_i += 1
            uid = user_ids[i % len(user_ids)]
            try:
                status, doc = await get_json(session, f"{gateway_url}/user?id={uid}",
                                             headers=headers)
            except (aiohttp.ClientError, ValueError):
                out.failed[0] += 1
                continue
            if status == 200:
                out.served[str(doc["served_by"])] += 1
            else:
                out.failed[status] += 1

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, n)))))
    out.seconds = time.monotonic() - t0
    return out


class SteadyTraffic:
    """GET /user?id=.. through the gateway at `gateway_url` without end, from `start()` (or
    `async with`) until `stop()`: `concurrency` workers, each sending its next request
    `pause` seconds after its previous one answered, cycling over `user_ids`.

    Outcomes are counted per phase: `phase(name)` starts a new phase (a request counts in the
    phase that was current when it was sent); `phases` maps each name to its `Traffic`,
    `total()` adds them up. `errors` keeps the first `keep_errors` failures as
    (phase, HTTP status (0 = no answer), body or exception text)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        gateway_url: str,
        *,
        concurrency: int = 4,
        pause: float = 0.005,
        user_ids: Sequence[int] = (1, 2, 3, 4, 5),
        keep_errors: int = 50,
    ) -> None:
        self._session = session
        self._url = gateway_url
        self._concurrency = max(1, concurrency)
        self._pause = pause
        self._user_ids = tuple(user_ids)
        self._keep_errors = keep_errors
        self.phases: dict[str, Traffic] = {}
        self.errors: list[tuple[str, int, str]] = []
        self._current = ""
        self._started_at = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self.phase("start")

    @property
    def current(self) -> str:
        return self._current

    def phase(self, name: str) -> Traffic:
        """Count the following requests under `name` (a new, empty phase); returns it."""
        if name in self.phases:
            raise ValueError(f"phase {name!r} exists already")
        now = time.monotonic()
        if self._current:
            self.phases[self._current].seconds = now - self._started_at
        self._current, self._started_at = name, now
        self.phases[name] = Traffic()
        return self.phases[name]

    def total(self) -> Traffic:
        out = Traffic()
        for t in self.phases.values():
            out.served.update(t.served)
            out.failed.update(t.failed)
            out.seconds += t.seconds
        return out

    def start(self) -> None:
        if self._tasks:
            raise RuntimeError("SteadyTraffic runs once")
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._worker(i)) for i in range(self._concurrency)]

    async def stop(self) -> Traffic:
        """Stop sending (requests in flight are abandoned, not counted); returns `total()`."""
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.phases[self._current].seconds = time.monotonic() - self._started_at
        return self.total()

    async def wait_served(self, n: int, timeout: float = 15.0) -> Traffic:
        """Until the current phase has `n` successful answers; `TimeoutError` after `timeout`."""
        deadline = time.monotonic() + timeout
        t = self.phases[self._current]
        while t.ok < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"phase {self._current!r}: {t.ok} < {n} served: {t}")
            if self._tasks and all(x.done() for x in self._tasks):
                raise RuntimeError("the traffic workers died")
            await asyncio.sleep(0.02)
        return t

    async def __aenter__(self) -> SteadyTraffic:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _failed(self, phase: str, status: int, text: str) -> None:
        self.phases[phase].failed[status] += 1
        if len(self.errors) < self._keep_errors:
            self.errors.append((phase, status, text[:300]))

    async def _worker(self, k: int) -> None:
        i = k
        while True:
            uid = self._user_ids[i % len(self._user_ids)]
            i += self._concurrency
            phase = self._current
            try:
                async with self._session.get(f"{self._url}/user?id={uid}") as r:
                    body = await r.text()
                    status = r.status
            except (aiohttp.ClientError, TimeoutError) as e:
                self._failed(phase, 0, repr(e))
            else:
                if status == 200:
                    self.phases[phase].served[str(json.loads(body)["served_by"])] += 1
                else:
                    self._failed(phase, status, body)
            await asyncio.sleep(self._pause)


def log_lines(group: ProcessGroup, name: str, *needles: str) -> list[str]:
    """The lines of `name`'s log that contain every one of `needles`."""
    return [ln for ln in group.log_text(name).splitlines() if all(n in ln for n in needles)]
