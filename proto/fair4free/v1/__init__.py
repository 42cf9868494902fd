"""Generated protobuf and gRPC code for the fair4free.v1 wire contract (see fair4free.proto)."""
