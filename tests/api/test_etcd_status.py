"""etcd's wording of raftreg's errors: the code and the exact message etcd's clients match
(clientv3 rpctypes' errStringToError), for every error a client branches on."""

from __future__ import annotations

import grpc
import pytest

from raftreg import errors as E
from raftreg.api.auth import native_method
from raftreg.common.status import ERROR_KEY, etcd_status_for, status_for
from raftreg.store.mvcc import COMPACTED_MESSAGE


@pytest.mark.parametrize(
    ("err", "code", "message"),
    [
        (E.LeaseNotFound("lease 7 not found"), grpc.StatusCode.NOT_FOUND,
         "etcdserver: requested lease not found"),
        (E.Compacted(COMPACTED_MESSAGE, 5), grpc.StatusCode.OUT_OF_RANGE,
         "etcdserver: mvcc: required revision has been compacted"),
        (E.FutureRevision("x"), grpc.StatusCode.OUT_OF_RANGE,
         "etcdserver: mvcc: required revision is a future revision"),
        (E.InvalidArgument("too many operations in txn request"),
         grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: too many operations in txn request"),
        (E.InvalidArgument("duplicate key given in txn request"),
         grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request"),
        (E.InvalidArgument("key is not provided"), grpc.StatusCode.INVALID_ARGUMENT,
         "etcdserver: key is not provided"),
        (E.InvalidArgument("value is too large (9 > 8 bytes)"),
         grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: request is too large"),
        (E.AlreadyExists("lease already exists"), grpc.StatusCode.FAILED_PRECONDITION,
         "etcdserver: lease already exists"),
        (E.NotFound("member 1f not found"), grpc.StatusCode.NOT_FOUND,
         "etcdserver: member not found"),
        (E.FailedPrecondition("not capable"), grpc.StatusCode.FAILED_PRECONDITION,
         "etcdserver: not capable"),
        (E.Unavailable("no leader to forward to"), grpc.StatusCode.UNAVAILABLE,
         "etcdserver: no leader"),
        (E.OutcomeUnknown("proposal timed out"), grpc.StatusCode.UNAVAILABLE,
         "etcdserver: request timed out"),
        (E.PermissionDenied("permission denied: read /x"), grpc.StatusCode.PERMISSION_DENIED,
         "etcdserver: permission denied"),
        (E.Unauthenticated("invalid token"), grpc.StatusCode.UNAUTHENTICATED,
         "etcdserver: invalid auth token"),
    ],
)
def test_errors_are_worded_as_etcd_words_them(
    err: E.RegistryError, code: grpc.StatusCode, message: str
) -> None:
    got_code, details, md = etcd_status_for(err)
    assert (got_code, details) == (code, message)
    assert dict(md)[ERROR_KEY] == type(err).__name__  # raftreg's own client still reads it
    assert dict(status_for(err)[2]) == dict(md)


def test_etcd_method_names_get_raftreg_rules() -> None:
    assert native_method("/etcdserverpb.KV/Range") == "/raftreg.v1.KV/Range"
    assert native_method("/raftreg.v1.KV/Put") == "/raftreg.v1.KV/Put"
    assert native_method("/grpc.health.v1.Health/Check") == "/grpc.health.v1.Health/Check"
