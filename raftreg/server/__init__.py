"""Node wiring: the registry node over the consensus seam (`node`), and the process that serves
it over gRPC (`main.serve_node`)."""
