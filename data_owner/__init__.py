"""The hospital side: datasets, the fair teacher, the model registry, PKI and the gRPC daemon."""
