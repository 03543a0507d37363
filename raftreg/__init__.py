"""raftreg: a self-contained, Raft-backed service registry for Python microservices.

Layers (imports point downward only): cli -> discovery/resilience -> client -> api -> server
-> consensus -> store. `raftreg.errors` is the one exception tree shared by all of them and
`raftreg.config` builds the settings every component receives explicitly.
"""

__version__ = "0.1.0"
