"""The concurrency recipes' own errors: subclasses of `raftreg.errors` classes, so a caller
that catches `RegistryError` (or `FailedPrecondition`) catches them too."""

from __future__ import annotations

from raftreg.errors import FailedPrecondition


class SessionExpired(FailedPrecondition):
    """The session's lease is lost (expired, revoked, or not renewed within its TTL), or the
    session was closed: nothing held under it is held any more (etcd's ErrSessionExpired)."""


class NotLeader(FailedPrecondition):
    """`proclaim` by a campaigner that is not (or no longer) the leader (etcd's
    ErrElectionNotLeader)."""
