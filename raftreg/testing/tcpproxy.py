"""`TcpProxy`: a loopback TCP proxy for tests, that can withhold the server's replies.

It makes "the request reached the server and was applied, but the answer never came back"
happen on demand, instead of hoping that a short deadline beats a fast server.

Contract:
- It listens on 127.0.0.1, port 0 (a free port chosen by the kernel: `address`), and only
  there. Each accepted connection gets its own connection to `target` ("host:port"); bytes are
  forwarded both ways, in order, unchanged. When either side closes, both are closed.
- `swallow_replies()` withholds everything the server sends from then on, on every connection
  (open or accepted later); bytes from clients are still forwarded at once. `forward_replies()`
  delivers the withheld bytes, in order, and forwards again. Both return once the switch is in
  force: no byte read from a server after `swallow_replies()` returned reaches a client until
  `forward_replies()`. Withheld bytes are kept, not dropped, so a protocol with connection
  state (HTTP/2's HPACK tables, TLS) stays intact once they are delivered.
- `connections`, `bytes_up` (client to server), `bytes_down` (server to client, delivered) and
  `withheld` (server bytes now held back) are counters, readable from any thread. `tap(conn,
  data)`, if given, sees every chunk forwarded from a client to the server, on the proxy's
  thread (`conn` numbers the connections from 1, in accept order); it must not block.
- It runs its own asyncio loop in one daemon thread, so it serves sync and async tests alike
  and never depends on the caller's loop. `start()` returns once it listens; `stop()` (also on
  `with` exit) closes the listener and every connection and joins the thread, each within
  `timeout` seconds (`TimeoutError` otherwise). Any method may be called from any thread; the
  blocking ones block for at most `timeout` seconds.

`Http2Streams` is a `tap` for HTTP/2 with prior knowledge (h2c, as gRPC speaks it): it counts
the streams clients open (a HEADERS frame on a new stream id), i.e. the gRPC calls made.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

T = TypeVar("T")

Tap = Callable[[int, bytes], None]

_CHUNK = 65536


class _Pipe:
    """One proxied connection: the client's and the server's streams and the held bytes."""

    def __init__(
        self, n: int, client: asyncio.StreamWriter, server: asyncio.StreamWriter
    ) -> None:
        self.n = n
        self.client = client
        self.server = server
        self.held: list[bytes] = []
        self.tasks: list[asyncio.Task[None]] = []

    def close(self) -> None:
        for w in (self.client, self.server):
            with contextlib.suppress(Exception):
                w.close()


class TcpProxy:
    """A TCP proxy on 127.0.0.1 to `target` ("host:port"); see the module docstring."""

    def __init__(self, target: str, *, tap: Tap | None = None, timeout: float = 5.0) -> None:
        host, sep, port = target.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"target must be host:port, not {target!r}")
        self.target = target
        self._host = host.strip("[]")
        self._port = int(port)
        self._tap = tap
        self._timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._pipes: dict[int, _Pipe] = {}
        self._handlers: set[asyncio.Task[Any]] = set()
        self._swallow = False
        self._listen_port = 0
        self.connections = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.withheld = 0

    # --- public API ------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """"127.0.0.1:port", where clients connect (after `start()`)."""
        if not self._listen_port:
            raise RuntimeError("the proxy is not started")
        return f"127.0.0.1:{self._listen_port}"

    @property
    def swallowing(self) -> bool:
        """Whether server replies are being withheld."""
        return self._swallow

    def start(self) -> None:
        """Listen and serve (in a new thread); returns once `address` accepts connections."""
        if self._thread is not None:
            raise RuntimeError("the proxy is already started")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._loop = loop
        self._thread = threading.Thread(
            target=self._run, args=(loop, ready), name=f"tcpproxy->{self.target}", daemon=True
        )
        self._thread.start()
        if not ready.wait(self._timeout):
            raise TimeoutError(f"the proxy's loop did not start within {self._timeout}s")
        self._server = self._call(self._listen())
        sock = self._server.sockets[0]
        self._listen_port = int(sock.getsockname()[1])

    def stop(self) -> None:
        """Close the listener and every connection, stop the thread. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            if thread.is_alive():
                self._call(self._shutdown())
        finally:
            if thread.is_alive():
                loop.call_soon_threadsafe(loop.stop)
            thread.join(self._timeout)
            self._loop = self._thread = None
            self._listen_port = 0
        if thread.is_alive():
            raise TimeoutError(f"the proxy's thread did not end within {self._timeout}s")

    def swallow_replies(self) -> None:
        """Withhold every byte servers send from now on (clients' bytes still go through)."""
        self._call(self._set_swallow(True))

    def forward_replies(self) -> None:
        """Deliver the withheld bytes, in order, and forward server bytes again."""
        self._call(self._set_swallow(False))

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- the proxy's thread ----------------------------------------------------------------

    def _run(self, loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the proxy's loop and wait (at most `timeout`) for its result."""
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError("the proxy is not started")
        fut = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return fut.result(self._timeout)
        except TimeoutError:
            fut.cancel()
            raise TimeoutError(f"the proxy did not answer within {self._timeout}s") from None

    async def _listen(self) -> asyncio.Server:
        return await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def _set_swallow(self, on: bool) -> None:
        self._swallow = on
        if on:
            return
        for pipe in list(self._pipes.values()):
            held, pipe.held = pipe.held, []
            for data in held:
                self.withheld -= len(data)
                self.bytes_down += len(data)
                pipe.client.write(data)

    async def _shutdown(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        handlers = list(self._handlers)
        for t in handlers:
            t.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def _accept(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        n = self.connections
        me = asyncio.current_task()
        assert me is not None
        self._handlers.add(me)
        pipe: _Pipe | None = None
        try:
            s_reader, s_writer = await asyncio.wait_for(
                asyncio.open_connection(self._host, self._port), self._timeout
            )
            pipe = _Pipe(n, c_writer, s_writer)
            self._pipes[n] = pipe
            loop = asyncio.get_running_loop()
            pipe.tasks = [
                loop.create_task(self._up(pipe, c_reader)),
                loop.create_task(self._down(pipe, s_reader)),
            ]
            await asyncio.wait(pipe.tasks, return_when=asyncio.FIRST_COMPLETED)
        except (OSError, TimeoutError):
            pass  # the target is unreachable: close this connection
        finally:
            c_writer.close()
            if pipe is not None:
                for t in pipe.tasks:
                    t.cancel()
                await asyncio.gather(*pipe.tasks, return_exceptions=True)
                pipe.close()
                self._pipes.pop(n, None)
                self.withheld -= sum(len(d) for d in pipe.held)
                pipe.held.clear()
            self._handlers.discard(me)

    async def _up(self, pipe: _Pipe, reader: asyncio.StreamReader) -> None:
        """Client -> server, always."""
        with contextlib.suppress(OSError):
            while data := await reader.read(_CHUNK):
                self.bytes_up += len(data)
                if self._tap is not None:
                    self._tap(pipe.n, data)
                pipe.server.write(data)
                await pipe.server.drain()

    async def _down(self, pipe: _Pipe, reader: asyncio.StreamReader) -> None:
        """Server -> client, or into `held` while swallowing (decided with no await between
        the read and the write, so a switch made on this loop is exact)."""
        with contextlib.suppress(OSError):
            while data := await reader.read(_CHUNK):
                if self._swallow:
                    pipe.held.append(data)
                    self.withheld += len(data)
                    continue
                self.bytes_down += len(data)
                pipe.client.write(data)
                await pipe.client.drain()


class Http2Streams:
    """A `TcpProxy` tap counting the HTTP/2 streams that clients open (h2c with prior
    knowledge: the connection starts with the client preface). `opened` is the total over all
    connections; thread-safe to read."""

    PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    HEADERS = 0x1

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buf: dict[int, bytearray] = {}
        self._preface_left: dict[int, int] = {}
        self._last_stream: dict[int, int] = {}
        self._opened = 0

    @property
    def opened(self) -> int:
        with self._lock:
            return self._opened

    def __call__(self, conn: int, data: bytes) -> None:
        with self._lock:
            buf = self._buf.setdefault(conn, bytearray())
            buf += data
            left = self._preface_left.setdefault(conn, len(self.PREFACE))
            if left:
                skip = min(left, len(buf))
                del buf[:skip]
                self._preface_left[conn] = left - skip
                if left - skip:
                    return
            while len(buf) >= 9:
                length = int.from_bytes(buf[0:3], "big")
                if len(buf) < 9 + length:
                    break
                kind = buf[3]
                stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                if kind == self.HEADERS and stream > self._last_stream.get(conn, 0):
                    self._last_stream[conn] = stream
                    self._opened += 1
                del buf[: 9 + length]
