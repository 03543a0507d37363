"""Generated protobuf and gRPC code (scripts/gen-protos.sh); do not edit."""
