"""`python -m raftreg.daemon --config cluster.toml --name n1` runs one node (as `raftreg node`)."""

from __future__ import annotations

import argparse
import sys

from raftreg.config import load_config
from raftreg.daemon.main import serve_node
from raftreg.errors import RegistryError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m raftreg.daemon")
    p.add_argument("--config", default="cluster.toml")
    p.add_argument("--name", required=True)
    p.add_argument("--join", action="store_true",
                   help="this node was just added to a running cluster with `member add`")
    a = p.parse_args(argv)
    try:
        cfg = load_config(a.config)
        cfg.node(a.name)
    except RegistryError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    return serve_node(cfg, a.name, join=a.join)


if __name__ == "__main__":
    sys.exit(main())
