"""Key ranges in etcd's encoding and prefix coverage, the maths under `raftreg.api.auth`'s
permissions.

A range is (key, range_end): range_end b"" = the single key, b"\\0" = every key >= key, else
[key, range_end). A permission is a key prefix, and it covers a range when every key of the
range starts with it (`covers`).
"""

from __future__ import annotations

from raftreg.common.keys import prefix_range_end


def covers(prefix: bytes, key: bytes, range_end: bytes) -> bool:
    """Whether every key of the range (etcd's encoding: range_end b"" = the single key,
    b"\\0" = every key >= key, else [key, range_end)) starts with `prefix`.

    Keys starting with `prefix` are exactly [prefix, prefix_range_end(prefix)), so the range is
    covered when it starts inside that interval and ends no later. A range_end <= key (an
    empty range) that starts inside is covered too."""
    if not key.startswith(prefix):
        return False
    if range_end == b"":
        return True
    limit = prefix_range_end(prefix)
    if limit == b"\0":  # the prefix reaches the end of the key space
        return True
    return range_end != b"\0" and range_end <= limit


def _text(b: bytes) -> str:
    return repr(b.decode("utf-8", errors="backslashreplace"))


def describe(key: bytes, range_end: bytes) -> str:
    if range_end == b"":
        return f"key {_text(key)}"
    if range_end == b"\0":
        return f"every key >= {_text(key)}"
    if range_end == prefix_range_end(key):
        return f"keys with prefix {_text(key)}"
    return f"range [{_text(key)}, {_text(range_end)})"
