"""Pure helpers of raftreg.client: the prefix rule, range resolution, endpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftreg.client import connect, default_endpoints, normalize_endpoint, prefix_range_end
from raftreg.client.endpoints import DEFAULT_ENDPOINT, normalize_endpoints
from raftreg.client.protocol import RegistryClient, resolve_range, to_bytes
from raftreg.client.sync import SyncRegistryClient
from raftreg.errors import InvalidArgument

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize(
    ("prefix", "end"),
    [
        (b"a", b"b"),
        (b"/services/", b"/services0"),
        (b"ab\xff", b"ac"),
        (b"a\xff\xff", b"b"),
        (b"\xfe", b"\xff"),
        (b"\xff", b"\0"),
        (b"\xff\xff", b"\0"),
        (b"", b"\0"),
        (b"\x00", b"\x01"),
    ],
)
def test_prefix_range_end(prefix: bytes, end: bytes) -> None:
    assert prefix_range_end(prefix) == end


def test_prefix_range_end_selects_exactly_the_prefix() -> None:
    prefix = b"k\xff"
    end = prefix_range_end(prefix)
    for key in (b"k\xff", b"k\xff\x00", b"k\xff\xff\xff"):
        assert prefix <= key < end
    for key in (b"k\xfe", b"l", b"k"):
        assert not (prefix <= key < end)


def test_to_bytes_and_resolve_range() -> None:
    assert to_bytes("é") == "é".encode()
    assert to_bytes(b"\xff") == b"\xff"
    with pytest.raises(InvalidArgument):
        to_bytes(3)  # type: ignore[arg-type]
    assert resolve_range("a", b"", False) == (b"a", b"")
    assert resolve_range("a", "c", False) == (b"a", b"c")
    assert resolve_range("a", b"", True) == (b"a", b"b")
    with pytest.raises(InvalidArgument):
        resolve_range("a", "c", True)


def test_normalize_endpoints() -> None:
    assert normalize_endpoint("http://127.0.0.1:2379") == "127.0.0.1:2379"
    assert normalize_endpoint("https://h:1/") == "h:1"
    assert normalize_endpoint(" h:2 ") == "h:2"
    assert normalize_endpoints(["a:1", "http://a:1", "b:2"]) == ("a:1", "b:2")
    for bad in ("nohost", "ftp://a:1", "a:port"):
        with pytest.raises(InvalidArgument):
            normalize_endpoint(bad)
    with pytest.raises(InvalidArgument):
        normalize_endpoints([])


def test_default_endpoints(tmp_path: Path) -> None:
    assert default_endpoints(tmp_path / "missing.toml") == [DEFAULT_ENDPOINT]
    cfg = tmp_path / "cluster.toml"
    cfg.write_text(
        '[cluster]\nsecret = "s"\n'
        '[[node]]\nname = "n1"\nraft = "127.0.0.1:2380"\nclient = "127.0.0.1:2379"\n'
        '[[node]]\nname = "n2"\nraft = "127.0.0.1:2382"\nclient = "127.0.0.1:2381"\n'
    )
    assert default_endpoints(cfg) == ["127.0.0.1:2379", "127.0.0.1:2381"]
    assert connect(config_path=cfg).endpoints == ("127.0.0.1:2379", "127.0.0.1:2381")
    assert connect(["h:1"]).endpoints == ("h:1",)
    cfg.write_text("not toml [")
    with pytest.raises(InvalidArgument):
        default_endpoints(cfg)


def test_clients_satisfy_the_protocol() -> None:
    client = connect(["127.0.0.1:1"])
    assert isinstance(client, RegistryClient)
    with SyncRegistryClient(["127.0.0.1:1"]) as sync:
        assert sync.endpoints == ("127.0.0.1:1",)
