"""`raftreg.testing.tcpproxy` against an in-process echo server (no processes started): bytes
both ways, replies withheld then delivered in order, loopback only, clean stop, and the HTTP/2
stream counter. Every wait is bounded."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from raftreg.testing.tcpproxy import Http2Streams, TcpProxy

BOUND = 5.0  # seconds; every step here takes milliseconds


class Echo:
    """An echo server on the test's loop that records what it received."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.got = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(4096):
            self.received += data
            self.got.set()
            w.write(data)
            await w.drain()
        w.close()

    @property
    def address(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def wait_received(self, n: int) -> None:
        async def enough() -> None:
            while len(self.received) < n:
                self.got.clear()
                await self.got.wait()

        await asyncio.wait_for(enough(), BOUND)


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    e = Echo()
    e.server = await asyncio.start_server(e.handle, "127.0.0.1", 0)
    yield e
    e.server.close()


async def wait_for(pred: object, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BOUND
    while not pred():  # type: ignore[operator]
        assert loop.time() < deadline, f"not within {BOUND}s: {what}"
        await asyncio.sleep(0.01)


async def read_exactly(r: asyncio.StreamReader, n: int) -> bytes:
    return await asyncio.wait_for(r.readexactly(n), BOUND)


async def test_bytes_go_both_ways_unchanged_and_are_counted(echo: Echo) -> None:
    seen: list[tuple[int, bytes]] = []
    with TcpProxy(echo.address, tap=lambda n, d: seen.append((n, d))) as proxy:
        assert proxy.address.startswith("127.0.0.1:")
        r, w = await asyncio.open_connection(*proxy.address.split(":"))
        w.write(b"hello")
        assert await read_exactly(r, 5) == b"hello"
        assert (proxy.connections, proxy.bytes_up, proxy.bytes_down) == (1, 5, 5)
        assert b"".join(d for _, d in seen) == b"hello" and {n for n, _ in seen} == {1}
        w.close()


async def test_swallowed_replies_are_held_then_delivered_in_order(echo: Echo) -> None:
    with TcpProxy(echo.address) as proxy:
        r, w = await asyncio.open_connection(*proxy.address.split(":"))
        w.write(b"0")
        assert await read_exactly(r, 1) == b"0"  # connected and flowing
        await asyncio.to_thread(proxy.swallow_replies)
        assert proxy.swallowing
        for chunk in (b"a", b"bc", b"def"):
            w.write(chunk)
            await w.drain()
        await echo.wait_received(7)  # the requests reach the server...
        await wait_for(lambda: proxy.withheld == 6, "the server's 6 reply bytes held back")
        assert proxy.bytes_down == 1  # ...and its replies reach nobody
        await asyncio.to_thread(proxy.forward_replies)
        assert await read_exactly(r, 6) == b"abcdef"  # all of them, in order
        w.write(b"g")
        assert await read_exactly(r, 1) == b"g"  # and forwarding goes on
        assert (proxy.withheld, proxy.bytes_down) == (0, 8)
        w.close()


async def test_it_listens_on_loopback_only_and_stop_closes_everything(echo: Echo) -> None:
    proxy = TcpProxy(echo.address)
    with pytest.raises(RuntimeError):
        _ = proxy.address
    proxy.start()
    try:
        host, port = proxy.address.split(":")
        assert host == "127.0.0.1" and int(port) > 0
        r, w = await asyncio.open_connection(host, port)
        w.write(b"x")
        assert await read_exactly(r, 1) == b"x"
    finally:
        await asyncio.to_thread(proxy.stop)
    assert await asyncio.wait_for(r.read(1), BOUND) == b""  # the proxy closed our connection
    w.close()
    await asyncio.to_thread(proxy.stop)  # idempotent
    with pytest.raises(RuntimeError):
        proxy.swallow_replies()


async def test_a_connection_to_an_unreachable_target_is_closed() -> None:
    with socket.socket() as s:  # a bound port with no listener: connecting to it is refused
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
        with TcpProxy(dead) as proxy:
            r, w = await asyncio.open_connection(*proxy.address.split(":"))
            assert await asyncio.wait_for(r.read(1), BOUND) == b""
            assert proxy.connections == 1
            w.close()


def test_bad_targets_are_refused() -> None:
    for bad in ("nohost", "h:", ":1", "h:x"):
        with pytest.raises(ValueError):
            TcpProxy(bad)


def frame(kind: int, stream: int, payload: bytes = b"", flags: int = 0) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + (
        payload)


def test_http2_streams_counts_the_streams_clients_open() -> None:
    settings, headers, data, rst, ping = 0x4, 0x1, 0x0, 0x3, 0x6
    wire = (
        Http2Streams.PREFACE
        + frame(settings, 0, b"\x00\x03\x00\x00\x00\x64")
        + frame(headers, 1, b"h" * 20, flags=0x4)
        + frame(data, 1, b"d" * 30, flags=0x1)
        + frame(ping, 0, b"p" * 8)
        + frame(headers, 3, b"h" * 5, flags=0x4)
        + frame(rst, 3, b"\x00\x00\x00\x08")
        + frame(headers, 3, b"t", flags=0x5)  # more headers on an open stream: not a new one
        + frame(headers, 5)
    )
    one_go = Http2Streams()
    one_go(1, wire)
    assert one_go.opened == 3
    byte_by_byte = Http2Streams()
    for i in range(len(wire)):
        byte_by_byte(7, wire[i : i + 1])
    assert byte_by_byte.opened == 3
    byte_by_byte(8, wire[:40])  # connections are parsed apart
    assert byte_by_byte.opened == 3
    byte_by_byte(8, wire[40:])
    assert byte_by_byte.opened == 6
