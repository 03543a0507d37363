"""raftreg's one exception tree.

Every layer raises these; the API maps them to gRPC status codes in one table
(`raftreg.common.status`) and the gRPC client maps status codes back into them, so callers of any
`RegistryClient` implementation catch the same classes whatever the backend.
"""

from __future__ import annotations


class RegistryError(Exception):
    """Base of every error raftreg raises on purpose."""


class InvalidArgument(RegistryError):
    """The request is malformed; nothing was changed."""


class NotFound(RegistryError):
    """A named object (lease, member) does not exist; nothing was changed."""


class LeaseNotFound(NotFound):
    """The lease does not exist or has expired."""


class AlreadyExists(RegistryError):
    """The object to create exists already (e.g. a client-chosen lease id)."""


class FailedPrecondition(RegistryError):
    """The request is valid but cannot be applied in the current state."""


class ClientClosed(FailedPrecondition):
    """This client (or its lease keeper) was closed: nothing more goes through it. Raised by the
    client itself, never sent by a server; loops that run until their client closes (a
    `Registration`, a `PrefixMirror`) stop on this and retry every other error."""


class Compacted(RegistryError):
    """The requested revision has been compacted away."""

    def __init__(self, message: str, compact_revision: int = 0) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision


class FutureRevision(RegistryError):
    """The requested revision is newer than the store's current revision."""


class Unavailable(RegistryError):
    """The request could not be served now: no quorum or leader, the node is shutting down or
    cannot be reached, the connection broke. On its own it says nothing about whether a write
    was applied; the two subclasses do: `NotApplied` (certainly not) and `OutcomeUnknown`
    (maybe). A plain `Unavailable` is treated as "maybe" wherever that matters."""


class NotApplied(Unavailable):
    """Refused before anything could take effect (not the leader, no leader, proposal queue
    full, nothing sent): retrying is safe even for a write without a request identity.
    Only the party that refused may say so (the server that did not propose it, or the client
    that did not send it)."""


class OutcomeUnknown(Unavailable):
    """A write may or may not have been applied (leader change, timeout after proposing).

    Retrying with the same request identity is safe: the store applies it at most once.
    """


class DeadlineExceeded(RegistryError):
    """The caller's deadline passed before an answer arrived."""


class ResourceExhausted(RegistryError):
    """A limit was hit (rate limit, watcher buffer, proposal queue)."""


class PermissionDenied(RegistryError):
    """The caller is not allowed to do this."""


class Unauthenticated(RegistryError):
    """The caller presented no valid credentials."""


class Cancelled(RegistryError):
    """The operation was cancelled (e.g. a watch cancelled by the server)."""
