"""The node process, the composition root: `main.serve_node` wires a `RegistryNode`
(raftreg.server) to the gRPC API (raftreg.api: raftreg.v1 and etcd's names), security, and the
HTTP listener (`/metrics` from `metrics`, `/health`, `/version`, the JSON gateway, the
dashboard), and runs until SIGTERM/SIGINT. `python -m raftreg.daemon --config cluster.toml
--name n1` (or `raftreg node`) starts one node.

The only package that imports both the server side and the layers above it (the dashboard
reads through a client of its own node); nothing imports it but the CLI.
"""
