"""`python -m raftreg.daemon --config cluster.toml --name n1` runs one node (as `raftreg node`).

`node_arguments` and `load_node_config` are the command line both this entry point and the test
launcher (`python -m raftreg.testing.node`, which adds `--fault-file`) accept.
"""

from __future__ import annotations

import argparse
import sys

from raftreg.config import ClusterConfig, load_config
from raftreg.daemon.main import serve_node
from raftreg.errors import RegistryError


def node_arguments(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("--config", default="cluster.toml")
    p.add_argument("--name", required=True)
    p.add_argument("--join", action="store_true",
                   help="this node was just added to a running cluster with `member add`")
    return p


def load_node_config(path: str, name: str) -> ClusterConfig | None:
    """The configuration, checked to name `name`; None (the error printed) if it cannot be."""
    try:
        cfg = load_config(path)
        cfg.node(name)
    except RegistryError as e:
        print(f"Error: {e}", file=sys.stderr)
        return None
    return cfg


def main(argv: list[str] | None = None) -> int:
    a = node_arguments("python -m raftreg.daemon").parse_args(argv)
    cfg = load_node_config(a.config, a.name)
    if cfg is None:
        return 1
    return serve_node(cfg, a.name, join=a.join)


if __name__ == "__main__":
    sys.exit(main())
