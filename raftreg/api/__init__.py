"""gRPC servicers for raftreg.v1, protobuf<->domain conversion, and the one error->status table."""
