"""Generated protobuf and gRPC modules for snapd.v1 (see scripts/gen-protos)."""
