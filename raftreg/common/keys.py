"""Key-range arithmetic in etcd's encoding, shared by the clients and the server's auth.

A range is (key, range_end): range_end b"" = the single key, b"\\0" = every key >= key, else
the half-open [key, range_end). Imports only the standard library.
"""

from __future__ import annotations


def prefix_range_end(prefix: bytes) -> bytes:
    """The range_end selecting every key that starts with `prefix` (etcd's `GetPrefixRangeEnd`).

    Trailing 0xff bytes are dropped and the last remaining byte is incremented; when nothing
    remains (empty or all-0xff prefix) the answer is b"\\0", i.e. "every key >= prefix".
    """
    end = bytearray(prefix)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return b"\0"
    end[-1] += 1
    return bytes(end)
