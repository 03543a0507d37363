"""TEST ONLY launcher: `python -m raftreg.testing.node --config C --name N --fault-file F`.

Runs the same node as `python -m raftreg.daemon` (same arguments, same composition root:
`raftreg.daemon.main.serve_node`) with one difference: the raft layer gets the fault-injection
rules of `F` (`FaultRules`, raftreg/testing/fault_transport.py: per-link drops and delays, and
the deliberately broken `unsafe_local_reads` / `unsafe_no_sync`), re-read whenever the file
changes. A relative `F` is taken from the directory of the configuration file. This is the only
way to run a node with fault injection: the daemon and the configuration know nothing of it.
`ProcessCluster(faults=True)` starts its nodes through here.
"""

from __future__ import annotations

import sys

from raftreg.daemon.__main__ import load_node_config, node_arguments
from raftreg.daemon.main import serve_node
from raftreg.testing.fault_transport import FaultRules


def main(argv: list[str] | None = None) -> int:
    p = node_arguments("python -m raftreg.testing.node")
    p.add_argument("--fault-file", required=True,
                   help="TEST ONLY: the JSON fault rules (see FaultRules), re-read on change")
    a = p.parse_args(argv)
    cfg = load_node_config(a.config, a.name)
    if cfg is None:
        return 1
    rules = FaultRules(str(cfg.file(a.fault_file)), cfg.node(a.name).raft)
    return serve_node(cfg, a.name, join=a.join, faults=rules)


if __name__ == "__main__":
    sys.exit(main())
