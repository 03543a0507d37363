"""Mapping between apply-time `Failure` results and `raftreg.errors` exceptions.

`Failure.kind` is the name of the exception class; `Compacted` also carries compact_revision.
The store raises these exceptions internally before changing anything and `apply` turns them
into `Failure` results, so both directions live here.
"""

from __future__ import annotations

from raftreg.errors import (
    AlreadyExists,
    Compacted,
    FailedPrecondition,
    FutureRevision,
    InvalidArgument,
    LeaseNotFound,
    NotFound,
    RegistryError,
)
from raftreg.store.commands import Failure

__all__ = ["error_to_failure", "failure_to_error"]

_KINDS: dict[str, type[RegistryError]] = {
    cls.__name__: cls
    for cls in (
        InvalidArgument,
        NotFound,
        LeaseNotFound,
        AlreadyExists,
        FailedPrecondition,
        FutureRevision,
    )
}


def failure_to_error(f: Failure) -> RegistryError:
    """The exception a caller should raise for `f`; an unknown kind gives a plain
    RegistryError carrying the message."""
    if f.kind == "Compacted":
        return Compacted(f.message, f.compact_revision)
    return _KINDS.get(f.kind, RegistryError)(f.message)


def error_to_failure(e: RegistryError, revision: int) -> Failure:
    compact_revision = e.compact_revision if isinstance(e, Compacted) else 0
    return Failure(revision, type(e).__name__, str(e), compact_revision)
