"""raftreg: a self-contained, Raft-backed service registry for Python microservices.

Layers (imports point downward only; tests/test_layers.py holds the order and enforces it):
cli, testing -> daemon (the node process) -> dashboard -> discovery, configcenter, concurrency
-> resilience -> client -> api -> server -> consensus -> common -> store -> config -> errors,
logfmt, pb. `raftreg.errors` is the one exception tree shared by all of them and
`raftreg.config` builds the settings every component receives explicitly.
"""

__version__ = "0.1.0"
