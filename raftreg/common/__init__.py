"""The shared bottom, below the state machine: what both ends of the gRPC wire, the store and
every layer above use. `types` holds the public value types (`KeyValue`, `Event`, the txn
operations `Range`/`Put`/`DeleteRange`/`Compare`/`Txn` and their results), which the store
applies and returns and every client sees; `keys` the prefix rule of etcd's key ranges
(`prefix_range_end`); `status` is the one table between raftreg's exceptions and gRPC status
codes (and the trailing-metadata keys, among them the "not executed" marker); `convert` maps
protobuf messages to the public value types and back; `handlers` wraps grpc.aio method handlers
(for server interceptors: metrics, auth, resilience); `clock` is the one clock abstraction
(`LoopClock`, `ManualClock`, `SteppingClock`) injected wherever time matters; `backoff` the one
exponential backoff (client pool, keepalive, registration, resolver, config watcher, retries).

Imports only `raftreg.errors` and `raftreg.pb`, never `raftreg.store` (which sits above it).
`types` and `keys` import only the standard library, and this `__init__` imports nothing, so
the pure store can import `raftreg.common.types` without pulling in grpc.
"""
