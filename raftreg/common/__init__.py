"""The shared bottom above the state machine: what both ends of the gRPC wire and every layer
above use. `status` is the one table between raftreg's exceptions and gRPC status codes (and
the trailing-metadata keys, among them the "not executed" marker); `convert` maps protobuf
messages to the public value types and back; `handlers` wraps grpc.aio method handlers (for
server interceptors: metrics, auth, resilience); `clock` is the one clock abstraction
(`LoopClock`, `ManualClock`, `SteppingClock`) injected wherever time matters; `backoff` the one
exponential backoff (client pool, keepalive, registration, resolver, config watcher, retries).

Imports only `raftreg.errors`, `raftreg.pb` and `raftreg.store`'s value types.
"""
